//! dnsd: the resolver for container names, aliases and bindings, and the
//! /etc/hosts and /etc/resolv.conf writers (issue 5).
//!
//! A [`Dnsd`] answers on each network's gateway (UDP and TCP port 53) inside the
//! infra network namespace: container names, short ids and aliases of the
//! networks the asking container is on, and forwards everything else to the
//! host's resolvers through sockets made in the host's namespace.

mod answer;
mod files;
mod forward;
mod name;
mod serve;
mod table;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, watch};

pub use files::{HostsEntry, ResolvConf, render_hosts, upstreams_from_resolv_conf};
pub use forward::{Family, LocalSockets, Transport, UpstreamSockets};
pub use name::{Name, is_valid_label, network_domain};

pub use table::reverse_name;
use table::{State, Table};

/// Network N's domain is "N.rcrun.internal".
pub const DOMAIN_SUFFIX: &str = "rcrun.internal";

/// TTL of every answer, 5 s: a restarted container may get another address, and
/// caching stubs (JVM, nscd) find it again within 5 s; answers come from memory
/// on a local bridge, so a short TTL costs nothing.
pub const TTL: u32 = 5;

/// Default overall bound for one forwarded query.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(4);
/// Forwarded queries in flight at once; past that, SERVFAIL at once, so memory
/// stays bounded whatever the clients send.
pub const MAX_FORWARDS: usize = 512;
/// TCP connections at once, all networks together; more are closed on accept.
pub const MAX_TCP_CONNECTIONS: usize = 128;
/// A TCP connection closes when no whole query arrives (or no reply can be
/// written) for this long.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid DNS name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
}

/// One container on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Container id (full).
    pub container: String,
    /// Network name.
    pub network: String,
    /// Container name (when a valid DNS name), short id (12 chars), aliases, in
    /// that order; names[0] is the primary name used for PTR.
    pub names: Vec<Name>,
    /// Its addresses on that network (v4 and/or v6).
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkInfo {
    pub name: String,
    /// No egress: names outside ours are refused rather than forwarded.
    pub internal: bool,
}

#[derive(Clone)]
pub struct Config {
    pub upstreams: Vec<SocketAddr>,
    /// Overall bound for one forwarded query, default 4 s.
    pub forward_timeout: Duration,
    /// Where upstream sockets come from.
    pub sockets: Arc<dyn UpstreamSockets>,
}

impl Config {
    /// `upstreams` with the default timeout and sockets of the current namespace.
    pub fn new(upstreams: Vec<SocketAddr>) -> Config {
        Config {
            upstreams,
            forward_timeout: DEFAULT_FORWARD_TIMEOUT,
            sockets: Arc::new(LocalSockets),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("upstreams", &self.upstreams)
            .field("forward_timeout", &self.forward_timeout)
            .finish_non_exhaustive()
    }
}

/// The DNS server; clones share one record table.
#[derive(Clone)]
pub struct Dnsd {
    inner: Arc<Inner>,
}

struct Inner {
    upstreams: ArcSwap<Vec<SocketAddr>>,
    forward_timeout: Duration,
    sockets: Arc<dyn UpstreamSockets>,
    /// Serializes writers; readers use `table` only.
    state: Mutex<State>,
    table: ArcSwap<Table>,
    forwards: Arc<Semaphore>,
    tcp_connections: Arc<Semaphore>,
    stop: watch::Sender<bool>,
}

impl Dnsd {
    pub fn new(config: Config) -> Dnsd {
        Dnsd {
            inner: Arc::new(Inner {
                upstreams: ArcSwap::from_pointee(config.upstreams),
                forward_timeout: config.forward_timeout,
                sockets: config.sockets,
                state: Mutex::new(State::default()),
                table: ArcSwap::from_pointee(Table::default()),
                forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
                tcp_connections: Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS)),
                stop: watch::Sender::new(false),
            }),
        }
    }

    /// Applies `change` and publishes a new table: queries in flight keep the
    /// table they started with, the next ones see the change.
    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        change(&mut state);
        let table = Table::build(&state, &self.inner.table.load());
        self.inner.table.store(Arc::new(table));
    }

    /// Adds or updates a network.
    pub fn set_network(&self, network: NetworkInfo) {
        self.update(|s| {
            s.networks.insert(network.name.clone(), network);
        });
    }

    /// Removes a network and its endpoints.
    pub fn remove_network(&self, name: &str) {
        self.update(|s| {
            s.networks.remove(name);
            s.endpoints.retain(|(_, network), _| network != name);
        });
    }

    /// Adds an endpoint, replacing the one of the same (container, network).
    pub fn add_endpoint(&self, endpoint: Endpoint) {
        self.update(|s| {
            let key = (endpoint.container.clone(), endpoint.network.clone());
            s.endpoints.insert(key, endpoint);
        });
    }

    pub fn remove_endpoint(&self, container: &str, network: &str) {
        self.update(|s| {
            s.endpoints
                .remove(&(container.to_string(), network.to_string()));
        });
    }

    /// Removes the container from every network.
    pub fn remove_container(&self, container: &str) {
        self.update(|s| s.endpoints.retain(|(c, _), _| c != container));
    }

    /// Replaces the upstream resolvers (the host's resolv.conf changed);
    /// forwards in flight finish with the old list.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        self.inner.upstreams.store(Arc::new(upstreams));
    }

    /// Makes every `serve_udp`/`serve_tcp` (and TCP connection) return; forwards
    /// in flight still answer within the forward timeout. Final.
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
    }
}
