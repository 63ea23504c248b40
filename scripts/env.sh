# Sourced by scripts/train and scripts/test: make (or reuse) the project's virtual environment.
#
# .venv holds torch 2.13.0 (CPU), the dev tools of requirements/dev.txt, and core plus every
# first-party plugin installed editable. It is rebuilt only when what it was built from changes
# (the requirements, any pyproject.toml, core's build hooks, the Python version); code edits
# need nothing, since the packages are editable. pip's download cache (outside the repo) makes a
# rebuild fast.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SWITCHYARD_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

_stamp() {
  {
    "$PYTHON" -c 'import sys; print(sys.version)'
    cat "$ROOT/requirements/dev.txt"
    find "$ROOT/core" "$ROOT/plugins" "$ROOT/examples" -maxdepth 3 \
      \( -name pyproject.toml -o -name hatch_build.py -o -name build_backend.py \) \
      -not -path '*/.venv/*' | sort | xargs cat
  } | sha256sum | cut -d' ' -f1
}

_first_party() {
  # core and every plugin folder that is a package, plus the example third-party plugin
  local paths=("-e" "$ROOT/core")
  for dir in "$ROOT"/plugins/*/; do
    [ -f "$dir/pyproject.toml" ] && paths+=("-e" "${dir%/}")
  done
  if [ -f "$ROOT/examples/plugin-template/pyproject.toml" ]; then
    paths+=("-e" "$ROOT/examples/plugin-template")
  fi
  printf '%s\n' "${paths[@]}"
}

_pip() {
  local log="$VENV/pip.log"
  if ! "$VENV/bin/python" -m pip --disable-pip-version-check "$@" >>"$log" 2>&1; then
    grep -v "is ignored: it is neither" "$log" | tail -n 30 >&2
    echo "pip $* failed; full log in $log" >&2
    return 1
  fi
}

ensure_venv() {
  local want have=""
  want="$(_stamp)"
  [ -f "$VENV/.stamp" ] && have="$(cat "$VENV/.stamp")"
  if [ "$want" != "$have" ] || [ ! -x "$VENV/bin/python" ]; then
    echo "setting up $VENV (torch 2.13.0 CPU, switchyard and its plugins)..." >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    _pip install -r "$ROOT/requirements/dev.txt"
    mapfile -t pkgs < <(_first_party)
    # the build backend (hatchling) comes from requirements/dev.txt; an editable core names its
    # plugins by distribution, which the editable plugin folders satisfy
    _pip install --no-build-isolation "${pkgs[@]}"
    "$VENV/bin/python" -m pip check >&2 || { echo "pip check failed" >&2; return 1; }
    "$VENV/bin/python" -c "import switchyard, torch" || { echo "install failed" >&2; return 1; }
    echo "$want" > "$VENV/.stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}
