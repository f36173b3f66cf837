#!/usr/bin/env bash
# One short GPU session that measures the training step (issue: speed on GPU).
#   launch/gpu_bench.sh OUT_DIR [CONFIG] [SETTING...]
# A SETTING is head:dtype[:override,override...], e.g. mlp:bfloat16:rng_impl=rbg or
# mlp:bfloat16:model.audio.batchnorm_one_pass=False. Each runs in its own process,
# so peak device memory is per setting. The first setting is also profiled (where the
# device time goes, by op category and model part: OUT_DIR/profile.txt).
# Settings run in order until BUDGET_S seconds (default 480) have passed, so that the
# whole call ends inside the device tool's 10-minute limit; skipped ones are listed.
# BENCH_ARGS adds arguments of `python -m atjax.bench train_step` (e.g. "--batch_size 32").
# Results: OUT_DIR/bench.jsonl (one JSON line per setting), OUT_DIR/log.txt, and the
# profile's profile.json, profile.txt, step.hlo.txt.gz and trace.xplane.pb.gz: at most 8
# files, as the device tool returns.
# The GPU image has no TensorFlow: the model, the step and the benchmark never import it.
set -uo pipefail
out=${1:?usage: $0 OUT_DIR [CONFIG] [head:dtype[:overrides] ...]}
config=${2:-configs/paper.py:table1-roberta-large}
shift $(( $# >= 2 ? 2 : 1 ))
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(
  mlp:bfloat16                       # the headline setting, profiled
  mlp:bfloat16:rng_impl=rbg          # PRNG bits from XLA's RngBitGenerator
  transformer:bfloat16
  mlp:float32
  mlp:bfloat16:model.audio.batchnorm_one_pass=False   # what one-pass BN saves
  transformer:float32
)
budget=${BUDGET_S:-480}
# A rerun on the same warm machine (after changing one setting, say) then loads the
# unchanged settings' compiled steps, autotuning included, instead of compiling again.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/atjax-jax-cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-1}
mkdir -p "$out"
log="$out/log.txt"
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee -a "$log" | tail -2
start=$SECONDS
first=1
for s in "${settings[@]}"; do
  if (( SECONDS - start > budget )); then
    echo "skipped (budget ${budget}s spent): $s" | tee -a "$log"; continue
  fi
  IFS=: read -r head dtype extra <<<"$s"
  args=(--heads "$head" --dtypes "$dtype")
  [ -n "${extra:-}" ] && for o in ${extra//,/ }; do args+=("--config.$o"); done
  (( first )) && args+=(--profile "$out/profile")
  echo "== $s" >>"$log"
  PYTHONUNBUFFERED=1 timeout $(( budget + 60 - (SECONDS - start) )) \
    python3 -m atjax.bench train_step --config "$config" "${args[@]}" \
    ${BENCH_ARGS:-} --out "$out/bench.jsonl" 2>>"$log" | grep '^{' || { echo "failed: $s"; tail -3 "$log"; }
  first=0
done
if [ -d "$out/profile" ]; then  # flatten: the device tool returns files 2 folders deep
  for f in profile.json profile.txt step.hlo.txt.gz; do
    [ -f "$out/profile/$f" ] && mv "$out/profile/$f" "$out/$f"
  done
  [ -f "$out/profile/trace.xplane.pb" ] && gzip -c "$out/profile/trace.xplane.pb" >"$out/trace.xplane.pb.gz"
  rm -rf "$out/profile"
  cat "$out/profile.txt" 2>/dev/null | head -40
fi
python3 - "$out/bench.jsonl" <<'EOF'
import json, sys
print(f"{'setting':<58} {'step ms':>8} {'sync ms':>8} {'host ms':>8} {'clips/s':>8} {'TFLOP/s':>8} {'GiB':>6}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    name = ":".join([r["head"], r["dtype"], *r.get("overrides", [])])
    if "error" in r:
        print(f"{name:<58} error: {r['error'][:60]}"); continue
    print(f"{name:<58} {r['step_ms']:8.2f} {r['step_ms_sync'] or 0:8.2f} {r['dispatch_ms']:8.2f} "
          f"{r['clips_per_s']:8.1f} {r['achieved_tflops']:8.1f} {r['peak_memory_gib'] or 0:6.2f}")
    if "profile_error" in r:
        print(f"  (profile failed: {r['profile_error'][:100]})")
EOF
