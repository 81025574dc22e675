//! Join handles: how a fiber's result reaches whoever waits for it.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::thread;

use crate::fiber::{FiberId, WaitReason, WakeToken};
use crate::scheduler::Scheduler;
use crate::timeout::Cancelled;

/// The result slot shared by a fiber and its [`JoinHandle`].
pub(crate) struct JoinInner<T> {
    result: RefCell<Option<thread::Result<T>>>,
    finished: Cell<bool>,
    waiter: Cell<Option<WakeToken>>,
}

impl<T> JoinInner<T> {
    pub fn new() -> JoinInner<T> {
        JoinInner {
            result: RefCell::new(None),
            finished: Cell::new(false),
            waiter: Cell::new(None),
        }
    }

    /// Called by the fiber as its last act: stores the result and wakes the joiner. A fiber
    /// that was cancelled and returned (rather than panicked) reports `Err(Cancelled)`.
    pub fn complete(&self, result: thread::Result<T>) {
        let result = match result {
            Ok(_) if crate::timeout::is_cancelled() => Err(Box::new(Cancelled::new()) as _),
            other => other,
        };
        *self.result.borrow_mut() = Some(result);
        self.finished.set(true);
        if let Some(waiter) = self.waiter.take() {
            Scheduler::expect("fiber completion").unpark(waiter, crate::fiber::Wake::Ready);
        }
    }
}

/// An owned permission to wait for a fiber and take its result.
///
/// Dropping the handle detaches the fiber: it keeps running, and `fibra::run` still waits for
/// it. A panic in a detached fiber is reported by the panic hook when it happens, as for a
/// detached thread, and goes no further.
pub struct JoinHandle<T> {
    inner: Rc<JoinInner<T>>,
    id: FiberId,
    slot: u32,
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(inner: Rc<JoinInner<T>>, id: FiberId, slot: u32) -> JoinHandle<T> {
        JoinHandle { inner, id, slot }
    }

    /// Cancels the fiber: the interruptible blocking call it is parked in, and every one it
    /// makes afterwards, fails at once (sockets, pipes, `poll` and process waits with
    /// `ECANCELED`, sleeps end early, name lookups with `EAI_AGAIN`; see [`fibra::timeout`]
    /// for what is interruptible). Nothing unwinds: the fiber sees errors, its destructors run
    /// normally, and [`join`](JoinHandle::join) then returns `Err` with a [`Cancelled`]
    /// payload (or the fiber's panic, if it panicked). A fiber can check
    /// [`fibra::is_cancelled`]. Cancelling a finished fiber does nothing.
    ///
    /// [`fibra::timeout`]: crate::timeout
    /// [`fibra::is_cancelled`]: crate::is_cancelled
    pub fn cancel(&self) {
        if self.inner.finished.get() {
            return;
        }
        if let Some(sched) = Scheduler::current() {
            sched.cancel(self.id, self.slot);
        }
    }

    /// Waits for the fiber to finish and returns its result; a panic in the fiber arrives as
    /// `Err` with its payload, as from [`std::thread::JoinHandle::join`], and a cancelled fiber
    /// as `Err` with a [`Cancelled`] payload. Parks only the calling fiber (not interruptible
    /// by timeouts or cancellation).
    pub fn join(self) -> thread::Result<T> {
        while !self.inner.finished.get() {
            let sched = match Scheduler::current() {
                Some(s) if s.current_fiber().is_some() => s,
                _ => panic!(
                    "JoinHandle::join of an unfinished fiber called outside a fiber of its scheduler; join from inside fibra::run"
                ),
            };
            fibra_shim::without_hook(|| {
                let token = sched.prepare_park();
                self.inner.waiter.set(Some(token));
                sched.park(WaitReason::Join(self.id));
            });
        }
        self.inner
            .result
            .borrow_mut()
            .take()
            .expect("a finished fiber left its result")
    }

    /// Whether the fiber has finished (its result is ready, `join` will not wait).
    pub fn is_finished(&self) -> bool {
        self.inner.finished.get()
    }

    /// The fiber's id.
    pub fn id(&self) -> FiberId {
        self.id
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("id", &self.id)
            .field("finished", &self.is_finished())
            .finish()
    }
}
