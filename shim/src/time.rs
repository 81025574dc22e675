//! Interposed sleeps: `clock_nanosleep`, `nanosleep`, `usleep`, `sleep`.
//!
//! In a fiber each becomes one [`Hook::sleep_until`] on a `CLOCK_MONOTONIC` deadline, with
//! libc's argument checks and return conventions. Clocks other than realtime, monotonic,
//! boottime and TAI (the CPU-time clocks) are left to libc. An absolute realtime deadline is
//! converted to monotonic time when the call is made; a later jump of the wall clock does not
//! move it (documented in ARCHITECTURE.md).

use crate::dispatch::with_hook;
use crate::hook::{Deadline, Hook, WaitClock, clock_ns};
use crate::real;

const NANOS: u64 = 1_000_000_000;

/// Performs a sleep in the active hook. `None` when no hook is active (the caller forwards to
/// libc); otherwise libc's `clock_nanosleep` result: 0, `EINVAL` or `EINTR`.
fn hooked_sleep(
    clock: libc::clockid_t,
    flags: libc::c_int,
    req: &libc::timespec,
    rem: *mut libc::timespec,
) -> Option<libc::c_int> {
    with_hook(|hook| sleep_in(hook, clock, flags, req, rem))
}

fn sleep_in(
    hook: &dyn Hook,
    clock: libc::clockid_t,
    flags: libc::c_int,
    req: &libc::timespec,
    rem: *mut libc::timespec,
) -> libc::c_int {
    if req.tv_sec < 0 || req.tv_nsec < 0 || req.tv_nsec >= NANOS as libc::c_long {
        return libc::EINVAL;
    }
    let requested = (req.tv_sec as u64)
        .saturating_mul(NANOS)
        .saturating_add(req.tv_nsec as u64);
    let now = Deadline::now();
    let absolute = flags & libc::TIMER_ABSTIME != 0;
    let (deadline, wait_clock) = match (absolute, clock) {
        (false, _) => (now.after(requested), WaitClock::Monotonic),
        (true, libc::CLOCK_MONOTONIC) => (Deadline(requested), WaitClock::Monotonic),
        (true, libc::CLOCK_REALTIME | libc::CLOCK_TAI) => {
            let left = requested.saturating_sub(clock_ns(clock));
            (now.after(left), WaitClock::Realtime)
        }
        (true, _) => {
            let left = requested.saturating_sub(clock_ns(clock));
            (now.after(left), WaitClock::Boottime)
        }
    };
    match hook.sleep_until(deadline, wait_clock) {
        Ok(()) => 0,
        Err(errno) => {
            if !absolute && !rem.is_null() {
                // SAFETY: the caller passed `rem` as a writable timespec, as libc requires.
                // Zero remaining: a caller that retries with the remainder (std does) stops.
                unsafe {
                    *rem = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    }
                };
            }
            errno.0
        }
    }
}

fn hookable_clock(clock: libc::clockid_t) -> bool {
    matches!(
        clock,
        libc::CLOCK_REALTIME | libc::CLOCK_MONOTONIC | libc::CLOCK_BOOTTIME | libc::CLOCK_TAI
    )
}

/// Interposed `clock_nanosleep(3)`: returns the error number instead of setting `errno`.
///
/// # Safety
/// libc's contract: `req` points to a readable timespec, `rem` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: libc::c_int,
    req: *const libc::timespec,
    rem: *mut libc::timespec,
) -> libc::c_int {
    if !req.is_null() && hookable_clock(clock) {
        // SAFETY: non-null, and the caller guarantees it is readable.
        let request = unsafe { &*req };
        if let Some(result) = hooked_sleep(clock, flags, request, rem) {
            return result;
        }
    }
    // SAFETY: forwarded unchanged under the caller's contract.
    unsafe { real::clock_nanosleep(clock, flags, req, rem) }
}

/// Interposed `nanosleep(2)`: 0, or -1 with `errno` set.
///
/// # Safety
/// libc's contract: `req` points to a readable timespec, `rem` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nanosleep(
    req: *const libc::timespec,
    rem: *mut libc::timespec,
) -> libc::c_int {
    if !req.is_null() {
        // SAFETY: non-null, and the caller guarantees it is readable.
        let request = unsafe { &*req };
        if let Some(result) = hooked_sleep(libc::CLOCK_REALTIME, 0, request, rem) {
            return errno_return(result);
        }
    }
    // SAFETY: forwarded unchanged under the caller's contract.
    unsafe { real::nanosleep(req, rem) }
}

/// Interposed `usleep(3)`: 0, or -1 with `errno` set.
///
/// # Safety
/// None beyond libc's: any value is accepted.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn usleep(usec: libc::useconds_t) -> libc::c_int {
    let request = libc::timespec {
        tv_sec: (usec / 1_000_000) as libc::time_t,
        tv_nsec: ((usec % 1_000_000) * 1_000) as libc::c_long,
    };
    if let Some(result) = hooked_sleep(libc::CLOCK_REALTIME, 0, &request, std::ptr::null_mut()) {
        return errno_return(result);
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::usleep(usec) }
}

/// Interposed `sleep(3)`: the seconds left unslept (0 after a fibra interruption, see above).
///
/// # Safety
/// None beyond libc's: any value is accepted.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sleep(secs: libc::c_uint) -> libc::c_uint {
    let request = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let mut left = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if let Some(result) = hooked_sleep(libc::CLOCK_REALTIME, 0, &request, &mut left) {
        return if result == 0 {
            0
        } else {
            // glibc rounds the remainder to the nearest second.
            left.tv_sec as libc::c_uint + u32::from(left.tv_nsec >= 500_000_000)
        };
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::sleep(secs) }
}

fn errno_return(result: libc::c_int) -> libc::c_int {
    if result == 0 {
        0
    } else {
        crate::set_errno(result);
        -1
    }
}
