//! TCP echo, 64-byte messages: fibra (blocking std::net code in fibers) beside tokio
//! current_thread and thread-per-connection, under one load generator.
//!
//! The load generator is one thread driving every connection with mio (ping-pong: each
//! connection sends 64 bytes and waits for them to come back). It is CPU-bound on this machine,
//! so the fair figure is the server's CPU time per message: the process's CPU time over the
//! measurement window minus the generator thread's own. Compare ratios within one run.
//!
//! ```text
//! cargo bench --bench echo                 # 100 and 1000 connections, 2 s windows
//! cargo bench --bench echo -- --secs 5 --conns 100,1000,5000
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};

const MSG: usize = 64;

/// Starts a server on a thread of its own and returns its address.
type StartServer = fn() -> SocketAddr;

fn main() {
    let mut secs = 2.0f64;
    let mut conns = vec![100usize, 1000];
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => secs = args.next().and_then(|v| v.parse().ok()).expect("--secs N"),
            "--conns" => {
                conns = args
                    .next()
                    .expect("--conns N,M")
                    .split(',')
                    .map(|v| v.parse().expect("--conns wants numbers"))
                    .collect()
            }
            "--only" => only = args.next(),
            // cargo bench passes --bench; ignore it and anything else libtest-like.
            _ => {}
        }
    }
    let window = Duration::from_secs_f64(secs);
    let servers: [(&str, StartServer); 5] = [
        ("fibra (std::net in fibers)", start_fibra),
        ("tokio current_thread", start_tokio),
        ("thread per connection", start_threads),
        ("fibra Runtime, 2 workers", start_fibra_workers),
        ("tokio multi_thread, 2", start_tokio_multi),
    ];
    if only.is_none() {
        fast_path();
    }
    println!("TCP echo, {MSG}-byte messages, one load-generator thread, {secs} s windows");
    println!(
        "{:<28} {:>6} {:>12} {:>15}",
        "server", "conns", "msgs/s", "server µs/msg"
    );
    for &n in &conns {
        for (name, start) in servers {
            if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
                continue;
            }
            let addr = start();
            let r = load(addr, n, window);
            println!(
                "{:<28} {:>6} {:>12.0} {:>15.2}",
                name,
                n,
                r.msgs as f64 / r.wall.as_secs_f64(),
                r.server_cpu.as_secs_f64() * 1e6 / r.msgs as f64
            );
        }
    }
}

/// The cost of a call that succeeds at once (data already there, room to write): a 1-byte
/// `write` + `read` on a Unix socket pair, through std, in a fiber, outside any fiber (the
/// interposed symbols' pass-through), and as raw system calls that bypass every symbol.
fn fast_path() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    const N: u32 = 200_000;
    fn std_pairs(a: &UnixStream, b: &UnixStream) -> Duration {
        let mut byte = [0u8; 1];
        let start = Instant::now();
        for _ in 0..N {
            (&*a).write_all(b"x").unwrap();
            (&*b).read_exact(&mut byte).unwrap();
        }
        start.elapsed() / N
    }
    let (a, b) = UnixStream::pair().unwrap();
    let raw_pairs = || {
        let (fa, fb) = (a.as_raw_fd() as libc::c_long, b.as_raw_fd() as libc::c_long);
        let mut byte = 0u8;
        let start = Instant::now();
        for _ in 0..N {
            // SAFETY: 1-byte write from and read into valid buffers on our own sockets.
            unsafe {
                libc::syscall(libc::SYS_write, fa, b"x".as_ptr(), 1);
                libc::syscall(libc::SYS_read, fb, &mut byte as *mut u8, 1);
            }
        }
        start.elapsed() / N
    };
    // Interleaved rounds, best of three each: the machine is shared and noisy.
    let (mut raw, mut plain, mut fiber) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        raw = raw.min(raw_pairs());
        plain = plain.min(std_pairs(&a, &b));
        fiber = fiber.min(fibra::run(|| std_pairs(&a, &b)));
    }
    println!(
        "A call that succeeds at once: 1-byte write + read on a Unix socket pair, ns per pair"
    );
    println!(
        "raw system calls {:>6}   std outside fibers {:>6}   std in a fiber {:>6}\n",
        raw.as_nanos(),
        plain.as_nanos(),
        fiber.as_nanos()
    );
}

/// The blocking echo handler every std-based server here runs, one per connection.
fn echo_blocking(mut conn: std::net::TcpStream) {
    conn.set_nodelay(true).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn start_fibra() -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    server_thread("fibra-server", move || {
        fibra::run(move || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            for conn in listener.incoming() {
                let conn = conn.unwrap();
                fibra::spawn(move || echo_blocking(conn));
            }
        })
    });
    rx.recv().unwrap()
}

/// The same blocking handler on a 2-worker fibra runtime, each worker accepting on its own
/// `SO_REUSEPORT` listener. The runtime is leaked: it serves until the process exits.
fn start_fibra_workers() -> SocketAddr {
    let probe = fibra::reuseport_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = probe.local_addr().unwrap();
    let probe = std::sync::Mutex::new(Some(probe));
    let rt = fibra::Runtime::new(2).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    drop(rt.run_on_all(move |_| {
        let listener = probe
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| fibra::reuseport_listener(addr).unwrap());
        tx.lock().unwrap().send(()).unwrap();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            fibra::spawn(move || echo_blocking(conn));
        }
    }));
    rx.recv().unwrap();
    rx.recv().unwrap();
    std::mem::forget(rt);
    addr
}

fn start_tokio_multi() -> SocketAddr {
    start_tokio_server("tokio-mt-server", || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn start_tokio() -> SocketAddr {
    start_tokio_server("tokio-server", || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The same echo handler, written for tokio, on the runtime `build` makes.
fn start_tokio_server(
    name: &str,
    build: impl FnOnce() -> tokio::runtime::Runtime + Send + 'static,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, rx) = mpsc::channel();
    server_thread(name, move || {
        build().block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    conn.set_nodelay(true).unwrap();
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        })
    });
    rx.recv().unwrap()
}

fn start_threads() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    server_thread("thread-server", move || {
        for conn in listener.incoming() {
            let conn = conn.unwrap();
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || echo_blocking(conn))
                .unwrap();
        }
    });
    addr
}

fn server_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap();
}

struct Result {
    msgs: u64,
    wall: Duration,
    server_cpu: Duration,
}

fn cpu(who: i32) -> Duration {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Conn {
    stream: MioStream,
    /// Bytes of the current message still to send, and still to receive.
    to_send: usize,
    to_recv: usize,
}

/// Runs the load generator on its own thread: `n` connections in ping-pong for a warm-up and
/// then `window`; returns the round trips completed in the window and the server's CPU time.
fn load(addr: SocketAddr, n: usize, window: Duration) -> Result {
    std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || generate(addr, n, window))
        .unwrap()
        .join()
        .unwrap()
}

fn generate(addr: SocketAddr, n: usize, window: Duration) -> Result {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(4096);
    let mut conns = Vec::with_capacity(n);
    // Connect in batches, so the listener's backlog never overflows.
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        for _ in batch {
            let stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_nodelay(true).unwrap();
            stream.set_nonblocking(true).unwrap();
            conns.push(Conn {
                stream: MioStream::from_std(stream),
                to_send: MSG,
                to_recv: MSG,
            });
        }
    }
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry()
            .register(
                &mut c.stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
    }
    let payload = [0x5au8; MSG];
    let mut buf = [0u8; 4096];
    let warmup = Duration::from_millis(500);
    let start = Instant::now();
    let mut measuring: Option<(Instant, Duration, Duration, u64)> = None;
    let mut msgs = 0u64;
    loop {
        let now = Instant::now();
        if measuring.is_none() && now - start >= warmup {
            measuring = Some((now, cpu(libc::RUSAGE_SELF), cpu(libc::RUSAGE_THREAD), msgs));
        }
        if let Some((t0, proc0, gen0, msgs0)) = measuring
            && now - t0 >= window
        {
            let wall = now - t0;
            let proc_cpu = cpu(libc::RUSAGE_SELF) - proc0;
            let gen_cpu = cpu(libc::RUSAGE_THREAD) - gen0;
            // Closing the connections ends the servers' handlers.
            drop(conns);
            return Result {
                msgs: msgs - msgs0,
                wall,
                server_cpu: proc_cpu.saturating_sub(gen_cpu),
            };
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            // Receive whatever came back.
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => panic!("the server closed a connection"),
                    Ok(got) => {
                        let mut got = got;
                        while got > 0 {
                            let part = got.min(c.to_recv);
                            c.to_recv -= part;
                            got -= part;
                            if c.to_recv == 0 {
                                msgs += 1;
                                c.to_recv = MSG;
                                c.to_send = MSG;
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            // Send the next message (or the rest of it).
            while c.to_send > 0 {
                match c.stream.write(&payload[MSG - c.to_send..]) {
                    Ok(sent) => c.to_send -= sent,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
        }
    }
}
