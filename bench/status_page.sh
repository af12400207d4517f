#!/usr/bin/env bash
# Checks the admin listener's status page (GET /) in a real headless browser: runs `weir demo`
# (an adaptive limit following a backend whose capacity halves and comes back), lets Debian's
# Chromium load the page while the demo runs, saves a screenshot, and checks in the page's DOM,
# as the browser built it, that every chart was drawn with data. 127.0.0.1 only; every process
# started here is stopped on exit. Not run by CI (it installs Chromium).
# Usage: bash bench/status_page.sh   -> target/status-page/{page.png,dom.html,demo.txt}
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/status-page
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

if ! command -v chromium >/dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
source bench/lib.sh
WEIR_BIN=$(release_weir "$OUT")
ADMIN=127.0.0.1:19931
require_free_ports $ADMIN
"$WEIR_BIN" demo --duration 45s --admin $ADMIN >"$OUT/demo.txt" 2>&1 & PIDS+=($!)
wait_port $ADMIN
# Let the page gather history: it draws what it has polled since it was opened, so the browser
# keeps it open (in virtual time, which runs at least as fast as the demo) while the demo runs.
sleep 20
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
       --disable-background-networking --disable-component-update --disable-sync
       --user-data-dir="$(mktemp -d)" --window-size=1200,900 --virtual-time-budget=15000)
chromium "${flags[@]}" --screenshot="$PWD/$OUT/page.png" "http://$ADMIN/" 2>"$OUT/chromium.log"
chromium "${flags[@]}" --dump-dom "http://$ADMIN/" >"$OUT/dom.html" 2>>"$OUT/chromium.log"
python3 - "$OUT/dom.html" <<'PY'
import re, sys
dom = open(sys.argv[1]).read()
problems = []
for chart in ("concurrency-backend", "latency-backend"):
    m = re.search(r'<svg[^>]*id="%s"[^>]*data-points="(\d+)"' % chart, dom) or \
        re.search(r'<svg[^>]*data-points="(\d+)"[^>]*id="%s"' % chart, dom)
    if not m:
        problems.append(f"chart {chart} is not drawn")
    elif int(m.group(1)) < 2:
        problems.append(f"chart {chart} has {m.group(1)} points")
for series in ("limit", "in_flight", "queued", "baseline", "sample"):
    if not re.search(r'<polyline[^>]*class="series-%s"' % series, dom):
        problems.append(f"no line for {series}")
if "adaptive limit" not in dom:
    problems.append("the upstream's heading does not say its limit is adaptive")
if problems:
    print("status page check failed:\n  " + "\n  ".join(problems))
    sys.exit(1)
points = re.findall(r'data-points="(\d+)"', dom)
print(f"status page ok: both charts drawn ({', '.join(points)} points), every series has a line")
PY
echo "screenshot: $OUT/page.png"
