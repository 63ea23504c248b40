"""What a benchmark scenario is, what it is given, and what it hands back.

A :class:`Scenario` runs under a :class:`Context` and returns :class:`Comparison` records: one
metric of one program against its baseline, with every measured value, the ratios taken pair by
pair, and the A/A ratios (the baseline against itself, measured the same way) that show the noise
floor. The report renders these; nothing else is needed to re-read a run."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.stats import median_interval

PROGRAMS = ("raw", "switchyard", "fabric", "accelerate")
"""Every program a scenario may run; ``raw`` is the baseline of the others."""

VERDICTS = ("met", "not met", "not resolved", "no target")


@dataclass(frozen=True)
class Comparison:
    """One metric of one program against its baseline, as measured in one run.

    ``ratios`` are ``program / baseline`` pair by pair (each program measurement against the
    baseline one taken next to it); ``aa_ratios`` are the baseline against itself, paired the same
    way, so their spread is the noise floor a ratio must be read against. ``target`` bounds the
    ratio from above when ``better`` is ``"lower"`` and from below when it is ``"higher"``;
    ``difference_target`` bounds ``program - baseline`` (in ``unit``) the same way, for targets
    stated as an added cost (cold start: at most +30 ms)."""

    scenario: str
    metric: str
    unit: str
    better: str
    program: str
    baseline: str
    program_values: tuple[float, ...]
    baseline_values: tuple[float, ...]
    ratios: tuple[float, ...]
    aa_ratios: tuple[float, ...]
    target: float | None
    notes: str = ""
    difference_target: float | None = None
    extra: Mapping[str, float] = field(default_factory=dict)
    """Further named figures (a fixed cost per step in µs, a CPU-time ratio...), shown as notes."""

    def __post_init__(self) -> None:
        if self.better not in ("lower", "higher"):
            raise ValueError(f"better must be 'lower' or 'higher', got {self.better!r}")
        if not self.ratios:
            raise ValueError(f"{self.scenario}/{self.program}: a comparison needs ratios")

    def differences(self) -> list[float]:
        """``program - baseline`` pair by pair, when both have the same number of values."""
        return [p - b for p, b in zip(self.program_values, self.baseline_values, strict=True)]

    def verdict(self, confidence: float = 0.95) -> str:
        """``"met"`` when the whole interval of the median ratio (and of the median difference,
        if there is a difference target) is on the good side of the target, ``"not met"`` when
        the whole interval of one is on the bad side, ``"not resolved"`` when an interval
        straddles a target at this noise or there are too few values for an interval of that
        confidence, ``"no target"`` without one."""
        checks: list[tuple[tuple[float, float, float], float]] = []
        if self.target is not None:
            checks.append((median_interval(self.ratios, confidence), self.target))
        if self.difference_target is not None:
            checks.append((median_interval(self.differences(), confidence), self.difference_target))
        if not checks:
            return "no target"
        if any(coverage < confidence for (_, _, coverage), _ in checks):
            return "not resolved"  # too few values for an interval of that confidence
        verdicts = [self._side(low, high, bound) for (low, high, _), bound in checks]
        if "not met" in verdicts:
            return "not met"
        if "not resolved" in verdicts:
            return "not resolved"
        return "met"

    def _side(self, low: float, high: float, bound: float) -> str:
        good, bad = (high, low) if self.better == "lower" else (low, high)
        if (good <= bound) if self.better == "lower" else (good >= bound):
            return "met"
        if (bad > bound) if self.better == "lower" else (bad < bound):
            return "not met"
        return "not resolved"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists); :meth:`from_json` reads it back."""
        data = dataclasses.asdict(self)
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comparison:
        """The comparison :meth:`to_json` wrote; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown comparison fields {unknown}; known: {sorted(names)}")
        values: dict[str, Any] = dict(data)
        for key in ("program_values", "baseline_values", "ratios", "aa_ratios"):
            values[key] = tuple(float(v) for v in values.get(key, ()))
        values["extra"] = {str(k): float(v) for k, v in values.get("extra", {}).items()}
        return cls(**values)


@dataclass
class Context:
    """What a scenario is given: how long to measure, which programs to run, where to write."""

    quick: bool
    programs: frozenset[str]
    out_dir: Path
    log_file: Path | None = None
    build_envs: bool = False
    """Whether scenarios may build environments that take long to make (DeepSpeed's, with its
    compiled ops); Fabric's and Accelerate's are always made on first use."""
    failures: list[dict[str, str]] = field(default_factory=list)
    """What failed without stopping the scenario: ``{"scenario", "program", "error"}``."""

    def python_for(self, program: str) -> Path:
        """The interpreter that runs ``program``: this environment's for ``raw`` and
        ``switchyard``, the engine's own environment for ``fabric`` and ``accelerate`` (made on
        first use by ``scripts/engine-env``)."""
        from benchmarks import environments

        return environments.python_for(program, log=self.log)

    def record_failure(self, scenario: str, program: str, error: BaseException) -> None:
        """Note that one program of a scenario failed while the others went on."""
        self.log(f"{scenario}: {program} failed: {error}")
        self.failures.append(
            {"scenario": scenario, "program": program, "error": f"{type(error).__name__}: {error}"}
        )

    def log(self, message: str) -> None:
        """Progress for the person running the benchmark (stderr, and the run's log file)."""
        print(message, file=sys.stderr, flush=True)
        if self.log_file is not None:
            with self.log_file.open("a", encoding="utf-8") as out:
                out.write(message + "\n")


@dataclass(frozen=True)
class Scenario:
    """A named measurement; ``run`` returns one comparison per program and metric it measured,
    for those of ``programs`` the context asks for."""

    name: str
    description: str
    programs: tuple[str, ...]
    run: Callable[[Context], list[Comparison]]
