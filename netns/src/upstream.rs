//! Sockets in the host's network namespace for dnsd's upstream queries. The
//! launcher's host-side half stays as a small socket maker: the infra cannot
//! enter the host's namespace, but a socket keeps the namespace it was made in.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socket};
use serde::{Deserialize, Serialize};

use crate::wire;

#[derive(Debug, Serialize, Deserialize)]
struct SocketRequest {
    v6: bool,
    tcp: bool,
}

#[derive(Debug, Serialize, Deserialize)]
enum SocketResponse {
    /// The socket is attached.
    Made,
    Failed(String),
}

/// The host-side socket maker: answers the infra until it goes away.
pub fn serve_host_sockets(sync: OwnedFd) {
    while let Ok(Some((req, _))) = wire::recv::<SocketRequest>(sync.as_fd(), MsgFlags::empty()) {
        let family = if req.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let ty = if req.tcp {
            SockType::Stream
        } else {
            SockType::Datagram
        };
        // Non-blocking travels with the open file: the infra uses it as made.
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let sent = match socket(family, ty, flags, None) {
            Ok(s) => wire::send(sync.as_fd(), &SocketResponse::Made, &[s.as_raw_fd()]),
            Err(e) => wire::send(
                sync.as_fd(),
                &SocketResponse::Failed(e.desc().to_string()),
                &[],
            ),
        };
        if sent.is_err() {
            break;
        }
    }
}

/// The infra's end: asks the host side for each upstream socket.
pub(crate) struct HostSockets(Mutex<OwnedFd>);

impl HostSockets {
    pub(crate) fn new(sync: OwnedFd) -> Self {
        HostSockets(Mutex::new(sync))
    }
}

impl dnsd::UpstreamSockets for HostSockets {
    fn socket(&self, family: dnsd::Family, transport: dnsd::Transport) -> std::io::Result<OwnedFd> {
        let sync = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let req = SocketRequest {
            v6: matches!(family, dnsd::Family::V6),
            tcp: matches!(transport, dnsd::Transport::Tcp),
        };
        wire::send(sync.as_fd(), &req, &[])?;
        match wire::recv::<SocketResponse>(sync.as_fd(), MsgFlags::empty())? {
            Some((SocketResponse::Made, mut fds)) if fds.len() == 1 => Ok(fds.remove(0)),
            Some((SocketResponse::Failed(e), _)) => Err(std::io::Error::other(format!(
                "make an upstream socket on the host: {e}"
            ))),
            _ => Err(std::io::Error::other("the host-side socket maker is gone")),
        }
    }
}

/// Upstream resolvers: `RCRUN_DNS_UPSTREAMS` (comma-separated, `IP` or
/// `IP:PORT`), else the host's /etc/resolv.conf.
pub fn upstreams_from_env_or_host() -> Result<Vec<SocketAddr>, String> {
    match std::env::var("RCRUN_DNS_UPSTREAMS") {
        Ok(list) => parse_upstreams(&list),
        Err(_) => Ok(dnsd::upstreams_from_resolv_conf(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        )),
    }
}

fn parse_upstreams(list: &str) -> Result<Vec<SocketAddr>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| {
                    s.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    format!("RCRUN_DNS_UPSTREAMS: {s:?} is not IP or IP:PORT (IPv6 as [IP]:PORT)")
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_lists_parse() {
        assert_eq!(
            parse_upstreams("127.0.0.1:5353, 10.0.0.1,[::1]:53").unwrap(),
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert!(
            parse_upstreams("localhost")
                .unwrap_err()
                .contains("localhost")
        );
    }
}
