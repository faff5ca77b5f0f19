#!/usr/bin/env bash
# The chat fine-tune behind the shipped draft (docs/models.md, "The built-in draft"): the target
# answers varied chat requests (on-policy data), then the shipped draft is fine-tuned on those
# answers mixed with the installed packages' sources, its output vocabulary chosen afresh from
# that mix. It ends with the draft's agreement on HumanEval and on bench/prompts/chat.jsonl at
# every checkpoint (OUT/draft/curve.jsonl). Runs on a CPU (the shipped draft: a 2-core CPU,
# 35 + 60 minutes) or a GPU (DEVICE=cuda:0, far shorter budgets do).
#   usage: distill/chat_recipe.sh OUT_DIR [DATA_MINUTES] [TRAIN_MINUTES]
# Run again, it continues the training from its last checkpoint for another TRAIN_MINUTES.
# OUROBOROS may name another way to run the CLI (e.g. "python3 -m ouroboros").
set -euo pipefail
out=${1:?usage: distill/chat_recipe.sh OUT_DIR [DATA_MINUTES] [TRAIN_MINUTES]}
data_minutes=${2:-35}
train_minutes=${3:-60}
cli=${OUROBOROS:-ouroboros}
device=${DEVICE:-cpu}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"

if [ ! -e "$out/data.done" ]; then
    # bfloat16 writes the target's text about twice as fast on a CPU with AVX512-BF16; the
    # training below takes the target's float32 logits on that text all the same
    $cli draft-data --device "$device" --dtype bfloat16 --out "$out/chat" --minutes "$data_minutes" \
        --batch-size 64 --max-new-tokens 128 --kinds chat=0.8,code=0.15,prose=0.05 --seed 12 \
        --threads "$threads" > "$out/draft-data.log" 2>&1
    touch "$out/data.done"
fi
tr '\r' '\n' < "$out/draft-data.log" | tail -1

resume=()
[ -e "$out/draft/checkpoint.pt" ] && resume=(--resume)
$cli train-draft --device "$device" --out "$out/draft" --init smollm2-135m-draft --layers 0,1,2,3 \
    --vocab-size 8192 --revocab --data "$out/chat" --data-repeat 100 --minutes "$train_minutes" \
    --batch-size 8 --seq-len 512 --lr 5e-4 --schedule cosine --precision bf16 --threads "$threads" \
    --checkpoint-every-minutes 10 --eval-prompts 20 --eval-file "$here/bench/prompts/chat.jsonl" \
    --eval-new-tokens 128 "${resume[@]}" > "$out/train-draft.log" 2>&1
cat "$out/draft/curve.jsonl"
