//! Fiber stacks: pooled, each with a guard page, carved out of large mappings.
//!
//! A stack is `size` bytes of read-write memory with one guard page below it (stacks grow down),
//! so an overflow faults instead of corrupting the neighbour. Stacks are carved from chunks: one
//! `mmap` holds many stacks, and on Linux 6.13+ the guard pages are installed with
//! `madvise(MADV_GUARD_INSTALL)`, which does not split the mapping. The number of live fibers is
//! then not capped by `vm.max_map_count` (65,530 by default), as it is when each guard page is an
//! `mprotect`ed region of its own (two mappings a stack); older kernels get that fallback.
//!
//! Mappings are `MAP_NORESERVE`: a stack costs address space, and resident memory only for the
//! pages its fiber touches. A finished fiber's stack goes back to a per-size free list; beyond
//! [`WARM_STACKS`] free stacks per size, a returned stack's pages are released to the kernel
//! (`MADV_DONTNEED`) so that a burst of deep fibers does not pin memory forever.

use std::io;

use corosensei::stack::{Stack, StackPointer};

/// The stack size a fiber gets when its builder names none: 256 KiB of address space, of which
/// only touched pages are resident (a fiber parked in `std::thread::sleep` touches one or two).
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;

/// The smallest stack a fiber gets; smaller requests are raised to this.
pub const MIN_STACK_SIZE: usize = 16 * 1024;

/// Free stacks per size kept with their pages resident.
const WARM_STACKS: usize = 128;

/// The most stacks carved from one mapping; chunks start small and double up to this.
const MAX_STACKS_PER_CHUNK: usize = 4096;

const MADV_GUARD_INSTALL: libc::c_int = 102;

/// One fiber stack, owned by a fiber's coroutine while it runs and by the pool in between.
pub struct FiberStack {
    /// Lowest address of the guard page.
    guard: usize,
    /// Usable size in bytes, excluding the guard page.
    size: usize,
    page: usize,
}

impl FiberStack {
    /// The guard page's address range `[start, end)`.
    pub fn guard_range(&self) -> (usize, usize) {
        (self.guard, self.guard + self.page)
    }

    /// Usable bytes, excluding the guard page.
    pub fn size(&self) -> usize {
        self.size
    }

    fn top(&self) -> usize {
        self.guard + self.page + self.size
    }
}

// SAFETY: `base` and `limit` delimit `size` bytes of read-write memory owned by this stack and
// by nothing else (the pool hands each stack out once), page-aligned and so suitably aligned for
// corosensei; the guard page below `limit` faults on overflow.
unsafe impl Stack for FiberStack {
    fn base(&self) -> StackPointer {
        StackPointer::new(self.top()).expect("stack top is non-null")
    }

    fn limit(&self) -> StackPointer {
        StackPointer::new(self.guard + self.page).expect("stack limit is non-null")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum GuardKind {
    /// `MADV_GUARD_INSTALL` inside one mapping (Linux 6.13+).
    Madvise,
    /// `mprotect(PROT_NONE)`, one extra mapping per stack.
    Mprotect,
}

struct SizeClass {
    size: usize,
    /// Free stacks returned by a fiber, whose touched pages are still resident (at most
    /// [`WARM_STACKS`]); handed out first.
    warm: Vec<FiberStack>,
    /// Free stacks with no resident pages: never used, or released with `MADV_DONTNEED`.
    free: Vec<FiberStack>,
    next_chunk: usize,
}

struct Chunk {
    addr: usize,
    len: usize,
}

/// The per-scheduler stack pool.
pub struct StackPool {
    page: usize,
    guard_kind: Option<GuardKind>,
    classes: Vec<SizeClass>,
    chunks: Vec<Chunk>,
    /// Stacks handed out and not yet returned; chunks are unmapped only when this is zero.
    outstanding: usize,
}

impl StackPool {
    pub fn new() -> StackPool {
        StackPool {
            page: page_size(),
            guard_kind: None,
            classes: Vec::new(),
            chunks: Vec::new(),
            outstanding: 0,
        }
    }

    /// Rounds a requested size up to whole pages, at least [`MIN_STACK_SIZE`].
    pub fn round_size(&self, requested: usize) -> io::Result<usize> {
        let size = requested.max(MIN_STACK_SIZE);
        size.checked_next_multiple_of(self.page)
            .filter(|s| *s <= isize::MAX as usize / 2)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("fiber stack size {requested} is too large"),
                )
            })
    }

    /// Hands out a stack of at least `requested` bytes.
    pub fn allocate(&mut self, requested: usize) -> io::Result<FiberStack> {
        let size = self.round_size(requested)?;
        let class = match self.classes.iter().position(|c| c.size == size) {
            Some(i) => i,
            None => {
                self.classes.push(SizeClass {
                    size,
                    warm: Vec::new(),
                    free: Vec::new(),
                    next_chunk: 16,
                });
                self.classes.len() - 1
            }
        };
        if let Some(stack) = self.classes[class].warm.pop() {
            self.outstanding += 1;
            return Ok(stack);
        }
        if self.classes[class].free.is_empty() {
            self.carve_chunk(class)?;
        }
        let stack = self.classes[class]
            .free
            .pop()
            .expect("carve_chunk added stacks");
        self.outstanding += 1;
        Ok(stack)
    }

    /// Takes a stack back from a finished fiber.
    pub fn release(&mut self, stack: FiberStack) {
        self.outstanding -= 1;
        let class = self
            .classes
            .iter_mut()
            .find(|c| c.size == stack.size)
            .expect("released stacks come from this pool");
        // Counting only stacks a fiber used: never-used ones carved in a burst must not push
        // every later release past the bound (each would then refault its pages).
        if class.warm.len() < WARM_STACKS {
            class.warm.push(stack);
            return;
        }
        // SAFETY: the range is this stack's own body, which no fiber uses any more; the
        // mapping stays, only its pages are dropped (they read back as zeros).
        unsafe {
            libc::madvise(
                (stack.guard + stack.page) as *mut libc::c_void,
                stack.size,
                libc::MADV_DONTNEED,
            );
        }
        class.free.push(stack);
    }

    fn carve_chunk(&mut self, class: usize) -> io::Result<()> {
        let page = self.page;
        let size = self.classes[class].size;
        let slot = size + page;
        // Big stacks come a few at a time; small ones in chunks that double as the pool grows.
        let wanted = self.classes[class]
            .next_chunk
            .min((1usize << 30) / slot)
            .max(1);
        let count = wanted.min(MAX_STACKS_PER_CHUNK);
        let len = slot
            .checked_mul(count)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = addr as usize;
        for i in 0..count {
            let guard = addr + i * slot;
            if let Err(e) = self.install_guard(guard) {
                // SAFETY: unmapping the mapping made above, from which nothing was handed out.
                unsafe { libc::munmap(addr as *mut libc::c_void, len) };
                return Err(e);
            }
        }
        self.chunks.push(Chunk { addr, len });
        let class = &mut self.classes[class];
        class.next_chunk = (count * 2).min(MAX_STACKS_PER_CHUNK);
        // Reverse order so that stacks are handed out from low addresses up.
        class.free.extend((0..count).rev().map(|i| FiberStack {
            guard: addr + i * slot,
            size,
            page,
        }));
        Ok(())
    }

    fn install_guard(&mut self, guard: usize) -> io::Result<()> {
        if self.guard_kind != Some(GuardKind::Mprotect) {
            // SAFETY: `guard` is a page of a mapping this pool owns and has not handed out.
            let r =
                unsafe { libc::madvise(guard as *mut libc::c_void, self.page, MADV_GUARD_INSTALL) };
            if r == 0 {
                self.guard_kind = Some(GuardKind::Madvise);
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if self.guard_kind == Some(GuardKind::Madvise)
                || err.raw_os_error() != Some(libc::EINVAL)
            {
                return Err(err);
            }
            // Kernel older than 6.13: fall back to mprotect from now on.
            self.guard_kind = Some(GuardKind::Mprotect);
        }
        // SAFETY: as above.
        let r = unsafe { libc::mprotect(guard as *mut libc::c_void, self.page, libc::PROT_NONE) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for StackPool {
    fn drop(&mut self) {
        if self.outstanding != 0 {
            // Stacks of fibers that never finished (a scheduler torn down by a panic) are still
            // referenced by leaked coroutines: leak the chunks with them rather than unmap
            // memory something may still point into.
            return;
        }
        for chunk in &self.chunks {
            // SAFETY: every stack of this chunk is back in the pool, and the pool is going away.
            unsafe { libc::munmap(chunk.addr as *mut libc::c_void, chunk.len) };
        }
    }
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 { page as usize } else { 4096 }
}
