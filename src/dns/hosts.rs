//! `/etc/hosts`, read the way glibc's `files` NSS module reads it.
//!
//! A line is an address followed by its canonical name and aliases; `#` starts a comment. A
//! name matches case-insensitively against the canonical name or any alias, on every line
//! (glibc merges all matching lines, in file order); the canonical name reported is the first
//! matching line's. The file is re-read when its modification time or size changes, so a
//! lookup costs one `stat` when it has not.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::gai::{Family, HostAnswer};

/// One parsed hosts file, cached by modification time.
#[derive(Default)]
pub(crate) struct HostsFile {
    stamp: Option<(i64, i64, u64)>,
    /// (address, canonical name, aliases), in file order.
    lines: Vec<(IpAddr, String, Vec<String>)>,
}

impl HostsFile {
    /// Re-reads `path` if it changed since the last call.
    pub fn refresh(&mut self, path: &Path) {
        let stamp = std::fs::metadata(path)
            .ok()
            .map(|m| (m.mtime(), m.mtime_nsec(), m.size()));
        if stamp == self.stamp && stamp.is_some() {
            return;
        }
        self.stamp = stamp;
        self.lines = match std::fs::read(path) {
            Ok(data) => parse(&data),
            Err(_) => Vec::new(),
        };
    }

    /// What the `files` module answers for `name`: `NotFound` when no line has an address of
    /// that family for it (the next NSS module, DNS, is then asked).
    pub fn lookup(&self, name: &str, family: Family) -> HostAnswer {
        self.lookup_with(name, family, multi())
    }

    /// [`HostsFile::lookup`] with glibc's `multi` setting given (see [`multi`]).
    fn lookup_with(&self, name: &str, family: Family, multi: bool) -> HostAnswer {
        // Compared as given, like glibc's files module: "localhost." is not "localhost".
        let mut addrs = Vec::new();
        let mut canonical = None;
        for (addr, canon, aliases) in &self.lines {
            // glibc's files parser, asked for AF_INET, reads `::1` as 127.0.0.1 and
            // `::ffff:a.b.c.d` as a.b.c.d; other IPv6 lines are skipped.
            let addr = match (family, *addr) {
                (Family::V4, IpAddr::V6(v6)) if v6 == Ipv6Addr::LOCALHOST => {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                }
                (Family::V4, IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => continue,
                },
                (Family::V6, IpAddr::V4(_)) => continue,
                (_, addr) => addr,
            };
            if canon.eq_ignore_ascii_case(name)
                || aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
            {
                canonical.get_or_insert_with(|| canon.clone());
                // glibc keeps repeated addresses.
                addrs.push(addr);
                // Without `multi on` (/etc/host.conf), only the first matching line counts.
                if !multi {
                    break;
                }
            }
        }
        match canonical {
            Some(canonical) => HostAnswer::Found { addrs, canonical },
            None => HostAnswer::NotFound,
        }
    }
}

/// glibc's `multi` setting: `RESOLV_MULTI`, else the `multi` line of `/etc/host.conf` (off by
/// default), read once per process as glibc does.
fn multi() -> bool {
    static MULTI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MULTI.get_or_init(|| {
        let on = |v: &str| v.trim().eq_ignore_ascii_case("on");
        if let Ok(v) = std::env::var("RESOLV_MULTI") {
            return on(&v);
        }
        let text = std::fs::read_to_string("/etc/host.conf").unwrap_or_default();
        let mut multi = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_ascii_whitespace();
            if words.next() == Some("multi") {
                multi = words.next().is_some_and(on);
            }
        }
        multi
    })
}

fn parse(data: &[u8]) -> Vec<(IpAddr, String, Vec<String>)> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_ascii_whitespace();
        let (Some(addr), Some(canon)) = (fields.next(), fields.next()) else {
            continue;
        };
        // glibc accepts the address with inet_pton (IPv4 dotted quad or IPv6); a scope suffix
        // is not part of the files format.
        let Ok(addr) = addr.parse::<IpAddr>() else {
            continue;
        };
        out.push((addr, canon.to_owned(), fields.map(str::to_owned).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_lines_and_keeps_the_first_canonical_name() {
        let hosts = HostsFile {
            stamp: None,
            lines: parse(
                b"127.0.0.1 localhost loopback # comment\n::1 ip6-localhost localhost\nbad line\n",
            ),
        };
        match hosts.lookup_with("LOCALHOST", Family::Any, true) {
            HostAnswer::Found { addrs, canonical } => {
                assert_eq!(
                    addrs,
                    vec![
                        "127.0.0.1".parse::<IpAddr>().unwrap(),
                        "::1".parse().unwrap()
                    ]
                );
                assert_eq!(canonical, "localhost");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            hosts.lookup_with("loopback", Family::V6, true),
            HostAnswer::NotFound
        );
        assert_eq!(
            hosts.lookup_with("nothere", Family::Any, true),
            HostAnswer::NotFound
        );
        // Without `multi on`, only the first matching line answers.
        match hosts.lookup_with("localhost", Family::Any, false) {
            HostAnswer::Found { addrs, .. } => {
                assert_eq!(addrs, vec!["127.0.0.1".parse::<IpAddr>().unwrap()])
            }
            other => panic!("{other:?}"),
        }
        // Asked for IPv4, `::1` reads as 127.0.0.1 (glibc's files parser).
        match hosts.lookup_with("ip6-localhost", Family::V4, true) {
            HostAnswer::Found { addrs, .. } => {
                assert_eq!(addrs, vec!["127.0.0.1".parse::<IpAddr>().unwrap()])
            }
            other => panic!("{other:?}"),
        }
    }
}
