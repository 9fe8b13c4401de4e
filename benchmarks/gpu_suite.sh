#!/usr/bin/env bash
# The 10-minute GPU check: the three stage benchmarks and the `gpu` profile in at
# most 540 s on one H100/H200 (benchmarks/gpu_suite.py says what it runs and
# writes; benchmarks/gpu_budget.py how long each part should take).
#
#   bash benchmarks/gpu_suite.sh --prepare        # here, once: .gpu_carry/ (wheels, archive, commit)
#   bash benchmarks/gpu_suite.sh [--out DIR]      # on the GPU machine (default --out $OUT)
#   bash benchmarks/gpu_suite.sh --device cpu --tiny --out DIR   # toy sizes on CPU, < 3 min
#   python benchmarks/gpu_suite.py --unpack DIR   # the output into benchmarks/records/ and records/gpu/
#
# On the device tool: run(command="bash benchmarks/gpu_suite.sh", carry=[".gpu_carry"],
# timeout_s=600). The device's Python has torch, torchvision, numpy, pandas,
# matplotlib, safetensors, PyYAML and Pillow but no kornia: --prepare downloads
# kornia and its binary dependency kornia-rs as wheels for CPython 3.12 x86-64,
# and this script installs them into a temporary folder when kornia is missing.
# Python: $PYTHON, else ./.venv/bin/python if present, else python3.
set -euo pipefail

started=$(date +%s.%N)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
carry="$root/.gpu_carry"
KORNIA_VERSION=0.9.0      # the versions lsslib is tested with here
KORNIA_RS_VERSION=0.2.0
LIMIT_BYTES=$((60 * 1024 * 1024))  # the device takes 64 MiB of working tree; keep room

if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
  py="$root/.venv/bin/python"
else
  py=python3
fi

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p "$carry/wheels"
  rm -f "$carry"/wheels/*.whl
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$carry/wheels" \
    "kornia==$KORNIA_VERSION" "kornia-rs==$KORNIA_RS_VERSION"
  archive="$(cd "$root" && PYTHONPATH="$root" "$py" -c \
    "from lsslib.data import find_data_root as f; r = f('cifar10'); print(r / 'cifar10-jpeg.tar.xz' if r else '')")"
  if [[ -z "$archive" || ! -f "$archive" ]]; then
    echo "gpu_suite.sh --prepare: no cifar10-jpeg.tar.xz found (lsslib.data.find_data_root)" >&2
    exit 1
  fi
  cp "$archive" "$carry/cifar10-jpeg.tar.xz"
  commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit+dirty"
  fi
  echo "$commit" >"$carry/commit.txt"
  carried=$(du -sb "$carry" | cut -f1)
  tree=$(cd "$root" && git ls-files -z --cached --others --exclude-standard |
    xargs -0 stat -L -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
  echo "carried (.gpu_carry):"
  du -b "$carry"/wheels/*.whl "$carry/cifar10-jpeg.tar.xz" "$carry/commit.txt"
  echo "total carried $carried B; working tree $tree B; together $((carried + tree)) B (limit 64 MiB)"
  if ((carried + tree > LIMIT_BYTES)); then
    echo "gpu_suite.sh --prepare: over $LIMIT_BYTES B: the device would refuse the tree" >&2
    exit 1
  fi
  exit 0
fi

if ! "$py" -c "import kornia" 2>/dev/null; then
  if ! compgen -G "$carry/wheels/*.whl" >/dev/null; then
    echo "gpu_suite.sh: kornia is missing and $carry/wheels holds no wheels:" \
      "run 'bash benchmarks/gpu_suite.sh --prepare' where pip works, and carry .gpu_carry" >&2
    exit 2
  fi
  site="${TMPDIR:-/tmp}/gpu_suite_site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$carry"/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$root"
exec "$py" "$here/gpu_suite.py" --started-at "$started" "$@"
