//! Spans of the requests that carry a trace context, for the host to
//! export.
//!
//! The host (with `[runtime] enable_tracing`) sends the W3C trace context
//! of its calling span in the ttRPC metadata (`traceparent`, the key Kata's
//! runtime and agent use). For each such request the agent records one
//! span, named after the method, whose parent is the host's span. The
//! agent exports nothing itself (the guest has no route to a collector):
//! finished spans wait in a bounded buffer until the host takes them with
//! `capsa.Tracing/TakeSpans` and exports them with its own. A request
//! without a trace context costs a metadata lookup.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use capsa_protocols::tracing::{AgentSpan, AgentSpans, TakeSpansRequest};
use capsa_protocols::{tracing_ttrpc, TRACEPARENT};
use ttrpc::asynchronous::{MethodHandler, Service, TtrpcContext};
use ttrpc::{Code, Request, Response};

/// The most finished spans kept for the host; beyond this the oldest are
/// dropped (and counted), so a host that never takes them costs bounded
/// memory.
pub const MAX_SPANS: usize = 1024;

/// A parsed `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid
    /// (W3C Trace Context, level 1).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = hex(span)?.try_into().ok()?;
        let flags = *hex(flags)?.first().filter(|_| flags.len() == 2)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The finished spans, oldest first, and how many were dropped.
#[derive(Default)]
pub struct SpanBuffer {
    inner: Mutex<(VecDeque<AgentSpan>, u64)>,
}

impl SpanBuffer {
    pub fn push(&self, span: AgentSpan) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.0.len() >= MAX_SPANS {
            inner.0.pop_front();
            inner.1 += 1;
        }
        inner.0.push_back(span);
    }

    /// Takes every buffered span and the dropped count.
    pub fn take(&self) -> AgentSpans {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (spans, dropped) = std::mem::take(&mut *inner);
        AgentSpans {
            spans: spans.into(),
            dropped,
            ..Default::default()
        }
    }
}

/// A fresh span id: not cryptographic, unique enough to tell one
/// request's span from another's (a per-process random key hashed with a
/// counter).
fn new_span_id() -> [u8; 8] {
    static KEY: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = KEY.get_or_init(RandomState::new).hash_one(n).max(1);
    id.to_be_bytes()
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The request's trace context, when it carries a sampled one.
fn parent_of(ctx: &TtrpcContext) -> Option<TraceParent> {
    let value = ctx.metadata.get(TRACEPARENT)?.first()?;
    TraceParent::parse(value).filter(|p| p.sampled)
}

/// Records a span for each request with a trace context, then hands the
/// request to the method's handler.
struct Traced {
    inner: Box<dyn MethodHandler + Send + Sync>,
    buffer: Arc<SpanBuffer>,
}

#[async_trait]
impl MethodHandler for Traced {
    async fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<Response> {
        let Some(parent) = parent_of(&ctx) else {
            return self.inner.handler(ctx, req).await;
        };
        let name = req.method.clone();
        let start = SystemTime::now();
        let result = self.inner.handler(ctx, req).await;
        let end = SystemTime::now();
        let (code, message) = match &result {
            Ok(reply) => (reply.status.code.value(), reply.status.message.clone()),
            Err(ttrpc::Error::RpcStatus(s)) => (s.code.value(), s.message.clone()),
            Err(e) => (Code::INTERNAL as i32, e.to_string()),
        };
        self.buffer.push(AgentSpan {
            trace_id: parent.trace_id.to_vec(),
            span_id: new_span_id().to_vec(),
            parent_span_id: parent.span_id.to_vec(),
            name,
            start_unix_nano: unix_nanos(start),
            end_unix_nano: unix_nanos(end),
            status_code: u32::try_from(code).unwrap_or(Code::UNKNOWN as u32),
            status_message: message,
            ..Default::default()
        });
        result
    }
}

/// Makes every method of `services` record spans into `buffer`.
pub fn trace_requests(services: &mut HashMap<String, Service>, buffer: &Arc<SpanBuffer>) {
    for service in services.values_mut() {
        let methods = std::mem::take(&mut service.methods);
        service.methods = methods
            .into_iter()
            .map(|(name, inner)| {
                let traced: Box<dyn MethodHandler + Send + Sync> = Box::new(Traced {
                    inner,
                    buffer: buffer.clone(),
                });
                (name, traced)
            })
            .collect();
    }
}

/// `capsa.Tracing`: the host takes the buffered spans.
pub struct TracingRpc(pub Arc<SpanBuffer>);

#[async_trait]
impl tracing_ttrpc::Tracing for TracingRpc {
    async fn take_spans(
        &self,
        _ctx: &TtrpcContext,
        _req: TakeSpansRequest,
    ) -> ttrpc::Result<AgentSpans> {
        Ok(self.0.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_w3c_trace_context() {
        let p = TraceParent::parse(GOOD).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.span_id, [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(p.sampled);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!TraceParent::parse(&unsampled).unwrap().sampled);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "00-é4f92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_buffer_is_bounded_and_counts_drops() {
        let buffer = SpanBuffer::default();
        for i in 0..MAX_SPANS + 3 {
            buffer.push(AgentSpan {
                name: i.to_string(),
                ..Default::default()
            });
        }
        let taken = buffer.take();
        assert_eq!(taken.spans.len(), MAX_SPANS);
        assert_eq!(taken.dropped, 3);
        assert_eq!(taken.spans[0].name, "3");
        let again = buffer.take();
        assert!(again.spans.is_empty() && again.dropped == 0);
    }

    #[test]
    fn span_ids_differ() {
        assert_ne!(new_span_id(), new_span_id());
    }
}
