//! rcrun's networks and IP leases in the metadata store, and the link to the
//! infra process that builds them: `rcrun network …`, and what `run` needs.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use netns::subnet::{self, Subnet};
use netns::{Attachment, BridgeSpec, Infra, Protocol};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::db::Db;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS networks (
    name     TEXT PRIMARY KEY,
    id       TEXT NOT NULL UNIQUE,
    bridge   TEXT NOT NULL UNIQUE,
    subnets  TEXT NOT NULL,           -- JSON [[subnet, gateway], ...]
    internal INTEGER NOT NULL,
    created  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    container TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    network   TEXT NOT NULL REFERENCES networks(name),
    ifname    TEXT NOT NULL,
    aliases   TEXT NOT NULL,          -- JSON list
    PRIMARY KEY (container, network)
);
CREATE TABLE IF NOT EXISTS leases (
    network   TEXT NOT NULL REFERENCES networks(name),
    address   TEXT NOT NULL,
    container TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    PRIMARY KEY (network, address)
);
CREATE TABLE IF NOT EXISTS ports (
    container      TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    protocol       TEXT NOT NULL,
    host           TEXT NOT NULL,     -- ip:port as bound
    container_port INTEGER NOT NULL
);
";

/// The network containers join when `--network` is not given.
pub const DEFAULT_NETWORK: &str = "rcrun";
const MTU: u32 = 1500;

#[derive(Debug, Clone, Serialize)]
pub struct NetworkRow {
    pub name: String,
    pub id: String,
    pub bridge: String,
    pub subnets: Vec<(Subnet, IpAddr)>,
    pub internal: bool,
    pub created: String,
}

impl NetworkRow {
    /// The subnets as `a, b`, for messages.
    pub fn subnet_list(&self) -> String {
        let list: Vec<String> = self.subnets.iter().map(|(s, _)| s.to_string()).collect();
        list.join(", ")
    }

    pub fn bridge_spec(&self) -> BridgeSpec {
        BridgeSpec {
            name: self.name.clone(),
            bridge: self.bridge.clone(),
            subnets: self.subnets.clone(),
            internal: self.internal,
            mtu: MTU,
        }
    }
}

/// `rcrun network create`'s request.
#[derive(Debug, Clone, Default)]
pub struct NewNetwork {
    pub name: String,
    pub subnets: Vec<Subnet>,
    pub gateways: Vec<IpAddr>,
    pub internal: bool,
    pub ipv6: bool,
}

/// A container's place on one network.
#[derive(Debug, Clone, Serialize)]
pub struct AttachmentRow {
    pub network: String,
    pub ifname: String,
    pub aliases: Vec<String>,
    pub addresses: Vec<IpAddr>,
}

impl AttachmentRow {
    /// The address others reach it at: its IPv4 one, else its first.
    pub fn primary_address(&self) -> Option<IpAddr> {
        self.addresses
            .iter()
            .find(|a| a.is_ipv4())
            .or(self.addresses.first())
            .copied()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PortRow {
    pub protocol: Protocol,
    pub host: SocketAddr,
    pub container_port: u16,
}

fn network_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<NetworkRow> {
    let subnets: String = row.get(3)?;
    Ok(NetworkRow {
        name: row.get(0)?,
        id: row.get(1)?,
        bridge: row.get(2)?,
        subnets: serde_json::from_str(&subnets).unwrap_or_default(),
        internal: row.get(4)?,
        created: row.get(5)?,
    })
}

const NETWORK_COLUMNS: &str = "name, id, bridge, subnets, internal, created";

pub fn network(db: &Db, name: &str) -> Result<Option<NetworkRow>> {
    Ok(db
        .conn_ref()
        .query_row(
            &format!("SELECT {NETWORK_COLUMNS} FROM networks WHERE name = ?1 OR id = ?1"),
            [name],
            network_from_row,
        )
        .optional()?)
}

pub fn networks(db: &Db) -> Result<Vec<NetworkRow>> {
    let mut stmt = db.conn_ref().prepare(&format!(
        "SELECT {NETWORK_COLUMNS} FROM networks ORDER BY name"
    ))?;
    Ok(stmt
        .query_map([], network_from_row)?
        .collect::<rusqlite::Result<_>>()?)
}

/// A network by name; the default network is made on first use.
pub fn find(db: &mut Db, name: &str) -> Result<NetworkRow> {
    if let Some(n) = network(db, name)? {
        return Ok(n);
    }
    if name == DEFAULT_NETWORK {
        let made = create(
            db,
            &NewNetwork {
                name: DEFAULT_NETWORK.into(),
                ..Default::default()
            },
        );
        // Another rcrun may have made it first (the check above is not in its
        // transaction): theirs is as good.
        return match (made, network(db, name)?) {
            (Ok(n), _) | (Err(_), Some(n)) => Ok(n),
            (Err(e), None) => Err(e),
        };
    }
    Err(anyhow!(
        "network {name:?} not found: create it with `rcrun network create {name}`, or list networks with `rcrun network ls`"
    ))
}

pub fn create(db: &mut Db, req: &NewNetwork) -> Result<NetworkRow> {
    crate::spec::validate_name("network", &req.name)?;
    if req.name == "host" || req.name == "none" {
        bail!(
            "{:?} is a network mode, not a network name: choose another name",
            req.name
        );
    }
    if req.subnets.iter().filter(|s| s.is_ipv4()).count() > 1
        || req.subnets.iter().filter(|s| !s.is_ipv4()).count() > 1
    {
        bail!("give at most one IPv4 and one IPv6 --subnet");
    }
    if req.gateways.len() > req.subnets.len() {
        bail!("each --gateway needs its own --subnet");
    }
    let tx = db
        .conn()
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let exists: bool = tx
        .query_row(
            "SELECT 1 FROM networks WHERE name = ?1",
            [&req.name],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if exists {
        bail!(
            "network {:?} already exists: remove it first (rcrun network rm {}) or choose another name",
            req.name,
            req.name
        );
    }
    let others: Vec<NetworkRow> = {
        let mut stmt = tx.prepare(&format!("SELECT {NETWORK_COLUMNS} FROM networks"))?;
        stmt.query_map([], network_from_row)?
            .collect::<rusqlite::Result<_>>()?
    };
    let routes = subnet::host_routes();
    let reserved = subnet::reserved();
    let check = |s: &Subnet| -> Result<()> {
        if let Some(o) = others
            .iter()
            .find(|o| o.subnets.iter().any(|(os, _)| os.overlaps(s)))
        {
            bail!(
                "subnet {s} overlaps network {:?} ({}): choose another subnet",
                o.name,
                o.subnet_list()
            );
        }
        if let Some(r) = routes.iter().find(|r| r.overlaps(s)) {
            bail!("subnet {s} overlaps the host's route to {r}: choose another subnet");
        }
        if let Some(r) = reserved.iter().find(|r| r.overlaps(s)) {
            bail!("subnet {s} overlaps {r}, which rcrun's egress uses: choose another subnet");
        }
        Ok(())
    };
    let mut subnets: Vec<(Subnet, IpAddr)> = Vec::new();
    for (i, s) in req.subnets.iter().enumerate() {
        check(s)?;
        let gateway = match req.gateways.get(i) {
            Some(gw) if s.is_host(*gw) => *gw,
            Some(gw) => bail!("gateway {gw} is not a usable address of subnet {s}"),
            None => s.default_gateway(),
        };
        subnets.push((*s, gateway));
    }
    let mut avoid: Vec<Subnet> = others
        .iter()
        .flat_map(|o| o.subnets.iter().map(|(s, _)| *s))
        .chain(routes.iter().copied())
        .chain(reserved.iter().copied())
        .collect();
    let want_v4 = !subnets.iter().any(|(s, _)| s.is_ipv4());
    let want_v6 = req.ipv6 && !subnets.iter().any(|(s, _)| !s.is_ipv4());
    for (wanted, v6) in [(want_v4, false), (want_v6, true)] {
        if !wanted {
            continue;
        }
        let s = subnet::pick(v6, &avoid).ok_or_else(|| {
            anyhow!("no free subnet is left in rcrun's pool: remove unused networks (rcrun network prune) or give --subnet")
        })?;
        avoid.push(s);
        subnets.push((s, s.default_gateway()));
    }
    let bridge = (0..)
        .map(|n| format!("rcbr{n}"))
        .find(|b| others.iter().all(|o| &o.bridge != b))
        .expect("unbounded");
    let row = NetworkRow {
        name: req.name.clone(),
        id: crate::containers::random_hex(32)?,
        bridge,
        subnets,
        internal: req.internal,
        created: runtime::now_rfc3339(),
    };
    tx.execute(
        "INSERT INTO networks (name, id, bridge, subnets, internal, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            row.name,
            row.id,
            row.bridge,
            serde_json::to_string(&row.subnets)?,
            row.internal,
            row.created
        ],
    )?;
    tx.commit()?;
    Ok(row)
}

/// Container ids attached to `network`.
pub fn users(db: &Db, network: &str) -> Result<Vec<String>> {
    let mut stmt = db
        .conn_ref()
        .prepare("SELECT container FROM attachments WHERE network = ?1")?;
    Ok(stmt
        .query_map([network], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

pub fn remove(db: &mut Db, name: &str) -> Result<()> {
    db.conn()
        .execute("DELETE FROM networks WHERE name = ?1", [name])?;
    Ok(())
}

/// Gives `container` a place on `network`: an interface name and one address per
/// subnet (`ip` if asked, else the lowest free), in one transaction.
pub fn attach(
    db: &mut Db,
    container: &str,
    network: &NetworkRow,
    ip: Option<IpAddr>,
    aliases: &[String],
) -> Result<AttachmentRow> {
    for alias in aliases {
        crate::spec::validate_hostname(alias)
            .map_err(|e| anyhow!("--network-alias {alias:?}: {e:#}"))?;
    }
    if let Some(ip) = ip
        && !network.subnets.iter().any(|(s, _)| s.contains(ip))
    {
        bail!(
            "--ip {ip} is outside network {:?} ({}): pick an address in its subnet",
            network.name,
            network.subnet_list()
        );
    }
    let tx = db
        .conn()
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let already: bool = tx
        .query_row(
            "SELECT 1 FROM attachments WHERE container = ?1 AND network = ?2",
            params![container, network.name],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if already {
        bail!("the container is already on network {:?}", network.name);
    }
    let used: Vec<String> = {
        let mut stmt = tx.prepare("SELECT ifname FROM attachments WHERE container = ?1")?;
        stmt.query_map([container], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    let ifname = (0..)
        .map(|n| format!("eth{n}"))
        .find(|n| !used.contains(n))
        .expect("unbounded");
    let taken: Vec<IpAddr> = {
        let mut stmt = tx.prepare("SELECT address FROM leases WHERE network = ?1")?;
        stmt.query_map([&network.name], |r| r.get::<_, String>(0))?
            .filter_map(|a| a.ok()?.parse().ok())
            .collect()
    };
    let mut addresses = Vec::new();
    for (subnet, gateway) in &network.subnets {
        let address = match ip.filter(|ip| subnet.contains(*ip)) {
            Some(ip) => {
                if ip == *gateway || !subnet.is_host(ip) {
                    bail!(
                        "--ip {ip} is reserved on network {:?} (gateway, network or broadcast address): pick another",
                        network.name
                    );
                }
                if taken.contains(&ip) {
                    let holder: String = tx.query_row(
                        "SELECT c.name FROM leases l JOIN containers c ON c.id = l.container
                         WHERE l.network = ?1 AND l.address = ?2",
                        params![network.name, ip.to_string()],
                        |r| r.get(0),
                    )?;
                    bail!(
                        "--ip {ip} is already in use on network {:?} by container {holder}: pick another address",
                        network.name
                    );
                }
                ip
            }
            None => subnet::allocate(subnet, *gateway, &taken).ok_or_else(|| {
                anyhow!(
                    "network {:?} has no free address left in {subnet}",
                    network.name
                )
            })?,
        };
        tx.execute(
            "INSERT INTO leases (network, address, container) VALUES (?1, ?2, ?3)",
            params![network.name, address.to_string(), container],
        )?;
        addresses.push(address);
    }
    tx.execute(
        "INSERT INTO attachments (container, network, ifname, aliases) VALUES (?1, ?2, ?3, ?4)",
        params![
            container,
            network.name,
            ifname,
            serde_json::to_string(aliases)?
        ],
    )?;
    tx.commit()?;
    Ok(AttachmentRow {
        network: network.name.clone(),
        ifname,
        aliases: aliases.to_vec(),
        addresses,
    })
}

/// Frees `container`'s place (interface and leases) on `network`.
pub fn detach(db: &mut Db, container: &str, network: &str) -> Result<()> {
    let tx = db.conn().transaction()?;
    tx.execute(
        "DELETE FROM leases WHERE container = ?1 AND network = ?2",
        params![container, network],
    )?;
    tx.execute(
        "DELETE FROM attachments WHERE container = ?1 AND network = ?2",
        params![container, network],
    )?;
    tx.commit()?;
    Ok(())
}

/// Frees everything a container held: leases, attachments, published ports.
pub fn release(db: &mut Db, container: &str) -> Result<()> {
    let tx = db.conn().transaction()?;
    for table in ["leases", "attachments", "ports"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE container = ?1"),
            [container],
        )?;
    }
    tx.commit()?;
    Ok(())
}

pub fn attachments(db: &Db, container: &str) -> Result<Vec<AttachmentRow>> {
    let mut stmt = db.conn_ref().prepare(
        "SELECT network, ifname, aliases FROM attachments WHERE container = ?1 ORDER BY ifname",
    )?;
    let rows: Vec<(String, String, String)> = stmt
        .query_map([container], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for (network, ifname, aliases) in rows {
        let mut stmt = db
            .conn_ref()
            .prepare("SELECT address FROM leases WHERE container = ?1 AND network = ?2")?;
        let addresses = stmt
            .query_map(params![container, network], |r| r.get::<_, String>(0))?
            .filter_map(|a| a.ok()?.parse().ok())
            .collect();
        out.push(AttachmentRow {
            network,
            ifname,
            aliases: serde_json::from_str(&aliases).unwrap_or_default(),
            addresses,
        });
    }
    Ok(out)
}

pub fn add_port(db: &mut Db, container: &str, port: &PortRow) -> Result<()> {
    db.conn().execute(
        "INSERT INTO ports (container, protocol, host, container_port) VALUES (?1, ?2, ?3, ?4)",
        params![
            container,
            port.protocol.to_string(),
            port.host.to_string(),
            port.container_port
        ],
    )?;
    Ok(())
}

pub fn ports(db: &Db, container: &str) -> Result<Vec<PortRow>> {
    let mut stmt = db.conn_ref().prepare(
        "SELECT protocol, host, container_port FROM ports WHERE container = ?1 ORDER BY container_port",
    )?;
    let rows = stmt
        .query_map([container], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u16>(2)?,
            ))
        })?
        .filter_map(|r| {
            let (protocol, host, container_port) = r.ok()?;
            Some(PortRow {
                protocol: if protocol == "udp" {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                host: host.parse().ok()?,
                container_port,
            })
        })
        .collect();
    Ok(rows)
}

/// The netns attachment for an attachment row.
pub fn to_attachment(
    network: &NetworkRow,
    row: &AttachmentRow,
    default_route: bool,
    (name, id): (&str, &str),
) -> Attachment {
    Attachment {
        network: network.bridge_spec(),
        dns_names: dns_names(name, id, &row.aliases),
        ifname: row.ifname.clone(),
        addresses: row.addresses.clone(),
        default_route,
    }
}

/// What dnsd answers for a container on a network: its name when that is a DNS
/// name (docker's names may hold '_'), its short id, its aliases (validated).
pub fn dns_names(name: &str, id: &str, aliases: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let candidates = [name, &id[..id.len().min(12)]];
    for n in candidates
        .into_iter()
        .chain(aliases.iter().map(String::as_str))
    {
        if let Ok(n) = n.parse::<dnsd::Name>()
            && !names.iter().any(|known| known == n.as_str())
        {
            names.push(n.as_str().to_string());
        }
    }
    names
}

/// rcrun's runtime directory for the data dir in use (one infra per data dir):
/// `$XDG_RUNTIME_DIR/rcrun/<key>` or `/tmp/rcrun-<uid>/<key>`, mode 0700.
pub fn runtime_dir(data_dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let base = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("rcrun"),
        None => PathBuf::from(format!("/tmp/rcrun-{}", nix::unistd::Uid::effective())),
    };
    // FNV-1a: a short, stable key for the data dir.
    let key = data_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x100000001b3)
        });
    let dir = base.join(format!("{key:016x}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let meta = std::fs::metadata(&base).with_context(|| format!("stat {}", base.display()))?;
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != nix::unistd::Uid::effective().as_raw() {
        bail!(
            "{} belongs to another user: set XDG_RUNTIME_DIR to a directory of your own",
            base.display()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
}

/// Connects to the infra for `data_dir`, starting it (`rcrun __infra`) if none
/// runs. Says once, when it starts one without egress, why.
pub fn infra(data_dir: &Path) -> Result<Infra> {
    let dir = runtime_dir(data_dir)?;
    let (infra, started) = Infra::connect_or_start(&dir, || start_infra(&dir))
        .map_err(|e| anyhow!("start the network infra: {e}"))?;
    if started && let Some(reason) = &infra.hello().egress_off {
        eprintln!(
            "rcrun: warning: containers cannot reach the outside (egress is off): {reason}; networks among containers work"
        );
    }
    Ok(infra)
}

fn start_infra(dir: &Path) -> std::result::Result<(), netns::Error> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("infra.log"))
        .map_err(|e| netns::Error::Io {
            step: "open infra.log".into(),
            source: e,
        })?;
    let mut command = std::process::Command::new("/proc/self/exe");
    command
        .arg0("rcrun")
        .arg("__infra")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().map_err(|e| netns::Error::Io {
        step: "start rcrun's infra process".into(),
        source: e,
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && text.trim() == "ready" {
        return Ok(());
    }
    Err(netns::Error::Infra(format!(
        "the infra process failed to start: {} (see {})",
        text.trim(),
        dir.join("infra.log").display()
    )))
}

/// `rcrun __infra DIR`: claims the infra lock, forks the infra into its user
/// namespace, starts egress for it, prints "ready". The infra itself keeps
/// running after this process exits.
pub fn infra_main(dir: &Path) -> i32 {
    let linger = std::env::var("RCRUN_INFRA_LINGER")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(std::time::Duration::from_secs_f64)
        .unwrap_or(std::time::Duration::from_secs(10));
    let outcome = (|| -> Result<()> {
        let Some(lock) = Infra::claim(dir)? else {
            // Another infra runs: the caller connects to it.
            return Ok(());
        };
        let pair = netns::sync_pair()?;
        match runtime::fork_in_user_namespace("the network infra")? {
            None => {
                drop(pair.parent);
                redirect_stdout_to_null();
                let code = netns::infra_child(pair.child, dir, linger);
                drop(lock);
                std::process::exit(code);
            }
            Some(pid) => {
                drop(pair.child);
                drop(lock);
                netns::infra_parent(pair.parent.try_clone()?, pid, dir)?;
                // The socket maker stays on the host side for dnsd's upstream
                // queries, until the infra closes its end.
                // SAFETY: single-threaded; the child only serves and exits.
                match unsafe { nix::unistd::fork() }.context("fork the host socket maker")? {
                    nix::unistd::ForkResult::Child => {
                        redirect_stdout_to_null();
                        netns::serve_host_sockets(pair.parent);
                        std::process::exit(0);
                    }
                    nix::unistd::ForkResult::Parent { .. } => Ok(()),
                }
            }
        }
    })();
    match outcome {
        Ok(()) => {
            println!("ready");
            0
        }
        Err(e) => {
            println!("{e:#}");
            125
        }
    }
}

/// Stdout belongs to the launcher's caller, who reads it to its end: processes
/// that stay must let it go.
fn redirect_stdout_to_null() {
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are open.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// Parses `-p`: `[HOSTIP:]HOSTPORT:CTRPORT[/PROTO]` or `CTRPORT[/PROTO]`
/// (IPv6 host addresses in brackets).
pub fn parse_publish(text: &str) -> Result<crate::containers::Publish> {
    let fail = |why: &str| {
        anyhow!("-p {text:?}: {why}; write [HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp] or CTRPORT")
    };
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((s, "tcp")) => (s, Protocol::Tcp),
        Some((s, "udp")) => (s, Protocol::Udp),
        Some(_) => return Err(fail("the protocol must be tcp or udp")),
        None => (text, Protocol::Tcp),
    };
    let port = |p: &str, what: &str, zero_ok: bool| -> Result<u16> {
        match p.parse::<u16>() {
            Ok(0) if !zero_ok => Err(fail(&format!("the {what} port must be 1-65535"))),
            Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(fail(&format!("{p:?} is not a {what} port"))),
        }
    };
    let (host_ip, rest) = if let Some(after) = spec.strip_prefix('[') {
        let (ip, rest) = after
            .split_once("]:")
            .ok_or_else(|| fail("an IPv6 host address needs [ ] and a port after it"))?;
        let ip: std::net::Ipv6Addr = ip
            .parse()
            .map_err(|_| fail(&format!("{ip:?} is not an IPv6 address")))?;
        (Some(IpAddr::V6(ip)), rest)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec),
            3 => {
                let ip = if parts[0].is_empty() {
                    None
                } else {
                    Some(
                        parts[0]
                            .parse::<std::net::Ipv4Addr>()
                            .map(IpAddr::V4)
                            .map_err(|_| fail(&format!("{:?} is not an IPv4 address", parts[0])))?,
                    )
                };
                (ip, &spec[parts[0].len() + 1..])
            }
            _ => return Err(fail("too many ':'")),
        }
    };
    let (host_port, container_port) = match rest.split_once(':') {
        Some((h, c)) => (
            if h.is_empty() {
                0
            } else {
                port(h, "host", false)?
            },
            port(c, "container", false)?,
        ),
        None if host_ip.is_none() => (0, port(rest, "container", false)?),
        None => return Err(fail("a host address needs HOSTPORT:CTRPORT")),
    };
    Ok(crate::containers::Publish {
        protocol,
        host_ip,
        host_port,
        container_port,
    })
}

/// Parses `--add-host NAME:ADDRESS` (ADDRESS may be `host-gateway`).
pub fn parse_add_host(text: &str) -> Result<(String, crate::containers::HostTarget)> {
    use crate::containers::HostTarget;
    let (name, target) = text.split_once(':').ok_or_else(|| {
        anyhow!("--add-host {text:?}: write NAME:IP, or NAME:host-gateway for the host's loopback")
    })?;
    crate::spec::validate_hostname(name).map_err(|e| anyhow!("--add-host {text:?}: {e:#}"))?;
    let target = if target == "host-gateway" {
        HostTarget::HostGateway
    } else {
        let ip = target.trim_start_matches('[').trim_end_matches(']');
        HostTarget::Ip(ip.parse().map_err(|_| {
            anyhow!("--add-host {text:?}: {target:?} is not an IP address (or host-gateway)")
        })?)
    };
    Ok((name.to_string(), target))
}

/// A network alias: a DNS name (RFC 1123 labels), as dnsd will answer it.
pub fn validate_alias(flag: &str, alias: &str) -> Result<()> {
    alias
        .parse::<dnsd::Name>()
        .map(drop)
        .map_err(|e| anyhow!("{flag} {alias:?}: {e}"))
}

/// `--dns-search DOMAIN` (or `.` for none).
pub fn parse_dns_search(text: &str) -> Result<String> {
    if text == "." {
        return Ok(text.to_string());
    }
    let name: dnsd::Name = text
        .trim_end_matches('.')
        .parse()
        .map_err(|e| anyhow!("--dns-search {text:?}: {e}"))?;
    Ok(name.as_str().to_string())
}

/// `--link CONTAINER[:ALIAS]`: (container, alias); the alias defaults to the
/// container's name.
pub fn parse_link(text: &str) -> Result<(String, String)> {
    let (container, alias) = text.split_once(':').unwrap_or((text, text));
    if container.is_empty() {
        bail!("--link {text:?}: write CONTAINER[:ALIAS]");
    }
    validate_alias("--link", alias)?;
    Ok((container.to_string(), alias.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::{HostTarget, Publish};

    #[test]
    fn publish_forms() {
        let p = |t: &str| parse_publish(t).unwrap();
        assert_eq!(
            p("8080:80"),
            Publish {
                protocol: Protocol::Tcp,
                host_ip: None,
                host_port: 8080,
                container_port: 80
            }
        );
        assert_eq!(p("80").host_port, 0);
        assert_eq!(p("53/udp").protocol, Protocol::Udp);
        let local = p("127.0.0.1:5353:53/udp");
        assert_eq!(local.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((local.host_port, local.container_port), (5353, 53));
        assert_eq!(p("127.0.0.1::80").host_port, 0);
        assert_eq!(p("[::1]:8080:80").host_ip, Some("::1".parse().unwrap()));
        for bad in [
            "",
            "x",
            "0",
            "80/sctp",
            "70000:80",
            "1.2.3:80:80",
            "a:b:c:d",
            "127.0.0.1:80",
            "8080:0",
            "[::1]80",
        ] {
            let err = parse_publish(bad).unwrap_err();
            assert_eq!(crate::exit_code_of(&err), 125, "{bad}");
        }
    }

    #[test]
    fn add_host_forms() {
        assert_eq!(
            parse_add_host("db:10.0.0.5").unwrap(),
            ("db".into(), HostTarget::Ip("10.0.0.5".parse().unwrap()))
        );
        assert_eq!(
            parse_add_host("host.rcrun.internal:host-gateway")
                .unwrap()
                .1,
            HostTarget::HostGateway
        );
        assert_eq!(
            parse_add_host("v6:[fd00::1]").unwrap().1,
            HostTarget::Ip("fd00::1".parse().unwrap())
        );
        for bad in ["db", "db:nowhere", "bad name:1.2.3.4", "a\nb:1.2.3.4"] {
            assert!(parse_add_host(bad).is_err(), "{bad}");
        }
    }
}
