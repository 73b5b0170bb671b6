//! Published ports, served in the infra namespace from sockets opened on the host:
//! TCP connections are spliced to the container; UDP datagrams are relayed per
//! client through a socket of their own, dropped after a quiet minute. Setup
//! (a container's own ports) and Publish (ports of others' containers) share it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, setsockopt, shutdown, sockopt};
use nix::unistd::pipe2;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use crate::proto::{Forward, Protocol};
use crate::{AbortOnDrop, Error};

const UDP_IDLE: Duration = Duration::from_secs(60);
/// Per direction and connection: a copy through user space (tokio's copy, 8 KiB)
/// capped a published port near 6 Gbit/s here (benches/compare-net.sh).
const PIPE_SIZE: usize = 1 << 20;
const TRANSPARENT_CONNECT: Duration = Duration::from_secs(5);

/// Forwards being served; each stops, with its socket and its connections,
/// when dropped.
pub(crate) type Served = Vec<(Forward, AbortOnDrop)>;

/// Checks that a request brought one socket per forward.
pub(crate) fn check_sockets(forwards: &[Forward], sockets: &[OwnedFd]) -> Result<(), Error> {
    if sockets.len() != forwards.len() {
        return Err(Error::Infra(format!(
            "{} published ports came with {} sockets",
            forwards.len(),
            sockets.len()
        )));
    }
    Ok(())
}

/// Starts serving each forward from its socket (in order): all or none.
pub(crate) fn serve(forwards: Vec<Forward>, sockets: Vec<OwnedFd>) -> Result<Served, Error> {
    check_sockets(&forwards, &sockets)?;
    forwards
        .into_iter()
        .zip(sockets)
        .map(|(f, socket)| {
            let task = spawn(&f, socket)?;
            Ok((f, AbortOnDrop(task)))
        })
        .collect()
}

/// Starts serving `forward` from `socket` (the host-side listener); the task
/// ends when aborted.
fn spawn(forward: &Forward, socket: OwnedFd) -> Result<JoinHandle<()>, Error> {
    let target = forward.container;
    // A socket of the other kind would fail every accept or receive, forever.
    let kind = nix::sys::socket::getsockopt(&socket, sockopt::SockType)
        .map_err(|e| Error::sys(format!("check the socket of host port {}", forward.host), e))?;
    let expected = match forward.protocol {
        Protocol::Tcp => nix::sys::socket::SockType::Stream,
        Protocol::Udp => nix::sys::socket::SockType::Datagram,
    };
    if kind != expected {
        return Err(Error::Infra(format!(
            "the socket sent for host port {}/{} is not a {} socket",
            forward.host, forward.protocol, forward.protocol
        )));
    }
    match forward.protocol {
        Protocol::Tcp => {
            let std = std::net::TcpListener::from(socket);
            std.set_nonblocking(true)
                .map_err(|e| Error::io("make the published port non-blocking", e))?;
            let listener =
                TcpListener::from_std(std).map_err(|e| Error::io("serve the published port", e))?;
            Ok(tokio::task::spawn_local(serve_tcp(listener, target)))
        }
        Protocol::Udp => {
            let std = std::net::UdpSocket::from(socket);
            std.set_nonblocking(true)
                .map_err(|e| Error::io("make the published port non-blocking", e))?;
            let socket =
                UdpSocket::from_std(std).map_err(|e| Error::io("serve the published port", e))?;
            Ok(tokio::task::spawn_local(serve_udp(Rc::new(socket), target)))
        }
    }
}

async fn serve_tcp(listener: TcpListener, target: SocketAddr) {
    // Held here so that stopping the port also ends its connections: a
    // published port of a container that lives on must not leave them open.
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn_local(async move {
            let _ = client.set_nodelay(true);
            if let Ok(upstream) = connect_as(peer, target).await {
                let _ = upstream.set_nodelay(true);
                let _ = tokio::try_join!(
                    splice_half(&client, &upstream),
                    splice_half(&upstream, &client)
                );
            }
        });
    }
}

/// Connects to the container as `client` when it can, so the container sees who
/// called: IPv4 clients from off the host's loopback (a loopback address means
/// nothing in the container, and leaves no way back). Else from the gateway.
async fn connect_as(client: SocketAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let keeps_source = matches!((client, target), (SocketAddr::V4(c), SocketAddr::V4(_)) if !c.ip().is_loopback() && !c.ip().is_unspecified());
    if keeps_source {
        match transparent_socket(client) {
            Ok(socket) => {
                // Bounded: a lost way back must cost a delay, not the port.
                match tokio::time::timeout(TRANSPARENT_CONNECT, socket.connect(target)).await {
                    Ok(Ok(stream)) => return Ok(stream),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Err(e);
                    }
                    _ => eprintln!(
                        "rcrun infra: no answer to {client} from {target}; connecting from the gateway"
                    ),
                }
            }
            Err(e) => eprintln!("rcrun infra: keep the client's address {client}: {e}"),
        }
    }
    TcpStream::connect(target).await
}

/// A TCP socket bound to `client`'s address, which is not ours: IP_TRANSPARENT
/// (CAP_NET_ADMIN in the infra's user namespace) allows it; the firewall marks
/// the replies and a rule delivers them here.
fn transparent_socket(client: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    setsockopt(&socket, sockopt::IpTransparent, &true)?;
    socket.bind(SocketAddr::new(client.ip(), 0))?;
    Ok(socket)
}

/// Moves bytes from `from` to `to` through a pipe, never through user space;
/// shuts `to` down for writing at `from`'s end of stream.
async fn splice_half(from: &TcpStream, to: &TcpStream) -> std::io::Result<()> {
    let (pipe_out, pipe_in) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // A bigger pipe moves more per wakeup; the default size still works.
    let _ = fcntl(&pipe_in, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let mut queued = from
            .async_io(Interest::READABLE, || {
                splice(from, None, &pipe_in, None, PIPE_SIZE, flags).map_err(Into::into)
            })
            .await?;
        if queued == 0 {
            return shutdown(to.as_raw_fd(), Shutdown::Write).map_err(Into::into);
        }
        while queued > 0 {
            queued -= to
                .async_io(Interest::WRITABLE, || {
                    splice(&pipe_out, None, to, None, queued, flags).map_err(Into::into)
                })
                .await?;
        }
    }
}

async fn serve_udp(host: Rc<UdpSocket>, target: SocketAddr) {
    let mut flows: HashMap<SocketAddr, (Rc<UdpSocket>, AbortOnDrop)> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((len, client)) = host.recv_from(&mut buf).await else {
            continue;
        };
        flows.retain(|_, (_, relay)| !relay.0.is_finished());
        let upstream = match flows.get(&client) {
            Some((upstream, _)) => upstream.clone(),
            None => {
                let bind: SocketAddr = if target.is_ipv4() {
                    "0.0.0.0:0".parse().expect("valid")
                } else {
                    "[::]:0".parse().expect("valid")
                };
                let Ok(upstream) = UdpSocket::bind(bind).await else {
                    continue;
                };
                if upstream.connect(target).await.is_err() {
                    continue;
                }
                let upstream = Rc::new(upstream);
                let task =
                    tokio::task::spawn_local(relay_back(host.clone(), upstream.clone(), client));
                flows.insert(client, (upstream.clone(), AbortOnDrop(task)));
                upstream
            }
        };
        let _ = upstream.send(&buf[..len]).await;
    }
}

async fn relay_back(host: Rc<UdpSocket>, upstream: Rc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(len)) = tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
        let _ = host.send_to(&buf[..len], client).await;
    }
}
