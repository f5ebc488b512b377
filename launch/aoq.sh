#!/usr/bin/env bash
# AOQ's two rounds in one command: round 1 (online triplet), offline mining with the round-1
# model, round 2 (a fresh model on the mined negatives), each ending with the test evaluation.
#
#   launch/aoq.sh [ROUND1_CONFIG ROUND2_CONFIG WORKDIR] [--config.field=value ...]
#   launch/aoq.sh          # built-in data: VSRN (configs/default.py:model=vsrn), then :loss=aoq
#   launch/aoq.sh configs/aoq_round1_f30k.py configs/aoq_round2_f30k.py workdir/aoq_f30k \
#       --config.data.data_dir=data/f30k_precomp
#
# WORKDIR/round1, WORKDIR/round1/mining and WORKDIR/round2; re-running resumes each step.
# Overrides apply to all three steps. On a pod or SLURM, run it through launch/tpu_pod.sh or
# srun, adding --multiprocess, as for itm-train (docs/launching.md).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
round1=configs/default.py:model=vsrn round2=configs/default.py:model=vsrn,loss=aoq
workdir=workdir/aoq
if [[ $# -ge 3 && $1 != --* ]]; then
  round1=$1 round2=$2 workdir=$3
  shift 3
elif [[ $# -ge 1 && $1 != --* ]]; then
  sed -n '2,12p' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
if [[ ! -f $repo/.venv/.installed ]]; then
  make -C "$repo" .venv/.installed
fi
py=$repo/.venv/bin/python
cd "$repo"

"$py" -m itm_jax.main --config="$round1" --workdir="$workdir/round1" "$@"
"$py" -m itm_jax.cli.mine --config="$round1" --workdir="$workdir/round1" "$@"
"$py" -m itm_jax.main --config="$round2" --workdir="$workdir/round2" \
  --config.aoq.mining_dir="$workdir/round1/mining" "$@"
for round in round1 round2; do  # the best checkpoints' validation metrics, side by side
  echo "$round $("$py" -m itm_jax.cli.eval --workdir="$workdir/$round" --split=val)"
done
