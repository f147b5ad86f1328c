#!/usr/bin/env bash
# Training on a Cloud TPU VM pod slice (e.g. v4-32: 4 hosts): the same command on every worker.
#
# Usage: launch/tpu_vm_pod.sh TPU_NAME ZONE CONFIG WORKDIR [train.py flags...]
#   e.g. launch/tpu_vm_pod.sh my-v4-32 us-central2-b configs/wmt14_rnnsearch50.py \
#          /mnt/shared/rnnsearch50
#
# Prerequisites on every worker: this repository at ~/seq2seq_jax, `pip install -e .[tf]` with
# `jax[tpu]`, the TFDS data prepared in config.data.tfds_data_dir, and WORKDIR on a file system
# all workers share (NFS / Filestore, or a gcsfuse mount). jax.distributed.initialize() reads the
# TPU pod topology from the VM metadata. The global batch must divide by the chip count.
# Preemption (maintenance events send SIGTERM): every worker saves the same step (the next log
# or checkpoint step) and exits 0; rerunning the same command resumes.
set -euo pipefail

if [[ $# -lt 4 ]]; then
  sed -n '2,13p' "$0"; exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO=${REPO:-~/seq2seq_jax}
EXTRA=$(printf ' %q' "$@")

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd $REPO && python3 -m seq2seq_jax.train --config=$CONFIG --workdir=$WORKDIR \
    --config.distributed.initialize=true $EXTRA"
