"""Callbacks: ``Runtime(callbacks=...)`` and ``runtime.call("hook_name", ...)``, as Lightning
Fabric's ``Fabric(callbacks=...)`` and ``fabric.call``. That callbacks run on every process is
checked by the two-process test in tests/test_loggers.py."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard import ArgumentError, Runtime


class Recorder:
    def __init__(self, name: str, calls: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]]):
        self.name = name
        self.calls = calls

    def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((self.name, "on_train_epoch_end", args, kwargs))


class OnlyValidation:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    def on_validation_end(self, metrics: dict[str, float]) -> None:
        self.calls.append(("validation", "on_validation_end", (metrics,), {}))


def test_call_reaches_each_callback_having_the_method_in_order_with_the_arguments() -> None:
    calls: list[Any] = []
    runtime = Runtime(
        accelerator="cpu",
        callbacks=[Recorder("first", calls), OnlyValidation(calls), Recorder("second", calls)],
    )
    runtime.call("on_train_epoch_end", 3, results={"loss": 0.5})
    assert calls == [
        ("first", "on_train_epoch_end", (3,), {"results": {"loss": 0.5}}),
        ("second", "on_train_epoch_end", (3,), {"results": {"loss": 0.5}}),
    ]
    calls.clear()
    runtime.call("on_validation_end", {"accuracy": 0.9})
    assert calls == [("validation", "on_validation_end", ({"accuracy": 0.9},), {})]


def test_a_hook_no_callback_has_calls_nothing_as_in_fabric() -> None:
    calls: list[Any] = []
    runtime = Runtime(accelerator="cpu", callbacks=[Recorder("only", calls)])
    runtime.call("on_something_else", 1, 2)
    assert calls == []
    Runtime(accelerator="cpu").call("on_train_epoch_end")  # no callbacks at all


def test_one_callback_may_be_given_without_a_list() -> None:
    calls: list[Any] = []
    runtime = Runtime(accelerator="cpu", callbacks=Recorder("alone", calls))
    runtime.call("on_train_epoch_end")
    assert calls == [("alone", "on_train_epoch_end", (), {})]


def test_functions_and_modules_with_the_method_are_callbacks_too() -> None:
    import types

    seen: list[int] = []
    module = types.ModuleType("my_hooks")
    module.on_step = seen.append  # type: ignore[attr-defined]
    Runtime(accelerator="cpu", callbacks=[module]).call("on_step", 7)
    assert seen == [7]


def test_an_attribute_that_is_not_a_method_is_an_error_before_any_callback_runs() -> None:
    calls: list[Any] = []

    class Typo:
        on_train_epoch_end = "oops"

    runtime = Runtime(accelerator="cpu", callbacks=[Recorder("first", calls), Typo()])
    with pytest.raises(ArgumentError) as raised:
        runtime.call("on_train_epoch_end")
    message = str(raised.value)
    assert "callbacks[1]" in message
    assert "Typo" in message
    assert "'on_train_epoch_end' that is 'oops' (str), not a method" in message
    assert calls == [], "no callback ran: the hook runs on all of them or on none"


def test_a_callback_that_raises_stops_the_call_with_its_own_exception() -> None:
    calls: list[Any] = []

    class Failing:
        def on_train_epoch_end(self) -> None:
            raise KeyError("missing metric")

    runtime = Runtime(accelerator="cpu", callbacks=[Failing(), Recorder("after", calls)])
    with pytest.raises(KeyError, match="missing metric"):
        runtime.call("on_train_epoch_end")
    assert calls == []


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        ("early_stopping", r"callbacks='early_stopping' \(str\) must be a callback object"),
        ({"a": 1}, r"\(dict\) must be a callback object"),
        (["early_stopping"], r"callbacks\[0\]='early_stopping' is a string"),
        ([Recorder], r"callbacks\[0\]=Recorder is a class; pass an instance, Recorder\(\)"),
        (Recorder, r"callbacks=Recorder is a class"),
    ],
)
def test_what_is_not_a_callback_is_refused(callbacks: Any, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        Runtime(accelerator="cpu", callbacks=callbacks)


@pytest.mark.parametrize("hook_name", [3, "", "on-epoch", "class", None])
def test_a_hook_name_must_be_a_method_name(hook_name: Any) -> None:
    runtime = Runtime(accelerator="cpu", callbacks=[object()])
    with pytest.raises(ArgumentError, match="the hook name must be a method name"):
        runtime.call(hook_name)


def test_callbacks_survive_the_launch_of_a_function() -> None:
    calls: list[Any] = []
    runtime = Runtime(accelerator="cpu", callbacks=[Recorder("launched", calls)])

    def train(runtime: Runtime) -> int:
        runtime.call("on_train_epoch_end", epoch=0)
        return 1

    assert runtime.launch(train) == 1
    assert calls == [("launched", "on_train_epoch_end", (), {"epoch": 0})]


def test_each_method_gets_only_the_keyword_arguments_it_accepts_as_in_fabric() -> None:
    """Fabric 2.6 filters keyword arguments by each callback method's signature, so callbacks
    with different signatures share one hook; ported code relies on it."""
    seen: list[Any] = []

    class EpochOnly:
        def on_epoch_end(self, epoch: int) -> None:
            seen.append(("epoch only", epoch))

    class Everything:
        def on_epoch_end(self, **kwargs: Any) -> None:
            seen.append(("everything", kwargs))

    class KeywordOnly:
        def on_epoch_end(self, *, loss: float) -> None:
            seen.append(("keyword only", loss))

    runtime = Runtime(accelerator="cpu", callbacks=[EpochOnly(), Everything(), KeywordOnly()])
    runtime.call("on_epoch_end", epoch=1, loss=0.5)
    assert seen == [
        ("epoch only", 1),
        ("everything", {"epoch": 1, "loss": 0.5}),
        ("keyword only", 0.5),
    ]
    # a required argument nobody passed is still the caller's error, not silently dropped
    with pytest.raises(TypeError):
        runtime.call("on_epoch_end", loss=0.5)


def test_all_reduce_takes_fabrics_reduce_op_keyword() -> None:
    import torch

    runtime = Runtime(accelerator="cpu")
    assert runtime.all_reduce(torch.tensor(2.0), reduce_op="sum").item() == 2.0
    with pytest.raises(ArgumentError, match="reduce_op is Lightning Fabric's"):
        runtime.all_reduce(torch.tensor(2.0), op="max", reduce_op="sum")
