//! Error helpers.

use std::error::Error;

/// `err` and its sources, joined with ": " (each message once).
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let msg = e.to_string();
        // `#[error(transparent)]` and friends repeat their source.
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot mount {0}")]
        Mount(&'static str, #[source] std::io::Error),
        #[error(transparent)]
        Same(std::io::Error),
    }

    #[test]
    fn joins_sources_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such device");
        assert_eq!(
            chain(&Outer::Mount("/x", io())),
            "cannot mount /x: no such device"
        );
        assert_eq!(chain(&Outer::Same(io())), "no such device");
    }
}
