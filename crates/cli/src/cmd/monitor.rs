//! `capsa monitor`: Prometheus metrics of every running sandbox on one
//! HTTP endpoint, as `kata-monitor` serves Kata's.
//!
//! At each `GET /metrics` the monitor looks for the running sandboxes (the
//! state directories of `runtime.state_dir` and any `--state-dir`),
//! scrapes each one's metrics socket concurrently, each within
//! `--scrape-timeout`, labels every series with `sandbox_id` (and a CRI
//! pod's `cri_uid`, `cri_name`, `cri_namespace`) and answers with them and
//! its own `capsa_monitor_*` families. A pod that does not answer in time
//! is left out and counted; a removed pod is not found at the next scrape.
//! `GET /sandboxes` lists the sandboxes found, as JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use capsa_runtime::metrics::server::plain;
use capsa_runtime::metrics::text::{self, Merged};
use capsa_runtime::metrics::{scrape, targets, Target};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::args::MonitorArgs;

/// The monitor's own families (`capsa_monitor_*`, Kata's names).
struct Own {
    registry: Registry,
    sandboxes: Gauge,
    scrapes: Counter,
    failures: Counter,
    durations: Histogram,
}

impl Own {
    fn new() -> Self {
        let sandboxes = Gauge::default();
        let scrapes = Counter::default();
        let failures = Counter::default();
        let durations = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let mut registry = Registry::with_prefix("capsa_monitor");
        registry.register(
            "running_shim_count",
            "Running sandboxes found at the last scrape",
            sandboxes.clone(),
        );
        registry.register("scrape_count", "Scrapes of sandboxes", scrapes.clone());
        registry.register(
            "scrape_failed_count",
            "Scrapes of sandboxes that failed or timed out",
            failures.clone(),
        );
        registry.register(
            "scrape_durations_histogram_milliseconds",
            "Durations of the scrapes of sandboxes, in milliseconds",
            durations.clone(),
        );
        Self {
            registry,
            sandboxes,
            scrapes,
            failures,
            durations,
        }
    }
}

struct Monitor {
    roots: Vec<PathBuf>,
    timeout: Duration,
    own: Own,
}

pub async fn monitor(config: Option<&Path>, args: MonitorArgs) -> anyhow::Result<u8> {
    let (config, _) = capsa_runtime::load_config(config)?;
    let mut roots = vec![config.runtime.state_dir.clone()];
    roots.extend(args.state_dir);
    let listener = tokio::net::TcpListener::bind(args.listen_address)
        .await
        .with_context(|| format!("listen on {}", args.listen_address))?;
    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(%address, ?roots, "capsa monitor listening");
    let monitor = Arc::new(Monitor {
        roots,
        timeout: Duration::from_millis(args.scrape_timeout_ms),
        own: Own::new(),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "accept");
                continue;
            }
        };
        let monitor = monitor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let monitor = monitor.clone();
                async move {
                    let res = match req.uri().path() {
                        "/metrics" => plain(StatusCode::OK, monitor.metrics().await),
                        "/sandboxes" => plain(StatusCode::OK, monitor.sandboxes()),
                        _ => plain(StatusCode::NOT_FOUND, "not found\n".into()),
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Monitor {
    fn sandboxes(&self) -> String {
        let found = targets(&self.roots);
        serde_json::to_string_pretty(&found).unwrap_or_default() + "\n"
    }

    async fn metrics(&self) -> String {
        let found = targets(&self.roots);
        self.own.sandboxes.set(found.len() as i64);
        let scrapes = found.iter().map(|t| self.scrape_one(t));
        let results = futures::future::join_all(scrapes).await;
        let mut merged = Merged::default();
        for (target, families) in found.iter().zip(results) {
            for mut family in families.into_iter().flatten() {
                for (k, v) in target.labels() {
                    family.set_label(k, v);
                }
                merged.add(family);
            }
        }
        let mut own = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut own, &self.own.registry);
        match text::parse(&own) {
            Ok(families) => families.into_iter().for_each(|f| merged.add(f)),
            Err(e) => tracing::warn!(error = %e, "the monitor's own metrics do not encode"),
        }
        merged.render()
    }

    /// One pod's families, or `None` (counted) if it failed.
    async fn scrape_one(&self, target: &Target) -> Option<Vec<text::Family>> {
        let start = Instant::now();
        let result = scrape(&target.socket, self.timeout).await;
        self.own.scrapes.inc();
        self.own
            .durations
            .observe(start.elapsed().as_secs_f64() * 1000.0);
        match result {
            Ok(families) => Some(families),
            Err(e) => {
                self.own.failures.inc();
                tracing::warn!(sandbox = %target.sandbox_id, error = %e, "scrape failed");
                None
            }
        }
    }
}
