#!/usr/bin/env bash
# Issue 45's GPU session: the install part around bench/gpu_session.py (its steps in bench/gpu_steps.py). From the project root:
#   bash bench/gpu_session.sh prepare         here, with the network: the wheels the GPU image lacks into .whl/
#                                             (../shared/tools/device_wheels.sh plus SESSION_WHEELS) and Debian's
#                                             hey into .whl/hey/ (apt-get download hey; dpkg -x)
#   bash bench/gpu_session.sh --out "$OUT"    on the GPU machine, .whl/ carried: installs the wheels into /tmp/site
#                                             (the line device_wheels.sh prints), puts .whl/hey/usr/bin on PATH, then
#                                             runs python3 bench/gpu_session.py with these arguments
# --no-install skips the wheels (a machine whose environment has them already).
set -euo pipefail
cd "$(dirname "$0")/.."
# Beyond device_wheels.sh's list: serve_load.py's HTTP client, h5py for the Keras-written weights, Keras' rich,
# the suite's xdist and hypothesis, Optuna for --mode auto, and the labels and multi-label extras the suite
# launches (cleanlab, iterstrat; with what each needs that the image may lack). jax2onnx stays out (device_wheels.sh).
SESSION_WHEELS=(httpx httpcore h11 anyio sniffio certifi idna h5py rich markdown-it-py mdurl
                pytest-xdist execnet hypothesis sortedcontainers attrs
                optuna colorlog alembic sqlalchemy mako greenlet
                cleanlab termcolor iterative-stratification)

if [[ ${1:-} == prepare ]]; then
  [[ -d .git ]] && mkdir -p .git/info   # device_wheels.sh records .whl/ in .git/info/exclude
  bash ../shared/tools/device_wheels.sh "${SESSION_WHEELS[@]}" > /dev/null
  rm -rf .whl/hey && mkdir -p .whl/hey
  (cd .whl/hey && apt-get download -q hey)
  deb=$(ls .whl/hey/hey_*.deb)
  dpkg-deb -f "$deb" Version > .whl/hey/VERSION   # hey has no --version
  dpkg -x "$deb" .whl/hey && rm "$deb"
  du -sh .whl >&2
  echo "ready: carry .whl and run  bash bench/gpu_session.sh --out \$OUT"
  exit 0
fi

install=1
args=()
for arg in "$@"; do
  if [[ $arg == --no-install ]]; then install=0; else args+=("$arg"); fi
done
if (( install )) && compgen -G '.whl/*.whl' > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
if [[ -x .whl/hey/usr/bin/hey ]]; then export PATH="$PWD/.whl/hey/usr/bin:$PATH"; fi
exec python3 bench/gpu_session.py "${args[@]}"
