//! The subset of containerd's filter syntax that `Walk` requests carry:
//! clauses `FIELD`, `FIELD==VALUE`, `FIELD!=VALUE` over the fields `name`,
//! `parent`, `kind` and `labels.KEY` (KEY and VALUE optionally in double
//! quotes), joined by `,` (all must hold); several filters match if any
//! does. containerd 1.6 sends none from its own code paths (its garbage
//! collector walks everything); `ctr snapshots ls` and clients may send
//! these.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    field: Vec<String>,
    op: Op,
}

/// One parsed filter: a conjunction of clauses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter(Vec<Clause>);

/// What a filter is matched against.
pub struct Fields<'a> {
    pub name: &'a str,
    pub parent: &'a str,
    pub kind: &'a str,
    pub labels: &'a HashMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("snapshot filter {filter:?}: {reason}")]
pub struct FilterError {
    pub filter: String,
    pub reason: &'static str,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let err = |reason| FilterError {
            filter: text.to_string(),
            reason,
        };
        let mut clauses = Vec::new();
        for part in split_unquoted(text, ',').map_err(err)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty clause"));
            }
            clauses.push(parse_clause(part).map_err(err)?);
        }
        Ok(Filter(clauses))
    }

    pub fn matches(&self, f: &Fields) -> bool {
        self.0.iter().all(|c| {
            let value = match c.field.as_slice() {
                [name] if name == "name" => Some(f.name),
                [name] if name == "parent" => Some(f.parent).filter(|p| !p.is_empty()),
                [name] if name == "kind" => Some(f.kind),
                [labels, key] if labels == "labels" => f.labels.get(key).map(String::as_str),
                _ => None,
            };
            match (&c.op, value) {
                (Op::Present, v) => v.is_some(),
                (Op::Equal(want), Some(v)) => v == want,
                (Op::Equal(_), None) => false,
                (Op::NotEqual(want), v) => v != Some(want.as_str()),
            }
        })
    }
}

/// Whether `fields` matches any of `filters` (or there are none).
pub fn any_matches(filters: &[Filter], fields: &Fields) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(fields))
}

fn parse_clause(text: &str) -> Result<Clause, &'static str> {
    let (field, op) = match find_unquoted(text, "==")? {
        Some(i) => (&text[..i], Op::Equal(unquote(text[i + 2..].trim())?)),
        None => match find_unquoted(text, "!=")? {
            Some(i) => (&text[..i], Op::NotEqual(unquote(text[i + 2..].trim())?)),
            None => {
                if find_unquoted(text, "~=")?.is_some() {
                    return Err("the regular expression operator ~= is not supported");
                }
                (text, Op::Present)
            }
        },
    };
    let mut path = Vec::new();
    for seg in split_unquoted(field.trim(), '.')? {
        path.push(unquote(seg.trim())?);
    }
    // `labels.a.b` names the label "a.b".
    if path.len() > 2 && path[0] == "labels" {
        let key = path[1..].join(".");
        path.truncate(1);
        path.push(key);
    }
    match path
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["name"] | ["parent"] | ["kind"] | ["labels", _] => Ok(Clause { field: path, op }),
        _ => Err("unknown field (known: name, parent, kind, labels.KEY)"),
    }
}

/// `s` split at `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Result<Vec<&str>, &'static str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quote");
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn find_unquoted(s: &str, pat: &str) -> Result<Option<usize>, &'static str> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if !quoted && s[i..].starts_with(pat) => return Ok(Some(i)),
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quote");
    }
    Ok(None)
}

/// `"a\"b"` → `a"b`; unquoted text as is.
fn unquote(s: &str) -> Result<String, &'static str> {
    let Some(inner) = s.strip_prefix('"') else {
        if s.contains('"') {
            return Err("quote inside an unquoted word");
        }
        return Ok(s.to_string());
    };
    let inner = inner.strip_suffix('"').ok_or("unterminated quote")?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or("dangling backslash")?),
            '"' => return Err("quote inside a quoted word"),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(labels: &'a HashMap<String, String>) -> Fields<'a> {
        Fields {
            name: "k8s.io/3/abc",
            parent: "",
            kind: "committed",
            labels,
        }
    }

    #[test]
    fn clauses_and_alternatives() {
        let labels = HashMap::from([("containerd.io/gc.root".to_string(), "x".to_string())]);
        let f = fields(&labels);
        let m = |s: &str| Filter::parse(s).unwrap().matches(&f);
        assert!(m("kind==committed"));
        assert!(!m("kind==active"));
        assert!(m("name==\"k8s.io/3/abc\",kind!=view"));
        assert!(m("labels.\"containerd.io/gc.root\""));
        assert!(m("labels.containerd.io/gc.root==x"));
        assert!(!m("labels.other"));
        assert!(!m("parent"));
        assert!(m("parent!=p"));
        let alts = [
            Filter::parse("kind==view").unwrap(),
            Filter::parse("kind==committed").unwrap(),
        ];
        assert!(any_matches(&alts, &f));
        assert!(any_matches(&[], &f));
        assert!(!any_matches(&alts[..1], &f));
    }

    #[test]
    fn bad_filters_are_named() {
        for bad in ["size==1", "name==\"x", "name~=x.*", "a,,b", "name==a\"b"] {
            let err = Filter::parse(bad).unwrap_err();
            assert_eq!(err.filter, bad);
        }
    }
}
