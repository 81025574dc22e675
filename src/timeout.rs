//! Timeouts and cancellation that interrupt only at blocking points.
//!
//! The seed talk's point: `Timeout.timeout` is safe in a fiber scheduler because only operations
//! that yield to the event loop can be interrupted. fibra follows it. A fiber carries a stack of
//! timeout scopes and a cancelled flag ([`InterruptState`]); every *interruptible* park (sleeps,
//! sockets, pipes, `poll`, process waits, name lookups) goes through
//! [`Scheduler::park_interruptible`], which fails at once when the fiber is cancelled or its
//! earliest scope deadline has passed, and otherwise also wakes at that deadline. The shim turns
//! the failure into the error libc would give for the call (see the table in ARCHITECTURE.md).
//! Nothing ever unwinds through a hook: the closure sees errors and reaches its own end.
//!
//! Lock waits (futex waits of mutexes, condvars, `park`) and `JoinHandle::join` are not
//! interruptible: std retries a lock wait at once, so cutting one short would spin without ever
//! yielding (`hazards.md` §8).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::Duration;

use fibra_shim::{Deadline, Errno};

use crate::scheduler::Scheduler;

/// Why an interruptible wait was cut short.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Interrupt {
    /// A [`timeout`] scope's deadline passed.
    TimedOut,
    /// The fiber was cancelled with [`JoinHandle::cancel`](crate::JoinHandle::cancel).
    Cancelled,
}

impl Interrupt {
    /// The errno socket, pipe, poll and process calls fail with.
    pub fn errno(self) -> Errno {
        match self {
            Interrupt::TimedOut => Errno::ETIMEDOUT,
            Interrupt::Cancelled => Errno::ECANCELED,
        }
    }
}

struct Scope {
    deadline: Deadline,
    fired: bool,
}

/// A fiber's timeout scopes and cancellation flag.
#[derive(Default)]
pub(crate) struct InterruptState {
    cancelled: Cell<bool>,
    /// Whether the fiber is parked in an interruptible wait right now (so `cancel` may wake it).
    interruptible: Cell<bool>,
    scopes: RefCell<Vec<Scope>>,
    /// The earliest deadline of `scopes`: the one that interrupts.
    earliest: Cell<Option<Deadline>>,
}

impl InterruptState {
    pub fn new() -> InterruptState {
        InterruptState::default()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }

    /// Marks the fiber cancelled; returns whether it is parked in an interruptible wait (and so
    /// must be woken).
    pub fn cancel(&self) -> bool {
        self.cancelled.set(true);
        self.interruptible.get()
    }

    pub fn set_interruptible(&self, on: bool) {
        self.interruptible.set(on);
    }

    /// The earliest active scope deadline.
    pub fn earliest(&self) -> Option<Deadline> {
        self.earliest.get()
    }

    /// The interruption pending now, if any; marks every scope whose deadline has passed as
    /// fired.
    pub fn pending(&self) -> Option<Interrupt> {
        if self.cancelled.get() {
            return Some(Interrupt::Cancelled);
        }
        let earliest = self.earliest.get()?;
        let now = Deadline::now();
        if now < earliest {
            return None;
        }
        for scope in self.scopes.borrow_mut().iter_mut() {
            if scope.deadline <= now {
                scope.fired = true;
            }
        }
        Some(Interrupt::TimedOut)
    }

    fn push(&self, deadline: Deadline) {
        self.scopes.borrow_mut().push(Scope {
            deadline,
            fired: false,
        });
        self.earliest.set(Some(
            self.earliest.get().map_or(deadline, |e| e.min(deadline)),
        ));
    }

    /// Pops the innermost scope; returns whether it expired (fired, or its deadline passed).
    fn pop(&self) -> bool {
        let mut scopes = self.scopes.borrow_mut();
        let scope = scopes.pop().expect("timeout scopes are popped in order");
        self.earliest.set(scopes.iter().map(|s| s.deadline).min());
        scope.fired || Deadline::now() >= scope.deadline
    }
}

/// The error of a [`timeout`] whose deadline passed before its closure returned.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Elapsed(());

impl fmt::Debug for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Elapsed")
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// The payload [`JoinHandle::join`](crate::JoinHandle::join) returns in `Err` for a fiber that
/// was cancelled (and did not panic).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Cancelled(());

impl fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cancelled")
    }
}

impl Cancelled {
    pub(crate) fn new() -> Cancelled {
        Cancelled(())
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the fiber was cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// Runs `f` in the calling fiber under a deadline `duration` from now.
///
/// When the deadline passes, the interruptible blocking call the fiber is parked in, and every
/// one it makes afterwards inside the scope, returns at once with an error: socket and pipe
/// calls and `connect` fail with `ETIMEDOUT` ([`std::io::ErrorKind::TimedOut`]), sleeps end early
/// (std's sleep sees `EINTR` with no time left), `poll` and process waits fail with `ETIMEDOUT`,
/// name lookups with `EAI_AGAIN`. Lock waits and `JoinHandle::join` are not interrupted.
/// Nothing unwinds: `f` sees the errors and returns normally (or panics, which propagates).
///
/// Returns `Err(Elapsed)` if the deadline passed before `f` returned, whatever `f` did with the
/// errors (its value is dropped); otherwise `Ok` with `f`'s value.
///
/// Scopes nest: an inner scope never extends an outer deadline (the earliest deadline of all
/// active scopes interrupts), and each scope reports its own expiry.
///
/// # Panics
/// When called outside a fiber (there is no event loop to wake the thread at the deadline).
///
/// ```
/// use std::time::{Duration, Instant};
/// fibra::run(|| {
///     let start = Instant::now();
///     let r = fibra::timeout(Duration::from_millis(50), || std::thread::sleep(Duration::from_secs(10)));
///     assert!(r.is_err());
///     assert!(start.elapsed() < Duration::from_secs(5));
/// });
/// ```
#[track_caller]
pub fn timeout<T>(duration: Duration, f: impl FnOnce() -> T) -> Result<T, Elapsed> {
    let sched = match Scheduler::current() {
        Some(s) if s.current_fiber().is_some() => s,
        _ => panic!("fibra::timeout called outside a fiber; call it inside fibra::run"),
    };
    let fiber = sched.current_fiber().expect("checked above");
    let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let deadline = Deadline::now().after(ns);
    let state = &fiber.interrupt;
    state.push(deadline);
    /// Pops the scope if `f` panics, so the fiber's scopes stay balanced.
    struct PopOnUnwind<'a>(&'a InterruptState);
    impl Drop for PopOnUnwind<'_> {
        fn drop(&mut self) {
            self.0.pop();
        }
    }
    let guard = PopOnUnwind(state);
    let value = f();
    std::mem::forget(guard);
    if state.pop() {
        Err(Elapsed(()))
    } else {
        Ok(value)
    }
}

/// Whether the calling fiber has been cancelled (see
/// [`JoinHandle::cancel`](crate::JoinHandle::cancel)). `false` outside fibers.
pub fn is_cancelled() -> bool {
    Scheduler::current()
        .and_then(|s| s.current_fiber().map(|f| f.interrupt.is_cancelled()))
        .unwrap_or(false)
}
