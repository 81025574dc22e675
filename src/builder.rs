//! `Builder`: spawning a fiber with a name or a stack size of its own.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use crate::join::{JoinHandle, JoinInner};
use crate::scheduler::Scheduler;
use crate::stack::DEFAULT_STACK_SIZE;

/// Configures a fiber before spawning it, like [`std::thread::Builder`].
///
/// ```
/// let answer = fibra::run(|| {
///     fibra::Builder::new()
///         .name("worker".into())
///         .stack_size(1 << 20)
///         .spawn(|| 6 * 7)
///         .expect("stack allocated")
///         .join()
///         .unwrap()
/// });
/// assert_eq!(answer, 42);
/// ```
#[derive(Debug, Default, Clone)]
pub struct Builder {
    name: Option<String>,
    stack_size: Option<usize>,
}

impl Builder {
    /// A builder with the defaults: no name, [`DEFAULT_STACK_SIZE`](crate::DEFAULT_STACK_SIZE).
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Names the fiber, for spans, deadlock reports and overflow messages.
    pub fn name(mut self, name: String) -> Builder {
        self.name = Some(name);
        self
    }

    /// Sets the stack size in bytes, rounded up to whole pages (at least
    /// [`MIN_STACK_SIZE`](crate::MIN_STACK_SIZE)). Only the pages the fiber touches become
    /// resident.
    pub fn stack_size(mut self, size: usize) -> Builder {
        self.stack_size = Some(size);
        self
    }

    /// Spawns the fiber on the calling thread's scheduler.
    ///
    /// Returns `Err` when the stack cannot be allocated (an impossible size, or the address
    /// space or memory is exhausted). Panics when called outside `fibra::run`.
    #[track_caller]
    pub fn spawn<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let sched = Scheduler::expect("fibra::Builder::spawn");
        // SAFETY: `f` and the result slot are 'static.
        unsafe {
            spawn_on(
                sched,
                self.name,
                self.stack_size.unwrap_or(DEFAULT_STACK_SIZE),
                f,
            )
        }
    }
}

/// Spawns `f` on `sched`.
///
/// # Safety
/// What `f` borrows, and `T`, must stay valid until the fiber finishes (see
/// [`Scheduler::spawn_raw`]).
pub(crate) unsafe fn spawn_on<F, T>(
    sched: &Scheduler,
    name: Option<String>,
    stack_size: usize,
    f: F,
) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T,
{
    let inner = Rc::new(JoinInner::new());
    let slot = Rc::clone(&inner);
    let body = move || slot.complete(catch_unwind(AssertUnwindSafe(f)));
    // SAFETY: forwarded from the caller.
    let (id, fiber_slot) = unsafe { sched.spawn_fiber(name, stack_size, body)? };
    Ok(JoinHandle::new(inner, id, fiber_slot))
}
