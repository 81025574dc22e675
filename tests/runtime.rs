//! All cores: workers, spawning across them, cross-worker wakes, joins, shutdown.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::Watchdog;

#[test]
fn fibers_on_different_workers_ping_pong_over_std_mpsc() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rt = fibra::Runtime::new(2).unwrap();
    let (to_b, from_a) = mpsc::channel::<u64>();
    let (to_a, from_b) = mpsc::channel::<u64>();
    let b = rt.spawn_on(1, move || {
        let mut n = 0;
        for v in from_a {
            n += 1;
            to_a.send(v + 1).unwrap();
        }
        (fibra::worker_index(), n)
    });
    let a = rt.spawn_on(0, move || {
        let mut v = 0;
        for _ in 0..2000 {
            to_b.send(v).unwrap();
            v = from_b.recv().unwrap();
        }
        (fibra::worker_index(), v)
    });
    assert_eq!(a.join().unwrap(), (Some(0), 2000));
    assert_eq!(b.join().unwrap(), (Some(1), 2000));
    rt.shutdown();
}

#[test]
fn a_mutex_shared_across_workers_while_other_fibers_run() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rt = fibra::Runtime::new(2).unwrap();
    let counter = Arc::new(Mutex::new(0u64));
    let progress = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let counter = counter.clone();
            rt.spawn_on(i, move || {
                for _ in 0..5 {
                    let mut guard = counter.lock().unwrap();
                    // Held across a sleep: the other fibers wanting it park, others run.
                    std::thread::sleep(Duration::from_millis(1));
                    *guard += 1;
                }
            })
        })
        .collect();
    let ticker = {
        let progress = progress.clone();
        rt.spawn_on(0, move || {
            for _ in 0..20 {
                fibra::sleep(Duration::from_millis(2));
                progress.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for h in handles {
        h.join().unwrap();
    }
    ticker.join().unwrap();
    assert_eq!(*counter.lock().unwrap(), 100);
    assert_eq!(progress.load(Ordering::Relaxed), 20);
    rt.shutdown();
}

#[test]
fn joins_across_workers_and_from_plain_threads() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rt = fibra::Runtime::new(2).unwrap();
    let handle = rt.handle();
    let outer = rt.spawn_on(0, move || {
        let inner = handle.spawn_on(1, || {
            std::thread::sleep(Duration::from_millis(50));
            (fibra::worker_index(), "from worker 1")
        });
        // Joining parks this fiber on worker 0; a sibling keeps running meanwhile.
        let sibling = fibra::spawn(|| {
            let mut turns = 0;
            for _ in 0..10 {
                fibra::sleep(Duration::from_millis(1));
                turns += 1;
            }
            turns
        });
        let got = inner.join().unwrap();
        (got, sibling.join().unwrap())
    });
    assert_eq!(outer.join().unwrap(), ((Some(1), "from worker 1"), 10));
    rt.shutdown();
}

#[test]
fn a_panic_on_one_worker_does_not_stop_the_others() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rt = fibra::Runtime::new(2).unwrap();
    let bad = rt.spawn_on(0, || -> u32 { panic!("worker 0 fiber fails") });
    let err = bad.join().unwrap_err();
    assert_eq!(common::panic_message(&*err), "worker 0 fiber fails");
    let results: Vec<_> = (0..4).map(|i| rt.spawn_on(i, move || i * 2)).collect();
    let results: Vec<_> = results.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results, vec![0, 2, 4, 6]);
    rt.shutdown();
}

#[test]
fn spawn_places_work_on_the_least_loaded_worker() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rt = fibra::Runtime::new(2).unwrap();
    let handles: Vec<_> = (0..10)
        .map(|_| {
            rt.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                fibra::worker_index().unwrap()
            })
        })
        .collect();
    let mut per_worker = [0; 2];
    for h in handles {
        per_worker[h.join().unwrap()] += 1;
    }
    assert_eq!(per_worker, [5, 5]);
    rt.shutdown();
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn shutdown_now_with_fibers_parked_in_sockets_and_sleeps() {
    if common::ran_in_own_process("shutdown_now_with_fibers_parked_in_sockets_and_sleeps") {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let fds_before = open_fds();
    let rt = fibra::Runtime::new(2).unwrap();
    // The acceptors wait here; nobody connects.
    let listener = Arc::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    // The readers connect here; nobody ever writes to them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let mut handles = Vec::new();
    for i in 0..2 {
        let listener = listener.clone();
        handles.push(rt.spawn_on(i, move || {
            // Parked in accept until cancelled.
            listener.accept().map(|_| ()).map_err(|e| e.raw_os_error())
        }));
        handles.push(rt.spawn_on(i, || {
            std::thread::sleep(Duration::from_secs(60));
            Ok(())
        }));
        handles.push(rt.spawn_on(i, move || {
            let mut conn = TcpStream::connect(silent_addr).unwrap();
            let mut buf = [0u8; 8];
            // Parked in a read nobody answers.
            conn.read(&mut buf)
                .map(|_| ())
                .map_err(|e| e.raw_os_error())
        }));
    }
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    rt.shutdown_now();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        start.elapsed()
    );
    for h in handles {
        assert!(h.is_finished());
        let err = h.join().unwrap_err();
        assert!(err.is::<fibra::Cancelled>());
    }
    drop(listener);
    drop(silent);
    // Nothing leaked: every fd the runtime and its fibers opened is closed again.
    assert_eq!(open_fds(), fds_before);
}

#[test]
fn graceful_shutdown_waits_for_fibers() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rt = fibra::Runtime::new(2).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    for i in 0..10 {
        let done = done.clone();
        drop(rt.spawn_on(i, move || {
            std::thread::sleep(Duration::from_millis(50));
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let handle = rt.handle();
    rt.shutdown();
    assert_eq!(done.load(Ordering::Relaxed), 10);
    // After shutdown, spawning reports cancellation instead of losing the work silently.
    assert!(handle.is_stopping());
    assert!(
        handle
            .spawn(|| ())
            .join()
            .unwrap_err()
            .is::<fibra::Cancelled>()
    );
}

#[test]
fn remote_cancel_reaches_a_fiber_on_another_worker() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rt = fibra::Runtime::new(2).unwrap();
    let sleeper = rt.spawn_on(1, || std::thread::sleep(Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    sleeper.cancel();
    assert!(sleeper.join().unwrap_err().is::<fibra::Cancelled>());
    assert!(start.elapsed() < Duration::from_secs(5));
    rt.shutdown();
}

#[test]
fn every_worker_accepts_on_its_own_reuseport_listener() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rt = fibra::Runtime::new(2).unwrap();
    let probe = fibra::reuseport_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let (ready_tx, ready_rx) = mpsc::channel();
    let ready_tx = Mutex::new(ready_tx);
    let servers = rt.run_on_all(move |worker| {
        let listener = fibra::reuseport_listener(addr).unwrap();
        ready_tx.lock().unwrap().send(()).unwrap();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            fibra::spawn(move || {
                let mut buf = [0u8; 1];
                if conn.read_exact(&mut buf).is_ok() {
                    let _ = conn.write_all(&[worker as u8]);
                }
            });
        }
    });
    ready_rx.recv().unwrap();
    ready_rx.recv().unwrap();
    let mut seen = [0usize; 2];
    for _ in 0..200 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"?").unwrap();
        let mut w = [0u8; 1];
        c.read_exact(&mut w).unwrap();
        seen[w[0] as usize] += 1;
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "the kernel spread connections over both workers: {seen:?}"
    );
    rt.shutdown_now();
    for s in servers {
        assert!(s.join().unwrap_err().is::<fibra::Cancelled>());
    }
}

#[test]
fn spawning_onto_the_callers_own_worker() {
    // The worker's inbox is read by its root fiber: a send from a fiber of the same worker must
    // wake it (std's mpsc would not: it never wakes a receiver on the sending thread).
    let _w = Watchdog::new(Duration::from_secs(30));
    let rt = fibra::Runtime::new(1).unwrap();
    let handle = rt.handle();
    let outer = rt.spawn_on(0, move || {
        std::thread::sleep(Duration::from_millis(20)); // the root is back in its recv
        let inner = handle.spawn_on(0, || 7u32);
        let from_current = fibra::Handle::current().unwrap().spawn(|| 8u32);
        inner.join().unwrap() + from_current.join().unwrap()
    });
    assert_eq!(outer.join().unwrap(), 15);
    let sleeper = rt.spawn_on(0, || std::thread::sleep(Duration::from_secs(30)));
    let canceller = {
        let sleeper = std::sync::Arc::new(sleeper);
        let s = sleeper.clone();
        let c = rt.spawn_on(0, move || {
            std::thread::sleep(Duration::from_millis(20));
            s.cancel();
        });
        (sleeper, c)
    };
    canceller.1.join().unwrap();
    let sleeper = std::sync::Arc::try_unwrap(canceller.0).ok().unwrap();
    assert!(sleeper.join().unwrap_err().is::<fibra::Cancelled>());
    rt.shutdown();
}

#[test]
fn shutdown_now_also_cancels_fibers_spawned_while_cancelling() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let rt = fibra::Runtime::new(1).unwrap();
    let (spawned_tx, spawned_rx) = mpsc::channel();
    let parent = rt.spawn_on(0, move || {
        // Cancelled in this sleep; its clean-up then starts a child that would sleep for 60 s.
        std::thread::sleep(Duration::from_secs(60));
        let child = fibra::spawn(|| {
            let t = Instant::now();
            std::thread::sleep(Duration::from_secs(60));
            t.elapsed()
        });
        spawned_tx.send(()).unwrap();
        child.join()
    });
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    rt.shutdown_now();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        start.elapsed()
    );
    spawned_rx.recv().unwrap();
    assert!(parent.join().unwrap_err().is::<fibra::Cancelled>());
}
