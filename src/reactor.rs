//! The I/O driver: one mio `Poll` per scheduler.
//!
//! It owns the poller and the event buffer and knows nothing of fibers: the scheduler registers
//! sources under tokens and interprets the events. Two tokens are reserved: the timer wheel's
//! `timerfd` and the cross-thread waker.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

/// The token of the timers' `timerfd`.
pub(crate) const TIMER_TOKEN: Token = Token(usize::MAX - 1);
/// The token of the cross-thread waker.
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX - 2);

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

    /// Waits for events (`None`: until one arrives) and hands each token to `on_event`.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(Token),
    ) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            on_event(event.token());
        }
        Ok(())
    }
}
