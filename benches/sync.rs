//! Sync waits side by side: a contended mutex hand-off and a message round trip between two
//! tasks, for fibra (plain std::sync code in fibers), tokio::sync (current_thread) and OS
//! threads. One iteration is one round trip (two hand-offs). Compare ratios within one run.
//!
//! std::sync::mpsc cannot block between two fibers of one thread (its waker never wakes a
//! waiter registered by the sending thread; see ARCHITECTURE.md, "Sync waits"), so fibra's
//! fiber-to-fiber message round trip is measured over a std Mutex + Condvar pair, and std mpsc
//! is measured between a fiber and an OS thread.

use std::hint::black_box;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

mod support;

fn mutex_handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("sync_mutex_handoff");
    group.measurement_time(Duration::from_secs(3));
    // Each side: lock, let the other side run (it blocks on the lock), unlock (waking it), let
    // it run (it takes the lock). Every lock is a futex wait, every unlock a futex wake.
    group.bench_function("fibra_std_mutex", |b| {
        b.iter_custom(|iters| {
            fibra::run(move || {
                let m = Arc::new(Mutex::new(0u64));
                let side = |m: Arc<Mutex<u64>>| {
                    move || {
                        for _ in 0..iters {
                            let mut g = m.lock().unwrap();
                            *g += 1;
                            fibra::yield_now();
                            drop(g);
                            fibra::yield_now();
                        }
                    }
                };
                let start = Instant::now();
                let a = fibra::spawn(side(m.clone()));
                let b = fibra::spawn(side(m.clone()));
                a.join().unwrap();
                b.join().unwrap();
                let elapsed = start.elapsed();
                assert_eq!(*m.lock().unwrap(), 2 * iters);
                elapsed
            })
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    group.bench_function("tokio_mutex", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                let m = Arc::new(tokio::sync::Mutex::new(0u64));
                let side = |m: Arc<tokio::sync::Mutex<u64>>| async move {
                    for _ in 0..iters {
                        let mut g = m.lock().await;
                        *g += 1;
                        tokio::task::yield_now().await;
                        drop(g);
                        tokio::task::yield_now().await;
                    }
                };
                let start = Instant::now();
                let a = tokio::spawn(side(m.clone()));
                let b = tokio::spawn(side(m.clone()));
                a.await.unwrap();
                b.await.unwrap();
                start.elapsed()
            })
        })
    });
    group.bench_function("os_threads_std_mutex", |b| {
        b.iter_custom(|iters| {
            let m = Arc::new(Mutex::new(0u64));
            let side = |m: Arc<Mutex<u64>>| {
                move || {
                    for _ in 0..iters {
                        let mut g = m.lock().unwrap();
                        *g += 1;
                        std::thread::yield_now();
                        drop(g);
                        std::thread::yield_now();
                    }
                }
            };
            let start = Instant::now();
            let a = std::thread::spawn(side(m.clone()));
            let b = std::thread::spawn(side(m.clone()));
            a.join().unwrap();
            b.join().unwrap();
            start.elapsed()
        })
    });
    group.finish();
}

/// A turn-taking baton over a std Mutex + Condvar: `wait_for(me)` blocks until it is my turn.
struct Baton {
    turn: Mutex<u8>,
    cv: Condvar,
}

impl Baton {
    fn pass(&self, me: u8, to: u8) {
        let mut t = self.turn.lock().unwrap();
        while *t != me {
            t = self.cv.wait(t).unwrap();
        }
        *t = to;
        self.cv.notify_one();
    }
}

fn message_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("sync_round_trip");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("fibra_fibers_std_condvar", |b| {
        b.iter_custom(|iters| {
            fibra::run(move || {
                let baton = Arc::new(Baton {
                    turn: Mutex::new(0),
                    cv: Condvar::new(),
                });
                let b2 = baton.clone();
                let start = Instant::now();
                let other = fibra::spawn(move || (0..iters).for_each(|_| b2.pass(1, 0)));
                (0..iters).for_each(|_| baton.pass(0, 1));
                other.join().unwrap();
                start.elapsed()
            })
        })
    });
    group.bench_function("fibra_fibers_fibra_channel", |b| {
        b.iter_custom(|iters| {
            fibra::run(move || {
                let (to_echo, echo_rx) = fibra::channel::<u64>();
                let (to_caller, caller_rx) = fibra::channel::<u64>();
                let echo = fibra::spawn(move || {
                    for v in echo_rx {
                        to_caller.send(v).unwrap();
                    }
                });
                let start = Instant::now();
                for i in 0..iters {
                    to_echo.send(i).unwrap();
                    black_box(caller_rx.recv().unwrap());
                }
                let elapsed = start.elapsed();
                drop(to_echo);
                echo.join().unwrap();
                elapsed
            })
        })
    });
    group.bench_function("os_threads_std_condvar", |b| {
        b.iter_custom(|iters| {
            let baton = Arc::new(Baton {
                turn: Mutex::new(0),
                cv: Condvar::new(),
            });
            let b2 = baton.clone();
            let start = Instant::now();
            let other = std::thread::spawn(move || (0..iters).for_each(|_| b2.pass(1, 0)));
            (0..iters).for_each(|_| baton.pass(0, 1));
            other.join().unwrap();
            start.elapsed()
        })
    });
    group.bench_function("fibra_fiber_os_thread_std_mpsc", |b| {
        b.iter_custom(|iters| {
            fibra::run(move || support::std_mpsc_round_trips_with_echo_thread(iters))
        })
    });
    group.bench_function("os_threads_std_mpsc", |b| {
        b.iter_custom(support::std_mpsc_round_trips_with_echo_thread)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    group.bench_function("tokio_mpsc", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                let (to_b, mut from_a) = tokio::sync::mpsc::unbounded_channel::<u64>();
                let (to_a, mut from_b) = tokio::sync::mpsc::unbounded_channel::<u64>();
                let echo = tokio::spawn(async move {
                    while let Some(v) = from_a.recv().await {
                        to_a.send(v).unwrap();
                    }
                });
                let start = Instant::now();
                for i in 0..iters {
                    to_b.send(i).unwrap();
                    black_box(from_b.recv().await.unwrap());
                }
                let elapsed = start.elapsed();
                drop(to_b);
                echo.await.unwrap();
                elapsed
            })
        })
    });
    group.finish();
}

criterion_group!(benches, mutex_handoff, message_round_trip);
criterion_main!(benches);
