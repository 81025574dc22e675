//! The process-wide fd table: what fibra knows about each file descriptor number.
//!
//! One `AtomicU64` per fd, in chunks of [`CHUNK_LEN`] entries that are `mmap`ed on first use and
//! never freed, reached through a fixed top-level array of chunk pointers. Every operation is a
//! handful of atomic loads or a compare-and-swap: usable from any thread, from a forked child and
//! from a signal handler, without a lock and without `malloc`.
//!
//! Entries are learned lazily (`hazards.md` §10): the first time a fiber does I/O on an fd, the
//! shim `fstat`s it and records its kind. An fd created before the scheduler ran, in another
//! thread, or by a library is learned the same way. `close`, `dup2` and `dup3` forget the entry
//! of the number they free, so a reused number is learned afresh and never inherits a stale
//! epoll registration (the entry also records which epoll instance registered the fd, so the
//! interposed `close` can deregister it first, from any thread).
//!
//! An entry also holds the *user's* view of `O_NONBLOCK` when fibra had to set `O_NONBLOCK` on
//! the file description itself (listening sockets, named FIFOs): see `net.rs`.

use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Entries per chunk (32 KiB of atomics).
const CHUNK_LEN: usize = 4096;
/// Chunks: fds up to 4 Mi, beyond Linux's default `nr_open` (1 Mi). Larger fds are never parked.
const CHUNKS: usize = 1024;

type Chunk = [AtomicU64; CHUNK_LEN];

static TABLE: [AtomicPtr<Chunk>; CHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; CHUNKS];

/// Set once any thread sets `SO_RCVTIMEO` or `SO_SNDTIMEO` through the interposed
/// `setsockopt`; until then a parking call need not ask the kernel for the socket's timeout.
pub(crate) static TIMEOUTS_USED: AtomicBool = AtomicBool::new(false);

/// Bumped by every interposed `fcntl(F_SETFL)` and `ioctl(FIONBIO)`, anywhere: either may change
/// `O_NONBLOCK` of a description any fd shares, so every cached answer goes stale.
static NONBLOCK_EPOCH: AtomicU64 = AtomicU64::new(0);

/// How many entries have [`OWN_NONBLOCK`]; while none do, no description twin can exist and
/// [`find_twin`] costs nothing.
static OWN_NONBLOCK_ENTRIES: AtomicUsize = AtomicUsize::new(0);

/// What fibra knows about one fd. `Entry(0)`: nothing (not learned yet).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Entry(u64);

const KNOWN: u64 = 1;
const SOCKET: u64 = 1 << 1;
const PIPE: u64 = 1 << 2;
/// A stream (SOCK_STREAM socket, pipe or FIFO): a blocking write writes everything.
const STREAM: u64 = 1 << 3;
/// fibra set `O_NONBLOCK` on the file description; the user's view is [`USER_NONBLOCK`].
const OWN_NONBLOCK: u64 = 1 << 4;
/// With [`OWN_NONBLOCK`]: the user asked for non-blocking mode.
const USER_NONBLOCK: u64 = 1 << 5;
/// `preadv2`/`pwritev2` with `RWF_NOWAIT` is refused (`EOPNOTSUPP`) on this fd.
const NO_RWF_NOWAIT: u64 = 1 << 6;
/// A cached answer to "did the user make this description non-blocking?" (for fds fibra did not
/// switch), valid while the epoch in [`NB_EPOCH_SHIFT`].. equals [`NONBLOCK_EPOCH`]: `F_GETFL`
/// is then not needed before a fiber parks.
const NB_CACHED: u64 = 1 << 7;
const NB_VALUE: u64 = 1 << 8;
/// A stream whose short read proves its receive queue empty (TCP):
/// the drained-read hint may be used. Not Unix stream sockets (a read stops after an skb
/// carrying fds, or at a change of credentials) nor packet-mode pipes.
const HINTABLE: u64 = 1 << 9;
const NB_EPOCH_SHIFT: u32 = 10;
const NB_EPOCH_MASK: u64 = (1 << 22) - 1;
/// The bits that describe the file description and so carry over to a `dup`.
const DESCRIPTION_BITS: u64 = KNOWN
    | SOCKET
    | PIPE
    | STREAM
    | HINTABLE
    | OWN_NONBLOCK
    | USER_NONBLOCK
    | NB_CACHED
    | NB_VALUE
    | (NB_EPOCH_MASK << NB_EPOCH_SHIFT);
const EPFD_SHIFT: u32 = 32;

impl Entry {
    /// Learned at all.
    pub fn is_known(self) -> bool {
        self.0 & KNOWN != 0
    }
    /// A socket or a pipe/FIFO: a call that would block parks the fiber. Everything else
    /// (stdin/stdout/stderr, ttys, regular files, devices) never parks.
    pub fn parks(self) -> bool {
        self.0 & (SOCKET | PIPE) != 0
    }
    /// A socket.
    pub fn is_socket(self) -> bool {
        self.0 & SOCKET != 0
    }
    /// A byte stream, where a blocking write completes in full.
    pub fn is_stream(self) -> bool {
        self.0 & STREAM != 0
    }
    /// A short read proves the receive queue empty (see [`HINTABLE`]).
    pub fn hintable(self) -> bool {
        self.0 & HINTABLE != 0
    }
    /// fibra made the description non-blocking; the user's view is [`Entry::user_nonblock`].
    pub fn own_nonblock(self) -> bool {
        self.0 & OWN_NONBLOCK != 0
    }
    /// With [`Entry::own_nonblock`]: the user's view of `O_NONBLOCK`.
    pub fn user_nonblock(self) -> bool {
        self.0 & USER_NONBLOCK != 0
    }
    /// The cached `O_NONBLOCK` of the user's description, if still valid.
    pub fn cached_nonblock(self) -> Option<bool> {
        let epoch = NONBLOCK_EPOCH.load(Ordering::Acquire) & NB_EPOCH_MASK;
        (self.0 & NB_CACHED != 0 && (self.0 >> NB_EPOCH_SHIFT) & NB_EPOCH_MASK == epoch)
            .then_some(self.0 & NB_VALUE != 0)
    }
    /// Whether `RWF_NOWAIT` was found unsupported on this fd.
    pub fn no_rwf_nowait(self) -> bool {
        self.0 & NO_RWF_NOWAIT != 0
    }
    /// The epoll instance the fd is registered with, if any.
    pub fn registered_epfd(self) -> Option<RawFd> {
        match (self.0 >> EPFD_SHIFT) as u32 {
            0 => None,
            n => Some((n - 1) as RawFd),
        }
    }
    /// fibra must emulate a blocking call for a caller outside any fiber: the description is
    /// non-blocking only because fibra made it so.
    pub fn emulate_blocking(self) -> bool {
        self.0 & (OWN_NONBLOCK | USER_NONBLOCK) == OWN_NONBLOCK
    }
}

fn slot(fd: RawFd) -> Option<&'static AtomicU64> {
    let fd = usize::try_from(fd).ok()?;
    let chunk = TABLE.get(fd / CHUNK_LEN)?.load(Ordering::Acquire);
    // SAFETY: chunks are never freed once published.
    (!chunk.is_null()).then(|| unsafe { &(*chunk)[fd % CHUNK_LEN] })
}

fn slot_or_create(fd: RawFd) -> Option<&'static AtomicU64> {
    let index = usize::try_from(fd).ok()?;
    let top = TABLE.get(index / CHUNK_LEN)?;
    let mut chunk = top.load(Ordering::Acquire);
    if chunk.is_null() {
        // mmap, not malloc: this may run in a forked child or between fork and exec.
        // SAFETY: an anonymous private mapping; zeroed memory is a valid array of AtomicU64.
        let fresh = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size_of::<Chunk>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if fresh == libc::MAP_FAILED {
            return None;
        }
        let fresh = fresh.cast::<Chunk>();
        match top.compare_exchange(chunk, fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => chunk = fresh,
            Err(winner) => {
                // SAFETY: our mapping, never published.
                unsafe { libc::munmap(fresh.cast(), size_of::<Chunk>()) };
                chunk = winner;
            }
        }
    }
    // SAFETY: published chunks are never freed.
    Some(unsafe { &(*chunk)[index % CHUNK_LEN] })
}

/// The entry of `fd` as known now (`Entry(0)` if never learned). Never allocates.
#[inline]
pub fn lookup(fd: RawFd) -> Entry {
    slot(fd).map_or(Entry(0), |s| Entry(s.load(Ordering::Acquire)))
}

/// The entry of `fd`, learning it first if needed. `None` when `fd` is not open (the real call
/// will report `EBADF`) or is too large for the table.
pub fn learn(fd: RawFd) -> Option<Entry> {
    let entry = lookup(fd);
    if entry.is_known() {
        return Some(entry);
    }
    let bits = classify(fd)?;
    // A registration may be recorded already (poll registers fds it never learned), and another
    // thread may have learned it meanwhile: merge, keeping what is there.
    update(fd, |e| if e & KNOWN == 0 { e | bits } else { e })
}

/// What kind of file `fd` is, as entry bits.
fn classify(fd: RawFd) -> Option<u64> {
    // SAFETY: an all-zero stat is valid, and fstat only writes it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    // stdin, stdout and stderr never park whatever they are (hazards.md §2): std holds a
    // thread-owned reentrant lock around them, which another fiber of the thread would re-enter.
    if fd <= 2 {
        return Some(KNOWN);
    }
    Some(match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => {
            let mut ty: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: valid out-pointers of the sizes given.
            let r = unsafe {
                crate::real::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_TYPE,
                    (&mut ty as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            let stream = if r == 0 && ty == libc::SOCK_STREAM {
                STREAM
            } else {
                0
            };
            let mut domain: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: valid out-pointers of the sizes given.
            let r = unsafe {
                crate::real::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_DOMAIN,
                    (&mut domain as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            let tcp = r == 0 && matches!(domain, libc::AF_INET | libc::AF_INET6);
            KNOWN | SOCKET | stream | if tcp && stream != 0 { HINTABLE } else { 0 }
        }
        // Not hintable: a writer may put the pipe in packet mode (O_DIRECT on its own end,
        // invisible from the read end), and a packet pipe returns one packet per read.
        libc::S_IFIFO => KNOWN | PIPE | STREAM,
        _ => KNOWN,
    })
}

/// Applies `f` to `fd`'s entry atomically (creating the chunk if needed); returns the new entry.
fn update(fd: RawFd, f: impl Fn(u64) -> u64) -> Option<Entry> {
    let slot = slot_or_create(fd)?;
    let mut current = slot.load(Ordering::Acquire);
    loop {
        let new = f(current);
        match slot.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                count_own(current, new);
                return Some(Entry(new));
            }
            Err(seen) => current = seen,
        }
    }
}

fn count_own(old: u64, new: u64) {
    match (old & OWN_NONBLOCK != 0, new & OWN_NONBLOCK != 0) {
        (false, true) => {
            OWN_NONBLOCK_ENTRIES.fetch_add(1, Ordering::Relaxed);
        }
        (true, false) => {
            OWN_NONBLOCK_ENTRIES.fetch_sub(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Records that fibra made `fd`'s description non-blocking, and that the user's view is
/// `user_nonblock`.
pub fn set_own_nonblock(fd: RawFd, user_nonblock: bool) -> Option<Entry> {
    update(fd, |e| {
        let e = e | OWN_NONBLOCK;
        if user_nonblock {
            e | USER_NONBLOCK
        } else {
            e & !USER_NONBLOCK
        }
    })
}

/// Records the user's view of `O_NONBLOCK` on an fd with [`Entry::own_nonblock`].
pub fn set_user_nonblock(fd: RawFd, user_nonblock: bool) {
    update(fd, |e| {
        if e & OWN_NONBLOCK == 0 {
            e
        } else if user_nonblock {
            e | USER_NONBLOCK
        } else {
            e & !USER_NONBLOCK
        }
    });
}

/// The epoch to pass to [`cache_nonblock`]: read it *before* asking the kernel.
pub fn nonblock_epoch() -> u64 {
    NONBLOCK_EPOCH.load(Ordering::Acquire) & NB_EPOCH_MASK
}

/// Caches the user's `O_NONBLOCK` of `fd`, as read from the kernel during `epoch`.
pub fn cache_nonblock(fd: RawFd, epoch: u64, nonblock: bool) {
    let bits = NB_CACHED | if nonblock { NB_VALUE } else { 0 } | (epoch << NB_EPOCH_SHIFT);
    let mask = NB_CACHED | NB_VALUE | (NB_EPOCH_MASK << NB_EPOCH_SHIFT);
    update(fd, |e| (e & !mask) | bits);
}

/// Invalidates every cached `O_NONBLOCK` (an `F_SETFL` or `FIONBIO` is being made).
pub fn nonblock_changing() {
    NONBLOCK_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// Records that `RWF_NOWAIT` is refused on `fd`.
pub fn set_no_rwf_nowait(fd: RawFd) {
    update(fd, |e| e | NO_RWF_NOWAIT);
}

/// Marks `fd` as never parking (epoll refused it).
pub fn set_never_parks(fd: RawFd) {
    update(fd, |e| (e & !(SOCKET | PIPE)) | KNOWN);
}

/// Records that `fd` is registered with the epoll instance `epfd` (for the scheduler).
pub fn set_registered(fd: RawFd, epfd: RawFd) {
    let tag = (epfd as u32 as u64 + 1) << EPFD_SHIFT;
    update(fd, |e| (e & 0xffff_ffff) | tag);
}

/// Sets a freshly created fd's entry (`accept`, `dup`): `like`'s description bits, no
/// registration.
pub fn set_fresh(fd: RawFd, like: Entry) {
    if let Some(slot) = slot_or_create(fd) {
        let new = like.0 & DESCRIPTION_BITS;
        count_own(slot.swap(new, Ordering::AcqRel), new);
    }
}

/// Forgets `fd` (it is being closed or replaced) and returns what was known. Never allocates.
pub fn forget(fd: RawFd) -> Entry {
    slot(fd).map_or(Entry(0), |s| {
        let old = s.swap(0, Ordering::AcqRel);
        count_own(old, 0);
        Entry(old)
    })
}

/// Another fd with [`Entry::own_nonblock`] that shares `fd`'s open file description (a `dup`
/// made before fibra switched the description, or by a raw system call), found with
/// `kcmp(KCMP_FILE)`. Such an fd sees fibra's `O_NONBLOCK` in `F_GETFL`, which is not the
/// user's. Never allocates; scans the table only while some description is fibra's.
pub fn find_twin(fd: RawFd) -> Option<Entry> {
    if OWN_NONBLOCK_ENTRIES.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut found = None;
    for_each_own(|other, entry| {
        if other != fd && same_description(fd, other) {
            found = Some(entry);
            false
        } else {
            true
        }
    });
    found
}

/// Sets the user's view of `O_NONBLOCK` on every fd sharing `fd`'s description.
pub fn set_user_nonblock_shared(fd: RawFd, user_nonblock: bool) {
    set_user_nonblock(fd, user_nonblock);
    if OWN_NONBLOCK_ENTRIES.load(Ordering::Relaxed) <= 1 {
        return;
    }
    for_each_own(|other, _| {
        if other != fd && same_description(fd, other) {
            set_user_nonblock(other, user_nonblock);
        }
        true
    });
}

fn same_description(a: RawFd, b: RawFd) -> bool {
    // SAFETY: plain system calls on fd numbers; kcmp only compares.
    unsafe {
        let pid = libc::getpid();
        libc::syscall(libc::SYS_kcmp, pid, pid, 0 /* KCMP_FILE */, a, b) == 0
    }
}

/// Calls `f(fd, entry)` for every entry with [`Entry::own_nonblock`] until it returns false.
fn for_each_own(mut f: impl FnMut(RawFd, Entry) -> bool) {
    for (c, top) in TABLE.iter().enumerate() {
        let chunk = top.load(Ordering::Acquire);
        if chunk.is_null() {
            continue;
        }
        // SAFETY: published chunks are never freed.
        for (i, slot) in unsafe { &*chunk }.iter().enumerate() {
            let bits = slot.load(Ordering::Acquire);
            if bits & OWN_NONBLOCK != 0 && !f((c * CHUNK_LEN + i) as RawFd, Entry(bits)) {
                return;
            }
        }
    }
}

/// The entry bits of a freshly accepted connection on a listener with entry `listener`.
pub fn accepted_from(listener: Entry) -> Entry {
    Entry(KNOWN | SOCKET | (listener.0 & (STREAM | HINTABLE)))
}

/// Deregisters `fd` from the epoll instance recorded in `entry`, before the fd goes away.
/// epoll keys registrations on (fd number, open file description); one left behind while a
/// `dup` keeps the description open would keep reporting events for a number now reused.
pub(crate) fn deregister(fd: RawFd, entry: Entry) {
    if let Some(epfd) = entry.registered_epfd() {
        // SAFETY: plain system call; failure (the epoll instance is gone, the fd was never
        // registered) leaves nothing to clean.
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, ptr::null_mut()) };
    }
}

/// Clears every record of a registration with `epfd`, which is about to be closed: a later epoll
/// instance may get the same number and must not believe it already has those fds.
pub fn forget_registrations(epfd: RawFd) {
    let tag = (epfd as u32 as u64 + 1) << EPFD_SHIFT;
    for top in &TABLE {
        let chunk = top.load(Ordering::Acquire);
        if chunk.is_null() {
            continue;
        }
        // SAFETY: published chunks are never freed.
        for slot in unsafe { &*chunk } {
            let mut current = slot.load(Ordering::Relaxed);
            while current & !0xffff_ffff == tag {
                match slot.compare_exchange_weak(
                    current,
                    current & 0xffff_ffff,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(seen) => current = seen,
                }
            }
        }
    }
}

/// In a child just forked: every registration recorded belongs to the parent's epoll instances
/// (which the child shares until it closes them). Forget them all *without* deregistering:
/// a `close` in the child must never remove the parent's registrations. Never allocates.
pub(crate) fn forget_all_registrations() {
    for top in &TABLE {
        let chunk = top.load(Ordering::Acquire);
        if chunk.is_null() {
            continue;
        }
        // SAFETY: published chunks are never freed.
        for slot in unsafe { &*chunk } {
            slot.fetch_and(0xffff_ffff, Ordering::AcqRel);
        }
    }
}
