//! The hook: what a scheduler implements to take over the calls that could wait.
//!
//! fibra's counterpart of Ruby's `Fiber::Scheduler`. The shim does the libc-facing half of every
//! interposed call (argument checks, clock conversion, return values, `errno`, partial results);
//! the hook does the waiting half: it parks the calling fiber and returns when the fiber may go
//! on. A hook method is only ever called on the thread the hook was activated on, from inside a
//! fiber, with the dispatch slot emptied (see [`crate::dispatch`]), so the hook's own libc calls
//! go straight to libc.
//!
//! A hook never unwinds: it is entered from `extern "C"` frames. Interruption (a timeout, a
//! cancellation) is reported as an [`Errno`], which the shim turns into the return value libc
//! would give.

use std::fmt;
use std::os::fd::RawFd;

/// An `errno` value, as returned by a hook that could not complete the wait.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// `EINTR`: the wait was interrupted (a timeout or a cancellation reached the fiber).
    pub const EINTR: Errno = Errno(libc::EINTR);
    /// `ETIMEDOUT`.
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);
    /// `ECANCELED`.
    pub const ECANCELED: Errno = Errno(libc::ECANCELED);
    /// `EBADF`: the fd waited on was closed by another fiber.
    pub const EBADF: Errno = Errno(libc::EBADF);
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({})", self.0)
    }
}

/// A point in time on `CLOCK_MONOTONIC`, in nanoseconds since the clock's origin.
///
/// The shim converts every clock it accepts to this one, so a hook keeps a single timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub u64);

impl Deadline {
    /// The current monotonic time.
    pub fn now() -> Deadline {
        Deadline(clock_ns(libc::CLOCK_MONOTONIC))
    }

    /// `self + ns`, saturating.
    pub fn after(self, ns: u64) -> Deadline {
        Deadline(self.0.saturating_add(ns))
    }

    /// Nanoseconds from `now` until `self`, zero when it has passed.
    pub fn remaining_from(self, now: Deadline) -> u64 {
        self.0.saturating_sub(now.0)
    }
}

/// Reads `clock` in nanoseconds (through the vDSO, no system call).
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clocks passed here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Which clock a sleep was requested on, for hooks that care (fibra does not: it converts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitClock {
    /// `CLOCK_MONOTONIC` (and relative sleeps on any clock).
    Monotonic,
    /// An absolute `CLOCK_REALTIME` / `CLOCK_TAI` deadline, converted at the time of the call.
    Realtime,
    /// `CLOCK_BOOTTIME`: counts suspend; converted at the time of the call.
    Boottime,
}

/// The interface between the shim and a scheduler.
///
/// # Safety
/// Implementations are called from `extern "C"` functions that stand in for libc. They must not
/// unwind, must only be activated (see [`crate::set_active`]) on the thread that owns them, and
/// must return only when the calling fiber may continue.
pub unsafe trait Hook {
    /// Parks the calling fiber until `deadline` (`CLOCK_MONOTONIC`).
    ///
    /// Returns `Ok(())` once the deadline has passed, or an error (normally [`Errno::EINTR`])
    /// when the sleep was cut short; the shim then reports `EINTR` with no time remaining, so
    /// that callers who retry with the remaining time (std does) stop.
    fn sleep_until(&self, deadline: Deadline, clock: WaitClock) -> Result<(), Errno>;

    /// Parks the calling fiber in a futex wait (`FUTEX_WAIT`, `FUTEX_WAIT_BITSET`), with the
    /// kernel's semantics: `Err(EAGAIN)` when the word does not hold `wait.expected` once the
    /// waiter is registered (register first, then re-check, so no wake is lost), `Ok` when a
    /// futex wake reached it (from any thread, through [`crate::futex::FiberFutexes`]),
    /// `Err(ETIMEDOUT)` at `wait.deadline`.
    ///
    /// Futex waits are lock waits (std's and parking_lot's locks retry at once on any early
    /// return): an implementation must not end one early for a timeout or cancellation of its
    /// own, or the fiber would spin (see ARCHITECTURE.md, "Sync waits").
    fn futex_wait(&self, wait: &crate::futex::FutexWait) -> Result<(), Errno>;

    /// Runs `call`, a libc call that blocks in a way no readiness or futex hook can observe
    /// (`pthread_join`: the kernel's wake-up of the joiner bypasses the interposed `syscall`),
    /// on another OS thread while the calling fiber is parked, and returns once it finished.
    /// `call` must have run exactly once when this returns.
    fn run_blocking(&self, call: &mut (dyn FnMut() + Send), what: BlockingCall);

    /// Parks the calling fiber until `fd` may be ready for `interest`, `deadline` passes, or
    /// the fd is closed. The shim has just seen the call fail with `EAGAIN` and retries it after
    /// an `Ok` with readiness, so a spurious wake-up is harmless.
    ///
    /// Returns `Ok(readiness)` (non-empty) when woken by readiness, `Ok(Readiness::NONE)` when
    /// `deadline` passed, `Err(Errno::EBADF)` when another fiber closed (or `dup2`ed onto) `fd`
    /// meanwhile (the call must not be retried: the number may already name another file), or
    /// another `Err` when the wait was interrupted.
    fn wait_fd(
        &self,
        fd: RawFd,
        interest: Readiness,
        deadline: Option<Deadline>,
    ) -> Result<Readiness, Errno>;

    /// Parks the calling fiber until any of `fds` may be ready for its interest, or `deadline`
    /// passes (`poll`, `ppoll`). `Ok(Readiness::NONE)` means the deadline passed; a close of one
    /// of the fds wakes the fiber with readiness (the shim's retry then reports `POLLNVAL`).
    fn wait_any_fd(
        &self,
        fds: &[(RawFd, Readiness)],
        deadline: Option<Deadline>,
    ) -> Result<Readiness, Errno>;

    /// `fd` was closed (or replaced by `dup2`/`dup3`) by the calling fiber: fibers waiting on
    /// it must wake with `EBADF`.
    fn fd_closed(&self, fd: RawFd);

    /// A read on the stream `fd` (socket or pipe) just returned fewer bytes than asked: its
    /// receive queue was empty. Until the next readiness event for `fd`, [`Hook::fd_drained`]
    /// may report so, and the shim parks before trying the next read (saving the call that
    /// would fail with `EAGAIN`). A hook that keeps no such state ignores this.
    fn note_drained(&self, fd: RawFd) {
        let _ = fd;
    }

    /// Whether `fd` had a read drain it (see [`Hook::note_drained`]) and no readiness event
    /// since, while registered with this hook's poller: a read would fail with `EAGAIN`.
    fn fd_drained(&self, fd: RawFd) -> bool {
        let _ = fd;
        false
    }

    /// Parks the calling fiber until `fd` is readable or `deadline` passes: `fd` is a pidfd (its
    /// child exited) or the shim's SIGCHLD eventfd (some child changed state). The shim re-checks
    /// with `WNOHANG` after every return, so spurious returns are harmless. `Err` when the wait
    /// was interrupted; the wait call then fails with that errno.
    fn wait_child(&self, fd: RawFd, deadline: Option<Deadline>) -> Result<(), Errno> {
        self.wait_fd(fd, Readiness::READABLE, deadline).map(drop)
    }

    /// Answers one `getaddrinfo` call (see [`crate::dns`]) without blocking the thread: the
    /// calling fiber parks while the lookup runs. Errors are `EAI_*` codes exactly as glibc would
    /// return them for the same query.
    ///
    /// The default is glibc's own `getaddrinfo`, which blocks the whole thread; fibra overrides
    /// it.
    fn resolve(
        &self,
        query: &crate::dns::ResolveQuery<'_>,
    ) -> Result<crate::dns::Resolved, crate::dns::GaiError> {
        crate::dns::libc_resolve(query)
    }
}

/// A blocking libc call handed to [`Hook::run_blocking`], for diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockingCall {
    /// `pthread_join` of an OS thread.
    ThreadJoin,
    /// glibc's own `getaddrinfo` (fibra's fallback when it has no usable resolver
    /// configuration, or the query needs a glibc feature it does not replicate).
    GetAddrInfo,
}

/// A set of I/O readiness kinds: what a wait is for, and what woke it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Readiness(pub u8);

impl Readiness {
    /// Nothing: as a result, the deadline passed.
    pub const NONE: Readiness = Readiness(0);
    /// Readable (or read-closed, or an error pending).
    pub const READABLE: Readiness = Readiness(1);
    /// Writable (or write-closed, or an error pending).
    pub const WRITABLE: Readiness = Readiness(2);
    /// Both.
    pub const BOTH: Readiness = Readiness(3);

    /// Whether nothing is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether `self` and `other` share a kind.
    pub fn intersects(self, other: Readiness) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for Readiness {
    type Output = Readiness;
    fn bitor(self, rhs: Readiness) -> Readiness {
        Readiness(self.0 | rhs.0)
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => write!(f, "NONE"),
            1 => write!(f, "READABLE"),
            2 => write!(f, "WRITABLE"),
            _ => write!(f, "READABLE | WRITABLE"),
        }
    }
}
