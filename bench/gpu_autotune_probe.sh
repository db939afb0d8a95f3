#!/usr/bin/env bash
# Issue 57: where a GPU job's first epoch goes. Each case is one cold run in its own process: the Inception mixed7
# recipe's fpclass arm (bench/keras_recipes.py's worker, 3 epochs: epoch 1 against the steady epochs, and the
# compiles JAX logged) or the footprint main job cold and warm (bench/footprint_end_to_end.py).
#   bash bench/gpu_autotune_probe.sh OUT [CASE ...]    (on the GPU machine, after the wheels' install line)
# Cases (default: all): inception-default, inception-level1, inception-level0 (XLA's autotune level: 4 by
# default, every algorithm timed and its output checked; 1 timed, not checked; 0 none, cuDNN's heuristic pick),
# inception-eval32 (evaluation at the training batch, 32, instead of config.eval.batch_size's 256, capped at the
# 64 validation images: the same convolution shapes as the train step), footprint-default (the baseline of the
# footprint cases in the same call), footprint-level0, footprint-level1, footprint-eval32. OUT gets probe.log
# (each run's result and its slowest compiles) and fp-CASE.json.
# PROBE_SIZES (keras_recipes.py arguments, e.g. '--train 8 --val 8 --inception-size 75') shrinks a CPU check.
set -u
out=${1:?OUT folder}; shift; mkdir -p "$out"; log="$out/probe.log"
cases=("$@"); (( ${#cases[@]} )) || cases=(inception-default inception-level1 inception-level0 inception-eval32
                                         footprint-level0 footprint-level1 footprint-eval32)
read -r -a sizes <<< "${PROBE_SIZES:-}"
work=$(mktemp -d); export FPCLASS_CACHE=$work/data
slowest_compiles() {  # JAX_LOG_COMPILES lines of one stderr file: XLA compiles (count, seconds, the five slowest), tracing
  grep -o 'Finished tracing .* in [0-9.e+-]* sec' "$1" | awk '{t+=$(NF-1)} END {printf "  tracing %.1f s\n", t}'
  grep -o 'Finished XLA compilation of .* in [0-9.e+-]* sec' "$1" | awk '{print $(NF-1), $5}' | sort -gr \
    | awk '{total+=$1; n+=1; if (n<=5) top=top "\n    " $0} END {printf "  %d XLA compilations, %.1f s%s\n", n, total, top}'
}
inception() {  # $1: case; the rest: keras_recipes.py arguments
  local name=$1; shift
  JAX_LOG_COMPILES=1 timeout 120 python3 bench/keras_recipes.py --worker fpclass --recipe inception_mixed7 \
    --out "$work/keras" --epochs 3 "${sizes[@]}" "$@" > "$work/inception.out" 2> "$work/inception.err"
  echo "$name: exit $? $(grep -m1 '^RESULT' "$work/inception.out" | cut -c1-400)" | tee -a "$log"
  slowest_compiles "$work/inception.err" | tee -a "$log"
}
footprint() {  # $1: case; the rest: footprint_end_to_end.py arguments
  local name=$1; shift
  timeout 150 python3 bench/footprint_end_to_end.py --experiment exp4 --epochs 0 --no-torch \
    --json "$out/fp-$name.json" "$@" > "$work/fp.out" 2>&1
  echo "$name: exit $?" | tee -a "$log"; grep -A1 'fpclass launch.py' "$work/fp.out" | tee -a "$log"
}
for case in "${cases[@]}"; do
  case $case in
    inception-default) inception "$case" ;;
    inception-level[01]) XLA_FLAGS=--xla_gpu_autotune_level=${case#inception-level} inception "$case" ;;
    inception-eval32) inception "$case" --set eval.batch_size=32 ;;
    footprint-default) footprint "$case" ;;
    footprint-level[01]) XLA_FLAGS=--xla_gpu_autotune_level=${case#footprint-level} footprint "$case" ;;
    footprint-eval32) footprint "$case" --set eval.batch_size=32 ;;
    *) echo "unknown case $case" | tee -a "$log" ;;
  esac
done
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -1 | tee -a "$log"
