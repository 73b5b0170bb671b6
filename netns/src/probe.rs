//! One reachability check from N0 (the bridges' side), for rcrun's service
//! health polling: it must stay cheap (one socket, no process) and bounded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, UdpSocket};

use crate::Error;
use crate::proto::{Probe, Protocol};

/// How long a UDP probe waits for a refusal: silence proves nothing, so
/// waiting longer only slows the poller down.
const UDP_WAIT: Duration = Duration::from_secs(1);
/// One attempt: a poller that wants longer tries again.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) async fn probe(
    protocol: Protocol,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Probe, Error> {
    let what = format!("probe {addr}/{protocol}");
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(Error::Infra(format!(
            "{what}: the timeout must be more than 0 and at most {MAX_TIMEOUT:?} (got {timeout:?})"
        )));
    }
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if addr.port() == 0 || ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(Error::Infra(format!(
            "{what}: give one host's address and a port other than 0"
        )));
    }
    let io = |e| Error::io(what.clone(), e);
    match protocol {
        Protocol::Tcp => {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(io)?;
            Ok(
                match tokio::time::timeout(timeout, socket.connect(addr)).await {
                    // Dropped at once: a plain close, nothing sent.
                    Ok(Ok(_stream)) => Probe::Open,
                    Ok(Err(e)) => Probe::Closed(reason(&e)),
                    Err(_) => Probe::Closed(format!("no answer within {timeout:?}")),
                },
            )
        }
        Protocol::Udp => {
            let any = if addr.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            };
            let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await.map_err(io)?;
            // Connected, so an ICMP port unreachable comes back as ECONNREFUSED.
            if let Err(e) = socket.connect(addr).await {
                return Ok(Probe::Closed(reason(&e)));
            }
            if let Err(e) = socket.send(&[]).await {
                return Ok(Probe::Closed(reason(&e)));
            }
            let mut buf = [0u8; 1];
            Ok(
                match tokio::time::timeout(timeout.min(UDP_WAIT), socket.recv(&mut buf)).await {
                    Ok(Err(e)) => Probe::Closed(reason(&e)),
                    // An answer, or silence: nothing refused it.
                    Ok(Ok(_)) | Err(_) => Probe::Open,
                },
            )
        }
    }
}

/// "connection refused", "no route to host": the system's words, lower case.
fn reason(e: &std::io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(n) => nix::Error::from_raw(n).desc().to_string(),
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}
