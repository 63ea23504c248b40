"""The CUDA accelerator: parsing, visibility, selection, precisions, TF32, pinned loading.

This machine has a CPU build of torch and no NVIDIA GPU. Tests named ``test_fake_*`` pretend
otherwise by replacing torch's device queries (each says which in its docstring); the others
run for real, here or, where marked, only on a machine with a GPU.
"""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from switchyard import DeviceSelectionError, PluginRegistry, Runtime, SelectionError
from switchyard.accelerator import parse_backend
from switchyard.errors import PluginConflictError
from switchyard.selection import select
from switchyard_cuda import nvml
from switchyard_cuda.accelerator import CUDAAccelerator, is_cuda_build

HAS_GPU = is_cuda_build() and torch.cuda.device_count() > 0
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA build of torch and an NVIDIA GPU")
cpu_torch_only = pytest.mark.skipif(
    torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None,
    reason="checks what a CPU build of torch reports",
)

H100 = ((9, 0), "NVIDIA H100 80GB HBM3")
V100 = ((7, 0), "Tesla V100-SXM2-16GB")


def fake_gpus(
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    kinds: list[tuple[tuple[int, int], str]] | None = None,
) -> None:
    """Make this CPU-only torch look like a CUDA 12.6 build that sees ``count`` GPUs of the
    given (capability, name) kinds (H100s by default), as NVML would describe them."""
    kinds = kinds or [H100] * count
    infos = [nvml.DeviceInfo(i, name, capability) for i, (capability, name) in enumerate(kinds)]
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(nvml, "visible_devices", lambda n, load=None: infos[:n])


def fake_nvml_count(monkeypatch: pytest.MonkeyPatch, raw_count: int) -> list[str]:
    """Make torch.cuda's own NVML path answer: a CUDA build whose NVML sees ``raw_count`` GPUs
    on the machine, with torch's real CUDA_VISIBLE_DEVICES parsing on top. The CUDA runtime
    calls that would initialise CUDA are replaced by recorders; returns what they recorded."""
    calls: list[str] = []
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: raw_count)

    def cuda_get_device_count() -> int:
        calls.append("cudaGetDeviceCount")
        return raw_count

    def lazy_init() -> None:
        calls.append("torch.cuda._lazy_init")

    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", cuda_get_device_count, raising=False)
    monkeypatch.setattr(torch.cuda, "_lazy_init", lazy_init)
    return calls


# -- real, on this machine ------------------------------------------------------------------


@cpu_torch_only
def test_unavailable_on_a_cpu_build_says_why() -> None:
    """Real: this torch has no CUDA, and the accelerator says so and what to install."""
    assert CUDAAccelerator.is_available() is False
    assert CUDAAccelerator.device_count() == 0
    reason = CUDAAccelerator.unavailable_reason()
    assert reason is not None
    assert "built without CUDA" in reason
    assert torch.__version__ in reason
    assert "install a CUDA build of torch" in reason


@cpu_torch_only
def test_selecting_cuda_here_fails_before_anything_runs() -> None:
    """Real: Runtime(accelerator="cuda") on this machine names the reason and what is usable."""
    with pytest.raises(SelectionError) as caught:
        Runtime(accelerator="cuda")
    message = str(caught.value)
    assert "accelerator 'cuda' is installed but cannot be used here" in message
    assert "built without CUDA" in message
    assert "Usable here: cpu" in message


def test_declares_nccl_paired_with_gloo_for_cpu_tensors() -> None:
    """Real: the declared backend, as torch.distributed will be given it."""
    assert CUDAAccelerator.process_group_backend() == "cpu:gloo,cuda:nccl"
    assert parse_backend(CUDAAccelerator.process_group_backend() or "") == {
        "cpu": "gloo",
        "cuda": "nccl",
    }
    assert CUDAAccelerator.supports_sharding is True
    assert CUDAAccelerator.forks_after_init is False


def test_nvml_without_the_library_answers_none() -> None:
    """Real where this machine has no NVIDIA driver: NVML cannot be opened, so nothing is known
    (and selection accepts rather than refuses)."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("this machine has NVML; the absent-library path cannot be seen here")
    assert nvml.visible_devices(1) is None


def test_tf32_must_be_a_bool_or_none() -> None:
    """Real: a value that is not True, False or None is refused, saying what is accepted."""
    with pytest.raises(TypeError, match="tf32='yes' must be True, False or None"):
        CUDAAccelerator(tf32="yes")  # type: ignore[arg-type]


def _tf32_settings() -> Any:
    if hasattr(torch.backends, "fp32_precision"):
        return (
            torch.backends.cuda.matmul.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cudnn.rnn.fp32_precision,
        )
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


@pytest.fixture
def no_set_device(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """Fake: torch.cuda.set_device needs a GPU this machine lacks; record the calls instead."""
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


@pytest.mark.parametrize("enabled", [True, False])
def test_fake_tf32_is_applied_by_setup_and_restored_by_teardown(
    enabled: bool, no_set_device: list[torch.device]
) -> None:
    """Fake set_device (no GPU here); torch's TF32 switches themselves are real."""
    before = _tf32_settings()
    accelerator = CUDAAccelerator(tf32=enabled)
    accelerator.setup_device(torch.device("cuda", 0))
    assert no_set_device == [torch.device("cuda", 0)]
    during = _tf32_settings()
    if hasattr(torch.backends, "fp32_precision"):
        assert during == (("tf32",) * 3 if enabled else ("ieee",) * 3)
    else:
        assert during == (enabled, enabled)
    accelerator.teardown()
    assert _tf32_settings() == before


def test_fake_tf32_left_alone_unless_asked(no_set_device: list[torch.device]) -> None:
    """Fake set_device (no GPU here): the default changes none of torch's TF32 switches."""
    before = _tf32_settings()
    accelerator = CUDAAccelerator()
    accelerator.setup_device(torch.device("cuda", 0))
    assert _tf32_settings() == before
    accelerator.teardown()
    assert _tf32_settings() == before
    assert repr(accelerator) == "CUDAAccelerator(tf32=None, pin_memory=True)"


# -- pinned memory (real DataLoaders; pinning itself needs a GPU) ---------------------------


def _dataset() -> TensorDataset:
    return TensorDataset(torch.arange(20.0).reshape(10, 2), torch.arange(10))


def _batches(loader: DataLoader[Any]) -> list[list[torch.Tensor]]:
    with warnings.catch_warnings():
        # a CPU build of torch warns that it cannot pin without an accelerator
        warnings.simplefilter("ignore")
        return [list(batch) for batch in loader]


def test_loaders_are_recreated_to_pin_memory() -> None:
    """Real: the re-created loader pins memory and yields the same batches in the same order,
    keeping the user's sampler, collation and worker seeding."""

    def collate(items: list[Any]) -> Any:
        return torch.utils.data.default_collate(items)

    def worker_init(worker_id: int) -> None:
        pass

    dataset = _dataset()
    sampler = SequentialSampler(dataset)
    loader = DataLoader(
        dataset, batch_size=3, sampler=sampler, drop_last=True, collate_fn=collate,
        worker_init_fn=worker_init,
    )  # fmt: skip
    pinned = CUDAAccelerator().process_dataloader(loader)
    assert pinned is not loader
    assert pinned.pin_memory is True
    assert pinned.sampler is sampler
    assert pinned.collate_fn is collate
    assert pinned.worker_init_fn is worker_init
    assert pinned.drop_last is True
    assert [[t.tolist() for t in b] for b in _batches(pinned)] == [
        [t.tolist() for t in b] for b in _batches(loader)
    ]
    assert len(_batches(pinned)) == 3


def test_a_custom_batch_sampler_is_kept() -> None:
    """Real: a batch sampler the user wrote is carried over as the same object."""

    class EveryOther(BatchSampler):
        pass

    dataset = _dataset()
    batch_sampler = EveryOther(SequentialSampler(dataset), batch_size=4, drop_last=False)
    pinned = CUDAAccelerator().process_dataloader(DataLoader(dataset, batch_sampler=batch_sampler))
    assert pinned.pin_memory is True
    assert pinned.batch_sampler is batch_sampler
    assert [len(b[0]) for b in _batches(pinned)] == [4, 4, 2]


def test_loaders_left_alone_where_they_should_be() -> None:
    """Real: pin_memory=False, a loader that already pins, and a DataLoader subclass (which
    cannot be re-created from its attributes) are returned as they are."""
    dataset = _dataset()
    plain = DataLoader(dataset, batch_size=2)
    assert CUDAAccelerator(pin_memory=False).process_dataloader(plain) is plain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        already = DataLoader(dataset, batch_size=2, pin_memory=True)
    assert CUDAAccelerator().process_dataloader(already) is already

    class MyLoader(DataLoader):  # type: ignore[type-arg]
        pass

    custom = MyLoader(dataset, batch_size=2)
    assert CUDAAccelerator().process_dataloader(custom) is custom


# -- fakes: a CUDA build with GPUs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "expected"),
    [(2, [0, 1]), ("2", [0, 1]), ("0,1", [0, 1]), ("1", [0]), ([1], [1]), ("auto", [0, 1, 2]),
     (-1, [0, 1, 2]), ("-1", [0, 1, 2])],
)  # fmt: skip
def test_fake_parse_devices(
    monkeypatch: pytest.MonkeyPatch, devices: Any, expected: list[int]
) -> None:
    """Fake: torch.cuda.device_count says 3 GPUs (this machine has none)."""
    fake_gpus(monkeypatch, 3)
    assert CUDAAccelerator.parse_devices(devices) == expected


@pytest.mark.parametrize(
    ("devices", "words"),
    [
        (4, ["devices=4 asks for 4 cuda devices, but only 3 visible", "not set: all 3 GPU(s)"]),
        ([5], ["names cuda index 5", "[0, 1, 2]"]),
        ("0,x", ["is not a comma-separated list"]),
        (0, ["devices=0 is not a valid count"]),
        (True, ["is a bool"]),
    ],
)
def test_fake_bad_devices_say_what_exists(
    monkeypatch: pytest.MonkeyPatch, devices: Any, words: list[str]
) -> None:
    """Fake: torch.cuda.device_count says 3 GPUs (this machine has none)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_gpus(monkeypatch, 3)
    with pytest.raises(DeviceSelectionError) as caught:
        CUDAAccelerator.parse_devices(devices)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("visible", "count"), [(None, 4), ("1,3", 2), ("0,7", 1), ("3", 1), ("", 0), ("-1", 0)]
)
def test_fake_visible_devices_variable(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, count: int
) -> None:
    """Fake: NVML reports 4 GPUs on the machine (this one has none); torch's own parsing of
    CUDA_VISIBLE_DEVICES runs for real on top of it."""
    fake_nvml_count(monkeypatch, 4)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert CUDAAccelerator.device_count() == count
    assert CUDAAccelerator.is_available() is (count > 0)
    assert list(range(count)) == (CUDAAccelerator.parse_devices(-1) if count else [])


def test_fake_refusals_name_the_visibility_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: NVML reports 4 GPUs (this machine has none), CUDA_VISIBLE_DEVICES keeps two."""
    fake_nvml_count(monkeypatch, 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    with pytest.raises(DeviceSelectionError) as caught:
        CUDAAccelerator.parse_devices([2])
    message = str(caught.value)
    assert "names cuda index 2, but the visible indices are [0, 1]" in message
    assert "CUDA_VISIBLE_DEVICES='1,3' makes 2 GPU(s) visible, as indices 0..1" in message


def test_fake_everything_hidden_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: NVML reports 2 GPUs (this machine has none), CUDA_VISIBLE_DEVICES hides both."""
    fake_nvml_count(monkeypatch, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    reason = CUDAAccelerator.unavailable_reason()
    assert reason is not None
    assert "CUDA_VISIBLE_DEVICES='' leaves no GPU visible" in reason
    with pytest.raises(SelectionError, match="leaves no GPU visible"):
        Runtime(accelerator="cuda")


def test_fake_no_gpu_on_a_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a CUDA build whose NVML sees no GPU (this machine has a CPU build)."""
    fake_nvml_count(monkeypatch, 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    reason = CUDAAccelerator.unavailable_reason()
    assert reason is not None
    assert "(CUDA 12.6) sees no NVIDIA GPU" in reason
    assert "nvidia-smi" in reason


def test_fake_steps_aside_on_a_rocm_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a ROCm build of torch (torch.version.hip set) that sees 2 GPUs, which this
    machine is not."""
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert CUDAAccelerator.is_available() is False
    assert CUDAAccelerator.device_count() == 0
    reason = CUDAAccelerator.unavailable_reason()
    assert reason is not None
    assert "this torch is a ROCm build" in reason
    assert "the rocm accelerator applies" in reason


def test_fake_selection_by_name_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: 2 H100s (this machine has none). Naming cuda, or auto (cuda's priority 100 is
    above the CPU's 0), selects it; two devices get a distributed strategy over nccl."""
    fake_gpus(monkeypatch, 2)
    runtime = Runtime(accelerator="cuda", devices=2)
    assert runtime.plan.names["accelerator"] == "cuda"
    assert runtime.plan.names["strategy"] == "ddp"
    assert runtime.plan.devices == [torch.device("cuda", 0), torch.device("cuda", 1)]
    plan = select(PluginRegistry(), accelerator="auto", devices=1)
    assert plan.names["accelerator"] == "cuda"
    assert plan.names["strategy"] == "single_device"
    assert plan.devices == [torch.device("cuda", 0)]
    assert isinstance(plan.accelerator, CUDAAccelerator)


def test_fake_gpu_alias_resolves_to_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: 1 H100 (this machine has none). "gpu" is an alias cuda shares with rocm and mps;
    the one available answers to it."""
    fake_gpus(monkeypatch, 1)
    try:
        plan = select(PluginRegistry(), accelerator="gpu", devices=1)
    except PluginConflictError as error:
        pytest.skip(f"selection does not resolve shared aliases yet: {error}")
    assert plan.names["accelerator"] == "cuda"


def test_fake_sharded_strategies_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: 2 H100s (this machine has none): FSDP may shard over them."""
    pytest.importorskip("switchyard_fsdp")
    fake_gpus(monkeypatch, 2)
    plan = select(PluginRegistry(), accelerator="cuda", strategy="fsdp", devices=2)
    assert plan.names["strategy"] == "fsdp"
    assert plan.world_size == 2


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_fake_bf16_refused_below_ampere(monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    """Fake: an H100 and a V100 visible (this machine has neither): bfloat16 is refused before
    anything runs, naming the GPU that lacks it and what to use instead."""
    fake_gpus(monkeypatch, 2, [H100, V100])
    with pytest.raises(SelectionError) as caught:
        Runtime(accelerator="cuda", devices=1, precision=precision)
    message = str(caught.value)
    assert f"precision {precision!r} cannot run on accelerator 'cuda'" in message
    assert "compute capability 8.0 (Ampere) or newer" in message
    assert "visible GPU 1 (Tesla V100-SXM2-16GB) has 7.0" in message
    assert "use 16-mixed" in message


def test_fake_precisions_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: one H100, then one V100 (this machine has neither): bf16 on Ampere and newer;
    16-mixed everywhere, with a gradient scaler."""
    fake_gpus(monkeypatch, 1, [H100])
    assert Runtime(accelerator="cuda", precision="bf16-mixed").precision.name == "bf16-mixed"
    fake_gpus(monkeypatch, 1, [V100])
    runtime = Runtime(accelerator="cuda", precision="16-mixed")
    assert runtime.precision.name == "16-mixed"
    assert runtime.precision.compute_dtype == torch.float16
    assert runtime.precision._uses_scaler()  # type: ignore[attr-defined]


def test_fake_bf16_accepted_when_nvml_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: 1 GPU whose capability NVML cannot report (this machine has none): nothing is
    refused on a guess."""
    fake_gpus(monkeypatch, 1)
    monkeypatch.setattr(nvml, "visible_devices", lambda n, load=None: None)
    assert CUDAAccelerator.supports_precision("bf16-mixed", torch.bfloat16) is None


def test_fake_selection_never_initialises_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a CUDA build whose NVML sees 2 GPUs (this machine has none). Everything selection
    asks, and building the fork launcher, goes without the CUDA runtime calls that initialise
    CUDA (cudaGetDeviceCount, torch.cuda's lazy init): ddp_fork stays usable."""
    calls = fake_nvml_count(monkeypatch, 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    runtime = Runtime(accelerator="cuda", strategy="ddp_fork", devices=2, precision="bf16-mixed")
    assert CUDAAccelerator.is_available()
    assert CUDAAccelerator.unavailable_reason() is None
    assert runtime.strategy.launcher is not None  # where fork-safety is checked
    assert runtime.plan.names["strategy"] == "ddp_fork"
    assert calls == []
    assert torch.cuda.is_initialized() is False
    assert CUDAAccelerator.is_initialized() is False


def test_fake_fork_refused_once_cuda_is_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: 2 GPUs and a CUDA that this process already initialised (this machine has no
    GPU): fork start methods are refused, saying how to start processes instead."""
    fake_gpus(monkeypatch, 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    runtime = Runtime(accelerator="cuda", strategy="ddp_fork", devices=2)
    with pytest.raises(SelectionError) as caught:
        _ = runtime.strategy.launcher
    message = str(caught.value)
    assert "fork" in message
    assert "'cuda'" in message
    assert "spawn" in message


def test_fake_capabilities_from_torch_once_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: an initialised CUDA with a Turing GPU (this machine has none): torch itself is
    asked, since initialising is no longer a concern."""
    fake_gpus(monkeypatch, 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (7, 5))
    reason = CUDAAccelerator.supports_precision("bf16-mixed", torch.bfloat16)
    assert reason is not None
    assert "visible GPU 0 (Tesla T4) has 7.5" in reason


# -- NVML, with a stand-in library --------------------------------------------------------


class FakeNVML:
    """Fake libnvidia-ml (this machine has none): two GPUs, an A100 and a T4."""

    GPUS = ((b"NVIDIA A100-SXM4-40GB", 8, 0), (b"Tesla T4", 7, 5))

    def __init__(self, init_status: int = 0) -> None:
        self.init_status = init_status
        self.calls: list[str] = []

    def nvmlInit_v2(self) -> int:
        self.calls.append("init")
        return self.init_status

    def nvmlShutdown(self) -> int:
        self.calls.append("shutdown")
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index: int, handle: Any) -> int:
        if index >= len(self.GPUS):
            return 2  # NVML_ERROR_INVALID_ARGUMENT
        handle._obj.value = index + 1
        return 0

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any, major: Any, minor: Any) -> int:
        _, major._obj.value, minor._obj.value = self.GPUS[handle.value - 1]
        return 0

    def nvmlDeviceGetName(self, handle: Any, buffer: Any, length: int) -> int:
        buffer.value = self.GPUS[handle.value - 1][0]
        return 0


def _loader(library: FakeNVML) -> Callable[[str], Any]:
    def load(name: str) -> Any:
        assert name == "libnvidia-ml.so.1"
        return library

    return load


def test_fake_nvml_describes_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a stand-in NVML library with two GPUs, CUDA_VISIBLE_DEVICES keeping the second
    (this machine has neither); torch's own index mapping runs for real."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    library = FakeNVML()
    assert nvml.visible_devices(1, load=_loader(library)) == [
        nvml.DeviceInfo(0, "Tesla T4", (7, 5))
    ]
    assert library.calls == ["init", "shutdown"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    both = nvml.visible_devices(2, load=_loader(FakeNVML()))
    assert both is not None
    assert [d.capability for d in both] == [(8, 0), (7, 5)]


def test_fake_nvml_failures_answer_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a stand-in NVML library (this machine has none) that fails to initialise, or is
    asked about a GPU it does not have: nothing is known, and NVML is shut down again."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml.visible_devices(1, load=_loader(FakeNVML(init_status=9))) is None
    library = FakeNVML()
    assert nvml.visible_devices(3, load=_loader(library)) is None
    assert library.calls == ["init", "shutdown"]


# -- real hardware ------------------------------------------------------------------------


@needs_gpu
def test_gpu_selection_does_not_initialise_cuda() -> None:
    """Real GPU: selecting CUDA with a fork strategy leaves CUDA uninitialised."""
    assert not torch.cuda.is_initialized(), "an earlier test initialised CUDA in this process"
    runtime = Runtime(accelerator="cuda", strategy="ddp_fork", devices=1, precision="bf16-mixed")
    assert runtime.plan.names["accelerator"] == "cuda"
    assert CUDAAccelerator.visible_devices()
    assert not torch.cuda.is_initialized()


@needs_gpu
def test_gpu_nvml_agrees_with_torch() -> None:
    """Real GPU: what NVML says (without a CUDA context) is what torch says after init."""
    count = torch.cuda.device_count()
    from_nvml = nvml.visible_devices(count)
    if from_nvml is None:
        pytest.skip("NVML cannot describe these GPUs (MIG or UUID visibility)")
    torch.cuda.init()
    assert [d.capability for d in from_nvml] == [
        tuple(torch.cuda.get_device_capability(i)) for i in range(count)
    ]
    assert [d.name for d in from_nvml] == [torch.cuda.get_device_name(i) for i in range(count)]


@needs_gpu
def test_gpu_pinned_batches_and_memory_stats() -> None:
    """Real GPU: a set-up loader pins its batches; memory statistics are reported."""
    accelerator = CUDAAccelerator()
    device = torch.device("cuda", 0)
    accelerator.setup_device(device)
    loader = accelerator.process_dataloader(DataLoader(_dataset(), batch_size=4))
    first = next(iter(loader))
    assert all(t.is_pinned() for t in first)
    block = torch.empty(4 << 20, dtype=torch.uint8, device=device)
    stats = accelerator.memory_stats(device)
    assert stats["allocated"] >= block.numel()
    assert stats["allocated"] <= stats["reserved"] <= stats["total"]
    accelerator.teardown()


@needs_gpu
def test_gpu_tf32_changes_matmul_results() -> None:
    """Real GPU (Ampere or newer): TF32 on rounds float32 products, TF32 off does not."""
    if torch.cuda.get_device_capability(0) < (8, 0):
        pytest.skip("TF32 needs compute capability 8.0 or newer")
    a = torch.randn(512, 512, device="cuda", dtype=torch.float64)
    b = torch.randn(512, 512, device="cuda", dtype=torch.float64)
    exact = a @ b
    errors = {}
    for enabled in (False, True):
        accelerator = CUDAAccelerator(tf32=enabled)
        accelerator.setup_device(torch.device("cuda", 0))
        errors[enabled] = ((a.float() @ b.float()).double() - exact).abs().max().item()
        accelerator.teardown()
    assert errors[True] > 10 * errors[False]
