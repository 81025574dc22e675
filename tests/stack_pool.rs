//! The stack pool keeps the stacks fibers used warm (pages resident) up to its bound, also after
//! a burst of fibers carved many stacks that were never used.

mod common;
use common::Watchdog;
use std::time::Duration;

fn minflt() -> i64 {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    ru.ru_minflt
}

fn deep() {
    let mut buf = [0u8; 64 * 1024];
    std::hint::black_box(&mut buf);
}

/// Runs 200 short fibers one after the other, each touching 64 KiB of stack; returns the minor
/// faults they caused.
fn sequential_faults() -> i64 {
    // warm up one stack first
    fibra::spawn(deep).join().unwrap();
    let before = minflt();
    for _ in 0..200 {
        fibra::spawn(deep).join().unwrap();
    }
    minflt() - before
}

#[test]
fn warm_stacks_are_kept_after_a_burst() {
    let _w = Watchdog::new(Duration::from_secs(20));
    fibra::run(|| {
        let quiet = sequential_faults();
        // A burst of 300 concurrent fibers: the pool carves chunks of 16, 32, 64, 128, 256.
        let hs: Vec<_> = (0..300)
            .map(|_| fibra::spawn(|| std::thread::sleep(Duration::from_millis(20))))
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let after_burst = sequential_faults();
        eprintln!("minor faults for 200 fibers: before burst {quiet}, after burst {after_burst}");
        assert!(
            after_burst < quiet + 200,
            "after a burst every finished stack is MADV_DONTNEEDed (free list counts never-used stacks): {quiet} -> {after_burst} faults"
        );
    });
}
