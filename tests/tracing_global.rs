//! A global subscriber installed inside `fibra::run` (e.g. `tracing_subscriber::fmt::init()` as
//! the first line of the run closure), with fibra's `fiber` spans filtered out: a span the root
//! fiber entered before its first park must not stay entered while other fibers run. In a test
//! binary of its own, because a global subscriber is for the whole process.
mod common;
use common::Watchdog;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// Each event's name and the names of its span scope from the root.
type Seen = Arc<Mutex<Vec<(String, Vec<String>)>>>;

struct Capture(Seen);
impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn enabled(&self, m: &Metadata<'_>, _: Context<'_, S>) -> bool {
        !m.target().starts_with("fibra") // a user filtering to their own crate
    }
    fn on_event(&self, e: &Event<'_>, ctx: Context<'_, S>) {
        let scope = ctx
            .event_scope(e)
            .map(|s| s.from_root().map(|s| s.name().to_string()).collect())
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push((e.metadata().name().to_string(), scope));
    }
}

#[test]
fn a_subscriber_installed_inside_run_keeps_spans_per_fiber() {
    let _w = Watchdog::new(Duration::from_secs(10));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sub = Registry::default().with(Capture(seen.clone()));
    fibra::run(move || {
        tracing::subscriber::set_global_default(sub).unwrap();
        let other = fibra::spawn(|| {
            std::thread::sleep(Duration::from_millis(10));
            tracing::info!(name: "in_other", "other fiber");
        });
        let _g = tracing::info_span!("root_request").entered();
        std::thread::sleep(Duration::from_millis(50));
        drop(_g);
        other.join().unwrap();
    });
    let seen = seen.lock().unwrap();
    let ev = seen
        .iter()
        .find(|(n, _)| n == "in_other")
        .expect("event captured");
    assert!(
        !ev.1.iter().any(|s| s == "root_request"),
        "other fiber's event logged inside the root fiber's span: {:?}",
        ev.1
    );
}
