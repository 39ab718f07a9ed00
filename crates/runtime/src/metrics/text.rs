//! The Prometheus text exposition format (0.0.4), as read from a pod (and
//! through it from its guest: untrusted input) and written by capsa.
//!
//! [`parse`] checks everything before anything is relabelled or passed on:
//! sizes are capped, names and label names must be valid, every sample
//! must belong to the family announced before it, and a family may appear
//! once. OpenMetrics input (as `prometheus-client` encodes) is accepted:
//! `# EOF` and `# UNIT` lines are dropped and a counter family `x` with
//! samples `x_total` becomes the 0.0.4 family `x_total`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The most bytes of text [`parse`] reads.
pub const MAX_TEXT_BYTES: usize = 4 << 20;
/// The most families in one text.
pub const MAX_FAMILIES: usize = 2048;
/// The most samples in one text, all families together.
pub const MAX_SAMPLES: usize = 50_000;
/// The most labels of one sample.
pub const MAX_LABELS: usize = 16;
/// The longest metric or label name.
pub const MAX_NAME: usize = 200;
/// The longest label value or help text.
pub const MAX_VALUE: usize = 1024;

/// Why a text was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("metrics text of {0} bytes is larger than {MAX_TEXT_BYTES}")]
    TooLarge(usize),
    #[error("metrics text has more than {0} {1}")]
    TooMany(usize, &'static str),
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
}

/// The type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            "summary" => Self::Summary,
            "untyped" | "unknown" => Self::Untyped,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
            Self::Untyped => "untyped",
        }
    }

    /// The suffixes a sample of a family of this kind may add to its name.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            Self::Histogram => &["_bucket", "_sum", "_count", "_created"],
            Self::Summary => &["_sum", "_count", "_created"],
            Self::Counter => &["_total", "_created"],
            Self::Gauge | Self::Untyped => &[],
        }
    }
}

/// One sample: its full name (with a suffix for histograms), labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A metric family: its samples under one `# HELP` and `# TYPE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    /// Sets `name` to `value` on every sample, replacing what the sample
    /// said (a guest cannot claim another pod's `sandbox_id`).
    pub fn set_label(&mut self, name: &str, value: &str) {
        for s in &mut self.samples {
            match s.labels.iter_mut().find(|(k, _)| k == name) {
                Some((_, v)) => *v = value.to_string(),
                None => s.labels.push((name.to_string(), value.to_string())),
            }
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, at most [`MAX_NAME`] bytes.
pub fn valid_metric_name(n: &str) -> bool {
    valid_name(n, true)
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not `__`-prefixed (reserved).
pub fn valid_label_name(n: &str) -> bool {
    valid_name(n, false) && !n.starts_with("__")
}

fn valid_name(n: &str, colon: bool) -> bool {
    let ok = |c: u8, first: bool| {
        c.is_ascii_alphabetic()
            || c == b'_'
            || (colon && c == b':')
            || (!first && c.is_ascii_digit())
    };
    !n.is_empty() && n.len() <= MAX_NAME && n.bytes().enumerate().all(|(i, c)| ok(c, i == 0))
}

/// Parses and checks `text`; see the module's description.
pub fn parse(text: &str) -> Result<Vec<Family>, TextError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(TextError::TooLarge(text.len()));
    }
    let mut families: Vec<Family> = Vec::new();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut samples = 0usize;
    for (n, line) in text.lines().enumerate() {
        let bad = |reason: &str| TextError::Line {
            line: n + 1,
            reason: reason.to_string(),
        };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let (what, name, rest) = (words.next(), words.next(), words.next());
            match (what, name) {
                (Some("HELP"), Some(name)) => {
                    let family = family_for(&mut families, &mut seen, name, &bad)?;
                    let help = unescape(rest.unwrap_or(""), false)
                        .ok_or_else(|| bad("bad escape in HELP"))?;
                    if help.len() > MAX_VALUE {
                        return Err(bad("HELP too long"));
                    }
                    family.help = help;
                }
                (Some("TYPE"), Some(name)) => {
                    let kind = rest
                        .and_then(|k| Kind::parse(k.trim()))
                        .ok_or_else(|| bad("unknown TYPE"))?;
                    let family = family_for(&mut families, &mut seen, name, &bad)?;
                    if !family.samples.is_empty() {
                        return Err(bad("TYPE after the family's samples"));
                    }
                    family.kind = kind;
                }
                _ => {} // other comments, `# EOF`, `# UNIT`
            }
            if families.len() > MAX_FAMILIES {
                return Err(TextError::TooMany(MAX_FAMILIES, "families"));
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|r| bad(&r))?;
        samples += 1;
        if samples > MAX_SAMPLES {
            return Err(TextError::TooMany(MAX_SAMPLES, "samples"));
        }
        let belongs = families.last().is_some_and(|f| {
            sample.name == f.name
                || f.kind
                    .suffixes()
                    .iter()
                    .any(|s| sample.name.strip_suffix(s) == Some(f.name.as_str()))
        });
        if !belongs {
            // A sample without HELP/TYPE: a family of its own, untyped.
            let family = family_for(&mut families, &mut seen, &sample.name.clone(), &bad)?;
            family.samples.push(sample);
        } else if let Some(f) = families.last_mut() {
            f.samples.push(sample);
        }
        if families.len() > MAX_FAMILIES {
            return Err(TextError::TooMany(MAX_FAMILIES, "families"));
        }
    }
    for f in &mut families {
        to_004(f);
    }
    families.retain(|f| !f.samples.is_empty());
    // A counter renamed to `x_total` must not meet a family already named so.
    let mut names = std::collections::BTreeSet::new();
    if let Some(f) = families.iter().find(|f| !names.insert(f.name.as_str())) {
        return Err(TextError::Line {
            line: 0,
            reason: format!("family {} appears twice", f.name),
        });
    }
    Ok(families)
}

/// The labels the host adds to a guest's series (`sandbox_id`, and the
/// monitor's `cri_uid`, `cri_name`, `cri_namespace`).
pub const HOST_LABELS: usize = 4;

/// [`parse`] for the guest's text: a sample may carry at most
/// `MAX_LABELS - HOST_LABELS` labels, so that what the host renders after
/// adding its own is still within [`MAX_LABELS`] for the next reader.
pub fn parse_guest(text: &str) -> Result<Vec<Family>, TextError> {
    let families = parse(text)?;
    let most = MAX_LABELS - HOST_LABELS;
    if families
        .iter()
        .flat_map(|f| &f.samples)
        .any(|s| s.labels.len() > most)
    {
        return Err(TextError::TooMany(most, "labels on a guest sample"));
    }
    Ok(families)
}

/// The family `name`: the last one if it has that name, else a new one
/// (a name seen before, not last, is a duplicate: refused).
fn family_for<'a>(
    families: &'a mut Vec<Family>,
    seen: &mut BTreeMap<String, ()>,
    name: &str,
    bad: &dyn Fn(&str) -> TextError,
) -> Result<&'a mut Family, TextError> {
    if !valid_metric_name(name) {
        return Err(bad("invalid metric name"));
    }
    if families.last().is_none_or(|f| f.name != name) {
        if seen.insert(name.to_string(), ()).is_some() {
            return Err(bad("a family appears twice"));
        }
        families.push(Family {
            name: name.to_string(),
            help: String::new(),
            kind: Kind::Untyped,
            samples: Vec::new(),
        });
    }
    Ok(families.last_mut().expect("pushed"))
}

/// OpenMetrics to 0.0.4: a counter family `x` whose samples are
/// `x_total` is named `x_total`; `_created` samples are dropped.
fn to_004(f: &mut Family) {
    f.samples
        .retain(|s| !s.name.ends_with("_created") || s.name == f.name);
    if f.kind == Kind::Counter && !f.name.ends_with("_total") {
        let total = format!("{}_total", f.name);
        if f.samples.iter().all(|s| s.name == total) {
            f.name = total;
        }
    }
}

/// `name{a="b",...} value [timestamp]`; the timestamp is dropped.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or("a sample without a value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err("invalid metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    let mut words = rest.split_ascii_whitespace();
    let value = words.next().ok_or("a sample without a value")?;
    let value = parse_value(value).ok_or("invalid sample value")?;
    if let Some(ts) = words.next() {
        ts.parse::<f64>().map_err(|_| "invalid timestamp")?;
    }
    if words.next().is_some() {
        return Err("trailing text after the sample".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A sample's label pairs, in order.
type Labels = Vec<(String, String)>;

/// Labels up to the closing `}`; returns them and the text after it.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels: Labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(tail) = s.strip_prefix('}') {
            return Ok((labels, tail));
        }
        let eq = s.find('=').ok_or("a label without a value")?;
        let name = s[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        s = s[eq + 1..].trim_start();
        s = s.strip_prefix('"').ok_or("a label value without quotes")?;
        // The closing quote: the first one not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("an unterminated label value")?;
        let value = unescape(&s[..end], true).ok_or("bad escape in a label value")?;
        if value.len() > MAX_VALUE {
            return Err("label value too long".into());
        }
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("label {name} given twice"));
        }
        labels.push((name.to_string(), value));
        if labels.len() > MAX_LABELS {
            return Err("too many labels".into());
        }
        s = s[end + 1..].trim_start();
        if let Some(tail) = s.strip_prefix(',') {
            s = tail;
        } else if !s.starts_with('}') {
            return Err("labels not separated by commas".into());
        }
    }
}

/// `\\`, `\n` (and in label values `\"`) unescaped.
fn unescape(s: &str, quotes: bool) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            // HELP text keeps an unknown escape as written.
            Some(other) if !quotes => {
                out.push('\\');
                out.push(other);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn escape(v: &str, quotes: bool) -> String {
    let v = v.replace('\\', r"\\").replace('\n', r"\n");
    if quotes {
        v.replace('"', "\\\"")
    } else {
        v
    }
}

/// Writes `families` in the text format 0.0.4.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        if !f.help.is_empty() {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape(&f.help, false));
        }
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        for s in &f.samples {
            out.push_str(&s.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape(v, true));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_value(s.value));
        }
    }
    out
}

/// Families merged by name: the samples of a family that several inputs
/// have go under one `# HELP`/`# TYPE` (the text format allows a family
/// once). A family whose type differs from the first seen is left out.
#[derive(Debug, Default)]
pub struct Merged {
    families: BTreeMap<String, Family>,
}

impl Merged {
    pub fn add(&mut self, family: Family) {
        match self.families.get_mut(&family.name) {
            Some(f) if f.kind == family.kind => f.samples.extend(family.samples),
            Some(_) => {}
            None => {
                self.families.insert(family.name.clone(), family);
            }
        }
    }

    pub fn render(&self) -> String {
        let all: Vec<Family> = self.families.values().cloned().collect();
        render(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_relabels() {
        let text = "# HELP capsa_guest_load Guest load.\n# TYPE capsa_guest_load gauge\n\
                    capsa_guest_load{item=\"load1\"} 0.5\ncapsa_guest_load{item=\"load5\"} 1e3 1700000000\n";
        let mut families = parse(text).unwrap();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].samples[1].value, 1000.0);
        families[0].set_label("sandbox_id", "sb1");
        families[0].set_label("item", "x\"y");
        let out = render(&families);
        assert!(
            out.contains("capsa_guest_load{item=\"x\\\"y\",sandbox_id=\"sb1\"} 0.5\n"),
            "{out}"
        );
        assert_eq!(parse(&out).unwrap()[0].samples[0].labels[0].1, "x\"y");
    }

    #[test]
    fn openmetrics_counters_and_histograms_become_004() {
        let text =
            "# HELP capsa_x Things.\n# TYPE capsa_x counter\ncapsa_x_total 3\ncapsa_x_created 17\n\
                    # TYPE capsa_h histogram\ncapsa_h_sum 1.5\ncapsa_h_count 2\n\
                    capsa_h_bucket{le=\"1.0\"} 1\ncapsa_h_bucket{le=\"+Inf\"} 2\n# EOF\n";
        let families = parse(text).unwrap();
        assert_eq!(families[0].name, "capsa_x_total");
        assert_eq!(families[0].samples.len(), 1);
        assert_eq!(families[1].samples[3].value, 2.0);
        let out = render(&families);
        assert!(
            out.contains("# TYPE capsa_x_total counter\ncapsa_x_total 3\n"),
            "{out}"
        );
        assert!(out.contains("capsa_h_bucket{le=\"+Inf\"} 2\n"), "{out}");
    }

    #[test]
    fn refuses_what_is_not_the_format() {
        for bad in [
            "9bad 1\n",
            "a{b=\"c} 1\n",
            "a{b=c} 1\n",
            "a{__name__=\"x\"} 1\n",
            "a{b=\"1\",b=\"2\"} 1\n",
            "a 1 2 3\n",
            "a one\n",
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n",
            "# TYPE a flavour\n",
            "a{b=\"\\x\"} 1\n",
            // Found by fuzzing: the counter `x` becomes `x_total`, a name taken.
            "x_total 1\n# TYPE x counter\nx_total 2\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let full: String = (0..MAX_LABELS).map(|i| format!("l{i}=\"v\",")).collect();
        let full = format!("a{{{full}}} 1\n");
        assert!(parse(&full).is_ok());
        assert!(
            parse_guest(&full).is_err(),
            "no room left for the host's labels"
        );
        let big = "a 1\n".repeat(MAX_SAMPLES + 1);
        assert_eq!(
            parse(&big).unwrap_err(),
            TextError::TooMany(MAX_SAMPLES, "samples")
        );
        let many_labels: String = (0..=MAX_LABELS).map(|i| format!("l{i}=\"v\",")).collect();
        assert!(parse(&format!("a{{{many_labels}}} 1\n")).is_err());
    }

    #[test]
    fn merged_families_appear_once() {
        let mut m = Merged::default();
        for sb in ["a", "b"] {
            for mut f in parse("# TYPE capsa_t gauge\ncapsa_t 1\n").unwrap() {
                f.set_label("sandbox_id", sb);
                m.add(f);
            }
        }
        let out = m.render();
        assert_eq!(out.matches("# TYPE capsa_t gauge").count(), 1, "{out}");
        assert!(out.contains("capsa_t{sandbox_id=\"b\"} 1"), "{out}");
    }
}
