#!/usr/bin/env bash
# One short GPU session that measures the training step (issue: speed on GPU).
# Runs each setting in its own process so that peak device memory is per setting.
#   launch/gpu_bench.sh OUT_DIR [CONFIG] [SETTINGS...]
# SETTINGS are head:dtype pairs (default: mlp:bfloat16 transformer:bfloat16 mlp:float32
# transformer:float32). Results: OUT_DIR/bench.jsonl (one JSON line per setting).
# On a machine without TensorFlow (the GPU image) this needs only jax, flax, optax,
# orbax, ml_collections and transformers: the step and the benchmark never import TF.
set -uo pipefail
out=${1:?usage: $0 OUT_DIR [CONFIG] [head:dtype ...]}
config=${2:-configs/paper.py:table1-roberta-large}
shift $(( $# >= 2 ? 2 : 1 ))
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(mlp:bfloat16 transformer:bfloat16 mlp:float32 transformer:float32)
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tail -1
for s in "${settings[@]}"; do
  PYTHONUNBUFFERED=1 python3 -m atjax.bench train_step --config "$config" \
    --heads "${s%%:*}" --dtypes "${s##*:}" --out "$out/bench.jsonl" 2>"$out/stderr-${s/:/-}.txt" \
    | grep '^{' || tail -5 "$out/stderr-${s/:/-}.txt"
done
