//! A latency histogram the request path observes into without a lock or an atomic
//! read-modify-write.

use std::time::Duration;

use prometheus::proto;

use crate::sync::Stripes;

/// Upper bounds of the latency buckets, in seconds: 0.5 ms to 30 s.
pub const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// The same bounds in nanoseconds, so an observation compares integers.
const BUCKET_NANOS: [u64; 16] = {
    let mut out = [0u64; 16];
    let mut i = 0;
    while i < BUCKETS.len() {
        out[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A latency histogram: an observation adds to its bucket and to the sum, in the counting
/// thread's stripe ([`Stripes`]): no lock, no atomic read-modify-write, no float arithmetic.
/// Counts are per bucket and made cumulative at scrape.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One counter per bound, one for +Inf, then the sum in nanoseconds.
    cells: Stripes<{ BUCKETS.len() + 2 }>,
}

/// Where the sum of a [`Histogram`]'s observations is kept.
const SUM: usize = BUCKETS.len() + 1;

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS.partition_point(|&b| b < nanos);
        let cells = self.cells.local();
        cells.add(i, 1);
        cells.add(SUM, nanos);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        (0..SUM).map(|i| self.cells.sum(i)).sum()
    }

    pub(crate) fn to_proto(&self) -> proto::Histogram {
        let mut h = proto::Histogram::default();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len());
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.cells.sum(i);
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        cumulative += self.cells.sum(BUCKETS.len());
        h.set_bucket(buckets);
        h.set_sample_count(cumulative);
        h.set_sample_sum(self.cells.sum(SUM) as f64 / 1e9);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // on the first bound: counted in it
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60)); // beyond the last bound: +Inf only
        let p = h.to_proto();
        let b = p.get_bucket();
        assert_eq!(b[0].cumulative_count(), 1);
        assert_eq!(b[2].cumulative_count(), 1); // 2.5 ms
        assert_eq!(b[3].cumulative_count(), 2); // 5 ms
        assert_eq!(b[BUCKETS.len() - 1].cumulative_count(), 2);
        assert_eq!(p.get_sample_count(), 3);
        assert!((p.get_sample_sum() - 60.0035).abs() < 1e-9);
    }
}
