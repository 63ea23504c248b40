"""The ``switchyard`` command: ``plugins`` (what is installed and usable), ``env`` (a bug-report
dump), ``run`` (launch a script on N devices and nodes), ``conformance`` (run the conformance
kit on a plugin's entries). Sub-commands register themselves in :data:`COMMANDS`; none is a
hard-coded device list."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

from switchyard.registry import PluginRegistry, Registration, default_registry

# variables core itself reads or that every torch job may set; plugins add their own through
# the switchyard_env_report hook
_CORE_VARIABLES = ("SWITCHYARD_", "TORCH_", "PYTORCH_")


def usability(registration: Registration) -> str | None:
    """``None`` if the entry can be selected here, otherwise why not. Accelerators are asked
    whether a device is present; other entries only whether their requirements are installed,
    so that listing never imports a heavy engine."""
    missing = registration.entry.missing_requirements()
    if missing:
        return f"needs {', '.join(missing)} (not installed)"
    if registration.kind != "accelerator":
        return None
    try:
        cls = registration.entry.load()
        return cls.unavailable_reason()
    except Exception as error:
        return f"cannot be imported: {type(error).__name__}: {error}"


def plugins_report(registry: PluginRegistry) -> dict[str, Any]:
    """What ``switchyard plugins --json`` prints."""
    entries = []
    for kind in ("accelerator", "strategy", "precision", "environment"):
        conflicts = registry.conflicts(kind)
        for reg in sorted(registry.registrations(kind), key=lambda r: r.entry.name):
            reason = usability(reg)
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
    return {
        "autoload": registry.autoload,
        "allowed": list(registry.allowed),
        "blocked": sorted(registry.blocked),
        "entries": entries,
        "failures": [
            {
                "plugin": f.plugin.name,
                "distribution": f.plugin.distribution,
                "version": f.plugin.version,
                "stage": f.stage,
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
    report = plugins_report(default_registry())
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
    if not report["autoload"]:
        print("\nplugin autoload is off (SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD)")
    if report["blocked"]:
        print(f"blocked: {', '.join(report['blocked'])}")
    if report["failures"]:
        print("\nplugins that failed to load (skipped; the others work):")
        for f in report["failures"]:
            dist = (
                f" ({f['distribution']} {f['version'] or ''})".rstrip() if f["distribution"] else ""
            )
            print(f"  {f['plugin']}{dist} at {f['stage']}: {f['error']}")
    return 0


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
            for kind in ("accelerator", "strategy", "precision", "environment")
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
    parser.set_defaults(func=cmd_plugins)


def _add_env(sub: Any) -> None:
    parser = sub.add_parser(
        "env", help="print versions, devices, plugins and variables for a bug report"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=cmd_env)


def cmd_run(args: argparse.Namespace) -> int:
    from switchyard.launchers.torchrun import (
        check_port_free,
        run_torchrun,
        torchrun_arguments,
    )
    from switchyard.selection import ENV_PREFIX, select

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
    # resolve now, in the launcher, so bad choices fail before any process starts
    plan = select(default_registry(), **choices)
    command = (
        ["-m", args.script, *args.script_args] if args.module else [args.script, *args.script_args]
    )
    launcher = plan.strategy.launcher
    if launcher is None or launcher.requires_function:
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
    )
    return run_torchrun(arguments)


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
    parser.add_argument("--accelerator", help="cpu, cuda, ... or auto (see 'switchyard plugins')")
    parser.add_argument("--strategy", help="ddp, fsdp, ... or auto")
    parser.add_argument("--devices", help="devices per node: a count, -1, a list like 0,1, or auto")
    parser.add_argument(
        "--num-nodes", type=int, default=None, help="machines in the job (default 1)"
    )
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's index (default 0)")
    parser.add_argument("--main-address", help="address of node 0 (default 127.0.0.1)")
    parser.add_argument(
        "--main-port",
        type=int,
        help="rendezvous port on node 0 (default: a free one, or 29500 for several nodes)",
    )
    parser.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed, ...")
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


COMMANDS: list[Callable[[Any], None]] = [_add_plugins, _add_env, _add_run, _add_conformance]
"""Functions that add one sub-command each to the parser."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchyard",
        description="Run PyTorch training on any accelerator and strategy through plugins.",
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
