#!/bin/sh
# The GPU check in one command on a fresh GPU machine without network: `bash bench/gpu_check_device.sh [gpu_check flags]`
# from the repository root, with the wheels of bench/gpu_wheels.txt in .whl/ (git ignores it: the device tool must carry it).
# The record goes to $OUT (bench/results without it). The sweep's processes share the GPU under CUDA MPS, which
# gpu_check.py starts (nvidia-cuda-mps-control, pipe and logs in a temporary folder) before this process uses the GPU and quits after.
set -e
python3 -m pip install -q --no-deps --no-index --upgrade --disable-pip-version-check --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import saam_nb.train"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 bench/gpu_check.py --out "${OUT:-bench/results}" "$@"
