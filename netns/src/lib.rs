//! rcrun's container networking: the per-user *infra* process that owns a network
//! namespace (N0) with one Linux bridge per rcrun network, each container's
//! network namespace and veth pairs, published ports, egress through
//! slirp4netns, and the firewall that isolates networks. Plus the pure parts the
//! caller needs to keep leases: subnets and address allocation.
//!
//! Process model: rcrun forks the infra into its user namespace
//! ([`infra_child`]) while the parent half ([`infra_parent`]) starts egress
//! for it from the host side. rcrun then talks to it over a unix socket
//! ([`Infra`]); a container's network lives as long as the connection that set it
//! up (its monitor), so nothing outlives a killed rcrun.

mod client;
mod egress;
mod forward;
mod infra;
mod link;
pub mod nft;
mod probe;
mod proto;
pub mod subnet;
mod upstream;
mod wire;

pub use client::{Infra, bind_host_port};
pub use infra::{SyncPair, infra_child, infra_parent, sync_pair};
pub use proto::{Attachment, BridgeSpec, ContainerStatus, Forward, Hello, Probe, Protocol, Status};
pub use upstream::serve_host_sockets;

/// A task that ends when its handle is dropped (with the port, bridge or flow
/// that owns it).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {}", source.desc())]
    Sys {
        step: String,
        #[source]
        source: nix::Error,
    },
    #[error("{step}: {detail}")]
    Netlink {
        step: String,
        errno: Option<i32>,
        detail: String,
    },
    #[error(
        "host port {addr}/{protocol} is already in use: pick another host port, or stop what listens there"
    )]
    PortInUse {
        addr: std::net::SocketAddr,
        protocol: Protocol,
    },
    /// An error the infra process reported.
    #[error("{0}")]
    Infra(String),
    #[error(transparent)]
    Firewall(#[from] nft::NftError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(step: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            step: step.into(),
            source,
        }
    }

    pub(crate) fn sys(step: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            step: step.into(),
            source,
        }
    }
}
