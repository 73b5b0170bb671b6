//! `rcrun oci …` / `rcrun-oci …`: runc's command line over the runtime crate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use runtime::{CreateOptions, ExecOptions, RunOptions, Runtime, State};

#[derive(Parser, Debug)]
#[command(
    name = "rcrun-oci",
    version,
    about = "runc-compatible OCI runtime interface of rcrun"
)]
pub struct OciCli {
    /// Directory for container state (default: /run/rcrun/oci for root,
    /// $XDG_RUNTIME_DIR/rcrun/oci or /tmp/rcrun-$UID/oci otherwise).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Also write errors to this file (containerd and podman read it).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Accepted for runc compatibility; rcrun has no extra debug output yet.
    #[arg(long, global = true)]
    debug: bool,
    /// linux.cgroupsPath is systemd's slice:prefix:name (laid out in cgroupfs: no systemd).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    command: OciCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum OciCommand {
    /// Write a default config.json into the bundle directory.
    Spec {
        /// A spec for an unprivileged user: user namespace with your id as root and
        /// your /etc/subuid and /etc/subgid range above it.
        #[arg(long)]
        rootless: bool,
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
    },
    /// Create a container from a bundle; its process waits for `start`.
    Create {
        #[command(flatten)]
        bundle: BundleArgs,
        id: String,
    },
    /// Start a created container.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's process.
    Kill {
        /// Signal every process of the container, not only its init.
        #[arg(long, short)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a container (a running one only with --force).
    Delete {
        #[arg(long, short)]
        force: bool,
        id: String,
    },
    /// Create and start a container; in the foreground, wait and return its exit code.
    Run {
        #[command(flatten)]
        bundle: BundleArgs,
        #[arg(long, short)]
        detach: bool,
        id: String,
    },
    /// Run a process in a running container.
    Exec(ExecArgs),
    /// Freeze every process of a container (needs its cgroup).
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List the pids of a container's processes.
    Ps {
        #[arg(long, short, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        id: String,
    },
    /// Change a running container's cgroup limits.
    Update {
        /// linux.resources JSON to apply ("-" reads stdin).
        #[arg(long, short)]
        resources: Option<PathBuf>,
        /// memory.limit in bytes (-1: unlimited).
        #[arg(long, allow_hyphen_values = true)]
        memory: Option<i64>,
        /// pids.limit (-1: unlimited).
        #[arg(long, allow_hyphen_values = true)]
        pids_limit: Option<i64>,
        id: String,
    },
    /// List containers.
    List {
        #[arg(long, short, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Print only the ids.
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Args, Debug)]
struct BundleArgs {
    /// The bundle directory (holds config.json).
    #[arg(long, short, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's pid to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// Set an environment variable (KEY=VALUE, or KEY to copy rcrun's value).
    #[arg(long, short)]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// UID[:GID] inside the container.
    #[arg(long, short)]
    user: Option<String>,
    /// Give the process a terminal.
    #[arg(long, short)]
    tty: bool,
    /// Return once the process has started.
    #[arg(long, short)]
    detach: bool,
    /// Write the process's pid to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    id: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_user(text: &str) -> Result<(u32, Option<u32>)> {
    let (uid, gid) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let uid = uid
        .parse()
        .with_context(|| format!("--user {text:?}: the uid must be a number (UID[:GID])"))?;
    let gid = gid
        .map(|g| g.parse())
        .transpose()
        .with_context(|| format!("--user {text:?}: the gid must be a number (UID[:GID])"))?;
    Ok((uid, gid))
}

fn write_spec(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} exists already; remove it first", path.display());
    }
    let spec = if rootless {
        let (uids, gids, have_ranges) = runtime::current_user_mappings();
        if !have_ranges {
            eprintln!(
                "warning: no subordinate ids for this user in /etc/subuid and /etc/subgid; mapping only your own id, so files of other users in the rootfs cannot be represented (add ranges with `usermod --add-subuids`/`--add-subgids`)"
            );
        }
        runtime::default_spec(Some((&uids, &gids)))
    } else {
        runtime::default_spec(None)
    };
    let text = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))
}

fn print_list(states: &[State], format: ListFormat, quiet: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if quiet {
        for s in states {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(());
    }
    match format {
        ListFormat::Json => writeln!(out, "{}", serde_json::to_string(states)?)?,
        ListFormat::Table => {
            writeln!(
                out,
                "{:<20} {:<8} {:<10} {:<40} {:<31} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            )?;
            for s in states {
                writeln!(
                    out,
                    "{:<20} {:<8} {:<10} {:<40} {:<31} {}",
                    s.id,
                    s.pid,
                    s.status.as_str(),
                    s.bundle.display(),
                    s.created,
                    s.owner
                )?;
            }
        }
    }
    Ok(())
}

/// `update`'s resources: the JSON file (or stdin), then the flags on top.
fn update_resources(
    file: Option<&Path>,
    memory: Option<i64>,
    pids_limit: Option<i64>,
) -> Result<runtime::LinuxResources> {
    let mut r: runtime::LinuxResources = match file {
        None => Default::default(),
        Some(p) => {
            let text = if p == Path::new("-") {
                std::io::read_to_string(std::io::stdin()).context("read resources from stdin")?
            } else {
                std::fs::read_to_string(p)
                    .with_context(|| format!("read resources from {}", p.display()))?
            };
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not linux.resources JSON", p.display()))?
        }
    };
    if let Some(m) = memory {
        let mut mem = r.memory().unwrap_or_default();
        mem.set_limit(Some(m));
        r.set_memory(Some(mem));
    }
    if let Some(n) = pids_limit {
        let mut pids = oci_spec::runtime::LinuxPids::default();
        pids.set_limit(n);
        r.set_pids(Some(pids));
    }
    if file.is_none() && memory.is_none() && pids_limit.is_none() {
        bail!("update needs --resources FILE, --memory or --pids-limit");
    }
    Ok(r)
}

/// Runs one command; `Ok(code)` is the exit code to return.
fn dispatch(cli: &OciCli) -> Result<i32> {
    let rt = Runtime::new(cli.root.clone().unwrap_or_else(Runtime::default_root))
        .systemd_cgroup(cli.systemd_cgroup);
    match &cli.command {
        OciCommand::Spec { rootless, bundle } => write_spec(bundle, *rootless).map(|()| 0),
        OciCommand::Create { bundle, id } => {
            let opts = CreateOptions {
                pid_file: bundle.pid_file.clone(),
                ..Default::default()
            };
            rt.create(id, &bundle.bundle, &opts)?;
            Ok(0)
        }
        OciCommand::Start { id } => rt.start(id).map(|()| 0).map_err(Into::into),
        OciCommand::State { id } => {
            let state = rt.state(id)?;
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(0)
        }
        OciCommand::Kill { all, id, signal } => {
            let signal = runtime::parse_signal(signal)?;
            if *all {
                rt.kill_all(id, signal)?;
            } else {
                rt.kill(id, signal)?;
            }
            Ok(0)
        }
        OciCommand::Pause { id } => rt.pause(id).map(|()| 0).map_err(Into::into),
        OciCommand::Resume { id } => rt.resume(id).map(|()| 0).map_err(Into::into),
        OciCommand::Ps { format, id } => {
            let pids = rt.pids(id)?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string(&pids)?),
                ListFormat::Table => pids.iter().for_each(|p| println!("{p}")),
            }
            Ok(0)
        }
        OciCommand::Update {
            resources,
            memory,
            pids_limit,
            id,
        } => {
            rt.update(
                id,
                &update_resources(resources.as_deref(), *memory, *pids_limit)?,
            )?;
            Ok(0)
        }
        OciCommand::Delete { force, id } => rt.delete(id, *force).map(|()| 0).map_err(Into::into),
        OciCommand::Run { bundle, detach, id } => {
            let opts = RunOptions {
                detach: *detach,
                pid_file: bundle.pid_file.clone(),
                ..Default::default()
            };
            Ok(rt.run(id, &bundle.bundle, &opts)?)
        }
        OciCommand::Exec(args) => {
            let opts = ExecOptions {
                args: args.command.clone(),
                env: args.env.clone(),
                cwd: args.cwd.clone(),
                user: args.user.as_deref().map(parse_user).transpose()?,
                tty: args.tty,
                detach: args.detach,
                pid_file: args.pid_file.clone(),
            };
            Ok(rt.exec(&args.id, &opts)?)
        }
        OciCommand::List { format, quiet } => {
            print_list(&rt.list()?, *format, *quiet)?;
            Ok(0)
        }
    }
}

/// Appends the error to `--log` in the requested format.
fn log_error(cli: &OciCli, message: &str) {
    let Some(path) = &cli.log else { return };
    let line = match cli.log_format {
        LogFormat::Json => serde_json::json!({"level": "error", "msg": message}).to_string(),
        LogFormat::Text => format!("level=error msg={message:?}"),
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

pub fn main(cli: OciCli) -> ExitCode {
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let code = rcrun::exit_code_of(&e).clamp(0, 255) as u8;
            let message = format!("{e:#}");
            log_error(&cli, &message);
            eprintln!("rcrun: {message}");
            ExitCode::from(code)
        }
    }
}
