#!/usr/bin/env bash
# Run switchyard's GPU checks on a machine with an NVIDIA GPU and a CUDA build of torch, within
# 10 minutes, and print one summary (each step: pass / fail / skip, seconds).
#
#   bash tests/hardware/run_gpu.sh              # from a checkout; OUT=<dir> keeps reports and logs
#
# Steps: the cuda plugin's own tests (its real-GPU tests run here), the conformance kit for
# accelerator cuda with single_device, ddp and fsdp on one GPU (bf16-mixed among the precisions
# it checks), and examples/train.py at bf16-mixed with single_device, ddp and fsdp on one GPU.
#
# It needs nothing from the network: it finds a Python whose torch has CUDA ($PYTHON, then
# .venv/bin/python, python3, python), and makes the checkout importable and its plugins
# discoverable for it (tests/hardware/gpu_site.py writes their metadata; no pip, no build
# backend). What it lacks (torch, CUDA, a GPU, pluggy, pytest) it says, and skips what needs it.
#
# Exit status: 0 every step passed, 1 a step failed, 77 nothing could run here (no CUDA device,
# no usable torch), 2 the script itself was misused.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/switchyard-gpu.XXXXXX")}"
BUDGET="${SWITCHYARD_GPU_BUDGET:-570}"  # seconds for all steps, under the 10 minutes promised
START=$SECONDS
mkdir -p "$OUT/logs"
cd "$ROOT" || exit 2

STEPS=()
RESULTS=()
TIMES=()
NOTES=()

record() {  # name result seconds note
  STEPS+=("$1"); RESULTS+=("$2"); TIMES+=("$3"); NOTES+=("$4")
}

summary() {
  local failed=0 passed=0 skipped=0 i
  for i in "${!STEPS[@]}"; do
    case "${RESULTS[$i]}" in
      fail) failed=$((failed + 1)) ;;
      pass) passed=$((passed + 1)) ;;
      *) skipped=$((skipped + 1)) ;;
    esac
  done
  {
    echo
    echo "switchyard GPU run: $(date -u +%Y-%m-%dT%H:%M:%SZ), logs and reports in $OUT"
    printf '%-34s %-6s %7s  %s\n' STEP RESULT SECONDS NOTE
    for i in "${!STEPS[@]}"; do
      printf '%-34s %-6s %7s  %s\n' "${STEPS[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}" "${NOTES[$i]}"
    done
    echo "total: $passed passed, $failed failed, $skipped skipped in $((SECONDS - START)) s"
  } | tee "$OUT/summary.txt"
  if [ "$failed" -gt 0 ]; then return 1; fi
  if [ "$passed" -eq 0 ]; then return 77; fi
  return 0
}

finish() {
  summary
  exit $?
}

# -- a Python whose torch has CUDA, and a GPU ---------------------------------------------

probe() {  # prints "ok <torch> <cuda> <count> <name>" or "lack <why>"
  "$1" - <<'EOF' 2>/dev/null
import sys
try:
    import torch
except Exception as error:
    print(f"lack torch cannot be imported ({type(error).__name__}: {error})")
    sys.exit()
if torch.version.cuda is None:
    build = "a ROCm build" if getattr(torch.version, "hip", None) else "built without CUDA"
    print(f"lack torch {torch.__version__} is {build}")
    sys.exit()
# device_count() asks NVML and leaves CUDA uninitialised
count = torch.cuda.device_count()
if count < 1:
    print(f"lack torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
    sys.exit()
print(f"ok {torch.__version__} {torch.version.cuda} {count} {torch.cuda.get_device_name(0)}")
EOF
}

PY=""
LACKS=()
for candidate in "${PYTHON:-}" "$ROOT/.venv/bin/python" python3 python; do
  [ -n "$candidate" ] || continue
  command -v "$candidate" >/dev/null 2>&1 || continue
  answer="$(probe "$candidate")"
  if [ "${answer%% *}" = "ok" ]; then
    PY="$(command -v "$candidate")"
    read -r _ TORCH_VERSION CUDA_VERSION GPU_COUNT GPU_NAME <<<"$answer"
    break
  fi
  LACKS+=("$candidate: ${answer#lack }")
done

if [ -z "$PY" ]; then
  echo "no CUDA device: no Python here has a CUDA build of torch that sees a GPU" >&2
  for lack in "${LACKS[@]}"; do echo "  $lack" >&2; done
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "  nvidia-smi: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1 | head -n 1)" >&2
  else
    echo "  nvidia-smi: not found (no NVIDIA driver on this machine)" >&2
  fi
  record "environment" skip 0 "no CUDA device (${LACKS[0]:-no python found})"
  finish
fi
echo "python $PY: torch $TORCH_VERSION, CUDA $CUDA_VERSION, $GPU_COUNT GPU(s), GPU 0: $GPU_NAME"

# -- the checkout, importable and discoverable without pip --------------------------------

step_start=$SECONDS
if ! PYTHONPATH_SITE="$("$PY" tests/hardware/gpu_site.py "$OUT/site" 2>"$OUT/logs/site.log")"; then
  record "environment" fail $((SECONDS - step_start)) "gpu_site.py failed: $(tail -n 1 "$OUT/logs/site.log")"
  finish
fi
export PYTHONPATH="$PYTHONPATH_SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONFAULTHANDLER=1
missing="$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("pluggy", "pytest") if importlib.util.find_spec(m) is None))
EOF
)"
if [[ " $missing " == *" pluggy "* ]]; then
  record "environment" fail $((SECONDS - step_start)) "this Python lacks pluggy, which switchyard needs (pip install pluggy)"
  finish
fi
HAVE_PYTEST=1
if [[ " $missing " == *" pytest "* ]]; then HAVE_PYTEST=0; fi
record "environment" pass $((SECONDS - step_start)) "torch $TORCH_VERSION, CUDA $CUDA_VERSION, $GPU_NAME"

# -- steps --------------------------------------------------------------------------------

remaining() { echo $((BUDGET - (SECONDS - START))); }

run_step() {  # name limit-seconds command...
  local name="$1" limit="$2" left log status began
  shift 2
  left="$(remaining)"
  if [ "$left" -lt 20 ]; then
    record "$name" skip 0 "out of time (budget ${BUDGET} s)"
    return
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  log="$OUT/logs/$(echo "$name" | tr ' /:' '___').log"
  began=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  status=$?
  local took=$((SECONDS - began))
  if [ "$status" -eq 0 ]; then
    record "$name" pass "$took" "$(grep -E 'passed|loss' "$log" | tail -n 1 | cut -c1-70)"
  elif [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    record "$name" fail "$took" "timed out after $limit s; see $log"
  else
    record "$name" fail "$took" "exit $status: $(tail -n 1 "$log" | cut -c1-60)"
    echo "---- $name (exit $status), last lines of $log:" >&2
    tail -n 15 "$log" >&2
  fi
}

run_step "switchyard plugins: cuda usable" 60 "$PY" - <<'EOF'
import json, subprocess, sys
out = subprocess.run([sys.executable, "-m", "switchyard", "plugins", "--json"],
                     capture_output=True, text=True, check=True).stdout
report = json.loads(out)
cuda = [e for e in report["entries"] if e["kind"] == "accelerator" and e["name"] == "cuda"]
assert cuda, "the cuda accelerator is not registered"
print("cuda:", cuda[0]["usable"], cuda[0]["reason"], "auto:", report["auto_accelerator"]["name"])
assert cuda[0]["usable"], cuda[0]
assert report["auto_accelerator"]["name"] == "cuda", report["auto_accelerator"]
print("passed")
EOF

if [ "$HAVE_PYTEST" -eq 1 ]; then
  run_step "plugin tests (plugins/cuda)" 120 \
    "$PY" -m pytest plugins/cuda -q -p no:cacheprovider
  for strategy in single_device ddp fsdp; do
    run_step "kit: cuda + $strategy" 150 \
      "$PY" -m pytest -p switchyard.testing -p no:cacheprovider -q \
      --switchyard-accelerator cuda --switchyard-strategy "$strategy" --switchyard-devices 1 \
      --switchyard-report "$OUT/kit-cuda-$strategy.json"
  done
else
  for step in "plugin tests (plugins/cuda)" "kit: cuda + single_device" "kit: cuda + ddp" "kit: cuda + fsdp"; do
    record "$step" skip 0 "this Python lacks pytest (pip install pytest)"
  done
fi

for strategy in single_device ddp fsdp; do
  run_step "example bf16-mixed: $strategy" 90 \
    "$PY" examples/train.py --accelerator cuda --strategy "$strategy" --devices 1 \
    --precision bf16-mixed --epochs 2
done

record "benchmarks: GPU scenarios" skip 0 "benchmarks/ has no GPU scenario yet"
finish
