#!/usr/bin/env bash
# A Cloud TPU VM pod slice: the same command runs on every worker; jax.distributed
# discovers the slice by itself (ATJAX_DISTRIBUTED=1 asks atjax to call
# jax.distributed.initialize() with no arguments). The workdir must be a path that
# every worker sees: a shared file system (Filestore) or a bucket mounted at the same
# path on every worker (gcsfuse); a gs:// URL is refused.
#
#   launch/tpu_pod.sh my-tpu us-central2-b configs/paper.py:table5-mlp-original \
#       /mnt/bucket/runs/t5 --config.model.text.path=/data/hf/roberta-large ...
#
# Install first on every worker (same command via --worker=all): a checkout of the repo at
# ATJAX_DIR (default ~/atjax, where the configs/ paths resolve), then
#   cd ~/atjax && pip install -e '.[data,tpu]'
set -euo pipefail
tpu=${1:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]}
zone=${2:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [...]}
config=${3:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [...]}
workdir=${4:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [...]}
shift 4
# With no overrides printf would still print one quoted empty argument.
extra=""
if [ $# -gt 0 ]; then extra=$(printf ' %q' "$@"); fi
dir=${ATJAX_DIR:-'~/atjax'}
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $dir && ATJAX_DISTRIBUTED=1 python -m atjax.train --config $(printf %q "$config") --workdir $(printf %q "$workdir") --no_progress$extra"
