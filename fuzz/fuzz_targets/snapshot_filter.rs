//! `capsa_snapshotter::filter::Filter::parse` and `matches`: the `Walk`
//! filters containerd's clients send to the snapshotter's socket. Input:
//! the filter text, NUL, then a label key and value (NUL-separated) to
//! match against.
#![no_main]

use std::collections::HashMap;

use capsa_snapshotter::filter::{Fields, Filter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let filter = parts.next().unwrap_or("");
    let key = parts.next().unwrap_or("k").to_string();
    let value = parts.next().unwrap_or("v").to_string();
    match Filter::parse(filter) {
        Ok(f) => {
            let labels = HashMap::from([(key.clone(), value.clone())]);
            let fields = Fields {
                name: "n",
                parent: "",
                kind: "active",
                labels: &labels,
            };
            let _ = f.matches(&fields);
        }
        // Errors name the filter they reject.
        Err(e) => assert_eq!(e.filter, filter),
    }
    // A label presence filter on a quoted key matches exactly that label.
    let quoted: String = key
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    let presence = format!("labels.\"{quoted}\"");
    if let Ok(f) = Filter::parse(&presence) {
        let labels = HashMap::from([(key.clone(), value)]);
        let fields = Fields {
            name: "n",
            parent: "",
            kind: "active",
            labels: &labels,
        };
        assert!(
            f.matches(&fields),
            "{presence:?} does not match label {key:?}"
        );
    }
});
