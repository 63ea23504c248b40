"""The ``switchyard`` command: ``plugins`` (what is installed and usable), ``env`` (a bug-report
dump), ``run`` (launch a script on N devices and nodes), ``conformance`` (run the conformance
kit on a plugin's entries), ``consolidate`` (one file from a sharded checkpoint). Sub-commands register themselves in :data:`COMMANDS`; none is a
hard-coded device list."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from switchyard.accelerator import check_devices_limit
from switchyard.errors import SwitchyardError
from switchyard.registry import (
    SLOW_IMPORT_SECONDS,
    PluginRegistry,
    Registration,
    block_hint,
    default_registry,
)
from switchyard.validation import (
    MAX_DEVICES_PER_NODE,
    MAX_NUM_NODES,
    MAX_PORT,
    MIN_PORT,
    address_problem,
    parse_int,
)

# variables core itself reads or that every torch job may set; plugins add their own through
# the switchyard_env_report hook
_CORE_VARIABLES = ("SWITCHYARD_", "TORCH_", "PYTORCH_")


def _error_text(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"SystemExit: sys.exit({error.code!r}) was called"
    return f"{type(error).__name__}: {error}"


def factory_problem(registration: Registration) -> str | None:
    """Why the entry's ``"module:attr"`` factory cannot be imported, found without running the
    module (``importlib.util.find_spec``; only its parent packages are imported), or ``None``."""
    factory = registration.entry.factory
    if not isinstance(factory, str):
        return None
    module = factory.partition(":")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError as error:
        return f"its factory {factory!r} cannot be imported: {error}"
    except (Exception, SystemExit) as error:
        return f"its factory {factory!r} cannot be imported: {_error_text(error)}"
    if not found:
        return f"its factory {factory!r} cannot be imported: no module named {module!r}"
    return None


def usability(registration: Registration, *, check: bool = False) -> str | None:
    """``None`` if the entry can be selected here, otherwise why not. Accelerators are imported,
    asked whether a device is present and created; other entries are checked for their
    requirements and for their factory's module (found, not run), so that listing never
    imports a heavy engine. With ``check``, every entry is imported and created, as selection
    would (without binding it to devices)."""
    from switchyard.selection import _INTERFACES

    try:
        missing = registration.entry.missing_requirements()
    except (Exception, SystemExit) as error:
        return f"its requirements cannot be checked: {_error_text(error)}"
    if missing:
        return f"needs {', '.join(missing)} (not installed)"
    if registration.kind != "accelerator" and not check:
        return factory_problem(registration)
    try:
        cls = registration.entry.load()
    except (Exception, SystemExit) as error:
        return f"cannot be imported: {_error_text(error)}"
    if registration.kind == "accelerator":
        try:
            reason = cls.unavailable_reason()
        except (Exception, SystemExit) as error:
            return f"unavailable_reason() raised {_error_text(error)}"
        if reason is not None:
            return str(reason)
    try:
        instance = cls(**registration.entry.init_args)
    except (Exception, SystemExit) as error:
        return f"cannot be created: {_error_text(error)}"
    expected: type
    if registration.kind == "logger":
        # loggers are no part of selection; their constructors create nothing (the contract
        # of switchyard.Logger), so building one here is safe
        from switchyard.loggers import Logger

        expected = Logger
    else:
        expected = _INTERFACES[registration.kind]
    if not isinstance(instance, expected):
        return (
            f"its factory built a {type(instance).__qualname__}, which is not a switchyard "
            f"{expected.__name__}"
        )
    return None


def _auto_accelerator(registry: PluginRegistry) -> dict[str, Any]:
    """What ``accelerator="auto"`` picks here; what it skips is recorded in the failures."""
    from switchyard.errors import SwitchyardError
    from switchyard.selection import _auto_accelerator as pick

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skips are listed with the failures
        try:
            _, name, origin = pick(registry)
        except SwitchyardError as error:
            return {"name": None, "origin": None, "error": str(error)}
    return {"name": name, "origin": origin, "error": None}


def plugins_report(registry: PluginRegistry, *, check: bool = False) -> dict[str, Any]:
    """What ``switchyard plugins --json`` prints; ``check`` imports and creates every entry."""
    from switchyard.selection import device_type_claimants

    entries = []
    for kind in ("accelerator", "strategy", "precision", "environment", "logger"):
        conflicts = registry.conflicts(kind)
        for reg in sorted(registry.registrations(kind), key=lambda r: r.entry.name):
            reason = usability(reg, check=check)
            clash = [
                r.plugin.name
                for name in reg.entry.names
                for r in conflicts.get(name, [])
                if r.plugin.name != reg.plugin.name
            ]
            if clash and reason is None:
                reason = (
                    f"name also registered by plugin {', '.join(sorted(set(clash)))}; select it "
                    f"as '{reg.plugin.name}:{reg.entry.name}'"
                )
            if reason is None and kind == "accelerator":
                claimed = device_type_claimants(registry, reg)
                if claimed:
                    reason = (
                        "steps aside for "
                        + ", ".join(
                            f"accelerator {r.entry.name!r} ({r.plugin.name})" for r in claimed
                        )
                        + ", a plugin for its device type"
                    )
            entries.append(
                {
                    "name": reg.entry.name,
                    "kind": kind,
                    "aliases": list(reg.entry.aliases),
                    "description": reg.entry.description,
                    "plugin": reg.plugin.name,
                    "distribution": reg.plugin.distribution,
                    "version": reg.plugin.version,
                    "priority": reg.entry.priority,
                    "usable": reason is None,
                    "reason": reason,
                }
            )
    auto = _auto_accelerator(registry)
    plugins = []
    for info in registry.plugins.values():
        hooks = registry.hook_seconds.get(info.name, 0.0)
        total = (info.import_seconds or 0.0) + hooks
        plugins.append(
            {
                "name": info.name,
                "entry_point": info.entry_point,
                "source": info.source,
                "distribution": info.distribution,
                "version": info.version,
                "target": info.target,
                "import_seconds": info.import_seconds,
                "hooks_seconds": hooks,
                "slow": total > SLOW_IMPORT_SECONDS,
                "hooks": registry.hook_names(info.name),
                "block": block_hint(info),
            }
        )
    return {
        "autoload": registry.autoload,
        "allowed": list(registry.allowed),
        "blocked": sorted(registry.blocked),
        "not_loaded": [
            {
                "plugin": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "reason": why,
            }
            for info, why in registry.not_loaded()
        ],
        "slow_import_seconds": SLOW_IMPORT_SECONDS,
        "plugins": plugins,
        "auto_accelerator": auto,
        "entries": entries,
        "failures": [
            {
                "plugin": f.plugin.name,
                "distribution": f.plugin.distribution,
                "version": f.plugin.version,
                "stage": f.stage,
                "entry": f.entry,
                "error": f.error,
            }
            for f in registry.failures
        ],
    }


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
        for row in rows
    )


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = default_registry()
    report = plugins_report(registry, check=args.check)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = [("KIND", "NAME", "PLUGIN", "DISTRIBUTION", "STATUS")]
    for e in report["entries"]:
        dist = f"{e['distribution']} {e['version'] or ''}".strip() if e["distribution"] else "-"
        status = "usable" if e["usable"] else f"not usable: {e['reason']}"
        name = e["name"] + (f" ({', '.join(e['aliases'])})" if e["aliases"] else "")
        rows.append((e["kind"], name, e["plugin"], dist, status))
    print(_table(rows))
    auto = report["auto_accelerator"]
    print(
        f"\naccelerator='auto' picks: {auto['name']} ({auto['origin']})"
        if auto["name"]
        else "\naccelerator='auto' finds nothing usable"
    )
    _print_plugins(report)
    if not report["autoload"]:
        print("\nplugin autoload is off (SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD)")
    if report["blocked"]:
        print(f"blocked: {', '.join(report['blocked'])}")
    if report["not_loaded"]:
        print("\ninstalled plugins that were not loaded:")
        for n in report["not_loaded"]:
            print(f"  {n['plugin']}{_dist(n)}: {n['reason']}")
    sections = (
        (
            "plugins that failed to load (skipped; the others work):",
            [f for f in registry.failures if f.hides_entries],
        ),
        (
            "plugin names claimed by several distributions (all kept, under qualified names):",
            [f for f in registry.failures if f.stage == "name"],
        ),
        (
            "entries that cannot be used (skipped by 'auto'; the others work):",
            [f for f in registry.failures if f.entry],
        ),
    )
    for title, failures in sections:
        if failures:
            print(f"\n{title}")
            for f in failures:
                print(
                    f"  {f.plugin.describe()}: {f.error}"
                    if f.stage == "name"
                    else f"  {f.describe()}"
                )
    return 0


def _dist(row: dict[str, Any]) -> str:
    if not row["distribution"]:
        return ""
    return f" ({row['distribution']} {row['version'] or ''})".replace(" )", ")")


def _print_plugins(report: dict[str, Any]) -> None:
    """Each plugin with its import time; slow ones flagged, with what they cost."""
    rows = [("PLUGIN", "DISTRIBUTION", "IMPORT", "HOOKS", "")]
    for p in report["plugins"]:
        dist = f"{p['distribution']} {p['version'] or ''}".strip() if p["distribution"] else "-"
        seconds = "-" if p["import_seconds"] is None else f"{p['import_seconds']:.3f} s"
        rows.append(
            (p["name"], dist, seconds, f"{p['hooks_seconds']:.3f} s", "SLOW" if p["slow"] else "")
        )
    print()
    print(_table(rows))
    slow = [p for p in report["plugins"] if p["slow"]]
    if slow:
        limit = report["slow_import_seconds"]
        print(
            f"\nslow plugins (import and registration above {limit} s): discovery runs in every "
            "process, so each adds its time to every Runtime() and to every worker of a job. Ask "
            "their authors to defer heavy imports (docs/plugin-authors.md, 'Lazy imports'), or "
            "block them:"
        )
        for p in slow:
            total = (p["import_seconds"] or 0.0) + p["hooks_seconds"]
            print(f"  {p['name']}{_dist(p)}: {total:.2f} s; {p['block']}")


def env_report(registry: PluginRegistry) -> dict[str, Any]:
    """What ``switchyard env --json`` prints: what a bug report needs."""
    import importlib.metadata

    import pluggy
    import torch

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    accelerators = {}
    for reg in registry.registrations("accelerator"):
        reason = usability(reg)
        info: dict[str, Any] = {"usable": reason is None, "reason": reason}
        if reason is None:
            cls = reg.entry.load()
            info["device_type"] = cls.device_type
            info["device_count"] = cls.device_count()
        accelerators[reg.entry.name] = info
    current = torch.accelerator.current_accelerator()
    distributions = sorted(
        {
            (r.plugin.distribution, r.plugin.version)
            for kind in ("accelerator", "strategy", "precision", "environment", "logger")
            for r in registry.registrations(kind)
            if r.plugin.distribution
        },
    )
    variables: list[str] = list(_CORE_VARIABLES)
    plugin_reports: dict[str, Any] = {}
    plugin_versions: dict[str, Any] = {}
    for plugin, report in registry.env_reports():
        extra = dict(report)
        named = extra.pop("variables", ())
        variables.extend([named] if isinstance(named, str) else [str(v) for v in named])
        plugin_versions.update(extra.pop("versions", None) or {})
        if extra:
            plugin_reports[plugin.name] = extra
    names = {v for v in variables if not v.endswith("_")}
    prefixes = tuple(v for v in variables if v.endswith("_"))
    build = {
        key: value
        for key, value in sorted(vars(torch.version).items())
        if not key.startswith("_") and (value is None or isinstance(value, (str, bool)))
    }
    build["distributed"] = torch.distributed.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "switchyard": version("switchyard"),
            "torch": torch.__version__,
            "pluggy": pluggy.__version__,
            "numpy": version("numpy"),
            **plugin_versions,
        },
        "torch_build": build,
        "torch_current_accelerator": str(current) if current is not None else None,
        "plugin_distributions": dict(distributions),
        "accelerators": accelerators,
        "plugin_reports": plugin_reports,
        "plugin_failures": [
            f"{f.plugin.describe()} at {f.stage}: {f.error}" for f in registry.failures
        ],
        "environment_variables": {
            k: v for k, v in sorted(os.environ.items()) if k in names or k.startswith(prefixes)
        },
    }


def cmd_env(args: argparse.Namespace) -> int:
    report = env_report(default_registry())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for section, value in report.items():
        if isinstance(value, dict):
            print(f"{section}:")
            if not value:
                print("  (none)")
            for key, item in value.items():
                print(f"  {key}: {item}")
        elif isinstance(value, list):
            print(f"{section}: {'none' if not value else ''}")
            for item in value:
                print(f"  {item}")
        else:
            print(f"{section}: {value}")
    return 0


def _add_plugins(sub: Any) -> None:
    parser = sub.add_parser(
        "plugins", help="list installed accelerators, strategies, precisions and environments"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--check",
        action="store_true",
        help="import and create every entry, as selecting it would (may import heavy engines)",
    )
    parser.set_defaults(func=cmd_plugins)


def _add_env(sub: Any) -> None:
    parser = sub.add_parser(
        "env", help="print versions, devices, plugins and variables for a bug report"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=cmd_env)


def cmd_run(args: argparse.Namespace) -> int:
    from switchyard.errors import SelectionError
    from switchyard.launchers.torchrun import (
        check_max_restarts,
        check_port_free,
        run_torchrun,
        torchrun_arguments,
    )
    from switchyard.selection import ENV_PREFIX, name_origins, select
    from switchyard.timeouts import TIMEOUT_VARIABLE, parse_timeout

    max_restarts = check_max_restarts(args.max_restarts, "--max-restarts")
    timeout = None
    if args.timeout is not None:
        timeout = parse_timeout(args.timeout, "--timeout")
        # the script's Runtime() reads it, like the choices below
        os.environ[TIMEOUT_VARIABLE] = repr(timeout.total_seconds())

    choices = {
        "accelerator": args.accelerator,
        "strategy": args.strategy,
        "devices": args.devices,
        "num_nodes": args.num_nodes,
        "precision": args.precision,
    }
    for name, value in choices.items():
        if value is not None:
            os.environ[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    os.environ["NODE_RANK"] = str(args.node_rank)
    if args.main_address is not None:
        os.environ["MASTER_ADDR"] = args.main_address
    if args.main_port is not None:
        os.environ["MASTER_PORT"] = str(args.main_port)
    if args.num_nodes is not None and args.node_rank >= args.num_nodes:
        raise SelectionError(
            f"--node-rank {args.node_rank} is not below --num-nodes {args.num_nodes}: the "
            f"machines of a job are numbered 0..{args.num_nodes - 1}. Give each machine its own "
            "--node-rank, 0 on the one whose address is --main-address"
        )
    # resolve now, in the launcher, so bad choices fail before any process starts
    try:
        plan = select(default_registry(), **choices)
    except SwitchyardError as error:
        flags = {
            name: (value, f"--{name.replace('_', '-')}")
            for name, value in choices.items()
            if value is not None
        }
        flags["NODE_RANK"] = (args.node_rank, "--node-rank")
        name_origins(error, flags)
        raise
    check_script(args.script, module=args.module)
    command = (
        ["-m", args.script, *args.script_args] if args.module else [args.script, *args.script_args]
    )
    launcher = plan.strategy.launcher
    if launcher is not None and launcher.requires_function and max_restarts:
        raise SelectionError(
            f"--max-restarts {max_restarts}: torchrun's agent restarts the workers it starts, "
            f"but strategy {plan.names['strategy']!r} starts its processes itself with "
            "torch.multiprocessing. Choose a strategy that torchrun starts (ddp, fsdp), or drop "
            "--max-restarts"
        )
    if (launcher is None and not max_restarts) or (launcher and launcher.requires_function):
        # one process, or the script starts its own with torch.multiprocessing
        os.execv(sys.executable, [sys.executable, *command])
    if args.main_port is not None and args.node_rank == 0:
        check_port_free(os.environ.get("MASTER_ADDR", "127.0.0.1"), args.main_port)
    arguments = torchrun_arguments(
        num_processes=len(plan.device_indices),
        num_nodes=plan.num_nodes,
        node_rank=args.node_rank,
        main_address=os.environ.get("MASTER_ADDR", "127.0.0.1"),
        main_port=args.main_port,
        command=command,
        max_restarts=max_restarts,
        timeout=timeout,
    )
    return run_torchrun(arguments)


def check_script(script: str, *, module: bool) -> None:
    """Refuse, before any process starts, a script that does not exist or a module that cannot
    be imported (otherwise every worker fails and torchrun reports each failure)."""
    from switchyard.errors import ArgumentError

    if module:
        import importlib.util

        try:
            found = importlib.util.find_spec(script) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ArgumentError(
                f"-m {script}: no module {script!r} can be imported here (the current "
                f"directory, {os.getcwd()!r}, comes first on its path); check the name, or "
                "install the package that holds it"
            )
        return
    path = Path(script)
    if path.is_file():
        return
    problem = "is a directory" if path.is_dir() else "does not exist"
    import difflib

    folder = path.parent if str(path.parent) else Path(".")
    candidates = sorted(p.name for p in folder.glob("*.py")) if folder.is_dir() else []
    close = difflib.get_close_matches(path.name, candidates, n=3)
    hint = f" Did you mean {', '.join(repr(str(folder / c)) for c in close)}?" if close else ""
    raise ArgumentError(
        f"the script {script!r} {problem} (looked for {str(path.resolve())!r}).{hint} Give the "
        "path of a Python file, or -m NAME for a module"
    )


def _name_flag(text: str) -> str:
    """A name flag (``--accelerator``...): not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; pass a name, or leave the flag out")
    return text


def _devices_flag(text: str) -> str:
    """``--devices``: not empty, and not more than a node can carry (the accelerator checks the
    rest when the plan is made)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "is empty; pass a count (2), -1 for all, a list such as 0,1, or auto"
        )
    try:
        check_devices_limit(text)
    except SwitchyardError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _count_flag(maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return parse_int(text, minimum=1, maximum=maximum)
        except ValueError as problem:
            raise argparse.ArgumentTypeError(
                f"{text!r} {problem}: pass a count from 1 to {maximum}"
            ) from None

    return parse


def _index_flag(maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return parse_int(text, minimum=0, maximum=maximum - 1)
        except ValueError as problem:
            raise argparse.ArgumentTypeError(
                f"{text!r} {problem}: pass an index from 0 (the first machine) up"
            ) from None

    return parse


def _port_flag(text: str) -> int:
    try:
        return parse_int(text, minimum=MIN_PORT, maximum=MAX_PORT)
    except ValueError as problem:
        raise argparse.ArgumentTypeError(
            f"{text!r} {problem}: a TCP port is {MIN_PORT}..{MAX_PORT}; leave the flag out on "
            "one machine to use a free one"
        ) from None


def _address_flag(text: str) -> str:
    problem = address_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(
            f"{text[:80]!r} {problem}; pass node 0's host name or IP address"
        )
    return text.strip()


def _add_run(sub: Any) -> None:
    parser = sub.add_parser(
        "run",
        help="run a training script on N devices and/or nodes",
        description=(
            "Run SCRIPT with one process per device, through torch.distributed.run (torchrun). "
            "The script's own Runtime() picks up the choices below for every argument it leaves "
            "unset. For several machines, run the same command on each with its --node-rank "
            "and the address of node 0."
        ),
    )
    parser.add_argument(
        "--accelerator", type=_name_flag, help="cpu, cuda, ... or auto (see 'switchyard plugins')"
    )
    parser.add_argument("--strategy", type=_name_flag, help="ddp, fsdp, ... or auto")
    parser.add_argument(
        "--devices",
        type=_devices_flag,
        help=f"devices per node: a count (at most {MAX_DEVICES_PER_NODE}), -1, a list like 0,1, "
        "or auto",
    )
    parser.add_argument(
        "--num-nodes",
        type=_count_flag(MAX_NUM_NODES),
        default=None,
        help=f"machines in the job, 1..{MAX_NUM_NODES} (default 1)",
    )
    parser.add_argument(
        "--node-rank",
        type=_index_flag(MAX_NUM_NODES),
        default=0,
        help="this machine's index, 0..num_nodes-1 (default 0)",
    )
    parser.add_argument(
        "--main-address",
        type=_address_flag,
        help="host name or IP address of node 0 (default 127.0.0.1)",
    )
    parser.add_argument(
        "--main-port",
        type=_port_flag,
        help=f"rendezvous port on node 0, {MIN_PORT}..{MAX_PORT} (default: a free one, or 29500 "
        "for several nodes)",
    )
    parser.add_argument("--precision", type=_name_flag, help="32-true, bf16-mixed, 16-mixed, ...")
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        help=(
            "seconds every collective and the rendezvous wait for a missing peer before the job "
            "fails, naming the ranks that never came: above 0, at most 604800 (default 600; the "
            "script's own Runtime(timeout=...) wins)"
        ),
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="N",
        help=(
            "restart every worker up to N times (0..100) after one fails (torchrun's elastic "
            "agent); the script resumes from its last checkpoint (default 0)"
        ),
    )
    parser.add_argument(
        "-m", "--module", action="store_true", help="SCRIPT is a module name, as with python -m"
    )
    parser.add_argument("script", metavar="SCRIPT", help="the training script")
    parser.add_argument(
        "script_args", nargs=argparse.REMAINDER, metavar="...", help="arguments for the script"
    )
    parser.set_defaults(func=cmd_run)


def cmd_conformance(args: argparse.Namespace) -> int:
    try:
        import pytest
    except ImportError:
        print(
            "switchyard conformance: error: the conformance kit runs under pytest, which is not "
            "installed: pip install pytest",
            file=sys.stderr,
        )
        return 2
    options = {
        "--switchyard-accelerator": args.accelerator,
        "--switchyard-strategy": args.strategy,
        "--switchyard-devices": args.devices,
        "--switchyard-report": args.report,
        "--switchyard-timeout": args.timeout,
    }
    pytest_args = ["-p", "switchyard.testing"]
    for option, value in options.items():
        if value is not None:
            pytest_args += [option, str(value)]
    for precision in args.precision:
        pytest_args += ["--switchyard-precision", precision]
    extra = list(args.pytest_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return int(pytest.main([*pytest_args, *extra]))


def _add_conformance(sub: Any) -> None:
    parser = sub.add_parser(
        "conformance",
        help="check an accelerator, strategy or precision plugin with the conformance kit",
        description=(
            "Run switchyard's conformance kit (pytest -p switchyard.testing) on the named "
            "entries and, with --report, write the JSON report. Arguments after -- go to pytest."
        ),
    )
    parser.add_argument("--accelerator", help="the accelerator to check")
    parser.add_argument("--strategy", help="the strategy to check on --devices processes")
    parser.add_argument(
        "--devices", help="processes for the strategy checks (default: 2 if distributed, else 1)"
    )
    parser.add_argument(
        "--precision",
        action="append",
        default=[],
        help="a precision to check (repeatable); default: those the accelerator claims",
    )
    parser.add_argument("--report", help="write the JSON conformance report to this file")
    parser.add_argument(
        "--timeout", type=float, help="seconds a strategy job may take (default 240)"
    )
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, metavar="...", help="arguments for pytest"
    )
    parser.set_defaults(func=cmd_conformance)


def cmd_consolidate(args: argparse.Namespace) -> int:
    """``switchyard consolidate SRC DST``: one ``torch.save`` file from a sharded checkpoint."""
    from pathlib import Path

    from switchyard.checkpoint import consolidate

    state = consolidate(
        args.source, args.destination, weights_only=args.weights_only, overwrite=args.force
    )
    tensors = [v for v in _leaves(state) if hasattr(v, "numel") and hasattr(v, "element_size")]
    size = sum(t.numel() * t.element_size() for t in tensors)
    print(
        f"wrote {args.destination} ({Path(args.destination).stat().st_size} bytes): "
        f"{len(state)} entries ({', '.join(map(str, state))}), {len(tensors)} tensors of "
        f"{size} bytes, from {args.source}"
    )
    return 0


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _add_consolidate(sub: Any) -> None:
    parser = sub.add_parser(
        "consolidate",
        help="turn a sharded checkpoint directory into one file a plain nn.Module loads",
        description=(
            "Read the sharded checkpoint directory SOURCE (written by runtime.save under a "
            "sharded strategy such as fsdp, or by torch.distributed.checkpoint) in this one "
            "process, with no strategy, and write DESTINATION with torch.save: modules as full "
            "state dicts, optimizers as Optimizer.state_dict() has them, other entries as "
            "saved. torch.load(DESTINATION, weights_only=True) reads it. Every file of SOURCE is "
            "read without running code from it unless --no-weights-only is given."
        ),
    )
    parser.add_argument("source", help="the sharded checkpoint directory")
    parser.add_argument("destination", help="the file to write")
    parser.add_argument("--force", action="store_true", help="replace DESTINATION if it exists")
    parser.add_argument(
        "--no-weights-only",
        dest="weights_only",
        action="store_false",
        help="unpickle arbitrary objects (runs code the files name: trusted checkpoints only)",
    )
    parser.set_defaults(func=cmd_consolidate)


COMMANDS: list[Callable[[Any], None]] = [
    _add_plugins,
    _add_env,
    _add_run,
    _add_conformance,
    _add_consolidate,
]
"""Functions that add one sub-command each to the parser."""


def version_text() -> str:
    """``switchyard X (torch Y, Python Z)``, read from the installed metadata (importing torch
    would take a second)."""
    import importlib.metadata
    import platform

    def installed(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return (
        f"switchyard {installed('switchyard')} (torch {installed('torch')}, "
        f"Python {platform.python_version()})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchyard",
        description="Run PyTorch training on any accelerator and strategy through plugins.",
    )
    parser.add_argument(
        "--version", action="version", version=version_text(), help="print the versions and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from switchyard.errors import SwitchyardError

    try:
        result: int = args.func(args)
    except SwitchyardError as error:
        # a wrong choice is the user's to fix: the message, not a traceback into switchyard
        print(f"switchyard {args.command}: error: {error}", file=sys.stderr)
        return 2
    return result
