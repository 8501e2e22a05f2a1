#!/bin/sh
# Regenerate docs/analyze_fixture.png from the shipped fixture LoRA and print the table of docs/results.md.
# Usage (repository root, venv active): sh docs/make_analyze_fixture.sh [--order-by auto|svd|fiedler|greedy|snake|best]
# (default: the current default ordering of `wavecompress analyze`; docs/results.md's figure uses it)
set -e
out="$(mktemp -d)/analysis"
wavecompress analyze fixtures/minilm-bbc-lora --out "$out" "$@" \
  --title "fixtures/minilm-bbc-lora (MiniLM-L6, LoRA r=8): relative error vs stored values per layer"
cp "$out/rate_distortion.png" docs/analyze_fixture.png
echo "wrote docs/analyze_fixture.png (CSV and JSON in $out)"
