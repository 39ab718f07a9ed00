//! The timeline's steps as histograms: a `tracing` layer that times each
//! step span (target [`crate::timeline::TARGET`]) from creation to close.

use std::time::Instant;

use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

/// When a step opened, kept in its span's extensions.
struct Opened(Instant);

/// Observes every closed step into `capsa_shim_step_duration_seconds`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepLayer;

impl StepLayer {
    /// The owner process's metrics layer, with its own filter (it sees the
    /// timeline's spans whatever the log's level); installing it also has
    /// the agent client report every call's latency.
    pub fn layer<S>() -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        capsa_agent_client::observe_calls(super::owner::observe_rpc);
        StepLayer.with_filter(OnlySteps)
    }
}

struct OnlySteps;

impl<S> Filter<S> for OnlySteps {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: &Context<'_, S>) -> bool {
        meta.is_span() && meta.target() == crate::timeline::TARGET
    }
}

impl<S> Layer<S> for StepLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Opened(Instant::now()));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let opened = span.extensions().get::<Opened>().map(|o| o.0);
        if let Some(at) = opened {
            super::owner::observe_step(span.name(), at.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_closed_step_is_observed() {
        let subscriber = tracing_subscriber::registry().with(StepLayer::layer());
        tracing::subscriber::with_default(subscriber, || {
            let _s = crate::step!("resize").entered();
        });
        let mut text = String::new();
        super::super::owner::encode(&mut text);
        assert!(
            text.contains("capsa_shim_step_duration_seconds_count{step=\"resize\"}"),
            "{text}"
        );
        assert!(text.contains("device=\"resources\""), "{text}");
    }
}
