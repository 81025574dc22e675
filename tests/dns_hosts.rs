//! /etc/hosts answers compared with glibc's own, each in a process of its own with a private
//! mount namespace over /etc/hosts (and /etc/host.conf); skipped where that is not permitted.

mod common;
use common::Watchdog;
use std::time::Duration;

use std::ffi::{CStr, CString};
use std::net::IpAddr;

fn private_etc(file: &str, contents: &str) -> Result<(), String> {
    let tmp = std::env::temp_dir().join(format!(
        "fibra-hosts-{}-{}",
        file.replace('/', "_"),
        std::process::id()
    ));
    std::fs::write(&tmp, contents).map_err(|e| e.to_string())?;
    let root = CString::new("/").unwrap();
    let none = CString::new("none").unwrap();
    let src = CString::new(tmp.to_str().unwrap()).unwrap();
    let dst = CString::new(file).unwrap();
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err("unshare".into());
        }
        if libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err("private".into());
        }
        if libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err("bind".into());
        }
    }
    Ok(())
}

/// getaddrinfo(node, NULL, {AF_INET, SOCK_STREAM}) through the interposed symbol: ips or error.
fn gai_v4(node: &str, flags: i32) -> Result<(Vec<IpAddr>, Option<String>), i32> {
    let node = CString::new(node).unwrap();
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    let mut h: libc::addrinfo = unsafe { std::mem::zeroed() };
    h.ai_family = libc::AF_INET;
    h.ai_socktype = libc::SOCK_STREAM;
    h.ai_flags = flags;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    let rc = unsafe { libc::getaddrinfo(node.as_ptr(), std::ptr::null(), &h, &mut res) };
    if rc != 0 {
        return Err(rc);
    }
    let mut out = Vec::new();
    let mut canon = None;
    let mut cur = res;
    while !cur.is_null() {
        // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
        let ai = unsafe { &*cur };
        if !ai.ai_canonname.is_null() {
            // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
            canon = Some(
                unsafe { CStr::from_ptr(ai.ai_canonname) }
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
        let sin = unsafe { &*ai.ai_addr.cast::<libc::sockaddr_in>() };
        out.push(IpAddr::V4(u32::from_be(sin.sin_addr.s_addr).into()));
        cur = ai.ai_next;
    }
    // SAFETY: libc calls on fds, pids, buffers and structs this test owns.
    unsafe { libc::freeaddrinfo(res) };
    Ok((out, canon))
}

#[test]
fn hosts_file_ipv6_loopback_and_mapped_lines_answer_af_inet_like_glibc() {
    if common::ran_in_own_process(
        "hosts_file_ipv6_loopback_and_mapped_lines_answer_af_inet_like_glibc",
    ) {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(30));
    std::thread::spawn(|| {
        if let Err(e) = private_etc(
            "/etc/hosts",
            "127.0.0.1 localhost\n::1 six-only\n::ffff:10.1.2.3 mapped-only\n",
        ) {
            eprintln!("skipped: {e}");
            return;
        }
        // DNS must not answer: a closed local port (connection refused).
        fibra::dns::set_thread_nameservers(["127.0.0.1:9".parse().unwrap()]);
        for name in ["six-only", "mapped-only"] {
            let glibc = gai_v4(name, libc::AI_CANONNAME);
            let ours = fibra::run(move || gai_v4(name, libc::AI_CANONNAME));
            eprintln!("{name}: glibc {glibc:?} fibra {ours:?}");
            assert_eq!(ours, glibc, "{name}");
        }
    })
    .join()
    .unwrap();
}

/// With `multi on` (this machine's /etc/host.conf), glibc keeps every matching line,
/// duplicates included.
#[test]
fn hosts_file_duplicate_lines_are_kept_like_glibc() {
    if common::ran_in_own_process("hosts_file_duplicate_lines_are_kept_like_glibc") {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(30));
    std::thread::spawn(|| {
        if let Err(e) = private_etc("/etc/hosts", "10.0.0.1 dup\n10.0.0.1 dup\n127.0.0.1 dup\n") {
            eprintln!("skipped: {e}");
            return;
        }
        fibra::dns::set_thread_nameservers(["127.0.0.1:9".parse().unwrap()]);
        let glibc = gai_v4("dup", 0);
        let ours = fibra::run(|| gai_v4("dup", 0));
        eprintln!("glibc {glibc:?} fibra {ours:?}");
        assert_eq!(ours, glibc);
    })
    .join()
    .unwrap();
}

/// In a process of its own: glibc (and fibra) read /etc/host.conf once per process.
/// Without `multi on`, glibc answers from the first matching line only.
#[test]
fn multi_off_hosts_lookups_use_the_first_line_only() {
    if common::ran_in_own_process("multi_off_hosts_lookups_use_the_first_line_only") {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(30));
    std::thread::spawn(|| {
        if let Err(e) = private_etc("/etc/hosts", "127.0.0.1 dup\n10.0.0.1 dup\n") {
            eprintln!("skipped: {e}");
            return;
        }
        if let Err(e) = private_etc("/etc/host.conf", "multi off\n") {
            eprintln!("skipped: {e}");
            return;
        }
        fibra::dns::set_thread_nameservers(["127.0.0.1:9".parse().unwrap()]);
        let glibc = gai_v4("dup", 0);
        let ours = fibra::run(|| gai_v4("dup", 0));
        eprintln!("glibc {glibc:?} fibra {ours:?}");
        assert_eq!(ours, glibc);
    })
    .join()
    .unwrap();
}
