//! Sync waits: std::sync, parking_lot, crossbeam-channel, park/unpark, thread::scope and
//! pthread_join park the fiber, not the thread, between fibers of one thread and between fibers
//! and OS threads; std's per-thread parker shared by many fibers; the deadlock report.
//!
//! The pattern of most tests: a holder (or sender) keeps the resource while parked in a sleep,
//! a waiter blocks on it, and a "ticker" fiber counts how often it ran meanwhile. The waiter
//! parked (rather than blocking the thread) exactly when the ticker kept running.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Condvar, LazyLock, Mutex, OnceLock, RwLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::Watchdog;

const HOLD: Duration = Duration::from_millis(100);

/// Spawns a fiber that yields every millisecond until `stop` is set; returns how many turns it
/// got. A fiber blocked in a way that blocks the thread starves it.
fn ticker(stop: Rc<Cell<bool>>) -> fibra::JoinHandle<usize> {
    fibra::spawn(move || {
        let mut ticks = 0;
        while !stop.get() {
            thread::sleep(Duration::from_millis(1));
            ticks += 1;
        }
        ticks
    })
}

/// Runs `waiter` (which must block for about `HOLD`) beside a ticker and asserts the ticker kept
/// running while it waited.
fn assert_parks(waiter: impl FnOnce() + 'static) {
    let stop = Rc::new(Cell::new(false));
    let ticks = ticker(stop.clone());
    let start = Instant::now();
    let s = stop.clone();
    let w = fibra::spawn(move || {
        waiter();
        s.set(true);
    });
    w.join().unwrap();
    let waited = start.elapsed();
    let ticks = ticks.join().unwrap();
    assert!(
        waited >= HOLD / 2,
        "the waiter returned after {waited:?}: it did not wait for the holder"
    );
    // A 100 ms wait gives the ticker ~100 turns; a blocked thread gives it at most 1 or 2.
    assert!(
        ticks >= 10,
        "the ticker ran {ticks} times during a {waited:?} wait: the waiter blocked the thread"
    );
}

#[test]
fn std_mutex_between_fibers_parks_the_waiter() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let m = Arc::new(Mutex::new(0u32));
        let m2 = m.clone();
        let holder = fibra::spawn(move || {
            let mut g = m2.lock().unwrap();
            thread::sleep(HOLD);
            *g += 1;
        });
        fibra::yield_now(); // let the holder take the lock
        assert_parks(move || {
            *m.lock().unwrap() += 10;
        });
        holder.join().unwrap();
    });
}

#[test]
fn two_fibers_of_one_thread_both_blocked_in_park() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let me = thread::current();
        let woke = Rc::new(Cell::new(0));
        let flags: Vec<Arc<AtomicBool>> =
            (0..2).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let parked: Vec<_> = flags
            .iter()
            .map(|flag| {
                let flag = flag.clone();
                let woke = woke.clone();
                fibra::spawn(move || {
                    // park's contract: spurious returns are allowed; callers re-check.
                    while !flag.load(Ordering::Acquire) {
                        thread::park();
                    }
                    woke.set(woke.get() + 1);
                })
            })
            .collect();
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone());
        thread::sleep(Duration::from_millis(50));
        assert_eq!(woke.get(), 0);
        // One is released by another fiber of this thread...
        flags[0].store(true, Ordering::Release);
        me.unpark();
        thread::sleep(Duration::from_millis(50));
        assert_eq!(woke.get(), 1);
        // ...the other by an OS thread.
        let (flag, me2) = (flags[1].clone(), me.clone());
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            flag.store(true, Ordering::Release);
            me2.unpark();
        });
        for h in parked {
            h.join().unwrap();
        }
        stop.set(true);
        assert!(
            ticks.join().unwrap() >= 10,
            "the ticker starved: a park spun or blocked"
        );
        assert_eq!(woke.get(), 2);
    });
}

/// Holds `lock` (taken by `take`) for `HOLD` in a sleeping fiber while a waiter takes it too.
fn holder_fiber(take: impl FnOnce() + 'static) -> fibra::JoinHandle<()> {
    let h = fibra::spawn(take);
    fibra::yield_now(); // the holder takes the resource and parks in its sleep
    h
}

#[test]
fn std_rwlock_writer_and_readers_between_fibers() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let l = Arc::new(RwLock::new(0u32));
        let l2 = l.clone();
        let h = holder_fiber(move || {
            let mut g = l2.write().unwrap();
            thread::sleep(HOLD);
            *g = 1;
        });
        let l3 = l.clone();
        assert_parks(move || assert_eq!(*l3.read().unwrap(), 1));
        h.join().unwrap();
        // And the other way: readers hold, a writer waits.
        let l2 = l.clone();
        let h = holder_fiber(move || {
            let g = l2.read().unwrap();
            thread::sleep(HOLD);
            drop(g);
        });
        assert_parks(move || *l.write().unwrap() += 1);
        h.join().unwrap();
    });
}

#[test]
fn std_condvar_wait_wait_timeout_and_wait_while() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let pair = Arc::new((Mutex::new(0u32), Condvar::new()));
        // wait: notified by a fiber after a sleep.
        let p = pair.clone();
        let n = fibra::spawn(move || {
            thread::sleep(HOLD);
            *p.0.lock().unwrap() = 1;
            p.1.notify_one();
        });
        let p = pair.clone();
        assert_parks(move || {
            let mut g = p.0.lock().unwrap();
            while *g != 1 {
                g = p.1.wait(g).unwrap();
            }
        });
        n.join().unwrap();
        // wait_timeout: nobody notifies; the timeout ends it.
        let p = pair.clone();
        assert_parks(move || {
            let g = p.0.lock().unwrap();
            let (_g, r) = p.1.wait_timeout(g, HOLD).unwrap();
            assert!(r.timed_out());
        });
        // wait_timeout that is notified well before its timeout.
        let p = pair.clone();
        let n = fibra::spawn(move || {
            thread::sleep(HOLD);
            *p.0.lock().unwrap() = 2;
            p.1.notify_all();
        });
        let p = pair.clone();
        assert_parks(move || {
            let g = p.0.lock().unwrap();
            let start = Instant::now();
            let (g, r) =
                p.1.wait_timeout_while(g, Duration::from_secs(20), |v| *v != 2)
                    .unwrap();
            assert!(!r.timed_out() && *g == 2 && start.elapsed() < Duration::from_secs(10));
        });
        n.join().unwrap();
        // wait_while, with several waiters woken by notify_all.
        let woken = Rc::new(Cell::new(0));
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let (p, woken) = (pair.clone(), woken.clone());
                fibra::spawn(move || {
                    let g = p.0.lock().unwrap();
                    let g = p.1.wait_while(g, |v| *v != 3).unwrap();
                    assert_eq!(*g, 3);
                    woken.set(woken.get() + 1);
                })
            })
            .collect();
        let p = pair.clone();
        assert_parks(move || {
            thread::sleep(HOLD);
            *p.0.lock().unwrap() = 3;
            p.1.notify_all();
        });
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(woken.get(), 5);
    });
}

#[test]
fn std_barrier_once_lock_and_lazy_lock() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let barrier = Arc::new(Barrier::new(3));
        let late = {
            let b = barrier.clone();
            fibra::spawn(move || {
                thread::sleep(HOLD);
                b.wait();
            })
        };
        let early = {
            let b = barrier.clone();
            fibra::spawn(move || {
                b.wait();
            })
        };
        assert_parks(move || {
            barrier.wait();
        });
        late.join().unwrap();
        early.join().unwrap();

        static ONCE: OnceLock<u32> = OnceLock::new();
        let init = fibra::spawn(|| {
            *ONCE.get_or_init(|| {
                thread::sleep(HOLD);
                7
            })
        });
        fibra::yield_now();
        assert_parks(|| assert_eq!(*ONCE.get_or_init(|| 8), 7));
        assert_eq!(init.join().unwrap(), 7);

        static LAZY: LazyLock<u32> = LazyLock::new(|| {
            thread::sleep(HOLD);
            9
        });
        let first = fibra::spawn(|| *LAZY);
        fibra::yield_now();
        assert_parks(|| assert_eq!(*LAZY, 9));
        assert_eq!(first.join().unwrap(), 9);
    });
}

#[test]
fn std_park_timeout_returns_at_its_deadline_and_unpark_wakes_early() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        assert_parks(|| {
            let start = Instant::now();
            while start.elapsed() < HOLD {
                thread::park_timeout(HOLD - start.elapsed());
            }
        });
        let me = thread::current();
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        thread::spawn(move || {
            thread::sleep(HOLD);
            f.store(true, Ordering::Release);
            me.unpark();
        });
        assert_parks(move || {
            let start = Instant::now();
            while !flag.load(Ordering::Acquire) {
                thread::park_timeout(Duration::from_secs(20));
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "unpark was missed"
            );
        });
    });
}

#[test]
fn std_mpsc_between_fibers_and_os_threads() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        // An OS thread sends after a sleep; the fiber's recv parks.
        let (tx, rx) = mpsc::channel::<u32>();
        thread::spawn(move || {
            thread::sleep(HOLD);
            tx.send(1).unwrap();
            thread::sleep(Duration::from_secs(1)); // keep the channel open: no disconnect wake
        });
        assert_parks(move || assert_eq!(rx.recv().unwrap(), 1));
        // A fiber sends to an OS thread that waits; the thread answers through a rendezvous
        // channel (capacity 0), whose send parks the fiber until the thread receives.
        let (to_thread, thread_rx) = mpsc::channel::<u32>();
        let (thread_tx, from_thread) = mpsc::sync_channel::<u32>(0);
        let t = thread::spawn(move || {
            let v = thread_rx.recv().unwrap();
            thread::sleep(HOLD);
            thread_tx.send(v + 1).unwrap();
            thread::sleep(HOLD);
            let v = thread_rx.recv().unwrap();
            assert_eq!(v, 5);
        });
        to_thread.send(1).unwrap();
        assert_parks(move || {
            assert_eq!(from_thread.recv().unwrap(), 2);
        });
        let (sync_tx, sync_rx) = mpsc::sync_channel::<u32>(0);
        let t2 = thread::spawn(move || {
            thread::sleep(HOLD);
            assert_eq!(sync_rx.recv().unwrap(), 3);
        });
        // send on a rendezvous channel blocks until the thread receives.
        assert_parks(move || sync_tx.send(3).unwrap());
        to_thread.send(5).unwrap();
        t.join().unwrap();
        t2.join().unwrap();
        // recv_timeout between fibers: nothing comes, the timeout ends the wait.
        let (_tx, rx) = mpsc::channel::<u32>();
        assert_parks(move || {
            assert_eq!(rx.recv_timeout(HOLD), Err(mpsc::RecvTimeoutError::Timeout));
        });
        // recv_timeout that an OS thread's send ends early.
        let (tx, rx) = mpsc::channel::<u32>();
        thread::spawn(move || {
            thread::sleep(HOLD);
            tx.send(4).unwrap();
            thread::sleep(Duration::from_secs(1));
        });
        assert_parks(move || {
            let start = Instant::now();
            assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(4));
            assert!(start.elapsed() < Duration::from_secs(10));
        });
    });
}

/// Many fibers of one thread blocked in std mpsc receives at once (all on the one parker word):
/// each gets every message meant for it, none is lost, nothing spins.
#[test]
fn fifty_fibers_of_one_thread_receive_over_std_mpsc_from_os_threads() {
    let _w = Watchdog::new(Duration::from_secs(60));
    const PAIRS: usize = 50;
    const MESSAGES: u64 = 200;
    let cpu_start = cpu_time();
    let wall = Instant::now();
    fibra::run(|| {
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for i in 0..PAIRS {
            let (tx, rx) = mpsc::channel::<u64>();
            let (ack_tx, ack_rx) = mpsc::channel::<u64>();
            // OS-thread side: ping-pong with its fiber, so the fiber blocks on every message.
            senders.push(thread::spawn(move || {
                for m in 0..MESSAGES {
                    tx.send(m).unwrap();
                    assert_eq!(ack_rx.recv().unwrap(), m);
                    if m % 50 == i as u64 % 50 {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
            }));
            receivers.push(fibra::spawn(move || {
                let mut sum = 0;
                for m in 0..MESSAGES {
                    let v = rx.recv().unwrap();
                    assert_eq!(v, m, "messages arrive in order, none lost");
                    sum += v;
                    ack_tx.send(v).unwrap();
                }
                sum
            }));
        }
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone());
        for r in receivers {
            assert_eq!(r.join().unwrap(), MESSAGES * (MESSAGES - 1) / 2);
        }
        stop.set(true);
        assert!(ticks.join().unwrap() >= 1);
        for s in senders {
            s.join().unwrap();
        }
    });
    let wall = wall.elapsed();
    let cpu = cpu_time() - cpu_start;
    // 10,000 round trips; a spinning fiber would burn a whole core for the test's duration on
    // top of the 50 sender threads. Wide margin: the whole process may use 2 cores.
    assert!(wall < Duration::from_secs(40), "took {wall:?}");
    eprintln!("50 pairs x {MESSAGES} round trips: wall {wall:?}, process CPU {cpu:?}");
}

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn an_os_thread_holding_a_lock_parks_only_the_fiber_that_wants_it() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let m = Arc::new(Mutex::new(0u32));
        let (locked_tx, locked_rx) = mpsc::channel();
        let m2 = m.clone();
        let t = thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            locked_tx.send(()).unwrap();
            thread::sleep(HOLD);
            *g = 5;
        });
        locked_rx.recv().unwrap();
        assert_parks(move || assert_eq!(*m.lock().unwrap(), 5));
        t.join().unwrap();
    });
}

#[test]
fn a_fiber_releasing_a_lock_wakes_an_os_thread_waiting_for_it() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let m = Arc::new(Mutex::new(0u32));
        let g = m.lock().unwrap();
        let (m2, p2) = (m.clone(), pair.clone());
        let t = thread::spawn(move || {
            let start = Instant::now();
            *m2.lock().unwrap() += 1; // blocks in the kernel until the fiber unlocks
            let waited = start.elapsed();
            // Then a condvar the fiber notifies.
            let mut ready = p2.0.lock().unwrap();
            while !*ready {
                ready = p2.1.wait(ready).unwrap();
            }
            waited
        });
        thread::sleep(HOLD); // parks this fiber while the thread is blocked on the lock
        drop(g);
        thread::sleep(Duration::from_millis(20));
        *pair.0.lock().unwrap() = true;
        pair.1.notify_one();
        let waited = fibra::spawn(move || t.join().unwrap()).join().unwrap();
        assert!(waited >= HOLD / 2);
        assert_eq!(*m.lock().unwrap(), 1);
    });
}

#[test]
fn joining_an_os_thread_parks_the_fiber() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let t = thread::spawn(|| {
            thread::sleep(HOLD);
            42
        });
        assert_parks(move || assert_eq!(t.join().unwrap(), 42));
        // A panicking thread's payload arrives through join, as without fibra.
        let t = thread::spawn(|| -> u32 {
            thread::sleep(HOLD);
            panic!("thread boom")
        });
        assert_parks(move || assert!(t.join().is_err()));
    });
}

#[test]
fn thread_scope_in_a_fiber_parks_the_fiber() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        assert_parks(|| {
            let mut data = vec![0u32; 4];
            thread::scope(|s| {
                for (i, slot) in data.iter_mut().enumerate() {
                    s.spawn(move || {
                        thread::sleep(HOLD);
                        *slot = i as u32 + 1;
                    });
                }
                // One handle joined explicitly, the rest when the scope ends.
                let h = s.spawn(|| {
                    thread::sleep(HOLD);
                    5
                });
                assert_eq!(h.join().unwrap(), 5);
            });
            assert_eq!(data, [1, 2, 3, 4]);
        });
    });
}

#[test]
fn parking_lot_mutex_rwlock_condvar_between_fibers_and_threads() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        // Fiber holder, fiber waiter (one waiter per thread at a time; see the conflict test).
        let m = Arc::new(parking_lot::Mutex::new(0u32));
        let m2 = m.clone();
        let h = holder_fiber(move || {
            let mut g = m2.lock();
            thread::sleep(HOLD);
            *g = 1;
        });
        let m3 = m.clone();
        assert_parks(move || assert_eq!(*m3.lock(), 1));
        h.join().unwrap();
        // OS-thread holder.
        let m2 = m.clone();
        let (tx, rx) = mpsc::channel();
        let t = thread::spawn(move || {
            let mut g = m2.lock();
            tx.send(()).unwrap();
            thread::sleep(HOLD);
            *g = 2;
        });
        rx.recv().unwrap();
        let m3 = m.clone();
        assert_parks(move || assert_eq!(*m3.lock(), 2));
        t.join().unwrap();
        // RwLock: a fiber writer holds, a fiber reader waits.
        let l = Arc::new(parking_lot::RwLock::new(0u32));
        let l2 = l.clone();
        let h = holder_fiber(move || {
            let mut g = l2.write();
            thread::sleep(HOLD);
            *g = 3;
        });
        let l3 = l.clone();
        assert_parks(move || assert_eq!(*l3.read(), 3));
        h.join().unwrap();
        // Condvar: notified by an OS thread, and by a fiber.
        let pair = Arc::new((parking_lot::Mutex::new(0u32), parking_lot::Condvar::new()));
        let p = pair.clone();
        thread::spawn(move || {
            thread::sleep(HOLD);
            *p.0.lock() = 1;
            p.1.notify_one();
        });
        let p = pair.clone();
        assert_parks(move || {
            let mut g = p.0.lock();
            p.1.wait_while(&mut g, |v| *v != 1);
        });
        let p = pair.clone();
        let n = fibra::spawn(move || {
            thread::sleep(HOLD);
            *p.0.lock() = 2;
            p.1.notify_all();
        });
        let p = pair.clone();
        assert_parks(move || {
            let mut g = p.0.lock();
            let r = p.1.wait_for(&mut g, Duration::from_secs(20));
            assert!(!r.timed_out() || *g == 2);
            p.1.wait_while(&mut g, |v| *v != 2);
        });
        n.join().unwrap();
        // A fiber releasing a parking_lot lock an OS thread waits for.
        let g = m.lock();
        let m2 = m.clone();
        let t = thread::spawn(move || *m2.lock() + 1);
        thread::sleep(HOLD);
        drop(g);
        assert_eq!(fibra::spawn(move || t.join().unwrap()).join().unwrap(), 3);
    });
}

#[test]
fn crossbeam_channels_between_fibers_and_os_threads() {
    let _w = Watchdog::new(Duration::from_secs(60));
    fibra::run(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        thread::spawn(move || {
            thread::sleep(HOLD);
            tx.send(1).unwrap();
            thread::sleep(Duration::from_secs(1));
        });
        assert_parks(move || assert_eq!(rx.recv().unwrap(), 1));
        // Bounded(0) rendezvous: the fiber's send parks until the thread receives.
        let (tx, rx) = crossbeam_channel::bounded::<u32>(0);
        let t = thread::spawn(move || {
            thread::sleep(HOLD);
            rx.recv().unwrap()
        });
        assert_parks(move || tx.send(2).unwrap());
        assert_eq!(fibra::spawn(move || t.join().unwrap()).join().unwrap(), 2);
        // Twenty fibers blocked in recv at once, fed by one OS thread: every message arrives.
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<u32>();
        let fibers: Vec<_> = (0..20)
            .map(|_| {
                let (rx, done_tx) = (rx.clone(), done_tx.clone());
                fibra::spawn(move || {
                    while let Ok(v) = rx.recv() {
                        done_tx.send(v).unwrap();
                    }
                })
            })
            .collect();
        drop(done_tx);
        let feeder = thread::spawn(move || {
            for i in 0..2000 {
                tx.send(i).unwrap();
                if i % 100 == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let got = fibra::spawn(move || {
            let mut seen = vec![false; 2000];
            for v in done_rx.iter() {
                seen[v as usize] = true;
            }
            seen.iter().all(|&s| s)
        });
        fibra::spawn(move || feeder.join().unwrap()).join().unwrap();
        for f in fibers {
            f.join().unwrap();
        }
        assert!(got.join().unwrap(), "a message was lost");
        // select with a timeout between fibers ends at its deadline.
        let (_tx, rx) = crossbeam_channel::unbounded::<u32>();
        assert_parks(move || {
            crossbeam_channel::select! {
                recv(rx) -> _ => panic!("nothing was sent"),
                default(HOLD) => {}
            }
        });
    });
}

// ---- The raw futex interface: the kernel's semantics, exactly. ----

fn futex(
    word: &std::sync::atomic::AtomicU32,
    op: i32,
    val: u32,
    ts: *const libc::timespec,
    val3: u32,
) -> (i64, i32) {
    // SAFETY: a futex call on a live word; errno read right after.
    unsafe {
        *libc::__errno_location() = 0;
        let r = libc::syscall(
            libc::SYS_futex,
            word as *const _ as usize,
            op,
            val,
            ts,
            std::ptr::null::<u32>(),
            val3,
        );
        (r as i64, *libc::__errno_location())
    }
}

fn abs_monotonic(after: Duration) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let ns = ts.tv_nsec as u64 + after.subsec_nanos() as u64;
    libc::timespec {
        tv_sec: ts.tv_sec + after.as_secs() as libc::time_t + (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

const PRIVATE: i32 = libc::FUTEX_PRIVATE_FLAG;

#[test]
fn raw_futex_waits_have_the_kernels_results_in_fibers() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let word = Arc::new(std::sync::atomic::AtomicU32::new(5));
        // Value mismatch: EAGAIN at once.
        assert_eq!(
            futex(&word, libc::FUTEX_WAIT | PRIVATE, 4, std::ptr::null(), 0),
            (-1, libc::EAGAIN)
        );
        // Bad arguments: EINVAL.
        assert_eq!(
            futex(
                &word,
                libc::FUTEX_WAIT_BITSET | PRIVATE,
                5,
                std::ptr::null(),
                0
            ),
            (-1, libc::EINVAL),
            "a zero bitset"
        );
        let bad = libc::timespec {
            tv_sec: 0,
            tv_nsec: 2_000_000_000,
        };
        assert_eq!(
            futex(&word, libc::FUTEX_WAIT | PRIVATE, 5, &bad, 0),
            (-1, libc::EINVAL)
        );
        // A relative timeout (FUTEX_WAIT), parked.
        let w = word.clone();
        assert_parks(move || {
            let rel = libc::timespec {
                tv_sec: 0,
                tv_nsec: HOLD.as_nanos() as libc::c_long,
            };
            assert_eq!(
                futex(&w, libc::FUTEX_WAIT | PRIVATE, 5, &rel, 0),
                (-1, libc::ETIMEDOUT)
            );
        });
        // An absolute monotonic deadline (FUTEX_WAIT_BITSET), parked.
        let w = word.clone();
        assert_parks(move || {
            let abs = abs_monotonic(HOLD);
            assert_eq!(
                futex(&w, libc::FUTEX_WAIT_BITSET | PRIVATE, 5, &abs, u32::MAX),
                (-1, libc::ETIMEDOUT)
            );
        });
        // An absolute realtime deadline (FUTEX_CLOCK_REALTIME), shared (not private).
        let w = word.clone();
        assert_parks(move || {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid out-pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
            let ns = now.tv_nsec as u64 + HOLD.as_nanos() as u64;
            let abs = libc::timespec {
                tv_sec: now.tv_sec + (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            };
            assert_eq!(
                futex(
                    &w,
                    libc::FUTEX_WAIT_BITSET | libc::FUTEX_CLOCK_REALTIME,
                    5,
                    &abs,
                    u32::MAX
                ),
                (-1, libc::ETIMEDOUT)
            );
        });
        // Wake counts: three fiber waiters, wake 2 -> 2, wake all -> 1, wake again -> 0.
        let woken = Rc::new(Cell::new(0));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (w, woken) = (word.clone(), woken.clone());
                fibra::spawn(move || {
                    assert_eq!(
                        futex(&w, libc::FUTEX_WAIT | PRIVATE, 5, std::ptr::null(), 0),
                        (0, 0)
                    );
                    woken.set(woken.get() + 1);
                })
            })
            .collect();
        fibra::yield_now();
        assert_eq!(
            futex(&word, libc::FUTEX_WAKE | PRIVATE, 2, std::ptr::null(), 0).0,
            2
        );
        fibra::yield_now();
        assert_eq!(woken.get(), 2);
        assert_eq!(
            futex(
                &word,
                libc::FUTEX_WAKE | PRIVATE,
                i32::MAX as u32,
                std::ptr::null(),
                0
            )
            .0,
            1
        );
        assert_eq!(
            futex(&word, libc::FUTEX_WAKE | PRIVATE, 1, std::ptr::null(), 0).0,
            0
        );
        for w in waiters {
            w.join().unwrap();
        }
        // Bitsets: a waiter on bit 0 is not woken by a wake for bit 1.
        let w = word.clone();
        let waiter = fibra::spawn(move || {
            let abs = abs_monotonic(HOLD);
            futex(&w, libc::FUTEX_WAIT_BITSET | PRIVATE, 5, &abs, 0b01)
        });
        fibra::yield_now();
        assert_eq!(
            futex(
                &word,
                libc::FUTEX_WAKE_BITSET | PRIVATE,
                1,
                std::ptr::null(),
                0b10
            )
            .0,
            0
        );
        assert_eq!(
            futex(
                &word,
                libc::FUTEX_WAKE_BITSET | PRIVATE,
                1,
                std::ptr::null(),
                0
            )
            .1,
            libc::EINVAL
        );
        assert_eq!(
            futex(
                &word,
                libc::FUTEX_WAKE_BITSET | PRIVATE,
                1,
                std::ptr::null(),
                0b11
            )
            .0,
            1
        );
        assert_eq!(waiter.join().unwrap(), (0, 0));
        // Other system calls pass through with libc's errno.
        // SAFETY: closing an invalid fd and asking for our pid are harmless.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_close, -1), -1);
            assert_eq!(*libc::__errno_location(), libc::EBADF);
            assert_eq!(libc::syscall(libc::SYS_getpid) as i32, libc::getpid());
        }
    });
}

#[test]
fn a_wake_from_an_os_thread_reaches_fiber_and_kernel_waiters_alike() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let word = Arc::new(std::sync::atomic::AtomicU32::new(1));
    // A kernel waiter: an OS thread in a real FUTEX_WAIT.
    let w = word.clone();
    let kernel_waiter =
        thread::spawn(move || futex(&w, libc::FUTEX_WAIT | PRIVATE, 1, std::ptr::null(), 0));
    fibra::run(|| {
        let w = word.clone();
        let fiber_waiter =
            fibra::spawn(move || futex(&w, libc::FUTEX_WAIT | PRIVATE, 1, std::ptr::null(), 0));
        fibra::yield_now();
        thread::sleep(Duration::from_millis(50)); // let the kernel waiter get into the kernel
        let w = word.clone();
        let waker = thread::spawn(move || {
            futex(
                &w,
                libc::FUTEX_WAKE | PRIVATE,
                i32::MAX as u32,
                std::ptr::null(),
                0,
            )
            .0
        });
        assert_eq!(fiber_waiter.join().unwrap(), (0, 0));
        assert_eq!(
            fibra::spawn(move || waker.join().unwrap()).join().unwrap(),
            2
        );
    });
    assert_eq!(kernel_waiter.join().unwrap(), (0, 0));
    // Outside any fiber, a wake with no waiter at all is the kernel's: 0.
    assert_eq!(
        futex(&word, libc::FUTEX_WAKE | PRIVATE, 1, std::ptr::null(), 0),
        (0, 0)
    );
}

// ---- Deadlock diagnostics. ----

/// Two fibers taking two std mutexes in opposite orders: a lock-order deadlock.
fn lock_order_deadlock() {
    fibra::run(|| {
        let a = Arc::new(Mutex::new(()));
        let b = Arc::new(Mutex::new(()));
        let (a2, b2) = (a.clone(), b.clone());
        let first = fibra::Builder::new()
            .name("first".into())
            .spawn(move || {
                let _ga = a2.lock().unwrap();
                thread::sleep(Duration::from_millis(20));
                let _gb = b2.lock().unwrap();
            })
            .unwrap();
        let second = fibra::Builder::new()
            .name("second".into())
            .spawn(move || {
                let _gb = b.lock().unwrap();
                thread::sleep(Duration::from_millis(20));
                let _ga = a.lock().unwrap();
            })
            .unwrap();
        first.join().unwrap();
        second.join().unwrap();
    });
}

/// Runs before `main` in a child started by `deadlock_is_reported_when_provable`: the process
/// has one thread (libtest has not started its own), so no other thread can end a futex wait
/// and the deadlock is provable.
#[used]
#[unsafe(link_section = ".init_array")]
static DEADLOCK_CHILD: extern "C" fn() = deadlock_child;

extern "C" fn deadlock_child() {
    if std::env::var_os("FIBRA_SYNC_DEADLOCK_CHILD").is_none() {
        return;
    }
    let r = std::panic::catch_unwind(lock_order_deadlock);
    let msg = match &r {
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "non-string panic".into()),
        Ok(()) => "no deadlock reported".into(),
    };
    eprintln!("CHILD-REPORT-BEGIN\n{msg}\nCHILD-REPORT-END");
    // SAFETY: ends the child at once, before libtest starts.
    unsafe { libc::_exit(0) };
}

#[test]
fn deadlock_is_reported_when_provable() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("FIBRA_SYNC_DEADLOCK_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = stderr
        .split("CHILD-REPORT-BEGIN\n")
        .nth(1)
        .and_then(|s| s.split("\nCHILD-REPORT-END").next())
        .unwrap_or_else(|| panic!("no report from the child: {stderr}"));
    assert!(report.contains("fibra: deadlock"), "{report}");
    for name in [
        "'first' is waiting on a lock",
        "'second' is waiting on a lock",
        "'root' is joining fiber",
    ] {
        assert!(report.contains(name), "missing {name:?} in:\n{report}");
    }
}

#[test]
fn a_possible_deadlock_is_warned_about_when_other_threads_exist() {
    if common::is_child() {
        // Other threads exist here (libtest's), so fibra cannot prove the deadlock: it warns
        // after FIBRA_DEADLOCK_WARN_MS and keeps waiting. The parent kills us.
        lock_order_deadlock();
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(30));
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_possible_deadlock_is_warned_about_when_other_threads_exist",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FIBRA_CHILD", "1")
        .env("FIBRA_DEADLOCK_WARN_MS", "300")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        let mut text = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            text.push_str(&line);
            text.push('\n');
            if line.contains("fibra keeps waiting") {
                break;
            }
        }
        let _ = tx.send(text);
    });
    let text = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("fibra: possible deadlock"), "{text}");
    assert!(text.contains("'first' is waiting on a lock"), "{text}");
    assert!(text.contains("'second' is waiting on a lock"), "{text}");
}

#[test]
fn two_fibers_of_one_thread_blocked_in_parking_lot_abort_with_a_message() {
    if common::is_child() {
        fibra::run(|| {
            let m = Arc::new(parking_lot::Mutex::new(()));
            let m2 = m.clone();
            let _holder = holder_fiber(move || {
                let _g = m2.lock();
                thread::sleep(Duration::from_secs(5));
            });
            let waiters: Vec<_> = (0..2)
                .map(|i| {
                    let m = m.clone();
                    fibra::Builder::new()
                        .name(format!("pl-waiter-{i}"))
                        .spawn(move || drop(m.lock()))
                        .unwrap()
                })
                .collect();
            for w in waiters {
                w.join().unwrap();
            }
        });
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(30));
    let out =
        common::run_child("two_fibers_of_one_thread_blocked_in_parking_lot_abort_with_a_message");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("parking_lot"), "{stderr}");
    assert!(
        stderr.contains("'pl-waiter-0'") && stderr.contains("'pl-waiter-1'"),
        "{stderr}"
    );
}

#[test]
fn a_std_mutex_in_a_thread_local_is_shared_by_the_threads_fibers() {
    // Per-thread state that is a std lock (FUTEX_WAIT_BITSET on a TLS word) works between the
    // fibers of the thread: only parking_lot's per-thread parker is refused.
    thread_local! {
        static CACHE: Mutex<Vec<u32>> = const { Mutex::new(Vec::new()) };
    }
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let holder = holder_fiber(|| {
            CACHE.with(|c| {
                let mut g = c.lock().unwrap();
                thread::sleep(HOLD);
                g.push(0);
            })
        });
        let waiters: Vec<_> = (1..=3)
            .map(|i| fibra::spawn(move || CACHE.with(|c| c.lock().unwrap().push(i))))
            .collect();
        assert_parks(|| CACHE.with(|c| c.lock().unwrap().push(4)));
        holder.join().unwrap();
        for w in waiters {
            w.join().unwrap();
        }
        CACHE.with(|c| {
            let mut v = c.lock().unwrap().clone();
            v.sort();
            assert_eq!(v, [0, 1, 2, 3, 4]);
        });
    });
}

/// Pins down the documented limit (ARCHITECTURE.md, "Sync waits"): std's mpsc never wakes a
/// receiver registered by the sending OS thread, so between two fibers of one thread a blocked
/// `recv_timeout` sees a message only at its deadline. If std changes this, this test fails and
/// the limit (and this test) can go.
#[test]
fn std_mpsc_between_fibers_of_one_thread_wakes_only_at_the_deadline() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let (tx, rx) = mpsc::channel::<u32>();
        let start = Instant::now();
        let sender = fibra::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send(7).unwrap();
            thread::sleep(Duration::from_millis(600)); // no disconnect before the deadline
        });
        assert_eq!(rx.recv_timeout(Duration::from_millis(300)), Ok(7));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "received after {waited:?}: std now wakes same-thread receivers; update the docs"
        );
        sender.join().unwrap();
    });
}

/// Fibers of two schedulers (two OS threads, each in `fibra::run`) ping-pong over std mpsc and
/// hand a std Mutex back and forth: every wake crosses threads through the inbox and Waker.
#[test]
fn fibers_of_two_schedulers_talk_through_std_mpsc_and_a_mutex() {
    let _w = Watchdog::new(Duration::from_secs(60));
    const ROUNDS: u32 = 500;
    let (to_b, from_a) = mpsc::channel::<u32>();
    let (to_a, from_b) = mpsc::channel::<u32>();
    let shared = Arc::new(Mutex::new(0u32));
    let s2 = shared.clone();
    let b = thread::spawn(move || {
        fibra::run(move || {
            let stop = Rc::new(Cell::new(false));
            let ticks = ticker(stop.clone());
            let echo = fibra::spawn(move || {
                for v in from_a.iter() {
                    *s2.lock().unwrap() += 1;
                    to_a.send(v + 1).unwrap();
                }
            });
            echo.join().unwrap();
            stop.set(true);
            ticks.join().unwrap()
        })
    });
    fibra::run(move || {
        let stop = Rc::new(Cell::new(false));
        let ticks = ticker(stop.clone());
        let pinger = fibra::spawn(move || {
            for i in 0..ROUNDS {
                to_b.send(i * 2).unwrap();
                assert_eq!(from_b.recv().unwrap(), i * 2 + 1);
                let g = shared.lock().unwrap();
                assert_eq!(*g, i + 1);
            }
        });
        pinger.join().unwrap();
        stop.set(true);
        ticks.join().unwrap();
    });
    b.join().unwrap();
}

/// A shared (non-private) futex in memory shared with another process: the other process's
/// wake never passes through this process's table, so the fiber's wait notices the word change
/// by re-reading it, and returns as woken.
#[test]
fn a_shared_futex_woken_by_another_process_ends_the_fibers_wait() {
    let _w = Watchdog::new(Duration::from_secs(30));
    // SAFETY: a fresh anonymous shared mapping of one page.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    // SAFETY: the mapping is page-aligned, zeroed and lives until the munmap below.
    let word: &'static std::sync::atomic::AtomicU32 =
        unsafe { &*(page as *const std::sync::atomic::AtomicU32) };
    // SAFETY: the child only sleeps, stores, makes a raw futex wake and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: HOLD.as_nanos() as libc::c_long,
        };
        // SAFETY: async-signal-safe calls only, then _exit.
        unsafe {
            libc::nanosleep(&ts, std::ptr::null_mut());
            word.store(1, Ordering::SeqCst);
            libc::syscall(libc::SYS_futex, page, libc::FUTEX_WAKE, i32::MAX, 0, 0, 0);
            libc::_exit(0);
        }
    }
    assert!(pid > 0);
    fibra::run(|| {
        assert_parks(move || {
            let start = Instant::now();
            let r = futex(word, libc::FUTEX_WAIT, 0, std::ptr::null(), 0);
            assert_eq!(r, (0, 0), "woken, not an error");
            assert_eq!(word.load(Ordering::SeqCst), 1);
            assert!(start.elapsed() < Duration::from_secs(10));
        });
    });
    let mut status = 0;
    // SAFETY: reaping our own child; unmapping our own mapping.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::munmap(page, 4096);
    }
}

/// Every blocking join gets a helper thread of its own: twenty fibers joining twenty sleeping
/// threads at once wait one sleep, not twenty; later joins reuse the idle helpers.
#[test]
fn concurrent_joins_from_fibers_each_get_a_helper() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        for round in 0..2 {
            let start = Instant::now();
            let joiners: Vec<_> = (0..20)
                .map(|i| {
                    let t = thread::spawn(move || {
                        thread::sleep(HOLD);
                        i
                    });
                    fibra::spawn(move || t.join().unwrap())
                })
                .collect();
            let sum: u32 = joiners.into_iter().map(|j| j.join().unwrap()).sum();
            assert_eq!(sum, (0..20).sum());
            let took = start.elapsed();
            assert!(
                took < HOLD * 10,
                "round {round}: 20 joins took {took:?}: serialized"
            );
        }
    });
}
