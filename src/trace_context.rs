//! Per-fiber tracing context: each fiber's span, and the spans a fiber entered, kept entered
//! for that fiber alone across switches.
//!
//! tracing's "current span" is per thread (a subscriber keeps one span stack per thread), and
//! every fiber of a thread shares it. Left alone, a span a fiber entered before blocking would
//! stay on the stack while other fibers run, and their events would be logged inside it. So the
//! scheduler brackets every resumption:
//! - [`enter`]: enter the fiber's own span, note the span now current (the *floor*), then
//!   re-enter, bottom first, the spans the fiber had entered when it last switched out;
//! - [`leave`]: exit, top first, every span above the floor and remember them, then exit the
//!   fiber's span.
//!
//! Spans are found with `Subscriber::current_span`, which tracing-subscriber's `Registry` (and
//! so `fmt`) implements; a subscriber that does not track the current span reports none, and
//! its spans are then left as they are. When no subscriber enables anything (the
//! `LevelFilter::current()` is `OFF`), the bracket costs one relaxed atomic load.
//!
//! Each fiber's span (`fiber{id name}`) has as parent the span current where it was spawned,
//! so fields recorded on a request's span reach every event of the fibers it spawns. Where a
//! filter disables `fiber` spans, the fiber runs in the spawner's current span instead.

use std::cell::Cell;

use tracing::Span;
use tracing::dispatcher::{self, Dispatch};
use tracing::level_filters::LevelFilter;
use tracing::span::Id;

/// How many spans [`leave`] exits at most; bounds the loop for a subscriber whose `exit` does
/// not pop its current span. No real fiber nests spans this deep.
const MAX_PARKED_SPANS: usize = 256;

/// The span a new fiber runs in: `fiber{id, name}`, child of the span current at the spawn; or,
/// where `fiber` spans are filtered out, the span current at the spawn itself, so the child still
/// logs inside its spawner's context (its request span, say).
pub(crate) fn fiber_span(id: u64, name: Option<&str>) -> Span {
    if LevelFilter::current() == LevelFilter::OFF {
        return Span::none();
    }
    let parent = Span::current();
    let span = match name {
        Some(name) => tracing::info_span!(parent: &parent, "fiber", id, name),
        None => tracing::info_span!(parent: &parent, "fiber", id),
    };
    if span.is_disabled() { parent } else { span }
}

/// The spans a switched-out fiber had entered above its floor, if any. 16 bytes per fiber: the
/// record is allocated the first time the fiber parks with spans entered, and reused.
#[derive(Default)]
pub(crate) struct ParkedSpans {
    record: Cell<Option<Box<Parked>>>,
    /// Whether `record` holds spans to re-enter (readable on the fast path).
    any: Cell<bool>,
}

/// Spans a fiber had entered, top first, and the dispatcher whose stack they were on.
struct Parked {
    ids: Vec<Id>,
    dispatch: Option<Dispatch>,
}

impl ParkedSpans {
    pub fn new() -> ParkedSpans {
        ParkedSpans::default()
    }
}

/// What [`enter`] found, for the matching [`leave`].
pub(crate) enum Floor {
    /// Nothing is enabled anywhere: no span can have been entered.
    Off,
    /// The current span once the fiber's own span was entered; the fiber's entered spans are
    /// the ones above it.
    At(Option<Id>),
}

/// Enters the fiber's span and the spans it had entered when it last switched out.
#[inline]
pub(crate) fn enter(span: &Span, parked: &ParkedSpans) -> Floor {
    span.with_subscriber(|(id, dispatch)| dispatch.enter(id));
    if !parked.any.get() && LevelFilter::current() == LevelFilter::OFF {
        return Floor::Off;
    }
    enter_slow(span, parked)
}

#[cold]
fn enter_slow(span: &Span, parked: &ParkedSpans) -> Floor {
    // Just entered, the fiber's span is the current one (it is never on the stack below: a
    // `fiber` span is entered only by its own fiber, and the spawner's span used in its place
    // when those are filtered out is either off the stack or its top), so asking the
    // subscriber is needed only for a fiber without a span.
    let floor = match span.id() {
        Some(id) => Some(id),
        None => dispatcher::get_default(|d| d.current_span().id().cloned()),
    };
    let to_reenter = match parked.any.replace(false) {
        true => parked.record.take(),
        false => None,
    };
    if let Some(mut record) = to_reenter {
        if let Some(dispatch) = record.dispatch.take() {
            for id in record.ids.iter().rev() {
                dispatch.enter(id);
            }
        }
        record.ids.clear();
        parked.record.set(Some(record));
    }
    Floor::At(floor)
}

/// Exits the spans the fiber entered (remembering them in `parked` unless it `finished`; a
/// finished fiber's are leaked guards, exited for good), then the fiber's own span.
#[inline]
pub(crate) fn leave(span: &Span, parked: &ParkedSpans, floor: Floor, finished: bool) {
    match floor {
        Floor::At(floor) => leave_slow(parked, floor, finished),
        // A subscriber was installed while the fiber ran (say `fmt::init()` at the top of
        // `run`'s closure): every span on the thread's stack above the fiber's own was entered
        // by this fiber, and must not stay there for the next fiber to log inside.
        Floor::Off if LevelFilter::current() != LevelFilter::OFF => {
            leave_slow(parked, span.id(), finished)
        }
        Floor::Off => {}
    }
    span.with_subscriber(|(id, dispatch)| dispatch.exit(id));
}

#[cold]
fn leave_slow(parked: &ParkedSpans, floor: Option<Id>, finished: bool) {
    let mut record = parked.record.take();
    dispatcher::get_default(|d| {
        while record.as_ref().map_or(0, |r| r.ids.len()) < MAX_PARKED_SPANS {
            let current = d.current_span();
            match current.id() {
                Some(id) if Some(id) != floor.as_ref() => {
                    let id = id.clone();
                    d.exit(&id);
                    let record = record.get_or_insert_with(|| {
                        Box::new(Parked {
                            ids: Vec::new(),
                            dispatch: None,
                        })
                    });
                    record.ids.push(id);
                }
                _ => break,
            }
        }
        if let Some(record) = record.as_mut().filter(|r| !r.ids.is_empty()) {
            if finished {
                record.ids.clear();
            } else {
                record.dispatch = Some(d.clone());
                parked.any.set(true);
            }
        }
    });
    parked.record.set(record);
}
