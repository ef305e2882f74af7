#!/usr/bin/env bash
# The one script a GPU session runs: `pytest -m gpu`, the GPU benchmarks, and a short table.
#
# Two steps, in the repository root:
#   1. here, on the CPU machine (needs PyPI), once per session:
#        bash benchmarks/gpu_check.sh fetch
#      downloads into .whl/ (git-ignored, ~19 MB) the wheels the GPU image lacks or has in a version
#      that breaks Numba: numpy 2.4 (the image's numpy 2.5 fails with numba 0.68) and pydicom
#      (some test modules import it, and `pytest -m gpu tests` collects every module).
#   2. on the GPU machine, through the device tool:
#        run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=390)
#      installs the wheels into /tmp/site, prints the device and versions, runs `pytest -m gpu`
#      (<= 150 s) and `python -m benchmarks.bench_cuda` (<= 180 s: the seed CNN's kernels and steps,
#      then the 3-D U-Net's kernels against PyTorch's), and prints a short table.
#      Everything is also written under $OUT: gpu-tests.log, gpu-tests.xml, bench_cuda.log,
#      bench_cuda.csv, summary.txt (the device tool brings $OUT back).
# Exit status: 0 only if the tests passed and the benchmarks ran.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "fetch" ]]; then
    # the GPU image runs CPython 3.12 on x86-64 manylinux
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        numpy==2.4.6 pydicom==3.0.2
fi

OUT="${OUT:-/tmp/medgrad-gpu-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# tiny test shapes launch small grids on purpose: Numba's low-occupancy performance warning would
# become an error under the suite's filterwarnings=error
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no .whl/ wheels: run 'bash benchmarks/gpu_check.sh fetch' first (numba needs numpy < 2.5)"
fi

echo "== device and versions"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'EOF'
import importlib
for name in ("numpy", "numba", "numba.cuda", "cupy", "torch"):
    try:
        module = importlib.import_module(name)
        print(f"{name:<11} {getattr(module, '__version__', 'ok')}")
    except Exception as exc:  # report and go on: the tests say what fails because of it
        print(f"{name:<11} FAILED: {type(exc).__name__}: {exc}")
from engine import backend
print("available:", backend.available())
EOF

echo "== pytest -m gpu"
# numba-cuda on the image warns (DeprecationWarning) at import; the suite turns warnings into errors
timeout 150 "$PY" -m pytest -m gpu tests -q -p no:cacheprovider --continue-on-collection-errors \
    -W "ignore::DeprecationWarning" \
    --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== benchmarks"
timeout 180 "$PY" -m benchmarks.bench_cuda --csv "$OUT/bench_cuda.csv" 2>&1 | tee "$OUT/bench_cuda.log"
bench_rc=${PIPESTATUS[0]}

echo "== summary"
"$PY" - "$OUT" "$tests_rc" "$bench_rc" <<'EOF' | tee "$OUT/summary.txt"
import csv, os, sys
import xml.etree.ElementTree as ET

out, tests_rc, bench_rc = sys.argv[1], sys.argv[2], sys.argv[3]
xml = os.path.join(out, "gpu-tests.xml")
if os.path.exists(xml):
    suite = ET.parse(xml).getroot().find("testsuite")
    suite = suite if suite is not None else ET.parse(xml).getroot()
    counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
    print("pytest -m gpu: {tests} tests, {failures} failed, {errors} errors, {skipped} skipped "
          "in {time} s (exit {rc})".format(rc=tests_rc, **counts))
else:
    print(f"pytest -m gpu: no report (exit {tests_rc})")
path = os.path.join(out, "bench_cuda.csv")
if not os.path.exists(path):
    print(f"benchmarks: no CSV (exit {bench_rc})")
    sys.exit()
rows = list(csv.DictReader(open(path)))
for row in rows:
    if row["bench"] == "gemm_ceiling":
        print(f"float32 GEMM ceiling ({row['shape']}): {float(row['tflops']):.1f} TFLOP/s")
print(f"{'training step':<16}{'batch':>7}{'img/s':>12}{'x torch':>9}{'launches':>10}{'% GEMM':>8}")
for row in rows:
    if row["bench"] == "train_step_seed_cnn":
        x = f"{float(row['x_torch']):.2f}" if row.get("x_torch") else "-"
        pct = f"{float(row['pct_gemm_ceiling']):.1f}" if row.get("pct_gemm_ceiling") else "-"
        print(f"{row['flavour']:<16}{row['shape']:>7}{float(row['img_per_s']):>12,.0f}{x:>9}"
              f"{row.get('launches_per_step') or '-':>10}{pct:>8}")
columns = ("cuda:cupy", "cuda:numba", "torch-eager")  # torch: the unet3d_* kernels only
print(f"{'kernel (ms)':<40}" + "".join(f"{f:>14}" for f in columns))
kernels = {}
for row in rows:
    if row["bench"] not in ("gemm_ceiling", "train_step_seed_cnn"):
        kernels.setdefault(f"{row['bench']} {row['shape']}", {})[row["flavour"]] = row["median_ms"]
for name, by in kernels.items():
    print(f"{name:<40}" + "".join(f"{float(by[f]):>14.3f}" if f in by else f"{'-':>14}"
                                  for f in columns))
EOF

[[ "$tests_rc" == 0 && "$bench_rc" == 0 ]]
