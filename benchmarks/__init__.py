"""Benchmarks of switchyard against raw PyTorch, Lightning Fabric and Accelerate.

Run ``python -m benchmarks list`` for the scenarios and ``python -m benchmarks run`` to measure
them; ``benchmarks/README.md`` says what each one measures and how."""
