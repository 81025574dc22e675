//! Interposed `fork`: the child starts with no hook active.
//!
//! Between `fork` and `exec` the child runs only the forking thread, and every lock another
//! thread held stays held forever; it must never reach a scheduler. The interposed `fork`
//! empties the dispatch slot in the child, so every hook there goes straight to libc; fibra's
//! `pthread_atfork` child handler forgets the copied scheduler, so the child starts with none
//! (and may start a fresh one with `fibra::run`, as a prefork server's workers do). (`posix_spawn`'s child runs inside glibc, whose internal
//! calls are never interposed.)

use crate::real;

/// Interposed `fork(2)`.
///
/// # Safety
/// libc's contract for `fork`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    // SAFETY: forwarded unchanged.
    let pid = unsafe { real::fork() };
    if pid == 0 {
        crate::dispatch::clear_in_forked_child();
        // The parent's epoll registrations are not the child's to remove (see `fd.rs`).
        crate::fd::forget_all_registrations();
    }
    pid
}
