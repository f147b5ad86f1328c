#!/usr/bin/env bash
# Multi-process training on one machine: N JAX processes joined by jax.distributed on 127.0.0.1.
#
# Usage: launch/local_multiprocess.sh NUM_PROCESSES WORKDIR [train.py flags...]
#   e.g. launch/local_multiprocess.sh 2 /tmp/mp --config=configs/default.py:tiny
#
# Environment:
#   PLATFORM=cpu (default): each process gets DEVICES_PER_PROCESS fake CPU devices (default 2),
#     cross-process collectives through gloo.
#   PLATFORM=gpu: process i drives local GPU i (--config.distributed.local_device_ids=i).
#   PORT: coordinator port (default 12355).
# The global batch (config.batch_size) must divide by the total device count. Every process
# writes to the same WORKDIR (process 0 writes config, tokenizer, metrics; Orbax coordinates
# checkpoints). Exit code: non-zero if any process fails (the others are then stopped).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,15p' "$0"; exit 2
fi
NUM=$1; WORKDIR=$2; shift 2
PLATFORM=${PLATFORM:-cpu}
PORT=${PORT:-12355}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-2}
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."

# ml_collections needs --config before any --config.* override.
config_flag=(); [[ " $* " == *" --config="* ]] || config_flag=(--config=configs/default.py)
user_config=(); rest=()
for arg in "$@"; do
  if [[ $arg == --config=* ]]; then user_config=("$arg"); else rest+=("$arg"); fi
done

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < NUM; i++)); do
  extra=()
  if [[ $PLATFORM == cpu ]]; then
    env_vars=(JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS")
  else
    env_vars=()
    extra=(--config.distributed.local_device_ids="$i")
  fi
  env "${env_vars[@]}" "$PYTHON" -m seq2seq_jax.train --workdir="$WORKDIR" \
    "${config_flag[@]}" "${user_config[@]}" "${rest[@]}" \
    --config.distributed.initialize=true \
    --config.distributed.coordinator_address="127.0.0.1:$PORT" \
    --config.distributed.num_processes="$NUM" \
    --config.distributed.process_id="$i" \
    "${extra[@]}" &
  pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then status=1; cleanup; fi
done
exit $status
