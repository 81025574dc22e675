//! Chaining to the signal handler that was installed before fibra's.
//!
//! fibra installs two process-wide handlers in front of whatever was there: SIGSEGV/SIGBUS (to
//! name a fiber whose stack overflowed) and SIGCHLD (to wake fibers waiting for any child). Both
//! must then behave as if they were not there, which means calling the previous handler with the
//! signature it was installed with.

/// Calls the handler of `previous` for `signum`, with the calling convention its `SA_SIGINFO`
/// flag says. Returns `false`, calling nothing, when `previous` is `SIG_DFL` or `SIG_IGN`: what
/// those mean differs per signal, so the caller decides.
///
/// # Safety
/// Call from a signal handler for `signum`, with the kernel's `info` and `context`; `previous`
/// must be an action that was installed for `signum`.
pub unsafe fn call_previous(
    previous: &libc::sigaction,
    signum: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) -> bool {
    match previous.sa_sigaction {
        libc::SIG_DFL | libc::SIG_IGN => false,
        handler if previous.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: the previous handler was installed with SA_SIGINFO, so this signature.
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(handler) };
            handler(signum, info, context);
            true
        }
        handler => {
            // SAFETY: the previous handler was installed without SA_SIGINFO, so this signature.
            let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            handler(signum);
            true
        }
    }
}
