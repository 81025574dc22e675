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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

#[test]
fn fiber_to_fiber_mpsc_probe() {
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let (tx, rx) = mpsc::channel::<u32>();
        let r = fibra::spawn(move || rx.recv());
        let t = Instant::now();
        fibra::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            tx.send(7).unwrap();
            thread::sleep(Duration::from_millis(2000));
            drop(tx);
        });
        let got = r.join().unwrap();
        eprintln!("got {got:?} after {:?}", t.elapsed());
    });
}
