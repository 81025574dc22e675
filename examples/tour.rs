//! A tour of what fibra does, with times measured on this machine.
//!
//! `cargo run --release --example tour`
//!
//! Each section runs plain blocking code (std only) inside fibers and, where it makes the point,
//! the same code on OS threads beside it.

#[path = "../tests/dns_server/mod.rs"]
mod dns_server;

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

fn section(title: &str) {
    println!("\n== {title}");
}

/// The seed talk's first demonstration: sleeping is waiting, and waiting should be free.
fn ten_thousand_sleepers() {
    section("10,000 fibers, each calling plain std::thread::sleep(100 ms)");
    let n = 10_000;
    let start = Instant::now();
    let finished = fibra::run(|| {
        let handles: Vec<_> = (0..n)
            .map(|_| fibra::spawn(|| std::thread::sleep(Duration::from_millis(100))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().is_ok() as usize)
            .sum::<usize>()
    });
    let fibers = start.elapsed();
    println!(
        "fibra, one OS thread:   {finished} sleeps done in {:>8.1} ms",
        fibers.as_secs_f64() * 1e3
    );

    // The same jobs on a 16-thread pool, given one second: each thread sleeps its jobs in turn.
    let budget = Duration::from_secs(1);
    let done = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let start = Instant::now();
    let pool: Vec<_> = (0..16)
        .map(|_| {
            let (rx, done) = (rx.clone(), done.clone());
            std::thread::spawn(move || {
                while rx.lock().unwrap().recv().is_ok() {
                    if start.elapsed() >= budget {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for _ in 0..n {
        tx.send(()).unwrap();
    }
    drop(tx);
    for t in pool {
        t.join().unwrap();
    }
    let pool_done = done.load(Ordering::Relaxed);
    let rate = pool_done as f64 / start.elapsed().as_secs_f64();
    println!(
        "16-thread pool:         {pool_done} sleeps done in {:>8.1} ms; all {n} would take ~{:.0} s",
        start.elapsed().as_secs_f64() * 1e3,
        n as f64 / rate
    );
    println!(
        "fibers finish together: {:.0}x the pool's throughput",
        (n as f64 / fibers.as_secs_f64()) / rate
    );
}

/// Timers are exact below a millisecond: the loop waits on a timerfd, not on epoll's ms timeout.
fn precise_timers() {
    section("sub-millisecond sleeps in a fiber");
    let (mean, worst) = fibra::run(|| {
        let mut total = Duration::ZERO;
        let mut worst = Duration::ZERO;
        for _ in 0..1000 {
            let t = Instant::now();
            std::thread::sleep(Duration::from_micros(50));
            let e = t.elapsed();
            total += e;
            worst = worst.max(e);
        }
        (total / 1000, worst)
    });
    println!(
        "1000 sleeps of 50 µs: mean {:.1} µs, worst {:.1} µs",
        mean.as_secs_f64() * 1e6,
        worst.as_secs_f64() * 1e6
    );
}

/// Spawning is cheap enough to use a fiber per task, and a stack only costs what it touches.
fn cheap_fibers() {
    section("spawning and parking 100,000 fibers");
    let n = 100_000;
    let start = Instant::now();
    fibra::run(|| {
        for _ in 0..n {
            fibra::spawn(|| std::thread::sleep(Duration::from_millis(200)));
        }
        fibra::yield_now();
        println!(
            "{n} fibers spawned and parked in {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    });
    println!(
        "all woke and finished after {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
}

/// Per-request state under interleaving (the seed talk's point): a `thread_local!` is one value
/// for every fiber of the thread, so a request that blocks wakes up to whichever request stored
/// its id last; a `fibra::FiberLocal` is each fiber's own, and its children inherit it.
fn request_context() {
    section("per-request state: thread_local! next to fibra::FiberLocal");
    thread_local! {
        static THREAD_REQUEST_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    static FIBER_REQUEST_ID: fibra::FiberLocal<u64> = fibra::FiberLocal::new();
    let n = 1000u64;
    let (thread_wrong, fiber_wrong) = fibra::run(|| {
        let handles: Vec<_> = (1..=n)
            .map(|id| {
                fibra::spawn(move || {
                    THREAD_REQUEST_ID.set(id);
                    FIBER_REQUEST_ID.set(id);
                    // Any blocking call lets the other requests run.
                    std::thread::sleep(Duration::from_millis(id % 7));
                    let in_child = fibra::spawn(|| FIBER_REQUEST_ID.get()).join().unwrap();
                    let thread_wrong = THREAD_REQUEST_ID.get() != id;
                    let fiber_wrong = FIBER_REQUEST_ID.get() != Some(id) || in_child != Some(id);
                    (thread_wrong as u64, fiber_wrong as u64)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(t, f), (dt, df)| (t + dt, f + df))
    });
    println!("{n} interleaved requests each store their id, block, then read it back:");
    println!("thread_local!:      {thread_wrong:>4} read another request's id");
    println!(
        "fibra::FiberLocal:  {fiber_wrong:>4} did (and each request's child fiber saw its id)"
    );
}

/// Name resolution: every `getaddrinfo` (here through `ToSocketAddrs`) parks only its fiber.
fn concurrent_lookups() {
    section("1,000 fibers resolving distinct host names; the name server answers after 100 ms");
    let n = 1_000u32;
    let server = dns_server::TestServer::start(Duration::from_millis(100));
    // This thread's lookups go to the local server (FIBRA_NAMESERVERS or
    // fibra::dns::set_nameservers do the same process-wide).
    fibra::dns::set_thread_nameservers([server.addr]);
    let start = Instant::now();
    let resolved = fibra::run(move || {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                fibra::spawn(move || {
                    let addr = (format!("host{i}.test"), 443)
                        .to_socket_addrs()
                        .unwrap()
                        .next()
                        .unwrap();
                    (addr.ip() == dns_server::host_ip(i)) as u32
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u32>()
    });
    let took = start.elapsed();
    fibra::dns::reset_thread_nameservers();
    println!(
        "fibra, one OS thread:   {resolved} names resolved in {:>8.1} ms ({} queries answered)",
        took.as_secs_f64() * 1e3,
        server.queries()
    );
    println!(
        "one at a time:          {:>8.1} s; glibc on a 16-thread pool: ~{:.1} s (benches/dns.rs)",
        f64::from(n) * 0.1,
        f64::from(n) * 0.1 / 16.0
    );
}

fn main() {
    println!("fibra tour: plain blocking Rust, made concurrent");
    ten_thousand_sleepers();
    precise_timers();
    cheap_fibers();
    request_context();
    concurrent_lookups();
}
