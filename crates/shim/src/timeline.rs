//! The pod's start-up timeline (`runtime.timeline_dir`): the steps of the
//! pod's start, its containers and its teardown, drawn into
//! `<timeline_dir>/<pod id>.svg` once the pod is down.
//!
//! The shim logs through the `log` crate (containerd-shim's logger); its
//! `tracing` events reach it by tracing's `log` fallback, which stops once
//! a subscriber is set. So the subscriber that records the timeline also
//! hands every event on to `log` ([`LogBridge`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use capsa_runtime::Timeline;
use tracing::field::{Field, Visit};
use tracing::{Event, Span, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The timeline of this shim's pod, once recording.
static TIMELINE: OnceLock<Timeline> = OnceLock::new();

/// A pod's timeline being recorded: its root step and where it goes.
pub struct PodTimeline {
    span: Span,
    file: PathBuf,
}

impl PodTimeline {
    /// Starts recording pod `pod_id`'s timeline for `config`'s
    /// `runtime.timeline_dir` (`None` when it is empty). An id that is not
    /// a plain file name gets no timeline (containerd checks ids, this
    /// never lets one pick another directory). The steps are exported as
    /// spans when `config` enables tracing, timeline or not.
    pub fn start(config: &capsa_config::Config, pod_id: &str) -> Option<Self> {
        install(config); // metrics hook: the step histograms need the subscriber
        let dir = config.runtime.timeline_dir.as_path();
        if dir.as_os_str().is_empty() {
            return None;
        }
        let Some(name) = file_name(pod_id) else {
            tracing::warn!(
                pod = pod_id,
                "no timeline: the pod id is not a plain file name"
            );
            return None;
        };
        Some(Self {
            span: capsa_runtime::step!("pod"),
            file: dir.join(name),
        })
    }

    /// The pod's root step: the parent of the pod's other steps.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Closes the root step and writes the picture. The pod's tasks may
    /// still hold handles of the root step: the pod is down, so whatever
    /// is still open ends now.
    pub fn finish(self) {
        drop(self.span);
        let Some(timeline) = TIMELINE.get() else {
            return;
        };
        timeline.end_open_steps();
        match timeline.write_svg(&self.file) {
            Ok(()) => tracing::info!(file = %self.file.display(), "timeline written"),
            Err(e) => {
                tracing::warn!(file = %self.file.display(), error = %e, "timeline not written")
            }
        }
    }
}

/// `<pod id>.svg` if the id is a plain file name: ASCII letters, digits,
/// `-`, `_` and `.`, not starting with a dot.
fn file_name(pod_id: &str) -> Option<String> {
    let plain = !pod_id.is_empty()
        && !pod_id.starts_with('.')
        && pod_id.len() <= 200
        && pod_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    plain.then(|| format!("{pod_id}.svg"))
}

/// Sets this process's subscriber: the timeline, the bridge to `log`
/// and, with `[runtime] enable_tracing`, the OpenTelemetry exporter (one
/// pod per shim: the first pod's configuration decides).
fn install(config: &capsa_config::Config) {
    TIMELINE.get_or_init(|| {
        let timeline = Timeline::new();
        let subscriber = tracing_subscriber::registry()
            .with(timeline.layer())
            .with(capsa_runtime::metrics::StepLayer::layer()) // metrics hook
            .with(LogBridge.with_filter(filter_fn(|meta| {
                // Its own filter: a layer's `enabled` would be every
                // layer's (the timeline's spans included).
                meta.is_event()
                    && log::log_enabled!(target: meta.target(), log_level(*meta.level()))
            })))
            .with(capsa_runtime::otel::layer(config));
        if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
            log::warn!("no timeline: a tracing subscriber is set already: {e}");
        }
        timeline
    });
}

/// Hands each `tracing` event to the `log` crate, as tracing's own `log`
/// fallback does without a subscriber.
struct LogBridge;

impl<S: Subscriber> Layer<S> for LogBridge {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut text = Text::default();
        event.record(&mut text);
        log::logger().log(
            &log::Record::builder()
                .level(log_level(*meta.level()))
                .target(meta.target())
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .args(format_args!("{}", text.0))
                .build(),
        );
    }
}

fn log_level(level: tracing::Level) -> log::Level {
    match level {
        tracing::Level::ERROR => log::Level::Error,
        tracing::Level::WARN => log::Level::Warn,
        tracing::Level::INFO => log::Level::Info,
        tracing::Level::DEBUG => log::Level::Debug,
        tracing::Level::TRACE => log::Level::Trace,
    }
}

/// An event's message followed by its other fields (`name=value`).
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let fields = std::mem::take(&mut self.0);
            self.0 = format!("{value:?}{fields}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn only_plain_pod_ids_name_a_file() {
        assert_eq!(file_name("pod-1_a.b").as_deref(), Some("pod-1_a.b.svg"));
        for bad in ["", "../x", "a/b", ".hidden", "x\0y", "é"] {
            assert_eq!(file_name(bad), None, "{bad:?}");
        }
    }
}
