#!/usr/bin/env bash
# Pretrain on a Cloud TPU pod slice: installs xlm_jax on every worker and starts the run.
#   TPU_NAME=my-v4-64 ZONE=us-central2-b BUCKET=gs://my-bucket CORPUS=gs://my-bucket/cc100 \
#     bash launch/tpu_pod.sh configs/xlmr_base.py
set -euo pipefail
config=${1:?usage: tpu_pod.sh CONFIG [--config.x=y ...]}; shift
: "${TPU_NAME:?}" "${ZONE:?}" "${BUCKET:?}" "${CORPUS:?}"
run=${RUN:-$(basename "$config" .py)}

gcloud compute tpus tpu-vm scp --recurse --worker=all --zone="$ZONE" . "$TPU_NAME":~/xlm_jax
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone="$ZONE" --command="
  cd ~/xlm_jax && pip install -q -e . 'jax[tpu]' &&
  python -m xlm_jax.main --config=$config --workdir=$BUCKET/$run --distributed \
      --config.data.corpus_dir=$CORPUS $*"
