"""No file of a checkpoint runs code when it is loaded; every checkpoint loads into one process
without the strategy that wrote it; failed saves raise a CheckpointError naming the path and the
cause, and leave the previous checkpoint as it was.

The crafted-pickle suite: every strategy of checkpoint_scripts/strategies.py writes its real
checkpoints (real processes over gloo, real files). Every file of them is then crafted, by the
rule for its kind, into variants: a payload (a pickle whose ``__reduce__`` runs ``os.system`` or
``builtins.exec`` to create a marker file), and corrupt ones (truncated, garbage). A file kind
without a rule fails the suite. Each variant is loaded through ``runtime.load`` under every
strategy, through ``switchyard.checkpoint.load`` and ``consolidate`` in this process, and through
``switchyard consolidate``; no marker may appear, every load must fail with a CheckpointError
naming the file, and only files that really hold objects may suggest ``weights_only=False``. A
positive control runs each payload the unsafe way in a throwaway process and sees every marker
appear, so the suite would notice a payload that proves nothing.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from switchyard import Runtime, checkpoint
from switchyard.errors import CheckpointError
from switchyard.testing.subprocesses import child_environment, run

HERE = Path(__file__).parent
SCRIPTS = HERE / "checkpoint_scripts"
JOB_TIMEOUT = 240


def _load_strategies() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("strategies", SCRIPTS / "strategies.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_strategies = _load_strategies()
STRATEGIES: dict[str, dict[str, Any]] = {
    name: spec for name, spec in _strategies.STRATEGIES.items() if not name.startswith("deepspeed")
}
"""The strategies of the cross-loading suite (the module's fixture: every strategy loads every
strategy's checkpoints)."""

DEEPSPEED = [name for name in _strategies.STRATEGIES if name.startswith("deepspeed")]
"""DeepSpeed's strategies, each a job of its own (checkpoint_scripts/deepspeed_job.py) in the
environment of scripts/test-deepspeed: their engines load only DeepSpeed's own format (another
strategy's optimizer state is refused by design, docs/deepspeed.md), so they stay out of the
cross-loading."""


def _job_command(strategy: str, *args: str) -> list[str]:
    script = str(SCRIPTS / "checkpoint_job.py")
    if STRATEGIES[strategy]["devices"] == 1:
        return [sys.executable, script, strategy, *args]
    nproc = str(STRATEGIES[strategy]["devices"])
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        nproc,
        "--standalone",
        script,
        strategy,
        *args,
    ]


JOB_MEMORY_LIMIT = 6 * 2**30
"""Address-space limit of every job process (inherited by torchrun's workers). A crafted file
once made a loading process of this suite grow to 12 GB on a loaded machine, and the kernel's
out-of-memory killer then ended it: capped, such an allocation fails inside the load, where it
must be reported as a corrupt file, instead of taking the machine's memory."""


MEMO_BOMB = b"N" + b"r" + (1 << 28).to_bytes(4, "little") + b"."
"""``None``, ``LONG_BINPUT 2**28``, ``STOP``: 7 bytes that the C unpickler answers with 4 GiB of
memo (tests/test_load_memory.py measures it)."""


def _memory_capped(command: list[str]) -> list[str]:
    """``command`` run with :data:`JOB_MEMORY_LIMIT` on its address space."""
    cap = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({JOB_MEMORY_LIMIT}, {JOB_MEMORY_LIMIT})); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    return [command[0], "-c", cap, *command[1:]]


def _start_jobs(jobs: dict[str, list[str]], logs: Path) -> dict[str, Any]:
    """Start the commands at once (each in its own process group, killed at the timeout);
    returns futures of their ``Finished`` records."""
    logs.mkdir(parents=True, exist_ok=True)
    env = child_environment({"OMP_NUM_THREADS": "1"})
    pool = concurrent.futures.ThreadPoolExecutor(len(jobs))
    futures = {
        name: pool.submit(
            run,
            _memory_capped(command),
            timeout=JOB_TIMEOUT,
            log=logs / f"{name}.log",
            env=env,
            cwd=SCRIPTS,
        )
        for name, command in jobs.items()
    }
    pool.shutdown(wait=False)
    return futures


def _check_jobs(futures: dict[str, Any]) -> None:
    finished = {name: future.result() for name, future in futures.items()}
    failed = {name: f for name, f in finished.items() if f.returncode != 0}
    assert not failed, "\n\n".join(
        f"{name} {f.describe()}:\n{f.tail(60)}" for name, f in failed.items()
    )


def _wait_for_reports(futures: dict[str, Any], out: Path, action: str) -> None:
    """Until every strategy's processes wrote their ``action`` report (or a job ended)."""
    deadline = time.monotonic() + JOB_TIMEOUT
    for name in futures:
        for rank in range(STRATEGIES[name]["devices"]):
            report = out / f"{name}-{action}.{rank}.json"
            while not report.exists():
                if futures[name].done() or time.monotonic() > deadline:
                    _check_jobs({name: futures[name]})
                    pytest.fail(f"{name} wrote no {report.name}")
                time.sleep(0.05)


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _reports(out: Path, strategy: str, action: str) -> list[dict[str, Any]]:
    ranks = STRATEGIES[strategy]["devices"]
    return [json.loads((out / f"{strategy}-{action}.{r}.json").read_text()) for r in range(ranks)]


# -- payloads ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Payload:
    """Unpickling it creates ``MARKERS/name`` (``$SWITCHYARD_MARKER_DIR/name`` when that is set,
    as the positive control does), through ``os.system`` or ``builtins.exec``."""

    markers: Path
    name: str
    via: str

    def __reduce__(self) -> Any:
        if self.via == "system":
            target = f'"${{SWITCHYARD_MARKER_DIR:-{self.markers}}}/{self.name}"'
            return (os.system, (f"touch {target}",))
        code = (
            "import os; open(os.path.join(os.environ.get('SWITCHYARD_MARKER_DIR', "
            f"{str(self.markers)!r}), {self.name!r}), 'w').close()"
        )
        return (builtins.exec, (code,))


def _torch_bytes(obj: Any, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


@dataclasses.dataclass
class Case:
    name: str
    path: Path
    """The checkpoint (file or directory) to load."""
    file: Path
    """The crafted file in it."""
    kind: str
    """``payload`` or ``corrupt``."""
    opt_out: bool
    """Whether the error must name ``weights_only=False`` (the file really holds objects, and
    unpickling them is what the opt-out does)."""
    marker: Path | None = None
    unsafe: str = ""
    """For payloads: how the positive control runs it (``pickle``, ``torch``, ``record``)."""
    keys: tuple[str, ...] = ("model", "optimizer")


class Crafter:
    """Copies a real checkpoint and crafts one file of the copy, by the rule for its kind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.markers = root / "markers"
        self.markers.mkdir(parents=True)
        self.cases: list[Case] = []
        self.unknown: list[Path] = []

    def craft(self, source: Path, keys: tuple[str, ...]) -> None:
        files = [source] if source.is_file() else sorted(p for p in source.iterdir())
        for file in files:
            head = file.read_bytes()[:4]
            if file.suffix == ".distcp":
                self._distcp(source, file, keys)
            elif head[:2] == b"PK":
                self._torch_file(source, file, keys, legacy_too=source.is_file())
            elif head[:1] == b"\x80":
                self._raw_pickle(source, file, keys)
            else:
                self.unknown.append(file)

    def craft_deepspeed(self, source: Path, keys: tuple[str, ...]) -> None:
        """Every file of a DeepSpeed checkpoint directory, its engine folders' included."""
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            if file.name in ("zero_to_torch.py", "zero_to_fp32.py"):
                continue  # DeepSpeed's consolidation script, for the user: no load reads it
            if file.suffix == ".json":
                # what is where: no pickle, so no payload to hold; corrupt it
                self._corrupt_variants(source, file, keys)
            elif file.read_bytes()[:2] == b"PK":
                self._torch_file(source, file, keys, legacy_too=True)
            else:
                self.unknown.append(file)

    # each rule ---------------------------------------------------------------------------------

    def _copy(self, source: Path, file: Path, variant: str) -> tuple[Path, Path, str]:
        label = f"{source.parent.name}-{source.name}-{file.name.lstrip('.')}-{variant}"
        folder = self.root / "cases" / label
        folder.mkdir(parents=True)
        copy = folder / source.name
        if source.is_dir():
            shutil.copytree(source, copy)
            return copy, copy / file.relative_to(source), label
        shutil.copy2(source, copy)
        return copy, copy, label

    def _payload(self, label: str) -> tuple[Payload, Path]:
        via = "system" if len(self.cases) % 2 == 0 else "exec"
        return Payload(self.markers, label, via), self.markers / label

    def _add(self, label: str, path: Path, file: Path, kind: str, opt_out: bool, **kw: Any) -> None:
        self.cases.append(Case(label, path, file, kind, opt_out, **kw))

    def _corrupt_variants(self, source: Path, file: Path, keys: tuple[str, ...]) -> None:
        for variant in ("truncated", "garbage", "memo-bomb"):
            path, target, label = self._copy(source, file, variant)
            data = target.read_bytes()
            if variant == "truncated":
                target.write_bytes(data[: len(data) // 2])
            elif variant == "garbage":
                target.write_bytes(os.urandom(64) + b"this is not a checkpoint\n" * 8)
            else:
                # what random garbage once held by chance (the 12 GB load): a memo entry whose
                # index the C unpickler allocates twice over, and fills, before anything else
                target.write_bytes(MEMO_BOMB)
            self._add(label, path, target, "corrupt", False, keys=keys)

    def _torch_file(
        self, source: Path, file: Path, keys: tuple[str, ...], legacy_too: bool
    ) -> None:
        for variant in ("payload", "legacy-payload") if legacy_too else ("payload",):
            path, target, label = self._copy(source, file, variant)
            payload, marker = self._payload(label)
            state = {"format": "switchyard-fsdp-sharded", "state": {"x": payload}, "step": 1}
            target.write_bytes(_torch_bytes(state, legacy=variant == "legacy-payload"))
            self._add(
                label, path, target, "payload", True, marker=marker, unsafe="torch", keys=keys
            )
        self._corrupt_variants(source, file, keys)

    def _raw_pickle(self, source: Path, file: Path, keys: tuple[str, ...]) -> None:
        path, target, label = self._copy(source, file, "payload")
        payload, marker = self._payload(label)
        target.write_bytes(pickle.dumps(payload))
        self._add(label, path, target, "payload", True, marker=marker, unsafe="pickle", keys=keys)
        # a real DCP Metadata with the payload deep inside
        original = pickle.loads(file.read_bytes())  # the test's own, freshly written file
        if hasattr(original, "storage_meta"):
            path, target, label = self._copy(source, file, "nested-payload")
            payload, marker = self._payload(label)
            original.storage_meta.modules = ["model", payload]
            target.write_bytes(pickle.dumps(original))
            self._add(
                label, path, target, "payload", True, marker=marker, unsafe="pickle", keys=keys
            )
        self._corrupt_variants(source, file, keys)

    def _distcp(self, source: Path, file: Path, keys: tuple[str, ...]) -> None:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        metadata = pickle.loads((source / ".metadata").read_bytes())
        tensors = {
            k
            for k, v in metadata.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)
        }
        records: dict[str, Any] = {}
        for index, info in metadata.storage_data.items():
            if info.relative_path == file.name:
                records.setdefault("tensor" if index.fqn in tensors else "bytes", index)
        assert records, f"{file} holds no record"
        # the whole file cut short: the metadata promises records it does not hold
        path, target, label = self._copy(source, file, "truncated")
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        self._add(label, path, target, "corrupt", False, keys=keys)
        for kind, index in sorted(records.items()):
            # a payload in place of the record (appended, the metadata pointed at it)
            path, target, label = self._copy(source, file, f"{kind}-record-payload")
            payload, marker = self._payload(label)
            blob = _torch_bytes(payload)
            offset = target.stat().st_size
            with target.open("ab") as handle:
                handle.write(blob)
            copied = pickle.loads((path / ".metadata").read_bytes())
            info = copied.storage_data[index]
            copied.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(blob))
            (path / ".metadata").write_bytes(pickle.dumps(copied))
            # opt-out helps for non-tensor records (read with weights_only as the caller asks);
            # tensor records are read with weights_only=True by DCP whatever the caller asks
            self._add(
                label,
                path,
                target,
                "payload",
                kind == "bytes",
                marker=marker,
                unsafe=f"record:{offset}:{len(blob)}",
                keys=keys,
            )
            # the record overwritten with garbage
            path, target, label = self._copy(source, file, f"{kind}-record-corrupt")
            info = metadata.storage_data[index]
            data = bytearray(target.read_bytes())
            data[info.offset : info.offset + info.length] = (b"garbage!" * info.length)[
                : info.length
            ]
            target.write_bytes(bytes(data))
            self._add(label, path, target, "corrupt", False, keys=keys)


# -- the suite --------------------------------------------------------------------------------------


def _originals(out: Path) -> list[tuple[Path, tuple[str, ...]]]:
    found = []
    for name in STRATEGIES:
        for checkpoint_name, keys in (
            ("ckpt", ("model", "optimizer")),
            ("full.pt", ("model", "optimizer")),
            ("plain", ("model",)),
        ):
            if (out / name / checkpoint_name).exists():
                found.append((out / name / checkpoint_name, keys))
    return found


@dataclasses.dataclass
class Suite:
    generated: Path
    crafted: Crafter
    loaded: dict[str, list[dict[str, Any]]]
    """Per strategy, each process's results of runtime.load."""
    control: Path
    """Where the positive control's payloads created their markers."""


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    """One job per strategy, all at once: each writes its real checkpoints, waits for the
    crafted cases made from every strategy's checkpoints, and loads each of them (and every
    original) through runtime.load. The single-process job then runs the positive control."""
    out = tmp_path_factory.mktemp("checkpoints")
    cases_file, control_file = out / "cases.json", out / "control.json"
    control_name = next(n for n, spec in STRATEGIES.items() if spec["devices"] == 1)
    jobs = {}
    for name in STRATEGIES:
        args = [str(out), "both", str(cases_file)]
        if name == control_name:
            args.append(str(control_file))
        jobs[name] = _job_command(name, *args)
    futures = _start_jobs(jobs, out / "logs")
    try:
        _wait_for_reports(futures, out, "generate")
        crafter = Crafter(tmp_path_factory.mktemp("crafted"))
        for source, keys in _originals(out):
            crafter.craft(source, keys)
        cases = [
            {"name": c.name, "path": str(c.path), "marker": str(c.marker or ""), "keys": c.keys}
            for c in crafter.cases
        ]
        for source, keys in _originals(out):
            cases.append(
                {
                    "name": f"original-{source.parent.name}-{source.name}",
                    "path": str(source),
                    "reference": str(source.parent / "reference.pt"),
                    "keys": keys,
                }
            )
        control = crafter.root / "control"
        control.mkdir()
        payloads = [
            {"file": str(c.file), "unsafe": c.unsafe} for c in crafter.cases if c.kind == "payload"
        ]
        _write_atomically(control_file, json.dumps({"markers": str(control), "cases": payloads}))
        _write_atomically(cases_file, json.dumps(cases))
    finally:
        if not cases_file.exists():
            _write_atomically(cases_file, "[]")  # let the jobs end
    _check_jobs(futures)
    loaded = {name: _reports(out, name, "load") for name in STRATEGIES}
    return Suite(out, crafter, loaded, control)


@pytest.fixture(scope="module")
def generated(suite: Suite) -> Path:
    return suite.generated


@pytest.fixture(scope="module")
def crafted(suite: Suite) -> Crafter:
    return suite.crafted


@pytest.fixture(scope="module")
def loaded(suite: Suite) -> dict[str, list[dict[str, Any]]]:
    return suite.loaded


def _no_markers(crafter: Crafter) -> None:
    assert sorted(p.name for p in crafter.markers.iterdir()) == [], "a payload ran"


def test_every_checkpoint_file_kind_has_a_crafting_rule(crafted: Crafter) -> None:
    assert crafted.unknown == [], (
        f"no crafting rule for {crafted.unknown}: add one to Crafter.craft so that the suite "
        "covers this format"
    )
    kinds = {(c.file.name if c.path.is_dir() else "single file", c.kind) for c in crafted.cases}
    payloads = sum(c.kind == "payload" for c in crafted.cases)
    figures = {
        "crafted_files": len(crafted.cases),
        "payloads": payloads,
        "corrupt": len(crafted.cases) - payloads,
        "strategies": list(STRATEGIES),
        "file_kinds": sorted({k for k, _ in kinds}),
    }
    print(f"crafted checkpoints: {json.dumps(figures)}")
    # every format the strategies write is covered
    for expected in (
        ("single file", "payload"),
        (".metadata", "payload"),
        ("meta.pt", "payload"),
        ("__0_0.distcp", "payload"),
        ("__1_0.distcp", "payload"),
    ):
        assert expected in kinds


def test_payloads_run_when_unpickled_unsafely(suite: Suite) -> None:
    """The positive control: each payload, unpickled the unsafe way (plain pickle,
    torch.load(weights_only=False)) by a throwaway process after its loads, created its marker
    (in a folder of its own), so the suite's payloads are live."""
    payloads = [c for c in suite.crafted.cases if c.kind == "payload"]
    assert payloads
    assert sorted(p.name for p in suite.control.iterdir()) == sorted(c.name for c in payloads)
    _no_markers(suite.crafted)


def _check_refusal(case: Case, result: dict[str, Any]) -> None:
    assert not result["ok"], f"{case.name}: the crafted checkpoint loaded"
    assert result["type"] == "CheckpointError", f"{case.name}: {result['message']}"
    message = result["message"]
    assert str(case.file) in message, f"{case.name}: the file is not named: {message}"
    assert not result.get("marker"), f"{case.name}: the payload ran"
    if case.opt_out:
        assert "weights_only=False" in message, f"{case.name}: {message}"
        assert "refuse" in message
    else:
        assert "weights_only=False" not in message, f"{case.name}: misleading: {message}"
    if case.kind == "corrupt":
        assert "corrupt" in message or "truncated" in message, f"{case.name}: {message}"


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_runtime_load_runs_no_payload_and_names_the_file(
    strategy: str, crafted: Crafter, loaded: dict[str, list[dict[str, Any]]]
) -> None:
    ranks = loaded[strategy]
    assert len(ranks) == STRATEGIES[strategy]["devices"]
    for case in crafted.cases:
        for rank, results in enumerate(ranks):
            result = results[case.name]
            _check_refusal(case, result)
            # every process fails with the same error, none hangs
            assert result["message"] == ranks[0][case.name]["message"], rank
    _no_markers(crafted)


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategys_checkpoint_loads_under_every_strategy(
    strategy: str, loaded: dict[str, list[dict[str, Any]]]
) -> None:
    """Including sharded directories into strategies that do not shard (one process reads the
    whole checkpoint, without FSDP)."""
    results = loaded[strategy][0]
    originals = {k: v for k, v in results.items() if k.startswith("original-")}
    assert len(originals) >= len(STRATEGIES)
    for name, result in originals.items():
        assert result["ok"], f"{name} under {strategy}: {result.get('message')}"
        assert result["keys_match"], name
        assert result["max_diff"] == 0.0, name


def test_load_and_consolidate_in_this_process_run_no_payload(crafted: Crafter, tmp_path: Path):
    for case in crafted.cases:
        with pytest.raises(CheckpointError) as info:
            checkpoint.load(case.path)
        _check_refusal(case, {"ok": False, "type": "CheckpointError", "message": str(info.value)})
        if case.path.is_dir():
            destination = tmp_path / f"{case.name}.pt"
            with pytest.raises(CheckpointError) as info:
                checkpoint.consolidate(case.path, destination)
            message = str(info.value)
            _check_refusal(case, {"ok": False, "type": "CheckpointError", "message": message})
            assert not destination.exists()
    _no_markers(crafted)


def test_switchyard_consolidate_writes_a_file_a_plain_module_loads(
    generated: Path, tmp_path: Path
) -> None:
    source = generated / "fsdp" / "ckpt"
    destination = tmp_path / "consolidated.pt"
    good = subprocess.run(
        [sys.executable, "-m", "switchyard", "consolidate", str(source), str(destination)],
        env=child_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert good.returncode == 0, good.stderr
    assert f"wrote {destination}" in good.stdout
    state = torch.load(destination, weights_only=True)
    assert sorted(state) == ["model", "optimizer", "sched", "step"]
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 5))
    model.load_state_dict(state["model"])
    torch.optim.AdamW(model.parameters()).load_state_dict(state["optimizer"])
    reference = torch.load(generated / "fsdp" / "reference.pt", weights_only=True)
    assert all(torch.equal(state["model"][k], reference[k]) for k in reference)
    assert state["step"] == 3
    assert state["sched"] == {"lr": 0.5}


def test_switchyard_consolidate_refuses_a_crafted_checkpoint_with_a_message(
    crafted: Crafter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's own code (cli.main), in this process."""
    from switchyard import cli

    for case in crafted.cases:
        if not case.path.is_dir():
            continue
        bad = tmp_path / f"{case.name}.pt"
        assert cli.main(["consolidate", str(case.path), str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("switchyard consolidate: error: "), err
        _check_refusal(case, {"ok": False, "type": "CheckpointError", "message": err})
        assert not bad.exists()
    _no_markers(crafted)


def test_consolidate_refuses_to_overwrite_and_single_files(generated: Path, tmp_path: Path):
    destination = tmp_path / "out.pt"
    destination.write_bytes(b"precious")
    with pytest.raises(CheckpointError, match="exists; pass overwrite=True"):
        checkpoint.consolidate(generated / "fsdp" / "ckpt", destination)
    assert destination.read_bytes() == b"precious"
    with pytest.raises(CheckpointError, match="single-file checkpoint already"):
        checkpoint.consolidate(generated / "fsdp" / "full.pt", tmp_path / "other.pt")
    checkpoint.consolidate(generated / "fsdp" / "ckpt", destination, overwrite=True)
    assert torch.load(destination, weights_only=True)["step"] == 3


def test_a_dtensor_in_a_single_file_save_is_refused_naming_it(generated: Path) -> None:
    for name, spec in STRATEGIES.items():
        if spec["devices"] == 1 or (generated / name / "full.pt").exists():
            continue  # one process has no DTensor to refuse; sharding strategies save them
        for report in _reports(generated, name, "generate"):
            refused = report["dtensor_refused"]
            assert refused["raised"], name
            assert "state['extra']['weights']" in refused["message"]
            assert "DTensor" in refused["message"]
            assert "full_tensor()" in refused["message"]
            assert not refused["exists"]


def test_a_save_that_fails_on_rank_zero_fails_on_every_rank(generated: Path) -> None:
    for name, spec in STRATEGIES.items():
        if spec["devices"] == 1 or (generated / name / "full.pt").exists():
            continue
        reports = _reports(generated, name, "generate")
        path = str(generated / name / "ckpt" / "inside-a-file.pt")
        for rank, report in enumerate(reports):
            message = report["rank_zero_failure"]
            assert message is not None, f"{name}: rank {rank} did not raise"
            assert path in message
            assert "cannot be created" in message
        assert all("global rank 0 could not save" in r["rank_zero_failure"] for r in reports[1:])


# -- failed saves -----------------------------------------------------------------------------------


def _small_model_state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    return {"model": model.state_dict(), "step": 1}


def _big_state() -> dict[str, Any]:
    return {"model": {"w": torch.zeros(512 * 1024)}, "step": 2}  # 2 MiB


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real size-limited tmpfs at ``where`` (needs root); skips the test otherwise."""
    where.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _remount_read_only(where: Path) -> None:
    result = subprocess.run(
        ["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        pytest.skip(f"cannot remount read-only: {result.stderr.strip()}")


def test_disk_full_raises_naming_the_path_and_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "small", "1m") as mount:
        path = mount / "last.pt"
        runtime = Runtime(accelerator="cpu", devices=1)
        runtime.save(path, _small_model_state())
        good = path.read_bytes()
        with pytest.raises(CheckpointError) as info:
            runtime.save(path, _big_state())
        message = str(info.value)
        assert str(path) in message
        assert "the file system is full" in message
        assert "inline_container" not in message
        assert path.read_bytes() == good  # the old checkpoint survives
        assert sorted(os.listdir(mount)) == ["last.pt"]  # the partial file is gone
        assert runtime.load(path)["step"] == 1


def test_read_only_file_system_raises_naming_the_path(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "ro", "1m") as mount:
        path = mount / "last.pt"
        runtime = Runtime(accelerator="cpu", devices=1)
        runtime.save(path, _small_model_state())
        good = path.read_bytes()
        _remount_read_only(mount)
        with pytest.raises(CheckpointError) as info:
            runtime.save(path, _small_model_state())
        assert str(path) in str(info.value)
        assert "read-only" in str(info.value)
        assert path.read_bytes() == good
        with pytest.raises(CheckpointError, match="read-only"):
            runtime.save(mount / "sub" / "new.pt", {"step": 1})
        assert runtime.load(path)["step"] == 1  # loading needs no write


def test_file_size_limit_raises_naming_the_path(tmp_path: Path) -> None:
    """RLIMIT_FSIZE (``ulimit -f``) in a child process: a limit any user can set."""
    path = tmp_path / "last.pt"
    script = textwrap.dedent(
        f"""
        import resource, sys, torch
        from switchyard import checkpoint
        from switchyard.errors import CheckpointError
        checkpoint.atomic_save({{"w": torch.zeros(16)}}, {str(path)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        try:
            checkpoint.atomic_save({{"w": torch.zeros(512 * 1024)}}, {str(path)!r})
        except CheckpointError as error:
            print(error)
            sys.exit(0)
        sys.exit("no error")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=child_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(path) in result.stdout
    assert "file-size limit" in result.stdout
    assert "262144 bytes" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert torch.equal(checkpoint.load_file(path)["w"], torch.zeros(16))


@pytest.mark.parametrize(
    ("value", "described"),
    [
        (lambda: 1, "function"),
        (threading.Lock(), "lock"),
        ({"inner": [1, (2, threading.Lock())]}, "lock"),
    ],
    ids=["lambda", "lock", "nested"],
)
def test_an_unpicklable_entry_is_named(tmp_path: Path, value: Any, described: str) -> None:
    path = tmp_path / "last.pt"
    runtime = Runtime(accelerator="cpu", devices=1)
    runtime.save(path, {"step": 1})
    with pytest.raises(CheckpointError) as info:
        runtime.save(path, {"step": 2, "bad": value})
    message = str(info.value)
    assert str(path) in message
    assert "state['bad']" in message
    assert described in message
    assert "cannot be pickled" in message
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert runtime.load(path)["step"] == 1


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_garbage_is_not_answered_with_the_opt_out(tmp_path: Path) -> None:
    runtime = Runtime(accelerator="cpu", devices=1)
    cases = {
        "text.pt": b"hello, this is not a checkpoint\n",
        "empty.pt": b"",
        "zeros.pt": bytes(4096),
        "pickled-int.pt": pickle.dumps(3),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            runtime.load(tmp_path / name)
        assert str(tmp_path / name) in str(info.value), name
        assert "weights_only=False" not in str(info.value), name


# -- stale temporaries --------------------------------------------------------------------------------


def _hold(path: Path) -> subprocess.Popen[str]:
    """Another live process holding a save's lease on ``path`` (as a saving process does)."""
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_SH)\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=child_environment()
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_only_temporaries_no_live_process_holds_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    path.mkdir()
    live_dir = tmp_path / ".ckpt.tmp-aaaaaaaaaaaa"
    dead_dir = tmp_path / ".ckpt.tmp-bbbbbbbbbbbb"
    dead_old = tmp_path / ".ckpt.old-cccccccccccc"
    dead_file = tmp_path / f".ckpt.{'d' * 32}.tmp"
    others = [tmp_path / ".ckpt.tmp-zz", tmp_path / ".other.tmp-aaaaaaaaaaaa", tmp_path / "x"]
    for folder in (live_dir, dead_dir, dead_old, *others):
        folder.mkdir()
        (folder / "shard").write_bytes(b"x" * 1000)
    dead_file.write_bytes(b"partial")
    holder = _hold(live_dir)
    try:
        removed = checkpoint.remove_stale(path)
        assert sorted(removed) == sorted([dead_dir, dead_old, dead_file])
        assert live_dir.exists()  # a live save's
        assert all(p.exists() for p in others)  # not temporaries of this name
    finally:
        holder.kill()
        holder.wait()
    # its process is gone, so it is stale now
    assert checkpoint.remove_stale(path) == [live_dir]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt", *(p.name for p in others)])


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_load_puts_back_a_directory_left_between_the_two_renames(tmp_path: Path) -> None:
    """What a kill between the renames leaves: nothing under the name, the complete new
    checkpoint as .NAME.new-*, the old one as .NAME.old-*. (The kill itself, in a real saving
    process, is in test_checkpoint_kills.py.)"""
    path = tmp_path / "ckpt"
    new = tmp_path / ".ckpt.new-aaaaaaaaaaaa"
    old = tmp_path / ".ckpt.old-aaaaaaaaaaaa"
    for folder, step in ((new, 2), (old, 1)):
        folder.mkdir()
        checkpoint.atomic_save(
            {
                "format": "switchyard-fsdp-sharded",
                "version": 1,
                "sharded": [],
                "state": {"step": step},
            },
            folder / "meta.pt",
        )
    runtime = Runtime(accelerator="cpu", devices=1)
    assert runtime.load(path)["step"] == 2
    assert path.is_dir()
    runtime.save(tmp_path / "other.pt", {"step": 0})
    # the next save of the name removes the old one
    assert checkpoint.remove_stale(path) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "other.pt"]


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_live_replace_is_not_recovered_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    new = tmp_path / ".ckpt.new-aaaaaaaaaaaa"
    new.mkdir()
    holder = _hold(new)  # a save between its renames, alive
    try:
        assert checkpoint.resolve(path, wait=False) == path
        assert not path.exists()
        assert new.exists()
    finally:
        holder.kill()
        holder.wait()
    assert checkpoint.resolve(path) == path
    assert path.is_dir()


# -- DeepSpeed ------------------------------------------------------------------------------------


def _check_json_refusal(case: Case, result: dict[str, Any]) -> None:
    """What the plugin answers a corrupt switchyard-deepspeed.json with: a CheckpointError
    naming the file as corrupt, no payload run."""
    assert not result["ok"], f"{case.name}: the crafted checkpoint loaded"
    assert result["type"] == "CheckpointError", f"{case.name}: {result['message']}"
    assert str(case.file) in result["message"], result["message"]
    assert "corrupt" in result["message"], result["message"]
    assert "weights_only=False" not in result["message"], result["message"]
    assert not result.get("marker")


def _deepspeed_job(strategy: str, out: Path, *args: str) -> Any:
    """Start one DeepSpeed job; returns the future of its ``Finished`` record. Not capped by
    :data:`JOB_MEMORY_LIMIT`: its engine's set-up fails under an address-space limit (even
    16 GiB: its 2 GB buffers come on top of DeepSpeed's own mappings). The memo bomb is still
    safe there: the plugin scans every file with core's ``inspect_pickle``, which unpickles
    nothing, before DeepSpeed reads it."""
    nproc = str(_strategies.STRATEGIES[strategy]["devices"])
    script = str(SCRIPTS / "deepspeed_job.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", nproc]
    command += ["--standalone", script, strategy, str(out), *args]
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(
        run,
        command,
        timeout=JOB_TIMEOUT,
        log=out / f"{strategy}-{args[0]}.log",
        env=child_environment({"OMP_NUM_THREADS": "1"}),
        cwd=SCRIPTS,
    )
    pool.shutdown(wait=False)
    return future


def _check_deepspeed_job(future: Any) -> None:
    finished = future.result()
    assert finished.returncode == 0, f"{finished.describe()}:\n{finished.tail(60)}"


def _wait_for_deepspeed_reports(future: Any, out: Path, strategy: str, action: str) -> None:
    """Until every process of the job wrote its ``action`` report (or the job ended)."""
    deadline = time.monotonic() + JOB_TIMEOUT
    for rank in range(_strategies.STRATEGIES[strategy]["devices"]):
        report = out / f"{strategy}-{action}.{rank}.json"
        while not report.exists():
            if future.done() or time.monotonic() > deadline:
                _check_deepspeed_job(future)
                pytest.fail(f"{strategy} wrote no {report.name}")
            time.sleep(0.05)


@pytest.mark.distributed
@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param(
            name, marks=[pytest.mark.skip(why)] if (why := _strategies.missing(name)) else []
        )
        for name in DEEPSPEED
    ],
)
def test_every_deepspeed_checkpoint_file_crafted_runs_no_payload_and_is_named(
    strategy: str, tmp_path: Path
) -> None:
    """Every file of a real DeepSpeed checkpoint (engine0/'s mp_rank_*_model_states.pt and
    zero_pp_rank_*_states.pt, switchyard's state.pt and switchyard-deepspeed.json), crafted into
    a payload (zip and legacy torch files) or corrupted, is refused by ``runtime.load`` on every
    process with the same CheckpointError naming the file, and by ``checkpoint.load`` and
    ``checkpoint.consolidate`` in this process; no payload runs, while each does when a
    throwaway process unpickles it the unsafe way (the positive control)."""
    out = tmp_path / "out"
    out.mkdir()
    # one job: it generates the checkpoint, waits for the crafted cases, loads them
    job = _deepspeed_job(strategy, out, "both", str(out / "cases.json"), str(out / "control.json"))
    _wait_for_deepspeed_reports(job, out, strategy, "generate")
    try:
        source = out / strategy / "ckpt"
        files = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
        engine_files = [f for f in files if f.startswith("engine0/")]
        assert "state.pt" in files, files
        assert "switchyard-deepspeed.json" in files, files
        assert any(f.endswith("_optim_states.pt") for f in engine_files), files
        assert any(f.endswith("_model_states.pt") for f in engine_files), files

        crafter = Crafter(tmp_path / "crafted")
        crafter.craft_deepspeed(source, ("model", "optimizer"))
        assert crafter.unknown == [], f"no crafting rule for {crafter.unknown}"
        crafted_files = {str(c.file.relative_to(c.path)) for c in crafter.cases}
        assert crafted_files == set(files) - {"zero_to_torch.py", "zero_to_fp32.py"}
        cases = [
            {"name": c.name, "path": str(c.path), "marker": str(c.marker or ""), "keys": c.keys}
            for c in crafter.cases
        ]
        control = crafter.root / "control"
        control.mkdir()
        payloads = [c for c in crafter.cases if c.kind == "payload"]
        unsafe = [{"file": str(c.file), "unsafe": c.unsafe} for c in payloads]
        (out / "control.json").write_text(json.dumps({"markers": str(control), "cases": unsafe}))
        _write_atomically(out / "cases.json", json.dumps(cases))  # the job waits for it
    finally:
        if not (out / "cases.json").exists():  # a check above failed: let the job end now
            _write_atomically(out / "cases.json", "[]")
    _check_deepspeed_job(job)

    ranks = [
        json.loads((out / f"{strategy}-load.{r}.json").read_text())
        for r in range(_strategies.STRATEGIES[strategy]["devices"])
    ]
    for case in crafter.cases:
        check = _check_json_refusal if case.file.suffix == ".json" else _check_refusal
        for rank, results in enumerate(ranks):
            check(case, results[case.name])
            assert results[case.name]["message"] == ranks[0][case.name]["message"], rank
        with pytest.raises(CheckpointError) as info:
            checkpoint.load(case.path)
        check(case, {"ok": False, "type": "CheckpointError", "message": str(info.value)})
        destination = tmp_path / f"{case.name}.pt"
        with pytest.raises(CheckpointError) as info:
            checkpoint.consolidate(case.path, destination)
        check(case, {"ok": False, "type": "CheckpointError", "message": str(info.value)})
        assert not destination.exists()
    _no_markers(crafter)
    assert sorted(p.name for p in control.iterdir()) == sorted(c.name for c in payloads)
    figures = {
        "strategy": strategy,
        "files": files,
        "crafted": len(crafter.cases),
        "payloads": len(payloads),
        "payloads_run_by_loads": 0,
        "payloads_run_by_the_control": len(payloads),
    }
    print(f"crafted deepspeed checkpoints: {json.dumps(figures)}")


@pytest.mark.skipif(
    not DEEPSPEED or _strategies.missing(DEEPSPEED[0]) is not None,
    reason="needs deepspeed: scripts/test-deepspeed",
)
@pytest.mark.parametrize("variant", ["truncated", "not-utf-8"])
def test_a_corrupt_deepspeed_json_is_named_as_corrupt(tmp_path: Path, variant: str) -> None:
    """The metadata file of a DeepSpeed checkpoint (a hand-made one: nothing but the
    metadata is read before the refusal) corrupted: refused naming the file as corrupt, as
    _check_refusal asks of every checkpoint file."""
    path = tmp_path / "ckpt"
    path.mkdir()
    meta = path / "switchyard-deepspeed.json"
    if variant == "truncated":
        meta.write_text('{"format": "switchyard-deepspeed", "engi')
    else:
        meta.write_bytes(b"\xfa\x00" + os.urandom(32))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert str(meta) in message, message
    assert "corrupt" in message or "truncated" in message, message
