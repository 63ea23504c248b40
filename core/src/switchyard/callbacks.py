"""Callbacks: the user's own hook objects, called by name through ``runtime.call``.

As in Lightning Fabric, a callback is any object; ``runtime.call("on_train_epoch_end", ...)``
calls that method on every callback that has it, in the order the callbacks were given, in the
calling process (callbacks run on every rank; guard rank-zero-only work with
``runtime.is_global_zero``). Callbacks that lack the method are skipped, and a name no callback
has calls nothing, so training code can name hooks that only some callbacks implement.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from switchyard.registry import _short_repr


def check_callbacks(callbacks: object) -> list[Any]:
    """``Runtime(callbacks=...)`` as a list: one callback object or a list of them. A string, a
    mapping or a class (instead of an instance) is an
    :class:`~switchyard.errors.ArgumentError`."""
    from switchyard.errors import ArgumentError

    if callbacks is None:
        return []
    if isinstance(callbacks, (str, bytes, Mapping)):
        raise ArgumentError(
            f"callbacks={_short_repr(callbacks, 60)} ({type(callbacks).__name__}) must be a callback "
            "object or a list of them: objects whose methods runtime.call('method_name', ...) "
            "calls"
        )
    items = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    for index, callback in enumerate(items):
        where = f"callbacks[{index}]" if isinstance(callbacks, (list, tuple)) else "callbacks"
        if isinstance(callback, (str, bytes)):
            raise ArgumentError(
                f"{where}={callback!r} is a string; pass the callback object itself "
                "(callbacks are not looked up by name)"
            )
        if isinstance(callback, type):
            raise ArgumentError(
                f"{where}={callback.__qualname__} is a class; pass an instance, "
                f"{callback.__qualname__}(), so its methods are called on it"
            )
    return items


def call(
    callbacks: Sequence[Any], hook_name: object, args: Iterable[Any], kwargs: Mapping[str, Any]
) -> None:
    """Call ``hook_name(*args, **kwargs)`` on each callback that has it, in order, each given
    only the keyword arguments its method accepts.

    An attribute of that name that is not callable is an
    :class:`~switchyard.errors.ArgumentError` naming the callback (Fabric skips it with a
    warning; here it stops before the hook runs anywhere, since a hook silently not run is
    what a typo in a callback looks like). The callbacks' exceptions propagate unchanged.
    """
    from switchyard.errors import ArgumentError

    if (
        not isinstance(hook_name, str)
        or not hook_name.isidentifier()
        or keyword.iskeyword(hook_name)
    ):
        raise ArgumentError(
            f"runtime.call(hook_name={_short_repr(hook_name, 60)}): the hook name must be a method name "
            "such as 'on_train_epoch_end'"
        )
    methods = []
    for index, callback in enumerate(callbacks):
        method = getattr(callback, hook_name, None)
        if method is None:
            continue
        if not callable(method):
            raise ArgumentError(
                f"runtime.call({hook_name!r}): callbacks[{index}] "
                f"({type(callback).__module__}.{type(callback).__qualname__}) has an attribute "
                f"{hook_name!r} that is {_short_repr(method, 60)} ({type(method).__name__}), not a "
                "method; rename the attribute or make it a method"
            )
        methods.append(method)
    args = tuple(args)
    for method in methods:
        method(*args, **_accepted(method, kwargs))


def _accepted(method: Any, kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The keyword arguments ``method`` takes: all of them where it takes ``**kwargs`` or its
    signature cannot be read, else the ones it names. As Fabric's ``call``: callbacks with
    different signatures share one hook (``on_epoch_end(self, epoch)`` beside
    ``on_epoch_end(self, epoch, loss)``)."""
    if not kwargs:
        return kwargs
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return kwargs
    named = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {key: value for key, value in kwargs.items() if key in named}
