//! `fibra::channel`: std's mpsc API that also works between fibers of one thread (where std's
//! own channels cannot wake each other; see README, "Limits").

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use common::Watchdog;

#[test]
fn fifty_fiber_pairs_on_one_thread_ping_pong() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rounds = 200u64;
    let totals = fibra::run(move || {
        let ticks = Rc::new(Cell::new(0u64));
        let done = Rc::new(Cell::new(false));
        let ticker = {
            let (ticks, done) = (ticks.clone(), done.clone());
            fibra::spawn(move || {
                while !done.get() {
                    ticks.set(ticks.get() + 1);
                    fibra::sleep(Duration::from_millis(1));
                }
            })
        };
        let pairs: Vec<_> = (0..50u64)
            .map(|pair| {
                let (to_echo, echo_rx) = fibra::channel::<u64>();
                let (to_caller, caller_rx) = fibra::channel::<u64>();
                let echo = fibra::spawn(move || {
                    for v in echo_rx {
                        // A blocking point on the way: the other pairs run meanwhile.
                        if v % 50 == 0 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        to_caller.send(v + 1).unwrap();
                    }
                });
                let caller = fibra::spawn(move || {
                    let mut v = pair * 1_000_000;
                    for _ in 0..rounds {
                        to_echo.send(v).unwrap();
                        v = caller_rx.recv().unwrap();
                    }
                    drop(to_echo);
                    v - pair * 1_000_000
                });
                (caller, echo)
            })
            .collect();
        let totals: Vec<u64> = pairs
            .into_iter()
            .map(|(caller, echo)| {
                let t = caller.join().unwrap();
                echo.join().unwrap();
                t
            })
            .collect();
        done.set(true);
        ticker.join().unwrap();
        assert!(ticks.get() > 0, "the ticker ran while the pairs talked");
        totals
    });
    assert_eq!(totals, vec![rounds; 50], "no message lost or duplicated");
}

#[test]
fn between_fibers_and_os_threads_both_ways() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (to_thread, thread_rx) = fibra::channel::<u32>();
    let (to_fiber, fiber_rx) = fibra::channel::<u32>();
    let echo = std::thread::spawn(move || {
        for v in thread_rx {
            to_fiber.send(v * 2).unwrap();
        }
    });
    let sum = fibra::run(move || {
        let mut sum = 0;
        for i in 0..500 {
            to_thread.send(i).unwrap();
            sum += fiber_rx.recv().unwrap();
        }
        sum
    });
    echo.join().unwrap();
    assert_eq!(sum, (0..500).map(|i| i * 2).sum::<u32>());
}

#[test]
fn disconnection_and_timeouts_behave_like_std() {
    let _w = Watchdog::new(Duration::from_secs(60));
    fibra::run(|| {
        let (tx, rx) = fibra::channel::<&'static str>();
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        let late = tx.clone();
        let sender = fibra::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            late.send("late").unwrap();
        });
        let start = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("late"));
        sender.join().unwrap();
        drop(tx);
        assert_eq!(rx.recv(), Err(std::sync::mpsc::RecvError));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));

        let (tx, rx) = fibra::channel::<String>();
        drop(rx);
        let err = tx.send("kept".to_string()).unwrap_err();
        assert_eq!(err.0, "kept", "the value comes back");
    });
}

#[test]
fn fibers_on_different_workers() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rt = fibra::Runtime::new(2).unwrap();
    let (tx, rx) = fibra::channel::<usize>();
    let producers: Vec<_> = (0..4)
        .map(|i| {
            let tx = tx.clone();
            rt.spawn_on(i, move || {
                for n in 0..100 {
                    tx.send(n).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let consumer = rt.spawn_on(0, move || rx.into_iter().count());
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 400);
    rt.shutdown();
}
