#!/usr/bin/env bash
# The GPU extra on a machine without a GPU (issue 29): JAX's CUDA plugin installed, no /dev/nvidia*.
# Installs the plugin's two wheels into a throwaway venv layered over the current environment (a .pth file),
# then runs `import jax; jax.devices()` (JAX alone: expected to crash in the plugin) and the README's main job at
# quick size through launch.py (fpclass: expected to run on the CPU with a one-line warning).
# Usage, from the project root with the project's venv active: bash bench/gpu_extra_without_gpu.sh [OUT_DIR]
set -u
out=${1:-/tmp/fpclass-gpu-extra}
jax_version=$(python -c 'import jax; print(jax.__version__)')
mkdir -p "$out/wheels"
python -m pip download -q --no-deps -d "$out/wheels" "jax-cuda13-plugin==$jax_version" "jax-cuda13-pjrt==$jax_version"
python -m venv "$out/venv"
site_here=$(python -c 'import site; print(site.getsitepackages()[0])')
site_there=$("$out/venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
echo "$site_here" > "$site_there/project_env.pth"
"$out/venv/bin/python" -m pip install -q --no-deps "$out"/wheels/*.whl
ls /dev/nvidia* 2>/dev/null && echo "this machine has a GPU device node: the check needs one without" && exit 2
"$out/venv/bin/python" -c 'import jax; print(jax.devices())' > "$out/jax_alone.log" 2>&1
echo "JAX alone: exit status $? (139 = segmentation fault)"
rm -rf "$out/workdir"
"$out/venv/bin/python" launch.py --config configs/footprint.py:quick --workdir "$out/workdir" > "$out/fpclass.log" 2>&1
status=$?
echo "fpclass main job (quick): exit status $status"
grep -m1 "warning: JAX's GPU plugin" "$out/fpclass.log"
grep -m1 "val accuracy" "$out/fpclass.log"
exit $status
