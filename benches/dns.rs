//! Name resolution: fibra's `getaddrinfo` in fibers beside glibc's.
//!
//! - `dns/cached`: one lookup of a name already in the resolver's cache, from a fiber
//!   (`ToSocketAddrs`, i.e. `getaddrinfo` + `freeaddrinfo`), beside glibc resolving `localhost`
//!   from `/etc/hosts` outside fibers (glibc keeps no DNS cache; its hosts-file path is its
//!   fastest).
//! - `dns/cold_500`: 500 distinct names against a local name server that delays every answer
//!   by 100 ms: 500 fibers on one thread, beside glibc's `getaddrinfo` on a pool of 16 threads.
//!   glibc reads its name server from `/etc/resolv.conf` only, so its side runs in a child
//!   process in a private mount namespace with `/etc/resolv.conf` bind-mounted to point at the
//!   local server; where namespaces are unavailable that side is skipped with a message.

#[path = "../tests/dns_server/mod.rs"]
mod dns_server;

use std::ffi::CString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use dns_server::{TestServer, host_ip};

const COLD: u32 = 500;
const POOL: usize = 16;
const DELAY: Duration = Duration::from_millis(100);
const CHILD_ENV: &str = "FIBRA_DNS_BENCH_GLIBC_SERVER";

fn cached(c: &mut Criterion, server: &TestServer) {
    let mut group = c.benchmark_group("dns/cached");
    let addr = server.addr;
    group.bench_function("fibra_fiber", |b| {
        b.iter_custom(|iters| {
            fibra::dns::set_thread_nameservers([addr]);
            fibra::run(move || {
                // Warm the cache (A and AAAA answers).
                let _ = ("host1.test", 80).to_socket_addrs().unwrap().count();
                let start = Instant::now();
                for _ in 0..iters {
                    let n = ("host1.test", 80).to_socket_addrs().unwrap().count();
                    assert_eq!(n, 1);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("glibc_hosts_file", |b| {
        b.iter(|| {
            let n = ("localhost", 80).to_socket_addrs().unwrap().count();
            assert!(n >= 1);
        })
    });
    group.finish();
}

/// Resolves `COLD` distinct names starting at `first`, one fiber each, on a fresh cache.
fn fibra_cold(addr: SocketAddr, first: u32) -> Duration {
    fibra::dns::set_thread_nameservers([addr]);
    fibra::dns::clear_cache();
    fibra::run(move || {
        let start = Instant::now();
        let fibers: Vec<_> = (first..first + COLD)
            .map(|i| {
                fibra::spawn(move || {
                    let got: Vec<SocketAddr> = (format!("host{i}.test"), 80)
                        .to_socket_addrs()
                        .unwrap()
                        .collect();
                    assert_eq!(got[0].ip(), host_ip(i));
                })
            })
            .collect();
        for f in fibers {
            f.join().unwrap();
        }
        start.elapsed()
    })
}

/// glibc on a 16-thread pool, in a child process that sees the local server in its
/// `/etc/resolv.conf`. `None` when the child could not set that up.
fn glibc_cold(addr: SocketAddr, first: u32) -> Option<Duration> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .env(CHILD_ENV, format!("{addr}/{first}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("glibc-cold-ns "))?;
    Some(Duration::from_nanos(line.trim().parse().ok()?))
}

/// The child side of `glibc_cold`: private mount namespace, resolv.conf pointing at the local
/// server, then `COLD` lookups over `POOL` threads. Prints the elapsed time.
fn glibc_child(spec: &str) {
    let (addr, first) = spec.split_once('/').expect("addr/first");
    let addr: SocketAddr = addr.parse().expect("server address");
    let first: u32 = first.parse().expect("first name");
    if let Err(e) = private_resolv_conf(addr) {
        println!("glibc-cold-unavailable {e}");
        return;
    }
    let next = std::sync::atomic::AtomicU32::new(first);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..POOL {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= first + COLD {
                        return;
                    }
                    let got: Vec<SocketAddr> = (format!("host{i}.test"), 80)
                        .to_socket_addrs()
                        .unwrap()
                        .collect();
                    assert_eq!(got[0].ip(), host_ip(i));
                }
            });
        }
    });
    println!("glibc-cold-ns {}", start.elapsed().as_nanos());
}

fn private_resolv_conf(addr: SocketAddr) -> Result<(), String> {
    // SAFETY: plain system calls in a single-threaded child.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            let uid = libc::getuid();
            let gid = libc::getgid();
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                return Err(format!("unshare: {}", std::io::Error::last_os_error()));
            }
            std::fs::write("/proc/self/setgroups", "deny").map_err(|e| e.to_string())?;
            std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))
                .map_err(|e| e.to_string())?;
            std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))
                .map_err(|e| e.to_string())?;
        }
        let root = CString::new("/").unwrap();
        let none = CString::new("none").unwrap();
        if libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(format!(
                "mount private: {}",
                std::io::Error::last_os_error()
            ));
        }
        let conf = std::env::temp_dir().join(format!("fibra-bench-resolv-{}", std::process::id()));
        // glibc's resolver speaks to port 53 only: the caller's server listens there.
        std::fs::write(
            &conf,
            format!("nameserver {}\noptions attempts:1\n", addr.ip()),
        )
        .map_err(|e| e.to_string())?;
        let src = CString::new(conf.to_str().unwrap()).unwrap();
        let dst = CString::new("/etc/resolv.conf").unwrap();
        if libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            let e = format!("bind mount: {}", std::io::Error::last_os_error());
            let _ = std::fs::remove_file(&conf);
            return Err(e);
        }
        // The mount holds the file; its name is not needed any more.
        let _ = std::fs::remove_file(&conf);
    }
    Ok(())
}

fn cold(c: &mut Criterion, fibra_server: &TestServer) {
    let mut group = c.benchmark_group("dns/cold_500");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(5));
    let addr = fibra_server.addr;
    let mut round = 0u32;
    group.bench_function("fibra_500_fibers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                total += fibra_cold(addr, round * 1000);
            }
            total
        })
    });
    group.finish();
    // glibc needs the server on port 53: a second server there, if this process may bind it.
    match TestServer::start_on("127.0.0.1:53".parse().unwrap(), DELAY) {
        Ok(glibc_server) => match glibc_cold(glibc_server.addr, 1) {
            Some(elapsed) => {
                let per_sec = f64::from(COLD) / elapsed.as_secs_f64();
                println!(
                    "dns/cold_500/glibc_{POOL}_threads: {elapsed:?} for {COLD} lookups ({per_sec:.0} lookups/s)"
                );
            }
            None => {
                println!("dns/cold_500/glibc_{POOL}_threads: skipped (no private mount namespace)")
            }
        },
        Err(e) => {
            println!("dns/cold_500/glibc_{POOL}_threads: skipped (cannot bind 127.0.0.1:53: {e})")
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        glibc_child(&spec);
        return;
    }
    let server = TestServer::start(Duration::ZERO);
    let delayed = TestServer::start(DELAY);
    let mut c = Criterion::default().configure_from_args();
    cached(&mut c, &server);
    cold(&mut c, &delayed);
    c.final_summary();
}
