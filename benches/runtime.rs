//! Multi-worker figures, side by side in one run:
//!
//! - CPU-bound scaling: 1000 fibers each doing ~1 ms of computation on 1 worker and on 2
//!   workers (goal on this 2-core machine: 2 workers take at most 0.55x the time of 1);
//! - cross-worker wake latency: a fiber on worker A wakes a fiber on worker B and back (std mpsc
//!   ping-pong; half a round trip is one wake), beside tokio multi_thread (2 workers) tasks doing
//!   the same over tokio mpsc, and two OS threads over std mpsc.
//!
//! `cargo bench --bench runtime` prints a table (medians of 5 runs).

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;

fn spin_for(d: Duration) -> u64 {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        for i in 0..1000u64 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    x
}

fn cpu_bound(workers: usize) -> Duration {
    let rt = fibra::Runtime::new(workers).unwrap();
    let start = Instant::now();
    let handles: Vec<_> = (0..1000)
        .map(|_| rt.spawn(|| spin_for(Duration::from_millis(1))))
        .collect();
    for h in handles {
        black_box(h.join().unwrap());
    }
    let elapsed = start.elapsed();
    rt.shutdown();
    elapsed
}

const ROUND_TRIPS: u32 = 20_000;

fn fibra_wake_latency() -> Duration {
    let rt = fibra::Runtime::new(2).unwrap();
    let (to_b, from_a) = mpsc::channel::<u32>();
    let (to_a, from_b) = mpsc::channel::<u32>();
    let b = rt.spawn_on(1, move || {
        for v in from_a {
            to_a.send(v).unwrap();
        }
    });
    let a = rt.spawn_on(0, move || {
        let start = Instant::now();
        for i in 0..ROUND_TRIPS {
            to_b.send(i).unwrap();
            black_box(from_b.recv().unwrap());
        }
        start.elapsed()
    });
    let elapsed = a.join().unwrap();
    b.join().unwrap();
    rt.shutdown();
    elapsed / (2 * ROUND_TRIPS)
}

fn tokio_wake_latency() -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (to_b, mut from_a) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let (to_a, mut from_b) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let b = tokio::spawn(async move {
            while let Some(v) = from_a.recv().await {
                to_a.send(v).unwrap();
            }
        });
        let a = tokio::spawn(async move {
            let start = Instant::now();
            for i in 0..ROUND_TRIPS {
                to_b.send(i).unwrap();
                black_box(from_b.recv().await.unwrap());
            }
            start.elapsed()
        });
        let elapsed = a.await.unwrap();
        b.await.unwrap();
        elapsed / (2 * ROUND_TRIPS)
    })
}

fn thread_wake_latency() -> Duration {
    support::std_mpsc_round_trips_with_echo_thread(ROUND_TRIPS as u64) / (2 * ROUND_TRIPS)
}

fn median(mut f: impl FnMut() -> Duration) -> Duration {
    let mut runs: Vec<Duration> = (0..5).map(|_| f()).collect();
    runs.sort();
    runs[2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("CPU-bound: 1000 fibers x 1 ms of computation (median of 5)");
    let one = median(|| cpu_bound(1));
    let two = median(|| cpu_bound(2));
    println!("  1 worker:  {:>8.1} ms", one.as_secs_f64() * 1e3);
    println!(
        "  2 workers: {:>8.1} ms   ratio {:.2} (goal <= 0.55)",
        two.as_secs_f64() * 1e3,
        two.as_secs_f64() / one.as_secs_f64()
    );
    println!("cross-worker wake (ping-pong, half a round trip; median of 5)");
    let f = median(fibra_wake_latency);
    let t = median(tokio_wake_latency);
    let th = median(thread_wake_latency);
    println!(
        "  fibra, std mpsc, fiber on worker 0 <-> fiber on worker 1: {:>8.2} µs",
        f.as_secs_f64() * 1e6
    );
    println!(
        "  tokio multi_thread(2), tokio mpsc, task <-> task:          {:>8.2} µs",
        t.as_secs_f64() * 1e6
    );
    println!(
        "  OS threads, std mpsc:                                    {:>8.2} µs",
        th.as_secs_f64() * 1e6
    );
}
