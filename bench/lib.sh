# Helpers shared by the benchmark scripts; source it from the repository's root.

# The executable of bench target NAME (built if needed).
bench_bin() { cargo bench --locked --bench "$1" --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1; }

# Builds weir as users get it and copies it to DIR/weir; prints that path. Not
# target/release/weir: `cargo bench` (bench_bin) builds the weir binary too, for the benches,
# with the dev-dependencies' features (tokio's test-util, whose clock takes a mutex on every
# `Instant::now`), and leaves that build there.
# Fails when the build does (a command substitution does not stop a `set -e` script itself,
# and a stale copy would be measured instead).
release_weir() {
    cargo build --release --locked --quiet --bin weir || return 1
    mkdir -p "$1" && cp target/release/weir "$1/weir" || return 1
    echo "$1/weir"
}

# Waits until something accepts connections on HOST:PORT (up to TRIES x 0.05 s, default 200).
wait_port() {
    for _ in $(seq 1 "${2:-200}"); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.05; done
    echo "nothing listens on $1" >&2
    return 1
}

# Fails when something already listens on any of the HOST:PORTs: a process left over from an
# earlier run would answer in place of the one this run starts, which could not bind.
require_free_ports() {
    for a in "$@"; do
        if (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null; then
            echo "$a is in use: stop whatever listens on it (a run that was cut short?) and try again" >&2
            return 1
        fi
    done
}

# Writes to FILE a weir configuration with one HTTP/1 listener on WEIR in front of one backend on
# BACKEND (256 slots, a queue of 1,024), its admin listener on ADMIN, and no access log.
single_upstream_config() {
    cat >"$1" <<CFG
[admin]
addr = "$4"
[log]
access = false
[[listener]]
name = "h1"
addr = "$2"
[[upstream]]
name = "a"
addr = "$3"
max_concurrency = 256
max_queue = 1024
CFG
}

# Prepares a run of weir alone in front of one backend: FILE as above, and the three ports free.
single_upstream_run() {
    single_upstream_config "$@"
    require_free_ports "$3" "$2" "$4"
}

# CPU time (user + system, in clock ticks) the processes PIDS have used so far.
cpu_ticks() { local t=0; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }

# The global and defaults sections every benchmark's HAProxy uses: one thread, keep-alive both
# ways, the peers' timeouts, and QUEUE_TIMEOUT in the queue. Two descriptors per connection must
# fit the file limit (20,000 on the machine measured), hence maxconn 9800.
haproxy_head() {
    cat <<CFG
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
    timeout queue $1
CFG
}
