//! A fiber: a coroutine on a pooled stack, with the bookkeeping the scheduler keeps for it.
//!
//! A `Fiber` lives in a `Box` owned by the scheduler's fiber table from spawn until its closure
//! returns, so its address is stable: the run queue and the thread's "current fiber" refer to it
//! by pointer. Anything that may outlive it (timers, join waiters, I/O waiters) refers to it by
//! [`WakeToken`] instead, which goes stale the moment the fiber is woken or freed.

use std::cell::{Cell, UnsafeCell};
use std::fmt;

use corosensei::{Coroutine, Yielder};

use crate::stack::FiberStack;

/// The coroutine type every fiber runs in.
pub(crate) type FiberCoroutine = Coroutine<(), (), (), FiberStack>;

/// A fiber's process-unique number, as shown in spans, diagnostics and overflow messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiberId(pub(crate) u64);

impl FiberId {
    /// The number itself.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for FiberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FiberId({})", self.0)
    }
}

impl fmt::Display for FiberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum State {
    /// In the run queue.
    Runnable,
    /// Executing now.
    Running,
    /// Suspended until a [`WakeToken`] for it is used.
    Parked,
}

/// What a parked fiber waits for, for diagnostics (deadlock reports).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WaitReason {
    /// Not waiting (runnable or running).
    None,
    /// `JoinHandle::join` of another fiber.
    Join(FiberId),
    /// A sleep until a deadline.
    Sleep,
    /// A socket or pipe call waiting for its fd to become readable (or writable).
    Io { fd: i32, write: bool },
    /// `poll`/`ppoll` over this many fds.
    Poll { fds: usize },
    /// A futex wait (a std or parking_lot lock, condvar, once, barrier...) on this word.
    Futex { addr: usize },
    /// `std::thread::park` on the thread's parker word (channels, `thread::scope`, park).
    ThreadPark { addr: usize },
    /// A blocking libc call running on a helper thread (`pthread_join`).
    Blocking(fibra_shim::BlockingCall),
    /// A name lookup (`getaddrinfo`) waiting for its answer (see `dns`).
    Resolve,
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::None => write!(f, "nothing"),
            WaitReason::Join(id) => write!(f, "joining fiber {id}"),
            WaitReason::Sleep => write!(f, "sleeping"),
            WaitReason::Io { fd, write: false } => write!(f, "waiting for fd {fd} to be readable"),
            WaitReason::Io { fd, write: true } => write!(f, "waiting for fd {fd} to be writable"),
            WaitReason::Poll { fds } => write!(f, "polling {fds} fds"),
            WaitReason::Futex { addr } => write!(
                f,
                "waiting on a lock or condition variable (futex {addr:#x})"
            ),
            WaitReason::ThreadPark { addr } => write!(
                f,
                "parked in std::thread::park: a channel receive or send, a scope, or park (parker word {addr:#x})"
            ),
            WaitReason::Resolve => write!(f, "resolving a host name (getaddrinfo)"),
            WaitReason::Blocking(fibra_shim::BlockingCall::GetAddrInfo) => {
                write!(
                    f,
                    "resolving a host name (glibc getaddrinfo on a helper thread)"
                )
            }
            WaitReason::Blocking(fibra_shim::BlockingCall::ThreadJoin) => {
                write!(f, "joining an OS thread (pthread_join)")
            }
        }
    }
}

/// Why a parked fiber was resumed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wake {
    /// The event it waited for happened.
    Ready,
    /// Its timer fired.
    Timer,
    /// It was cancelled while parked in an interruptible wait (see `timeout`).
    Interrupted,
}

/// Names one particular park of one fiber. Using it wakes the fiber if, and only if, the fiber is
/// still parked in that same park; afterwards (or once the fiber is gone) it is a no-op.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct WakeToken {
    pub slot: u32,
    pub park: u64,
}

pub(crate) struct Fiber {
    pub id: FiberId,
    pub name: Option<String>,
    pub slot: u32,
    pub coroutine: UnsafeCell<Option<FiberCoroutine>>,
    /// Set on the fiber's first entry; valid while the coroutine is alive.
    pub yielder: Cell<*const Yielder<(), ()>>,
    pub state: Cell<State>,
    /// The park this fiber is in (0: none). See [`WakeToken`].
    pub park: Cell<u64>,
    pub wake: Cell<Wake>,
    pub wait: Cell<WaitReason>,
    /// Entered while the fiber runs: its `fiber{id, name}` span, or the spawner's current span
    /// where a filter disables `fiber` spans (see `trace_context::fiber_span`).
    pub span: tracing::Span,
    /// The spans the fiber had entered when it last switched out (see `trace_context`).
    pub parked_spans: crate::trace_context::ParkedSpans,
    /// The fiber's `FiberLocal` values (see `local`).
    pub locals: crate::local::LocalStorage,
    /// Timeout scopes and cancellation (see `timeout`).
    pub interrupt: crate::timeout::InterruptState,
    /// Guard page range and usable size, read by the overflow handler.
    pub guard: (usize, usize),
    pub stack_size: usize,
    /// Roughly where the fiber's stack pointer was when it last switched out, so the loop can
    /// prefetch that memory before resuming it (see `Scheduler::run_loop`).
    pub stack_hint: Cell<usize>,
}

impl Fiber {
    /// The name shown in diagnostics: the builder's, or `unnamed`.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or("unnamed")
    }
}
