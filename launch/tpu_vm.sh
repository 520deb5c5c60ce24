#!/usr/bin/env bash
# Run one experiment on a Cloud TPU VM or pod slice, on every worker.
#
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR CONFIG WORKDIR [--config.x=y ...]
#   launch/tpu_vm.sh w2s us-central2-b v4-32 configs/nlp_aux.py /mnt/shared/runs/nlp
#
# Creates the TPU VM (or reuses it if it exists), copies the committed tree
# (git archive HEAD) to every worker, installs it there, runs the same
# command on all workers at once (jax.distributed finds the pod by itself:
# W2S_DISTRIBUTED=1), then copies worker 0's results back to
# ./results-NAME/. WORKDIR must be on a filesystem every worker shares (a
# Filestore/NFS mount; not gcsfuse, see README): process 0 writes the stages and results,
# the others read them, and orbax writes multi-host checkpoints there.
# Rerunning the same line resumes: finished stages are reused and an
# interrupted stage continues from its last checkpoint.
# Env: TPU_VERSION (runtime image), W2S_DATA_DIR (a mirror on the workers).
set -euo pipefail
if [ $# -lt 5 ]; then
  sed -n '2,19p' "$0"; exit 2
fi
NAME=$1 ZONE=$2 ACCELERATOR=$3 CONFIG=$4 WORKDIR=$5
shift 5
EXTRA=$(printf ' %q' "$@")
VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
TPU=(gcloud compute tpus tpu-vm)

if ! "${TPU[@]}" describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
  "${TPU[@]}" create "$NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" \
    --version "$VERSION"
fi

archive=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$archive"' EXIT
git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
"${TPU[@]}" scp "$archive" "$NAME:w2s_jax.tar.gz" --zone "$ZONE" --worker=all
"${TPU[@]}" ssh "$NAME" --zone "$ZONE" --worker=all --command "
  set -e; rm -rf ~/w2s_jax && mkdir ~/w2s_jax && tar -xzf ~/w2s_jax.tar.gz -C ~/w2s_jax
  cd ~/w2s_jax && pip install -q 'jax[tpu]==0.10.2' && pip install -q -e ."
"${TPU[@]}" ssh "$NAME" --zone "$ZONE" --worker=all --command "
  cd ~/w2s_jax && W2S_DISTRIBUTED=1 W2S_DATA_DIR='${W2S_DATA_DIR:-}' \
  python -m w2s_jax.main --config='$CONFIG' --workdir='$WORKDIR' $EXTRA"
mkdir -p "results-$NAME"
"${TPU[@]}" scp --recurse "$NAME:$WORKDIR/results" "results-$NAME/" \
  --zone "$ZONE" --worker=0
echo "results copied to results-$NAME/"
