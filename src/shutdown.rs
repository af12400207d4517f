//! Process signals: the first SIGTERM or SIGINT starts a graceful drain, a second one exits at once;
//! SIGHUP reloads TLS certificates.

use std::future::Future;

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

/// Reloads TLS certificates on every SIGHUP, for as long as the process runs.
pub fn on_reload(reloader: crate::Reloader) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reloading TLS certificates");
            // Each failure has been logged; the listeners keep serving their current pair.
            let _ = reloader.reload_tls();
        }
    });
    Ok(())
}
