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
}
