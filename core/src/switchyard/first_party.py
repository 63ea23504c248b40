"""Which switchyard distribution provides each first-party name, for install hints in errors.

This table changes no behaviour: selection only consults it to tell a user who asked for
``accelerator="xla"`` without the plugin installed which command installs it.
"""

from __future__ import annotations

from switchyard.entries import EntryKind

# plugin (extra) name -> names it registers
_PROVIDES: dict[str, dict[EntryKind, tuple[str, ...]]] = {
    "cpu": {"accelerator": ("cpu",)},
    "cuda": {"accelerator": ("cuda",)},
    "rocm": {"accelerator": ("rocm",)},
    "mps": {"accelerator": ("mps",)},
    "xla": {"accelerator": ("xla", "tpu"), "strategy": ("xla", "xla_fsdp", "xla_single")},
    "xpu": {"accelerator": ("xpu",)},
    "ddp": {"strategy": ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")},
    "fsdp": {"strategy": ("fsdp", "fsdp_spawn", "fsdp_cpu_offload")},
    "deepspeed": {
        "strategy": (
            "deepspeed",
            "deepspeed_stage_1",
            "deepspeed_stage_2",
            "deepspeed_stage_2_offload",
            "deepspeed_stage_3",
            "deepspeed_stage_3_offload",
        )
    },
}

DEFAULT_PLUGINS = ("cpu", "ddp")
"""Plugins that ``pip install switchyard`` brings without an extra."""


def plugin_for(kind: EntryKind, name: str) -> str | None:
    """The first-party plugin that registers ``name``, e.g. ``plugin_for("strategy", "fsdp")``
    is ``"fsdp"``; ``None`` for names switchyard does not ship."""
    for plugin, provides in _PROVIDES.items():
        if name in provides.get(kind, ()):
            return plugin
    return None


def install_command(plugin: str) -> str:
    """The command that installs a first-party plugin with its engine."""
    if plugin in DEFAULT_PLUGINS:
        return f"pip install switchyard-{plugin} (in a switchyard checkout: pip install ./plugins/{plugin})"
    return f"pip install 'switchyard[{plugin}]' (in a switchyard checkout: pip install './core[{plugin}]')"
