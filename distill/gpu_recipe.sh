#!/usr/bin/env bash
# The GPU recipe behind the shipped draft (README, "How the built-in draft was made").
# One CUDA GPU: the target's own continuations of varied prompts (on-policy data), then a
# 2-layer and a 4-layer draft distilled side by side from the target's logits on those and on
# the installed packages' sources. Each draft ends with its agreement on 20 held-out HumanEval
# prompts; `ouroboros eval-draft` and `ouroboros bench` then pick the one to ship.
#   usage: distill/gpu_recipe.sh OUT_DIR [DATA_MINUTES] [TRAIN_MINUTES] [MORE_MINUTES]
# MORE_MINUTES > 0 then resumes the 4-layer draft alone for that long at half the learning rate
# (the shipped draft: 1.5, 4.0 and 2.9 minutes on one H100).
# OUROBOROS may name another way to run the CLI (e.g. "python3 -m ouroboros").
set -euo pipefail
out=${1:?usage: distill/gpu_recipe.sh OUT_DIR [DATA_MINUTES] [TRAIN_MINUTES] [MORE_MINUTES]}
data_minutes=${2:-1.5}
train_minutes=${3:-4.0}
more_minutes=${4:-0}
cli=${OUROBOROS:-ouroboros}
device=${DEVICE:-cuda:0}
mkdir -p "$out"

$cli draft-data --device "$device" --out "$out/onpolicy" --minutes "$data_minutes" --batch-size "${DATA_BATCH:-512}" \
    --max-new-tokens 128 --seed 7 --threads 4 > "$out/draft-data.log" 2>&1
tr '\r' '\n' < "$out/draft-data.log" | tail -2

train() {  # layers name
    $cli train-draft --device "$device" --out "$out/$2" --layers "$1" --data "$out/onpolicy" "${extra_data[@]}" \
        --data-repeat 8 --minutes "$train_minutes" --batch-size 32 --seq-len 512 --lr 1e-3 --schedule cosine \
        --threads 4 --checkpoint-every-minutes 2 > "$out/$2.log" 2>&1
}
extra_data=(${EXTRA_DATA:-})
train 0,1 draft2 & first=$!
train 0,1,2,3 draft4 & second=$!
status=0
wait $first || status=$?
wait $second || status=$?
for name in draft2 draft4; do
    tr '\r' '\n' < "$out/$name.log" | grep -E 'agreement|tokens|reduced|training data' | tail -12
done
[ $status -eq 0 ] || exit $status
if [ "$more_minutes" != 0 ]; then  # the same flags (a resume checks them), half the learning rate
    $cli train-draft --device "$device" --out "$out/draft4" --layers 0,1,2,3 --data "$out/onpolicy" \
        "${extra_data[@]}" --data-repeat 8 --minutes "$more_minutes" --batch-size 32 --seq-len 512 --lr 5e-4 \
        --schedule cosine --threads 4 --checkpoint-every-minutes 1 --resume > "$out/draft4-more.log" 2>&1
    tr '\r' '\n' < "$out/draft4-more.log" | grep -E '^agreement|^tokens per round' | tail -2
fi
