//! The small executor that runs hickory's futures on a fiber scheduler.
//!
//! hickory-resolver is async; fibra's fibers are not. This module bridges the two with three
//! pieces, all per thread and all on the scheduler's own loop (no thread, no tokio):
//!
//! - [`block_on`] polls a lookup future **inside the calling fiber**; while it is pending the
//!   fiber parks, and the future's `Waker` unparks it.
//! - **Background tasks** ([`spawn`]: hickory's per-connection exchange loops) live in a task
//!   table. Whoever is polling here (a fiber in `block_on`, or the pump) runs the woken ones
//!   right after its own poll, so a request sent to a task's channel is forwarded at once.
//! - **The pump**, one fiber per thread, alive while some fiber is parked in `block_on`, owns
//!   the waiting. Futures register interest in an fd ([`register_io`]) or a deadline
//!   ([`register_timer`]) with their `Waker`. The fds go into the driver's own epoll instance
//!   (one-shot, re-armed at each `WouldBlock`), and the pump parks on that one epoll fd through
//!   the scheduler's [`Hook::wait_fd`] (nested epoll: the inner instance becomes readable when
//!   any of its fds is ready), with the earliest timer as its deadline. Woken, it collects the
//!   ready fds with a zero-timeout `epoll_wait` (cost per ready fd, not per registered fd),
//!   fires due timers and wakes the wakers. An eventfd in the inner instance (the *doorbell*)
//!   interrupts its wait when an earlier deadline is registered or the last lookup ends.
//!
//! The pump exits as soon as no fiber waits in `block_on`, so an idle resolver (an idle TCP
//! connection, an unfired timer of a dropped future) never keeps `fibra::run` from returning.
//!
//! **Wakers** are `Send + Sync` (hickory requires it). Every future, socket and timer here lives
//! on the driver's thread and hickory wakes from inside polls on it, so wakes normally act
//! directly (unpark, ready queue). A wake from another thread never touches a `RefCell`: a
//! lookup's waker goes through the scheduler's synchronised cross-thread inbox
//! (`sync::Remote`), a task's through the driver's locked inbox and its eventfd doorbell.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::os::fd::RawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;

use fibra_shim::{Deadline, Hook, Readiness};

use crate::fiber::{WaitReason, WakeToken};
use crate::scheduler::Scheduler;

/// A background task: a boxed future and its waker.
struct Task {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
    signal: Arc<TaskSignal>,
    waker: Waker,
}

struct TaskSignal {
    id: usize,
    queued: AtomicBool,
    thread: ThreadId,
    inbox: Arc<Inbox>,
}

impl Wake for TaskSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if std::thread::current().id() == self.thread {
            let _ = DRIVER.try_with(|d| d.task_woken(self.id));
        } else {
            self.inbox.push(self.id);
        }
    }
}

/// Task wakes that come from other threads (hickory wakes from inside polls on the driver's
/// thread, but a `Waker` is `Send + Sync` and may travel): queued under a lock and signalled
/// through the doorbell; the pump moves them to the ready queue.
struct Inbox {
    /// Woken task ids, and the doorbell eventfd (-1 until made, and once closed).
    state: Mutex<(Vec<usize>, RawFd)>,
}

impl Inbox {
    fn push(&self, id: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0.push(id);
        if state.1 >= 0 {
            let one: u64 = 1;
            // SAFETY: 8 bytes to the driver's eventfd, which cannot be closed while we hold the
            // lock (the driver closes it under the lock).
            unsafe { libc::write(state.1, (&one as *const u64).cast(), 8) };
        }
    }

    fn take(&self) -> Vec<usize> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).0)
    }
}

/// The waker of a fiber in [`block_on`].
struct FiberSignal {
    woken: AtomicBool,
    /// The park to end, while the fiber is parked.
    token: Mutex<Option<WakeToken>>,
    thread: ThreadId,
    /// The scheduler's cross-thread wake path, for a wake from another thread.
    remote: Arc<crate::sync::Remote>,
}

impl Wake for FiberSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let token = self.token.lock().map(|mut t| t.take()).unwrap_or(None);
        let Some(token) = token else { return };
        if std::thread::current().id() == self.thread {
            if let Some(sched) = Scheduler::current() {
                sched.unpark(token, crate::fiber::Wake::Ready);
            }
        } else {
            // Never touch the scheduler's RefCells from here: its inbox is synchronised.
            self.remote.wake(token);
        }
    }
}

#[derive(Default)]
struct IoInterest {
    read: Option<Waker>,
    write: Option<Waker>,
    /// Known to the inner epoll instance.
    added: bool,
    /// The events it is armed for (0: disarmed, after a one-shot event fired).
    armed: u32,
}

impl IoInterest {
    fn wanted(&self) -> u32 {
        (if self.read.is_some() {
            libc::EPOLLIN as u32
        } else {
            0
        }) | (if self.write.is_some() {
            libc::EPOLLOUT as u32
        } else {
            0
        })
    }
}

/// Key of a registered timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey(Deadline, u64);

pub(crate) struct Driver {
    tasks: RefCell<Vec<Option<Task>>>,
    free_tasks: RefCell<Vec<usize>>,
    ready: RefCell<VecDeque<usize>>,
    timers: RefCell<BTreeMap<TimerKey, Waker>>,
    next_timer: Cell<u64>,
    io: RefCell<BTreeMap<RawFd, IoInterest>>,
    /// Fibers parked in `block_on`.
    waiting: Cell<usize>,
    /// Nesting depth of polls running on this thread: ready tasks are run by them.
    polling: Cell<usize>,
    pump_running: Cell<bool>,
    /// The deadline of the pump's current wait, while it is parked.
    pump_parked: Cell<Option<Option<Deadline>>>,
    rung: Cell<bool>,
    doorbell: Cell<RawFd>,
    /// The driver's own epoll instance, holding the doorbell and every registered fd.
    epfd: Cell<RawFd>,
    /// Task wakes from other threads (made on first spawn).
    inbox: RefCell<Option<Arc<Inbox>>>,
    /// `fork_generation()` when this state was made.
    forks: Cell<u64>,
}

thread_local! {
    static DRIVER: Driver = const { Driver::new() };
}

/// Forks seen (bumped by a `pthread_atfork` child handler). A child inherits the driver's epoll
/// instance, eventfd and sockets: sharing them with the parent would mix both processes'
/// events and answers, so the child's first lookup drops its copies and starts afresh.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    // Async-signal-safe: one atomic add.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The number of forks this process is removed from its first ancestor that resolved names.
pub(crate) fn fork_generation() -> u64 {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a child handler that only bumps an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
    });
    FORKS.load(Ordering::Relaxed)
}

impl Driver {
    const fn new() -> Driver {
        Driver {
            tasks: RefCell::new(Vec::new()),
            free_tasks: RefCell::new(Vec::new()),
            ready: RefCell::new(VecDeque::new()),
            timers: RefCell::new(BTreeMap::new()),
            next_timer: Cell::new(0),
            io: RefCell::new(BTreeMap::new()),
            waiting: Cell::new(0),
            polling: Cell::new(0),
            pump_running: Cell::new(false),
            pump_parked: Cell::new(None),
            rung: Cell::new(false),
            doorbell: Cell::new(-1),
            epfd: Cell::new(-1),
            inbox: RefCell::new(None),
            forks: Cell::new(0),
        }
    }

    /// In a forked child: forgets everything inherited (closing the child's copies of the fds;
    /// the parent's stay open) so that nothing is shared with the parent.
    fn leave_parent(&self) {
        let forks = fork_generation();
        if self.forks.replace(forks) == forks {
            return;
        }
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        drop(tasks);
        self.free_tasks.borrow_mut().clear();
        self.ready.borrow_mut().clear();
        let timers = std::mem::take(&mut *self.timers.borrow_mut());
        drop(timers);
        let io = std::mem::take(&mut *self.io.borrow_mut());
        drop(io);
        *self.inbox.borrow_mut() = None;
        for fd in [self.doorbell.replace(-1), self.epfd.replace(-1)] {
            if fd >= 0 {
                // SAFETY: the child's copies of the driver's own fds.
                unsafe { libc::close(fd) };
            }
        }
        self.waiting.set(0);
        self.polling.set(0);
        self.pump_running.set(false);
        self.pump_parked.set(None);
        self.rung.set(false);
    }

    fn inbox(&self) -> Arc<Inbox> {
        let mut inbox = self.inbox.borrow_mut();
        Arc::clone(inbox.get_or_insert_with(|| {
            Arc::new(Inbox {
                state: Mutex::new((Vec::new(), self.doorbell.get())),
            })
        }))
    }

    /// Moves task wakes that came from other threads to the ready queue.
    fn drain_inbox(&self) {
        let ids = match &*self.inbox.borrow() {
            Some(inbox) => inbox.take(),
            None => return,
        };
        self.ready.borrow_mut().extend(ids);
    }

    fn task_woken(&self, id: usize) {
        self.ready.borrow_mut().push_back(id);
        if self.polling.get() == 0 {
            self.ring();
        }
    }

    /// Wakes the pump out of its wait, once per wait.
    fn ring(&self) {
        if self.pump_parked.get().is_none() || self.rung.replace(true) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid buffer to our eventfd (libc's own `write`: hook
        // code runs with the dispatch slot empty).
        unsafe { libc::write(self.doorbell.get(), (&one as *const u64).cast(), 8) };
    }

    /// Runs every queued background task once (and the ones they wake, until none is left).
    fn run_ready_tasks(&self) {
        let _polling = Polling::enter(self);
        loop {
            let next = self.ready.borrow_mut().pop_front();
            let Some(id) = next else { break };
            let task = self.tasks.borrow_mut().get_mut(id).and_then(Option::take);
            let Some(mut task) = task else { continue };
            task.signal.queued.store(false, Ordering::Release);
            let waker = task.waker.clone();
            let mut cx = Context::from_waker(&waker);
            // A task that panics (the panic hook has reported it) is dropped like a finished
            // one: its connection closes, and lookups that used it fail and are retried by
            // hickory or reported as EAI_AGAIN. Nothing unwinds into the pump or a lookup.
            let polled = catch_unwind(AssertUnwindSafe(|| task.future.as_mut().poll(&mut cx)));
            if matches!(polled, Ok(Poll::Pending)) {
                self.tasks.borrow_mut()[id] = Some(task);
            } else {
                drop(task);
                self.free_tasks.borrow_mut().push(id);
            }
        }
    }

    fn fire_timers(&self) {
        let now = Deadline::now();
        loop {
            let due = {
                let mut timers = self.timers.borrow_mut();
                match timers.first_key_value() {
                    Some((key, _)) if key.0 <= now => timers.pop_first(),
                    _ => None,
                }
            };
            match due {
                Some((_, waker)) => waker.wake(),
                None => break,
            }
        }
    }

    /// Wakes the wakers of every registered fd that is ready now (a zero-timeout `epoll_wait`
    /// on the inner instance, repeated until it comes back short).
    fn dispatch_io(&self) {
        let epfd = self.epfd.get();
        if epfd < 0 {
            return;
        }
        const BATCH: usize = 256;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            // SAFETY: a valid epoll fd and event buffer; timeout 0 never blocks.
            let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), BATCH as libc::c_int, 0) };
            if n <= 0 {
                return;
            }
            let mut wake = Vec::new();
            {
                let mut io = self.io.borrow_mut();
                for ev in &events[..n as usize] {
                    let fd = ev.u64 as RawFd;
                    if fd == self.doorbell.get() {
                        self.drain_doorbell();
                        continue;
                    }
                    let Some(interest) = io.get_mut(&fd) else {
                        continue;
                    };
                    let bits = ev.events;
                    let failed = bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
                    if bits & libc::EPOLLIN as u32 != 0 || failed {
                        wake.extend(interest.read.take());
                    }
                    if bits & libc::EPOLLOUT as u32 != 0 || failed {
                        wake.extend(interest.write.take());
                    }
                    // One-shot: the fd is disarmed now; keep waiting for what is still wanted.
                    interest.armed = 0;
                    arm(epfd, fd, interest);
                }
            }
            for waker in wake {
                waker.wake();
            }
            if (n as usize) < BATCH {
                return;
            }
        }
    }

    /// Creates the inner epoll instance and its doorbell on first use.
    fn ensure_reactor(&self) -> bool {
        if self.epfd.get() >= 0 {
            return true;
        }
        // SAFETY: plain system calls; the fds are owned by the driver from here on.
        unsafe {
            let epfd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if epfd < 0 {
                return false;
            }
            let bell = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
            if bell < 0 {
                libc::close(epfd);
                return false;
            }
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: bell as u64,
            };
            if libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, bell, &mut ev) != 0 {
                libc::close(bell);
                libc::close(epfd);
                return false;
            }
            self.doorbell.set(bell);
            self.epfd.set(epfd);
            if let Some(inbox) = &*self.inbox.borrow() {
                inbox.state.lock().unwrap_or_else(|e| e.into_inner()).1 = bell;
            }
        }
        true
    }

    fn drain_doorbell(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a valid buffer from our non-blocking eventfd.
        unsafe { libc::read(self.doorbell.get(), (&mut value as *mut u64).cast(), 8) };
    }

    /// Starts the pump fiber unless it runs already.
    /// Starts the pump fiber unless it runs already. `Err(errno)` when it cannot (no fd for
    /// the epoll instance, no memory for a stack): nothing could then wake a waiting lookup.
    fn ensure_pump(&'static self, sched: &Scheduler) -> Result<(), i32> {
        if self.pump_running.get() {
            return Ok(());
        }
        if !self.ensure_reactor() {
            return Err(fibra_shim::errno());
        }
        self.pump_running.set(true);
        let body = move || {
            fibra_shim::without_hook(|| {
                let _stopped = PumpStopped(self);
                // The pump serves every lookup of the thread: it must not keep the FiberLocal
                // values of the lookup that happened to start it alive.
                if let Some(fiber) = Scheduler::current().and_then(|s| s.current_fiber()) {
                    fiber.locals.clear();
                }
                self.pump()
            })
        };
        // Spawned outside any dispatcher, so that the pump's span is not a child of that
        // lookup's request span either (nothing it logs belongs to one request).
        let spawned = tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
            // SAFETY: the body is 'static (it refers to the thread's driver, which outlives
            // every scheduler run on this thread).
            unsafe { sched.spawn_raw(Some("fibra-dns".to_owned()), PUMP_STACK, body) }
        });
        if let Err(e) = spawned {
            self.pump_running.set(false);
            return Err(e.raw_os_error().unwrap_or(libc::ENOMEM));
        }
        Ok(())
    }

    /// The pump fiber's body (its end is marked by `PumpStopped`).
    fn pump(&self) {
        let Some(sched) = Scheduler::current() else {
            return;
        };
        loop {
            self.fire_timers();
            self.dispatch_io();
            self.drain_inbox();
            self.run_ready_tasks();
            if self.waiting.get() == 0 {
                break;
            }
            let deadline = self.timers.borrow().first_key_value().map(|(k, _)| k.0);
            self.rung.set(false);
            self.pump_parked.set(Some(deadline));
            let _ = Hook::wait_fd(sched, self.epfd.get(), Readiness::READABLE, deadline);
            self.pump_parked.set(None);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Thread exit: the tasks (and their sockets) go first, then the driver's own fds.
        self.tasks.get_mut().clear();
        if let Some(inbox) = self.inbox.get_mut() {
            // Foreign wakers write the doorbell under this lock: none can after this.
            inbox.state.lock().unwrap_or_else(|e| e.into_inner()).1 = -1;
        }
        for fd in [self.doorbell.get(), self.epfd.get()] {
            if fd >= 0 {
                // SAFETY: fds this driver created and nothing else uses.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Counts a poll in progress on this thread (tasks woken meanwhile are run by it), also when
/// the poll unwinds.
struct Polling<'a> {
    driver: &'a Driver,
    active: Cell<bool>,
}

impl<'a> Polling<'a> {
    fn enter(driver: &'a Driver) -> Polling<'a> {
        driver.polling.set(driver.polling.get() + 1);
        Polling {
            driver,
            active: Cell::new(true),
        }
    }
    fn pause(&self) {
        if self.active.replace(false) {
            self.driver.polling.set(self.driver.polling.get() - 1);
        }
    }
    fn resume(&self) {
        if !self.active.replace(true) {
            self.driver.polling.set(self.driver.polling.get() + 1);
        }
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.pause();
    }
}

/// Marks the pump as gone when its fiber ends, however it ends.
struct PumpStopped<'a>(&'a Driver);

impl Drop for PumpStopped<'_> {
    fn drop(&mut self) {
        self.0.pump_running.set(false);
        self.0.pump_parked.set(None);
    }
}

/// The pump polls hickory's futures (and their background tasks): give it a std-sized stack.
const PUMP_STACK: usize = 256 * 1024;

/// Why [`block_on`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupted {
    /// `deadline`, or the fiber's `fibra::timeout` scope, passed first.
    TimedOut,
    /// The fiber was cancelled (`JoinHandle::cancel`).
    Cancelled,
    /// The driver could not wait (this `errno`: out of fds or memory).
    Failed(i32),
}

/// Runs `future` to completion inside the calling fiber, parking it while the future is
/// pending; gives up (dropping the future, and with it every socket and timer it holds) when
/// `deadline` passes, the fiber's timeout scope expires, or the fiber is cancelled. Must be called inside a fiber, with the dispatch slot empty.
pub(crate) fn block_on<F: Future>(
    sched: &Scheduler,
    future: F,
    deadline: Option<Deadline>,
) -> Result<F::Output, Interrupted> {
    DRIVER.with(|driver| {
        // SAFETY: the thread-local outlives every fiber of this thread's schedulers (it is
        // destroyed at thread exit, after `run` returned).
        let driver: &'static Driver = unsafe { &*(driver as *const Driver) };
        driver.leave_parent();
        let signal = Arc::new(FiberSignal {
            woken: AtomicBool::new(false),
            token: Mutex::new(None),
            thread: std::thread::current().id(),
            remote: Arc::clone(&sched.sync.remote),
        });
        let waker = Waker::from(Arc::clone(&signal));
        let mut cx = Context::from_waker(&waker);
        let polling = Polling::enter(driver);
        // The future lives in this block: it is dropped (closing its sockets, cancelling its
        // timers) at the block's end, while still counted as polling.
        let result = {
            let mut future = Box::pin(future);
            loop {
                signal.woken.store(false, Ordering::Release);
                if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                    break Ok(value);
                }
                driver.run_ready_tasks();
                if signal.woken.load(Ordering::Acquire) {
                    continue;
                }
                if deadline.is_some_and(|d| d <= Deadline::now()) {
                    break Err(Interrupted::TimedOut);
                }
                if let Err(errno) = driver.ensure_pump(sched) {
                    break Err(Interrupted::Failed(errno));
                }
                let token = sched.prepare_park();
                *signal.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
                driver.waiting.set(driver.waiting.get() + 1);
                polling.pause();
                // Interruptible (`fibra::timeout`, `JoinHandle::cancel`): fails at once, or
                // wakes early, when the fiber's timeout scope expires or it is cancelled.
                let parked = sched.park_interruptible(token, WaitReason::Resolve, deadline);
                polling.resume();
                driver.waiting.set(driver.waiting.get() - 1);
                signal
                    .token
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                match parked {
                    Ok(_) => {}
                    Err(crate::timeout::Interrupt::TimedOut) => break Err(Interrupted::TimedOut),
                    Err(crate::timeout::Interrupt::Cancelled) => {
                        break Err(Interrupted::Cancelled);
                    }
                }
            }
        };
        // Run whatever dropping the future woke.
        driver.run_ready_tasks();
        drop(polling);
        if driver.waiting.get() == 0 {
            driver.ring();
        }
        result
    })
}

/// In a forked child, drops the driver state inherited from the parent (see `FORKS`). Call
/// before touching anything else that may wake a task.
pub(crate) fn leave_parent_if_forked() {
    let _ = DRIVER.try_with(Driver::leave_parent);
}

/// Adds a background task; it is first polled by whoever polls next on this thread.
pub(crate) fn spawn(future: impl Future<Output = ()> + Send + 'static) {
    let _ = DRIVER.try_with(|driver| {
        let id = match driver.free_tasks.borrow_mut().pop() {
            Some(id) => id,
            None => {
                let mut tasks = driver.tasks.borrow_mut();
                tasks.push(None);
                tasks.len() - 1
            }
        };
        let signal = Arc::new(TaskSignal {
            id,
            queued: AtomicBool::new(false),
            thread: std::thread::current().id(),
            inbox: driver.inbox(),
        });
        let waker = Waker::from(Arc::clone(&signal));
        driver.tasks.borrow_mut()[id] = Some(Task {
            future: Box::pin(future),
            signal: Arc::clone(&signal),
            waker,
        });
        signal.wake_by_ref();
    });
}

/// Wakes `waker` once `fd` may be ready for `interest` (one direction at a time).
pub(crate) fn register_io(fd: RawFd, interest: Readiness, waker: &Waker) {
    let _ = DRIVER.try_with(|driver| {
        if !driver.ensure_reactor() {
            // No epoll instance (out of fds): wake at once; the caller retries its call.
            waker.wake_by_ref();
            return;
        }
        let mut io = driver.io.borrow_mut();
        let entry = io.entry(fd).or_default();
        let slot = if interest.intersects(Readiness::READABLE) {
            &mut entry.read
        } else {
            &mut entry.write
        };
        match slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
        if !arm(driver.epfd.get(), fd, entry) {
            drop(io);
            waker.wake_by_ref();
        }
    });
}

/// Arms `fd` in the inner epoll instance for what `interest` still wants (one-shot). Returns
/// false when epoll refuses the fd.
fn arm(epfd: RawFd, fd: RawFd, interest: &mut IoInterest) -> bool {
    let wanted = interest.wanted();
    if wanted == 0 || wanted == interest.armed {
        return true;
    }
    let mut ev = libc::epoll_event {
        events: wanted | libc::EPOLLONESHOT as u32,
        u64: fd as u64,
    };
    let (first, second) = if interest.added {
        (libc::EPOLL_CTL_MOD, libc::EPOLL_CTL_ADD)
    } else {
        (libc::EPOLL_CTL_ADD, libc::EPOLL_CTL_MOD)
    };
    // SAFETY: valid fds and event; a stale record (the fd was closed and its number reused)
    // makes the first operation fail, and the other one then succeeds.
    let ok = unsafe {
        libc::epoll_ctl(epfd, first, fd, &mut ev) == 0
            || libc::epoll_ctl(epfd, second, fd, &mut ev) == 0
    };
    if ok {
        interest.added = true;
        interest.armed = wanted;
    }
    ok
}

/// Forgets every interest in `fd` (it is about to be closed).
pub(crate) fn deregister_io(fd: RawFd) {
    let _ = DRIVER.try_with(|driver| {
        if let Some(interest) = driver.io.borrow_mut().remove(&fd)
            && interest.added
        {
            // SAFETY: removing our own registration of an fd that is still open.
            unsafe {
                libc::epoll_ctl(
                    driver.epfd.get(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
        }
    });
}

/// Wakes `waker` at `deadline`. Returns the key to update or cancel it with.
pub(crate) fn register_timer(deadline: Deadline, waker: &Waker) -> Option<TimerKey> {
    DRIVER
        .try_with(|driver| {
            let seq = driver.next_timer.get();
            driver.next_timer.set(seq + 1);
            let key = TimerKey(deadline, seq);
            driver.timers.borrow_mut().insert(key, waker.clone());
            if let Some(wait) = driver.pump_parked.get()
                && wait.is_none_or(|d| deadline < d)
            {
                driver.ring();
            }
            key
        })
        .ok()
}

/// Replaces the waker of a registered timer (a future polled with a new context).
pub(crate) fn update_timer(key: TimerKey, waker: &Waker) {
    let _ = DRIVER.try_with(|driver| {
        if let Some(w) = driver.timers.borrow_mut().get_mut(&key)
            && !w.will_wake(waker)
        {
            *w = waker.clone();
        }
    });
}

/// Cancels a timer (its future was dropped or completed).
pub(crate) fn cancel_timer(key: TimerKey) {
    let _ = DRIVER.try_with(|driver| driver.timers.borrow_mut().remove(&key));
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use hickory_resolver::net::runtime::{DnsUdpSocket, RuntimeProvider};

    use super::*;
    use crate::dns::runtime::{FibraRuntime, Sleep};

    /// The seam for time-outs and cancellation: a lookup that runs past its deadline ends with
    /// `TimedOut`, and the sockets and timers it held are gone from the driver.
    #[test]
    fn a_deadline_ends_the_wait_and_leaves_nothing_registered() {
        let start = Instant::now();
        let outcome = crate::run(|| {
            let sched = Scheduler::current().expect("in run");
            fibra_shim::without_hook(|| {
                let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
                let never_answered = async move {
                    let socket = FibraRuntime.bind_udp(any, any).await.unwrap();
                    let mut buf = [0u8; 16];
                    let _ = std::future::poll_fn(|cx| socket.poll_recv_from(cx, &mut buf)).await;
                };
                let long_sleep = Sleep::new(Duration::from_secs(30));
                let both = async move {
                    let _ = futures_join(Box::pin(never_answered), Box::pin(long_sleep)).await;
                };
                let deadline = Deadline::now().after(50_000_000);
                let result = block_on(sched, both, Some(deadline));
                let left = DRIVER.with(|d| (d.io.borrow().len(), d.timers.borrow().len()));
                (result.is_err(), left)
            })
        });
        assert_eq!(outcome, (true, (0, 0)));
        // And the pump let `run` return at once.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    /// Wakers are `Send + Sync`: a background task woken from another thread is run (driver
    /// inbox), and a lookup woken from another thread resumes (scheduler's remote inbox).
    #[test]
    fn wakes_from_other_threads_reach_tasks_and_lookups() {
        let finished = crate::run(|| {
            let sched = Scheduler::current().expect("in run");
            fibra_shim::without_hook(|| {
                let task_may_finish = Arc::new(AtomicBool::new(false));
                let task_done = Arc::new(AtomicBool::new(false));
                let task_waker: Arc<Mutex<Option<Waker>>> = Arc::default();
                let lookup_waker: Arc<Mutex<Option<Waker>>> = Arc::default();
                {
                    let (may, done, slot) = (
                        Arc::clone(&task_may_finish),
                        Arc::clone(&task_done),
                        Arc::clone(&task_waker),
                    );
                    spawn(async move {
                        std::future::poll_fn(|cx| {
                            if may.load(Ordering::Acquire) {
                                return Poll::Ready(());
                            }
                            *slot.lock().unwrap() = Some(cx.waker().clone());
                            Poll::Pending
                        })
                        .await;
                        done.store(true, Ordering::Release);
                    });
                }
                let helper = {
                    let (done, task_waker, lookup_waker) = (
                        Arc::clone(&task_done),
                        Arc::clone(&task_waker),
                        Arc::clone(&lookup_waker),
                    );
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(20));
                        task_may_finish.store(true, Ordering::Release);
                        if let Some(w) = task_waker.lock().unwrap().take() {
                            w.wake();
                        }
                        while !done.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        if let Some(w) = lookup_waker.lock().unwrap().take() {
                            w.wake();
                        }
                    })
                };
                let done = Arc::clone(&task_done);
                let lookup = std::future::poll_fn(move |cx| {
                    if done.load(Ordering::Acquire) {
                        return Poll::Ready(());
                    }
                    *lookup_waker.lock().unwrap() = Some(cx.waker().clone());
                    Poll::Pending
                });
                let deadline = Deadline::now().after(5_000_000_000);
                let result = block_on(sched, lookup, Some(deadline));
                helper.join().unwrap();
                result.is_ok()
            })
        });
        assert!(finished, "a wake from another thread was lost");
    }

    async fn futures_join<A: Future + Unpin, B: Future + Unpin>(mut a: A, mut b: B) {
        std::future::poll_fn(|cx| {
            let ra = Pin::new(&mut a).poll(cx).is_ready();
            let rb = Pin::new(&mut b).poll(cx).is_ready();
            if ra && rb {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
