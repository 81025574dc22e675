//! fibra's C ABI boundary.
//!
//! This crate owns everything that touches the libc symbol namespace and nothing else:
//!
//! - [`real`]: the table of libc's own functions, resolved once with `dlsym(RTLD_NEXT, ..)` from a
//!   load-time constructor, so that no hook ever has to call `dlsym` (which may allocate or lock).
//! - [`hook`]: the [`Hook`] trait, the interface a scheduler implements to take over the calls
//!   that could wait, and [`Errno`].
//! - [`dispatch`]: the per-thread slot holding the hook of the fiber that is running right now,
//!   and the discipline that keeps hook code itself (and the scheduler) out of the hooks.
//! - [`fd`]: the process-wide, lock-free table of what is known about each file descriptor.
//! - [`dns`]: interposed `getaddrinfo`/`freeaddrinfo`, the query and answer types of
//!   [`Hook::resolve`], and result lists laid out exactly as glibc's.
//! - `time`, `fork`, `net`, `futex` (`syscall`), `thread` (`pthread_join`): the interposed symbols
//!   themselves, one module per family.
//!
//! It depends on nothing of fibra: any scheduler can implement [`Hook`]. Interposition works
//! because a `#[no_mangle]` definition linked into the executable takes precedence over libc's
//! for every caller in the executable, std included. Callers inside glibc itself (its resolver,
//! `posix_spawn`'s child) use glibc's internal aliases and are never redirected.
//!
//! Every interposed function is written so that with no hook active it does exactly what libc
//! does, without allocating and without taking a lock: a forked child, a signal handler or a
//! thread that never ran a scheduler reaches libc through one thread-local load.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod dispatch;
pub mod dns;
pub mod fd;
mod fork;
pub mod futex;
pub mod hook;
mod net;
mod process;
pub mod real;
pub mod signal;
mod thread;
mod time;

pub use dispatch::{Active, active, set_active, without_hook};
pub use hook::BlockingCall;
pub use hook::{Deadline, Errno, Hook, Readiness, WaitClock};

/// The calling thread's `errno`.
#[inline]
pub fn errno() -> i32 {
    // SAFETY: `__errno_location` returns a valid pointer to the calling thread's errno for the
    // whole life of the thread.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
#[inline]
pub fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

/// Forces the linker to keep every interposed symbol.
///
/// The shim is an rlib: the linker pulls an object out of it only when something refers to a
/// symbol the object defines. fibra calls this from `run`, which pulls in this object, whose
/// `#[used]` table refers to every interposed function and so pulls in theirs. Without it a
/// program that happened not to reference one family would silently run libc's version.
#[inline(never)]
pub fn ensure_linked() -> usize {
    // SAFETY: reading a static table of addresses; `read_volatile` keeps the read (and so the
    // reference to the table) from being optimised away.
    unsafe { std::ptr::read_volatile(&INTERPOSED.0).len() }
}

/// Addresses of the interposed functions, kept only so the linker keeps them.
struct Keep(&'static [*const ()]);
// SAFETY: the table is immutable and holds plain code addresses that are never dereferenced.
unsafe impl Sync for Keep {}

#[used]
static INTERPOSED: Keep = Keep(&[
    time::nanosleep as *const (),
    time::clock_nanosleep as *const (),
    time::usleep as *const (),
    time::sleep as *const (),
    fork::fork as *const (),
    real::init as *const (),
    net::read as *const (),
    net::readv as *const (),
    net::write as *const (),
    net::writev as *const (),
    net::recv as *const (),
    net::recvfrom as *const (),
    net::recvmsg as *const (),
    net::send as *const (),
    net::sendto as *const (),
    net::sendmsg as *const (),
    net::accept as *const (),
    net::accept4 as *const (),
    net::connect as *const (),
    net::poll as *const (),
    net::ppoll as *const (),
    net::select as *const (),
    net::pselect as *const (),
    net::close as *const (),
    net::socket as *const (),
    net::socketpair as *const (),
    net::pipe as *const (),
    net::pipe2 as *const (),
    net::dup as *const (),
    net::dup2 as *const (),
    net::dup3 as *const (),
    net::fcntl as *const (),
    net::fcntl64 as *const (),
    net::ioctl as *const (),
    net::setsockopt as *const (),
    process::waitpid as *const (),
    process::wait4 as *const (),
    process::wait as *const (),
    process::waitid as *const (),
    futex::syscall as *const (),
    thread::pthread_join as *const (),
    dns::getaddrinfo as *const (),
    dns::freeaddrinfo as *const (),
]);
