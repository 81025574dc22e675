//! An echo server in plain `std::net` code, one fiber per connection, all on one thread.
//!
//! Nothing here knows about fibers: `support::serve` runs the accept loop on every worker of a
//! fibra runtime (`--workers N`, each worker with its own `SO_REUSEPORT` listener) and spawns a
//! fiber per connection; the blocking `accept`, `read` and `write_all` park only the fiber that
//! makes them. Ctrl-C cancels every fiber and exits cleanly.
//!
//! ```text
//! cargo run --release --example echo_server -- --addr 127.0.0.1:7000 --workers 2
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;

mod support;

struct Args {
    addr: String,
    workers: usize,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            addr: "127.0.0.1:7000".to_owned(),
            workers: 1,
        };
        let mut flags = support::Flags::new(
            "echo_server",
            "[--addr HOST:PORT] [--workers N]   (defaults 127.0.0.1:7000, 1)",
        );
        while let Some(flag) = flags.next_flag() {
            match flag.as_str() {
                "--addr" => args.addr = flags.value("--addr", "HOST:PORT"),
                "--workers" => args.workers = flags.positive("--workers"),
                other => flags.unknown(other),
            }
        }
        args
    }
}

fn main() {
    let args = Args::parse();
    support::serve("echo_server", &args.addr, args.workers, echo);
}

/// Sends back everything the peer sends, until it closes.
fn echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
