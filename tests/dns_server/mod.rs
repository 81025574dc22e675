//! A local name server for tests and benches, built from hickory-proto message types: UDP on
//! 127.0.0.1 with an ephemeral port, answering every query after a fixed delay.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// Answers waiting for their send time: (due, bytes, peer), in due order (the delay is fixed).
type Outbox = (Mutex<VecDeque<(Instant, Vec<u8>, SocketAddr)>>, Condvar);

/// A name server on 127.0.0.1 (UDP and TCP, one port) that answers every query after `delay`:
/// - `hostN.test`: A 10.0.(N/256).(N%256), no AAAA (NOERROR, empty);
/// - `both.test`: A 10.1.1.1 and AAAA fd00::1;
/// - `v6only.test`: AAAA fd00::6 only;
/// - `alias.test`: CNAME `target.test`, whose A is 10.9.9.9;
/// - `big.test`: 40 A records, too many for UDP: truncated there, served over TCP;
/// - `nodata.test`: exists, no addresses;
/// - `servfail.test`: SERVFAIL;
/// - anything else: NXDOMAIN.
pub struct TestServer {
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
}

impl TestServer {
    /// Starts the server (two threads that live until the process exits).
    pub fn start(delay: Duration) -> TestServer {
        TestServer::start_on("127.0.0.1:0".parse().unwrap(), delay)
            .expect("bind the test name server")
    }

    /// Starts the server on `addr` (glibc's resolver only speaks to port 53).
    pub fn start_on(addr: SocketAddr, delay: Duration) -> std::io::Result<TestServer> {
        // UDP and TCP on the same port (TCP carries answers too large for UDP).
        let (socket, listener) = loop {
            let socket = UdpSocket::bind(addr)?;
            match TcpListener::bind(socket.local_addr()?) {
                Ok(listener) => break (socket, listener),
                Err(e) if addr.port() != 0 => return Err(e),
                Err(_) => continue,
            }
        };
        let addr = socket.local_addr()?;
        let tcp_counter = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::clone(&tcp_counter);
        std::thread::Builder::new()
            .name("dns-test-tcp".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let counter = Arc::clone(&tcp_queries);
                    std::thread::spawn(move || serve_tcp(conn, &counter, delay));
                }
            })
            .unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let outbox: Arc<Outbox> = Arc::default();
        let sender_socket = socket.try_clone().unwrap();
        let sender_outbox = Arc::clone(&outbox);
        std::thread::Builder::new()
            .name("dns-test-sender".into())
            .spawn(move || {
                loop {
                    let (due, bytes, peer) = {
                        let (lock, cv) = &*sender_outbox;
                        let mut queue = lock.lock().unwrap();
                        loop {
                            if let Some(item) = queue.pop_front() {
                                break item;
                            }
                            queue = cv.wait(queue).unwrap();
                        }
                    };
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let _ = sender_socket.send_to(&bytes, peer);
                }
            })
            .unwrap();
        let counter = Arc::clone(&queries);
        std::thread::Builder::new()
            .name("dns-test-server".into())
            .spawn(move || {
                let mut buf = [0u8; 1500];
                loop {
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(query) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let reply = answer(&query, true);
                    let (lock, cv) = &*outbox;
                    lock.lock()
                        .unwrap()
                        .push_back((Instant::now() + delay, reply, peer));
                    cv.notify_one();
                }
            })
            .unwrap();
        Ok(TestServer {
            addr,
            queries,
            tcp_queries: tcp_counter,
        })
    }

    /// UDP queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// TCP queries received so far.
    pub fn tcp_queries(&self) -> usize {
        self.tcp_queries.load(Ordering::SeqCst)
    }
}

fn answer(query: &Message, udp: bool) -> Vec<u8> {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    let Some(q) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply.to_vec().unwrap();
    };
    reply.add_query(q.clone());
    let name = q.name.to_ascii().to_ascii_lowercase();
    let owner = q.name.clone();
    let rtype = q.query_type;
    let a = |owner: &Name, ip: Ipv4Addr| Record::from_rdata(owner.clone(), 60, RData::A(A(ip)));
    let aaaa =
        |owner: &Name, ip: Ipv6Addr| Record::from_rdata(owner.clone(), 60, RData::AAAA(AAAA(ip)));
    match name.as_str() {
        "both.test." => match rtype {
            RecordType::A => {
                reply.add_answer(a(&owner, Ipv4Addr::new(10, 1, 1, 1)));
            }
            RecordType::AAAA => {
                reply.add_answer(aaaa(&owner, "fd00::1".parse().unwrap()));
            }
            _ => {}
        },
        "v6only.test." => {
            if rtype == RecordType::AAAA {
                reply.add_answer(aaaa(&owner, "fd00::6".parse().unwrap()));
            }
        }
        "alias.test." => {
            let target = Name::from_ascii("target.test.").unwrap();
            reply.add_answer(Record::from_rdata(
                owner.clone(),
                60,
                RData::CNAME(CNAME(target.clone())),
            ));
            if rtype == RecordType::A {
                reply.add_answer(a(&target, Ipv4Addr::new(10, 9, 9, 9)));
            }
        }
        "big.test." => {
            // 40 addresses: over UDP only the truncation bit, so the client retries over TCP.
            if udp {
                reply.metadata.truncation = true;
                return reply.to_vec().unwrap();
            }
            if rtype == RecordType::A {
                for i in 1..=40 {
                    reply.add_answer(a(&owner, Ipv4Addr::new(10, 2, 0, i)));
                }
            }
        }
        "nodata.test." => {}
        "servfail.test." => reply.metadata.response_code = ResponseCode::ServFail,
        other => match other
            .strip_prefix("host")
            .and_then(|rest| rest.strip_suffix(".test."))
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(n) => {
                if rtype == RecordType::A {
                    reply.add_answer(a(&owner, host_ip(n)));
                }
            }
            None => reply.metadata.response_code = ResponseCode::NXDomain,
        },
    }
    if reply.answers.is_empty() && reply.metadata.response_code != ResponseCode::ServFail {
        // Negative answers carry the zone's SOA, whose minimum is the negative-cache TTL.
        let zone = Name::from_ascii("test.").unwrap();
        let soa = SOA::new(
            Name::from_ascii("ns.test.").unwrap(),
            Name::from_ascii("admin.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            60,
        );
        reply.add_authority(Record::from_rdata(zone, 60, RData::SOA(soa)));
    }
    reply.to_vec().unwrap()
}

/// One TCP connection: length-prefixed queries, answered in order after `delay`.
fn serve_tcp(mut conn: TcpStream, counter: &AtomicUsize, delay: Duration) {
    loop {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if conn.read_exact(&mut buf).is_err() {
            return;
        }
        let Ok(query) = Message::from_vec(&buf) else {
            return;
        };
        counter.fetch_add(1, Ordering::SeqCst);
        let reply = answer(&query, false);
        std::thread::sleep(delay);
        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if conn.write_all(&out).is_err() {
            return;
        }
    }
}

/// The address `hostN.test` resolves to.
pub fn host_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, (n / 256) as u8, (n % 256) as u8)
}
