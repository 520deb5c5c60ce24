#!/usr/bin/env bash
# Run one experiment on a Cloud TPU VM or pod slice, on every worker.
#
#   launch/tpu_vm.sh [--dry-run] NAME ZONE ACCELERATOR CONFIG WORKDIR [--config.x=y ...]
#   launch/tpu_vm.sh w2s us-central2-b v4-32 configs/nlp_aux.py /mnt/shared/runs/nlp
#
# Creates the TPU VM (or reuses it if it exists), copies the committed tree
# (git archive HEAD) to every worker, installs it there into a Python 3.11
# venv made by uv (the TPU images ship Python 3.10; w2s_jax needs 3.11+),
# runs the same command on all workers at once (jax.distributed finds the
# pod by itself: W2S_DISTRIBUTED=1), then copies worker 0's results back to
# ./results-NAME/. WORKDIR must be on a filesystem every worker shares (a
# Filestore/NFS mount; not gcsfuse, see README); shards of a grid share it,
# or a bucket named by --config.store=gs://... Rerunning the same line
# resumes: finished stages are reused, an interrupted stage continues.
# --dry-run (anywhere) prints every gcloud command and runs nothing.
# Env: TPU_RUNTIME_VERSION (overrides the image picked from ACCELERATOR),
# SHARD=i/n (this slice runs shard i of n of the grid, on VM NAME-shardI),
# W2S_DATA_DIR (a data mirror on the workers).
set -euo pipefail

# --dry-run is the launcher's own flag wherever it appears (main has none).
DRY=0 ARGS=()
for a in "$@"; do
  if [ "$a" = --dry-run ]; then DRY=1; else ARGS+=("$a"); fi
done
set -- ${ARGS[@]+"${ARGS[@]}"}  # the +-form: an empty array trips set -u in bash < 4.4
if [ $# -lt 5 ]; then
  sed -n '2,19p' "$0"; exit 2
fi
NAME=$1 ZONE=$2 ACCELERATOR=$3 CONFIG=$4 WORKDIR=$5
shift 5
HERE=$(cd "$(dirname "$0")/.." && pwd)

# Each TPU generation has its own runtime image (Cloud TPU's supported
# versions); the accelerator type names the generation before its '-'.
case $ACCELERATOR in
  v4-*) IMAGE=tpu-ubuntu2204-base ;;
  v5litepod-* | v5e-*) IMAGE=v2-alpha-tpuv5-lite ;;
  v5p-*) IMAGE=v2-alpha-tpuv5 ;;
  v6e-*) IMAGE=v2-alpha-tpuv6e ;;
  *) IMAGE= ;;
esac
IMAGE=${TPU_RUNTIME_VERSION:-$IMAGE}
if [ -z "$IMAGE" ]; then
  echo "error: unknown TPU generation in ACCELERATOR='$ACCELERATOR'; known: v4-*, v5litepod-*/v5e-*, v5p-*, v6e-* (or set TPU_RUNTIME_VERSION)" >&2
  exit 2
fi

# SHARD=i/n: one slice per shard, so each shard gets its own VM name; all
# shards write to the one shared WORKDIR, or to the bucket named by
# --config.store=gs://... (main claims stages there).
VM=$NAME SHARD_ARG=()
if [ -n "${SHARD:-}" ]; then
  if ! [[ $SHARD =~ ^(0|[1-9][0-9]*)/([1-9][0-9]*)$ ]] ||
     (( BASH_REMATCH[1] >= BASH_REMATCH[2] )); then
    echo "error: SHARD='$SHARD' must be i/n with 0 <= i < n" >&2; exit 2
  fi
  VM=$NAME-shard${BASH_REMATCH[1]}
  SHARD_ARG=("--shard=$SHARD")
fi

# libtpu comes with JAX's TPU extra at the version setup.py pins (read from
# the commit we ship, so the two never disagree).
JAX_PIN=$(git -C "$HERE" show HEAD:setup.py | sed -n 's/^ *"jax==\([^"]*\)".*/\1/p')
if [ -z "$JAX_PIN" ]; then
  echo "error: no \"jax==X\" pin in setup.py at HEAD" >&2; exit 1
fi
LIBTPU_LINKS=https://storage.googleapis.com/jax-releases/libtpu_releases.html

TPU=(gcloud compute tpus tpu-vm)
run() {  # the command, or under --dry-run its text, one word per argument
  if (( DRY )); then
    local a out=
    for a in "$@"; do  # single-quote only the words that need it
      case $a in
        *\'*) out+=" '$(printf %s "$a" | sed "s/'/'\\\\''/g")'" ;;
        '' | *[!A-Za-z0-9_./:=@%+,-]*) out+=" '$a'" ;;
        *) out+=" $a" ;;
      esac
    done
    echo "${out# }"
  else
    "$@"
  fi
}

CREATE=("${TPU[@]}" create "$VM" --zone "$ZONE" --accelerator-type "$ACCELERATOR"
        --version "$IMAGE")
if (( DRY )); then
  run "${TPU[@]}" describe "$VM" --zone "$ZONE"
  echo "# only if describe fails (no such VM yet):"
  run "${CREATE[@]}"
elif ! "${TPU[@]}" describe "$VM" --zone "$ZONE" >/dev/null 2>&1; then
  "${CREATE[@]}"
fi

if (( DRY )); then
  archive=w2s_jax.tar.gz
else
  archive=$(mktemp "${TMPDIR:-/tmp}/w2s_jax.XXXXXX")  # portable (no --suffix)
  trap 'rm -f "$archive"' EXIT
fi
run git -C "$HERE" archive --format=tar.gz -o "$archive" HEAD
run "${TPU[@]}" scp "$archive" "$VM:w2s_jax.tar.gz" --zone "$ZONE" --worker=all

# On each worker: uv (standalone binary, no system pip needed) makes a venv
# with its own CPython 3.11; the install refuses anything older, then puts
# jax[tpu] (which brings libtpu) and the project into that venv only, with
# gcsfs (the gcs extra) for shards that share a bucket (--config.store).
PY='~/w2s-venv/bin/python'  # expanded by the worker's shell
UV='~/.local/bin/uv'
INSTALL="set -eo pipefail; rm -rf ~/w2s_jax; mkdir ~/w2s_jax; tar -xzf ~/w2s_jax.tar.gz -C ~/w2s_jax; cd ~/w2s_jax; \
[ -x $UV ] || curl -LsSf https://astral.sh/uv/install.sh | env UV_UNMANAGED_INSTALL=\$HOME/.local/bin sh; \
[ -x $PY ] || $UV venv --python 3.11 ~/w2s-venv; \
$PY -c \"import sys; sys.exit(sys.version_info < (3, 11))\" || { echo \"error: ~/w2s-venv has \$($PY -V 2>&1); w2s_jax needs Python 3.11+\" >&2; exit 1; }; \
$UV pip install -q --python $PY \"jax[tpu]==$JAX_PIN\" -f $LIBTPU_LINKS; \
$UV pip install -q --python $PY -e '.[gcs]'"
run "${TPU[@]}" ssh "$VM" --zone "$ZONE" --worker=all --command "$INSTALL"

MAIN=(--config="$CONFIG" --workdir="$WORKDIR" "$@" ${SHARD_ARG[@]+"${SHARD_ARG[@]}"})
RUN="cd ~/w2s_jax && W2S_DISTRIBUTED=1 W2S_DATA_DIR=$(printf %q "${W2S_DATA_DIR:-}") \
$PY -m w2s_jax.main$(printf ' %q' "${MAIN[@]}")"
run "${TPU[@]}" ssh "$VM" --zone "$ZONE" --worker=all --command "$RUN"

run mkdir -p "results-$VM"
run "${TPU[@]}" scp --recurse "$VM:$WORKDIR/results" "results-$VM/" \
  --zone "$ZONE" --worker=0
if (( ! DRY )); then echo "results copied to results-$VM/"; fi
