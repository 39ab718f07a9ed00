//! Order statistics of benchmark samples, shared by the shim's examples.

/// The median of `v` (the mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The `p`-th percentile of `v` (`0 < p <= 100`), by nearest rank.
#[allow(dead_code)] // Not every example reports percentiles.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    let rank = (p / 100.0 * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    assert!(!v.is_empty(), "no samples");
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s
}
