//! The rate limit every send passes: `Limits::limiter` (this instance's share of the policy's
//! rate, recomputed under one mutex) and governor's GCRA `check()`; and what dispatch does with
//! them, `limiter(..)` then `until_ready().await`, with no contention (a limiter that never has
//! to wait), on a current-thread tokio runtime.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::model::Channel;
use herald::ratelimit::Limits;

/// A rate no benchmark loop reaches: every `check()` passes.
const UNREACHABLE: f64 = 1e9;
const BURST: u32 = 1_000;

fn bench(c: &mut Criterion) {
    let limits = Limits::new();
    limits.set_instances(3);
    let open = limits
        .limiter(Channel::Messenger, Some(UNREACHABLE), Some(BURST))
        .expect("a rate gives a limiter");
    assert!(
        (0..100).all(|_| open.check().is_ok()),
        "the limiter never refuses"
    );
    // One cell per second for this instance, spent at once: every later check is refused.
    let closed = limits
        .limiter(Channel::Sms, Some(1.0), Some(1))
        .expect("a rate gives a limiter");
    let _ = closed.check();
    assert!(closed.check().is_err(), "the closed limiter refuses");

    let mut g = c.benchmark_group("ratelimit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("limiter_lookup", |b| {
        b.iter(|| {
            limits.limiter(
                black_box(Channel::Messenger),
                black_box(Some(UNREACHABLE)),
                black_box(Some(BURST)),
            )
        })
    });
    g.bench_function("check_allowed", |b| b.iter(|| black_box(&open).check()));
    g.bench_function("check_refused", |b| b.iter(|| black_box(&closed).check()));
    g.bench_function("limiter_lookup_and_check", |b| {
        b.iter(|| {
            limits
                .limiter(
                    black_box(Channel::Messenger),
                    black_box(Some(UNREACHABLE)),
                    black_box(Some(BURST)),
                )
                .map(|l| l.check().is_ok())
        })
    });

    // The dispatch hot path, uncontended: one `block_on` per measured batch, so the runtime's
    // entry is not counted per send.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    g.bench_function("limiter_until_ready_uncontended", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    if let Some(l) = limits.limiter(
                        black_box(Channel::Messenger),
                        black_box(Some(UNREACHABLE)),
                        black_box(Some(BURST)),
                    ) {
                        l.until_ready().await;
                    }
                }
                start.elapsed()
            })
        })
    });
    // What dispatch does now: its turn at the channel's gate (FIFO, HIGH first), then a cell.
    g.bench_function("gate_pass_uncontended", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let gate = limits.gate(Channel::Messenger);
                let start = Instant::now();
                for _ in 0..iters {
                    gate.pass(black_box(false), || {
                        limits.limiter(Channel::Messenger, Some(UNREACHABLE), Some(BURST))
                    })
                    .await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
