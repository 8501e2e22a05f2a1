#!/usr/bin/env bash
# Every GPU check and GPU benchmark in one run (under 8 minutes on one H200), ending with ONE
# summary table: correctness lines (pass/fail), kernel/copy ratios, convert ms per 4096x4096
# layer, fine-tune seconds per method. Each step is bounded by `timeout`; a failing step does not
# stop the others, the summary reports it. Nothing is installed from the network.
#
#     bash benchmarks/gpu_suite.sh            # logs and summary under ${OUT:-/tmp/gpu_suite}
#
# Without CUDA every CUDA step reports "skip" and the script ends in well under a minute.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-}"
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$PYTHONPATH; fi; [ -d .carry ] && export PYTHONPATH=$PWD/.carry:$PYTHONPATH; export PYTHONPATH=$PWD:$PYTHONPATH
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RESULTS="${OUT:-/tmp/gpu_suite}"
mkdir -p "$RESULTS"
ROWS="$RESULTS/rows.tsv"
: > "$ROWS"
SUITE_START=$(date +%s)
SUITE_BUDGET=${SUITE_BUDGET:-450}  # seconds for all steps together (the goal is under 8 minutes)

if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then HAVE_CUDA=1; else HAVE_CUDA=0; fi
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  $PY -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} > "$RESULTS/machine.txt" 2>&1
cat "$RESULTS/machine.txt"

SEP=$'\x1f'  # field separator of rows.tsv (not whitespace: empty fields survive `read`)
row() { printf "%s${SEP}%s${SEP}%s${SEP}%s${SEP}%s\n" "$1" "$2" "$3" "$4" "$5" >> "$ROWS"; }  # step, metric, value, goal, status

# step NAME SECONDS KIND CMD...: run CMD under `timeout`, log to NAME.log. KIND "test": the step's
# pass/fail is a row; KIND "bench": rows come from the SUMMARY|metric|value|goal|status lines it prints.
step() {
  local name=$1 limit=$2 kind=$3; shift 3
  local log="$RESULTS/$name.log" start rc seconds
  if [ "$HAVE_CUDA" = 0 ] && [ "${CPU_OK:-0}" = 0 ]; then
    echo "== $name: skipped (no CUDA on this machine)"; row "$name" "$name" "skipped (no CUDA)" "" skip; return
  fi
  local left=$(( SUITE_BUDGET - ($(date +%s) - SUITE_START) ))
  if [ "$left" -lt 20 ]; then echo "== $name: not run (suite time budget spent)"; row "$name" "$name" "not run: ${SUITE_BUDGET}s budget spent" "" fail; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  seconds=$(( $(date +%s) - start ))
  tail -n 3 "$log" | sed 's/^/   /'
  if [ "$kind" = test ]; then
    local last; last=$(grep -E '(passed|failed|skipped|error|no tests ran)' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//')
    if [ $rc = 0 ] && ! echo "$last" | grep -q passed; then row "$name" "$name" "${last:-ok} (${seconds}s)" "all pass" skip
    elif [ $rc = 0 ]; then row "$name" "$name" "${last:-ok} (${seconds}s)" "all pass" pass
    elif [ $rc = 124 ] || [ $rc = 137 ]; then row "$name" "$name" "timed out after ${limit}s" "all pass" fail
    else row "$name" "$name" "${last:-exit $rc} (${seconds}s)" "all pass" fail; fi
  else
    grep '^SUMMARY|' "$log" | while IFS='|' read -r _ metric value goal status; do row "$name" "$metric" "$value" "$goal" "$status"; done
    if [ $rc = 124 ] || [ $rc = 137 ]; then row "$name" "$name" "timed out after ${limit}s" "" fail
    elif [ $rc != 0 ]; then row "$name" "$name" "exit $rc (${seconds}s), see $name.log" "" fail
    elif ! grep -q '^SUMMARY|' "$log"; then row "$name" "$name" "ok (${seconds}s)" "" pass; fi
  fi
}

# 1. Correctness: CUDA against CPU for every format (reconstruct, PEFT forward, merge, fine-tune
#    steps) and the Triton kernels against the torch reference.
CPU_OK=1 step cuda-tests 150 test $PY -m pytest -x -m cuda -p no:cacheprovider tests
# 2. The gradient-checkpointing path trains exactly like the merged-weight path (on CUDA here).
step checkpointing-test 60 test $PY -m pytest -x -p no:cacheprovider tests/test_finetune.py -k gradient_checkpointing
# 3. The kernel tests (backend choice, interpreter runs).
CPU_OK=1 step kernel-tests 60 test $PY -m pytest -x -p no:cacheprovider tests/test_kernels.py
# 4. convert on CUDA reports the CPU's errors on the fixture.
step convert-cuda-vs-cpu 60 bench $PY - <<'EOF'
import wavecompress as wc
for method in ("waveft", "wara", "lora"):
    cpu = wc.compress("fixtures/minilm-bbc-lora", budget=3000, method=method).report.relative_error
    gpu = wc.compress("fixtures/minilm-bbc-lora", budget=3000, method=method, device="cuda").report.relative_error
    ok = abs(gpu - cpu) <= 2e-3 * cpu
    print(f"{method}: relative error CPU {cpu:.5f}, CUDA {gpu:.5f}")
    print(f"SUMMARY|convert --device cuda = CPU error, {method} @3000|{gpu:.4f} vs {cpu:.4f}|within 0.2%|{'pass' if ok else 'fail'}")
EOF
# 5. Kernel/copy ratios at a Llama-70B MLP shape.
step kernel-bench 45 bench $PY benchmarks/kernel_synthesis.py --repeats 10
# 6. Convert per layer: each method against its floor, the whole convert per 4096x4096 layer.
step convert-bench 60 bench $PY benchmarks/gpu_throughput.py --quick
# 7. Fine-tune seconds per method (300 steps on the fixture).
step finetune-bench 120 bench $PY benchmarks/finetune_speed.py

TOTAL=$(( $(date +%s) - SUITE_START ))
{
  echo "# gpu_suite summary"
  echo
  sed 's/^/    /' "$RESULTS/machine.txt"
  echo
  echo "| step | check / metric | value | goal | status |"
  echo "|---|---|---:|---|---|"
  while IFS=$SEP read -r s m v g st; do echo "| $s | $m | $v | $g | $st |"; done < "$ROWS"
  echo
  count() { awk -F"$SEP" -v s="$1" '$5 == s' "$ROWS" | wc -l; }
  echo "total ${TOTAL}s; failed: $(count fail), passed: $(count pass), skipped: $(count skip); logs in $RESULTS"
} > "$RESULTS/summary.md"
echo
cat "$RESULTS/summary.md"
