//! Name resolution in fibers: `getaddrinfo` answered on the scheduler's own loop.
//!
//! The shim hands every `getaddrinfo` made in a fiber to `resolve` (through
//! `Hook::resolve`). The query goes through glibc's exact semantics (`gai`); host names are
//! looked up in `/etc/hosts` (`hosts`) and in DNS with glibc's search rules (`search`),
//! through hickory-resolver, whose futures run inside the calling fiber on fibra's runtime
//! (`runtime`, `driver`): a thousand concurrent lookups are a thousand parked fibers and a
//! thousand UDP sockets behind one epoll fd in the loop, not threads. A caller short of stack
//! has its lookup run on a fiber of its own.
//!
//! Each thread has its own resolver (and so its own cache), built from `config` at the first
//! lookup and rebuilt when a setting changes. When there is no usable configuration, or the
//! query needs something only glibc does (IDN flags, NSS sources other than `files` and `dns`,
//! `/etc/gai.conf` tables), glibc's own `getaddrinfo` runs on a helper thread while the fiber
//! parks. Nothing here panics into the shim: a panic is caught and reported as `EAI_FAIL`.

mod config;
mod driver;
mod gai;
mod hosts;
mod runtime;
mod search;

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use fibra_shim::dns::{GaiError, ResolveQuery, Resolved};
use fibra_shim::{BlockingCall, Hook};
use hickory_resolver::Resolver;

use crate::fiber::{WaitReason, Wake, WakeToken};
use crate::scheduler::Scheduler;

use config::{Plan, Source};
pub use config::{
    reset_nameservers, reset_thread_nameservers, set_nameservers, set_thread_nameservers,
};
use gai::{Family, HostAnswer, HostLookup};

type FibraResolver = Resolver<runtime::FibraRuntime>;

/// The calling thread's resolver state.
struct State {
    generation: ((u64, u64), u64),
    plan: Built,
    hosts: hosts::HostsFile,
}

enum Built {
    Own {
        resolver: Arc<FibraResolver>,
        order: Vec<Source>,
        search: Arc<search::SearchList>,
    },
    Glibc(String),
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Drops the calling thread's resolver and its cache; the next lookup builds a fresh one.
pub fn clear_cache() {
    let state = STATE.with(|s| s.borrow_mut().take());
    drop(state);
}

/// Stack a lookup needs below the caller's frame: hickory's futures, polled in the calling
/// fiber, take ~128 KiB in a debug build (less optimised), and a thread's first lookup also
/// builds its resolver.
const LOOKUP_STACK_NEED: usize = 192 * 1024;
/// The stack of the fiber a lookup moves to when the caller has less than that left.
const LOOKUP_STACK: usize = crate::DEFAULT_STACK_SIZE;

/// Answers a `getaddrinfo` made by the running fiber of `sched` (the shim's `Hook::resolve`).
pub(crate) fn resolve(sched: &Scheduler, query: &ResolveQuery<'_>) -> Result<Resolved, GaiError> {
    if stack_left(sched) >= LOOKUP_STACK_NEED {
        return never_unwinds(|| resolve_in_fiber(sched, query));
    }
    on_lookup_fiber(sched, query)
}

/// Bytes of stack left below this frame in the running fiber.
fn stack_left(sched: &Scheduler) -> usize {
    let marker = 0u8;
    let here = std::ptr::addr_of!(marker) as usize;
    sched
        .current_fiber()
        .map_or(usize::MAX, |fiber| here.saturating_sub(fiber.guard.1))
}

/// A query with owned strings, to hand to another fiber.
struct OwnedQuery {
    node: Option<CString>,
    service: Option<CString>,
    flags: libc::c_int,
    family: libc::c_int,
    socktype: libc::c_int,
    protocol: libc::c_int,
    has_hints: bool,
}

impl OwnedQuery {
    fn new(q: &ResolveQuery<'_>) -> OwnedQuery {
        OwnedQuery {
            node: q.node.map(CStr::to_owned),
            service: q.service.map(CStr::to_owned),
            flags: q.flags,
            family: q.family,
            socktype: q.socktype,
            protocol: q.protocol,
            has_hints: q.has_hints,
        }
    }

    fn query(&self) -> ResolveQuery<'_> {
        ResolveQuery {
            node: self.node.as_deref(),
            service: self.service.as_deref(),
            flags: self.flags,
            family: self.family,
            socktype: self.socktype,
            protocol: self.protocol,
            has_hints: self.has_hints,
        }
    }
}

/// Runs the lookup on a fiber with a stack of its own (the caller's is too short) and parks the
/// caller until it is done. The caller's wait is interruptible like a lookup's own: a timeout
/// or cancellation of the caller cancels the lookup fiber, whose lookup then ends with
/// `EAI_AGAIN`.
fn on_lookup_fiber(sched: &Scheduler, query: &ResolveQuery<'_>) -> Result<Resolved, GaiError> {
    struct Shared {
        result: RefCell<Option<Result<Resolved, GaiError>>>,
        done: Cell<bool>,
        waiter: Cell<Option<WakeToken>>,
    }
    let shared = Rc::new(Shared {
        result: RefCell::new(None),
        done: Cell::new(false),
        waiter: Cell::new(None),
    });
    let owned = OwnedQuery::new(query);
    let theirs = Rc::clone(&shared);
    let spawned = crate::Builder::new()
        .name("fibra-dns-lookup".to_owned())
        .stack_size(LOOKUP_STACK)
        .spawn(move || {
            fibra_shim::without_hook(|| {
                let Some(sched) = Scheduler::current() else {
                    return;
                };
                let query = owned.query();
                let result = never_unwinds(|| resolve_in_fiber(sched, &query));
                *theirs.result.borrow_mut() = Some(result);
                theirs.done.set(true);
                if let Some(token) = theirs.waiter.take() {
                    sched.unpark(token, Wake::Ready);
                }
            })
        });
    let handle = match spawned {
        Ok(handle) => handle,
        Err(e) => {
            return Err(GaiError {
                code: libc::EAI_SYSTEM,
                errno: e.raw_os_error().unwrap_or(libc::ENOMEM),
            });
        }
    };
    while !shared.done.get() {
        let token = sched.prepare_park();
        shared.waiter.set(Some(token));
        if sched
            .park_interruptible(token, WaitReason::Resolve, None)
            .is_err()
        {
            shared.waiter.set(None);
            handle.cancel();
            break;
        }
    }
    // After a cancel, wait (not interruptibly) for the lookup fiber to let go of its sockets.
    let _ = handle.join();
    let result = shared.result.borrow_mut().take();
    result.unwrap_or(Err(GaiError::eai(libc::EAI_AGAIN)))
}

/// Runs `lookup`, turning a panic into `EAI_FAIL`: a hook must not unwind into the caller's C
/// frames (the panic hook has already reported it).
fn never_unwinds(
    lookup: impl FnOnce() -> Result<Resolved, GaiError>,
) -> Result<Resolved, GaiError> {
    catch_unwind(AssertUnwindSafe(lookup)).unwrap_or(Err(GaiError::eai(libc::EAI_FAIL)))
}

fn resolve_in_fiber(sched: &Scheduler, query: &ResolveQuery<'_>) -> Result<Resolved, GaiError> {
    if gai::needs_glibc(query) {
        return glibc_on_helper(sched, query);
    }
    // A forked child builds its own resolver and driver: the inherited ones share sockets and
    // an epoll instance with the parent.
    driver::leave_parent_if_forked();
    let generation = (config::generation(), driver::fork_generation());
    let own = STATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|s| s.generation != generation) {
            let plan = match config::plan() {
                Plan::Own {
                    config,
                    options,
                    order,
                } => {
                    // glibc: the `search` line, else the `domain` line.
                    let mut domains = config.search().to_vec();
                    if domains.is_empty() {
                        domains.extend(config.domain().cloned());
                    }
                    let search = Arc::new(search::SearchList {
                        domains,
                        ndots: options.ndots,
                    });
                    let mut builder =
                        FibraResolver::builder_with_config(*config, runtime::FibraRuntime);
                    *builder.options_mut() = *options;
                    match builder.build() {
                        Ok(resolver) => Built::Own {
                            resolver: Arc::new(resolver),
                            order,
                            search,
                        },
                        Err(e) => Built::Glibc(format!("hickory-resolver: {e}")),
                    }
                }
                Plan::Glibc(reason) => Built::Glibc(reason),
            };
            if let Built::Glibc(reason) = &plan {
                tracing::debug!(%reason, "fibra dns: lookups run glibc's getaddrinfo on a helper thread");
            }
            *cell = Some(State {
                generation,
                plan,
                hosts: hosts::HostsFile::default(),
            });
        }
        let state = cell.as_mut().expect("just built");
        match &state.plan {
            Built::Own {
                resolver,
                order,
                search,
            } => {
                if order.contains(&Source::Files) {
                    state.hosts.refresh(Path::new("/etc/hosts"));
                }
                Some((Arc::clone(resolver), order.clone(), Arc::clone(search)))
            }
            Built::Glibc(_) => None,
        }
    })
    ;
    let Some((resolver, order, search)) = own else {
        return glibc_on_helper(sched, query);
    };
    let mut lookup = NssLookup {
        sched,
        resolver,
        order,
        search,
    };
    gai::getaddrinfo(query, &mut lookup)
}

/// glibc's `getaddrinfo`, run on a helper thread while the calling fiber parks.
fn glibc_on_helper(sched: &Scheduler, query: &ResolveQuery<'_>) -> Result<Resolved, GaiError> {
    struct Slot(Option<Result<Resolved, GaiError>>);
    // SAFETY: the result holds a glibc list (plain heap memory) handed from the helper thread
    // to this one; nothing in it is tied to the thread that made it.
    unsafe impl Send for Slot {}
    impl Slot {
        fn fill(&mut self, query: &ResolveQuery<'_>) {
            self.0 = Some(fibra_shim::dns::libc_resolve(query));
        }
    }
    let mut slot = Slot(None);
    let query = *query;
    let mut call = || slot.fill(&query);
    Hook::run_blocking(sched, &mut call, BlockingCall::GetAddrInfo);
    slot.0.unwrap_or(Err(GaiError::eai(libc::EAI_FAIL)))
}

/// The NSS `hosts` database as fibra implements it: `/etc/hosts` and DNS, in nsswitch order.
struct NssLookup<'a> {
    sched: &'a Scheduler,
    resolver: Arc<FibraResolver>,
    order: Vec<Source>,
    search: Arc<search::SearchList>,
}

impl NssLookup<'_> {
    fn ask(&self, source: Source, name: &str, family: Family) -> Result<HostAnswer, GaiError> {
        match source {
            Source::Files => Ok(STATE.with(|s| {
                s.borrow()
                    .as_ref()
                    .map_or(HostAnswer::NotFound, |s| s.hosts.lookup(name, family))
            })),
            Source::Dns => {
                let resolver = Arc::clone(&self.resolver);
                let search = Arc::clone(&self.search);
                let name = name.to_owned();
                let lookup = search::lookup(resolver, search, name, family);
                // No deadline of its own: hickory's time-outs and attempts (from resolv.conf)
                // bound the lookup. A `fibra::timeout` scope or a cancellation ends `block_on`
                // with `Interrupted`, dropping every socket and timer of the lookup: the whole
                // getaddrinfo then fails with EAI_AGAIN (no other source is asked).
                match driver::block_on(self.sched, lookup, None) {
                    Ok(answer) => Ok(answer),
                    Err(driver::Interrupted::TimedOut | driver::Interrupted::Cancelled) => {
                        Err(GaiError::eai(libc::EAI_AGAIN))
                    }
                    Err(driver::Interrupted::Failed(errno)) => Err(GaiError {
                        code: libc::EAI_SYSTEM,
                        errno,
                    }),
                }
            }
        }
    }
}

impl HostLookup for NssLookup<'_> {
    fn lookup(&mut self, name: &str, family: Family) -> Result<HostAnswer, GaiError> {
        let mut answer = HostAnswer::NotFound;
        for &source in &self.order {
            answer = self.ask(source, name, family)?;
            // glibc's default actions: only SUCCESS returns; every other status continues.
            if matches!(answer, HostAnswer::Found { .. }) {
                break;
            }
        }
        Ok(answer)
    }

    fn lookup_mapped(
        &mut self,
        name: &str,
        all: bool,
    ) -> Result<(HostAnswer, HostAnswer), GaiError> {
        let mut answers = (HostAnswer::NotFound, HostAnswer::NotFound);
        for &source in &self.order {
            let six = self.ask(source, name, Family::V6)?;
            let found_six = matches!(six, HostAnswer::Found { .. });
            let four = if all || !found_six {
                self.ask(source, name, Family::V4)?
            } else {
                HostAnswer::NotFound
            };
            let found = found_six || matches!(four, HostAnswer::Found { .. });
            answers = (six, four);
            if found {
                break;
            }
        }
        Ok(answers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_lookup_is_reported_as_eai_fail() {
        let result = never_unwinds(|| panic!("a bug in the resolver path"));
        assert_eq!(result.unwrap_err(), GaiError::eai(libc::EAI_FAIL));
    }
}
