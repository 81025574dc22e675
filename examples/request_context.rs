//! Request context that survives interleaving: a small TCP server whose handlers block, spawn
//! child fibers and log with `tracing`, and every log line carries its request's id.
//!
//! Two mechanisms, side by side:
//! - a `request{id=..}` span entered by the handler: fibra keeps it the handler's current span
//!   across every switch and makes it the parent of the fibers the handler spawns, so each log
//!   line of the request's work, children included, is prefixed with it;
//! - a `FiberLocal` holding the request id, read deep in the call stack (`audit`) without
//!   passing it down, and inherited by the children.
//!
//! The server (plain `std::net`, a fiber per connection) accepts `REQUESTS` connections from
//! client fibers that arrive over time, serves them concurrently on one thread, checks that
//! every response went to the right client and that every log line names its request and
//! mentions no other, and exits.
//!
//! Run: `cargo run --example request_context` (with `FIBRA_EXAMPLE_VERBOSE=1`, fibra's own
//! TRACE events, spawn, park and finish, show up too, each inside its fiber's span).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fibra::FiberLocal;
use tracing::{info, info_span, warn};

const REQUESTS: u64 = 12;

/// The request being served by this fiber (and its children).
static REQUEST_ID: FiberLocal<u64> = FiberLocal::new();

/// Deep in the stack: no id parameter, yet always the right request.
fn audit(what: &str) {
    let id = REQUEST_ID.get().expect("audit runs inside a request");
    info!(audit.request = id, "{what}");
}

/// A "database query": blocks with a plain std sleep, which parks only this fiber.
fn query(table: &str, micros: u64) -> String {
    info!(table, "query started");
    std::thread::sleep(Duration::from_micros(micros));
    audit("query finished");
    format!("{table}-row-for-{}", REQUEST_ID.get().unwrap())
}

/// One connection: a line with the request id in, the response out.
fn serve(conn: TcpStream) {
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .expect("read the request");
    let id: u64 = line.trim().parse().expect("a request id");
    let response = handle(id);
    (&conn)
        .write_all(format!("{response}\n").as_bytes())
        .expect("send the response");
}

fn handle(id: u64) -> String {
    let span = info_span!("request", id);
    let _entered = span.enter();
    REQUEST_ID.set(id);
    info!("accepted");

    // Authentication blocks for a while; other requests run meanwhile.
    std::thread::sleep(Duration::from_millis(3 + id % 4));
    audit("authenticated");

    // Two child fibers in parallel; each starts with this request's id and logs inside its span.
    let user = fibra::spawn(move || query("users", 500 + 300 * (id % 3)));
    let orders = fibra::spawn(move || query("orders", 400 + 250 * (id % 5)));
    let (user, orders) = (user.join().unwrap(), orders.join().unwrap());

    fibra::yield_now();
    if REQUEST_ID.get() != Some(id) {
        warn!("context lost"); // never happens
    }
    info!(%user, %orders, "responding");
    format!("response to {id}: {user}, {orders}")
}

fn main() {
    let verbose = std::env::var_os("FIBRA_EXAMPLE_VERBOSE").is_some();
    let level = if verbose {
        tracing::Level::TRACE
    } else {
        tracing::Level::INFO
    };
    let log = Tee::default();
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_writer(log.clone())
        .init();

    let start = Instant::now();
    let responses = fibra::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound");
        let server = fibra::spawn(move || {
            let handlers: Vec<_> = (1..=REQUESTS)
                .map(|n| {
                    let (conn, _) = listener.accept().expect("accept");
                    fibra::Builder::new()
                        .name(format!("conn-{n}"))
                        .spawn(move || serve(conn))
                        .expect("stack for a handler")
                })
                .collect();
            for h in handlers {
                h.join().expect("handler panicked");
            }
        });
        let clients: Vec<_> = (1..=REQUESTS)
            .map(|id| {
                // Clients arrive 1 ms apart, while earlier requests are still being served.
                std::thread::sleep(Duration::from_millis(1));
                fibra::spawn(move || {
                    let mut conn = TcpStream::connect(addr).expect("connect");
                    writeln!(conn, "{id}").expect("send the request");
                    let mut response = String::new();
                    conn.read_to_string(&mut response)
                        .expect("read the response");
                    (id, response.trim_end().to_owned())
                })
            })
            .collect();
        let responses: Vec<_> = clients
            .into_iter()
            .map(|c| c.join().expect("client panicked"))
            .collect();
        server.join().expect("server panicked");
        responses
    });

    for (id, response) in &responses {
        let expected = format!("response to {id}: users-row-for-{id}, orders-row-for-{id}");
        assert_eq!(response, &expected, "a response went to the wrong request");
    }
    let lines = check_log(&log.0.lock().unwrap());
    println!(
        "served {} requests concurrently in {:?}; all {lines} log lines carried their own request's id",
        responses.len(),
        start.elapsed()
    );
}

/// Checks that every line of the request log names one request, and that the ids the line
/// mentions (audited id, rows) are that request's. Returns the number of lines checked.
fn check_log(log: &[u8]) -> usize {
    let log = String::from_utf8_lossy(log);
    let mut checked = 0;
    for line in log.lines().filter(|l| !l.contains("TRACE")) {
        let id = number_after(line, "request{id=")
            .unwrap_or_else(|| panic!("a log line outside any request: {line}"));
        for marker in ["audit.request=", "row-for-"] {
            let mut rest = line;
            while let Some(at) = rest.find(marker) {
                rest = &rest[at + marker.len()..];
                assert_eq!(number_after(rest, ""), Some(id), "mixed up: {line}");
            }
        }
        checked += 1;
    }
    assert!(checked >= REQUESTS as usize * 7, "every request logged");
    checked
}

fn number_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Writes the log to stdout and keeps a copy to check.
#[derive(Clone, Default)]
struct Tee(Arc<Mutex<Vec<u8>>>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stdout().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Tee {
    type Writer = Tee;
    fn make_writer(&'a self) -> Tee {
        self.clone()
    }
}
