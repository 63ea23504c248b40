"""Join a DDP job, report this worker's pid, then wait until killed."""

import os
import sys
import time

from switchyard import Runtime

if __name__ == "__main__":
    runtime = Runtime(accelerator="cpu", strategy="ddp")
    runtime.launch()
    runtime.barrier()
    with open(sys.argv[1] + f".{runtime.global_rank}", "w") as handle:
        handle.write(str(os.getpid()))
    while True:
        time.sleep(0.5)
