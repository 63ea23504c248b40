"""Bad input, case by case: every value a user or an environment passes is refused where it
enters, with a switchyard error that names the value and the argument, flag or variable it came
from (issue 8, item 6).

Each case is one wrong value among otherwise valid ones (a real scheduler's variables, a real
``Runtime`` on the CPU, real files on disk), run in this process with a bounded time. The table
in ``docs/security.md`` ("Bad input") is this list; the property-based suite
(``tests/test_properties.py``) searches the same entry points for cases nobody wrote down.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import switchyard
from switchyard import Runtime, cli
from switchyard.accelerator import Accelerator, check_devices_limit
from switchyard.builtin.environments import LocalEnvironment, expand_hostlist, first_host
from switchyard.builtin.environments import lsf as lsf_module
from switchyard.errors import ArgumentError, DeviceSelectionError, SelectionError, SwitchyardError
from switchyard.launchers import torchrun
from switchyard.registry import PluginRegistry
from switchyard.testing.cluster_variables import NAMES, is_cluster_variable
from switchyard.validation import MAX_DEVICES_PER_NODE, MAX_NUM_NODES, address_problem

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], None]:
    """``apply(variables)``: remove every variable an environment reads, then set
    ``variables``; everything is restored afterwards, also what a case or ``switchyard run``
    sets."""
    for key in NAMES:
        monkeypatch.setenv(key, "")  # recorded, so that whatever is set later is undone
        monkeypatch.delenv(key)

    def apply(variables: dict[str, str]) -> None:
        for key in list(os.environ):
            if is_cluster_variable(key) or key.startswith("SWITCHYARD_"):
                monkeypatch.delenv(key)
        for key, value in variables.items():
            monkeypatch.setenv(key, value)

    apply({})

    return apply


# -- a valid layout per scheduler: two processes, this one rank 0 ---------------------------

TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "none",
    "RANK": "0",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "0",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "0",
    "GROUP_WORLD_SIZE": "1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}
SLURM = {
    "SLURM_NTASKS": "2",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_NODELIST": "node1",
    "SLURM_TASKS_PER_NODE": "2",
    "SLURM_NNODES": "1",
    "SLURM_JOB_ID": "1234",
    "SLURM_JOB_NAME": "train",
}
LSF = {
    "LSB_JOBID": "77",
    "JSM_NAMESPACE_SIZE": "2",
    "JSM_NAMESPACE_RANK": "0",
    "JSM_NAMESPACE_LOCAL_RANK": "0",
    "JSM_NAMESPACE_LOCAL_SIZE": "2",
    "LSB_HOSTS": "launch host1 host1",
}
OMPI = {
    "OMPI_COMM_WORLD_SIZE": "2",
    "OMPI_COMM_WORLD_RANK": "0",
    "OMPI_COMM_WORLD_LOCAL_RANK": "0",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
}
HYDRA = {"PMI_SIZE": "2", "PMI_RANK": "0", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"}
KUBEFLOW = {
    "KUBERNETES_PORT": "tcp://10.0.0.1:443",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "23456",
    "WORLD_SIZE": "2",
    "RANK": "0",
    "PET_NNODES": "1",
    "PET_NPROC_PER_NODE": "2",
    "PET_NODE_RANK": "0",
}
LOCAL_WORKER = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)


def _answers(runtime: Runtime) -> tuple[Any, ...]:
    """Everything a launch asks the environment, so that a value read only then is read now."""
    env = runtime.environment
    return (
        env.main_address,
        env.main_port,
        runtime.world_size,
        runtime.global_rank,
        runtime.local_rank,
        runtime.node_rank,
        env.local_world_size(),
    )


def runtime(**kwargs: Any) -> Callable[[Path], Any]:
    return lambda tmp: _answers(Runtime(**kwargs))


def one_process() -> Runtime:
    return Runtime(accelerator="cpu", devices=1)


def call(method: str, *args: Any, **kwargs: Any) -> Callable[[Path], Any]:
    return lambda tmp: getattr(one_process(), method)(*args, **kwargs)


def saving(state: Any, **kwargs: Any) -> Callable[[Path], Any]:
    return lambda tmp: one_process().save(tmp / "c.ckpt", state, **kwargs)


def loading(state: Any = None, **kwargs: Any) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        path = tmp / "good.ckpt"
        torch.save({"model": Net().state_dict()}, path)
        return one_process().load(path, state, **kwargs)

    return run


def plugin_registry(**kwargs: Any) -> Callable[[Path], Any]:
    return lambda tmp: PluginRegistry(**kwargs)


class EightDevices(Accelerator):
    """An accelerator with device indices 0..7, for the base class's own parse_devices."""

    device_type = "cpu"

    @classmethod
    def device_count(cls) -> int:
        return 8


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Path], Any]
    error: type[BaseException]
    tokens: tuple[str, ...]
    env: dict[str, str] | None = None


def case(
    id: str,
    run: Callable[[Path], Any],
    error: type[BaseException],
    *tokens: str,
    env: dict[str, str] | None = None,
) -> Any:
    return pytest.param(Case(id, run, error, tokens, env), id=id)


S, D, A = SelectionError, DeviceSelectionError, ArgumentError
V = "was read from the variable"

CASES = [
    # -- Runtime arguments --------------------------------------------------------------
    case("accelerator=42", runtime(accelerator=42), S, "accelerator=42"),
    case("accelerator=list", runtime(accelerator=["cpu"]), S, "accelerator=['cpu']"),
    case("accelerator=unknown", runtime(accelerator="nope"), S, "unknown accelerator 'nope'"),
    case("strategy=42", runtime(strategy=42), S, "strategy=42"),
    case("strategy=unknown", runtime(strategy="nope"), S, "unknown strategy 'nope'"),
    case("devices=10**9", runtime(devices=10**9), D, "devices=1000000000", "1024"),
    case("devices='10**9'", runtime(devices="1000000000"), D, "devices='1000000000'", "1024"),
    case("devices=2**70", runtime(devices=2**70), D, "devices=1180591620717411303424"),
    case("devices=0", runtime(devices=0), D, "devices=0"),
    case("devices=-2", runtime(devices=-2), D, "devices=-2"),
    case("devices=1.5", runtime(devices=1.5), D, "devices=1.5"),
    case("devices=nan", runtime(devices=float("nan")), D, "devices=nan"),
    case("devices=abc", runtime(devices="abc"), D, "devices='abc'"),
    case("devices=True", runtime(devices=True), D, "devices=True"),
    case("devices=object", runtime(devices=object()), D, "devices=<object"),
    case(
        "indexed devices=range(10**9)",
        lambda tmp: EightDevices.parse_devices(range(10**9)),
        D,
        "devices=range(0, 1000000000)",
        "1024",
    ),
    case(
        "indexed devices=generator",
        lambda tmp: EightDevices.parse_devices(i for i in range(10**9)),
        D,
        "1025",
    ),
    case("indexed devices=1.5", lambda tmp: EightDevices.parse_devices(1.5), D, "devices=1.5"),
    case("indexed devices=[0,0]", lambda tmp: EightDevices.parse_devices([0, 0]), D, "[0, 0]"),
    case("indexed devices=[9]", lambda tmp: EightDevices.parse_devices([9]), D, "index 9"),
    case("indexed devices='0,x'", lambda tmp: EightDevices.parse_devices("0,x"), D, "'0,x'"),
    case("num_nodes=0", runtime(num_nodes=0), S, "num_nodes=0"),
    case("num_nodes=-1", runtime(num_nodes=-1), S, "num_nodes=-1"),
    case("num_nodes=1.5", runtime(num_nodes=1.5), S, "num_nodes=1.5"),
    case("num_nodes=x", runtime(num_nodes="x"), S, "num_nodes='x'"),
    case("num_nodes=True", runtime(num_nodes=True), S, "num_nodes=True"),
    case("num_nodes=10**9", runtime(num_nodes=10**9), S, "num_nodes=1000000000", "65536"),
    case("precision=unknown", runtime(precision="nope"), S, "unknown precision 'nope'"),
    case("precision=17", runtime(precision=17), S, "precision '17'"),
    case("precision=16.0", runtime(precision=16.0), S, "precision=16.0"),
    case("precision=True", runtime(precision=True), S, "precision=True"),
    case("plugins=[42]", runtime(plugins=[42]), A, "plugins[0]=42", "not a plugin"),
    case("plugins=[None]", runtime(plugins=[None]), A, "plugins[0]=None"),
    case("plugins=[object]", runtime(plugins=[object()]), A, "plugins[0]=<object"),
    case("plugins='cpu'", runtime(plugins="cpu"), A, "plugins='cpu'", "must be a list"),
    case("plugins=42", runtime(plugins=42), A, "plugins=42"),
    case("plugins=['no:']", runtime(plugins=["no:"]), A, "plugins[0]='no:'"),
    case("plugins=['cpu']", runtime(plugins=["cpu"]), A, "plugins[0]='cpu'", "no:NAME"),
    case("environment=42", runtime(environment=42), S, "environment=42"),
    case("environment=class", runtime(environment=LocalEnvironment), S, "environment=<class"),
    case("environment=unknown", runtime(environment="nope"), S, "unknown environment 'nope'"),
    case("registry autoload=maybe", plugin_registry(autoload="maybe"), A, "autoload='maybe'"),
    case("registry allow='cpu'", plugin_registry(allow="cpu"), A, "allow='cpu'"),
    case("registry block='cpu'", plugin_registry(block="cpu"), A, "block='cpu'"),
    case("registry block=['']", plugin_registry(block=[""]), A, "block=['']"),
    # -- SWITCHYARD_* -------------------------------------------------------------------
    case(
        "SWITCHYARD_ACCELERATOR",
        runtime(),
        S,
        "'nope'",
        f"{V} SWITCHYARD_ACCELERATOR",
        env={"SWITCHYARD_ACCELERATOR": "nope"},
    ),
    case(
        "SWITCHYARD_STRATEGY",
        runtime(),
        S,
        f"{V} SWITCHYARD_STRATEGY",
        env={"SWITCHYARD_STRATEGY": "nope"},
    ),
    case(
        "SWITCHYARD_DEVICES=abc",
        runtime(),
        D,
        "devices='abc'",
        f"{V} SWITCHYARD_DEVICES",
        env={"SWITCHYARD_DEVICES": "abc"},
    ),
    case(
        "SWITCHYARD_DEVICES=10**9",
        runtime(),
        D,
        "1024",
        f"{V} SWITCHYARD_DEVICES",
        env={"SWITCHYARD_DEVICES": "1000000000"},
    ),
    case(
        "SWITCHYARD_NUM_NODES=abc",
        runtime(),
        S,
        "num_nodes='abc'",
        f"{V} SWITCHYARD_NUM_NODES",
        env={"SWITCHYARD_NUM_NODES": "abc"},
    ),
    case(
        "SWITCHYARD_NUM_NODES=0",
        runtime(),
        S,
        f"{V} SWITCHYARD_NUM_NODES",
        env={"SWITCHYARD_NUM_NODES": "0"},
    ),
    case(
        "SWITCHYARD_NUM_NODES=10**9",
        runtime(),
        S,
        "65536",
        f"{V} SWITCHYARD_NUM_NODES",
        env={"SWITCHYARD_NUM_NODES": "1000000000"},
    ),
    case(
        "SWITCHYARD_PRECISION",
        runtime(),
        S,
        f"{V} SWITCHYARD_PRECISION",
        env={"SWITCHYARD_PRECISION": "nope"},
    ),
    case(
        "SWITCHYARD_ENVIRONMENT",
        runtime(),
        S,
        f"{V} SWITCHYARD_ENVIRONMENT",
        env={"SWITCHYARD_ENVIRONMENT": "nope"},
    ),
    case(
        "SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD=maybe",
        runtime(),
        S,
        "SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD='maybe'",
        "yes/no",
        env={"SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD": "maybe"},
    ),
    case(
        "SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD=2",
        runtime(),
        S,
        "SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD='2'",
        env={"SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD": "2"},
    ),
    case(
        "SWITCHYARD_GLOBAL_SEED=abc",
        lambda tmp: switchyard.seed_everything(),
        A,
        "SWITCHYARD_GLOBAL_SEED='abc'",
        env={"SWITCHYARD_GLOBAL_SEED": "abc"},
    ),
    case(
        "SWITCHYARD_GLOBAL_SEED=-1",
        lambda tmp: switchyard.seed_everything(),
        A,
        "SWITCHYARD_GLOBAL_SEED='-1'",
        env={"SWITCHYARD_GLOBAL_SEED": "-1"},
    ),
    case(
        "SWITCHYARD_GLOBAL_SEED=2**40",
        lambda tmp: switchyard.seed_everything(),
        A,
        "SWITCHYARD_GLOBAL_SEED='1099511627776'",
        env={"SWITCHYARD_GLOBAL_SEED": str(2**40)},
    ),
    case("seed=1.5", lambda tmp: switchyard.seed_everything(1.5), A, "seed=1.5"),  # type: ignore[arg-type]
    case("seed='3'", lambda tmp: switchyard.seed_everything("3"), A, "seed='3'"),  # type: ignore[arg-type]
    # -- torchrun ------------------------------------------------------------------------
    *[
        case(
            f"torchrun {name}={value}",
            runtime(),
            S,
            f"{name}={value!r}",
            env={**TORCHRUN, name: value},
        )
        for name, value in [
            ("RANK", "abc"),
            ("WORLD_SIZE", "abc"),
            ("LOCAL_RANK", "abc"),
            ("GROUP_RANK", "abc"),
            ("LOCAL_WORLD_SIZE", "abc"),
            ("GROUP_WORLD_SIZE", "abc"),
            ("MASTER_PORT", "abc"),
            ("MASTER_PORT", "70000"),
            ("MASTER_PORT", "0"),
            ("WORLD_SIZE", "0"),
            ("WORLD_SIZE", str(10**12)),
            ("LOCAL_WORLD_SIZE", str(10**12)),
            ("MASTER_ADDR", "bad host!"),
            ("RANK", "-1"),
            ("RANK", "1e3"),
            ("RANK", "\N{SUPERSCRIPT TWO}"),
            ("RANK", "3_0"),
        ]
    ],
    case(
        "torchrun RANK=<5000 digits>",
        runtime(),
        S,
        "RANK='999",
        "(5000 characters)",
        env={**TORCHRUN, "RANK": "9" * 5000},
    ),
    # -- srun ----------------------------------------------------------------------------
    *[
        case(f"srun {name}={value}", runtime(), S, f"{name}={value!r}", env={**SLURM, name: value})
        for name, value in [
            ("SLURM_PROCID", "abc"),
            ("SLURM_LOCALID", "abc"),
            ("SLURM_NODEID", "abc"),
            ("SLURM_STEP_NUM_TASKS", "abc"),
            ("SLURM_TASKS_PER_NODE", "x"),
            ("SLURM_TASKS_PER_NODE", "2(x99999999999)"),
            ("SLURM_TASKS_PER_NODE", "5000"),
            ("SLURM_NODELIST", "node[1-"),
            ("SLURM_NODELIST", "node[3-1]"),
            ("SLURM_NNODES", "abc"),
            ("SLURM_STEP_NUM_TASKS", "0"),
            ("MASTER_PORT", "70000"),
            ("MASTER_ADDR", "no such host"),
        ]
    ],
    case(
        "srun SLURM_NTASKS=abc",
        runtime(),
        S,
        "SLURM_NTASKS='abc'",
        env={
            **{k: v for k, v in SLURM.items() if k != "SLURM_STEP_NUM_TASKS"},
            "SLURM_NTASKS": "abc",
        },
    ),
    case(
        "srun SLURM_NTASKS_PER_NODE=abc",
        runtime(),
        S,
        "SLURM_NTASKS_PER_NODE='abc'",
        env={
            **{k: v for k, v in SLURM.items() if k != "SLURM_TASKS_PER_NODE"},
            "SLURM_NTASKS_PER_NODE": "abc",
        },
    ),
    case(
        "srun first host not a host name",
        runtime(),
        S,
        "SLURM_NODELIST='bad!host'",
        env={**SLURM, "SLURM_NODELIST": "bad!host"},
    ),
    # -- jsrun ---------------------------------------------------------------------------
    *[
        case(f"jsrun {name}={value}", runtime(), S, f"{name}={value!r}", env={**LSF, name: value})
        for name, value in [
            ("JSM_NAMESPACE_RANK", "abc"),
            ("JSM_NAMESPACE_SIZE", "abc"),
            ("JSM_NAMESPACE_LOCAL_RANK", "abc"),
            ("JSM_NAMESPACE_LOCAL_SIZE", "abc"),
            ("LSB_DJOB_RANKFILE", "/nonexistent/rankfile"),
            ("LSB_DJOB_RANKFILE", "/dev/zero"),
            ("LSB_DJOB_RANKFILE", "/"),
            ("MASTER_ADDR", "a..b"),
        ]
    ],
    case(
        "jsrun first host not a host name",
        runtime(),
        S,
        "LSB_HOSTS",
        "'bad!host'",
        env={**LSF, "LSB_HOSTS": "launch bad!host"},
    ),
    # -- mpirun / mpiexec ----------------------------------------------------------------
    *[
        case(f"mpirun {name}={value}", runtime(), S, f"{name}={value!r}", env={**OMPI, name: value})
        for name, value in [
            ("OMPI_COMM_WORLD_RANK", "abc"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "abc"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "abc"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "0"),
            ("OMPI_COMM_WORLD_SIZE", "-3"),
            ("MASTER_PORT", "99999"),
            ("MASTER_ADDR", "bad host"),
        ]
    ],
    *[
        case(
            f"mpiexec {name}={value}", runtime(), S, f"{name}={value!r}", env={**HYDRA, name: value}
        )
        for name, value in [("PMI_RANK", "abc"), ("PMI_SIZE", "abc"), ("MPI_LOCALNRANKS", "abc")]
    ],
    # -- Kubeflow PyTorchJob -------------------------------------------------------------
    *[
        case(
            f"PyTorchJob {name}={value}",
            runtime(devices=2),
            S,
            f"{name}={value!r}",
            env={**KUBEFLOW, name: value},
        )
        for name, value in [
            ("MASTER_PORT", "abc"),
            ("MASTER_PORT", "70000"),
            ("MASTER_ADDR", "bad host"),
            ("PET_NPROC_PER_NODE", "abc"),
            ("PET_NPROC_PER_NODE", "0"),
            ("PET_NNODES", "abc"),
            ("NODE_RANK", "abc"),
            ("PET_NODE_RANK", "abc"),
        ]
    ],
    case(
        "PyTorchJob RANK=abc",
        runtime(devices=2),
        S,
        "RANK='abc'",
        env={**KUBEFLOW, "RANK": "abc", "PET_NODE_RANK": ""},
    ),
    case(
        "PyTorchJob WORLD_SIZE=abc",
        runtime(devices=2),
        S,
        "WORLD_SIZE='abc'",
        env={**KUBEFLOW, "WORLD_SIZE": "abc", "PET_NNODES": ""},
    ),
    # -- one machine or nodes started by hand --------------------------------------------
    case("local NODE_RANK=abc", runtime(), S, "NODE_RANK='abc'", env={"NODE_RANK": "abc"}),
    case("local GROUP_RANK=abc", runtime(), S, "GROUP_RANK='abc'", env={"GROUP_RANK": "abc"}),
    case("local NODE_RANK=-1", runtime(), S, "NODE_RANK='-1'", env={"NODE_RANK": "-1"}),
    case(
        "local MASTER_PORT=70000", runtime(), S, "MASTER_PORT='70000'", env={"MASTER_PORT": "70000"}
    ),
    case(
        "local MASTER_ADDR=bad",
        runtime(),
        S,
        "MASTER_ADDR='bad host!'",
        env={"MASTER_ADDR": "bad host!"},
    ),
    case(
        "local MASTER_ADDR not of this machine",
        runtime(),
        S,
        "MASTER_ADDR='203.0.113.1'",
        env={"MASTER_ADDR": "203.0.113.1"},
    ),
    *[
        case(
            f"local worker {name}=abc",
            runtime(),
            S,
            f"{name}='abc'",
            env={**LOCAL_WORKER, name: "abc"},
        )
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    ],
    # -- collectives ---------------------------------------------------------------------
    case("broadcast src=5", call("broadcast", 1, src=5), A, "src=5", "0..0"),
    case("broadcast src=-1", call("broadcast", 1, src=-1), A, "src=-1"),
    case("broadcast src='0'", call("broadcast", 1, src="0"), A, "src='0'"),
    case("broadcast src=1.0", call("broadcast", 1, src=1.0), A, "src=1.0"),
    case("broadcast src=True", call("broadcast", 1, src=True), A, "src=True"),
    case("all_reduce op=avg", call("all_reduce", torch.ones(1), op="avg"), A, "op='avg'"),
    case("all_reduce op=None", call("all_reduce", torch.ones(1), op=None), A, "op=None"),
    case("all_reduce op=5", call("all_reduce", torch.ones(1), op=5), A, "op=5"),
    case("all_reduce 'abc'", call("all_reduce", "abc"), A, "all_reduce", "'abc'"),
    case("all_reduce object", call("all_reduce", object()), A, "all_reduce", "object"),
    case("all_reduce nested str", call("all_reduce", {"a": [1, "x"]}), A, "all_reduce", "'x'"),
    case("all_reduce 10**30", call("all_reduce", 10**30), A, "all_reduce", "does not fit"),
    case("all_gather 'abc'", call("all_gather", "abc"), A, "all_gather", "'abc'"),
    case("all_gather object", call("all_gather", object()), A, "all_gather"),
    case("barrier name=5", call("barrier", 5), A, "name=5"),
    case("barrier name=object", call("barrier", object()), A, "barrier name=<object"),
    # -- save / load ---------------------------------------------------------------------
    case("save path=42", lambda tmp: one_process().save(42, {"a": 1}), A, "save path=42"),
    case("save path=None", lambda tmp: one_process().save(None, {"a": 1}), A, "path=None"),
    case("save path=bytes", lambda tmp: one_process().save(b"x.pt", {"a": 1}), A, "path=b'x.pt'"),
    case("save path=''", lambda tmp: one_process().save("", {"a": 1}), A, "path=''"),
    case("save state=list", saving([1, 2]), A, "save state=[1, 2]"),
    case("save state=None", saving(None), A, "save state=None"),
    case("save state key=1", saving({1: 2}), A, "key 1"),
    case(
        "save filter=function",
        saving({"model": Net()}, filter=lambda k, v: True),
        A,
        "save filter=<function",
    ),
    case("save filter=42", saving({"model": Net()}, filter=42), A, "save filter=42"),
    case(
        "save filter value=42",
        saving({"model": Net()}, filter={"model": 42}),
        A,
        "filter['model']=42",
    ),
    case(
        "save filter unknown key",
        saving({"model": Net()}, filter={"modle": lambda k, v: True}),
        A,
        "'modle'",
        "'model'",
    ),
    case(
        "save filter on a plain value",
        saving({"m": 1}, filter={"m": lambda k, v: True}),
        A,
        "filter['m']",
        "state['m']=1",
    ),
    case("load path=42", lambda tmp: one_process().load(42), A, "load path=42"),
    case("load state=list", loading([1]), A, "load state=[1]"),
    case("load strict='yes'", loading({"model": Net()}, strict="yes"), A, "strict='yes'"),
    case("load strict=1", loading(None, strict=1), A, "strict=1"),
    case(
        "load weights_only='no'",
        loading({"model": Net()}, weights_only="no"),
        A,
        "weights_only='no'",
    ),
    case("load weights_only=0", loading({"model": Net()}, weights_only=0), A, "weights_only=0"),
    case(
        "load weights_only=None",
        loading({"model": Net()}, weights_only=None),
        A,
        "weights_only=None",
    ),
]


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_refused_naming_it(
    bad: Case, clean_env: Callable[[dict[str, str]], None], tmp_path: Path
) -> None:
    clean_env(bad.env or {})
    start = time.monotonic()
    with pytest.raises(bad.error) as info:
        bad.run(tmp_path)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert isinstance(info.value, SwitchyardError), f"{type(info.value).__name__}: {message}"
    for token in bad.tokens:
        assert token in message, f"{token!r} not in: {message}"
    assert elapsed < 20, f"refused only after {elapsed:.1f} s"


# -- switchyard run --------------------------------------------------------------------------


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``switchyard run`` must refuse these before starting anything."""

    def launched(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"switchyard run started the job: {args!r}")

    monkeypatch.setattr(os, "execv", launched)
    monkeypatch.setattr(torchrun, "run_torchrun", launched)


FLAG_CASES = [
    # argparse refuses these, naming the flag: exit status 2 and "argument --flag: ..."
    (["--num-nodes", "abc"], "argument --num-nodes", "'abc'"),
    (["--num-nodes", "0"], "argument --num-nodes", "'0'"),
    (["--num-nodes", str(10**9)], "argument --num-nodes", "65536"),
    (["--node-rank", "-1"], "argument --node-rank", "'-1'"),
    (["--node-rank", str(10**20)], "argument --node-rank", "out of range"),
    (["--main-port", "70000"], "argument --main-port", "'70000'"),
    (["--main-port", "0"], "argument --main-port", "'0'"),
    (["--main-port", "-1"], "argument --main-port", "'-1'"),
    (["--main-port", "abc"], "argument --main-port", "'abc'"),
    (["--main-address", ""], "argument --main-address", "is empty"),
    (["--main-address", "bad host!"], "argument --main-address", "'bad host!'"),
    (["--devices", ""], "argument --devices", "is empty"),
    (["--devices", str(10**9)], "argument --devices", "1024"),
    (["--accelerator", " "], "argument --accelerator", "is empty"),
    # refused when the plan is made, naming the flag
    (["--devices", "abc"], "came from the flag --devices", "devices='abc'"),
    (["--accelerator", "nope"], "came from the flag --accelerator", "'nope'"),
    (["--strategy", "nope"], "came from the flag --strategy", "'nope'"),
    (["--precision", "nope"], "came from the flag --precision", "'nope'"),
    (["--node-rank", "5", "--num-nodes", "2"], "--node-rank 5 is not below --num-nodes 2", ""),
    (["--node-rank", "1"], "NODE_RANK=1 came from the flag --node-rank", ""),
]


@pytest.mark.parametrize(
    ("flags", "named", "value"), FLAG_CASES, ids=[" ".join(c[0]) or "''" for c in FLAG_CASES]
)
def test_bad_run_flags_are_refused_naming_the_flag(
    flags: list[str],
    named: str,
    value: str,
    clean_env: Callable[[dict[str, str]], None],
    no_launch: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean_env({})
    try:
        status = cli.main(["run", *flags, "train.py"])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("switchyard run: error: "), err
    assert named in last, last
    assert value in last, last
    assert "Traceback" not in err


SCRIPT_CASES = [
    (["trian.py"], "the script 'trian.py' does not exist", "Did you mean 'train.py'?"),
    (["data"], "the script 'data' is a directory", "Give the path of a Python file"),
    (["-m", "no_such_module_xyz"], "no module 'no_such_module_xyz' can be imported", "install"),
]


@pytest.mark.parametrize(
    ("target", "problem", "advice"), SCRIPT_CASES, ids=["typo", "dir", "module"]
)
def test_run_refuses_a_script_that_is_not_there_before_starting_anything(
    target: list[str],
    problem: str,
    advice: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_env: Callable[[dict[str, str]], None],
    no_launch: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean_env({})
    (tmp_path / "train.py").write_text("print('hello')\n")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    status = cli.main(["run", "--accelerator", "cpu", "--devices", "2", *target])
    err = capsys.readouterr().err
    assert status == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("switchyard run: error: "), err
    assert problem in last, last
    assert advice in last, last


def test_version_names_switchyard_torch_and_python(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata
    import platform

    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == (
        f"switchyard {importlib.metadata.version('switchyard')} (torch {torch.__version__}, "
        f"Python {platform.python_version()})"
    )


# -- warnings: accepted, but said ------------------------------------------------------------


@pytest.mark.parametrize("precision", ["16-mixed", "16-true"])
def test_float16_on_a_cpu_without_float16_arithmetic_warns(precision: str) -> None:
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        with warnings.catch_warnings():
            warnings.simplefilter("error", switchyard.SlowPrecisionWarning)
            Runtime(accelerator="cpu", precision=precision)  # this CPU has it: no warning
        return
    with pytest.warns(switchyard.SlowPrecisionWarning) as caught:
        Runtime(accelerator="cpu", precision=precision)
    (warning,) = caught.list
    message = str(warning.message)
    assert message.startswith(f"precision {precision!r} on 'cpu': this CPU has no float16")
    assert "Use '32-true', or 'bf16-mixed'" in message
    assert warning.filename == __file__  # pointed at the Runtime(...) line, not at switchyard


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_precisions_with_hardware_paths_do_not_warn(precision: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", switchyard.SlowPrecisionWarning)
        Runtime(accelerator="cpu", precision=precision)


@pytest.mark.parametrize("how", ["argument", "variable"])
def test_blocking_a_plugin_nobody_has_warns(
    how: str, clean_env: Callable[[dict[str, str]], None]
) -> None:
    clean_env({"SWITCHYARD_BLOCK_PLUGINS": "cpuu"} if how == "variable" else {})
    with pytest.warns(RuntimeWarning, match=r"plugin 'cpuu' is blocked .* nothing was blocked"):
        registry = PluginRegistry(plugins=["no:cpuu"] if how == "argument" else [])
    assert "cpu" in registry.plugins  # the plugin the typo meant is loaded
    clean_env({})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PluginRegistry(plugins=["no:cpu"])  # a real name: no warning


# -- what stays accepted ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "[::1]", "node-0.cluster.local", "n_1", "host.", "10.0.0.1"]
)
def test_addresses_accepted(address: str) -> None:
    assert address_problem(address) is None


@pytest.mark.parametrize(
    "address", ["", " ", "a b", "host:29500", "a..b", "-host", "x" * 64, "h!", "[::1", "é"]
)
def test_addresses_refused(address: str) -> None:
    assert address_problem(address) is not None


@pytest.mark.parametrize(
    ("value", "autoload"),
    [("", True), ("0", True), ("off", True), ("FALSE", True), ("1", False), (" Yes ", False)],
)
def test_autoload_switch_accepts_yes_and_no(
    value: str, autoload: bool, clean_env: Callable[[dict[str, str]], None]
) -> None:
    clean_env({"SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD": value})
    assert PluginRegistry().autoload is autoload


def test_values_at_the_bounds_are_accepted(clean_env: Callable[[dict[str, str]], None]) -> None:
    clean_env({})
    check_devices_limit(MAX_DEVICES_PER_NODE)
    check_devices_limit(list(range(MAX_DEVICES_PER_NODE)))
    with pytest.raises(DeviceSelectionError):
        check_devices_limit(MAX_DEVICES_PER_NODE + 1)
    plan = Runtime(accelerator="cpu", num_nodes=MAX_NUM_NODES).plan
    assert plan.num_nodes == MAX_NUM_NODES
    assert EightDevices.parse_devices(range(8)) == list(range(8))
    assert EightDevices.parse_devices(" 0, 2 ") == [0, 2]


def test_scheduler_spellings_that_stay_valid(clean_env: Callable[[dict[str, str]], None]) -> None:
    clean_env({**KUBEFLOW, "PET_NPROC_PER_NODE": "auto", "WORLD_SIZE": "1", "PET_NNODES": "1"})
    assert Runtime(devices=1).environment.world_size() == 1
    clean_env({**SLURM, "SLURM_JOB_ID": "123_4", "MASTER_PORT": " 29400 "})
    runtime = Runtime()
    assert runtime.environment.main_port == 29400
    assert runtime.environment.main_address == "node1"
    clean_env({**TORCHRUN, "RANK": "+1", "LOCAL_RANK": " 1"})
    assert Runtime().global_rank == 1


def test_numpy_seeds_and_numbers_are_accepted(
    clean_env: Callable[[dict[str, str]], None],
) -> None:
    numpy = pytest.importorskip("numpy")
    clean_env({})
    assert switchyard.seed_everything(numpy.int64(7)) == 7
    assert switchyard.seed_everything() == 7  # read back from SWITCHYARD_GLOBAL_SEED
    reduced = one_process().all_reduce({"loss": numpy.float32(2.0), "counts": numpy.ones(2)})
    assert reduced["loss"].item() == 2.0
    assert reduced["counts"].tolist() == [1.0, 1.0]


# -- what used to fill the memory or block ---------------------------------------------------


def test_huge_slurm_host_list_is_read_lazily() -> None:
    start = time.monotonic()
    assert first_host("n[1-99999999999],m[1-5]") == "n1"
    with pytest.raises(ValueError, match="more than 65536 hosts"):
        expand_hostlist("n[1-99999999999]")
    assert time.monotonic() - start < 5
    assert expand_hostlist("r[1-2]-n[01-02]") == ["r1-n01", "r1-n02", "r2-n01", "r2-n02"]


def test_rank_file_that_is_a_fifo_is_refused_at_once(
    clean_env: Callable[[dict[str, str]], None], tmp_path: Path
) -> None:
    fifo = tmp_path / "rankfile"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    clean_env({**LSF, "LSB_DJOB_RANKFILE": str(fifo)})
    with pytest.raises(SelectionError, match=re.escape(f"LSB_DJOB_RANKFILE={str(fifo)!r}")):
        _answers(Runtime())


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"launch\n\xff\xfehost\n", "not a text file"), (b"host\n" * 100, "larger than")],
)
def test_rank_file_that_is_not_one_is_refused(
    content: bytes,
    problem: str,
    clean_env: Callable[[dict[str, str]], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lsf_module, "MAX_RANKFILE_BYTES", 256)
    rankfile = tmp_path / "rankfile"
    rankfile.write_bytes(content)
    clean_env({**LSF, "LSB_DJOB_RANKFILE": str(rankfile)})
    with pytest.raises(SelectionError, match=problem) as info:
        _answers(Runtime())
    assert "LSB_DJOB_RANKFILE" in str(info.value)


def _cases() -> Iterator[Case]:
    for param in CASES:
        yield param.values[0]


def test_the_catalogue_covers_every_entry_point() -> None:
    """What docs/security.md counts: at least 150 cases over every kind of entry point."""
    ids = [c.id for c in _cases()]
    assert len(ids) == len(set(ids))
    assert len(ids) + len(FLAG_CASES) >= 150
    for prefix in ("torchrun", "srun", "jsrun", "mpirun", "mpiexec", "PyTorchJob", "local"):
        assert any(i.startswith(prefix) for i in ids), prefix
