//! Fd readiness on the scheduler's side: registering sockets and pipes with mio, the fibers
//! waiting on each fd, waking them on readiness, on close (with `EBADF`) and at their deadline.
//!
//! The shim tries every call without blocking first and asks the hook to wait only after
//! `EAGAIN`, retrying after every wake. That makes the protocol with edge-triggered epoll simple:
//! an fd is registered once, for both directions, under `Token(fd)`; a waiter is queued *after*
//! its call failed, and the scheduler only harvests events after the fiber has switched out, so
//! any readiness that arrives after the failed try produces an event that finds the waiter. No
//! readiness is cached; a spurious wake costs one retried call.
//!
//! Registration is recorded in the shim's process-wide fd table (which epoll instance holds the
//! fd), so the interposed `close`/`dup2`/`dup3` can deregister it from any thread before the
//! number is freed: a reused number never inherits a registration. A `close` made by a fiber of
//! this thread also wakes the fd's waiters here, with `EBADF`, through [`Io::fd_closed`].

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;

use fibra_shim::{Deadline, Errno, Readiness};
use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Interest, Token};

use crate::fiber::{WaitReason, Wake, WakeToken};
use crate::reactor::FD_TOKEN_LIMIT;
use crate::scheduler::Scheduler;

#[derive(Clone, Copy)]
struct Waiter {
    token: WakeToken,
    interest: Readiness,
}

#[derive(Default)]
struct FdSlot {
    waiters: Vec<Waiter>,
    /// Bumped by every close of the fd; a waiter that sees it change was closed on.
    closes: u32,
    /// A read drained the fd and no readable event came since (see `Hook::note_drained`).
    drained: bool,
    /// The fd reported read-closed (EOF) or an error: those conditions stay true without a
    /// new edge, so a short read no longer means the next one would block.
    ended: bool,
}

/// The I/O waiters of one scheduler, indexed by fd number.
pub(crate) struct Io {
    slots: RefCell<Vec<FdSlot>>,
    /// Fibers parked in an I/O wait: while there are any, an idle loop is not a deadlock.
    waiting: Cell<usize>,
    epfd: RawFd,
}

impl Io {
    pub fn new(epfd: RawFd) -> Io {
        Io {
            slots: RefCell::new(Vec::new()),
            waiting: Cell::new(0),
            epfd,
        }
    }

    /// How many fibers are parked in I/O waits.
    pub fn waiting(&self) -> usize {
        self.waiting.get()
    }

    /// Makes sure `fd` is registered with this scheduler's epoll instance.
    fn ensure_registered(&self, sched: &Scheduler, fd: RawFd) -> io::Result<()> {
        if fibra_shim::fd::lookup(fd).registered_epfd() == Some(self.epfd) {
            return Ok(());
        }
        let Ok(index) = usize::try_from(fd) else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        if index >= FD_TOKEN_LIMIT {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let reactor = sched.reactor();
        let registry = reactor.registry();
        // PRIORITY: TCP urgent data stops a read at the urgent mark, a short read that does not
        // prove the queue empty; its event turns the drained hint off (see `on_event`).
        let interest = Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY;
        let mut source = SourceFd(&fd);
        match registry.register(&mut source, Token(index), interest) {
            Ok(()) => {}
            // Registered already (the table lost the record): refresh it.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                registry.reregister(&mut source, Token(index), interest)?
            }
            Err(e) => return Err(e),
        }
        fibra_shim::fd::set_registered(fd, self.epfd);
        // A new registration (perhaps of a reused number): nothing is known of it yet; the
        // registration itself reports current readiness.
        if index < self.slots.borrow().len() {
            self.with_slot(fd, |slot| {
                slot.drained = false;
                slot.ended = false;
            });
        }
        Ok(())
    }

    fn with_slot<R>(&self, fd: RawFd, f: impl FnOnce(&mut FdSlot) -> R) -> R {
        let index = fd as usize;
        let mut slots = self.slots.borrow_mut();
        if slots.len() <= index {
            slots.resize_with(index + 1, FdSlot::default);
        }
        f(&mut slots[index])
    }

    /// Parks the running fiber until `fd` may be ready for `interest`. See
    /// [`fibra_shim::Hook::wait_fd`].
    pub fn wait_fd(
        &self,
        sched: &Scheduler,
        fd: RawFd,
        interest: Readiness,
        deadline: Option<Deadline>,
    ) -> Result<Readiness, Errno> {
        if let Err(e) = self.ensure_registered(sched, fd) {
            return unregistrable(fd, interest, deadline, e);
        }
        let token = sched.prepare_park();
        let closes = self.with_slot(fd, |slot| {
            slot.waiters.push(Waiter { token, interest });
            slot.closes
        });
        self.waiting.set(self.waiting.get() + 1);
        let write = interest.intersects(Readiness::WRITABLE);
        let wake = sched.park_interruptible(token, WaitReason::Io { fd, write }, deadline);
        self.waiting.set(self.waiting.get() - 1);
        let closed = self.with_slot(fd, |slot| {
            slot.waiters.retain(|w| w.token != token);
            slot.closes != closes
        });
        if closed {
            return Err(Errno::EBADF);
        }
        match wake {
            Ok(Wake::Timer) => Ok(Readiness::NONE),
            Ok(_) => Ok(interest),
            Err(interrupt) => Err(interrupt.errno()),
        }
    }

    /// Parks the running fiber until any of `fds` may be ready (`poll`). See
    /// [`fibra_shim::Hook::wait_any_fd`].
    pub fn wait_any_fd(
        &self,
        sched: &Scheduler,
        fds: &[(RawFd, Readiness)],
        deadline: Option<Deadline>,
    ) -> Result<Readiness, Errno> {
        let token = sched.prepare_park();
        let mut watched = 0usize;
        for &(fd, interest) in fds {
            // An fd epoll refuses (a regular file) is always ready, and `poll` said it was not:
            // it cannot be, so it has nothing to wake us with.
            if self.ensure_registered(sched, fd).is_ok() {
                self.with_slot(fd, |slot| slot.waiters.push(Waiter { token, interest }));
                watched += 1;
            }
        }
        self.waiting.set(self.waiting.get() + 1);
        let wake = sched.park_interruptible(token, WaitReason::Poll { fds: watched }, deadline);
        self.waiting.set(self.waiting.get() - 1);
        for &(fd, _) in fds {
            if fd >= 0 && (fd as usize) < self.slots.borrow().len() {
                self.with_slot(fd, |slot| slot.waiters.retain(|w| w.token != token));
            }
        }
        match wake {
            Ok(Wake::Timer) => Ok(Readiness::NONE),
            Ok(_) => Ok(Readiness::BOTH),
            Err(interrupt) => Err(interrupt.errno()),
        }
    }

    /// A read drained `fd` (see `Hook::note_drained`).
    pub fn note_drained(&self, fd: RawFd) {
        if fd >= 0 && (fd as usize) < FD_TOKEN_LIMIT {
            self.with_slot(fd, |slot| slot.drained = !slot.ended);
        }
    }

    /// Whether `fd` is registered here, was drained, and saw no readable event since: only then
    /// is a readable event certain to come when data arrives.
    pub fn fd_drained(&self, fd: RawFd) -> bool {
        let drained = usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.borrow().get(i).map(|s| s.drained))
            .unwrap_or(false);
        drained && fibra_shim::fd::lookup(fd).registered_epfd() == Some(self.epfd)
    }

    /// `fd` was closed or replaced by a fiber of this thread: its waiters wake with `EBADF`.
    pub fn fd_closed(&self, sched: &Scheduler, fd: RawFd) {
        if fd < 0 || fd as usize >= self.slots.borrow().len() {
            return;
        }
        let waiters = self.with_slot(fd, |slot| {
            slot.closes = slot.closes.wrapping_add(1);
            slot.drained = false;
            slot.ended = false;
            std::mem::take(&mut slot.waiters)
        });
        for waiter in waiters {
            sched.unpark(waiter.token, Wake::Ready);
        }
    }

    /// Dispatches one reactor event for an fd token: wakes the waiters it concerns.
    pub fn on_event(&self, sched: &Scheduler, event: &Event) {
        let index = event.token().0;
        let mut ready = Readiness::NONE;
        if event.is_readable() || event.is_read_closed() || event.is_error() || event.is_priority()
        {
            ready = ready | Readiness::READABLE;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            ready = ready | Readiness::WRITABLE;
        }
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(index) else {
            return;
        };
        if ready.intersects(Readiness::READABLE) {
            slot.drained = false;
        }
        // After these a short read no longer proves the queue empty: no more drained hint.
        if event.is_read_closed() || event.is_error() || event.is_priority() {
            slot.ended = true;
        }
        // `unpark` touches the run queue and the fiber table, never these slots.
        slot.waiters.retain(|w| {
            let hit = w.interest.intersects(ready);
            if hit {
                sched.unpark(w.token, Wake::Ready);
            }
            !hit
        });
    }
}

/// epoll refused `fd` (it is not pollable, or not open): wait the way libc would, blocking the
/// thread in a real `poll`, so that a caller retrying on `EAGAIN` cannot spin.
fn unregistrable(
    fd: RawFd,
    interest: Readiness,
    deadline: Option<Deadline>,
    error: io::Error,
) -> Result<Readiness, Errno> {
    if error.raw_os_error() == Some(libc::EBADF) {
        return Err(Errno::EBADF);
    }
    fibra_shim::fd::set_never_parks(fd);
    let mut pfd = libc::pollfd {
        fd,
        events: if interest.intersects(Readiness::READABLE) {
            libc::POLLIN
        } else {
            libc::POLLOUT
        },
        revents: 0,
    };
    let timeout = deadline.map_or(-1, |d| {
        d.remaining_from(Deadline::now())
            .div_ceil(1_000_000)
            .min(i32::MAX as u64) as i32
    });
    // SAFETY: one valid pollfd; the hook slot is empty here, so this is libc's poll.
    let r = unsafe { libc::poll(&mut pfd, 1, timeout) };
    Ok(if r == 0 { Readiness::NONE } else { interest })
}
