//! `getaddrinfo`'s semantics, exactly as glibc implements them, around a pluggable host lookup.
//!
//! Everything here follows glibc's `sysdeps/posix/getaddrinfo.c` step by step: `*` as a null
//! node or service, the default hints (`AI_V4MAPPED | AI_ADDRCONFIG`) without hints, the flag,
//! family and socket-type checks and their `EAI_*` codes, `AI_ADDRCONFIG`'s narrowing of the
//! family, service numbers parsed as `strtoul` does and names looked up with `getservbyname_r`
//! per protocol, one entry per socket type (`SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_RAW`) when the
//! hints name none, numeric hosts (`inet_aton` forms, IPv6 with `%scope`) that never reach a
//! name service, `AI_PASSIVE` addresses for a null node, `AI_V4MAPPED`/`AI_ALL`, canonical
//! names, and the RFC 3484 sort glibc applies to answers with more than one address.
//!
//! The host lookup itself (`/etc/hosts`, then DNS) is the caller's [`HostLookup`]: this module
//! owns no I/O except the non-blocking system calls glibc makes too (`getifaddrs` for
//! `AI_ADDRCONFIG`, a connected UDP socket per destination to learn the source address the
//! sort needs).

use std::ffi::{CStr, CString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use fibra_shim::dns::{GaiError, ResolveQuery, Resolved, ResolvedEntry};
use libc::c_int;

/// glibc's `AI_DEFAULT`: the flags used when the caller passes no hints.
const AI_DEFAULT: c_int = libc::AI_V4MAPPED | libc::AI_ADDRCONFIG;
/// glibc's `AI_IDN`, `AI_CANONIDN` and the two deprecated IDN flags.
const AI_IDN_FLAGS: c_int = 0x40 | 0x80 | 0x300;
/// Every flag glibc accepts.
const AI_KNOWN: c_int = libc::AI_PASSIVE
    | libc::AI_CANONNAME
    | libc::AI_NUMERICHOST
    | libc::AI_ADDRCONFIG
    | libc::AI_V4MAPPED
    | AI_IDN_FLAGS
    | libc::AI_NUMERICSERV
    | libc::AI_ALL;
/// `EAI_NODATA` and `EAI_ADDRFAMILY` (GNU extensions, not in the `libc` crate for every target).
pub(crate) const EAI_NODATA: c_int = -5;
pub(crate) const EAI_ADDRFAMILY: c_int = -9;

/// Which address families a host lookup should return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// `AF_UNSPEC`: both.
    Any,
    V4,
    V6,
}

/// What a name service said about a host name (glibc's NSS status plus `h_errno`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostAnswer {
    /// Addresses (of the family asked for) and the canonical name.
    Found {
        addrs: Vec<IpAddr>,
        canonical: String,
    },
    /// The name does not exist (`HOST_NOT_FOUND`, NXDOMAIN) or the service gave up for good
    /// (`NO_RECOVERY`).
    NotFound,
    /// The name exists but has no address of that family (`NO_DATA`).
    NoData,
    /// A temporary failure (`h_errno` `TRY_AGAIN`: time-outs, SERVFAIL). `unavailable`: the
    /// last query itself failed (NSS status `UNAVAIL`/`TRYAGAIN`); otherwise an earlier one did
    /// and a later one answered NXDOMAIN (status `NOTFOUND`), which glibc's simple `AF_INET`
    /// path reports as `EAI_NONAME`.
    TryAgain { unavailable: bool },
}

/// Looks host names up, as glibc's NSS `hosts` database does (`files`, then `dns`).
pub(crate) trait HostLookup {
    /// Addresses of `name` of `family`.
    fn lookup(&mut self, name: &str, family: Family) -> Result<HostAnswer, GaiError>;

    /// `AF_INET6` with `AI_V4MAPPED`: per source, IPv6 addresses, then IPv4 ones too when
    /// there were none or `all` is set; the first source that finds either wins. Returns the
    /// (IPv6, IPv4) answers of that source (or of the last one asked).
    fn lookup_mapped(
        &mut self,
        name: &str,
        all: bool,
    ) -> Result<(HostAnswer, HostAnswer), GaiError>;
}

/// The query with glibc's preprocessing applied.
struct Request<'a> {
    node: Option<&'a CStr>,
    service: Option<&'a CStr>,
    flags: c_int,
    family: c_int,
    socktype: c_int,
    protocol: c_int,
}

/// Whether `query` needs a feature this module does not replicate (IDN encoding); the caller
/// then hands the query to glibc itself.
pub(crate) fn needs_glibc(query: &ResolveQuery<'_>) -> bool {
    query.flags & AI_IDN_FLAGS != 0
}

/// Answers `query` as glibc's `getaddrinfo` would, looking names up through `hosts`.
pub(crate) fn getaddrinfo(
    query: &ResolveQuery<'_>,
    hosts: &mut dyn HostLookup,
) -> Result<Resolved, GaiError> {
    fn star(s: Option<&CStr>) -> Option<&CStr> {
        s.filter(|s| s.to_bytes() != b"*")
    }
    let mut req = Request {
        node: star(query.node),
        service: star(query.service),
        flags: if query.has_hints {
            query.flags
        } else {
            AI_DEFAULT
        },
        family: query.family,
        socktype: query.socktype,
        protocol: query.protocol,
    };
    if req.node.is_none() && req.service.is_none() {
        return Err(GaiError::eai(libc::EAI_NONAME));
    }
    if req.flags & !AI_KNOWN != 0 {
        return Err(GaiError::eai(libc::EAI_BADFLAGS));
    }
    if req.flags & libc::AI_CANONNAME != 0 && req.node.is_none() {
        return Err(GaiError::eai(libc::EAI_BADFLAGS));
    }
    if !matches!(req.family, libc::AF_UNSPEC | libc::AF_INET | libc::AF_INET6) {
        return Err(GaiError::eai(libc::EAI_FAMILY));
    }
    let hint_flags = req.flags;
    if req.flags & libc::AI_ADDRCONFIG != 0 {
        let (seen_v4, seen_v6) = configured_families();
        if req.family == libc::AF_UNSPEC && (seen_v4 || seen_v6) {
            if seen_v4 != seen_v6 {
                req.family = if seen_v4 {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                };
            }
        } else if (req.family == libc::AF_INET && !seen_v4)
            || (req.family == libc::AF_INET6 && !seen_v6)
        {
            return Err(GaiError::eai(libc::EAI_NONAME));
        }
    }
    let service = match req.service.filter(|s| !s.to_bytes().is_empty()) {
        None => None,
        Some(s) => match strtoul_port(s.to_bytes()) {
            Some(num) => Some(Service::Number(num)),
            None if req.flags & libc::AI_NUMERICSERV != 0 => {
                return Err(GaiError::eai(libc::EAI_NONAME));
            }
            None => Some(Service::Name(s)),
        },
    };
    let tuples = service_tuples(service, &req)?;
    let (addrs, canon, got_ipv6) = host_addresses(&req, hosts)?;

    let mut entries = Vec::new();
    let mut naddrs = 0usize;
    for at in &addrs {
        if let SocketAddr::V6(v6) = at
            && got_ipv6
            && req.flags & (libc::AI_V4MAPPED | libc::AI_ALL) == libc::AI_V4MAPPED
            && v6.ip().to_ipv4_mapped().is_some()
        {
            continue;
        }
        for t in &tuples {
            let mut addr = *at;
            addr.set_port(t.port);
            entries.push(ResolvedEntry {
                socktype: t.socktype,
                protocol: t.protocol,
                addr,
            });
        }
        naddrs += 1;
    }
    if entries.is_empty() {
        // glibc: no address survived (only possible with an empty tuple list, which
        // `service_tuples` never returns) – "name not found".
        return Err(GaiError::eai(libc::EAI_NONAME));
    }
    if naddrs > 1 {
        rfc3484_sort(&mut entries);
    }
    let canonname = if req.flags & libc::AI_CANONNAME != 0 {
        let name = canon.unwrap_or_else(|| {
            String::from_utf8_lossy(req.node.map_or(&b""[..], CStr::to_bytes)).into_owned()
        });
        CString::new(name).ok()
    } else {
        None
    };
    Ok(Resolved::Entries {
        flags: hint_flags,
        entries,
        canonname,
    })
}

enum Service<'a> {
    Number(u16),
    Name(&'a CStr),
}

struct ServTuple {
    socktype: c_int,
    protocol: c_int,
    port: u16,
}

/// glibc's `gaih_inet_typeproto` table: socket type, protocol, flags, "default" (used when the
/// hints name neither type nor protocol), protocol name for `getservbyname_r`.
const NOSERVICE: u8 = 1;
const PROTOANY: u8 = 2;
const TYPEPROTO: &[(c_int, c_int, u8, bool, &CStr)] = &[
    (libc::SOCK_STREAM, libc::IPPROTO_TCP, 0, true, c"tcp"),
    (libc::SOCK_DGRAM, libc::IPPROTO_UDP, 0, true, c"udp"),
    (libc::SOCK_DCCP, libc::IPPROTO_DCCP, 0, false, c"dccp"),
    (
        libc::SOCK_DGRAM,
        libc::IPPROTO_UDPLITE,
        0,
        false,
        c"udplite",
    ),
    (libc::SOCK_STREAM, libc::IPPROTO_SCTP, 0, false, c"sctp"),
    (libc::SOCK_SEQPACKET, libc::IPPROTO_SCTP, 0, false, c"sctp"),
    (libc::SOCK_RAW, 0, PROTOANY | NOSERVICE, true, c"raw"),
];

/// glibc's `get_servtuples`.
fn service_tuples(
    service: Option<Service<'_>>,
    req: &Request<'_>,
) -> Result<Vec<ServTuple>, GaiError> {
    let matches = |tp: &(c_int, c_int, u8, bool, &CStr)| {
        (req.socktype == 0 || req.socktype == tp.0)
            && (req.protocol == 0 || tp.2 & PROTOANY != 0 || req.protocol == tp.1)
    };
    let chosen = if req.protocol != 0 || req.socktype != 0 {
        match TYPEPROTO.iter().find(|tp| matches(tp)) {
            Some(tp) => Some(tp),
            None if req.socktype != 0 => return Err(GaiError::eai(libc::EAI_SOCKTYPE)),
            None => return Err(GaiError::eai(libc::EAI_SERVICE)),
        }
    } else {
        None
    };
    if service.is_some() && chosen.is_some_and(|tp| tp.2 & NOSERVICE != 0) {
        return Err(GaiError::eai(libc::EAI_SERVICE));
    }
    let tuple = |tp: &(c_int, c_int, u8, bool, &CStr), port| ServTuple {
        socktype: tp.0,
        protocol: if tp.2 & PROTOANY != 0 {
            req.protocol
        } else {
            tp.1
        },
        port,
    };
    match service {
        None | Some(Service::Number(_)) => {
            let port = match service {
                Some(Service::Number(n)) => n,
                _ => 0,
            };
            Ok(match chosen {
                Some(tp) => vec![tuple(tp, port)],
                None => TYPEPROTO
                    .iter()
                    .filter(|tp| tp.3)
                    .map(|tp| ServTuple {
                        socktype: tp.0,
                        protocol: tp.1,
                        port,
                    })
                    .collect(),
            })
        }
        Some(Service::Name(name)) => {
            if let Some(tp) = chosen {
                return match getservbyname(name, tp.4) {
                    Some(port) => Ok(vec![tuple(tp, port)]),
                    None => Err(GaiError::eai(libc::EAI_SERVICE)),
                };
            }
            let found: Vec<ServTuple> = TYPEPROTO
                .iter()
                .filter(|tp| tp.2 & NOSERVICE == 0 && matches(tp))
                .filter_map(|tp| getservbyname(name, tp.4).map(|port| tuple(tp, port)))
                .collect();
            if found.is_empty() {
                return Err(GaiError::eai(libc::EAI_SERVICE));
            }
            Ok(found)
        }
    }
}

/// `getservbyname_r(name, proto)`: the port in host order. Reads `/etc/services` (through NSS,
/// as glibc's `getaddrinfo` does): a local file, never a wait the loop would notice.
fn getservbyname(name: &CStr, proto: &CStr) -> Option<u16> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: an all-zero servent is a valid out-value; every pointer passed is valid for
        // the sizes given.
        let mut ent: libc::servent = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::servent = std::ptr::null_mut();
        // SAFETY: as above; `buf` outlives the call and `ent` is only read when `result` is set.
        let r = unsafe {
            getservbyname_r(
                name.as_ptr(),
                proto.as_ptr(),
                &mut ent,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if r != 0 || result.is_null() {
            return None;
        }
        return Some(u16::from_be(ent.s_port as u16));
    }
}

/// `strtoul(s, &end, 10)` as glibc's `getaddrinfo` uses it: `Some(port)` when the whole string
/// is a number (the value truncated to `int`, negative values rejected, then to 16 bits as
/// `htons` does), `None` when it is a name.
fn strtoul_port(s: &[u8]) -> Option<u16> {
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r') {
        i += 1;
    }
    let negative = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits_start = i;
    let mut value: u64 = 0;
    let mut overflow = false;
    while i < s.len() && s[i].is_ascii_digit() {
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(s[i] - b'0')))
        {
            Some(v) => value = v,
            None => overflow = true,
        }
        i += 1;
    }
    if i == digits_start || i != s.len() {
        // No digits (strtoul leaves `end` at the start) or trailing characters: a name.
        return None;
    }
    if overflow {
        value = u64::MAX;
    } else if negative {
        value = value.wrapping_neg();
    }
    let num = value as u32 as i32;
    // glibc: `service->num >= 0` is a number; a negative one is looked up as a name, which no
    // services file contains.
    if num < 0 {
        return None;
    }
    Some(num as u16)
}

/// The addresses for the node (with port 0), the canonical name, and glibc's `got_ipv6`.
fn host_addresses(
    req: &Request<'_>,
    hosts: &mut dyn HostLookup,
) -> Result<(Vec<SocketAddr>, Option<String>, bool), GaiError> {
    let Some(node) = req.node else {
        // glibc's get_local_addresses: IPv6 first, then IPv4.
        let passive = req.flags & libc::AI_PASSIVE != 0;
        let mut out = Vec::new();
        if matches!(req.family, libc::AF_UNSPEC | libc::AF_INET6) {
            let ip = if passive {
                Ipv6Addr::UNSPECIFIED
            } else {
                Ipv6Addr::LOCALHOST
            };
            out.push(SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, 0)));
        }
        if matches!(req.family, libc::AF_UNSPEC | libc::AF_INET) {
            let ip = if passive {
                Ipv4Addr::UNSPECIFIED
            } else {
                Ipv4Addr::LOCALHOST
            };
            out.push(SocketAddr::V4(SocketAddrV4::new(ip, 0)));
        }
        return Ok((out, None, false));
    };
    if let Some(addr) = numeric_host(node, req)? {
        let canon = (req.flags & libc::AI_CANONNAME != 0)
            .then(|| String::from_utf8_lossy(node.to_bytes()).into_owned());
        return Ok((vec![addr], canon, false));
    }
    if req.flags & libc::AI_NUMERICHOST != 0 {
        return Err(GaiError::eai(libc::EAI_NONAME));
    }
    let Ok(name) = node.to_str() else {
        // Not UTF-8 (and not IDN-encoded, or glibc would have been asked): no DNS name.
        return Err(GaiError::eai(libc::EAI_NONAME));
    };
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, 0)),
        IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, 0)),
    };
    let mapped = |a: IpAddr| match a {
        IpAddr::V4(v4) => SocketAddr::V6(SocketAddrV6::new(v4.to_ipv6_mapped(), 0, 0, 0)),
        IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, 0)),
    };
    match req.family {
        libc::AF_UNSPEC => match hosts.lookup(name, Family::Any)? {
            HostAnswer::Found { addrs, canonical } => {
                Ok((addrs.into_iter().map(v4).collect(), Some(canonical), false))
            }
            other => Err(nss_error(&other, &other)),
        },
        libc::AF_INET => match hosts.lookup(name, Family::V4)? {
            HostAnswer::Found { addrs, canonical } => {
                Ok((addrs.into_iter().map(v4).collect(), Some(canonical), false))
            }
            // glibc asks gethostbyname2_r without AI_CANONNAME (try_simple_gethostbyname),
            // which sees the NSS status; with it, gethostbyname3_r, which sees h_errno only.
            HostAnswer::NoData => Err(GaiError::eai(EAI_NODATA)),
            HostAnswer::TryAgain { unavailable }
                if unavailable || req.flags & libc::AI_CANONNAME != 0 =>
            {
                Err(GaiError::eai(libc::EAI_AGAIN))
            }
            HostAnswer::TryAgain { .. } | HostAnswer::NotFound => {
                Err(GaiError::eai(libc::EAI_NONAME))
            }
        },
        _ => {
            // AF_INET6: AAAA first; A (mapped) too with AI_V4MAPPED when there was no IPv6
            // answer, or always with AI_ALL.
            let (six, four) = if req.flags & libc::AI_V4MAPPED != 0 {
                hosts.lookup_mapped(name, req.flags & libc::AI_ALL != 0)?
            } else {
                (hosts.lookup(name, Family::V6)?, HostAnswer::NotFound)
            };
            let mut out = Vec::new();
            let mut canon = None;
            let got_ipv6 = matches!(six, HostAnswer::Found { .. });
            if let HostAnswer::Found { addrs, canonical } = &six {
                out.extend(addrs.iter().copied().map(v4));
                canon = Some(canonical.clone());
            }
            if let HostAnswer::Found { addrs, canonical } = &four {
                out.extend(addrs.iter().copied().map(mapped));
                canon.get_or_insert_with(|| canonical.clone());
            }
            if out.is_empty() {
                let four_status = if req.flags & libc::AI_V4MAPPED != 0 {
                    &four
                } else {
                    &six
                };
                return Err(nss_error(&six, four_status));
            }
            Ok((out, canon, got_ipv6))
        }
    }
}

/// glibc's error for a lookup that found nothing: both `NO_DATA`/`TRY_AGAIN` → `EAI_NODATA`
/// (or `EAI_AGAIN` when both timed out), otherwise `EAI_NONAME`.
fn nss_error(a: &HostAnswer, b: &HostAnswer) -> GaiError {
    let no_data = |h: &HostAnswer| match h {
        HostAnswer::TryAgain { .. } => 2,
        HostAnswer::NoData => 1,
        _ => 0,
    };
    let (x, y) = (no_data(a), no_data(b));
    if x != 0 && y != 0 {
        if x == 2 && y == 2 {
            return GaiError::eai(libc::EAI_AGAIN);
        }
        return GaiError::eai(EAI_NODATA);
    }
    GaiError::eai(libc::EAI_NONAME)
}

/// glibc's `text_to_binary_address`: `Some` for a numeric host (mapped or converted to the
/// requested family), `Err(EAI_ADDRFAMILY)` for a numeric host of the wrong family.
fn numeric_host(node: &CStr, req: &Request<'_>) -> Result<Option<SocketAddr>, GaiError> {
    let bytes = node.to_bytes();
    // `__inet_aton_exact`: inet_aton's forms (`127.1`, `0x7f.1`...) with nothing after them.
    // inet_aton stops at the first whitespace, so "exact" means: accepted and no whitespace.
    let mut in4 = libc::in_addr { s_addr: 0 };
    // SAFETY: a valid C string and out-pointer.
    if !bytes.iter().any(u8::is_ascii_whitespace)
        && unsafe { inet_aton(node.as_ptr(), &mut in4) } != 0
    {
        let ip = Ipv4Addr::from(u32::from_be(in4.s_addr));
        return match req.family {
            libc::AF_UNSPEC | libc::AF_INET => Ok(Some(SocketAddr::V4(SocketAddrV4::new(ip, 0)))),
            libc::AF_INET6 if req.flags & libc::AI_V4MAPPED != 0 => Ok(Some(SocketAddr::V6(
                SocketAddrV6::new(ip.to_ipv6_mapped(), 0, 0, 0),
            ))),
            _ => Err(GaiError::eai(EAI_ADDRFAMILY)),
        };
    }
    let (addr_part, scope) = match bytes.iter().position(|&b| b == b'%') {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    };
    let Ok(text) = std::str::from_utf8(addr_part) else {
        return Ok(None);
    };
    let Some(ip6) = parse_inet6(text) else {
        return Ok(None);
    };
    let addr = match req.family {
        libc::AF_UNSPEC | libc::AF_INET6 => IpAddr::V6(ip6),
        libc::AF_INET => match ip6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return Err(GaiError::eai(EAI_ADDRFAMILY)),
        },
        _ => return Err(GaiError::eai(EAI_ADDRFAMILY)),
    };
    let scope_id = match scope {
        None => 0,
        Some(scope) => match scope_id(&ip6, scope) {
            Some(id) => id,
            None => return Err(GaiError::eai(libc::EAI_NONAME)),
        },
    };
    Ok(Some(match addr {
        IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, 0)),
        IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, scope_id)),
    }))
}

unsafe extern "C" {
    fn inet_aton(cp: *const libc::c_char, inp: *mut libc::in_addr) -> c_int;
    fn inet_pton(af: c_int, src: *const libc::c_char, dst: *mut libc::c_void) -> c_int;
    fn getservbyname_r(
        name: *const libc::c_char,
        proto: *const libc::c_char,
        result_buf: *mut libc::servent,
        buf: *mut libc::c_char,
        buflen: libc::size_t,
        result: *mut *mut libc::servent,
    ) -> c_int;
}

/// `inet_pton(AF_INET6, ..)`.
fn parse_inet6(text: &str) -> Option<Ipv6Addr> {
    let c = CString::new(text).ok()?;
    let mut out = [0u8; 16];
    // SAFETY: a valid C string and a 16-byte out-buffer.
    let r = unsafe { inet_pton(libc::AF_INET6, c.as_ptr(), out.as_mut_ptr().cast()) };
    (r == 1).then(|| Ipv6Addr::from(out))
}

/// glibc's `__inet6_scopeid_pton`: an interface name for link-local (and node- or link-local
/// multicast) addresses, else a decimal number.
fn scope_id(ip: &Ipv6Addr, scope: &[u8]) -> Option<u32> {
    let seg = ip.segments();
    let link_local = seg[0] & 0xffc0 == 0xfe80;
    let mc_node_or_link = seg[0] & 0xff0f == 0xff01 || seg[0] & 0xff0f == 0xff02;
    if (link_local || mc_node_or_link)
        && let Ok(name) = CString::new(scope)
    {
        // SAFETY: a valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index != 0 {
            return Some(index);
        }
    }
    if scope.first().is_some_and(u8::is_ascii_digit) && scope.iter().all(u8::is_ascii_digit) {
        return std::str::from_utf8(scope)
            .ok()?
            .parse::<u64>()
            .ok()
            .and_then(|n| u32::try_from(n).ok());
    }
    None
}

/// glibc's `__check_pf` for `AI_ADDRCONFIG`: whether an IPv4 address other than 127.0.0.1, and
/// an IPv6 address other than ::1, is configured.
fn configured_families() -> (bool, bool) {
    let mut seen = (false, false);
    for (ip, _) in interface_addresses() {
        match ip {
            IpAddr::V4(v4) if v4 != Ipv4Addr::LOCALHOST => seen.0 = true,
            IpAddr::V6(v6) if v6 != Ipv6Addr::LOCALHOST => seen.1 = true,
            _ => {}
        }
    }
    seen
}

/// Every configured interface address with its prefix length (`getifaddrs`).
fn interface_addresses() -> Vec<(IpAddr, u8)> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: a valid out-pointer; the list is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned; addresses are valid for their
        // family's sockaddr type.
        unsafe {
            let ifa = &*cur;
            if let Some(ip) = sockaddr_ip(ifa.ifa_addr) {
                let prefix = sockaddr_ip(ifa.ifa_netmask).map_or(0, |m| match m {
                    IpAddr::V4(m) => u32::from(m).count_ones() as u8,
                    IpAddr::V6(m) => u128::from(m).count_ones() as u8,
                });
                out.push((ip, prefix));
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(list) };
    out
}

/// # Safety
/// `sa` is null or points to a socket address of the size its family implies.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    unsafe {
        match c_int::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*sa.cast::<libc::sockaddr_in>();
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 => {
                let sin6 = &*sa.cast::<libc::sockaddr_in6>();
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

// --- RFC 3484 destination address selection, as glibc's `rfc3484_sort` with its default
// tables (an /etc/gai.conf is not read; see ARCHITECTURE.md). Rules 3, 4 and 7 (deprecated and
// home addresses, native transport) need kernel address flags glibc reads over netlink and
// decide nothing on ordinary hosts; they are skipped.

struct SortKey {
    source: Option<IpAddr>,
    prefixlen: u8,
}

/// glibc's `default_precedence` / `default_labels` (prefix, bits, value).
const PRECEDENCE: &[(u128, u32, i32)] = &[
    (1, 128, 50),
    (0x2002 << 112, 16, 30),
    (0, 96, 20),
    (0xffff << 32, 96, 10),
    (0, 0, 40),
];
const LABELS: &[(u128, u32, i32)] = &[
    (1, 128, 0),
    (0x2002 << 112, 16, 2),
    (0, 96, 3),
    (0xffff << 32, 96, 4),
    (0xfec0 << 112, 10, 5),
    (0xfc00 << 112, 7, 6),
    (0x2001 << 112, 32, 7),
    (0, 0, 1),
];

fn as_v6_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn match_prefix(ip: IpAddr, table: &[(u128, u32, i32)]) -> i32 {
    let bits = as_v6_bits(ip);
    for &(prefix, len, val) in table {
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        if bits & mask == prefix & mask {
            return val;
        }
    }
    0
}

fn scope(ip: IpAddr) -> i32 {
    match ip {
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if seg[0] & 0xff00 == 0xff00 {
                i32::from(v6.octets()[1] & 0xf)
            } else if seg[0] & 0xffc0 == 0xfe80 || v6 == Ipv6Addr::LOCALHOST {
                2
            } else if seg[0] & 0xffc0 == 0xfec0 {
                5
            } else {
                14
            }
        }
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if (o[0] == 169 && o[1] == 254) || o[0] == 127 {
                2
            } else {
                14
            }
        }
    }
}

/// glibc's `fls`: the number of leading zero bits of `a` (32 when zero).
fn fls(a: u32) -> i32 {
    a.leading_zeros() as i32
}

/// The source address the kernel would use to reach `dest` (glibc's `try_connect`).
fn source_address(dest: &SocketAddr) -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind(match dest {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    })
    .ok()?;
    let mut target = *dest;
    if target.port() == 0 {
        // connect(2) to port 0 is refused for UDP on some kernels; the port plays no part in
        // route selection.
        target.set_port(9);
    }
    socket.connect(target).ok()?;
    let local = socket.local_addr().ok()?.ip();
    Some(match local {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

fn rfc3484_sort(entries: &mut Vec<ResolvedEntry>) {
    let ifaces = interface_addresses();
    let mut keys: Vec<SortKey> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if i > 0 && entries[i - 1].addr.ip() == e.addr.ip() {
            let prev = &keys[i - 1];
            keys.push(SortKey {
                source: prev.source,
                prefixlen: prev.prefixlen,
            });
            continue;
        }
        let source = source_address(&e.addr);
        let prefixlen = source
            .and_then(|s| {
                let s = match s {
                    IpAddr::V4(v4) if v4.octets()[0] == 127 => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    other => other,
                };
                ifaces.iter().find(|(ip, _)| *ip == s).map(|(_, p)| *p)
            })
            .unwrap_or(0);
        keys.push(SortKey { source, prefixlen });
    }
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&i1, &i2| compare(&entries[i1], &keys[i1], i1, &entries[i2], &keys[i2], i2));
    let sorted: Vec<ResolvedEntry> = order.iter().map(|&i| entries[i]).collect();
    *entries = sorted;
}

fn compare(
    e1: &ResolvedEntry,
    k1: &SortKey,
    i1: usize,
    e2: &ResolvedEntry,
    k2: &SortKey,
    i2: usize,
) -> std::cmp::Ordering {
    use std::cmp::Ordering::{Greater, Less};
    let (d1, d2) = (e1.addr.ip(), e2.addr.ip());
    // Rule 1: avoid unusable destinations.
    match (k1.source.is_some(), k2.source.is_some()) {
        (true, false) => return Less,
        (false, true) => return Greater,
        _ => {}
    }
    let (s1, s2) = (scope(d1), scope(d2));
    if let (Some(src1), Some(src2)) = (k1.source, k2.source) {
        // Rule 2: prefer matching scope.
        let (m1, m2) = (s1 == scope(src1), s2 == scope(src2));
        if m1 && !m2 {
            return Less;
        }
        if !m1 && m2 {
            return Greater;
        }
        // Rule 5: prefer matching label.
        let l1 = match_prefix(d1, LABELS) == match_prefix(src1, LABELS);
        let l2 = match_prefix(d2, LABELS) == match_prefix(src2, LABELS);
        if l1 && !l2 {
            return Less;
        }
        if !l1 && l2 {
            return Greater;
        }
    }
    // Rule 6: prefer higher precedence.
    let (p1, p2) = (match_prefix(d1, PRECEDENCE), match_prefix(d2, PRECEDENCE));
    if p1 != p2 {
        return p2.cmp(&p1);
    }
    // Rule 8: prefer smaller scope.
    if s1 != s2 {
        return s1.cmp(&s2);
    }
    // Rule 9: longest matching prefix.
    if let (Some(src1), Some(src2)) = (k1.source, k2.source) {
        let (b1, b2) = match (d1, src1, d2, src2) {
            (IpAddr::V4(d1), IpAddr::V4(src1), IpAddr::V4(d2), IpAddr::V4(src2)) => {
                let same_net = |d: Ipv4Addr, s: Ipv4Addr, len: u8| {
                    let mask = if len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - u32::from(len.min(32)))
                    };
                    u32::from(d) & mask == u32::from(s) & mask
                };
                let b1 = if same_net(d1, src1, k1.prefixlen) {
                    fls(u32::from(d1) ^ u32::from(src1))
                } else {
                    0
                };
                let b2 = if same_net(d2, src2, k2.prefixlen) {
                    fls(u32::from(d2) ^ u32::from(src2))
                } else {
                    0
                };
                (b1, b2)
            }
            (IpAddr::V6(d1), IpAddr::V6(src1), IpAddr::V6(d2), IpAddr::V6(src2)) => {
                let words = |a: Ipv6Addr| {
                    let o = a.octets();
                    [0, 1, 2, 3].map(|i| {
                        u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                    })
                };
                let (w1, ws1, w2, ws2) = (words(d1), words(src1), words(d2), words(src2));
                match (0..4).find(|&i| w1[i] != ws1[i] || w2[i] != ws2[i]) {
                    Some(i) => (fls(w1[i] ^ ws1[i]), fls(w2[i] ^ ws2[i])),
                    None => (0, 0),
                }
            }
            _ => (0, 0),
        };
        if b1 != b2 {
            return b2.cmp(&b1);
        }
    }
    // Rule 10: keep the order.
    i1.cmp(&i2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_numbers_parse_as_strtoul() {
        assert_eq!(strtoul_port(b"80"), Some(80));
        assert_eq!(strtoul_port(b" +80"), Some(80));
        assert_eq!(strtoul_port(b"65616"), Some(80)); // htons truncates
        assert_eq!(strtoul_port(b"http"), None);
        assert_eq!(strtoul_port(b"80x"), None);
        assert_eq!(strtoul_port(b"-1"), None);
        assert_eq!(strtoul_port(b""), None);
    }

    #[test]
    fn precedence_prefers_ipv6_loopback() {
        assert_eq!(match_prefix("::1".parse().unwrap(), PRECEDENCE), 50);
        assert_eq!(match_prefix("127.0.0.1".parse().unwrap(), PRECEDENCE), 10);
        assert_eq!(match_prefix("2001:db8::1".parse().unwrap(), PRECEDENCE), 40);
    }
}
