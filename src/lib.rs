//! # fibra: plain blocking Rust, made concurrent
//!
//! fibra runs ordinary synchronous code in stackful fibers and makes it concurrent without
//! changing it. A scheduler installed on the thread by [`run`] intercepts, at the libc
//! boundary, every call that could wait — sleeps, socket and pipe I/O and `poll`, futex waits
//! (std's and parking_lot's locks, condvars, `park`), `pthread_join`, process waits and
//! `getaddrinfo` — parks the calling fiber, and resumes another from a mio event loop. Outside
//! a fiber every such call goes straight to libc, unchanged.
//!
//! Beyond [`run`] and [`spawn`]: [`timeout`] and [`JoinHandle::cancel`] interrupt blocking
//! calls without unwinding; [`FiberLocal`] carries per-request state into child fibers;
//! [`Runtime`] runs a scheduler per core; [`channel()`] works between fibers of one thread (std's
//! mpsc does not: see the README's "Limits").
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! let start = Instant::now();
//! fibra::run(|| {
//!     let handles: Vec<_> = (0..1000)
//!         .map(|i| fibra::spawn(move || {
//!             std::thread::sleep(Duration::from_millis(100)); // plain std: parks only this fiber
//!             i * 2
//!         }))
//!         .collect();
//!     let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
//!     assert_eq!(sum, 999 * 1000);
//! });
//! assert!(start.elapsed() < Duration::from_secs(5)); // one sleep's worth, not a thousand
//! ```
//!
//! Fibers never leave the thread that spawned them, so `spawn` needs no `Send` bound and `Rc`
//! works across fibers. See `ARCHITECTURE.md` for how the layers fit together.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod builder;
pub mod channel;
pub mod dns;
mod fiber;
mod io;
mod join;
mod local;
mod overflow;
mod reactor;
mod runtime;
mod scheduler;
mod stack;
mod sync;
mod timeout;
mod timer;
mod trace_context;

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::Duration;

pub use builder::Builder;
pub use channel::channel;
pub use fiber::FiberId;
/// The shim's hook interface, which fibra's scheduler implements: fibra's counterpart of Ruby's
/// `Fiber::Scheduler`.
pub use fibra_shim::{Deadline, Errno, Hook, WaitClock};
pub use join::JoinHandle;
pub use local::FiberLocal;
pub use runtime::{Handle, RemoteJoinHandle, Runtime, reuseport_listener, worker_index};
pub use stack::{DEFAULT_STACK_SIZE, MIN_STACK_SIZE};
pub use timeout::{Cancelled, Elapsed, is_cancelled, timeout};

use scheduler::Scheduler;

/// The stack size of the root fiber of [`run`]: as large as a std thread's default, since the
/// root often carries a whole program.
pub const ROOT_STACK_SIZE: usize = 2 * 1024 * 1024;

/// Runs `f` as the root fiber of a scheduler installed on the calling thread, and returns its
/// result once `f` **and every fiber spawned under it** have finished.
///
/// While `run` is active, the thread's blocking calls made from fibers park the fiber instead
/// of the thread. When it returns, the scheduler is uninstalled and the thread's calls go
/// straight to libc again. A panic in `f` is propagated from `run` after the other fibers have
/// finished.
///
/// The root fiber starts with the calling thread's [`FiberLocal`] values (an O(1) snapshot);
/// its writes, and its fibers', do not flow back to the thread.
///
/// # Panics
/// - When called inside `run` on the same thread (there is one scheduler per thread; use
///   [`spawn`] for more concurrency).
/// - When every fiber is blocked and nothing can ever wake one (a deadlock); the message names
///   each fiber and what it waits for.
pub fn run<F, T>(f: F) -> T
where
    F: FnOnce() -> T,
{
    if Scheduler::current().is_some() {
        panic!(
            "fibra::run called inside fibra::run on the same thread; use fibra::spawn to start another fiber"
        );
    }
    fibra_shim::ensure_linked();
    overflow::install_handler();
    let _altstack = overflow::ensure_altstack();
    let sched = Box::new(
        Scheduler::new()
            .unwrap_or_else(|e| panic!("fibra::run could not set up its event loop: {e}")),
    );
    let installed = Scheduler::install(&sched);
    let mut result = None;
    {
        let result = &mut result;
        let root = move || *result = Some(catch_unwind(AssertUnwindSafe(f)));
        // SAFETY: the root borrows `f` and `result` from this frame, which outlives the fiber:
        // `run_loop` returns only when every fiber has finished, and a panic out of it drops the
        // scheduler (leaking, never resuming, unfinished fibers) before this frame unwinds.
        unsafe { sched.spawn_raw(Some("root".to_owned()), ROOT_STACK_SIZE, root) }.unwrap_or_else(
            |e| panic!("fibra::run could not allocate the root fiber's stack: {e}"),
        );
        sched.run_loop();
    }
    drop(installed);
    drop(sched);
    match result.expect("the root fiber finished") {
        Ok(value) => value,
        Err(payload) => resume_unwind(payload),
    }
}

/// Spawns a fiber running `f` on the calling thread's scheduler.
///
/// # Panics
/// When called outside [`run`], or when no stack can be allocated (use [`Builder::spawn`] to
/// get that as an error).
#[track_caller]
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    let _ = Scheduler::expect("fibra::spawn");
    Builder::new()
        .spawn(f)
        .unwrap_or_else(|e| panic!("fibra::spawn could not allocate a fiber stack: {e}"))
}

/// Lets the other runnable fibers run before the calling fiber continues. Outside a fiber, the
/// same as [`std::thread::yield_now`].
pub fn yield_now() {
    match Scheduler::current() {
        Some(sched) if sched.current_fiber().is_some() => {
            fibra_shim::without_hook(|| sched.yield_now())
        }
        _ => std::thread::yield_now(),
    }
}

/// Parks the calling fiber for `duration`. Outside a fiber, the same as
/// [`std::thread::sleep`] (which, inside a fiber, also parks only the fiber). Like every sleep,
/// it ends early when a [`timeout`] scope expires or the fiber is cancelled.
pub fn sleep(duration: Duration) {
    match Scheduler::current() {
        Some(sched) if sched.current_fiber().is_some() => {
            let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
            let deadline = Deadline::now().after(ns);
            // An error means a timeout scope or a cancellation cut the sleep short: return.
            fibra_shim::without_hook(|| {
                let _ = sched.sleep_until(deadline);
            })
        }
        _ => std::thread::sleep(duration),
    }
}

/// Whether the caller runs inside a fiber.
pub fn in_fiber() -> bool {
    Scheduler::current().is_some_and(|s| s.current_fiber().is_some())
}

/// The id of the calling fiber, or `None` outside fibers.
pub fn current_id() -> Option<FiberId> {
    Scheduler::current().and_then(|s| s.current_fiber().map(|f| f.id))
}

/// The name of the calling fiber, if it has one.
pub fn current_name() -> Option<String> {
    Scheduler::current().and_then(|s| s.current_fiber().and_then(|f| f.name.clone()))
}
