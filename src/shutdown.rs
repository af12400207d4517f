//! Process signals: the first SIGTERM or SIGINT starts a graceful drain, a second one exits at once;
//! SIGHUP reloads the configuration and TLS certificates.

use std::future::Future;
use std::path::PathBuf;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// Installs the SIGTERM and SIGINT handlers and returns a future that resolves on the first of
/// them. A second signal afterwards ends the process immediately with exit code 1.
pub fn on_signals() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (first_tx, first_rx) = oneshot::channel();
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
        std::process::exit(1);
    });
    Ok(async move {
        let _ = first_rx.await;
    })
}

/// Reloads the configuration file at `path` (and the TLS certificates) on every SIGHUP, for as
/// long as the process runs. A file that fails validation is refused and logged, problem by
/// problem; weir keeps the configuration it had.
pub fn on_reload(reloader: crate::Reloader, path: PathBuf) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", config = %path.display(), "reloading the configuration");
            // Reading the file and loading certificates block briefly: keep them off the workers.
            let (r, p) = (reloader.clone(), path.clone());
            match tokio::task::spawn_blocking(move || r.reload_file(&p)).await {
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
