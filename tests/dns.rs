//! Name resolution in fibers: `getaddrinfo` answered by hickory-resolver on the loop, with
//! glibc's results, errors and memory layout.
//!
//! Lookups that need DNS go to a name server started by the test itself ([`TestServer`], built
//! from hickory-proto message types on 127.0.0.1 with an ephemeral port), selected with
//! `fibra::dns::set_thread_nameservers` so that tests running in parallel threads do not share
//! it. Everything that glibc can answer without the network (numeric hosts, `/etc/hosts`,
//! services, hint errors) is compared field by field with glibc's own answer.

mod common;
mod dns_server;

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::ptr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::Watchdog;
use dns_server::{TestServer, host_ip};

// --- getaddrinfo helpers --------------------------------------------------------------------

/// One node of an addrinfo list, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    flags: i32,
    family: i32,
    socktype: i32,
    protocol: i32,
    addrlen: u32,
    addr: Vec<u8>,
    canonname: Option<String>,
}

type Gai = unsafe fn(
    *const libc::c_char,
    *const libc::c_char,
    *const libc::addrinfo,
    *mut *mut libc::addrinfo,
) -> libc::c_int;

/// The interposed `getaddrinfo` (fibra's in a fiber, glibc's outside).
fn interposed() -> Gai {
    // SAFETY (wrapper): forwards the caller's arguments unchanged.
    |n, s, h, r| unsafe { libc::getaddrinfo(n, s, h, r) }
}

/// The interposed `freeaddrinfo`.
unsafe fn free_interposed(list: *mut libc::addrinfo) {
    // SAFETY: the caller passes a list from getaddrinfo.
    unsafe { libc::freeaddrinfo(list) }
}

/// glibc's own `getaddrinfo`, bypassing the interposition.
fn glibc() -> Gai {
    fibra_shim::real::getaddrinfo
}

fn hints(flags: i32, family: i32, socktype: i32, protocol: i32) -> libc::addrinfo {
    // SAFETY: all-zero is a valid addrinfo.
    let mut h: libc::addrinfo = unsafe { std::mem::zeroed() };
    h.ai_flags = flags;
    h.ai_family = family;
    h.ai_socktype = socktype;
    h.ai_protocol = protocol;
    h
}

/// Calls `gai` and returns the list as values (freeing it with `free`), or the error code.
fn call(
    gai: Gai,
    node: Option<&str>,
    service: Option<&str>,
    hints: Option<&libc::addrinfo>,
    free: unsafe fn(*mut libc::addrinfo),
) -> Result<Vec<Node>, i32> {
    let node = node.map(|s| CString::new(s).unwrap());
    let service = service.map(|s| CString::new(s).unwrap());
    let mut res: *mut libc::addrinfo = ptr::null_mut();
    // SAFETY: valid C strings or null, valid hints or null, a writable result pointer.
    let rc = unsafe {
        gai(
            node.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
            service.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
            hints.map_or(ptr::null(), |h| h as *const _),
            &mut res,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    let nodes = read_list(res);
    // SAFETY: the list just returned.
    unsafe { free(res) };
    Ok(nodes)
}

fn read_list(res: *const libc::addrinfo) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut cur = res;
    while !cur.is_null() {
        // SAFETY: walking a list getaddrinfo returned.
        let ai = unsafe { &*cur };
        // glibc's layout: the address right after the node.
        // SAFETY: as above.
        assert_eq!(ai.ai_addr.cast::<libc::addrinfo>().cast_const(), unsafe {
            cur.add(1)
        });
        // SAFETY: ai_addr holds ai_addrlen bytes.
        let addr =
            unsafe { std::slice::from_raw_parts(ai.ai_addr.cast::<u8>(), ai.ai_addrlen as usize) }
                .to_vec();
        let canonname = (!ai.ai_canonname.is_null()).then(|| {
            // SAFETY: a C string in the list.
            unsafe { CStr::from_ptr(ai.ai_canonname) }
                .to_string_lossy()
                .into_owned()
        });
        nodes.push(Node {
            flags: ai.ai_flags,
            family: ai.ai_family,
            socktype: ai.ai_socktype,
            protocol: ai.ai_protocol,
            addrlen: ai.ai_addrlen,
            addr,
            canonname,
        });
        cur = ai.ai_next;
    }
    nodes
}

fn ips(nodes: &[Node]) -> Vec<IpAddr> {
    nodes
        .iter()
        .map(|n| match n.family {
            libc::AF_INET => IpAddr::V4(Ipv4Addr::new(n.addr[4], n.addr[5], n.addr[6], n.addr[7])),
            _ => IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&n.addr[8..24]).unwrap(),
            )),
        })
        .collect()
}

fn in_fiber<T: 'static>(f: impl FnOnce() -> T + 'static) -> T {
    fibra::run(f)
}

const EAI_NODATA: i32 = -5;
const EAI_ADDRFAMILY: i32 = -9;

// --- tests ----------------------------------------------------------------------------------

/// Queries glibc answers without the network, compared field by field (addresses, ports,
/// order, flags, canonical names, error codes) with glibc's own answer outside any fiber.
#[test]
fn matches_glibc_for_a_table_of_queries() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    use libc::{
        AF_INET, AF_INET6, AF_UNSPEC, AI_ADDRCONFIG, AI_ALL, AI_CANONNAME, AI_NUMERICHOST,
        AI_NUMERICSERV, AI_PASSIVE, AI_V4MAPPED, IPPROTO_TCP, IPPROTO_UDP, SOCK_DGRAM, SOCK_RAW,
        SOCK_STREAM,
    };
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        Option<(i32, i32, i32, i32)>,
    );
    let cases: Vec<Case> = vec![
        (Some("127.0.0.1"), None, None),
        (Some("127.0.0.1"), Some("80"), Some((0, AF_UNSPEC, 0, 0))),
        (
            Some("127.1"),
            Some("http"),
            Some((0, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        (
            Some("0x7f.1"),
            Some("53"),
            Some((AI_CANONNAME, AF_INET, 0, 0)),
        ),
        (
            Some("1.2.3.4 "),
            None,
            Some((AI_NUMERICHOST, AF_UNSPEC, 0, 0)),
        ),
        (
            Some("::1"),
            Some("443"),
            Some((0, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        (Some("::1"), None, Some((0, AF_INET, 0, 0))),
        (Some("::ffff:10.1.2.3"), None, Some((0, AF_INET, 0, 0))),
        (Some("10.1.2.3"), None, Some((0, AF_INET6, 0, 0))),
        (Some("10.1.2.3"), None, Some((AI_V4MAPPED, AF_INET6, 0, 0))),
        (
            Some("fe80::1%1"),
            Some("22"),
            Some((AI_NUMERICHOST, AF_INET6, SOCK_STREAM, 0)),
        ),
        (
            Some("fe80::1%lo"),
            None,
            Some((AI_NUMERICHOST, AF_INET6, SOCK_DGRAM, 0)),
        ),
        (
            Some("fe80::1%nosuchif"),
            None,
            Some((AI_NUMERICHOST, AF_INET6, 0, 0)),
        ),
        (Some("localhost"), Some("domain"), None),
        (
            Some("localhost"),
            Some("domain"),
            Some((AI_CANONNAME, AF_UNSPEC, 0, 0)),
        ),
        (
            Some("LOCALHOST"),
            Some("ssh"),
            Some((AI_CANONNAME, AF_INET, SOCK_STREAM, 0)),
        ),
        (Some("localhost"), None, Some((AI_V4MAPPED, AF_INET6, 0, 0))),
        (
            Some("localhost"),
            None,
            Some((AI_V4MAPPED | AI_ALL, AF_INET6, 0, 0)),
        ),
        (
            Some("localhost"),
            None,
            Some((AI_ADDRCONFIG, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        (
            Some("localhost"),
            Some("http"),
            Some((AI_NUMERICSERV, AF_UNSPEC, 0, 0)),
        ),
        (
            Some("localhost"),
            Some("8080"),
            Some((AI_NUMERICSERV, AF_UNSPEC, 0, 0)),
        ),
        (
            Some("localhost"),
            None,
            Some((AI_NUMERICHOST, AF_UNSPEC, 0, 0)),
        ),
        (
            None,
            Some("80"),
            Some((AI_PASSIVE, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        (None, Some("80"), Some((0, AF_UNSPEC, SOCK_STREAM, 0))),
        (None, Some("80"), Some((AI_PASSIVE, AF_INET, 0, 0))),
        (
            Some("*"),
            Some("http"),
            Some((AI_PASSIVE, AF_INET6, 0, IPPROTO_TCP)),
        ),
        (None, Some("domain"), Some((0, AF_UNSPEC, 0, IPPROTO_UDP))),
        (None, Some("nosuchservice"), None),
        (None, Some("http"), Some((0, AF_UNSPEC, SOCK_RAW, 0))),
        (None, Some("80"), Some((0, AF_UNSPEC, SOCK_RAW, 0))),
        (None, None, None),
        (None, Some("80"), Some((AI_CANONNAME, AF_UNSPEC, 0, 0))),
        (Some("127.0.0.1"), None, Some((0x10000, AF_UNSPEC, 0, 0))),
        (Some("127.0.0.1"), None, Some((0, 12345, 0, 0))),
        (Some("127.0.0.1"), None, Some((0, AF_UNSPEC, 12345, 0))),
        (
            Some("127.0.0.1"),
            None,
            Some((0, AF_UNSPEC, SOCK_STREAM, IPPROTO_UDP)),
        ),
        (Some("127.0.0.1"), Some("-1"), None),
        (Some("127.0.0.1"), Some("65616"), None),
        (Some("127.0.0.1"), Some(""), None),
        (
            Some("127.0.0.1"),
            Some("0"),
            Some((AI_PASSIVE, AF_UNSPEC, 0, 0)),
        ),
        (
            None,
            Some("65535"),
            Some((AI_PASSIVE, AF_INET6, SOCK_DGRAM, 0)),
        ),
        (
            Some("::"),
            Some("http"),
            Some((AI_CANONNAME, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        (
            Some("1.2.3.4"),
            Some("domain"),
            Some((0, AF_INET, 0, IPPROTO_UDP)),
        ),
        (
            Some("1.2.3.4"),
            Some("ssh"),
            Some((0, AF_UNSPEC, SOCK_DGRAM, 0)),
        ),
        (
            Some("1.2.3.4"),
            Some("http"),
            Some((0, AF_UNSPEC, 0, libc::IPPROTO_SCTP)),
        ),
        (
            Some("1.2.3.4"),
            None,
            Some((0, AF_UNSPEC, libc::SOCK_SEQPACKET, 0)),
        ),
        (
            Some("1.2.3.4"),
            None,
            Some((0, AF_UNSPEC, SOCK_RAW, IPPROTO_UDP)),
        ),
        (
            Some("1.2.3.4"),
            Some("http"),
            Some((0, AF_UNSPEC, libc::SOCK_DCCP, 0)),
        ),
    ];
    let expected: Vec<Result<Vec<Node>, i32>> = cases
        .iter()
        .map(|(node, service, h)| {
            let h = h.map(|(f, fam, st, p)| hints(f, fam, st, p));
            call(
                glibc(),
                *node,
                *service,
                h.as_ref(),
                fibra_shim::real::freeaddrinfo,
            )
        })
        .collect();
    // Outside fibers the interposed symbol is glibc's own.
    for (case, want) in cases.iter().zip(&expected) {
        let h = case.2.map(|(f, fam, st, p)| hints(f, fam, st, p));
        let got = call(interposed(), case.0, case.1, h.as_ref(), free_interposed);
        assert_eq!(&got, want, "outside a fiber: {case:?}");
    }
    let cases_in = cases.clone();
    let got: Vec<Result<Vec<Node>, i32>> = in_fiber(move || {
        cases_in
            .iter()
            .map(|(node, service, h)| {
                let h = h.map(|(f, fam, st, p)| hints(f, fam, st, p));
                call(interposed(), *node, *service, h.as_ref(), free_interposed)
            })
            .collect()
    });
    for ((case, want), got) in cases.iter().zip(&expected).zip(&got) {
        assert_eq!(got, want, "in a fiber: {case:?}");
    }
    // The table covers what it claims to.
    assert!(expected.contains(&Err(libc::EAI_BADFLAGS)));
    assert!(expected.contains(&Err(libc::EAI_FAMILY)));
    assert!(expected.contains(&Err(libc::EAI_SOCKTYPE)));
    assert!(expected.contains(&Err(libc::EAI_SERVICE)));
    assert!(expected.contains(&Err(libc::EAI_NONAME)));
    assert!(expected.contains(&Err(EAI_ADDRFAMILY)));
    assert!(
        expected
            .iter()
            .any(|r| r.as_ref().is_ok_and(|l| l.len() == 3))
    );
}

/// 500 fibers each resolve a distinct name from a server that delays every answer by 100 ms:
/// one delay's worth of time (not 500), while another fiber keeps ticking.
#[test]
fn five_hundred_concurrent_lookups_park_only_their_fibers() {
    let _watchdog = Watchdog::new(Duration::from_secs(120));
    const FIBERS: u32 = 500;
    let server = TestServer::start(Duration::from_millis(100));
    fibra::dns::set_thread_nameservers([server.addr]);
    let (elapsed, ticks) = fibra::run(move || {
        let stop = Rc::new(Cell::new(false));
        let ticks = Rc::new(Cell::new(0u32));
        let ticker = {
            let (stop, ticks) = (Rc::clone(&stop), Rc::clone(&ticks));
            fibra::spawn(move || {
                while !stop.get() {
                    std::thread::sleep(Duration::from_millis(5));
                    ticks.set(ticks.get() + 1);
                }
            })
        };
        let start = Instant::now();
        let completed = Rc::new(Cell::new(0u32));
        let lookups: Vec<_> = (0..FIBERS)
            .map(|i| {
                let completed = Rc::clone(&completed);
                fibra::spawn(move || {
                    let addrs: Vec<SocketAddr> = (format!("host{i}.test"), 8080)
                        .to_socket_addrs()
                        .unwrap()
                        .collect();
                    assert_eq!(addrs, vec![SocketAddr::new(IpAddr::V4(host_ip(i)), 8080)]);
                    completed.set(completed.get() + 1);
                })
            })
            .collect();
        // Runs after every lookup fiber's first turn (FIFO) and before any of them is resumed:
        // had a lookup blocked the thread instead of parking its fiber, it would have completed
        // by now.
        let observer = {
            let completed = Rc::clone(&completed);
            fibra::spawn(move || completed.get())
        };
        let ticks_before = ticks.get();
        let completed_when_all_had_started = observer.join().unwrap();
        for l in lookups {
            l.join().unwrap();
        }
        let elapsed = start.elapsed();
        let ticked = ticks.get() - ticks_before;
        stop.set(true);
        ticker.join().unwrap();
        assert_eq!(
            completed_when_all_had_started, 0,
            "lookups completed without parking"
        );
        assert_eq!(completed.get(), FIBERS);
        (elapsed, ticked)
    });
    fibra::dns::reset_thread_nameservers();
    eprintln!("500 lookups against a 100 ms server: {elapsed:?}, ticker ticked {ticks} times");
    // Sequentially this is 500 × 100 ms = 50 s; concurrently one round trip plus overhead.
    assert!(
        elapsed < Duration::from_secs(5),
        "500 lookups took {elapsed:?}"
    );
    // The ticker kept running while the lookups waited (in a debug build most of the time
    // goes to hickory's CPU work, so only a few 5 ms ticks fit; a release build sees ~20).
    assert!(
        ticks >= 1,
        "the ticker fiber never ran while the lookups waited"
    );
    assert!(
        server.queries() >= FIBERS as usize,
        "{} queries",
        server.queries()
    );
}

#[test]
fn dns_errors_map_to_glibc_codes() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let server = TestServer::start(Duration::ZERO);
    fibra::dns::set_thread_nameservers([server.addr]);
    let results = in_fiber(|| {
        let lookup = |name: &str, family: i32| {
            let h = hints(0, family, libc::SOCK_STREAM, 0);
            call(interposed(), Some(name), None, Some(&h), free_interposed)
        };
        vec![
            lookup("missing.test", libc::AF_UNSPEC).map(|l| ips(&l)),
            lookup("missing.test", libc::AF_INET).map(|l| ips(&l)),
            lookup("nodata.test", libc::AF_UNSPEC).map(|l| ips(&l)),
            lookup("nodata.test", libc::AF_INET).map(|l| ips(&l)),
            lookup("servfail.test", libc::AF_UNSPEC).map(|l| ips(&l)),
            lookup("v6only.test", libc::AF_INET).map(|l| ips(&l)),
            lookup("v6only.test", libc::AF_UNSPEC).map(|l| ips(&l)),
        ]
    });
    fibra::dns::reset_thread_nameservers();
    assert_eq!(results[0], Err(libc::EAI_NONAME), "NXDOMAIN");
    assert_eq!(results[1], Err(libc::EAI_NONAME), "NXDOMAIN, AF_INET");
    assert_eq!(results[2], Err(EAI_NODATA), "no addresses");
    assert_eq!(results[3], Err(EAI_NODATA), "no addresses, AF_INET");
    assert_eq!(results[4], Err(libc::EAI_AGAIN), "SERVFAIL");
    assert_eq!(results[5], Err(EAI_NODATA), "only AAAA, asked for AF_INET");
    assert_eq!(results[6], Ok(vec!["fd00::6".parse::<IpAddr>().unwrap()]));
}

#[test]
fn canonical_names_services_and_both_families_from_dns() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let server = TestServer::start(Duration::ZERO);
    fibra::dns::set_thread_nameservers([server.addr]);
    let (alias, both, mapped, service) = in_fiber(|| {
        let h = hints(libc::AI_CANONNAME, libc::AF_INET, libc::SOCK_STREAM, 0);
        let alias = call(
            interposed(),
            Some("alias.test"),
            Some("80"),
            Some(&h),
            free_interposed,
        );
        let h = hints(0, libc::AF_UNSPEC, libc::SOCK_STREAM, 0);
        let both = call(
            interposed(),
            Some("both.test"),
            None,
            Some(&h),
            free_interposed,
        );
        let h = hints(libc::AI_V4MAPPED, libc::AF_INET6, libc::SOCK_DGRAM, 0);
        let mapped = call(
            interposed(),
            Some("host7.test"),
            None,
            Some(&h),
            free_interposed,
        );
        let service = call(
            interposed(),
            Some("host1.test"),
            Some("domain"),
            None,
            free_interposed,
        );
        (alias, both, mapped, service)
    });
    fibra::dns::reset_thread_nameservers();
    let alias = alias.unwrap();
    assert_eq!(ips(&alias), vec![IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9))]);
    assert_eq!(alias[0].canonname.as_deref(), Some("target.test"));
    assert_eq!(&alias[0].addr[2..4], &80u16.to_be_bytes());
    let both = both.unwrap();
    let mut got = ips(&both);
    got.sort();
    assert_eq!(
        got,
        vec![
            IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)),
            "fd00::1".parse().unwrap()
        ]
    );
    assert!(both.iter().all(|n| n.canonname.is_none()));
    assert_eq!(
        ips(&mapped.unwrap()),
        vec!["::ffff:10.0.0.7".parse::<IpAddr>().unwrap()]
    );
    // No hints: AI_V4MAPPED | AI_ADDRCONFIG, one node per socket type that has the service.
    let service = service.unwrap();
    assert_eq!(
        service
            .iter()
            .map(|n| (n.socktype, n.protocol))
            .collect::<Vec<_>>(),
        vec![
            (libc::SOCK_STREAM, libc::IPPROTO_TCP),
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP)
        ]
    );
    assert!(
        service
            .iter()
            .all(|n| n.flags == libc::AI_V4MAPPED | libc::AI_ADDRCONFIG)
    );
    assert!(service.iter().all(|n| n.addr[2..4] == 53u16.to_be_bytes()));
}

/// A truncated UDP answer is fetched again over TCP (fibra's TCP stream and hickory's
/// multiplexing task), and the idle TCP connection left in the resolver does not keep
/// `fibra::run` from returning.
#[test]
fn truncated_answers_are_retried_over_tcp() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let server = TestServer::start(Duration::ZERO);
    fibra::dns::set_thread_nameservers([server.addr]);
    let start = Instant::now();
    let got = in_fiber(|| {
        let h = hints(0, libc::AF_INET, libc::SOCK_STREAM, 0);
        call(
            interposed(),
            Some("big.test"),
            Some("443"),
            Some(&h),
            free_interposed,
        )
    });
    let elapsed = start.elapsed();
    fibra::dns::reset_thread_nameservers();
    let mut got = ips(&got.unwrap());
    got.sort();
    let want: Vec<IpAddr> = (1..=40)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 2, 0, i)))
        .collect();
    assert_eq!(got, want);
    assert!(server.tcp_queries() >= 1, "no query came over TCP");
    assert!(elapsed < Duration::from_secs(5), "run took {elapsed:?}");
}

/// A `fibra::timeout` scope or a cancellation ends a lookup that is still waiting for its
/// answer with `EAI_AGAIN`, at once, and leaves nothing behind that would keep `run` going.
#[test]
fn timeouts_and_cancellation_end_a_lookup_with_eai_again() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let server = TestServer::start(Duration::from_secs(3));
    fibra::dns::set_thread_nameservers([server.addr]);
    let start = Instant::now();
    let (elapsed_scope, timed_out, cancelled_result) = fibra::run(|| {
        let h = hints(0, libc::AF_INET, libc::SOCK_STREAM, 0);
        let mut inner = None;
        let scope = fibra::timeout(Duration::from_millis(100), || {
            inner = Some(call(
                interposed(),
                Some("host3.test"),
                None,
                Some(&h),
                free_interposed,
            ));
        });
        assert!(scope.is_err(), "the scope should report its expiry");
        let timed_out = inner.expect("the closure ran");

        let result = Rc::new(Cell::new(None));
        let slot = Rc::clone(&result);
        let lookup = fibra::spawn(move || {
            let h = hints(0, libc::AF_INET, libc::SOCK_STREAM, 0);
            let r = call(
                interposed(),
                Some("host4.test"),
                None,
                Some(&h),
                free_interposed,
            );
            slot.set(Some(r.map(|l| l.len())));
        });
        std::thread::sleep(Duration::from_millis(50));
        lookup.cancel();
        let _ = lookup.join();
        (start.elapsed(), timed_out, result.take())
    });
    fibra::dns::reset_thread_nameservers();
    assert_eq!(timed_out, Err(libc::EAI_AGAIN));
    assert_eq!(cancelled_result, Some(Err(libc::EAI_AGAIN)));
    // Both ended long before the server's 3 s answers, and `run` returned with them.
    assert!(elapsed_scope < Duration::from_secs(2), "{elapsed_scope:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// hickory's futures need more stack than a small fiber has (~128 KiB in a debug build): such a
/// fiber's lookups move to a fiber of their own, and stay interruptible.
#[test]
fn fibers_with_the_smallest_stacks_resolve_names() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let server = TestServer::start(Duration::ZERO);
    let slow = TestServer::start(Duration::from_secs(3));
    fibra::dns::set_thread_nameservers([server.addr]);
    let (found, timed_out) = fibra::run(move || {
        let small = |f: Box<dyn FnOnce() -> usize>| {
            fibra::Builder::new()
                .stack_size(fibra::MIN_STACK_SIZE)
                .spawn(f)
                .unwrap()
                .join()
                .unwrap()
        };
        let found = small(Box::new(|| {
            ("host5.test", 80).to_socket_addrs().unwrap().count()
                + ("both.test", 80).to_socket_addrs().unwrap().count()
                + ("host5.test", 80).to_socket_addrs().unwrap().count()
        }));
        fibra::dns::set_thread_nameservers([slow.addr]);
        let timed_out = small(Box::new(|| {
            let start = Instant::now();
            let r = fibra::timeout(Duration::from_millis(100), || {
                ("host6.test", 80).to_socket_addrs().is_err()
            });
            assert!(start.elapsed() < Duration::from_secs(2));
            usize::from(r.is_err())
        }));
        (found, timed_out)
    });
    fibra::dns::reset_thread_nameservers();
    assert_eq!(found, 4);
    assert_eq!(timed_out, 1);
}

/// A child forked after the parent resolved names inherits the parent's resolver sockets and
/// the driver's epoll instance; its lookups must use its own, and both go on working.
#[test]
fn a_forked_child_resolves_with_its_own_resolver() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let server = TestServer::start(Duration::from_millis(20));
    fibra::dns::set_thread_nameservers([server.addr]);
    let before = fibra::run(|| ("host11.test", 1).to_socket_addrs().unwrap().count());
    // SAFETY: the child only runs fibra and resolves names (malloc is fork-safe in glibc), then
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    // Shared sockets or epoll instance show up as stolen answers: hickory then waits for its
    // 5 s time-out before retrying. Each side's 20 lookups take ~20 ms here.
    let start = Instant::now();
    if pid == 0 {
        let result = std::panic::catch_unwind(|| {
            fibra::run(|| {
                let a: Vec<_> = (0..20)
                    .map(|i| {
                        fibra::spawn(move || {
                            (format!("host{}.test", 100 + i), 1)
                                .to_socket_addrs()
                                .map(|a| a.count())
                                .unwrap_or(0)
                        })
                    })
                    .collect();
                a.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
            })
        });
        // SAFETY: leaving the child without running the parent's destructors or atexit hooks.
        let quick = start.elapsed() < Duration::from_secs(3);
        unsafe {
            libc::_exit(if result.ok() == Some(20) && quick {
                0
            } else {
                1
            })
        };
    }
    let after = fibra::run(|| {
        let a: Vec<_> = (0..20)
            .map(|i| {
                fibra::spawn(move || {
                    (format!("host{}.test", 200 + i), 1)
                        .to_socket_addrs()
                        .map(|a| a.count())
                        .unwrap_or(0)
                })
            })
            .collect();
        a.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
    });
    let parent_took = start.elapsed();
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    fibra::dns::reset_thread_nameservers();
    assert_eq!(waited, pid);
    assert_eq!((before, after), (1, 20));
    assert!(
        parent_took < Duration::from_secs(3),
        "parent lookups took {parent_took:?}"
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's lookups failed or took over 3 s (status {status:#x})"
    );
}

/// Schedulers on several threads resolve at once, each with its own resolver and driver.
#[test]
fn schedulers_on_several_threads_resolve_at_once() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let server = TestServer::start(Duration::from_millis(50));
    let addr = server.addr;
    let start = Instant::now();
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            std::thread::spawn(move || {
                fibra::dns::set_thread_nameservers([addr]);
                fibra::run(move || {
                    let fibers: Vec<_> = (0..100u32)
                        .map(|i| {
                            let n = 1000 + t * 100 + i;
                            fibra::spawn(move || {
                                let got: Vec<SocketAddr> = (format!("host{n}.test"), 7)
                                    .to_socket_addrs()
                                    .unwrap()
                                    .collect();
                                got == vec![SocketAddr::new(IpAddr::V4(host_ip(n)), 7)]
                            })
                        })
                        .collect();
                    fibers
                        .into_iter()
                        .map(|f| f.join().unwrap())
                        .filter(|ok| *ok)
                        .count()
                })
            })
        })
        .collect();
    let resolved: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(resolved, 400);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn numeric_hosts_and_hosts_file_never_reach_dns_and_answers_are_cached() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let server = TestServer::start(Duration::ZERO);
    fibra::dns::set_thread_nameservers([server.addr]);
    let (numeric, cached) = in_fiber(|| {
        let before = ("10.1.2.3", 1).to_socket_addrs().unwrap().count()
            + ("::1", 1).to_socket_addrs().unwrap().count()
            + ("localhost", 1).to_socket_addrs().unwrap().count();
        let first: Vec<_> = ("host42.test", 1).to_socket_addrs().unwrap().collect();
        let again: Vec<_> = ("host42.test", 1).to_socket_addrs().unwrap().collect();
        assert_eq!(first, again);
        (before, first)
    });
    fibra::dns::reset_thread_nameservers();
    assert!(numeric >= 3);
    assert_eq!(cached, vec![SocketAddr::new(IpAddr::V4(host_ip(42)), 1)]);
    // host42.test: one A and one AAAA query; the numeric hosts, localhost and the cached repeat
    // asked nothing.
    assert_eq!(server.queries(), 2);
}

/// A list made by either `getaddrinfo` is freed by either `freeaddrinfo`. Run under valgrind by
/// `freeaddrinfo_is_valgrind_clean`.
#[test]
fn lists_of_either_origin_free_with_either_freeaddrinfo() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let server = TestServer::start(Duration::ZERO);
    fibra::dns::set_thread_nameservers([server.addr]);
    in_fiber(|| {
        let h = hints(libc::AI_CANONNAME, libc::AF_UNSPEC, 0, 0);
        for name in ["alias.test", "both.test", "127.0.0.1", "localhost"] {
            // fibra's list, freed by glibc.
            let ours = call(
                interposed(),
                Some(name),
                Some("80"),
                Some(&h),
                fibra_shim::real::freeaddrinfo,
            )
            .unwrap();
            assert!(ours[0].canonname.is_some());
            assert!(ours[1..].iter().all(|n| n.canonname.is_none()));
        }
        // glibc's list (numeric: no network), freed by fibra's freeaddrinfo.
        let theirs = call(
            glibc(),
            Some("127.0.0.1"),
            Some("80"),
            Some(&h),
            free_interposed,
        )
        .unwrap();
        assert_eq!(theirs.len(), 3);
    });
    fibra::dns::reset_thread_nameservers();
}

/// The valgrind check of the test above (needs valgrind; not run in CI).
#[test]
#[ignore = "needs valgrind; run with: cargo test --test dns -- --ignored"]
fn freeaddrinfo_is_valgrind_clean() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
        ])
        .arg(exe)
        .args([
            "lists_of_either_origin_free_with_either_freeaddrinfo",
            "--exact",
            "--test-threads=1",
        ])
        .output()
        .expect("run valgrind (apt-get install valgrind)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "valgrind reported errors:\n{stderr}");
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
}

/// With no usable configuration (`FIBRA_NAMESERVERS` unparsable), lookups run glibc's
/// `getaddrinfo` on a helper thread while the fiber parks: another fiber keeps running.
#[test]
fn without_configuration_glibc_runs_on_a_helper_thread() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    if std::env::var_os("FIBRA_DNS_CHILD").is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "without_configuration_glibc_runs_on_a_helper_thread",
                "--exact",
                "--nocapture",
            ])
            .env("FIBRA_DNS_CHILD", "1")
            .env("FIBRA_NAMESERVERS", "not-an-address")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    const LOOKUPS: usize = 100;
    let (done, most_in_flight) = in_fiber(|| {
        let h = hints(libc::AI_CANONNAME, libc::AF_INET, libc::SOCK_STREAM, 0);
        let want = call(
            glibc(),
            Some("localhost"),
            Some("80"),
            Some(&h),
            fibra_shim::real::freeaddrinfo,
        );
        assert!(want.is_ok());
        // Lookups from many fibers: had each blocked the thread, only one would ever be in
        // flight. (A helper that finishes before its fiber parks lets the fiber go on without
        // parking, so not every lookup overlaps another; over a hundred, some always do.)
        let in_flight = Rc::new(Cell::new(0usize));
        let most = Rc::new(Cell::new(0usize));
        let fibers: Vec<_> = (0..LOOKUPS)
            .map(|_| {
                let (in_flight, most, want) =
                    (Rc::clone(&in_flight), Rc::clone(&most), want.clone());
                fibra::spawn(move || {
                    in_flight.set(in_flight.get() + 1);
                    most.set(most.get().max(in_flight.get()));
                    let h = hints(libc::AI_CANONNAME, libc::AF_INET, libc::SOCK_STREAM, 0);
                    let got = call(
                        interposed(),
                        Some("localhost"),
                        Some("80"),
                        Some(&h),
                        free_interposed,
                    );
                    in_flight.set(in_flight.get() - 1);
                    assert_eq!(got, want);
                })
            })
            .collect();
        let done = fibers
            .into_iter()
            .map(|f| f.join().is_ok())
            .filter(|ok| *ok)
            .count();
        (done, most.get())
    });
    assert_eq!(done, LOOKUPS);
    assert!(
        most_in_flight >= 2,
        "glibc lookups never overlapped: they blocked the thread"
    );
}

/// DNS answers compared with glibc's own, against the same server: a child process gets a
/// private mount namespace whose `/etc/resolv.conf` names the test server on 127.0.0.1:53
/// (glibc's resolver knows no other port), and both fibra (reading that same resolv.conf) and
/// glibc resolve a table of names there. Skipped, with a message, where port 53 or a mount
/// namespace is not available (no root, no user namespaces).
#[test]
fn dns_answers_match_glibc_against_the_same_server() {
    let _watchdog = Watchdog::new(Duration::from_secs(120));
    if std::env::var_os("FIBRA_DNS_GLIBC_CHILD").is_some() {
        glibc_comparison_child();
        return;
    }
    let server = match TestServer::start_on("127.0.0.1:53".parse().unwrap(), Duration::ZERO) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("skipped: cannot bind 127.0.0.1:53 for glibc's resolver: {e}");
            return;
        }
    };
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "dns_answers_match_glibc_against_the_same_server",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FIBRA_DNS_GLIBC_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}{stderr}");
    if stderr.contains("skipped:") {
        eprintln!(
            "{}",
            stderr.lines().find(|l| l.contains("skipped:")).unwrap()
        );
        return;
    }
    let summary = stderr.lines().find(|l| l.contains("compared"));
    assert!(summary.is_some(), "{stderr}");
    eprintln!("{}", summary.unwrap());
    assert!(server.queries() > 0);
}

/// Points this thread's /etc/resolv.conf at 127.0.0.1 in a private mount namespace.
fn private_resolv_conf() -> Result<(), String> {
    let conf = std::env::temp_dir().join(format!("fibra-dns-test-resolv-{}", std::process::id()));
    std::fs::write(
        &conf,
        "nameserver 127.0.0.1\nsearch test\noptions timeout:2 attempts:2\n",
    )
    .map_err(|e| e.to_string())?;
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let root = CString::new("/").unwrap();
    let none = CString::new("none").unwrap();
    let src = CString::new(conf.to_str().unwrap()).unwrap();
    let dst = CString::new("/etc/resolv.conf").unwrap();
    // SAFETY: plain system calls with valid C strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(err("unshare(CLONE_NEWNS)"));
        }
        if libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        ) != 0
        {
            return Err(err("mount --make-rprivate /"));
        }
        if libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            ptr::null(),
            libc::MS_BIND,
            ptr::null(),
        ) != 0
        {
            let e = err("bind mount /etc/resolv.conf");
            let _ = std::fs::remove_file(&conf);
            return Err(e);
        }
    }
    // The mount holds the file; its name is not needed any more.
    let _ = std::fs::remove_file(&conf);
    Ok(())
}

fn glibc_comparison_child() {
    if let Err(e) = private_resolv_conf() {
        eprintln!("skipped: no private /etc/resolv.conf: {e}");
        return;
    }
    use libc::{AF_INET, AF_INET6, AF_UNSPEC, AI_ALL, AI_CANONNAME, AI_V4MAPPED, SOCK_STREAM};
    type Case = (
        &'static str,
        Option<&'static str>,
        Option<(i32, i32, i32, i32)>,
    );
    let cases: Vec<Case> = vec![
        (
            "host7.test",
            Some("80"),
            Some((0, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        ("host7.test", None, None),
        (
            "host7",
            Some("80"),
            Some((AI_CANONNAME, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        ("both.test", None, Some((0, AF_UNSPEC, 0, 0))),
        (
            "both.test",
            Some("443"),
            Some((AI_CANONNAME, AF_INET6, SOCK_STREAM, 0)),
        ),
        (
            "alias.test",
            None,
            Some((AI_CANONNAME, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        (
            "alias.test",
            None,
            Some((AI_CANONNAME, AF_INET, SOCK_STREAM, 0)),
        ),
        ("v6only.test", None, Some((0, AF_INET, SOCK_STREAM, 0))),
        (
            "v6only.test",
            None,
            Some((AI_CANONNAME, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        (
            "host9.test",
            None,
            Some((AI_V4MAPPED, AF_INET6, SOCK_STREAM, 0)),
        ),
        (
            "both.test",
            None,
            Some((AI_V4MAPPED | AI_ALL, AF_INET6, SOCK_STREAM, 0)),
        ),
        ("missing.test", None, Some((0, AF_UNSPEC, SOCK_STREAM, 0))),
        ("missing.test", None, Some((0, AF_INET, SOCK_STREAM, 0))),
        ("nodata.test", None, Some((0, AF_UNSPEC, SOCK_STREAM, 0))),
        ("nodata.test", None, Some((0, AF_INET6, SOCK_STREAM, 0))),
        ("servfail.test", None, Some((0, AF_UNSPEC, SOCK_STREAM, 0))),
        ("big.test", Some("80"), Some((0, AF_INET, SOCK_STREAM, 0))),
        ("host7", None, Some((0, AF_INET, SOCK_STREAM, 0))),
        (
            "HOST7.Test",
            None,
            Some((AI_CANONNAME, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        (
            "host7.test.",
            None,
            Some((AI_CANONNAME, AF_INET, SOCK_STREAM, 0)),
        ),
        (
            "alias",
            None,
            Some((AI_CANONNAME, AF_UNSPEC, SOCK_STREAM, 0)),
        ),
        ("nodata", None, Some((0, AF_UNSPEC, SOCK_STREAM, 0))),
        ("missing", None, Some((0, AF_INET, SOCK_STREAM, 0))),
        ("missing.test.", None, Some((0, AF_UNSPEC, SOCK_STREAM, 0))),
        ("servfail", None, Some((0, AF_INET, SOCK_STREAM, 0))),
        (
            "servfail",
            None,
            Some((AI_CANONNAME, AF_INET, SOCK_STREAM, 0)),
        ),
        ("servfail.test", None, Some((0, AF_INET, SOCK_STREAM, 0))),
        ("servfail.test.", None, Some((0, AF_INET, SOCK_STREAM, 0))),
        ("both.test", Some("domain"), None),
        (
            "v6only.test",
            None,
            Some((AI_V4MAPPED, AF_INET6, SOCK_STREAM, 0)),
        ),
    ];
    let run = |gai: Gai, free: unsafe fn(*mut libc::addrinfo)| -> Vec<Result<Vec<Node>, i32>> {
        cases
            .iter()
            .map(|(node, service, h)| {
                let h = h.map(|(f, fam, st, p)| hints(f, fam, st, p));
                call(gai, Some(node), *service, h.as_ref(), free)
            })
            .collect()
    };
    let want = run(glibc(), fibra_shim::real::freeaddrinfo);
    let cases_in = cases.clone();
    let got = fibra::run(move || {
        cases_in
            .iter()
            .map(|(node, service, h)| {
                let h = h.map(|(f, fam, st, p)| hints(f, fam, st, p));
                call(
                    interposed(),
                    Some(node),
                    *service,
                    h.as_ref(),
                    free_interposed,
                )
            })
            .collect::<Vec<_>>()
    });
    for ((case, want), got) in cases.iter().zip(&want).zip(&got) {
        assert_eq!(got, want, "{case:?}");
    }
    // The table exercises what it claims to.
    assert!(want.contains(&Err(libc::EAI_NONAME)));
    assert!(want.contains(&Err(EAI_NODATA)));
    assert!(want.contains(&Err(libc::EAI_AGAIN)));
    eprintln!("compared {} DNS queries with glibc: identical", cases.len());
}

/// The per-thread pump fiber serves every lookup: it must not keep alive the FiberLocal values
/// of the lookup that happened to start it.
#[test]
fn the_pump_does_not_keep_the_first_lookups_fiber_locals_alive() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    static REQUEST: fibra::FiberLocal<Rc<DropFlag>> = fibra::FiberLocal::new();
    struct DropFlag(Rc<Cell<bool>>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let server = TestServer::start(Duration::from_millis(300));
    fibra::dns::set_thread_nameservers([server.addr]);
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    let seen_while_pump_alive = fibra::run(move || {
        let first = fibra::spawn(move || {
            REQUEST.set(Rc::new(DropFlag(d)));
            // Starts the pump, which inherits this fiber's values at spawn.
            let _ = ("first-lookup.test", 80).to_socket_addrs();
        });
        // A second lookup keeps the pump running after the first one ends.
        let second = fibra::spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            let _ = ("second-lookup.test", 80).to_socket_addrs();
        });
        first.join().unwrap();
        let seen = dropped.get();
        second.join().unwrap();
        seen
    });
    fibra::dns::reset_thread_nameservers();
    assert!(
        seen_while_pump_alive,
        "the request's value was dropped when its fiber ended, not when the pump did"
    );
}
