//! The I/O driver: one mio `Poll` per scheduler.
//!
//! It owns the poller and the event buffer and knows nothing of fibers: the scheduler registers
//! sources under tokens and interprets the events. Two tokens are reserved: the timer wheel's
//! `timerfd` and the cross-thread waker. Tokens below [`FD_TOKEN_LIMIT`] are file descriptor
//! numbers registered by `io.rs` (sockets and pipes fibers wait on); other sources must use
//! tokens at or above it.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

/// The token of the timers' `timerfd`.
pub(crate) const TIMER_TOKEN: Token = Token(usize::MAX - 1);
/// The token of the cross-thread waker.
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX - 2);
/// Tokens below this are fd numbers owned by `io.rs`.
pub(crate) const FD_TOKEN_LIMIT: usize = 1 << 31;

pub(crate) struct Reactor {
    poll: Poll,
    events: Events,
}

impl Reactor {
    pub fn new(timer_fd: RawFd) -> io::Result<(Reactor, Waker)> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&timer_fd), TIMER_TOKEN, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
        Ok((
            Reactor {
                poll,
                events: Events::with_capacity(1024),
            },
            waker,
        ))
    }

    /// The registry, for sources other than the reserved ones.
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// The epoll instance's fd (recorded in the shim's fd table next to registered fds).
    pub fn epfd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.poll.as_raw_fd()
    }

    /// Waits for events (`None`: until one arrives) and hands each one to `on_event`.
    pub fn poll_events(
        &mut self,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(&Event),
    ) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            on_event(event);
        }
        Ok(())
    }
}
