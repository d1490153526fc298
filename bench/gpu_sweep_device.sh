#!/bin/bash
# Train unfinished runs of a sweep on one lent GPU machine (no network) for a fixed time, and bring back what it did:
#   bash bench/gpu_sweep_device.sh SECONDS SLOTS RUNS
# from the repository root, where RUNS is 'model:seed,model:seed,...' (in priority order) on cifar10-jpeg at 30 epochs,
# with the wheels of bench/gpu_wheels.txt in .whl/, the JPEG archive in .devdata/ and the unfinished runs' checkpoints
# in nbs/records/checkpoints/ (all git-ignored: the device tool must carry them). SLOTS processes share the GPU,
# under CUDA MPS where the machine has it. After SECONDS the runs are stopped (each keeps its last epoch's checkpoint) and
# the store (records, checkpoints, logs) comes back in $OUT as records.tar.NN pieces of at most 15 MiB.
set -u
seconds=$1; slots=$2; runs=$3; start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --disable-pip-version-check --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 SAAM_CACHE=/tmp/saam_cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "from saam_nb.data import load_dataset; load_dataset('cifar10-jpeg', '.devdata')" || exit 1  # decode once, not once per process
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
if nvidia-cuda-mps-control -d 2>/dev/null && timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then mps=1
else echo quit | nvidia-cuda-mps-control 2>/dev/null; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; mps=0; fi
echo "setup $(( $(date +%s) - start )) s; MPS $mps"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 60 &
left=$(( seconds - ($(date +%s) - start) ))
timeout -s KILL $left python3 - "$slots" "$runs" <<'EOF'
import sys
from saam_nb.sweep import run_sweep
slots, runs = int(sys.argv[1]), [r.split(':') for r in sys.argv[2].split(',')]
runs = [dict(model=model, dataset='cifar10-jpeg', seed=int(seed)) for model, seed in runs]
print(run_sweep(runs, epochs=30, results='nbs/records', devices=['0'] * slots, data_dir='.devdata'))
EOF
echo "sweep ended after $(( $(date +%s) - start )) s"
pkill -9 -f 'saam_nb[.]train'; kill %1 2>/dev/null; sleep 1
[ $mps = 1 ] && echo quit | nvidia-cuda-mps-control
ls -la nbs/records/*.json nbs/records/checkpoints
tar cf - -C nbs records/checkpoints records/logs $(cd nbs && ls records/*.json) | split -b 15m -d - "${OUT:-/tmp}/records.tar."
