//! The per-thread scheduler: fiber table, run queue, park and wake, and the event loop.
//!
//! One `Scheduler` exists per thread inside `fibra::run`, reachable through a thread-local
//! pointer. Everything here runs on that one thread; interior mutability is `Cell`/`RefCell`,
//! and no `RefCell` borrow is ever held across a fiber switch.
//!
//! The loop: resume runnable fibers in FIFO order; every [`EVENT_INTERVAL`] resumptions, and
//! whenever nothing is runnable, poll the reactor (without blocking if fibers are runnable) and
//! fire due timers. Polling only every few dozen switches keeps a yield between two fibers free
//! of system calls while still letting I/O in under load.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::ptr::NonNull;
use std::time::Duration;

use corosensei::{CoroutineResult, Yielder};
use std::os::fd::RawFd;

use fibra_shim::{Deadline, Errno, Hook, Readiness, WaitClock};

use crate::fiber::{Fiber, FiberCoroutine, FiberId, State, WaitReason, Wake, WakeToken};
use crate::io::Io;
use crate::reactor::{FD_TOKEN_LIMIT, Reactor, TIMER_TOKEN};
use crate::stack::StackPool;
use crate::timer::Timers;

/// Finished fibers' records kept for reuse by the next spawns.
const SPARE_FIBERS: usize = 1024;

/// Resumptions between two looks at the reactor while fibers are runnable.
const EVENT_INTERVAL: u32 = 61;

thread_local! {
    static CURRENT: Cell<*const Scheduler> = const { Cell::new(std::ptr::null()) };
}

static NEXT_FIBER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) struct Scheduler {
    fibers: RefCell<Vec<Option<Box<Fiber>>>>,
    free_slots: RefCell<Vec<u32>>,
    /// Set by `cancel_all_except`: fibers spawned from then on start cancelled (a runtime
    /// shutting down must not be kept alive by a cancelled fiber's new children).
    cancelling_all: Cell<bool>,
    /// Records of finished fibers, reused by `spawn_fiber` (see [`SPARE_FIBERS`]). Boxed on
    /// purpose: a record moves between here and the fiber table as a pointer, never as 300 bytes.
    #[allow(clippy::vec_box)]
    spare_fibers: RefCell<Vec<Box<Fiber>>>,
    run_queue: RefCell<VecDeque<NonNull<Fiber>>>,
    current: Cell<Option<NonNull<Fiber>>>,
    live: Cell<usize>,
    next_park: Cell<u64>,
    pub(crate) stacks: RefCell<StackPool>,
    timers: RefCell<Timers>,
    reactor: RefCell<Reactor>,
    /// Fibers waiting on sockets and pipes (`io.rs`).
    io: Io,
    /// Sync waits: the cross-thread inbox, std's parker word, idle bookkeeping (`sync.rs`).
    pub(crate) sync: crate::sync::SchedSync,
}

impl Scheduler {
    pub fn new() -> io::Result<Scheduler> {
        let timers = Timers::new()?;
        let (reactor, waker) = Reactor::new(timers.fd())?;
        Ok(Scheduler {
            fibers: RefCell::new(Vec::new()),
            free_slots: RefCell::new(Vec::new()),
            spare_fibers: RefCell::new(Vec::new()),
            cancelling_all: Cell::new(false),
            run_queue: RefCell::new(VecDeque::new()),
            current: Cell::new(None),
            live: Cell::new(0),
            next_park: Cell::new(1),
            stacks: RefCell::new(StackPool::new()),
            timers: RefCell::new(timers),
            io: Io::new(reactor.epfd()),
            reactor: RefCell::new(reactor),
            sync: crate::sync::SchedSync::new(waker),
        })
    }

    /// The scheduler of the calling thread, if it is inside `fibra::run`.
    #[inline]
    pub fn current() -> Option<&'static Scheduler> {
        let ptr = CURRENT.get();
        // SAFETY: the pointer is set by `Installed` for exactly as long as the boxed scheduler
        // lives, and only ever read on this thread.
        unsafe { ptr.as_ref() }
    }

    /// The scheduler of the calling thread; panics with `what` named when there is none.
    #[track_caller]
    pub fn expect(what: &str) -> &'static Scheduler {
        match Scheduler::current() {
            Some(s) => s,
            None => panic!(
                "{what} called outside fibra::run; start the scheduler with fibra::run(|| ...) first"
            ),
        }
    }

    /// Makes `sched` the thread's scheduler until the returned guard drops.
    pub fn install(sched: &Scheduler) -> Installed {
        static AT_FORK: std::sync::Once = std::sync::Once::new();
        // SAFETY: registering a child handler that only writes this thread's TLS slot.
        AT_FORK.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(forget_scheduler_after_fork));
        });
        assert!(
            CURRENT.get().is_null(),
            "a scheduler is already installed on this thread"
        );
        CURRENT.set(sched);
        Installed
    }

    pub fn hook_ptr(&self) -> fibra_shim::Active {
        let hook: &(dyn Hook + 'static) = self.as_static();
        NonNull::from(hook)
    }

    fn as_static(&self) -> &'static Scheduler {
        // SAFETY: the scheduler outlives every fiber and every activation of its hook: `run`
        // drops it only after the loop ends, when no fiber runs any more.
        unsafe { &*(self as *const Scheduler) }
    }

    /// The fiber running now, if any.
    #[inline]
    pub fn current_fiber(&self) -> Option<&Fiber> {
        // SAFETY: `current` points into a boxed fiber that stays in the table while it runs.
        self.current.get().map(|f| unsafe { f.as_ref() })
    }

    #[track_caller]
    fn running(&self) -> &Fiber {
        self.current_fiber()
            .expect("fibra: this operation must run inside a fiber")
    }

    /// Adds a fiber running `body` on a fresh stack and makes it runnable.
    ///
    /// # Safety
    /// Everything `body` borrows must stay valid until the fiber has finished or been discarded;
    /// `'static` bodies satisfy this trivially.
    pub unsafe fn spawn_raw<F>(
        &self,
        name: Option<String>,
        stack_size: usize,
        body: F,
    ) -> io::Result<FiberId>
    where
        F: FnOnce(),
    {
        // SAFETY: forwarded from the caller.
        unsafe { self.spawn_fiber(name, stack_size, body) }.map(|(id, _)| id)
    }

    /// [`Scheduler::spawn_raw`], also returning the fiber's slot (for `JoinHandle::cancel`).
    ///
    /// # Safety
    /// As for [`Scheduler::spawn_raw`].
    pub unsafe fn spawn_fiber<F>(
        &self,
        name: Option<String>,
        stack_size: usize,
        body: F,
    ) -> io::Result<(FiberId, u32)>
    where
        F: FnOnce(),
    {
        let stack = self.stacks.borrow_mut().allocate(stack_size)?;
        let guard = stack.guard_range();
        let size = stack.size();
        let id = FiberId(NEXT_FIBER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let sched: &'static Scheduler = self.as_static();
        let entry = move |yielder: &Yielder<(), ()>, ()| {
            let fiber = sched.running();
            fiber.yielder.set(yielder);
            // SAFETY: the hook is the scheduler, valid for as long as this fiber runs on it.
            unsafe { fibra_shim::set_active(Some(sched.hook_ptr())) };
            // `body` catches the user's panic, but dropping what it owns afterwards (a detached
            // fiber's result, a panic payload) may panic too: that must not unwind out of the
            // coroutine, which would skip clearing the hook slot below and tear down the loop.
            // The panic hook has reported it, as for a detached thread; the payload, whose drop
            // could panic again, is leaked.
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                std::mem::forget(payload);
            }
            // The fiber's values drop here, inside it: their destructors see the fiber's
            // context and may block like any fiber code.
            fiber.locals.clear();
            // SAFETY: clearing the slot has no preconditions.
            unsafe { fibra_shim::set_active(None) };
        };
        // SAFETY: the caller keeps what `body` borrows alive for the fiber's life; the scheduler
        // the entry refers to outlives it.
        let coroutine: FiberCoroutine =
            unsafe { FiberCoroutine::with_stack_unchecked(stack, entry) };
        let span = crate::trace_context::fiber_span(id.0, name.as_deref());
        let slot = self.free_slots.borrow_mut().pop();
        let slot = match slot {
            Some(slot) => slot,
            None => {
                let mut fibers = self.fibers.borrow_mut();
                fibers.push(None);
                (fibers.len() - 1) as u32
            }
        };
        let spare = self.spare_fibers.borrow_mut().pop();
        let fiber = match spare {
            // A finished fiber's record, reused in place: no allocation, no 300-byte move.
            Some(mut fiber) => {
                fiber.id = id;
                fiber.name = name;
                fiber.slot = slot;
                *fiber.coroutine.get_mut() = Some(coroutine);
                fiber.yielder.set(std::ptr::null());
                fiber.state.set(State::Runnable);
                fiber.park.set(0);
                fiber.wake.set(Wake::Ready);
                fiber.wait.set(WaitReason::None);
                fiber.span = span;
                fiber.locals = crate::local::LocalStorage::inherit();
                fiber.interrupt = crate::timeout::InterruptState::new();
                fiber.guard = guard;
                fiber.stack_size = size;
                fiber.stack_hint.set(0);
                fiber
            }
            None => Box::new(Fiber {
                id,
                name,
                slot,
                coroutine: std::cell::UnsafeCell::new(Some(coroutine)),
                yielder: Cell::new(std::ptr::null()),
                state: Cell::new(State::Runnable),
                park: Cell::new(0),
                wake: Cell::new(Wake::Ready),
                wait: Cell::new(WaitReason::None),
                span,
                parked_spans: crate::trace_context::ParkedSpans::new(),
                // O(1): the spawner's values are shared until either side writes.
                locals: crate::local::LocalStorage::inherit(),
                interrupt: crate::timeout::InterruptState::new(),
                guard,
                stack_size: size,
                stack_hint: Cell::new(0),
            }),
        };
        if self.cancelling_all.get() {
            fiber.interrupt.cancel();
        }
        let ptr = NonNull::from(&*fiber);
        self.fibers.borrow_mut()[slot as usize] = Some(fiber);
        self.live.set(self.live.get() + 1);
        self.run_queue.borrow_mut().push_back(ptr);
        tracing::trace!(fiber = id.0, "spawned");
        Ok((id, slot))
    }

    /// Starts a new park of the running fiber and returns the token that ends it.
    pub fn prepare_park(&self) -> WakeToken {
        let fiber = self.running();
        let park = self.next_park.get();
        self.next_park.set(park + 1);
        fiber.park.set(park);
        WakeToken {
            slot: fiber.slot,
            park,
        }
    }

    /// Suspends the running fiber until its current park's token is used.
    pub fn park(&self, reason: WaitReason) -> Wake {
        let fiber = self.running();
        debug_assert_ne!(fiber.park.get(), 0, "park without prepare_park");
        fiber.state.set(State::Parked);
        fiber.wait.set(reason);
        tracing::trace!(fiber = fiber.id.0, wait = %reason, "park");
        self.switch_out(fiber);
        fiber.wait.set(WaitReason::None);
        let wake = fiber.wake.get();
        tracing::trace!(fiber = fiber.id.0, ?wake, "resume");
        wake
    }

    /// Wakes the fiber named by `token` if it is still in that park. Returns whether it did.
    pub fn unpark(&self, token: WakeToken, wake: Wake) -> bool {
        let ptr = {
            let fibers = self.fibers.borrow();
            match fibers.get(token.slot as usize) {
                Some(Some(fiber))
                    if fiber.park.get() == token.park && fiber.state.get() == State::Parked =>
                {
                    fiber.park.set(0);
                    fiber.state.set(State::Runnable);
                    fiber.wake.set(wake);
                    NonNull::from(&**fiber)
                }
                _ => return false,
            }
        };
        self.run_queue.borrow_mut().push_back(ptr);
        true
    }

    /// Puts the running fiber at the back of the run queue and runs the others.
    pub fn yield_now(&self) {
        let fiber = self.running();
        fiber.state.set(State::Runnable);
        self.run_queue.borrow_mut().push_back(NonNull::from(fiber));
        self.switch_out(fiber);
    }

    /// Parks the running fiber until `deadline`. `Err(EINTR)` when a timeout scope or a
    /// cancellation cut the sleep short (see `timeout`).
    pub fn sleep_until(&self, deadline: Deadline) -> Result<(), Errno> {
        if let Some(_interrupt) = self.running().interrupt.pending() {
            return Err(Errno::EINTR);
        }
        if deadline <= Deadline::now() {
            // libc would make a (cheap) system call; a fiber gives the others a turn.
            self.yield_now();
            return Ok(());
        }
        let token = self.prepare_park();
        match self.park_interruptible(token, WaitReason::Sleep, Some(deadline)) {
            Ok(_) => Ok(()),
            Err(_) => Err(Errno::EINTR),
        }
    }

    /// [`Scheduler::park_until`] for the waits that timeouts and cancellation interrupt
    /// (sleeps, sockets, pipes, polls, process waits, name lookups; see `timeout`).
    ///
    /// Fails at once, without parking, when the fiber is cancelled or its earliest timeout
    /// scope has expired; otherwise parks until the token is used, `deadline` passes
    /// (`Ok(Wake::Timer)`), the scope deadline passes (`Err(TimedOut)`), or the fiber is
    /// cancelled (`Err(Cancelled)`).
    pub fn park_interruptible(
        &self,
        token: WakeToken,
        reason: WaitReason,
        deadline: Option<Deadline>,
    ) -> Result<Wake, crate::timeout::Interrupt> {
        let fiber = self.running();
        let state = &fiber.interrupt;
        if let Some(interrupt) = state.pending() {
            fiber.park.set(0); // the prepared park never happens: its token goes stale
            return Err(interrupt);
        }
        let scope = state.earliest();
        let wake_at = match (deadline, scope) {
            (Some(d), Some(s)) => Some(d.min(s)),
            (d, s) => d.or(s),
        };
        state.set_interruptible(true);
        let wake = self.park_until(token, reason, wake_at);
        state.set_interruptible(false);
        match wake {
            Wake::Interrupted => Err(crate::timeout::Interrupt::Cancelled),
            Wake::Timer if deadline.is_some_and(|d| Deadline::now() >= d) => Ok(Wake::Timer),
            Wake::Timer => match state.pending() {
                Some(interrupt) => Err(interrupt),
                // The scope that set the timer was left meanwhile: nothing to report.
                None => Ok(Wake::Ready),
            },
            other => Ok(other),
        }
    }

    /// Cancels every fiber but `except` (a runtime worker's root, which serves its inbox), and
    /// every fiber spawned from now on.
    pub fn cancel_all_except(&self, except: Option<FiberId>) {
        self.cancelling_all.set(true);
        let targets: Vec<(FiberId, u32)> = self
            .fibers
            .borrow()
            .iter()
            .flatten()
            .filter(|f| Some(f.id) != except)
            .map(|f| (f.id, f.slot))
            .collect();
        for (id, slot) in targets {
            self.cancel(id, slot);
        }
    }

    /// Cancels the fiber in `slot` if it is still fiber `id` (see `JoinHandle::cancel`).
    pub fn cancel(&self, id: FiberId, slot: u32) {
        let token = {
            let fibers = self.fibers.borrow();
            let Some(Some(fiber)) = fibers.get(slot as usize) else {
                return;
            };
            if fiber.id != id || !fiber.interrupt.cancel() {
                return;
            }
            WakeToken {
                slot,
                park: fiber.park.get(),
            }
        };
        self.unpark(token, Wake::Interrupted);
    }

    /// Parks the running fiber (its park begun with `prepare_park`, which made `token`) until
    /// the token is used or `deadline` passes (then `Wake::Timer`).
    pub fn park_until(
        &self,
        token: WakeToken,
        reason: WaitReason,
        deadline: Option<Deadline>,
    ) -> Wake {
        let key = deadline.map(|d| self.timers.borrow_mut().insert(d, token));
        let wake = self.park(reason);
        if let Some(key) = key
            && wake != Wake::Timer
        {
            self.timers.borrow_mut().remove(key);
        }
        wake
    }

    /// The reactor, to register I/O sources (never borrowed across a switch).
    pub fn reactor(&self) -> std::cell::Ref<'_, Reactor> {
        self.reactor.borrow()
    }

    /// Switches from the running fiber to the scheduler loop; returns when it is resumed.
    ///
    /// `errno` is not preserved here: every interposed call already restores it around its hook
    /// (`fibra_shim::dispatch`), and fibra's own functions make no promise about it, like any
    /// Rust function.
    fn switch_out(&self, fiber: &Fiber) {
        let marker = 0u8;
        fiber
            .stack_hint
            .set(std::hint::black_box(&marker) as *const u8 as usize);
        let yielder = fiber.yielder.get();
        // SAFETY: the yielder was set on the fiber's first entry and lives on its stack, which
        // is the stack we are running on.
        unsafe { (*yielder).suspend(()) };
    }

    /// Drives every fiber to completion.
    pub fn run_loop(&self) {
        loop {
            let mut budget = EVENT_INTERVAL;
            while budget > 0 {
                let next = self.run_queue.borrow_mut().pop_front();
                let Some(fiber) = next else { break };
                if let Some(&after) = self.run_queue.borrow().front() {
                    prefetch_fiber(after);
                }
                self.sync.before_resume(self);
                self.resume(fiber);
                budget -= 1;
            }
            if self.live.get() == 0 {
                return;
            }
            let idle = self.run_queue.borrow().is_empty();
            if idle && self.timers.borrow().is_empty() && self.io.waiting() == 0 {
                if self.sync.external() == 0 {
                    self.report_deadlock();
                }
                self.sync.idle(self);
            }
            if let Err(e) = self.poll_events(idle) {
                panic!("fibra: the event loop failed: {e}");
            }
        }
    }

    fn resume(&self, ptr: NonNull<Fiber>) {
        // SAFETY: fibers in the run queue are alive: a fiber leaves the table only after it
        // finished, and a finished fiber is never queued.
        let fiber = unsafe { ptr.as_ref() };
        fiber.state.set(State::Running);
        self.current.set(Some(ptr));
        let floor = crate::trace_context::enter(&fiber.span, &fiber.parked_spans);
        // SAFETY: only the scheduler loop touches the coroutine, and not re-entrantly: a fiber
        // cannot resume another.
        let coroutine = unsafe { &mut *fiber.coroutine.get() }
            .as_mut()
            .expect("queued fibers have a coroutine");
        let result = coroutine.resume(());
        let finished = matches!(result, CoroutineResult::Return(()));
        crate::trace_context::leave(&fiber.span, &fiber.parked_spans, floor, finished);
        self.current.set(None);
        if let CoroutineResult::Return(()) = result {
            self.finish(fiber);
        }
    }

    fn finish(&self, fiber: &Fiber) {
        tracing::trace!(fiber = fiber.id.0, "finished");
        let slot = fiber.slot;
        // SAFETY: the coroutine has returned; nothing else refers to it.
        let coroutine = unsafe { &mut *fiber.coroutine.get() }
            .take()
            .expect("finished once");
        self.stacks.borrow_mut().release(coroutine.into_stack());
        let boxed = self.fibers.borrow_mut()[slot as usize].take();
        self.free_slots.borrow_mut().push(slot);
        self.live.set(self.live.get() - 1);
        if let Some(mut boxed) = boxed {
            // What the fiber owned ends with it (its span closes now); the record is kept for
            // the next spawn, up to a bound.
            boxed.name = None;
            boxed.span = tracing::Span::none();
            boxed.parked_spans = crate::trace_context::ParkedSpans::new();
            let mut spare = self.spare_fibers.borrow_mut();
            if spare.len() < SPARE_FIBERS {
                spare.push(boxed);
            }
        }
    }

    fn poll_events(&self, block: bool) -> io::Result<()> {
        let mut timeout = Some(Duration::ZERO);
        if block {
            self.timers.borrow_mut().arm()?;
            timeout = self.sync.block_timeout(self);
        }
        let mut timer_ready = false;
        self.reactor.borrow_mut().poll_events(timeout, |event| {
            let token = event.token();
            if token == TIMER_TOKEN {
                timer_ready = true;
            } else if token.0 < FD_TOKEN_LIMIT {
                self.io.on_event(self, event);
            }
        })?;
        let mut timers = self.timers.borrow_mut();
        if timer_ready {
            timers.acknowledge();
        }
        if !timers.is_empty() {
            let mut due = Vec::new();
            timers.expire(Deadline::now(), |token| due.push(token));
            drop(timers);
            for token in due {
                self.unpark(token, Wake::Timer);
            }
        }
        self.sync.after_poll(self);
        Ok(())
    }

    /// Every fiber is parked and nothing (timer, I/O, other thread) can ever wake one.
    pub(crate) fn report_deadlock(&self) -> ! {
        let mut msg = String::from(
            "fibra: deadlock: every fiber on this thread is blocked and nothing can wake any of them:",
        );
        msg.push_str(&self.describe_fibers());
        panic!("{msg}");
    }

    /// One line per fiber: `fiber #N 'name' is <what it waits for>`.
    pub(crate) fn describe_fibers(&self) -> String {
        let mut msg = String::new();
        for fiber in self.fibers.borrow().iter().flatten() {
            let _ = write!(
                msg,
                "\n  fiber {} '{}' is {}",
                fiber.id,
                fiber.display_name(),
                fiber.wait.get()
            );
        }
        msg
    }

    /// The name of the fiber `id` of this scheduler, if it exists and has one.
    pub(crate) fn fiber_name(&self, id: FiberId) -> Option<String> {
        let fibers = self.fibers.try_borrow().ok()?;
        let fiber = fibers.iter().flatten().find(|f| f.id == id)?;
        fiber.name.clone()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.sync.finish();
        // The epoll instance closes with the reactor: a later one may get its number.
        fibra_shim::fd::forget_registrations(self.reactor.get_mut().epfd());
        // Fibers that never finished (the loop was torn down by a panic) may be parked inside an
        // interposed libc call; unwinding their stacks would unwind through `extern "C"` frames.
        // Leak them, and with them their stacks (the pool then keeps its chunks mapped).
        for fiber in self.fibers.get_mut().drain(..).flatten() {
            let fiber = *fiber;
            if let Some(coroutine) = fiber.coroutine.into_inner() {
                std::mem::forget(coroutine);
            }
        }
    }
}

/// Starts loading the memory the fiber after the next one will touch first on resume (its
/// record and the top of its stack), so that with thousands of fibers the cache and TLB misses
/// overlap with the next fiber's run instead of stalling the switch.
#[inline]
fn prefetch_fiber(ptr: NonNull<Fiber>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: queued fibers are alive (see `resume`); prefetching never faults, even on an
        // address that is not mapped.
        unsafe {
            let fiber = ptr.as_ref();
            _mm_prefetch::<_MM_HINT_T0>(ptr.as_ptr().cast());
            let hint = fiber.stack_hint.get();
            if hint != 0 {
                for offset in [-128isize, -64, 0, 64, 128, 192, 256] {
                    _mm_prefetch::<_MM_HINT_T0>((hint as isize + offset) as *const i8);
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// `pthread_atfork` child handler: a child forked from a fiber (or from any thread of a fibra
/// program) starts with no scheduler. The copied one is forgotten, never resumed or dropped.
extern "C" fn forget_scheduler_after_fork() {
    CURRENT.set(std::ptr::null());
}

/// Uninstalls the thread's scheduler when dropped.
pub(crate) struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        CURRENT.set(std::ptr::null());
    }
}

// SAFETY: every method is called from the shim on the scheduler's own thread, inside a fiber,
// with the dispatch slot emptied; none unwinds (they return errors instead).
unsafe impl Hook for Scheduler {
    fn sleep_until(&self, deadline: Deadline, _clock: WaitClock) -> Result<(), Errno> {
        Scheduler::sleep_until(self, deadline)
    }

    fn wait_fd(
        &self,
        fd: RawFd,
        interest: Readiness,
        deadline: Option<Deadline>,
    ) -> Result<Readiness, Errno> {
        self.io.wait_fd(self, fd, interest, deadline)
    }

    fn wait_any_fd(
        &self,
        fds: &[(RawFd, Readiness)],
        deadline: Option<Deadline>,
    ) -> Result<Readiness, Errno> {
        self.io.wait_any_fd(self, fds, deadline)
    }

    fn fd_closed(&self, fd: RawFd) {
        self.io.fd_closed(self, fd)
    }

    fn note_drained(&self, fd: RawFd) {
        self.io.note_drained(fd)
    }

    fn fd_drained(&self, fd: RawFd) -> bool {
        self.io.fd_drained(fd)
    }

    fn futex_wait(&self, wait: &fibra_shim::futex::FutexWait) -> Result<(), Errno> {
        crate::sync::futex_wait(self, wait)
    }

    fn run_blocking(&self, call: &mut (dyn FnMut() + Send), what: fibra_shim::BlockingCall) {
        crate::sync::run_blocking(self, call, what)
    }

    fn resolve(
        &self,
        query: &fibra_shim::dns::ResolveQuery<'_>,
    ) -> Result<fibra_shim::dns::Resolved, fibra_shim::dns::GaiError> {
        crate::dns::resolve(self, query)
    }
}
