//! Which hook, if any, the calling thread's calls go to right now.
//!
//! One thread-local slot holds the hook of the fiber that is running *user code* on this thread.
//! It is empty on threads without a scheduler, in the scheduler's own loop, inside hook code and
//! inside fibra's own functions, so all of those reach libc directly. The discipline, which every
//! code path that switches fibers follows:
//!
//! 1. An interposed symbol empties the slot before calling the hook ([`without_hook`]) and puts
//!    the hook back when the hook returns.
//! 2. A fiber only ever switches away from inside such a bracket, so the slot is empty whenever
//!    the scheduler runs; when a fiber is resumed, it is resumed inside its own bracket, whose
//!    end restores the slot.
//! 3. A fiber's very first entry fills the slot before user code runs, and empties it when the
//!    user code returns.
//!
//! The slot is a `const`-initialised `Cell` of a `Copy` type without destructor: reading it never
//! allocates, never registers a TLS destructor, and is safe in a forked child and a signal
//! handler.

use std::cell::Cell;
use std::ptr::NonNull;

use crate::Hook;

/// A pointer to an activated hook.
pub type Active = NonNull<dyn Hook + 'static>;

thread_local! {
    static ACTIVE: Cell<Option<Active>> = const { Cell::new(None) };
}

/// The hook active on this thread, if user code of a fiber is running.
#[inline]
pub fn active() -> Option<Active> {
    ACTIVE.get()
}

/// Sets or clears the hook active on this thread.
///
/// # Safety
/// `hook` must stay valid, and be used only from this thread, until the slot is cleared again.
#[inline]
pub unsafe fn set_active(hook: Option<Active>) {
    ACTIVE.set(hook);
}

/// Empties the slot in a child forked from a fiber: the child must never reach the scheduler it
/// was copied from.
pub(crate) fn clear_in_forked_child() {
    ACTIVE.set(None);
}

/// Runs `f` with the slot emptied, restoring it afterwards.
///
/// fibra wraps every one of its own functions that may switch fibers in this, so that the libc
/// calls made by fibra itself never re-enter a hook.
#[inline]
pub fn without_hook<R>(f: impl FnOnce() -> R) -> R {
    let saved = ACTIVE.replace(None);
    let r = f();
    ACTIVE.set(saved);
    r
}

/// Calls `f` with the active hook, emptying the slot for the duration (rule 1 above).
/// Returns `None`, without calling `f`, when no hook is active.
#[inline]
pub(crate) fn with_hook<R>(f: impl FnOnce(&dyn Hook) -> R) -> Option<R> {
    let hook = ACTIVE.replace(None)?;
    let saved_errno = crate::errno();
    // SAFETY: `set_active`'s contract keeps the hook valid while it is in the slot, and it is
    // used on the thread that activated it.
    let r = f(unsafe { hook.as_ref() });
    crate::set_errno(saved_errno);
    ACTIVE.set(Some(hook));
    Some(r)
}
