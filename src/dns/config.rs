//! Where the resolver's configuration comes from, and the public settings.
//!
//! In order of precedence: the calling thread's setting ([`set_thread_nameservers`]), the
//! process-wide setting ([`set_nameservers`]), the `FIBRA_NAMESERVERS` environment variable
//! (`ip:port[,ip:port...]`, IPv6 as `[addr]:port`; a bare address means port 53), then
//! `/etc/resolv.conf`. A setting replaces only the name servers: search domains and options
//! still come from `/etc/resolv.conf` when it is readable.
//!
//! The `hosts` line of `/etc/nsswitch.conf` decides the order of `/etc/hosts` and DNS; anything
//! other than `files` and `dns` there (mDNS, `myhostname`, systemd-resolved, LDAP, action
//! brackets...) is something only glibc can do, so fibra then hands lookups to glibc on a
//! helper thread, as it does when no name server is configured at all, and when
//! `/etc/gai.conf` changes the address-sorting tables (fibra sorts with glibc's defaults). Name
//! servers set explicitly (the three settings above) override both: `/etc/hosts`, then those
//! servers, sorted with the default tables.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};

static PROCESS_SERVERS: Mutex<Option<Vec<SocketAddr>>> = Mutex::new(None);
static PROCESS_GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_SERVERS: RefCell<Option<Vec<SocketAddr>>> = const { RefCell::new(None) };
    static THREAD_GENERATION: Cell<u64> = const { Cell::new(0) };
}

fn checked(servers: Vec<SocketAddr>, what: &str) -> Vec<SocketAddr> {
    assert!(
        !servers.is_empty(),
        "fibra::dns::{what} needs at least one name server; use fibra::dns::reset_{} to go back to /etc/resolv.conf",
        what.trim_start_matches("set_")
    );
    servers
}

/// Makes every thread's fiber lookups ask `servers` (in order) instead of the name servers of
/// `/etc/resolv.conf` or `FIBRA_NAMESERVERS`. Takes effect at each thread's next lookup; its
/// cache starts empty.
///
/// # Panics
/// When `servers` is empty (use [`reset_nameservers`] to undo a setting).
pub fn set_nameservers(servers: impl IntoIterator<Item = SocketAddr>) {
    let servers = checked(servers.into_iter().collect(), "set_nameservers");
    *PROCESS_SERVERS.lock().unwrap_or_else(|e| e.into_inner()) = Some(servers);
    PROCESS_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Undoes [`set_nameservers`].
pub fn reset_nameservers() {
    *PROCESS_SERVERS.lock().unwrap_or_else(|e| e.into_inner()) = None;
    PROCESS_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Makes the fiber lookups of the **calling thread** ask `servers`, ahead of every other
/// setting. Useful when threads (tests, say) need different servers in one process.
///
/// # Panics
/// When `servers` is empty (use [`reset_thread_nameservers`] to undo a setting).
pub fn set_thread_nameservers(servers: impl IntoIterator<Item = SocketAddr>) {
    let servers = checked(servers.into_iter().collect(), "set_thread_nameservers");
    THREAD_SERVERS.with(|s| *s.borrow_mut() = Some(servers));
    THREAD_GENERATION.with(|g| g.set(g.get() + 1));
}

/// Undoes [`set_thread_nameservers`].
pub fn reset_thread_nameservers() {
    THREAD_SERVERS.with(|s| *s.borrow_mut() = None);
    THREAD_GENERATION.with(|g| g.set(g.get() + 1));
}

/// Identifies the settings a resolver was built from: rebuild when it changes.
pub(crate) fn generation() -> (u64, u64) {
    (
        PROCESS_GENERATION.load(Ordering::Acquire),
        THREAD_GENERATION.with(Cell::get),
    )
}

/// An NSS `hosts` source fibra implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Files,
    Dns,
}

/// What a thread's lookups run on.
pub(crate) enum Plan {
    /// fibra's own resolver.
    Own {
        config: Box<ResolverConfig>,
        options: Box<ResolverOpts>,
        order: Vec<Source>,
    },
    /// glibc on a helper thread, for this reason.
    Glibc(String),
}

/// Parses `FIBRA_NAMESERVERS`.
pub(crate) fn parse_servers(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addr = item
            .parse::<SocketAddr>()
            .or_else(|_| item.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| format!("not an ip:port: {item:?}"))?;
        out.push(addr);
    }
    if out.is_empty() {
        return Err("no name server given".to_owned());
    }
    Ok(out)
}

/// The `hosts` sources of `/etc/nsswitch.conf`, if fibra implements all of them.
fn nss_order() -> Result<Vec<Source>, String> {
    let text = std::fs::read_to_string("/etc/nsswitch.conf")
        .map_err(|e| format!("/etc/nsswitch.conf: {e}"))?;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("hosts:") else {
            continue;
        };
        let mut order = Vec::new();
        for word in rest.split_ascii_whitespace() {
            match word {
                "files" => order.push(Source::Files),
                "dns" => order.push(Source::Dns),
                other => return Err(format!("nsswitch.conf hosts source {other:?}")),
            }
        }
        return Ok(order);
    }
    Err("no hosts line in /etc/nsswitch.conf".to_owned())
}

/// The first directive of `/etc/gai.conf` (label, precedence, scopev4...), if it has any.
fn gai_conf_directive() -> Option<String> {
    let text = std::fs::read_to_string("/etc/gai.conf").ok()?;
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// Works out the plan for the calling thread now.
pub(crate) fn plan() -> Plan {
    let servers = THREAD_SERVERS.with(|s| s.borrow().clone()).or_else(|| {
        PROCESS_SERVERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    });
    let servers = match servers {
        Some(servers) => Some(servers),
        None => match std::env::var("FIBRA_NAMESERVERS") {
            Ok(text) => match parse_servers(&text) {
                Ok(servers) => Some(servers),
                Err(e) => return Plan::Glibc(format!("FIBRA_NAMESERVERS: {e}")),
            },
            Err(_) => None,
        },
    };
    // Name servers set explicitly mean "ask these": then only /etc/hosts and DNS apply, whatever
    // else nsswitch.conf lists. Otherwise the system's resolver configuration is followed, or
    // left to glibc where fibra cannot follow it.
    let order = match (nss_order(), servers.is_some()) {
        (Ok(order), _) => order,
        (Err(_), true) => vec![Source::Files, Source::Dns],
        (Err(reason), false) => return Plan::Glibc(reason),
    };
    if servers.is_none()
        && let Some(directive) = gai_conf_directive()
    {
        // glibc sorts answers with these tables; fibra knows only the defaults.
        return Plan::Glibc(format!("/etc/gai.conf sets {directive:?}"));
    }
    let system = hickory_resolver::system_conf::read_system_conf();
    let (config, mut options) = match (servers, system) {
        (Some(servers), system) => {
            let (domain, search, options) = match system {
                Ok((config, options)) => {
                    let (domain, search, _) = config.into_parts();
                    (domain, search, options)
                }
                Err(_) => {
                    // resolv.conf's defaults, as glibc applies them (hickory's own default
                    // turns EDNS0 on; glibc only does with `options edns0`).
                    let mut options = ResolverOpts::default();
                    options.edns0 = false;
                    (None, Vec::new(), options)
                }
            };
            let name_servers = servers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            (
                ResolverConfig::from_parts(domain, search, name_servers),
                options,
            )
        }
        (None, Ok((config, options))) => (config, options),
        (None, Err(e)) => return Plan::Glibc(format!("/etc/resolv.conf: {e}")),
    };
    // fibra reads /etc/hosts itself, in nsswitch order; hickory only does DNS.
    options.use_hosts_file = ResolveHosts::Never;
    // CNAME chains stay in the answer: the canonical name is the last owner.
    options.preserve_intermediates = true;
    Plan::Own {
        config: Box::new(config),
        options: Box::new(options),
        order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_lists() {
        assert_eq!(
            parse_servers("127.0.0.1:5353, [::1]:53,10.0.0.1").unwrap(),
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap()
            ]
        );
        assert!(parse_servers("").is_err());
        assert!(parse_servers("nonsense").is_err());
    }
}
