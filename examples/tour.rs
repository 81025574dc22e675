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

/// The seed talk's server benchmark: every request waits 100 ms in a plain
/// `std::thread::sleep`; 1,000 keep-alive clients hammer it for two seconds. The same blocking
/// server code runs once with a fiber per connection and once on a 16-thread pool.
fn sleep_server_clients() {
    section("the talk's server: each request sleeps 100 ms; 1,000 keep-alive clients, 2 s");
    let fibers = count_sleep_server_requests(start_sleep_server(None));
    println!("fibra, one OS thread, a fiber per connection: {fibers:>6.0} req/s (ideal 10,000)");
    let pool = count_sleep_server_requests(start_sleep_server(Some(16)));
    println!("16-thread pool:                               {pool:>6.0} req/s (16 / 100 ms = 160)");
}

/// Starts the sleep server on a thread of its own: fibers when `pool` is `None`, else that many
/// worker threads, each serving one connection at a time.
fn start_sleep_server(pool: Option<usize>) -> std::net::SocketAddr {
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("bound");
    match pool {
        None => {
            std::thread::spawn(move || {
                fibra::run(move || {
                    for conn in listener.incoming().flatten() {
                        fibra::spawn(move || serve_sleepy_http(conn));
                    }
                })
            });
        }
        Some(threads) => {
            let (tx, rx) = mpsc::channel();
            let rx = Arc::new(std::sync::Mutex::new(rx));
            for _ in 0..threads {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    loop {
                        let conn = rx.lock().unwrap().recv();
                        match conn {
                            Ok(conn) => serve_sleepy_http(conn),
                            Err(_) => return,
                        }
                    }
                });
            }
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    if tx.send(conn).is_err() {
                        return;
                    }
                }
            });
        }
    }
    addr
}

/// HTTP/1.1 with keep-alive, reduced to what the clients below send: every request (a head
/// without a body) sleeps 100 ms and gets a short `200`.
fn serve_sleepy_http(mut conn: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut pending = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        let end = pending.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        pending.drain(..end);
        std::thread::sleep(Duration::from_millis(100));
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nslept\n")
            .is_err()
        {
            return;
        }
    }
}

/// 1,000 client fibers (plain blocking std::net code too) on this thread: connect, wait for a
/// common start, then request in a loop for two seconds. Returns responses per second.
fn count_sleep_server_requests(addr: std::net::SocketAddr) -> f64 {
    use std::io::{Read, Write};
    let clients = 1000;
    let window = Duration::from_secs(2);
    let start = Instant::now() + Duration::from_millis(1500);
    let end = start + window;
    let total: usize = fibra::run(move || {
        let fibers: Vec<_> = (0..clients)
            .map(|_| {
                fibra::spawn(move || {
                    let left = end.saturating_duration_since(Instant::now());
                    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&addr, left) else {
                        return 0;
                    };
                    std::thread::sleep(start.saturating_duration_since(Instant::now()));
                    let mut done = 0;
                    let mut buf = [0u8; 256];
                    while Instant::now() < end {
                        let left = end.saturating_duration_since(Instant::now());
                        let _ = conn.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                        if conn
                            .write_all(b"GET / HTTP/1.1\r\nhost: tour\r\n\r\n")
                            .is_err()
                        {
                            break;
                        }
                        // The whole response is one short segment.
                        match conn.read(&mut buf) {
                            Ok(n) if n > 0 && Instant::now() <= end => done += 1,
                            _ => break,
                        }
                    }
                    done
                })
            })
            .collect();
        fibers.into_iter().map(|f| f.join().unwrap_or(0)).sum()
    });
    total as f64 / window.as_secs_f64()
}

/// The talk's process example: five children each running `sleep 1`, from five fibers.
fn five_children() {
    section("five fibers, each running the command `sleep 1` with std::process::Command");
    let start = Instant::now();
    let ok = fibra::run(|| {
        let handles: Vec<_> = (0..5)
            .map(|_| {
                fibra::spawn(|| {
                    std::process::Command::new("sleep")
                        .arg("1")
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
                })
            })
            .collect();
        handles.into_iter().all(|h| h.join().unwrap_or(false))
    });
    println!(
        "5 x `sleep 1`: {} in {:.2} s on one OS thread (one after another: 5 s)",
        if ok { "all succeeded" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
}

/// The talk's timeout example, and cancellation: only blocking points are interrupted.
fn timeouts() {
    section("a 1 s fibra::timeout around a 10 s std::thread::sleep; cancelling a fiber in accept");
    fibra::run(|| {
        let start = Instant::now();
        let r = fibra::timeout(Duration::from_secs(1), || {
            std::thread::sleep(Duration::from_secs(10))
        });
        println!(
            "timeout: {r:?} after {:.2} s",
            start.elapsed().as_secs_f64()
        );

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = fibra::spawn(move || listener.accept().map(|_| ()));
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        server.cancel();
        let outcome = match server.join() {
            Err(payload) if payload.is::<fibra::Cancelled>() => "Err(Cancelled)",
            _ => "something else",
        };
        println!(
            "cancel of a fiber parked in accept: join gave {outcome} after {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    });
}

/// std::sync between fibers and OS threads: a lock held by a thread parks only the fiber
/// waiting for it, and a Condvar round trip between two fibers costs well under a microsecond.
fn locks_and_condvars() {
    section("std::sync::Mutex and Condvar between fibers and OS threads");
    let lock = std::sync::Arc::new(std::sync::Mutex::new(0u64));
    let held = lock.clone();
    let (locked_tx, locked_rx) = mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut guard = held.lock().unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        *guard += 1;
    });
    locked_rx.recv().unwrap();
    let (turns, waited) = fibra::run(move || {
        let waiter = fibra::spawn(move || {
            let start = Instant::now();
            let value = *lock.lock().unwrap();
            (value, start.elapsed())
        });
        let ticker = fibra::spawn(|| {
            let mut turns = 0;
            for _ in 0..10 {
                fibra::sleep(Duration::from_millis(10));
                turns += 1;
            }
            turns
        });
        (ticker.join().unwrap(), waiter.join().unwrap())
    });
    holder.join().unwrap();
    println!(
        "a fiber waited {:.0} ms for a lock an OS thread held (saw {}); another fiber ran {turns} times meanwhile",
        waited.1.as_secs_f64() * 1e3,
        waited.0
    );

    let n = 100_000;
    let per_trip = fibra::run(move || {
        let pair = std::rc::Rc::new((std::sync::Mutex::new(0u64), std::sync::Condvar::new()));
        let other = pair.clone();
        let echo = fibra::spawn(move || {
            let (m, c) = &*other;
            let mut v = m.lock().unwrap();
            for i in 0..n {
                v = c.wait_while(v, |v| *v != 2 * i + 1).unwrap();
                *v += 1;
                c.notify_one();
            }
        });
        let (m, c) = &*pair;
        let start = Instant::now();
        let mut v = m.lock().unwrap();
        for i in 0..n {
            *v += 1;
            c.notify_one();
            v = c.wait_while(v, |v| *v != 2 * i + 2).unwrap();
        }
        drop(v);
        let elapsed = start.elapsed();
        echo.join().unwrap();
        elapsed / n as u32
    });
    println!(
        "Mutex + Condvar round trip between two fibers of one thread: {:.0} ns",
        per_trip.as_secs_f64() * 1e9
    );
}

/// All cores: the same CPU-bound work on a 1-worker and a 2-worker runtime.
fn all_cores() {
    section("all cores: 1000 fibers each computing for 1 ms, on 1 worker and on 2");
    let mut times = Vec::new();
    for workers in [1, 2] {
        let rt = fibra::Runtime::new(workers).expect("start workers");
        let start = Instant::now();
        let handles: Vec<_> = (0..1000)
            .map(|_| {
                rt.spawn(|| {
                    let t = Instant::now();
                    let mut x = 0u64;
                    while t.elapsed() < Duration::from_millis(1) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                    x
                })
            })
            .collect();
        for h in handles {
            std::hint::black_box(h.join().unwrap());
        }
        times.push(start.elapsed());
        rt.shutdown();
    }
    println!(
        "1 worker: {:.0} ms; {} workers: {:.0} ms ({:.2}x; this machine has {} cores)",
        times[0].as_secs_f64() * 1e3,
        2,
        times[1].as_secs_f64() * 1e3,
        times[1].as_secs_f64() / times[0].as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}

fn main() {
    println!("fibra tour: plain blocking Rust, made concurrent");
    ten_thousand_sleepers();
    precise_timers();
    cheap_fibers();
    five_children();
    timeouts();
    locks_and_condvars();
    request_context();
    concurrent_lookups();
    sleep_server_clients();
    all_cores();
}
