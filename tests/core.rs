//! The foundation: spawn/join, yields, sleeps through every interposed sleep symbol, stacks,
//! overflow reporting, misuse panics, deadlock reports, scale.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::Watchdog;

#[test]
fn spawn_and_join_return_values() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let total = fibra::run(|| {
        let handles: Vec<_> = (0..100u64).map(|i| fibra::spawn(move || i * i)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    assert_eq!(total, (0..100u64).map(|i| i * i).sum());
}

#[test]
fn run_returns_the_root_value_and_borrows_from_the_caller() {
    let words = ["a".to_string(), "b".to_string()];
    let joined = fibra::run(|| words.join("+"));
    assert_eq!(joined, "a+b");
}

#[test]
fn a_panic_in_a_fiber_arrives_at_join_with_its_payload() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let h = fibra::spawn(|| -> u32 { std::panic::panic_any(String::from("boom 7")) });
        let err = h.join().expect_err("the fiber panicked");
        assert_eq!(
            err.downcast_ref::<String>().map(String::as_str),
            Some("boom 7")
        );
        // The scheduler survived: more fibers still run.
        assert_eq!(fibra::spawn(|| 5).join().unwrap(), 5);
    });
}

#[test]
fn an_unjoined_panic_does_not_stop_the_others() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let done = Rc::new(Cell::new(0));
    let d = done.clone();
    fibra::run(move || {
        drop(fibra::spawn(|| panic!("detached fiber panics")));
        for _ in 0..10 {
            let d = d.clone();
            fibra::spawn(move || {
                fibra::yield_now();
                d.set(d.get() + 1);
            });
        }
    });
    assert_eq!(done.get(), 10);
}

#[test]
fn a_root_panic_propagates_from_run_after_the_others_finish() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let finished = Rc::new(Cell::new(false));
    let f = finished.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fibra::run(move || {
            fibra::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                f.set(true);
            });
            panic!("root fails");
        })
    }));
    let payload = result.expect_err("run propagates the root panic");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"root fails"));
    assert!(finished.get(), "the other fiber ran to completion first");
}

#[test]
fn yield_now_interleaves_fibers_in_order() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    fibra::run(move || {
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let l = l.clone();
                fibra::spawn(move || {
                    for i in 0..3 {
                        l.borrow_mut().push(format!("{name}{i}"));
                        fibra::yield_now();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    assert_eq!(*log.borrow(), ["a0", "b0", "a1", "b1", "a2", "b2"]);
}

#[test]
fn run_waits_for_fibers_nobody_joined() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    fibra::run(move || {
        for i in 0..50 {
            let c = c.clone();
            fibra::spawn(move || {
                std::thread::sleep(Duration::from_millis(5 + i % 7));
                // A grandchild, also unjoined.
                fibra::spawn(move || c.set(c.get() + 1));
            });
        }
    });
    assert_eq!(count.get(), 50);
}

#[test]
fn ten_thousand_fibers_sleep_concurrently() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let start = Instant::now();
    let woke = fibra::run(|| {
        let handles: Vec<_> = (0..10_000)
            .map(|_| {
                fibra::spawn(|| {
                    let t = Instant::now();
                    std::thread::sleep(Duration::from_millis(100));
                    t.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let elapsed = start.elapsed();
    assert!(
        woke.iter().all(|d| *d >= Duration::from_millis(100)),
        "no sleep ends early"
    );
    // Sequentially this would take 1000 s; one thread per sleep is what fibra avoids.
    assert!(
        elapsed < Duration::from_secs(2),
        "10,000 concurrent 100 ms sleeps took {elapsed:?}"
    );
}

/// A sleep parks only its fiber: a busy fiber keeps making progress meanwhile.
fn progress_during(sleep: impl FnOnce() + 'static) -> u64 {
    fibra::run(move || {
        let done = Rc::new(Cell::new(false));
        let d = done.clone();
        let sleeper = fibra::spawn(move || {
            sleep();
            d.set(true);
        });
        let counter = fibra::spawn(move || {
            let mut n = 0u64;
            while !done.get() {
                n += 1;
                fibra::yield_now();
            }
            n
        });
        sleeper.join().unwrap();
        counter.join().unwrap()
    })
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

fn clock_now(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn every_sleep_symbol_parks_only_the_fiber() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let d = Duration::from_millis(30);
    type Case = (&'static str, Box<dyn FnOnce()>);
    let cases: Vec<Case> = vec![
        (
            "std::thread::sleep",
            Box::new(move || std::thread::sleep(d)),
        ),
        ("fibra::sleep", Box::new(move || fibra::sleep(d))),
        (
            "nanosleep",
            Box::new(move || {
                // SAFETY: valid timespec pointers.
                assert_eq!(
                    unsafe { libc::nanosleep(&timespec(d), std::ptr::null_mut()) },
                    0
                );
            }),
        ),
        (
            "clock_nanosleep relative monotonic",
            Box::new(move || {
                // SAFETY: valid timespec pointers.
                let r = unsafe {
                    libc::clock_nanosleep(
                        libc::CLOCK_MONOTONIC,
                        0,
                        &timespec(d),
                        std::ptr::null_mut(),
                    )
                };
                assert_eq!(r, 0);
            }),
        ),
        (
            "clock_nanosleep absolute monotonic",
            Box::new(move || {
                let at = timespec(clock_now(libc::CLOCK_MONOTONIC) + d);
                // SAFETY: valid timespec pointers.
                let r = unsafe {
                    libc::clock_nanosleep(
                        libc::CLOCK_MONOTONIC,
                        libc::TIMER_ABSTIME,
                        &at,
                        std::ptr::null_mut(),
                    )
                };
                assert_eq!(r, 0);
            }),
        ),
        (
            "clock_nanosleep absolute realtime",
            Box::new(move || {
                let at = timespec(clock_now(libc::CLOCK_REALTIME) + d);
                // SAFETY: valid timespec pointers.
                let r = unsafe {
                    libc::clock_nanosleep(
                        libc::CLOCK_REALTIME,
                        libc::TIMER_ABSTIME,
                        &at,
                        std::ptr::null_mut(),
                    )
                };
                assert_eq!(r, 0);
                assert!(
                    clock_now(libc::CLOCK_REALTIME)
                        >= Duration::new(at.tv_sec as u64, at.tv_nsec as u32)
                );
            }),
        ),
        (
            "clock_nanosleep absolute boottime",
            Box::new(move || {
                let at = timespec(clock_now(libc::CLOCK_BOOTTIME) + d);
                // SAFETY: valid timespec pointers.
                let r = unsafe {
                    libc::clock_nanosleep(
                        libc::CLOCK_BOOTTIME,
                        libc::TIMER_ABSTIME,
                        &at,
                        std::ptr::null_mut(),
                    )
                };
                assert_eq!(r, 0);
            }),
        ),
        (
            "usleep",
            Box::new(move || {
                // SAFETY: no preconditions.
                assert_eq!(unsafe { libc::usleep(30_000) }, 0);
            }),
        ),
        (
            "sleep",
            Box::new(move || {
                // SAFETY: no preconditions.
                assert_eq!(unsafe { libc::sleep(1) }, 0);
            }),
        ),
    ];
    for (name, sleep) in cases {
        let start = Instant::now();
        let progress = progress_during(sleep);
        let elapsed = start.elapsed();
        assert!(progress > 0, "{name}: no other fiber ran while it slept");
        assert!(
            elapsed >= Duration::from_millis(29),
            "{name} returned early: {elapsed:?}"
        );
    }
}

#[test]
fn sleeps_are_exact_below_a_millisecond() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let shortest = fibra::run(|| {
        let mut times = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            std::thread::sleep(Duration::from_micros(100));
            times.push(t.elapsed());
        }
        times.sort();
        assert!(times[0] >= Duration::from_micros(100), "never early");
        times[times.len() / 2]
    });
    // A timer rounded up to whole milliseconds (epoll's timeout) would take >= 1 ms.
    assert!(
        shortest < Duration::from_micros(900),
        "median 100 µs sleep took {shortest:?}"
    );
}

/// Runs `f` outside any fiber and inside one, returning both results.
fn outside_and_inside<T: 'static>(f: fn() -> T) -> (T, T) {
    let outside = f();
    let inside = fibra::run(|| fibra::spawn(f).join().unwrap());
    (outside, inside)
}

#[test]
fn sleep_argument_errors_match_libc() {
    let _w = Watchdog::new(Duration::from_secs(30));
    // nanosleep: -1 and errno EINVAL for a bad tv_nsec or a negative tv_sec.
    let (outside, inside) = outside_and_inside(|| {
        let bad = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000_000,
        };
        // SAFETY: valid pointers; the kernel rejects the value.
        let r = unsafe { libc::nanosleep(&bad, std::ptr::null_mut()) };
        let e1 = std::io::Error::last_os_error().raw_os_error();
        let neg = libc::timespec {
            tv_sec: -1,
            tv_nsec: 0,
        };
        // SAFETY: as above.
        let r2 = unsafe { libc::nanosleep(&neg, std::ptr::null_mut()) };
        let e2 = std::io::Error::last_os_error().raw_os_error();
        (r, e1, r2, e2)
    });
    assert_eq!(outside, (-1, Some(libc::EINVAL), -1, Some(libc::EINVAL)));
    assert_eq!(inside, outside);
    // clock_nanosleep returns the error number itself and leaves errno alone.
    let (outside, inside) = outside_and_inside(|| {
        let bad = libc::timespec {
            tv_sec: 0,
            tv_nsec: -5,
        };
        // SAFETY: setting errno to a marker value.
        unsafe { *libc::__errno_location() = 1234 };
        // SAFETY: valid pointers; the kernel rejects the value.
        let r =
            unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &bad, std::ptr::null_mut()) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointers.
        let r0 =
            unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &zero, std::ptr::null_mut()) };
        // An absolute deadline in the past returns at once.
        // SAFETY: valid pointers.
        let past = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &zero,
                std::ptr::null_mut(),
            )
        };
        (r, errno, r0, past)
    });
    assert_eq!(outside, (libc::EINVAL, Some(1234), 0, 0));
    assert_eq!(inside, outside);
    // Successful sleeps leave errno as it was.
    let (outside, inside) = outside_and_inside(|| {
        // SAFETY: setting errno to a marker value.
        unsafe { *libc::__errno_location() = 77 };
        std::thread::sleep(Duration::from_millis(1));
        std::io::Error::last_os_error().raw_os_error()
    });
    assert_eq!((outside, inside), (Some(77), Some(77)));
}

#[test]
fn sleeps_outside_fibers_go_to_libc() {
    assert!(!fibra::in_fiber());
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    fibra::sleep(Duration::from_millis(20));
    fibra::yield_now();
    assert!(t.elapsed() >= Duration::from_millis(40));
    // After run returns the thread is plain again.
    fibra::run(|| assert!(fibra::in_fiber()));
    assert!(!fibra::in_fiber());
    // An OS thread inside no run at all, while another thread runs fibers.
    let busy = std::thread::spawn(|| fibra::run(|| std::thread::sleep(Duration::from_millis(50))));
    let t = Instant::now();
    // SAFETY: no preconditions.
    assert_eq!(unsafe { libc::usleep(20_000) }, 0);
    assert!(t.elapsed() >= Duration::from_millis(20));
    busy.join().unwrap();
}

#[test]
fn builder_names_and_sizes_stacks() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let h = fibra::Builder::new()
            .name("deep".into())
            .stack_size(2 << 20)
            .spawn(|| {
                assert_eq!(fibra::current_name().as_deref(), Some("deep"));
                // ~1 MiB of frames: more than the default stack holds, less than requested.
                recurse(1024)
            })
            .unwrap();
        assert_eq!(h.join().unwrap(), 1024 * 1024);
        assert!(fibra::current_name().as_deref() == Some("root"));
        let id = fibra::spawn(fibra::current_id).join().unwrap().unwrap();
        assert_ne!(Some(id), fibra::current_id());
    });
}

#[inline(never)]
fn recurse(depth: usize) -> usize {
    let buf = [1u8; 1024];
    let here = std::hint::black_box(&buf)
        .iter()
        .map(|b| *b as usize)
        .sum::<usize>();
    if depth <= 1 {
        here
    } else {
        here + recurse(depth - 1)
    }
}

#[test]
fn an_impossible_stack_is_an_error_not_an_abort() {
    fibra::run(|| {
        let err = fibra::Builder::new()
            .stack_size(usize::MAX)
            .spawn(|| ())
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        // 1 PiB: a valid size that no address space has room for.
        let err = fibra::Builder::new()
            .stack_size(1 << 50)
            .spawn(|| ())
            .unwrap_err();
        assert!(err.raw_os_error().is_some(), "an OS error from mmap: {err}");
        // Still usable afterwards.
        assert_eq!(fibra::spawn(|| 1).join().unwrap(), 1);
    });
}

#[test]
fn stack_overflow_names_the_fiber() {
    if common::is_child() {
        fibra::run(|| {
            fibra::Builder::new()
                .name("overflowing".into())
                .stack_size(64 * 1024)
                .spawn(|| recurse(usize::MAX))
                .unwrap()
                .join()
                .ok();
        });
        unreachable!("the overflow aborts the process");
    }
    let out = common::run_child("stack_overflow_names_the_fiber");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'overflowing' has overflowed its stack (stack size 64 KiB"),
        "stderr was: {stderr}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "status {:?}",
        out.status
    );
}

#[test]
fn misuse_panics_with_a_message_that_says_what_to_do() {
    let err = std::panic::catch_unwind(|| fibra::spawn(|| ())).unwrap_err();
    let msg = common::panic_message(&*err);
    assert!(
        msg.contains("fibra::spawn called outside fibra::run"),
        "{msg}"
    );

    let err = std::panic::catch_unwind(|| fibra::run(|| fibra::run(|| ()))).unwrap_err();
    let msg = common::panic_message(&*err);
    assert!(msg.contains("fibra::run called inside fibra::run"), "{msg}");
    // The thread is usable again after the failed run.
    assert_eq!(fibra::run(|| 3), 3);
}

#[test]
fn a_deadlock_is_reported_instead_of_hanging() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let err = std::panic::catch_unwind(|| {
        fibra::run(|| {
            let slot: Rc<RefCell<Option<fibra::JoinHandle<()>>>> = Rc::default();
            let s = slot.clone();
            let a = fibra::Builder::new()
                .name("waits-for-b".into())
                .spawn(move || {
                    fibra::yield_now();
                    let b = s.borrow_mut().take().unwrap();
                    b.join().unwrap();
                })
                .unwrap();
            let b = fibra::Builder::new()
                .name("waits-for-a".into())
                .spawn(move || a.join().unwrap())
                .unwrap();
            *slot.borrow_mut() = Some(b);
        })
    })
    .unwrap_err();
    let msg = common::panic_message(&*err);
    assert!(msg.contains("deadlock"), "{msg}");
    assert!(msg.contains("'waits-for-b' is joining fiber"), "{msg}");
    assert!(msg.contains("'waits-for-a' is joining fiber"), "{msg}");
}

#[test]
fn join_handle_reports_finished() {
    fibra::run(|| {
        let h = fibra::spawn(|| fibra::sleep(Duration::from_millis(10)));
        assert!(!h.is_finished());
        fibra::sleep(Duration::from_millis(50));
        assert!(h.is_finished());
        h.join().unwrap();
    });
}

#[test]
fn two_hundred_thousand_parked_fibers() {
    // Beyond the ~32,700 stacks that vm.max_map_count allows with mprotect'ed guard pages.
    let _w = Watchdog::new(Duration::from_secs(120));
    let n = 200_000;
    let woke = fibra::run(move || {
        let count = Rc::new(Cell::new(0usize));
        for _ in 0..n {
            let c = count.clone();
            fibra::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                c.set(c.get() + 1);
            });
        }
        while count.get() < n {
            fibra::sleep(Duration::from_millis(10));
        }
        count.get()
    });
    assert_eq!(woke, n);
}

#[test]
fn a_panicking_drop_of_a_detached_result_does_not_escape_the_fiber() {
    let _w = Watchdog::new(Duration::from_secs(30));
    struct Boom;
    impl Drop for Boom {
        fn drop(&mut self) {
            panic!("Boom dropped");
        }
    }
    let others = Rc::new(Cell::new(0));
    let o = others.clone();
    fibra::run(move || {
        drop(fibra::spawn(|| Boom));
        for _ in 0..3 {
            let o = o.clone();
            fibra::spawn(move || {
                fibra::yield_now();
                o.set(o.get() + 1);
            });
        }
    });
    assert_eq!(others.get(), 3, "the scheduler survived and ran the others");
    assert!(
        fibra_shim::active().is_none(),
        "the thread's calls go straight to libc again"
    );
}
