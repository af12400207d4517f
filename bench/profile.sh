#!/usr/bin/env bash
# Profiles weir under scenario A (tiny responses, 64 keep-alive connections, closed loop) with
# perf: weir pinned to core 1, the backend and wrk on core 0. Usage:
#   bash bench/profile.sh [SECONDS, default 10]
# Writes target/bench-profile/perf.data and prints the top of the report (self time, then the
# call graph of the hottest entries). Needs perf (Debian's linux-perf) where the kernel allows it;
# otherwise use `valgrind --tool=callgrind` on the same setup.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
OUT=target/bench-profile
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
command -v perf >/dev/null && command -v wrk >/dev/null || {
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends linux-perf wrk >/dev/null
}
source bench/lib.sh
WEIR_BIN=$(release_weir "$OUT")
BACKEND_BIN=$(bench_bin backend)
BACKEND=127.0.0.1:19200
WEIR=127.0.0.1:19201
single_upstream_run "$OUT/weir.toml" "$WEIR" "$BACKEND" 127.0.0.1:19902
taskset -c 0 "$BACKEND_BIN" "$BACKEND" 16 20 >"$OUT/backend.log" 2>&1 & PIDS+=($!)
wait_port "$BACKEND"
taskset -c 1 "$WEIR_BIN" --config "$OUT/weir.toml" >"$OUT/weir.log" 2>&1 & WEIR_PID=$!; PIDS+=($WEIR_PID)
wait_port "$WEIR"
taskset -c 0 wrk -t1 -c64 -d2s "http://$WEIR/" >/dev/null
taskset -c 0 wrk -t1 -c64 -d"$((SECS + 2))s" "http://$WEIR/" >"$OUT/wrk.txt" & PIDS+=($!)
perf record -F 2000 -g --call-graph dwarf,16384 -p "$WEIR_PID" -o "$OUT/perf.data" -- sleep "$SECS" 2>"$OUT/perf-record.log"
wait "${PIDS[-1]}" || true
grep -E "Requests/sec" "$OUT/wrk.txt"
perf report -i "$OUT/perf.data" --no-children --percent-limit 0.7 --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
