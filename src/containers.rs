//! Containers made from images: their files under `<data>/containers/<id>`, their
//! record in the metadata store, their run (foreground, or detached under a monitor
//! that reaps them and records the exit code), and stop/kill/rm/exec/logs.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::unistd::{ForkResult, Pid};
use runtime::{ExecOptions, OverlayDriver, RootfsOverlay, RunOptions, Runtime, Status};
use serde::Serialize;

use crate::db::{ContainerRow, Db, ImageRow, short_id};
use crate::images::{Images, PullOptions, remove_trees};
use crate::networks::{self, DEFAULT_NETWORK, PortRow};
use crate::spec::{self, ContainerFiles, NetNs, ResolvedUser, RunRequest};
use crate::volumes;

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootfsDriver {
    Overlay(OverlayDriver),
    /// No overlay can be mounted: each container gets a copy of its image.
    Copy,
}

/// The largest /etc/passwd or /etc/group rcrun reads from an image.
const ACCOUNT_FILE_LIMIT: u64 = 4 << 20;

pub struct Containers {
    pub images: Images,
    runtime: Runtime,
}

#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    pub request: RunRequest,
    pub name: Option<String>,
    pub detach: bool,
    pub remove: bool,
    pub interactive: bool,
    pub pull: PullOptions,
    pub network: NetworkMode,
    pub publish: Vec<Publish>,
    pub add_hosts: Vec<(String, HostTarget)>,
    /// `--dns`: nameservers instead of the network's dnsd.
    pub dns: Vec<IpAddr>,
    /// `--dns-search` (validated names; empty: the networks' domains and the host's).
    pub dns_search: Vec<String>,
    /// `--link CONTAINER[:ALIAS]`: (container, alias).
    pub links: Vec<(String, String)>,
    /// Descriptors a detached container's monitor keeps open for its life (the
    /// services it holds).
    pub keep_fds: Vec<RawFd>,
}

/// A container's /etc/hosts and /etc/resolv.conf.
struct NameFiles {
    hosts: String,
    resolv: String,
}

/// `--network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// rcrun networks (none named: the default one).
    Bridge(Vec<NetworkChoice>),
    Host,
    None,
}

impl Default for NetworkMode {
    fn default() -> Self {
        NetworkMode::Bridge(Vec::new())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkChoice {
    pub name: String,
    pub ip: Option<IpAddr>,
    pub aliases: Vec<String>,
}

/// `-p [HOSTIP:]HOSTPORT:CTRPORT[/PROTO]` or `-p CTRPORT` (host port 0: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub protocol: netns::Protocol,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
}

/// The address side of `--add-host NAME:ADDRESS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostTarget {
    Ip(IpAddr),
    /// `host-gateway`: the host's loopback, through egress.
    HostGateway,
}

/// A container's network while rcrun runs it: the connection to the infra owns
/// it (closing every copy releases it), the namespace is what the container joins.
pub(crate) struct ContainerNet {
    pub(crate) infra: netns::Infra,
    netns: OwnedFd,
}

impl ContainerNet {
    pub(crate) fn fds(&self) -> [RawFd; 2] {
        [self.infra.as_fd().as_raw_fd(), self.netns.as_raw_fd()]
    }
}

/// A container as `ps` and `inspect` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    #[serde(flatten)]
    pub row: ContainerRow,
    pub status: String,
    pub running: bool,
    pub pid: Option<i32>,
    pub dir: PathBuf,
}

/// The runtime's state root for rcrun's own containers (beside `rcrun oci`'s).
fn runtime_root() -> PathBuf {
    let oci = Runtime::default_root();
    oci.parent().map(|p| p.join("containers")).unwrap_or(oci)
}

pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn generated_name(id: &str) -> String {
    const FIRST: [&str; 8] = [
        "brave", "calm", "eager", "fancy", "gentle", "jolly", "keen", "quiet",
    ];
    const SECOND: [&str; 8] = [
        "hopper", "lovelace", "turing", "curie", "noether", "ritchie", "thompson", "liskov",
    ];
    let n = u64::from_str_radix(&id[..8], 16).unwrap_or(0) as usize;
    format!("{}_{}_{}", FIRST[n % 8], SECOND[(n / 8) % 8], &id[8..12])
}

/// A container's /etc/hosts: localhost, its hostname at `own` (127.0.1.1 off a
/// network), then `extra` (`--add-host`, `--link`), names validated.
fn hosts_text(hostname: &str, own: Option<IpAddr>, extra: &[(String, IpAddr)]) -> Result<String> {
    let entry = |name: &str, ip: IpAddr| -> Result<dnsd::HostsEntry> {
        Ok(dnsd::HostsEntry {
            ip,
            names: vec![name.parse().map_err(|e| anyhow!("/etc/hosts: {e}"))?],
        })
    };
    let mut entries = vec![entry(
        hostname,
        own.unwrap_or(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1))),
    )?];
    for (name, ip) in extra {
        entries.push(entry(name, *ip)?);
    }
    Ok(dnsd::render_hosts(&entries))
}

/// A container's /etc/resolv.conf. On an rcrun network: its dnsd (the first
/// network's `gateway`) and the networks' domains, then the host's search
/// domains and options; off one: the host's file. `--dns` and `--dns-search`
/// replace their parts.
fn resolv_text(flags: &RunFlags, network: Option<(IpAddr, Vec<String>)>) -> String {
    let host_text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if network.is_none() && flags.dns.is_empty() && flags.dns_search.is_empty() {
        return host_text;
    }
    let mut conf = dnsd::ResolvConf::parse(&host_text);
    if let Some((gateway, domains)) = network {
        conf.nameservers = vec![gateway];
        conf.search = domains.into_iter().chain(conf.search).collect();
    }
    if !flags.dns.is_empty() {
        conf.nameservers = flags.dns.clone();
    }
    if !flags.dns_search.is_empty() {
        // docker's `--dns-search .`: no search domains at all.
        conf.search = flags
            .dns_search
            .iter()
            .filter(|d| *d != ".")
            .cloned()
            .collect();
    }
    conf.render()
}

/// Reads everything from `fd` until EOF.
fn read_all(fd: OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = std::fs::File::from(fd).read_to_end(&mut out);
    out
}

/// A process's start time (clock ticks since boot), which tells a live process
/// from a new one that reused its pid.
fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(19)?.parse().ok()
}

fn owner_of(pid: i32) -> Option<(i32, u64)> {
    process_start(pid).map(|start| (pid, start))
}

impl Containers {
    pub fn open(data_dir: &Path) -> Result<Self> {
        let mut containers = Containers {
            images: Images::open(data_dir)?,
            runtime: Runtime::new(runtime_root()),
        };
        containers.reconcile()?;
        Ok(containers)
    }

    /// Finishes containers whose monitor died (`kill -9` of rcrun): kills what is
    /// left, records the exit, frees their addresses and ports.
    fn reconcile(&mut self) -> Result<()> {
        for (id, pid, start) in self.db().monitored()? {
            if process_start(pid) == Some(start) {
                continue;
            }
            if let Ok(state) = self.runtime.state(&id)
                && state.status == Status::Running
            {
                let _ = self.runtime.kill(&id, libc::SIGKILL);
                let _ = self.runtime.wait(&id, Duration::from_secs(5));
            }
            let _ = self.runtime.delete(&id, true);
            let auto_remove = self.db().container(&id)?.is_some_and(|c| c.auto_remove);
            networks::release(self.db(), &id)?;
            if auto_remove {
                self.remove_files(&id)?;
                self.db().remove_container(&id)?;
            } else {
                self.db().set_exit(&id, 128 + libc::SIGKILL)?;
            }
        }
        Ok(())
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.images.data_dir().join("containers").join(id)
    }

    fn db(&mut self) -> &mut Db {
        self.images.db()
    }

    fn lookup(&mut self, key: &str) -> Result<ContainerRow> {
        self.db()
            .container(key)?
            .ok_or_else(|| anyhow!("no such container: {key} (see `rcrun ps -a`)"))
    }

    /// Reads a file of the image (etc/passwd) the way the container sees it.
    fn image_file(&self, image: &ImageRow, path: &str) -> Result<Option<String>> {
        let bytes = self.images.snapshots().read_file(
            &image.chain_ids()?,
            Path::new(path),
            ACCOUNT_FILE_LIMIT,
        )?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn resolve_user(&self, image: &ImageRow, user: &str) -> Result<ResolvedUser> {
        spec::resolve_user(
            user,
            self.image_file(image, "etc/passwd")?.as_deref(),
            self.image_file(image, "etc/group")?.as_deref(),
        )
    }

    /// Creates the container's record, files and rootfs; returns its id and the
    /// overlay for the runtime to mount (none for a copied rootfs).
    pub(crate) fn create(
        &mut self,
        image: &ImageRow,
        image_name: &str,
        flags: &RunFlags,
    ) -> Result<(String, Option<RootfsOverlay>, Option<ContainerNet>)> {
        let config = self.images.config(image)?;
        let image_config = config.config().as_ref();
        let user_spec = flags
            .request
            .user
            .clone()
            .or_else(|| image_config.and_then(|c| c.user().clone()))
            .unwrap_or_default();
        let user = self.resolve_user(image, &user_spec)?;
        let command = spec::command_line(image_config, &flags.request)?;
        let volume_uses = volumes::uses(&flags.request.volumes)?;
        let id = random_hex(32)?;
        let name = match &flags.name {
            Some(n) => {
                spec::validate_name("container", n)?;
                n.clone()
            }
            None => generated_name(&id),
        };
        let hostname = flags
            .request
            .hostname
            .clone()
            .unwrap_or_else(|| id[..12].to_string());
        crate::spec::validate_hostname(&hostname)?;
        let row = ContainerRow {
            id: id.clone(),
            name,
            image: image.id.clone(),
            image_name: image_name.to_string(),
            command,
            created: runtime::now_rfc3339(),
            auto_remove: flags.remove,
            exit_code: None,
            finished: None,
        };
        self.db().insert_container(&row)?;
        self.db()
            .set_owner(&id, owner_of(std::process::id() as i32))?;
        let mut net = None;
        let mut new_volumes = Vec::new();
        let made = self
            .attach_volumes(&id, image, &user, &volume_uses, &mut new_volumes)
            .and_then(|()| self.setup_network((&id, &row.name), &hostname, flags))
            .and_then(|(n, request, files)| {
                net = n;
                self.write_files(image_config, &id, &hostname, &user, &request, &files)
            })
            .and_then(|()| self.prepare_rootfs(&id, &row.name, image));
        match made {
            Ok(overlay) => Ok((id, overlay, net)),
            Err(e) => {
                if let Some(net) = &net {
                    let _ = net.infra.release(&id);
                }
                let _ = self.remove_files(&id);
                let _ = networks::release(self.db(), &id);
                let _ = self.db().remove_container(&id);
                let data_dir = self.images.data_dir().to_path_buf();
                let _ = volumes::discard(self.db(), &data_dir, &new_volumes);
                Err(e)
            }
        }
    }

    /// Records the container's named volumes; makes the new ones from the image.
    fn attach_volumes(
        &mut self,
        id: &str,
        image: &ImageRow,
        user: &ResolvedUser,
        uses: &[volumes::Use],
        made: &mut Vec<String>,
    ) -> Result<()> {
        let lowers = self.images.lowerdirs(image)?;
        let data_dir = self.images.data_dir().to_path_buf();
        volumes::attach(self.db(), &data_dir, id, uses, &lowers, user, made)
    }

    /// Leases addresses, opens published ports and has the infra build the
    /// container's network namespace (its names registered with dnsd). Returns
    /// it, the run request pointing at it, and the container's name files.
    fn setup_network(
        &mut self,
        (id, name): (&str, &str),
        hostname: &str,
        flags: &RunFlags,
    ) -> Result<(Option<ContainerNet>, RunRequest, NameFiles)> {
        let mut request = flags.request.clone();
        let host_access = flags
            .add_hosts
            .iter()
            .any(|(_, t)| *t == HostTarget::HostGateway);
        let fixed_hosts = |gateway: Option<IpAddr>| -> Result<Vec<(String, IpAddr)>> {
            flags
                .add_hosts
                .iter()
                .map(|(name, target)| match target {
                    HostTarget::Ip(ip) => Ok((name.clone(), *ip)),
                    HostTarget::HostGateway => {
                        gateway.map(|g| (name.clone(), g)).ok_or_else(|| {
                            anyhow!("--add-host {name}:host-gateway needs a network with egress")
                        })
                    }
                })
                .collect()
        };
        let choices = match &flags.network {
            NetworkMode::Host | NetworkMode::None => {
                if !flags.publish.is_empty() {
                    bail!(
                        "-p publishes ports of a container on an rcrun network; it does nothing with --network host or none"
                    );
                }
                if !flags.links.is_empty() {
                    bail!(
                        "--link needs an rcrun network; it does nothing with --network host or none"
                    );
                }
                request.network = if flags.network == NetworkMode::Host {
                    NetNs::Host
                } else {
                    NetNs::Own
                };
                let files = NameFiles {
                    hosts: hosts_text(hostname, None, &fixed_hosts(None)?)?,
                    resolv: resolv_text(flags, None),
                };
                return Ok((None, request, files));
            }
            NetworkMode::Bridge(c) if c.is_empty() => vec![NetworkChoice {
                name: DEFAULT_NETWORK.into(),
                ..Default::default()
            }],
            NetworkMode::Bridge(c) => c.clone(),
        };
        let mut rows = Vec::new();
        for choice in &choices {
            if rows
                .iter()
                .any(|(n, _): &(networks::NetworkRow, _)| n.name == choice.name)
            {
                bail!("--network {} is given twice", choice.name);
            }
            let network = networks::find(self.db(), &choice.name)?;
            let attached = networks::attach(self.db(), id, &network, choice.ip, &choice.aliases)?;
            rows.push((network, attached));
        }
        let target = rows[0]
            .1
            .primary_address()
            .ok_or_else(|| anyhow!("network {} gave no address", rows[0].0.name))?;
        let mut sockets = Vec::new();
        let mut forwards = Vec::new();
        for p in &flags.publish {
            let host = SocketAddr::new(
                p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                p.host_port,
            );
            let (socket, bound) = netns::bind_host_port(p.protocol, host)?;
            networks::add_port(
                self.db(),
                id,
                &PortRow {
                    protocol: p.protocol,
                    host: bound,
                    container_port: p.container_port,
                },
            )?;
            sockets.push(socket);
            forwards.push(netns::Forward {
                protocol: p.protocol,
                host: bound,
                container: SocketAddr::new(target, p.container_port),
            });
        }
        let infra = networks::infra(self.images.data_dir())?;
        if host_access && infra.hello().host_gateway.is_none() {
            bail!(
                "--add-host NAME:host-gateway needs egress, which is off: {}",
                infra.hello().egress_off.clone().unwrap_or_default()
            );
        }
        let mut extra = fixed_hosts(infra.hello().host_gateway)?;
        extra.extend(self.link_hosts(&flags.links, &rows)?);
        let gateway = rows[0]
            .0
            .subnets
            .iter()
            .find(|(s, _)| s.contains(target))
            .map(|(_, gw)| *gw)
            .ok_or_else(|| anyhow!("{target} is in no subnet of network {}", rows[0].0.name))?;
        let domains = rows
            .iter()
            .map(|(n, _)| dnsd::network_domain(&n.name))
            .collect();
        let files = NameFiles {
            hosts: hosts_text(hostname, Some(target), &extra)?,
            resolv: resolv_text(flags, Some((gateway, domains))),
        };
        let attachments = rows
            .iter()
            .enumerate()
            .map(|(i, (n, a))| networks::to_attachment(n, a, i == 0, (name, id)))
            .collect();
        let netns = infra
            .setup(id, attachments, forwards, &sockets, host_access)
            .map_err(|e| anyhow!("set up the network of the container: {e}"))?;
        request.network = NetNs::Join {
            user: (!nix::unistd::Uid::effective().is_root())
                .then(|| PathBuf::from(format!("/proc/{}/ns/user", infra.hello().pid))),
            net: PathBuf::from(format!("/proc/self/fd/{}", netns.as_raw_fd())),
        };
        Ok((Some(ContainerNet { infra, netns }), request, files))
    }

    /// `--link C[:ALIAS]`: C's address on a network both containers are on,
    /// under ALIAS and C's name.
    fn link_hosts(
        &mut self,
        links: &[(String, String)],
        rows: &[(networks::NetworkRow, networks::AttachmentRow)],
    ) -> Result<Vec<(String, IpAddr)>> {
        let mut out = Vec::new();
        for (key, alias) in links {
            let target = self.lookup(key)?;
            if !self.view(target.clone()).running {
                bail!("--link {key}: container {} is not running", target.name);
            }
            let theirs = networks::attachments(self.db(), &target.id)?;
            let shared = theirs
                .iter()
                .find(|a| rows.iter().any(|(n, _)| n.name == a.network))
                .ok_or_else(|| {
                    anyhow!(
                        "--link {key}: container {} is on no network of this container; run this one with --network {} or connect it: rcrun network connect NETWORK {}",
                        target.name,
                        theirs.first().map_or("NETWORK", |a| a.network.as_str()),
                        target.name
                    )
                })?;
            let ip = shared
                .primary_address()
                .ok_or_else(|| anyhow!("--link {key}: container {} has no address", target.name))?;
            out.push((alias.clone(), ip));
            if *alias != target.name && target.name.parse::<dnsd::Name>().is_ok() {
                out.push((target.name.clone(), ip));
            }
        }
        Ok(out)
    }

    fn write_files(
        &self,
        image_config: Option<&oci_spec::image::Config>,
        id: &str,
        hostname: &str,
        user: &ResolvedUser,
        request: &RunRequest,
        files: &NameFiles,
    ) -> Result<()> {
        let dir = self.dir(id);
        for sub in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("create {}", dir.join(sub).display()))?;
        }
        let hosts = dir.join("hosts");
        let hostname_file = dir.join("hostname");
        let resolv = dir.join("resolv.conf");
        std::fs::write(&hosts, &files.hosts)?;
        std::fs::write(&hostname_file, format!("{hostname}\n"))?;
        std::fs::write(&resolv, &files.resolv)?;
        let maps = if nix::unistd::Uid::effective().is_root() {
            None
        } else {
            let (uids, gids, have_ranges) = runtime::current_user_mappings();
            if !have_ranges {
                eprintln!(
                    "warning: no subordinate ids for this user in /etc/subuid and /etc/subgid; files of other users in the image appear as nobody (add ranges with `usermod --add-subuids`/`--add-subgids`)"
                );
            }
            Some((uids, gids))
        };
        let volumes = volumes::root(self.images.data_dir());
        let files = ContainerFiles {
            rootfs: &dir.join("rootfs"),
            hosts: &hosts,
            hostname: &hostname_file,
            resolv_conf: &resolv,
            volumes: &volumes,
        };
        let spec = spec::build(
            image_config,
            request,
            user,
            hostname,
            maps.as_ref().map(|(u, g)| (u.as_slice(), g.as_slice())),
            &files,
        )?;
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&spec)? + "\n",
        )
        .with_context(|| format!("write {}", dir.join("config.json").display()))
    }

    /// How containers get their rootfs here: `$RCRUN_ROOTFS` (overlay, fuse, copy)
    /// if set, else what a probe found (cached per kernel release).
    fn rootfs_driver(&self) -> Result<RootfsDriver> {
        if let Some(forced) = std::env::var_os("RCRUN_ROOTFS").filter(|v| !v.is_empty()) {
            return match forced.to_str() {
                Some("overlay") => Ok(RootfsDriver::Overlay(OverlayDriver::Kernel)),
                Some("fuse") => Ok(RootfsDriver::Overlay(OverlayDriver::Fuse)),
                Some("copy") => Ok(RootfsDriver::Copy),
                _ => bail!("RCRUN_ROOTFS={forced:?}: use overlay, fuse or copy"),
            };
        }
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let cache = self.images.data_dir().join("rootfs-driver");
        if let Ok(text) = std::fs::read_to_string(&cache)
            && let Some((driver, cached_release)) = text.trim().split_once(' ')
            && cached_release == release
        {
            match driver {
                "overlay" => return Ok(RootfsDriver::Overlay(OverlayDriver::Kernel)),
                "fuse" => return Ok(RootfsDriver::Overlay(OverlayDriver::Fuse)),
                "copy" => return Ok(RootfsDriver::Copy),
                _ => {}
            }
        }
        let scratch = self.images.data_dir().join("containers");
        std::fs::create_dir_all(&scratch)?;
        let (driver, word) = match runtime::probe_overlay(&scratch) {
            Ok(OverlayDriver::Kernel) => (RootfsDriver::Overlay(OverlayDriver::Kernel), "overlay"),
            Ok(OverlayDriver::Fuse) => {
                eprintln!(
                    "rcrun: the kernel's overlayfs is not available to you; using fuse-overlayfs for container root filesystems"
                );
                (RootfsDriver::Overlay(OverlayDriver::Fuse), "fuse")
            }
            Err(e) => {
                eprintln!(
                    "rcrun: no overlay filesystem is available ({e}); every container gets a full copy of its image instead (slower, more disk). Install fuse-overlayfs to avoid it."
                );
                (RootfsDriver::Copy, "copy")
            }
        };
        let _ = std::fs::write(&cache, format!("{word} {release}\n"));
        Ok(driver)
    }

    /// Makes the container's rootfs: an overlay for the runtime to mount, or a copy
    /// of the image made here.
    fn prepare_rootfs(
        &self,
        id: &str,
        name: &str,
        image: &ImageRow,
    ) -> Result<Option<RootfsOverlay>> {
        let dir = self.dir(id);
        let lowers = self.images.lowerdirs(image)?;
        match self.rootfs_driver()? {
            RootfsDriver::Overlay(driver) => Ok(Some(RootfsOverlay {
                lowers,
                upper: dir.join("upper"),
                work: dir.join("work"),
                driver,
            })),
            RootfsDriver::Copy => {
                let rootfs = dir.join("rootfs");
                runtime::run_in_user_namespace("copy the image into the container", || {
                    snapshots::flatten(&lowers, &rootfs).map_err(|e| e.to_string())
                })
                .with_context(|| format!("copy the image into container {name}"))?;
                Ok(None)
            }
        }
    }

    /// The image, pulled if missing (progress on stderr when it is a terminal).
    pub fn find_or_pull(&mut self, image_name: &str, pull: &PullOptions) -> Result<ImageRow> {
        match crate::progress::for_stderr() {
            Some(display) => {
                let found = self.images.find_or_pull(image_name, pull, &display);
                display.finish();
                found
            }
            None => self
                .images
                .find_or_pull(image_name, pull, &crate::images::NoDisplay),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.images.data_dir()
    }

    /// Forks with the store's connection closed (SQLite's must not cross a fork);
    /// the parent gets it back, the child opens its own when it needs one.
    pub(crate) fn fork(&mut self, what: &str) -> Result<ForkResult> {
        self.db().suspend()?;
        // SAFETY: rcrun is single-threaded here (the runtime checks it again).
        let forked = unsafe { nix::unistd::fork() }.with_context(|| format!("fork {what}"));
        if !matches!(forked, Ok(ForkResult::Child)) {
            self.db().resume()?;
        }
        forked
    }

    pub(crate) fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("ctr.log")
    }

    /// The container's address on its first network.
    pub(crate) fn primary_address(&mut self, id: &str) -> Result<Option<IpAddr>> {
        Ok(networks::attachments(self.db(), id)?
            .first()
            .and_then(|a| a.primary_address()))
    }

    /// Starts a created container whose caller stays as its monitor (a service's
    /// supervisor); returns its process.
    pub(crate) fn start_attached(
        &mut self,
        id: &str,
        overlay: Option<RootfsOverlay>,
    ) -> Result<Pid> {
        // SAFETY: plain prctl; orphans of the container come here to be reaped.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        self.runtime.run(
            id,
            &self.dir(id),
            &RunOptions {
                detach: true,
                overlay,
                die_with_parent: true,
                ..Default::default()
            },
        )?;
        Ok(Pid::from_raw(self.runtime.state(id)?.pid))
    }

    /// Runs `command` in the container; its exit code and output.
    pub(crate) fn exec_captured(&mut self, id: &str, command: &[String]) -> Result<(i32, String)> {
        let capture = self.dir(id).join("health.out");
        let file = std::fs::File::create(&capture)
            .with_context(|| format!("create {}", capture.display()))?;
        let saved = [1, 2].map(|fd| {
            // SAFETY: dup of an open standard descriptor.
            unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) }
        });
        let _ = dup_onto(&file, 1).and_then(|()| dup_onto(&file, 2));
        let code = self.runtime.exec(
            id,
            &ExecOptions {
                args: command.to_vec(),
                ..Default::default()
            },
        );
        for (fd, to) in saved.into_iter().zip([1, 2]) {
            if fd >= 0 {
                // SAFETY: restores the saved descriptor and closes the copy.
                unsafe {
                    libc::dup2(fd, to);
                    libc::close(fd);
                }
            }
        }
        let output = std::fs::read_to_string(&capture).unwrap_or_default();
        let tail: Vec<&str> = output.lines().rev().take(5).collect();
        let output = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        Ok((code?, output))
    }

    /// Stops a container this process monitors: its stop signal, SIGKILL after
    /// `timeout`. The caller reaps it.
    pub(crate) fn stop_process(&mut self, id: &str, pidfd: &OwnedFd, timeout: Duration) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let signal = self.stop_signal(id).unwrap_or(libc::SIGTERM);
        let exited = |wait: Duration| {
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(wait.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::NONE);
            matches!(poll(&mut fds, ms), Ok(n) if n > 0)
        };
        if self.runtime.kill(id, signal).is_ok() && exited(timeout) {
            return;
        }
        let _ = self.runtime.kill(id, libc::SIGKILL);
        exited(Duration::from_secs(10));
    }

    /// The image's StopSignal, if it has one.
    fn stop_signal(&self, id: &str) -> Option<i32> {
        let row = self.images.db_ref().container(id).ok()??;
        let image = self.images.db_ref().image_by_id(&row.image).ok()??;
        let config = self.images.config(&image).ok()?;
        let signal = config.config().as_ref()?.stop_signal().clone()?;
        runtime::parse_signal(&signal).ok()
    }

    /// Deletes a service's container after its process ended; frees its network.
    pub(crate) fn finish_service(&mut self, id: &str, code: i32) -> Result<()> {
        let _ = self.runtime.delete(id, true);
        if self.db().container(id)?.is_some() {
            self.finish(id, code, true)?;
        }
        Ok(())
    }

    /// `rcrun run`: pulls if needed, creates, runs. Returns the exit code to use.
    pub fn run(&mut self, image_name: &str, flags: &RunFlags) -> Result<i32> {
        let image = self.find_or_pull(image_name, &flags.pull)?;
        let (id, overlay, net) = self.create(&image, image_name, flags)?;
        if flags.detach {
            self.start_detached(&id, overlay, flags, net)?;
            println!("{id}");
            return Ok(0);
        }
        if !flags.interactive {
            redirect_stdin_to_null()?;
        }
        let result = self.runtime.run(
            &id,
            &self.dir(&id),
            &RunOptions {
                overlay,
                die_with_parent: true,
                ..Default::default()
            },
        );
        let code = match &result {
            Ok(code) => *code,
            Err(e) => e.exit_code(),
        };
        // Closing the connection releases the network; the infra deletes the veths
        // (an RCU grace period each) after rcrun has gone.
        drop(net);
        self.finish(&id, code, flags.remove)?;
        result.map_err(Into::into)
    }

    /// Records the exit and frees the container's addresses and ports; removes
    /// the container if it was `--rm`.
    fn finish(&mut self, id: &str, code: i32, remove: bool) -> Result<()> {
        networks::release(self.db(), id)?;
        if remove {
            self.remove_files(id)?;
            self.db().remove_container(id)
        } else {
            self.db().set_exit(id, code)
        }
    }

    /// Forks the monitor, which starts the container with its output in the log and
    /// stays to reap it; returns once the container runs (or failed to start).
    fn start_detached(
        &mut self,
        id: &str,
        overlay: Option<RootfsOverlay>,
        flags: &RunFlags,
        net: Option<ContainerNet>,
    ) -> Result<()> {
        let remove = flags.remove;
        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create a pipe")?;
        let log = self.dir(id).join("ctr.log");
        match self.fork("the container's monitor")? {
            ForkResult::Child => {
                drop(read_end);
                let keep: Vec<RawFd> = net
                    .as_ref()
                    .map(|n| n.fds().to_vec())
                    .unwrap_or_default()
                    .into_iter()
                    .chain(flags.keep_fds.iter().copied())
                    .collect();
                let code = self.monitor(id, overlay, remove, &log, write_end, &keep);
                drop(net);
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(write_end);
                // The monitor holds the network now.
                drop(net);
                self.db().set_owner(id, owner_of(child.as_raw()))?;
                let answer = read_all(read_end);
                let answer = String::from_utf8_lossy(&answer);
                if answer == "ok" {
                    return Ok(());
                }
                let (code, message) = answer.split_once('\n').unwrap_or(("125", &answer));
                let code: i32 = code.parse().unwrap_or(125);
                self.finish(id, code, remove)?;
                let message = if message.is_empty() {
                    "the container's monitor died before the container started"
                } else {
                    message
                };
                Err(anyhow::Error::new(crate::Failure {
                    code,
                    message: message.to_string(),
                }))
            }
        }
    }

    /// The monitor: its own session, stdio on the log; starts the container, tells
    /// the parent, reaps it (as a subreaper), records the exit.
    fn monitor(
        &mut self,
        id: &str,
        overlay: Option<RootfsOverlay>,
        remove: bool,
        log: &Path,
        report: OwnedFd,
        keep: &[RawFd],
    ) -> i32 {
        let setup = (|| -> Result<()> {
            if report.as_raw_fd() < 3 {
                bail!("the monitor's report pipe is a standard descriptor");
            }
            nix::unistd::setsid().context("setsid")?;
            redirect_stdin_to_null()?;
            redirect_output_to(log)?;
            // Whatever the caller of `run -d` left open (a CI job's pipes) must not
            // stay open for the container's lifetime.
            let keep: Vec<RawFd> = keep
                .iter()
                .chain(std::iter::once(&report.as_raw_fd()))
                .copied()
                .collect();
            close_other_fds(&keep);
            Ok(())
        })();
        let started = setup.and_then(|()| self.start_attached(id, overlay));
        let mut report = std::fs::File::from(report);
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                let _ = write!(report, "{}\n{e:#}", crate::exit_code_of(&e));
                return 125;
            }
        };
        let _ = report.write_all(b"ok");
        drop(report);
        let code = reap_until(pid);
        let _ = self.runtime.delete(id, true);
        let recorded = self.db().resume().and_then(|()| {
            if self.db().container(id)?.is_some() {
                self.finish(id, code, remove)?;
            }
            Ok(())
        });
        if let Err(e) = recorded {
            eprintln!("rcrun monitor: record the exit of {id}: {e:#}");
        }
        0
    }

    fn view(&self, row: ContainerRow) -> ContainerView {
        let state = self.runtime.state(&row.id).ok();
        let live = state.as_ref().map(|s| s.status);
        let running = matches!(live, Some(Status::Running));
        let status = match (live, row.exit_code) {
            (Some(Status::Running), _) => "running".to_string(),
            (Some(Status::Created), _) => "created".to_string(),
            (_, Some(code)) => format!("exited ({code})"),
            (Some(_), None) => "stopped".to_string(),
            (None, None) => "created".to_string(),
        };
        ContainerView {
            dir: self.dir(&row.id),
            pid: state.filter(|_| running).map(|s| s.pid),
            status,
            running,
            row,
        }
    }

    pub fn list(&mut self, all: bool) -> Result<Vec<ContainerView>> {
        let rows = self.db().containers()?;
        Ok(rows
            .into_iter()
            .map(|r| self.view(r))
            .filter(|v| all || v.running)
            .collect())
    }

    pub fn inspect(&mut self, key: &str) -> Result<serde_json::Value> {
        let row = self.lookup(key)?;
        let dir = self.dir(&row.id);
        let spec: serde_json::Value = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let attachments = networks::attachments(self.db(), &row.id)?;
        let ports = networks::ports(self.db(), &row.id)?;
        let view = self.view(row);
        let mut value = serde_json::to_value(&view)?;
        value["networks"] = serde_json::to_value(attachments)?;
        value["ports"] = serde_json::to_value(ports)?;
        value["spec"] = spec;
        value["log_path"] = serde_json::json!(dir.join("ctr.log"));
        Ok(value)
    }

    pub fn kill(&mut self, key: &str, signal: i32) -> Result<()> {
        let row = self.lookup(key)?;
        if !self.view(row.clone()).running {
            bail!("container {} is not running", row.name);
        }
        self.runtime.kill(&row.id, signal)?;
        Ok(())
    }

    /// SIGTERM (or the image's StopSignal), then SIGKILL after `timeout`.
    pub fn stop(&mut self, key: &str, timeout: Duration) -> Result<()> {
        let row = self.lookup(key)?;
        if !self.view(row.clone()).running {
            return Ok(());
        }
        let signal = self.stop_signal(&row.id).unwrap_or(libc::SIGTERM);
        if self.runtime.kill(&row.id, signal).is_ok() && self.runtime.wait(&row.id, timeout)? {
            return self.await_recorded(&row.id);
        }
        let _ = self.runtime.kill(&row.id, libc::SIGKILL);
        self.runtime.wait(&row.id, Duration::from_secs(10))?;
        self.await_recorded(&row.id)
    }

    /// Waits (with backoff) until whoever runs the container has recorded its exit.
    fn await_recorded(&mut self, id: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(1);
        while Instant::now() < deadline {
            let gone = self.runtime.state(id).is_err();
            let row = self.db().container(id)?;
            if gone && row.is_none_or(|r| r.exit_code.is_some()) {
                return Ok(());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        Ok(())
    }

    /// `rm`: a running container only with `force` (killed first).
    pub fn remove(&mut self, key: &str, force: bool) -> Result<String> {
        let row = self.lookup(key)?;
        let view = self.view(row.clone());
        if view.running && !force {
            bail!(
                "container {} is running: stop it first (rcrun stop {}) or use rm -f",
                row.name,
                row.name
            );
        }
        match self.runtime.delete(&row.id, true) {
            Ok(()) | Err(runtime::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.remove_files(&row.id)?;
        self.db().remove_container(&row.id)?;
        Ok(row.name)
    }

    /// `network connect`: attaches a running container to one more network.
    pub fn connect(
        &mut self,
        network: &str,
        key: &str,
        ip: Option<IpAddr>,
        aliases: &[String],
    ) -> Result<()> {
        let row = self.lookup(key)?;
        if !self.view(row.clone()).running {
            bail!(
                "container {} is not running: rcrun connects running containers",
                row.name
            );
        }
        let net = networks::find(self.db(), network)?;
        let first = networks::attachments(self.db(), &row.id)?.is_empty();
        let attached = networks::attach(self.db(), &row.id, &net, ip, aliases)?;
        let done = networks::infra(self.images.data_dir()).and_then(|infra| {
            infra
                .attach(
                    &row.id,
                    networks::to_attachment(&net, &attached, first, (&row.name, &row.id)),
                )
                .map_err(|e| anyhow!("connect {} to network {}: {e}", row.name, net.name))
        });
        if done.is_err() {
            networks::detach(self.db(), &row.id, &net.name)?;
        }
        done?;
        self.edit_resolv_conf(&row.id, |search| {
            let domain = dnsd::network_domain(&net.name);
            if !search.contains(&domain) {
                search.push(domain);
            }
        })
    }

    /// Rewrites a running container's resolv.conf search list in place: the
    /// file is bind-mounted, so its inode must stay.
    fn edit_resolv_conf(&self, id: &str, edit: impl FnOnce(&mut Vec<String>)) -> Result<()> {
        let path = self.dir(id).join("resolv.conf");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let mut conf = dnsd::ResolvConf::parse(&text);
        let before = conf.search.clone();
        edit(&mut conf.search);
        if conf.search == before {
            return Ok(());
        }
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(conf.render().as_bytes()))
            .with_context(|| format!("update {}", path.display()))
    }

    /// `network disconnect`.
    pub fn disconnect(&mut self, network: &str, key: &str) -> Result<()> {
        let row = self.lookup(key)?;
        let net = networks::network(self.db_ref(), network)?.ok_or_else(|| {
            anyhow::anyhow!("network {network:?} not found (see `rcrun network ls`)")
        })?;
        if !networks::attachments(self.db(), &row.id)?
            .iter()
            .any(|a| a.network == net.name)
        {
            bail!("container {} is not on network {}", row.name, net.name);
        }
        if self.view(row.clone()).running {
            networks::infra(self.images.data_dir())?
                .detach(&row.id, &net.bridge)
                .map_err(|e| anyhow!("disconnect {} from {}: {e}", row.name, net.name))?;
        }
        networks::detach(self.db(), &row.id, &net.name)?;
        let domain = dnsd::network_domain(&net.name);
        self.edit_resolv_conf(&row.id, |search| search.retain(|d| *d != domain))
    }

    /// `network rm`: refused while containers use it, unless `force` (then they
    /// are disconnected).
    pub fn remove_network(&mut self, name: &str, force: bool) -> Result<()> {
        if name == DEFAULT_NETWORK {
            bail!("{DEFAULT_NETWORK} is the default network and cannot be removed");
        }
        let net = networks::network(self.db_ref(), name)?.ok_or_else(|| {
            anyhow::anyhow!("network {name:?} not found (see `rcrun network ls`)")
        })?;
        let users = networks::users(self.db_ref(), &net.name)?;
        if !users.is_empty() && !force {
            let names: Vec<String> = users
                .iter()
                .filter_map(|id| self.images.db_ref().container(id).ok().flatten())
                .map(|c| c.name)
                .collect();
            bail!(
                "network {} is in use by container(s) {}: remove or disconnect them first, or use -f",
                net.name,
                names.join(", ")
            );
        }
        for id in users {
            self.disconnect(&net.name, &id)?;
        }
        let dir = networks::runtime_dir(self.images.data_dir())?;
        if let Some(infra) = netns::Infra::connect(&dir)? {
            infra.remove_bridge(&net.bridge)?;
        }
        networks::remove(self.db(), &net.name)
    }

    /// `network inspect`: the network and its containers.
    pub fn inspect_network(&mut self, name: &str) -> Result<serde_json::Value> {
        let net = networks::network(self.db_ref(), name)?.ok_or_else(|| {
            anyhow::anyhow!("network {name:?} not found (see `rcrun network ls`)")
        })?;
        let mut containers = Vec::new();
        for id in networks::users(self.db_ref(), &net.name)? {
            let Some(row) = self.db().container(&id)? else {
                continue;
            };
            let attachment = networks::attachments(self.db(), &id)?
                .into_iter()
                .find(|a| a.network == net.name);
            containers.push(serde_json::json!({
                "id": id, "name": row.name, "attachment": attachment,
            }));
        }
        let mut value = serde_json::to_value(&net)?;
        value["containers"] = serde_json::json!(containers);
        let dir = networks::runtime_dir(self.images.data_dir())?;
        if let Some(infra) = netns::Infra::connect(&dir)? {
            value["egress"] = match &infra.hello().egress_off {
                None if net.internal => serde_json::json!("off: internal network"),
                None => serde_json::json!("on"),
                Some(reason) => serde_json::json!(format!("off: {reason}")),
            };
        }
        Ok(value)
    }

    /// `port`: the container's published ports.
    pub fn ports(&mut self, key: &str) -> Result<Vec<PortRow>> {
        let row = self.lookup(key)?;
        networks::ports(self.db(), &row.id)
    }

    fn db_ref(&self) -> &Db {
        self.images.db_ref()
    }

    fn remove_files(&self, id: &str) -> Result<()> {
        remove_trees(
            &format!("remove the files of container {}", short_id(id)),
            &[self.dir(id)],
        )
    }

    pub fn exec(&mut self, key: &str, opts: &ExecFlags) -> Result<i32> {
        let row = self.lookup(key)?;
        if !self.view(row.clone()).running {
            bail!("container {} is not running", row.name);
        }
        let user = match &opts.user {
            Some(u) => {
                let image = self
                    .images
                    .db_ref()
                    .image_by_id(&row.image)?
                    .ok_or_else(|| anyhow!("the image of container {} is gone", row.name))?;
                let r = self.resolve_user(&image, u)?;
                Some((r.uid, Some(r.gid)))
            }
            None => None,
        };
        if !opts.interactive {
            redirect_stdin_to_null()?;
        }
        Ok(self.runtime.exec(
            &row.id,
            &ExecOptions {
                args: opts.command.clone(),
                env: opts.env.clone(),
                cwd: opts.workdir.clone(),
                user,
                tty: opts.tty,
                detach: opts.detach,
                pid_file: None,
                ..Default::default()
            },
        )?)
    }

    /// Copies the log to `out`; with `follow`, until the container stops.
    pub fn logs(&mut self, key: &str, follow: bool, out: &mut dyn Write) -> Result<()> {
        let row = self.lookup(key)?;
        let path = self.dir(&row.id).join("ctr.log");
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        };
        let mut pause = Duration::from_millis(1);
        loop {
            let copied = std::io::copy(&mut file, out)?;
            out.flush()?;
            if !follow {
                return Ok(());
            }
            if copied > 0 {
                pause = Duration::from_millis(1);
                continue;
            }
            if !self.view(row.clone()).running {
                std::io::copy(&mut file, out)?;
                return Ok(());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExecFlags {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<PathBuf>,
    pub user: Option<String>,
    pub tty: bool,
    pub interactive: bool,
    pub detach: bool,
}

/// Makes descriptor `to` a copy of `from`.
fn dup_onto(from: &std::fs::File, to: i32) -> std::io::Result<()> {
    // SAFETY: `from` is open; dup2 replaces `to` atomically.
    if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn redirect_stdin_to_null() -> Result<()> {
    let null = std::fs::File::open("/dev/null").context("open /dev/null")?;
    dup_onto(&null, 0).context("redirect stdin to /dev/null")
}

/// Points stdout and stderr at the end of `path` (a log, or /dev/null).
pub(crate) fn redirect_output_to(path: &Path) -> Result<()> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    dup_onto(&out, 1)
        .and_then(|()| dup_onto(&out, 2))
        .with_context(|| format!("redirect output to {}", path.display()))
}

/// A pidfd for `pid`: readable once the process has exited.
pub(crate) fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: plain syscall; returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("open process {pid}"));
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// Closes every descriptor from 3 up except those in `keep`.
pub(crate) fn close_other_fds(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|fd| **fd >= 3)
        .map(|fd| *fd as u32)
        .collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for fd in keep {
        if fd > from {
            // SAFETY: closes descriptors nothing in this process uses.
            unsafe { libc::close_range(from, fd - 1, 0) };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::close_range(from, u32::MAX, 0) };
}

/// Reaps children (a subreaper inherits orphans) until `pid` exits; its exit code,
/// 128+N if a signal killed it.
pub(crate) fn reap_until(pid: Pid) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 125,
        }
    }
}
