"""What the distributed benchmarks run in each process of a job.

Each module here is started as ``python -m benchmarks.workers.NAME`` (by torchrun, by
``switchyard run`` or by itself through ``runtime.launch()``) with the repository root on
``PYTHONPATH``, possibly in another virtual environment (Fabric's, Accelerate's, DeepSpeed's).
They import nothing of ``benchmarks`` but this package, so that each runs in any of those
environments, and they report through one JSON file written by rank zero."""
