//! The operations endpoint every binary serves: `GET /healthz` for load
//! balancers and container health checks, `GET /metrics` for Prometheus.

use std::io;

use axum::Router;
use axum::routing::get;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics_router;

/// `/healthz` (always `ok` while the process serves) and `/metrics`.
pub fn router(registry: Registry) -> Router {
    metrics_router(registry).route("/healthz", get(|| async { "ok" }))
}

/// Serve `router` on `listener` until `shutdown` is cancelled, then finish
/// the requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
