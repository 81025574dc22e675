//! Core costs side by side: a yield hand-off between two tasks, and spawn + join of an empty
//! task, for fibra, tokio current_thread and OS threads. Compare the ratios within one run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

mod support;

fn yield_handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("yield_handoff");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("fibra", |b| {
        b.iter_custom(|iters| {
            fibra::run(move || {
                let per_fiber = iters.div_ceil(2);
                let start = Instant::now();
                let a = fibra::spawn(move || (0..per_fiber).for_each(|_| fibra::yield_now()));
                let b = fibra::spawn(move || (0..per_fiber).for_each(|_| fibra::yield_now()));
                a.join().unwrap();
                b.join().unwrap();
                start.elapsed()
            })
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    group.bench_function("tokio_yield_now", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                let per_task = iters.div_ceil(2);
                let start = Instant::now();
                let task = || {
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            tokio::task::yield_now().await;
                        }
                    })
                };
                let (a, b) = (task(), task());
                a.await.unwrap();
                b.await.unwrap();
                start.elapsed()
            })
        })
    });
    group.bench_function("os_threads_mpsc", |b| {
        b.iter_custom(|iters| support::std_mpsc_round_trips_with_echo_thread(iters.div_ceil(2)))
    });
    group.finish();
}

fn spawn_join(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn_join_empty");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("fibra", |b| {
        b.iter_custom(|iters| {
            fibra::run(move || {
                let start = Instant::now();
                for _ in 0..iters {
                    fibra::spawn(|| black_box(1u32)).join().unwrap();
                }
                start.elapsed()
            })
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    group.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        tokio::spawn(async { black_box(1u32) }).await.unwrap();
                    }
                    start.elapsed()
                })
                .await
                .unwrap()
            })
        })
    });
    group.bench_function("os_thread", |b| {
        b.iter(|| std::thread::spawn(|| black_box(1u32)).join().unwrap());
    });
    group.finish();
}

criterion_group!(benches, yield_handoff, spawn_join);
criterion_main!(benches);
