//! `rcrun up` and `rcrun service …`: service containers and CI jobs from an up-file.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use rcrun::containers::{Containers, NetworkMode, RunFlags};
use rcrun::networks;
use rcrun::services;
use rcrun::up::{self, Interrupts, UpOptions};
use rcrun::upfile;

use crate::commands::{Format, PullArgs};

pub(crate) fn parse_grace(text: &str) -> Result<Duration, String> {
    upfile::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration: use e.g. 10s, 500ms or 1m"))
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The up-file.
    #[arg(short = 'f', long = "file", default_value = "rcrun.yaml")]
    file: PathBuf,
    /// How long services stay up after their last client lets go.
    #[arg(long, default_value = "10s", value_parser = parse_grace)]
    grace: Duration,
    /// Show the services' output, prefixed by their names.
    #[arg(short, long)]
    verbose: bool,
    /// Hold the services after the jobs, until Ctrl-C.
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    pull: PullArgs,
    /// Jobs to run (default: all of them).
    jobs: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// List running services.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print a running service's HOSTNAME:PORT (its first exposed port by default).
    Endpoint { service: String, port: Option<u16> },
    /// Print a running service's output.
    Logs {
        #[arg(short, long)]
        follow: bool,
        service: String,
    },
    /// Start (or join) a service of the up-file and hold it until Ctrl-C,
    /// publishing ports to the host.
    Up {
        #[arg(short = 'f', long = "file", default_value = "rcrun.yaml")]
        file: PathBuf,
        /// Publish a port: [HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp].
        #[arg(short = 'p', long = "publish")]
        publish: Vec<String>,
        #[arg(long, default_value = "10s", value_parser = parse_grace)]
        grace: Duration,
        #[command(flatten)]
        pull: PullArgs,
        service: String,
    },
}

pub fn up(mut containers: Containers, args: UpArgs) -> Result<i32> {
    up::up(
        &mut containers,
        &UpOptions {
            file: args.file,
            jobs: args.jobs,
            grace: args.grace,
            verbose: args.verbose,
            keep: args.keep,
            pull: args.pull.options(),
        },
    )
}

pub fn service(mut containers: Containers, command: ServiceCommand) -> Result<i32> {
    let data_dir = containers.data_dir().to_path_buf();
    match command {
        ServiceCommand::Ls { format } => {
            let all = services::running(&data_dir)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&all)?),
                Format::Table => {
                    println!(
                        "{:<10} {:<14} {:<13} {:<9} {:<16} {:<16} {:<8} GRACE",
                        "NAME", "HOSTNAME", "KEY", "STATE", "ADDRESS", "ALIASES", "CLIENTS"
                    );
                    for i in all {
                        println!(
                            "{:<10} {:<14} {:<13} {:<9} {:<16} {:<16} {:<8} {}",
                            i.name,
                            i.hostname,
                            &i.key[..12],
                            i.state,
                            i.address.map(|a| a.to_string()).unwrap_or_default(),
                            if i.aliases.is_empty() {
                                "-".to_string()
                            } else {
                                i.aliases.join(",")
                            },
                            i.clients.len(),
                            i.grace_left_ms
                                .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                                .unwrap_or_else(|| "-".into())
                        );
                    }
                }
            }
            Ok(0)
        }
        ServiceCommand::Endpoint { service, port } => {
            let info = services::find_running(&data_dir, &service)?;
            println!("{}", services::endpoint(&info, port)?);
            Ok(0)
        }
        ServiceCommand::Logs { follow, service } => {
            let info = services::find_running(&data_dir, &service)?;
            containers.logs(&info.container, follow, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        ServiceCommand::Up {
            file,
            publish,
            grace,
            pull,
            service,
        } => {
            let file = upfile::load(&file)?;
            let publish = publish
                .iter()
                .map(|p| networks::parse_publish(p))
                .collect::<Result<Vec<_>>>()?;
            let resolved =
                up::resolve_services(&mut containers, &file, [&service], &pull.options())?;
            let interrupts = Interrupts::block()?;
            let client = format!("rcrun service up (pid {})", std::process::id());
            let held = up::hold_services(
                &mut containers,
                &resolved,
                &[],
                &client,
                grace,
                Some(&interrupts),
            )?;
            let h = &held[0];
            let address = h
                .info
                .address
                .ok_or_else(|| anyhow!("service {service} has no address"))?;
            // The published ports belong to this connection: they go when we do.
            let infra = networks::infra(&data_dir)?;
            let mut sockets = Vec::new();
            let mut forwards = Vec::new();
            for p in &publish {
                if !h
                    .info
                    .ports
                    .iter()
                    .any(|e| *e == format!("{}/{}", p.container_port, p.protocol))
                {
                    bail!(
                        "service {service} does not expose {}/{} (it exposes {}); add it to its ports",
                        p.container_port,
                        p.protocol,
                        h.info.ports.join(", ")
                    );
                }
                let host = std::net::SocketAddr::new(
                    p.host_ip
                        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                    p.host_port,
                );
                let (socket, bound) = netns::bind_host_port(p.protocol, host)?;
                sockets.push(socket);
                forwards.push(netns::Forward {
                    protocol: p.protocol,
                    host: bound,
                    container: std::net::SocketAddr::new(address, p.container_port),
                });
            }
            if !forwards.is_empty() {
                infra
                    .publish(forwards.clone(), &sockets)
                    .map_err(|e| anyhow!("publish the ports of service {service}: {e}"))?;
            }
            // Printed once they work, so that a script can use them at once.
            for f in &forwards {
                println!(
                    "{} -> {}:{}/{}",
                    f.host,
                    h.info.hostname,
                    f.container.port(),
                    f.protocol
                );
            }
            eprintln!("rcrun: holding service {service}; press Ctrl-C to let go");
            let code = up::hold_until_interrupted(held, &interrupts);
            drop(infra);
            Ok(code)
        }
    }
}

/// `rcrun run --bind ALIAS=SERVICE…`: holds the services (healthy first) for the
/// container's life, with each alias in its /etc/hosts.
pub fn run_bound(
    mut containers: Containers,
    image: &str,
    mut flags: RunFlags,
    bind: &[String],
    file: &Path,
    grace: Duration,
) -> Result<i32> {
    let binds = bind
        .iter()
        .map(|b| {
            let (alias, service) = b
                .split_once('=')
                .ok_or_else(|| anyhow!("--bind {b:?}: expected ALIAS=SERVICE"))?;
            networks::validate_alias("--bind", alias)?;
            Ok((alias.to_string(), service.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    match &flags.network {
        NetworkMode::Bridge(c)
            if c.is_empty() || c.iter().any(|n| n.name == networks::DEFAULT_NETWORK) => {}
        _ => bail!(
            "--bind needs the container on the {} network, where services run: add --network {}",
            networks::DEFAULT_NETWORK,
            networks::DEFAULT_NETWORK
        ),
    }
    let file = upfile::load(file)?;
    let resolved = up::resolve_services(
        &mut containers,
        &file,
        binds.iter().map(|(_, s)| s),
        &flags.pull,
    )?;
    let client = format!("rcrun run (pid {})", std::process::id());
    let held = up::hold_services(&mut containers, &resolved, &binds, &client, grace, None)?;
    flags.add_hosts.extend(up::binding_hosts(&binds, &held)?);
    // A detached container's monitor holds the services instead of us.
    flags.keep_fds = held.iter().map(|h| h.as_fd().as_raw_fd()).collect();
    let code = containers.run(image, &flags);
    drop(held);
    code
}
