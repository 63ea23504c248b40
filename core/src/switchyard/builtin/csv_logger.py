"""The ``csv`` logger: metrics to ``<root_dir>/<name>/version_<n>/metrics.csv`` with the standard
library's :mod:`csv`, hyperparameters to ``hparams.json`` beside it."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from switchyard.errors import ArgumentError
from switchyard.loggers import Logger, RunDirectory, hyperparameters

METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.json"
STEP_COLUMN = "step"


class CSVLogger(Logger):
    """Metrics as rows of a CSV file: one row per ``log_metrics`` call, a ``step`` column first,
    then one column per metric name in the order the names first arrived (a row leaves the
    metrics it does not log empty).

    Every row is flushed to the operating system as it is logged, so a run that is killed keeps
    every row logged before. When a new metric name arrives, the file is rewritten with the wider
    header into a temporary file that then replaces it (:func:`os.replace`), so a kill during
    the rewrite leaves the previous file whole.

    Args:
        root_dir: the folder holding every experiment, ``"logs"`` by default (relative to the
            working directory).
        name: the experiment, a folder of ``root_dir``.
        version: the run's version, a folder ``version_<version>`` of the experiment; by default
            one more than the highest there, claimed when the first metric is logged. A given
            version whose folder already holds metrics is refused rather than overwritten.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str] = "logs",
        name: str = "switchyard",
        version: int | None = None,
    ) -> None:
        self._run = RunDirectory(root_dir, name, version, owner="CSVLogger")
        self._fields: list[str] = []
        self._rows = 0
        self._hparams: dict[str, Any] = {}
        self._file: IO[str] | None = None
        self._writer: csv.DictWriter[str] | None = None

    # -- what Logger asks ----------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"CSVLogger(root_dir={self.root_dir!r}, name={self.name!r}, version={self.version!r})"
        )

    @property
    def name(self) -> str:
        return self._run.name

    @property
    def version(self) -> int:
        """The run's version: the one claimed once something was logged; before that, the one
        it would claim (the given one, or the next free one)."""
        return self._run.version

    @property
    def root_dir(self) -> str:
        return os.fspath(self._run.root)

    @property
    def log_dir(self) -> str:
        return os.fspath(self._run.path)

    @property
    def metrics_file(self) -> Path:
        """Where the rows are written (``<log_dir>/metrics.csv``)."""
        return Path(self.log_dir) / METRICS_FILE

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if STEP_COLUMN in metrics:
            raise ArgumentError(
                f"the csv logger writes the step in its own {STEP_COLUMN!r} column, so a metric "
                f"cannot be named {STEP_COLUMN!r}; pass it as step=... or rename the metric"
            )
        row: dict[str, Any] = {STEP_COLUMN: self._rows if step is None else step, **metrics}
        self._open()
        new = [key for key in row if key not in self._fields]
        if new:
            self._fields.extend(new)
            self._rewrite()
        assert self._writer is not None
        assert self._file is not None
        self._writer.writerow(row)
        self._file.flush()
        self._rows += 1

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        # an argparse.Namespace too, for code that calls the logger itself as Fabric's allow
        self._hparams.update(hyperparameters(params, "CSVLogger.log_hyperparams"))
        folder = self._claim()
        # not a format with a dependency (YAML): JSON, values it cannot hold written as text
        text = json.dumps(self._hparams, indent=2, default=str) + "\n"
        _replace(folder / HPARAMS_FILE, text)

    def save(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def finalize(self, status: str) -> None:
        self.save()
        if self._file is not None:
            self._file.close()
        self._file = None
        self._writer = None

    # -- files -----------------------------------------------------------------------------

    def _claim(self) -> Path:
        return self._run.claim(refuse_if_holds=METRICS_FILE)

    def _open(self) -> None:
        folder = self._claim()
        if self._file is None and self._fields:
            # reopened (after finalize, or in a process the logger was pickled into)
            self._file = (folder / METRICS_FILE).open("a", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._file, fieldnames=self._fields)

    def _rewrite(self) -> None:
        """The file again, under the current header: the rows so far read back from disk (not
        kept in memory, so a long run's memory does not grow), written to a temporary file that
        then replaces the old one."""
        path = self._claim() / METRICS_FILE
        if self._file is not None:
            self._file.close()
        temporary = path.with_name(f".{METRICS_FILE}.tmp")
        with temporary.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=self._fields)
            writer.writeheader()
            if path.exists():
                with path.open(newline="", encoding="utf-8") as previous:
                    writer.writerows(csv.DictReader(previous))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        self._file = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=self._fields)

    def __getstate__(self) -> dict[str, Any]:
        # an open file does not travel to another process (ddp_spawn); it is reopened there
        state = self.__dict__.copy()
        state["_file"] = None
        state["_writer"] = None
        return state


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
