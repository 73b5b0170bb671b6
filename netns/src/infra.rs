//! The infra process: owns N0 (bridges, the host ends of veth pairs, the
//! firewall), makes each container's network namespace, serves published ports,
//! and exits after `linger` once no container and no client needs it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::socket::{MsgFlags, SockFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Mutex, watch};

use crate::link::Netlink;
use crate::proto::{
    Attachment, BridgeSpec, ContainerStatus, Forward, Hello, Request, Response, Status,
};
use crate::{AbortOnDrop, Error, egress, forward, nft, probe, upstream, wire};

/// The socket clients connect to, inside the infra's directory.
pub(crate) const SOCKET: &str = "infra.sock";
/// Held (flock) by the running infra for its whole life: a free lock means no infra.
pub(crate) const LOCK: &str = "infra.lock";
pub(crate) const LOG: &str = "infra.log";

/// Messages between the two halves of a starting infra.
#[derive(Debug, Serialize, Deserialize)]
enum Launch {
    /// Child: N0 exists (send egress for it).
    NetnsReady,
    /// Parent: egress result; the exit pipe of slirp4netns is attached when on.
    Egress {
        off: Option<String>,
    },
    /// Child: listening.
    Serving,
    Failed(String),
}

/// The two ends of the socket the infra's halves talk over.
pub struct SyncPair {
    pub parent: OwnedFd,
    pub child: OwnedFd,
}

pub fn sync_pair() -> Result<SyncPair, Error> {
    let (parent, child) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::sys("create the infra's sync socket", e))?;
    Ok(SyncPair { parent, child })
}

fn recv_launch(fd: &OwnedFd) -> Result<(Launch, Vec<OwnedFd>), Error> {
    match wire::recv::<Launch>(fd.as_fd(), MsgFlags::empty()) {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(Error::Infra(
            "the infra process exited while starting (see infra.log in rcrun's runtime directory)"
                .into(),
        )),
        Err(e) => Err(Error::sys("talk to the starting infra process", e)),
    }
}

/// The parent half, on the host side: waits for the child's namespace, starts
/// egress for it, and returns once the child serves.
pub fn infra_parent(sync: OwnedFd, child: Pid, dir: &Path) -> Result<(), Error> {
    match recv_launch(&sync)?.0 {
        Launch::NetnsReady => {}
        Launch::Failed(e) => return Err(Error::Infra(e)),
        other => return Err(Error::Internal(format!("unexpected {other:?}"))),
    }
    let (exit_read, exit_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("create the egress exit pipe", e))?;
    let off = egress::start(child.as_raw(), exit_read, &dir.join(LOG)).err();
    let fds = if off.is_none() {
        vec![exit_write.as_raw_fd()]
    } else {
        vec![]
    };
    wire::send(sync.as_fd(), &Launch::Egress { off }, &fds)
        .map_err(|e| Error::sys("tell the infra about egress", e))?;
    drop(exit_write);
    match recv_launch(&sync)?.0 {
        Launch::Serving => Ok(()),
        Launch::Failed(e) => Err(Error::Infra(e)),
        other => Err(Error::Internal(format!("unexpected {other:?}"))),
    }
}

/// The child half, already root in its user namespace (or real root) and
/// holding the infra lock: makes N0 and serves until unused. Single-threaded on
/// entry. Returns the exit code.
pub fn infra_child(sync: OwnedFd, dir: &Path, linger: Duration) -> i32 {
    let fail = |sync: &OwnedFd, e: String| {
        let _ = wire::send(sync.as_fd(), &Launch::Failed(e.clone()), &[]);
        eprintln!("rcrun infra: {e}");
        125
    };
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNET) {
        return fail(
            &sync,
            format!("create the infra network namespace: {}", e.desc()),
        );
    }
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
    ] {
        if let Err(e) = std::fs::write(path, value) {
            return fail(&sync, format!("enable forwarding ({path}): {e}"));
        }
    }
    if let Err(e) = wire::send(sync.as_fd(), &Launch::NetnsReady, &[]) {
        return fail(&sync, format!("report the namespace: {}", e.desc()));
    }
    let (off, exit_pipe) = match recv_launch(&sync) {
        Ok((Launch::Egress { off }, fds)) => (off, fds),
        Ok((other, _)) => return fail(&sync, format!("unexpected {other:?}")),
        Err(e) => return fail(&sync, e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&sync, format!("start the event loop: {e}")),
    };
    let upstreams = match upstream::upstreams_from_env_or_host() {
        Ok(u) => u,
        Err(e) => return fail(&sync, e),
    };
    let host_sockets = match sync.try_clone() {
        Ok(fd) => upstream::HostSockets::new(fd),
        Err(e) => return fail(&sync, format!("keep the host socket channel: {e}")),
    };
    let dns = dnsd::Dnsd::new(dnsd::Config {
        upstreams,
        forward_timeout: dnsd::DEFAULT_FORWARD_TIMEOUT,
        sockets: std::sync::Arc::new(host_sockets),
    });
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&runtime, async {
        let state = match State::new(off, dns) {
            Ok(s) => s,
            Err(e) => return fail(&sync, e.to_string()),
        };
        let listener = match wire::listen(&dir.join(SOCKET))
            .map_err(|e| Error::sys("listen on the infra socket", e))
            .and_then(|fd| watch(fd).map_err(|e| Error::io("watch the infra socket", e)))
        {
            Ok(l) => l,
            Err(e) => return fail(&sync, e.to_string()),
        };
        if let Err(e) = state.n0.loopback_up().await {
            return fail(&sync, e.to_string());
        }
        // Published ports connect with the client's address; the replies must
        // come back here, not go out by the default route.
        if let Err(e) = state
            .n0
            .deliver_marked_locally(nft::TRANSPARENT_MARK, nft::TRANSPARENT_MARK)
            .await
        {
            return fail(&sync, e.to_string());
        }
        if let Err(e) = state.apply_firewall() {
            return fail(&sync, e.to_string());
        }
        let _ = wire::send(sync.as_fd(), &Launch::Serving, &[]);
        drop(sync);
        serve(state, listener, linger, dir).await;
        0
    });
    // slirp4netns ends when this closes.
    drop(exit_pipe);
    code
}

struct Link {
    bridge: String,
    host: String,
    addresses: Vec<IpAddr>,
}

struct Container {
    owner: u64,
    netns: OwnedFd,
    netlink: Netlink,
    links: Vec<Link>,
    forwards: forward::Served,
    host_access: bool,
}

struct Bridge {
    spec: BridgeSpec,
    index: u32,
    /// dnsd's listeners on the gateways; they end with the bridge.
    _dns: Vec<AbortOnDrop>,
}

struct State {
    n0: Netlink,
    bridges: BTreeMap<String, Bridge>,
    dns: dnsd::Dnsd,
    containers: HashMap<String, Container>,
    /// Ports published by `Publish`, by the connection that owns them.
    published: BTreeMap<u64, forward::Served>,
    next_link: u32,
    egress_off: Option<String>,
    /// Each connected client's socket, to tell whether it hung up.
    clients: HashMap<u64, Rc<AsyncFd<OwnedFd>>>,
    idle: watch::Sender<bool>,
}

impl State {
    fn new(egress_off: Option<String>, dns: dnsd::Dnsd) -> Result<Self, Error> {
        Ok(State {
            n0: Netlink::open("the infra namespace")?,
            bridges: BTreeMap::new(),
            dns,
            containers: HashMap::new(),
            published: BTreeMap::new(),
            next_link: 0,
            egress_off,
            clients: HashMap::new(),
            idle: watch::channel(true).0,
        })
    }

    fn egress(&self) -> Option<String> {
        self.egress_off.is_none().then(|| egress::TAP.to_string())
    }

    fn apply_firewall(&self) -> Result<(), Error> {
        let host_access = self
            .containers
            .values()
            .filter(|c| c.host_access)
            .flat_map(|c| c.links.iter())
            .filter(|l| {
                self.bridges
                    .get(&l.bridge)
                    .is_some_and(|b| !b.spec.internal)
            })
            .flat_map(|l| l.addresses.iter().copied())
            .collect();
        let rules = nft::Ruleset {
            egress: self.egress(),
            networks: self
                .bridges
                .values()
                .map(|b| nft::NetworkRules {
                    bridge: b.spec.bridge.clone(),
                    internal: b.spec.internal,
                    subnets: b
                        .spec
                        .subnets
                        .iter()
                        .map(|(s, _)| (s.addr(), s.prefix()))
                        .collect(),
                })
                .collect(),
            host_gateway: self.egress().map(|_| egress::HOST_GATEWAY),
            host_access,
        };
        nft::apply(&rules).map_err(Error::from)
    }

    /// Whether the client `owner` closed its end (a peer's close shows as POLLHUP
    /// on a unix socket, even with messages still queued).
    fn hung_up(&self, owner: u64) -> bool {
        let Some(conn) = self.clients.get(&owner) else {
            return true;
        };
        let mut fds = [PollFd::new(conn.get_ref().as_fd(), PollFlags::empty())];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP))
    }

    fn update_idle(&self) {
        let idle = self.clients.is_empty() && self.containers.is_empty();
        self.idle.send_replace(idle);
    }

    async fn ensure_bridge(&mut self, spec: &BridgeSpec) -> Result<u32, Error> {
        if let Some(known) = self.bridges.get(&spec.bridge) {
            if &known.spec == spec {
                return Ok(known.index);
            }
            if self.bridge_in_use(&spec.bridge) {
                return Err(Error::Infra(format!(
                    "bridge {} is in use with another configuration",
                    spec.bridge
                )));
            }
            self.n0.delete(&spec.bridge).await?;
            self.forget_bridge(&spec.bridge);
        }
        let addresses: Vec<(IpAddr, u8)> = spec
            .subnets
            .iter()
            .map(|(s, gw)| (*gw, s.prefix()))
            .collect();
        let index = self
            .n0
            .ensure_bridge(
                &spec.bridge,
                spec.mtu,
                mac_for(spec.subnets.first().map(|(_, gateway)| *gateway)),
                &addresses,
            )
            .await?;
        let dns = match self.serve_dns(spec) {
            Ok(dns) => dns,
            Err(e) => {
                let _ = self.n0.delete(&spec.bridge).await;
                return Err(e);
            }
        };
        self.bridges.insert(
            spec.bridge.clone(),
            Bridge {
                spec: spec.clone(),
                index,
                _dns: dns,
            },
        );
        if let Err(e) = self.apply_firewall() {
            self.forget_bridge(&spec.bridge);
            let _ = self.n0.delete(&spec.bridge).await;
            return Err(e);
        }
        Ok(index)
    }

    /// dnsd on each of the bridge's gateway addresses, UDP and TCP port 53.
    fn serve_dns(&self, spec: &BridgeSpec) -> Result<Vec<AbortOnDrop>, Error> {
        self.dns.set_network(dnsd::NetworkInfo {
            name: spec.name.clone(),
            internal: spec.internal,
        });
        let mut tasks = Vec::new();
        for (_, gateway) in &spec.subnets {
            let at = SocketAddr::new(*gateway, 53);
            let (udp, tcp) = dns_sockets(at)
                .map_err(|e| Error::io(format!("serve DNS on {at} of {}", spec.bridge), e))?;
            let dns = self.dns.clone();
            let name = spec.name.clone();
            tasks.push(AbortOnDrop(tokio::task::spawn_local(async move {
                dns.serve_udp(udp, name).await
            })));
            let dns = self.dns.clone();
            let name = spec.name.clone();
            tasks.push(AbortOnDrop(tokio::task::spawn_local(async move {
                dns.serve_tcp(tcp, name).await
            })));
        }
        Ok(tasks)
    }

    /// Drops a bridge's state: its DNS listeners close and its names go.
    fn forget_bridge(&mut self, bridge: &str) -> bool {
        match self.bridges.remove(bridge) {
            Some(b) => {
                self.dns.remove_network(&b.spec.name);
                true
            }
            None => false,
        }
    }

    /// The host's resolvers, again: it may have changed network since.
    fn refresh_upstreams(&self) {
        if let Ok(upstreams) = upstream::upstreams_from_env_or_host() {
            self.dns.set_upstreams(upstreams);
        }
    }

    fn bridge_in_use(&self, bridge: &str) -> bool {
        self.containers
            .values()
            .any(|c| c.links.iter().any(|l| l.bridge == bridge))
    }

    /// One veth pair from the bridge into the container, configured inside.
    async fn attach(&mut self, id: &str, ctr: &mut Container, a: &Attachment) -> Result<(), Error> {
        if ctr.links.iter().any(|l| l.bridge == a.network.bridge) {
            return Err(Error::Infra(format!(
                "the container is already attached to bridge {}",
                a.network.bridge
            )));
        }
        let names = a
            .dns_names
            .iter()
            .map(|n| n.parse::<dnsd::Name>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Infra(e.to_string()))?;
        let bridge = self.ensure_bridge(&a.network).await?;
        self.next_link += 1;
        let host = format!("rcv{}", self.next_link);
        self.n0
            .create_veth(
                &host,
                bridge,
                a.network.mtu,
                (
                    &a.ifname,
                    mac_for(a.addresses.first().copied()),
                    ctr.netns.as_fd(),
                ),
            )
            .await?;
        let configured = async {
            let index = ctr.netlink.peer_up(&a.ifname).await?;
            for ip in &a.addresses {
                let Some((subnet, _)) = a.network.subnets.iter().find(|(s, _)| s.contains(*ip))
                else {
                    return Err(Error::Infra(format!(
                        "{ip} is in no subnet of bridge {}",
                        a.network.bridge
                    )));
                };
                ctr.netlink.add_address(index, *ip, subnet.prefix()).await?;
            }
            if a.default_route {
                for (subnet, gateway) in &a.network.subnets {
                    if a.addresses.iter().any(|ip| subnet.contains(*ip)) {
                        ctr.netlink.add_default_route(index, *gateway).await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = configured {
            let _ = self.n0.delete(&host).await;
            return Err(e);
        }
        ctr.links.push(Link {
            bridge: a.network.bridge.clone(),
            host,
            addresses: a.addresses.clone(),
        });
        // Registered before the answer: resolvable once rcrun returns.
        self.dns.add_endpoint(dnsd::Endpoint {
            container: id.to_string(),
            network: a.network.name.clone(),
            names,
            addresses: a.addresses.clone(),
        });
        Ok(())
    }

    async fn release(&mut self, id: &str) -> Result<(), Error> {
        let Some(mut ctr) = self.containers.remove(id) else {
            return Ok(());
        };
        self.dns.remove_container(id);
        ctr.forwards.clear();
        // The container may live on (a kill in flight): unplug it explicitly.
        let mut first_error = None;
        for link in &ctr.links {
            if let Err(e) = self.n0.delete(&link.host).await {
                first_error.get_or_insert(e);
            }
        }
        if ctr.host_access {
            self.apply_firewall()?;
        }
        self.update_idle();
        first_error.map_or(Ok(()), Err)
    }

    async fn setup(
        &mut self,
        owner: u64,
        id: String,
        attachments: Vec<Attachment>,
        forwards: Vec<Forward>,
        sockets: Vec<OwnedFd>,
        host_access: bool,
    ) -> Result<OwnedFd, Error> {
        if let Some(old) = self.containers.get(&id) {
            if !self.hung_up(old.owner) {
                return Err(Error::Infra(format!(
                    "container {id} already has its network"
                )));
            }
            // Its owner has closed the connection (rcrun does not wait for the
            // release), and that close is not served yet.
            self.release(&id).await?;
        }
        forward::check_sockets(&forwards, &sockets)?;
        self.refresh_upstreams();
        let (netns, netlink) = new_netns(&id)?;
        netlink.loopback_up().await?;
        let mut ctr = Container {
            owner,
            netns,
            netlink,
            links: Vec::new(),
            forwards: Vec::new(),
            host_access,
        };
        let mut attached = Ok(());
        for a in &attachments {
            attached = self.attach(&id, &mut ctr, a).await;
            if attached.is_err() {
                break;
            }
        }
        let started = attached.and_then(|()| {
            ctr.forwards = forward::serve(forwards, sockets)?;
            Ok(())
        });
        let reply = started.and_then(|()| {
            ctr.netns
                .try_clone()
                .map_err(|e| Error::io("duplicate the namespace", e))
        });
        self.containers.insert(id.clone(), ctr);
        match reply {
            Ok(fd) => {
                if host_access && let Err(e) = self.apply_firewall() {
                    let _ = self.release(&id).await;
                    return Err(e);
                }
                self.update_idle();
                Ok(fd)
            }
            Err(e) => {
                let _ = self.release(&id).await;
                Err(e)
            }
        }
    }

    /// Serves host ports to containers on any bridge, for `owner` until it
    /// hangs up (the container may belong to another connection).
    fn publish(
        &mut self,
        owner: u64,
        forwards: Vec<Forward>,
        sockets: Vec<OwnedFd>,
    ) -> Result<Response, Error> {
        for f in &forwards {
            let ip = f.container.ip();
            let known = self
                .bridges
                .values()
                .flat_map(|b| b.spec.subnets.iter())
                .any(|(subnet, _)| subnet.contains(ip));
            if !known {
                return Err(Error::Infra(format!(
                    "cannot publish {}/{} to {}: {ip} is on no rcrun network",
                    f.host, f.protocol, f.container
                )));
            }
            if f.container.port() == 0 {
                return Err(Error::Infra(format!(
                    "cannot publish {}/{} to port 0 of {ip}",
                    f.host, f.protocol
                )));
            }
        }
        let served = forward::serve(forwards, sockets)?;
        self.published.entry(owner).or_default().extend(served);
        Ok(Response::Done)
    }

    async fn status(&self) -> Result<Status, Error> {
        let mut containers: Vec<ContainerStatus> = self
            .containers
            .iter()
            .map(|(id, c)| ContainerStatus {
                id: id.clone(),
                veths: c.links.iter().map(|l| l.host.clone()).collect(),
                forwards: c.forwards.iter().map(|(f, _)| f.clone()).collect(),
            })
            .collect();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Status {
            bridges: self.bridges.keys().cloned().collect(),
            links: self.n0.link_names().await?,
            containers,
            published: self
                .published
                .values()
                .flatten()
                .map(|(f, _)| f.clone())
                .collect(),
        })
    }

    async fn handle(
        &mut self,
        owner: u64,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> (Response, Option<OwnedFd>) {
        let result = match req {
            Request::Hello => Ok(Response::Hello(Hello {
                pid: std::process::id() as i32,
                egress_off: self.egress_off.clone(),
                host_gateway: self.egress().map(|_| IpAddr::V4(egress::HOST_GATEWAY)),
            })),
            Request::Setup {
                container,
                attachments,
                forwards,
                host_access,
            } => {
                return match self
                    .setup(owner, container, attachments, forwards, fds, host_access)
                    .await
                {
                    Ok(fd) => (Response::Netns, Some(fd)),
                    Err(e) => (Response::Failed(e.to_string()), None),
                };
            }
            Request::Attach {
                container,
                attachment,
            } => match self.containers.remove(&container) {
                None => Err(Error::Infra(format!(
                    "container {container} has no network here (is it running?)"
                ))),
                Some(mut ctr) => {
                    let done = self.attach(&container, &mut ctr, &attachment).await;
                    let host_access = ctr.host_access;
                    self.containers.insert(container, ctr);
                    done.and_then(|()| {
                        if host_access {
                            self.apply_firewall()?;
                        }
                        Ok(Response::Done)
                    })
                }
            },
            Request::Detach { container, bridge } => self.detach(&container, &bridge).await,
            Request::Release { container } => {
                self.release(&container).await.map(|()| Response::Done)
            }
            Request::RemoveBridge { bridge } => self.remove_bridge(&bridge).await,
            Request::Status => self.status().await.map(Response::Status),
            Request::Publish { forwards } => self.publish(owner, forwards, fds),
            Request::Probe { .. } => Err(Error::Internal(
                "a probe reached the state lock; serve_client runs it".into(),
            )),
        };
        (
            result.unwrap_or_else(|e| Response::Failed(e.to_string())),
            None,
        )
    }

    async fn detach(&mut self, container: &str, bridge: &str) -> Result<Response, Error> {
        let Some(ctr) = self.containers.get_mut(container) else {
            return Err(Error::Infra(format!(
                "container {container} has no network here (is it running?)"
            )));
        };
        let Some(pos) = ctr.links.iter().position(|l| l.bridge == bridge) else {
            return Err(Error::Infra(format!(
                "container {container} is not attached to bridge {bridge}"
            )));
        };
        let link = ctr.links.remove(pos);
        let host_access = ctr.host_access;
        if let Some(b) = self.bridges.get(bridge) {
            self.dns.remove_endpoint(container, &b.spec.name);
        }
        self.n0.delete(&link.host).await?;
        if host_access {
            self.apply_firewall()?;
        }
        Ok(Response::Done)
    }

    async fn remove_bridge(&mut self, bridge: &str) -> Result<Response, Error> {
        if self.bridge_in_use(bridge) {
            return Err(Error::Infra(format!(
                "bridge {bridge} still has containers attached"
            )));
        }
        self.n0.delete(bridge).await?;
        if self.forget_bridge(bridge) {
            self.apply_firewall()?;
        }
        Ok(Response::Done)
    }

    async fn client_gone(&mut self, owner: u64) {
        let owned: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, c)| c.owner == owner)
            .map(|(id, _)| id.clone())
            .collect();
        for id in owned {
            if let Err(e) = self.release(&id).await {
                eprintln!("rcrun infra: release container {id}: {e}");
            }
        }
        // Stops its published ports and closes their sockets.
        self.published.remove(&owner);
        self.clients.remove(&owner);
        self.update_idle();
    }
}

/// dnsd's UDP and TCP sockets on `at`. Free-bind: an IPv6 gateway address may
/// still be tentative.
fn dns_sockets(
    at: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    };
    let family = if at.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let addr = SockaddrStorage::from(at);
    let make = |ty: SockType| -> std::io::Result<OwnedFd> {
        let fd = socket(
            family,
            ty,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&fd, sockopt::IpFreebind, &true)?;
        if ty == SockType::Stream {
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        }
        bind(fd.as_raw_fd(), &addr)?;
        Ok(fd)
    };
    let udp = make(SockType::Datagram)?;
    let tcp = make(SockType::Stream)?;
    listen(&tcp, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
    Ok((
        tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(udp))?,
        tokio::net::TcpListener::from_std(std::net::TcpListener::from(tcp))?,
    ))
}

/// A stable, locally administered MAC from the first address: 02:52 then the
/// IPv4 (or the last four bytes of the IPv6). Unique on a bridge, since each
/// address is; a bridge gets its gateway's, which also pins it: a bridge left to
/// itself takes the lowest MAC of its ports, and changes it when that port goes,
/// which strands its containers' ARP entries for the gateway.
fn mac_for(address: Option<IpAddr>) -> [u8; 6] {
    let tail = match address {
        Some(IpAddr::V4(v4)) => v4.octets(),
        Some(IpAddr::V6(v6)) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
        None => Ipv4Addr::UNSPECIFIED.octets(),
    };
    [0x02, 0x52, tail[0], tail[1], tail[2], tail[3]]
}

/// A new network namespace (owned by the infra's user namespace) and a netlink
/// connection inside it, made from a short-lived thread.
fn new_netns(id: &str) -> Result<(OwnedFd, Netlink), Error> {
    let runtime = tokio::runtime::Handle::current();
    let what = format!("the namespace of container {}", &id[..id.len().min(12)]);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let _guard = runtime.enter();
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::sys("create the container's network namespace", e))?;
                let fd = std::fs::File::open("/proc/thread-self/ns/net")
                    .map_err(|e| Error::io("open the container's network namespace", e))?;
                let netlink = Netlink::open(&what)?;
                Ok((OwnedFd::from(fd), netlink))
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("namespace thread panicked".into())))
    })
}

fn watch(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the descriptor; nothing else closes or replaces it.
    unsafe { AsyncFd::register(fd).map_err(|e| e.into_parts().1) }
}

async fn recv_request(fd: &AsyncFd<OwnedFd>) -> Option<(Request, Vec<OwnedFd>)> {
    loop {
        let mut guard = fd.readable().await.ok()?;
        match guard.try_io(|inner| {
            wire::recv::<Request>(inner.get_ref().as_fd(), MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)
        }) {
            Ok(Ok(msg)) => return msg,
            Ok(Err(_)) => return None,
            Err(_would_block) => continue,
        }
    }
}

async fn send_response(fd: &AsyncFd<OwnedFd>, resp: &Response, attach: Option<&OwnedFd>) -> bool {
    let fds: Vec<i32> = attach.iter().map(|f| f.as_raw_fd()).collect();
    loop {
        let Ok(mut guard) = fd.ready(Interest::WRITABLE).await else {
            return false;
        };
        match guard.try_io(|inner| {
            wire::send(inner.get_ref().as_fd(), resp, &fds).map_err(std::io::Error::from)
        }) {
            Ok(r) => return r.is_ok(),
            Err(_would_block) => continue,
        }
    }
}

async fn serve_client(state: Rc<Mutex<State>>, fd: Rc<AsyncFd<OwnedFd>>, owner: u64) {
    while let Some((req, fds)) = recv_request(&fd).await {
        let (resp, attach) = match req {
            // Without the lock: it may wait its whole timeout, and other
            // connections must not.
            Request::Probe {
                protocol,
                addr,
                timeout,
            } => match probe::probe(protocol, addr, timeout).await {
                Ok(p) => (Response::Probe(p), None),
                Err(e) => (Response::Failed(e.to_string()), None),
            },
            req => state.lock().await.handle(owner, req, fds).await,
        };
        if !send_response(&fd, &resp, attach.as_ref()).await {
            break;
        }
    }
    state.lock().await.client_gone(owner).await;
}

async fn serve(state: State, listener: AsyncFd<OwnedFd>, linger: Duration, dir: &Path) {
    let mut idle = state.idle.subscribe();
    let state = Rc::new(Mutex::new(state));
    let mut next_owner = 0u64;
    loop {
        let is_idle = *idle.borrow_and_update();
        tokio::select! {
            ready = listener.readable() => {
                let Ok(mut guard) = ready else { break };
                let accepted = guard.try_io(|inner| {
                    nix::sys::socket::accept4(
                        inner.get_ref().as_raw_fd(),
                        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                    )
                    .map_err(std::io::Error::from)
                });
                let Ok(Ok(raw)) = accepted else { continue };
                // SAFETY: accept4 returned a new descriptor we own.
                let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                let Ok(conn) = watch(conn).map(Rc::new) else { continue };
                next_owner += 1;
                {
                    let mut st = state.lock().await;
                    st.clients.insert(next_owner, conn.clone());
                    st.update_idle();
                }
                tokio::task::spawn_local(serve_client(state.clone(), conn, next_owner));
            }
            changed = idle.changed() => {
                if changed.is_err() { break }
            }
            _ = tokio::time::sleep(linger), if is_idle => {
                let st = state.lock().await;
                if st.clients.is_empty() && st.containers.is_empty() {
                    // A client still in the backlog sees the socket close, and
                    // starts a new infra.
                    break;
                }
            }
        }
    }
    let _ = std::fs::remove_file(dir.join(SOCKET));
}
