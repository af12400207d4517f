#!/usr/bin/env bash
# Shedding the right work (issue 22), in one run, on 127.0.0.1 only; bench/suite.sh runs it as
# its scenario H, or run it alone: bash bench/shed.sh [SECONDS, default 10]
#
#   H1 priority flood: a backend of 16 workers x 20 ms (bench/capacity.rs); /api offered at 50% of
#      its measured capacity, /batch/ at 3x, open loop, clients giving up after 1 s. Targets:
#      weir with /batch/ sheddable (routes), weir without classes, HAProxy with
#      `set-priority-class` (batch dequeued after api), and /api alone through weir. /api's
#      success and 2xx p99 against /api alone; /batch/'s goodput against what /api leaves.
#      Also weir with classes and `priority_reserve = 1`, and weir without classes but with
#      CoDel (codel = true), for their defaults.
#      ROUNDS_H (default 3) interleaved rounds.
#   H2 tenant flood: one tenant (x-tenant: noisy) at 3x capacity, two at 20% each; weir with
#      tenant_header against weir without: each tenant's success and 2xx p99, and the noisy
#      tenant's goodput against what the quiet ones leave.
#   H3 hopeless deadlines: a flood at 2x capacity of patient clients keeps a queue of about 1 s
#      (max_queue = one second of capacity); after 3 s, requests with `x-deadline-ms: 50` at
#      50/s: their time to answer, and whether any was served (weir's deadline_unmeetable count
#      against the number sent).
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
W_CODEL=127.0.0.1:19404
W_TENANTS=127.0.0.1:19405
W_DEADLINE=127.0.0.1:19406
W_RESERVE=127.0.0.1:19407
record() { echo "$1" >>"$OUT/results.jsonl"; }
require_free_ports $CPB $W_CLASSES $W_PLAIN $HAP $W_CODEL $W_TENANTS $W_DEADLINE $W_RESERVE \
    127.0.0.1:19411 127.0.0.1:19412 127.0.0.1:19414 127.0.0.1:19415 127.0.0.1:19416 127.0.0.1:19417

# weir_config FILE LISTEN ADMIN ROUTE-KEYS [UPSTREAM-KEYS] [QUEUE]
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
max_queue = ${6:-128}
queue_timeout = "${7:-1s}"
request_timeout = "15s"
${5:-}
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
weir_config "$OUT/codel.toml" $W_CODEL 127.0.0.1:19414 '' 'codel = true'
weir_config "$OUT/reserve.toml" $W_RESERVE 127.0.0.1:19417 'priority = "sheddable"' 'priority_reserve = 1'
weir_config "$OUT/tenants.toml" $W_TENANTS 127.0.0.1:19415 '' 'tenant_header = "x-tenant"'
{ haproxy_head 1s; cat <<CFG
frontend fe
    bind $HAP
    default_backend b
backend b
    # Lower classes are dequeued first: /api before /batch/.
    http-request set-priority-class int(10) if { path_beg /batch/ }
    http-request deny deny_status 503 if { queue(b) ge 128 }
    server s1 $CPB maxconn 16
CFG
} >"$OUT/haproxy.cfg"

$LG "$CAP_BIN" backend $CPB 16 20 >"$OUT/backend.log" 2>&1 & PIDS+=($!)
wait_port $CPB
$PROXY "$WEIR_BIN" --config "$OUT/classes.toml" >"$OUT/classes.log" 2>&1 & PIDS+=($!)
$PROXY "$WEIR_BIN" --config "$OUT/plain.toml" >"$OUT/plain.log" 2>&1 & PIDS+=($!)
$PROXY "$WEIR_BIN" --config "$OUT/codel.toml" >"$OUT/codel.log" 2>&1 & PIDS+=($!)
$PROXY "$WEIR_BIN" --config "$OUT/reserve.toml" >"$OUT/reserve.log" 2>&1 & PIDS+=($!)
$PROXY "$WEIR_BIN" --config "$OUT/tenants.toml" >"$OUT/tenants.log" 2>&1 & PIDS+=($!)
$PROXY haproxy -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 & PIDS+=($!)
for a in $W_CLASSES $W_PLAIN $HAP $W_CODEL $W_TENANTS $W_RESERVE; do wait_port $a; done
echo "versions: $("$WEIR_BIN" --version), $(haproxy -v | head -1 | awk '{print "haproxy/"$3}')" | tee "$OUT/versions.txt"

CAP=$($LG "$CAP_BIN" measure $CPB 16 4)
echo "measured capacity, 16 workers x 20 ms: $CAP req/s"
record "{\"scenario\":\"H1-capacity\",\"rps\":$CAP}"
API_RATE=$(awk -v c="$CAP" 'BEGIN { printf "%d", c * 0.5 }')
QUIET_RATE=$(awk -v c="$CAP" 'BEGIN { printf "%d", c * 0.2 }')
ONE_SECOND=$(awk -v c="$CAP" 'BEGIN { printf "%d", c }')
weir_config "$OUT/deadline.toml" $W_DEADLINE 127.0.0.1:19416 '' 'deadline_header = "x-deadline-ms"' "$ONE_SECOND" 10s
$PROXY "$WEIR_BIN" --config "$OUT/deadline.toml" >"$OUT/deadline.log" 2>&1 & PIDS+=($!)
wait_port $W_DEADLINE
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
# SCENARIOS="H3" runs only those.
SCENARIOS=" ${SCENARIOS:-H1 H2 H3} "
want() { [[ "$SCENARIOS" == *" $1 "* ]]; }
if want H1; then
echo "H1: /api at $API_RATE req/s, /batch/ at $BATCH_RATE req/s, ${SECS}s, $ROUNDS_H rounds"
ORDER=("alone $W_CLASSES no" "weir-classes $W_CLASSES yes" "weir-plain $W_PLAIN yes" "haproxy-priority $HAP yes" "weir-codel $W_CODEL yes" "weir-reserve $W_RESERVE yes")
for round in $(seq 1 "$ROUNDS_H"); do
    for i in 0 1 2 3 4 5; do
        read -r label addr batch <<<"${ORDER[$(((i + round - 1) % 6))]}"
        run_h1 "$round" "$label" "$addr" "$batch"
    done
done
fi

# ---- H2: tenant flood ----
run_h2() { # ROUND LABEL ADDR
    sleep 2
    $LG "$CAP_BIN" load "http://$3/api" "$BATCH_RATE" "$SECS" header=x-tenant:noisy label=noisy >"$OUT/h2-$2-noisy.json" 2>/dev/null & local n=$!
    $LG "$CAP_BIN" load "http://$3/api" "$QUIET_RATE" "$SECS" header=x-tenant:quiet-a label=quiet-a >"$OUT/h2-$2-a.json" 2>/dev/null & local a=$!
    $LG "$CAP_BIN" load "http://$3/api" "$QUIET_RATE" "$SECS" header=x-tenant:quiet-b label=quiet-b >"$OUT/h2-$2-b.json" 2>/dev/null & local b=$!
    wait $n $a $b
    record "{\"scenario\":\"H2\",\"round\":$1,\"target\":\"$2\",\"noisy\":$(cat "$OUT/h2-$2-noisy.json"),\"quiet_a\":$(cat "$OUT/h2-$2-a.json"),\"quiet_b\":$(cat "$OUT/h2-$2-b.json")}"
    python3 - "$OUT/h2-$2-noisy.json" "$OUT/h2-$2-a.json" "$OUT/h2-$2-b.json" "$2" "$1" <<'PY'
import json, sys
rs = [json.load(open(f)) for f in sys.argv[1:4]]
print(f"  round {sys.argv[5]} {sys.argv[4]:<13} " + "   ".join(f"{r['label']} ok {100 * r['good'] / max(r['offered'], 1):6.2f}% p99 {r['p99_2xx_ms']:6.1f} ms" for r in rs))
PY
}
if want H2; then
echo "H2: tenant noisy at $BATCH_RATE req/s, quiet-a and quiet-b at $QUIET_RATE req/s each, ${SECS}s"
for round in $(seq 1 "$ROUNDS_H"); do
    if [ $((round % 2)) = 1 ]; then run_h2 "$round" weir-tenants $W_TENANTS; run_h2 "$round" weir-plain $W_PLAIN
    else run_h2 "$round" weir-plain $W_PLAIN; run_h2 "$round" weir-tenants $W_TENANTS; fi
done
fi

# ---- H3: hopeless deadlines ----
if want H3; then
echo "H3: a 1 s queue ($ONE_SECOND places) kept full by 2x capacity; 50/s with a 50 ms deadline"
sleep 2
before=$(curl -s http://127.0.0.1:19416/metrics | awk '/weir_requests_rejected_total.*reason="deadline_unmeetable"/ {print $2}')
$LG "$CAP_BIN" load "http://$W_DEADLINE/api" $((ONE_SECOND * 2)) $((SECS + 4)) timeout_ms=10000 label=flood >"$OUT/h3-flood.json" 2>/dev/null & FLOOD=$!
sleep 3
hopeless=$($LG "$CAP_BIN" load "http://$W_DEADLINE/api" 50 "$SECS" header=x-deadline-ms:50 timeout_ms=2000 label=hopeless 2>/dev/null)
wait $FLOOD
after=$(curl -s http://127.0.0.1:19416/metrics | awk '/weir_requests_rejected_total.*reason="deadline_unmeetable"/ {print $2}')
record "{\"scenario\":\"H3\",\"hopeless\":$hopeless,\"flood\":$(cat "$OUT/h3-flood.json"),\"unmeetable\":$(awk -v a="${after:-0}" -v b="${before:-0}" 'BEGIN { print a - b }')}"
echo "$hopeless" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  hopeless: %d sent, %d served, %d answered 504, time to answer p50 %.2f ms p99 %.2f ms" % (r["offered"], r["good"], r["status_504"], r["p50_all_ms"], r["p99_all_ms"]))'
fi

python3 - "$OUT/results.jsonl" "$OUT/versions.txt" >"$OUT/results.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(open(sys.argv[2]).read().strip() + "\n")
cap = next(r["rps"] for r in rows if r["scenario"] == "H1-capacity")
if not [r for r in rows if r["scenario"] == "H1"]:
    rows.append({"scenario": "H1", "target": "alone", "api": {"p99_2xx_ms": 1, "good": 0, "offered": 0}})
h1 = [r for r in rows if r["scenario"] == "H1"]
med = statistics.median
alone_p99 = med([r["api"]["p99_2xx_ms"] for r in h1 if r["target"] == "alone"])
print(f"### H1: priority flood (capacity measured {cap:.0f} req/s; /api at 50%, /batch/ at 3x)\n")
print("| target | /api success | /api 2xx p99 ms | p99 vs alone | /batch/ goodput/s | of what /api leaves |\n|---|---|---|---|---|---|")
for t in ("alone", "weir-classes", "weir-reserve", "weir-plain", "haproxy-priority", "weir-codel"):
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
h2 = [r for r in rows if r["scenario"] == "H2"]
if h2:
    print("### H2: tenant flood (noisy at 3x capacity, quiet-a and quiet-b at 20% each)\n")
    print("| target | noisy success | noisy goodput/s | of what the quiet leave | quiet-a success | quiet-a p99 ms | quiet-b success | quiet-b p99 ms |\n|---|---|---|---|---|---|---|---|")
    for t in ("weir-tenants", "weir-plain"):
        rs = [r for r in h2 if r["target"] == t]
        if not rs:
            continue
        ok = lambda k: med([100 * r[k]["good"] / max(r[k]["offered"], 1) for r in rs])
        p99 = lambda k: med([r[k]["p99_2xx_ms"] for r in rs])
        noisy = med([r["noisy"]["good"] / r["noisy"]["seconds"] for r in rs])
        left = med([cap - (r["quiet_a"]["good"] + r["quiet_b"]["good"]) / r["quiet_a"]["seconds"] for r in rs])
        print(f"| {t} (median of {len(rs)}) | {ok('noisy'):.1f}% | {noisy:.0f} | {100 * noisy / left:.1f}% | {ok('quiet_a'):.2f}% | {p99('quiet_a'):.1f} | {ok('quiet_b'):.2f}% | {p99('quiet_b'):.1f} |")
    print()
h3 = [r for r in rows if r["scenario"] == "H3"]
for r in h3:
    x = r["hopeless"]
    print("### H3: hopeless deadlines (50 ms, behind a 1 s queue)\n")
    print("| sent | served (2xx) | answered 504 | weir's deadline_unmeetable count | time to answer p50 ms | p99 ms | flood served/s |\n|---|---|---|---|---|---|---|")
    print(f"| {x['offered']} | {x['good']} | {x['status_504']} | {r['unmeetable']:.0f} | {x['p50_all_ms']:.2f} | {x['p99_all_ms']:.2f} | {r['flood']['good'] / r['flood']['seconds']:.0f} |")
    print()
PY
cat "$OUT/results.md"
