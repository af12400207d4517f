//! Graceful drain, tracked per connection without a shared lock on the request path.
//!
//! Every open connection holds a [`Watch`]. On each poll, the connection reads one atomic (the
//! phase); its task's waker is registered in its own slot once, and again only after a phase
//! change; nothing is shared between connections until the phase changes. (tokio's `Notify`, behind `watch` channels and
//! cancellation tokens, takes one mutex shared by every waiter on each poll of a waiting future:
//! one lock per wake-up of every connection, which all cores would fight over.) The registry of
//! slots is locked only when a connection opens or closes and when the phase changes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::sync::Notify;

use crate::sync::lock;

/// What open connections are asked to do, in the order the phases come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainPhase {
    /// Serve requests.
    Serving,
    /// Finish the requests in progress, take no new ones, close idle keep-alive connections.
    Draining,
    /// Close now (the drain deadline passed).
    Abort,
}

/// The drain state shared by every listener's connections. Cloning shares it.
#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    phase: AtomicU8,
    next_id: AtomicU64,
    /// Each open connection's waker slot, by id.
    open: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    /// Signalled when the last connection closes.
    all_closed: Notify,
}

/// One connection's registration; dropping it (the connection ended) unregisters it.
pub struct Watch {
    inner: Arc<Inner>,
    id: u64,
    waker: Arc<AtomicWaker>,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Registers a connection that has just been accepted.
    pub fn watch(&self) -> Watch {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        lock(&self.inner.open).insert(id, Arc::clone(&waker));
        Watch {
            inner: Arc::clone(&self.inner),
            id,
            waker,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.inner.open).len()
    }

    /// Asks every connection to finish what it is doing and close; resolves once all have.
    pub async fn drain(&self) {
        self.set(DrainPhase::Draining);
        loop {
            let closed = self.inner.all_closed.notified();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Tells every connection to close now.
    pub fn abort(&self) {
        self.set(DrainPhase::Abort);
    }

    fn set(&self, phase: DrainPhase) {
        self.inner.phase.store(phase as u8, Ordering::Release);
        for waker in lock(&self.inner.open).values() {
            waker.wake();
        }
    }
}

impl Watch {
    /// The current phase; the calling task is woken when it changes. `registered` is the
    /// caller's note of the waker it left in the slot. While serving, a waker already there is
    /// not registered again, which would cost two atomic read-modify-writes per poll: only a
    /// phase change takes it out, and the change is seen on the poll its wake-up causes. From the
    /// first change on, every poll registers.
    fn poll_phase(&self, cx: &mut Context<'_>, registered: &mut Option<Waker>) -> DrainPhase {
        let kept = registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !kept {
            self.waker.register(cx.waker());
        }
        let mut phase = self.inner.phase.load(Ordering::Acquire);
        if phase == 0 {
            if !kept {
                *registered = Some(cx.waker().clone());
            }
            return DrainPhase::Serving;
        }
        *registered = None;
        if kept {
            // The change took the waker out: register it for the next change, then read the
            // phase again, so that a change in between is not missed.
            self.waker.register(cx.waker());
            phase = self.inner.phase.load(Ordering::Acquire);
        }
        if phase == 1 {
            DrainPhase::Draining
        } else {
            DrainPhase::Abort
        }
    }

    /// Runs `fut` until it ends or the drain is aborted (then it is dropped, closing whatever
    /// it owns). Resolves to `None` when aborted.
    pub fn unless_aborted<C: Future>(&self, fut: C) -> Watched<'_, C, fn(Pin<&mut C>)> {
        self.watched(fut, DrainPhase::Abort, None)
    }

    /// Runs `fut` while the server is serving: resolves to `None` (dropping `fut`) once the
    /// drain begins. For waiting on a connection that has not sent a request yet.
    pub fn while_serving<C: Future>(&self, fut: C) -> Watched<'_, C, fn(Pin<&mut C>)> {
        self.watched(fut, DrainPhase::Draining, None)
    }

    /// Runs a connection, calling `shutdown` once the drain begins (hyper's graceful shutdown:
    /// finish the request in progress, then close). Resolves to `None` when the drain is
    /// aborted: the connection is dropped, which closes it. One phase check per poll, for both.
    pub fn serve<C, F>(&self, conn: C, shutdown: F) -> Watched<'_, C, F>
    where
        C: Future,
        F: FnOnce(Pin<&mut C>),
    {
        self.watched(conn, DrainPhase::Abort, Some(shutdown))
    }

    fn watched<C, F>(&self, fut: C, stop: DrainPhase, on_drain: Option<F>) -> Watched<'_, C, F> {
        Watched {
            watch: self,
            fut,
            stop,
            on_drain,
            registered: None,
        }
    }
}

pin_project! {
    /// A future run under the drain ([`Watch::serve`], [`Watch::unless_aborted`],
    /// [`Watch::while_serving`]). A plain struct rather than an `async fn`, which would hold
    /// the future twice: as its argument and pinned.
    pub struct Watched<'a, C, F> {
        watch: &'a Watch,
        #[pin]
        fut: C,
        // From this phase on, the future is dropped and the answer is `None`.
        stop: DrainPhase,
        // Called once, when the drain begins.
        on_drain: Option<F>,
        // The waker this future left in the watch's slot (see `Watch::poll_phase`).
        registered: Option<Waker>,
    }
}

impl<C: Future, F: FnOnce(Pin<&mut C>)> Future for Watched<'_, C, F> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let phase = this.watch.poll_phase(cx, this.registered);
        if phase >= *this.stop {
            return Poll::Ready(None);
        }
        if phase == DrainPhase::Draining {
            if let Some(shutdown) = this.on_drain.take() {
                shutdown(this.fut.as_mut());
            }
        }
        this.fut.poll(cx).map(Some)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut open = lock(&self.inner.open);
        open.remove(&self.id);
        if open.is_empty() {
            self.inner.all_closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn drain_asks_each_connection_once_and_waits_for_all() {
        let drain = Drain::new();
        let a = drain.watch();
        let b = drain.watch();
        assert_eq!(drain.open(), 2);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let mut waiting = std::pin::pin!(drain.drain());
        {
            // A "connection" that ends only when `rx` fires, counting the shutdown requests.
            let mut conn_a = std::pin::pin!(a.serve(rx, |_| {
                asked.fetch_add(1, Ordering::SeqCst);
            }));
            assert!(conn_a.as_mut().now_or_never().is_none());
            assert_eq!(asked.load(Ordering::SeqCst), 0, "not asked while serving");

            // The first poll of the drain switches the phase and wakes every connection.
            assert!(waiting.as_mut().now_or_never().is_none());
            assert!(conn_a.as_mut().now_or_never().is_none());
            assert!(conn_a.as_mut().now_or_never().is_none());
            let n = asked.load(Ordering::SeqCst);
            assert_eq!(n, 1, "asked once, however often polled");

            tx.send(()).unwrap();
            assert_eq!(conn_a.await.map(|r| r.is_ok()), Some(true));
        }
        drop(a);
        // `b` is still open: the drain cannot be over.
        assert_eq!(drain.open(), 1);
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(b);
        waiting.await;
        assert_eq!(drain.open(), 0);
    }

    #[tokio::test]
    async fn a_connection_is_woken_by_the_drain_then_by_the_abort() {
        let drain = Drain::new();
        let w = drain.watch();
        let (asked_tx, asked) = tokio::sync::oneshot::channel();
        let conn = tokio::spawn(async move {
            let shutdown = move |_: Pin<&mut std::future::Pending<()>>| {
                let _ = asked_tx.send(());
            };
            w.serve(std::future::pending::<()>(), shutdown).await
        });
        tokio::task::yield_now().await;
        let mut draining = std::pin::pin!(drain.drain());
        assert!(draining.as_mut().now_or_never().is_none());
        asked.await.unwrap();
        // Asking again changes nothing, and must not use up the connection's registration.
        let mut again = std::pin::pin!(drain.drain());
        assert!(again.as_mut().now_or_never().is_none());
        tokio::task::yield_now().await;
        drain.abort();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
        assert_eq!(ended.expect("the abort woke the connection").unwrap(), None);
    }

    #[tokio::test]
    async fn abort_ends_what_is_left() {
        let drain = Drain::new();
        let w = drain.watch();
        let pending =
            tokio::spawn(async move { w.unless_aborted(std::future::pending::<()>()).await });
        tokio::task::yield_now().await;
        drain.abort();
        assert_eq!(pending.await.unwrap(), None);
    }
}
