//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Aborts the whole test process if the guard is still alive after `limit`, so that a hang fails
/// fast in CI instead of running into the job's time limit. Drop the guard when the test is done.
pub struct Watchdog {
    done: Arc<AtomicBool>,
}

impl Watchdog {
    #[track_caller]
    pub fn new(limit: Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let location = std::panic::Location::caller();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let start = std::time::Instant::now();
                while start.elapsed() < limit {
                    if flag.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                eprintln!("watchdog: test at {location} still running after {limit:?}; aborting");
                std::process::abort();
            })
            .expect("spawn watchdog thread");
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Runs the current test binary again with only `test_name`, with `FIBRA_CHILD=1` set, and
/// returns its output; for tests whose subject aborts the process.
pub fn run_child(test_name: &str) -> std::process::Output {
    let exe = std::env::current_exe().expect("test binary path");
    std::process::Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env("FIBRA_CHILD", "1")
        .output()
        .expect("re-run the test binary")
}

/// For a test that must run alone in a process (it changes process-wide state, or counts fds
/// or children): in the test harness's process, runs the test in a child process, asserts that
/// it passed and returns `true` (the caller then returns); in that child, returns `false`.
#[track_caller]
pub fn ran_in_own_process(test_name: &str) -> bool {
    if is_child() {
        return false;
    }
    let out = run_child(test_name);
    assert!(
        out.status.success(),
        "{test_name} failed in its own process:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Whether this process is the child started by [`run_child`].
pub fn is_child() -> bool {
    std::env::var_os("FIBRA_CHILD").is_some()
}

/// The text of a panic payload (`&str` or `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}
