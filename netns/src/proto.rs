//! The requests rcrun sends to the infra process, and its answers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::subnet::Subnet;

/// One network as the infra builds it: a bridge with the gateway addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeSpec {
    /// The rcrun network's name (its DNS domain is `<name>.rcrun.internal`).
    pub name: String,
    /// The bridge's interface name (`rcbr<N>`).
    pub bridge: String,
    /// Each subnet with its gateway (the bridge's address in it).
    pub subnets: Vec<(Subnet, IpAddr)>,
    /// No egress and no host access.
    pub internal: bool,
    pub mtu: u32,
}

/// A container's interface on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: BridgeSpec,
    /// The name inside the container (`eth0`, `eth1`…).
    pub ifname: String,
    /// One address per subnet of the network.
    pub addresses: Vec<IpAddr>,
    /// The gateways become the container's default routes (unless it has some).
    pub default_route: bool,
    /// What dnsd answers with these addresses on this network: the container's
    /// name, short id and aliases (names[0] is the one PTR gives).
    pub dns_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A published port: the host-side socket travels with the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub protocol: Protocol,
    pub host: SocketAddr,
    pub container: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Hello,
    /// Makes the container's network namespace with its attachments and ports;
    /// answered with `Netns` (the namespace attached). The container belongs to
    /// this connection: it is released when the connection closes.
    Setup {
        container: String,
        attachments: Vec<Attachment>,
        forwards: Vec<Forward>,
        host_access: bool,
    },
    Attach {
        container: String,
        attachment: Attachment,
    },
    Detach {
        container: String,
        bridge: String,
    },
    Release {
        container: String,
    },
    RemoveBridge {
        bridge: String,
    },
    Status,
    /// Tries once, from N0 (the bridges' side), to reach `addr`; answered with
    /// `Probe`. Served outside the infra's state lock: it may wait `timeout`.
    Probe {
        protocol: Protocol,
        addr: SocketAddr,
        timeout: Duration,
    },
    /// Serves host ports (sockets attached, one per forward) to containers of
    /// any connection; the forwards belong to this connection, like Setup's.
    Publish {
        forwards: Vec<Forward>,
    },
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// TCP: a connection completed. UDP: nothing refused the datagram (UDP
    /// cannot prove a port open).
    Open,
    /// Why not, e.g. "connection refused", "no answer within 1s".
    Closed(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub pid: i32,
    /// Why containers cannot reach the outside, when they cannot.
    pub egress_off: Option<String>,
    /// The address that leads to the host's loopback, when egress is on.
    pub host_gateway: Option<IpAddr>,
}

/// What the infra holds, for `rcrun` to show and for tests to check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub bridges: Vec<String>,
    /// Every link in the infra namespace.
    pub links: Vec<String>,
    pub containers: Vec<ContainerStatus>,
    /// Ports published by `Publish`, across connections.
    #[serde(default)]
    pub published: Vec<Forward>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub id: String,
    pub veths: Vec<String>,
    pub forwards: Vec<Forward>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Hello(Hello),
    Done,
    /// The container's network namespace is attached.
    Netns,
    Status(Status),
    Probe(Probe),
    Failed(String),
}
