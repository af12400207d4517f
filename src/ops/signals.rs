//! Process signals: the first SIGTERM or SIGINT starts a graceful drain, a second one exits at once;
//! SIGHUP reloads the configuration and TLS certificates.

use std::path::{Path, PathBuf};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// The process's termination signals.
pub struct Signals {
    /// Resolves on the first SIGTERM or SIGINT: start the graceful drain.
    pub first: oneshot::Receiver<()>,
    /// Resolves on a second one: exit at once, without waiting for the drain.
    pub second: oneshot::Receiver<()>,
}

/// Installs the SIGTERM and SIGINT handlers.
pub fn on_signals() -> std::io::Result<Signals> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (first_tx, first) = oneshot::channel();
    let (second_tx, second) = oneshot::channel();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutdown requested: draining (send it again to exit at once)"
        );
        let _ = first_tx.send(());
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(
            signal = name,
            "second signal: exiting without waiting for the drain"
        );
        let _ = second_tx.send(());
    });
    Ok(Signals { first, second })
}

/// Calls `reload` with `path` on every SIGHUP, for as long as the process runs: weir's
/// `Reloader::reload_file`, which reads the configuration file and the TLS certificates again. A
/// file that fails validation is refused and logged, problem by problem; weir keeps the
/// configuration it had.
pub fn on_reload<F, E>(reload: F, path: PathBuf) -> std::io::Result<()>
where
    F: Fn(&Path) -> Result<Vec<String>, E> + Clone + Send + Sync + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", config = %path.display(), "reloading the configuration");
            // Reading the file and loading certificates block briefly: keep them off the workers
            // when there are several. A single-threaded runtime does it in place: a blocking-pool
            // thread would make the process multi-threaded for good, and glibc's socket calls
            // slower for it (see `logging`).
            let (r, p) = (reload.clone(), path.clone());
            let reloaded = match Handle::current().runtime_flavor() {
                RuntimeFlavor::CurrentThread => Ok(r(&p)),
                _ => tokio::task::spawn_blocking(move || r(&p)).await,
            };
            match reloaded {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(config = %path.display(), error = %e, "reload refused; weir keeps running on the configuration it had")
                }
                Err(e) => tracing::error!(error = %e, "reload failed"),
            }
        }
    });
    Ok(())
}
