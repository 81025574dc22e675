//! Resident memory per parked task, side by side: fibra fibers parked in `std::thread::sleep`,
//! tokio tasks parked in `tokio::time::sleep`, OS threads parked in `std::thread::sleep`; then
//! one million parked fibra fibers. Prints a table; run with `cargo bench --bench memory`.
//!
//! Resident memory is read from /proc/self/statm (RSS) once every task is parked; each
//! measurement runs in a fresh child process so that no allocator or stack pool state carries
//! over from one to the next.

use std::time::{Duration, Instant};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Parks `n` tasks of `kind`, waits until all are parked, and prints "bytes_per_task spawn_secs".
fn measure(kind: &str, n: usize) {
    let hold = Duration::from_secs(if n >= 1_000_000 { 20 } else { 5 });
    match kind {
        "fibra" => fibra::run(move || {
            let base = rss_bytes();
            let start = Instant::now();
            for _ in 0..n {
                fibra::spawn(move || std::thread::sleep(hold));
            }
            // Let every fiber run up to its sleep.
            fibra::yield_now();
            fibra::sleep(Duration::from_millis(100));
            let spawn = start.elapsed();
            let per = (rss_bytes() - base) as f64 / n as f64;
            println!("{per:.0} {:.3}", spawn.as_secs_f64());
            std::process::exit(0);
        }),
        "tokio" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let base = rss_bytes();
                let start = Instant::now();
                for _ in 0..n {
                    tokio::spawn(async move { tokio::time::sleep(hold).await });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let spawn = start.elapsed();
                let per = (rss_bytes() - base) as f64 / n as f64;
                println!("{per:.0} {:.3}", spawn.as_secs_f64());
                std::process::exit(0);
            })
        }
        "thread" => {
            let base = rss_bytes();
            let start = Instant::now();
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || std::thread::sleep(hold))
                        .unwrap()
                })
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            let spawn = start.elapsed();
            let per = (rss_bytes() - base) as f64 / n as f64;
            println!("{per:.0} {:.3}", spawn.as_secs_f64());
            drop(handles);
            std::process::exit(0);
        }
        _ => unreachable!(),
    }
}

fn child(kind: &str, n: usize) -> Option<(f64, f64)> {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("FIBRA_MEMORY_CHILD", format!("{kind} {n}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn main() {
    if let Ok(spec) = std::env::var("FIBRA_MEMORY_CHILD") {
        let (kind, n) = spec.split_once(' ').unwrap();
        measure(kind, n.parse().unwrap());
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` / `cargo bench -- --list` probe
    }
    println!("resident memory per parked task (RSS delta / tasks), one child process each");
    println!(
        "{:<8} {:>10} {:>14} {:>12}",
        "kind", "tasks", "bytes/task", "spawn (s)"
    );
    for (kind, n) in [
        ("fibra", 100_000),
        ("tokio", 100_000),
        ("thread", 10_000),
        ("fibra", 1_000_000),
    ] {
        match child(kind, n) {
            Some((per, secs)) => println!("{kind:<8} {n:>10} {per:>14.0} {secs:>12.3}"),
            None => println!("{kind:<8} {n:>10} {:>14} {:>12}", "failed", "-"),
        }
    }
}
