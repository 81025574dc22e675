//! Interposed name resolution: `getaddrinfo` and `freeaddrinfo`.
//!
//! In a fiber, `getaddrinfo` hands the query to [`Hook::resolve`] (fibra answers it on the event
//! loop) and lays the answer out **exactly as glibc allocates its own lists**, with libc's
//! allocator: each node and its socket address in one `malloc` (`ai_addr = (void *)(ai + 1)`,
//! `ai_addrlen` the exact `sockaddr_in`/`sockaddr_in6` size), `ai_canonname` on the first node
//! only, in its own `malloc`. glibc's `freeaddrinfo` therefore frees fibra's lists and the one
//! here frees glibc's (`hazards.md` §4). Outside a fiber, both go straight to glibc.
//!
//! The whole function is replaced, not its parts: glibc's resolver calls its own internal
//! aliases, never the interposed socket calls, so a glibc lookup in a fiber would block the
//! thread.

use std::ffi::{CStr, CString};
use std::net::SocketAddr;
use std::ptr::{self, NonNull};

use libc::{addrinfo, c_char, c_int};

use crate::dispatch::with_hook;
use crate::hook::Hook;
use crate::real;

/// One `getaddrinfo` call, as the hook sees it: the caller's strings and hints, unvalidated.
#[derive(Clone, Copy, Debug)]
pub struct ResolveQuery<'a> {
    /// `node` (host name or numeric address), if not null.
    pub node: Option<&'a CStr>,
    /// `service` (service name or port number), if not null.
    pub service: Option<&'a CStr>,
    /// `hints->ai_flags` (0 without hints).
    pub flags: c_int,
    /// `hints->ai_family` (`AF_UNSPEC` without hints).
    pub family: c_int,
    /// `hints->ai_socktype` (0 without hints).
    pub socktype: c_int,
    /// `hints->ai_protocol` (0 without hints).
    pub protocol: c_int,
    /// Whether the caller passed hints at all (glibc's defaults differ: `AI_V4MAPPED |
    /// AI_ADDRCONFIG` without hints).
    pub has_hints: bool,
}

/// One node of an answer, in list order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedEntry {
    /// `ai_socktype`.
    pub socktype: c_int,
    /// `ai_protocol`.
    pub protocol: c_int,
    /// The address and port (and, for IPv6, flow info and scope id).
    pub addr: SocketAddr,
}

/// A successful answer.
#[derive(Debug)]
pub enum Resolved {
    /// Entries for the shim to lay out as glibc would.
    Entries {
        /// `ai_flags` of every node (glibc copies the caller's hint flags).
        flags: c_int,
        /// The nodes, in order; never empty.
        entries: Vec<ResolvedEntry>,
        /// `ai_canonname` of the first node.
        canonname: Option<CString>,
    },
    /// A list glibc itself allocated (fibra's fallback path), handed over as it is.
    Libc(NonNull<addrinfo>),
}

/// A failed lookup: an `EAI_*` code, and for `EAI_SYSTEM` the `errno` to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GaiError {
    /// The (negative) `EAI_*` value `getaddrinfo` returns.
    pub code: c_int,
    /// `errno` to set when `code` is `EAI_SYSTEM`.
    pub errno: c_int,
}

impl GaiError {
    /// An error other than `EAI_SYSTEM`.
    pub const fn eai(code: c_int) -> GaiError {
        GaiError { code, errno: 0 }
    }
}

/// Builds a glibc-layout list from `entries`; null if `malloc` fails (everything allocated so
/// far is freed again).
fn build_list(flags: c_int, entries: &[ResolvedEntry], canonname: Option<&CStr>) -> *mut addrinfo {
    let mut head: *mut addrinfo = ptr::null_mut();
    let mut tail: *mut *mut addrinfo = &mut head;
    for entry in entries {
        let socklen = match entry.addr {
            SocketAddr::V4(_) => size_of::<libc::sockaddr_in>(),
            SocketAddr::V6(_) => size_of::<libc::sockaddr_in6>(),
        };
        // SAFETY: plain allocation; checked for null below.
        let node = unsafe { libc::calloc(1, size_of::<addrinfo>() + socklen) }.cast::<addrinfo>();
        if node.is_null() {
            // SAFETY: `head` is a list this function built with libc's allocator.
            unsafe { free_list(head) };
            return ptr::null_mut();
        }
        // SAFETY: `node` is a fresh, zeroed allocation large enough for the node followed by
        // its socket address; `tail` points at the previous node's `ai_next` (or `head`).
        unsafe {
            let sa = node.add(1).cast::<u8>();
            match entry.addr {
                SocketAddr::V4(v4) => {
                    let sin = sa.cast::<libc::sockaddr_in>();
                    (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                    (*sin).sin_port = v4.port().to_be();
                    (*sin).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                }
                SocketAddr::V6(v6) => {
                    let sin6 = sa.cast::<libc::sockaddr_in6>();
                    (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    (*sin6).sin6_port = v6.port().to_be();
                    (*sin6).sin6_flowinfo = v6.flowinfo().to_be();
                    (*sin6).sin6_addr.s6_addr = v6.ip().octets();
                    (*sin6).sin6_scope_id = v6.scope_id();
                }
            }
            (*node).ai_flags = flags;
            (*node).ai_family = match entry.addr {
                SocketAddr::V4(_) => libc::AF_INET,
                SocketAddr::V6(_) => libc::AF_INET6,
            };
            (*node).ai_socktype = entry.socktype;
            (*node).ai_protocol = entry.protocol;
            (*node).ai_addrlen = socklen as libc::socklen_t;
            (*node).ai_addr = sa.cast();
            (*node).ai_canonname = ptr::null_mut();
            (*node).ai_next = ptr::null_mut();
            *tail = node;
            tail = &mut (*node).ai_next;
        }
    }
    if let Some(name) = canonname
        && !head.is_null()
    {
        // SAFETY: `name` is a valid C string; strdup allocates with libc's allocator.
        let copy = unsafe { libc::strdup(name.as_ptr()) };
        if copy.is_null() {
            // SAFETY: as above.
            unsafe { free_list(head) };
            return ptr::null_mut();
        }
        // SAFETY: `head` is the first node built above.
        unsafe { (*head).ai_canonname = copy };
    }
    head
}

/// glibc's `freeaddrinfo`: each node's `ai_canonname`, then the node (its address lives inside).
///
/// # Safety
/// `list` is null or a list laid out as glibc's (by glibc or by `build_list`).
unsafe fn free_list(mut list: *mut addrinfo) {
    while !list.is_null() {
        // SAFETY: the caller guarantees each node is a live glibc-layout allocation.
        unsafe {
            let next = (*list).ai_next;
            libc::free((*list).ai_canonname.cast());
            libc::free(list.cast());
            list = next;
        }
    }
}

fn query_from<'a>(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
) -> ResolveQuery<'a> {
    // SAFETY (for the three dereferences): the caller of getaddrinfo passes null or valid,
    // NUL-terminated strings and a null or readable hints structure.
    let node = (!node.is_null()).then(|| unsafe { CStr::from_ptr(node) });
    let service = (!service.is_null()).then(|| unsafe { CStr::from_ptr(service) });
    let hints = (!hints.is_null()).then(|| unsafe { &*hints });
    ResolveQuery {
        node,
        service,
        flags: hints.map_or(0, |h| h.ai_flags),
        family: hints.map_or(libc::AF_UNSPEC, |h| h.ai_family),
        socktype: hints.map_or(0, |h| h.ai_socktype),
        protocol: hints.map_or(0, |h| h.ai_protocol),
        has_hints: hints.is_some(),
    }
}

fn resolve_in(
    hook: &dyn Hook,
    query: &ResolveQuery<'_>,
    res: *mut *mut addrinfo,
) -> Result<(), GaiError> {
    let list = match hook.resolve(query)? {
        Resolved::Libc(list) => list.as_ptr(),
        Resolved::Entries {
            flags,
            entries,
            canonname,
        } => build_list(flags, &entries, canonname.as_deref()),
    };
    if list.is_null() {
        return Err(GaiError::eai(libc::EAI_MEMORY));
    }
    // SAFETY: the caller passed a writable `res`.
    unsafe { *res = list };
    Ok(())
}

/// Interposed `getaddrinfo(3)`.
///
/// # Safety
/// libc's contract: `node` and `service` null or NUL-terminated, `hints` null or readable, `res`
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    if crate::dispatch::active().is_some() && !res.is_null() {
        let query = query_from(node, service, hints);
        if let Some(result) = with_hook(|hook| resolve_in(hook, &query, res)) {
            return match result {
                Ok(()) => 0,
                Err(e) => {
                    // After `with_hook`, which restores the caller's errno around the hook.
                    if e.code == libc::EAI_SYSTEM {
                        crate::set_errno(e.errno);
                    }
                    e.code
                }
            };
        }
    }
    // SAFETY: forwarded unchanged under the caller's contract.
    unsafe { real::getaddrinfo(node, service, hints, res) }
}

/// Interposed `freeaddrinfo(3)`: frees lists of either origin (they share glibc's layout).
///
/// # Safety
/// `res` is null or a list returned by `getaddrinfo` (glibc's or this one) and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn freeaddrinfo(res: *mut addrinfo) {
    // SAFETY: the caller's contract.
    unsafe { free_list(res) }
}

/// Lays out `entries` as glibc would and returns the list (null if out of memory). For fibra's
/// tests and fallback path; free it with `freeaddrinfo`.
pub fn build_addrinfo(
    flags: c_int,
    entries: &[ResolvedEntry],
    canonname: Option<&CStr>,
) -> *mut addrinfo {
    build_list(flags, entries, canonname)
}

/// Runs glibc's own `getaddrinfo` for `query` (blocking the calling thread). fibra uses it on a
/// helper thread when it has no usable resolver configuration; it is also [`Hook::resolve`]'s
/// default.
pub fn libc_resolve(query: &ResolveQuery<'_>) -> Result<Resolved, GaiError> {
    // SAFETY: an all-zero addrinfo is a valid "no hints" value; the fields are set below.
    let mut hints: addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_flags = query.flags;
    hints.ai_family = query.family;
    hints.ai_socktype = query.socktype;
    hints.ai_protocol = query.protocol;
    let mut res: *mut addrinfo = ptr::null_mut();
    // SAFETY: valid C strings or null, valid hints or null, a writable result pointer.
    let code = unsafe {
        real::getaddrinfo(
            query.node.map_or(ptr::null(), CStr::as_ptr),
            query.service.map_or(ptr::null(), CStr::as_ptr),
            if query.has_hints { &hints } else { ptr::null() },
            &mut res,
        )
    };
    match (code, NonNull::new(res)) {
        (0, Some(list)) => Ok(Resolved::Libc(list)),
        (0, None) => Err(GaiError::eai(libc::EAI_FAIL)),
        (code, _) => Err(GaiError {
            code,
            errno: crate::errno(),
        }),
    }
}
