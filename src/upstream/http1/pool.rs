//! The idle connections of one backend client, kept for reuse: a small LIFO stack (the most
//! recently used on top, so a quiet period lets the oldest expire). It knows nothing of HTTP: a
//! connection only says whether it can still carry a request ([`Reusable`]). A connection comes
//! back by its owner calling [`IdlePool::put_back`] when its exchange ended cleanly; one that is
//! dropped instead is closed.

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::lock;

/// A connection that may wait in an [`IdlePool`].
pub(crate) trait Reusable {
    /// Whether the connection can still carry a request (the peer has not closed it).
    fn is_open(&self) -> bool;
}

/// Idle connections, the most recently used last. The request path takes its short lock once to
/// take a connection and once to put it back; nothing is hashed or spawned per request.
pub(crate) struct IdlePool<C> {
    idle: Mutex<Vec<Idle<C>>>,
    /// Connections kept at most; more are closed as they come back.
    max_idle: usize,
    /// How long a connection may wait unused before it is closed.
    idle_timeout: Duration,
    /// Whether the task that closes expired connections runs.
    reaper: Once,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

impl<C: Reusable + Send + 'static> IdlePool<C> {
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> IdlePool<C> {
        IdlePool {
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            reaper: Once::new(),
        }
    }

    /// The most recently used connection that is still open; closed ones are dropped on the way.
    pub(crate) fn take(&self) -> Option<C> {
        let mut idle = lock(&self.idle);
        while let Some(c) = idle.pop() {
            if c.conn.is_open() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Takes back a connection whose exchange ended cleanly, if the pool has room.
    pub(crate) fn put_back(&self, conn: C) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Idle connections that are still open (those the peer closed are dropped on the way).
    pub(crate) fn open(&self) -> usize {
        let mut idle = lock(&self.idle);
        idle.retain(|c| c.conn.is_open());
        idle.len()
    }

    fn close_expired(&self) {
        let now = Instant::now();
        let fresh = |c: &Idle<C>| {
            now.saturating_duration_since(c.since) < self.idle_timeout && c.conn.is_open()
        };
        // Closed after the lock is released.
        let expired: Vec<Idle<C>> = {
            let mut idle = lock(&self.idle);
            let (keep, expired) = std::mem::take(&mut *idle).into_iter().partition(fresh);
            *idle = keep;
            expired
        };
        drop(expired);
    }

    /// Starts, once per pool, the task that closes connections idle for `idle_timeout`. It holds
    /// the pool weakly and ends when the pool is gone (after a reload that replaced its client).
    pub(crate) fn start_reaper(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            let pool = Arc::downgrade(self);
            let period = (self.idle_timeout / 4).max(Duration::from_millis(50));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(pool) = pool.upgrade() else { return };
                    pool.close_expired();
                }
            });
        });
    }
}
