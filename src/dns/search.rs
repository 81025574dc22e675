//! DNS lookups as glibc's `dns` NSS module makes them.
//!
//! The search list and `ndots` are applied the way glibc's `res_search` applies them, so that
//! both the name that answers and the error reported when none does are glibc's: the name as
//! given first when it has at least `ndots` dots (or a trailing dot, which also ends the
//! search), then each search domain (a `NO_DATA`, `NXDOMAIN` or SERVFAIL answer moves on to the
//! next one; any other failure ends the search), then the name as given if not tried yet. When
//! nothing answers, the reason is the first as-is query's, else `NO_DATA` if any candidate had
//! no data, else SERVFAIL's `TRY_AGAIN`, else the last one's. hickory is only ever asked for
//! fully qualified names, so its own search logic never runs.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::FibraResolver;
use super::gai::{Family, HostAnswer};

/// The search list and `ndots` of the resolver configuration.
#[derive(Clone, Debug)]
pub(crate) struct SearchList {
    /// Search domains, fully qualified, in order.
    pub domains: Vec<Name>,
    pub ndots: usize,
}

/// The outcome of one query (or one A + AAAA pair), as glibc's resolver classifies it.
#[derive(Clone, Debug)]
enum Status {
    Found {
        addrs: Vec<IpAddr>,
        canonical: String,
    },
    /// NOERROR without an address: `NO_DATA`.
    NoData,
    /// NXDOMAIN: `HOST_NOT_FOUND`.
    NxDomain,
    /// SERVFAIL: `TRY_AGAIN`, and the search goes on.
    ServFail,
    /// A time-out: `TRY_AGAIN`, and the search ends.
    TimedOut,
    /// No server listening: `TRY_AGAIN`, and the lookup ends at once.
    Refused,
    /// FORMERR, NOTIMP, REFUSED and the like: `NO_RECOVERY`.
    NoRecovery,
}

impl Status {
    /// The answer for `h_errno` `self`, when the last query made ended as `last`.
    fn into_answer(self, last: &Status) -> HostAnswer {
        match self {
            Status::Found { addrs, canonical } => HostAnswer::Found { addrs, canonical },
            Status::NoData => HostAnswer::NoData,
            Status::NxDomain | Status::NoRecovery => HostAnswer::NotFound,
            Status::ServFail | Status::TimedOut | Status::Refused => HostAnswer::TryAgain {
                unavailable: last.failed_in_transport(),
            },
        }
    }

    /// glibc's res_send gave up on this query (the NSS status is then `UNAVAIL`).
    fn failed_in_transport(&self) -> bool {
        matches!(self, Status::ServFail | Status::TimedOut | Status::Refused)
    }
}

/// Looks `name` up in DNS for `family` with glibc's search rules.
pub(crate) async fn lookup(
    resolver: Arc<FibraResolver>,
    search: Arc<SearchList>,
    name: String,
    family: Family,
) -> HostAnswer {
    let trailing_dot = name.ends_with('.');
    let bare = name.trim_end_matches('.');
    let dots = bare.matches('.').count();
    let fqdn = |suffix: Option<&Name>| -> Option<Name> {
        let mut text = bare.to_owned();
        if let Some(domain) = suffix {
            let domain = domain.to_ascii();
            let domain = domain.trim_end_matches('.');
            if !domain.is_empty() {
                text.push('.');
                text.push_str(domain);
            }
        }
        text.push('.');
        // `from_ascii` keeps the spelling (see `query`); non-ASCII names go through IDNA.
        Name::from_ascii(&text)
            .or_else(|_| Name::from_str_relaxed(&text))
            .ok()
    };
    let Some(as_is) = fqdn(None) else {
        // Not a valid DNS name (glibc: res_mkquery fails, NO_RECOVERY).
        return HostAnswer::NotFound;
    };

    let mut saved = None;
    let mut tried_as_is = false;
    // The outcome of the last query made (glibc's NSS status follows it).
    let mut last = Status::NxDomain;
    if dots >= search.ndots || trailing_dot {
        let status = query_family(&resolver, &as_is, family).await;
        if matches!(status, Status::Found { .. } | Status::Refused) || trailing_dot {
            return status.clone().into_answer(&status);
        }
        saved = Some(status.clone());
        last = status;
        tried_as_is = true;
    }
    let mut got_nodata = false;
    let mut got_servfail = false;
    let mut root_on_list = false;
    for domain in &search.domains {
        if domain.is_root() {
            root_on_list = true;
            if tried_as_is {
                continue;
            }
        }
        let Some(candidate) = fqdn(Some(domain)) else {
            continue;
        };
        let status = query_family(&resolver, &candidate, family).await;
        match status {
            Status::Found { .. } | Status::Refused => return status.clone().into_answer(&status),
            Status::NoData => got_nodata = true,
            Status::NxDomain => {}
            Status::ServFail => got_servfail = true,
            Status::TimedOut | Status::NoRecovery => {
                last = status;
                break;
            }
        }
        last = status;
    }
    if !(tried_as_is || root_on_list) {
        let status = query_family(&resolver, &as_is, family).await;
        if matches!(status, Status::Found { .. } | Status::Refused) {
            return status.clone().into_answer(&status);
        }
        last = status;
    }
    let status = match saved {
        Some(saved) => saved,
        None if got_nodata => Status::NoData,
        None if got_servfail => Status::ServFail,
        None => last.clone(),
    };
    status.into_answer(&last)
}

/// One candidate name: A, AAAA, or both in parallel (glibc's `gethostbyname4_r`), IPv4
/// addresses first.
async fn query_family(resolver: &FibraResolver, name: &Name, family: Family) -> Status {
    match family {
        Family::V4 => query(resolver, name, RecordType::A).await,
        Family::V6 => query(resolver, name, RecordType::AAAA).await,
        Family::Any => {
            let (a, aaaa) = join(
                Box::pin(query(resolver, name, RecordType::A)),
                Box::pin(query(resolver, name, RecordType::AAAA)),
            )
            .await;
            merge(a, aaaa)
        }
    }
}

fn merge(a: Status, aaaa: Status) -> Status {
    match (a, aaaa) {
        (
            Status::Found {
                mut addrs,
                canonical,
            },
            Status::Found { addrs: more, .. },
        ) => {
            addrs.extend(more);
            Status::Found { addrs, canonical }
        }
        (found @ Status::Found { .. }, _) | (_, found @ Status::Found { .. }) => found,
        (Status::Refused, _) | (_, Status::Refused) => Status::Refused,
        (Status::NxDomain, _) | (_, Status::NxDomain) => Status::NxDomain,
        (Status::ServFail, _) | (_, Status::ServFail) => Status::ServFail,
        (Status::TimedOut, _) | (_, Status::TimedOut) => Status::TimedOut,
        (Status::NoRecovery, _) | (_, Status::NoRecovery) => Status::NoRecovery,
        (Status::NoData, Status::NoData) => Status::NoData,
    }
}

/// One query of a fully qualified name.
async fn query(resolver: &FibraResolver, name: &Name, record: RecordType) -> Status {
    match resolver.lookup(name.clone(), record).await {
        Ok(lookup) => {
            let mut addrs = Vec::new();
            let mut canonical = None;
            for rec in lookup.answers() {
                let ip = match (&rec.data, record) {
                    (RData::A(a), RecordType::A) => IpAddr::V4(a.0),
                    (RData::AAAA(a), RecordType::AAAA) => IpAddr::V6(a.0),
                    _ => continue,
                };
                canonical.get_or_insert_with(|| rec.name.to_ascii());
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
            match canonical {
                Some(canonical) => {
                    // A server answers with the question's spelling, which hickory's cache
                    // lowercases; glibc reports the answer's owner name, so when that is the
                    // queried name, report it as it was asked.
                    let owner = canonical.trim_end_matches('.');
                    let asked = name.to_ascii();
                    let asked = asked.trim_end_matches('.');
                    let canonical = if owner.eq_ignore_ascii_case(asked) {
                        asked.to_owned()
                    } else {
                        owner.to_owned()
                    };
                    Status::Found { addrs, canonical }
                }
                None => Status::NoData,
            }
        }
        Err(e) => classify(&e),
    }
}

/// glibc's `h_errno` for a failed query.
fn classify(error: &NetError) -> Status {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => {
            if nr.response_code == ResponseCode::NXDomain {
                Status::NxDomain
            } else {
                Status::NoData
            }
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => Status::ServFail,
        NetError::Dns(_) | NetError::Proto(_) => Status::NoRecovery,
        NetError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Status::Refused,
        _ => Status::TimedOut,
    }
}

/// Polls two futures until both are done.
async fn join<A: Future + Unpin, B: Future + Unpin>(mut a: A, mut b: B) -> (A::Output, B::Output) {
    let mut ra = None;
    let mut rb = None;
    std::future::poll_fn(|cx| {
        if ra.is_none()
            && let std::task::Poll::Ready(v) = std::pin::Pin::new(&mut a).poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let std::task::Poll::Ready(v) = std::pin::Pin::new(&mut b).poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    (ra.expect("ready"), rb.expect("ready"))
}
