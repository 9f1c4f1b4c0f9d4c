//! The HTTP port: `/metrics` (Prometheus text), `/healthz` (the process is up), `/readyz`
//! (the store answers). Platform webhooks join here under `/webhooks/<platform>`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::store::Store;
use crate::telemetry;
use crate::webhooks::WebhookState;

#[derive(Clone)]
struct AppState {
    store: Arc<dyn Store>,
    prometheus: PrometheusHandle,
}

pub fn router(
    store: Arc<dyn Store>,
    prometheus: PrometheusHandle,
    webhooks: WebhookState,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { store, prometheus })
        .merge(crate::webhooks::router(webhooks))
}

async fn metrics(
    State(s): State<AppState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.store.ping().await {
        Ok(()) => {
            telemetry::store_up(true);
            (StatusCode::OK, "ready\n".into())
        }
        Err(e) => {
            telemetry::store_up(false);
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n"))
        }
    }
}
