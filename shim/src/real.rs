//! The real libc functions behind every interposed symbol.
//!
//! Each is resolved with `dlsym(RTLD_NEXT, name)` by [`init`], which runs from `.init_array`
//! while the process is still single-threaded, before `main` and before any hook can be reached.
//! `dlsym` may allocate and take the loader lock, which is why it must never run inside a hook
//! (a hook can be reached from a forked child or a signal handler). Should anything call an
//! interposed symbol earlier than the constructor (another library's constructor), the accessor
//! resolves that one symbol on the spot; that can only happen during start-up, single-threaded.

use std::ffi::{CStr, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};

macro_rules! real_functions {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty; )*) => {
        /// Resolved addresses, one per function; null until resolved.
        #[allow(non_upper_case_globals)]
        mod slots {
            use super::*;
            $( pub(super) static $name: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut()); )*
        }

        /// Resolves every real function. Runs from `.init_array`; idempotent.
        pub(crate) extern "C" fn init() {
            $( resolve(&slots::$name, concat!(stringify!($name), "\0")); )*
        }

        $(
            $(#[$doc])*
            ///
            /// # Safety
            /// The same contract as the libc function of that name.
            #[inline]
            #[allow(non_upper_case_globals, clippy::missing_safety_doc)]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                let mut ptr = slots::$name.load(Ordering::Relaxed);
                if ptr.is_null() {
                    ptr = resolve(&slots::$name, concat!(stringify!($name), "\0"));
                }
                // SAFETY: `ptr` is libc's definition of this symbol, whose C prototype is the one
                // spelled out in this table.
                let real: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(ptr) };
                // SAFETY: the caller upholds the libc function's contract.
                unsafe { real($($arg),*) }
            }
        )*
    };
}

real_functions! {
    /// libc's `nanosleep`.
    fn nanosleep(req: *const libc::timespec, rem: *mut libc::timespec) -> libc::c_int;
    /// libc's `clock_nanosleep`.
    fn clock_nanosleep(
        clock: libc::clockid_t,
        flags: libc::c_int,
        req: *const libc::timespec,
        rem: *mut libc::timespec,
    ) -> libc::c_int;
    /// libc's `waitpid`.
    fn waitpid(pid: libc::pid_t, status: *mut libc::c_int, options: libc::c_int) -> libc::pid_t;
    /// libc's `wait4`.
    fn wait4(
        pid: libc::pid_t,
        status: *mut libc::c_int,
        options: libc::c_int,
        rusage: *mut libc::rusage,
    ) -> libc::pid_t;
    /// libc's `wait`.
    fn wait(status: *mut libc::c_int) -> libc::pid_t;
    /// libc's `waitid`.
    fn waitid(
        idtype: libc::idtype_t,
        id: libc::id_t,
        info: *mut libc::siginfo_t,
        options: libc::c_int,
    ) -> libc::c_int;
    /// libc's `usleep`.
    fn usleep(usec: libc::useconds_t) -> libc::c_int;
    /// libc's `sleep`.
    fn sleep(secs: libc::c_uint) -> libc::c_uint;
    /// libc's `fork`.
    fn fork() -> libc::pid_t;
    /// libc's `pthread_join`.
    fn pthread_join(thread: libc::pthread_t, retval: *mut *mut c_void) -> libc::c_int;
    /// libc's `write`, for messages that must bypass every hook (signal handlers).
    fn write(fd: libc::c_int, buf: *const c_void, len: libc::size_t) -> libc::ssize_t;
    /// libc's `read`.
    fn read(fd: libc::c_int, buf: *mut c_void, len: libc::size_t) -> libc::ssize_t;
    /// libc's `readv`.
    fn readv(fd: libc::c_int, iov: *const libc::iovec, iovcnt: libc::c_int) -> libc::ssize_t;
    /// libc's `writev`.
    fn writev(fd: libc::c_int, iov: *const libc::iovec, iovcnt: libc::c_int) -> libc::ssize_t;
    /// libc's `recv`.
    fn recv(fd: libc::c_int, buf: *mut c_void, len: libc::size_t, flags: libc::c_int)
        -> libc::ssize_t;
    /// libc's `recvfrom`.
    fn recvfrom(
        fd: libc::c_int,
        buf: *mut c_void,
        len: libc::size_t,
        flags: libc::c_int,
        addr: *mut libc::sockaddr,
        addrlen: *mut libc::socklen_t,
    ) -> libc::ssize_t;
    /// libc's `recvmsg`.
    fn recvmsg(fd: libc::c_int, msg: *mut libc::msghdr, flags: libc::c_int) -> libc::ssize_t;
    /// libc's `send`.
    fn send(fd: libc::c_int, buf: *const c_void, len: libc::size_t, flags: libc::c_int)
        -> libc::ssize_t;
    /// libc's `sendto`.
    fn sendto(
        fd: libc::c_int,
        buf: *const c_void,
        len: libc::size_t,
        flags: libc::c_int,
        addr: *const libc::sockaddr,
        addrlen: libc::socklen_t,
    ) -> libc::ssize_t;
    /// libc's `sendmsg`.
    fn sendmsg(fd: libc::c_int, msg: *const libc::msghdr, flags: libc::c_int) -> libc::ssize_t;
    /// libc's `accept`.
    fn accept(fd: libc::c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t)
        -> libc::c_int;
    /// libc's `accept4`.
    fn accept4(
        fd: libc::c_int,
        addr: *mut libc::sockaddr,
        len: *mut libc::socklen_t,
        flags: libc::c_int,
    ) -> libc::c_int;
    /// libc's `connect`.
    fn connect(fd: libc::c_int, addr: *const libc::sockaddr, len: libc::socklen_t)
        -> libc::c_int;
    /// libc's `poll`.
    fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: libc::c_int) -> libc::c_int;
    /// libc's `ppoll`.
    fn ppoll(
        fds: *mut libc::pollfd,
        nfds: libc::nfds_t,
        timeout: *const libc::timespec,
        sigmask: *const libc::sigset_t,
    ) -> libc::c_int;
    /// libc's `select`.
    fn select(
        nfds: libc::c_int,
        readfds: *mut libc::fd_set,
        writefds: *mut libc::fd_set,
        exceptfds: *mut libc::fd_set,
        timeout: *mut libc::timeval,
    ) -> libc::c_int;
    /// libc's `pselect`.
    fn pselect(
        nfds: libc::c_int,
        readfds: *mut libc::fd_set,
        writefds: *mut libc::fd_set,
        exceptfds: *mut libc::fd_set,
        timeout: *const libc::timespec,
        sigmask: *const libc::sigset_t,
    ) -> libc::c_int;
    /// libc's `socket`.
    fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> libc::c_int;
    /// libc's `socketpair`.
    fn socketpair(
        domain: libc::c_int,
        ty: libc::c_int,
        protocol: libc::c_int,
        sv: *mut libc::c_int,
    ) -> libc::c_int;
    /// libc's `pipe`.
    fn pipe(fds: *mut libc::c_int) -> libc::c_int;
    /// libc's `pipe2`.
    fn pipe2(fds: *mut libc::c_int, flags: libc::c_int) -> libc::c_int;
    /// libc's `close`.
    fn close(fd: libc::c_int) -> libc::c_int;
    /// libc's `dup`.
    fn dup(fd: libc::c_int) -> libc::c_int;
    /// libc's `dup2`.
    fn dup2(fd: libc::c_int, new: libc::c_int) -> libc::c_int;
    /// libc's `dup3`.
    fn dup3(fd: libc::c_int, new: libc::c_int, flags: libc::c_int) -> libc::c_int;
    /// libc's `fcntl` (variadic in C; called with its one integer-or-pointer argument spelled
    /// out, which is the same call on x86_64 and aarch64 Linux).
    fn fcntl(fd: libc::c_int, cmd: libc::c_int, arg: libc::c_ulong) -> libc::c_int;
    /// libc's `fcntl64` (the same function under its LFS name).
    fn fcntl64(fd: libc::c_int, cmd: libc::c_int, arg: libc::c_ulong) -> libc::c_int;
    /// libc's `ioctl` (variadic in C, like `fcntl`).
    fn ioctl(fd: libc::c_int, request: libc::c_ulong, arg: *mut c_void) -> libc::c_int;
    /// libc's `getsockopt`.
    fn getsockopt(
        fd: libc::c_int,
        level: libc::c_int,
        name: libc::c_int,
        value: *mut c_void,
        len: *mut libc::socklen_t,
    ) -> libc::c_int;
    /// libc's `setsockopt`.
    fn setsockopt(
        fd: libc::c_int,
        level: libc::c_int,
        name: libc::c_int,
        value: *const c_void,
        len: libc::socklen_t,
    ) -> libc::c_int;
    /// libc's `getaddrinfo`.
    fn getaddrinfo(
        node: *const libc::c_char,
        service: *const libc::c_char,
        hints: *const libc::addrinfo,
        res: *mut *mut libc::addrinfo,
    ) -> libc::c_int;
    /// libc's `freeaddrinfo`.
    fn freeaddrinfo(res: *mut libc::addrinfo) -> ();
}

/// libc's `syscall`, resolved like the others (it is variadic, so it is not in the table).
static SYSCALL: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// libc's `syscall` with all six argument registers passed (the extra ones are ignored by the
/// system calls that take fewer).
///
/// # Safety
/// The contract of the system call `num`.
#[inline]
#[allow(clippy::too_many_arguments)]
pub unsafe fn syscall(
    num: libc::c_long,
    a1: libc::c_long,
    a2: libc::c_long,
    a3: libc::c_long,
    a4: libc::c_long,
    a5: libc::c_long,
    a6: libc::c_long,
) -> libc::c_long {
    let mut ptr = SYSCALL.load(Ordering::Relaxed);
    if ptr.is_null() {
        ptr = resolve(&SYSCALL, "syscall\0");
    }
    // SAFETY: `ptr` is libc's variadic `syscall`.
    let real: unsafe extern "C" fn(libc::c_long, ...) -> libc::c_long =
        unsafe { std::mem::transmute(ptr) };
    // SAFETY: the caller upholds the system call's contract.
    unsafe { real(num, a1, a2, a3, a4, a5, a6) }
}

extern "C" fn init_syscall() {
    resolve(&SYSCALL, "syscall\0");
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT_SYSCALL_ENTRY: extern "C" fn() = init_syscall;

fn resolve(slot: &AtomicPtr<c_void>, name: &'static str) -> *mut c_void {
    let cname =
        CStr::from_bytes_with_nul(name.as_bytes()).expect("symbol names are NUL-terminated");
    // SAFETY: `cname` is a valid NUL-terminated string; RTLD_NEXT asks for the next definition
    // after this object's, which is libc's.
    let ptr = unsafe { libc::dlsym(libc::RTLD_NEXT, cname.as_ptr()) };
    if ptr.is_null() {
        // No libc definition means nothing can be forwarded: a broken process, not an error a
        // caller could handle. Say which symbol, without allocating.
        let msg =
            b"fibra-shim: dlsym(RTLD_NEXT) found no libc definition for an interposed symbol\n";
        // `libc::syscall` is the shim's own `syscall`, which forwards through this table: if
        // resolving `syscall` itself failed, writing the message would recurse. Abort instead.
        static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        // SAFETY: raw write(2) of a static buffer to stderr; then abort.
        unsafe {
            if !FAILING.swap(true, Ordering::Relaxed) {
                libc::syscall(libc::SYS_write, 2, msg.as_ptr(), msg.len());
            }
            libc::abort();
        }
    }
    slot.store(ptr, Ordering::Relaxed);
    ptr
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT_ARRAY_ENTRY: extern "C" fn() = init;
