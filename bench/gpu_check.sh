#!/usr/bin/env bash
# GPU check (issue 15, item 6; issue 32, item 4): on a CUDA machine with sfport installed, in one go and within
# 8 minutes,
#   1. the tests that take a CUDA branch (tests/test_train_run.py, tests/test_pycaffe_net.py: set_mode_gpu),
#   2. bench/bench_train.py --device cuda, fp32 and --amp (bf16 autocast),
#   3. sfport train prototxt/sphereface20_solver.prototxt --synthetic-data --shape 3,112,96 --gpu 0 for a few
#      iterations (in a temporary folder, so the snapshots do not land in the repository), its speed and final
#      loss read from the log,
#   4. the same on --gpu 0,1 (DistributedDataParallel) when there are two GPUs or more,
#   5. bench/gpu_forward.py: SphereFace-20 forward img/s at batch 1, 64 and 256 in fp32, TF32 and bf16 for sfport's
#      eager net, the same net hand-written in plain torch, sfport's TorchScript export and its ONNX export on
#      onnxruntime's CUDA provider (when installed),
#   6. sfport train prototxt/sfplus_m4_solver.prototxt (SphereFace+ m4: MarginInnerProduct + InterClass) at batch
#      256 --synthetic-data --gpu 0 --max-iter 100: img/s between the log's display lines of iterations 10 and 90,
#      and the GPU's utilisation then (nvidia-smi sampled every 500 ms; "n/a" without nvidia-smi),
#   7. its peer, bench/gpu_train_peer.py run: the same net and step in a plain hand-written PyTorch loop
#      (torch.optim.SGD), 10 warm-up then 80 timed iterations, img/s and GPU utilisation,
#   8. the m4 solver again on 512 face-like 112x96 JPEGs (written here) through the ImageData loader (--source,
#      --data-root; the default DataLoader workers),
# then one markdown summary table (step | status | seconds | key number) and one table of ratios, sfport against
# its plain-PyTorch peer (forward and training).
#
# On a machine without CUDA every step that needs it is skipped ("skipped: no CUDA device") in a second or two.
# GPU_CHECK_CPU_SMOKE=1 runs steps 5-8 on the CPU instead, tiny (batch 1-2, 28x24 images, 64 classes, a few
# iterations; the other steps are skipped), so that a CPU machine exercises their code (tests/test_gpu_check.py).
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
M4_SOLVER="$ROOT/prototxt/sfplus_m4_solver.prototxt"
NO_CUDA="skipped: no CUDA device"
SMOKE=${GPU_CHECK_CPU_SMOKE:-0}

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/sfport-gpu-check.XXXXXX") || { echo "gpu_check: mktemp failed" >&2; exit 1; }
FAILED=0
# shellcheck disable=SC2317  # called by the trap
cleanup() { util_stop; if [ "$FAILED" = 0 ]; then rm -rf "$LOGDIR"; fi; }
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

# GPU utilisation in the background (steps 6-8): nvidia-smi's samples, every 500 ms, into a file; nothing without
# nvidia-smi or off the GPU (the steps then say "GPU util n/a")
UTIL_PID=""
util_start() {
    : >"$1"
    if [ "$DEV" = cuda ] && command -v nvidia-smi >/dev/null 2>&1; then
        local gpu=${CUDA_VISIBLE_DEVICES:-0}    # torch's cuda:0, as nvidia-smi names it (an index or a UUID)
        nvidia-smi -i "${gpu%%,*}" --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 500 \
            >"$1" 2>/dev/null &
        UTIL_PID=$!
    fi
}
# shellcheck disable=SC2317  # also called by the trap
util_stop() {
    if [ -n "$UTIL_PID" ]; then
        kill "$UTIL_PID" 2>/dev/null
        wait "$UTIL_PID" 2>/dev/null
        UTIL_PID=""
    fi
}

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
# DEV: where steps 5-8 run (cuda; cpu in the smoke mode; empty: skipped with $SKIP)
DEV=""
if [ "$SMOKE" = 1 ]; then
    DEV=cpu
    NGPU=0
    SKIP="skipped: CPU smoke mode"
elif [ "$NGPU" -ge 1 ]; then
    DEV=cuda
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


# the row of one `sfport train` step, from its exit status ($RC) and whether its log gave the numbers ($3: 1 or 0):
# passed, a log without its numbers, or why it failed (fail keeps the log)
train_row() {   # name seconds log-parsed key-number log
    local name=$1 t=$2 parsed_ok=$3 key=$4 log=$5
    if [ "$RC" = 0 ] && [ "$parsed_ok" = 1 ]; then
        row "$name" "passed" "$t" "$key"
        return
    fi
    if [ "$RC" = 0 ]; then
        row "$name" "failed: the log has no speed/finite final loss/Optimization Done" "$t" "$key"
    else
        [ "$RC" = 3 ] && grep -q "sfport: stopped" "$log" && RC="3 (training stopped)"
        row "$name" "$(why_failed "$RC" "$log")" "$t" "$key"
    fi
    fail "$log"
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
    train_row "$name" "$t" "$([ "${parsed%% *}" = ok ] && echo 1 || echo 0)" "${parsed#* }" "$log"
}
train "sfport train SF-20 --gpu 0 --max-iter $TRAIN_ITERS" 0 "$TRAIN_ITERS" 1
train "sfport train SF-20 --gpu 0,1 --max-iter $MULTI_ITERS" 0,1 "$MULTI_ITERS" 2

# ---- 5.-8. forward paths, SphereFace+ m4 training against its plain-PyTorch peer -------------------------------
PEER="$ROOT/bench/gpu_train_peer.py"
if [ "$DEV" = cpu ]; then      # the smoke mode: the same scripts, tiny, on the CPU
    # one thread: it checks the code paths, not the speed, and OpenMP's barriers stall on a busy machine
    export OMP_NUM_THREADS=1
    FWD_BATCHES=1,2
    FWD_ARGS=(--device cpu --batches "$FWD_BATCHES" --size 28x24 --warmup 1 --repeat 1 --min-time 0)
    M4_BATCH=2
    M4_ITERS=3                 # display 1 (the smoke copy of the solver): speed between iterations 1 and 2
    M4_SHAPE=3,28,24
    M4_DEV=(--workers 0)
    PEER_ARGS=(--device cpu --batch 2 --classes 64 --size 28x24 --warmup 1 --iters 2)
    N_JPEGS=8
else
    FWD_ARGS=(--device cuda)
    FWD_BATCHES=1,64,256
    M4_BATCH=256
    M4_ITERS=100               # display 10: speed between iterations 10 and 90 (80 iterations)
    M4_SHAPE=3,112,96
    M4_DEV=(--gpu 0)
    PEER_ARGS=(--device cuda --batch 256 --warmup 10 --iters 80)
    N_JPEGS=512
fi
DEV_NAME=${DEV:-cuda}

# 5. forward
NAME="SF-20 forward --device $DEV_NAME: eager, plain torch, TorchScript, onnxruntime"
if [ -z "$DEV" ]; then
    row "$NAME" "$SKIP" "0.0" "-"
else
    LOG="$LOGDIR/forward.log"
    run_step "$NAME" "$LOG" 150 "$PY" "$ROOT/bench/gpu_forward.py" "${FWD_ARGS[@]}" --json "$LOGDIR/forward.json"
    T=$(secs "$T0")
    if [ "$RC" = skip ]; then
        row "$NAME" "skipped: time budget spent" "$T" "-"
    else
        KEY=""
        [ -s "$LOGDIR/forward.json" ] && KEY=$("$PY" "$PEER" key "$LOGDIR/forward.json" 2>/dev/null)
        if [ "$RC" = 0 ] && [ -n "$KEY" ]; then
            row "$NAME" "passed" "$T" "$KEY"
        elif [ -n "$KEY" ] && [ "$RC" = 1 ]; then
            row "$NAME" "failed: a cell failed (see its row)" "$T" "$KEY"
            fail "$LOG"
        else
            row "$NAME" "$(why_failed "$RC" "$LOG")" "$T" "${KEY:--}"
            fail "$LOG"
        fi
        grep -E '^(\||SphereFace-20|  onnxruntime)' "$LOG" | sed 's/^/    /'
    fi
fi

# the smoke mode's copy of the m4 solver and net: batch 2, 28x24 images, 64 classes, display 1, no final snapshot
M4_RUN_SOLVER=$M4_SOLVER
if [ "$DEV" = cpu ]; then
    M4_RUN_SOLVER="$LOGDIR/smoke/solver.prototxt"
    timeout 60 "$PY" "$PEER" smoke-solver "$LOGDIR/smoke" --batch "$M4_BATCH" --display 1 >"$LOGDIR/smoke.log" 2>&1 ||
        echo "gpu_check: could not write the smoke solver (see $LOGDIR/smoke.log)" >&2
fi

# m4_train NAME KEY LIMIT ARGS...: sfport train on the m4 solver (+ ARGS) in a temporary folder, with the GPU's
# utilisation sampled; img/s from the log (bench/gpu_train_peer.py parse-log) into $LOGDIR/KEY.json
m4_train() {
    local name=$1 key=$2 limit=$3
    shift 3
    if [ -z "$DEV" ]; then
        row "$name" "$SKIP" "0.0" "-"
        return
    fi
    local run="$LOGDIR/run_$key" log="$LOGDIR/$key.log" json="$LOGDIR/$key.json"
    mkdir -p "$run/result"     # the solver's snapshot_prefix result/...: here, not beside the solver
    cd "$run" || { row "$name" "failed: cannot cd to $run" "0.0" "-"; FAILED=1; return; }
    util_start "$LOGDIR/$key.util"
    run_step "$name" "$log" "$limit" "$PY" -m sfport train "$M4_RUN_SOLVER" "$@" "${M4_DEV[@]}" \
        --max-iter "$M4_ITERS" --no-progress
    util_stop
    cd "$ROOT" || exit 1
    local t key_number prc
    t=$(secs "$T0")
    rm -rf "$run"
    if [ "$RC" = skip ]; then
        row "$name" "skipped: time budget spent" "$t" "-"
        return
    fi
    key_number=$("$PY" "$PEER" parse-log "$log" --batch "$M4_BATCH" --util "$LOGDIR/$key.util" --json "$json" \
                 2>"$log.parse")
    prc=$?
    train_row "$name" "$t" "$([ "$prc" = 0 ] && echo 1 || echo 0)" "${key_number:--}" "$log"
}

# 6. m4 on synthetic data
m4_train "sfport train SF+ m4 --device $DEV_NAME batch $M4_BATCH, synthetic data" m4_synthetic 120 \
    --synthetic-data --shape "$M4_SHAPE"

# 7. the peer: the same step in a plain PyTorch loop
NAME="peer: plain PyTorch loop, SF+ m4 --device $DEV_NAME batch $M4_BATCH, synthetic data"
if [ -z "$DEV" ]; then
    row "$NAME" "$SKIP" "0.0" "-"
else
    LOG="$LOGDIR/peer.log"
    util_start "$LOGDIR/peer.util"
    run_step "$NAME" "$LOG" 90 "$PY" "$PEER" run "${PEER_ARGS[@]}" --check --json "$LOGDIR/peer.json"
    util_stop
    T=$(secs "$T0")
    if [ "$RC" = skip ]; then
        row "$NAME" "skipped: time budget spent" "$T" "-"
    else
        KEY=$("$PY" "$PEER" util "$LOGDIR/peer.json" "$LOGDIR/peer.util" 2>/dev/null)
        if [ "$RC" = 0 ] && [ -n "$KEY" ]; then
            row "$NAME" "passed" "$T" "$KEY"
        else
            row "$NAME" "$(why_failed "$RC" "$LOG")" "$T" "${KEY:--}"
            fail "$LOG"
        fi
    fi
fi

# 8. m4 on JPEGs through the ImageData loader
JPEGS="$LOGDIR/jpegs"
NAME="sfport train SF+ m4 --device $DEV_NAME batch $M4_BATCH, $N_JPEGS JPEGs through ImageData"
if [ -z "$DEV" ]; then
    row "$NAME" "$SKIP" "0.0" "-"
elif [ "$(left)" -lt 30 ]; then
    row "$NAME" "skipped: time budget spent" "0.0" "-"
elif ! timeout 60 "$PY" "$PEER" jpegs "$JPEGS" --images "$N_JPEGS" >"$LOGDIR/jpegs.log" 2>&1; then
    row "$NAME" "failed: writing the JPEGs: $(grep -v '^[[:space:]]*$' "$LOGDIR/jpegs.log" | tail -n 1 | cut -c1-100)" \
        "0.0" "-"
    fail "$LOGDIR/jpegs.log"
else
    m4_train "$NAME" m4_jpeg 120 --source "$JPEGS/list.txt" --data-root "$JPEGS"
fi
rm -rf "$JPEGS"

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
echo "sfport against its plain-PyTorch peer (same run, same device):"
echo
"$PY" "$PEER" ratios --batches "$FWD_BATCHES" --train-batch "$M4_BATCH" --forward "$LOGDIR/forward.json" \
    --train-synthetic "$LOGDIR/m4_synthetic.json" --train-jpeg "$LOGDIR/m4_jpeg.json" --peer "$LOGDIR/peer.json"
echo
echo "total $(secs "$START_NS")s"
if [ "$FAILED" != 0 ]; then
    echo "gpu_check: a step failed (logs kept in $LOGDIR)"
    exit 1
fi
exit 0
