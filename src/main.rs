//! The `weir` binary: parses the command line, loads and validates the configuration, and hands
//! over to the library. Nothing here is worth testing on its own.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use weir::config::Config;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let Some(path) = cli.config else {
        eprintln!(
            "weir: --config PATH is required (for example: weir --config config.example.toml)"
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
    if let Some(Command::Check) = cli.command {
        println!("{}: configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let shutdown = match weir::shutdown::on_signals() {
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
        if let Err(e) = weir::shutdown::on_reload(server.reloader()) {
            eprintln!("weir: cannot install the SIGHUP handler: {e}");
            return ExitCode::from(1);
        }
        server.run(shutdown).await;
        tracing::info!("weir stopped");
        ExitCode::SUCCESS
    })
}
