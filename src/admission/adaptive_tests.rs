//! The controller's arithmetic, driven window by window against a model backend: `slots`
//! requests served at once in `service` each, the rest waiting inside it, and every waiting
//! request slowing the others by 1% (contention), so that throughput falls when requests pile up.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

const MS: Duration = Duration::from_millis(1);

/// The model backend.
#[derive(Clone, Copy)]
struct Backend {
    slots: f64,
    service: Duration,
}

impl Backend {
    /// The latency of a request when `conc` are in the backend: its service time, grown by
    /// contention, plus its wait behind the queue.
    fn latency(&self, conc: f64) -> Duration {
        let queued = (conc - self.slots).max(0.0);
        let service = self.service.as_secs_f64() * (1.0 + 0.01 * queued);
        let wait = service * queued / self.slots;
        Duration::from_secs_f64(service + wait)
    }

    /// Completions per second with `conc` in the backend.
    fn throughput(&self, conc: f64) -> f64 {
        let served = conc.min(self.slots);
        let queued = (conc - self.slots).max(0.0);
        served / (self.service.as_secs_f64() * (1.0 + 0.01 * queued))
    }
}

/// One window of a client that keeps `demand` requests outstanding against a limit of `limit`,
/// when the backend holds `total` requests in all (this client's and others').
fn window(b: &Backend, limit: usize, demand: f64, total: f64) -> Window {
    let mine = (limit as f64).min(demand);
    let rtt = b.latency(total);
    let rate = b.throughput(total) * mine / total.max(1e-9);
    let answered = (rate * WINDOW.as_secs_f64()).round().max(1.0) as u64;
    Window {
        length: WINDOW,
        answered,
        rtt_sum: rtt * answered as u32,
        failed: 0,
        limited: u64::from(demand > limit as f64),
    }
}

fn bounds(initial: usize) -> AutoLimit {
    AutoLimit {
        min: 2,
        initial,
        max: 1000,
    }
}

/// Runs `ctl` alone against `b` for `seconds` with `demand` outstanding; returns the limits seen
/// (one per window) and the clock after.
fn run(
    ctl: &mut Controller,
    b: &Backend,
    demand: f64,
    now: &mut Instant,
    seconds: u64,
) -> Vec<usize> {
    let mut limits = Vec::new();
    for _ in 0..seconds * 10 {
        let limit = ctl.limit();
        let w = window(b, limit, demand, (limit as f64).min(demand));
        *now += WINDOW;
        ctl.update(*now, &w);
        limits.push(ctl.limit());
    }
    limits
}

/// Median of the last `n` limits: a probe's two windows do not move it.
fn settled(limits: &[usize], n: usize) -> f64 {
    let mut tail = limits[limits.len() - n..].to_vec();
    tail.sort_unstable();
    tail[n / 2] as f64
}

fn backend(slots: f64) -> Backend {
    Backend {
        slots,
        service: 20 * MS,
    }
}

#[test]
fn converges_from_below() {
    let mut now = Instant::now();
    let mut ctl = Controller::new(bounds(4), now);
    let limits = run(&mut ctl, &backend(16.0), 48.0, &mut now, 10);
    let s = settled(&limits, 30);
    assert!((16.0..=21.0).contains(&s), "settled at {s}: {limits:?}");
    let reached = limits.iter().position(|l| *l >= 16).unwrap();
    assert!(
        reached <= 20,
        "reached 16 after {reached} windows: {limits:?}"
    );
}

#[test]
fn converges_from_above() {
    let mut now = Instant::now();
    let mut ctl = Controller::new(bounds(64), now);
    let limits = run(&mut ctl, &backend(16.0), 100.0, &mut now, 15);
    let s = settled(&limits, 30);
    assert!((15.0..=21.0).contains(&s), "settled at {s}: {limits:?}");
}

#[test]
fn follows_a_halving_and_a_doubling() {
    let mut now = Instant::now();
    let mut ctl = Controller::new(bounds(16), now);
    run(&mut ctl, &backend(16.0), 48.0, &mut now, 5);
    let halved = run(&mut ctl, &backend(8.0), 48.0, &mut now, 5);
    assert!(
        halved[10..].iter().all(|l| *l <= 11),
        "not down within a second of the halving: {halved:?}"
    );
    let s = settled(&halved, 20);
    assert!((7.0..=10.5).contains(&s), "settled at {s}: {halved:?}");
    let doubled = run(&mut ctl, &backend(24.0), 72.0, &mut now, 5);
    let up = doubled.iter().position(|l| *l >= 21).unwrap();
    assert!(up <= 20, "up to 85% of 24 after {up} windows: {doubled:?}");
    let s = settled(&doubled, 20);
    assert!((24.0..=31.0).contains(&s), "settled at {s}: {doubled:?}");
}

#[test]
fn a_light_load_is_never_shed_nor_creeps_the_limit() {
    let mut now = Instant::now();
    let mut ctl = Controller::new(bounds(16), now);
    // 12 outstanding against 16 slots: no request ever waits for weir's limit.
    let limits = run(&mut ctl, &backend(16.0), 12.0, &mut now, 60);
    assert!(limits.iter().all(|l| *l == 16), "{limits:?}");
}

#[test]
fn a_steady_high_latency_does_not_creep_the_limit_up() {
    let mut now = Instant::now();
    let b = backend(16.0);
    let mut ctl = Controller::new(bounds(16), now);
    run(&mut ctl, &b, 48.0, &mut now, 5);
    // Others share the backend and keep 20 requests in it, a queue of their own: latency is
    // high, and stays so, whatever this weir does; its requests always wait for its limit.
    // Halving its limit does not bring latency down, so the baseline is measured afresh, once;
    // it must not ratchet up from there, nor the limit creep.
    let mut limits = Vec::new();
    let mut baselines = Vec::new();
    for _ in 0..600 {
        let limit = ctl.limit();
        let w = window(&b, limit, 100.0, limit as f64 + 20.0);
        now += WINDOW;
        ctl.update(now, &w);
        limits.push(ctl.limit());
        baselines.push(ctl.baseline().unwrap());
    }
    let top = *limits.iter().max().unwrap();
    assert!(top <= 16, "crept up to {top}: {limits:?}");
    assert!(
        baselines[100..].windows(2).all(|b| b[1] <= b[0]),
        "the baseline ratcheted up: {baselines:?}"
    );
    // What it sees with its limit at a quarter and the others queue: no higher.
    assert!(baselines[599] <= b.latency(24.0), "{:?}", baselines[599]);
}

#[test]
fn a_pause_costs_a_quarter_once_and_is_made_up_within_a_second() {
    let mut now = Instant::now();
    let b = backend(16.0);
    let mut ctl = Controller::new(bounds(16), now);
    let limits = run(&mut ctl, &b, 48.0, &mut now, 5);
    let before = settled(&limits, 10);
    // One second without answers (a GC pause), then every request of that second at once.
    now += Duration::from_secs(1);
    let paused = Window {
        length: Duration::from_secs(1),
        answered: 16,
        rtt_sum: Duration::from_secs(1) * 16,
        failed: 0,
        limited: 100,
    };
    ctl.update(now, &paused);
    let after_pause = ctl.limit() as f64;
    assert!(
        after_pause >= (0.75 * before).floor(),
        "{after_pause} after {before}"
    );
    let limits = run(&mut ctl, &b, 48.0, &mut now, 1);
    assert!(
        *limits.last().unwrap() as f64 >= 0.95 * before,
        "not back within a second: {limits:?} (was {before})"
    );
}

#[test]
fn errors_lower_the_limit_even_when_they_are_fast() {
    let mut now = Instant::now();
    let mut ctl = Controller::new(bounds(32), now);
    run(&mut ctl, &backend(64.0), 48.0, &mut now, 2);
    let healthy = ctl.limit();
    // Every exchange fails, in a millisecond: fast, and not healthy.
    let failing = Window {
        length: WINDOW,
        answered: 0,
        rtt_sum: Duration::ZERO,
        failed: 500,
        limited: 50,
    };
    let mut limits = Vec::new();
    for _ in 0..20 {
        now += WINDOW;
        ctl.update(now, &failing);
        limits.push(ctl.limit());
    }
    assert!(limits[0] < healthy, "{healthy} -> {limits:?}");
    assert_eq!(*limits.last().unwrap(), 2, "{limits:?}");
    // A few errors among many answers cost little.
    let mut ctl = Controller::new(bounds(32), now);
    run(&mut ctl, &backend(64.0), 48.0, &mut now, 2);
    let before = ctl.limit();
    let mut w = window(&backend(64.0), before, 48.0, 32.0);
    w.failed = w.answered / 100;
    now += WINDOW;
    ctl.update(now, &w);
    assert!(ctl.limit() as f64 >= 0.99 * before as f64 - 1.0);
}

#[test]
fn a_slower_backend_is_learned_without_staying_at_the_floor() {
    let mut now = Instant::now();
    let mut ctl = Controller::new(bounds(16), now);
    run(&mut ctl, &backend(16.0), 48.0, &mut now, 5);
    // A deploy doubles the service time: latency doubles at any concurrency.
    let slower = Backend {
        slots: 16.0,
        service: 40 * MS,
    };
    let limits = run(&mut ctl, &slower, 48.0, &mut now, 8);
    let s = settled(&limits, 20);
    assert!(s >= 14.0, "settled at {s}: {limits:?}");
    assert!(ctl.baseline().unwrap() >= 38 * MS);
}

#[test]
fn two_controllers_share_one_backend_fairly() {
    let mut now = Instant::now();
    let b = backend(16.0);
    let mut a = Controller::new(bounds(4), now);
    let mut c = Controller::new(bounds(30), now);
    let mut shares = Vec::new();
    for _ in 0..600 {
        let (la, lc) = (a.limit(), c.limit());
        let total = (la + lc) as f64;
        let wa = window(&b, la, 100.0, total);
        let wc = window(&b, lc, 100.0, total);
        now += WINDOW;
        a.update(now, &wa);
        c.update(now, &wc);
        shares.push((wa.answered as f64, wc.answered as f64));
    }
    let tail = &shares[shares.len() - 200..];
    let (x, y) = tail
        .iter()
        .fold((0.0, 0.0), |(x, y), (a, c)| (x + a, y + c));
    let jain = (x + y) * (x + y) / (2.0 * (x * x + y * y));
    assert!(jain >= 0.95, "Jain's index {jain} ({x} vs {y})");
    let capacity = b.throughput(16.0) * WINDOW.as_secs_f64() * 200.0;
    assert!(
        (x + y) / capacity >= 0.9,
        "{} of capacity",
        (x + y) / capacity
    );
}
