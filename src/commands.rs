//! The docker-like commands: pull, images, rmi, image prune, gc, run, ps, logs, stop,
//! kill, rm, exec, inspect, network, volume.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use rcrun::containers::{
    ContainerView, Containers, ExecFlags, NetworkChoice, NetworkMode, RunFlags,
};
use rcrun::db::short_id;
use rcrun::images::{Images, PullOptions, default_data_dir};
use rcrun::networks::{self, NewNetwork};
use rcrun::spec::RunRequest;
use rcrun::volumes;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Args, Debug, Clone, Default)]
pub struct PullArgs {
    /// Platform to pick from a multi-arch image (os/arch[/variant]).
    #[arg(long)]
    platform: Option<String>,
    /// Registry credentials (USER:PASSWORD).
    #[arg(long)]
    creds: Option<String>,
    /// Directory with extra CA certificates (*.crt) and a client certificate (*.cert, *.key).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Require HTTPS and verify certificates (default true; plain HTTP only for loopback).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    tls_verify: Option<bool>,
}

impl PullArgs {
    pub(crate) fn options(&self) -> PullOptions {
        PullOptions {
            platform: self.platform.clone(),
            creds: self.creds.clone(),
            cert_dir: self.cert_dir.clone(),
            tls_verify: self.tls_verify,
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from here).
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(long)]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// USER[:GROUP], names or numbers.
    #[arg(short, long)]
    user: Option<String>,
    #[arg(long)]
    entrypoint: Option<String>,
    /// HOSTDIR:CTRDIR[:ro] or VOLUME:CTRDIR[:ro].
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    /// Mount a tmpfs at DIR[:OPTIONS].
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Mount the rootfs read-only.
    #[arg(long)]
    read_only: bool,
    #[arg(long)]
    hostname: Option<String>,
    /// seccomp=unconfined, seccomp=PROFILE.json (OCI or Docker format), or
    /// no-new-privileges. The default seccomp profile blocks what Docker's does.
    #[arg(long = "security-opt")]
    security_opt: Vec<String>,
    /// Memory limit (bytes, or with b, k, m, g), applied in the container's cgroup.
    /// (No `-m`/`-c` short forms: a command after the image may start with them.)
    #[arg(long)]
    memory: Option<String>,
    /// Soft memory limit (memory.low).
    #[arg(long)]
    memory_reservation: Option<String>,
    /// Memory plus swap (-1: unlimited swap); needs --memory.
    #[arg(long, allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Most processes the container may have (-1: no limit).
    #[arg(long, allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// CPUs the container may use, e.g. 1.5 (a CFS quota).
    #[arg(long)]
    cpus: Option<String>,
    /// Relative CPU weight (1024 is the default).
    #[arg(long)]
    cpu_shares: Option<u64>,
    /// CPUs the container may run on, e.g. 0-2,4.
    #[arg(long)]
    cpuset_cpus: Option<String>,
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    tty: bool,
    /// An rcrun network to join (repeatable; default: the `rcrun` network), or
    /// `host` (the host's network) or `none` (loopback only).
    #[arg(long = "network", alias = "net")]
    network: Vec<String>,
    /// The container's address on its (first) network.
    #[arg(long)]
    ip: Option<std::net::IpAddr>,
    /// Another name for the container on its (first) network.
    #[arg(long = "network-alias")]
    network_alias: Vec<String>,
    /// Publish a port: [HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp], or CTRPORT for any host port.
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Add NAME:IP to /etc/hosts (NAME:host-gateway reaches the host's loopback).
    #[arg(long = "add-host")]
    add_host: Vec<String>,
    /// A nameserver instead of rcrun's resolver (repeatable).
    #[arg(long)]
    dns: Vec<std::net::IpAddr>,
    /// A search domain instead of the networks' and the host's (repeatable; `.`: none).
    #[arg(long = "dns-search")]
    dns_search: Vec<String>,
    /// Write a running container's address into /etc/hosts: CONTAINER[:ALIAS].
    #[arg(long)]
    link: Vec<String>,
    /// Bind a service of the up-file (-f) under an alias: ALIAS=SERVICE.
    #[arg(long)]
    bind: Vec<String>,
    /// The up-file that defines the services --bind names.
    #[arg(short = 'f', long = "file", default_value = "rcrun.yaml")]
    file: PathBuf,
    /// How long a bound service stays up after its last client lets go.
    #[arg(long, default_value = "10s", value_parser = crate::services_cli::parse_grace)]
    grace: Duration,
    #[command(flatten)]
    pull: PullArgs,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[arg(short, long)]
    interactive: bool,
    #[arg(short, long)]
    tty: bool,
    #[arg(short, long)]
    detach: bool,
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(short, long)]
    workdir: Option<PathBuf>,
    #[arg(short, long)]
    user: Option<String>,
    container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Remove images without a name (with --all, every image no container uses).
    Prune {
        #[arg(short, long)]
        all: bool,
    },
    /// List images.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove images.
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network (a bridge in rcrun's network namespace).
    Create {
        /// CIDR, e.g. 10.89.7.0/24 (once for IPv4, once for IPv6); default: picked.
        #[arg(long)]
        subnet: Vec<String>,
        /// The gateway of each --subnet, in order (default: its first address).
        #[arg(long)]
        gateway: Vec<std::net::IpAddr>,
        /// No egress: containers reach only each other.
        #[arg(long)]
        internal: bool,
        /// Give the network an IPv6 subnet as well.
        #[arg(long)]
        ipv6: bool,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show networks as JSON, with their containers.
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (in use: refused, unless -f disconnects their containers).
    #[command(alias = "remove")]
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks no container uses.
    Prune,
    /// Attach a running container to a network.
    Connect {
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        #[arg(long)]
        alias: Vec<String>,
        network: String,
        container: String,
    },
    /// Detach a container from a network.
    Disconnect { network: String, container: String },
    /// What the infra process holds (bridges, links, containers), as JSON;
    /// `null` when none runs.
    #[command(hide = true)]
    Infra,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (its files are made when a container first mounts it).
    Create { name: Option<String> },
    /// List volumes and the containers that use them.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Only the names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show volumes as JSON: mountpoint, created, the containers that use them.
    Inspect {
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes no container uses (-f: an unknown name is no error).
    #[command(alias = "remove")]
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove every volume no container uses.
    Prune,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pull an image: REGISTRY/REPO[:TAG|@DIGEST], oci:DIR[:TAG], oci-archive:FILE[:TAG],
    /// docker-archive:FILE.
    Pull {
        #[command(flatten)]
        args: PullArgs,
        /// Print only the image id.
        #[arg(short, long)]
        quiet: bool,
        reference: String,
    },
    /// List images.
    Images {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove images.
    Rmi {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Remove unreferenced blobs and snapshots, and what a crashed rcrun left behind.
    Gc,
    /// Run a command in a new container.
    Run(Box<RunArgs>),
    /// List containers.
    Ps {
        /// Also stopped ones.
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print a container's output.
    Logs {
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
    /// Stop containers: SIGTERM (or the image's StopSignal), SIGKILL after a timeout.
    Stop {
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal (default KILL) to containers.
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Show containers in detail, as JSON.
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// List a container's published ports.
    Port { container: String },
    /// Run jobs of an up-file, with the services they bind.
    Up(Box<crate::services_cli::UpArgs>),
    /// Service containers: list, endpoints, logs, hold one up.
    #[command(subcommand)]
    Service(crate::services_cli::ServiceCommand),
    /// The per-user network infra process (started by rcrun itself).
    #[command(name = "__infra", hide = true)]
    Infra { dir: PathBuf },
}

/// `--network` flags into a mode; `--ip` and `--network-alias` apply to the
/// first network, as docker's do.
fn network_mode(args: &RunArgs) -> Result<NetworkMode> {
    let special = |m: &str| args.network.iter().any(|n| n == m);
    if special("host") || special("none") {
        if args.network.len() > 1 {
            bail!("--network host or none cannot be combined with other networks");
        }
        if args.ip.is_some() || !args.network_alias.is_empty() {
            bail!("--ip and --network-alias need an rcrun network");
        }
        return Ok(if special("host") {
            NetworkMode::Host
        } else {
            NetworkMode::None
        });
    }
    for alias in &args.network_alias {
        networks::validate_alias("--network-alias", alias)?;
    }
    let mut names = args.network.clone();
    if names.is_empty() && (args.ip.is_some() || !args.network_alias.is_empty()) {
        names.push(networks::DEFAULT_NETWORK.into());
    }
    Ok(NetworkMode::Bridge(
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| NetworkChoice {
                name,
                ip: if i == 0 { args.ip } else { None },
                aliases: if i == 0 {
                    args.network_alias.clone()
                } else {
                    Vec::new()
                },
            })
            .collect(),
    ))
}

fn network_command(command: NetworkCommand) -> Result<i32> {
    let mut c = open()?;
    match command {
        NetworkCommand::Create {
            subnet,
            gateway,
            internal,
            ipv6,
            name,
        } => {
            let subnets = subnet
                .iter()
                .map(|s| s.parse().map_err(|e| anyhow::anyhow!("--subnet: {e}")))
                .collect::<Result<Vec<_>>>()?;
            let ipv6 = ipv6 || subnets.iter().any(|s: &netns::subnet::Subnet| !s.is_ipv4());
            let row = networks::create(
                c.images.db(),
                &NewNetwork {
                    name,
                    subnets,
                    gateways: gateway,
                    internal,
                    ipv6,
                },
            )?;
            println!("{}", row.id);
            Ok(0)
        }
        NetworkCommand::Ls { format } => {
            networks::find(c.images.db(), networks::DEFAULT_NETWORK)?;
            let rows = networks::networks(c.images.db_ref())?;
            let mut out = std::io::stdout().lock();
            if format == Format::Json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(0);
            }
            writeln!(
                out,
                "{:<12} {:<24} {:<8} {:<9} SUBNETS",
                "NETWORK ID", "NAME", "BRIDGE", "INTERNAL"
            )?;
            for n in rows {
                let subnets: Vec<String> = n.subnets.iter().map(|(s, _)| s.to_string()).collect();
                writeln!(
                    out,
                    "{:<12} {:<24} {:<8} {:<9} {}",
                    short_id(&n.id),
                    n.name,
                    n.bridge,
                    n.internal,
                    subnets.join(",")
                )?;
            }
            Ok(0)
        }
        NetworkCommand::Inspect { networks } => {
            let mut all = Vec::new();
            let code = each(&networks, |name| {
                all.push(c.inspect_network(name)?);
                Ok(())
            });
            println!("{}", serde_json::to_string_pretty(&all)?);
            code
        }
        NetworkCommand::Rm { force, networks } => each(&networks, |name| {
            c.remove_network(name, force)?;
            println!("{name}");
            Ok(())
        }),
        NetworkCommand::Prune => {
            for n in networks::networks(c.images.db_ref())? {
                if n.name != networks::DEFAULT_NETWORK
                    && networks::users(c.images.db_ref(), &n.name)?.is_empty()
                {
                    c.remove_network(&n.name, false)?;
                    println!("{}", n.name);
                }
            }
            Ok(0)
        }
        NetworkCommand::Connect {
            ip,
            alias,
            network,
            container,
        } => {
            for a in &alias {
                networks::validate_alias("--alias", a)?;
            }
            c.connect(&network, &container, ip, &alias)?;
            Ok(0)
        }
        NetworkCommand::Disconnect { network, container } => {
            c.disconnect(&network, &container)?;
            Ok(0)
        }
        NetworkCommand::Infra => {
            let dir = networks::runtime_dir(c.images.data_dir())?;
            let status = match netns::Infra::connect(&dir)? {
                Some(infra) => Some((infra.hello().clone(), infra.status()?)),
                None => None,
            };
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(0)
        }
    }
}

fn volume_command(command: VolumeCommand) -> Result<i32> {
    // Containers whose monitor died are finished first: their uses end with them.
    let mut images = open()?.images;
    let data_dir = images.data_dir().to_path_buf();
    match command {
        VolumeCommand::Create { name } => {
            println!("{}", volumes::create(images.db(), name.as_deref())?);
            Ok(0)
        }
        VolumeCommand::Ls { format, quiet } => {
            let rows = volumes::list(images.db_ref(), &data_dir)?;
            let mut out = std::io::stdout().lock();
            if quiet {
                for v in rows {
                    writeln!(out, "{}", v.name)?;
                }
            } else if format == Format::Json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                writeln!(out, "{:<32} {:<30} USED BY", "VOLUME NAME", "CREATED")?;
                for v in rows {
                    let users: Vec<&str> = v.users.iter().map(|u| u.name.as_str()).collect();
                    let users = if users.is_empty() {
                        "-".into()
                    } else {
                        users.join(",")
                    };
                    writeln!(out, "{:<32} {:<30} {users}", v.name, v.created)?;
                }
            }
            Ok(0)
        }
        VolumeCommand::Inspect { volumes: names } => {
            let mut all = Vec::new();
            let code = each(&names, |name| {
                all.push(volumes::inspect(images.db_ref(), &data_dir, name)?);
                Ok(())
            });
            println!("{}", serde_json::to_string_pretty(&all)?);
            code
        }
        VolumeCommand::Rm {
            force,
            volumes: names,
        } => each(&names, |name| {
            if volumes::remove(images.db(), &data_dir, name, force)? {
                println!("{name}");
            }
            Ok(())
        }),
        VolumeCommand::Prune => {
            for name in volumes::prune(images.db(), &data_dir)? {
                println!("{name}");
            }
            Ok(0)
        }
    }
}

fn open() -> Result<Containers> {
    Containers::open(&default_data_dir())
}

fn print_images(images: &Images, format: Format) -> Result<()> {
    let rows = images.db_ref().images()?;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<40} {:<14} {:<12} {:>10}",
        "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
    )?;
    for image in &rows {
        let names: Vec<(String, String)> = if image.names.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            image
                .names
                .iter()
                .map(
                    |n| match n.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                        Some((r, t)) => (r.to_string(), t.to_string()),
                        None => (n.clone(), "<none>".into()),
                    },
                )
                .collect()
        };
        for (repo, tag) in names {
            writeln!(
                out,
                "{repo:<40} {tag:<14} {:<12} {:>10}",
                short_id(&image.id),
                human_size(image.size)
            )?;
        }
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn print_containers(views: &[ContainerView], format: Format, quiet: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if quiet {
        for v in views {
            writeln!(out, "{}", short_id(&v.row.id))?;
        }
        return Ok(());
    }
    if format == Format::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(views)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<12}  {:<30}  {:<24}  {:<14}  NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "STATUS"
    )?;
    for v in views {
        let mut command = v.row.command.join(" ");
        if command.len() > 22 {
            command.truncate(21);
            command.push('…');
        }
        writeln!(
            out,
            "{:<12}  {:<30}  {:<24}  {:<14}  {}",
            short_id(&v.row.id),
            v.row.image_name,
            format!("\"{command}\""),
            v.status,
            v.row.name
        )?;
    }
    Ok(())
}

/// Runs one command on every argument, reporting each failure; fails if any did.
fn each(items: &[String], mut f: impl FnMut(&str) -> Result<()>) -> Result<i32> {
    let mut failed = None;
    for item in items {
        if let Err(e) = f(item) {
            eprintln!("rcrun: {e:#}");
            failed = Some(e);
        }
    }
    match failed {
        Some(e) => Err(e.context("some of the items failed (see above)")),
        None => Ok(0),
    }
}

pub fn run(command: Command) -> Result<i32> {
    match command {
        Command::Pull {
            args,
            quiet,
            reference,
        } => {
            let mut images = Images::open(&default_data_dir())?;
            let pulled = match rcrun::progress::for_stderr() {
                Some(display) => {
                    let pulled = images.pull_with(&reference, &args.options(), &display);
                    display.finish();
                    pulled?
                }
                None => images.pull(&reference, &args.options())?,
            };
            for w in &pulled.unpack.warnings {
                eprintln!("warning: {w}");
            }
            if quiet {
                println!("{}", pulled.id);
            } else {
                println!(
                    "{} {}",
                    pulled.id,
                    pulled.name.as_deref().unwrap_or("(no name)")
                );
            }
            Ok(0)
        }
        Command::Images { format } | Command::Image(ImageCommand::Ls { format }) => {
            print_images(&Images::open(&default_data_dir())?, format)?;
            Ok(0)
        }
        Command::Rmi { force, images } | Command::Image(ImageCommand::Rm { force, images }) => {
            let mut store = Images::open(&default_data_dir())?;
            let code = each(&images, |image| {
                for line in store.remove(image, force)? {
                    println!("{line}");
                }
                Ok(())
            })?;
            store.gc()?;
            Ok(code)
        }
        Command::Image(ImageCommand::Prune { all }) => {
            let mut store = Images::open(&default_data_dir())?;
            for id in store.prune(all)? {
                println!("Deleted: {id}");
            }
            let report = store.gc()?;
            eprintln!(
                "removed {} blobs and {} snapshots",
                report.blobs, report.snapshots
            );
            Ok(0)
        }
        Command::Gc => {
            let mut store = Images::open(&default_data_dir())?;
            let report = store.gc()?;
            println!(
                "removed {} blobs, {} snapshots and {} leftovers",
                report.blobs, report.snapshots, report.leftovers
            );
            Ok(0)
        }
        Command::Run(args) => {
            let network = network_mode(&args)?;
            let publish = args
                .publish
                .iter()
                .map(|p| networks::parse_publish(p))
                .collect::<Result<_>>()?;
            let add_hosts = args
                .add_host
                .iter()
                .map(|h| networks::parse_add_host(h))
                .collect::<Result<_>>()?;
            let dns_search = args
                .dns_search
                .iter()
                .map(|d| networks::parse_dns_search(d))
                .collect::<Result<_>>()?;
            let links = args
                .link
                .iter()
                .map(|l| networks::parse_link(l))
                .collect::<Result<_>>()?;
            let flags = RunFlags {
                request: RunRequest {
                    command: args.command,
                    entrypoint: args.entrypoint,
                    env: args.env,
                    env_files: args.env_file,
                    workdir: args.workdir,
                    user: args.user,
                    volumes: args.volume,
                    tmpfs: args.tmpfs,
                    read_only: args.read_only,
                    hostname: args.hostname,
                    tty: args.tty,
                    network: Default::default(),
                    security: rcrun::seccomp::parse_security_opts(&args.security_opt)?,
                    resources: rcrun::spec::resources(&rcrun::spec::LimitFlags {
                        memory: args.memory,
                        memory_reservation: args.memory_reservation,
                        memory_swap: args.memory_swap,
                        pids_limit: args.pids_limit,
                        cpus: args.cpus,
                        cpu_shares: args.cpu_shares,
                        cpuset_cpus: args.cpuset_cpus,
                    })?,
                },
                network,
                publish,
                add_hosts,
                dns: args.dns,
                dns_search,
                links,
                keep_fds: Vec::new(),
                name: args.name,
                detach: args.detach,
                remove: args.rm,
                interactive: args.interactive,
                pull: args.pull.options(),
            };
            if flags.detach && flags.request.tty {
                bail!("-t with -d needs a console socket, which rcrun does not have yet; drop -t");
            }
            let mut containers = open()?;
            if args.bind.is_empty() {
                return containers.run(&args.image, &flags);
            }
            crate::services_cli::run_bound(
                containers,
                &args.image,
                flags,
                &args.bind,
                &args.file,
                args.grace,
            )
        }
        Command::Ps { all, quiet, format } => {
            print_containers(&open()?.list(all)?, format, quiet)?;
            Ok(0)
        }
        Command::Logs { follow, container } => {
            open()?.logs(&container, follow, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Stop { time, containers } => {
            let mut c = open()?;
            each(&containers, |name| {
                c.stop(name, Duration::from_secs(time))?;
                println!("{name}");
                Ok(())
            })
        }
        Command::Kill { signal, containers } => {
            let signal = runtime::parse_signal(&signal)?;
            let mut c = open()?;
            each(&containers, |name| {
                c.kill(name, signal)?;
                println!("{name}");
                Ok(())
            })
        }
        Command::Rm { force, containers } => {
            let mut c = open()?;
            each(&containers, |name| {
                c.remove(name, force)?;
                println!("{name}");
                Ok(())
            })
        }
        Command::Exec(args) => open()?.exec(
            &args.container,
            &ExecFlags {
                command: args.command,
                env: args.env,
                workdir: args.workdir,
                user: args.user,
                tty: args.tty,
                interactive: args.interactive,
                detach: args.detach,
            },
        ),
        Command::Network(command) => network_command(command),
        Command::Volume(command) => volume_command(command),
        Command::Port { container } => {
            for p in open()?.ports(&container)? {
                println!("{}/{} -> {}", p.container_port, p.protocol, p.host);
            }
            Ok(0)
        }
        Command::Infra { dir } => Ok(networks::infra_main(&dir)),
        Command::Up(args) => crate::services_cli::up(open()?, *args),
        Command::Service(command) => crate::services_cli::service(open()?, command),
        Command::Inspect { containers } => {
            let mut c = open()?;
            let mut all = Vec::new();
            let code = each(&containers, |name| {
                all.push(c.inspect(name)?);
                Ok(())
            });
            println!("{}", serde_json::to_string_pretty(&all)?);
            code.context("inspect")
        }
    }
}
