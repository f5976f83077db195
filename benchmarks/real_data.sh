#!/usr/bin/env bash
# The real-data benchmark of docs/results.md, in one go and within a time limit, so that it fits
# one call on a lent GPU machine (whose checkpoints cannot be brought back): baseline with and
# without --dedupe, the paper-style bench table with the ablation ladders, the speed table on CPU
# and GPU, a budget sweep uniform vs greedy, and the energy sweep of issue #7.
#
# Usage:  DATA=path/to/brain-tumor-mri RESULTS=folder benchmarks/real_data.sh
# Optional: STEPS (which steps, in this order; default all: prepare evaluate bench_table
# bench_speed prepare_dedupe evaluate_dedupe sweep_alloc sweep results), DEADLINE (seconds for
# everything, default 540), WORKERS (default 6), FT (fine-tuning epochs of the bench rows, default
# 5; 0 for the table without fine-tuning), GRIDS/CLUSTERS/ENERGIES (the sweep), ALLOC_GRIDS/
# ALLOC_CLUSTERS (uniform vs greedy sweep at 6x), CACHE (run store, default cache), EXTRA (options
# added to every command, e.g. "--input-size 64 --epochs 1" for a quick rehearsal), HSCC (the
# command, default "python3 -m hscc_core").
#
# Every step's JSON and stderr land in $RESULTS; a step that runs out of time is cut and logged,
# and what it stored is kept (sweeps resume). Steps come in order of importance.
set -u
: "${DATA:?DATA must name the dataset folder}" "${RESULTS:?RESULTS must name an output folder}"
DEADLINE=${DEADLINE:-540}
WORKERS=${WORKERS:-6}
FT=${FT:-5}
STEPS=${STEPS:-"prepare evaluate bench_table bench_speed prepare_dedupe evaluate_dedupe sweep_alloc sweep results"}
GRIDS=${GRIDS:-"1 2 4 8"}
CLUSTERS=${CLUSTERS:-"1 2 4 8 16"}
ENERGIES=${ENERGIES:-"0.5 0.7 0.8 0.9 0.95 0.99"}
ALLOC_GRIDS=${ALLOC_GRIDS:-"1 2 4 8"}
ALLOC_CLUSTERS=${ALLOC_CLUSTERS:-"1 4 16"}
CACHE=${CACHE:-cache}
EXTRA=${EXTRA:-}
HSCC=${HSCC:-"python3 -m hscc_core"}
mkdir -p "$RESULTS"
START=$SECONDS

log() { echo "[$(date +%T) +$((SECONDS - START))s] $*" | tee -a "$RESULTS/log.txt" >&2; }
left() { echo $((DEADLINE - (SECONDS - START))); }

# Least seconds each step needs: a step's time limit is what is left of the deadline minus the
# minimum of every selected step after it.
declare -A MIN=([prepare]=30 [evaluate]=10 [bench_table]=60 [bench_speed]=40 [prepare_dedupe]=10
                [evaluate_dedupe]=10 [sweep_alloc]=40 [sweep]=40 [results]=30)
ORDER="prepare evaluate bench_table bench_speed prepare_dedupe evaluate_dedupe sweep_alloc sweep results"
for s in $STEPS; do
    [[ " $ORDER " == *" $s "* ]] || { echo "unknown step '$s' (steps: $ORDER)" >&2; exit 2; }
done
reserve_after() {
    local after=0 total=0 s
    for s in $ORDER; do
        if (( after )) && [[ " $STEPS " == *" $s "* ]]; then total=$((total + ${MIN[$s]})); fi
        [[ $s == "$1" ]] && after=1
    done
    echo "$total"
}

# step NAME ARGS...: when NAME is in STEPS, run `hscc ARGS` within what is left of the deadline
# minus the reserve of the steps after it; JSON to NAME.json, stderr to NAME.err.
step() {
    local name=$1
    shift
    [[ " $STEPS " == *" $name "* ]] || return 0
    local budget=$(( $(left) - $(reserve_after "$name") ))
    if (( budget < 5 )); then
        log "skip $name: no time left"
        return
    fi
    log "start $name (up to ${budget}s): hscc $*"
    local t0=$SECONDS
    # shellcheck disable=SC2086  # HSCC and EXTRA are word lists on purpose
    timeout --signal=INT --kill-after=15 "$budget" $HSCC "$@" --cache-dir "$CACHE" $EXTRA >"$RESULTS/$name.json" 2>"$RESULTS/$name.err"
    local rc=$?
    log "end $name: exit $rc after $((SECONDS - t0))s"
    tr '\r' '\n' <"$RESULTS/$name.err" | grep -v 'it/s\|s/it' | tail -n 5 >>"$RESULTS/log.txt"
}

log "machine: $(nproc) cores; $(python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))')"
step prepare prepare --data "$DATA" --json
step evaluate evaluate --data "$DATA" --json
step bench_table bench --data "$DATA" --no-speed --workers "$WORKERS" --finetune-epochs "$FT" --no-sweep --json
step bench_speed bench --data "$DATA" --speed --json
step prepare_dedupe prepare --data "$DATA" --dedupe --json
step evaluate_dedupe evaluate --data "$DATA" --dedupe --json
step sweep_alloc sweep --data "$DATA" --methods hscc --budgets 6 --grid "$ALLOC_GRIDS" \
    --clusters "$ALLOC_CLUSTERS" --allocations "uniform greedy" --workers "$WORKERS" --no-speed --json
step sweep sweep --data "$DATA" --methods "hscc svd tucker" --grid "$GRIDS" --clusters "$CLUSTERS" \
    --energy "$ENERGIES" --workers "$WORKERS" --no-speed --json
# Everything above is cached by now: this only assembles the bench JSON with the sweep included.
step results bench --data "$DATA" --no-speed --finetune-epochs "$FT" --json
log "done"
