//! Process-wait edge cases, each compared with libc outside fibers: a nonblocking pidfd,
//! ptrace stops reported without WUNTRACED, and the program's SA_RESTART choice for SIGCHLD.

mod common;
use common::Watchdog;
use std::time::{Duration, Instant};

fn fork_sleeper(ms: u32) -> libc::pid_t {
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            libc::usleep(ms * 1000);
            libc::_exit(7);
        }
        pid
    }
}

/// waitid(P_PIDFD) on a pidfd opened with PIDFD_NONBLOCK: glibc/kernel fail at once with EAGAIN
/// while the child runs. Returns (rc, errno, elapsed).
fn nonblock_pidfd_waitid() -> (i32, i32, Duration) {
    let pid = fork_sleeper(1000);
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::O_NONBLOCK) } as i32;
    assert!(fd >= 0);
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let start = Instant::now();
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    let rc = unsafe {
        libc::waitid(
            3, /* P_PIDFD */
            fd as libc::id_t,
            &mut info,
            libc::WEXITED,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap();
    let elapsed = start.elapsed();
    // reap
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    unsafe { libc::close(fd) };
    (rc, errno, elapsed)
}

#[test]
fn nonblocking_pidfd_waitid_is_eagain_in_a_fiber_too() {
    let _w = Watchdog::new(Duration::from_secs(20));
    let outside = nonblock_pidfd_waitid();
    assert_eq!(
        (outside.0, outside.1),
        (-1, libc::EAGAIN),
        "outside: {outside:?}"
    );
    let inside = fibra::run(nonblock_pidfd_waitid);
    assert_eq!(
        (inside.0, inside.1),
        (-1, libc::EAGAIN),
        "inside a fiber: {inside:?}"
    );
}

/// A traced child stops: waitpid(pid, 0) reports the ptrace stop (WIFSTOPPED) even without
/// WUNTRACED.
fn traced_child_stop() -> (i32, bool) {
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                libc::_exit(99); // ptrace not permitted here: nothing to test
            }
            libc::raise(libc::SIGSTOP);
            libc::_exit(3);
        }
        let mut status = 0;
        let r = libc::waitpid(pid, &mut status, 0);
        assert_eq!(r, pid);
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 99 {
            eprintln!("skipped: ptrace is not permitted here");
            return (status, true);
        }
        let stopped = libc::WIFSTOPPED(status);
        if stopped {
            libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
        }
        // reap (outside the measured call)
        let mut s2 = 0;
        while libc::waitpid(pid, &mut s2, 0) == pid
            && !libc::WIFEXITED(s2)
            && !libc::WIFSIGNALED(s2)
        {
            libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
        }
        (status, stopped)
    }
}

#[test]
fn ptrace_stop_of_a_traced_child_is_reported_in_a_fiber() {
    let outside = traced_child_stop();
    assert!(outside.1, "outside: {outside:?}");
    let _w = Watchdog::new(Duration::from_secs(10));
    let inside = fibra::run(traced_child_stop);
    assert!(inside.1, "inside: {inside:?}");
}

extern "C" fn prog_sigchld(_: libc::c_int) {}

/// Outside fibers: a blocking read in the forking thread, and a child that exits. With the
/// program's SIGCHLD handler installed without SA_RESTART, glibc's read fails with EINTR.
fn read_interrupted_by_child_exit() -> (isize, i32) {
    let mut fds = [0; 2];
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    let w = fds[1];
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
        unsafe { libc::write(w, b"x".as_ptr().cast(), 1) };
    });
    let pid = fork_sleeper(100);
    let mut b = [0u8; 1];
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    let r = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
    let e = std::io::Error::last_os_error().raw_os_error().unwrap();
    writer.join().unwrap();
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    (r, e)
}

/// In a process of its own: it installs SIGCHLD handlers and waits for any child.
#[test]
fn fibras_sigchld_handler_keeps_the_programs_sa_restart_choice() {
    if common::ran_in_own_process("fibras_sigchld_handler_keeps_the_programs_sa_restart_choice") {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(30));
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = prog_sigchld as *const () as usize;
        act.sa_flags = 0; // no SA_RESTART: the program wants EINTR
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGCHLD, &act, std::ptr::null_mut());
    }
    let before = read_interrupted_by_child_exit();
    assert_eq!(before, (-1, libc::EINTR), "baseline");
    // A fiber waits for any child: fibra installs its SIGCHLD handler in front of ours.
    fibra::run(|| {
        let pid = fork_sleeper(50);
        let mut st = 0;
        // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
        assert_eq!(unsafe { libc::waitpid(-1, &mut st, 0) }, pid);
    });
    let after = read_interrupted_by_child_exit();
    assert_eq!(after, (-1, libc::EINTR), "after a fiber's waitpid(-1)");
}

#[test]
fn waitid_with_a_null_info_parks_only_the_fiber() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let (r, turns) = fibra::run(|| {
        let done = std::rc::Rc::new(std::cell::Cell::new(false));
        let d = done.clone();
        let ticker = fibra::spawn(move || {
            let mut turns = 0;
            while !d.get() {
                turns += 1;
                fibra::sleep(Duration::from_millis(5));
            }
            turns
        });
        let pid = fork_sleeper(200);
        // SAFETY: Linux accepts a null siginfo for waitid.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                std::ptr::null_mut(),
                libc::WEXITED,
            )
        };
        done.set(true);
        (r, ticker.join().unwrap())
    });
    assert_eq!(r, 0);
    assert!(
        turns > 10,
        "the other fiber ran only {turns} times while waitid waited"
    );
}
