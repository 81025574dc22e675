//! Stack overflow in a fiber: a clear message and an abort, never silent corruption.
//!
//! std's SIGSEGV handler only recognises the guard page of a thread's own stack; a fault in a
//! fiber's guard page would be a bare segmentation fault. fibra installs, once per process, a
//! SIGSEGV/SIGBUS handler in front of whatever was there (std's). It runs on the thread's
//! alternate signal stack (std gives its threads one; `run` adds one to threads that lack it),
//! since the faulting fiber has no stack left. If the fault address lies in the guard page of the
//! fiber running on this thread, it prints, without allocating, a message naming the fiber and
//! its stack size, as std does for threads, and aborts. Any other fault goes to the previous
//! handler.

use std::mem::MaybeUninit;
use std::sync::Once;

use crate::scheduler::Scheduler;

static INSTALL: Once = Once::new();
static mut PREVIOUS_SEGV: MaybeUninit<libc::sigaction> = MaybeUninit::zeroed();
static mut PREVIOUS_BUS: MaybeUninit<libc::sigaction> = MaybeUninit::zeroed();

/// Installs the handler (once per process).
pub(crate) fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler has the
        // SA_SIGINFO signature; the previous actions are written before the new handler can
        // observe them, because sigaction stores `old` as part of installing `new`.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSEGV, &action, (&raw mut PREVIOUS_SEGV).cast());
            libc::sigaction(libc::SIGBUS, &action, (&raw mut PREVIOUS_BUS).cast());
        }
    });
}

extern "C" fn on_fault(
    signum: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SIGSEGV/SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some(fiber) = Scheduler::current().and_then(|s| s.current_fiber()) {
        let (lo, hi) = fiber.guard;
        if addr >= lo && addr < hi {
            let mut line = Line::new();
            line.push(b"\nfiber ");
            line.push_number(fiber.id.as_u64());
            line.push(b" '");
            line.push(fiber.display_name().as_bytes());
            line.push(b"' has overflowed its stack (stack size ");
            line.push_number((fiber.stack_size / 1024) as u64);
            line.push(b" KiB; raise it with fibra::Builder::stack_size)\nfatal runtime error: stack overflow, aborting\n");
            line.write_stderr();
            // SAFETY: abort has no preconditions.
            unsafe { libc::abort() };
        }
    }
    // Not ours: hand over to the previous handler, as if fibra's were not there.
    // SAFETY: the previous action was stored by `install_handler` before this handler ran.
    let previous = unsafe {
        if signum == libc::SIGBUS {
            std::ptr::read(&raw const PREVIOUS_BUS).assume_init()
        } else {
            std::ptr::read(&raw const PREVIOUS_SEGV).assume_init()
        }
    };
    // SAFETY: in the SIGSEGV/SIGBUS handler, with the kernel's arguments and this signal's
    // previous action.
    if !unsafe { fibra_shim::signal::call_previous(&previous, signum, info, context) } {
        // SIG_DFL or SIG_IGN: restore it and return; the faulting instruction runs again and
        // gets the default action.
        // SAFETY: reinstalling a previously valid action.
        unsafe { libc::sigaction(signum, &previous, std::ptr::null_mut()) };
    }
}

/// A fixed buffer for composing the message without allocating.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn write_stderr(&self) {
        // SAFETY: writing our own buffer to fd 2 through libc's real write, bypassing hooks.
        unsafe { fibra_shim::real::write(2, self.buf.as_ptr().cast(), self.len) };
    }
}

/// An alternate signal stack installed by `run` on a thread that had none; removed on drop.
pub(crate) struct AltStack {
    mapping: Option<(usize, usize)>,
}

/// Makes sure the calling thread has an alternate signal stack, so the handler can run after a
/// fiber exhausted its own stack.
pub(crate) fn ensure_altstack() -> AltStack {
    // SAFETY: querying the current alternate stack into a valid out-pointer.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    unsafe { libc::sigaltstack(std::ptr::null(), &mut current) };
    if current.ss_flags & libc::SS_DISABLE == 0 {
        return AltStack { mapping: None };
    }
    let page = crate::stack::page_size();
    // SAFETY: getauxval has no preconditions.
    let min = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    let size = (min.max(libc::SIGSTKSZ) + 64 * 1024).next_multiple_of(page);
    // SAFETY: a fresh anonymous mapping: one guard page then the signal stack.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size + page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return AltStack { mapping: None };
    }
    // SAFETY: protecting the first page of our own mapping; installing a stack inside it.
    unsafe {
        libc::mprotect(addr, page, libc::PROT_NONE);
        let stack = libc::stack_t {
            ss_sp: addr.add(page),
            ss_flags: 0,
            ss_size: size,
        };
        libc::sigaltstack(&stack, std::ptr::null_mut());
    }
    AltStack {
        mapping: Some((addr as usize, size + page)),
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        if let Some((addr, len)) = self.mapping {
            // SAFETY: disabling the alternate stack we installed (we are not running on it),
            // then unmapping it.
            unsafe {
                let disable = libc::stack_t {
                    ss_sp: std::ptr::null_mut(),
                    ss_flags: libc::SS_DISABLE,
                    ss_size: 0,
                };
                libc::sigaltstack(&disable, std::ptr::null_mut());
                libc::munmap(addr as *mut libc::c_void, len);
            }
        }
    }
}
