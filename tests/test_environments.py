"""Cluster environments under the variables their schedulers really export.

Each scheduler's variables are written out as the dict a real process of such a job sees (values
from the launchers' sources and documentation), set on a cleaned environment, and checked value
by value; selection through the registry must pick exactly that environment.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

import switchyard.builtin
import switchyard_cpu.plugin
from switchyard import EnvironmentEntry, hookimpl
from switchyard.builtin.environments import (
    KubeflowEnvironment,
    LocalEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    derived_port,
    expand_hostlist,
    first_host,
    parse_tasks_per_node,
)
from switchyard.entries import EntryError
from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError
from switchyard.registry import PluginRegistry
from switchyard.selection import _select_environment, select
from switchyard.testing.cluster_variables import is_cluster_variable
from switchyard.testing.subprocesses import child_environment
from switchyard.testing.subprocesses import run as run_child

ALL = {
    "torchelastic": TorchElasticEnvironment,
    "lsf": LSFEnvironment,
    "mpi": MPIEnvironment,
    "slurm": SLURMEnvironment,
    "kubeflow": KubeflowEnvironment,
    "local": LocalEnvironment,
}


SetEnv = Callable[[Mapping[str, str]], None]


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch) -> SetEnv:
    """Remove every variable any environment reads, then set the given ones."""
    for key in list(os.environ):
        if is_cluster_variable(key) or key.startswith("SWITCHYARD_"):
            monkeypatch.delenv(key)

    def apply(variables: Mapping[str, str]) -> None:
        for key, value in variables.items():
            monkeypatch.setenv(key, value)

    return apply


def registry() -> PluginRegistry:
    return PluginRegistry(autoload=False, plugins=[switchyard_cpu.plugin])


def detected() -> set[str]:
    return {name for name, cls in ALL.items() if cls.detect()}


def chosen() -> tuple[ClusterEnvironment, str]:
    return _select_environment(registry(), "auto")


def values(env: ClusterEnvironment) -> dict[str, object]:
    return {
        "main_address": env.main_address,
        "main_port": env.main_port,
        "world_size": env.world_size(),
        "global_rank": env.global_rank(),
        "local_rank": env.local_rank(),
        "node_rank": env.node_rank(),
        "external": env.creates_processes_externally,
    }


# -- variable sets, as the schedulers export them ---------------------------------------------

# `torchrun --nnodes 2 --nproc-per-node 2 --node-rank 1 --master-addr node-0.cluster.local
#  --master-port 29500 train.py`: the second worker on the second node (global rank 3)
TORCHRUN_2x2_NODE1_LOCAL1 = {
    "RANK": "3",
    "LOCAL_RANK": "1",
    "GROUP_RANK": "1",
    "ROLE_RANK": "3",
    "ROLE_NAME": "default",
    "LOCAL_WORLD_SIZE": "2",
    "WORLD_SIZE": "4",
    "GROUP_WORLD_SIZE": "2",
    "ROLE_WORLD_SIZE": "4",
    "MASTER_ADDR": "node-0.cluster.local",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RESTART_COUNT": "0",
    "TORCHELASTIC_MAX_RESTARTS": "0",
    "TORCHELASTIC_RUN_ID": "none",
    "TORCHELASTIC_USE_AGENT_STORE": "True",
    "TORCHELASTIC_ERROR_FILE": "/tmp/torchelastic_x1y2/none_3k2j/attempt_0/1/error.json",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "OMP_NUM_THREADS": "1",
}

# sbatch --nodes=2 --ntasks-per-node=4 --job-name=train, then `srun python train.py`:
# task 6 (third task on the second node)
SRUN_2x4_TASK6 = {
    "SLURM_JOB_ID": "4417321",
    "SLURM_JOBID": "4417321",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_NODELIST": "gpu-a[017-018]",
    "SLURM_NODELIST": "gpu-a[017-018]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "8",
    "SLURM_NPROCS": "8",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_JOB_CPUS_PER_NODE": "64(x2)",
    "SLURM_CPUS_ON_NODE": "64",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_CLUSTER_NAME": "hpc",
    "SLURM_SUBMIT_DIR": "/home/alice/project",
    "SLURM_SUBMIT_HOST": "login01",
    "SLURM_STEP_ID": "0",
    "SLURM_STEPID": "0",
    "SLURM_STEP_NODELIST": "gpu-a[017-018]",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    "SLURM_STEP_LAUNCHER_PORT": "41235",
    "SLURM_SRUN_COMM_HOST": "10.1.0.17",
    "SLURM_LAUNCH_NODE_IPADDR": "10.1.0.17",
    "SLURM_DISTRIBUTION": "block",
    "SLURM_PROCID": "6",
    "SLURM_LOCALID": "2",
    "SLURM_NODEID": "1",
    "SLURM_GTIDS": "4,5,6,7",
    "SLURM_TASK_PID": "203311",
    "SLURMD_NODENAME": "gpu-a018",
    "SLURM_TOPOLOGY_ADDR": "gpu-a018",
}

# `sbatch --nodes=1 --ntasks=1` then `srun python train.py`: the one task
SRUN_1x1 = {
    "SLURM_JOB_ID": "4417400",
    "SLURM_JOBID": "4417400",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_NODELIST": "cn042",
    "SLURM_NODELIST": "cn042",
    "SLURM_JOB_NUM_NODES": "1",
    "SLURM_NNODES": "1",
    "SLURM_NTASKS": "1",
    "SLURM_NPROCS": "1",
    "SLURM_TASKS_PER_NODE": "1",
    "SLURM_STEP_ID": "0",
    "SLURM_STEPID": "0",
    "SLURM_STEP_NODELIST": "cn042",
    "SLURM_STEP_NUM_NODES": "1",
    "SLURM_STEP_NUM_TASKS": "1",
    "SLURM_STEP_TASKS_PER_NODE": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURMD_NODENAME": "cn042",
}

# the batch script of `sbatch --nodes=2 --ntasks-per-node=4`, running `python train.py`
# without srun: the batch step has no SLURM_STEP_ID and runs once, on the first node
SBATCH_2x4_NO_SRUN = {
    "SLURM_JOB_ID": "4417555",
    "SLURM_JOBID": "4417555",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_NODELIST": "gpu-a[017-018]",
    "SLURM_NODELIST": "gpu-a[017-018]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "8",
    "SLURM_NPROCS": "8",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_CPUS_ON_NODE": "64",
    "SLURMD_NODENAME": "gpu-a017",
}

# `salloc --nodes=2 --ntasks-per-node=4` (job name "interactive"): the user's shell
SALLOC_SHELL = {
    "SLURM_JOB_ID": "4417600",
    "SLURM_JOBID": "4417600",
    "SLURM_JOB_NAME": "interactive",
    "SLURM_JOB_NODELIST": "cn[041-042]",
    "SLURM_NODELIST": "cn[041-042]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "8",
    "SLURM_NPROCS": "8",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_SUBMIT_HOST": "login01",
}

# `srun --nodes=1 --ntasks=1 --pty bash` (job name "bash"): a shell inside a step
SRUN_PTY_BASH = {
    **SRUN_1x1,
    "SLURM_JOB_NAME": "bash",
}

# `mpirun -np 4 python train.py` with Open MPI 4 on one host: rank 2
OPENMPI_NP4_RANK2 = {
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_RANK": "2",
    "OMPI_COMM_WORLD_LOCAL_RANK": "2",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
    "OMPI_COMM_WORLD_NODE_RANK": "2",
    "OMPI_UNIVERSE_SIZE": "4",
    "OMPI_FIRST_RANKS": "0",
    "OMPI_APP_CTX_NUM_PROCS": "4",
    "OMPI_NUM_APP_CTX": "1",
    "OMPI_ARGV": "train.py",
    "OMPI_COMMAND": "python",
    "OMPI_MCA_ess": "^singleton",
    "OMPI_MCA_ess_base_jobid": "2893611009",
    "OMPI_MCA_ess_base_vpid": "2",
    "OMPI_MCA_ess_base_num_procs": "1",
    "OMPI_MCA_orte_num_nodes": "1",
    "OMPI_MCA_orte_launch": "1",
    "OMPI_MCA_pmix": "^s1,s2,cray,isolated",
    "PMIX_NAMESPACE": "2893611009",
    "PMIX_RANK": "2",
    "PMIX_SERVER_URI3": "2893611008.0;tcp4://127.0.0.1:39481",
}

# `mpirun -np 8 --map-by ppr:4:node -x MASTER_ADDR=cn041 python train.py` on 2 hosts: rank 6
OPENMPI_2x4_RANK6 = {
    **OPENMPI_NP4_RANK2,
    "OMPI_COMM_WORLD_SIZE": "8",
    "OMPI_COMM_WORLD_RANK": "6",
    "OMPI_COMM_WORLD_LOCAL_RANK": "2",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
    "OMPI_COMM_WORLD_NODE_RANK": "2",  # rank on this node across jobs, not the node index
    "OMPI_UNIVERSE_SIZE": "8",
    "OMPI_FIRST_RANKS": "0",
    "OMPI_APP_CTX_NUM_PROCS": "8",
    "OMPI_MCA_ess_base_vpid": "6",
    "OMPI_MCA_orte_num_nodes": "2",
    "PMIX_RANK": "6",
    "MASTER_ADDR": "cn041",
}

# `mpiexec -n 2 python train.py` with MPICH's Hydra on one host: rank 1
HYDRA_NP2_RANK1 = {
    "PMI_RANK": "1",
    "PMI_SIZE": "2",
    "PMI_FD": "6",
    "MPI_LOCALRANKID": "1",
    "MPI_LOCALNRANKS": "2",
}

# Intel MPI `mpirun -n 4 -ppn 2` inside `sbatch --nodes=2`: Hydra starts its proxies with
# srun (one task per node), so rank 3 also inherits that proxy step's Slurm variables
INTEL_MPI_IN_SLURM_RANK3 = {
    "PMI_RANK": "3",
    "PMI_SIZE": "4",
    "PMI_FD": "9",
    "MPI_LOCALRANKID": "1",
    "MPI_LOCALNRANKS": "2",
    "I_MPI_HYDRA_BOOTSTRAP": "slurm",
    "MASTER_ADDR": "cn041",
    "SLURM_JOB_ID": "4417700",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_NODELIST": "cn[041-042]",
    "SLURM_NODELIST": "cn[041-042]",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "2",
    "SLURM_TASKS_PER_NODE": "1(x2)",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "1",
}

# torchrun --nnodes 2 --nproc-per-node 2 started by `srun --ntasks-per-node=1`: a worker
TORCHRUN_IN_SRUN = {
    **SRUN_2x4_TASK6,
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_TASKS_PER_NODE": "1(x2)",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    **TORCHRUN_2x2_NODE1_LOCAL1,
}

# a pod of a PyTorchJob (training-operator v1.7+) with 1 Master + 2 Workers, nprocPerNode
# left at its default "auto": the pod `mnist-ddp-worker-1`
_KUBERNETES = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
}
PYTORCHJOB_WORKER1 = {
    **_KUBERNETES,
    "HOSTNAME": "mnist-ddp-worker-1",
    "PYTHONUNBUFFERED": "0",
    "MASTER_PORT": "23456",
    "MASTER_ADDR": "mnist-ddp-master-0",
    "PET_MASTER_PORT": "23456",
    "PET_MASTER_ADDR": "mnist-ddp-master-0",
    "WORLD_SIZE": "3",
    "RANK": "2",
    "PET_NPROC_PER_NODE": "auto",
    "PET_NODE_RANK": "2",
    "PET_NNODES": "3",
}
# the same job with nprocPerNode: "4": the operator counts processes in WORLD_SIZE
PYTORCHJOB_NPROC4_WORKER1 = {**PYTORCHJOB_WORKER1, "WORLD_SIZE": "12", "PET_NPROC_PER_NODE": "4"}
# an older operator (before v1.7): no PET_* variables, WORLD_SIZE counts pods
PYTORCHJOB_OLD_WORKER1 = {k: v for k, v in PYTORCHJOB_WORKER1.items() if not k.startswith("PET_")}
# a single-pod job (Master only)
PYTORCHJOB_MASTER_ONLY = {
    **PYTORCHJOB_WORKER1,
    "HOSTNAME": "mnist-ddp-master-0",
    "MASTER_ADDR": "localhost",
    "PET_MASTER_ADDR": "localhost",
    "WORLD_SIZE": "1",
    "RANK": "0",
    "PET_NODE_RANK": "0",
    "PET_NNODES": "1",
}
# elastic PyTorchJob (elasticPolicy set): PET_NNODES is a range
PYTORCHJOB_ELASTIC = {
    **PYTORCHJOB_WORKER1,
    "PET_NNODES": "1:4",
    "PET_RDZV_ENDPOINT": "mnist-ddp-worker-0:23456",
    "PET_RDZV_BACKEND": "c10d",
}

LSF_JOB_ID = "1234567"


def lsf_job(tmp_path: Path, rank: int, local_rank: int) -> dict[str, str]:
    """`bsub -nnodes 2` then `jsrun -n 2 -r 1 -a 6 -g 6 python train.py` on a CSM cluster:
    12 ranks, 6 per node, with the rank file LSF writes (one line per slot, the launch node
    first)."""
    lsbatch = tmp_path / ".lsbatch"
    lsbatch.mkdir(exist_ok=True)
    rankfile = lsbatch / f"1693412345.{LSF_JOB_ID}.hostfile"
    slots = ["batch2"] + ["h41n08"] * 42 + ["h41n09"] * 42
    rankfile.write_text("\n".join(slots) + "\n")
    return {
        "LSB_JOBID": LSF_JOB_ID,
        "LSB_JOBNAME": "train",
        "LSB_QUEUE": "batch",
        "LSB_DJOB_RANKFILE": str(rankfile),
        "LSB_DJOB_HOSTFILE": str(rankfile),
        "LSB_HOSTS": " ".join(slots),
        "LSB_MCPU_HOSTS": "batch2 1 h41n08 42 h41n09 42",
        "LSF_BINDIR": "/opt/ibm/spectrumcomputing/lsf/10.1/linux3.10-glibc2.17-ppc64le-csm/bin",
        "JSM_NAMESPACE_SIZE": "12",
        "JSM_NAMESPACE_RANK": str(rank),
        "JSM_NAMESPACE_LOCAL_RANK": str(local_rank),
        "JSM_NAMESPACE_LOCAL_SIZE": "6",
        # jsrun's MPI is Open MPI based and exports its variables too
        "OMPI_COMM_WORLD_SIZE": "12",
        "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(local_rank),
        "OMPI_COMM_WORLD_LOCAL_SIZE": "6",
        "PMIX_RANK": str(rank),
    }


# -- torchelastic -----------------------------------------------------------------------------


def test_torchrun_worker(set_env: SetEnv) -> None:
    set_env(TORCHRUN_2x2_NODE1_LOCAL1)
    assert detected() == {"torchelastic", "local"}
    env, name = chosen()
    assert name == "torchelastic"
    assert values(env) == {
        "main_address": "node-0.cluster.local",
        "main_port": 29500,
        "world_size": 4,
        "global_rank": 3,
        "local_rank": 1,
        "node_rank": 1,
        "external": True,
    }
    assert env.local_world_size() == 2
    env.set_world_size(99)  # the launcher decided: ignored
    env.set_global_rank(42)
    assert (env.world_size(), env.global_rank()) == (4, 3)
    env.validate_settings(num_devices=2, num_nodes=2)


@pytest.mark.parametrize(
    ("devices", "nodes", "what", "hint"),
    [
        (
            3,
            2,
            "4 processes were started, but the runtime expects 6 (devices=3 x num_nodes=2); "
            "torchrun runs 2 per node on 2 node(s)",
            "--nproc-per-node 3 --nnodes 2",
        ),
        # the right product (4), the wrong layout: still refused
        (
            4,
            1,
            "torchrun runs 2 per node on 2 node(s), but the runtime asks for devices=4 per "
            "node on num_nodes=1",
            "--nproc-per-node 4 --nnodes 1",
        ),
        (1, 4, "torchrun runs 2 per node on 2 node(s)", "--nproc-per-node 1 --nnodes 4"),
    ],
)
def test_torchrun_mismatch_names_the_flags(
    set_env: SetEnv, devices: int, nodes: int, what: str, hint: str
) -> None:
    set_env(TORCHRUN_2x2_NODE1_LOCAL1)
    with pytest.raises(SelectionError) as info:
        TorchElasticEnvironment().validate_settings(num_devices=devices, num_nodes=nodes)
    assert what in str(info.value)
    assert hint in str(info.value)
    assert "pass devices=2, num_nodes=2" in str(info.value)


@pytest.mark.parametrize(
    ("local_world_size", "bound"),
    [("2", "GROUP_RANK=2 is not below WORLD_SIZE/LOCAL_WORLD_SIZE=2"), (None, "WORLD_SIZE=4")],
)
def test_torchrun_node_rank_is_bounded_without_group_world_size(
    set_env: SetEnv, local_world_size: str | None, bound: str
) -> None:
    # a torchrun-compatible launcher that exports no GROUP_WORLD_SIZE: the node rank is still
    # checked, against the nodes the other variables imply
    variables = {**TORCHRUN_2x2_NODE1_LOCAL1, "GROUP_RANK": "2" if local_world_size else "4"}
    del variables["GROUP_WORLD_SIZE"]
    if local_world_size is None:
        del variables["LOCAL_WORLD_SIZE"]
    set_env(variables)
    with pytest.raises(SelectionError, match="inconsistent") as info:
        TorchElasticEnvironment().validate_settings(num_devices=2, num_nodes=2)
    assert bound.split(" is not below ")[-1] in str(info.value)
    # the node it names is there when the rank is in range
    set_env({"GROUP_RANK": "1"})
    TorchElasticEnvironment().validate_settings(num_devices=2, num_nodes=2)


def test_torchrun_compatible_launcher_without_run_id(set_env: SetEnv) -> None:
    # a torchrun-like launcher exporting the full set but no TORCHELASTIC_RUN_ID
    set_env({k: v for k, v in TORCHRUN_2x2_NODE1_LOCAL1.items() if "TORCHELASTIC" not in k})
    assert TorchElasticEnvironment.detect()
    set_env({})
    os.environ.pop("GROUP_RANK")
    assert not TorchElasticEnvironment.detect()


def test_torchrun_single_process_selects_through_select(set_env: SetEnv) -> None:
    set_env(
        {
            **TORCHRUN_2x2_NODE1_LOCAL1,
            "RANK": "0",
            "LOCAL_RANK": "0",
            "GROUP_RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1",
            "GROUP_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
        }
    )
    plan = select(registry(), accelerator="cpu", devices=1, num_nodes=1)
    assert plan.names["environment"] == "torchelastic"


def test_torchrun_inside_srun_is_torchelastic(set_env: SetEnv) -> None:
    set_env(TORCHRUN_IN_SRUN)
    assert detected() == {"torchelastic", "slurm", "local"}
    env, name = chosen()
    assert name == "torchelastic"
    assert (env.global_rank(), env.node_rank(), env.world_size()) == (3, 1, 4)


# -- Slurm ------------------------------------------------------------------------------------


def test_srun_2x4_task(set_env: SetEnv) -> None:
    set_env(SRUN_2x4_TASK6)
    assert detected() == {"slurm", "local"}
    env, name = chosen()
    assert name == "slurm"
    assert values(env) == {
        "main_address": "gpu-a017",
        "main_port": 10000 + 7321,
        "world_size": 8,
        "global_rank": 6,
        "local_rank": 2,
        "node_rank": 1,
        "external": True,
    }
    assert env.local_world_size() == 4
    env.validate_settings(num_devices=4, num_nodes=2)


def test_srun_honours_master_addr_and_port(set_env: SetEnv) -> None:
    set_env({**SRUN_2x4_TASK6, "MASTER_ADDR": "10.1.0.17", "MASTER_PORT": "23000"})
    env = SLURMEnvironment()
    assert (env.main_address, env.main_port) == ("10.1.0.17", 23000)


def test_srun_step_nodelist_wins_over_the_job_allocation(set_env: SetEnv) -> None:
    # `srun --nodes=1` inside a 3-node allocation: task 0 runs on the step's first node
    set_env(
        {
            **SRUN_1x1,
            "SLURM_JOB_NODELIST": "cn[040-042]",
            "SLURM_NODELIST": "cn[041-042]",
            "SLURM_STEP_NODELIST": "cn042",
        }
    )
    assert SLURMEnvironment().main_address == "cn042"


def test_srun_node_id_past_the_tasks_per_node_list_names_the_variables(set_env: SetEnv) -> None:
    # no node count exported: SLURM_TASKS_PER_NODE's list bounds SLURM_NODEID
    variables = {**SRUN_2x4_TASK6, "SLURM_NODEID": "5"}
    for name in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_STEP_NUM_NODES"):
        variables.pop(name)
    variables.pop("SLURM_STEP_TASKS_PER_NODE", None)
    set_env(variables)
    with pytest.raises(SelectionError) as info:
        SLURMEnvironment().validate_settings(num_devices=4, num_nodes=2)
    assert "SLURM_NODEID=5 is not below len(SLURM_TASKS_PER_NODE)=2" in str(info.value)
    assert "devices=" not in str(info.value)


@pytest.mark.parametrize(
    ("devices", "nodes", "message"),
    [
        (2, 2, r"Slurm runs 4 task\(s\) per node.*--ntasks-per-node=2"),
        (4, 1, r"on 2 node\(s\).*num_nodes=2"),
        (4, 3, r"on 2 node\(s\).*--nodes=3"),
    ],
)
def test_srun_mismatch(set_env: SetEnv, devices: int, nodes: int, message: str) -> None:
    set_env(SRUN_2x4_TASK6)
    with pytest.raises(SelectionError, match=message):
        SLURMEnvironment().validate_settings(num_devices=devices, num_nodes=nodes)


def test_srun_mismatch_through_select(set_env: SetEnv) -> None:
    set_env(SRUN_2x4_TASK6)
    with pytest.raises(SelectionError, match=r"Slurm runs 4 task"):
        select(registry(), accelerator="cpu", devices=1, num_nodes=1)


def test_srun_uneven_tasks_are_refused(set_env: SetEnv) -> None:
    # `sbatch --nodes=3 --ntasks=8`: Slurm spreads 3, 3, 2
    set_env(
        {
            **SRUN_2x4_TASK6,
            "SLURM_NNODES": "3",
            "SLURM_STEP_NUM_NODES": "3",
            "SLURM_TASKS_PER_NODE": "3(x2),2",
            "SLURM_STEP_TASKS_PER_NODE": "3(x2),2",
        }
    )
    del os.environ["SLURM_NTASKS_PER_NODE"]
    with pytest.raises(SelectionError, match=r"uneven.*3, 3, 2.*--ntasks-per-node=3"):
        SLURMEnvironment().validate_settings(num_devices=3, num_nodes=3)


def test_srun_ntasks_per_node_alone_is_read(set_env: SetEnv) -> None:
    # only the requested value is known: 2 per node on 2 nodes
    variables = {k: v for k, v in SRUN_2x4_TASK6.items() if not k.endswith("TASKS_PER_NODE")}
    set_env({**variables, "SLURM_NTASKS_PER_NODE": "2"})
    env = SLURMEnvironment()
    assert env.tasks_per_node() == [2, 2]
    with pytest.raises(SelectionError, match=r"2 task\(s\) per node"):
        env.validate_settings(num_devices=4, num_nodes=2)


def test_srun_single_task_selects_through_select(set_env: SetEnv) -> None:
    set_env(SRUN_1x1)
    plan = select(registry(), accelerator="cpu", devices=1, num_nodes=1)
    assert plan.names["environment"] == "slurm"
    assert plan.environment.main_address == "cn042"
    assert plan.environment.main_port == 10000 + 7400


def test_batch_script_without_srun_is_detected_and_refused(set_env: SetEnv) -> None:
    set_env(SBATCH_2x4_NO_SRUN)
    assert detected() == {"slurm", "local"}
    env, name = chosen()
    assert name == "slurm"
    assert not env.creates_processes_externally
    with pytest.raises(SelectionError, match=r"not started by srun.*srun python"):
        env.validate_settings(num_devices=4, num_nodes=2)


def test_batch_script_with_one_task_is_local(set_env: SetEnv) -> None:
    # `sbatch --ntasks=1`, `python train.py`: switchyard starts the processes itself
    set_env({**SBATCH_2x4_NO_SRUN, "SLURM_NTASKS": "1", "SLURM_NPROCS": "1"})
    assert detected() == {"local"}
    assert chosen()[1] == "local"


@pytest.mark.parametrize("variables", [SALLOC_SHELL, SRUN_PTY_BASH], ids=["salloc", "srun-pty"])
def test_interactive_slurm_shells_are_not_slurm(set_env: SetEnv, variables: dict[str, str]) -> None:
    set_env(variables)
    assert not SLURMEnvironment.detect()
    plan = select(registry(), accelerator="cpu", devices=1, num_nodes=1)
    assert plan.names["environment"] == "local"


def test_slurm_explicit_without_variables_says_what_is_missing(set_env: SetEnv) -> None:
    set_env({})
    env, name = _select_environment(registry(), "slurm")
    assert name == "slurm"
    with pytest.raises(SelectionError, match=r"SLURM_PROCID is not set.*srun"):
        env.global_rank()


# -- Slurm host lists --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("cn042", ["cn042"]),
        ("cn041,cn042", ["cn041", "cn042"]),
        ("host0 host1", ["host0", "host1"]),
        ("gpu-a[017-018]", ["gpu-a017", "gpu-a018"]),
        (
            "node[001-003,007],gpu-a[1-2]",
            ["node001", "node002", "node003", "node007", "gpu-a1", "gpu-a2"],
        ),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("n[5]", ["n5"]),
        ("node[1,3],login", ["node1", "node3", "login"]),
        ("b[2-3]-ib,d", ["b2-ib", "b3-ib", "d"]),
        ("r[1-2]-n[01-02]", ["r1-n01", "r1-n02", "r2-n01", "r2-n02"]),
        ("10.1.0.[5-6]", ["10.1.0.5", "10.1.0.6"]),
    ],
)
def test_expand_hostlist(hostlist: str, hosts: list[str]) -> None:
    assert expand_hostlist(hostlist) == hosts
    assert first_host(hostlist) == hosts[0]


def test_first_host_does_not_expand_the_whole_list() -> None:
    assert first_host("node[00001-99999],other[1-99999]") == "node00001"


@pytest.mark.parametrize(
    "hostlist", ["", " , ", "node[1-", "node]1[", "node[3-1]", "node[a-b]", "n[1-2", "n[[1]]"]
)
def test_malformed_hostlists_raise(hostlist: str) -> None:
    with pytest.raises(ValueError, match=r"host list"):
        expand_hostlist(hostlist)


def test_unreadable_nodelist_is_a_clear_error(set_env: SetEnv) -> None:
    set_env({**SRUN_1x1, "SLURM_STEP_NODELIST": "cn[04"})
    with pytest.raises(SelectionError, match=r"SLURM_STEP_NODELIST.*MASTER_ADDR"):
        _ = SLURMEnvironment().main_address


@pytest.mark.parametrize(
    ("text", "counts"),
    [("4", [4]), ("4(x2)", [4, 4]), ("2,1", [2, 1]), ("3(x2),2", [3, 3, 2])],
)
def test_parse_tasks_per_node(text: str, counts: list[int]) -> None:
    assert parse_tasks_per_node(text) == counts


@pytest.mark.parametrize("text", ["", "4(2)", "x2", "4(x)"])
def test_parse_tasks_per_node_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"tasks per node"):
        parse_tasks_per_node(text)


def test_derived_port_scheme() -> None:
    assert derived_port("4417321") == 17321
    assert derived_port("20000") == 10000
    assert derived_port("9999") == 19999
    hashed = derived_port("prterun-cn041-2231@1")
    assert 10000 <= hashed < 20000
    assert hashed == derived_port("prterun-cn041-2231@1")


# -- LSF ----------------------------------------------------------------------------------------


def test_jsrun_task(set_env: SetEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(lsf_job(tmp_path, rank=8, local_rank=2))
    monkeypatch.setattr("socket.gethostname", lambda: "h41n09")
    assert detected() == {"lsf", "mpi", "local"}
    env, name = chosen()
    assert name == "lsf"
    assert values(env) == {
        "main_address": "h41n08",
        "main_port": 10000 + 4567,
        "world_size": 12,
        "global_rank": 8,
        "local_rank": 2,
        "node_rank": 1,
        "external": True,
    }
    assert env.local_world_size() == 6
    assert isinstance(env, LSFEnvironment)
    assert env.hosts() == ["h41n08", "h41n09"]
    env.validate_settings(num_devices=6, num_nodes=2)


def test_jsrun_node_rank_from_fully_qualified_hostname(
    set_env: SetEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(lsf_job(tmp_path, rank=1, local_rank=1))
    monkeypatch.setattr("socket.gethostname", lambda: "h41n08.summit.olcf.ornl.gov")
    assert LSFEnvironment().node_rank() == 0


def test_jsrun_hosts_from_lsb_hosts(
    set_env: SetEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = lsf_job(tmp_path, rank=8, local_rank=2)
    del variables["LSB_DJOB_RANKFILE"]
    set_env(variables)
    monkeypatch.setattr("socket.gethostname", lambda: "h41n09")
    env = LSFEnvironment()
    assert (env.main_address, env.node_rank()) == ("h41n08", 1)


def test_jsrun_master_addr_and_port_override(set_env: SetEnv, tmp_path: Path) -> None:
    set_env({**lsf_job(tmp_path, 0, 0), "MASTER_ADDR": "h41n09", "MASTER_PORT": "31000"})
    env = LSFEnvironment()
    assert (env.main_address, env.main_port) == ("h41n09", 31000)


@pytest.mark.parametrize(
    ("devices", "nodes", "message"),
    [
        (4, 2, r"jsrun started 12 process\(es\) \(6 on this node\).*--tasks_per_rs 4"),
        (6, 1, r"jsrun started 12.*--nrs 1"),
        (4, 3, r"2 compute host\(s\).*num_nodes=3"),
    ],
)
def test_jsrun_mismatch(
    set_env: SetEnv, tmp_path: Path, devices: int, nodes: int, message: str
) -> None:
    variables = lsf_job(tmp_path, rank=0, local_rank=0)
    if nodes == 3:  # a layout that matches jsrun's but not the allocation
        variables.update(JSM_NAMESPACE_SIZE="12", JSM_NAMESPACE_LOCAL_SIZE="4")
    set_env(variables)
    with pytest.raises(SelectionError, match=message):
        LSFEnvironment().validate_settings(num_devices=devices, num_nodes=nodes)


def test_jsrun_single_task_selects_through_select(
    set_env: SetEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = lsf_job(tmp_path, rank=0, local_rank=0)
    variables.update(
        JSM_NAMESPACE_SIZE="1",
        JSM_NAMESPACE_LOCAL_SIZE="1",
        OMPI_COMM_WORLD_SIZE="1",
        OMPI_COMM_WORLD_LOCAL_SIZE="1",
    )
    set_env(variables)
    monkeypatch.setattr("socket.gethostname", lambda: "h41n08")
    plan = select(registry(), accelerator="cpu", devices=1, num_nodes=1)
    assert plan.names["environment"] == "lsf"


# -- MPI ----------------------------------------------------------------------------------------


def test_openmpi_single_host(set_env: SetEnv) -> None:
    set_env(OPENMPI_NP4_RANK2)
    assert detected() == {"mpi", "local"}
    env, name = chosen()
    assert name == "mpi"
    assert values(env) == {
        "main_address": "127.0.0.1",
        "main_port": derived_port("2893611009"),
        "world_size": 4,
        "global_rank": 2,
        "local_rank": 2,
        "node_rank": 0,
        "external": True,
    }
    assert env.main_port == 11009
    assert env.local_world_size() == 4
    env.validate_settings(num_devices=4, num_nodes=1)


def test_openmpi_two_hosts_node_rank_is_rank_over_local_size(set_env: SetEnv) -> None:
    set_env({**OPENMPI_2x4_RANK6, "MASTER_PORT": "29600"})
    env = MPIEnvironment()
    assert values(env) == {
        "main_address": "cn041",
        "main_port": 29600,
        "world_size": 8,
        "global_rank": 6,
        "local_rank": 2,
        "node_rank": 1,  # not OMPI_COMM_WORLD_NODE_RANK (2)
        "external": True,
    }
    env.validate_settings(num_devices=4, num_nodes=2)


def test_openmpi_two_hosts_without_master_addr_is_refused(set_env: SetEnv) -> None:
    set_env(OPENMPI_2x4_RANK6)
    del os.environ["MASTER_ADDR"]
    with pytest.raises(SelectionError, match=r"MASTER_ADDR is not set.*mpirun -x MASTER_ADDR"):
        MPIEnvironment().validate_settings(num_devices=4, num_nodes=2)


def test_openmpi_round_robin_placement_is_refused(set_env: SetEnv) -> None:
    # `mpirun -np 8 --map-by node`: ranks 1, 3, 5, 7 on the second host; rank 5 is local 2
    set_env({**OPENMPI_2x4_RANK6, "OMPI_COMM_WORLD_RANK": "5"})
    with pytest.raises(SelectionError, match=r"round-robin.*--map-by ppr:4:node"):
        MPIEnvironment().validate_settings(num_devices=4, num_nodes=2)


@pytest.mark.parametrize(("devices", "nodes"), [(2, 2), (4, 1), (8, 1)])
def test_mpi_mismatch(set_env: SetEnv, devices: int, nodes: int) -> None:
    set_env(OPENMPI_2x4_RANK6)
    with pytest.raises(SelectionError, match=r"mpirun started 8 process\(es\), 4 on this node"):
        MPIEnvironment().validate_settings(num_devices=devices, num_nodes=nodes)


def test_hydra_single_host(set_env: SetEnv) -> None:
    set_env(HYDRA_NP2_RANK1)
    assert detected() == {"mpi", "local"}
    env, name = chosen()
    assert name == "mpi"
    assert values(env) == {
        "main_address": "127.0.0.1",
        "main_port": 29500,
        "world_size": 2,
        "global_rank": 1,
        "local_rank": 1,
        "node_rank": 0,
        "external": True,
    }
    env.validate_settings(num_devices=2, num_nodes=1)


def test_intel_mpi_inside_slurm_is_mpi(set_env: SetEnv) -> None:
    set_env(INTEL_MPI_IN_SLURM_RANK3)
    assert detected() == {"mpi", "slurm", "local"}
    env, name = chosen()
    assert name == "mpi"
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (
        4,
        3,
        1,
        1,
    )
    assert env.main_address == "cn041"
    env.validate_settings(num_devices=2, num_nodes=2)


def test_srun_with_pmi2_is_slurm_not_mpi(set_env: SetEnv) -> None:
    # `srun --mpi=pmi2` exports PMI_RANK/PMI_SIZE but no Hydra local ranks
    set_env({**SRUN_2x4_TASK6, "PMI_RANK": "6", "PMI_SIZE": "8", "PMI_FD": "7", "PMI_JOBID": "1"})
    assert chosen()[1] == "slurm"


def test_mpirun_single_rank_selects_through_select(set_env: SetEnv) -> None:
    set_env(
        {
            **OPENMPI_NP4_RANK2,
            "OMPI_COMM_WORLD_SIZE": "1",
            "OMPI_COMM_WORLD_RANK": "0",
            "OMPI_COMM_WORLD_LOCAL_RANK": "0",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
        }
    )
    plan = select(registry(), accelerator="cpu", devices=1, num_nodes=1)
    assert plan.names["environment"] == "mpi"


# -- Kubeflow -----------------------------------------------------------------------------------


def test_pytorchjob_worker_pod(set_env: SetEnv) -> None:
    set_env(PYTORCHJOB_WORKER1)
    assert detected() == {"kubeflow", "local"}
    env, name = chosen()
    assert name == "kubeflow"
    assert values(env) == {
        "main_address": "mnist-ddp-master-0",
        "main_port": 23456,
        "world_size": 3,  # one process per pod until the strategy says otherwise
        "global_rank": 2,
        "local_rank": 0,
        "node_rank": 2,
        "external": False,
    }
    env.validate_settings(num_devices=4, num_nodes=3)
    # the strategy runs 4 processes per pod: 12 in all, this pod's first is rank 8
    env.set_world_size(12)
    env.set_global_rank(8)
    assert (env.world_size(), env.global_rank(), env.node_rank()) == (12, 8, 2)


def test_pytorchjob_old_operator_pod(set_env: SetEnv) -> None:
    set_env(PYTORCHJOB_OLD_WORKER1)
    env, name = chosen()
    assert name == "kubeflow"
    assert (env.num_pods(), env.node_rank(), env.world_size()) == (3, 2, 3)
    env.validate_settings(num_devices=2, num_nodes=3)


def test_pytorchjob_with_nproc_per_node(set_env: SetEnv) -> None:
    set_env(PYTORCHJOB_NPROC4_WORKER1)
    env = KubeflowEnvironment()
    assert (env.num_pods(), env.world_size(), env.global_rank(), env.node_rank()) == (
        3,
        12,
        8,
        2,
    )
    env.validate_settings(num_devices=4, num_nodes=3)
    with pytest.raises(SelectionError, match=r'nprocPerNode: 4.*devices=2.*nprocPerNode: "2"'):
        env.validate_settings(num_devices=2, num_nodes=3)


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_pytorchjob_wrong_num_nodes(set_env: SetEnv, nodes: int) -> None:
    set_env(PYTORCHJOB_WORKER1)
    with pytest.raises(SelectionError, match=rf"3 pod\(s\).*num_nodes={nodes}"):
        KubeflowEnvironment().validate_settings(num_devices=1, num_nodes=nodes)


def test_elastic_pytorchjob_needs_torchrun(set_env: SetEnv) -> None:
    set_env(PYTORCHJOB_ELASTIC)
    with pytest.raises(SelectionError, match=r"elastic.*torchrun"):
        KubeflowEnvironment().validate_settings(num_devices=1, num_nodes=3)


def test_pytorchjob_pod_running_torchrun_is_torchelastic(set_env: SetEnv) -> None:
    # the pod's command is torchrun: its workers carry both sets; torchrun's wins
    set_env({**PYTORCHJOB_WORKER1, **TORCHRUN_2x2_NODE1_LOCAL1})
    assert not KubeflowEnvironment.detect()
    assert chosen()[1] == "torchelastic"


def test_pytorchjob_process_started_by_switchyard(set_env: SetEnv) -> None:
    # switchyard's multiprocessing launcher in pod 2 exports these to its second process and
    # replaces RANK by the global rank; the pod's environment object travels with the runtime
    env = KubeflowEnvironment()
    set_env(
        {
            **PYTORCHJOB_WORKER1,
            "NODE_RANK": "2",
            "LOCAL_RANK": "1",
            "RANK": "9",
            "WORLD_SIZE": "12",
            "LOCAL_WORLD_SIZE": "4",
        }
    )
    assert not KubeflowEnvironment.detect()  # a fresh selection there would not re-launch
    assert (env.node_rank(), env.local_rank()) == (2, 1)


def test_single_pod_pytorchjob_selects_through_select(set_env: SetEnv) -> None:
    set_env(PYTORCHJOB_MASTER_ONLY)
    plan = select(registry(), accelerator="cpu", devices=1, num_nodes=1)
    assert plan.names["environment"] == "kubeflow"
    assert plan.environment.main_address == "localhost"


def test_plain_kubernetes_pod_is_local(set_env: SetEnv) -> None:
    set_env(_KUBERNETES)
    assert detected() == {"local"}


# -- local ---------------------------------------------------------------------------------------


def test_local_defaults(set_env: SetEnv) -> None:
    set_env({})
    assert detected() == {"local"}
    env, name = chosen()
    assert name == "local"
    assert (env.main_address, env.world_size(), env.global_rank()) == ("127.0.0.1", 1, 0)
    assert (env.local_rank(), env.node_rank(), env.creates_processes_externally) == (0, 0, False)
    port = env.main_port
    assert 0 < port < 65536
    assert env.main_port == port  # asked twice, one answer
    plan = select(registry(), accelerator="cpu", devices=1, num_nodes=1)
    assert plan.names["environment"] == "local"


def test_local_ranks_set_by_the_strategy_win_over_leftover_variables(set_env: SetEnv) -> None:
    # in a process switchyard started inside a pod, RANK/WORLD_SIZE may be the pod's
    set_env({"LOCAL_RANK": "1", "NODE_RANK": "2", "RANK": "2", "WORLD_SIZE": "3"})
    env = LocalEnvironment()
    assert env.creates_processes_externally
    assert (env.world_size(), env.global_rank()) == (3, 2)
    env.set_world_size(12)
    env.set_global_rank(9)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (
        12,
        9,
        1,
        2,
    )


def test_local_several_nodes_use_a_port_every_node_knows(set_env: SetEnv) -> None:
    set_env({"MASTER_ADDR": "10.0.0.1"})
    env = LocalEnvironment()
    env.validate_settings(num_devices=2, num_nodes=2)
    assert env.main_port == 29500


def test_local_node_rank_checks(set_env: SetEnv) -> None:
    set_env({"NODE_RANK": "1"})
    env = LocalEnvironment()
    with pytest.raises(SelectionError, match=r"MASTER_ADDR is not set"):
        env.validate_settings(num_devices=1, num_nodes=2)
    with pytest.raises(SelectionError, match=r"NODE_RANK=1.*num_nodes=1"):
        env.validate_settings(num_devices=1, num_nodes=1)
    set_env({"MASTER_ADDR": "10.0.0.1"})
    env.validate_settings(num_devices=1, num_nodes=2)


# -- the registry --------------------------------------------------------------------------------


def test_builtin_priorities_put_the_innermost_launcher_first() -> None:
    entries = {r.entry.name: r.entry for r in registry().registrations("environment")}
    assert set(ALL) <= set(entries)
    order = sorted(ALL, key=lambda name: -entries[name].priority)
    assert order == ["torchelastic", "lsf", "mpi", "slurm", "kubeflow", "local"]
    assert entries["local"].priority == 0
    for name, cls in ALL.items():
        assert entries[name].load() is cls


# --- detection without imports: EnvironmentEntry.detect_variables ---------------------------


def _builtin_environment_entries() -> dict[str, EnvironmentEntry]:
    return {
        entry.name: entry
        for entry in switchyard.builtin.switchyard_environments()
        if isinstance(entry, EnvironmentEntry)
    }


def _scheduler_examples(tmp_path: Path) -> dict[str, dict[str, str]]:
    """Every job's variables written out in this module, and one LSF job's."""
    examples = {
        name: value
        for name, value in globals().items()
        if name.isupper()
        and isinstance(value, dict)
        and value
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    }
    examples["lsf_job"] = lsf_job(tmp_path, rank=7, local_rank=1)
    return examples


def test_detect_variables_hold_in_every_example_a_scheduler_is_detected_in(
    set_env: SetEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment detected in a real job's variables names one of them in its entry's
    detect_variables; otherwise "auto" would pass it over without asking."""
    entries = _builtin_environment_entries()
    seen: set[str] = set()
    for example, variables in _scheduler_examples(tmp_path).items():
        with monkeypatch.context() as scoped:
            for key, value in variables.items():
                scoped.setenv(key, value)
            for name, cls in ALL.items():
                if cls.detect():
                    seen.add(name)
                    assert entries[name].may_detect(os.environ), (example, name)
    assert seen == set(ALL), f"no example detects {set(ALL) - seen}: the check has no teeth"


def test_without_its_detect_variables_an_environment_is_never_detected(
    set_env: SetEnv, tmp_path: Path
) -> None:
    """Every variable of every example set at once, less one entry's detect_variables: that
    environment's own detect() says no, so skipping its import loses nothing."""
    everything: dict[str, str] = {}
    for variables in _scheduler_examples(tmp_path).values():
        everything.update(variables)
    for name, entry in _builtin_environment_entries().items():
        if name == "local":
            assert entry.detect_variables == ()  # the fallback is always asked
            continue
        assert entry.detect_variables, name
        gated = {k: v for k, v in everything.items() if k not in entry.detect_variables}
        with pytest.MonkeyPatch.context() as scoped:
            for key in entry.detect_variables:
                scoped.delenv(key, raising=False)
            for key, value in gated.items():
                scoped.setenv(key, value)
            assert not entry.may_detect(os.environ)
            assert not ALL[name].detect(), name


def _gated_plugin() -> types.ModuleType:
    """A third-party environment whose module does not exist: importing it fails."""
    plugin = types.ModuleType("gated_environment_plugin")

    @hookimpl
    def switchyard_environments() -> Iterator[EnvironmentEntry]:
        yield EnvironmentEntry(
            name="gated",
            factory="gated_environment_missing_module:GatedEnvironment",
            priority=500,
            detect_variables=("GATED_SCHEDULER_JOB",),
        )

    plugin.switchyard_environments = switchyard_environments  # type: ignore[attr-defined]
    return plugin


def test_auto_does_not_import_an_environment_whose_variables_are_unset(set_env: SetEnv) -> None:
    registry = PluginRegistry(autoload=False, plugins=[switchyard_cpu.plugin, _gated_plugin()])
    environment, name = _select_environment(registry, "auto")
    assert name == "local"
    assert isinstance(environment, LocalEnvironment)
    assert not [f for f in registry.failures if f.entry == "environment 'gated'"]


def test_auto_imports_an_environment_once_one_of_its_variables_is_set(set_env: SetEnv) -> None:
    set_env({"GATED_SCHEDULER_JOB": "42"})
    registry = PluginRegistry(autoload=False, plugins=[switchyard_cpu.plugin, _gated_plugin()])
    with pytest.warns(RuntimeWarning, match="skipped environment 'gated'"):
        _, name = _select_environment(registry, "auto")
    assert name == "local"
    (failure,) = [f for f in registry.failures if f.entry == "environment 'gated'"]
    assert failure.stage == "factory"
    assert "gated_environment_missing_module" in failure.error


@pytest.mark.parametrize(
    "bad", [("",), ("A=B",), (3,)], ids=["empty", "assignment", "not-a-string"]
)
def test_detect_variables_must_be_variable_names(bad: tuple[object, ...]) -> None:
    with pytest.raises(EntryError, match="detect_variables must be names"):
        EnvironmentEntry(name="odd", factory="x:y", detect_variables=bad)  # type: ignore[arg-type]


def test_runtime_outside_a_cluster_imports_only_the_local_environment(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from switchyard import Runtime\n"
        "Runtime(accelerator='cpu', devices=1)\n"
        "prefix = 'switchyard.builtin.environments.'\n"
        "print('LOADED', sorted(m[len(prefix):] for m in sys.modules if m.startswith(prefix)))\n"
    )
    finished = run_child(
        [sys.executable, "-c", code], timeout=120, log=tmp_path / "log", env=child_environment()
    )
    assert finished.returncode == 0, finished.output
    assert "LOADED ['common', 'local']" in finished.output, finished.output
