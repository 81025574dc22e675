//! An echo server in plain `std::net` code, one fiber per connection, all on one thread.
//!
//! Nothing here knows about fibers except `fibra::run` and `fibra::spawn`: the blocking
//! `accept`, `read` and `write_all` park only the fiber that makes them.
//!
//! ```text
//! cargo run --release --example echo_server -- --addr 127.0.0.1:7000
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::exit;

struct Args {
    addr: String,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            addr: "127.0.0.1:7000".to_owned(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--addr" => args.addr = value(&mut it, "--addr"),
                "-h" | "--help" => {
                    println!("usage: echo_server [--addr HOST:PORT]   (default 127.0.0.1:7000)");
                    exit(0);
                }
                other => usage_error(&format!("unknown argument '{other}'")),
            }
        }
        args
    }
}

fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> String {
    it.next()
        .unwrap_or_else(|| usage_error(&format!("{flag} needs a value")))
}

fn usage_error(msg: &str) -> ! {
    eprintln!("echo_server: {msg}; try --help");
    exit(2);
}

fn main() {
    let args = Args::parse();
    fibra::run(move || {
        let listener = TcpListener::bind(&args.addr).unwrap_or_else(|e| {
            eprintln!("echo_server: cannot listen on {}: {e}", args.addr);
            exit(1);
        });
        println!("listening on {}", listener.local_addr().expect("bound"));
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    fibra::spawn(move || echo(conn));
                }
                Err(e) => eprintln!("echo_server: accept: {e}"),
            }
        }
    });
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
