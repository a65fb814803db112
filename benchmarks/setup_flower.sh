#!/usr/bin/env bash
# Creates the Flower reference environment OUTSIDE the repo (default /work/.flwr-venv).
# Usage: bash benchmarks/setup_flower.sh [VENV_DIR]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
VENV="${1:-${FLWR_VENV:-/work/.flwr-venv}}"
CONSTRAINTS="$REPO/constraints.txt"   # pins torch==2.13.0 (CPU build)

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade pip
# torch==2.13.0 (CPU build) comes from the pip find-links configured on this machine;
# the constraints file guarantees pip never swaps it for another version.
"$VENV/bin/python" -m pip install -c "$CONSTRAINTS" \
  "torch==2.13.0" "flwr[simulation]==1.41.*" numpy scikit-learn pandas psutil
"$VENV/bin/python" - <<'PY'
import flwr, torch, numpy, sklearn
print("flwr", flwr.__version__, "torch", torch.__version__, "numpy", numpy.__version__, "sklearn", sklearn.__version__)
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
