//! Interposed `syscall`: futex waits park the fiber, futex wakes reach fiber waiters too.
//!
//! std's `Mutex`, `Condvar`, `RwLock`, `Once` and `thread::park`, and parking_lot, block through
//! `syscall(SYS_futex, ..)` (never `pthread_mutex_*`). This module owns libc's variadic `syscall`
//! symbol: every number other than `SYS_futex` is forwarded unchanged to libc's `syscall` (so
//! `errno` is libc's own), and so is every futex operation made outside a fiber, except that a
//! wake also looks for fiber waiters.
//!
//! - **Waits** (`FUTEX_WAIT`, `FUTEX_WAIT_BITSET`; private or shared; relative, absolute
//!   monotonic or `FUTEX_CLOCK_REALTIME` timeouts) made by a fiber go to [`Hook::futex_wait`]
//!   with the timeout converted to one monotonic [`Deadline`]. The hook parks the fiber in a
//!   waiter table and answers as the kernel would: `Ok` when woken, `EAGAIN` when the word did
//!   not hold the expected value, `ETIMEDOUT` at the deadline.
//! - **Wakes** (`FUTEX_WAKE`, `FUTEX_WAKE_BITSET`, `FUTEX_REQUEUE`, `FUTEX_CMP_REQUEUE`,
//!   `FUTEX_WAKE_OP`) from *any* thread, fiber or not, first wake fiber waiters through the
//!   process-wide [`FiberFutexes`] table the scheduler installed, then the kernel's waiters for
//!   what is left of the count. The fast path, when no fiber anywhere waits on a futex, is one
//!   atomic load ([`FIBER_FUTEX_WAITERS`]) before the real system call.
//! - Priority-inheritance operations (`FUTEX_LOCK_PI` & co., used by glibc's PI mutexes) and
//!   `futex_waitv` (a separate system call) go to the kernel: they block the thread.
//!
//! Inside fibra itself `libc::syscall` now resolves to this symbol; fibra's own raw futex calls
//! use [`crate::real::syscall`].

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence};

use crate::dispatch::with_hook;
use crate::hook::{Deadline, Errno, clock_ns};
use crate::real;

const FUTEX_CMD_MASK: libc::c_int = !(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME);
/// `FUTEX_BITSET_MATCH_ANY`: what plain `FUTEX_WAIT`/`FUTEX_WAKE` use.
pub const MATCH_ANY: u32 = u32::MAX;
const NANOS: i64 = 1_000_000_000;

/// A futex wait made by a fiber, as handed to [`crate::Hook::futex_wait`].
#[derive(Clone, Copy, Debug)]
pub struct FutexWait {
    /// The futex word's address (4-byte aligned, non-null: the shim checked).
    pub addr: usize,
    /// The value the caller expects the word to hold; the wait must not start otherwise.
    pub expected: u32,
    /// The waiter's bitset (`MATCH_ANY` for `FUTEX_WAIT`); never zero.
    pub bitset: u32,
    /// When the wait ends with `ETIMEDOUT`, on `CLOCK_MONOTONIC`.
    pub deadline: Option<Deadline>,
    /// A shared (not `FUTEX_PRIVATE_FLAG`) futex: another process may wake it, unseen by fibra.
    pub shared: bool,
    /// `FUTEX_WAIT` (std uses `FUTEX_WAIT_BITSET`; parking_lot's thread parker uses this).
    pub plain: bool,
}

impl FutexWait {
    /// The futex word.
    pub fn word(&self) -> &AtomicU32 {
        // SAFETY: the caller of `syscall(SYS_futex, ..)` passed a valid, aligned futex word
        // (the kernel would fault otherwise) that stays valid while it waits on it.
        unsafe { &*(self.addr as *const AtomicU32) }
    }
}

/// The process-wide table of fiber futex waiters, implemented by the scheduler.
///
/// # Safety
/// `wake` is called from any thread, inside or outside fibers, with the dispatch slot emptied;
/// it must not unwind, must not block for long (they run where a futex wake
/// was expected to be quick) and must keep [`FIBER_FUTEX_WAITERS`] equal to the number of fiber
/// waiters it holds (it may over-count transiently, never under-count).
pub unsafe trait FiberFutexes: Sync {
    /// Wakes up to `count` fiber waiters on `addr` whose bitset intersects `bitset` and returns
    /// how many it woke (at most `count`).
    fn wake(&self, addr: usize, count: u32, bitset: u32) -> u32;
}

/// How many fibers, in the whole process, are registered as futex waiters right now. A wake
/// that reads 0 here (after a `SeqCst` fence) goes straight to the kernel.
pub static FIBER_FUTEX_WAITERS: AtomicUsize = AtomicUsize::new(0);

static TABLE: OnceLock<&'static dyn FiberFutexes> = OnceLock::new();

/// Installs the process's fiber futex table (once; later calls are ignored).
pub fn install_fiber_futexes(table: &'static dyn FiberFutexes) {
    let _ = TABLE.set(table);
}

thread_local! {
    /// While set, the next futex wait made outside a fiber on this thread is not performed:
    /// its address is recorded here and it fails with `ETIMEDOUT`. See [`probe_futex_wait`].
    static PROBE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `f` (outside any fiber) and returns the address of the first futex wait it makes, which
/// is not performed but fails at once with `ETIMEDOUT`. Schedulers use it to learn the address
/// of std's per-thread parker word: `probe_futex_wait(|| std::thread::park_timeout(ZERO))`.
pub fn probe_futex_wait(f: impl FnOnce()) -> Option<usize> {
    PROBE.set(Some(0));
    f();
    let seen = PROBE.replace(None);
    seen.filter(|&addr| addr != 0)
}

/// Wakes fiber waiters on `addr` (any thread may call this). Returns how many it woke.
#[inline]
fn wake_fibers(addr: usize, count: u32, bitset: u32) -> u32 {
    // Pairs with the fence a waiter issues between registering and re-reading the word: either
    // the waiter sees the caller's store to the word, or this load sees the waiter.
    fence(Ordering::SeqCst);
    if FIBER_FUTEX_WAITERS.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    match TABLE.get() {
        Some(table) => crate::dispatch::without_hook(|| table.wake(addr, count, bitset)),
        None => 0,
    }
}

/// The kernel's count for a wake: it always wakes at least one waiter, whatever `val` says.
fn wake_count(val: u32) -> u32 {
    let val = val as i32;
    if val <= 0 { 1 } else { val as u32 }
}

/// libc's `syscall` with all six argument registers.
///
/// # Safety
/// The contract of the system call `num`.
unsafe fn forward(num: libc::c_long, a: [libc::c_long; 6]) -> libc::c_long {
    // SAFETY: forwarded unchanged under the caller's contract.
    unsafe { real::syscall(num, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

fn fail(errno: i32) -> libc::c_long {
    crate::set_errno(errno);
    -1
}

/// Converts a futex timeout to a monotonic deadline. `absolute` for `FUTEX_WAIT_BITSET`,
/// relative for `FUTEX_WAIT`; `realtime` for `FUTEX_CLOCK_REALTIME`.
fn deadline_of(
    ts: *const libc::timespec,
    absolute: bool,
    realtime: bool,
) -> Result<Option<Deadline>, i32> {
    if ts.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller passed a readable timespec, as the kernel requires.
    let ts = unsafe { std::ptr::read_unaligned(ts) };
    if ts.tv_sec < 0 || ts.tv_nsec < 0 || ts.tv_nsec as i64 >= NANOS {
        return Err(libc::EINVAL);
    }
    let requested = (ts.tv_sec as u64)
        .saturating_mul(NANOS as u64)
        .saturating_add(ts.tv_nsec as u64);
    let now = Deadline::now();
    Ok(Some(match (absolute, realtime) {
        (false, _) => now.after(requested),
        (true, false) => Deadline(requested),
        // An absolute realtime deadline is converted once, when the wait starts.
        (true, true) => now.after(requested.saturating_sub(clock_ns(libc::CLOCK_REALTIME))),
    }))
}

/// Interposed `syscall(2)` (variadic in C: the six argument registers are spelled out, which is
/// the same call for integer and pointer arguments on x86_64 and aarch64 Linux; arguments the
/// caller did not pass hold garbage and are never read for the operations that lack them).
///
/// # Safety
/// The contract of the system call `num`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn syscall(
    num: libc::c_long,
    a1: libc::c_long,
    a2: libc::c_long,
    a3: libc::c_long,
    a4: libc::c_long,
    a5: libc::c_long,
    a6: libc::c_long,
) -> libc::c_long {
    let args = [a1, a2, a3, a4, a5, a6];
    if num != libc::SYS_futex {
        // SAFETY: forwarded unchanged.
        return unsafe { forward(num, args) };
    }
    // SAFETY: the futex arguments are the caller's, under the futex contract.
    unsafe { futex(args) }
}

/// `SYS_futex`, argument by argument: `uaddr, op, val, timeout-or-val2, uaddr2, val3`.
unsafe fn futex(args: [libc::c_long; 6]) -> libc::c_long {
    let addr = args[0] as usize;
    let op = args[1] as libc::c_int;
    let val = args[2] as u32;
    let val3 = args[5] as u32;
    let cmd = op & FUTEX_CMD_MASK;
    if op & libc::FUTEX_CLOCK_REALTIME != 0
        && cmd != libc::FUTEX_WAIT
        && cmd != libc::FUTEX_WAIT_BITSET
    {
        // The kernel refuses the clock flag on every other operation (ENOSYS): let it.
        // SAFETY: forwarded unchanged.
        return unsafe { forward(libc::SYS_futex, args) };
    }
    match cmd {
        libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET => {
            let bitset = if cmd == libc::FUTEX_WAIT {
                MATCH_ANY
            } else {
                val3
            };
            if let Some(r) = fiber_wait(addr, op, val, args[3] as *const libc::timespec, bitset) {
                return r;
            }
            if PROBE.get() == Some(0) {
                PROBE.set(Some(addr));
                return fail(libc::ETIMEDOUT);
            }
            // SAFETY: forwarded unchanged.
            unsafe { forward(libc::SYS_futex, args) }
        }
        libc::FUTEX_WAKE | libc::FUTEX_WAKE_BITSET => {
            let bitset = if cmd == libc::FUTEX_WAKE {
                MATCH_ANY
            } else {
                val3
            };
            if bitset == 0 {
                return fail(libc::EINVAL);
            }
            let count = wake_count(val);
            let woken = wake_fibers(addr, count, bitset);
            if woken >= count {
                return woken as libc::c_long;
            }
            let mut rest = args;
            rest[2] = (count - woken) as libc::c_long;
            // SAFETY: the caller's wake, for the waiters the fibers did not take.
            plus_fibers(unsafe { forward(libc::SYS_futex, rest) }, woken)
        }
        libc::FUTEX_REQUEUE | libc::FUTEX_CMP_REQUEUE => {
            // Fiber waiters are woken rather than requeued: a waiter must tolerate a spurious
            // wake-up, and every futex user re-checks its word. The kernel requeues its own.
            if cmd == libc::FUTEX_CMP_REQUEUE && fiber_waiters_exist() {
                if addr == 0 || addr & 3 != 0 {
                    return fail(if addr == 0 {
                        libc::EFAULT
                    } else {
                        libc::EINVAL
                    });
                }
                // SAFETY: a non-null, aligned futex word the caller passed; the kernel would
                // read it too.
                let word = unsafe { &*(addr as *const AtomicU32) };
                if word.load(Ordering::SeqCst) != val3 {
                    return fail(libc::EAGAIN);
                }
            }
            // Unlike FUTEX_WAKE, the kernel's requeue wakes exactly `val` (0 means none) and
            // refuses negative counts (EINVAL): pass those on untouched.
            let requeue = args[3] as u32;
            if (val as i32) < 0 || (requeue as i32) < 0 {
                // SAFETY: forwarded unchanged (EINVAL).
                return unsafe { forward(libc::SYS_futex, args) };
            }
            let wake = val;
            let woken = wake_fibers(addr, wake.saturating_add(requeue), MATCH_ANY);
            let woken_as_wake = woken.min(wake);
            let woken_as_requeue = woken - woken_as_wake;
            let mut rest = args;
            rest[2] = (wake - woken_as_wake) as libc::c_long;
            rest[3] = (requeue - woken_as_requeue) as libc::c_long;
            if woken > 0 && rest[2] == 0 && rest[3] == 0 {
                return woken as libc::c_long;
            }
            if woken == 0 {
                rest = args;
            }
            // SAFETY: the caller's requeue, for what the fibers did not take.
            plus_fibers(unsafe { forward(libc::SYS_futex, rest) }, woken)
        }
        libc::FUTEX_WAKE_OP => {
            // The kernel performs the atomic operation on `uaddr2` and wakes its own waiters;
            // fiber waiters on both words are woken unconditionally (a spurious wake-up at
            // worst), since fibra cannot see whether the operation's comparison held.
            // SAFETY: forwarded unchanged.
            let kernel = unsafe { forward(libc::SYS_futex, args) };
            if kernel < 0 {
                return kernel;
            }
            let woken = wake_fibers(addr, wake_count(val), MATCH_ANY)
                + wake_fibers(args[4] as usize, wake_count(args[3] as u32), MATCH_ANY);
            kernel + woken as libc::c_long
        }
        // SAFETY: forwarded unchanged (PI futexes and anything newer block the thread).
        _ => unsafe { forward(libc::SYS_futex, args) },
    }
}

/// The result of a wake that took `woken` fiber waiters before the kernel's part returned
/// `kernel`: the total woken, or the kernel's error (errno already set) when it failed and no
/// fiber was woken either.
fn plus_fibers(kernel: libc::c_long, woken: u32) -> libc::c_long {
    match kernel {
        k if k < 0 && woken == 0 => k,
        k if k < 0 => woken as libc::c_long,
        k => k + woken as libc::c_long,
    }
}

fn fiber_waiters_exist() -> bool {
    fence(Ordering::SeqCst);
    FIBER_FUTEX_WAITERS.load(Ordering::Relaxed) != 0
}

/// A futex wait in the active hook; `None` when no hook is active (the caller forwards).
fn fiber_wait(
    addr: usize,
    op: libc::c_int,
    val: u32,
    ts: *const libc::timespec,
    bitset: u32,
) -> Option<libc::c_long> {
    crate::dispatch::active()?;
    let cmd = op & FUTEX_CMD_MASK;
    let realtime = op & libc::FUTEX_CLOCK_REALTIME != 0;
    if addr == 0 {
        return Some(fail(libc::EFAULT));
    }
    if addr & 3 != 0 || bitset == 0 {
        return Some(fail(libc::EINVAL));
    }
    let deadline = match deadline_of(ts, cmd == libc::FUTEX_WAIT_BITSET, realtime) {
        Ok(d) => d,
        Err(e) => return Some(fail(e)),
    };
    let wait = FutexWait {
        addr,
        expected: val,
        bitset,
        deadline,
        shared: op & libc::FUTEX_PRIVATE_FLAG == 0,
        plain: cmd == libc::FUTEX_WAIT,
    };
    let result = with_hook(|hook| hook.futex_wait(&wait))?;
    Some(match result {
        Ok(()) => 0,
        Err(Errno(e)) => fail(e),
    })
}
