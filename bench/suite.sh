#!/usr/bin/env bash
# The benchmark suite: weir against nginx and HAProxy (and the backend directly), in one run, on
# 127.0.0.1 only. Usage: bash bench/suite.sh [SECONDS per measurement, default 10]
#
# Scenarios (BENCHMARKS.md says what each means):
#   A  tiny responses, HTTP/1.1 keep-alive, 64 connections, closed loop (wrk): requests/s, p50/p99,
#      and the proxy's CPU time per request, over ROUNDS_A (default 8) interleaved rounds of
#      A_SECONDS (default 3); then open loop at half of HAProxy's maximum (its slowest round's
#      req/s, or F_RATE), over ROUNDS_F (default 8) interleaved rounds of F_SECONDS (default 5).
#   B  overload: backend capacity 16 x 20 ms (800 requests/s), offered 4,000 requests/s open loop.
#   C  idle connections: IDLE_CONNS (default 9,500) idle keep-alive connections, resident memory
#      per connection (HAProxy needs two descriptors per connection of its maxconn, and a file
#      limit of 20,000, as on the machine measured, caps it below 10,000).
#   D  TLS: new handshakes/s and keep-alive HTTPS, weir vs nginx (bench/tls.rs).
#   E  HTTP/2 from the client (h2load, prior knowledge) through weir and nginx.
#   F  the adaptive limit (bench/adaptive.sh): capacity steps, low load, a shared backend, CPU.
#   G  WebSocket (bench/websocket.sh): messages/s, round-trip latency and CPU, weir vs nginx.
#   H  shedding the right work (bench/shed.sh): a priority flood, weir with and without classes
#      and HAProxy with set-priority-class.
# The proxy under test runs pinned to core 1 with one worker; the backend and the load generator
# share core 0. Every process started here is stopped on exit, by PID.
#
# Writes target/bench-suite/results.md (tables) and target/bench-suite/results.jsonl (raw numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
OUT=target/bench-suite
mkdir -p "$OUT"
: >"$OUT/results.jsonl"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

need() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v taskset >/dev/null || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}
need

echo "building (release)..."
source bench/lib.sh
WEIR_BIN=$(release_weir "$OUT")
BACKEND_BIN=$(bench_bin backend)
OPENLOOP_BIN=$(bench_bin openloop)
IDLE_BIN=$(bench_bin idle)
cargo bench --locked --bench tls --no-run --quiet 2>/dev/null
IDLE_CONNS=${IDLE_CONNS:-9500}

BACKEND=127.0.0.1:19100
WEIR=127.0.0.1:19001
NGINX=127.0.0.1:19002
HAPROXY=127.0.0.1:19003
WEIR_H2=127.0.0.1:19011
NGINX_H2=127.0.0.1:19012
LG="taskset -c 0"      # load generator and backend
PROXY="taskset -c 1"   # the proxy under test

TICK=$(getconf CLK_TCK)

# ---- configurations ----
cat >"$OUT/weir.toml" <<EOF
[admin]
addr = "127.0.0.1:19901"
[log]
access = false
[[listener]]
name = "h1"
addr = "$WEIR"
max_connections = 12000
[[listener]]
name = "h2"
addr = "$WEIR_H2"
[[upstream]]
name = "a"
addr = "$BACKEND"
max_concurrency = 256
max_queue = 1024
[[upstream]]
name = "b"
addr = "$BACKEND"
max_concurrency = 16
max_queue = 64
queue_timeout = "100ms"
request_timeout = "10s"
[[route]]
path_prefix = "/work"
upstream = "b"
[[route]]
upstream = "a"
EOF
cat >"$OUT/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $PWD/$OUT/nginx.pid;
error_log $PWD/$OUT/nginx.error.log warn;
daemon off;
events { worker_connections 12000; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $PWD/$OUT/nginx-tmp;
    proxy_temp_path $PWD/$OUT/nginx-tmp;
    upstream a { server $BACKEND; keepalive 256; }
    upstream b { server $BACKEND max_conns=16; keepalive 64; }
    server {
        listen $NGINX reuseport;
        listen $NGINX_H2 http2;
        location / { proxy_pass http://a; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location /work { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
mkdir -p "$OUT/nginx-tmp"
{ haproxy_head 100ms; cat <<EOF
frontend fe
    bind $HAPROXY
    use_backend b if { path_beg /work }
    default_backend a
backend a
    server s1 $BACKEND maxconn 256
backend b
    # maxqueue does not bound the queue of a backend with one server: deny past 64 waiting.
    http-request deny deny_status 503 if { queue(b) ge 64 }
    server s1 $BACKEND maxconn 16
EOF
} >"$OUT/haproxy.cfg"

# ---- processes ----
require_free_ports "$BACKEND" "$WEIR" "$NGINX" "$HAPROXY" "$WEIR_H2" "$NGINX_H2" 127.0.0.1:19901
$LG "$BACKEND_BIN" "$BACKEND" 16 20 >"$OUT/backend.log" 2>&1 & BACKEND_PID=$!; PIDS+=($BACKEND_PID)
wait_port "$BACKEND"
$PROXY "$WEIR_BIN" --config "$OUT/weir.toml" >"$OUT/weir.log" 2>&1 & WEIR_PID=$!; PIDS+=($WEIR_PID)
$PROXY nginx -c "$PWD/$OUT/nginx.conf" >"$OUT/nginx.log" 2>&1 & NGINX_PID=$!; PIDS+=($NGINX_PID)
$PROXY haproxy -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 & HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)
for a in "$WEIR" "$NGINX" "$HAPROXY" "$WEIR_H2" "$NGINX_H2"; do wait_port "$a"; done
nginx_pids() { echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"; }
declare -A ADDR=([direct]=$BACKEND [weir]=$WEIR [nginx]=$NGINX [haproxy]=$HAPROXY)
pids_of() { case $1 in weir) echo $WEIR_PID;; nginx) nginx_pids;; haproxy) echo $HAPROXY_PID;; *) echo;; esac; }

record() { echo "$1" >>"$OUT/results.jsonl"; }
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.3f", v/1000; else if (v ~ /ms$/) printf "%.3f", v+0; else if (v ~ /s$/) printf "%.3f", v*1000; else printf "%s", v }'; }

echo "versions: $("$WEIR_BIN" --version), $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | awk '{print "haproxy/"$3}'), $(wrk --version 2>&1 | head -1 | awk '{print "wrk/"$2}')" | tee "$OUT/versions.txt"

# ---- A: closed loop ----
# ROUNDS_A short interleaved rounds (default 8 of A_SECONDS, default 3 s, each after a 1 s
# warm-up), every target once per round, the order rotated: this machine drifts between slow
# and fast phases over tens of seconds, and one long pass would charge a phase to whichever
# target it fell on. CPU per request is the sum of CPU time over the sum of requests of all
# rounds; the tables also give weir's ratio to each peer round by round.
ROUNDS_A=${ROUNDS_A:-8}
A_SECONDS=${A_SECONDS:-3}
echo "A: closed loop, 64 connections, $ROUNDS_A interleaved rounds of ${A_SECONDS}s"
declare -A RPS
ORDER=(direct weir nginx haproxy)
for t in "${ORDER[@]}"; do $LG wrk -t1 -c64 -d2s "http://${ADDR[$t]}/" >/dev/null; done   # warm-up
for round in $(seq 1 "$ROUNDS_A"); do
    for i in 0 1 2 3; do
        t=${ORDER[$(((i + round - 1) % 4))]}
        url="http://${ADDR[$t]}/"
        $LG wrk -t1 -c64 -d1s "$url" >/dev/null   # warm-up
        pids=$(pids_of $t)
        c0=$(cpu_ticks $pids)
        out=$($LG wrk -t1 -c64 -d"${A_SECONDS}s" --latency "$url")
        c1=$(cpu_ticks $pids)
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        total=$(echo "$out" | awk '/requests in/ {print $1}')
        errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {s = s $0 " "} END {print s}')
        p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
        p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
        cpu_s=$(awk -v c=$((c1 - c0)) -v tick="$TICK" 'BEGIN { printf "%.2f", c / tick }')
        cpu_us=$(awk -v c=$((c1 - c0)) -v n="$total" -v tick="$TICK" 'BEGIN { if (n > 0 && c > 0) printf "%.2f", c / tick * 1e6 / n; else print "null" }')
        RPS[$t]="${RPS[$t]:-} $rps"
        record "{\"scenario\":\"A\",\"round\":$round,\"target\":\"$t\",\"seconds\":$A_SECONDS,\"rps\":$rps,\"requests\":$total,\"p50_ms\":$p50,\"p99_ms\":$p99,\"cpu_s\":$cpu_s,\"cpu_us_per_request\":$cpu_us,\"errors\":\"$errs\"}"
        printf '  round %s %-8s %10s req/s  p50 %7s ms  p99 %7s ms  CPU %6s µs/request %s\n' "$round" "$t" "$rps" "$p50" "$p99" "$cpu_us" "$errs"
    done
done

# The same at a fixed rate, in ROUNDS_F interleaved rounds (default 8 of F_SECONDS, default 5 s,
# each after a 1 s warm-up), the order rotated: a p99 at this rate is set by a few milliseconds
# of stall, and one pass per target charged the machine's slow phase to whichever it fell on.
# The rate is half of HAProxy's maximum in its slowest round: what it sustains in either of the
# machine's phases. Half of a fast-phase maximum is more than any target carries in a slow phase,
# and the latencies then measure a queue, not the proxy. When every round of A fell in a fast
# phase, its slowest round is one too: F_RATE sets the rate instead (the generators' lag shows
# whether a target kept up).
ROUNDS_F=${ROUNDS_F:-8}
F_SECONDS=${F_SECONDS:-5}
slowest() { tr ' ' '\n' | grep . | sort -g | sed -n 1p; }
half=$(awk -v r="$(echo "${RPS[haproxy]}" | slowest)" 'BEGIN { printf "%d", r / 2 }')
if [ -n "${F_RATE:-}" ]; then
    echo "A: half of HAProxy's slowest round would be $half requests/s; F_RATE sets $F_RATE"
    half=$F_RATE
fi
echo "A: open loop at $half requests/s, $ROUNDS_F interleaved rounds of ${F_SECONDS}s"
for round in $(seq 1 "$ROUNDS_F"); do
    for i in 0 1 2 3; do
        t=${ORDER[$(((i + round - 1) % 4))]}
        $LG "$OPENLOOP_BIN" "http://${ADDR[$t]}/" "$half" 1 >/dev/null   # warm-up
        line=$($LG "$OPENLOOP_BIN" "http://${ADDR[$t]}/" "$half" "$F_SECONDS")
        record "{\"scenario\":\"A-fixed\",\"round\":$round,\"target\":\"$t\",\"result\":$line}"
        printf '  round %s %-8s %s\n' "$round" "$t" "$line"
    done
done

# ---- B: overload ----
echo "B: backend capacity 16 x 20 ms = 800 req/s, offered 4000 req/s open loop"
# The backend's real capacity on this machine: 16 clients in a closed loop, straight to it.
cap=$($LG wrk -t1 -c16 -d"${SECONDS_PER_RUN}s" "http://$BACKEND/work" | awk '/Requests\/sec/ {print $2}')
record "{\"scenario\":\"B-capacity\",\"target\":\"direct\",\"rps\":$cap}"
echo "  measured capacity: $cap req/s"
for t in direct weir nginx haproxy; do
    # Warm-up for the limiters (their backend connections open). Not direct: the backend would
    # still be working through the warm-up's queue when the measurement starts.
    [ "$t" = direct ] || $LG "$OPENLOOP_BIN" "http://${ADDR[$t]}/work" 4000 2 >/dev/null
    line=$($LG "$OPENLOOP_BIN" "http://${ADDR[$t]}/work" 4000 "$SECONDS_PER_RUN")
    record "{\"scenario\":\"B\",\"target\":\"$t\",\"result\":$line}"
    printf '  %-8s %s\n' "$t" "$line"
done

# ---- C: idle connections ----
echo "C: $IDLE_CONNS idle keep-alive connections, resident memory per connection"
rss_kb() { local t=0; for p in "$@"; do [ -r "/proc/$p/status" ] && t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
for t in direct weir nginx haproxy; do
    pids=$(pids_of $t); [ "$t" = direct ] && pids=$BACKEND_PID
    before=$(rss_kb $pids)
    $LG "$IDLE_BIN" "${ADDR[$t]}" "$IDLE_CONNS" 120 >"$OUT/idle.out" 2>&1 & holder=$!
    for _ in $(seq 1 600); do grep -q '^ready' "$OUT/idle.out" && break; sleep 0.1; done
    sleep 1
    after=$(rss_kb $pids)
    held=$(awk '/^ready/ {print $2}' "$OUT/idle.out")
    kill "$holder" 2>/dev/null || true; wait "$holder" 2>/dev/null || true
    per=$(awk -v a="$after" -v b="$before" -v n="${held:-0}" 'BEGIN { if (n > 0) printf "%.0f", (a - b) * 1024 / n; else print "null" }')
    record "{\"scenario\":\"C\",\"target\":\"$t\",\"connections\":${held:-0},\"rss_before_kb\":$before,\"rss_after_kb\":$after,\"bytes_per_connection\":$per}"
    printf '  %-8s %6s connections held, RSS %7s -> %7s kB: %6s bytes/connection\n' "$t" "${held:-0}" "$before" "$after" "$per"
    sleep 1   # let the closed connections go before the next target
done

# ---- D: TLS ----
echo "D: TLS handshakes and keep-alive HTTPS, weir vs nginx (bench/tls.rs)"
WEIR_BIN="$PWD/$WEIR_BIN" BENCH_WEIR_CPU=1 $LG cargo bench --locked --bench tls 2>/dev/null | grep -E '^\||weir / nginx' | tee "$OUT/tls.md"

# ---- E: HTTP/2 from the client ----
echo "E: h2load, 64 connections x 10 streams, prior knowledge"
declare -A H2=([weir]=$WEIR_H2 [nginx]=$NGINX_H2)
for t in weir nginx; do
    $LG h2load -c64 -m10 -D2 "http://${H2[$t]}/" >/dev/null 2>&1 || true
    pids=$(pids_of $t)
    c0=$(cpu_ticks $pids)
    out=$($LG h2load -c64 -m10 -D"$SECONDS_PER_RUN" "http://${H2[$t]}/" 2>&1)
    c1=$(cpu_ticks $pids)
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    done_n=$(echo "$out" | awk '/^requests:/ {print $8}')
    ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
    cpu_us=$(awk -v c=$((c1 - c0)) -v n="$done_n" -v tick="$TICK" 'BEGIN { if (n > 0 && c > 0) printf "%.2f", c / tick * 1e6 / n; else print "null" }')
    record "{\"scenario\":\"E\",\"target\":\"$t\",\"rps\":${rps:-0},\"succeeded\":${done_n:-0},\"status_2xx\":${ok:-0},\"cpu_us_per_request\":$cpu_us}"
    printf '  %-8s %10s req/s  2xx %s of %s  CPU %6s µs/request\n' "$t" "$rps" "$ok" "$done_n" "$cpu_us"
done

# ---- F: the adaptive limit ----
# bench/adaptive.sh, with this run's weir binary, when SKIP_F is unset: capacity steps against
# fixed limits, HAProxy and direct; low load; three weirs on one backend; CPU fixed vs auto.
if [ -z "${SKIP_F:-}" ]; then
    echo "F: the adaptive limit (bench/adaptive.sh; results in $OUT/adaptive)"
    WEIR_BIN=$WEIR_BIN ADAPTIVE_OUT=$OUT/adaptive bash bench/adaptive.sh "$SECONDS_PER_RUN"
fi

# ---- G: WebSocket ----
# bench/websocket.sh, with this run's weir binary, when SKIP_G is unset: many sockets, one socket's
# latency, 1 MiB messages; weir against nginx and the backend directly.
if [ -z "${SKIP_G:-}" ]; then
    echo "G: WebSocket (bench/websocket.sh; results in $OUT/websocket)"
    WEIR_BIN=$WEIR_BIN WEBSOCKET_OUT=$OUT/websocket bash bench/websocket.sh
fi

# ---- H: shedding the right work ----
if [ -z "${SKIP_H:-}" ]; then
    echo "H: shedding the right work (bench/shed.sh; results in $OUT/shed)"
    WEIR_BIN=$WEIR_BIN SHED_OUT=$OUT/shed bash bench/shed.sh "$SECONDS_PER_RUN"
fi

python3 - "$OUT/results.jsonl" "$OUT/versions.txt" >"$OUT/results.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("# Benchmark results\n\n" + open(sys.argv[2]).read().strip() + "\n")
def ratio(v, base): return f"{v / base:.2f}x" if base else "-"
import statistics
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
a_rows = [r for r in rows if r["scenario"] == "A"]
targets = list(dict.fromkeys(r["target"] for r in a_rows))
rounds = sorted({r.get("round", 1) for r in a_rows})
by = {(r.get("round", 1), r["target"]): r for r in a_rows}
def total_cpu(t):
    rs = [r for r in a_rows if r["target"] == t]
    n = sum(r["requests"] for r in rs)
    c = sum(r.get("cpu_s") or 0 for r in rs)
    return c * 1e6 / n if n and c else None
def total_rps(t):
    rs = [r for r in a_rows if r["target"] == t]
    secs = sum(r.get("seconds", 0) for r in rs)
    return sum(r["requests"] for r in rs) / secs if secs else med([r["rps"] for r in rs])
print(f"## A. closed loop, 64 connections\n\n{len(rounds)} interleaved rounds, the order rotated each round. req/s and CPU per request over all rounds together; p50 and p99 the median of the rounds'.\n")
print("| target | req/s | p50 ms | p99 ms | CPU µs/request | weir CPU ratio | weir req/s ratio |\n|---|---|---|---|---|---|---|")
w_cpu, w_rps = total_cpu("weir"), total_rps("weir")
for t in targets:
    rs = [r for r in a_rows if r["target"] == t]
    cpu, rps = total_cpu(t), total_rps(t)
    cr = f"{w_cpu / cpu:.2f}x" if t in ("nginx", "haproxy") and cpu and w_cpu else ""
    rr = f"{w_rps / rps:.2f}x" if t in ("nginx", "haproxy") and rps else ""
    print(f"| {t} | {rps:.0f} | {med([r['p50_ms'] for r in rs]):.3f} | {med([r['p99_ms'] for r in rs]):.3f} | {f'{cpu:.2f}' if cpu else '-'} | {cr} | {rr} |")
print("\nweir against each peer, round by round (CPU per request: below 1.00x is less than the peer's; req/s: above 1.00x is more):\n")
print("| round | weir CPU / nginx | weir CPU / HAProxy | weir req/s / nginx | weir req/s / HAProxy |\n|---|---|---|---|---|")
ratios = {k: [] for k in ("cn", "ch", "rn", "rh")}
for n in rounds:
    w, ng, hp = by.get((n, "weir")), by.get((n, "nginx")), by.get((n, "haproxy"))
    if not (w and ng and hp) or None in (w["cpu_us_per_request"], ng["cpu_us_per_request"], hp["cpu_us_per_request"]):
        continue
    row = {"cn": w["cpu_us_per_request"] / ng["cpu_us_per_request"], "ch": w["cpu_us_per_request"] / hp["cpu_us_per_request"],
           "rn": w["rps"] / ng["rps"], "rh": w["rps"] / hp["rps"]}
    for k, v in row.items():
        ratios[k].append(v)
    print(f"| {n} | {row['cn']:.2f}x | {row['ch']:.2f}x | {row['rn']:.2f}x | {row['rh']:.2f}x |")
if ratios["cn"]:
    print("| median | " + " | ".join(f"{med(ratios[k]):.2f}x" for k in ("cn", "ch", "rn", "rh")) + " |")
cap = next((r["rps"] for r in rows if r["scenario"] == "B-capacity"), None)
for scen, title in (("A-fixed", "A. open loop at a fixed rate (half of HAProxy's slowest round, or F_RATE)"), ("B", "B. overload, 4,000 req/s offered to 800 req/s of capacity")):
    print(f"\n## {title}\n")
    if scen == "B" and cap:
        print(f"Backend capacity measured in this run (16 clients, closed loop, direct): {cap:.0f} req/s.\n")
    scen_rows = [r for r in rows if r["scenario"] == scen]
    if scen == "A-fixed" and scen_rows:
        print(f"{scen_rows[0]['result']['offered_rps']:.0f} requests/s, {len({r.get('round', 1) for r in scen_rows})} interleaved rounds, the order rotated each round. ", end="")
    print("Latencies from the scheduled send; the \"from send\" columns from the actual send; \"lag\": how late the generator itself sent (p99).\n")
    print("| target | 2xx | 503 | other | errors | goodput/s | of capacity | 2xx p50 ms | 2xx p99 ms | 503 p50 ms | 503 p99 ms | 2xx p99 from send | 503 p99 from send | lag p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(scen_rows, key=lambda r: (r.get("round", 0), ["direct", "weir", "nginx", "haproxy"].index(r["target"]))):
        x = r["result"]
        share = f"{100 * x['goodput_rps'] / cap:.1f}%" if scen == "B" and cap else "-"
        name = f"{r['target']} (round {r['round']})" if "round" in r else r["target"]
        print(f"| {name} | {x['ok']} | {x['status_503']} | {x['other']} | {x['errors']} | {x['goodput_rps']} | {share} | {x['ok_p50_ms']} | {x['ok_p99_ms']} | {x['u503_p50_ms']} | {x['u503_p99_ms']} | {x['ok_p99_from_send_ms']} | {x['u503_p99_from_send_ms']} | {x['send_lag_p99_ms']} |")
    if scen == "A-fixed" and scen_rows:
        f = {(r.get("round", 1), r["target"]): r["result"] for r in scen_rows}
        print("\nweir's 2xx p99 against each peer's, round by round (below 1.00x is lower than the peer's):\n")
        print("| round | weir / nginx | weir / HAProxy |\n|---|---|---|")
        ratios_f = {"nginx": [], "haproxy": []}
        for n in sorted({k[0] for k in f}):
            w = f.get((n, "weir"))
            cells = []
            for peer in ("nginx", "haproxy"):
                p = f.get((n, peer))
                if w and p and p["ok_p99_ms"]:
                    ratios_f[peer].append(w["ok_p99_ms"] / p["ok_p99_ms"])
                    cells.append(f"{ratios_f[peer][-1]:.2f}x")
                else:
                    cells.append("-")
            print(f"| {n} | " + " | ".join(cells) + " |")
        print("| median | " + " | ".join(f"{med(ratios_f[p]):.2f}x" if ratios_f[p] else "-" for p in ("nginx", "haproxy")) + " |")
c = [r for r in rows if r["scenario"] == "C"]
if c:
    print("\n## C. idle keep-alive connections\n\n| target | connections | RSS before kB | RSS after kB | bytes per connection |\n|---|---|---|---|---|")
    for r in c:
        print(f"| {r['target']} | {r['connections']} | {r['rss_before_kb']} | {r['rss_after_kb']} | {r['bytes_per_connection']} |")
import os
tls = os.path.join(os.path.dirname(sys.argv[1]), "tls.md")
if os.path.exists(tls):
    print("\n## D. TLS (ECDSA P-256), weir vs nginx\n")
    print(open(tls).read().strip())
shed = os.path.join(os.path.dirname(sys.argv[1]), "shed", "results.md")
if os.path.exists(shed):
    print("\n## H. Shedding the right work\n")
    print(open(shed).read().strip())
ws = os.path.join(os.path.dirname(sys.argv[1]), "websocket", "results.md")
if os.path.exists(ws):
    print("\n## G. WebSocket, weir vs nginx\n")
    print(open(ws).read().strip())
print("\n## E. HTTP/2, 64 connections x 10 streams\n\n| target | req/s | 2xx | CPU µs/request |\n|---|---|---|---|")
for r in rows:
    if r["scenario"] == "E":
        print(f"| {r['target']} | {r['rps']} | {r['status_2xx']} | {r['cpu_us_per_request']} |")
PY
cat "$OUT/results.md"
