#!/usr/bin/env bash
# One host, every local GPU: a single process drives all devices (jit over a Mesh), so no
# launcher is needed. CUDA_VISIBLE_DEVICES picks the GPUs; the global batch must divide by
# their number.
#
#   launch/local_gpus.sh configs/paper.py:table5-transformer-acba runs/t5-tr-acba \
#       --config.model.text.path=/data/hf/roberta-large ...
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [--config.field=value ...]}
workdir=${2:?usage: $0 CONFIG WORKDIR [--config.field=value ...]}
shift 2
# Let XLA take most of the GPU memory up front but leave room for cuDNN workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python -m atjax.train --config "$config" --workdir "$workdir" "$@"
