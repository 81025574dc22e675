//! Timers: an ordered map of deadlines, driven through one `timerfd`.
//!
//! Deadlines are absolute `CLOCK_MONOTONIC` nanoseconds. The event loop blocks in `epoll`, whose
//! timeout has millisecond granularity (and the thread's timer slack); waiting on a `timerfd`
//! armed at the earliest deadline instead wakes the loop at the nanosecond it was asked for, so
//! sub-millisecond sleeps are exact. The fd is re-armed only when the earliest deadline changes
//! and the loop is about to block.
//!
//! Entries are removed exactly (a `BTreeMap` keyed by deadline and a sequence number), so a wait
//! that ends early for another reason leaves nothing behind.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use fibra_shim::Deadline;

use crate::fiber::WakeToken;

/// Identifies one timer entry, to cancel it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct TimerKey(Deadline, u64);

pub(crate) struct Timers {
    entries: BTreeMap<TimerKey, WakeToken>,
    seq: u64,
    fd: OwnedFd,
    armed: Option<Deadline>,
}

impl Timers {
    pub fn new() -> io::Result<Timers> {
        // SAFETY: plain system call; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timers {
            entries: BTreeMap::new(),
            seq: 0,
            fd,
            armed: None,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn insert(&mut self, deadline: Deadline, token: WakeToken) -> TimerKey {
        self.seq += 1;
        let key = TimerKey(deadline, self.seq);
        self.entries.insert(key, token);
        key
    }

    pub fn remove(&mut self, key: TimerKey) {
        self.entries.remove(&key);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every entry due at `now` and passes its token to `fire`.
    pub fn expire(&mut self, now: Deadline, mut fire: impl FnMut(WakeToken)) {
        while let Some(entry) = self.entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            fire(entry.remove());
        }
    }

    /// Arms the timerfd for the earliest deadline, if that changed since it was last armed.
    pub fn arm(&mut self) -> io::Result<()> {
        let earliest = self.entries.first_key_value().map(|(k, _)| k.0);
        if earliest == self.armed {
            return Ok(());
        }
        // A zero it_value disarms; a deadline of 0 ns cannot occur (the monotonic clock is past
        // it), but map it to 1 ns to be sure the timer is armed.
        let ns = earliest.map_or(0, |d| d.0.max(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and a valid itimerspec.
        let r = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = earliest;
        Ok(())
    }

    /// Drains the timerfd after it reported readable (it is edge-triggered in the poller).
    pub fn acknowledge(&mut self) {
        let mut ticks = 0u64;
        // SAFETY: reading 8 bytes into a u64 from our own non-blocking timerfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut ticks as *mut u64).cast(), 8) };
        self.armed = None;
    }
}
