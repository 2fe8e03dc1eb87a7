#!/usr/bin/env bash
# The GPU check in one run (about 8 minutes with start-up): installs the carried wheels that are
# missing, runs the JAX backend tests on the device, then benchmarks sdattn against Keras MHA.
# On a machine without a GPU it says so and runs everything on the CPU at small sizes.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
export KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=3
RESULTS=${OUT:-benchmarks}/results_gpu  # $OUT: what a device run brings back
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
# The oracle (every selector, four mask kinds, compiled predict) and fit; TESTS="" runs them all.
TESTS=${TESTS-oracle or fit}
BENCH_BUDGET=${BENCH_BUDGET:-240}

# 1. Carried wheels (.whl/, from fetch_wheels.sh), --no-deps and only where the module is
#    missing: the machine's own JAX, NumPy and ml-dtypes are never replaced.
DEPS=${SDATTN_DEVICE_DEPS:-/tmp/sdattn-device-deps}
mkdir -p "$DEPS"
export PYTHONPATH="$DEPS${PYTHONPATH:+:$PYTHONPATH}"
missing=()
while read -r requirement module _; do
  case "$requirement" in ''|\#*) continue ;; esac
  "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" \
    || missing+=("$requirement")
done < benchmarks/device/wheels.txt
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing from .whl/: ${missing[*]}"
  "$PYTHON" -m pip install -q --no-index --no-deps --find-links .whl --target "$DEPS" "${missing[@]}" || {
    echo "error: the carried wheels do not install (run benchmarks/device/fetch_wheels.sh first)" >&2; exit 1; }
else
  echo "== every carried package is importable already: nothing to install"
fi

"$PYTHON" - <<'PY'
import importlib.util, platform
import jax, keras
gpu = jax.default_backend() == "gpu"
print(f"== Python {platform.python_version()}, JAX {jax.__version__}, Keras {keras.__version__} "
      f"({keras.backend.backend()}), devices: {jax.devices()}, TensorFlow importable: "
      f"{importlib.util.find_spec('tensorflow') is not None}, Faiss: {importlib.util.find_spec('faiss') is not None}")
if not gpu:
    print("== NO GPU: JAX sees only the CPU, so the tests and the benchmark run on the CPU (small sizes)")
PY

# 2. The backend tests on the device. Highest matmul precision: XLA would otherwise run float32
#    matmuls as TF32 on the GPU, outside the oracle's 1e-5.
echo "== JAX backend tests on the device: ${TESTS:-all of tests/test_backends.py}"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$TEST_TIMEOUT" \
  "$PYTHON" -m pytest -q -p no:cacheprovider -m backend tests/test_backends.py ${TESTS:+-k "$TESTS"}
tests_status=$?

# 3. The benchmark (default matmul precision: what users get).
echo "== benchmark -> $RESULTS.{json,md}"
timeout $((BENCH_BUDGET + 120)) "$PYTHON" benchmarks/device/gpu_bench.py --output "$RESULTS" --budget-s "$BENCH_BUDGET"
bench_status=$?
echo "== tests exit $tests_status, benchmark exit $bench_status"
exit $((tests_status || bench_status))
