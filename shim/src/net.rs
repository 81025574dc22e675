//! Interposed socket and pipe calls: `read`, `write`, `readv`, `writev`, `recv`, `recvfrom`,
//! `recvmsg`, `send`, `sendto`, `sendmsg`, `accept`, `accept4`, `connect`, `poll`, `ppoll`,
//! `select`, `pselect`,
//! and the fd bookkeeping around them: `close`, `dup`, `dup2`, `dup3`, `fcntl`, `ioctl(FIONBIO)`,
//! `setsockopt`.
//!
//! In a fiber, a call on a socket or pipe (see [`crate::fd`]) is first tried **without
//! blocking**, and only if that fails with `EAGAIN` does the fiber park on the hook until the fd
//! may be ready; then the call is tried again. The user's blocking mode is never changed for
//! data calls: the non-blocking try uses a per-call flag (`MSG_DONTWAIT` for the `recv`/`send`
//! family, `preadv2`/`pwritev2` with `RWF_NOWAIT` for `read`/`write`/`readv`/`writev`), so an OS
//! thread sharing the socket, or a child process sharing the pipe, still sees the blocking
//! socket it made. Three calls have no such flag, and get:
//! - `connect`: `O_NONBLOCK` for the duration of the one call, then the user's flags back;
//! - `accept`/`accept4`, and reads and writes on named FIFOs (where `RWF_NOWAIT` is refused):
//!   fibra sets `O_NONBLOCK` on the description for good, keeps the user's view in the fd table
//!   (`fcntl(F_GETFL/F_SETFL)` and `ioctl(FIONBIO)` read and write that view), and emulates a
//!   blocking call (a real `poll`, then a retry) for callers outside any fiber.
//!
//! What the user sees is libc's: a fd the user made non-blocking returns `EAGAIN`; a blocking
//! write on a stream completes in full (or returns the partial count at an error or timeout);
//! `MSG_WAITALL` waits for the whole buffer; `SO_RCVTIMEO`/`SO_SNDTIMEO` end a parked call with
//! `EAGAIN` (`EINPROGRESS` for `connect`); a fd closed by another fiber while this one waits
//! gives `EBADF`. stdin, stdout, stderr, ttys and regular files never park.

use std::os::fd::RawFd;

use libc::{c_int, c_ulong, c_void, iovec, size_t, sockaddr, socklen_t, ssize_t};

use crate::dispatch::{active, with_hook};
use crate::fd::{self, Entry};
use crate::hook::{Deadline, Errno, Readiness};
use crate::{errno, real, set_errno};

const READ: Readiness = Readiness::READABLE;
const WRITE: Readiness = Readiness::WRITABLE;

#[inline]
fn would_block(e: c_int) -> bool {
    e == libc::EAGAIN || e == libc::EWOULDBLOCK
}

/// The entry of `fd` if the calling code runs in a fiber and `fd` is one that parks.
#[inline]
fn fiber_fd(fd: RawFd) -> Option<Entry> {
    active()?;
    let entry = fd::lookup(fd);
    let entry = if entry.is_known() {
        entry
    } else {
        fd::learn(fd)?
    };
    entry.parks().then_some(entry)
}

/// Outside a fiber: the entry of `fd` if fibra made its description non-blocking behind a
/// blocking user's back, so a blocking call has to be emulated. Never allocates.
#[inline]
fn emulated_fd(fd: RawFd) -> Option<Entry> {
    let entry = fd::lookup(fd);
    entry.emulate_blocking().then_some(entry)
}

/// Outside a fiber, after a plain call failed with `EAGAIN` on an fd the table does not know:
/// the fd may share a description fibra made non-blocking (a dup made before the switch). If
/// so, learn it (the user's view comes from the twin) and return the entry to emulate with.
#[cold]
fn emulated_twin(fd: RawFd, result: ssize_t) -> Option<Entry> {
    if result >= 0 || !would_block(errno()) || fd::lookup(fd).is_known() {
        return None;
    }
    let saved = errno();
    let twin = fd::find_twin(fd);
    set_errno(saved);
    let twin = twin?;
    fd::set_fresh(fd, twin);
    twin.emulate_blocking().then_some(twin)
}

/// Whether the user sees `fd` as non-blocking. Reads the table afresh: the first try may just
/// have switched the description to fibra's non-blocking mode.
fn user_nonblocking(fd: RawFd) -> bool {
    let entry = fd::lookup(fd);
    if entry.own_nonblock() {
        return entry.user_nonblock();
    }
    if let Some(cached) = entry.cached_nonblock() {
        return cached;
    }
    let epoch = fd::nonblock_epoch();
    // SAFETY: F_GETFL takes no argument.
    let flags = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    let nonblock = flags >= 0 && flags & libc::O_NONBLOCK != 0;
    if flags >= 0 {
        fd::cache_nonblock(fd, epoch, nonblock);
    }
    nonblock
}

/// Makes `fd`'s description non-blocking for good, remembering the user's view.
fn make_own_nonblock(fd: RawFd, entry: Entry) -> Entry {
    if entry.own_nonblock() {
        return entry;
    }
    // SAFETY: F_GETFL/F_SETFL with an integer argument.
    let flags = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    if flags < 0 {
        return entry;
    }
    if flags & libc::O_NONBLOCK != 0 {
        // Non-blocking already: the user's doing, unless fibra did it through another fd
        // sharing this description (a dup made before the switch).
        let user_nonblock = fd::find_twin(fd).is_none_or(|twin| twin.user_nonblock());
        return fd::set_own_nonblock(fd, user_nonblock).unwrap_or(entry);
    }
    {
        // Cached answers for other fds sharing the description go stale.
        fd::nonblock_changing();
        // SAFETY: as above.
        let r = unsafe {
            real::fcntl(
                fd,
                libc::F_SETFL,
                (flags | libc::O_NONBLOCK) as libc::c_ulong,
            )
        };
        if r < 0 {
            return entry;
        }
    }
    fd::set_own_nonblock(fd, false).unwrap_or(entry)
}

/// The deadline `SO_RCVTIMEO` (reads) or `SO_SNDTIMEO` (writes, `connect`) sets for a call
/// starting now.
fn socket_deadline(fd: RawFd, entry: Entry, dir: Readiness) -> Option<Deadline> {
    if !entry.is_socket() || !fd::TIMEOUTS_USED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let name = if dir == READ {
        libc::SO_RCVTIMEO
    } else {
        libc::SO_SNDTIMEO
    };
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = size_of::<libc::timeval>() as socklen_t;
    // SAFETY: valid out-pointers of the sizes given.
    let r = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    if r != 0 || (tv.tv_sec == 0 && tv.tv_usec == 0) {
        return None;
    }
    let ns = (tv.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(tv.tv_usec as u64 * 1000);
    Some(Deadline::now().after(ns))
}

enum Waited {
    /// Try the call again.
    Ready,
    /// The deadline passed.
    TimedOut,
    /// Stop with this errno (the fd was closed, or the wait was interrupted).
    Failed(c_int),
}

/// Waits until `fd` may be ready for `dir`: parks the fiber when a hook is active, else blocks
/// the thread in a real `poll` (emulated blocking call outside fibers).
fn wait(fd: RawFd, dir: Readiness, deadline: Option<Deadline>) -> Waited {
    let result = with_hook(|hook| hook.wait_fd(fd, dir, deadline))
        .unwrap_or_else(|| thread_wait(fd, dir, deadline));
    match result {
        Ok(r) if r.is_empty() => Waited::TimedOut,
        Ok(_) => Waited::Ready,
        Err(Errno(e)) => Waited::Failed(e),
    }
}

/// Blocks the thread until `fd` may be ready or `deadline` passes. A signal counts as "try
/// again", like a handler installed with `SA_RESTART`.
fn thread_wait(fd: RawFd, dir: Readiness, deadline: Option<Deadline>) -> Result<Readiness, Errno> {
    let mut pfd = libc::pollfd {
        fd,
        events: if dir == READ {
            libc::POLLIN
        } else {
            libc::POLLOUT
        },
        revents: 0,
    };
    let timeout = match deadline {
        None => -1,
        Some(d) => {
            let ns = d.remaining_from(Deadline::now());
            ns.div_ceil(1_000_000).min(c_int::MAX as u64) as c_int
        }
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { real::poll(&mut pfd, 1, timeout) };
    if r == 0 { Ok(Readiness::NONE) } else { Ok(dir) }
}

/// One call that returns as soon as it transfers anything (reads, `accept`, datagram sends):
/// `attempt` is a non-blocking try; parks between tries while it fails with `EAGAIN`.
fn drive(
    fd: RawFd,
    entry: Entry,
    dir: Readiness,
    caller_nonblock: bool,
    attempt: impl FnMut() -> ssize_t,
) -> ssize_t {
    drive_from(fd, entry, dir, caller_nonblock, false, attempt)
}

/// [`drive`], optionally parking before the first try (`wait_first`: the fd is known to be
/// drained, and the caller is blocking).
fn drive_from(
    fd: RawFd,
    entry: Entry,
    dir: Readiness,
    caller_nonblock: bool,
    wait_first: bool,
    mut attempt: impl FnMut() -> ssize_t,
) -> ssize_t {
    // libc leaves errno alone on success; the tries that failed with EAGAIN must not show.
    let caller_errno = errno();
    if !wait_first {
        let r = attempt();
        if r >= 0 || !would_block(errno()) || caller_nonblock || user_nonblocking(fd) {
            return r;
        }
    }
    let deadline = socket_deadline(fd, entry, dir);
    loop {
        match wait(fd, dir, deadline) {
            Waited::Ready => {}
            Waited::TimedOut => {
                set_errno(libc::EAGAIN);
                return -1;
            }
            Waited::Failed(e) => {
                set_errno(e);
                return -1;
            }
        }
        let r = attempt();
        if r >= 0 {
            set_errno(caller_errno);
            return r;
        }
        if !would_block(errno()) {
            return r;
        }
    }
}

/// A call that a blocking caller expects to move all `total` bytes (a write on a stream, a
/// `MSG_WAITALL` read): `attempt(done)` is a non-blocking try starting at byte `done`. Returns
/// the count moved, partial when an error, EOF or the timeout ends it after some progress, as
/// the kernel does.
fn drive_all(
    fd: RawFd,
    entry: Entry,
    dir: Readiness,
    caller_nonblock: bool,
    total: usize,
    mut attempt: impl FnMut(usize) -> ssize_t,
) -> ssize_t {
    let caller_errno = errno();
    let mut done = 0usize;
    let mut blocking: Option<bool> = None;
    let mut deadline: Option<Option<Deadline>> = None;
    let end = |done: usize, e: c_int| -> ssize_t {
        if done > 0 {
            set_errno(caller_errno);
            done as ssize_t
        } else {
            set_errno(e);
            -1
        }
    };
    loop {
        let r = attempt(done);
        if r > 0 {
            done += r as usize;
            if done >= total {
                set_errno(caller_errno);
                return done as ssize_t;
            }
        } else if r == 0 {
            // EOF on a read, or a zero-length transfer.
            set_errno(caller_errno);
            return done as ssize_t;
        } else {
            let e = errno();
            if !would_block(e) {
                return end(done, e);
            }
        }
        // Short, or would block: a blocking caller waits for the rest.
        let is_blocking =
            *blocking.get_or_insert_with(|| !caller_nonblock && !user_nonblocking(fd));
        if !is_blocking {
            return if r >= 0 {
                set_errno(caller_errno);
                done as ssize_t
            } else {
                end(done, libc::EAGAIN)
            };
        }
        if r > 0 {
            // Progress: try again at once, the buffer may have room (or data) left.
            continue;
        }
        let deadline = *deadline.get_or_insert_with(|| socket_deadline(fd, entry, dir));
        match wait(fd, dir, deadline) {
            Waited::Ready => {}
            Waited::TimedOut => return end(done, libc::EAGAIN),
            Waited::Failed(e) => return end(done, e),
        }
    }
}

/// `iov` with its first `skip` bytes dropped.
fn advance(iov: &[iovec], mut skip: usize) -> Vec<iovec> {
    let mut out = Vec::with_capacity(iov.len());
    for v in iov {
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        out.push(iovec {
            // SAFETY: `skip < iov_len`, inside the caller's buffer.
            iov_base: unsafe { v.iov_base.cast::<u8>().add(skip) }.cast(),
            iov_len: v.iov_len - skip,
        });
        skip = 0;
    }
    out
}

fn iov_total(iov: *const iovec, count: c_int) -> usize {
    if iov.is_null() || count <= 0 {
        return 0;
    }
    // SAFETY: the caller passed `count` valid iovecs.
    unsafe { std::slice::from_raw_parts(iov, count as usize) }
        .iter()
        .fold(0usize, |acc, v| acc.saturating_add(v.iov_len))
}

/// A non-blocking `readv` of `fd`: `preadv2(RWF_NOWAIT)`, or a plain `readv` once the
/// description is fibra's non-blocking one. Learns (and switches over) when `RWF_NOWAIT` is
/// refused.
fn nowait_readv(fd: RawFd, entry: &mut Entry, iov: *const iovec, count: c_int) -> ssize_t {
    if !entry.own_nonblock() {
        // SAFETY: the caller's iovecs, forwarded; offset -1 means "the current position", as
        // readv.
        let r = unsafe { libc::preadv2(fd, iov, count, -1, libc::RWF_NOWAIT) };
        if r >= 0 || errno() != libc::EOPNOTSUPP {
            return r;
        }
        fd::set_no_rwf_nowait(fd);
        *entry = make_own_nonblock(fd, *entry);
        if !entry.own_nonblock() {
            // Could not switch: fall back to a blocking read (the thread waits).
            // SAFETY: forwarded.
            return unsafe { real::readv(fd, iov, count) };
        }
    }
    // SAFETY: forwarded.
    unsafe { real::readv(fd, iov, count) }
}

/// The write counterpart of [`nowait_readv`].
fn nowait_writev(fd: RawFd, entry: &mut Entry, iov: *const iovec, count: c_int) -> ssize_t {
    if !entry.own_nonblock() {
        // SAFETY: as in `nowait_readv`.
        let r = unsafe { libc::pwritev2(fd, iov, count, -1, libc::RWF_NOWAIT) };
        if r >= 0 || errno() != libc::EOPNOTSUPP {
            return r;
        }
        fd::set_no_rwf_nowait(fd);
        *entry = make_own_nonblock(fd, *entry);
    }
    // SAFETY: forwarded.
    unsafe { real::writev(fd, iov, count) }
}

fn hooked_readv(fd: RawFd, entry: Entry, iov: *const iovec, count: c_int) -> ssize_t {
    let mut current = entry;
    drive_read(fd, entry, false, true, iov_total(iov, count), || {
        nowait_readv(fd, &mut current, iov, count)
    })
}

/// A read in a fiber: [`drive`], plus the drained hint (see `Hook::note_drained`). A read of a
/// stream that returns fewer bytes than `requested` emptied the receive queue (TCP, Unix stream
/// sockets and pipes all copy until the request is met or the queue is empty), so until the
/// next readiness event the next read parks before trying: the scheduler is certain to see an
/// event when data arrives. `consumes` is false for `MSG_PEEK`, which leaves the data queued.
fn drive_read(
    fd: RawFd,
    entry: Entry,
    caller_nonblock: bool,
    consumes: bool,
    requested: usize,
    attempt: impl FnMut() -> ssize_t,
) -> ssize_t {
    // Only an fd this thread has waited on (so registered) can carry the hint.
    let hinted = entry.hintable() && requested > 0 && entry.registered_epfd().is_some();
    let wait_first = hinted
        && !caller_nonblock
        && with_hook(|hook| hook.fd_drained(fd)) == Some(true)
        && !user_nonblocking(fd);
    let r = drive_from(fd, entry, READ, caller_nonblock, wait_first, attempt);
    if hinted && consumes && r > 0 && (r as usize) < requested {
        with_hook(|hook| hook.note_drained(fd));
    }
    r
}

fn hooked_writev(fd: RawFd, entry: Entry, iov: *const iovec, count: c_int) -> ssize_t {
    let mut current = entry;
    if !entry.is_stream() {
        return drive(fd, entry, WRITE, false, || {
            nowait_writev(fd, &mut current, iov, count)
        });
    }
    let total = iov_total(iov, count);
    drive_all(fd, entry, WRITE, false, total, |done| {
        if done == 0 {
            nowait_writev(fd, &mut current, iov, count)
        } else {
            // SAFETY: the caller's `count` iovecs.
            let rest = advance(
                unsafe { std::slice::from_raw_parts(iov, count as usize) },
                done,
            );
            nowait_writev(fd, &mut current, rest.as_ptr(), rest.len() as c_int)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// read / write / readv / writev

/// A read outside fibers: libc's call, with the blocking the caller expects emulated when fibra
/// made the description non-blocking (directly, or through a twin it shares it with).
fn thread_read(fd: RawFd, mut attempt: impl FnMut() -> ssize_t) -> ssize_t {
    if let Some(entry) = emulated_fd(fd) {
        return drive(fd, entry, READ, false, attempt);
    }
    let r = attempt();
    match emulated_twin(fd, r) {
        Some(entry) => drive(fd, entry, READ, false, attempt),
        None => r,
    }
}

/// [`thread_read`] for writes of `total()` bytes, which complete in full like a blocking write.
fn thread_write(
    fd: RawFd,
    total: impl Fn() -> usize,
    mut attempt: impl FnMut(usize) -> ssize_t,
) -> ssize_t {
    if let Some(entry) = emulated_fd(fd) {
        return drive_all(fd, entry, WRITE, false, total(), attempt);
    }
    let r = attempt(0);
    match emulated_twin(fd, r) {
        Some(entry) => drive_all(fd, entry, WRITE, false, total(), attempt),
        None => r,
    }
}

/// Interposed `read(2)`.
///
/// # Safety
/// libc's contract: `buf` is writable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, len: size_t) -> ssize_t {
    if let Some(entry) = fiber_fd(fd) {
        let iov = iovec {
            iov_base: buf,
            iov_len: len,
        };
        return hooked_readv(fd, entry, &iov, 1);
    }
    let attempt = || {
        // SAFETY: forwarded.
        unsafe { real::read(fd, buf, len) }
    };
    thread_read(fd, attempt)
}

/// Interposed `readv(2)`.
///
/// # Safety
/// libc's contract: `iov` holds `count` iovecs of writable buffers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    if let Some(entry) = fiber_fd(fd) {
        return hooked_readv(fd, entry, iov, count);
    }
    let attempt = || {
        // SAFETY: forwarded.
        unsafe { real::readv(fd, iov, count) }
    };
    thread_read(fd, attempt)
}

/// Interposed `write(2)`.
///
/// # Safety
/// libc's contract: `buf` is readable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, len: size_t) -> ssize_t {
    if let Some(entry) = fiber_fd(fd) {
        let iov = iovec {
            iov_base: buf.cast_mut(),
            iov_len: len,
        };
        return hooked_writev(fd, entry, &iov, 1);
    }
    let attempt = |done: usize| {
        // SAFETY: forwarded, past the bytes already written.
        unsafe { real::write(fd, buf.cast::<u8>().add(done).cast(), len - done) }
    };
    thread_write(fd, || len, attempt)
}

/// Interposed `writev(2)`.
///
/// # Safety
/// libc's contract: `iov` holds `count` iovecs of readable buffers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    if let Some(entry) = fiber_fd(fd) {
        return hooked_writev(fd, entry, iov, count);
    }
    let attempt = |done: usize| {
        if done == 0 {
            // SAFETY: forwarded unchanged.
            return unsafe { real::writev(fd, iov, count) };
        }
        // SAFETY: the caller's iovecs, past the bytes already written.
        let rest = advance(
            unsafe { std::slice::from_raw_parts(iov, count as usize) },
            done,
        );
        // SAFETY: forwarded.
        unsafe { real::writev(fd, rest.as_ptr(), rest.len() as c_int) }
    };
    thread_write(fd, || iov_total(iov, count), attempt)
}

// ---------------------------------------------------------------------------------------------
// recv family

/// Interposed `recv(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarded; recv is recvfrom without an address.
    unsafe {
        recvfrom(
            fd,
            buf,
            len,
            flags,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    }
}

/// Interposed `recvfrom(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> ssize_t {
    if let Some(entry) = fiber_fd(fd) {
        let caller_nonblock = flags & libc::MSG_DONTWAIT != 0;
        let flags = flags | libc::MSG_DONTWAIT;
        if flags & libc::MSG_WAITALL != 0 && entry.is_stream() && len > 0 {
            return drive_all(fd, entry, READ, caller_nonblock, len, |done| {
                // SAFETY: forwarded, past the bytes already received.
                unsafe {
                    real::recvfrom(
                        fd,
                        buf.cast::<u8>().add(done).cast(),
                        len - done,
                        flags,
                        addr,
                        addrlen,
                    )
                }
            });
        }
        let consumes = flags & libc::MSG_PEEK == 0;
        return drive_read(fd, entry, caller_nonblock, consumes, len, || {
            // SAFETY: forwarded with MSG_DONTWAIT added.
            unsafe { real::recvfrom(fd, buf, len, flags, addr, addrlen) }
        });
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::recvfrom(fd, buf, len, flags, addr, addrlen) }
}

/// Interposed `recvmsg(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t {
    if let Some(entry) = fiber_fd(fd)
        && !msg.is_null()
    {
        let caller_nonblock = flags & libc::MSG_DONTWAIT != 0;
        let flags = flags | libc::MSG_DONTWAIT;
        // SAFETY: non-null, and the caller guarantees a valid msghdr.
        let original = unsafe { *msg };
        let total = iov_total(original.msg_iov, original.msg_iovlen as c_int);
        if flags & libc::MSG_WAITALL != 0 && entry.is_stream() && total > 0 {
            let mut first: Option<libc::msghdr> = None;
            let r = drive_all(fd, entry, READ, caller_nonblock, total, |done| {
                if done == 0 {
                    // SAFETY: forwarded.
                    let r = unsafe { real::recvmsg(fd, msg, flags) };
                    // SAFETY: as above.
                    first = Some(unsafe { *msg });
                    return r;
                }
                // Later pieces: the rest of the buffers, no ancillary data (the first piece
                // carried it, as the kernel's one blocking call would).
                // SAFETY: the caller's iovecs.
                let rest = advance(
                    unsafe {
                        std::slice::from_raw_parts(original.msg_iov, original.msg_iovlen as _)
                    },
                    done,
                );
                let mut more = original;
                more.msg_iov = rest.as_ptr().cast_mut();
                more.msg_iovlen = rest.len() as _;
                more.msg_control = std::ptr::null_mut();
                more.msg_controllen = 0;
                // SAFETY: a valid msghdr over the caller's buffers.
                unsafe { real::recvmsg(fd, &mut more, flags) }
            });
            if let Some(first) = first {
                let saved = errno();
                // SAFETY: the caller's msghdr; report what the first piece reported.
                unsafe {
                    (*msg).msg_controllen = first.msg_controllen;
                    (*msg).msg_flags = first.msg_flags;
                    (*msg).msg_namelen = first.msg_namelen;
                }
                set_errno(saved);
            }
            return r;
        }
        let consumes = flags & libc::MSG_PEEK == 0;
        return drive_read(fd, entry, caller_nonblock, consumes, total, || {
            // SAFETY: forwarded with MSG_DONTWAIT added.
            unsafe { real::recvmsg(fd, msg, flags) }
        });
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::recvmsg(fd, msg, flags) }
}

// ---------------------------------------------------------------------------------------------
// send family

/// Interposed `send(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarded; send is sendto without an address.
    unsafe { sendto(fd, buf, len, flags, std::ptr::null(), 0) }
}

/// Interposed `sendto(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addrlen: socklen_t,
) -> ssize_t {
    if let Some(entry) = fiber_fd(fd) {
        let caller_nonblock = flags & libc::MSG_DONTWAIT != 0;
        let flags = flags | libc::MSG_DONTWAIT;
        if entry.is_stream() {
            return drive_all(fd, entry, WRITE, caller_nonblock, len, |done| {
                // SAFETY: forwarded, past the bytes already sent.
                unsafe {
                    real::sendto(
                        fd,
                        buf.cast::<u8>().add(done).cast(),
                        len - done,
                        flags,
                        addr,
                        addrlen,
                    )
                }
            });
        }
        return drive(fd, entry, WRITE, caller_nonblock, || {
            // SAFETY: forwarded with MSG_DONTWAIT added.
            unsafe { real::sendto(fd, buf, len, flags, addr, addrlen) }
        });
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::sendto(fd, buf, len, flags, addr, addrlen) }
}

/// Interposed `sendmsg(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t {
    if let Some(entry) = fiber_fd(fd)
        && !msg.is_null()
    {
        let caller_nonblock = flags & libc::MSG_DONTWAIT != 0;
        let flags = flags | libc::MSG_DONTWAIT;
        // SAFETY: non-null, and the caller guarantees a valid msghdr.
        let original = unsafe { *msg };
        if entry.is_stream() {
            let total = iov_total(original.msg_iov, original.msg_iovlen as c_int);
            return drive_all(fd, entry, WRITE, caller_nonblock, total, |done| {
                if done == 0 {
                    // SAFETY: forwarded.
                    return unsafe { real::sendmsg(fd, msg, flags) };
                }
                // The rest, without the ancillary data the first piece already carried.
                // SAFETY: the caller's iovecs.
                let rest = advance(
                    unsafe {
                        std::slice::from_raw_parts(original.msg_iov, original.msg_iovlen as _)
                    },
                    done,
                );
                let mut more = original;
                more.msg_iov = rest.as_ptr().cast_mut();
                more.msg_iovlen = rest.len() as _;
                more.msg_control = std::ptr::null_mut();
                more.msg_controllen = 0;
                // SAFETY: a valid msghdr over the caller's buffers.
                unsafe { real::sendmsg(fd, &more, flags) }
            });
        }
        return drive(fd, entry, WRITE, caller_nonblock, || {
            // SAFETY: forwarded with MSG_DONTWAIT added.
            unsafe { real::sendmsg(fd, msg, flags) }
        });
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::sendmsg(fd, msg, flags) }
}

// ---------------------------------------------------------------------------------------------
// accept, connect

/// Interposed `accept(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: accept is accept4 without flags.
    unsafe { accept4(fd, addr, len, 0) }
}

/// Interposed `accept4(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let attempt = || {
        // SAFETY: forwarded.
        unsafe { real::accept4(fd, addr, len, flags) as ssize_t }
    };
    let (r, listener) = if let Some(entry) = fiber_fd(fd).filter(|e| e.is_socket()) {
        // No per-call flag exists for accept: the listener becomes non-blocking for good.
        let entry = make_own_nonblock(fd, entry);
        (drive(fd, entry, READ, false, attempt), entry)
    } else if let Some(entry) = emulated_fd(fd) {
        (drive(fd, entry, READ, false, attempt), entry)
    } else {
        let r = attempt();
        if let Some(entry) = emulated_twin(fd, r) {
            (drive(fd, entry, READ, false, attempt), entry)
        } else {
            if r >= 0 {
                // A number freed behind the table's back (a raw close) must not keep its entry.
                fd::forget(r as c_int);
            }
            return r as c_int;
        }
    };
    if r >= 0 {
        let saved = errno();
        fd::set_fresh(r as c_int, fd::accepted_from(listener));
        set_errno(saved);
    }
    r as c_int
}

/// Interposed `connect(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(entry) = fiber_fd(fd).filter(|e| e.is_socket()) else {
        // SAFETY: forwarded unchanged.
        return unsafe { real::connect(fd, addr, len) };
    };
    hooked_connect(fd, entry, addr, len)
}

fn hooked_connect(fd: RawFd, entry: Entry, addr: *const sockaddr, len: socklen_t) -> c_int {
    // libc leaves errno alone on success; the EINPROGRESS of the non-blocking try must not show.
    let caller_errno = errno();
    let mut deadline: Option<Option<Deadline>> = None;
    loop {
        let (user_flags, toggle) = if entry.own_nonblock() {
            if entry.user_nonblock() {
                // SAFETY: forwarded.
                return unsafe { real::connect(fd, addr, len) };
            }
            (0, false)
        } else {
            // SAFETY: F_GETFL takes no argument.
            let flags = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
            if flags < 0 || flags & libc::O_NONBLOCK != 0 {
                // The user's non-blocking connect (or a bad fd): libc's answer as it is.
                // SAFETY: forwarded.
                return unsafe { real::connect(fd, addr, len) };
            }
            (flags, true)
        };
        // connect has no per-call flag: the description is non-blocking for this one call.
        if toggle {
            // SAFETY: F_SETFL with an integer argument.
            unsafe {
                real::fcntl(
                    fd,
                    libc::F_SETFL,
                    (user_flags | libc::O_NONBLOCK) as c_ulong,
                )
            };
        }
        // SAFETY: forwarded.
        let r = unsafe { real::connect(fd, addr, len) };
        let e = errno();
        if toggle {
            // SAFETY: as above.
            unsafe { real::fcntl(fd, libc::F_SETFL, user_flags as c_ulong) };
            // A cached O_NONBLOCK read by another thread inside the window would be wrong.
            fd::nonblock_changing();
        }
        if r == 0 {
            set_errno(caller_errno);
            return 0;
        }
        let deadline = *deadline.get_or_insert_with(|| socket_deadline(fd, entry, WRITE));
        match e {
            libc::EINPROGRESS => {
                let r = finish_connect(fd, deadline);
                if r == 0 {
                    set_errno(caller_errno);
                }
                return r;
            }
            // A Unix socket whose listener's backlog is full: a blocking connect waits for
            // room, which no readiness of ours reports; look again shortly.
            libc::EAGAIN => {
                let soon = Deadline::now().after(1_000_000);
                let until = deadline.map_or(soon, |d| d.min(soon));
                if let Waited::Failed(e) = wait(fd, WRITE, Some(until)) {
                    set_errno(e);
                    return -1;
                }
                if deadline.is_some_and(|d| Deadline::now() >= d) {
                    set_errno(libc::EAGAIN);
                    return -1;
                }
            }
            _ => {
                set_errno(e);
                return -1;
            }
        }
    }
}

/// Waits for an in-progress connect, and reports its outcome as a blocking `connect` would.
fn finish_connect(fd: RawFd, deadline: Option<Deadline>) -> c_int {
    loop {
        match wait(fd, WRITE, deadline) {
            Waited::Ready => {}
            // Linux's blocking connect reports EINPROGRESS when SO_SNDTIMEO expires.
            Waited::TimedOut => {
                set_errno(libc::EINPROGRESS);
                return -1;
            }
            Waited::Failed(e) => {
                set_errno(e);
                return -1;
            }
        }
        let mut err: c_int = 0;
        let mut len = size_of::<c_int>() as socklen_t;
        // SAFETY: valid out-pointers of the sizes given.
        let r = unsafe {
            real::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut c_int).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return -1;
        }
        if err != 0 {
            set_errno(err);
            return -1;
        }
        // No error: connected, unless the wake was spurious and it is still in progress.
        // SAFETY: an all-zero sockaddr_storage is valid; the out-pointers are valid.
        let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut plen = size_of::<libc::sockaddr_storage>() as socklen_t;
        // SAFETY: as above.
        let r = unsafe {
            libc::getpeername(
                fd,
                (&mut peer as *mut libc::sockaddr_storage).cast(),
                &mut plen,
            )
        };
        if r == 0 {
            return 0;
        }
        if errno() != libc::ENOTCONN {
            return -1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// poll, ppoll

fn poll_interest(events: libc::c_short) -> Readiness {
    let read = libc::POLLIN | libc::POLLPRI | libc::POLLRDNORM | libc::POLLRDBAND | libc::POLLRDHUP;
    let write = libc::POLLOUT | libc::POLLWRNORM | libc::POLLWRBAND;
    let mut r = Readiness::NONE;
    if events & read != 0 {
        r = r | READ;
    }
    if events & write != 0 {
        r = r | WRITE;
    }
    if r.is_empty() {
        // Only errors and hang-ups are wanted; both wake readers.
        r = READ;
    }
    r
}

/// `poll` in a fiber with a non-zero timeout: `None` when no hook is active.
fn hooked_poll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    deadline: Option<Deadline>,
) -> Option<c_int> {
    active()?;
    // SAFETY: forwarded with a zero timeout.
    let r = unsafe { real::poll(fds, nfds, 0) };
    if r != 0 {
        return Some(r);
    }
    let list: Vec<(RawFd, Readiness)> = if fds.is_null() || nfds == 0 {
        Vec::new()
    } else {
        // SAFETY: the caller passed `nfds` valid pollfds.
        unsafe { std::slice::from_raw_parts(fds, nfds as usize) }
            .iter()
            .filter(|p| p.fd >= 0)
            .map(|p| (p.fd, poll_interest(p.events)))
            .collect()
    };
    loop {
        let woke = with_hook(|hook| hook.wait_any_fd(&list, deadline))?;
        match woke {
            Err(Errno(e)) => {
                set_errno(e);
                return Some(-1);
            }
            Ok(readiness) => {
                // SAFETY: as above.
                let r = unsafe { real::poll(fds, nfds, 0) };
                if r != 0 || readiness.is_empty() {
                    return Some(r);
                }
            }
        }
    }
}

/// Interposed `poll(2)`. In a fiber a non-zero timeout parks the fiber until one of the fds is
/// ready or the timeout passes; a zero timeout never parks.
///
/// # Safety
/// libc's contract: `fds` holds `nfds` pollfds.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    if timeout != 0 && active().is_some() {
        let deadline = (timeout > 0).then(|| Deadline::now().after(timeout as u64 * 1_000_000));
        if let Some(r) = hooked_poll(fds, nfds, deadline) {
            return r;
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::poll(fds, nfds, timeout) }
}

/// The wait a `ppoll`/`pselect` timeout asks for: `Some(None)` for no timeout (wait forever),
/// `Some(Some(deadline))`, or `None` when the real call must handle it (an invalid timespec, which
/// libc reports as `EINVAL`, or a zero timeout, which never parks).
///
/// # Safety
/// `timeout` is null or points to a readable timespec.
unsafe fn timespec_wait(timeout: *const libc::timespec) -> Option<Option<Deadline>> {
    if timeout.is_null() {
        return Some(None);
    }
    // SAFETY: non-null, and the caller guarantees it is readable.
    let ts = unsafe { *timeout };
    if ts.tv_sec < 0
        || !(0..1_000_000_000).contains(&ts.tv_nsec)
        || (ts.tv_sec == 0 && ts.tv_nsec == 0)
    {
        return None;
    }
    let ns = (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64);
    Some(Some(Deadline::now().after(ns)))
}

/// Interposed `ppoll(2)`. Parks like `poll` in a fiber when no signal mask is given (a mask
/// must be applied atomically with the wait, which only the real call can do).
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    if sigmask.is_null() && active().is_some() {
        // SAFETY: the caller guarantees `timeout` is null or readable.
        if let Some(deadline) = unsafe { timespec_wait(timeout) }
            && let Some(r) = hooked_poll(fds, nfds, deadline)
        {
            return r;
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::ppoll(fds, nfds, timeout, sigmask) }
}

// ---------------------------------------------------------------------------------------------
// select, pselect

/// `select` in a fiber through the `poll` path: the sets become pollfds, and the result is
/// written back with the kernel's mapping (readable: `POLLIN`, hang-up or error; writable:
/// `POLLOUT` or error; exceptional: `POLLPRI`). `None` when the call is not one to park.
fn hooked_select(
    nfds: c_int,
    sets: [*mut libc::fd_set; 3],
    deadline: Option<Deadline>,
) -> Option<c_int> {
    if !(0..=libc::FD_SETSIZE as c_int).contains(&nfds) {
        return None; // libc's EINVAL
    }
    let wanted = |set: *mut libc::fd_set, fd: c_int| {
        // SAFETY: a non-null set the caller passed, and fd < FD_SETSIZE.
        !set.is_null() && unsafe { libc::FD_ISSET(fd, set) }
    };
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    for fd in 0..nfds {
        let mut events = 0;
        if wanted(sets[0], fd) {
            events |= libc::POLLIN;
        }
        if wanted(sets[1], fd) {
            events |= libc::POLLOUT;
        }
        if wanted(sets[2], fd) {
            events |= libc::POLLPRI;
        }
        if events != 0 {
            pfds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
        }
    }
    let r = hooked_poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, deadline)?;
    if r < 0 {
        return Some(r);
    }
    if pfds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        set_errno(libc::EBADF);
        return Some(-1);
    }
    for set in sets.into_iter().filter(|s| !s.is_null()) {
        for fd in 0..nfds {
            // SAFETY: the caller's set, fd < FD_SETSIZE.
            unsafe { libc::FD_CLR(fd, set) };
        }
    }
    let mut count = 0;
    for p in &pfds {
        let results = [
            (libc::POLLIN | libc::POLLHUP | libc::POLLERR, libc::POLLIN),
            (libc::POLLOUT | libc::POLLERR, libc::POLLOUT),
            (libc::POLLPRI, libc::POLLPRI),
        ];
        for (set, (ready, asked)) in sets.into_iter().zip(results) {
            if p.events & asked != 0 && p.revents & ready != 0 {
                // SAFETY: non-null (it was asked for), fd < FD_SETSIZE.
                unsafe { libc::FD_SET(p.fd, set) };
                count += 1;
            }
        }
    }
    Some(count)
}

/// Interposed `select(2)`: parks like `poll` in a fiber (a zero timeout never parks), and, as
/// Linux does, leaves the time not slept in `timeout`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn select(
    nfds: c_int,
    readfds: *mut libc::fd_set,
    writefds: *mut libc::fd_set,
    exceptfds: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    if active().is_some() {
        let deadline = if timeout.is_null() {
            Some(None)
        } else {
            // SAFETY: non-null, and the caller guarantees it is valid.
            let tv = unsafe { *timeout };
            if tv.tv_sec < 0
                || !(0..1_000_000).contains(&tv.tv_usec)
                || (tv.tv_sec == 0 && tv.tv_usec == 0)
            {
                None // invalid (EINVAL) or zero (never parks): the real call
            } else {
                let ns = (tv.tv_sec as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(tv.tv_usec as u64 * 1000);
                Some(Some(Deadline::now().after(ns)))
            }
        };
        if let Some(deadline) = deadline
            && let Some(r) = hooked_select(nfds, [readfds, writefds, exceptfds], deadline)
        {
            if let Some(d) = deadline {
                let left = d.remaining_from(Deadline::now());
                // SAFETY: non-null when there is a deadline.
                unsafe {
                    *timeout = libc::timeval {
                        tv_sec: (left / 1_000_000_000) as libc::time_t,
                        tv_usec: ((left % 1_000_000_000) / 1000) as libc::suseconds_t,
                    }
                };
            }
            return r;
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::select(nfds, readfds, writefds, exceptfds, timeout) }
}

/// Interposed `pselect(2)`: parks like `select` in a fiber when no signal mask is given; the
/// caller's `timeout` is left unchanged, as glibc's.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    readfds: *mut libc::fd_set,
    writefds: *mut libc::fd_set,
    exceptfds: *mut libc::fd_set,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    if sigmask.is_null() && active().is_some() {
        // SAFETY: the caller guarantees `timeout` is null or readable.
        if let Some(deadline) = unsafe { timespec_wait(timeout) }
            && let Some(r) = hooked_select(nfds, [readfds, writefds, exceptfds], deadline)
        {
            return r;
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::pselect(nfds, readfds, writefds, exceptfds, timeout, sigmask) }
}

// ---------------------------------------------------------------------------------------------
// close, dup*, fcntl, ioctl, setsockopt: keeping the table true

/// Forgets `fd` and deregisters it before it is closed or replaced; returns what was known.
fn retire(fd: RawFd) -> Entry {
    let entry = fd::forget(fd);
    fd::deregister(fd, entry);
    entry
}

/// Tells the hook (if a fiber is closing) that fibers waiting on `fd` must wake with EBADF.
fn notify_closed(fd: RawFd, entry: Entry) {
    if entry.registered_epfd().is_some() {
        with_hook(|hook| hook.fd_closed(fd));
    }
}

/// Forgets what the table remembers of a number the kernel just handed out. It can only be
/// stale when the number's last `close` went by unseen (glibc's own `fclose`, a raw system call,
/// `close_range`), and a stale entry would claim an epoll registration the new file lacks.
fn fresh_fds(fds: &[c_int]) {
    let saved = errno();
    for &fd in fds {
        if fd >= 0 {
            fd::forget(fd);
        }
    }
    set_errno(saved);
}

/// Interposed `socket(2)`: libc's, then [`fresh_fds`].
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: forwarded unchanged.
    let fd = unsafe { real::socket(domain, ty, protocol) };
    fresh_fds(&[fd]);
    fd
}

/// Interposed `socketpair(2)`: libc's, then [`fresh_fds`].
///
/// # Safety
/// libc's contract: `sv` points to two writable ints.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn socketpair(
    domain: c_int,
    ty: c_int,
    protocol: c_int,
    sv: *mut c_int,
) -> c_int {
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::socketpair(domain, ty, protocol, sv) };
    if r == 0 {
        // SAFETY: on success the kernel wrote both ints.
        fresh_fds(unsafe { std::slice::from_raw_parts(sv, 2) });
    }
    r
}

/// Interposed `pipe(2)`: libc's, then [`fresh_fds`].
///
/// # Safety
/// libc's contract: `fds` points to two writable ints.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipe(fds: *mut c_int) -> c_int {
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::pipe(fds) };
    if r == 0 {
        // SAFETY: on success the kernel wrote both ints.
        fresh_fds(unsafe { std::slice::from_raw_parts(fds, 2) });
    }
    r
}

/// Interposed `pipe2(2)`: libc's, then [`fresh_fds`].
///
/// # Safety
/// libc's contract: `fds` points to two writable ints.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::pipe2(fds, flags) };
    if r == 0 {
        // SAFETY: on success the kernel wrote both ints.
        fresh_fds(unsafe { std::slice::from_raw_parts(fds, 2) });
    }
    r
}

/// Interposed `close(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let entry = retire(fd);
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::close(fd) };
    notify_closed(fd, entry);
    r
}

/// Interposed `dup(2)`: the copy shares the description, so it inherits what fibra knows of it.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::dup(fd) };
    copied(fd, r);
    r
}

fn copied(old: RawFd, new: c_int) {
    if new < 0 {
        return;
    }
    let saved = errno();
    let entry = fd::lookup(old);
    if entry.is_known() {
        fd::set_fresh(new, entry);
    } else {
        fd::forget(new);
    }
    set_errno(saved);
}

/// Interposed `dup2(2)`: replacing `new` closes it, which wakes its waiters with EBADF.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if old == new {
        // SAFETY: forwarded unchanged (checks `old` and returns it).
        return unsafe { real::dup2(old, new) };
    }
    // SAFETY: F_GETFD takes no argument. A call that will fail must leave `new` alone.
    if unsafe { real::fcntl(old, libc::F_GETFD, 0) } < 0 {
        // SAFETY: forwarded unchanged (EBADF).
        return unsafe { real::dup2(old, new) };
    }
    let entry = retire(new);
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::dup2(old, new) };
    copied(old, r);
    notify_closed(new, entry);
    r
}

/// Interposed `dup3(2)`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if old == new {
        // SAFETY: forwarded unchanged (EINVAL).
        return unsafe { real::dup3(old, new, flags) };
    }
    // SAFETY: as in `dup2`. A call that will fail must leave `new` alone.
    if flags & !libc::O_CLOEXEC != 0 || unsafe { real::fcntl(old, libc::F_GETFD, 0) } < 0 {
        // SAFETY: forwarded unchanged (EINVAL or EBADF).
        return unsafe { real::dup3(old, new, flags) };
    }
    let entry = retire(new);
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::dup3(old, new, flags) };
    copied(old, r);
    notify_closed(new, entry);
    r
}

/// `fd`'s entry; an fd the table does not know that shares a description fibra made
/// non-blocking (a dup made before the switch) takes its twin's entry first.
fn learn_twin(fd: RawFd) -> Entry {
    let entry = fd::lookup(fd);
    if entry.is_known() {
        return entry;
    }
    let saved = errno();
    let twin = fd::find_twin(fd);
    set_errno(saved);
    match twin {
        Some(twin) => {
            fd::set_fresh(fd, twin);
            twin
        }
        None => entry,
    }
}

fn fcntl_common(
    real_fcntl: unsafe fn(c_int, c_int, c_ulong) -> c_int,
    fd: c_int,
    cmd: c_int,
    arg: c_ulong,
) -> c_int {
    match cmd {
        libc::F_GETFL => {
            // SAFETY: forwarded unchanged.
            let r = unsafe { real_fcntl(fd, cmd, arg) };
            let mut entry = fd::lookup(fd);
            if r >= 0 && r & libc::O_NONBLOCK != 0 && !entry.is_known() {
                // Perhaps a dup of a description fibra made non-blocking.
                if let Some(twin) = fd::find_twin(fd) {
                    fd::set_fresh(fd, twin);
                    entry = twin;
                }
            }
            if r >= 0 && entry.own_nonblock() {
                // The user's view: fibra's own O_NONBLOCK hidden.
                return if entry.user_nonblock() {
                    r | libc::O_NONBLOCK
                } else {
                    r & !libc::O_NONBLOCK
                };
            }
            r
        }
        libc::F_SETFL => {
            fd::nonblock_changing();
            let entry = learn_twin(fd);
            if entry.own_nonblock() {
                // Keep the description non-blocking; record what the user asked for.
                // SAFETY: forwarded with O_NONBLOCK kept.
                let r = unsafe { real_fcntl(fd, cmd, arg | libc::O_NONBLOCK as c_ulong) };
                if r == 0 {
                    fd::set_user_nonblock_shared(fd, arg & libc::O_NONBLOCK as c_ulong != 0);
                }
                return r;
            }
            // SAFETY: forwarded unchanged.
            unsafe { real_fcntl(fd, cmd, arg) }
        }
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            // SAFETY: forwarded unchanged.
            let r = unsafe { real_fcntl(fd, cmd, arg) };
            copied(fd, r);
            r
        }
        // SAFETY: forwarded unchanged.
        _ => unsafe { real_fcntl(fd, cmd, arg) },
    }
}

/// Interposed `fcntl(2)` (variadic in C; the one optional argument is spelled out, which is the
/// same call on x86_64 and aarch64 Linux). `F_GETFL`/`F_SETFL` show and set the user's view of
/// `O_NONBLOCK` on descriptions fibra made non-blocking; `F_DUPFD*` copy fibra's knowledge.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    fcntl_common(real::fcntl, fd, cmd, arg)
}

/// Interposed `fcntl64`, glibc's large-file name for `fcntl`.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    fcntl_common(real::fcntl64, fd, cmd, arg)
}

/// Interposed `ioctl(2)` (variadic in C, like `fcntl`). `FIONBIO` on a description fibra made
/// non-blocking records the user's choice and keeps the description non-blocking.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    if request == libc::FIONBIO as c_ulong {
        fd::nonblock_changing();
    }
    if request == libc::FIONBIO as c_ulong && !arg.is_null() && learn_twin(fd).own_nonblock() {
        let mut on: c_int = 1;
        // SAFETY: a valid int argument for FIONBIO; validates `fd` as the real call would.
        let r = unsafe { real::ioctl(fd, request, (&mut on as *mut c_int).cast()) };
        if r == 0 {
            // SAFETY: non-null, and FIONBIO's argument is a readable int.
            let wanted = unsafe { *arg.cast::<c_int>() } != 0;
            fd::set_user_nonblock_shared(fd, wanted);
        }
        return r;
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::ioctl(fd, request, arg) }
}

/// Interposed `setsockopt(2)`: notes that socket timeouts are in use, so that parking calls
/// start asking for them.
///
/// # Safety
/// libc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    if level == libc::SOL_SOCKET
        && matches!(
            name,
            libc::SO_RCVTIMEO | libc::SO_SNDTIMEO | SO_RCVTIMEO_NEW | SO_SNDTIMEO_NEW
        )
    {
        fd::TIMEOUTS_USED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::setsockopt(fd, level, name, value, len) }
}

/// Linux's 64-bit-time variants of the timeout options (asm-generic values).
const SO_RCVTIMEO_NEW: c_int = 66;
const SO_SNDTIMEO_NEW: c_int = 67;
