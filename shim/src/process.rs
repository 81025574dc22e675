//! Interposed process waits: `waitpid`, `wait4`, `waitid`, `wait`.
//!
//! In a fiber, a wait without `WNOHANG` becomes: try the real call with `WNOHANG`; if no child
//! has changed state yet, park until one may have, and try again. The real call always does the
//! reaping, so status words, `rusage` and `siginfo` are exactly the kernel's, and so are the
//! errors (`ECHILD` for a pid that is not our child, `EINVAL` for bad options).
//!
//! What the fiber parks on:
//! - **A specific child waited for its exit** (`waitpid(pid > 0)`, `wait4`, `waitid(P_PID)`
//!   with only `WEXITED`; `waitid(P_PIDFD)`): a pidfd (`pidfd_open`), readable once the child
//!   has exited. Precise, no global state, no signal handler.
//! - **Any child, a process group, or stop/continue events** (`-1`, `0`, `< -1`, `P_ALL`,
//!   `P_PGID`, `WUNTRACED`, `WCONTINUED`): a process-wide `eventfd` written by a `SIGCHLD`
//!   handler that fibra installs on first such wait, in front of the previous handler (which it
//!   still calls). A pidfd cannot express these; a signalfd would require blocking `SIGCHLD` in
//!   every thread of the process, which fibra cannot impose. The handler is installed with
//!   `SA_RESTART`; when the program ignores `SIGCHLD` (`SIG_IGN` or `SA_NOCLDWAIT`, which make
//!   the kernel reap children itself) fibra installs nothing and such waits block the thread,
//!   as libc's do. Because a program may later replace fibra's handler, these waits also
//!   re-check every 250 ms: a lost signal costs latency, never a hang.
//!
//! Interrupted waits (a `fibra::timeout` deadline, a cancellation) fail with the errno the hook
//! gives (`ETIMEDOUT`, `ECANCELED`), not `EINTR`: std's `Child::wait` retries `waitpid` on
//! `EINTR`, so an `EINTR` inside an expired scope would make it spin forever.

use std::os::fd::RawFd;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::dispatch::with_hook;
use crate::hook::{Deadline, Errno, Hook};
use crate::real;

/// How often a wait parked on the SIGCHLD eventfd re-checks without a signal.
const SIGCHLD_RECHECK_NS: u64 = 250_000_000;

/// The SIGCHLD eventfd, or -1 (not installed) / -2 (the program ignores SIGCHLD).
static SIGCHLD_FD: AtomicI32 = AtomicI32::new(-1);
/// Counts SIGCHLDs, so that a wait can tell whether one arrived between its check and its park.
static SIGCHLD_COUNT: AtomicU64 = AtomicU64::new(0);
static SIGCHLD_INSTALL: Once = Once::new();
static mut PREVIOUS_SIGCHLD: std::mem::MaybeUninit<libc::sigaction> =
    std::mem::MaybeUninit::zeroed();

/// Outcome of one non-blocking attempt.
enum Attempt<T> {
    /// The call completed (successfully or with an error): return this.
    Done(T),
    /// No child has changed state yet.
    NotYet,
}

/// What to park on between attempts.
enum WaitOn {
    /// A pidfd for one child, owned by the wait (closed afterwards) or borrowed from the caller.
    Pidfd { fd: RawFd, owned: bool },
    /// The SIGCHLD eventfd.
    Sigchld(RawFd),
    /// Nothing usable: the caller must block in libc.
    Blocking,
}

fn pidfd_open(pid: libc::pid_t) -> Option<RawFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns an fd or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    (fd >= 0).then_some(fd as RawFd)
}

fn sigchld_eventfd() -> Option<RawFd> {
    SIGCHLD_INSTALL.call_once(install_sigchld_handler);
    let fd = SIGCHLD_FD.load(Ordering::Acquire);
    (fd >= 0).then_some(fd)
}

fn install_sigchld_handler() {
    // SAFETY: querying the current disposition into a valid out-pointer.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut current) };
    if current.sa_sigaction == libc::SIG_IGN || current.sa_flags & libc::SA_NOCLDWAIT != 0 {
        SIGCHLD_FD.store(-2, Ordering::Release);
        return;
    }
    // SAFETY: creating an eventfd; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return;
    }
    SIGCHLD_FD.store(fd, Ordering::Release);
    // SAFETY: installing a SA_SIGINFO handler with the matching signature, after storing the
    // previous action (queried above) for it to chain to; `PREVIOUS_SIGCHLD` is written only here,
    // once, before the handler can run.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigchld as *const () as usize;
        // Keep the program's choice about restarting calls its handler interrupts.
        let restart = if current.sa_sigaction == libc::SIG_DFL {
            libc::SA_RESTART
        } else {
            current.sa_flags & libc::SA_RESTART
        };
        action.sa_flags = libc::SA_SIGINFO | restart;
        libc::sigemptyset(&mut action.sa_mask);
        // The previous action is stored before ours is installed: a SIGCHLD taken on another
        // thread right after the switch must find it.
        (&raw mut PREVIOUS_SIGCHLD).write(std::mem::MaybeUninit::new(current));
        libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut());
    }
}

extern "C" fn on_sigchld(
    signum: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let saved_errno = crate::errno();
    SIGCHLD_COUNT.fetch_add(1, Ordering::AcqRel);
    let fd = SIGCHLD_FD.load(Ordering::Acquire);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd through libc's real `write` (async-signal-safe,
        // and never through a hook).
        unsafe { real::write(fd, (&one as *const u64).cast(), 8) };
    }
    // SAFETY: the previous action was stored before this handler was installed.
    let previous = unsafe { std::ptr::read(&raw const PREVIOUS_SIGCHLD).assume_init() };
    // SAFETY: `info` is the kernel's siginfo for this SIGCHLD.
    let code = unsafe { (*info).si_code };
    let stop_or_continue = code == libc::CLD_STOPPED || code == libc::CLD_CONTINUED;
    if !(stop_or_continue && previous.sa_flags & libc::SA_NOCLDSTOP != 0) {
        // SAFETY: in the SIGCHLD handler, with the kernel's arguments and SIGCHLD's previous
        // action. SIG_DFL and SIG_IGN need nothing (SIG_IGN was ruled out when installing).
        unsafe { crate::signal::call_previous(&previous, signum, info, context) };
    }
    crate::set_errno(saved_errno);
}

/// Picks what a wait for `pid` (waitpid numbering) with `options` parks on.
fn wait_target(pid: libc::pid_t, options: libc::c_int) -> WaitOn {
    let exit_only = options & (libc::WUNTRACED | libc::WCONTINUED) == 0;
    if pid > 0
        && exit_only
        && let Some(fd) = pidfd_open(pid)
    {
        return WaitOn::Pidfd { fd, owned: true };
    }
    match sigchld_eventfd() {
        Some(fd) => WaitOn::Sigchld(fd),
        None => WaitOn::Blocking,
    }
}

/// The loop shared by every wait: attempt, park, attempt again. `target` is only worked out
/// once the first attempt found nothing ready, so a non-child fails at once without a pidfd or
/// a signal handler. `None`: the caller must block in libc instead.
fn wait_loop<T>(
    hook: &dyn Hook,
    target: impl FnOnce() -> WaitOn,
    mut attempt: impl FnMut() -> Attempt<T>,
    interrupted: impl Fn(Errno) -> T,
) -> Option<T> {
    let mut signals_before = SIGCHLD_COUNT.load(Ordering::Acquire);
    if let Attempt::Done(result) = attempt() {
        return Some(result);
    }
    let target = target();
    let result = loop {
        let parked = match target {
            // Bounded: a traced child's ptrace stops are reported without WUNTRACED, and a
            // pidfd only becomes readable at exit.
            WaitOn::Pidfd { fd, .. } => {
                hook.wait_child(fd, Some(Deadline::now().after(SIGCHLD_RECHECK_NS)))
            }
            // A child changed state after the attempt looked: look again before parking.
            WaitOn::Sigchld(_) if SIGCHLD_COUNT.load(Ordering::Acquire) != signals_before => Ok(()),
            WaitOn::Sigchld(fd) => {
                hook.wait_child(fd, Some(Deadline::now().after(SIGCHLD_RECHECK_NS)))
            }
            WaitOn::Blocking => return None,
        };
        if let Err(errno) = parked {
            break interrupted(errno);
        }
        signals_before = SIGCHLD_COUNT.load(Ordering::Acquire);
        if let Attempt::Done(result) = attempt() {
            break result;
        }
    };
    if let WaitOn::Pidfd { fd, owned: true } = target {
        // Through the interposed `close`, which retires the fd's registration in the fd table
        // (so the next pidfd with this number gets registered afresh).
        // SAFETY: closing the pidfd this wait opened.
        unsafe { crate::net::close(fd) };
    }
    Some(result)
}

/// A wait call's outcome inside the hook bracket: the return value and, for -1, the errno to
/// set once the bracket (which restores the caller's errno) has closed.
type Outcome = (libc::c_int, libc::c_int);

/// The outcome of a real call just made: its result, with errno captured if it failed.
fn outcome(r: libc::c_int) -> Outcome {
    (r, if r == -1 { crate::errno() } else { 0 })
}

fn interrupted(errno: Errno) -> Outcome {
    (-1, errno.0)
}

/// Sets errno for a failed outcome and returns the result.
fn deliver((r, errno): Outcome) -> libc::c_int {
    if r == -1 {
        crate::set_errno(errno);
    }
    r
}

/// `waitpid` and `wait4` in a fiber; `None` when the call must go to libc as is.
fn hooked_wait4(
    pid: libc::pid_t,
    status: *mut libc::c_int,
    options: libc::c_int,
    rusage: *mut libc::rusage,
) -> Option<Outcome> {
    if options & libc::WNOHANG != 0 {
        return None;
    }
    with_hook(|hook| {
        let attempt = || {
            // SAFETY: as above.
            match unsafe { real::wait4(pid, status, options | libc::WNOHANG, rusage) } {
                0 => Attempt::NotYet,
                r => Attempt::Done(outcome(r)),
            }
        };
        wait_loop(hook, || wait_target(pid, options), attempt, interrupted)
    })
    .flatten()
}

/// Interposed `waitpid(2)`.
///
/// # Safety
/// libc's contract: `status` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn waitpid(
    pid: libc::pid_t,
    status: *mut libc::c_int,
    options: libc::c_int,
) -> libc::pid_t {
    if let Some(r) = hooked_wait4(pid, status, options, std::ptr::null_mut()) {
        return deliver(r);
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::waitpid(pid, status, options) }
}

/// Interposed `wait4(2)`.
///
/// # Safety
/// libc's contract: `status` and `rusage` are null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wait4(
    pid: libc::pid_t,
    status: *mut libc::c_int,
    options: libc::c_int,
    rusage: *mut libc::rusage,
) -> libc::pid_t {
    if let Some(r) = hooked_wait4(pid, status, options, rusage) {
        return deliver(r);
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::wait4(pid, status, options, rusage) }
}

/// Interposed `wait(2)`: `waitpid(-1, status, 0)`.
///
/// # Safety
/// libc's contract: `status` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wait(status: *mut libc::c_int) -> libc::pid_t {
    if let Some(r) = hooked_wait4(-1, status, 0, std::ptr::null_mut()) {
        return deliver(r);
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::wait(status) }
}

const P_PIDFD: libc::idtype_t = 3;

/// Interposed `waitid(2)`.
///
/// # Safety
/// libc's contract: `info` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn waitid(
    idtype: libc::idtype_t,
    id: libc::id_t,
    info: *mut libc::siginfo_t,
    options: libc::c_int,
) -> libc::c_int {
    // A pidfd opened with PIDFD_NONBLOCK makes the kernel fail with EAGAIN at once.
    let nonblocking_pidfd = idtype == P_PIDFD
        // SAFETY: F_GETFL on any number is harmless (an invalid one gives -1, O_NONBLOCK unset).
        && unsafe { real::fcntl(id as RawFd, libc::F_GETFL, 0) } & libc::O_NONBLOCK != 0;
    if options & libc::WNOHANG == 0 && !nonblocking_pidfd {
        // Linux accepts a null `info`; the WNOHANG attempts still need one to tell "reaped"
        // from "not yet", so they use a local one the caller never sees.
        // SAFETY: an all-zero siginfo_t is a valid value.
        let mut local: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let info = if info.is_null() { &raw mut local } else { info };
        let hooked = with_hook(|hook| {
            let attempt = || {
                // SAFETY: `info` is writable (the caller's, by libc's contract, or `local`).
                // POSIX reports "no child ready" under WNOHANG as success with si_pid zero, so
                // clear it first.
                unsafe {
                    std::ptr::write_bytes(info, 0, 1);
                    match real::waitid(idtype, id, info, options | libc::WNOHANG) {
                        0 if (*info).si_pid() == 0 => Attempt::NotYet,
                        r => Attempt::Done(outcome(r)),
                    }
                }
            };
            let exit_only = options & (libc::WSTOPPED | libc::WCONTINUED) == 0;
            let target = move || match idtype {
                P_PIDFD if exit_only => WaitOn::Pidfd {
                    fd: id as RawFd,
                    owned: false,
                },
                libc::P_PID => wait_target(
                    id as libc::pid_t,
                    if exit_only { 0 } else { libc::WUNTRACED },
                ),
                _ => match sigchld_eventfd() {
                    Some(fd) => WaitOn::Sigchld(fd),
                    None => WaitOn::Blocking,
                },
            };
            wait_loop(hook, target, attempt, interrupted)
        })
        .flatten();
        if let Some(r) = hooked {
            return deliver(r);
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::waitid(idtype, id, info, options) }
}
