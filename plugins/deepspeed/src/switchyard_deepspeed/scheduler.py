"""The learning-rate scheduler a DeepSpeed config defines, as ``runtime.setup(model)`` hands it
to the user."""

from __future__ import annotations

from typing import Any


class EngineSteppedScheduler:
    """A scheduler the engine built from the config's ``"scheduler"`` section and steps itself,
    in ``optimizer.step()`` (``engine.step()``).

    Everything but stepping reaches the scheduler (``get_last_lr()``, ``state_dict()``, its
    attributes): a second ``step()`` of the user's would move the learning rate twice as fast,
    so :meth:`step` is refused. :attr:`scheduler` is DeepSpeed's own object.
    """

    def __init__(self, scheduler: Any) -> None:
        self.__dict__["scheduler"] = scheduler

    def step(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            f"the DeepSpeed engine steps this {type(self.scheduler).__name__} itself, in "
            "optimizer.step(); remove the scheduler.step() call (stepping it again would "
            "advance the learning rate twice per step)"
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["scheduler"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["scheduler"], name, value)

    def __repr__(self) -> str:
        return f"EngineSteppedScheduler({self.scheduler!r})"
