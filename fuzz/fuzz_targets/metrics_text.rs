//! The Prometheus text a pod's socket serves, whose guest part comes from
//! the guest's agent (`capsa_runtime::metrics::text`): what is accepted
//! is within the caps, renders, and parses back to the same families.
#![no_main]

use capsa_runtime::metrics::text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut families) = text::parse_guest(input) else {
        return;
    };
    let samples: usize = families.iter().map(|f| f.samples.len()).sum();
    assert!(families.len() <= text::MAX_FAMILIES);
    assert!(samples <= text::MAX_SAMPLES);
    for f in &mut families {
        assert!(text::valid_metric_name(&f.name), "{:?}", f.name);
        for s in &f.samples {
            assert!(s.labels.len() <= text::MAX_LABELS - text::HOST_LABELS);
            assert!(s.labels.iter().all(|(k, _)| text::valid_label_name(k)));
        }
        // What the host adds: the pod's, then the monitor's labels.
        for label in ["sandbox_id", "cri_uid", "cri_name", "cri_namespace"] {
            f.set_label(label, "fuzz");
        }
    }
    let rendered = text::render(&families);
    let again = text::parse(&rendered).expect("capsa's own rendering parses");
    let names = |fs: &[text::Family]| fs.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&families), names(&again), "{rendered}");
});
