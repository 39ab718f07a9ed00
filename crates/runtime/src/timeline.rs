//! The start-up timeline: every step of a sandbox's life (helpers, hypervisor,
//! guest kernel, agent, containers, teardown) is a `tracing` span with
//! target [`TARGET`]; the [`Timeline`] layer records when each opens and
//! closes, and [`Timeline::write_svg`] draws them: one bar per step, nested
//! steps indented under their parent, a time axis in milliseconds.
//!
//! The SVG is written by hand: it is a few rectangles and lines, and no
//! plotting crate draws an indented Gantt chart without a font stack.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The target of the spans that are steps of the timeline. Other crates
/// (the hypervisor's) spell it out: `info_span!(target: "capsa::timeline", ..)`.
pub const TARGET: &str = "capsa::timeline";

/// A step of the timeline: `info_span!(target: TARGET, "name")`.
#[macro_export]
macro_rules! step {
    ($name:literal) => {
        ::tracing::info_span!(target: "capsa::timeline", $name)
    };
}

/// One recorded step; times in milliseconds since the first step opened.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    /// 0 for a step without a parent step.
    pub depth: usize,
    /// The index of the parent step in [`Timeline::steps`].
    pub parent: Option<usize>,
    pub start_ms: f64,
    /// `None` while the step is open.
    pub end_ms: Option<f64>,
}

#[derive(Default)]
struct Inner {
    origin: Option<Instant>,
    steps: Vec<Step>,
}

/// The recorder: a `tracing_subscriber` layer (with its own filter, see
/// [`Timeline::layer`]) whose clones share one list of steps.
#[derive(Clone, Default)]
pub struct Timeline {
    inner: Arc<Mutex<Inner>>,
}

/// The index of a span's step, kept in the span's extensions.
struct StepIndex(usize);

/// The most steps one timeline records: a long-lived pod whose containers
/// come and go (a crash loop) adds steps for its whole life; beyond this
/// the later ones are not recorded, so the recorder's memory is bounded.
pub const MAX_STEPS: usize = 4096;

impl Timeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// This timeline as a layer that sees only the timeline's spans,
    /// whatever the other layers' filters.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        self.clone().with_filter(OnlySteps)
    }

    /// The steps so far, in the order they opened.
    pub fn steps(&self) -> Vec<Step> {
        self.lock().steps.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock left whole steps: go on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn since_origin(inner: &mut Inner, at: Instant) -> f64 {
        let origin = *inner.origin.get_or_insert(at);
        at.saturating_duration_since(origin).as_secs_f64() * 1000.0
    }

    /// Ends every step still open now: for an owner that is done (its pod
    /// is down) while handles of its root step are still alive.
    pub fn end_open_steps(&self) {
        let mut inner = self.lock();
        let now = Self::since_origin(&mut inner, Instant::now());
        for step in inner.steps.iter_mut().filter(|s| s.end_ms.is_none()) {
            step.end_ms = Some(now);
        }
    }

    /// Writes the picture to `path` (steps still open end at the time of
    /// writing and are marked so).
    pub fn write_svg(&self, path: &Path) -> std::io::Result<()> {
        let svg = {
            let mut inner = self.lock();
            let now = Self::since_origin(&mut inner, Instant::now());
            render(&inner.steps, now)
        };
        std::fs::write(path, svg)
    }
}

/// Lets through the spans of [`TARGET`] only.
struct OnlySteps;

impl<S> Filter<S> for OnlySteps {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: &Context<'_, S>) -> bool {
        meta.is_span() && meta.target() == TARGET
    }
}

impl<S> Layer<S> for Timeline
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let at = Instant::now();
        let Some(span) = ctx.span(id) else { return };
        // With this layer's filter, the parent is the nearest step.
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<StepIndex>().map(|i| i.0));
        let mut inner = self.lock();
        if inner.steps.len() >= MAX_STEPS {
            return;
        }
        let start_ms = Self::since_origin(&mut inner, at);
        let depth = parent.map_or(0, |p| inner.steps[p].depth + 1);
        inner.steps.push(Step {
            name: attrs.metadata().name().to_string(),
            depth,
            parent,
            start_ms,
            end_ms: None,
        });
        let index = inner.steps.len() - 1;
        drop(inner);
        span.extensions_mut().insert(StepIndex(index));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let at = Instant::now();
        let Some(span) = ctx.span(&id) else { return };
        let Some(index) = span.extensions().get::<StepIndex>().map(|i| i.0) else {
            return;
        };
        let mut inner = self.lock();
        let end = Self::since_origin(&mut inner, at);
        // Not ended already by `end_open_steps`.
        inner.steps[index].end_ms.get_or_insert(end);
    }
}

/// Layout of the picture, in pixels.
const WIDTH: f64 = 1100.0;
const LABEL_WIDTH: f64 = 300.0;
const INDENT: f64 = 16.0;
const ROW: f64 = 22.0;
const TOP: f64 = 40.0;
const RIGHT_MARGIN: f64 = 90.0;
/// Bar colours by depth.
const COLOURS: &[&str] = &["#4e79a7", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2"];

/// The SVG of `steps`; open steps end at `now_ms`.
pub fn render(steps: &[Step], now_ms: f64) -> String {
    let total = steps
        .iter()
        .map(|s| s.end_ms.unwrap_or(now_ms))
        .fold(1.0_f64, f64::max);
    let chart = WIDTH - LABEL_WIDTH - RIGHT_MARGIN;
    let x = |ms: f64| LABEL_WIDTH + ms / total * chart;
    let height = TOP + ROW * steps.len() as f64 + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="8" y="16" font-weight="bold">capsa start-up timeline: {total:.0} ms</text>"#
    );
    // The axis: a tick and a grid line every `tick` ms.
    let tick = tick_step(total);
    let mut t = 0.0;
    while t <= total + 1e-9 {
        let tx = x(t);
        let _ = writeln!(
            out,
            r##"<line x1="{tx:.1}" y1="{y1}" x2="{tx:.1}" y2="{y2}" stroke="#ddd"/><text x="{tx:.1}" y="{ty}" text-anchor="middle" fill="#555">{t:.0} ms</text>"##,
            y1 = TOP - 8.0,
            y2 = height - 16.0,
            ty = TOP - 12.0,
        );
        t += tick;
    }
    for (row, step) in steps.iter().enumerate() {
        let y = TOP + ROW * row as f64;
        let end = step.end_ms.unwrap_or(now_ms);
        let duration = end - step.start_ms;
        let open = if step.end_ms.is_none() {
            " (still open)"
        } else {
            ""
        };
        let name = escape(&step.name);
        let (bx, bw) = (x(step.start_ms), (x(end) - x(step.start_ms)).max(1.0));
        let colour = COLOURS[step.depth % COLOURS.len()];
        let _ = writeln!(
            out,
            r##"<g class="step" data-name="{name}" data-depth="{depth}" data-start-ms="{start:.3}" data-end-ms="{end:.3}"><title>{name}: {duration:.1} ms{open}</title><text x="{lx:.1}" y="{ty:.1}">{name}</text><rect x="{bx:.1}" y="{y:.1}" width="{bw:.1}" height="{bh:.1}" fill="{colour}" rx="2"/><text x="{dx:.1}" y="{ty:.1}" fill="#333">{duration:.0} ms{open}</text></g>"##,
            depth = step.depth,
            start = step.start_ms,
            lx = 8.0 + INDENT * step.depth as f64,
            ty = y + ROW * 0.68,
            bh = ROW - 6.0,
            dx = bx + bw + 4.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A round tick interval (1, 2 or 5 × 10ⁿ ms) giving 5 to 10 ticks.
fn tick_step(total_ms: f64) -> f64 {
    let raw = total_ms / 8.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
        .max(1.0)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn records_nested_steps_and_ignores_other_spans() {
        let timeline = Timeline::new();
        let subscriber = tracing_subscriber::registry().with(timeline.layer());
        tracing::subscriber::with_default(subscriber, || {
            let outer = step!("outer").entered();
            {
                // Not a step: "inner" is a child of "outer" all the same.
                let _other = tracing::info_span!("not a step").entered();
                let _inner = step!("inner").entered();
            }
            drop(outer);
            let _open = step!("open").entered();
            let steps = timeline.steps();
            let names: Vec<_> = steps.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["outer", "inner", "open"]);
            assert_eq!(steps[1].parent, Some(0));
            assert_eq!(steps[1].depth, 1);
            assert_eq!(steps[2].depth, 0);
            assert!(steps[2].end_ms.is_none());
            let (outer, inner) = (&steps[0], &steps[1]);
            assert!(inner.start_ms >= outer.start_ms);
            assert!(inner.end_ms.unwrap() <= outer.end_ms.unwrap());
        });
    }

    #[test]
    fn open_steps_end_on_request_and_the_count_is_bounded() {
        let timeline = Timeline::new();
        let subscriber = tracing_subscriber::registry().with(timeline.layer());
        tracing::subscriber::with_default(subscriber, || {
            let open = step!("pod").entered();
            timeline.end_open_steps();
            let ended = timeline.steps()[0].end_ms.expect("ended");
            drop(open);
            // Closing the span later keeps the end it was given.
            assert_eq!(timeline.steps()[0].end_ms, Some(ended));
            for _ in 0..MAX_STEPS + 10 {
                let _step = step!("container create").entered();
            }
            assert_eq!(timeline.steps().len(), MAX_STEPS);
        });
    }

    #[test]
    fn svg_escapes_names_and_marks_open_steps() {
        let steps = [
            Step {
                name: "a<b>&\"c\"".into(),
                depth: 0,
                parent: None,
                start_ms: 0.0,
                end_ms: Some(10.0),
            },
            Step {
                name: "open".into(),
                depth: 1,
                parent: Some(0),
                start_ms: 2.0,
                end_ms: None,
            },
        ];
        let svg = render(&steps, 12.0);
        assert!(svg.contains("a&lt;b&gt;&amp;&quot;c&quot;"), "{svg}");
        assert!(svg.contains("(still open)"), "{svg}");
        assert!(!svg.contains("a<b>"), "{svg}");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(1000.0), 200.0);
        assert_eq!(tick_step(80.0), 10.0);
        assert_eq!(tick_step(3.0), 1.0);
    }
}
