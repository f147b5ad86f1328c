#!/usr/bin/env bash
# GPU check (issue 16): the project's first run on a GPU and the fused Pallas additive
# attention there. One command, stages in order of value, each under its own time limit; a
# failing stage does not stop the next ones.
#
#   env           nvidia-smi, Python, JAX and the versions of the packages used
#   wheels        check the carried wheels (benchmarks/gpu_wheels.py) and install them into
#                 /tmp/site (the GPU machine lacks tensorflow-datasets, grain, array-record,
#                 ml-collections, tensorboardX, importlib_resources and some of their needs)
#   kernel_tests  tests/test_pallas_attention.py on the GPU (the Triton kernels, not the
#                 interpreter), float32 matmuls at full precision
#   bench         python -m benchmarks.gpu_check bench: pallas vs chunked agreement at
#                 B=32 T=S=256 A=512 H=8, fwd+bwd and fwd time, compiled and device memory
#                 of naive / chunked / pallas in float32 and bfloat16, a tile sweep
#   train         the README's main job on the GPU (configs/default.py, capped at 0.5 training
#                 minutes) and a decode; a 20-step Transformer (additive cross-attention, so
#                 "auto" runs the Pallas kernels inside the train step)
#   tests         tests/test_attention.py, test_layers_transformer.py, test_masks.py on the GPU
#
# HOW TO RUN IT ON THE DEVICE MACHINE (the `run` tool of the device, from a session that has
# one). Once, on the development machine, if .whl/ is missing (network; ~11 MiB; .whl/ is
# git-ignored):
#
#   bash benchmarks/gpu_check.sh --download-wheels
#
# Then ONE call of the device tool:
#
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=580)
#
# Stage limits add up to 550 s (expected: about 5 minutes), leaving time in a 15-minute device
# budget to rerun what failed, e.g.
#
#   run(command="STAGES='wheels bench' bash benchmarks/gpu_check.sh", carry=[".whl"],
#       timeout_s=300)
#
# Results come back under $OUT: gpu_check.log (everything), summary.txt (stage, exit code,
# seconds), bench.jsonl (one JSON object per figure), dates_metrics.jsonl and
# transformer_metrics.jsonl. Exit code 0 only if every stage passed.
#
# CPU REHEARSAL (tiny sizes, Pallas interpreter, wheels checked but not installed since this
# machine's Python is 3.11, tests collected but not run in the `tests` stage):
#
#   GPU_CHECK_SMOKE=1 JAX_PLATFORMS=cpu nice -n 19 bash benchmarks/gpu_check.sh
#
# Outputs then go to ./gpu_check_out (git-ignored) unless OUT is set.

set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
WHEELS_DIR=${WHEELS_DIR:-$REPO/.whl}

if [[ "${1:-}" == "--download-wheels" ]]; then
  # Pins = the versions this project is developed against; promise has no wheel on PyPI, so it
  # is built (pure Python) first. Only the names the GPU machine lacks are kept.
  set -e
  tmp=$(mktemp -d)
  python3 -m pip wheel -q --no-deps -w "$tmp/extra" promise==2.3
  python3 -m pip download -q --python-version 3.12 --implementation cp --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
    --find-links "$tmp/extra" -d "$tmp/all" \
    tensorflow-datasets==4.9.10 grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 \
    tensorboardX==2.6.5 importlib_resources==7.1.0
  mkdir -p "$WHEELS_DIR"
  for name in array_record dm_tree docstring_parser googleapis_common_protos grain \
      immutabledict importlib_resources ml_collections portpicker promise protobuf etils \
      simple_parsing tensorboardx tensorflow_datasets tensorflow_metadata termcolor toml; do
    cp "$tmp"/all/"$name"-*.whl "$WHEELS_DIR"/
  done
  rm -rf "$tmp"
  du -sh "$WHEELS_DIR"
  exit 0
fi

SMOKE=${GPU_CHECK_SMOKE:-0}
STAGES=${STAGES:-env wheels kernel_tests bench train tests}
OUT_DIR=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_check.log
SUMMARY=$OUT_DIR/summary.txt
if [[ -z "${PYTHON:-}" ]]; then
  if [[ "$SMOKE" == 1 && -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python
  else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
SCALE=1
[[ "$SMOKE" == 1 ]] && SCALE=4  # the CPU rehearsal is slower (interpreter, 2 cores)
WORK=$(mktemp -d)
FAILED=0

log() { echo "$*" | tee -a "$LOG"; }

# run_stage NAME SECONDS: runs the function stage_NAME under a time limit, logs rc and time.
run_stage() {
  local name=$1 limit=$(( $2 * SCALE )) start rc
  [[ " $STAGES " == *" $name "* ]] || return 0
  log "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
  start=$(date +%s)
  if [[ "$name" == wheels ]]; then  # in this shell (no pipe): it exports PYTHONPATH
    stage_wheels "$limit" > "$WORK/wheels.log" 2>&1
    rc=$?
    tee -a "$LOG" < "$WORK/wheels.log"
  else
    timeout --kill-after=10 "$limit" bash -c "$(declare -f "stage_$name"); stage_$name" \
      2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
  fi
  [[ "$rc" == 124 ]] && log "!!! $name: time limit of ${limit}s reached"
  printf '%-13s rc=%-4s %4ss\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$SUMMARY"
  [[ "$rc" == 0 ]] || FAILED=1
}

stage_env() {
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv
  "$PYTHON" -c 'import sys, jax; print(sys.version); print("jax", jax.__version__,
    jax.default_backend(), jax.devices())'
  "$PYTHON" -m pip list 2>/dev/null | grep -i -E '^(jax|jaxlib|jax-cuda.*|flax|optax|orbax-checkpoint|chex|numpy|protobuf|etils|triton|sentencepiece|sacrebleu) '
  return 0
}

stage_wheels() {
  local list=$WORK/wheels.txt
  [[ -d "$WHEELS_DIR" ]] || { echo "no $WHEELS_DIR: carry it (see the header)"; return 1; }
  "$PYTHON" benchmarks/gpu_wheels.py "$WHEELS_DIR" > "$list" || return 1
  echo "$(wc -l < "$list") wheels to install"
  if [[ "$SMOKE" == 1 ]]; then
    echo "smoke: checked, not installed (this Python is not 3.12)"
    return 0
  fi
  timeout "$1" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site $(cat "$list") || return 1
  export PYTHONPATH=/tmp/site:$PYTHONPATH
  "$PYTHON" -c 'import tensorflow_datasets, grain, array_record, ml_collections, tensorboardX
print("imports ok: tfds", tensorflow_datasets.__version__)'
}

stage_kernel_tests() {
  JAX_DEFAULT_MATMUL_PRECISION=highest "$PYTHON" -m pytest -q -x -p no:cacheprovider \
    tests/test_pallas_attention.py
}

stage_bench() {
  local smoke=()
  [[ "$SMOKE" == 1 ]] && smoke=(--smoke)
  "$PYTHON" -m benchmarks.gpu_check bench "${smoke[@]}" --out "$OUT_DIR/bench.jsonl"
}

stage_train() {
  local config=configs/default.py rc=0
  [[ "$SMOKE" == 1 ]] && config=configs/default.py:tiny
  "$PYTHON" -m seq2seq_jax.train --config="$config" --workdir="$WORK/dates" \
    --config.max_train_minutes=0.5 || rc=1
  cp "$WORK/dates/metrics.jsonl" "$OUT_DIR/dates_metrics.jsonl" 2>/dev/null
  echo "Saturday 9 May 2018" | "$PYTHON" -m seq2seq_jax.decode --workdir="$WORK/dates" || rc=1
  "$PYTHON" -m seq2seq_jax.train --config=configs/default.py:tiny \
    --config.model.name=transformer --workdir="$WORK/transformer" || rc=1
  cp "$WORK/transformer/metrics.jsonl" "$OUT_DIR/transformer_metrics.jsonl" 2>/dev/null
  return $rc
}

stage_tests() {
  local files=(tests/test_attention.py tests/test_layers_transformer.py tests/test_masks.py)
  if [[ "$SMOKE" == 1 ]]; then
    "$PYTHON" -m pytest -q --co -p no:cacheprovider "${files[@]}" | tail -3
    return "${PIPESTATUS[0]}"
  fi
  JAX_DEFAULT_MATMUL_PRECISION=highest "$PYTHON" -m pytest -q -p no:cacheprovider "${files[@]}"
}

export REPO PYTHON SMOKE OUT_DIR WORK WHEELS_DIR
: > "$SUMMARY"
log "gpu_check $(date -u +%FT%TZ) smoke=$SMOKE stages: $STAGES"
run_stage env 20
run_stage wheels 40
run_stage kernel_tests 100
run_stage bench 180
run_stage train 150
run_stage tests 60
log "=== summary"
tee -a "$LOG" < "$SUMMARY"
rm -rf "$WORK"
exit "$FAILED"
