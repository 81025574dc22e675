//! Costs of per-fiber context: `FiberLocal` get/set next to `thread_local!`, spawn + join with
//! 0 and 10 inherited values, and a yield hand-off with the tracing context bracket (no
//! subscriber; a subscriber; a subscriber and a span entered in each fiber).

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use fibra::FiberLocal;

thread_local! {
    static THREAD_CELL: Cell<u64> = const { Cell::new(0) };
}

static FIBER_VALUE: FiberLocal<u64> = FiberLocal::new();
static STRING_VALUE: FiberLocal<String> = FiberLocal::new();

fn get_set(c: &mut Criterion) {
    let mut group = c.benchmark_group("local_get_set");
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("thread_local_cell_get", |b| {
        THREAD_CELL.set(1);
        b.iter(|| black_box(THREAD_CELL.get()))
    });
    group.bench_function("thread_local_cell_set", |b| {
        b.iter(|| THREAD_CELL.set(black_box(2)))
    });
    // The floor of any per-fiber lookup: finding the running fiber.
    group.bench_function("current_fiber_id_in_fiber", |b| {
        b.iter_custom(|iters| {
            fibra::run(|| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(fibra::current_id());
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("fiber_local_get_in_fiber", |b| {
        b.iter_custom(|iters| {
            fibra::run(|| {
                FIBER_VALUE.set(1);
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(FIBER_VALUE.get());
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("fiber_local_set_in_fiber", |b| {
        b.iter_custom(|iters| {
            fibra::run(|| {
                FIBER_VALUE.set(1);
                let start = Instant::now();
                for i in 0..iters {
                    FIBER_VALUE.set(black_box(i));
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("fiber_local_with_string_in_fiber", |b| {
        b.iter_custom(|iters| {
            fibra::run(|| {
                STRING_VALUE.set("request-42".into());
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(STRING_VALUE.with(|s| s.map_or(0, |s| s.len())));
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("fiber_local_get_outside_fibers", |b| {
        FIBER_VALUE.set(1);
        b.iter(|| black_box(FIBER_VALUE.get()))
    });
    group.bench_function("fiber_local_set_outside_fibers", |b| {
        b.iter(|| FIBER_VALUE.set(black_box(2)))
    });
    group.finish();
}

static TEN: [FiberLocal<u64>; 10] = [const { FiberLocal::new() }; 10];

fn spawn_inherit(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn_join_inherit");
    group.measurement_time(Duration::from_secs(3));
    for values in [0usize, 10] {
        group.bench_function(format!("{values}_values"), |b| {
            b.iter_custom(|iters| {
                fibra::run(|| {
                    for (i, key) in TEN.iter().take(values).enumerate() {
                        key.set(i as u64);
                    }
                    let start = Instant::now();
                    for _ in 0..iters {
                        fibra::spawn(|| black_box(1u32)).join().unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    // The copy-on-write cost, paid by the first write on a shared map (here: in each child).
    group.bench_function("10_values_child_writes_one", |b| {
        b.iter_custom(|iters| {
            fibra::run(|| {
                for (i, key) in TEN.iter().enumerate() {
                    key.set(i as u64);
                }
                let start = Instant::now();
                for _ in 0..iters {
                    fibra::spawn(|| TEN[0].set(black_box(99))).join().unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// Two fibers yielding to each other `iters` times in all, each inside `span_per_fiber` if set.
fn yield_pair(iters: u64, span_per_fiber: bool) -> Duration {
    fibra::run(move || {
        let per_fiber = iters.div_ceil(2);
        let body = move || {
            let _entered = span_per_fiber.then(|| tracing::info_span!("request").entered());
            (0..per_fiber).for_each(|_| fibra::yield_now())
        };
        let start = Instant::now();
        let a = fibra::spawn(body);
        let b = fibra::spawn(body);
        a.join().unwrap();
        b.join().unwrap();
        start.elapsed()
    })
}

fn yield_tracing(c: &mut Criterion) {
    let mut group = c.benchmark_group("yield_handoff_tracing");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("no_subscriber", |b| {
        b.iter_custom(|iters| yield_pair(iters, false))
    });
    group.bench_function("registry", |b| {
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry());
        b.iter_custom(|iters| {
            tracing::dispatcher::with_default(&dispatch, || yield_pair(iters, false))
        })
    });
    group.bench_function("registry_span_entered_per_fiber", |b| {
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry());
        b.iter_custom(|iters| {
            tracing::dispatcher::with_default(&dispatch, || yield_pair(iters, true))
        })
    });
    group.finish();
}

criterion_group!(benches, get_set, spawn_inherit, yield_tracing);
criterion_main!(benches);
