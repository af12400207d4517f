//! Micro-benchmark of the admission path (criterion): admit + release of one slot, uncontended
//! and with two threads contending for the same pool. Run: `cargo bench --bench admission`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use weir::Pool;
use weir::config::Priority;

fn admit_release(pool: &Arc<Pool>) {
    // A free slot admits without waiting, so the future completes on its first poll.
    let permit = pool.admit(Priority::Normal, None, 0).now_or_never();
    std::hint::black_box(&permit);
    drop(permit);
}

fn bench(c: &mut Criterion) {
    let pool = Arc::new(Pool::new(64, 128, Duration::from_secs(1)));
    c.bench_function("admit+release, uncontended", |b| {
        b.iter(|| admit_release(&pool))
    });
    c.bench_function("admit+release, 2 threads contending", |b| {
        b.iter_custom(|iters| {
            let pool = Arc::clone(&pool);
            let other = std::thread::spawn({
                let pool = Arc::clone(&pool);
                move || {
                    for _ in 0..iters {
                        admit_release(&pool);
                    }
                }
            });
            let start = Instant::now();
            for _ in 0..iters {
                admit_release(&pool);
            }
            let elapsed = start.elapsed();
            let _ = other.join();
            elapsed
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
