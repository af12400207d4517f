#!/usr/bin/env bash
# Shedding the right work (issue 22), in one run, on 127.0.0.1 only; bench/suite.sh runs it as
# its scenario H, or run it alone: bash bench/shed.sh [SECONDS, default 10]
#
#   H1 priority flood: a backend of 16 workers x 20 ms (bench/capacity.rs); /api offered at 50% of
#      its measured capacity, /batch/ at 3x, open loop, clients giving up after 1 s. Targets:
#      weir with /batch/ sheddable (routes), weir without classes, HAProxy with
#      `set-priority-class` (batch dequeued after api), and /api alone through weir. /api's
#      success and 2xx p99 against /api alone; /batch/'s goodput against what /api leaves.
#      ROUNDS_H (default 3) interleaved rounds.
# Every weir and HAProxy runs pinned to core 1, the backend and clients to core 0. Every process
# started here is stopped on exit, by PID. Writes target/bench-shed/results.jsonl and .md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS_H=${ROUNDS_H:-3}
OUT=${SHED_OUT:-target/bench-shed}
mkdir -p "$OUT"
: >"$OUT/results.jsonl"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for tool in haproxy taskset curl; do
    command -v $tool >/dev/null || { echo "needs $tool (bench/suite.sh installs it)" >&2; exit 1; }
done
source bench/lib.sh
WEIR_BIN=${WEIR_BIN:-$(release_weir "$OUT")}
CAP_BIN=$(bench_bin capacity)
LG="taskset -c 0"
PROXY="taskset -c 1"
CPB=127.0.0.1:19400
W_CLASSES=127.0.0.1:19401
W_PLAIN=127.0.0.1:19402
HAP=127.0.0.1:19403
record() { echo "$1" >>"$OUT/results.jsonl"; }
require_free_ports $CPB $W_CLASSES $W_PLAIN $HAP 127.0.0.1:19411 127.0.0.1:19412

# weir_config FILE LISTEN ADMIN ROUTE-KEYS
weir_config() {
    cat >"$1" <<CFG
[admin]
addr = "$3"
[log]
access = false
[[listener]]
name = "h"
addr = "$2"
max_connections = 12000
[[upstream]]
name = "b"
addr = "$CPB"
max_concurrency = 16
max_queue = 128
queue_timeout = "1s"
request_timeout = "5s"
[[route]]
path_prefix = "/batch/"
upstream = "b"
$4
[[route]]
upstream = "b"
CFG
}
weir_config "$OUT/classes.toml" $W_CLASSES 127.0.0.1:19411 'priority = "sheddable"'
weir_config "$OUT/plain.toml" $W_PLAIN 127.0.0.1:19412 ''
cat >"$OUT/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 9800
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue 1s
frontend fe
    bind $HAP
    default_backend b
backend b
    # Lower classes are dequeued first: /api before /batch/.
    http-request set-priority-class int(10) if { path_beg /batch/ }
    http-request deny deny_status 503 if { queue(b) ge 128 }
    server s1 $CPB maxconn 16
CFG

$LG "$CAP_BIN" backend $CPB 16 20 >"$OUT/backend.log" 2>&1 & PIDS+=($!)
wait_port $CPB
$PROXY "$WEIR_BIN" --config "$OUT/classes.toml" >"$OUT/classes.log" 2>&1 & PIDS+=($!)
$PROXY "$WEIR_BIN" --config "$OUT/plain.toml" >"$OUT/plain.log" 2>&1 & PIDS+=($!)
$PROXY haproxy -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 & PIDS+=($!)
for a in $W_CLASSES $W_PLAIN $HAP; do wait_port $a; done
echo "versions: $("$WEIR_BIN" --version), $(haproxy -v | head -1 | awk '{print "haproxy/"$3}')" | tee "$OUT/versions.txt"

CAP=$($LG "$CAP_BIN" measure $CPB 16 4)
echo "measured capacity, 16 workers x 20 ms: $CAP req/s"
record "{\"scenario\":\"H1-capacity\",\"rps\":$CAP}"
API_RATE=$(awk -v c="$CAP" 'BEGIN { printf "%d", c * 0.5 }')
BATCH_RATE=$(awk -v c="$CAP" 'BEGIN { printf "%d", c * 3 }')

# run_h1 ROUND LABEL ADDR WITH-BATCH
run_h1() {
    sleep 2   # what the previous target left inside the backend drains
    local bpid="" api
    if [ "$4" = yes ]; then
        $LG "$CAP_BIN" load "http://$3/batch/job" "$BATCH_RATE" "$SECS" label=batch >"$OUT/h1-$2-batch.json" 2>/dev/null & bpid=$!
    fi
    api=$($LG "$CAP_BIN" load "http://$3/api" "$API_RATE" "$SECS" label=api 2>/dev/null)
    [ -n "$bpid" ] && wait "$bpid"
    local batch='null'
    [ "$4" = yes ] && batch=$(cat "$OUT/h1-$2-batch.json")
    record "{\"scenario\":\"H1\",\"round\":$1,\"target\":\"$2\",\"api\":$api,\"batch\":$batch}"
    python3 - "$api" "$batch" "$2" "$1" <<'PY'
import json, sys
api, batch = json.loads(sys.argv[1]), json.loads(sys.argv[2])
s = f"  round {sys.argv[4]} {sys.argv[3]:<16} /api ok {100 * api['good'] / max(api['offered'], 1):6.2f}% p99 {api['p99_2xx_ms']:7.1f} ms"
if batch:
    s += f"   /batch/ good {batch['good'] / batch['seconds']:6.0f}/s shed {batch['shed']} gave up {batch['gave_up']}"
print(s)
PY
}
echo "H1: /api at $API_RATE req/s, /batch/ at $BATCH_RATE req/s, ${SECS}s, $ROUNDS_H rounds"
ORDER=("alone $W_CLASSES no" "weir-classes $W_CLASSES yes" "weir-plain $W_PLAIN yes" "haproxy-priority $HAP yes")
for round in $(seq 1 "$ROUNDS_H"); do
    for i in 0 1 2 3; do
        read -r label addr batch <<<"${ORDER[$(((i + round - 1) % 4))]}"
        run_h1 "$round" "$label" "$addr" "$batch"
    done
done

python3 - "$OUT/results.jsonl" "$OUT/versions.txt" >"$OUT/results.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(open(sys.argv[2]).read().strip() + "\n")
cap = next(r["rps"] for r in rows if r["scenario"] == "H1-capacity")
h1 = [r for r in rows if r["scenario"] == "H1"]
med = statistics.median
alone_p99 = med([r["api"]["p99_2xx_ms"] for r in h1 if r["target"] == "alone"])
print(f"### H1: priority flood (capacity measured {cap:.0f} req/s; /api at 50%, /batch/ at 3x)\n")
print("| target | /api success | /api 2xx p99 ms | p99 vs alone | /batch/ goodput/s | of what /api leaves |\n|---|---|---|---|---|---|")
for t in ("alone", "weir-classes", "weir-plain", "haproxy-priority"):
    rs = [r for r in h1 if r["target"] == t]
    if not rs:
        continue
    ok = med([100 * r["api"]["good"] / max(r["api"]["offered"], 1) for r in rs])
    p99 = med([r["api"]["p99_2xx_ms"] for r in rs])
    if t == "alone":
        print(f"| /api alone (median of {len(rs)}) | {ok:.2f}% | {p99:.1f} | 1.00x | - | - |")
        continue
    bg = med([r["batch"]["good"] / r["batch"]["seconds"] for r in rs])
    left = med([cap - r["api"]["good"] / r["api"]["seconds"] for r in rs])
    print(f"| {t} (median of {len(rs)}) | {ok:.2f}% | {p99:.1f} | {p99 / alone_p99:.2f}x | {bg:.0f} | {100 * bg / left:.1f}% |")
print()
PY
cat "$OUT/results.md"
