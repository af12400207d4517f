//! The counters of one listener: connections, rejections, client timeouts and size limits. They
//! are plain atomics indexed by enum, so counting costs one relaxed add and label values stay a
//! fixed set.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::labels::{ClientTimeout, ConnReject, SizeLimit};

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    accepted: AtomicU64,
    active: AtomicUsize,
    parked: AtomicUsize,
    rejected: [AtomicU64; ConnReject::ALL.len()],
    timeouts: [AtomicU64; ClientTimeout::ALL.len()],
    limits: [AtomicU64; SizeLimit::ALL.len()],
    /// Requests refused before routing: no Host, two, a bad target (`bad_request`).
    bad_requests: AtomicU64,
}

impl ListenerCounters {
    pub fn reject(&self, r: ConnReject) {
        self.rejected[r as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn timeout(&self, t: ClientTimeout) {
        self.timeouts[t as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn bad_request(&self) {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
    }
    pub fn bad_requests(&self) -> u64 {
        self.bad_requests.load(Ordering::Relaxed)
    }
    pub fn limit(&self, l: SizeLimit) {
        self.limits[l as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// Counts an accepted connection as open until the returned guard is dropped.
    pub fn open(&self) -> Counted<'_> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Counted::new(&self.active)
    }

    /// Counts an open connection as parked (an idle HTTP/1 connection that gave back its server's state) until the returned guard is dropped.
    pub fn park(&self) -> Counted<'_> {
        Counted::new(&self.parked)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }
    pub fn rejected(&self, r: ConnReject) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }
    pub fn timeouts(&self, t: ClientTimeout) -> u64 {
        self.timeouts[t as usize].load(Ordering::Relaxed)
    }
    pub fn limits(&self, l: SizeLimit) -> u64 {
        self.limits[l as usize].load(Ordering::Relaxed)
    }
}

/// A connection counted in one of the gauges of [`ListenerCounters`] (open, parked) while it
/// lives.
pub struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(gauge: &'a AtomicUsize) -> Counted<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
