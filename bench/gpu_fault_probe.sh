#!/usr/bin/env bash
# Issue 57's GPU fault (2026-11-26, H200): CUDA_ERROR_ILLEGAL_INSTRUCTION in `--mode serve`'s warm-up of a footprint
# exp4 workdir and in a loop-axis sweep, while the vmap sweep and the main job ran. Each probe below is its own
# process with its own JAX cache setting and XLA flags, so the log says which setting the fault follows.
#   bash bench/gpu_fault_probe.sh OUT      (on the GPU machine, after the wheels' install line)
set -u
out=${1:?OUT folder}; mkdir -p "$out"; log="$out/probe.log"
work=$(mktemp -d); export FPCLASS_CACHE=$work/data TMPDIR=$work
serve_starts() {  # $1: label; the rest: env assignments. Prints whether a server became ready within 90 s.
  local label=$1; shift
  ( env "$@" timeout 90 python3 launch.py --workdir "$work/fp" --mode serve --config.serve.port=0 \
      --config.serve.workers=1 > "$work/serve.out" 2> "$work/serve.err" & pid=$!
    for _ in $(seq 90); do grep -q 'at http' "$work/serve.out" && break; kill -0 $pid 2>/dev/null || break; sleep 1; done
    if grep -q 'at http' "$work/serve.out"; then echo "$label: serve READY: $(head -c 300 "$work/serve.out")"
    else echo "$label: serve FAILED: $(grep -m2 -o 'CUDA_ERROR[A-Z_]*\|CUDNN_STATUS[A-Z_]*\|error: .\{0,160\}' "$work/serve.err" | tr '\n' ' ')"; fi
    pkill -P $pid 2>/dev/null; kill $pid 2>/dev/null; wait $pid 2>/dev/null ) | tee -a "$log"
}
sweep_runs() {  # $1: label; the rest: env assignments. The loop-axis sweep of 15 members, 2 epochs.
  local label=$1; shift
  env "$@" timeout 100 python3 launch.py --config configs/footprint_sweep.py:exp4 --mode sweep --config.sweep.model_axis=loop \
    --config.train.epochs=2 --workdir "$work/sweep-$label" --config.explain.after_training=False \
    > "$work/sweep.out" 2>&1
  echo "$label: loop sweep exit $?: $(grep -m2 -o 'CUDA_ERROR[A-Z_]*\|CUDNN_STATUS[A-Z_]*\|[0-9]* models in 1 variants, [0-9]*s' "$work/sweep.out" | tr '\n' ' ')" | tee -a "$log"
}
python3 launch.py --config configs/footprint.py:exp4 --config.train.epochs=2 --workdir "$work/fp" \
  --config.explain.after_training=False > "$work/train.out" 2>&1; echo "train (cache $work/jax): exit $?" | tee -a "$log"
serve_starts 'no persistent cache' FPCLASS_JAX_CACHE=0
serve_starts 'no cache, autotune 0' FPCLASS_JAX_CACHE=0 XLA_FLAGS=--xla_gpu_autotune_level=0
serve_starts 'fresh cache, 1st' FPCLASS_JAX_CACHE=$work/jax2
serve_starts 'same cache, 2nd' FPCLASS_JAX_CACHE=$work/jax2
sweep_runs nocache FPCLASS_JAX_CACHE=0
sweep_runs autotune0 FPCLASS_JAX_CACHE=0 XLA_FLAGS=--xla_gpu_autotune_level=0
nvidia-smi --query-gpu=driver_version --format=csv,noheader | tee -a "$log"
python3 -c 'import jax, jaxlib; print("jax", jax.__version__, jaxlib.__version__)' | tee -a "$log"
