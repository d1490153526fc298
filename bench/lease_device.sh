#!/bin/bash
# A GPU lease in two device calls, from the repository root of a lent machine without network (nbs/11a_lease.ipynb):
#   call 1: bash bench/lease_device.sh stash [gpu_check.py flags]
#           carry .whl (bench/gpu_wheels.txt) and .lease (the first piece of the dataset archive and its manifest, from
#           saam_nb.lease.split_file): installs the wheels and stashes the piece under /dev/shm, which the machine keeps
#           while it is warm (about 30 s after a call), then runs bench/gpu_check.py
#   call 2, at once: bash bench/lease_device.sh train SECONDS --runs model:dataset:seed,... [saam_lease flags]
#           carry .lease (the other piece and the manifest): joins the archive, checks its sha256 and trains with
#           saam_lease until shortly before SECONDS have passed; records, checkpoints and logs come back packed in $OUT
set -u
start=$(date +%s)
site=/dev/shm/saam_lease/site
mode=$1; shift
export PYTHONPATH=$site:$PWD PYTHONUNBUFFERED=1 SAAM_CACHE=/dev/shm/saam_cache
case $mode in
stash)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --disable-pip-version-check --target $site .whl/*.whl || exit 1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  for manifest in .lease/*.pieces.json; do
    python3 -c "import sys; from saam_nb.lease import stash_pieces; print('stashed', stash_pieces(sys.argv[1]))" "$manifest" || exit 1
  done
  python3 bench/gpu_check.py --out "${OUT:-bench/results}" "$@"
  ;;
train)
  [ -d $site ] || { echo "no $site: the machine of the stash call was given back since; run the stash call again, then this one at once"; exit 1; }
  seconds=$1; shift
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 60 > "${OUT:-/tmp}/nvidia_smi.csv" &
  monitor=$!
  python3 -m saam_nb.lease --seconds $(( seconds - ($(date +%s) - start) )) --pieces .lease/*.pieces.json --data-dir /dev/shm/saam_data \
    --out "${OUT:-lease_out}" "$@"
  status=$?
  kill $monitor  # nvidia-smi's loop, which holds no CUDA context
  exit $status
  ;;
*) echo "usage: bash bench/lease_device.sh stash [gpu_check flags] | train SECONDS --runs ... [saam_lease flags]"; exit 2 ;;
esac
