#!/usr/bin/env bash
# Train one config on this machine (a laptop CPU, one GPU host or one TPU VM).
#
#   launch/local.sh CONFIG WORKDIR [--config.field=value ...]
#   launch/local.sh configs/imc_f30k.py:smoke /tmp/imc_smoke
#   launch/local.sh configs/vse_f30k.py:loss=mh workdir/vsepp_f30k --config.data.data_dir=$HOME/tfds
#
# Creates .venv with `make .venv/.installed` if it is missing (after a pyproject.toml change,
# run `make .venv/.installed` to update it).
# JAX_EXTRA=cuda12 (or tpu) also installs the accelerator build of jax into the venv.
# Re-running with the same WORKDIR resumes from its latest checkpoint.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $# -lt 2 ]]; then
  sed -n '2,11p' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
# Config paths may be given relative to the repository as well as to the current directory.
if [[ ! -e ${config%%:*} && -e $repo/${config%%:*} ]]; then
  config=$repo/$config
fi

if [[ ! -f $repo/.venv/.installed ]]; then
  make -C "$repo" .venv/.installed
fi
if [[ -n ${JAX_EXTRA:-} ]]; then
  "$repo/.venv/bin/python" -m pip install -q "jax[${JAX_EXTRA}]>=0.6,<0.13"
fi
exec "$repo/.venv/bin/python" -m itm_jax.main --config="$config" --workdir="$workdir" "$@"
