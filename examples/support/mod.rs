//! Shared by the server examples: serve connections with plain blocking code, one fiber per
//! connection, on every worker of a fibra runtime, each worker accepting on its own
//! `SO_REUSEPORT` listener; Ctrl-C cancels every fiber and ends the program cleanly.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::exit;
use std::str::FromStr;
use std::sync::{Arc, Mutex, mpsc};

/// Serves `addr` on `workers` workers, calling `handle` in a fresh fiber for every connection,
/// until Ctrl-C. Prints `listening on ADDR` once every worker listens.
pub fn serve(
    name: &'static str,
    addr: &str,
    workers: usize,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let handle: Handler = Arc::new(handle);
    let addr: SocketAddr = match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => addr,
        _ => {
            eprintln!("{name}: cannot resolve {addr}");
            exit(2);
        }
    };
    // Bind the first listener here, so that port 0 becomes a real port the others can share.
    let first = fibra::reuseport_listener(addr).unwrap_or_else(|e| {
        eprintln!("{name}: cannot listen on {addr}: {e}");
        exit(1);
    });
    let bound = first.local_addr().expect("bound");
    let first = Arc::new(Mutex::new(Some(first)));
    let rt = fibra::Runtime::new(workers).unwrap_or_else(|e| {
        eprintln!("{name}: cannot start {workers} workers: {e}");
        exit(1);
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let ready_tx = Mutex::new(ready_tx);
    let servers = rt.run_on_all(move |worker| {
        let listener = match first.lock().unwrap().take() {
            Some(listener) => listener,
            None => fibra::reuseport_listener(bound).unwrap_or_else(|e| {
                eprintln!("{name}: worker {worker} cannot listen on {bound}: {e}");
                exit(1);
            }),
        };
        let _ = ready_tx.lock().unwrap().send(());
        accept_loop(name, &listener, &handle);
    });
    for _ in 0..workers {
        ready_rx.recv().expect("every worker starts listening");
    }
    println!("listening on {bound}");

    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .expect("install the Ctrl-C handler");
    let _ = stop_rx.recv();
    eprintln!("{name}: shutting down");
    rt.shutdown_now();
    drop(servers);
}

type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

fn accept_loop(name: &str, listener: &TcpListener, handle: &Handler) {
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                let handle = Arc::clone(handle);
                fibra::spawn(move || handle(conn));
            }
            Err(_) if fibra::is_cancelled() => return,
            Err(e) => eprintln!("{name}: accept: {e}"),
        }
    }
}

/// The server examples' command line: `--flag value` pairs, and `-h`/`--help`.
pub struct Flags {
    name: &'static str,
    usage: &'static str,
    args: std::iter::Skip<std::env::Args>,
}

impl Flags {
    pub fn new(name: &'static str, usage: &'static str) -> Flags {
        Flags {
            name,
            usage,
            args: std::env::args().skip(1),
        }
    }

    /// The next flag; prints the usage and exits for `-h`/`--help`.
    pub fn next_flag(&mut self) -> Option<String> {
        let flag = self.args.next()?;
        if flag == "-h" || flag == "--help" {
            println!("usage: {} {}", self.name, self.usage);
            exit(0);
        }
        Some(flag)
    }

    /// The value of `flag`, parsed as `T` (`what` names it in the error).
    pub fn value<T: FromStr>(&mut self, flag: &str, what: &str) -> T {
        let Some(v) = self.args.next() else {
            self.error(&format!("{flag} needs a value"))
        };
        v.parse()
            .unwrap_or_else(|_| self.error(&format!("{flag} wants {what}, got '{v}'")))
    }

    /// The value of `flag` as a positive count.
    pub fn positive(&mut self, flag: &str) -> usize {
        match self.value(flag, "a positive number") {
            0 => self.error(&format!("{flag} wants a positive number, got '0'")),
            n => n,
        }
    }

    pub fn unknown(&self, flag: &str) -> ! {
        self.error(&format!("unknown argument '{flag}'"))
    }

    fn error(&self, msg: &str) -> ! {
        eprintln!("{}: {msg}; try --help", self.name);
        exit(2);
    }
}
