"""The ``switchyard`` command: ``plugins`` (what is installed and usable), ``env`` (a bug-report
dump). Sub-commands register themselves in :data:`COMMANDS`; none is a hard-coded device list."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

from switchyard.registry import PluginRegistry, Registration, default_registry

# variables that decide how a run is laid out; printed by 'switchyard env'
_ENV_PREFIXES = (
    "SWITCHYARD_",
    "TORCHELASTIC_",
    "SLURM_",
    "LSB_",
    "OMPI_COMM_WORLD_",
    "PMI_",
    "PJRT_",
    "XLA_",
    "NCCL_",
    "TORCH_",
)
_ENV_NAMES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
    "OMP_NUM_THREADS",
    "PYTORCH_ENABLE_MPS_FALLBACK",
)


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
        return cls.unavailable_reason()  # type: ignore[no-any-return]
    except Exception as error:
        return f"cannot be imported: {type(error).__name__}: {error}"


def plugins_report(registry: PluginRegistry) -> dict[str, Any]:
    """What ``switchyard plugins --json`` prints."""
    entries = []
    for kind in ("accelerator", "strategy", "precision", "environment"):
        conflicts = registry.conflicts(kind)  # type: ignore[arg-type]
        for reg in sorted(registry.registrations(kind), key=lambda r: r.entry.name):  # type: ignore[arg-type]
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
            for r in registry.registrations(kind)  # type: ignore[arg-type]
            if r.plugin.distribution
        },
    )
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
        },
        "torch_build": {
            "cuda": torch.version.cuda,
            "hip": torch.version.hip,
            "debug": torch.version.debug,
            "distributed": torch.distributed.is_available(),
        },
        "torch_current_accelerator": str(current) if current is not None else None,
        "plugin_distributions": dict(distributions),
        "accelerators": accelerators,
        "plugin_failures": [
            f"{f.plugin.describe()} at {f.stage}: {f.error}" for f in registry.failures
        ],
        "environment_variables": {
            k: v
            for k, v in sorted(os.environ.items())
            if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)
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


COMMANDS: list[Callable[[Any], None]] = [_add_plugins, _add_env]
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
    result: int = args.func(args)
    return result
