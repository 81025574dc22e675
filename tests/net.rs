//! Sockets and pipes in fibers: plain std::net (and a third-party blocking HTTP client) run
//! concurrently, with libc's semantics (blocking mode, timeouts, errors, close, fd reuse).
//!
//! A hook counts as working when a test shows the fiber parked: another fiber made progress
//! while it waited.

mod common;

use std::cell::Cell;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::Watchdog;

/// Counts ticks of a fiber that sleeps `every` between ticks until `stop` is set: evidence that
/// the thread kept running fibers while another one waited.
fn ticker(stop: Rc<Cell<bool>>, every: Duration) -> fibra::JoinHandle<u32> {
    fibra::spawn(move || {
        let mut ticks = 0;
        while !stop.get() {
            std::thread::sleep(every);
            ticks += 1;
        }
        ticks
    })
}

fn o_nonblock(fd: i32) -> bool {
    // SAFETY: F_GETFL on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(flags >= 0, "F_GETFL: {}", io::Error::last_os_error());
    flags & libc::O_NONBLOCK != 0
}

#[test]
fn a_thousand_echo_pairs_on_one_thread() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    const CLIENTS: usize = 1000;
    const ROUNDS: usize = 5;
    let thread = std::thread::current().id();
    let total = fibra::run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = fibra::spawn(move || {
            let mut handlers = Vec::new();
            for _ in 0..CLIENTS {
                let (mut conn, _) = listener.accept().unwrap();
                handlers.push(fibra::spawn(move || {
                    assert_eq!(std::thread::current().id(), thread);
                    let mut buf = [0u8; 64];
                    let mut echoed = 0;
                    loop {
                        let n = conn.read(&mut buf).unwrap();
                        if n == 0 {
                            return echoed;
                        }
                        conn.write_all(&buf[..n]).unwrap();
                        echoed += n;
                    }
                }));
            }
            handlers
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum::<usize>()
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                fibra::spawn(move || {
                    let mut conn = TcpStream::connect(addr).unwrap();
                    let mut reply = [0u8; 64];
                    for round in 0..ROUNDS {
                        let msg = [(i + round) as u8; 64];
                        conn.write_all(&msg).unwrap();
                        conn.read_exact(&mut reply).unwrap();
                        assert_eq!(reply, msg, "client {i} round {round} got another's bytes");
                    }
                    conn.shutdown(Shutdown::Write).unwrap();
                    assert_eq!(
                        conn.read(&mut reply).unwrap(),
                        0,
                        "EOF after the server closed"
                    );
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        server.join().unwrap()
    });
    assert_eq!(total, CLIENTS * ROUNDS * 64);
}

/// A tiny HTTP/1.1 server in fibers on its own thread: every request sleeps `delay`, then gets
/// `200 OK` with body `ok`. Returns its address.
fn start_sleep_server(delay: Duration) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        fibra::run(move || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let Ok((conn, _)) = listener.accept() else {
                    return;
                };
                fibra::spawn(move || serve_http(conn, delay));
            }
        })
    });
    rx.recv().unwrap()
}

fn serve_http(mut conn: TcpStream, delay: Duration) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Read until the end of the headers (the test client sends no body).
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.drain(..end);
        std::thread::sleep(delay);
        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if conn.write_all(reply).is_err() {
            return;
        }
    }
}

#[test]
fn ureq_makes_a_hundred_concurrent_requests_from_fibers() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    const REQUESTS: usize = 100;
    const DELAY: Duration = Duration::from_millis(200);
    let addr = start_sleep_server(DELAY);
    let url = format!("http://{addr}/");
    let start = Instant::now();
    let bodies = fibra::run(move || {
        let fibers: Vec<_> = (0..REQUESTS)
            .map(|_| {
                let url = url.clone();
                fibra::spawn(move || {
                    let mut response = ureq::get(&url).call().expect("request");
                    assert_eq!(response.status(), 200);
                    response.body_mut().read_to_string().expect("body")
                })
            })
            .collect();
        fibers
            .into_iter()
            .map(|f| f.join().unwrap())
            .collect::<Vec<_>>()
    });
    let elapsed = start.elapsed();
    assert!(bodies.iter().all(|b| b == "ok"));
    // Serially this takes 100 × 200 ms = 20 s; concurrently about one delay.
    assert!(
        elapsed < Duration::from_secs(5),
        "100 requests of 200 ms took {elapsed:?}: they did not run concurrently"
    );
}

#[test]
fn user_non_blocking_mode_is_the_users() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();

        // A stream the user makes non-blocking returns WouldBlock at once.
        server.set_nonblocking(true).unwrap();
        assert!(o_nonblock(server.as_raw_fd()));
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        // And blocking again: the read parks until the peer writes.
        server.set_nonblocking(false).unwrap();
        assert!(!o_nonblock(server.as_raw_fd()));
        let writer = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            (&client).write_all(b"hi").unwrap();
            client
        });
        assert_eq!(server.read(&mut buf).unwrap(), 2);
        let _client = writer.join().unwrap();

        // The listener, made non-blocking by fibra so fibers can wait in accept, still looks
        // blocking to the user, and becomes non-blocking only when the user says so.
        assert!(!o_nonblock(listener.as_raw_fd()));
        listener.set_nonblocking(true).unwrap();
        assert!(o_nonblock(listener.as_raw_fd()));
        assert_eq!(listener.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
        // SAFETY: F_SETFL on our own fd (the fcntl route, as C code would do it).
        let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        unsafe {
            libc::fcntl(
                listener.as_raw_fd(),
                libc::F_SETFL,
                flags & !libc::O_NONBLOCK,
            )
        };
        assert!(!o_nonblock(listener.as_raw_fd()));
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone(), Duration::from_millis(5));
        let late = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            TcpStream::connect(addr).unwrap()
        });
        let accepted = listener.accept();
        stop.set(true);
        assert!(accepted.is_ok(), "accept parked until the connection came");
        assert!(
            ticks.join().unwrap() >= 5,
            "other fibers ran while accept waited"
        );
        late.join().unwrap();
    });
}

#[test]
fn threads_still_block_on_sockets_fibers_used() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    // A listener and a stream used from fibers, then handed to an OS thread that does plain
    // blocking I/O on them: the thread must block, not see WouldBlock.
    // The clone is made before fibra switches the listener's description to non-blocking.
    let original = TcpListener::bind("127.0.0.1:0").unwrap();
    let listener = original.try_clone().unwrap();
    let (original, stream, peer) = fibra::run(move || {
        let addr = original.local_addr().unwrap();
        let connector = fibra::spawn(move || TcpStream::connect(addr).unwrap());
        let (stream, _) = original.accept().unwrap();
        let peer = connector.join().unwrap();
        (original, stream, peer)
    });
    let addr = listener.local_addr().unwrap();
    assert!(
        !o_nonblock(listener.as_raw_fd()),
        "the clone looks blocking"
    );
    assert!(!o_nonblock(original.as_raw_fd()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("a blocking accept blocks");
        let accepted_at = Instant::now();
        let mut buf = [0u8; 3];
        conn.read_exact(&mut buf).unwrap();
        let mut stream = stream;
        let mut two = [0u8; 2];
        stream.read_exact(&mut two).expect("a blocking read blocks");
        (accepted_at, buf, two)
    });
    // Connect only once the thread is (about to be) blocked in accept.
    ready_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let connect_at = Instant::now();
    let mut late = TcpStream::connect(addr).unwrap();
    late.write_all(b"abc").unwrap();
    (&peer).write_all(b"xy").unwrap();
    let (accepted_at, buf, two) = thread.join().unwrap();
    assert!(
        accepted_at >= connect_at,
        "accept returned before there was a connection"
    );
    assert_eq!(&buf, b"abc");
    assert_eq!(&two, b"xy");
}

#[test]
fn read_timeout_parks_and_other_fibers_run() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone(), Duration::from_millis(10));
        let start = Instant::now();
        let err = (&a).read(&mut [0u8; 4]).unwrap_err();
        let waited = start.elapsed();
        stop.set(true);
        assert_eq!(
            err.kind(),
            ErrorKind::WouldBlock,
            "SO_RCVTIMEO gives EAGAIN"
        );
        assert!(
            waited >= Duration::from_millis(290),
            "timed out after {waited:?}"
        );
        assert!(
            ticks.join().unwrap() >= 10,
            "other fibers ran during the wait"
        );

        // A TCP read with a timeout that data beats returns the data.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = fibra::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            c.write_all(b"data").unwrap();
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"data");
        writer.join().unwrap();
    });
}

#[test]
fn write_timeout_ends_a_blocked_write() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone(), Duration::from_millis(10));
        let big = vec![7u8; 8 << 20];
        let start = Instant::now();
        let result = (&a).write(&big);
        let waited = start.elapsed();
        stop.set(true);
        // The kernel's blocking write returns the partial count at the timeout.
        let written = result.expect("partial count");
        assert!(written > 0 && written < big.len(), "wrote {written}");
        assert!(
            waited >= Duration::from_millis(190),
            "returned after {waited:?}"
        );
        assert!(ticks.join().unwrap() >= 5);
        // Nothing more fits: now the timeout reports EAGAIN.
        let err = (&a).write(&big).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
    });
}

#[test]
fn connect_timeout_and_refused_connects() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        // A port with no listener.
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = TcpStream::connect(addr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        let err = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

        // connect_timeout to a live listener.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let live = listener.local_addr().unwrap();
        let s = TcpStream::connect_timeout(&live, Duration::from_secs(1)).unwrap();
        assert_eq!(s.peer_addr().unwrap(), live);
        // std's connect_timeout leaves the socket blocking again.
        assert!(!o_nonblock(s.as_raw_fd()));

        // A listener whose accept queue is full drops SYNs: connect_timeout times out, and
        // the thread keeps running fibers meanwhile.
        let full = backlog_zero_listener();
        let mut held = Vec::new();
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone(), Duration::from_millis(10));
        let mut timed_out = false;
        for _ in 0..8 {
            match TcpStream::connect_timeout(&full.1, Duration::from_millis(200)) {
                Ok(s) => held.push(s),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
                    timed_out = true;
                    break;
                }
            }
        }
        stop.set(true);
        assert!(timed_out, "a connect to a full accept queue timed out");
        assert!(
            ticks.join().unwrap() >= 5,
            "other fibers ran during the connect"
        );
        drop(full);
    });
}

/// A listening socket with backlog 0, never accepted from.
fn backlog_zero_listener() -> (OwnedFd, SocketAddr) {
    // SAFETY: plain socket calls on a fresh fd, results checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let owned = OwnedFd::from_raw_fd(fd);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut glen = len;
        libc::getsockname(fd, (&mut got as *mut libc::sockaddr_in).cast(), &mut glen);
        let port = u16::from_be(got.sin_port);
        (owned, SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

#[test]
fn errors_eof_and_partial_reads_are_libcs() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"abc").unwrap();
        // A read asks for more than there is: the partial count, as libc.
        let mut buf = [0u8; 100];
        let reader = fibra::spawn(move || {
            let n = server.read(&mut buf).unwrap();
            (n, buf[..n].to_vec(), server)
        });
        let (n, got, mut server) = reader.join().unwrap();
        assert_eq!((n, got.as_slice()), (3, &b"abc"[..]));
        // EOF.
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(server.read(&mut [0u8; 4]).unwrap(), 0);
        // EPIPE once the peer is gone (std sends with MSG_NOSIGNAL).
        drop(client);
        std::thread::sleep(Duration::from_millis(20));
        let mut broke = None;
        for _ in 0..10 {
            if let Err(e) = server.write_all(&[0u8; 1024]) {
                broke = Some(e.kind());
                break;
            }
        }
        assert!(
            matches!(
                broke,
                Some(ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)
            ),
            "{broke:?}"
        );
        // EBADF on a closed number, errno intact.
        // SAFETY: reading from an fd number that is not open.
        let r = unsafe { libc::read(1_000_000, buf_ptr(), 1) };
        assert_eq!(r, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EBADF));
    });
}

fn buf_ptr() -> *mut libc::c_void {
    thread_local!(static BUF: Cell<[u8; 8]> = const { Cell::new([0; 8]) });
    BUF.with(|b| b.as_ptr().cast())
}

#[test]
fn close_while_another_fiber_waits_gives_ebadf() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        for how in ["close", "dup2", "dup3"] {
            let (a, b) = UnixStream::pair().unwrap();
            let fd = a.into_raw_fd();
            let reader = fibra::spawn(move || {
                let mut byte = 0u8;
                // SAFETY: a read into a local byte.
                let r = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
                (r, io::Error::last_os_error().raw_os_error())
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(!reader.is_finished(), "the reader parked");
            if how == "close" {
                // SAFETY: closing the fd the reader waits on, which nothing else owns.
                assert_eq!(unsafe { libc::close(fd) }, 0);
            } else {
                let other = UnixStream::pair().unwrap();
                // SAFETY: replacing the fd the reader waits on.
                let r = unsafe {
                    if how == "dup2" {
                        libc::dup2(other.0.as_raw_fd(), fd)
                    } else {
                        libc::dup3(other.0.as_raw_fd(), fd, libc::O_CLOEXEC)
                    }
                };
                assert_eq!(r, fd);
                // SAFETY: the replacement is ours to close.
                unsafe { libc::close(fd) };
            }
            let (r, errno) = reader.join().unwrap();
            assert_eq!((r, errno), (-1, Some(libc::EBADF)), "after {how}");
            drop(b);
        }
    });
}

#[test]
fn reused_fd_numbers_get_fresh_registrations() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    let hits = fibra::run(|| {
        let mut hits = 0;
        for _ in 0..20 {
            let (a, b) = UnixStream::pair().unwrap();
            // Register `a` by waiting on it once.
            let reader = fibra::spawn(move || {
                let mut buf = [0u8; 1];
                (&a).read_exact(&mut buf).unwrap();
                a
            });
            std::thread::sleep(Duration::from_millis(2));
            (&b).write_all(b"1").unwrap();
            let a = reader.join().unwrap();
            let number = a.as_raw_fd();
            // Keep the description alive through a dup, and free the number.
            let keep = a.try_clone().unwrap();
            drop(a);
            // Tests running in parallel threads may take the freed number first; keep the
            // misses open so that the number, once free again, is the lowest one.
            let mut misses = Vec::new();
            let found = loop {
                let (c, d) = UnixStream::pair().unwrap();
                if c.as_raw_fd() == number {
                    break Some((c, d));
                }
                if d.as_raw_fd() == number {
                    break Some((d, c));
                }
                misses.push((c, d));
                if misses.len() == 50 {
                    break None;
                }
            };
            drop(misses);
            let Some((c, d)) = found else {
                continue;
            };
            hits += 1;
            // The old description's traffic must not reach `c`, and `c`'s must.
            let reader = fibra::spawn(move || {
                let mut buf = [0u8; 3];
                (&c).read_exact(&mut buf).unwrap();
                buf
            });
            (&b).write_all(b"old").unwrap();
            std::thread::sleep(Duration::from_millis(2));
            (&d).write_all(b"new").unwrap();
            assert_eq!(&reader.join().unwrap(), b"new");
            let mut old = [0u8; 3];
            (&keep).read_exact(&mut old).unwrap();
            assert_eq!(&old, b"old");
        }
        hits
    });
    assert!(
        hits >= 10,
        "the freed number was reused in only {hits} of 20 rounds"
    );
}

#[test]
fn pipe_reads_park() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let (mut reader, mut writer) = std::io::pipe().unwrap();
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone(), Duration::from_millis(5));
        let w = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            writer.write_all(b"through the pipe").unwrap();
        });
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        stop.set(true);
        assert_eq!(got, "through the pipe");
        assert!(
            ticks.join().unwrap() >= 5,
            "other fibers ran while the read waited"
        );
        w.join().unwrap();
        // The pipe was never switched to non-blocking behind the user's back.
        assert!(!o_nonblock(reader.as_raw_fd()));
    });
}

#[test]
fn named_fifo_reads_and_writes_park() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    let dir = std::env::temp_dir().join(format!("fibra-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let fifo = dir.clone();
    fibra::run(move || {
        // O_RDWR: opening never blocks; the FIFO is its own writer.
        let mut end = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let mut other = end.try_clone().unwrap();
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone(), Duration::from_millis(5));
        let w = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            other.write_all(b"fifo").unwrap();
            other
        });
        let mut buf = [0u8; 4];
        end.read_exact(&mut buf).unwrap();
        stop.set(true);
        assert_eq!(&buf, b"fifo");
        assert!(ticks.join().unwrap() >= 5);
        let other = w.join().unwrap();
        // fibra had to make the FIFO non-blocking (RWF_NOWAIT is refused there); the user
        // still sees it blocking, through either fd.
        assert!(!o_nonblock(end.as_raw_fd()));
        assert!(!o_nonblock(other.as_raw_fd()));
    });
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn udp_recv_parks() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = a.local_addr().unwrap();
        let from = b.local_addr().unwrap();
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone(), Duration::from_millis(5));
        let sender = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            b.send_to(b"datagram", to).unwrap();
        });
        let mut buf = [0u8; 64];
        let (n, peer) = a.recv_from(&mut buf).unwrap();
        stop.set(true);
        assert_eq!((&buf[..n], peer), (&b"datagram"[..], from));
        assert!(ticks.join().unwrap() >= 5);
        sender.join().unwrap();
    });
}

#[test]
fn poll_parks_until_ready_or_timeout() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone(), Duration::from_millis(5));
        let w = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            (&b).write_all(b"x").unwrap();
            b
        });
        let mut fds = [
            libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 5000) };
        assert_eq!(r, 1);
        assert_eq!(fds[0].revents, 0);
        assert_eq!(fds[1].revents & libc::POLLIN, libc::POLLIN);
        let _b = w.join().unwrap();
        // A timeout with nothing ready returns 0 after the timeout, parking meanwhile.
        let start = Instant::now();
        fds[1].fd = c.as_raw_fd();
        // SAFETY: as above.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 150) };
        let waited = start.elapsed();
        stop.set(true);
        assert_eq!(r, 0);
        assert!(waited >= Duration::from_millis(140), "{waited:?}");
        assert!(
            ticks.join().unwrap() >= 10,
            "other fibers ran while poll waited"
        );
        // Timeout 0 never parks: it answers at once.
        let start = Instant::now();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 2, 0) }, 0);
        assert!(start.elapsed() < Duration::from_millis(100));
    });
}

#[test]
fn stdout_writes_never_park() {
    // Run in a child whose stdout is a pipe the parent drains (Command::output), so a write to
    // fd 1 can fill it: a parked write would let the second fiber run before it returns.
    if common::is_child() {
        let order = fibra::run(|| {
            let log = Rc::new(std::cell::RefCell::new(Vec::new()));
            let l1 = log.clone();
            let big = fibra::spawn(move || {
                let data = vec![b'.'; 1 << 20];
                let mut out = io::stdout().lock();
                out.write_all(&data).unwrap();
                out.flush().unwrap();
                l1.borrow_mut().push("write done");
            });
            let l2 = log.clone();
            let other = fibra::spawn(move || l2.borrow_mut().push("other fiber ran"));
            big.join().unwrap();
            other.join().unwrap();
            log.take()
        });
        eprintln!("ORDER {order:?}");
        return;
    }
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let out = common::run_child("stdout_writes_never_park");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stderr}");
    assert!(out.stdout.len() >= 1 << 20, "the child wrote its megabyte");
    assert!(
        stderr.contains(r#"ORDER ["write done", "other fiber ran"]"#),
        "the stdout write parked: {stderr}"
    );
}

#[test]
fn eof_after_a_short_read_is_seen() {
    // A short read empties the queue; EOF (or our own shutdown) must still end the next read,
    // though it arrives without a new readiness edge when it came with the data.
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = fibra::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            s.write_all(b"abc").unwrap();
            // Dropped here: data and FIN arrive together.
        });
        let (mut conn, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        conn.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abc");
        writer.join().unwrap();

        let (a, b) = UnixStream::pair().unwrap();
        let w = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            (&b).write_all(b"xy").unwrap();
            b
        });
        let mut buf = [0u8; 16];
        assert_eq!((&a).read(&mut buf).unwrap(), 2, "a short read");
        let _b = w.join().unwrap();
        a.shutdown(Shutdown::Read).unwrap();
        assert_eq!(
            (&a).read(&mut buf).unwrap(),
            0,
            "EOF after our own shutdown"
        );
    });
}

#[test]
fn a_forked_child_closing_a_socket_leaves_the_parents_registration() {
    // The child shares the parent's epoll instance; its close must not deregister the fd there.
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        for round in 0..2 {
            let client = fibra::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                TcpStream::connect(addr).unwrap()
            });
            // Round 0 registers the listener (accept parks); round 1 needs that registration.
            listener.accept().unwrap();
            client.join().unwrap();
            if round == 0 {
                // SAFETY: the child only closes an fd and exits.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: as above; _exit skips the parent's atexit handlers.
                    unsafe {
                        libc::close(listener.as_raw_fd());
                        libc::_exit(0);
                    }
                }
                assert!(pid > 0);
                let mut status = 0;
                // SAFETY: reaping our own child.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            }
        }
    });
}

#[test]
fn errno_is_left_alone_by_a_call_that_parked_and_succeeded() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let w = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            (&b).write_all(b"z").unwrap();
            b
        });
        // SAFETY: writing this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOENT };
        let mut byte = 0u8;
        // SAFETY: a read into a local byte.
        let r = unsafe { libc::read(a.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        assert_eq!(r, 1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOENT)
        );
        w.join().unwrap();
    });
}

#[test]
fn select_parks_until_ready_or_timeout() {
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let (idle, _keep) = UnixStream::pair().unwrap();
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone(), Duration::from_millis(5));
        let w = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            (&b).write_all(b"x").unwrap();
            b
        });
        let nfds = a.as_raw_fd().max(idle.as_raw_fd()) + 1;
        // SAFETY: fd_sets built with libc's macros, fds below FD_SETSIZE.
        unsafe {
            let mut read: libc::fd_set = std::mem::zeroed();
            libc::FD_ZERO(&mut read);
            libc::FD_SET(a.as_raw_fd(), &mut read);
            libc::FD_SET(idle.as_raw_fd(), &mut read);
            let mut tv = libc::timeval {
                tv_sec: 5,
                tv_usec: 0,
            };
            let r = libc::select(
                nfds,
                &mut read,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut tv,
            );
            assert_eq!(r, 1);
            assert!(libc::FD_ISSET(a.as_raw_fd(), &read));
            assert!(!libc::FD_ISSET(idle.as_raw_fd(), &read));
            assert!(tv.tv_sec < 5, "Linux leaves the time not slept");

            // Nothing ready: 0 after the timeout, the other fibers running meanwhile.
            libc::FD_ZERO(&mut read);
            libc::FD_SET(idle.as_raw_fd(), &mut read);
            let mut tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 150_000,
            };
            let start = Instant::now();
            let r = libc::select(
                nfds,
                &mut read,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut tv,
            );
            assert_eq!(r, 0);
            assert!(start.elapsed() >= Duration::from_millis(140));
            assert!(!libc::FD_ISSET(idle.as_raw_fd(), &read));
            assert_eq!((tv.tv_sec, tv.tv_usec), (0, 0));
        }
        stop.set(true);
        assert!(
            ticks.join().unwrap() >= 10,
            "other fibers ran while select waited"
        );
        w.join().unwrap();
    });
}

#[test]
fn tty_reads_never_park() {
    // A pty's slave end is a tty: a read there blocks the thread, as libc's, instead of parking
    // (the second fiber only runs once the read has returned).
    let _watchdog = Watchdog::new(Duration::from_secs(30));
    // SAFETY: the pty calls on fds we own; results checked.
    let (master, slave) = unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt: {}", io::Error::last_os_error());
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(slave >= 0);
        (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
    };
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let mut m = std::fs::File::from(master);
        m.write_all(b"line\n").unwrap();
        m
    });
    let order = fibra::run(move || {
        let log = Rc::new(std::cell::RefCell::new(Vec::new()));
        let l1 = log.clone();
        let reader = fibra::spawn(move || {
            let mut buf = [0u8; 16];
            let n = std::fs::File::from(slave).read(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"line\n");
            l1.borrow_mut().push("tty read done");
        });
        let l2 = log.clone();
        let other = fibra::spawn(move || l2.borrow_mut().push("other fiber ran"));
        reader.join().unwrap();
        other.join().unwrap();
        log.take()
    });
    let _master = writer.join().unwrap();
    assert_eq!(order, ["tty read done", "other fiber ran"]);
}
