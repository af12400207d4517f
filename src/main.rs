//! The `weir` binary: parses the command line, loads and validates the configuration, sets up
//! logging, and hands over to the library. Nothing here is worth testing on its own.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use weir::config::{Config, LogConfig, LogFormat};
use weir::ops::logging::Logs;
use weir::ops::signals;

mod demo;

/// Log bytes queued at most while stdout does not take them; lines beyond are dropped.
const LOG_QUEUE_BYTES: usize = 4 << 20;
/// How long weir waits at exit for stdout to take the last log lines.
const LOG_FLUSH_LIMIT: Duration = Duration::from_secs(1);
/// How often jemalloc is asked to return freed pages (see [`return_freed_memory`]).
const PURGE_INTERVAL: Duration = Duration::from_millis(250);

/// jemalloc rather than the system allocator: it keeps no header beside each allocation, so a
/// buffer that is reserved but never written (hyper's per-connection read buffer, mostly) costs no
/// resident memory, and freed request state fragments less between idle connections.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "A reverse-proxy sidecar that protects a backend from overload"
)]
struct Cli {
    /// Configuration file (TOML); see config.example.toml.
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration, print every problem, and exit (0 when valid).
    Check,
    /// A 30-second tour: a built-in backend whose capacity halves and comes back, weir in front of
    /// it with an adaptive limit, and twice the backend's capacity offered; prints the limit and
    /// what weir does each second. Loopback only.
    Demo {
        /// How long the load runs.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Admin listener address (falls back to a free port when this one is taken).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo { duration, admin }) = cli.command {
        return demo::main(duration, admin);
    }

    let Some(path) = cli.config else {
        eprintln!(
            "weir: --config PATH is required (for example: weir --config config.example.toml), \
             or try `weir demo`"
        );
        return ExitCode::from(2);
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("weir: invalid configuration: {e}");
            return ExitCode::from(1);
        }
    };
    // Certificates are part of the configuration: a bad one is refused before any port is bound.
    if let Err(e) = weir::load_tls(&config) {
        eprintln!("weir: invalid configuration: {}: {e}", path.display());
        return ExitCode::from(1);
    }
    let warnings = config.warnings();
    if let Some(Command::Check) = cli.command {
        for w in &warnings {
            println!("{}: warning: {w}", path.display());
        }
        println!("{}: configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }
    let logs = init_logging(&config.log);
    for w in &warnings {
        tracing::warn!(config = %path.display(), warning = %w, "configuration warning");
    }

    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let drain = logs.clone();
    let code = runtime.block_on(async move {
        tokio::spawn(async move { drain.drain(std::io::stdout()).await });
        tokio::spawn(return_freed_memory());
        let signals = match signals::on_signals() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("weir: cannot install signal handlers: {e}");
                return ExitCode::from(1);
            }
        };
        let server = match weir::Server::bind(config, weir::Options::default()).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("weir: {e}");
                return ExitCode::from(1);
            }
        };
        let reloader = server.reloader();
        if let Err(e) = signals::on_reload(move |p| reloader.reload_file(p), path) {
            eprintln!("weir: cannot install the SIGHUP handler: {e}");
            return ExitCode::from(1);
        }
        let first = signals.first;
        tokio::select! {
            _ = server.run(async move { let _ = first.await; }) => {
                tracing::info!("weir stopped");
                ExitCode::SUCCESS
            }
            // Returning (rather than exiting on the spot) lets the log lines still queued out.
            Ok(()) = signals.second => ExitCode::from(1),
        }
    });
    drop(runtime);
    logs.flush(std::io::stdout(), LOG_FLUSH_LIMIT);
    code
}

/// Asks jemalloc every [`PURGE_INTERVAL`] to return to the system the pages freed and not
/// reused for `dirty_decay_ms` (.cargo/config.toml). It does so by itself only when it is called,
/// so without traffic the memory that idle connections gave back (weir's `listener::park`) would stay
/// resident; its own background thread would make weir multi-threaded on one core, and glibc's
/// socket calls slower for good.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: `arena.<i>.decay` takes and returns nothing, so the old and new value pointers
        // are null and their lengths zero, as jemalloc's manual requires; 4096 is
        // MALLCTL_ARENAS_ALL (every arena); the name is a NUL-terminated string.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arena.4096.decay".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if status != 0 {
            tracing::warn!(
                status,
                "jemalloc refused to purge freed memory; not asked again"
            );
            return;
        }
    }
}

/// The runtime for the cores this process may use. On one core, a single-threaded scheduler: a
/// multi-threaded one would run its one worker beside the main thread, and pay for work stealing
/// with no second core to steal for.
fn runtime_builder() -> tokio::runtime::Builder {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() == 1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
}

/// Logs to stdout through a bounded queue that a task on the runtime writes out (see
/// `weir::ops::logging`): no request waits on the terminal or the log pipe, and lines are dropped
/// and counted, not queued without bound, if stdout stalls. `RUST_LOG`, when set, overrides
/// `[log] level`.
fn init_logging(log: &LogConfig) -> Logs {
    let mut filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&log.level));
    if !log.access {
        if let Ok(off) = format!("{}=off", weir::ACCESS_TARGET).parse() {
            filter = filter.add_directive(off);
        }
    }
    let logs = Logs::new(LOG_QUEUE_BYTES, log.format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(logs.clone());
    match log.format {
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    logs
}
