"""The plugin shown in docs/plugin-authors.md runs as written.

The page's ``plugin.py`` and shortest ``accelerator.py`` are taken from the page and run in a
fresh interpreter beside a stand-in for the vendor's extension, ``torch_acme``. The stand-in is
a fake (there is no Acme hardware): it does what a real PrivateUse1 extension does in Python,
renaming the PrivateUse1 backend to ``acme`` and registering a ``torch.acme`` device module that
answers device queries, but it has no kernels, so no tensor is created on the device.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from switchyard.testing.subprocesses import child_environment

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugin-authors.md"

FAKE_EXTENSION = '''
"""A stand-in for a vendor's PyTorch extension: the "acme" device, with two cards."""
import types

import torch

torch.utils.rename_privateuse1_backend("acme")
calls = []
module = types.ModuleType("torch.acme")
module.is_available = lambda: True
module.device_count = lambda: 2
module.is_initialized = lambda: False
module.set_device = lambda device: calls.append(("set_device", str(device)))
module.synchronize = lambda device=None: calls.append(("synchronize", str(device)))
module.memory_allocated = lambda device=None: 1024
module.memory_reserved = lambda device=None: 4096
module.max_memory_allocated = lambda device=None: 2048
module.empty_cache = lambda: calls.append(("empty_cache",))
module.manual_seed_all = lambda seed: calls.append(("manual_seed_all", seed))
module.get_device_name = lambda device=None: "Acme A1"
torch._register_device_module("acme", module)
'''

CHECK = """
import json, sys
import torch
import torch_acme
import switchyard_acme_plugin
from switchyard import Runtime, SelectionError, seed_everything

runtime = Runtime(accelerator="acme", devices=1, plugins=[switchyard_acme_plugin])
accelerator = runtime.accelerator
result = {
    "class": type(accelerator).__name__,
    "strategy": runtime.plan.names["strategy"],
    "device": str(runtime.device),
    "count": accelerator.device_count(),
    "backend": type(accelerator).process_group_backend(),
}
runtime.launch()
accelerator.synchronize(runtime.device)
result["memory"] = accelerator.memory_stats(runtime.device)
result["name"] = accelerator.device_name(runtime.device)
seed_everything(7)
accelerator.empty_cache()
result["calls"] = [list(c) for c in torch_acme.calls]
try:
    Runtime(accelerator="acme", devices=2, plugins=[switchyard_acme_plugin])
except SelectionError as error:
    result["two_devices"] = str(error)
print(json.dumps(result))
"""


def code_block(title: str) -> str:
    """The Python block that follows the page's ``<!-- tested: TITLE ... -->`` marker."""
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- tested: {re.escape(title)} [^>]*-->\s*```python\n(.*?)```", text, re.DOTALL
    )
    assert match, f"{PAGE} has no tested block {title!r}"
    return match.group(1)


def test_the_documented_shortest_accelerator_plugin_works(tmp_path: Path) -> None:
    package = tmp_path / "switchyard_acme"
    package.mkdir()
    (package / "__init__.py").write_text('"""switchyard-acme."""\n')
    (package / "accelerator.py").write_text(code_block("accelerator.py"))
    (tmp_path / "switchyard_acme_plugin.py").write_text(code_block("plugin.py"))
    (tmp_path / "torch_acme.py").write_text(textwrap.dedent(FAKE_EXTENSION))
    proc = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=child_environment({"PYTHONPATH": str(tmp_path)}),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["class"] == "AcmeAccelerator"
    assert result["strategy"] == "single_device"
    assert result["device"] == "acme:0"
    assert result["count"] == 2
    assert result["backend"] is None  # torch.distributed registers no backend for "acme"
    assert result["memory"] == {"allocated": 1024, "reserved": 4096, "peak_allocated": 2048}
    assert result["name"] == "Acme A1"
    calls = [tuple(c) for c in result["calls"]]
    assert ("set_device", "acme:0") in calls
    assert ("synchronize", "acme:0") in calls
    assert ("manual_seed_all", 7) in calls
    assert ("empty_cache",) in calls
    assert "declares no torch.distributed backend" in result["two_devices"]
