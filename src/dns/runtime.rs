//! hickory's `RuntimeProvider` on fibra: UDP sockets, TCP streams, timers and spawning, all
//! driven by [`super::driver`] on the calling thread's scheduler.
//!
//! Sockets are mio's non-blocking std wrappers. Each `poll_*` method tries the call; on
//! `WouldBlock` it registers the fd and the task's waker with the driver, whose pump parks on
//! the fd through the scheduler's epoll and wakes the waker when it may be ready. Closing a
//! socket forgets its registration. Timers are deadlines in the driver's timer table.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use fibra_shim::{Deadline, Readiness};
use hickory_resolver::net::runtime::{DnsTcpStream, DnsUdpSocket, RuntimeProvider, Spawn, Time};

use super::driver::{self, TimerKey};

/// hickory's runtime on fibra. Stateless: everything lives in the thread's driver.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FibraRuntime;

/// Spawns hickory's background tasks into the thread's driver.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FibraHandle;

impl Spawn for FibraHandle {
    fn spawn_bg(&mut self, future: impl Future<Output = ()> + Send + 'static) {
        driver::spawn(future);
    }
}

/// A future that completes at a deadline.
pub(crate) struct Sleep {
    deadline: Deadline,
    key: Option<TimerKey>,
}

impl Sleep {
    pub(crate) fn new(duration: Duration) -> Sleep {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Sleep {
            deadline: Deadline::now().after(ns),
            key: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Deadline::now() >= self.deadline {
            if let Some(key) = self.key.take() {
                driver::cancel_timer(key);
            }
            return Poll::Ready(());
        }
        match self.key {
            Some(key) => driver::update_timer(key, cx.waker()),
            None => self.key = driver::register_timer(self.deadline, cx.waker()),
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            driver::cancel_timer(key);
        }
    }
}

/// `future` or a time-out error after `duration`, whichever comes first.
struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Sleep,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, io::Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "future timed out",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// hickory's timer on fibra.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FibraTime;

#[async_trait]
impl Time for FibraTime {
    async fn delay_for(duration: Duration) {
        Sleep::new(duration).await
    }

    async fn timeout<F: 'static + Future + Send>(
        duration: Duration,
        future: F,
    ) -> Result<F::Output, io::Error> {
        Timeout {
            future: Box::pin(future),
            sleep: Sleep::new(duration),
        }
        .await
    }
}

/// A non-blocking UDP socket whose waits go through the driver.
pub(crate) struct FibraUdp {
    socket: mio::net::UdpSocket,
}

impl Drop for FibraUdp {
    fn drop(&mut self) {
        driver::deregister_io(self.socket.as_raw_fd());
    }
}

impl DnsUdpSocket for FibraUdp {
    type Time = FibraTime;

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        loop {
            match self.socket.recv_from(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    driver::register_io(self.socket.as_raw_fd(), Readiness::READABLE, cx.waker());
                    return Poll::Pending;
                }
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.socket.send_to(buf, target) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    driver::register_io(self.socket.as_raw_fd(), Readiness::WRITABLE, cx.waker());
                    return Poll::Pending;
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

/// A non-blocking TCP stream whose waits go through the driver.
pub(crate) struct FibraTcp {
    stream: mio::net::TcpStream,
}

impl Drop for FibraTcp {
    fn drop(&mut self) {
        driver::deregister_io(self.stream.as_raw_fd());
    }
}

impl FibraTcp {
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        interest: Readiness,
        mut op: impl FnMut(&mut mio::net::TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            match op(&mut self.stream) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    driver::register_io(self.stream.as_raw_fd(), interest, cx.waker());
                    return Poll::Pending;
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

impl futures_io::AsyncRead for FibraTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, Readiness::READABLE, |s| s.read(buf))
    }
}

impl futures_io::AsyncWrite for FibraTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, Readiness::WRITABLE, |s| s.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.stream.shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

impl DnsTcpStream for FibraTcp {
    type Time = FibraTime;
}

/// Waits until a non-blocking `connect` finished (writable), then reports its outcome.
struct Connect {
    stream: Option<mio::net::TcpStream>,
}

impl Future for Connect {
    type Output = io::Result<FibraTcp>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(stream) = self.stream.as_ref() else {
            return Poll::Ready(Err(io::Error::other("connect polled after completion")));
        };
        let mut pfd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd; timeout 0 never blocks.
        let n = unsafe { fibra_shim::real::poll(&mut pfd, 1, 0) };
        if n <= 0 {
            driver::register_io(stream.as_raw_fd(), Readiness::WRITABLE, cx.waker());
            return Poll::Pending;
        }
        if let Some(e) = stream.take_error()? {
            return Poll::Ready(Err(e));
        }
        stream.peer_addr()?;
        let stream = self.stream.take().expect("checked above");
        Poll::Ready(Ok(FibraTcp { stream }))
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        if let Some(stream) = &self.stream {
            driver::deregister_io(stream.as_raw_fd());
        }
    }
}

/// hickory's default TCP connect time-out (its `CONNECT_TIMEOUT` is crate-private).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl RuntimeProvider for FibraRuntime {
    type Handle = FibraHandle;
    type Timer = FibraTime;
    type Udp = FibraUdp;
    type Tcp = FibraTcp;

    fn create_handle(&self) -> Self::Handle {
        FibraHandle
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Tcp, io::Error>>>> {
        Box::pin(async move {
            if bind_addr.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "fibra's resolver does not bind TCP connections to a local address",
                ));
            }
            let stream = mio::net::TcpStream::connect(server_addr)?;
            stream.set_nodelay(true)?;
            let connect = Connect {
                stream: Some(stream),
            };
            match FibraTime::timeout(timeout.unwrap_or(CONNECT_TIMEOUT), connect).await {
                Ok(result) => result,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TCP connect timed out",
                )),
            }
        })
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        _server_addr: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Udp, io::Error>>>> {
        Box::pin(async move {
            Ok(FibraUdp {
                socket: mio::net::UdpSocket::bind(local_addr)?,
            })
        })
    }
}
