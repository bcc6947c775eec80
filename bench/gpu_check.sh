#!/usr/bin/env bash
# GPU check (issue 15, item 6): on a CUDA machine with sfport installed, in one go and within 8 minutes,
#   1. the tests that take a CUDA branch (tests/test_train_run.py, tests/test_pycaffe_net.py: set_mode_gpu),
#   2. bench/bench_train.py --device cuda, fp32 and --amp (bf16 autocast),
#   3. sfport train prototxt/sphereface20_solver.prototxt --synthetic-data --shape 3,112,96 --gpu 0 for a few
#      iterations (in a temporary folder, so the snapshots do not land in the repository), its speed and final
#      loss read from the log,
#   4. the same on --gpu 0,1 (DistributedDataParallel) when there are two GPUs or more,
# then one markdown summary table (step | status | seconds | key number).
#
# On a machine without CUDA every step that needs it is skipped ("skipped: no CUDA device") in a second or two.
# Exit status: 0 when no step failed (skips are fine), 1 when one did.
#
#     bash bench/gpu_check.sh          # from any folder; PYTHON=... picks the interpreter (default: python)
#
# GPU_CHECK_BUDGET (seconds, default 460) caps the whole run: each step's timeout is cut to what is left.
# The step logs go to a temporary folder, removed at the end unless a step failed (its path is printed then).
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || { echo "gpu_check: cannot cd to the repository root" >&2; exit 1; }
ROOT=$(pwd -P)
PY=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET:-460}
TRAIN_ITERS=100     # a multiple of the solver's display (100): the log then has the final "Iteration N, loss ="
MULTI_ITERS=20      # the 2-GPU run: a few iterations (speed from the log's timestamps)
SOLVER="$ROOT/prototxt/sphereface20_solver.prototxt"
NO_CUDA="skipped: no CUDA device"

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/sfport-gpu-check.XXXXXX") || { echo "gpu_check: mktemp failed" >&2; exit 1; }
FAILED=0
# shellcheck disable=SC2317  # called by the trap
cleanup() { if [ "$FAILED" = 0 ]; then rm -rf "$LOGDIR"; fi; }
trap cleanup EXIT

START_NS=$(date +%s%N)
ROWS=()     # "step<TAB>status<TAB>seconds<TAB>key number"

now_ns() { date +%s%N; }
secs() {    # elapsed seconds (one decimal) since $1 (ns)
    local d=$(( ($(now_ns) - $1) / 100000000 ))
    printf '%d.%d' $((d / 10)) $((d % 10))
}
clean() { printf '%s' "$1" | tr '|\t\n' '/  '; }   # one table cell: no pipes, tabs or newlines
row() { ROWS+=("$(clean "$1")"$'\t'"$(clean "$2")"$'\t'"$3"$'\t'"$(clean "$4")"); }
left() { echo $(( BUDGET - ($(now_ns) - START_NS) / 1000000000 )); }

# run_step NAME LOG LIMIT CMD...: run CMD (in the current folder) under timeout, output to LOG; sets RC and T0.
run_step() {
    local name=$1 log=$2 limit=$3
    shift 3
    local rest
    rest=$(left)
    if [ "$rest" -lt "$limit" ]; then limit=$rest; fi
    T0=$(now_ns)
    if [ "$limit" -lt 15 ]; then
        RC=skip
        return
    fi
    echo "[gpu_check] $name (timeout ${limit}s): $*"
    timeout -k 10 "$limit" "$@" >"$log" 2>&1
    RC=$?
    LIMIT=$limit
}

# why_failed RC LOG: the status text of a failed step
why_failed() {
    if [ "$1" = 124 ] || [ "$1" = 137 ]; then
        echo "failed: timed out after ${LIMIT}s"
    else
        local last
        last=$(grep -v '^[[:space:]]*$' "$2" | tail -n 1 | cut -c1-120)
        echo "failed: exit $1: $last"
    fi
}

fail() { FAILED=1; FAILED_LOGS+=("$1"); }
FAILED_LOGS=()

# ---- 0. devices ------------------------------------------------------------------------------------------
T0=$(now_ns)
DETECT=$(timeout 60 "$PY" -c "import torch
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
names = sorted({torch.cuda.get_device_name(i) for i in range(n)})
print(n, torch.__version__, '+'.join(names).replace(' ', '_') or '-')" 2>"$LOGDIR/detect.log")
RC=$?
NGPU=0
SKIP=$NO_CUDA
DETECT=$(printf '%s\n' "$DETECT" | tail -n 1)
read -r N TORCH_VERSION GPU_NAMES <<<"$DETECT"
if [ "$RC" = 0 ] && [[ "${N:-}" =~ ^[0-9]+$ ]]; then
    NGPU=$N
    row "detect CUDA devices" "ran" "$(secs "$T0")" "$NGPU CUDA device(s): ${GPU_NAMES//_/ }; torch $TORCH_VERSION"
else
    echo "$DETECT" >>"$LOGDIR/detect.log"
    row "detect CUDA devices" "failed: the torch device probe with $PY (exit $RC; see log)" "$(secs "$T0")" "-"
    fail "$LOGDIR/detect.log"
    SKIP="skipped: device detection failed"
fi

# ---- 1. the tests that take a CUDA branch ----------------------------------------------------------------
GPU_TESTS=(tests/test_train_run.py tests/test_pycaffe_net.py)   # grep -rn cuda tests/: their torch.cuda.is_available() branches
NAME="GPU tests: pytest ${GPU_TESTS[*]}"
if [ "$NGPU" -lt 1 ]; then
    row "$NAME" "$SKIP" "0.0" "-"
else
    LOG="$LOGDIR/tests.log"
    run_step "$NAME" "$LOG" 120 "$PY" -m pytest -q -p no:cacheprovider "${GPU_TESTS[@]}"
    T=$(secs "$T0")
    SUMMARY=$(grep -E '[0-9]+ (passed|failed|error|errors|skipped)' "$LOG" 2>/dev/null | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')
    if [ "$RC" = skip ]; then
        row "$NAME" "skipped: time budget spent" "$T" "-"
    elif [ "$RC" = 0 ] && printf '%s' "$SUMMARY" | grep -q passed; then
        row "$NAME" "passed" "$T" "$SUMMARY"
    elif [ "$RC" = 0 ]; then
        row "$NAME" "skipped: pytest ran none of them (shared test data missing?)" "$T" "$SUMMARY"
    else
        row "$NAME" "$(why_failed "$RC" "$LOG")" "$T" "${SUMMARY:--}"
        fail "$LOG"
    fi
fi

# ---- 2. bench_train.py on CUDA, fp32 and bf16 autocast ---------------------------------------------------
bench() {   # bench LABEL EXTRA-ARGS...
    local label=$1
    shift
    local name="bench_train --device cuda $label"
    if [ "$NGPU" -lt 1 ]; then
        row "$name" "$SKIP" "0.0" "-"
        return
    fi
    local log="$LOGDIR/bench_${label//[^a-z0-9]/}.log"
    run_step "$name" "$log" 90 "$PY" bench/bench_train.py --device cuda --iters 30 "$@"
    local t
    t=$(secs "$T0")
    # | SphereFace-20 A-Softmax (16x3x112x96) | sfport img/s | torch img/s | ratio |
    local sf20
    sf20=$(grep -E '^\| SphereFace-20' "$log" 2>/dev/null | tail -n 1 |
           awk -F'|' '{gsub(/ /, "", $3); gsub(/ /, "", $4); gsub(/ /, "", $5);
                       print "SF-20 (16/batch): sfport " $3 " img/s, torch loop " $4 " img/s (" $5 ")"}')
    if [ "$RC" = skip ]; then
        row "$name" "skipped: time budget spent" "$t" "-"
    elif [ "$RC" = 0 ] && [ -n "$sf20" ]; then
        row "$name" "passed" "$t" "$sf20"
        grep -E '^(\||device|ImageData)' "$log" | sed 's/^/    /'
    elif [ "$RC" = 0 ]; then
        row "$name" "failed: no SphereFace-20 row in its output" "$t" "-"
        fail "$log"
    else
        row "$name" "$(why_failed "$RC" "$log")" "$t" "-"
        fail "$log"
    fi
}
bench "(fp32)"
bench "--amp (bf16)" --amp

# ---- 3./4. sfport train on 1 and 2 GPUs, in a temporary folder --------------------------------------------
# From the Caffe log: the iteration speed between the display line of iteration 0 (after its forward/backward,
# cudnn autotuning done) and the final snapshot (after the last update), and the last logged loss.
parse_train_log() {
    "$PY" - "$1" <<'EOF'
import math, re, sys
stamp = re.compile(r"^[IWEF]\d{4} (\d\d):(\d\d):(\d\d\.\d+) \d+ \S+\] (.*)$")
t0 = t1 = n = loss = None
done = False
for line in open(sys.argv[1], errors="replace"):
    m = stamp.match(line.rstrip("\n"))
    if not m:
        continue
    t = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    msg = m[4]
    if t0 is None and msg.startswith("Iteration 0 ("):
        t0 = t
    s = re.match(r"Snapshotting to binary proto file .*_iter_(\d+)\.caffemodel", msg)
    if s and t1 is None:
        t1, n = t, int(s[1])
    lm = re.match(r"Iteration (\d+)(?: \(.*\))?, loss = (\S+)", msg)
    if lm:
        loss = (int(lm[1]), lm[2])
    done = done or msg == "Optimization Done."
parts = []
ok = done and loss is not None and math.isfinite(float(loss[1]))
if t0 is not None and t1 is not None and n and n > 1:
    dt = (t1 - t0) % 86400 or 1e-9
    parts.append(f"{(n - 1) / dt:.3g} iter/s")
else:
    ok = False
if loss is not None:
    parts.append(f"loss {loss[1]} at iter {loss[0]}")
print(("ok " if ok else "bad ") + (", ".join(parts) or "-"))
EOF
}

train() {   # train NAME GPUS ITERS NEEDED
    local name=$1 gpus=$2 iters=$3 needed=$4
    if [ "$NGPU" -lt 1 ]; then
        row "$name" "$SKIP" "0.0" "-"
        return
    fi
    if [ "$NGPU" -lt "$needed" ]; then
        row "$name" "skipped: $NGPU CUDA device (needs $needed)" "0.0" "-"
        return
    fi
    local run="$LOGDIR/run_${gpus//,/_}" log="$LOGDIR/train_${gpus//,/_}.log"
    mkdir -p "$run"
    # cwd = the run folder: the solver's relative snapshot_prefix (result/...) lands there (net: is found next
    # to the solver file)
    cd "$run" || { row "$name" "failed: cannot cd to $run" "0.0" "-"; FAILED=1; return; }
    run_step "$name" "$log" 100 "$PY" -m sfport train "$SOLVER" --synthetic-data \
        --shape 3,112,96 --gpu "$gpus" --max-iter "$iters" --no-progress
    cd "$ROOT" || exit 1
    local t
    t=$(secs "$T0")
    rm -rf "$run"
    local parsed
    if [ "$RC" = skip ]; then
        row "$name" "skipped: time budget spent" "$t" "-"
        return
    fi
    parsed=$(parse_train_log "$log" 2>"$log.parse")
    if [ "$RC" = 0 ] && [ "${parsed%% *}" = ok ]; then
        row "$name" "passed" "$t" "${parsed#* }"
    elif [ "$RC" = 0 ]; then
        row "$name" "failed: the log has no speed/finite final loss/Optimization Done" "$t" "${parsed#* }"
        fail "$log"
    else
        [ "$RC" = 3 ] && grep -q "sfport: stopped" "$log" && RC="3 (training stopped)"
        row "$name" "$(why_failed "$RC" "$log")" "$t" "${parsed#* }"
        fail "$log"
    fi
}
train "sfport train SF-20 --gpu 0 --max-iter $TRAIN_ITERS" 0 "$TRAIN_ITERS" 1
train "sfport train SF-20 --gpu 0,1 --max-iter $MULTI_ITERS" 0,1 "$MULTI_ITERS" 2

# ---- the failed steps' log tails, then the summary -------------------------------------------------------
for f in "${FAILED_LOGS[@]+"${FAILED_LOGS[@]}"}"; do
    echo
    echo "---- last lines of $f ----"
    tail -n 25 "$f"
done
echo
echo "| step | status | seconds | key number |"
echo "|---|---|---:|---|"
for r in "${ROWS[@]}"; do
    IFS=$'\t' read -r a b c d <<<"$r"
    echo "| $a | $b | $c | $d |"
done
echo
echo "total $(secs "$START_NS")s"
if [ "$FAILED" != 0 ]; then
    echo "gpu_check: a step failed (logs kept in $LOGDIR)"
    exit 1
fi
exit 0
