//! Timeouts and cancellation: only blocking points are interrupted, nothing unwinds, and every
//! resource stays usable afterwards.

mod common;

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::Watchdog;

#[test]
fn a_one_second_timeout_around_a_ten_second_sleep() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let start = Instant::now();
        let r = fibra::timeout(Duration::from_secs(1), || {
            std::thread::sleep(Duration::from_secs(10))
        });
        let elapsed = start.elapsed();
        assert_eq!(r, Err(fibra::Elapsed::default()));
        assert_eq!(r.unwrap_err().to_string(), "deadline has elapsed");
        assert!(
            elapsed >= Duration::from_secs(1),
            "ended before the deadline: {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        // The fiber goes on: sleeps after the scope are whole again.
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        assert!(t.elapsed() >= Duration::from_millis(50));
    });
}

#[test]
fn a_scope_that_finishes_in_time_returns_its_value() {
    fibra::run(|| {
        let r = fibra::timeout(Duration::from_secs(5), || {
            std::thread::sleep(Duration::from_millis(10));
            42
        });
        assert_eq!(r, Ok(42));
    });
}

#[test]
fn a_read_on_a_silent_socket_times_out_and_the_socket_still_works() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = fibra::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // Silent for 300 ms, then talks.
            std::thread::sleep(Duration::from_millis(300));
            conn.write_all(b"late hello").unwrap();
            conn
        });
        let mut client = TcpStream::connect(addr).unwrap();
        let mut buf = [0u8; 32];
        let start = Instant::now();
        let r = fibra::timeout(Duration::from_millis(100), || client.read(&mut buf));
        let inner = r.expect_err("the deadline passed");
        let _ = inner;
        assert!(
            start.elapsed() < Duration::from_millis(290),
            "interrupted at the deadline"
        );
        // What the closure saw: repeat it to inspect the error itself.
        let seen = fibra::timeout(Duration::from_millis(50), || {
            client.read(&mut buf).map_err(|e| e.kind())
        });
        assert_eq!(seen, Err(fibra::Elapsed::default()));
        let kind = {
            let mut kind = None;
            let _ = fibra::timeout(Duration::from_millis(20), || {
                kind = client.read(&mut buf).err().map(|e| e.kind())
            });
            kind
        };
        assert_eq!(kind, Some(ErrorKind::TimedOut));
        // No byte was lost: the same socket now reads the late message normally.
        let n = client.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"late hello");
        drop(peer.join().unwrap());
    });
}

#[test]
fn nested_scopes_report_their_own_expiry() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        // The outer deadline interrupts inside the inner scope; the inner one did not expire.
        let start = Instant::now();
        let mut inner_result = None;
        let outer = fibra::timeout(Duration::from_millis(100), || {
            inner_result = Some(fibra::timeout(Duration::from_secs(10), || {
                std::thread::sleep(Duration::from_secs(5));
                "inner done"
            }));
        });
        assert!(start.elapsed() < Duration::from_secs(3));
        assert_eq!(outer, Err(fibra::Elapsed::default()));
        assert_eq!(
            inner_result,
            Some(Ok("inner done")),
            "an inner scope never extends an outer deadline"
        );

        // An inner scope expiring leaves the outer one running.
        let outer = fibra::timeout(Duration::from_secs(10), || {
            let inner = fibra::timeout(Duration::from_millis(50), || {
                std::thread::sleep(Duration::from_secs(5))
            });
            assert!(inner.is_err());
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(30));
            assert!(
                t.elapsed() >= Duration::from_millis(30),
                "the outer scope still allows sleeping"
            );
            "outer done"
        });
        assert_eq!(outer, Ok("outer done"));
    });
}

#[test]
fn a_thousand_fibers_with_their_own_deadlines() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let start = Instant::now();
    let results = fibra::run(|| {
        let handles: Vec<_> = (0..1000)
            .map(|i| {
                fibra::spawn(move || {
                    let limit = if i % 2 == 0 {
                        Duration::from_millis(50)
                    } else {
                        Duration::from_millis(2000)
                    };
                    fibra::timeout(limit, || std::thread::sleep(Duration::from_millis(300))).is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (i, ok) in results.iter().enumerate() {
        assert_eq!(*ok, i % 2 == 1, "fiber {i}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn poll_and_process_waits_fail_with_etimedout() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut seen = None;
        let r = fibra::timeout(Duration::from_millis(50), || {
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&a),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
            seen = Some((n, std::io::Error::last_os_error().raw_os_error()));
        });
        assert!(r.is_err());
        assert_eq!(seen, Some((-1, Some(libc::ETIMEDOUT))));

        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut waited = None;
        let r = fibra::timeout(Duration::from_millis(100), || {
            waited = Some(child.wait().map_err(|e| e.kind()))
        });
        assert!(r.is_err());
        assert_eq!(waited, Some(Err(ErrorKind::TimedOut)));
        assert!(start.elapsed() < Duration::from_secs(5));
        // The child is still ours and still waitable.
        child.kill().unwrap();
        assert!(!child.wait().unwrap().success());
    });
}

#[test]
fn lock_waits_are_not_interrupted() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let lock = Rc::new(std::sync::Mutex::new(0));
        let holder = {
            let lock = lock.clone();
            fibra::spawn(move || {
                let mut guard = lock.lock().unwrap();
                std::thread::sleep(Duration::from_millis(200));
                *guard += 1;
            })
        };
        fibra::yield_now();
        let start = Instant::now();
        let r = fibra::timeout(Duration::from_millis(20), || *lock.lock().unwrap());
        // The lock was acquired (after the holder released it), not cut short: the scope still
        // reports that its deadline passed.
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert_eq!(r, Err(fibra::Elapsed::default()));
        holder.join().unwrap();
        assert_eq!(*lock.lock().unwrap(), 1);
    });
}

#[test]
fn cancelling_a_fiber_blocked_in_accept() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dropped = Rc::new(Cell::new(false));
        let d = dropped.clone();
        let server = fibra::spawn(move || {
            struct Flag(Rc<Cell<bool>>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.set(true);
                }
            }
            let _flag = Flag(d);
            let err = listener.accept().expect_err("cancelled while waiting");
            assert_eq!(err.raw_os_error(), Some(libc::ECANCELED));
            assert!(fibra::is_cancelled());
            // Every later interruptible call fails at once too.
            let t = Instant::now();
            std::thread::sleep(Duration::from_secs(5));
            assert!(t.elapsed() < Duration::from_secs(1));
            listener // the listener survives, usable by whoever gets it
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!server.is_finished());
        server.cancel();
        let err = server
            .join()
            .expect_err("a cancelled fiber reports Cancelled");
        assert!(err.downcast_ref::<fibra::Cancelled>().is_some());
        assert!(dropped.get(), "destructors ran normally");
        // The address is still bound by nothing: a new listener and a connection work.
        let listener = TcpListener::bind(addr).unwrap();
        let c = fibra::spawn(move || TcpStream::connect(addr).is_ok());
        listener.accept().unwrap();
        assert!(c.join().unwrap());
    });
}

#[test]
fn cancelling_a_sleeping_fiber_and_a_finished_one() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let start = Instant::now();
        let sleeper = fibra::spawn(|| std::thread::sleep(Duration::from_secs(10)));
        fibra::yield_now();
        sleeper.cancel();
        assert!(sleeper.join().unwrap_err().is::<fibra::Cancelled>());
        assert!(start.elapsed() < Duration::from_secs(5));

        let quick = fibra::spawn(|| 7);
        fibra::yield_now();
        assert!(quick.is_finished());
        quick.cancel();
        assert_eq!(
            quick.join().unwrap(),
            7,
            "cancelling a finished fiber does nothing"
        );

        // Cancelled before it ever ran: its first blocking call fails.
        let early = fibra::spawn(|| {
            let t = Instant::now();
            fibra::sleep(Duration::from_secs(10));
            t.elapsed()
        });
        early.cancel();
        assert!(early.join().unwrap_err().is::<fibra::Cancelled>());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    });
}

#[test]
fn timeout_outside_a_fiber_panics_with_a_message() {
    let err =
        std::panic::catch_unwind(|| fibra::timeout(Duration::from_secs(1), || ())).unwrap_err();
    let msg = common::panic_message(&*err);
    assert!(
        msg.contains("fibra::timeout called outside a fiber"),
        "{msg}"
    );
}
