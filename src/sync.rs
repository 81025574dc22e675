//! Sync waits: fiber futex waiters, cross-thread wakes, std's per-thread parker, blocking calls.
//!
//! This module owns what happens when a fiber blocks in `std::sync`, parking_lot, crossbeam or
//! `pthread_join` (ARCHITECTURE.md, "Sync waits", explains the design at length):
//!
//! - [`TABLE`]: the process-wide table of fiber futex waiters, hashed by address into buckets
//!   of intrusive lists whose nodes live on the parked fibers' stacks. The shim's interposed
//!   `syscall` consults it on every futex wake from any thread (after one atomic load that says
//!   whether any fiber waits at all).
//! - [`Remote`]: a scheduler's inbox of wake tokens, filled by other threads and drained by the
//!   scheduler when its mio `Waker` fires.
//! - [`SchedSync`]: the per-scheduler part: the address of std's parker word for this thread
//!   and the rules that keep it honest while several fibers park on it, the safety-net re-check,
//!   and the idle bookkeeping behind the deadlock report.
//! - [`futex_wait`] and [`run_blocking`]: the scheduler's halves of the hooks, and the pool of
//!   helper threads that runs blocking calls (`pthread_join`, the DNS fallback) for fibers.

use std::cell::{Cell, UnsafeCell};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};
use std::time::Duration;

use fibra_shim::futex::{FIBER_FUTEX_WAITERS, FiberFutexes, FutexWait, MATCH_ANY};
use fibra_shim::{BlockingCall, Deadline, Errno};

use crate::fiber::{FiberId, WaitReason, Wake, WakeToken};
use crate::scheduler::Scheduler;

// std's parker states (library/std/src/sys/sync/thread_parking/futex.rs).
const EMPTY: u32 = 0;
const NOTIFIED: u32 = 1;
const PARKED: u32 = u32::MAX;

/// First interval of the parker safety net and of the shared-futex re-check; doubles per round.
const RECHECK_FIRST_NS: u64 = 1_000_000;
/// Longest interval of the parker safety net: a missed wake costs at most this much latency.
const RECHECK_MAX_NS: u64 = 128_000_000;
/// Idle time after which the scheduler checks whether its deadlock is provable.
const PROVABLE_CHECK_NS: u64 = 20_000_000;
/// Default idle time after which a possible deadlock is reported as a warning.
const DEFAULT_WARN_NS: u64 = 10_000_000_000;

// ---------------------------------------------------------------------------------------------
// A small futex lock that never goes through the interposed `syscall`.

/// A mutual-exclusion lock for fibra's own cross-thread structures. It calls the kernel through
/// `fibra_shim::real::syscall`, never the interposed symbol, so taking or releasing it can never
/// re-enter the waiter table (std's `Mutex` would: its wake goes through the table's wake path).
/// Critical sections are a few dozen instructions; a fiber that finds it contended blocks its
/// thread for that long, by design.
pub(crate) struct RawLock {
    state: AtomicU32,
}

impl RawLock {
    pub const fn new() -> RawLock {
        RawLock {
            state: AtomicU32::new(0),
        }
    }

    #[inline]
    pub fn lock(&self) -> RawGuard<'_> {
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        RawGuard { lock: self }
    }

    #[cold]
    fn lock_contended(&self) {
        let mut spins = 100;
        while spins > 0 && self.state.load(Ordering::Relaxed) == 1 {
            std::hint::spin_loop();
            spins -= 1;
        }
        while self.state.swap(2, Ordering::Acquire) != 0 {
            // SAFETY: a futex wait on our own aligned word, straight to the kernel.
            unsafe {
                fibra_shim::real::syscall(
                    libc::SYS_futex,
                    &self.state as *const AtomicU32 as libc::c_long,
                    (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as libc::c_long,
                    2,
                    0,
                    0,
                    0,
                )
            };
        }
    }

    /// Forgets any holder: only for a forked child, where the holder no longer exists.
    fn reset(&self) {
        self.state.store(0, Ordering::Relaxed);
    }
}

pub(crate) struct RawGuard<'a> {
    lock: &'a RawLock,
}

impl Drop for RawGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.lock.state.swap(0, Ordering::Release) == 2 {
            // SAFETY: a futex wake on our own word, straight to the kernel.
            unsafe {
                fibra_shim::real::syscall(
                    libc::SYS_futex,
                    &self.lock.state as *const AtomicU32 as libc::c_long,
                    (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as libc::c_long,
                    1,
                    0,
                    0,
                    0,
                )
            };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cross-thread inbox.

/// A scheduler's inbox for wakes from other threads: tokens pushed by any thread, drained by
/// the scheduler's loop, which a mio `Waker` (an eventfd in the scheduler's epoll set) wakes.
pub(crate) struct Remote {
    lock: RawLock,
    tokens: UnsafeCell<Vec<WakeToken>>,
    queued: AtomicBool,
    waker: mio::Waker,
}

// SAFETY: `tokens` is only touched under `lock`; `mio::Waker` is Send + Sync.
unsafe impl Sync for Remote {}
// SAFETY: as above.
unsafe impl Send for Remote {}

impl Remote {
    pub fn new(waker: mio::Waker) -> Remote {
        Remote {
            lock: RawLock::new(),
            tokens: UnsafeCell::new(Vec::new()),
            queued: AtomicBool::new(false),
            waker,
        }
    }

    /// Queues `token` for the scheduler and wakes its loop (from any thread).
    pub fn wake(&self, token: WakeToken) {
        let was_empty = {
            let _guard = self.lock.lock();
            // SAFETY: under `lock`.
            let tokens = unsafe { &mut *self.tokens.get() };
            let was_empty = tokens.is_empty();
            tokens.push(token);
            self.queued.store(true, Ordering::Release);
            was_empty
        };
        // One wake per batch: a push onto a non-empty inbox was already signalled, and the
        // drain takes everything under the lock.
        if was_empty && let Err(e) = self.waker.wake() {
            // The eventfd cannot fail short of fd exhaustion; the safety nets then cover it.
            tracing::warn!("fibra: waking a scheduler from another thread failed: {e}");
        }
    }

    /// Moves every queued token into `out` (which should be empty).
    fn drain(&self, out: &mut Vec<WakeToken>) {
        if !self.queued.load(Ordering::Acquire) {
            return;
        }
        let _guard = self.lock.lock();
        // SAFETY: under `lock`.
        std::mem::swap(out, unsafe { &mut *self.tokens.get() });
        self.queued.store(false, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The process-wide waiter table.

const BUCKETS: usize = 256;

/// One parked fiber in a futex wait. Lives on the fiber's stack for the whole wait; linked into
/// its bucket while it waits. Every field but `addr`/`bitset`/`park_word` changes only under
/// the bucket's lock.
struct Waiter {
    addr: usize,
    bitset: u32,
    /// Waiting on std's parker word of its own thread: every wake wakes all such waiters.
    park_word: bool,
    fiber: FiberId,
    token: Cell<WakeToken>,
    remote: *const Remote,
    woken: Cell<bool>,
    prev: Cell<*const Waiter>,
    next: Cell<*const Waiter>,
}

struct Bucket {
    lock: RawLock,
    head: Cell<*const Waiter>,
    tail: Cell<*const Waiter>,
}

// SAFETY: `head` and the waiters reachable from it are only touched under `lock`.
unsafe impl Sync for Bucket {}

/// The table; see the module documentation.
pub(crate) struct FutexTable {
    buckets: [Bucket; BUCKETS],
}

pub(crate) static TABLE: FutexTable = FutexTable {
    buckets: [const {
        Bucket {
            lock: RawLock::new(),
            head: Cell::new(std::ptr::null()),
            tail: Cell::new(std::ptr::null()),
        }
    }; BUCKETS],
};

impl FutexTable {
    fn bucket(&self, addr: usize) -> &Bucket {
        let hash = ((addr >> 2) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.buckets[(hash >> 56) as usize % BUCKETS]
    }

    /// Links `w` at the tail (held lock: `bucket`): waiters are woken first come, first served,
    /// as the kernel does.
    fn link(&self, bucket: &Bucket, w: &Waiter) {
        let tail = bucket.tail.get();
        w.prev.set(tail);
        w.next.set(std::ptr::null());
        if tail.is_null() {
            bucket.head.set(w);
        } else {
            // SAFETY: linked waiters are alive (their fibers are parked) and we hold the lock.
            unsafe { (*tail).next.set(w) };
        }
        bucket.tail.set(w);
        FIBER_FUTEX_WAITERS.fetch_add(1, Ordering::SeqCst);
    }

    /// Unlinks `w`, which must be linked in `bucket` (held lock).
    fn unlink(&self, bucket: &Bucket, w: &Waiter) {
        let (prev, next) = (w.prev.get(), w.next.get());
        if prev.is_null() {
            bucket.head.set(next);
        } else {
            // SAFETY: as in `link`.
            unsafe { (*prev).next.set(next) };
        }
        if next.is_null() {
            bucket.tail.set(prev);
        } else {
            // SAFETY: as in `link`.
            unsafe { (*next).prev.set(prev) };
        }
        w.prev.set(std::ptr::null());
        w.next.set(std::ptr::null());
        FIBER_FUTEX_WAITERS.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes up to `count` waiters on `addr` matching `bitset` (all parker-word waiters, if the
    /// word is a parker word), handing each to `deliver` under the bucket lock. Returns how many
    /// it woke, at most `count`.
    fn wake_with(
        &self,
        addr: usize,
        count: u32,
        bitset: u32,
        mut deliver: impl FnMut(WakeToken, *const Remote),
    ) -> u32 {
        let bucket = self.bucket(addr);
        let _guard = bucket.lock.lock();
        let mut woken = 0u32;
        let mut cur = bucket.head.get();
        while !cur.is_null() {
            // SAFETY: linked waiters are alive and we hold the lock.
            let w = unsafe { &*cur };
            cur = w.next.get();
            if w.addr != addr || w.bitset & bitset == 0 {
                continue;
            }
            if woken >= count && !w.park_word {
                break;
            }
            self.unlink(bucket, w);
            w.woken.set(true);
            woken = woken.saturating_add(1);
            deliver(w.token.get(), w.remote);
        }
        woken.min(count)
    }

    /// Unlinks every waiter of the scheduler whose inbox is `remote`: its fibers will never run
    /// again (a panic tore its loop down and leaked them), and a later wake must not reach its
    /// freed inbox.
    fn forget_scheduler(&self, remote: *const Remote) {
        for bucket in &self.buckets {
            let _guard = bucket.lock.lock();
            let mut cur = bucket.head.get();
            while !cur.is_null() {
                // SAFETY: linked waiters are alive (leaked stacks stay mapped) and we hold the
                // lock.
                let w = unsafe { &*cur };
                cur = w.next.get();
                if w.remote == remote {
                    self.unlink(bucket, w);
                }
            }
        }
    }

    /// Empties the table in a forked child: the waiters belong to threads that do not exist
    /// there (their nodes are leaked, never touched again).
    fn reset_after_fork(&self) {
        for bucket in &self.buckets {
            bucket.lock.reset();
            bucket.head.set(std::ptr::null());
            bucket.tail.set(std::ptr::null());
        }
        FIBER_FUTEX_WAITERS.store(0, Ordering::SeqCst);
    }

    /// Whether a fiber other than `me` of the scheduler whose inbox is `remote` waits on `addr`.
    fn other_local_waiter(
        &self,
        addr: usize,
        remote: *const Remote,
        me: FiberId,
    ) -> Option<FiberId> {
        let bucket = self.bucket(addr);
        let _guard = bucket.lock.lock();
        let mut cur = bucket.head.get();
        while !cur.is_null() {
            // SAFETY: as in `wake_with`.
            let w = unsafe { &*cur };
            if w.addr == addr && w.remote == remote && w.fiber != me {
                return Some(w.fiber);
            }
            cur = w.next.get();
        }
        None
    }
}

/// Delivers a wake to the fiber behind `token`: directly when the caller is user code of a
/// fiber of that very scheduler (no `RefCell` of the scheduler is borrowed there), otherwise
/// through the scheduler's inbox.
fn deliver(token: WakeToken, remote: *const Remote) {
    if let Some(sched) = Scheduler::current()
        && std::ptr::eq(Arc::as_ptr(&sched.sync.remote), remote)
        && sched.current_fiber().is_some()
    {
        sched.unpark(token, Wake::Ready);
        return;
    }
    // SAFETY: the waiter was linked until a moment ago and the bucket lock is still held, so
    // its fiber is still parked and its scheduler (which owns the inbox) alive.
    unsafe { (*remote).wake(token) };
}

/// The shim's entry point for wakes from any thread.
struct Table;

// SAFETY: `wake` never unwinds (nothing in it panics), only takes fibra's raw locks briefly,
// and keeps FIBER_FUTEX_WAITERS exact (link/unlink).
unsafe impl FiberFutexes for Table {
    fn wake(&self, addr: usize, count: u32, bitset: u32) -> u32 {
        TABLE.wake_with(addr, count, bitset, deliver)
    }
}

static TABLE_ENTRY: Table = Table;

/// Installs the table in the shim and the fork handler that empties it in a child. Idempotent.
pub(crate) fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        fibra_shim::futex::install_fiber_futexes(&TABLE_ENTRY);
        // SAFETY: registering a plain `extern "C"` child handler.
        unsafe { libc::pthread_atfork(None, None, Some(reset_after_fork)) };
    });
}

extern "C" fn reset_after_fork() {
    TABLE.reset_after_fork();
    HELPERS.reset_after_fork();
}

// ---------------------------------------------------------------------------------------------
// Per-scheduler state.

/// The per-scheduler part of sync waits (one per `Scheduler`, used only on its thread).
pub(crate) struct SchedSync {
    pub remote: Arc<Remote>,
    /// Address of std's parker word of this thread (0 if it could not be found).
    park_word: usize,
    /// Static TLS ranges of this thread: a futex word there is per-OS-thread state.
    tls: Vec<(usize, usize)>,
    /// Fibers registered on the parker word right now.
    park_waiters: Cell<usize>,
    /// Fibers in waits another thread could end (futex waits, blocking calls).
    external: Cell<usize>,
    /// Of those, the ones that a helper thread or another process will end.
    surely_external: Cell<usize>,
    /// The parker safety net: the next forced re-check and the current interval.
    recheck_at: Cell<Deadline>,
    recheck_ns: Cell<u64>,
    /// Resumptions still owed to fibers the safety net woke (not counted as progress).
    recheck_resumes: Cell<usize>,
    /// Progress counter and idle bookkeeping for the deadlock report.
    epoch: Cell<u64>,
    idle_epoch: Cell<u64>,
    idle_since: Cell<Option<Deadline>>,
    provable_checked: Cell<bool>,
    warned: Cell<bool>,
    warn_ns: u64,
    scratch: Cell<Vec<WakeToken>>,
}

impl SchedSync {
    /// Must run on the scheduler's thread, outside any fiber (it probes std's parker).
    pub fn new(waker: mio::Waker) -> SchedSync {
        install();
        SchedSync {
            remote: Arc::new(Remote::new(waker)),
            park_word: discover_park_word(),
            tls: static_tls_ranges(),
            park_waiters: Cell::new(0),
            external: Cell::new(0),
            surely_external: Cell::new(0),
            recheck_at: Cell::new(Deadline(u64::MAX)),
            recheck_ns: Cell::new(RECHECK_FIRST_NS),
            recheck_resumes: Cell::new(0),
            epoch: Cell::new(0),
            idle_epoch: Cell::new(u64::MAX),
            idle_since: Cell::new(None),
            provable_checked: Cell::new(false),
            warned: Cell::new(false),
            warn_ns: std::env::var("FIBRA_DEADLOCK_WARN_MS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(DEFAULT_WARN_NS, |ms| ms.saturating_mul(1_000_000)),
            scratch: Cell::new(Vec::new()),
        }
    }

    /// Fibers in waits that another thread could end.
    pub fn external(&self) -> usize {
        self.external.get()
    }

    fn park_word(&self) -> &AtomicU32 {
        // SAFETY: std's parker word lives in the thread's `Thread` handle, which the thread
        // keeps alive for as long as it runs; `park_word` is only used when non-zero.
        unsafe { &*(self.park_word as *const AtomicU32) }
    }

    /// Called by the loop before every resumption: keeps the parker word honest while fibers
    /// are parked on it, and counts progress.
    #[inline]
    pub fn before_resume(&self, sched: &Scheduler) {
        let owed = self.recheck_resumes.get();
        if owed > 0 {
            self.recheck_resumes.set(owed - 1);
        } else {
            self.epoch.set(self.epoch.get().wrapping_add(1));
        }
        if self.park_waiters.get() > 0 {
            self.check_park_word(sched);
        }
    }

    /// Keeps the parker word usable by many fibers. std's `park` only reaches its futex wait
    /// (and so the hook) when its `fetch_sub` turns EMPTY into PARKED; on PARKED it would make
    /// -2 and spin without a system call. So while a fiber may run, the word must read EMPTY:
    /// the loop sets it so before every resumption. (Only while the loop blocks in epoll does
    /// it read PARKED, so that an `unpark` from another thread makes its futex wake; see
    /// [`SchedSync::block_timeout`].) NOTIFIED means an `unpark` happened without a system call:
    /// wake every fiber parked on the word; the token stays for whichever parks next.
    fn check_park_word(&self, sched: &Scheduler) {
        let word = self.park_word();
        loop {
            match word.load(Ordering::SeqCst) {
                EMPTY => return,
                NOTIFIED => {
                    // Parked fibers left means the unpark made no futex wake (which would
                    // have woken them all): evidence that one may be lost.
                    if self.wake_park_waiters(sched) > 0 {
                        self.park_activity();
                    }
                    return;
                }
                v => {
                    if word
                        .compare_exchange(v, EMPTY, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Unparks that went around the futex wake make a wake lost to a sibling's `park` likelier
    /// for a while: re-check soon, then back off again.
    fn park_activity(&self) {
        let soon = Deadline::now().after(RECHECK_FIRST_NS);
        self.recheck_ns.set(RECHECK_FIRST_NS);
        if soon < self.recheck_at.get() {
            self.recheck_at.set(soon);
        }
    }

    /// Wakes every fiber of this scheduler parked on the parker word (from the loop).
    fn wake_park_waiters(&self, sched: &Scheduler) -> u32 {
        TABLE.wake_with(self.park_word, u32::MAX, MATCH_ANY, |token, _| {
            sched.unpark(token, Wake::Ready);
        })
    }

    /// How long the loop may block in epoll when nothing is runnable (`None`: until an event).
    ///
    /// With fibers parked on the parker word, the word is set to PARKED for the time the loop
    /// blocks: no fiber can run then, and an `unpark` from another thread sees PARKED and makes
    /// the futex wake that reaches the table (and the loop, through the inbox). If it already
    /// reads NOTIFIED, the parked fibers are woken and the loop does not block.
    pub fn block_timeout(&self, sched: &Scheduler) -> Option<Duration> {
        let now = Deadline::now();
        let mut until: Option<Deadline> = None;
        if self.park_waiters.get() > 0 {
            let word = self.park_word();
            loop {
                match word.load(Ordering::SeqCst) {
                    PARKED => break,
                    NOTIFIED => {
                        if self.wake_park_waiters(sched) > 0 {
                            self.park_activity();
                        }
                        return Some(Duration::ZERO);
                    }
                    v => {
                        if word
                            .compare_exchange(v, PARKED, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                        {
                            break;
                        }
                    }
                }
            }
            until = Some(self.recheck_at.get());
        }
        if let Some(since) = self.idle_since.get() {
            let next = if !self.provable_checked.get() {
                Some(since.after(PROVABLE_CHECK_NS))
            } else if !self.warned.get() {
                Some(since.after(self.warn_ns))
            } else {
                None
            };
            until = match (until, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        until.map(|d| Duration::from_nanos(d.remaining_from(now).max(1)))
    }

    /// Called after every look at the reactor: delivers wakes queued by other threads and runs
    /// the parker safety net.
    pub fn after_poll(&self, sched: &Scheduler) {
        let mut tokens = self.scratch.take();
        self.remote.drain(&mut tokens);
        for token in tokens.drain(..) {
            sched.unpark(token, Wake::Ready);
        }
        self.scratch.set(tokens);
        if self.park_waiters.get() > 0 && Deadline::now() >= self.recheck_at.get() {
            let woken = self.wake_park_waiters(sched) as usize;
            self.recheck_resumes.set(self.recheck_resumes.get() + woken);
            let interval = (self.recheck_ns.get() * 2).min(RECHECK_MAX_NS);
            self.recheck_ns.set(interval);
            self.recheck_at.set(Deadline::now().after(interval));
        }
    }

    /// The loop found nothing runnable and nothing pending but waits other threads could end.
    /// Reports a deadlock when it is provable (no other thread exists to end any of them), and
    /// warns once when the scheduler made no progress for the warning period.
    pub fn idle(&self, sched: &Scheduler) {
        let now = Deadline::now();
        let since = match self.idle_since.get() {
            Some(since) if self.idle_epoch.get() == self.epoch.get() => since,
            _ => {
                self.idle_since.set(Some(now));
                self.idle_epoch.set(self.epoch.get());
                self.provable_checked.set(false);
                self.warned.set(false);
                return;
            }
        };
        let idle_ns = now.0.saturating_sub(since.0);
        if !self.provable_checked.get() && idle_ns >= PROVABLE_CHECK_NS {
            self.provable_checked.set(true);
            if self.surely_external.get() == 0 && process_threads() == Some(1) {
                sched.report_deadlock();
            }
        }
        if !self.warned.get() && idle_ns >= self.warn_ns {
            self.warned.set(true);
            let mut msg = format!(
                "fibra: possible deadlock: for {} ms every fiber on this thread has been blocked \
                 on waits that only another thread could end, and none has:",
                idle_ns / 1_000_000
            );
            msg.push_str(&sched.describe_fibers());
            let _ = write!(
                msg,
                "\n  (fibra keeps waiting. Note: std::sync::mpsc and crossbeam-channel never wake \
                 a receiver or sender blocked on the same OS thread as the other side, so two \
                 fibers of one thread cannot block on each other through a channel; see \
                 ARCHITECTURE.md, \"Sync waits\".)"
            );
            eprintln!("{msg}");
        }
    }

    /// Called when the scheduler is dropped. Forgets the waiters of fibers that will never run
    /// again (after a panic), and puts std's parker word back to EMPTY if it was left PARKED
    /// (the thread's next real `park` would spin).
    pub fn finish(&self) {
        if self.external.get() > 0 {
            TABLE.forget_scheduler(Arc::as_ptr(&self.remote));
        }
        if self.park_word != 0 {
            let word = self.park_word();
            let v = word.load(Ordering::SeqCst);
            if v != EMPTY && v != NOTIFIED {
                let _ = word.compare_exchange(v, EMPTY, Ordering::SeqCst, Ordering::SeqCst);
            }
        }
    }

    fn in_static_tls(&self, addr: usize) -> bool {
        self.tls
            .iter()
            .any(|&(start, end)| addr >= start && addr < end)
    }
}

/// Finds the address of std's parker word of the calling thread: a zero-timeout `park_timeout`
/// makes exactly one futex wait on it, which the shim records instead of performing.
fn discover_park_word() -> usize {
    let probe = || std::thread::park_timeout(Duration::ZERO);
    if let Some(addr) = fibra_shim::futex::probe_futex_wait(probe) {
        return addr;
    }
    // The thread held an unpark token, which that call consumed: probe again, then give the
    // token back.
    let addr = fibra_shim::futex::probe_futex_wait(probe);
    std::thread::current().unpark();
    addr.unwrap_or_else(|| {
        tracing::warn!(
            "fibra: std's parker word was not found; fibers parking in std::thread::park at once may spin"
        );
        0
    })
}

/// The calling thread's static TLS blocks (one per loaded object that has TLS).
fn static_tls_ranges() -> Vec<(usize, usize)> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info record; `data` is our Vec.
        let (info, ranges) = unsafe { (&*info, &mut *(data as *mut Vec<(usize, usize)>)) };
        if info.dlpi_tls_data.is_null() {
            return 0;
        }
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: `dlpi_phdr` has `dlpi_phnum` entries.
            let phdr = unsafe { &*info.dlpi_phdr.add(i) };
            if phdr.p_type == libc::PT_TLS {
                let start = info.dlpi_tls_data as usize;
                ranges.push((start, start + phdr.p_memsz as usize));
            }
        }
        0
    }
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    // SAFETY: the callback only reads the records and pushes to `ranges`.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut ranges as *mut Vec<_>).cast()) };
    ranges
}

/// The number of threads in this process (`/proc/self/stat`, field 20).
fn process_threads() -> Option<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(17)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The hooks.

/// The scheduler's half of a fiber's futex wait. See [`fibra_shim::Hook::futex_wait`].
pub(crate) fn futex_wait(sched: &Scheduler, wait: &FutexWait) -> Result<(), Errno> {
    let st = &sched.sync;
    let word = wait.word();
    let park_word = st.park_word != 0 && wait.addr == st.park_word;
    let mut expected = wait.expected;
    if park_word {
        // The caller's `fetch_sub` turned EMPTY (which the loop keeps while fibers run) into
        // PARKED. NOTIFIED means an `unpark` came in since: do not wait, the caller consumes
        // it. Anything else is a wait, on PARKED (as std expects).
        loop {
            match word.load(Ordering::SeqCst) {
                NOTIFIED => return Err(Errno(libc::EAGAIN)),
                PARKED => break,
                v => {
                    if word
                        .compare_exchange(v, PARKED, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        break;
                    }
                }
            }
        }
        expected = PARKED;
    }
    let me = sched
        .current_fiber()
        .expect("futex_wait is only called from a fiber");
    let remote = Arc::as_ptr(&st.remote);
    // parking_lot's per-thread parker: a plain FUTEX_WAIT for 1 on a word in the thread's TLS.
    // (A std lock kept in a `thread_local!` is fine to share: std waits with FUTEX_WAIT_BITSET.)
    if wait.plain
        && wait.expected == 1
        && !park_word
        && st.in_static_tls(wait.addr)
        && let Some(other) = TABLE.other_local_waiter(wait.addr, remote, me.id)
    {
        per_thread_word_conflict(sched, wait.addr, me.id, other);
    }
    let waiter = Waiter {
        addr: wait.addr,
        bitset: wait.bitset,
        park_word,
        fiber: me.id,
        token: Cell::new(sched.prepare_park()),
        remote,
        woken: Cell::new(false),
        prev: Cell::new(std::ptr::null()),
        next: Cell::new(std::ptr::null()),
    };
    let bucket = TABLE.bucket(wait.addr);
    {
        let _guard = bucket.lock.lock();
        TABLE.link(bucket, &waiter);
    }
    // Register, then re-check, as the kernel does: a waker that changed the word before our
    // load is seen by it; one that changes it after finds us in the table (the shim fences
    // between the user's store and its look at the table).
    fence(Ordering::SeqCst);
    if word.load(Ordering::SeqCst) != expected {
        let _guard = bucket.lock.lock();
        if !waiter.woken.get() {
            TABLE.unlink(bucket, &waiter);
            return Err(Errno(libc::EAGAIN));
        }
        drop(_guard);
        // A waker took us in between and counted us as woken; its token is stale and harmless.
        return finish_woken(word, park_word);
    }

    st.external.set(st.external.get() + 1);
    if wait.shared {
        st.surely_external.set(st.surely_external.get() + 1);
    }
    if park_word {
        if st.park_waiters.get() == 0 {
            // The interval is not reset here (a fiber the safety net woke parks again at once);
            // only signs of unparks that went around the futex wake reset it.
            st.recheck_at
                .set(Deadline::now().after(st.recheck_ns.get()));
        }
        st.park_waiters.set(st.park_waiters.get() + 1);
    }
    let reason = if park_word {
        WaitReason::ThreadPark { addr: wait.addr }
    } else {
        WaitReason::Futex { addr: wait.addr }
    };
    // A shared futex may be woken by another process, which fibra cannot see: re-read the word
    // at growing intervals and return (as a wake) once it changed.
    let mut shared_recheck = RECHECK_FIRST_NS;
    let mut shared_at = Deadline::now().after(shared_recheck);
    let result = loop {
        let timer = match (wait.deadline, wait.shared) {
            (d, false) => d,
            (None, true) => Some(shared_at),
            (Some(d), true) => Some(d.min(shared_at)),
        };
        sched.park_until(waiter.token.get(), reason, timer);
        let _guard = bucket.lock.lock();
        if waiter.woken.get() {
            break Ok(());
        }
        let now = Deadline::now();
        if wait.deadline.is_some_and(|d| now >= d) {
            TABLE.unlink(bucket, &waiter);
            break Err(Errno::ETIMEDOUT);
        }
        if wait.shared && now >= shared_at {
            if word.load(Ordering::SeqCst) != expected {
                TABLE.unlink(bucket, &waiter);
                break Ok(());
            }
            shared_recheck = (shared_recheck * 2).min(RECHECK_MAX_NS);
            shared_at = now.after(shared_recheck);
        }
        // Anything else (a stale or foreign wake) does not end a futex wait: lock waits are
        // never cut short (std would retry at once and spin). Park again, under the lock so a
        // waker reads the new token.
        waiter.token.set(sched.prepare_park());
    };
    st.external.set(st.external.get() - 1);
    if wait.shared {
        st.surely_external.set(st.surely_external.get() - 1);
    }
    if park_word {
        st.park_waiters.set(st.park_waiters.get() - 1);
    }
    match result {
        Ok(()) => finish_woken(word, park_word),
        Err(e) => Err(e),
    }
}

/// A woken waiter on the parker word returns with the word at NOTIFIED: std's `park` returns
/// only after swapping NOTIFIED out, and the wake may have been meant for a sibling fiber (all
/// are woken; each re-checks its own condition, as park's contract requires of every caller).
fn finish_woken(word: &AtomicU32, park_word: bool) -> Result<(), Errno> {
    if park_word {
        word.store(NOTIFIED, Ordering::Release);
    }
    Ok(())
}

/// Two fibers of one thread wait at once on a futex word in the thread's own static TLS: that
/// is per-OS-thread state (parking_lot keeps its parker there), and the second fiber has already
/// overwritten the first's. Nothing can be recovered; say what happened and abort.
fn per_thread_word_conflict(sched: &Scheduler, addr: usize, me: FiberId, other: FiberId) -> ! {
    let name = |id: FiberId| sched.fiber_name(id).unwrap_or_else(|| "unnamed".to_owned());
    eprintln!(
        "fibra: fibers {me} '{}' and {other} '{}' of one OS thread are blocked at once on the \
         futex word {addr:#x}, which lives in the thread's thread-local storage: per-thread \
         state shared by every fiber of the thread. This is parking_lot (and anything built on \
         parking_lot_core), which keeps one parker per OS thread: at most one fiber per thread \
         may block in it at a time. Use std::sync's locks between fibers of one thread \
         (parking_lot is fine between a fiber and other OS threads). Aborting.",
        name(me),
        name(other)
    );
    std::process::abort();
}

/// The scheduler's half of `run_blocking`: runs `call` on a helper thread, parked until done.
pub(crate) fn run_blocking(sched: &Scheduler, call: &mut (dyn FnMut() + Send), what: BlockingCall) {
    struct Job {
        lock: RawLock,
        done: Cell<bool>,
        token: Cell<Option<WakeToken>>,
        remote: Arc<Remote>,
    }
    // SAFETY: `done` and `token` are only touched under `lock`.
    unsafe impl Sync for Job {}
    // SAFETY: as above.
    unsafe impl Send for Job {}
    struct CallPtr(*mut (dyn FnMut() + Send));
    // SAFETY: the closure is `Send`; the pointer is used by the helper alone while the fiber
    // that owns the closure stays parked (it waits for `done`).
    unsafe impl Send for CallPtr {}

    let job = Arc::new(Job {
        lock: RawLock::new(),
        done: Cell::new(false),
        token: Cell::new(None),
        remote: Arc::clone(&sched.sync.remote),
    });
    // SAFETY: erasing the closure's lifetime: this function does not return before the helper
    // has finished calling it (it waits for `done`, set after the call).
    let ptr = CallPtr(unsafe {
        std::mem::transmute::<*mut (dyn FnMut() + Send + '_), *mut (dyn FnMut() + Send + 'static)>(
            call,
        )
    });
    let helper_job = Arc::clone(&job);
    let work: HelperJob = Box::new(move || {
        let ptr = ptr;
        // SAFETY: see `CallPtr`.
        unsafe { (*ptr.0)() };
        let token = {
            let _guard = helper_job.lock.lock();
            helper_job.done.set(true);
            helper_job.token.get()
        };
        if let Some(token) = token {
            helper_job.remote.wake(token);
        }
    });
    if let Err(work) = HELPERS.submit(work) {
        // No thread to spare: block this one, as libc would have.
        work();
        return;
    }
    let st = &sched.sync;
    st.external.set(st.external.get() + 1);
    st.surely_external.set(st.surely_external.get() + 1);
    // The other fibers get a turn during every blocking call, even one the helper finishes
    // before this fiber would have parked (a woken helper often preempts the waker).
    let mut gave_a_turn = false;
    loop {
        let done = {
            let _guard = job.lock.lock();
            if !job.done.get() {
                job.token.set(Some(sched.prepare_park()));
            }
            job.done.get()
        };
        if done {
            if !gave_a_turn {
                sched.yield_now();
            }
            break;
        }
        sched.park(WaitReason::Blocking(what));
        gave_a_turn = true;
    }
    st.external.set(st.external.get() - 1);
    st.surely_external.set(st.surely_external.get() - 1);
}

// ---------------------------------------------------------------------------------------------
// Helper threads for blocking calls.

type HelperJob = Box<dyn FnOnce() + Send>;

/// An idle helper thread: parked on `word` until a job is handed to it.
struct IdleHelper {
    /// 0 while idle, 1 once `job` holds its next job.
    word: AtomicU32,
    job: UnsafeCell<Option<HelperJob>>,
}

// SAFETY: `job` is written by the one submitter that took this helper off the idle list, before
// it publishes `word` (Release), and read by the helper after it sees `word` (Acquire).
unsafe impl Sync for IdleHelper {}

/// Threads that run blocking calls for fibers (`run_blocking`): a call takes an idle helper or
/// starts a new one; a helper idle for [`HELPER_IDLE_NS`] exits. Every call has a thread of its
/// own for as long as it runs (a `pthread_join` may block for ever). Built on fibra's raw lock
/// and raw futex calls, so it can be reset in a forked child.
struct Helpers {
    lock: RawLock,
    idle: UnsafeCell<Vec<Arc<IdleHelper>>>,
}

// SAFETY: `idle` is only touched under `lock`.
unsafe impl Sync for Helpers {}

static HELPERS: Helpers = Helpers {
    lock: RawLock::new(),
    idle: UnsafeCell::new(Vec::new()),
};

/// How long a helper thread waits for another job before it exits.
const HELPER_IDLE_NS: i64 = 10_000_000_000;

impl Helpers {
    /// Runs `job` on a helper thread; gives it back if no thread could be started.
    fn submit(&'static self, job: HelperJob) -> Result<(), HelperJob> {
        let idle = {
            let _guard = self.lock.lock();
            // SAFETY: under `lock`.
            unsafe { &mut *self.idle.get() }.pop()
        };
        if let Some(helper) = idle {
            // SAFETY: taken off the idle list by us alone: no one else writes `job`.
            unsafe { *helper.job.get() = Some(job) };
            helper.word.store(1, Ordering::Release);
            raw_futex(&helper.word, libc::FUTEX_WAKE, 1, std::ptr::null());
            return Ok(());
        }
        let job = std::sync::Arc::new(std::sync::Mutex::new(Some(job)));
        let theirs = job.clone();
        let spawned = std::thread::Builder::new()
            .name("fibra-blocking".into())
            .spawn(move || {
                let first = theirs.lock().ok().and_then(|mut j| j.take());
                if let Some(first) = first {
                    self.helper_main(first);
                }
            });
        match spawned {
            Ok(_) => Ok(()),
            Err(_) => Err(job
                .lock()
                .ok()
                .and_then(|mut j| j.take())
                .expect("the job was not taken by a thread that did not start")),
        }
    }

    fn helper_main(&'static self, first: HelperJob) {
        let mut job = first;
        loop {
            job();
            let me = Arc::new(IdleHelper {
                word: AtomicU32::new(0),
                job: UnsafeCell::new(None),
            });
            {
                let _guard = self.lock.lock();
                // SAFETY: under `lock`.
                unsafe { &mut *self.idle.get() }.push(me.clone());
            }
            let timeout = libc::timespec {
                tv_sec: (HELPER_IDLE_NS / 1_000_000_000) as libc::time_t,
                tv_nsec: 0,
            };
            while me.word.load(Ordering::Acquire) == 0 {
                let timed_out =
                    raw_futex(&me.word, libc::FUTEX_WAIT, 0, &timeout) == -libc::ETIMEDOUT as i64;
                if timed_out && me.word.load(Ordering::Acquire) == 0 {
                    let _guard = self.lock.lock();
                    // SAFETY: under `lock`.
                    let idle = unsafe { &mut *self.idle.get() };
                    if let Some(pos) = idle.iter().position(|h| Arc::ptr_eq(h, &me)) {
                        idle.swap_remove(pos);
                        return;
                    }
                    // A submitter took us off the list just now: its job is on the way.
                }
            }
            // SAFETY: `word` is 1 (Acquire): the submitter's write of `job` is visible and done.
            job = unsafe { (*me.job.get()).take() }.expect("a job comes with the wake");
        }
    }

    /// Forgets every helper in a forked child (they are threads of the parent).
    fn reset_after_fork(&self) {
        self.lock.reset();
        // SAFETY: the child is single-threaded; the old list is leaked, never touched again.
        std::mem::forget(std::mem::take(unsafe { &mut *self.idle.get() }));
    }
}

/// A raw futex call on a private word, straight to the kernel (never the interposed
/// `syscall`, so never the fiber table). Returns the result, or minus the errno.
fn raw_futex(word: &AtomicU32, op: libc::c_int, val: u32, timeout: *const libc::timespec) -> i64 {
    // SAFETY: a futex call on a live, aligned word with a valid (or null) timeout.
    let r = unsafe {
        fibra_shim::real::syscall(
            libc::SYS_futex,
            word as *const AtomicU32 as libc::c_long,
            (op | libc::FUTEX_PRIVATE_FLAG) as libc::c_long,
            val as libc::c_long,
            timeout as libc::c_long,
            0,
            0,
        )
    };
    if r < 0 {
        -(fibra_shim::errno() as i64)
    } else {
        r as i64
    }
}
