//! Prometheus metrics for Runs and the `/metrics` HTTP endpoint.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuntimeLabels {
    pub runtime: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub runtime: String,
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub runs_started: Family<RuntimeLabels, Counter>,
    pub runs_finished: Family<ResultLabels, Counter>,
    pub run_duration: Family<RuntimeLabels, Histogram>,
    pub runs_active: Gauge,
    pub output_handoffs: Family<RuntimeLabels, Counter>,
    pub spool_files_recycled: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("runtimed");
        let runs_started = Family::<RuntimeLabels, Counter>::default();
        let runs_finished = Family::<ResultLabels, Counter>::default();
        let run_duration = Family::<RuntimeLabels, Histogram>::new_with_constructor(|| {
            // 1 ms .. ~ 9 h
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 4.0, 13,
            ))
        });
        let runs_active = Gauge::default();
        registry.register(
            "runs_started",
            "Runs started, by runtime",
            runs_started.clone(),
        );
        registry.register(
            "runs_finished",
            "Runs finished, by runtime and result phase",
            runs_finished.clone(),
        );
        registry.register(
            "run_duration_seconds",
            "Wall time of finished Runs from start to exit",
            run_duration.clone(),
        );
        registry.register("runs_active", "Runs currently running", runs_active.clone());
        let output_handoffs = Family::<RuntimeLabels, Counter>::default();
        registry.register(
            "output_handoffs",
            "Output streams of fast writers taken over from a Runtime Server (read from the pipe into the spool), by runtime",
            output_handoffs.clone(),
        );
        let spool_files_recycled = Counter::default();
        registry.register(
            "spool_files_recycled",
            "Spool files of removed logs (data and index) written over by a new Run's log instead of creating new ones",
            spool_files_recycled.clone(),
        );
        Metrics {
            registry,
            runs_started,
            runs_finished,
            run_duration,
            runs_active,
            output_handoffs,
            spool_files_recycled,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    );
    tracing::info!(addr = %listener.local_addr()?, "metrics endpoint listening");
    axum::serve(listener, app).await
}
