//! `/etc/hosts`, read the way glibc's `files` NSS module reads it.
//!
//! A line is an address followed by its canonical name and aliases; `#` starts a comment. A
//! name matches case-insensitively against the canonical name or any alias, on every line
//! (glibc merges all matching lines, in file order); the canonical name reported is the first
//! matching line's. The file is re-read when its modification time or size changes, so a
//! lookup costs one `stat` when it has not.

use std::net::IpAddr;
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
        // Compared as given, like glibc's files module: "localhost." is not "localhost".
        let mut addrs = Vec::new();
        let mut canonical = None;
        for (addr, canon, aliases) in &self.lines {
            let wanted = match family {
                Family::Any => true,
                Family::V4 => addr.is_ipv4(),
                Family::V6 => addr.is_ipv6(),
            };
            if !wanted {
                continue;
            }
            if canon.eq_ignore_ascii_case(name)
                || aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
            {
                canonical.get_or_insert_with(|| canon.clone());
                if !addrs.contains(addr) {
                    addrs.push(*addr);
                }
            }
        }
        match canonical {
            Some(canonical) => HostAnswer::Found { addrs, canonical },
            None => HostAnswer::NotFound,
        }
    }
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
        match hosts.lookup("LOCALHOST", Family::Any) {
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
        assert_eq!(hosts.lookup("loopback", Family::V6), HostAnswer::NotFound);
        assert_eq!(hosts.lookup("nothere", Family::Any), HostAnswer::NotFound);
    }
}
