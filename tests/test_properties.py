"""Property-based tests (hypothesis) over what users and schedulers hand to switchyard:
``devices`` arguments and strings, ``Runtime`` arguments, the flags of ``switchyard run``, and
every scheduler's variables (issue 8, item 7).

The property is the same everywhere: the input is either accepted, and then what switchyard
answers is consistent (device indices in range, ``0 <= rank < world size``, a port in
``1..65535``...), or refused with a switchyard error that names the argument, flag or variable;
never another exception, never a hang. Nothing is launched.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (the default, :data:`CI_EXAMPLES` examples per test) and
``stress`` (:data:`STRESS_EXAMPLES` per test), e.g.
``HYPOTHESIS_PROFILE=stress pytest tests/test_properties.py --hypothesis-show-statistics``.
Neither keeps an example database; a failure prints the example and the ``@reproduce_failure``
blob to replay it.
"""

from __future__ import annotations

import contextlib
import io
import os
import string
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchyard import Runtime, cli
from switchyard.accelerator import Accelerator
from switchyard.errors import SwitchyardError
from switchyard.registry import default_registry
from switchyard.selection import select
from switchyard.testing.cluster_variables import NAMES, is_cluster_variable
from switchyard.validation import (
    MAX_DEVICES_PER_NODE,
    MAX_NUM_NODES,
    MAX_PORT,
    MIN_PORT,
    address_problem,
)

CI_EXAMPLES = 60
STRESS_EXAMPLES = 2000

_COMMON = {
    "deadline": None,  # the first example pays for imports; pytest-timeout bounds the test
    "database": None,  # no example database in the checkout
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
# CI runs the same examples every time (derandomize): a red CI is a change, never luck; the
# stress profile explores afresh on each run
settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, **_COMMON)
settings.register_profile("stress", max_examples=STRESS_EXAMPLES, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.timeout(600 if PROFILE.max_examples > CI_EXAMPLES else 120)


@contextlib.contextmanager
def environment(variables: Mapping[str, str | None]) -> Iterator[None]:
    """Exactly ``variables`` of those environments read (``None``: unset), restored after."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if is_cluster_variable(key) or key.startswith("SWITCHYARD_"):
            del os.environ[key]
    os.environ.update({k: v for k, v in variables.items() if v is not None})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped plugins, blocks of unknown names
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def refused(error: SwitchyardError, names: set[str]) -> None:
    """The error names one of ``names`` (arguments, flags or variables)."""
    message = str(error)
    assert message.strip(), f"{type(error).__name__} with no message"
    assert any(name in message for name in names), f"names none of {sorted(names)}: {message}"


# -- values -----------------------------------------------------------------------------------

# what a variable can hold: no NUL, no lone surrogates (os.environ refuses both)
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
_ODD_NUMBERS = st.sampled_from(
    [
        "",
        " ",
        "abc",
        "1e3",
        "3_0",
        "\N{SUPERSCRIPT TWO}",
        "+1",
        " 2 ",
        "0x10",
        "-0",
        "1.0",
        "9" * 30,
    ]
)


def _number_text(low: int, high: int) -> st.SearchStrategy[str]:
    """A variable meant to hold an integer in ``low..high``: mostly such, else anything."""
    fine = st.integers(low, high).map(str)
    return st.one_of(
        fine,
        fine,
        fine,
        st.integers(-3, -1).map(str),
        st.integers(10**6, 10**13).map(str),
        _ODD_NUMBERS,
        _TEXT,
    )


_HOSTS = st.one_of(
    st.sampled_from(
        ["127.0.0.1", "::1", "[::1]", "localhost", "node-0.cluster", "", "bad host!", "a..b"]
    ),
    _TEXT,
)
_LOCAL_HOSTS = st.one_of(  # names that need no DNS, where switchyard binds to the address
    st.sampled_from(["127.0.0.1", "::1", "[::1]", "", "bad host!", "a..b", "203.0.113.1"]),
    st.text(alphabet=" !@#$%^&*()=+", max_size=6),
)
_PORTS = st.one_of(
    st.integers(MIN_PORT, MAX_PORT).map(str),
    st.integers(-5, 0).map(str),
    st.integers(MAX_PORT + 1, 10**7).map(str),
    _ODD_NUMBERS,
)

_DEVICES = st.one_of(
    st.integers(-5, 40),
    st.integers(MAX_DEVICES_PER_NODE - 2, MAX_DEVICES_PER_NODE + 2),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.sampled_from(["auto", "AUTO", "-1", "0,1", " 2 ", "", ",", "0,,1", "1e3", "3_0", "0x2"]),
    st.text(alphabet=string.digits + ",- +", max_size=12),
    _TEXT,
    st.lists(st.integers(-3, 12), max_size=10),
    st.tuples(st.integers(0, 8)),
    st.builds(range, st.integers(0, 3000)),
    st.dictionaries(st.integers(0, 3), st.integers(), max_size=3),
    st.just(object()),
)


class EightDevices(Accelerator):
    """Device indices 0..7, so that the base class's ``parse_devices`` (which every indexed
    accelerator inherits) runs on a machine without such devices."""

    device_type = "cpu"

    @classmethod
    def device_count(cls) -> int:
        return 8


def _check_devices(devices: object, accelerator: str | Accelerator, count: int | None) -> None:
    with environment({}):
        try:
            plan = select(default_registry(), accelerator=accelerator, devices=devices)  # type: ignore[arg-type]
        except SwitchyardError as error:
            refused(error, {"devices"})
            return
    indices = plan.device_indices
    assert 1 <= len(indices) <= max(MAX_DEVICES_PER_NODE, count or 0)
    assert plan.world_size == len(indices) * plan.num_nodes
    if count is not None:  # an indexed accelerator: distinct indices of visible devices
        assert len(set(indices)) == len(indices)
        assert all(0 <= i < count for i in indices), indices


@settings(PROFILE)
@given(devices=_DEVICES)
def test_devices_argument_on_the_cpu(devices: object) -> None:
    _check_devices(devices, "cpu", None)


@settings(PROFILE)
@given(devices=_DEVICES)
def test_devices_argument_on_an_indexed_accelerator(devices: object) -> None:
    _check_devices(devices, EightDevices(), 8)


_DEVICE_STRINGS = st.one_of(
    st.from_regex(
        r"\s*(auto|[+-]?[0-9]{1,5}|([0-9]{1,2}\s*,\s*){1,4}[0-9]{1,2},?)\s*", fullmatch=True
    ),
    st.text(alphabet=string.digits + ",- +auto", max_size=16),
    _TEXT,
)


@settings(PROFILE)
@given(text=_DEVICE_STRINGS, indexed=st.booleans())
def test_device_strings(text: str, indexed: bool) -> None:
    if indexed:
        _check_devices(text, EightDevices(), 8)
    else:
        _check_devices(text, "cpu", None)


# -- Runtime arguments ------------------------------------------------------------------------

_NAMED = st.one_of(st.integers(-2, 2), st.floats(), st.booleans(), st.none(), st.just(object()))
_RUNTIME_ARGUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "accelerator": st.one_of(
            st.sampled_from(["auto", "cpu", "CPU", " cpu ", "cpu:cpu", "nope", "", "cuda"]), _NAMED
        ),
        "strategy": st.one_of(
            st.sampled_from(["auto", "single_device", "ddp", "ddp_spawn", "fsdp", "nope", ""]),
            _NAMED,
        ),
        "devices": _DEVICES,
        "num_nodes": st.one_of(
            st.integers(-2, 4),
            st.integers(MAX_NUM_NODES - 1, MAX_NUM_NODES + 1),
            st.integers(),
            st.sampled_from(["1", "2", " 3 ", "x", "0", "1.5", ""]),
            st.floats(),
            st.booleans(),
            st.none(),
        ),
        "precision": st.one_of(
            st.sampled_from(["32-true", "32", "16", "bf16-mixed", "64-true", "bf16", "nope", ""]),
            st.integers(-1, 100),
            _NAMED,
        ),
        "plugins": st.one_of(
            st.none(),
            st.lists(
                st.one_of(
                    st.sampled_from(["no:ddp", "no:fsdp", "no:", "no:nonexistent", "cpu"]),
                    st.integers(),
                    st.none(),
                ),
                max_size=3,
            ),
            st.text(max_size=5),
            st.integers(),
        ),
        "environment": st.one_of(
            st.sampled_from(["auto", "local", "slurm", "torchelastic", "nope", ""]), _NAMED
        ),
    },
)


@settings(PROFILE)
@given(arguments=_RUNTIME_ARGUMENTS)
def test_runtime_arguments(arguments: dict[str, Any]) -> None:
    with environment({}):
        try:
            runtime = Runtime(**arguments)
        except SwitchyardError as error:
            refused(error, {*arguments, "plugin", "devices", "num_nodes"})
            return
        plan = runtime.plan
        assert 1 <= plan.num_nodes <= MAX_NUM_NODES
        assert 1 <= len(plan.device_indices) <= MAX_DEVICES_PER_NODE
        assert plan.world_size == len(plan.device_indices) * plan.num_nodes
        assert 0 <= runtime.node_rank < plan.num_nodes


# -- switchyard run's flags (parsed, never launched) ------------------------------------------

_FLAG_VALUES: dict[str, st.SearchStrategy[str]] = {
    "--devices": st.one_of(_DEVICE_STRINGS, st.integers().map(str)),
    "--num-nodes": _number_text(1, 8),
    "--node-rank": _number_text(0, 8),
    "--main-port": _PORTS,
    "--main-address": _HOSTS,
    "--accelerator": st.one_of(st.sampled_from(["cpu", "auto", "", " "]), _TEXT),
    "--strategy": st.one_of(st.sampled_from(["ddp", "auto", ""]), _TEXT),
    "--precision": st.one_of(st.sampled_from(["32-true", "bf16-mixed", ""]), _TEXT),
}
_FLAGS = st.lists(
    st.sampled_from(sorted(_FLAG_VALUES)).flatmap(
        lambda flag: _FLAG_VALUES[flag].map(lambda value: (flag, value))
    ),
    max_size=5,
)


@settings(PROFILE)
@given(flags=_FLAGS)
def test_run_flags(flags: list[tuple[str, str]]) -> None:
    argv = ["run", *(f"{flag}={value}" for flag, value in flags), "train.py"]
    err = io.StringIO()
    status: object = None
    try:
        with contextlib.redirect_stderr(err):
            args = cli.build_parser().parse_args(argv)
    except SystemExit as exit_:
        status = exit_.code
    if status is not None:
        assert status == 2, err.getvalue()
        last = err.getvalue().strip().splitlines()[-1]
        assert last.startswith("switchyard run: error: argument --"), err.getvalue()
        assert any(f"argument {flag}" in last for flag, _ in flags), last
        return
    assert args.script == "train.py"
    assert args.num_nodes is None or 1 <= args.num_nodes <= MAX_NUM_NODES
    assert 0 <= args.node_rank < MAX_NUM_NODES
    assert args.main_port is None or MIN_PORT <= args.main_port <= MAX_PORT
    assert args.main_address is None or address_problem(args.main_address) is None
    for name in ("devices", "accelerator", "strategy", "precision"):
        value = getattr(args, name)
        assert value is None or value.strip(), name


# -- every scheduler's variables --------------------------------------------------------------


@st.composite
def _layout(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(nodes, processes per node, node rank, local rank) of a consistent job."""
    nodes = draw(st.integers(1, 3))
    per_node = draw(st.integers(1, 4))
    return nodes, per_node, draw(st.integers(0, nodes - 1)), draw(st.integers(0, per_node - 1))


def _torchrun(n: int, p: int, g: int, lr: int) -> dict[str, str]:
    return {
        "TORCHELASTIC_RUN_ID": "none",
        "RANK": str(g * p + lr),
        "WORLD_SIZE": str(n * p),
        "LOCAL_RANK": str(lr),
        "LOCAL_WORLD_SIZE": str(p),
        "GROUP_RANK": str(g),
        "GROUP_WORLD_SIZE": str(n),
        "MASTER_ADDR": "node-0",
        "MASTER_PORT": "29500",
    }


def _slurm(n: int, p: int, g: int, lr: int) -> dict[str, str]:
    return {
        "SLURM_NTASKS": str(n * p),
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(g * p + lr),
        "SLURM_LOCALID": str(lr),
        "SLURM_NODEID": str(g),
        "SLURM_STEP_NUM_TASKS": str(n * p),
        "SLURM_NODELIST": f"node[1-{n}]",
        "SLURM_TASKS_PER_NODE": f"{p}(x{n})",
        "SLURM_NNODES": str(n),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "train",
    }


def _lsf(n: int, p: int, g: int, lr: int) -> dict[str, str]:
    return {
        "LSB_JOBID": "77",
        "JSM_NAMESPACE_SIZE": str(n * p),
        "JSM_NAMESPACE_RANK": str(g * p + lr),
        "JSM_NAMESPACE_LOCAL_RANK": str(lr),
        "JSM_NAMESPACE_LOCAL_SIZE": str(p),
        "LSB_HOSTS": " ".join(["launch", *(f"host{i}" for i in range(n) for _ in range(p))]),
    }


def _open_mpi(n: int, p: int, g: int, lr: int) -> dict[str, str]:
    return {
        "OMPI_COMM_WORLD_SIZE": str(n * p),
        "OMPI_COMM_WORLD_RANK": str(g * p + lr),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(lr),
        "OMPI_COMM_WORLD_LOCAL_SIZE": str(p),
        "MASTER_ADDR": "node-0",
    }


def _hydra(n: int, p: int, g: int, lr: int) -> dict[str, str]:
    return {
        "PMI_SIZE": str(n * p),
        "PMI_RANK": str(g * p + lr),
        "MPI_LOCALRANKID": str(lr),
        "MPI_LOCALNRANKS": str(p),
        "MASTER_ADDR": "node-0",
    }


def _kubeflow(n: int, p: int, g: int, lr: int) -> dict[str, str]:
    return {
        "KUBERNETES_PORT": "tcp://10.0.0.1:443",
        "MASTER_ADDR": "trainer-master-0",
        "MASTER_PORT": "23456",
        "WORLD_SIZE": str(n * p),
        "RANK": str(g),
        "PET_NNODES": str(n),
        "PET_NPROC_PER_NODE": str(p),
        "PET_NODE_RANK": str(g),
    }


def _local(n: int, p: int, g: int, lr: int) -> dict[str, str]:
    return {"NODE_RANK": str(g), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}


def _local_worker(n: int, p: int, g: int, lr: int) -> dict[str, str]:
    return {
        "LOCAL_RANK": str(lr),
        "RANK": str(g * p + lr),
        "WORLD_SIZE": str(n * p),
        "LOCAL_WORLD_SIZE": str(p),
        "NODE_RANK": str(g),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29512",
    }


_SIZE = _number_text(1, 4)
_RANK = _number_text(0, 4)
# per scheduler: its valid layout, and every variable it reads with what a broken one may hold
SCHEDULERS: dict[str, tuple[Any, dict[str, st.SearchStrategy[str]]]] = {
    "torchelastic": (
        _torchrun,
        {
            "TORCHELASTIC_RUN_ID": _TEXT,
            "RANK": _RANK,
            "WORLD_SIZE": _SIZE,
            "LOCAL_RANK": _RANK,
            "LOCAL_WORLD_SIZE": _SIZE,
            "GROUP_RANK": _RANK,
            "GROUP_WORLD_SIZE": _SIZE,
            "MASTER_ADDR": _HOSTS,
            "MASTER_PORT": _PORTS,
        },
    ),
    "slurm": (
        _slurm,
        {
            "SLURM_NTASKS": _SIZE,
            "SLURM_STEP_ID": st.sampled_from(["0", "batch", ""]),
            "SLURM_PROCID": _RANK,
            "SLURM_LOCALID": _RANK,
            "SLURM_NODEID": _RANK,
            "SLURM_STEP_NUM_TASKS": _SIZE,
            "SLURM_NTASKS_PER_NODE": _SIZE,
            "SLURM_NODELIST": st.one_of(
                st.sampled_from(
                    [
                        *("node1", "node[1-2]", "n[001-004]", "n[1-99999999999]", "node[1-"),
                        *("a,b", "", "node[3-1]", "r[1-2]-n[1-2]", "bad!host", "n[1-2],m[5-6]"),
                    ]
                ),
                _TEXT,
            ),
            "SLURM_TASKS_PER_NODE": st.one_of(
                st.sampled_from(["2", "2(x2)", "3(x2),2", "x", "2(x99999999999)", "", "0", "5000"]),
                _TEXT,
            ),
            "SLURM_NNODES": _SIZE,
            "SLURM_JOB_ID": st.one_of(st.sampled_from(["123_4", "", "9" * 40]), _TEXT),
            "SLURM_JOB_NAME": st.sampled_from(["train", "interactive", "bash", ""]),
            "MASTER_ADDR": _HOSTS,
            "MASTER_PORT": _PORTS,
        },
    ),
    "lsf": (
        _lsf,
        {
            "LSB_JOBID": _TEXT,
            "JSM_NAMESPACE_SIZE": _SIZE,
            "JSM_NAMESPACE_RANK": _RANK,
            "JSM_NAMESPACE_LOCAL_RANK": _RANK,
            "JSM_NAMESPACE_LOCAL_SIZE": _SIZE,
            "LSB_HOSTS": st.one_of(
                st.sampled_from(["", "launch", "launch bad!host", "a b c"]), _TEXT
            ),
            "LSB_DJOB_RANKFILE": st.sampled_from(["/nonexistent", "/dev/null", "/", "/dev/zero"]),
            "MASTER_ADDR": _HOSTS,
            "MASTER_PORT": _PORTS,
        },
    ),
    "open-mpi": (
        _open_mpi,
        {
            "OMPI_COMM_WORLD_SIZE": _SIZE,
            "OMPI_COMM_WORLD_RANK": _RANK,
            "OMPI_COMM_WORLD_LOCAL_RANK": _RANK,
            "OMPI_COMM_WORLD_LOCAL_SIZE": _SIZE,
            "PMIX_NAMESPACE": _TEXT,
            "MASTER_ADDR": _HOSTS,
            "MASTER_PORT": _PORTS,
        },
    ),
    "hydra": (
        _hydra,
        {
            "PMI_SIZE": _SIZE,
            "PMI_RANK": _RANK,
            "MPI_LOCALRANKID": _RANK,
            "MPI_LOCALNRANKS": _SIZE,
            "MASTER_ADDR": _HOSTS,
            "MASTER_PORT": _PORTS,
        },
    ),
    "kubeflow": (
        _kubeflow,
        {
            "MASTER_ADDR": _HOSTS,
            "MASTER_PORT": _PORTS,
            "WORLD_SIZE": _SIZE,
            "RANK": _RANK,
            "PET_NNODES": st.one_of(_SIZE, st.sampled_from(["1:2", "2:4"])),
            "PET_NPROC_PER_NODE": st.one_of(_SIZE, st.sampled_from(["auto", "gpu", "cpu"])),
            "PET_NODE_RANK": _RANK,
            "NODE_RANK": _RANK,
        },
    ),
    "local": (
        _local,
        {
            "NODE_RANK": _RANK,
            "GROUP_RANK": _RANK,
            "MASTER_ADDR": _LOCAL_HOSTS,
            "MASTER_PORT": _PORTS,
        },
    ),
    "local-worker": (
        _local_worker,
        {
            "LOCAL_RANK": _RANK,
            "RANK": _RANK,
            "WORLD_SIZE": _SIZE,
            "LOCAL_WORLD_SIZE": _SIZE,
            "NODE_RANK": _RANK,
            "MASTER_ADDR": _LOCAL_HOSTS,
            "MASTER_PORT": _PORTS,
        },
    ),
}


@st.composite
def _scheduler_variables(draw: st.DrawFn, scheduler: str) -> tuple[dict[str, str | None], int]:
    """A job's variables as the scheduler exports them, with up to three of them changed to
    anything or removed; and the ``num_nodes`` the script passes (local runs only)."""
    make, variables = SCHEDULERS[scheduler]
    nodes, per_node, node_rank, local_rank = draw(_layout())
    env: dict[str, str | None] = dict(make(nodes, per_node, node_rank, local_rank))
    for name in draw(st.lists(st.sampled_from(sorted(variables)), max_size=3, unique=True)):
        env[name] = draw(st.one_of(variables[name], st.none()))
    return env, nodes


def _small(value: str | None) -> int:
    """``value`` when it is a small count (what a script would pass on), else 1."""
    text = (value or "").strip()
    return int(text) if text in {str(n) for n in range(1, 9)} else 1


def _runtime_for(scheduler: str, env: Mapping[str, str | None], nodes: int) -> Runtime:
    if scheduler == "kubeflow":
        # a pod runs the devices the job spec names; the script passes them on
        return Runtime(
            accelerator="cpu",
            devices=_small(env.get("PET_NPROC_PER_NODE")),
            num_nodes=_small(env.get("PET_NNODES")),
        )
    if scheduler == "local":
        return Runtime(accelerator="cpu", num_nodes=nodes)
    return Runtime(accelerator="cpu")


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_scheduler_variables(scheduler: str) -> None:
    names = {*SCHEDULERS[scheduler][1], *NAMES, "devices", "num_nodes", "SLURM_", "JSM_"}

    @settings(PROFILE)
    @given(job=_scheduler_variables(scheduler))
    def check(job: tuple[dict[str, str | None], int]) -> None:
        env, nodes = job
        with environment(env):
            try:
                runtime = _runtime_for(scheduler, env, nodes)
                plan, cluster = runtime.plan, runtime.environment
                # what a launch reads, read now
                address, port = cluster.main_address, cluster.main_port
                answers = (
                    cluster.world_size(),
                    cluster.global_rank(),
                    cluster.local_rank(),
                    cluster.node_rank(),
                )
            except SwitchyardError as error:
                refused(error, names)
                return
        assert address_problem(address) is None, address
        assert MIN_PORT <= port <= MAX_PORT
        world, rank, local_rank, node_rank = answers
        assert 0 <= node_rank < plan.num_nodes, (node_rank, plan.num_nodes)
        if cluster.creates_processes_externally:
            # the scheduler's answers are the job: they must describe a job that can exist
            assert world == plan.world_size, (world, plan.world_size)
            assert 0 <= rank < world, (rank, world)
            assert 0 <= local_rank < len(plan.device_indices), (local_rank, plan.device_indices)

    check()
