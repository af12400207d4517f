#!/usr/bin/env bash
# The adaptive limit's scenarios (issue 21), in one run, on 127.0.0.1 only; bench/suite.sh runs it
# as its scenario F, or run it alone: bash bench/adaptive.sh [STEP_SECONDS, default 10]
#
#   F1 capacity steps: a backend of 16 -> 8 -> 24 workers of 20 ms (bench/capacity.rs), service
#      slowed 2% per request waiting inside it; offered 3x the first capacity (2,400 req/s) open
#      loop by a client that gives up after 1 s. Targets: weir auto, weir fixed 16 (right for
#      the first phase), weir fixed 64 (too high), HAProxy maxconn 16, direct. Goodput per
#      250 ms and weir's limit; per phase, steady goodput as a share of capacity and the time to
#      reach 85% of it after the step.
#   F2 low load: 75% of capacity (600 req/s, 16 workers), weir auto against fixed 16: shed share
#      and 2xx p99.
#   F3 shared backend: three weirs with auto in front of one backend of 16 workers, each offered
#      800 req/s (3x in all): the backend's throughput against its capacity, Jain's fairness of
#      the three weirs' goodput.
#   F4 CPU: scenario A's load (wrk, 64 connections, tiny answers) through weir with a fixed limit
#      and with auto, in ROUNDS_F4 (default 8) interleaved rounds of 3 s: CPU per request.
# Every weir and HAProxy runs pinned to core 1, the backends and clients to core 0. Every process
# started here is stopped on exit, by PID. Writes target/bench-adaptive/results.jsonl and .md.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP=${1:-10}
OUT=${ADAPTIVE_OUT:-target/bench-adaptive}
# SCENARIOS="F1 F4" runs only those.
SCENARIOS=" ${SCENARIOS:-F1 F2 F3 F4} "
want() { [[ "$SCENARIOS" == *" $1 "* ]]; }
mkdir -p "$OUT"
: >"$OUT/results.jsonl"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

for tool in haproxy wrk taskset; do
    command -v $tool >/dev/null || { echo "needs $tool (bench/suite.sh installs it)" >&2; exit 1; }
done
source bench/lib.sh
WEIR_BIN=${WEIR_BIN:-$(release_weir "$OUT")}
CAP_BIN=$(bench_bin capacity)
BACKEND_BIN=$(bench_bin backend)
LG="taskset -c 0"
PROXY="taskset -c 1"
CPB=127.0.0.1:19200      # the stepping backend
FAST=127.0.0.1:19201     # bench/backend.rs: tiny answers at once (F4)
TICK=$(getconf CLK_TCK)
record() { echo "$1" >>"$OUT/results.jsonl"; }

# weir_config FILE LISTEN ADMIN BACKEND LIMIT-KEYS
weir_config() {
    cat >"$1" <<CFG
[admin]
addr = "$3"
[log]
access = false
[[listener]]
name = "f"
addr = "$2"
max_connections = 12000
[[upstream]]
name = "b"
addr = "$4"
$5
max_queue = 64
queue_timeout = "100ms"
request_timeout = "2s"
CFG
}
start_weir() { # NAME LISTEN ADMIN BACKEND LIMIT-KEYS -> pid in LAST_PID
    weir_config "$OUT/$1.toml" "$2" "$3" "$4" "$5"
    $PROXY "$WEIR_BIN" --config "$OUT/$1.toml" >"$OUT/$1.log" 2>&1 & LAST_PID=$!; PIDS+=($LAST_PID)
    wait_port "$2"
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

require_free_ports $CPB $FAST 127.0.0.1:19210 127.0.0.1:19211 127.0.0.1:19212 127.0.0.1:19213 \
    127.0.0.1:19220 127.0.0.1:19221 127.0.0.1:19222 127.0.0.1:19223
$LG "$CAP_BIN" backend $CPB 16 20 >"$OUT/capacity-backend.log" 2>&1 & CPB_PID=$!; PIDS+=($CPB_PID)
wait_port $CPB

# What the backend really serves with 16, 8 and 24 workers on this machine: each phase's capacity.
CAPS=$(for n in 16 8 24; do $LG "$CAP_BIN" measure $CPB $n 4; done | paste -sd, -)
echo "measured capacity with 16, 8, 24 workers: $CAPS req/s"
record "{\"scenario\":\"F1-capacity\",\"workers\":[16,8,24],\"rps\":[$CAPS]}"

# ---- F1: capacity steps ----
SECONDS_F1=$((STEP * 3))
if want F1; then
echo "F1: capacity 16 -> 8 -> 24 workers x 20 ms, ${STEP}s each, 2400 req/s offered, clients give up after 1 s"
{ haproxy_head 100ms; cat <<CFG
frontend fe
    bind 127.0.0.1:19213
    default_backend b
backend b
    http-request deny deny_status 503 if { queue(b) ge 64 }
    server s1 $CPB maxconn 16
CFG
} >"$OUT/haproxy.cfg"
run_f1() { # LABEL ADDR [ADMIN]
    local admin_arg=()
    [ -n "${3:-}" ] && admin_arg=(admin="$3")
    curl -s "http://$CPB/_slots/16" >/dev/null
    sleep 2   # what the previous target left inside the backend drains
    local line
    line=$($LG "$CAP_BIN" load "http://$2/" 2400 "$SECONDS_F1" steps=16,8,24 capacities="$CAPS" backend=$CPB \
        "${admin_arg[@]}" label="$1" 2>"$OUT/f1-$1.txt")
    record "{\"scenario\":\"F1\",\"target\":\"$1\",\"result\":$line}"
    echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %-10s good %6d of %6d offered, shed %6d, gave up %6d, 2xx p99 %7.1f ms; phases %s" % (r["label"], r["good"], r["offered"], r["shed"], r["gave_up"], r["p99_2xx_ms"], " ".join("%d:%.0f%%/%ss" % (p["slots"], 100*p["steady_share"], p["seconds_to_85"]) for p in r["phases"])))'
}
start_weir auto 127.0.0.1:19210 127.0.0.1:19220 $CPB 'max_concurrency = "auto"'; P=$LAST_PID
run_f1 weir-auto 127.0.0.1:19210 127.0.0.1:19220; stop_pid $P
start_weir fixed16 127.0.0.1:19211 127.0.0.1:19221 $CPB 'max_concurrency = 16'; P=$LAST_PID
run_f1 weir-16 127.0.0.1:19211 127.0.0.1:19221; stop_pid $P
start_weir fixed64 127.0.0.1:19212 127.0.0.1:19222 $CPB 'max_concurrency = 64'; P=$LAST_PID
run_f1 weir-64 127.0.0.1:19212 127.0.0.1:19222; stop_pid $P
$PROXY haproxy -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 & P=$!; PIDS+=($P)
wait_port 127.0.0.1:19213
run_f1 haproxy-16 127.0.0.1:19213; stop_pid $P
run_f1 direct $CPB
fi

# ---- F2: low load ----
if want F2; then
echo "F2: 600 req/s (75% of 16 x 20 ms) for $((STEP * 2))s, weir auto vs fixed 16"
curl -s "http://$CPB/_slots/16" >/dev/null
for t in auto fixed16; do
    case $t in auto) keys='max_concurrency = "auto"';; *) keys='max_concurrency = 16';; esac
    start_weir "low-$t" 127.0.0.1:19210 127.0.0.1:19220 $CPB "$keys"; P=$LAST_PID
    sleep 2
    line=$($LG "$CAP_BIN" load "http://127.0.0.1:19210/" 600 $((STEP * 2)) admin=127.0.0.1:19220 label="low-$t" 2>"$OUT/f2-$t.txt")
    record "{\"scenario\":\"F2\",\"target\":\"weir-$t\",\"result\":$line}"
    echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %-12s offered %6d, good %6d, shed %d (%.3f%%), gave up %d, 2xx p99 %.1f ms" % (r["label"], r["offered"], r["good"], r["shed"], 100*r["shed"]/max(1,r["offered"]), r["gave_up"], r["p99_2xx_ms"]))'
    stop_pid $P
done
fi

# ---- F3: three weirs, one backend ----
if want F3; then
echo "F3: three weirs with auto, one backend of 16 x 20 ms (800 req/s), 800 req/s offered to each for $((STEP * 3))s"
curl -s "http://$CPB/_slots/16" >/dev/null
sleep 1
W3=()
for i in 0 1 2; do
    start_weir "shared$i" "127.0.0.1:1921$i" "127.0.0.1:1922$i" $CPB 'max_concurrency = "auto"'
    W3+=($LAST_PID)
done
served0=$(curl -s "http://$CPB/_served")
t0=$(date +%s.%N)
LOADS=()
for i in 0 1 2; do
    $LG "$CAP_BIN" load "http://127.0.0.1:1921$i/" 800 $((STEP * 3)) admin="127.0.0.1:1922$i" label="shared$i" \
        >"$OUT/f3-$i.json" 2>"$OUT/f3-$i.txt" & LOADS+=($!)
done
for p in "${LOADS[@]}"; do wait "$p"; done
t1=$(date +%s.%N)
served1=$(curl -s "http://$CPB/_served")
for p in "${W3[@]}"; do stop_pid "$p"; done
python3 - "$OUT" "$served0" "$served1" "$t0" "$t1" "${CAPS%%,*}" <<'PY' | tee -a "$OUT/f3.txt"
import json, sys
out, s0, s1, t0, t1, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
runs = [json.load(open(f"{out}/f3-{i}.json")) for i in range(3)]
good = [r["good"] for r in runs]
jain = sum(good) ** 2 / (3 * sum(g * g for g in good))
busy = (s1 - s0) / (t1 - t0) / cap
# Over the last two thirds (settled), from the 250 ms goodput buckets.
n = len(runs[0]["good_per_250ms"]); a = n // 3
late = [sum(r["good_per_250ms"][a:]) for r in runs]
jain_late = sum(late) ** 2 / (3 * sum(g * g for g in late))
line = {"scenario": "F3", "good": good, "jain": round(jain, 4), "jain_settled": round(jain_late, 4),
        "backend_throughput_share": round(busy, 4), "capacity_rps": cap, "backend_served": s1 - s0,
        "seconds": round(t1 - t0, 2)}
with open(f"{out}/results.jsonl", "a") as f:
    f.write(json.dumps(line) + "\n")
print(f"  goodput per weir {good}, Jain {jain:.3f} (settled, last two thirds: {jain_late:.3f}); "
      f"backend served {s1 - s0} = {100 * busy:.1f}% of its measured capacity ({cap:.0f} req/s; "
      f"{100 * (s1 - s0) / (t1 - t0) / 800:.1f}% of the nominal 800)")
PY
fi

# ---- F4: CPU per request, fixed vs auto ----
# Three weirs in front of a backend that answers at once: a fixed limit that never binds (256 for
# 64 connections), "auto" as it comes (it finds that latency grows with concurrency on the
# loaded core and keeps a few requests in flight, so requests wait in weir's queue), and "auto"
# with a floor of 256, which never binds either: the per-request cost of recording samples.
if want F4; then
ROUNDS_F4=${ROUNDS_F4:-8}
echo "F4: CPU per request, wrk 64 connections, tiny answers, weir fixed vs auto, $ROUNDS_F4 interleaved rounds of 3s"
$LG "$BACKEND_BIN" $FAST 16 20 >"$OUT/fast-backend.log" 2>&1 & P=$!; PIDS+=($P)
wait_port $FAST
start_weir cpu-fixed 127.0.0.1:19210 127.0.0.1:19220 $FAST 'max_concurrency = 256'; PF=$LAST_PID
start_weir cpu-auto 127.0.0.1:19211 127.0.0.1:19221 $FAST 'max_concurrency = "auto"'; PA=$LAST_PID
start_weir cpu-auto-floor 127.0.0.1:19212 127.0.0.1:19222 $FAST 'max_concurrency = "auto"
min_concurrency = 256
initial_concurrency = 256'; PU=$LAST_PID
declare -A ADDR=([fixed]=127.0.0.1:19210 [auto]=127.0.0.1:19211 [auto-floor]=127.0.0.1:19212) \
    PID=([fixed]=$PF [auto]=$PA [auto-floor]=$PU) ADMIN=([fixed]=127.0.0.1:19220 [auto]=127.0.0.1:19221 [auto-floor]=127.0.0.1:19222)
F4_ORDER=(fixed auto auto-floor)
for t in "${F4_ORDER[@]}"; do $LG wrk -t1 -c64 -d2s "http://${ADDR[$t]}/" >/dev/null; done
for round in $(seq 1 "$ROUNDS_F4"); do
    for i in 0 1 2; do
        t=${F4_ORDER[$(((i + round - 1) % 3))]}
        $LG wrk -t1 -c64 -d1s "http://${ADDR[$t]}/" >/dev/null
        c0=$(cpu_ticks ${PID[$t]})
        out=$($LG wrk -t1 -c64 -d3s "http://${ADDR[$t]}/")
        c1=$(cpu_ticks ${PID[$t]})
        total=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {s = s $0 " "} END {print s}')
        limit=$(curl -s "http://${ADMIN[$t]}/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["upstreams"][0]["limit"])')
        record "{\"scenario\":\"F4\",\"round\":$round,\"target\":\"$t\",\"requests\":$total,\"rps\":$rps,\"cpu_ticks\":$((c1 - c0)),\"tick\":$TICK,\"limit\":$limit,\"errors\":\"$errs\"}"
        printf '  round %s %-10s %10s req/s  CPU %6s µs/request  limit %s %s\n' "$round" "$t" "$rps" \
            "$(awk -v c=$((c1 - c0)) -v n="$total" -v tick="$TICK" 'BEGIN { printf "%.2f", c / tick * 1e6 / n }')" "$limit" "$errs"
    done
done
python3 - "$OUT/results.jsonl" <<'PY' | tee "$OUT/f4.txt"
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if '"F4"' in l]
by = {}
for r in rows:
    by.setdefault(r["round"], {})[r["target"]] = r["cpu_ticks"] / r["tick"] * 1e6 / r["requests"]
def tot(t):
    mine = [r for r in rows if r["target"] == t]
    return sum(r["cpu_ticks"] for r in mine) / mine[0]["tick"] * 1e6 / sum(r["requests"] for r in mine)
for t in ("auto", "auto-floor"):
    ratios = [v[t] / v["fixed"] for v in by.values() if t in v and "fixed" in v]
    print(f"  CPU per request, {t} / fixed: {tot(t):.2f} / {tot('fixed'):.2f} µs = {tot(t) / tot('fixed'):.3f}x over all rounds, "
          f"median of per-round ratios {statistics.median(ratios):.3f}x ({', '.join(f'{x:.3f}' for x in ratios)})")
PY
fi
