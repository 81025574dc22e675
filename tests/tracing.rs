//! Per-fiber tracing context: a span entered in a fiber stays that fiber's across switches, no
//! other fiber logs inside it, and a fiber's span has its spawner's current span as parent.
//! Checked with a capturing subscriber that records each event's full span scope.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Watchdog;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// One captured event: its message and its span scope from the root, as `name{field=value,..}`.
#[derive(Debug, Clone)]
struct Captured {
    message: String,
    scope: Vec<String>,
}

impl Captured {
    /// The spans named `name` in the scope.
    fn spans(&self, name: &str) -> Vec<&str> {
        self.scope
            .iter()
            .filter(|s| s.starts_with(&format!("{name}{{")))
            .map(String::as_str)
            .collect()
    }
}

/// Formats fields as `a=1,b=x`.
#[derive(Default)]
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        self.0.push_str(&format!("{}={:?}", field.name(), value));
    }
}

/// The message alone.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// Stores `name{field=value,..}` in a new span's extensions, for the layers below to report.
fn label_span<S>(attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let mut fields = Fields::default();
    attrs.record(&mut fields);
    let span = ctx.span(id).expect("new span exists");
    let label = format!("{}{{{}}}", span.name(), fields.0);
    span.extensions_mut().insert(label);
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        label_span(attrs, id, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target().starts_with("fibra") {
            return; // the scheduler's own trace events
        }
        let mut message = Message::default();
        event.record(&mut message);
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|span| {
                        span.extensions()
                            .get::<String>()
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.0.lock().unwrap().push(Captured {
            message: message.0,
            scope,
        });
    }
}

fn capturing() -> (Capture, impl Subscriber + Send + Sync) {
    let capture = Capture::default();
    (capture.clone(), Registry::default().with(capture))
}

#[test]
fn a_span_entered_in_a_fiber_stays_its_own_across_switches() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (capture, subscriber) = capturing();
    tracing::subscriber::with_default(subscriber, || {
        fibra::run(|| {
            let handles: Vec<_> = (0..20u64)
                .map(|req| {
                    fibra::spawn(move || {
                        let span = tracing::info_span!("request", req);
                        let _entered = span.enter();
                        for step in 0..5u64 {
                            tracing::info!("req={req} step={step}");
                            // Every kind of switch: a yield, a parking sleep.
                            if (req + step) % 2 == 0 {
                                fibra::yield_now();
                            } else {
                                std::thread::sleep(Duration::from_micros(100 * (req % 4)));
                            }
                        }
                        tracing::info!("req={req} done");
                    })
                })
                .collect();
            // A fiber with no span of its own logs while the others are parked in theirs.
            let bystander = fibra::spawn(|| {
                for _ in 0..10 {
                    tracing::info!("bystander");
                    fibra::yield_now();
                }
            });
            for h in handles {
                h.join().unwrap();
            }
            bystander.join().unwrap();
        });
    });
    let events = capture.take();
    let mut request_events = 0;
    for event in &events {
        let requests = event.spans("request");
        if event.message == "bystander" {
            assert!(requests.is_empty(), "bystander logged inside {requests:?}");
            assert_eq!(event.spans("fiber").len(), 2, "root > bystander: {event:?}");
            continue;
        }
        let req = event
            .message
            .strip_prefix("req=")
            .and_then(|m| m.split(' ').next())
            .expect("a request event");
        assert_eq!(
            requests,
            vec![format!("request{{req={req}}}").as_str()],
            "event {:?} carries exactly its own request span",
            event.message
        );
        request_events += 1;
    }
    assert_eq!(request_events, 20 * 6);
    assert_eq!(events.len(), 20 * 6 + 10);
}

#[test]
fn child_fibers_log_inside_the_spawners_current_span() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (capture, subscriber) = capturing();
    tracing::subscriber::with_default(subscriber, || {
        fibra::run(|| {
            let handlers: Vec<_> = (1..=5u64)
                .map(|req| {
                    fibra::Builder::new()
                        .name(format!("handler-{req}"))
                        .spawn(move || {
                            let span = tracing::info_span!("request", req);
                            let _entered = span.enter();
                            let _db = tracing::info_span!("db").entered();
                            let children: Vec<_> = (0..3)
                                .map(|c| {
                                    fibra::spawn(move || {
                                        std::thread::sleep(Duration::from_millis(c));
                                        tracing::info!("child of {req}");
                                        // A grandchild, spawned after the child switched.
                                        fibra::spawn(move || {
                                            fibra::yield_now();
                                            tracing::info!("grandchild of {req}");
                                        })
                                        .join()
                                        .unwrap();
                                    })
                                })
                                .collect();
                            for c in children {
                                c.join().unwrap();
                            }
                            // Parked with two spans entered; both are back, in order.
                            tracing::info!("handler of {req}");
                        })
                        .unwrap()
                })
                .collect();
            for h in handlers {
                h.join().unwrap();
            }
        });
    });
    let events = capture.take();
    assert_eq!(events.len(), 5 * 3 * 2 + 5);
    for event in &events {
        let req = event.message.rsplit(' ').next().unwrap();
        // root fiber > handler fiber > request > db [> child fiber [> grandchild fiber]]
        let expected_depth = match event.message.split(' ').next() {
            Some("handler") => 4,
            Some("child") => 5,
            _ => 6,
        };
        assert_eq!(event.scope.len(), expected_depth, "{event:?}");
        assert!(event.scope[0].starts_with("fiber{") && event.scope[0].contains("name=\"root\""));
        assert!(event.scope[1].contains(&format!("name=\"handler-{req}\"")));
        assert_eq!(event.scope[2], format!("request{{req={req}}}"), "{event:?}");
        assert_eq!(event.scope[3], "db{}");
        assert!(event.scope[4..].iter().all(|s| s.starts_with("fiber{")));
    }
}

#[test]
fn a_span_entered_around_run_is_the_root_fibers_parent_and_is_current_again_after() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (capture, subscriber) = capturing();
    tracing::subscriber::with_default(subscriber, || {
        let outer = tracing::info_span!("outer");
        let _entered = outer.enter();
        fibra::run(|| {
            let inner = tracing::info_span!("inner");
            let _inner = inner.enter();
            fibra::spawn(|| tracing::info!("in child")).join().unwrap();
            fibra::yield_now();
            tracing::info!("in root");
        });
        tracing::info!("after run");
        assert_eq!(tracing::Span::current().metadata().unwrap().name(), "outer");
    });
    let scopes: Vec<(String, Vec<String>)> = capture
        .take()
        .into_iter()
        .map(|e| (e.message, e.scope.iter().map(|s| without_ids(s)).collect()))
        .collect();
    let expected = [
        (
            "in child",
            &[
                "outer{}",
                "fiber{id=_,name=\"root\"}",
                "inner{}",
                "fiber{id=_}",
            ][..],
        ),
        (
            "in root",
            &["outer{}", "fiber{id=_,name=\"root\"}", "inner{}"][..],
        ),
        ("after run", &["outer{}"][..]),
    ];
    let expected: Vec<(String, Vec<String>)> = expected
        .iter()
        .map(|(m, s)| (m.to_string(), s.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(scopes, expected);
}

/// `fiber{id=7,name="x"}` without the process-wide id: `fiber{id=_,name="x"}`.
fn without_ids(span: &str) -> String {
    let mut out = String::new();
    let mut rest = span;
    while let Some(at) = rest.find("id=") {
        out.push_str(&rest[..at + 3]);
        out.push('_');
        rest = rest[at + 3..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

#[test]
fn user_spans_stay_per_fiber_when_the_fiber_spans_are_filtered_out() {
    use tracing_subscriber::filter::LevelFilter;
    let _w = Watchdog::new(Duration::from_secs(60));
    let capture = Capture::default();
    // `fiber` spans are INFO: disabled here; the requests' WARN spans are not.
    let subscriber = Registry::default()
        .with(LevelFilter::WARN)
        .with(capture.clone());
    tracing::subscriber::with_default(subscriber, || {
        fibra::run(|| {
            let handles: Vec<_> = (0..10u64)
                .map(|req| {
                    fibra::spawn(move || {
                        let _entered = tracing::warn_span!("request", req).entered();
                        for _ in 0..3 {
                            tracing::warn!("req={req}");
                            std::thread::sleep(Duration::from_micros(50 * (10 - req)));
                        }
                        let child = fibra::spawn(move || tracing::warn!("req={req}"));
                        child.join().unwrap();
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        });
    });
    let events = capture.take();
    assert_eq!(events.len(), 10 * 4);
    for event in events {
        let req = event.message.strip_prefix("req=").unwrap();
        assert_eq!(event.scope, vec![format!("request{{req={req}}}")]);
    }
}

#[test]
fn spans_a_finished_fiber_left_entered_do_not_leak_into_other_fibers() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (capture, subscriber) = capturing();
    tracing::subscriber::with_default(subscriber, || {
        fibra::run(|| {
            fibra::spawn(|| {
                // A leaked guard: the span stays entered when the fiber ends.
                std::mem::forget(tracing::info_span!("leaked").entered());
                fibra::yield_now();
            })
            .join()
            .unwrap();
            fibra::spawn(|| tracing::info!("later fiber"))
                .join()
                .unwrap();
            tracing::info!("root");
        });
        tracing::info!("after run");
        assert!(
            tracing::Span::current().is_none(),
            "the thread's stack is clean"
        );
    });
    for event in capture.take() {
        assert!(event.spans("leaked").is_empty(), "{event:?}");
    }
}

#[test]
fn without_a_subscriber_fibers_switch_and_spans_are_inert() {
    let _w = Watchdog::new(Duration::from_secs(60));
    // No subscriber on this thread (tests run on their own threads; none sets a global one).
    let order = fibra::run(|| {
        let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let log = std::rc::Rc::clone(&log);
                fibra::spawn(move || {
                    let _e = tracing::info_span!("request", i).entered();
                    for step in 0..2 {
                        log.borrow_mut().push((i, step));
                        fibra::yield_now();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        log.take()
    });
    assert_eq!(order, vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]);
}

/// Records fibra's own TRACE events: message and the name of the innermost span.
#[derive(Clone, Default)]
struct SchedulerEvents(Arc<Mutex<Vec<(String, String)>>>);

impl<S> Layer<S> for SchedulerEvents
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        label_span(attrs, id, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with("fibra") {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let innermost = ctx
            .event_span(event)
            .and_then(|span| span.extensions().get::<String>().cloned())
            .unwrap_or_default();
        self.0.lock().unwrap().push((message.0, innermost));
    }
}

#[test]
fn park_and_resume_are_traced_inside_the_fibers_span() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let events = SchedulerEvents::default();
    let subscriber = Registry::default().with(events.clone());
    tracing::subscriber::with_default(subscriber, || {
        fibra::run(|| {
            fibra::Builder::new()
                .name("sleeper".into())
                .spawn(|| std::thread::sleep(Duration::from_millis(5)))
                .unwrap()
                .join()
                .unwrap();
        })
    });
    let events = events.0.lock().unwrap();
    let in_sleeper = |message: &str| {
        events.iter().any(|(m, span)| {
            m == message && span.starts_with("fiber{") && span.contains("name=\"sleeper\"")
        })
    };
    assert!(in_sleeper("park"), "{events:?}");
    assert!(in_sleeper("resume"), "{events:?}");
}
