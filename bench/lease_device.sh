#!/bin/bash
# A GPU lease in device calls, from the repository root of a lent machine without network (nbs/11a_lease.ipynb):
#   bash bench/lease_device.sh stash
#       installs the wheels carried in .whl/ (bench/gpu_wheels.txt), if any, and stashes the pieces of a dataset archive
#       carried in .lease/ (saam_nb.lease.split_file) under /dev/shm, which the machine keeps while it is warm (about
#       30 s after a call); one such call per piece that does not fit the last call
#   bash bench/lease_device.sh check [gpu_check.py flags]
#       runs bench/gpu_check.py with the stashed wheels
#   bash bench/lease_device.sh train SECONDS --runs model:dataset:seed,... [saam_lease flags]
#       joins the archive from the stashed pieces and those carried in .lease/, checks its sha256 and trains with
#       saam_lease until shortly before SECONDS have passed; records, checkpoints and logs come back packed in $OUT
set -u
start=$(date +%s)
site=/dev/shm/saam_lease/site
mode=${1:-}; shift
export PYTHONPATH=$site:$PWD PYTHONUNBUFFERED=1 SAAM_CACHE=/dev/shm/saam_cache
if [ "$mode" != stash ] && [ ! -d $site ]; then
  echo "no $site: the machine of the stash call was given back since; run the stash calls again, then this one at once"; exit 1
fi
case $mode in
stash)
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --disable-pip-version-check --target $site .whl/*.whl || exit 1
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  for manifest in .lease/*.pieces.json; do
    python3 -c "import sys; from saam_nb.lease import stash_pieces; print('stashed', stash_pieces(sys.argv[1]))" "$manifest" || exit 1
  done
  ;;
check)
  python3 bench/gpu_check.py --out "${OUT:-bench/results}" "$@"
  ;;
train)
  seconds=$1; shift
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 60 > "${OUT:-/tmp}/nvidia_smi.csv" &
  monitor=$!
  python3 -m saam_nb.lease --seconds $(( seconds - ($(date +%s) - start) )) --pieces .lease/*.pieces.json --data-dir /dev/shm/saam_data \
    --out "${OUT:-lease_out}" "$@"
  status=$?
  kill $monitor  # nvidia-smi's loop, which holds no CUDA context
  exit $status
  ;;
*) echo "usage: bash bench/lease_device.sh stash | check [gpu_check flags] | train SECONDS --runs ... [saam_lease flags]"; exit 2 ;;
esac
