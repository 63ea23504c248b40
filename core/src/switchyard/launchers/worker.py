"""The entry point of the workers that switchyard's torchrun launcher starts.

``runtime.launch()`` (:class:`~switchyard.launchers.TorchrunLauncher`) and ``switchyard run``
start every worker as ``python -u .../switchyard/launchers/worker.py SCRIPT ARGS...`` (or
``... worker.py -m MODULE ARGS...``). This runs the program as ``__main__`` the way
``python SCRIPT ARGS...`` or ``python -m MODULE ARGS...`` would: the same ``sys.argv``,
``sys.path[0]``, ``__file__`` and ``__spec__``, tracebacks that start in the program (none of
this module's frames), ``sys.excepthook`` for an uncaught exception and the exit status of a
``SystemExit``. Then it does what the interpreter's own shutdown does, in its order: it waits for
the non-daemon threads (``threading``'s shutdown), runs the ``atexit`` handlers once (the
Runtime's teardown and logging's flush among them), and flushes the standard streams and any
file still open; and only then ends the process with ``os._exit``. The interpreter's
finalization, during which the threads gloo leaves behind after ``destroy_process_group`` can
abort the process ("terminate called without an active exception"), never starts. What is lost
is only what finalization alone does: objects still alive are not destroyed (no ``__del__``).

It is run by its path, not with ``-m``, so that nothing is imported before the program (not
even ``switchyard``, which imports torch): the program sees the interpreter as ``python SCRIPT``
leaves it. It therefore imports only standard-library modules whose names no file beside it
takes, and puts the program's own ``sys.path[0]`` in place of this folder before the program
runs.

Before the program runs, the worker ties its life to the supervisor's (:func:`die_with_parent`):
on Linux the kernel sends it SIGKILL when the supervisor ends, however it ends (SIGKILL
included), so no worker goes on training, or writing checkpoints, with parent 1. It also forgets
what a previous attempt of its rank recorded for the supervisor (``switchyard run
--max-restarts``), and rank 0 of a restarted attempt says so on stderr.
"""

from __future__ import annotations

import atexit
import builtins
import gc
import importlib.machinery
import importlib.util
import io
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Sequence
from typing import Any, NoReturn

EXIT_TIMES_VARIABLE = "SWITCHYARD_EXIT_TIMES"
"""Set by the supervisor (:func:`switchyard.launchers.torchrun.run_torchrun`) to a folder where
each worker writes, when its program ends with a non-zero status, the time it ended, so that the
supervisor can tell the worker that failed first from those that failed because of it."""

SUPERVISOR_VARIABLE = "SWITCHYARD_SUPERVISOR_PID"
"""Set by the supervisor to its own process id: the parent every worker must have. A worker whose
parent is another process when it starts (the supervisor died before the worker could ask to die
with it) ends at once."""

DIAGNOSIS_PREFIX = "diagnosis."
"""Name prefix (then the rank) of the files in :data:`EXIT_TIMES_VARIABLE`'s folder where a
worker whose collective timed out records which ranks never reached it
(:func:`record_diagnosis`), so that the supervisor names the stalled rank, not the waiting one."""

INTERRUPTED = -int(signal.SIGINT)
"""What :func:`run` returns for a program ended by an uncaught ``KeyboardInterrupt``: a negative
status -N means the process ends by signal N; here it kills itself with SIGINT, as the
interpreter does (a shell then reports 130)."""


class _ProgramNotFound(Exception):
    """The program cannot be run at all (no such file or module); the message says why."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the program named by ``argv`` (default: this process's arguments) and end the
    process with its exit status; never returns."""
    die_with_parent(_supervisor())
    _forget_previous_attempt()
    args = list(sys.argv[1:] if argv is None else argv)
    status = run(args)
    if status != 0:
        _note_failure(status)
    finish(status)


def die_with_parent(parent: int | None) -> None:
    """Make the kernel end this process with SIGKILL as soon as its parent ends, however the
    parent ends (SIGKILL, an out-of-memory kill, a crash): ``prctl(PR_SET_PDEATHSIG)`` on Linux,
    through ctypes. The parent may already have died before the call (a race no flag closes), so
    right after it, a process whose parent is no longer ``parent`` (when given) ends at once.

    SIGKILL, not SIGTERM: a handler the program installed must not keep it running (saving
    checkpoints) once nobody supervises it; what a killed save leaves behind is the next save's to
    clean up. Other POSIX systems have no such call: there a daemon thread polls the parent's id
    every half second and ends the process when it changes (the parent died and the process was
    re-parented). On Windows nothing is done: a process that outlives its parent keeps running
    there.
    """
    if sys.platform.startswith("linux"):
        if not _set_parent_death_signal(signal.SIGKILL):
            _watch_parent(os.getppid() if parent is None else parent)
    elif os.name == "posix":
        _watch_parent(os.getppid() if parent is None else parent)
    if parent is not None and os.getppid() != parent:
        _orphaned(parent)


def _set_parent_death_signal(number: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, number)``; ``False`` where the call is refused (a sandbox)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(1, int(number), 0, 0, 0)) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, interval: float = 0.5) -> None:
    """Where the kernel cannot be asked: a daemon thread that ends the process once its parent
    is no longer ``parent``."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        _orphaned(parent)

    threading.Thread(target=watch, name="switchyard-parent-watch", daemon=True).start()


def die_with_process(pid: int) -> None:
    """End this process with SIGKILL as soon as process ``pid`` (not its parent) ends: for the
    processes of a ``forkserver`` launcher, whose parent is the fork server, which itself lives
    as long as any of them does. A daemon thread waits on a pidfd of ``pid`` (Linux 5.3 and
    later; elsewhere it polls every half second); a ``pid`` already gone ends this one at
    once."""
    try:
        handle = os.pidfd_open(pid)  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError) as error:
        if isinstance(error, ProcessLookupError):
            _orphaned(pid)
        handle = None

    def watch() -> None:
        if handle is not None:
            import select

            poller = select.poll()
            poller.register(handle, select.POLLIN)
            while not poller.poll():
                pass
        else:
            while _exists(pid):
                time.sleep(0.5)
        _orphaned(pid)

    threading.Thread(target=watch, name="switchyard-launcher-watch", daemon=True).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _orphaned(parent: int) -> NoReturn:
    try:
        print(
            f"switchyard: the launcher (pid {parent}) is gone; ending this worker "
            f"(pid {os.getpid()})",
            file=sys.stderr,
            flush=True,
        )
    except Exception:
        pass
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(128 + int(signal.SIGKILL))  # not reached


def _supervisor() -> int | None:
    value = os.environ.get(SUPERVISOR_VARIABLE, "")
    return int(value) if value.isdigit() else None


def _forget_previous_attempt() -> None:
    """After a restart (``--max-restarts``), remove what this rank's previous attempt recorded
    in the supervisor's folder, so that the supervisor reads only this attempt's records; rank 0
    says on stderr that the job was restarted."""
    folder = os.environ.get(EXIT_TIMES_VARIABLE)
    rank = os.environ.get("RANK")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if not folder or not rank or restart in ("", "0"):
        return
    for name in (rank, f"{DIAGNOSIS_PREFIX}{rank}"):
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass
    if rank == "0":
        limit = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?")
        print(
            f"switchyard: a worker of the previous attempt failed; restarting the job "
            f"(restart {restart} of at most {limit})",
            file=sys.stderr,
            flush=True,
        )


def record_diagnosis(text: str) -> None:
    """Leave ``text`` (what this rank found out about a failed collective: which ranks never
    reached it) where the supervisor reads it when it reports the job's failure; nothing when
    this process was not started by switchyard's supervisor."""
    folder = os.environ.get(EXIT_TIMES_VARIABLE)
    rank = os.environ.get("RANK")
    if not folder or not rank:
        return
    try:
        with open(os.path.join(folder, f"{DIAGNOSIS_PREFIX}{rank}"), "w", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        pass


def run(args: Sequence[str]) -> int:
    """Run ``SCRIPT ARGS...`` or ``-m MODULE ARGS...`` as ``__main__``; return the exit status
    the interpreter would end with (:data:`INTERRUPTED` for an uncaught ``KeyboardInterrupt``)."""
    try:
        code, main_globals = _prepare(args)  # a SyntaxError is the program's, as in python
        exec(code, main_globals)
    except _ProgramNotFound as error:
        print(f"{sys.executable}: {error}", file=sys.stderr)
        return error.status
    except SystemExit as exit_:
        return _system_exit_status(exit_)
    except BaseException as error:
        _report_uncaught(error)
        return INTERRUPTED if isinstance(error, KeyboardInterrupt) else 1
    return 0


def finish(status: int) -> NoReturn:
    """End the process the way the interpreter's shutdown begins (threads, ``atexit``, streams),
    then with ``os._exit(status)``, before finalization; never returns."""
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter itself calls
    try:
        if shutdown is not None:
            shutdown()
    except BaseException as error:  # Ctrl-C while waiting: the interpreter goes on too
        import traceback

        print(f"Exception ignored in: {threading!r}", file=sys.stderr)
        traceback.print_exception(type(error), error, error.__traceback__)
    atexit._run_exitfuncs()
    if status == 0 and _teardown_failed():
        status = 1  # the end-of-run barrier timed out: peers are stuck, end the job
        _record_exit_time()
    if not _flush_open_files():
        status = 120  # what the interpreter exits with when it cannot flush sys.stdout
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        status = 128 - status  # had the signal not ended the process
    os._exit(status)


def _prepare(args: Sequence[str]) -> tuple[types.CodeType, dict[str, Any]]:
    """Compile the program and make a fresh ``__main__`` module for it; set ``sys.argv`` and
    ``sys.path[0]`` as ``python`` would."""
    if not args or (args[0] == "-m" and len(args) < 2):
        raise _ProgramNotFound(
            "no program to run: worker.py SCRIPT ARGS... or -m MODULE ARGS...", 2
        )
    module = types.ModuleType("__main__")
    main_globals = module.__dict__
    main_globals.update(__builtins__=builtins, __annotations__={})
    if args[0] == "-m":
        # before the module is looked up: its packages are found through sys.path[0] too
        _set_path0(os.getcwd())
        spec, code = _module_code(args[1])
        argv = [spec.origin or args[1], *args[2:]]
        main_globals.update(
            __file__=spec.origin,
            __cached__=spec.cached,
            __loader__=spec.loader,
            __package__=spec.parent,
            __spec__=spec,
        )
    else:
        path = os.path.abspath(args[0])
        is_folder = os.path.isdir(path) or _is_zip(path)
        _set_path0(path if is_folder else os.path.dirname(os.path.realpath(path)))
        code, loader, folder_spec = _script_code(args[0], path, is_folder)
        argv = list(args)
        main_globals.update(
            __file__=path if folder_spec is None else folder_spec.origin,
            __cached__=None,
            __loader__=loader,
            __package__=None if folder_spec is None else folder_spec.parent,
            __spec__=folder_spec,
        )
    sys.argv[:] = argv
    # kept for good: pickle, multiprocessing and atexit handlers look the program up there
    sys.modules["__main__"] = module
    return code, main_globals


def _set_path0(path: str) -> None:
    if not getattr(sys.flags, "safe_path", False) and sys.path:
        # the interpreter put this module's folder (or, under -m, the working directory) there
        sys.path[0] = path


def _script_code(
    argv0: str, path: str, is_folder: bool
) -> tuple[types.CodeType, Any, importlib.machinery.ModuleSpec | None]:
    """(code, __loader__, __spec__) for ``python argv0``: a source or bytecode file, or a
    folder or zip file holding ``__main__.py``."""
    if is_folder:
        spec = importlib.machinery.PathFinder.find_spec("__main__", [path])
        if spec is None or spec.loader is None:
            raise _ProgramNotFound(f"can't find '__main__' module in {argv0!r}", 1)
        return spec.loader.get_code("__main__"), spec.loader, spec  # type: ignore[attr-defined]
    loader: Any
    try:
        if path.endswith(".pyc"):
            loader = importlib.machinery.SourcelessFileLoader("__main__", path)
            return loader.get_code("__main__"), loader, None
        with open(path, "rb") as handle:
            source = handle.read()
    except OSError as error:
        raise _ProgramNotFound(
            f"can't open file {path!r}: [Errno {error.errno}] {error.strerror}", 2
        ) from None
    loader = importlib.machinery.SourceFileLoader("__main__", path)
    return compile(source, path, "exec", dont_inherit=True), loader, None


def _is_zip(path: str) -> bool:
    if path.endswith((".py", ".pyw", ".pyc")) or not os.path.isfile(path):
        return False
    import zipfile

    return zipfile.is_zipfile(path)


def _module_code(name: str) -> tuple[importlib.machinery.ModuleSpec, types.CodeType]:
    """The spec and code ``python -m name`` runs: the module, or a package's ``__main__``."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        if isinstance(error, ModuleNotFoundError) and error.name and name.startswith(error.name):
            raise _ProgramNotFound(f"No module named {error.name}", 1) from None
        raise _ProgramNotFound(
            f"Error while finding module specification for {name!r} "
            f"({type(error).__name__}: {error})",
            1,
        ) from None
    if spec is None:
        raise _ProgramNotFound(f"No module named {name}", 1)
    if spec.submodule_search_locations is not None:
        if name == "__main__" or name.endswith(".__main__"):
            raise _ProgramNotFound("Cannot use package as __main__ module", 1)
        try:
            return _module_code(f"{name}.__main__")
        except _ProgramNotFound as error:
            raise _ProgramNotFound(
                f"{error}; {name!r} is a package and cannot be directly executed", 1
            ) from None
    if spec.loader is None:
        raise _ProgramNotFound(f"{name!r} is a namespace package and cannot be executed", 1)
    try:
        code = spec.loader.get_code(name)  # type: ignore[attr-defined]
    except ImportError as error:
        raise _ProgramNotFound(str(error), 1) from None
    if code is None:
        raise _ProgramNotFound(f"No code object available for {name}", 1)
    return spec, code


def _system_exit_status(exit_: SystemExit) -> int:
    """The status the interpreter ends with for an uncaught ``SystemExit``."""
    code = exit_.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF  # what the operating system keeps of exit(code)
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _report_uncaught(error: BaseException) -> None:
    """What the interpreter does with an uncaught exception: ``sys.last_*``, then
    ``sys.excepthook``, with a traceback that starts in the program."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    error.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(error), error, tb
    if sys.version_info >= (3, 12):
        sys.last_exc = error
    hook = getattr(sys, "excepthook", None)
    if hook is None:
        print("sys.excepthook is missing", file=sys.stderr)
        sys.__excepthook__(type(error), error, tb)
        return
    try:
        hook(type(error), error, tb)
    except BaseException as hook_error:
        print("Error in sys.excepthook:", file=sys.stderr)
        sys.__excepthook__(type(hook_error), hook_error, hook_error.__traceback__)
        print("\nOriginal exception was:", file=sys.stderr)
        sys.__excepthook__(type(error), error, tb)


def _note_failure(status: int) -> None:
    """Before the ``atexit`` handlers run: tell the Runtime (if the program used one) that this
    process ends with a failure, so that its teardown does not wait at a barrier for peers that
    may still be busy, and record the time for the supervisor."""
    runtime = sys.modules.get("switchyard.runtime")
    if runtime is not None:
        runtime._exiting_with_failure()
    _record_exit_time()


def _teardown_failed() -> bool:
    """Whether the Runtime's teardown at exit found peers that never reached the end of the run
    (they are stuck): this process must then fail, so that the supervisor ends the job."""
    runtime = sys.modules.get("switchyard.runtime")
    return bool(getattr(runtime, "_teardown_timed_out", False))


def _record_exit_time() -> None:
    folder = os.environ.get(EXIT_TIMES_VARIABLE)
    rank = os.environ.get("RANK")
    if folder and rank:
        try:
            with open(os.path.join(folder, rank), "w", encoding="ascii") as handle:
                handle.write(str(time.time_ns()))
        except OSError:
            pass


def _flush_open_files() -> bool:
    """Flush the standard streams and every file object still open, as destroying them at
    finalization would; ``False`` when ``sys.stdout`` cannot be flushed."""
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and not getattr(stream, "closed", False):
                stream.flush()
        except Exception:
            if stream is sys.stdout:
                ok = False
    for obj in gc.get_objects():
        # the type, not isinstance(), which would ask objects (lazy proxies too) for __class__
        if issubclass(type(obj), _BUFFERED):
            try:
                if not obj.closed:
                    obj.flush()
            except Exception:
                pass
    return ok


_BUFFERED = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom, io.BufferedRWPair)
"""The file objects that hold data not yet written (about 40 ms to find them among the objects
of a process that imported torch)."""


if __name__ == "__main__":
    main()
