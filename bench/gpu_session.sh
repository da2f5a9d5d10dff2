#!/usr/bin/env bash
# One GPU session, prepared: every GPU check of codegpt in two calls on a lent machine.
#
#   make gpu-carry                       # here, once: demo shards, vocabulary, wheels
#   bash bench/gpu_session.sh 1          # there: the GPU tests, sampling, the memory planner
#   bash bench/gpu_session.sh 2          # there: the 124M training race, the server
#   bash bench/gpu_session.sh --dry-run 1   # here, on the CPU: the same steps on tiny shapes
#
# A lent machine starts bare, with its own python3 (3.12, a CUDA torch) and no
# .venv; it gets the working tree plus what the call carries: data/shards/demo,
# model/assets/gpt2.tiktoken and .whl (the server's packages, which its image
# lacks). Only $OUT comes back (at most 8 files), so each part writes
# session.log, its tables, summary.md and figures.json there, no more.
# Each step runs under its own `timeout`, so one that hangs or runs out of
# memory costs its own minutes, not the session: the next step still runs, and
# the summary says which failed. The timeouts of a part add up to at most 8.5
# minutes, under the 10 a call may run (docs/benchmarks.md has the times).
#
# PYTHON picks the interpreter (python3 by default; make test's dry run uses
# .venv/bin/python); OUT the output folder (a new temporary one when unset).
set -u

dry=0
if [ "${1:-}" = "--dry-run" ]; then
    dry=1
    shift
fi
part="${1:-}"
case "$part" in
1 | 2) ;;
*)
    echo "usage: bash bench/gpu_session.sh [--dry-run] 1|2" >&2
    exit 2
    ;;
esac

cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
scratch="$(mktemp -d)"  # the benches' figures; summary.md and figures.json gather them
trap 'rm -rf "$scratch"' EXIT
export PYTHONUNBUFFERED=1
log="$OUT/session.log"
: >"$log"

say() { echo "gpu-session: $*" | tee -a "$log" >&2; }

if [ ! -f model/assets/gpt2.tiktoken ] || [ ! -f model/assets/p50k_base.tiktoken ]; then
    say "error: model/assets/gpt2.tiktoken or p50k_base.tiktoken is missing: run make gpu-carry here and carry them"
    exit 2
fi
if [ "$dry" = 0 ] && [ "$part" = 2 ] && [ ! -f data/shards/demo/manifest.json ]; then
    say "error: data/shards/demo is missing: run make gpu-carry here and carry it"
    exit 2
fi
# before the wheels: the image's own torch answers this
if [ "$dry" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    say "error: $PY sees no CUDA GPU; on the CPU pass --dry-run"
    exit 2
fi

if [ "$dry" = 0 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    # the server's packages for this image's Python (make gpu-carry downloaded them)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >>"$log" 2>&1 || {
        say "error: installing .whl/*.whl failed (see session.log); rerun make gpu-carry here"
        exit 2
    }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# step NAME SECONDS COMMAND...: run it under timeout, log it, note how it ended
step() {
    local name="$1" limit="$2"
    shift 2
    say "$name: start (limit ${limit}s): $*"
    local t0=$SECONDS rc=0
    timeout --kill-after=15 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    local took=$((SECONDS - t0)) how=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        how=timeout
    elif [ "$rc" != 0 ]; then
        how="failed ($rc)"
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$how" "$took" "$limit" >>"$scratch/steps.tsv"
    say "$name: $how after ${took}s"
}

gpu_tests=(tests/model/test_autobatch.py tests/model/test_loader.py tests/model/test_loss.py
    tests/model/test_generate.py tests/pipeline/test_plan_stage.py)

if [ "$dry" = 1 ]; then
    tiny=(--tiny)
    sample_args=(--tokens 16 --rounds 1)
    memory_args=(--micro-batches 4 --steps 1)
    compile_args=(--micro-batches 4)
    train_args=(--steps 4 --eval-every 2 --warmup 1 --loops plain,fused,muon)
    # two repeats: the dry run's table is what tests/test_bench_serve.py checks
    serve_args=(--clients 2 --requests 1 --tokens 8 --repeats 2)
else
    tiny=()
    sample_args=()
    memory_args=()
    compile_args=(--micro-batches 4,8,16)
    train_args=(--steps 200 --loops plain,fused,muon --data data/shards/demo)
    serve_args=(--repeats 1)  # one round: the part's time is counted
fi

if [ "$part" = 1 ]; then
    # the tests marked gpu (skipped without one: on the CPU they only prove they collect)
    step gpu-tests 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu "${gpu_tests[@]}" \
        --junitxml "$scratch/tests.xml"
    step sample 90 "$PY" bench/sample_gpu.py "${tiny[@]}" "${sample_args[@]}" \
        --out "$OUT/sample.md" --json "$scratch/sample.json"
    step memory 150 "$PY" bench/memory_gpu.py "${tiny[@]}" "${memory_args[@]}" --compile off \
        --out "$OUT/memory.md" --json "$scratch/memory.json"
    step memory-compile 150 "$PY" bench/memory_gpu.py "${tiny[@]}" "${compile_args[@]}" \
        --parts a --compile on --out "$OUT/memory-compile.md" --json "$scratch/memory-compile.json"
else
    step train 360 "$PY" bench/train_gpu.py "${tiny[@]}" "${train_args[@]}" \
        --out "$OUT/train.md" --json "$scratch/train.json"
    step serve 150 "$PY" bench/serve_gpu.py "${tiny[@]}" "${serve_args[@]}" --out "$OUT/serve.md"
fi

"$PY" bench/gpu_summary.py "$scratch" --part "$part" --out "$OUT/summary.md" \
    --figures "$OUT/figures.json" | tee -a "$log"
