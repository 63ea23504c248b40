#!/usr/bin/env bash
# Build PyTorch's reference PrivateUse1 device, OpenReg, into the environment scripts/engine-env
# made from engine-openreg.txt (VENV set, its bin first on PATH). The source is the workplace's
# shared copy, prepared to build against torch 2.13.0 CPU; it is read-only and shared, and its
# setup.py builds in its own folder, so it is built from a private copy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOURCE="${SWITCHYARD_OPENREG_SOURCE:-$ROOT/../shared/test-devices/torch_openreg}"
if [ ! -f "$SOURCE/setup.py" ]; then
  echo "the OpenReg source is not here: $SOURCE (the workplace's shared folder, ../shared next" \
    "to the checkout, is absent); set SWITCHYARD_OPENREG_SOURCE to a torch_openreg folder" >&2
  exit 3
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp -r "$SOURCE" "$WORK/torch_openreg"
chmod -R u+w "$WORK/torch_openreg"
# without the switch, torch's backend autoload would import a half-installed torch_openreg
TORCH_DEVICE_BACKEND_AUTOLOAD=0 python -m pip install --disable-pip-version-check \
  --no-build-isolation --no-deps "$WORK/torch_openreg"
# the device must be seen, through torch's autoload alone, by a fresh interpreter
python -c '
import torch
current = torch.accelerator.current_accelerator()
assert current is not None and current.type == "openreg", current
print("openreg built:", current, torch.accelerator.device_count(), "devices")
'
