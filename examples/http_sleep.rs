//! The seed talk's benchmark server: HTTP/1.1 with keep-alive, one fiber per connection, and
//! every request waits `--delay-ms` in a plain `std::thread::sleep` before answering `200`.
//!
//! With a thread pool of 16 such a server tops out at 16 / 0.1 s = 160 requests per second;
//! with fibers, every connection waits at once and 1000 clients get close to 10,000 req/s.
//! `--workers N` serves on N threads (each with its own `SO_REUSEPORT` listener); Ctrl-C cancels
//! every fiber and exits cleanly.
//!
//! ```text
//! cargo run --release --example http_sleep -- --addr 127.0.0.1:8080 --delay-ms 100 --workers 1
//! wrk -t1 -c1000 -d10s http://127.0.0.1:8080/
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;

mod support;
use std::time::Duration;

struct Args {
    addr: String,
    workers: usize,
    delay: Duration,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            addr: "127.0.0.1:8080".to_owned(),
            workers: 1,
            delay: Duration::from_millis(100),
        };
        let mut flags = support::Flags::new(
            "http_sleep",
            "[--addr HOST:PORT] [--delay-ms MS] [--workers N]   (defaults 127.0.0.1:8080, 100, 1)",
        );
        while let Some(flag) = flags.next_flag() {
            match flag.as_str() {
                "--addr" => args.addr = flags.value("--addr", "HOST:PORT"),
                "--workers" => args.workers = flags.positive("--workers"),
                "--delay-ms" => {
                    args.delay = Duration::from_millis(flags.value("--delay-ms", "milliseconds"))
                }
                other => flags.unknown(other),
            }
        }
        args
    }
}

fn main() {
    let args = Args::parse();
    let delay = args.delay;
    support::serve("http_sleep", &args.addr, args.workers, move |conn| {
        serve(conn, delay)
    });
}

const BODY: &[u8] = b"slept\n";

/// Serves requests on one connection until the client closes it or asks to.
fn serve(mut conn: TcpStream, delay: Duration) {
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Parse what has arrived; read more while the head is incomplete.
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let (head_len, keep_alive, body_len) = match request.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let version = request.version.unwrap_or(1);
                let header = |name: &str| {
                    request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                };
                let connection = header("connection");
                let keep_alive = match version {
                    0 => connection.as_deref() == Some("keep-alive"),
                    _ => connection.as_deref() != Some("close"),
                };
                let body_len = header("content-length")
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                (len, keep_alive, body_len)
            }
            Ok(httparse::Status::Partial) => {
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
            Err(_) => {
                let _ = conn.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                return;
            }
        };
        // Skip the request body, if any.
        while buf.len() < head_len + body_len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_len + body_len);

        std::thread::sleep(delay);

        let mut response = Vec::with_capacity(128);
        let _ = write!(
            response,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n",
            BODY.len(),
            if keep_alive {
                ""
            } else {
                "connection: close\r\n"
            }
        );
        response.extend_from_slice(BODY);
        if conn.write_all(&response).is_err() || !keep_alive {
            return;
        }
    }
}
