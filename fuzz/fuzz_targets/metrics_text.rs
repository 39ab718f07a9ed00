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
    let Ok(mut families) = text::parse(input) else {
        return;
    };
    let samples: usize = families.iter().map(|f| f.samples.len()).sum();
    assert!(families.len() <= text::MAX_FAMILIES);
    assert!(samples <= text::MAX_SAMPLES);
    for f in &mut families {
        assert!(text::valid_metric_name(&f.name), "{:?}", f.name);
        for s in &f.samples {
            assert!(s.labels.len() <= text::MAX_LABELS);
            assert!(s.labels.iter().all(|(k, _)| text::valid_label_name(k)));
        }
        f.set_label("sandbox_id", "fuzz");
    }
    let rendered = text::render(&families);
    let again = text::parse(&rendered).expect("capsa's own rendering parses");
    let names = |fs: &[text::Family]| fs.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&families), names(&again), "{rendered}");
});
