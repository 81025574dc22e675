//! Shared by the benches: the OS-thread baseline every comparison needs.

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Times `round_trips` std mpsc round trips between the caller and an echo thread. Called from
/// a fiber, the caller's side parks the fiber (fiber ↔ OS thread); from a plain thread, it is
/// the OS-thread ↔ OS-thread baseline.
pub fn std_mpsc_round_trips_with_echo_thread(round_trips: u64) -> Duration {
    let (to_echo, from_caller) = mpsc::channel::<u64>();
    let (to_caller, from_echo) = mpsc::channel::<u64>();
    let echo = std::thread::spawn(move || {
        for v in from_caller {
            to_caller.send(v).unwrap();
        }
    });
    let start = Instant::now();
    for i in 0..round_trips {
        to_echo.send(i).unwrap();
        black_box(from_echo.recv().unwrap());
    }
    let elapsed = start.elapsed();
    drop(to_echo);
    echo.join().unwrap();
    elapsed
}
