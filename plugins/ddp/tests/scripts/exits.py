"""A 2-process DDP job that ends the way its arguments say, for the tests of how workers exit.

Usage: exits.py OUT ACTION, where ACTION is
  finish  both ranks end normally;
  exit3   rank 1 calls sys.exit(3) after a few collectives while rank 0 keeps reducing (it then
          fails too, a moment later, because its peer is gone);
  raise   rank 1 raises after the same collectives as rank 0.

Before runtime.launch() the script registers an atexit handler that writes OUT/atexit.<RANK>
(OUT/atexit.supervisor in the process that launches the workers). After the launch each worker
logs through a MemoryHandler that keeps its records until logging shuts down at exit, into
OUT/log.<rank>, and writes OUT/unclosed.<rank> through a file object it never closes.
"""

import atexit
import logging
import logging.handlers
import os
import sys
from pathlib import Path

import torch

from switchyard import Runtime


def mark_exit(out: Path) -> None:
    (out / f"atexit.{os.environ.get('RANK', 'supervisor')}").write_text("ran")


def main() -> None:
    out, action = Path(sys.argv[1]), sys.argv[2]
    atexit.register(mark_exit, out)
    runtime = Runtime(accelerator="cpu", strategy="ddp", devices=2)
    runtime.launch()
    rank = runtime.global_rank

    logger = logging.getLogger("exits")
    logger.setLevel(logging.INFO)
    target = logging.FileHandler(out / f"log.{rank}")
    logger.addHandler(logging.handlers.MemoryHandler(10_000, logging.CRITICAL + 1, target))
    unclosed = open(out / f"unclosed.{rank}", "w")  # noqa: SIM115 - never closed, on purpose
    unclosed.write(f"written by rank {rank}, never closed")

    for _ in range(3):
        runtime.all_reduce(torch.ones(1), op="sum")
    if action == "exit3" and rank == 1:
        logger.info("rank 1 exits with 3")
        sys.exit(3)
    if action == "exit3":
        for _ in range(10_000):  # until the peer's absence fails this rank
            runtime.all_reduce(torch.ones(1), op="sum")
    if action == "raise" and rank == 1:
        raise RuntimeError("deliberate failure of rank 1")
    logger.info("rank %d says goodbye", rank)


if __name__ == "__main__":
    main()
