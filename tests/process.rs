//! Process waits from fibers: std::process and the raw wait calls park the fiber, not the thread.

mod common;

use std::cell::Cell;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::Watchdog;

/// Runs `work` in a fiber beside a fiber that counts its own turns; returns `work`'s result and
/// how many turns the counter got while `work` waited.
fn with_progress<T: 'static>(work: impl FnOnce() -> T + 'static) -> (T, u64) {
    fibra::run(move || {
        let done = Rc::new(Cell::new(false));
        let d = done.clone();
        let worker = fibra::spawn(move || {
            let r = work();
            d.set(true);
            r
        });
        let counter = fibra::spawn(move || {
            let mut turns = 0u64;
            while !done.get() {
                turns += 1;
                fibra::sleep(Duration::from_millis(1));
            }
            turns
        });
        (worker.join().unwrap(), counter.join().unwrap())
    })
}

fn thread_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn five_sleep_1_children_take_about_one_second() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let start = Instant::now();
    let codes = fibra::run(|| {
        let handles: Vec<_> = (0..5)
            .map(|_| fibra::spawn(|| Command::new("sleep").arg("1").status().unwrap().code()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(codes, vec![Some(0); 5]);
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "five concurrent `sleep 1` took {elapsed:?} (serially: 5 s)"
    );
}

#[test]
fn a_hundred_children_without_a_thread_each() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let before = thread_count();
    let start = Instant::now();
    let (statuses, max_threads) = fibra::run(move || {
        let handles: Vec<_> = (0..100)
            .map(|_| fibra::spawn(|| Command::new("sleep").arg("1").status().unwrap()))
            .collect();
        let probe = fibra::spawn(move || {
            let mut max = 0;
            for _ in 0..5 {
                fibra::sleep(Duration::from_millis(100));
                max = max.max(thread_count());
            }
            max
        });
        let statuses: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (statuses, probe.join().unwrap())
    });
    assert!(statuses.iter().all(|s| s.success()));
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(10),
        "100 concurrent `sleep 1` took {elapsed:?}"
    );
    // Other tests of this binary may run threads of their own meanwhile; 100 waits on threads
    // would add 100.
    assert!(
        max_threads < before + 20,
        "threads went from {before} to {max_threads}"
    );
}

#[test]
fn a_mebibyte_of_output_is_captured_while_others_run() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (output, turns) = with_progress(|| {
        Command::new("sh")
            .arg("-c")
            .arg("sleep 0.2; head -c 1048576 /dev/zero; head -c 65536 /dev/zero >&2; sleep 0.1")
            .output()
            .unwrap()
    });
    assert!(output.status.success());
    assert_eq!(output.stdout.len(), 1 << 20);
    assert_eq!(output.stderr.len(), 65536);
    assert!(turns > 10, "the other fiber ran only {turns} times");
}

#[test]
fn exit_codes_and_signals_are_reported_exactly() {
    let _w = Watchdog::new(Duration::from_secs(60));
    fibra::run(|| {
        let status = Command::new("sh").arg("-c").arg("exit 3").status().unwrap();
        assert_eq!(status.code(), Some(3));

        let mut child = Command::new("sleep").arg("10").spawn().unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "try_wait (WNOHANG) does not park or reap"
        );
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(status.code(), None);

        let output = Command::new("sh")
            .arg("-c")
            .arg("echo out; echo err >&2; exit 5")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(5));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");

        let child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, b"piped through").unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.stdout, b"piped through");
    });
}

fn raw_status_of(command: &str) -> libc::c_int {
    // Reaped with a raw waitpid below, on purpose: that is what is under test.
    #[allow(clippy::zombie_processes)]
    let child = Command::new("sh").arg("-c").arg(command).spawn().unwrap();
    let mut status = 0;
    // SAFETY: a valid out-pointer.
    let r = unsafe { libc::waitpid(child.id() as libc::pid_t, &mut status, 0) };
    assert_eq!(r, child.id() as libc::pid_t);
    status
}

#[test]
fn status_words_match_outside_and_inside_fibers() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let commands = [
        "exit 0",
        "exit 77",
        "kill -TERM $$",
        "kill -KILL $$",
        "kill -ABRT $$",
    ];
    let outside: Vec<_> = commands.iter().map(|c| raw_status_of(c)).collect();
    let inside = fibra::run(|| {
        commands
            .iter()
            .map(|c| raw_status_of(c))
            .collect::<Vec<_>>()
    });
    assert_eq!(outside, inside);
    assert!(libc::WIFEXITED(inside[1]) && libc::WEXITSTATUS(inside[1]) == 77);
    assert!(libc::WIFSIGNALED(inside[2]) && libc::WTERMSIG(inside[2]) == libc::SIGTERM);
}

#[test]
fn waiting_for_a_non_child_is_echild() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let wait_for_init = || {
        let mut status = 0;
        // SAFETY: a valid out-pointer.
        let r = unsafe { libc::waitpid(1, &mut status, 0) };
        (r, std::io::Error::last_os_error().raw_os_error())
    };
    let outside = wait_for_init();
    let inside = fibra::run(move || fibra::spawn(wait_for_init).join().unwrap());
    assert_eq!(outside, (-1, Some(libc::ECHILD)));
    assert_eq!(inside, outside);
}

#[test]
fn every_wait_form_parks_only_the_fiber() {
    // The any-child forms would reap other tests' children: run in a process of its own.
    if common::ran_in_own_process("every_wait_form_parks_only_the_fiber") {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    type WaitFn = fn(libc::pid_t) -> (libc::pid_t, libc::c_int);
    let forms: Vec<(&str, WaitFn)> = vec![
        ("waitpid(pid)", |pid| {
            let mut s = 0;
            // SAFETY: valid out-pointer.
            (unsafe { libc::waitpid(pid, &mut s, 0) }, s)
        }),
        ("waitpid(-1)", |_| {
            let mut s = 0;
            // SAFETY: valid out-pointer.
            (unsafe { libc::waitpid(-1, &mut s, 0) }, s)
        }),
        ("wait4(pid, rusage)", |pid| {
            let mut s = 0;
            // SAFETY: valid out-pointers.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            (unsafe { libc::wait4(pid, &mut s, 0, &mut usage) }, s)
        }),
        ("wait()", |_| {
            let mut s = 0;
            // SAFETY: valid out-pointer.
            (unsafe { libc::wait(&mut s) }, s)
        }),
        ("waitid(P_PID)", |pid| {
            // SAFETY: valid out-pointer; a zeroed siginfo is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let r =
                unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED) };
            assert_eq!(r, 0);
            // SAFETY: filled in by waitid for an exited child.
            unsafe { (info.si_pid(), info.si_status()) }
        }),
        ("waitid(P_ALL)", |_| {
            // SAFETY: as above.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED) };
            assert_eq!(r, 0);
            // SAFETY: as above.
            unsafe { (info.si_pid(), info.si_status()) }
        }),
    ];
    for (name, wait) in forms {
        // Fork a child of our own that exits with 9 after 200 ms. Forking (not Command) keeps
        // std's own Child bookkeeping out of it; this process has no other children.
        let ((pid, status), turns) = with_progress(move || {
            // SAFETY: the child only sleeps and exits, both async-signal-safe.
            let child = unsafe { libc::fork() };
            if child == 0 {
                // SAFETY: async-signal-safe calls in the forked child.
                unsafe {
                    libc::usleep(200_000);
                    libc::_exit(9);
                }
            }
            let (pid, status) = wait(child);
            assert_eq!(pid, child, "{name}");
            (pid, status)
        });
        assert!(pid > 0);
        let code = if name.starts_with("waitid") {
            status
        } else {
            libc::WEXITSTATUS(status)
        };
        assert_eq!(code, 9, "{name}");
        assert!(
            turns > 20,
            "{name}: the other fiber ran only {turns} times while it waited"
        );
    }
}

#[test]
fn a_child_forked_from_a_fiber_does_plain_blocking_io() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let ((status, message), turns) = with_progress(|| {
        let mut fds = [0; 2];
        // SAFETY: valid out-array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child runs only libc calls and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // In the child no scheduler exists: these go straight to libc and block the
            // (only) thread, as they should.
            std::thread::sleep(Duration::from_millis(100));
            let msg = b"hello from the child";
            // SAFETY: writing a valid buffer to our pipe, then exiting without unwinding.
            unsafe {
                libc::write(fds[1], msg.as_ptr().cast(), msg.len());
                libc::_exit(if fibra::in_fiber() { 1 } else { 0 });
            }
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut buf = [0u8; 64];
        // SAFETY: reading into a valid buffer (parks this fiber until the child writes).
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: closing our read end.
        unsafe { libc::close(fds[0]) };
        let mut status = 0;
        // SAFETY: valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        (status, buf[..n.max(0) as usize].to_vec())
    });
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child saw no fiber and no scheduler"
    );
    assert_eq!(message, b"hello from the child");
    assert!(turns > 20, "the other fiber ran only {turns} times");
}

#[test]
fn wnohang_never_parks() {
    fibra::run(|| {
        let mut child = Command::new("sleep").arg("0.3").spawn().unwrap();
        let mut status = 0;
        // SAFETY: valid out-pointer.
        let r = unsafe { libc::waitpid(child.id() as libc::pid_t, &mut status, libc::WNOHANG) };
        assert_eq!(r, 0);
        assert!(child.wait().unwrap().success());
    });
}
