#!/usr/bin/env bash
# Build the wheel, install it into a fresh venv outside the clone and run the demo from there (CI step).
# The venv sees the system site-packages (TVM, torch, onnx are not downloaded again), but gwq-tvm itself comes only
# from the wheel: the import is checked to resolve inside the venv, never to the clone or an editable install.
set -euo pipefail
clone="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# build in this environment when it has the build backend (no download), else in build's isolated environment
isolation="--no-isolation"
python -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 68)" 2>/dev/null || isolation=""
python -m build --wheel $isolation --outdir "$work/dist" "$clone" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
wheel="$(ls "$work"/dist/gwq_tvm-*.whl)"
python - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = {"gwq_tvm/models/fmnist_resnet.onnx", "gwq_tvm/models/fashion_mnist_test.npz", "gwq_tvm/models/fashion_mnist_calib.npz",
        "gwq_tvm/models/MANIFEST.json", "gwq_tvm/models/fmnist_resnet.pt"}
missing = sorted(need - names)
assert not missing, f"the wheel lacks bundled files: {missing}"
PY
python -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-deps "$wheel"
cd "$work"
"$work/venv/bin/python" - "$work/venv" <<'PY'
import sys
import gwq_tvm
assert gwq_tvm.__file__.startswith(sys.argv[1]), f"gwq_tvm imported from {gwq_tvm.__file__}, not from the wheel"
print(f"gwq_tvm {gwq_tvm.__version__} from {gwq_tvm.__file__}")
PY
# the demo on 500 of the 10k test images (the full demo runs the untuned fp32 model on all of them: minutes here)
"$work/venv/bin/gwq-tvm" --quiet demo --limit 500 --calib-samples 128 --out-dir "$work/demo"
test -f "$work/demo/demo_result.json"
echo "wheel check passed: $(basename "$wheel")"
