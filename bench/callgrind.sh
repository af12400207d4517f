#!/usr/bin/env bash
# User-space instructions and atomic read-modify-write operations (callgrind's "global bus
# events", lock-prefixed instructions) per request of weir binaries, counted by callgrind:
# repeatable where the machine's cycles are not, so it separates changes of a few hundred
# instructions or a few atomic operations (each costs tens of cycles that instruction counts
# do not show).
# Usage: bash bench/callgrind.sh [CONNECTIONS, default 1] [REQUESTS, default 3200] [BINARY...]
# (default binary: a release build of the working tree). CALLGRIND_LIMIT='"auto"' (or another
# value of max_concurrency, with any keys after it on lines of their own) measures that limit
# instead of the fixed 256.
#
# For each binary: weir under valgrind on core 1 (so its runtime sees one core), the suite's
# backend on core 0, h2load sending 200 requests, then again sending REQUESTS; the difference
# divided by REQUESTS - 200 is the marginal cost of a request, start-up and shut-down left out.
# Background work that runs per unit of time (timers) still counts, so keep comparisons to
# binaries measured in one sitting. 127.0.0.1 only; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-1}
N=${2:-3200}
shift $(($# < 2 ? $# : 2))
OUT=target/bench-callgrind
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
source bench/lib.sh
if [ $# -eq 0 ]; then
    built=$(release_weir "$OUT")   # an assignment, so that `set -e` stops on a failed build
    set -- "$built"
fi
BACKEND_BIN=$(bench_bin backend)
BACKEND=127.0.0.1:19300
WEIR=127.0.0.1:19301
single_upstream_run "$OUT/weir.toml" "$WEIR" "$BACKEND" 127.0.0.1:19302
if [ -n "${CALLGRIND_LIMIT:-}" ]; then
    python3 - "$OUT/weir.toml" "$CALLGRIND_LIMIT" <<'PY'
import sys
path, limit = sys.argv[1], sys.argv[2]
text = open(path).read().replace("max_concurrency = 256", "max_concurrency = " + limit)
open(path, "w").write(text)
PY
fi
total_ir() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }
total_atomics() { awk '/^(summary|totals):/ {print $3; exit}' "$1"; }

taskset -c 0 "$BACKEND_BIN" "$BACKEND" 16 20 >"$OUT/backend.log" 2>&1 & PIDS+=($!)
wait_port "$BACKEND"
for bin in "$@"; do
    for n in 200 "$N"; do
        taskset -c 1 valgrind --tool=callgrind --collect-bus=yes --callgrind-out-file="$OUT/callgrind.$n" \
            "$bin" --config "$OUT/weir.toml" >"$OUT/weir.log" 2>&1 & w=$!
        PIDS+=($w)
        wait_port "$WEIR" 600   # valgrind starts slowly
        taskset -c 0 h2load --h1 -n "$n" -c "$CONNS" "http://$WEIR/" >"$OUT/h2load.log" 2>&1
        # SIGINT: weir drains and exits, and callgrind writes its counts.
        kill -INT "$w"
        wait "$w" 2>/dev/null || true
    done
    a=$(total_ir "$OUT/callgrind.200")
    b=$(total_ir "$OUT/callgrind.$N")
    ga=$(total_atomics "$OUT/callgrind.200")
    gb=$(total_atomics "$OUT/callgrind.$N")
    atomics=$(awk -v a="$ga" -v b="$gb" -v n=$((N - 200)) 'BEGIN {printf "%.1f", (b - a) / n}')
    echo "$bin: $(((b - a) / (N - 200))) instructions and $atomics atomic operations per request ($CONNS connections, $N vs 200 requests)"
done
