"""The ``tensorboard`` logger: metrics as TensorBoard scalars, written by
:class:`torch.utils.tensorboard.SummaryWriter` into ``<root_dir>/<name>/version_<n>``.

Needs the ``tensorboard`` package (``pip install tensorboard``), which switchyard does not
install; the entry declares it in ``requires``, so asking for this logger without it is an
error with that command, and this module is imported only once it is there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from switchyard.loggers import Logger, RunDirectory, hyperparameters


class TensorBoardLogger(Logger):
    """Each metric a scalar series of that name (``loss``, ``val/accuracy``: a ``/`` groups
    series in TensorBoard's view), hyperparameters in TensorBoard's HPARAMS tab.

    The writer is created when the first metric or hyperparameter is logged. It writes to disk
    every ``flush_secs`` seconds (TensorBoard's default 120), at :meth:`save` and at the end of
    the run.

    Args:
        root_dir: the folder holding every experiment, ``"logs"`` by default; point
            ``tensorboard --logdir`` at it.
        name: the experiment, a folder of ``root_dir``.
        version: the run's version (``version_<n>``); by default the next free one.
        writer_kwargs: passed to ``SummaryWriter`` (``flush_secs``, ``max_queue``...).
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str] = "logs",
        name: str = "switchyard",
        version: int | None = None,
        **writer_kwargs: Any,
    ) -> None:
        self._run = RunDirectory(root_dir, name, version, owner="TensorBoardLogger")
        self._writer_kwargs = writer_kwargs
        self._writer: Any = None
        self._calls = 0

    def __repr__(self) -> str:
        return (
            f"TensorBoardLogger(root_dir={self.root_dir!r}, name={self.name!r}, "
            f"version={self.version!r})"
        )

    @property
    def name(self) -> str:
        return self._run.name

    @property
    def version(self) -> int:
        return self._run.version

    @property
    def root_dir(self) -> str:
        return os.fspath(self._run.root)

    @property
    def log_dir(self) -> str:
        return os.fspath(self._run.path)

    @property
    def experiment(self) -> Any:
        """The ``torch.utils.tensorboard.SummaryWriter``, created on first use, for what
        :meth:`log_metrics` does not cover (``add_histogram``, ``add_image``...)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                log_dir=os.fspath(self._run.claim()), **self._writer_kwargs
            )
        return self._writer

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None:
            step = self._calls
        writer = self.experiment
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=step)
        self._calls += 1

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # the HPARAMS tab holds numbers, booleans and text: anything else is shown as its text
        given = hyperparameters(params, "TensorBoardLogger.log_hyperparams")
        shown = {
            key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in given.items()
        }
        experiment, start, end = hparams(shown, {})
        file_writer = self.experiment._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)

    def save(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def finalize(self, status: str) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def __getstate__(self) -> dict[str, Any]:
        # a writer (its thread and open file) does not travel to another process (ddp_spawn)
        state = self.__dict__.copy()
        state["_writer"] = None
        return state
