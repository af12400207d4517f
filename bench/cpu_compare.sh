#!/usr/bin/env bash
# Scenario A's CPU per request for two weir binaries in one run: wrk, 64 keep-alive connections,
# tiny answers (bench/backend.rs), through each binary with the same configuration (a fixed
# limit of 256, no access log), in ROUNDS (default 8) interleaved rounds of 3 s after 1 s of
# warm-up, the order swapped each round. Prints each round's CPU µs per request and the median
# of the per-round ratios NEW / OLD. Each weir runs pinned to core 1, wrk and the backend to
# core 0; 127.0.0.1 only; every process started here is stopped on exit, by PID.
# Usage: bash bench/cpu_compare.sh OLD_BINARY NEW_BINARY [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-8}
OUT=target/bench-cpu-compare
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
source bench/lib.sh
BACKEND_BIN=$(bench_bin backend)
BACKEND=127.0.0.1:19500
declare -A ADDR=([old]=127.0.0.1:19501 [new]=127.0.0.1:19502)
declare -A ADMIN=([old]=127.0.0.1:19511 [new]=127.0.0.1:19512)
declare -A BIN=([old]=$OLD [new]=$NEW)
declare -A PID
require_free_ports $BACKEND "${ADDR[old]}" "${ADDR[new]}" "${ADMIN[old]}" "${ADMIN[new]}"
TICK=$(getconf CLK_TCK)
taskset -c 0 "$BACKEND_BIN" $BACKEND 16 20 >"$OUT/backend.log" 2>&1 & PIDS+=($!)
wait_port $BACKEND
for t in old new; do
    single_upstream_config "$OUT/$t.toml" "${ADDR[$t]}" $BACKEND "${ADMIN[$t]}"
    taskset -c 1 "${BIN[$t]}" --config "$OUT/$t.toml" >"$OUT/$t.log" 2>&1 & PID[$t]=$!; PIDS+=(${PID[$t]})
    wait_port "${ADDR[$t]}"
    taskset -c 0 wrk -t1 -c64 -d2s "http://${ADDR[$t]}/" >/dev/null
done
ratios=()
for round in $(seq 1 "$ROUNDS"); do
    order=(old new); [ $((round % 2)) = 0 ] && order=(new old)
    declare -A US
    for t in "${order[@]}"; do
        taskset -c 0 wrk -t1 -c64 -d1s "http://${ADDR[$t]}/" >/dev/null
        c0=$(cpu_ticks ${PID[$t]})
        out=$(taskset -c 0 wrk -t1 -c64 -d3s "http://${ADDR[$t]}/")
        c1=$(cpu_ticks ${PID[$t]})
        n=$(echo "$out" | awk '/requests in/ {print $1}')
        US[$t]=$(awk -v c=$((c1 - c0)) -v n="$n" -v tick="$TICK" 'BEGIN { printf "%.3f", c / tick * 1e6 / n }')
    done
    r=$(awk -v a="${US[new]}" -v b="${US[old]}" 'BEGIN { printf "%.3f", a / b }')
    ratios+=("$r")
    echo "  round $round: old ${US[old]} µs/request, new ${US[new]} µs/request, new/old $r"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END { m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "median of per-round ratios new/old: %.3f\n", m }'
