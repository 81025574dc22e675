//! Edge cases of the interposed calls, each compared with libc's own behaviour outside fibers:
//! short reads that do not prove a queue empty (packet pipes, fds passed over Unix sockets, TCP
//! urgent data), failed dup2/dup3, non-blocking mode set on an unlearned dup, futex requeue
//! counts, errno after a successful connect, fd numbers reused after a close fibra never saw.

use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on a fresh thread; fails if it does not finish in `secs`.
fn with_timeout<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("timed out after {secs}s"),
    }
}

fn packet_pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_DIRECT) }, 0);
    (fds[0], fds[1])
}

/// Two packets queued in an O_DIRECT pipe; a read returns one packet (short), and the second
/// read must return the second packet.
fn packet_scenario() -> Vec<isize> {
    let (r, w) = packet_pipe();
    let mut out = vec![];
    // first read parks (registers the fd) until a writer wrote two packets
    let writer = fibra::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        unsafe { libc::write(w, b"x".as_ptr().cast(), 1) };
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        unsafe {
            libc::write(w, b"aaa".as_ptr().cast(), 3);
            libc::write(w, b"bbb".as_ptr().cast(), 3);
        }
    });
    let mut buf = [0u8; 100];
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    out.push(unsafe { libc::read(r, buf.as_mut_ptr().cast(), 100) });
    std::thread::sleep(Duration::from_millis(60));
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    out.push(unsafe { libc::read(r, buf.as_mut_ptr().cast(), 100) });
    writer.join().unwrap();
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    out.push(unsafe { libc::read(r, buf.as_mut_ptr().cast(), 100) });
    out
}

#[test]
fn o_direct_pipe_second_packet() {
    let got = with_timeout(5, || {
        fibra::run(|| fibra::spawn(packet_scenario).join().unwrap())
    });
    assert_eq!(got, vec![1, 3, 3]);
}

fn send_with_fd(sock: i32, data: &[u8], fd: i32) -> isize {
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let space = libc::CMSG_SPACE(4) as usize;
        let mut cbuf = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as _;
        *(libc::CMSG_DATA(c) as *mut i32) = fd;
        libc::sendmsg(sock, &msg, 0)
    }
}

/// A unix stream socket: "aaa" with an fd attached, then "bbb". The kernel stops a read after
/// an skb carrying fds, so the first read is short though "bbb" is queued.
fn scm_scenario(first_parks: bool) -> Vec<isize> {
    let mut sv = [0; 2];
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    assert_eq!(
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) },
        0
    );
    let (r, w) = (sv[0], sv[1]);
    let writer = move || {
        assert_eq!(send_with_fd(w, b"aaa", 0), 3);
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        assert_eq!(unsafe { libc::write(w, b"bbb".as_ptr().cast(), 3) }, 3);
    };
    let mut out = vec![];
    let mut buf = [0u8; 100];
    if first_parks {
        // a first read that parks, so the fd is registered with the scheduler
        let h = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: libc calls on fds, buffers and structs this test owns.
            unsafe { libc::write(w, b"x".as_ptr().cast(), 1) };
            std::thread::sleep(Duration::from_millis(20));
            writer()
        });
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        out.push(unsafe { libc::read(r, buf.as_mut_ptr().cast(), 100) });
        std::thread::sleep(Duration::from_millis(60));
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        out.push(unsafe { libc::read(r, buf.as_mut_ptr().cast(), 100) });
        h.join().unwrap();
    } else {
        writer();
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        out.push(unsafe { libc::read(r, buf.as_mut_ptr().cast(), 100) });
    }
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    out.push(unsafe { libc::read(r, buf.as_mut_ptr().cast(), 100) });
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    unsafe {
        libc::close(r);
        libc::close(w);
    }
    out
}

#[test]
fn scm_rights_short_read_outside() {
    assert_eq!(scm_scenario(false), vec![3, 3]);
}

#[test]
fn scm_rights_short_read_in_fiber() {
    let got = with_timeout(5, || {
        fibra::run(|| fibra::spawn(|| scm_scenario(true)).join().unwrap())
    });
    assert_eq!(got, vec![1, 3, 3]);
}

// ---------------------------------------------------------------------------------------------
// dup2 that fails (invalid old fd) must leave `new` and its waiters alone.

fn failed_dup2_scenario() -> (i32, i32, isize) {
    let mut sv = [0; 2];
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    assert_eq!(
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) },
        0
    );
    let (r, w) = (sv[0], sv[1]);
    let other = fibra::spawn(move || {
        std::thread::sleep(Duration::from_millis(20)); // the reader is parked by now
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        let d = unsafe { libc::dup2(1_000_000 - 7, r) }; // bad old fd: EBADF, `r` untouched
        let e = std::io::Error::last_os_error().raw_os_error().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        unsafe { libc::write(w, b"hello".as_ptr().cast(), 5) };
        (d, e)
    });
    let mut buf = [0u8; 16];
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), 16) };
    let (d, e) = other.join().unwrap();
    (d, e, n)
}

#[test]
fn failed_dup2_in_fiber() {
    let got = with_timeout(5, || {
        fibra::run(|| fibra::spawn(failed_dup2_scenario).join().unwrap())
    });
    // libc: dup2 fails with EBADF and the blocked read gets its 5 bytes
    assert_eq!(got, (-1, libc::EBADF, 5));
}

// ---------------------------------------------------------------------------------------------
// FIONBIO(0) through a dup the table never learned clears fibra's O_NONBLOCK on a listener.

#[test]
fn fionbio_on_unlearned_dup_of_listener() {
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    let got = with_timeout(5, || {
        fibra::run(|| {
            fibra::spawn(|| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                // a dup made by a raw system call: the table knows nothing of it
                // SAFETY: libc calls on fds, buffers and structs this test owns.
                let l2 = unsafe { libc::fcntl(l.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
                // SAFETY: libc calls on fds, buffers and structs this test owns.
                let raw2 = unsafe { libc::syscall(libc::SYS_dup, l.as_raw_fd()) } as i32;
                let _ = l2;
                // a fiber accept makes the listener fibra's non-blocking one
                let l = std::rc::Rc::new(l);
                let l1 = l.clone();
                let acc = fibra::spawn(move || l1.accept().map(|_| ()).is_ok());
                std::thread::sleep(Duration::from_millis(20));
                let _c = std::net::TcpStream::connect(addr).unwrap();
                assert!(acc.join().unwrap());
                // the user makes the raw dup blocking (it already is, in the user's view)
                let mut off: libc::c_int = 0;
                // SAFETY: libc calls on fds, buffers and structs this test owns.
                assert_eq!(unsafe { libc::ioctl(raw2, libc::FIONBIO, &mut off) }, 0);
                // a ticker must keep running while another fiber waits in accept
                let ticks = fibra::spawn(|| {
                    let mut n = 0;
                    for _ in 0..5 {
                        std::thread::sleep(Duration::from_millis(10));
                        n += 1;
                    }
                    n
                });
                // accept on the original listener, which fibra believes non-blocking
                let waiter = fibra::spawn(move || {
                    let _ = l.accept();
                });
                let n = ticks.join().unwrap();
                // unblock the accept
                let _c2 = std::net::TcpStream::connect(addr).unwrap();
                waiter.join().unwrap();
                n
            })
            .join()
            .unwrap()
        })
    });
    assert_eq!(got, 5);
}

// ---------------------------------------------------------------------------------------------
// futex REQUEUE outside fibers: nr_wake = 0 wakes nobody (kernel), a negative nr_wake is EINVAL.

#[test]
fn futex_requeue_outside_fibers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    fibra::run(|| ()); // link the shim in
    let word = Arc::new(AtomicU32::new(0));
    let word2 = Box::leak(Box::new(AtomicU32::new(0)));
    let w = word.clone();
    let t = std::thread::spawn(move || {
        let ts = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                w.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0,
                &ts,
            )
        };
        (r, std::io::Error::last_os_error().raw_os_error().unwrap())
    });
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    let neg = unsafe {
        real_syscall()(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_REQUEUE | libc::FUTEX_PRIVATE_FLAG,
            -1i32 as libc::c_long,
            0 as libc::c_long,
            word2.as_ptr(),
            0,
        )
    };
    let neg_errno = std::io::Error::last_os_error().raw_os_error().unwrap();
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    let shim_neg = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_REQUEUE | libc::FUTEX_PRIVATE_FLAG,
            -1i32 as libc::c_long,
            0 as libc::c_long,
            word2.as_ptr(),
            0,
        )
    };
    let shim_neg_errno = std::io::Error::last_os_error().raw_os_error().unwrap();
    assert_eq!(
        (neg, neg_errno),
        (-1, libc::EINVAL),
        "libc: negative nr_wake"
    );
    assert_eq!(
        (shim_neg, shim_neg_errno),
        (-1, libc::EINVAL),
        "shim: negative nr_wake"
    );
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    let zero = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_REQUEUE | libc::FUTEX_PRIVATE_FLAG,
            0 as libc::c_long,
            0 as libc::c_long,
            word2.as_ptr(),
            0,
        )
    };
    let waited = t.join().unwrap();
    word.store(0, Ordering::Relaxed);
    // kernel: EINVAL for nr_wake < 0; nr_wake = 0 wakes nobody, so the waiter times out
    assert_eq!((neg, neg_errno), (-1, libc::EINVAL), "negative nr_wake");
    assert_eq!(zero, 0, "nr_wake = 0 woke someone");
    assert_eq!(waited, (-1, libc::ETIMEDOUT));
}

// ---------------------------------------------------------------------------------------------
// errno after a successful blocking connect in a fiber

#[test]
fn connect_success_keeps_errno() {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let port = addr.port();
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    let attempt = move || unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as _;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        *libc::__errno_location() = 12345;
        let r = libc::connect(
            s,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as _,
        );
        let e = *libc::__errno_location();
        libc::close(s);
        (r, e)
    };
    let outside = attempt();
    let inside = fibra::run(move || fibra::spawn(attempt).join()).unwrap();
    let _ = l.as_raw_fd();
    assert_eq!(outside, (0, 12345));
    assert_eq!(inside, outside);
}

type SyscallFn = unsafe extern "C" fn(libc::c_long, ...) -> libc::c_long;
fn real_syscall() -> SyscallFn {
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    unsafe { std::mem::transmute(libc::dlsym(libc::RTLD_NEXT, c"syscall".as_ptr())) }
}

#[test]
fn futex_requeue_zero_wake_outside_fibers() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;
    fibra::run(|| ());
    let run = |use_shim: bool| {
        let word = Arc::new(AtomicU32::new(0));
        let word2 = Box::leak(Box::new(AtomicU32::new(0)));
        let w = word.clone();
        let t = std::thread::spawn(move || {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 300_000_000,
            };
            // SAFETY: libc calls on fds, buffers and structs this test owns.
            unsafe {
                real_syscall()(
                    libc::SYS_futex,
                    w.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    0,
                    &ts,
                )
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        let args = (
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_REQUEUE | libc::FUTEX_PRIVATE_FLAG,
            0 as libc::c_long,
            0 as libc::c_long,
            word2.as_ptr(),
            0,
        );
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        let r = unsafe {
            if use_shim {
                libc::syscall(args.0, args.1, args.2, args.3, args.4, args.5, args.6)
            } else {
                real_syscall()(args.0, args.1, args.2, args.3, args.4, args.5, args.6)
            }
        };
        (r, t.join().unwrap())
    };
    let libc_result = run(false);
    let shim_result = run(true);
    assert_eq!(libc_result, (0, -1), "libc: nobody woken, waiter timed out");
    assert_eq!(shim_result, libc_result);
}

// ---------------------------------------------------------------------------------------------
// An fd closed by glibc itself (fclose of an fdopen'd socket) leaves a stale "registered" entry:
// the reused number is never registered again and a read on it never wakes.

fn pair() -> (i32, i32) {
    let mut sv = [0; 2];
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    assert_eq!(
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) },
        0
    );
    (sv[0], sv[1])
}

fn read_after_delay(r: i32, w: i32) -> isize {
    let h = fibra::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        unsafe { libc::write(w, b"hi".as_ptr().cast(), 2) }
    });
    let mut buf = [0u8; 8];
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), 8) };
    h.join().unwrap();
    n
}

#[test]
fn fclose_then_reuse_in_fiber() {
    let got = with_timeout(5, || {
        fibra::run(|| {
            fibra::spawn(|| {
                let (a, b) = pair();
                assert_eq!(read_after_delay(a, b), 2); // `a` is now registered
                // SAFETY: libc calls on fds, buffers and structs this test owns.
                let f = unsafe { libc::fdopen(a, c"r+".as_ptr()) };
                assert!(!f.is_null());
                // SAFETY: libc calls on fds, buffers and structs this test owns.
                unsafe { libc::fclose(f) }; // glibc's internal close: not interposed
                // SAFETY: libc calls on fds, buffers and structs this test owns.
                unsafe { libc::close(b) };
                // a new socket that gets the freed number
                let mut keep = vec![];
                let (c, d) = loop {
                    let (c, d) = pair();
                    if c == a {
                        break (c, d);
                    }
                    if d == a {
                        break (d, c);
                    }
                    keep.push((c, d));
                    assert!(keep.len() < 100, "number never reused");
                };
                read_after_delay(c, d)
            })
            .join()
            .unwrap()
        })
    });
    assert_eq!(got, 2);
}

// std only: a try_clone made before the listener became fibra's, then set_nonblocking(false).
#[test]
fn set_nonblocking_false_on_try_clone() {
    use std::net::TcpListener;
    let got = with_timeout(5, || {
        fibra::run(|| {
            fibra::spawn(|| {
                let l = std::rc::Rc::new(TcpListener::bind("127.0.0.1:0").unwrap());
                let addr = l.local_addr().unwrap();
                let clone = l.try_clone().unwrap();
                let l1 = l.clone();
                let acc = fibra::spawn(move || l1.accept().is_ok());
                std::thread::sleep(Duration::from_millis(20));
                let _c = std::net::TcpStream::connect(addr).unwrap();
                assert!(acc.join().unwrap());
                clone.set_nonblocking(false).unwrap(); // it is blocking in the user's view anyway
                let ticks = fibra::spawn(|| {
                    for _ in 0..5 {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    5
                });
                let waiter = fibra::spawn(move || {
                    let _ = l.accept();
                });
                let n = ticks.join().unwrap();
                let _c2 = std::net::TcpStream::connect(addr).unwrap();
                waiter.join().unwrap();
                n
            })
            .join()
            .unwrap()
        })
    });
    assert_eq!(got, 5);
}

// TCP urgent data: a read stops at the urgent mark, so a short read does not mean "drained".
fn oob_scenario(in_fiber: bool) -> Vec<isize> {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let w = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (r, _) = l.accept().unwrap();
    let (rf, wf) = (r.as_raw_fd(), w.as_raw_fd());
    let mut out = vec![];
    let mut buf = [0u8; 100];
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    let writer = move || unsafe {
        libc::send(wf, b"aaa".as_ptr().cast(), 3, 0);
        libc::send(wf, b"b".as_ptr().cast(), 1, libc::MSG_OOB);
        libc::send(wf, b"ccc".as_ptr().cast(), 3, 0);
    };
    if in_fiber {
        let h = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: libc calls on fds, buffers and structs this test owns.
            unsafe { libc::send(wf, b"x".as_ptr().cast(), 1, 0) };
            std::thread::sleep(Duration::from_millis(20));
            writer();
        });
        // SAFETY: libc calls on fds, buffers and structs this test owns.
        out.push(unsafe { libc::read(rf, buf.as_mut_ptr().cast(), 100) });
        std::thread::sleep(Duration::from_millis(60));
        h.join().unwrap();
    } else {
        writer();
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    out.push(unsafe { libc::read(rf, buf.as_mut_ptr().cast(), 100) });
    // SAFETY: libc calls on fds, buffers and structs this test owns.
    out.push(unsafe { libc::read(rf, buf.as_mut_ptr().cast(), 100) });
    drop((r, w));
    out
}

#[test]
fn tcp_oob_outside() {
    assert_eq!(oob_scenario(false), vec![3, 3]);
}

#[test]
fn tcp_oob_in_fiber() {
    let got = with_timeout(5, || {
        fibra::run(|| fibra::spawn(|| oob_scenario(true)).join().unwrap())
    });
    assert_eq!(got, vec![1, 3, 3]);
}
