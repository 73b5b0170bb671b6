//! The UDP and TCP listeners.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio::time::timeout;

use crate::answer::{self, MAX_TCP_MESSAGE, Outcome, Request};
use crate::forward::{forward, read_framed, write_framed};
use crate::{Dnsd, TCP_IDLE_TIMEOUT};

/// Where a forwarded query's reply goes.
enum ReplyTo {
    Udp(Arc<UdpSocket>, SocketAddr),
    Tcp(Arc<Mutex<OwnedWriteHalf>>),
}

impl ReplyTo {
    async fn send(&self, reply: &[u8]) {
        // A client that went away needs no error report.
        match self {
            ReplyTo::Udp(socket, peer) => {
                let _ = socket.send_to(reply, peer).await;
            }
            ReplyTo::Tcp(writer) => {
                let _ = send_tcp(writer, reply).await;
            }
        }
    }
}

/// The write is bounded too: a client that never reads must not hold a forward
/// slot for ever.
async fn send_tcp(writer: &Mutex<OwnedWriteHalf>, reply: &[u8]) -> io::Result<()> {
    let mut writer = writer.lock().await;
    timeout(TCP_IDLE_TIMEOUT, write_framed(&mut *writer, reply))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Whether serving goes on after `e`: not when the socket itself is unusable.
/// Out of memory or descriptors, it pauses first instead of spinning.
async fn recoverable(e: &io::Error) -> bool {
    match e.raw_os_error() {
        Some(libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EFAULT | libc::EOPNOTSUPP) => {
            false
        }
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            tokio::time::sleep(PAUSE).await;
            true
        }
        _ => true,
    }
}

const PAUSE: Duration = Duration::from_millis(100);

impl Dnsd {
    /// Serve DNS over UDP on this socket (already bound, e.g. gateway:53) for
    /// `network`. Runs until the socket errors fatally or [`Dnsd::stop`] is
    /// called; spawns a task per query that must be forwarded so local answers
    /// never wait behind upstreams.
    pub async fn serve_udp(&self, socket: UdpSocket, network: String) {
        let socket = Arc::new(socket);
        let mut stop = self.inner.stop.subscribe();
        // A datagram can be up to 64 KiB; anything longer than the buffer would
        // be cut silently.
        let mut buf = vec![0u8; MAX_TCP_MESSAGE];
        loop {
            let received = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                received = socket.recv_from(&mut buf) => received,
            };
            let (n, peer) = match received {
                Ok(received) => received,
                Err(e) if recoverable(&e).await => continue,
                Err(_) => return,
            };
            match self.outcome(&buf[..n], peer, &network, true) {
                Outcome::Reply(reply) => {
                    let _ = socket.send_to(&reply, peer).await;
                }
                Outcome::Forward(request) => {
                    self.spawn_forward(request, ReplyTo::Udp(socket.clone(), peer));
                }
                Outcome::Drop => {}
            }
        }
    }

    /// Serve DNS over TCP (RFC 7766: 2-byte length framing, several queries per
    /// connection) on this listener for `network`. Runs until the listener
    /// errors fatally or [`Dnsd::stop`] is called.
    pub async fn serve_tcp(&self, listener: TcpListener, network: String) {
        let network: Arc<str> = network.into();
        let mut stop = self.inner.stop.subscribe();
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if recoverable(&e).await => continue,
                Err(_) => return,
            };
            // Over the limit: the stream drops here, which closes it.
            let Ok(permit) = self.inner.tcp_connections.clone().try_acquire_owned() else {
                continue;
            };
            let dnsd = self.clone();
            let network = network.clone();
            tokio::spawn(async move {
                dnsd.connection(stream, peer, &network).await;
                drop(permit);
            });
        }
    }

    async fn connection(&self, stream: TcpStream, peer: SocketAddr, network: &str) {
        let (mut reader, writer) = stream.into_split();
        let writer = Arc::new(Mutex::new(writer));
        let mut stop = self.inner.stop.subscribe();
        loop {
            let query = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                query = timeout(TCP_IDLE_TIMEOUT, read_framed(&mut reader)) => query,
            };
            let Ok(Ok(query)) = query else {
                return;
            };
            match self.outcome(&query, peer, network, false) {
                Outcome::Reply(reply) => {
                    if send_tcp(&writer, &reply).await.is_err() {
                        return;
                    }
                }
                Outcome::Forward(request) => {
                    self.spawn_forward(request, ReplyTo::Tcp(writer.clone()));
                }
                // The client speaks something else than DNS.
                Outcome::Drop => return,
            }
        }
    }

    fn outcome(&self, message: &[u8], peer: SocketAddr, network: &str, udp: bool) -> Outcome {
        let table = self.inner.table.load();
        answer::handle(&table, message, peer.ip(), network, udp)
    }

    fn spawn_forward(&self, request: Request, to: ReplyTo) {
        let permit = self.inner.forwards.clone().try_acquire_owned();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permit else {
                to.send(&request.servfail()).await;
                return;
            };
            let upstreams = inner.upstreams.load_full();
            let reply = forward(&*inner.sockets, &upstreams, inner.forward_timeout, &request).await;
            let reply = match reply {
                Some(reply) => request.reply(reply),
                None => request.servfail(),
            };
            to.send(&reply).await;
        });
    }
}
