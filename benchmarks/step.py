"""Per-step time of a training step through each library against the same step in raw PyTorch.

Each program runs in a child process of its own environment (``python -m benchmarks.step
--worker SPEC``), which measures the library's loop and the raw loop interleaved in that one
process:

- Both loops drive the very same model and optimizer objects (the library's wrappers around
  them) on the same pre-made batches, so parameters, optimizer state and memory layout are
  identical and only the call path differs.
- Before timing, both loops train a fresh copy of the model from the same weights for three
  steps and must give bit-identical parameters; otherwise they do different work and the worker
  stops.
- Steps run in blocks of about 20 ms, sized from the raw step time. Each round runs three blocks:
  the library's loop and the raw loop twice (``raw`` and ``raw A/A``), in an order that cycles
  through all six permutations, after discarded warm-up rounds. The garbage collector is paused
  within blocks and run between them; torch runs on one thread (small matmuls on a shared machine
  jitter by an order of magnitude with more).
- Each block records the wall-clock time and the CPU time of the process, per step. The ratios
  are library block / raw block of the same round; the A/A ratios are raw A/A block / raw block,
  the noise floor of the same method.

The ``calls-*`` scenarios time each call of the step (forward, backward, ``optimizer.step``,
``zero_grad``) the same way on an ``nn.Linear(4, 4)``, where the call path dominates.

For ``bf16-mixed`` the raw loop is what the precision does by hand: the forward under
``torch.autocast("cpu", dtype=torch.bfloat16)``, the output cast back to float32, the loss outside
autocast. This module imports only torch at the top: it runs in the Fabric and Accelerate
environments too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.environments import run_json_child
from benchmarks.results import Comparison, Context, Scenario
from benchmarks.stats import paired_ratios, summarize

Batch = tuple[Any, Any]
Step = Callable[[Sequence[Batch]], None]
"""One optimizer step over its micro-batches."""

TARGETS = {"32-true": 1.01, "bf16-mixed": 1.02}
"""switchyard/raw step-time ratio targets on the MLP (issue 11)."""


@dataclass(frozen=True)
class Workload:
    """What one step trains: the model, its precision, and how the step is split."""

    model: str
    """``"mlp"``: 64-128-128-10, batch 32; ``"transformer"``: one ``TransformerEncoderLayer``
    (d_model 64, 4 heads, feed-forward 128, no dropout) on batches of 8 sequences of 32, mean
    pooled into a 10-class linear head."""
    precision: str
    micro_batches: int = 1
    """Micro-batches per optimizer step, each loss divided by their number (accumulation)."""
    no_sync: bool = False
    """Run every micro-batch but the last under the library's ``no_backward_sync``."""
    seed: int = 0

    def describe(self) -> str:
        model = {
            "mlp": "MLP 64-128-128-10, batch 32",
            "transformer": "TransformerEncoderLayer d_model 64, 4 heads, seq 32, batch 8",
        }[self.model]
        text = f"{model}, {self.precision}"
        if self.micro_batches > 1:
            text += f", {self.micro_batches} micro-batches per step"
        if self.no_sync:
            text += " (all but the last under no_backward_sync)"
        return text


@dataclass(frozen=True)
class Timing:
    """How long to measure: rounds of three blocks, after discarded warm-up rounds."""

    rounds: int
    warmup_rounds: int
    block_seconds: float


FULL = Timing(rounds=60, warmup_rounds=6, block_seconds=0.02)
QUICK = Timing(rounds=6, warmup_rounds=1, block_seconds=0.005)
CALLS_FULL = Timing(rounds=30, warmup_rounds=3, block_seconds=0.0)
CALLS_QUICK = Timing(rounds=4, warmup_rounds=1, block_seconds=0.0)
"""The call-cost scenarios time a fixed number of calls (:data:`CALL_NUMBER`), not a block."""


# -- the workload, in plain torch -------------------------------------------------------------


def make_model(w: Workload) -> Any:
    """A fresh model, its weights drawn from ``w.seed``."""
    import torch
    from torch import nn

    torch.manual_seed(w.seed)
    if w.model == "mlp":
        return nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        )
    if w.model == "transformer":

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.layer = nn.TransformerEncoderLayer(
                    64, 4, dim_feedforward=128, dropout=0.0, batch_first=True
                )
                self.head = nn.Linear(64, 10)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(self.layer(x).mean(dim=1))

        return Block()
    raise ValueError(f"no model {w.model!r}; known: mlp, transformer")


def make_batches(w: Workload, count: int = 8) -> list[list[Batch]]:
    """``count`` steps' worth of micro-batches, the same for every loop."""
    import torch

    generator = torch.Generator().manual_seed(w.seed + 1)
    shape = (32, 64) if w.model == "mlp" else (8, 32, 64)
    return [
        [
            (
                torch.randn(*shape, generator=generator),
                torch.randint(0, 10, (shape[0],), generator=generator),
            )
            for _ in range(w.micro_batches)
        ]
        for _ in range(count)
    ]


def raw_step(w: Workload, model: Any, optimizer: Any, bf16_input: bool = False) -> Step:
    """The plain PyTorch step the workload corresponds to; ``bf16_input``: at ``bf16-mixed``,
    cast the input to bfloat16 before the forward too, as Fabric's precision does."""
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()
    scale = w.micro_batches
    if w.precision == "32-true":

        def forward(x: Any) -> Any:
            return model(x)

    elif w.precision == "bf16-mixed":

        def forward(x: Any) -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x.bfloat16() if bf16_input else x)
            return out.float()

    else:
        raise ValueError(f"no raw loop for precision {w.precision!r}; known: {list(TARGETS)}")

    # written as library_step is (the loss made and dropped inside a function per micro-batch):
    # keeping the last loss alive until the next step, as a flat loop does, executes about
    # 35,000 fewer instructions per MLP step (1.2%, counted under callgrind), which would be
    # charged to the library
    def backward(x: Any, y: Any) -> None:
        loss = loss_fn(forward(x), y)
        (loss / scale if scale > 1 else loss).backward()

    def step(micro: Sequence[Batch]) -> None:
        for x, y in micro:
            backward(x, y)
        optimizer.step()
        optimizer.zero_grad()

    return step


# -- the libraries ----------------------------------------------------------------------------


class Library:
    """One library's side of the step: its set-up, backward and no-sync context."""

    name = ""
    bf16_input = False
    """Whether its ``bf16-mixed`` casts the input to bfloat16 before the forward (Fabric's
    does; switchyard's and Accelerate's leave that to autocast), so the raw loop does too."""

    def __init__(self, precision: str) -> None:
        """Make the library's runtime object for ``precision`` (switchyard's names)."""

    def setup(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def backward(self, loss: Any) -> None:
        raise NotImplementedError

    def no_sync(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def version(self) -> str:
        from importlib import metadata

        return metadata.version({"fabric": "lightning"}.get(self.name, self.name))

    def teardown(self) -> None:
        """Release what the library holds."""


class Switchyard(Library):
    name = "switchyard"

    def __init__(self, precision: str) -> None:
        from switchyard import Runtime

        self.runtime = Runtime(
            accelerator="cpu", strategy="single_device", devices=1, precision=precision
        )
        self.runtime.launch()

    def setup(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        return tuple(self.runtime.setup(model, optimizer))

    def backward(self, loss: Any) -> None:
        self.runtime.backward(loss)

    def no_sync(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        return self.runtime.no_backward_sync(model)

    def teardown(self) -> None:
        self.runtime.teardown()


class Fabric(Library):
    name = "fabric"
    bf16_input = True

    def __init__(self, precision: str) -> None:
        from lightning.fabric import Fabric as LightningFabric  # type: ignore[import-not-found, unused-ignore]

        self.fabric = LightningFabric(accelerator="cpu", devices=1, precision=precision)

    def setup(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        return tuple(self.fabric.setup(model, optimizer))

    def backward(self, loss: Any) -> None:
        self.fabric.backward(loss)

    def no_sync(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        return self.fabric.no_backward_sync(model)


class Accelerate(Library):
    name = "accelerate"

    def __init__(self, precision: str) -> None:
        from accelerate import Accelerator  # type: ignore[import-not-found, unused-ignore]

        mixed = {"32-true": "no", "bf16-mixed": "bf16"}[precision]
        self.accelerator = Accelerator(cpu=True, mixed_precision=mixed)

    def setup(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        return tuple(self.accelerator.prepare(model, optimizer))

    def backward(self, loss: Any) -> None:
        self.accelerator.backward(loss)

    def no_sync(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        return self.accelerator.no_sync(model)


LIBRARIES: dict[str, type[Library]] = {
    "switchyard": Switchyard,
    "fabric": Fabric,
    "accelerate": Accelerate,
}


def library_step(w: Workload, library: Library, model: Any, optimizer: Any) -> Step:
    """The workload's step written for the library; ``model`` and ``optimizer`` are its
    wrappers."""
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()
    scale = w.micro_batches

    def backward(x: Any, y: Any) -> None:
        loss = loss_fn(model(x), y)
        library.backward(loss / scale if scale > 1 else loss)

    if w.no_sync:

        def step(micro: Sequence[Batch]) -> None:
            *accumulating, (x_last, y_last) = micro
            for x, y in accumulating:
                with library.no_sync(model):
                    backward(x, y)
            backward(x_last, y_last)
            optimizer.step()
            optimizer.zero_grad()

    else:

        def step(micro: Sequence[Batch]) -> None:
            for x, y in micro:
                backward(x, y)
            optimizer.step()
            optimizer.zero_grad()

    return step


# -- the worker: runs in the library's environment --------------------------------------------


def check_bit_identity(w: Workload, library: Library) -> None:
    """Both loops, from the same weights, must give bit-identical parameters after three steps."""
    import torch

    batches = make_batches(w, count=3)
    results = []
    for use_library in (False, True):
        model = make_model(w)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if use_library:
            wrapped, wrapped_optimizer = library.setup(model, optimizer)
            step = library_step(w, library, wrapped, wrapped_optimizer)
        else:
            step = raw_step(w, model, optimizer, library.bf16_input)
        for micro in batches:
            step(micro)
        results.append([p.detach().clone() for p in model.parameters()])
    if not all(torch.equal(a, b) for a, b in zip(*results, strict=True)):
        raise SystemExit(
            f"{library.name}, {w.describe()}: the raw and the {library.name} loops gave different "
            "parameters after three steps; they do different work, so their times are not "
            "comparable (fix the raw loop)"
        )


def run_block(step: Step, batches: Sequence[Sequence[Batch]], steps: int) -> tuple[float, float]:
    """Seconds per step over ``steps`` consecutive steps: wall-clock time and the CPU time of
    this process (which leaves out the time other programs held the cores)."""
    count = len(batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(batches[i % count])
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def interleaved(
    timers: Mapping[str, Callable[[], tuple[float, float]]], rounds: int, warmup_rounds: int
) -> dict[str, list[float]]:
    """Run the timers round by round, in an order cycling through all their permutations, with
    the garbage collector paused within a timer and run between rounds; ``NAME_wall`` and
    ``NAME_cpu`` lists of the measured rounds' results."""
    times: dict[str, list[float]] = {f"{n}_{c}": [] for n in timers for c in ("wall", "cpu")}
    orders = itertools.cycle(itertools.permutations(timers))
    gc.collect()
    gc.disable()
    try:
        for round_ in range(warmup_rounds + rounds):
            for name in next(orders):
                wall, cpu = timers[name]()
                if round_ >= warmup_rounds:
                    times[f"{name}_wall"].append(wall)
                    times[f"{name}_cpu"].append(cpu)
            gc.collect()  # outside the timed blocks
    finally:
        gc.enable()
    return times


def prepared_loops(
    w: Workload, library_name: str
) -> tuple[Library, list[list[Batch]], dict[str, Step]]:
    """What a worker measures: the library (its loop checked bit-identical to raw's), the
    batches, and the loops ``raw``, ``program`` (the library's) and ``raw_aa`` on one model and
    optimizer, each past its first 10 steps (allocator, autocast caches); torch on one
    thread."""
    import torch

    torch.set_num_threads(1)
    library = LIBRARIES[library_name](w.precision)
    check_bit_identity(w, library)

    batches = make_batches(w)
    model = make_model(w)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wrapped, wrapped_optimizer = library.setup(model, optimizer)
    loops = {
        "raw": raw_step(w, model, optimizer, library.bf16_input),
        "program": library_step(w, library, wrapped, wrapped_optimizer),
        "raw_aa": raw_step(w, model, optimizer, library.bf16_input),
    }
    for step in loops.values():
        run_block(step, batches, 10)
    return library, batches, loops


def worker(w: Workload, library_name: str, timing: Timing) -> dict[str, Any]:
    """Interleaved blocks of the library's loop and two raw loops; per-step times per block."""
    library, batches, loops = prepared_loops(w, library_name)
    # size the blocks from the raw step time
    per_step = min(run_block(loops["raw"], batches, 10)[1] for _ in range(3))
    steps = max(1, round(timing.block_seconds / max(per_step, 1e-7)))

    timers = {
        name: functools.partial(run_block, loop, batches, steps) for name, loop in loops.items()
    }
    try:
        times = interleaved(timers, timing.rounds, timing.warmup_rounds)
    finally:
        library.teardown()
    return {"steps_per_block": steps, "version": library.version(), **times}


CALLS = ("forward", "backward", "optimizer.step", "zero_grad")
CALL_NUMBER = 1000
"""Calls per timing in the call-cost scenarios."""


def call_worker(precision: str, library_name: str, timing: Timing) -> dict[str, Any]:
    """Per-call times of each call of the step, raw and through the library, on a model so
    small (``nn.Linear(4, 4)``) that the call path dominates."""
    import torch

    torch.set_num_threads(1)
    library = LIBRARIES[library_name](precision)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wrapped, wrapped_optimizer = library.setup(model, optimizer)
    x = torch.randn(8, 4)
    leaf = torch.ones(1, requires_grad=True)

    if precision == "bf16-mixed":

        def raw_forward() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x.bfloat16() if library.bf16_input else x)
            out.float()

    else:

        def raw_forward() -> None:
            model(x)

    def raw_backward() -> None:
        (leaf * 2).backward()

    def library_backward() -> None:
        library.backward(leaf * 2)

    pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "forward": (raw_forward, lambda: wrapped(x)),
        "backward": (raw_backward, library_backward),
        "optimizer.step": (optimizer.step, wrapped_optimizer.step),
        "zero_grad": (optimizer.zero_grad, wrapped_optimizer.zero_grad),
    }

    def timer(fn: Callable[[], Any]) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(CALL_NUMBER):
                fn()
            return (
                (time.perf_counter() - wall) / CALL_NUMBER,
                (time.process_time() - cpu) / CALL_NUMBER,
            )

        return run

    data: dict[str, Any] = {"version": library.version(), "calls": {}}
    try:
        for call, (raw, wrapped_call) in pairs.items():
            timers = {"raw": timer(raw), "program": timer(wrapped_call), "raw_aa": timer(raw)}
            data["calls"][call] = interleaved(timers, timing.rounds, timing.warmup_rounds)
    finally:
        library.teardown()
    return data


# -- the scenarios: run in the benchmarks' own environment ------------------------------------


def clock_comparisons(
    scenario: str,
    program: str,
    metric: str,
    times: dict[str, list[float]],
    *,
    target: float | None,
    notes: str,
    per: str,
) -> list[Comparison]:
    """Interleaved times as comparisons, one per clock (``metric`` and ``metric`` in CPU
    time), with the fixed cost per ``per`` in µs: the median pairwise difference, and the
    fastest program time less the fastest raw one."""
    out = []
    for clock, name in (("wall", metric), ("cpu", f"{metric} (CPU)")):
        prog, raw, aa = (times[f"{n}_{clock}"] for n in ("program", "raw", "raw_aa"))
        added = summarize([p - r for p, r in zip(prog, raw, strict=True)]).median
        out.append(
            Comparison(
                scenario=scenario,
                metric=name,
                unit="s",
                better="lower",
                program=program,
                baseline="raw",
                program_values=tuple(prog),
                baseline_values=tuple(raw),
                ratios=tuple(paired_ratios(prog, raw)),
                aa_ratios=tuple(paired_ratios(aa, raw)),
                target=target,
                notes=notes,
                extra={
                    f"added µs per {per}": added * 1e6,
                    # other programs only ever add time: the least disturbed estimate
                    f"added µs per {per}, fastest against fastest": (min(prog) - min(raw)) * 1e6,
                },
            )
        )
    return out


def step_comparisons(
    scenario: str, program: str, w: Workload, data: dict[str, Any]
) -> list[Comparison]:
    """A step worker's block times as comparisons."""
    plain_mlp = w.model == "mlp" and w.micro_batches == 1  # where the issue sets the targets
    target = TARGETS.get(w.precision) if program == "switchyard" and plain_mlp else None
    notes = (
        f"{w.describe()}; {program} {data['version']}; {data['steps_per_block']} steps per block"
    )
    return clock_comparisons(
        scenario, program, "step time", data, target=target, notes=notes, per="step"
    )


def call_comparisons(
    scenario: str, program: str, precision: str, data: dict[str, Any]
) -> list[Comparison]:
    """A call worker's times as comparisons, one per call and clock."""
    notes = (
        f"nn.Linear(4, 4), {precision}; {program} {data['version']}; {CALL_NUMBER} calls a timing"
    )
    out = []
    for call, times in data["calls"].items():
        out.extend(
            clock_comparisons(
                scenario, program, f"{call} call", times, target=None, notes=notes, per="call"
            )
        )
    return out


def _scenario(
    name: str, description: str, spec: dict[str, Any], read: Callable[..., list[Comparison]]
) -> Scenario:
    programs = ("switchyard", "fabric", "accelerate")

    def run(context: Context) -> list[Comparison]:
        timing = (
            (CALLS_QUICK if context.quick else CALLS_FULL)
            if "calls" in spec
            else (QUICK if context.quick else FULL)
        )
        out: list[Comparison] = []
        for program in programs:
            if program not in context.programs:
                continue
            context.log(f"{name}: {program}...")
            job = {**spec, "program": program, "timing": asdict(timing)}
            try:
                data = run_json_child(
                    context.python_for(program),
                    ["-m", "benchmarks.step", "--worker", json.dumps(job)],
                    timeout=600,
                )
            except RuntimeError as error:  # the other programs still run
                context.record_failure(name, program, error)
                continue
            out.extend(read(name, program, data))
        return out

    return Scenario(name=name, description=description, programs=("raw", *programs), run=run)


def _step_scenario(name: str, w: Workload) -> Scenario:
    return _scenario(
        name,
        f"per-step time, {w.describe()}",
        {"workload": asdict(w)},
        functools.partial(_read_step, w),
    )


def _read_step(w: Workload, name: str, program: str, data: dict[str, Any]) -> list[Comparison]:
    return step_comparisons(name, program, w, data)


def _read_calls(precision: str, name: str, program: str, data: dict[str, Any]) -> list[Comparison]:
    return call_comparisons(name, program, precision, data)


def _scenarios() -> Iterator[Scenario]:
    for model in ("mlp", "transformer"):
        for precision in TARGETS:
            yield _step_scenario(f"step-{model}-{precision}", Workload(model, precision))
    yield _step_scenario("step-mlp-accumulate", Workload("mlp", "32-true", micro_batches=4))
    yield _step_scenario(
        "step-mlp-no-sync", Workload("mlp", "32-true", micro_batches=4, no_sync=True)
    )
    for precision in TARGETS:
        yield _scenario(
            f"calls-{precision}",
            f"fixed cost of each call of the step (forward, backward, optimizer.step, "
            f"zero_grad) on an nn.Linear(4, 4), {precision}",
            {"calls": precision},
            functools.partial(_read_calls, precision),
        )


SCENARIOS: tuple[Scenario, ...] = tuple(_scenarios())


def main(argv: Sequence[str] | None = None) -> int:
    """The worker's entry point: ``--worker SPEC`` prints the times as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--worker", required=True, help="JSON: workload or calls, program, timing")
    spec = json.loads(parser.parse_args(argv).worker)
    timing = Timing(**spec["timing"])
    if "calls" in spec:
        data = call_worker(spec["calls"], spec["program"], timing)
    else:
        data = worker(Workload(**spec["workload"]), spec["program"], timing)
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
