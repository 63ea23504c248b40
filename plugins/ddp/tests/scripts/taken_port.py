"""A DDP job whose 'free' port is taken before the rendezvous binds it.

argv: start method (``inprocess`` for a job of one process, else ``spawn``/``fork``), output file.
The port the environment would choose is bound by this script first and held until the job
ends, as another program on the machine could have taken it after it was found free.
"""

import socket
import sys

import torch

import switchyard.builtin.environments.local as local
from switchyard import Runtime


def main(runtime: Runtime, out: str, taken: int) -> None:
    total = runtime.all_reduce(torch.ones(1), op="sum")
    if runtime.global_rank == 0:
        with open(out, "w") as file:
            file.write(f"{int(total.item())} {taken}")


if __name__ == "__main__":
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    local.find_free_port = lambda address="127.0.0.1": taken
    how, out = sys.argv[1], sys.argv[2]
    if how == "inprocess":
        runtime = Runtime(accelerator="cpu", strategy="ddp", devices=1)
    else:
        runtime = Runtime(accelerator="cpu", strategy=f"ddp_{how}", devices=2)
    runtime.launch(main, out, taken)
