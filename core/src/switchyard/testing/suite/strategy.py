"""Strategy checks, on the requested number of real processes.

One job per session runs :mod:`switchyard.testing.worker` in every process, started the way a
user starts training (``python -m switchyard run --strategy S --devices N ...``, so the
strategy's own launcher, torchrun or torch.multiprocessing, creates them). Each check below
asserts on what the processes recorded: training matches one process on the whole batch within
``PARITY_RTOL``/``PARITY_ATOL``; ``all_reduce``, ``all_gather``, ``broadcast`` and ``barrier``
have their documented semantics; ``no_backward_sync`` keeps gradients local until the next
synchronised backward; a checkpoint saved then loaded restores identical state.

Where the hardware accelerator is not usable, or has fewer devices than requested, every check
is skipped with the reason.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest
import torch

from switchyard.entries import StrategyEntry
from switchyard.errors import DeviceSelectionError, SelectionError
from switchyard.registry import Registration
from switchyard.strategy import REDUCE_OPS
from switchyard.testing import capabilities, problems, subprocesses, worker
from switchyard.testing.compare import close_difference, state_difference
from switchyard.testing.config import KitConfig, describe
from switchyard.testing.plugin import NOT_APPLICABLE, kit_of
from switchyard.testing.suite import fail

pytestmark = pytest.mark.switchyard_conformance("strategy")

CAPABILITY_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "distributed_entry": ("distributed", {"distributed_backend": None}),
    "sharded_entry": ("sharded", {"supports_sharding": False}),
}
"""For the refusal checks: the entry flag that makes a strategy need a capability, and what the
kit's stand-in accelerator declares instead of it."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    kit = kit_of(metafunc.config)
    for fixture, (flag, _) in CAPABILITY_CASES.items():
        if fixture not in metafunc.fixturenames:
            continue
        entries = [
            r
            for r in kit.entries_under_test()
            if isinstance(r.entry, StrategyEntry) and getattr(r.entry, flag) is True
        ]
        if entries:
            metafunc.parametrize(fixture, entries, ids=[r.entry.name for r in entries])
        else:
            # no entry under test needs the capability: the check does not apply
            metafunc.parametrize(
                fixture, [pytest.param(None, marks=getattr(pytest.mark, NOT_APPLICABLE))]
            )


@dataclass
class StrategyJob:
    """The finished job: how it ended and what each rank recorded."""

    name: str
    world_size: int
    finished: subprocesses.Finished
    ranks: dict[int, dict[str, Any]]
    unreadable: list[str]

    def command(self) -> str:
        return " ".join(self.finished.command)

    def _job_failure(self, what: str) -> NoReturn:
        fail(
            f"{what}. The job ({self.command()}) {self.finished.describe()}. Its output ends "
            f"with:\n{self.finished.tail()}"
        )

    def check(self, name: str) -> dict[int, Any]:
        """Every rank's observations for worker check ``name``; fails, saying why, if a rank
        has none or the check raised there."""
        missing = [r for r in range(self.world_size) if r not in self.ranks]
        if missing:
            extra = f" (unreadable: {'; '.join(self.unreadable)})" if self.unreadable else ""
            self._job_failure(f"rank(s) {missing} of {self.world_size} recorded nothing{extra}")
        observed = {}
        for rank in range(self.world_size):
            record = self.ranks[rank]
            result = record["checks"].get(name)
            if result is None:
                running = record.get("running")
                where = f", while it was running {running!r}" if running else ""
                self._job_failure(f"rank {rank} never finished check {name!r}{where}")
            if not result["ok"]:
                trace = "\n".join(str(result.get("traceback", "")).rstrip().splitlines()[-12:])
                fail(f"{self.name}: {name} raised on rank {rank}: {result['error']}\n{trace}")
            observed[rank] = result["data"]
        return observed


@pytest.fixture(scope="module")
def job(switchyard_kit: KitConfig, tmp_path_factory: pytest.TempPathFactory) -> StrategyJob:
    """Run the worker on ``--switchyard-devices`` processes once for the whole module."""
    kit = switchyard_kit
    strategy = kit.strategy
    assert strategy is not None
    missing = strategy.entry.missing_requirements()
    if missing:
        pytest.skip(f"{describe(strategy)} needs {', '.join(missing)}, which is not installed")
    try:
        strategy.entry.load()
    except Exception as error:
        fail(
            f"{describe(strategy)}: factory {strategy.entry.factory!r} cannot be imported: "
            f"{type(error).__name__}: {error}"
        )
    hardware = kit.hardware
    if hardware is None:
        pytest.skip(f"the strategy checks need an accelerator: {kit.hardware_note}")
    try:
        accelerator = hardware.entry.load()
    except Exception as error:
        fail(f"{describe(hardware)} cannot be imported: {type(error).__name__}: {error}")
    reason = accelerator.unavailable_reason()
    if reason is not None:
        pytest.skip(f"{describe(hardware)} is not usable here: {reason}")
    try:
        accelerator.parse_devices(kit.devices)
    except DeviceSelectionError as error:
        pytest.skip(f"the strategy checks asked for {kit.devices} processes: {error}")
    out = tmp_path_factory.mktemp("switchyard-strategy")
    command = [
        sys.executable,
        "-m",
        "switchyard",
        "run",
        "--accelerator",
        kit.selector(hardware),
        "--strategy",
        kit.selector(strategy),
        "--devices",
        str(kit.devices),
        "--precision",
        kit.strategy_precision,
        "-m",
        "switchyard.testing.worker",
        str(out),
    ]
    finished = subprocesses.run(command, timeout=kit.timeout, log=out / "job.log", cwd=out)
    ranks: dict[int, dict[str, Any]] = {}
    unreadable = []
    for path in sorted(out.glob("rank*.pt")):
        try:
            record = torch.load(path, weights_only=True)
            ranks[int(record["rank"])] = record
        except Exception as error:
            unreadable.append(f"{path.name}: {type(error).__name__}: {error}")
    return StrategyJob(
        f"strategy {strategy.entry.name!r} on {kit.devices} process(es)",
        kit.devices,
        finished,
        ranks,
        unreadable,
    )


def test_processes(job: StrategyJob, record_property: Any) -> None:
    """The strategy ran the job as N separate processes, ranks 0..N-1 of world size N, and the
    job exited cleanly after every check."""
    observed = job.check("processes")
    pids = {data["pid"] for data in observed.values()}
    record_property("devices", {r: d["device"] for r, d in observed.items()})
    record_property("device_names", {r: d["device_name"] for r, d in observed.items()})
    record_property("selected", observed[0]["names"])
    found = []
    for rank, data in observed.items():
        if data["global_rank"] != rank or data["world_size"] != job.world_size:
            found.append(
                f"the process that wrote rank {rank}'s results says global_rank="
                f"{data['global_rank']}, world_size={data['world_size']}"
            )
    if len(pids) != job.world_size:
        found.append(f"{job.world_size} ranks ran in {len(pids)} process(es), not one each")
    unfinished = [r for r, record in job.ranks.items() if not record.get("finished")]
    if unfinished:
        found.append(f"rank(s) {unfinished} did not finish every check")
    if job.finished.returncode != 0:
        found.append(f"the job {job.finished.describe()}:\n{job.finished.tail()}")
    if found:
        fail(f"{job.name}: {'; '.join(found)}")


def test_training_matches_single_process(job: StrategyJob, record_property: Any) -> None:
    """N processes, each training on its 4 rows of one fixed batch, take the same steps as one
    process of plain PyTorch on the whole batch: the losses of each step (averaged over ranks)
    and the final parameters agree within ``PARITY_RTOL``/``PARITY_ATOL``."""
    observed = job.check("training")
    losses, state = problems.reference_training(job.world_size)
    rtol, atol = problems.PARITY_RTOL, problems.PARITY_ATOL
    record_property("tolerance", {"rtol": rtol, "atol": atol, "steps": problems.STEPS})
    prefix = (
        f"{job.name}, training {problems.STEPS} SGD steps, does not match one process training "
        f"on the whole batch (tolerance rtol={rtol:g}, atol={atol:g})"
    )
    per_rank = torch.tensor([observed[r]["losses"] for r in range(job.world_size)])
    problem = close_difference(
        "loss of each step", per_rank.mean(0), torch.tensor(losses), rtol, atol
    )
    if problem is not None:
        fail(f"{prefix}: {problem}")
    if not observed[0]["state"]:
        fail(f"{prefix}: rank 0's module_state_dict() is empty")
    for rank in range(job.world_size):
        got = observed[rank]["state"]
        if not got:
            continue  # a sharded strategy may return the full state on rank 0 only
        if set(got) != set(state):
            fail(f"{prefix}: rank {rank}'s state has keys {sorted(got)}, expected {sorted(state)}")
        for key, want in state.items():
            problem = close_difference(f"rank {rank} parameter {key!r}", got[key], want, rtol, atol)
            if problem is not None:
                fail(f"{prefix}: {problem}")


def test_optimizer_steps_the_module_parameters(
    job: StrategyJob, switchyard_kit: KitConfig, record_property: Any
) -> None:
    """After ``runtime.setup(model, optimizer)`` with an optimizer created before it, the
    optimizer holds none of the parameters the module held before setup that the set-up module
    no longer holds; where setup hands back the user's own optimizer and the parameters are
    float32 (``32-true``), it holds exactly the set-up module's parameters. A strategy that
    declares :attr:`~switchyard.strategy.Strategy.optimizer_steps_master_copies` (its optimizer
    steps copies it writes back, as ZeRO does) is held instead to every parameter of the module
    having changed after the training steps."""
    observed = job.check("training")
    master_copies = any(data["optimizer"].get("master_copies") for data in observed.values())
    exact = switchyard_kit.strategy_precision == "32-true" and not master_copies
    record_property("optimizer", {rank: data["optimizer"] for rank, data in observed.items()})
    record_property("identity_required_for_the_users_optimizer", exact)
    record_property("optimizer_steps_master_copies", master_copies)
    for rank, data in observed.items():
        found = data["optimizer"]
        if master_copies and found["unchanged"]:
            fail(
                f"{job.name}: on rank {rank}, {problems.STEPS} optimizer steps left "
                f"{len(found['unchanged'])} parameter(s) of the set-up module as they were "
                f"({', '.join(found['unchanged'][:6])}). The strategy declares "
                "optimizer_steps_master_copies: its optimizer steps copies of the parameters, "
                "which it must write back into the module's parameters after each step"
            )
        if found["stale"]:
            fail(
                f"{job.name}: on rank {rank} the optimizer created before runtime.setup still "
                f"holds {len(found['stale'])} parameter(s) of the module as it was before "
                f"setup ({', '.join(found['stale'][:6])}), which the set-up module no longer "
                "holds: optimizer.step() updates tensors the model does not compute with. A "
                "strategy that replaces parameters (or the module) must re-point the optimizers "
                "(switchyard.parameters.ParameterNames)"
            )
        if exact and found["users_optimizer"] and (found["not_held"] or found["not_stepped"]):
            fail(
                f"{job.name}: on rank {rank} the user's optimizer, after runtime.setup in "
                f"float32, holds {found['not_held']} parameter(s) the set-up module does not "
                f"and misses {found['not_stepped']} of its {found['module_parameters']}: it must "
                "hold exactly the parameters the module computes with"
            )


def _reduce_expected(op: str, world_size: int) -> torch.Tensor:
    inputs = torch.tensor([worker.reduce_input(r) for r in range(world_size)])
    return {
        "sum": inputs.sum(0),
        "mean": inputs.mean(0),
        "max": inputs.max(0).values,
        "min": inputs.min(0).values,
        "product": inputs.prod(0),
    }[op]


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_all_reduce(job: StrategyJob, op: str) -> None:
    """``all_reduce(op=...)`` gives every rank the sum, mean, max, min or product over ranks of
    each element, in the input's shape (exact up to 1e-6); ``sum`` of integers stays integer."""
    observed = job.check(f"all_reduce_{op}")
    want = _reduce_expected(op, job.world_size)
    inputs = [worker.reduce_input(r) for r in range(job.world_size)]
    for rank, data in observed.items():
        got = data["result"]
        problem = close_difference("result", got.double(), want.double(), 1e-6, 1e-6)
        if problem is not None:
            hint = ""
            for other in REDUCE_OPS:
                if (
                    other != op
                    and got.shape == want.shape
                    and torch.allclose(
                        got.double(), _reduce_expected(other, job.world_size).double()
                    )
                ):
                    hint = f" (that is the {other}, not the {op})"
            fail(
                f"{job.name}: all_reduce(op={op!r}) returned {got.tolist()} on rank {rank}, "
                f"expected {want.tolist()}, the {op} of the ranks' inputs {inputs}{hint}"
            )
        if op == "sum":
            integers = data["integer_result"]
            expected = torch.tensor(
                [job.world_size * (job.world_size + 1) // 2, 2 * job.world_size]
            )
            if integers.dtype != torch.int64 or not torch.equal(integers, expected):
                fail(
                    f"{job.name}: all_reduce(op='sum') of int64 tensors returned "
                    f"{integers.tolist()} ({integers.dtype}) on rank {rank}, expected "
                    f"{expected.tolist()} (torch.int64)"
                )


def test_all_gather(job: StrategyJob) -> None:
    """``all_gather`` stacks every rank's tensor along a new first dimension of size N, in rank
    order, for a 2-D tensor and a 0-d one."""
    observed = job.check("all_gather")
    n = job.world_size
    block = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    want = torch.stack([block + 100 * r for r in range(n)])
    want_scalar = torch.arange(n, dtype=torch.float32)
    for rank, data in observed.items():
        got, scalar = data["block"], data["scalar"]
        if tuple(got.shape) != (n, 2, 3):
            fail(
                f"{job.name}: all_gather of a (2, 3) tensor gave shape {tuple(got.shape)} on "
                f"rank {rank}, expected ({n}, 2, 3)"
            )
        if not torch.equal(got, want):
            order = [round(float(got[i, 0, 0]) / 100) for i in range(n)]
            fail(
                f"{job.name}: all_gather on rank {rank} holds the tensors of ranks {order} "
                f"in that order, expected {list(range(n))}"
            )
        if tuple(scalar.shape) != (n,) or not torch.equal(scalar, want_scalar):
            fail(
                f"{job.name}: all_gather of 0-d tensors gave {scalar.tolist()} (shape "
                f"{tuple(scalar.shape)}) on rank {rank}, expected {want_scalar.tolist()}"
            )


def test_broadcast(job: StrategyJob) -> None:
    """``broadcast(obj, src)`` gives every rank the source's object, from the last rank (a
    non-zero source when N > 1) and from rank 0."""
    observed = job.check("broadcast")
    for rank, data in observed.items():
        source = data["source"]
        for src, got in ((source, data["received"]), (0, data["received_from_zero"])):
            want = {"from": src, "payload": [src] * 3, "text": f"rank {src}"}
            if got != want:
                fail(
                    f"{job.name}: broadcast(obj, src={src}) gave rank {rank} {got!r}, "
                    f"expected rank {src}'s object {want!r}"
                )


def test_barrier(job: StrategyJob) -> None:
    """No rank leaves ``barrier()`` before every rank has entered it (the last rank enters
    ``BARRIER_DELAY`` seconds late)."""
    observed = job.check("barrier")
    last = job.world_size - 1
    early = [r for r, data in observed.items() if not data["marker_seen"]]
    if early:
        fail(
            f"{job.name}: rank(s) {early} left barrier() before rank {last} entered it "
            f"(rank {last} entered {worker.BARRIER_DELAY} s after the others)"
        )


def test_no_backward_sync(job: StrategyJob, record_property: Any) -> None:
    """Inside ``no_backward_sync`` each rank's gradients are its own local ones (a strategy that
    keeps accumulated gradients internally until the next synchronised backward, as sharded
    ones do, exposes none there, which is accepted); the next backward outside it leaves every
    rank the average over ranks of the accumulated gradients (tolerance
    ``GRADIENT_RTOL``/``GRADIENT_ATOL``). Where a strategy exposes no ``param.grad`` after that
    backward either (ZeRO 2 and 3 keep gradient shards to themselves), the gradient is read from
    what one SGD step of ``SYNC_LEARNING_RATE`` then changes in the module's parameters."""
    observed = job.check("no_backward_sync")
    rtol, atol = problems.GRADIENT_RTOL, problems.GRADIENT_ATOL
    record_property("tolerance", {"rtol": rtol, "atol": atol})
    visible = {r: any(g is not None for g in d["inside"].values()) for r, d in observed.items()}
    record_property("local_gradients_visible_inside", visible)
    for name in observed[0]["local"]:
        accumulated = torch.stack([2 * observed[r]["local"][name] for r in observed]).mean(0)
        for rank, data in observed.items():
            inside, after = data["inside"].get(name), data["after"].get(name)
            if visible[rank]:
                if inside is None:
                    fail(
                        f"{job.name}: inside no_backward_sync, parameter {name!r} has no "
                        f"gradient on rank {rank} while others have one"
                    )
                problem = close_difference(
                    f"gradient of {name!r}", inside, data["local"][name], rtol, atol
                )
                if problem is not None:
                    fail(
                        f"{job.name}: inside no_backward_sync rank {rank} must keep its own "
                        f"local gradient, but it was changed (synchronised?): {problem}"
                    )
            what = f"gradient of {name!r}"
            if after is None:
                after = data["step_gradients"].get(name)
                what = f"gradient of {name!r} (read from the optimizer step)"
            if after is None:
                fail(
                    f"{job.name}: parameter {name!r} has no gradient on rank {rank} after a "
                    "synchronised runtime.backward(), and the optimizer step that followed did "
                    "not show one (module_state_dict() holds no such parameter there)"
                )
            problem = close_difference(what, after, accumulated, rtol, atol)
            if problem is not None:
                fail(
                    f"{job.name}: after a synchronised backward following one inside "
                    f"no_backward_sync, rank {rank} must hold the average over ranks of the "
                    f"accumulated gradients: {problem}"
                )


def test_checkpoint_round_trip(job: StrategyJob) -> None:
    """``runtime.save`` then ``runtime.load`` into a differently trained model and optimizer
    restores the saved module and optimizer state bit for bit, and plain values, on every
    rank."""
    observed = job.check("checkpoint")
    for rank, data in observed.items():
        if not data["differed_before_load"]:
            fail(f"{job.name}: kit error: the model to load into already equals the saved one")
        for what in ("model", "optimizer"):
            problem = state_difference(data[f"restored_{what}"], data[f"saved_{what}"])
            if problem is not None:
                fail(
                    f"{job.name}: after save then load, rank {rank}'s {what} state differs "
                    f"from what was saved: {problem}"
                )
        if data["step"] != 2 or data["note"] != "kit":
            fail(
                f"{job.name}: plain values were not restored on rank {rank}: step="
                f"{data['step']!r}, note={data['note']!r} (saved 2 and 'kit')"
            )


def _refusal(
    switchyard_kit: KitConfig, registration: Registration, fixture: str, record_property: Any
) -> None:
    """Selection of ``registration`` on the hardware accelerator declaring, instead of what
    the entry needs, what ``CAPABILITY_CASES[fixture]`` says must raise ``SelectionError``;
    the same selection with the accelerator as it is must not (else the refusal proves
    nothing)."""
    entry = registration.entry
    assert isinstance(entry, StrategyEntry)
    _, declared = CAPABILITY_CASES[fixture]
    hardware = switchyard_kit.hardware
    if hardware is None:
        pytest.skip(f"the refusal checks need an accelerator: {switchyard_kit.hardware_note}")
    missing = entry.missing_requirements()
    if missing:
        pytest.skip(f"{describe(registration)} needs {', '.join(missing)}, which is not installed")
    name = hardware.entry.name
    if entry.accelerators is not None and name not in entry.accelerators:
        pytest.skip(
            f"{describe(registration)} supports accelerators {', '.join(entry.accelerators)}, "
            f"not {name!r}: selection refuses it there whatever the accelerator declares"
        )
    try:
        cls = hardware.entry.load()
    except Exception as error:
        fail(f"{describe(hardware)} cannot be imported: {type(error).__name__}: {error}")
    precision = "32-true"
    if entry.precisions is not None and precision not in entry.precisions:
        precision = entry.precisions[0]
    strategy = switchyard_kit.selector(registration)
    processes = capabilities.CAPABILITY_PROCESSES
    what = (
        f"strategy {strategy!r} on {processes} processes of accelerator {name!r} "
        f"({cls.__qualname__})"
    )
    record_property("accelerator", name)
    record_property("declared", {key: repr(value) for key, value in declared.items()})
    try:
        capabilities.select_with(
            name, capabilities.capability_clone(cls), strategy, precision, processes
        )
    except SelectionError as error:
        pytest.skip(
            f"selection refuses {what} as the accelerator is, so a refusal for "
            f"{capabilities.spell(declared)} would prove nothing: {error}"
        )
    except Exception as error:
        fail(f"selecting {what} raised {type(error).__name__}: {error}, not SelectionError")
    lacking = capabilities.capability_clone(cls, **declared)
    try:
        runtime = capabilities.select_with(name, lacking, strategy, precision, processes)
    except SelectionError as error:
        record_property("refusal", str(error))
        return
    except Exception as error:
        fail(
            f"selecting {what} declaring {capabilities.spell(declared)} raised "
            f"{type(error).__name__}: {error}, not SelectionError"
        )
    backend = lacking.process_group_backend()
    seen = f"process_group_backend() returns {backend!r}"
    if "distributed_backend" in declared and backend is not None:
        seen += (
            " although distributed_backend is None: an override of process_group_backend() "
            "must honour that declaration"
        )
    fail(
        f"selection accepted {what} declaring {capabilities.spell(declared)} ({seen}) and "
        f"chose {runtime.plan.names['strategy']!r}: its processes would start and only then "
        "fail. Selection must refuse it with a SelectionError before any process starts"
    )


def test_refused_without_backend(
    distributed_entry: Registration, switchyard_kit: KitConfig, record_property: Any
) -> None:
    """A multi-process (``distributed=True``) strategy entry of the plugins under test is refused
    with ``SelectionError``, before any process starts, on the accelerator under test declaring
    ``distributed_backend = None``."""
    _refusal(switchyard_kit, distributed_entry, "distributed_entry", record_property)


def test_refused_without_sharding(
    sharded_entry: Registration, switchyard_kit: KitConfig, record_property: Any
) -> None:
    """A sharding (``sharded=True``) strategy entry of the plugins under test is refused with
    ``SelectionError``, before any process starts, on the accelerator under test declaring
    ``supports_sharding = False``."""
    _refusal(switchyard_kit, sharded_entry, "sharded_entry", record_property)
