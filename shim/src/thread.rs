//! Interposed `pthread_join`: joining an OS thread from a fiber parks the fiber.
//!
//! glibc's `pthread_join` waits on the target's `tid` word, which the kernel clears and
//! futex-wakes when the thread exits (`CLONE_CHILD_CLEARTID`). That wake happens inside the
//! kernel and never passes through the interposed `syscall`, so it cannot be observed the way
//! std's lock wakes are. Instead the real `pthread_join` runs on a helper OS thread
//! ([`Hook::run_blocking`]) while the fiber is parked; the helper wakes the fiber when the join
//! returns. The join itself, its result and its error codes are glibc's, except that joining
//! the calling OS thread is refused here with `EDEADLK` before any helper is involved (the
//! helper could otherwise join the fiber's own thread and wait forever).
//!
//! `pthread_timedjoin_np`, `pthread_clockjoin_np` and `pthread_tryjoin_np` are not interposed:
//! std never calls them; they keep libc's behaviour (the first two block the thread).

use crate::dispatch::with_hook;
use crate::hook::BlockingCall;
use crate::real;

/// Interposed `pthread_join(3)`.
///
/// # Safety
/// libc's contract: `thread` is a joinable thread not yet joined; `retval` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_join(
    thread: libc::pthread_t,
    retval: *mut *mut libc::c_void,
) -> libc::c_int {
    if crate::dispatch::active().is_some() {
        // SAFETY: comparing two thread ids has no preconditions.
        if unsafe { libc::pthread_equal(thread, libc::pthread_self()) } != 0 {
            return libc::EDEADLK;
        }
        let mut result = 0;
        // The pointer travels to the helper thread as an address; it stays valid because the
        // fiber (and its caller's frame) is parked until the helper is done.
        let retval_addr = retval as usize;
        let mut call = || {
            // SAFETY: forwarded unchanged under the caller's contract, on another thread:
            // glibc allows any thread of the process to join a joinable thread.
            result = unsafe { real::pthread_join(thread, retval_addr as *mut *mut libc::c_void) };
        };
        if with_hook(|hook| hook.run_blocking(&mut call, BlockingCall::ThreadJoin)).is_some() {
            return result;
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::pthread_join(thread, retval) }
}
