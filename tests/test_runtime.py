"""The Runtime on one CPU process: exactly raw PyTorch's results, collectives as identities,
atomic checkpoints, the wrappers, seeding and the lifecycle hooks."""

from __future__ import annotations

import os
import random
import stat
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, Dataset, TensorDataset

import switchyard.checkpoint
from switchyard import (
    CheckpointError,
    Runtime,
    RuntimeModule,
    RuntimeOptimizer,
    SetupResult,
    hookimpl,
    seed_everything,
)
from switchyard.seed import worker_init_function

STEPS = 20


def cpu_runtime(**kwargs: object) -> Runtime:
    return Runtime(accelerator="cpu", devices=1, **kwargs)  # type: ignore[arg-type]


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=generator)
    y = x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(64, 1, generator=generator)
    return TensorDataset(x, y)


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def make_loader(shuffle: bool = True) -> DataLoader:
    return DataLoader(
        dataset(), batch_size=8, shuffle=shuffle, generator=torch.Generator().manual_seed(2)
    )


def batches(loader, steps):
    """``steps`` batches, going through the loader as many epochs as needed."""
    while True:
        for batch in loader:
            yield batch
            steps -= 1
            if steps == 0:
                return


# -- the same numbers as raw PyTorch ------------------------------------------------------------


def raw_pytorch_run() -> tuple[list[torch.Tensor], nn.Module]:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for x, y in batches(make_loader(), STEPS):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses, model


def switchyard_run() -> tuple[list[torch.Tensor], nn.Module]:
    runtime = cpu_runtime(precision="32-true")
    runtime.launch()
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = runtime.setup(model, optimizer)
    loader = runtime.setup_dataloaders(make_loader())
    losses = []
    for x, y in batches(loader, STEPS):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        runtime.backward(loss)
        optimizer.step()
        losses.append(loss.detach())
    return losses, model.module


def test_32_true_run_gives_exactly_the_raw_pytorch_losses():
    expected, raw_model = raw_pytorch_run()
    losses, model = switchyard_run()

    assert len(losses) == len(expected) == STEPS
    for step, (loss, reference) in enumerate(zip(losses, expected, strict=True)):
        assert torch.equal(loss, reference), f"step {step}: {loss.item()} != {reference.item()}"
    for p, q in zip(model.parameters(), raw_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert expected[-1] < expected[0]  # it did train


# -- gradient clipping --------------------------------------------------------------------------


def _backward_once(runtime: Runtime):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference = make_model()
    model, optimizer = runtime.setup(model, optimizer)
    x, y = dataset().tensors
    runtime.backward(F.mse_loss(model(x), y))
    F.mse_loss(reference(x), y).backward()
    return model, optimizer, reference


def test_clip_gradients_by_norm_matches_torch():
    runtime = cpu_runtime()
    model, optimizer, reference = _backward_once(runtime)

    norm = runtime.clip_gradients(model, optimizer, max_norm=0.05, norm_type=2.0)
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm=0.05)

    assert torch.equal(norm, expected)
    assert norm > 0.05  # clipping did something
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_clip_gradients_by_value_matches_torch():
    runtime = cpu_runtime()
    model, optimizer, reference = _backward_once(runtime)

    assert runtime.clip_gradients(model, optimizer, clip_val=0.01) is None
    torch.nn.utils.clip_grad_value_(reference.parameters(), 0.01)

    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert max(p.grad.abs().max() for p in model.parameters()) == pytest.approx(0.01)


@pytest.mark.parametrize(("clip_val", "max_norm"), [(None, None), (0.1, 1.0)])
def test_clip_gradients_needs_exactly_one_limit(clip_val, max_norm):
    runtime = cpu_runtime()
    model, optimizer, _ = _backward_once(runtime)
    with pytest.raises(ValueError, match="exactly one of clip_val or max_norm"):
        runtime.clip_gradients(model, optimizer, clip_val=clip_val, max_norm=max_norm)


# -- collectives --------------------------------------------------------------------------------


def test_collectives_are_identities_on_one_process():
    runtime = cpu_runtime()
    runtime.launch()
    data = {"loss": torch.tensor([1.0, 2.0]), "nested": {"accuracy": 0.75, "count": [3]}}

    for op in ("mean", "sum", "max", "min"):
        reduced = runtime.all_reduce(data, op=op)
        assert torch.equal(reduced["loss"], data["loss"])
        assert isinstance(reduced["nested"]["accuracy"], torch.Tensor)
        assert reduced["nested"]["accuracy"].item() == 0.75
        assert reduced["nested"]["count"][0].item() == 3

    gathered = runtime.all_gather({"x": torch.arange(3), "y": 2.5})
    assert gathered["x"].shape == (1, 3)
    assert torch.equal(gathered["x"][0], torch.arange(3))
    assert gathered["y"].shape == (1,)
    assert runtime.broadcast({"epoch": 4}) == {"epoch": 4}
    assert runtime.barrier("here") is None
    assert (runtime.world_size, runtime.global_rank, runtime.is_global_zero) == (1, 0, True)


# -- checkpoints --------------------------------------------------------------------------------


def test_save_writes_one_file_atomically(tmp_path):
    runtime = cpu_runtime()
    model = runtime.setup(make_model())
    path = tmp_path / "checkpoints" / "last.pt"

    runtime.save(path, {"model": model, "step": 3})

    assert os.listdir(path.parent) == ["last.pt"]  # no temporary file left behind
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 3
    assert set(loaded["model"]) == set(model.module.state_dict())  # no wrapper prefix


def _failing_save(obj, handle, *args, **kwargs):
    handle.write(b"half a checkpoint")
    raise OSError("No space left on device")


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    runtime = cpu_runtime()
    model = runtime.setup(make_model())
    path = tmp_path / "last.pt"
    runtime.save(path, {"model": model, "step": 1})
    good = path.read_bytes()

    monkeypatch.setattr(switchyard.checkpoint.torch, "save", _failing_save)
    with pytest.raises(CheckpointError, match="No space left"):
        runtime.save(path, {"model": model, "step": 2})

    assert os.listdir(tmp_path) == ["last.pt"]
    assert path.read_bytes() == good
    monkeypatch.undo()
    assert runtime.load(path)["step"] == 1


def test_crash_while_saving_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    runtime = cpu_runtime()
    monkeypatch.setattr(switchyard.checkpoint.torch, "save", _failing_save)
    with pytest.raises(CheckpointError, match="No space left"):
        runtime.save(tmp_path / "first.pt", {"step": 1})
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_checkpoint_gets_the_permissions_torch_save_would_give_it(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    runtime = cpu_runtime()
    runtime.save(tmp_path / "c.pt", {"step": 1})
    torch.save({"step": 1}, tmp_path / "plain.pt")

    mode = stat.S_IMODE((tmp_path / "c.pt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.pt").stat().st_mode)
    assert mode == 0o666 & ~umask


def test_save_to_a_directory_is_refused(tmp_path):
    runtime = cpu_runtime()
    with pytest.raises(CheckpointError, match="is a directory"):
        runtime.save(tmp_path, {"step": 1})


def _trained(runtime: Runtime, steps: int = 3):
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = runtime.setup(model, optimizer)
    for x, y in batches(make_loader(), steps):
        optimizer.zero_grad()
        runtime.backward(F.mse_loss(model(x), y))
        optimizer.step()
    return model, optimizer


def _fresh(runtime: Runtime):
    torch.manual_seed(99)  # a different initialization from make_model's
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    return runtime.setup(model, torch.optim.AdamW(model.parameters(), lr=1e-2))


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_load_restores_state_in_place_and_returns_the_rest(tmp_path):
    source = cpu_runtime()
    model, optimizer = _trained(source)
    path = tmp_path / "ckpt.pt"
    source.save(path, {"model": model, "optimizer": optimizer, "step": 3, "note": "hello"})

    runtime = cpu_runtime()
    new_model, new_optimizer = _fresh(runtime)
    state = {"model": new_model, "optimizer": new_optimizer, "step": 0}
    rest = runtime.load(path, state)

    assert rest == {"note": "hello"}
    assert state["step"] == 3  # plain values are replaced
    assert state["model"] is new_model  # objects are restored in place
    assert state["optimizer"] is new_optimizer
    _assert_same_state(new_model.state_dict(), model.state_dict())
    _assert_same_state(new_optimizer.state_dict(), optimizer.state_dict())
    # and training continues exactly as it would have
    x, y = dataset().tensors
    for m, o, r in ((model, optimizer, source), (new_model, new_optimizer, runtime)):
        o.zero_grad()
        r.backward(F.mse_loss(m(x), y))
        o.step()
    _assert_same_state(new_model.state_dict(), model.state_dict())


def test_load_without_state_returns_everything(tmp_path):
    runtime = cpu_runtime()
    runtime.save(tmp_path / "c.pt", {"step": 5, "weights": torch.ones(2)})
    loaded = runtime.load(tmp_path / "c.pt")
    assert loaded["step"] == 5
    assert torch.equal(loaded["weights"], torch.ones(2))


def test_strict_load_of_a_missing_entry_raises_a_clear_error(tmp_path):
    runtime = cpu_runtime()
    model = runtime.setup(make_model())
    runtime.save(tmp_path / "c.pt", {"model": model})

    with pytest.raises(KeyError) as info:
        runtime.load(tmp_path / "c.pt", {"model": model, "scheduler": {"last": 1}})
    message = str(info.value)
    assert "no entry 'scheduler'" in message
    assert "['model']" in message
    assert "strict=False" in message

    state = {"model": model, "epoch": 7}
    assert runtime.load(tmp_path / "c.pt", state, strict=False) == {}
    assert state["epoch"] == 7


def test_loading_a_missing_file_names_it(tmp_path):
    runtime = cpu_runtime()
    (tmp_path / "epoch-1.pt").write_bytes(b"")
    missing = tmp_path / "epoch-2.pt"
    with pytest.raises(CheckpointError) as info:
        runtime.load(missing)
    assert str(missing) in str(info.value)
    assert "epoch-1.pt" in str(info.value)  # what is there


class Opaque:
    """An arbitrary class: weights_only loading must refuse to unpickle it."""

    def __init__(self, value: int) -> None:
        self.value = value


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    runtime = cpu_runtime()
    path = tmp_path / "c.pt"
    runtime.save(path, {"config": Opaque(3), "step": 1})

    with pytest.raises(CheckpointError) as info:
        runtime.load(path)
    assert str(path) in str(info.value)
    assert "weights_only=False" in str(info.value)
    assert runtime.load(path, weights_only=False)["config"].value == 3


# -- wrappers -----------------------------------------------------------------------------------


def test_optimizer_is_an_instance_of_the_users_class_and_works_with_a_scheduler():
    runtime = cpu_runtime()
    model = make_model()
    adamw = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = runtime.setup(model, adamw)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.5)

    assert isinstance(optimizer, torch.optim.AdamW)
    assert isinstance(optimizer, RuntimeOptimizer)
    assert optimizer.optimizer is adamw
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for x, y in batches(make_loader(), 3):
            optimizer.zero_grad()
            runtime.backward(F.mse_loss(model(x), y))
            optimizer.step()
            scheduler.step()

    assert adamw.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert scheduler.get_last_lr() == [pytest.approx(0.0125)]
    assert len(adamw.state) == len(before)  # the user's optimizer did the stepping
    assert not any(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_optimizer_wrapper_stays_in_sync_after_loading_its_state(tmp_path):
    runtime = cpu_runtime()
    model, optimizer = _trained(runtime, steps=1)
    runtime.save(tmp_path / "c.pt", {"optimizer": optimizer})
    optimizer.load_state_dict(optimizer.state_dict())
    runtime.load(tmp_path / "c.pt", {"optimizer": optimizer})

    assert optimizer.param_groups is optimizer.optimizer.param_groups
    assert optimizer.state is optimizer.optimizer.state
    # a learning rate set through the wrapper (as schedulers do) is the one used
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        group["weight_decay"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    x, y = dataset().tensors
    optimizer.zero_grad()
    runtime.backward(F.mse_loss(model(x), y))
    optimizer.step()
    for b, p in zip(before, model.parameters(), strict=True):
        assert torch.equal(b, p)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 2)
        self.temperature = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) / self.temperature

    def describe(self) -> str:
        return f"Net with temperature {self.temperature}"


def test_module_wrapper_exposes_the_original_module():
    runtime = cpu_runtime()
    net = Net()
    model = runtime.setup(net)

    assert isinstance(model, RuntimeModule)
    assert model.module is net
    assert model.body is net.body
    assert model.temperature == 2.0
    assert model.describe() == "Net with temperature 2.0"
    assert list(model.state_dict()) == list(net.state_dict())  # no wrapper prefix
    x = torch.randn(3, 4)
    assert torch.equal(model(x), net(x))
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = model.no_such_thing


def test_attributes_set_through_the_module_wrapper_reach_the_original():
    runtime = cpu_runtime()
    net = Net()
    model = runtime.setup(net)
    x = torch.randn(3, 4)
    reference = net(x)

    model.temperature = 4.0
    model.label = "new"

    assert net.temperature == 4.0
    assert net.label == "new"
    assert torch.allclose(model(x), reference / 2)  # forward reads the new value
    model.eval()
    assert not model.training
    assert not net.training
    assert not net.body.training


def test_setting_up_a_set_up_module_or_loader_again_is_refused():
    runtime = cpu_runtime()
    model = runtime.setup(Net())
    with pytest.raises(ValueError, match="already set up"):
        runtime.setup(model)
    loader = runtime.setup_dataloaders(make_loader())
    with pytest.raises(ValueError, match="already set up"):
        runtime.setup_dataloaders(loader)


def test_set_up_loader_yields_the_same_batches():
    runtime = cpu_runtime()
    original = DataLoader(dataset(), batch_size=5)
    loader = runtime.setup_dataloaders(original)
    expected = list(original)

    for _ in range(2):  # every epoch
        got = list(loader)
        assert len(got) == len(expected) == len(loader) == 13
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert torch.equal(x, ex)
            assert torch.equal(y, ey)
    assert loader.batch_size == 5
    assert loader.dataset is original.dataset
    first, second = runtime.setup_dataloaders(original, make_loader())
    assert len(first) == 13
    assert len(second) == 8


def _seeded_run(seed: int) -> list[float]:
    returned = seed_everything(seed)
    assert returned == seed
    runtime = cpu_runtime()
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))  # random init
    model, optimizer = runtime.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    loader = runtime.setup_dataloaders(DataLoader(dataset(), batch_size=8, shuffle=True))
    results = [random.random()]
    for x, y in batches(loader, 5):
        loss = F.mse_loss(nn.functional.dropout(model(x), 0.5), y)
        optimizer.zero_grad()
        runtime.backward(loss)
        optimizer.step()
        results.append(loss.item())
    return results


def test_seed_everything_makes_two_runs_identical():
    first = _seeded_run(1234)
    second = _seeded_run(1234)
    other = _seeded_run(4321)

    assert first == second
    assert first != other
    assert os.environ["SWITCHYARD_GLOBAL_SEED"] == "4321"
    assert Runtime.seed_everything(7) == 7


class RandomItems(Dataset):
    """Each item draws random numbers, as a data augmentation would."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index), torch.rand(()).item(), random.random()])


def _two_epochs_with_workers(seed: int) -> list[torch.Tensor]:
    seed_everything(seed, workers=True)
    runtime = cpu_runtime()
    loader = runtime.setup_dataloaders(DataLoader(RandomItems(), batch_size=4, num_workers=2))
    assert loader.dataloader.worker_init_fn is not None
    return [torch.cat(list(loader)) for _ in range(2)]


def test_seeded_workers_are_reproducible_and_differ_between_epochs():
    first = _two_epochs_with_workers(3)
    again = _two_epochs_with_workers(3)

    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first[0][:, 0], first[1][:, 0])  # the same items in the same order...
    assert not torch.equal(first[0][:, 1], first[1][:, 1])  # ...augmented differently
    assert not torch.equal(first[0][:, 2], first[1][:, 2])


def test_worker_seeds_differ_between_ranks_and_workers():
    seeds = set()
    for rank in (0, 1):
        for worker in (0, 1):
            torch.manual_seed(10)  # the same base seed everywhere
            worker_init_function(worker, rank=rank)
            seeds.add(torch.initial_seed())
    assert len(seeds) == 4


def test_seed_out_of_range_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        seed_everything(-1)


# -- lifecycle hooks ----------------------------------------------------------------------------


class Doubling(nn.Module):
    """What a plugin might put around the user's module (as torch.compile would)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 2 * self.inner(x)


class LifecyclePlugin:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.wrapper: Doubling | None = None

    @hookimpl
    def switchyard_runtime_started(self, runtime: Runtime) -> None:
        self.calls.append(("started", runtime))

    @hookimpl
    def switchyard_post_setup(self, runtime: Runtime, setup: SetupResult) -> None:
        self.calls.append(("post_setup", (setup.original_module, list(setup.optimizers))))
        self.wrapper = Doubling(setup.module)
        setup.module = self.wrapper

    @hookimpl
    def switchyard_runtime_teardown(self, runtime: Runtime) -> None:
        self.calls.append(("teardown", runtime))


def test_lifecycle_hooks_of_an_explicit_plugin_are_called():
    plugin = LifecyclePlugin()
    runtime = cpu_runtime(plugins=[plugin])
    assert any(info.source == "explicit" for info in runtime.registry.plugins.values())
    assert plugin.calls == []

    runtime.launch()
    assert plugin.calls == [("started", runtime)]

    net = Net()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    model, _ = runtime.setup(net, sgd)
    assert plugin.calls[1] == ("post_setup", (net, [sgd]))
    x = torch.randn(3, 4)
    assert torch.equal(model(x), 2 * net(x))  # the user's calls go through the replacement
    assert plugin.wrapper.calls == 1
    assert model.module is net

    runtime.teardown()
    runtime.teardown()
    assert [name for name, _ in plugin.calls] == ["started", "post_setup", "teardown"]
    assert plugin.calls[2] == ("teardown", runtime)


def test_launch_with_a_function_runs_it_between_start_and_teardown():
    plugin = LifecyclePlugin()
    runtime = cpu_runtime(plugins=[plugin])

    def main(rt: Runtime, value: int) -> int:
        plugin.calls.append(("main", value))
        return value * 2

    assert runtime.launch(main, 21) == 42
    assert [name for name, _ in plugin.calls] == ["started", "main", "teardown"]
    with pytest.raises(RuntimeError, match="already called"):
        runtime.launch()


def test_reduce_op_names_are_case_insensitive_and_checked():
    runtime = cpu_runtime()
    runtime.launch()
    assert runtime.all_reduce(torch.tensor(2.0), op="MEAN").item() == 2.0
    valid = "'sum', 'mean', 'max', 'min', 'product'"
    with pytest.raises(ValueError, match=rf"op='avg' is not one of {valid}"):
        runtime.all_reduce(torch.tensor(2.0), op="avg")


class TeardownWithoutArguments:
    """pluggy lets an implementation declare fewer parameters than the hook spec."""

    def __init__(self) -> None:
        self.called = False

    @hookimpl
    def switchyard_runtime_teardown(self) -> None:
        self.called = True


def test_teardown_hook_may_omit_the_runtime_parameter():
    plugin = TeardownWithoutArguments()
    runtime = cpu_runtime(plugins=[plugin])
    runtime.launch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.teardown()
    assert plugin.called


# -- load_raw: a file of one state dict -------------------------------------------------------


def test_load_raw_reads_a_plain_state_dict_into_set_up_objects(tmp_path):
    source = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    source_opt = torch.optim.AdamW(source.parameters(), lr=0.1)
    source(torch.randn(3, 4)).sum().backward()
    source_opt.step()
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    torch.save(source_opt.state_dict(), tmp_path / "optimizer.pt")

    runtime = cpu_runtime()
    target = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model, optimizer = runtime.setup(target, torch.optim.AdamW(target.parameters(), lr=0.1))
    runtime.load_raw(tmp_path / "weights.pt", model)
    runtime.load_raw(tmp_path / "optimizer.pt", optimizer)
    for mine, theirs in zip(model.parameters(), source.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert optimizer.state_dict()["state"][0]["step"] == 1
    # a module that was never set up loads too
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    runtime.load_raw(tmp_path / "weights.pt", plain)
    assert torch.equal(plain[0].weight, source[0].weight)


def test_load_raw_is_strict_unless_told_and_refuses_pickled_code(tmp_path):
    torch.save({"0.weight": torch.zeros(4, 4)}, tmp_path / "partial.pt")
    runtime = cpu_runtime()
    model = runtime.setup(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(RuntimeError, match="Missing key"):
        runtime.load_raw(tmp_path / "partial.pt", model)
    runtime.load_raw(tmp_path / "partial.pt", model, strict=False)
    assert torch.count_nonzero(model.module[0].weight) == 0

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo payload ran > /dev/null",))

    torch.save({"0.weight": Payload()}, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        runtime.load_raw(tmp_path / "crafted.pt", model)
    with pytest.raises(CheckpointError, match=r"does not exist|no checkpoint|not found"):
        runtime.load_raw(tmp_path / "missing.pt", model)
