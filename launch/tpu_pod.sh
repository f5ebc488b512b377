#!/usr/bin/env bash
# Train one config on every worker of a Cloud TPU VM pod slice (one process per host).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh CONFIG WORKDIR [--config.field=value ...]
#
# CONFIG is relative to the repository (configs/<file>.py[:presets]), as on the workers.
#
# On each worker (gcloud ... ssh --worker=all): clone or update the repository in REMOTE_DIR,
# `make .venv/.installed`, install jax[tpu], then run the same command with --multiprocess, so
# that jax.distributed.initialize() detects the pod (coordinator, process count and index).
# Environment: TPU_NAME, ZONE (required); PROJECT (gcloud's default otherwise); REPO_URL and
# BRANCH (default: this checkout's origin URL and current branch; push your changes first);
# REMOTE_DIR (default: itm_jax, under each worker's home).
# WORKDIR and the data (--config.data.data_dir) must be the same path on every worker, on a
# shared file system (e.g. Filestore NFS): every process writes the checkpoints.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
if [[ $# -lt 2 ]]; then
  sed -n '2,15p' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
repo_url=${REPO_URL:-$(git -C "$repo" remote get-url origin)}
branch=${BRANCH:-$(git -C "$repo" rev-parse --abbrev-ref HEAD)}
dir=${REMOTE_DIR:-itm_jax}

q() { printf '%q' "$1"; }
extra=""
for arg in "$@"; do extra+=" $(q "$arg")"; done

remote="set -euo pipefail
if [ -d $(q "$dir")/.git ]; then
  git -C $(q "$dir") fetch -q origin $(q "$branch")
  git -C $(q "$dir") checkout -q -B $(q "$branch") FETCH_HEAD
else
  git clone -q --branch $(q "$branch") $(q "$repo_url") $(q "$dir")
fi
cd $(q "$dir")
make -s .venv/.installed
.venv/bin/python -m pip install -q 'jax[tpu]>=0.6,<0.13'
exec .venv/bin/python -m itm_jax.main --config=$(q "$config") --workdir=$(q "$workdir") \\
  --multiprocess$extra"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
  --worker=all --command "$remote"
