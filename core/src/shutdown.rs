//! Shutdown: one [`CancellationToken`] for the whole process, cancelled on
//! SIGTERM (what ECS and `docker stop` send) or SIGINT (Ctrl-C).
//!
//! Components hold clones of the token: they stop taking new work when it
//! is cancelled and finish what they hold within their grace period.

use std::io;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Install handlers for SIGTERM and SIGINT and return a token that is
/// cancelled when either arrives. The handlers are in place when this
/// returns, so a signal that comes at once is not lost; it must be called
/// inside a Tokio runtime.
pub fn on_signals() -> io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
        cancel.cancel();
    });
    Ok(token)
}
