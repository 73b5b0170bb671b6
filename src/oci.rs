//! `rcrun oci …` / `rcrun-oci …`: runc's command line over the runtime crate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use runtime::{CreateOptions, ExecOptions, RunOptions, Runtime, StartOptions, State};

#[derive(Parser, Debug)]
#[command(
    name = "rcrun-oci",
    about = "runc-compatible OCI runtime interface of rcrun",
    disable_version_flag = true
)]
pub struct OciCli {
    /// Print the version, as runc does (the runtime-spec version on the second line).
    #[arg(long, short = 'v', global = true)]
    version: bool,
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
    /// Take linux.cgroupsPath as systemd's "slice:prefix:name"; with no systemd
    /// running, rcrun creates the same path with cgroupfs.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility (auto, true, false): rcrun tells for itself.
    #[arg(
        long = "rootless",
        id = "global_rootless",
        value_name = "auto|true|false"
    )]
    rootless: Option<String>,
    /// Accepted for runc compatibility; checkpointing is not supported.
    #[arg(long, global = true, hide = true)]
    criu: Option<String>,
    #[command(subcommand)]
    command: Option<OciCommand>,
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
        #[command(flatten)]
        start: StartArgs,
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
        #[command(flatten)]
        start: StartArgs,
        #[arg(long, short)]
        detach: bool,
        /// Keep the container after its process exits (foreground only).
        #[arg(long)]
        keep: bool,
        id: String,
    },
    /// Run a process in a running container.
    Exec(ExecArgs),
    /// Print the features rcrun supports, as JSON (runtime-spec features.md).
    Features,
    /// Freeze every process of a container (needs its cgroup).
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List a container's processes (a table, or their pids as JSON).
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
struct StartArgs {
    /// A unix socket that receives the pty master when process.terminal is true.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Use MS_MOVE and chroot instead of pivot_root (for a rootfs on ramfs).
    #[arg(long)]
    no_pivot: bool,
    /// Keep the caller's session keyring instead of giving the container its own.
    #[arg(long)]
    no_new_keyring: bool,
    /// Pass this many fds from 3 up on to the container's process.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
}

impl StartArgs {
    fn options(&self) -> Result<StartOptions> {
        check_preserved_fds(self.preserve_fds)?;
        Ok(StartOptions {
            console_socket: self.console_socket.clone(),
            no_pivot: self.no_pivot,
            no_new_keyring: self.no_new_keyring,
            preserve_fds: self.preserve_fds,
        })
    }
}

/// Every fd to pass on must be open now; otherwise rcrun's own fds could take a
/// free number in the range and reach the container.
fn check_preserved_fds(count: u32) -> Result<()> {
    for fd in 3..3 + count as i32 {
        // SAFETY: F_GETFD only reads the flags of an fd number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            bail!(
                "--preserve-fds {count}: fd {fd} is not open; pass exactly the fds from 3 up that rcrun inherits"
            );
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// A JSON file with the whole process (runtime-spec `process`); ARGS and the
    /// --env/--cwd/--user/--tty options then do not apply.
    #[arg(long, short)]
    process: Option<PathBuf>,
    /// Add a capability (e.g. CAP_NET_ADMIN) to the process.
    #[arg(long = "cap", short = 'c')]
    caps: Vec<String>,
    /// Additional group ids.
    #[arg(long = "additional-gids", short = 'g')]
    additional_gids: Vec<u32>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    no_new_privs: bool,
    /// A unix socket that receives the pty master when the process has a terminal.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Pass this many fds from 3 up on to the process.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility; SELinux labels are not supported.
    #[arg(long, hide = true)]
    process_label: Option<String>,
    /// Accepted for runc compatibility; AppArmor is not supported.
    #[arg(long, hide = true)]
    apparmor: Option<String>,
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
    /// The command and its arguments (unless --process is given).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Reads runc's `exec --process` file.
fn read_process(path: &Path) -> Result<oci_spec::runtime::Process> {
    let text = std::fs::read(path)
        .with_context(|| format!("--process {}: cannot read it", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| {
        anyhow::anyhow!(
            "--process {}: not a runtime-spec process: {e}; give a JSON object like config.json's \"process\"",
            path.display()
        )
    })
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

/// `ps`'s table: the host's view of each process, as `ps -f` shows it.
fn print_process_table(pids: &[i32]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<8} {:<8} {:<8} CMD", "UID", "PID", "PPID")?;
    for pid in pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue; // exited meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?")
                .to_string()
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmdline)
            .trim_end_matches('\0')
            .replace('\0', " ");
        writeln!(
            out,
            "{:<8} {:<8} {:<8} {}",
            field("Uid:"),
            pid,
            field("PPid:"),
            if cmd.is_empty() { field("Name:") } else { cmd }
        )?;
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
    let Some(command) = &cli.command else {
        if cli.version {
            print!("{}", version_text());
            return Ok(0);
        }
        bail!("no command given; see `rcrun-oci --help`");
    };
    let rt = Runtime::new(cli.root.clone().unwrap_or_else(Runtime::default_root))
        .systemd_cgroup(cli.systemd_cgroup);
    match command {
        OciCommand::Spec { rootless, bundle } => write_spec(bundle, *rootless).map(|()| 0),
        OciCommand::Create { bundle, start, id } => {
            let opts = CreateOptions {
                pid_file: bundle.pid_file.clone(),
                start: start.options()?,
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
                ListFormat::Table => print_process_table(&pids)?,
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
        OciCommand::Run {
            bundle,
            start,
            detach,
            keep,
            id,
        } => {
            if *keep && *detach {
                bail!(
                    "--keep applies to a container run in the foreground; drop --detach or --keep"
                );
            }
            let opts = RunOptions {
                detach: *detach,
                keep: *keep,
                pid_file: bundle.pid_file.clone(),
                start: start.options()?,
                ..Default::default()
            };
            Ok(rt.run(id, &bundle.bundle, &opts)?)
        }
        OciCommand::Exec(args) => {
            check_preserved_fds(args.preserve_fds)?;
            let process = args.process.as_deref().map(read_process).transpose()?;
            if process.is_none() && args.command.is_empty() {
                bail!("exec needs a command (ARGS) or --process FILE");
            }
            if process.is_some() && !args.command.is_empty() {
                bail!("exec takes either --process FILE or a command, not both");
            }
            let opts = ExecOptions {
                args: args.command.clone(),
                env: args.env.clone(),
                cwd: args.cwd.clone(),
                user: args.user.as_deref().map(parse_user).transpose()?,
                tty: args.tty,
                detach: args.detach,
                pid_file: args.pid_file.clone(),
                process,
                add_caps: args.caps.clone(),
                additional_gids: args.additional_gids.clone(),
                no_new_privileges: args.no_new_privs,
                console_socket: args.console_socket.clone(),
                preserve_fds: args.preserve_fds,
            };
            Ok(rt.exec(&args.id, &opts)?)
        }
        OciCommand::Features => {
            println!("{}", serde_json::to_string_pretty(&runtime::features())?);
            Ok(0)
        }
        OciCommand::List { format, quiet } => {
            print_list(&rt.list()?, *format, *quiet)?;
            Ok(0)
        }
    }
}

fn version_text() -> String {
    format!(
        "rcrun-oci version {}\nspec: {}\n",
        env!("CARGO_PKG_VERSION"),
        runtime::SPEC_VERSION
    )
}

static LOG: std::sync::OnceLock<(PathBuf, LogFormat)> = std::sync::OnceLock::new();

/// Appends one line to `--log` in the requested format, as runc writes it.
fn log_line(level: &str, message: &str) -> bool {
    let Some((path, format)) = LOG.get() else {
        return false;
    };
    let time = runtime::now_rfc3339();
    let line = match format {
        LogFormat::Json => {
            serde_json::json!({"level": level, "msg": message, "time": time}).to_string()
        }
        LogFormat::Text => format!("time={time:?} level={level} msg={message:?}"),
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .is_ok()
}

/// Runtime warnings go to `--log` when there is one: under conmon and containerd,
/// create's stderr is the container's own output stream.
fn warn(message: &str) {
    if !log_line("warning", message) {
        eprintln!("rcrun: warning: {message}");
    }
}

pub fn main(cli: OciCli) -> ExitCode {
    if let Some(path) = &cli.log {
        let _ = LOG.set((path.clone(), cli.log_format));
    }
    runtime::set_warning_sink(warn);
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let code = rcrun::exit_code_of(&e).clamp(0, 255) as u8;
            let message = format!("{e:#}");
            log_line("error", &message);
            eprintln!("rcrun: {message}");
            ExitCode::from(code)
        }
    }
}
