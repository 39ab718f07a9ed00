//! OpenTelemetry tracing (`[runtime] enable_tracing`): the start-up
//! timeline's steps as spans, exported over OTLP/gRPC to
//! `runtime.tracing_endpoint`, with the agent's spans.
//!
//! - Host spans: the steps (`tracing` spans of target
//!   [`crate::timeline::TARGET`]) go through `tracing-opentelemetry`. The
//!   owner's whole-life steps (`pod`, `capsa run`) are left out, so each
//!   operation below them is the root of a trace of its own: one sandbox
//!   start is one trace whose root is `sandbox start`.
//! - Trace context to the guest: the agent client sends the calling
//!   span's W3C `traceparent` in the ttRPC metadata (Kata's key).
//! - Agent spans: the agent records one span per request that carried a
//!   trace context, and buffers it (bounded); the host takes them with
//!   `capsa.Tracing/TakeSpans` once the sandbox has started, and once a
//!   container is created ([`export_agent_spans`]) and exports them as service `capsa-agent`,
//!   keeping only those of the trace it asked for (a guest cannot write
//!   into other traces).
//! - A collector that is down: exports fail in the background; the first
//!   failure is one warning, later ones are debug lines. Spans wait in the
//!   batch processor's bounded queue ([`MAX_QUEUE`]) and are dropped
//!   beyond. Nothing on the start path waits for the collector.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use capsa_agent_client::AgentClient;
pub use opentelemetry::trace::TraceId;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceState,
    TracerProvider as _,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanEvents, SpanLinks,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The service name of the host's spans.
pub const HOST_SERVICE: &str = "capsa";
/// The service name of the agent's spans.
pub const AGENT_SERVICE: &str = "capsa-agent";
/// The most spans waiting for the collector (each processor).
pub const MAX_QUEUE: usize = 2048;
/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most agent spans taken at once; the agent buffers at most 1024.
const MAX_AGENT_SPANS: usize = 1024;
/// The longest agent span name kept (the agent's method names are short).
const MAX_NAME: usize = 128;
/// The steps that last the owner's whole life: not exported, so that each
/// operation below them starts a trace of its own.
const LIFETIME_STEPS: &[&str] = &["pod", "capsa run"];

/// This process's exporters, once tracing is on.
struct Exporters {
    host: SdkTracerProvider,
    agent: BatchSpanProcessor,
}

static EXPORTERS: OnceLock<Exporters> = OnceLock::new();

/// The layer that exports the steps as spans, when `config` turns tracing
/// on; call it inside a tokio runtime (the gRPC channel lives there). Once
/// per process: a second call gives `None`.
pub fn layer<S>(config: &capsa_config::Config) -> Option<impl Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !config.runtime.enable_tracing || EXPORTERS.get().is_some() {
        return None;
    }
    let endpoint = &config.runtime.tracing_endpoint;
    let warned = Arc::new(AtomicBool::new(false));
    let host = match exporter(endpoint, &warned) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(endpoint, error = %e, "tracing off: no OTLP exporter");
            return None;
        }
    };
    let host = SdkTracerProvider::builder()
        .with_span_processor(processor(host))
        .with_resource(Resource::builder().with_service_name(HOST_SERVICE).build())
        .build();
    let mut agent = processor(exporter(endpoint, &warned).ok()?);
    agent.set_resource(&Resource::builder().with_service_name(AGENT_SERVICE).build());
    let tracer = host.tracer("capsa");
    if EXPORTERS.set(Exporters { host, agent }).is_err() {
        return None;
    }
    tracing::info!(endpoint, "tracing: spans exported over OTLP/gRPC");
    Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter_fn(|meta| {
                meta.is_span()
                    && meta.target() == crate::timeline::TARGET
                    && !LIFETIME_STEPS.contains(&meta.name())
            })),
    )
}

fn exporter(endpoint: &str, warned: &Arc<AtomicBool>) -> Result<WarnOnce, String> {
    let inner = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(WarnOnce {
        inner,
        endpoint: endpoint.to_string(),
        warned: warned.clone(),
    })
}

fn processor(exporter: WarnOnce) -> BatchSpanProcessor {
    BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUE)
                .build(),
        )
        .build()
}

/// The OTLP exporter, whose first failure is a warning and the others
/// debug lines (the processors' own error reports are not compiled in).
#[derive(Debug)]
struct WarnOnce {
    inner: opentelemetry_otlp::SpanExporter,
    endpoint: String,
    warned: Arc<AtomicBool>,
}

impl opentelemetry_sdk::trace::SpanExporter for WarnOnce {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            if self.warned.swap(true, Ordering::Relaxed) {
                tracing::debug!(endpoint = %self.endpoint, spans, error = %e, "spans not exported");
            } else {
                tracing::warn!(endpoint = %self.endpoint, spans, error = %e,
                    "spans not exported (further failures are logged at debug level)");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Whether this process exports spans.
pub fn enabled() -> bool {
    EXPORTERS.get().is_some()
}

/// The trace `span` belongs to, if it is exported.
pub fn trace_id(span: &tracing::Span) -> Option<TraceId> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id())
}

/// Takes the agent's buffered spans and exports those of `trace`.
pub async fn export_agent_spans(agent: &AgentClient, trace: Option<TraceId>) {
    let (Some(exporters), Some(trace)) = (EXPORTERS.get(), trace) else {
        return;
    };
    let taken = match agent.take_spans().await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "agent spans not taken");
            return;
        }
    };
    if taken.dropped > 0 {
        tracing::debug!(dropped = taken.dropped, "the agent dropped spans");
    }
    for span in taken
        .spans
        .iter()
        .take(MAX_AGENT_SPANS)
        .filter_map(|s| span_data(s, trace))
    {
        exporters.agent.on_end(span);
    }
}

/// An agent span as the SDK's span data, if it belongs to `trace` and its
/// ids and times make sense (public for the `agent_reply` fuzz target:
/// the guest writes these).
pub fn span_data(span: &capsa_protocols::tracing::AgentSpan, trace: TraceId) -> Option<SpanData> {
    let trace_id = TraceId::from_bytes(span.trace_id.as_slice().try_into().ok()?);
    let span_id = SpanId::from_bytes(span.span_id.as_slice().try_into().ok()?);
    let parent = SpanId::from_bytes(span.parent_span_id.as_slice().try_into().ok()?);
    if trace_id != trace || span_id == SpanId::INVALID || parent == SpanId::INVALID {
        return None;
    }
    if span.end_unix_nano < span.start_unix_nano {
        return None;
    }
    let time = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
    let name: String = span.name.chars().take(MAX_NAME).collect();
    let status = if span.status_code == 0 {
        Status::Ok
    } else {
        Status::error(
            span.status_message
                .chars()
                .take(MAX_NAME * 4)
                .collect::<String>(),
        )
    };
    Some(SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ),
        parent_span_id: parent,
        parent_span_is_remote: true,
        span_kind: SpanKind::Server,
        name: Cow::Owned(name.clone()),
        start_time: time(span.start_unix_nano),
        end_time: time(span.end_unix_nano),
        attributes: vec![
            KeyValue::new("rpc.system", "ttrpc"),
            KeyValue::new("rpc.service", "grpc.AgentService"),
            KeyValue::new("rpc.method", name),
            KeyValue::new("rpc.ttrpc.status_code", i64::from(span.status_code)),
        ],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder(AGENT_SERVICE).build(),
    })
}

/// Exports what is waiting, for an owner about to exit; bounded by the
/// export timeout.
pub fn flush() {
    let Some(exporters) = EXPORTERS.get() else {
        return;
    };
    let started = SystemTime::now();
    for result in [exporters.agent.force_flush(), exporters.host.force_flush()] {
        if let Err(e) = result {
            if !matches!(e, OTelSdkError::AlreadyShutdown) {
                tracing::debug!(error = %e, "spans not flushed");
            }
        }
    }
    tracing::debug!(took = ?started.elapsed().unwrap_or_default(), "spans flushed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsa_protocols::tracing::AgentSpan;

    fn agent_span(trace: [u8; 16]) -> AgentSpan {
        AgentSpan {
            trace_id: trace.to_vec(),
            span_id: vec![1; 8],
            parent_span_id: vec![2; 8],
            name: "CreateSandbox".into(),
            start_unix_nano: 10,
            end_unix_nano: 20,
            ..Default::default()
        }
    }

    #[test]
    fn agent_spans_of_the_asked_trace_only() {
        let trace = TraceId::from_bytes([7; 16]);
        let s = span_data(&agent_span([7; 16]), trace).unwrap();
        assert_eq!(s.parent_span_id, SpanId::from_bytes([2; 8]));
        assert_eq!(s.name, "CreateSandbox");
        assert_eq!(s.status, Status::Ok);
        assert!(span_data(&agent_span([8; 16]), trace).is_none());
        let mut bad = agent_span([7; 16]);
        bad.span_id = vec![1; 7];
        assert!(span_data(&bad, trace).is_none());
        let mut backwards = agent_span([7; 16]);
        backwards.end_unix_nano = 1;
        assert!(span_data(&backwards, trace).is_none());
        let mut failed = agent_span([7; 16]);
        failed.status_code = 5;
        failed.status_message = "no such container".into();
        assert_eq!(
            span_data(&failed, trace).unwrap().status,
            Status::error("no such container")
        );
    }
}
