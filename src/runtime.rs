//! All cores: a runtime of worker threads, each running its own scheduler and event loop.
//!
//! Like Falcon's event loop per core: N worker threads (default: the available cores), each
//! inside its own `fibra::run`. Fibers never migrate once started, so thread-locals and `!Send`
//! data inside a fiber stay valid; only the closures that cross to a worker must be `Send`.
//!
//! Each worker's root fiber serves an inbox (a [`crate::channel`]) of spawn and cancel
//! requests. Blocking in `recv` parks the root fiber through the futex hooks, and a send from
//! any thread wakes it through the scheduler's cross-thread inbox and mio `Waker` (see
//! ARCHITECTURE.md, "Sync waits"); a send from a fiber of the same worker wakes it too, which a
//! std `mpsc` inbox would not (it never wakes a receiver on the sending thread). Results travel back through a `Mutex` + `Condvar` slot, so
//! [`RemoteJoinHandle::join`] parks a joining fiber on any worker, or blocks a plain thread.

use crate::channel as mpsc;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use crate::fiber::FiberId;
use crate::scheduler::Scheduler;

type Job = Box<dyn FnOnce() + Send>;

enum Message {
    Spawn(Job),
    /// Cancel one fiber of this worker (see `JoinHandle::cancel`).
    Cancel(FiberId, u32),
    /// Cancel every fiber of this worker, then stop taking work.
    CancelAll,
}

struct Worker {
    inbox: Mutex<Option<mpsc::Sender<Message>>>,
    /// Fibers spawned here through the runtime and not yet finished.
    load: AtomicUsize,
}

struct Shared {
    workers: Vec<Worker>,
    stopping: AtomicBool,
}

thread_local! {
    /// On a worker thread: the runtime and this worker's index.
    static WORKER: std::cell::RefCell<Option<(Arc<Shared>, usize)>> = const { std::cell::RefCell::new(None) };
}

/// A multi-worker runtime: one scheduler and event loop per worker thread.
///
/// ```
/// let rt = fibra::Runtime::new(2).unwrap();
/// let handles: Vec<_> = (0..4u64).map(|i| rt.spawn(move || i * 10)).collect();
/// let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
/// assert_eq!(sum, 60);
/// rt.shutdown();
/// ```
pub struct Runtime {
    handle: Handle,
    threads: Vec<thread::JoinHandle<()>>,
}

/// A cloneable, `Send + Sync` handle for spawning onto a [`Runtime`]'s workers, from any thread
/// or fiber.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Runtime {
    /// Starts `workers` worker threads (at least one).
    pub fn new(workers: usize) -> io::Result<Runtime> {
        let workers = workers.max(1);
        let mut receivers = Vec::with_capacity(workers);
        let mut slots = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::channel();
            receivers.push(rx);
            slots.push(Worker {
                inbox: Mutex::new(Some(tx)),
                load: AtomicUsize::new(0),
            });
        }
        let shared = Arc::new(Shared {
            workers: slots,
            stopping: AtomicBool::new(false),
        });
        let mut threads = Vec::with_capacity(workers);
        for (index, inbox) in receivers.into_iter().enumerate() {
            let for_worker = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(format!("fibra-worker-{index}"))
                .spawn(move || worker_main(for_worker, index, inbox));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let rt = Runtime {
                        handle: Handle { shared },
                        threads,
                    };
                    rt.stop(false);
                    return Err(e);
                }
            }
        }
        Ok(Runtime {
            handle: Handle { shared },
            threads,
        })
    }

    /// Starts one worker per available core.
    pub fn with_available_cores() -> io::Result<Runtime> {
        Runtime::new(thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// A handle for spawning from other threads and fibers.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.handle.workers()
    }

    /// See [`Handle::spawn`].
    pub fn spawn<F, T>(&self, f: F) -> RemoteJoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn(f)
    }

    /// See [`Handle::spawn_on`].
    pub fn spawn_on<F, T>(&self, worker: usize, f: F) -> RemoteJoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn_on(worker, f)
    }

    /// See [`Handle::run_on_all`].
    pub fn run_on_all<F>(&self, f: F) -> Vec<RemoteJoinHandle<()>>
    where
        F: Fn(usize) + Send + Sync + 'static,
    {
        self.handle.run_on_all(f)
    }

    /// Stops taking work and waits until every fiber on every worker has finished, then joins
    /// the worker threads.
    pub fn shutdown(self) {
        self.stop(false);
    }

    /// Cancels every fiber on every worker, including any they spawn from then on (their
    /// interruptible blocking calls fail with `ECANCELED`; see `JoinHandle::cancel`), waits for
    /// them to finish, and joins the worker threads. Fibers parked in sockets and sleeps return promptly; a fiber that ignores the
    /// errors and keeps retrying keeps its worker alive.
    pub fn shutdown_now(self) {
        self.stop(true);
    }

    fn stop(mut self, cancel: bool) {
        self.handle.shared.stopping.store(true, Ordering::Release);
        for worker in &self.handle.shared.workers {
            let sender = worker
                .inbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(sender) = sender {
                if cancel {
                    let _ = sender.send(Message::CancelAll);
                }
                drop(sender); // the worker's root fiber ends when its inbox closes
            }
        }
        // Join every worker before reporting anything.
        let mut failure = None;
        for t in self.threads.drain(..) {
            if let Err(payload) = t.join() {
                failure.get_or_insert(payload);
            }
        }
        // A worker's scheduler itself failed (a deadlock report, an event-loop error): surface
        // it rather than losing it, unless this thread is already unwinding (a drop during a
        // panic), where a second panic would abort.
        if let Some(payload) = failure
            && !thread::panicking()
        {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Drop for Runtime {
    /// Dropping a runtime without `shutdown` shuts it down gracefully.
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let rt = Runtime {
                handle: self.handle.clone(),
                threads: std::mem::take(&mut self.threads),
            };
            rt.stop(false);
        }
    }
}

impl Handle {
    /// The handle of the runtime whose worker the caller runs on, if any.
    pub fn current() -> Option<Handle> {
        WORKER.with(|w| {
            w.borrow().as_ref().map(|(shared, _)| Handle {
                shared: Arc::clone(shared),
            })
        })
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }

    /// Spawns `f` as a fiber on the least-loaded worker.
    pub fn spawn<F, T>(&self, f: F) -> RemoteJoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let worker = (0..self.workers())
            .min_by_key(|&i| self.shared.workers[i].load.load(Ordering::Relaxed))
            .unwrap_or(0);
        self.spawn_on(worker, f)
    }

    /// Spawns `f` as a fiber on worker `worker` (taken modulo the number of workers). The fiber
    /// stays on that worker's thread for its whole life.
    ///
    /// After shutdown has begun the closure is dropped unrun and the handle's `join` returns
    /// `Err` with a [`Cancelled`](crate::Cancelled) payload.
    pub fn spawn_on<F, T>(&self, worker: usize, f: F) -> RemoteJoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let worker = worker % self.workers();
        let slot = Arc::new(RemoteSlot::new(worker));
        let result = Arc::clone(&slot);
        let shared = Arc::clone(&self.shared);
        let job: Job = Box::new(move || {
            if let Some(sched) = Scheduler::current()
                && let Some(me) = sched.current_fiber()
            {
                let mut fiber = result.fiber.lock().unwrap_or_else(|e| e.into_inner());
                *fiber = Some((me.id, me.slot));
                if result.cancel_requested.load(Ordering::Acquire) {
                    sched.cancel(me.id, me.slot);
                }
            }
            let value = catch_unwind(AssertUnwindSafe(f));
            let value = match value {
                Ok(_) if crate::timeout::is_cancelled() => {
                    Err(Box::new(crate::Cancelled::new()) as _)
                }
                other => other,
            };
            shared.workers[worker].load.fetch_sub(1, Ordering::Relaxed);
            result.complete(value);
        });
        self.shared.workers[worker]
            .load
            .fetch_add(1, Ordering::Relaxed);
        let sent = {
            let inbox = self.shared.workers[worker]
                .inbox
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match inbox.as_ref() {
                Some(sender) => sender.send(Message::Spawn(job)).is_ok(),
                None => false,
            }
        };
        if !sent {
            self.shared.workers[worker]
                .load
                .fetch_sub(1, Ordering::Relaxed);
            slot.complete(Err(Box::new(crate::Cancelled::new())));
        }
        RemoteJoinHandle {
            slot,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs `f(worker_index)` as a root-like fiber on every worker: the server pattern, where
    /// each worker accepts on its own `SO_REUSEPORT` listener (see [`reuseport_listener`]).
    pub fn run_on_all<F>(&self, f: F) -> Vec<RemoteJoinHandle<()>>
    where
        F: Fn(usize) + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        (0..self.workers())
            .map(|i| {
                let f = Arc::clone(&f);
                self.spawn_on(i, move || f(i))
            })
            .collect()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }
}

/// The index of the worker the caller runs on, if it runs on a [`Runtime`] worker.
pub fn worker_index() -> Option<usize> {
    WORKER.with(|w| w.borrow().as_ref().map(|(_, i)| *i))
}

fn worker_main(shared: Arc<Shared>, index: usize, inbox: mpsc::Receiver<Message>) {
    WORKER.with(|w| *w.borrow_mut() = Some((Arc::clone(&shared), index)));
    crate::run(move || {
        let sched = Scheduler::expect("fibra worker");
        let root = sched.current_fiber().map(|f| f.id);
        while let Ok(message) = inbox.recv() {
            match message {
                Message::Spawn(job) => {
                    crate::spawn(job);
                }
                Message::Cancel(id, slot) => sched.cancel(id, slot),
                Message::CancelAll => sched.cancel_all_except(root),
            }
        }
    });
    WORKER.with(|w| *w.borrow_mut() = None);
}

struct RemoteSlot<T> {
    worker: usize,
    result: Mutex<Option<thread::Result<T>>>,
    finished: AtomicBool,
    ready: Condvar,
    /// The fiber running the job, once it started (for `cancel`).
    fiber: Mutex<Option<(FiberId, u32)>>,
    /// `cancel` came before the job started.
    cancel_requested: AtomicBool,
}

impl<T> RemoteSlot<T> {
    fn new(worker: usize) -> RemoteSlot<T> {
        RemoteSlot {
            worker,
            result: Mutex::new(None),
            finished: AtomicBool::new(false),
            ready: Condvar::new(),
            fiber: Mutex::new(None),
            cancel_requested: AtomicBool::new(false),
        }
    }

    fn complete(&self, value: thread::Result<T>) {
        *self.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        self.finished.store(true, Ordering::Release);
        self.ready.notify_all();
    }
}

/// A handle to a fiber spawned on a [`Runtime`] worker. `Send`: join it from any thread or
/// fiber.
pub struct RemoteJoinHandle<T> {
    slot: Arc<RemoteSlot<T>>,
    shared: Arc<Shared>,
}

impl<T> RemoteJoinHandle<T> {
    /// Waits for the fiber and returns its result (a panic as `Err(payload)`, a cancelled fiber
    /// as `Err` with a [`Cancelled`](crate::Cancelled) payload). In a fiber this parks only
    /// the fiber; on a plain thread it blocks the thread.
    pub fn join(self) -> thread::Result<T> {
        let mut result = self.slot.result.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(value) = result.take() {
                return value;
            }
            result = self
                .slot
                .ready
                .wait(result)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether the fiber has finished.
    pub fn is_finished(&self) -> bool {
        self.slot.finished.load(Ordering::Acquire)
    }

    /// The worker the fiber runs on.
    pub fn worker(&self) -> usize {
        self.slot.worker
    }

    /// Cancels the fiber, as [`JoinHandle::cancel`](crate::JoinHandle::cancel) does, from any
    /// thread: its interruptible blocking calls fail from then on. A fiber that has not
    /// started yet is cancelled as it starts; one that has finished is left alone.
    pub fn cancel(&self) {
        if self.is_finished() {
            return;
        }
        let fiber = {
            let fiber = self.slot.fiber.lock().unwrap_or_else(|e| e.into_inner());
            if fiber.is_none() {
                // Not started: the job sees the flag under this same lock when it starts.
                self.slot.cancel_requested.store(true, Ordering::Release);
                return;
            }
            *fiber
        };
        if let Some((id, slot)) = fiber {
            let inbox = self.shared.workers[self.slot.worker]
                .inbox
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(sender) = inbox.as_ref() {
                let _ = sender.send(Message::Cancel(id, slot));
            }
        }
    }
}

/// A TCP listener bound to `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`), so that every
/// worker can bind its own listener on the same address and the kernel spreads incoming
/// connections across them.
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
