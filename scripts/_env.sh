# shellcheck shell=bash
# Sourced by scripts/hfmem and scripts/test: makes sure $HFMEM_VENV (default: .venv in the checkout) holds hfmem
# (and, for the tests, the test tools), and installs only when something changed since the last install.
#
# First run: creates the virtual environment, upgrades pip (>= 25.1 reads [dependency-groups]), installs PyTorch
# (the CPU build unless nvidia-smi lists a CUDA GPU), then hfmem in editable mode. Later runs compare a stamp (the
# SHA-256 of pyproject.toml and of this file, and the Python version) and install nothing when it matches.
# Environment: PYTHON (the interpreter that creates the venv, default python3), HFMEM_VENV (where the venv lives),
# HFMEM_TORCH_INDEX_URL (a PyTorch wheel index to use instead of the choice below, e.g. .../whl/cu126).

HFMEM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HFMEM_VENV="${HFMEM_VENV:-$HFMEM_ROOT/.venv}"
HFMEM_PY="$HFMEM_VENV/bin/python"
# The PyTorch release the test suite runs with; hfmem itself accepts torch >= 2.4 (pyproject.toml).
TORCH_VERSION=2.13.0
# PyTorch's CPU-only wheels: pytorch.org "Start Locally", Linux + Pip + CPU:
#   pip3 install torch --index-url https://download.pytorch.org/whl/cpu
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

_say() { printf 'hfmem setup: %s\n' "$*" >&2; }

_has_cuda_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

# Sets TORCH_ARGS: the pip arguments that install PyTorch on this machine.
_choose_torch() {
  TORCH_ARGS=("torch==$TORCH_VERSION")
  if [[ -n "${HFMEM_TORCH_INDEX_URL:-}" ]]; then
    TORCH_ARGS+=(--index-url "$HFMEM_TORCH_INDEX_URL")
    TORCH_BUILD="from $HFMEM_TORCH_INDEX_URL"
  elif _has_cuda_gpu; then
    TORCH_BUILD="default (CUDA) build: nvidia-smi lists a GPU"   # PyPI's Linux wheel bundles CUDA
  elif [[ "$(uname -s)" == Darwin ]]; then
    TORCH_BUILD="macOS build (PyPI's wheel has no CUDA)"
  elif "$HFMEM_PY" -m pip install --dry-run --quiet --no-index --no-deps "torch==$TORCH_VERSION" >/dev/null 2>&1; then
    TORCH_BUILD="the wheel pip's own configuration provides (find-links), no CUDA GPU"
  else
    TORCH_ARGS+=(--index-url "$TORCH_CPU_INDEX")
    TORCH_BUILD="CPU build: no CUDA GPU (nvidia-smi lists none)"
  fi
}

_stamp_text() {
  "$HFMEM_PY" - "$HFMEM_ROOT/pyproject.toml" "${BASH_SOURCE[0]}" "$1" <<'PY'
import hashlib, sys
print(sys.argv[3], sys.version.split()[0], *(hashlib.sha256(open(p, "rb").read()).hexdigest() for p in sys.argv[1:3]))
PY
}

# ensure_env tool|dev — tool: torch + hfmem; dev: also the web extra (tests/test_web.py) and the test tools.
ensure_env() {
  local profile="$1" stamp want
  if [[ ! -x "$HFMEM_PY" ]]; then
    local python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      _say "hfmem needs Python >= 3.10; '$python' is missing or older. Set PYTHON=/path/to/python3.11 and rerun."
      return 2
    fi
    _say "creating $HFMEM_VENV (first run only)"
    "$python" -m venv "$HFMEM_VENV"
  fi
  stamp="$HFMEM_VENV/.hfmem-$profile.stamp"
  want="$(_stamp_text "$profile")"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  _say "installing into $HFMEM_VENV (pyproject.toml or the set-up changed, or first run)"
  "$HFMEM_PY" -m pip install --quiet --upgrade "pip>=25.1" >&2
  local have
  have="$("$HFMEM_PY" -m pip show torch 2>/dev/null | sed -n 's/^Version: //p')" || true  # exit 1: none yet
  if [[ "${have%%+*}" != "$TORCH_VERSION" ]]; then
    _choose_torch
    _say "installing torch $TORCH_VERSION, $TORCH_BUILD"
    "$HFMEM_PY" -m pip install "${TORCH_ARGS[@]}" >&2
  fi
  if [[ "$profile" == dev ]]; then
    "$HFMEM_PY" -m pip install --quiet -e "${HFMEM_ROOT}[web]" --group "$HFMEM_ROOT/pyproject.toml:dev" >&2
    _stamp_text tool >"$HFMEM_VENV/.hfmem-tool.stamp"
  else
    "$HFMEM_PY" -m pip install --quiet -e "$HFMEM_ROOT" >&2
  fi
  printf '%s\n' "$want" >"$stamp"
}
