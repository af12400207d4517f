#!/usr/bin/env bash
# WebSocket through weir and nginx, against the backend directly, in one run, on 127.0.0.1 only
# (issue 23); bench/suite.sh runs it as its scenario G, or run it alone: bash bench/websocket.sh
#
#   G1 many sockets: 64 WebSockets, each sending a 64-byte message and waiting for its echo, in
#      a closed loop: messages/s, the round trip's p50 and p99, and the proxy's CPU per message.
#   G2 latency: one WebSocket, the same 64-byte echo in a closed loop: the round trip's p50/p99.
#   G3 large messages: one WebSocket echoing 1 MiB messages: MB/s each way.
# Each over ROUNDS_G (default 6) interleaved rounds of G_SECONDS (default 3), the order of the
# targets rotated each round; tables give medians of weir's per-round ratios to nginx. The
# backend (bench/websocket.rs, tungstenite) and the client share core 0; weir and nginx run
# pinned to core 1 with one worker, without access logs, with their default buffers. Every
# process started here is stopped on exit, by PID. Writes target/bench-websocket/results.jsonl
# and results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${WEBSOCKET_OUT:-target/bench-websocket}
ROUNDS_G=${ROUNDS_G:-6}
G_SECONDS=${G_SECONDS:-3}
mkdir -p "$OUT/nginx-tmp"
: >"$OUT/results.jsonl"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

for tool in nginx taskset; do
    command -v $tool >/dev/null || { echo "needs $tool (bench/suite.sh installs it)" >&2; exit 1; }
done
source bench/lib.sh
WEIR_BIN=${WEIR_BIN:-$(release_weir "$OUT")}
WS_BIN=$(bench_bin websocket)
LG="taskset -c 0"
PROXY="taskset -c 1"
BACKEND=127.0.0.1:19300
WEIR=127.0.0.1:19301
NGINX=127.0.0.1:19302
ADMIN=127.0.0.1:19309
require_free_ports "$BACKEND" "$WEIR" "$NGINX" "$ADMIN"
TICK=$(getconf CLK_TCK)

single_upstream_config "$OUT/weir.toml" "$WEIR" "$BACKEND" "$ADMIN"
cat >"$OUT/nginx.conf" <<NGINX
worker_processes 1;
pid $PWD/$OUT/nginx.pid;
error_log $PWD/$OUT/nginx.error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $PWD/$OUT/nginx-tmp;
    proxy_temp_path $PWD/$OUT/nginx-tmp;
    upstream ws { server $BACKEND; }
    server {
        listen $NGINX;
        location / {
            proxy_pass http://ws;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 300s;
        }
    }
}
NGINX

$LG "$WS_BIN" backend "$BACKEND" >"$OUT/backend.log" 2>&1 & PIDS+=($!)
wait_port "$BACKEND"
$PROXY "$WEIR_BIN" --config "$OUT/weir.toml" >"$OUT/weir.log" 2>&1 & WEIR_PID=$!; PIDS+=($WEIR_PID)
$PROXY nginx -c "$PWD/$OUT/nginx.conf" >"$OUT/nginx.log" 2>&1 & NGINX_PID=$!; PIDS+=($NGINX_PID)
wait_port "$WEIR"; wait_port "$NGINX"
declare -A ADDR=([direct]=$BACKEND [weir]=$WEIR [nginx]=$NGINX)
pids_of() { case $1 in weir) echo $WEIR_PID;; nginx) echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')";; *) echo;; esac; }
echo "versions: $("$WEIR_BIN" --version), $(nginx -v 2>&1 | sed 's/.*: //')" | tee "$OUT/versions.txt"

# name, connections, message size
CASES=("G1 64 64" "G2 1 64" "G3 1 1048576")
ORDER=(direct weir nginx)
for t in "${ORDER[@]}"; do $LG "$WS_BIN" load "${ADDR[$t]}" 8 1 64 >/dev/null; done   # warm-up
for round in $(seq 1 "$ROUNDS_G"); do
    for c in "${CASES[@]}"; do
        read -r name conns size <<<"$c"
        for i in 0 1 2; do
            t=${ORDER[$(((i + round - 1) % 3))]}
            pids=$(pids_of "$t")
            c0=$(cpu_ticks $pids)
            out=$($LG "$WS_BIN" load "${ADDR[$t]}" "$conns" "$G_SECONDS" "$size")
            c1=$(cpu_ticks $pids)
            cpu_us=$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); c=$((c1 - c0)); print(round(c / $TICK * 1e6 / r['messages'], 2) if r['messages'] and c else 'null')" "$out")
            echo "{\"scenario\":\"$name\",\"round\":$round,\"target\":\"$t\",\"connections\":$conns,\"size\":$size,\"cpu_us_per_message\":$cpu_us,\"result\":$out}" >>"$OUT/results.jsonl"
            printf '  round %s %s %-7s %s cpu_us/msg=%s\n' "$round" "$name" "$t" "$out" "$cpu_us"
        done
    done
done

python3 - "$OUT/results.jsonl" "$OUT/versions.txt" >"$OUT/results.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(open(sys.argv[2]).read().strip() + "\n")
med = lambda xs: statistics.median(xs) if xs else None
titles = {"G1": "64 WebSockets, 64-byte echo, closed loop", "G2": "one WebSocket, 64-byte echo, closed loop", "G3": "one WebSocket, 1 MiB echo"}
for scen, title in titles.items():
    rs = [r for r in rows if r["scenario"] == scen]
    if not rs:
        continue
    print(f"### {scen}: {title}\n")
    print("| target | messages/s | MB/s each way | p50 ms | p99 ms | proxy CPU µs/message | errors |\n|---|---|---|---|---|---|---|")
    for t in ("direct", "weir", "nginx"):
        tr = [r for r in rs if r["target"] == t]
        if not tr:
            continue
        m = lambda k: med([r["result"][k] for r in tr])
        cpu = med([r["cpu_us_per_message"] for r in tr if r["cpu_us_per_message"] is not None])
        cpu_s = f"{cpu:.2f}" if cpu is not None else "-"
        print(f"| {t} (median of {len(tr)}) | {m('msgs_per_s'):.0f} | {m('mb_per_s'):.2f} | {m('p50_ms'):.3f} | {m('p99_ms'):.3f} | {cpu_s} | {sum(r['result']['errors'] for r in tr)} |")
    by = {(r["round"], r["target"]): r for r in rs}
    ratio = {"msgs_per_s": [], "p50_ms": [], "p99_ms": [], "cpu": []}
    for n in sorted({r["round"] for r in rs}):
        w, x = by.get((n, "weir")), by.get((n, "nginx"))
        if not (w and x):
            continue
        for k in ("msgs_per_s", "p50_ms", "p99_ms"):
            if x["result"][k]:
                ratio[k].append(w["result"][k] / x["result"][k])
        if w["cpu_us_per_message"] and x["cpu_us_per_message"]:
            ratio["cpu"].append(w["cpu_us_per_message"] / x["cpu_us_per_message"])
    cells = [f"{med(v):.2f}x" if v else "-" for v in ratio.values()]
    print(f"\nweir ÷ nginx, median of per-round ratios: messages/s {cells[0]}, p50 {cells[1]}, p99 {cells[2]}, CPU per message {cells[3]}\n")
PY
cat "$OUT/results.md"
