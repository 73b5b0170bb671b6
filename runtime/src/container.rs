//! The lifecycle of a container, in the runtime spec's terms: create, start, state,
//! kill, delete; plus `run` (create + start + wait, rcrun being the monitor) and
//! `exec` into a running container.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::SigSet;
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{Pid, Uid};

use crate::cgroup::{self, Cgroup};
use crate::channel::{Channel, ToChild, ToParent};
use crate::config::{self, ContainerConfig, NamespacePlan};
use crate::error::{Error, FailureKind, Result, SetupFailure};
use crate::hooks::{self, HookState};
use crate::monitor::{self, BlockedSignals};
use crate::mountattr::{self, Premade};
use crate::overlay::RootfsOverlay;
use crate::process::{self, ProcessPlan};
use crate::spawn::{self, Spawned, kill_and_reap};
use crate::state::{self, FIFO, Record, State, Status};
use crate::{mounts, nsfields, seccomp, sys, tty};

/// Where a runtime keeps its containers' state.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    /// `linux.cgroupsPath` is systemd's slice:prefix:name (see cgroup.rs).
    systemd_cgroup: bool,
}

/// What runc's `create` and `run` options change about starting a container.
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    /// A unix socket that receives the pty master (SCM_RIGHTS) when the process
    /// has a terminal, as with runc's `--console-socket`.
    pub console_socket: Option<PathBuf>,
    /// Make the rootfs `/` with MS_MOVE and chroot instead of pivot_root (for a
    /// rootfs on ramfs, where pivot_root is refused).
    pub no_pivot: bool,
    /// Keep the caller's session keyring instead of joining a fresh one.
    pub no_new_keyring: bool,
    /// Pass fds 3..3+N of the caller on to the container's process.
    pub preserve_fds: u32,
}

#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    pub pid_file: Option<PathBuf>,
    /// Mount this overlay on the bundle's root.path, inside the container.
    pub overlay: Option<RootfsOverlay>,
    pub start: StartOptions,
}

#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    /// Mount this overlay on the bundle's root.path, inside the container.
    pub overlay: Option<RootfsOverlay>,
    /// The container is killed when the calling process dies (its monitor), so
    /// no container outlives what would record its exit and free its network.
    pub die_with_parent: bool,
    /// In the foreground: keep the stopped container instead of deleting it.
    pub keep: bool,
    pub start: StartOptions,
}

#[derive(Debug, Default, Clone)]
pub struct ExecOptions {
    pub args: Vec<String>,
    /// KEY=VALUE entries added to (or replacing those of) the container's env.
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<(u32, Option<u32>)>,
    pub tty: bool,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    /// A whole process (runc's `exec --process FILE`): replaces the container's
    /// process; `args`, `env`, `cwd`, `user` and `tty` then do not apply.
    pub process: Option<oci_spec::runtime::Process>,
    /// Capabilities added to the process's bounding, effective and permitted sets.
    pub add_caps: Vec<String>,
    pub additional_gids: Vec<u32>,
    pub no_new_privileges: bool,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// How a created container's process learns that it may exec.
enum Gate {
    /// `create`: it blocks opening the fifo until `start` opens the other end.
    Fifo(OwnedFd),
    /// `run`: rcrun sends `Start` once the state is written.
    Message,
}

/// Destroys a half-made container unless disarmed: its cgroup, its state
/// directory, then its poststop hooks.
struct Rollback {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    poststop: Option<hooks::Poststop>,
}

impl Rollback {
    fn disarm(mut self) {
        self.dir = None;
        self.cgroup = None;
        self.poststop = None;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(poststop) = self.poststop.take() {
            poststop.run();
        }
    }
}

fn setup_failure(step: &str, errno: Errno) -> SetupFailure {
    SetupFailure {
        step: step.into(),
        detail: errno.desc().to_string(),
        kind: FailureKind::Setup,
    }
}

/// What the setup process hands over with Ready.
struct Ready {
    pty: Option<OwnedFd>,
    seccomp_listener: Option<OwnedFd>,
}

/// Waits for the setup process to report Ready, with the pty master and the
/// seccomp listener if it has them.
fn await_ready(spawned: &Spawned) -> Result<Ready> {
    let mut seccomp_listener = None;
    let outcome = loop {
        break match spawned.channel.recv::<ToParent>() {
            Ok(Some((ToParent::SeccompListener, fd))) => {
                seccomp_listener = fd;
                continue;
            }
            Ok(Some((ToParent::Ready, pty))) => {
                return Ok(Ready {
                    pty,
                    seccomp_listener,
                });
            }
            Ok(Some((ToParent::Failed(f), _))) => Err(f.into()),
            Ok(Some((other, _))) => Err(Error::InvalidConfig(format!(
                "unexpected message {other:?} from the container's setup"
            ))),
            Ok(None) => Err(Error::InvalidConfig(
                "the container's setup process exited without a word".into(),
            )),
            Err(e) => Err(Error::sys("read from the container's setup process", e)),
        };
    };
    kill_and_reap(spawned.pid);
    outcome
}

/// After `Start`: EOF means the exec succeeded, `Failed` that it did not.
fn await_exec(spawned: &Spawned) -> Result<()> {
    match spawned.channel.recv::<ToParent>() {
        Ok(None) => Ok(()),
        Ok(Some((ToParent::Failed(f), _))) => {
            let _ = waitpid(spawned.pid, None);
            Err(f.into())
        }
        Ok(Some((other, _))) => Err(Error::InvalidConfig(format!(
            "unexpected message {other:?} from the container"
        ))),
        Err(e) => Err(Error::sys("read from the container's setup process", e)),
    }
}

fn write_pid_file(path: Option<&Path>, pid: Pid) -> Result<()> {
    match path {
        Some(p) => state::write_atomic(p, pid.to_string().as_bytes()),
        None => Ok(()),
    }
}

/// The setup's result: the program to exec, the pty master, the seccomp listener.
type Prepared = (CString, Option<OwnedFd>, Option<OwnedFd>);

/// Sends the seccomp listener and Ready (with the pty master; this process then
/// closes both) and returns the program to exec.
fn report_ready(
    channel: &Channel,
    prepared: Result<Prepared, SetupFailure>,
) -> Result<CString, SetupFailure> {
    let (exe, pty, listener) = prepared?;
    if let Some(fd) = listener {
        channel
            .send(&ToParent::SeccompListener, Some(fd.as_raw_fd()))
            .map_err(|e| setup_failure("hand the seccomp listener to rcrun", e))?;
    }
    channel
        .send(&ToParent::Ready, pty.as_ref().map(|p| p.as_raw_fd()))
        .map_err(|e| setup_failure("report ready", e))?;
    Ok(exe)
}

/// The container's init: namespaces are set; build the rootfs, prepare the
/// process, report Ready, wait for the gate, exec.
fn init_body(
    cfg: &ContainerConfig,
    premade: &Premade,
    gate: &Gate,
    mask: &SigSet,
    channel: &Channel,
) -> SetupFailure {
    // The state for startContainer hooks, when the spec has any hooks run in setup.
    let mut start_hooks = None;
    let prepared = (|| -> Result<Prepared, SetupFailure> {
        sys::set_dumpable(false)
            .map_err(|e| setup_failure("make the setup process non-dumpable", e))?;
        nix::unistd::setsid().map_err(|e| setup_failure("setsid", e))?;
        if cfg.new_session_keyring {
            sys::join_new_session_keyring().map_err(|e| {
                setup_failure(
                    "join a new session keyring (runc's --no-new-keyring skips it)",
                    e,
                )
            })?;
        }
        if let Some(h) = &cfg.hostname {
            mounts::set_hostname(h)?;
        }
        if let Some(d) = &cfg.domainname {
            nsfields::set_domainname(d)?;
        }
        mounts::setup_rootfs(&cfg.rootfs, premade, || {
            start_hooks = hooks::pause(channel, &cfg.spec)?;
            Ok(())
        })?;
        let pty = if cfg.process.terminal {
            Some(tty::open_console(cfg.process.console_size)?)
        } else {
            None
        };
        let (exe, listener) = process::prepare(&cfg.process)?;
        Ok((exe, pty, listener))
    })();
    let exe = match report_ready(channel, prepared) {
        Ok(exe) => exe,
        Err(f) => return f,
    };
    // Held open until the exec closes it (close-on-exec): `start` returns on that EOF,
    // once the process is the user's program, which `exec` can then join.
    let fifo_until_exec = match gate {
        Gate::Message => match channel.recv::<ToChild>() {
            Ok(Some((ToChild::Start, _))) => None,
            // rcrun went away before starting us: nothing to run for.
            // SAFETY: see spawn::run_child.
            _ => unsafe { libc::_exit(125) },
        },
        Gate::Fifo(fifo) => {
            // Blocks until `start` opens the read end.
            let opened = nix::fcntl::open(
                sys::fd_path(fifo).as_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            match opened {
                Ok(w) => {
                    let _ = nix::unistd::write(&w, b"0");
                    Some(w)
                }
                Err(e) => return setup_failure("open the exec fifo (is /proc mounted?)", e),
            }
        }
    };
    if let Some(state) = &start_hooks
        && let Err(f) = hooks::run(hooks::Kind::StartContainer, &cfg.spec, state)
    {
        if let Some(fifo) = &fifo_until_exec {
            hooks::report_on_fifo(fifo, &f);
        }
        return f;
    }
    process::exec(&cfg.process, &exe, mask)
}

/// A process exec'd into a running container: namespaces are joined.
fn exec_body(plan: &ProcessPlan, mask: &SigSet, channel: &Channel) -> SetupFailure {
    let prepared = (|| -> Result<Prepared, SetupFailure> {
        nix::unistd::setsid().map_err(|e| setup_failure("setsid", e))?;
        let pty = if plan.terminal {
            Some(tty::open_console(plan.console_size)?)
        } else {
            None
        };
        let (exe, listener) = process::prepare(plan)?;
        Ok((exe, pty, listener))
    })();
    let exe = match report_ready(channel, prepared) {
        Ok(exe) => exe,
        Err(f) => return f,
    };
    process::exec(plan, &exe, mask)
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Runtime {
            root: root.into(),
            systemd_cgroup: false,
        }
    }

    /// Reads `linux.cgroupsPath` as systemd's `slice:prefix:name` (runc's
    /// `--systemd-cgroup`); with no systemd, it is laid out in cgroupfs as systemd would.
    pub fn systemd_cgroup(mut self, on: bool) -> Self {
        self.systemd_cgroup = on;
        self
    }

    /// `/run/rcrun/oci` for root; `$XDG_RUNTIME_DIR/rcrun/oci` or `/tmp/rcrun-UID/oci`
    /// for everyone else.
    pub fn default_root() -> PathBuf {
        if sys::host_root() {
            return PathBuf::from("/run/rcrun/oci");
        }
        // su and sudo often keep another user's XDG_RUNTIME_DIR: use only our own.
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .filter(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_dir() && m.uid() == Uid::effective().as_raw())
            })
            .map(|p| p.join("rcrun"))
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/rcrun-{}", Uid::effective())));
        base.join("oci")
    }

    /// The cgroup's name when a spec gives no cgroupsPath: containers of other state
    /// roots may have the same id.
    pub fn default_cgroup_name(&self, id: &str) -> String {
        use sha2::{Digest, Sha256};
        if self.root == Self::default_root() {
            return format!("rcrun-{id}");
        }
        let hash = Sha256::digest(self.root.as_os_str().as_encoded_bytes());
        format!(
            "rcrun-{id}-{:02x}{:02x}{:02x}{:02x}",
            hash[0], hash[1], hash[2], hash[3]
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self, id: &str) -> Result<PathBuf> {
        state::validate_id(id)?;
        Ok(self.root.join(id))
    }

    /// Creates the state root (0700, ours): another user's directory under /tmp
    /// must not be trusted.
    fn ensure_root(&self) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| {
                Error::io(
                    format!("create the state directory {}", self.root.display()),
                    e,
                )
            })?;
        let md = std::fs::metadata(&self.root)
            .map_err(|e| Error::io(format!("stat {}", self.root.display()), e))?;
        if md.uid() != Uid::effective().as_raw() {
            return Err(Error::InvalidConfig(format!(
                "state directory {} belongs to uid {}, not to you; pass --root",
                self.root.display(),
                md.uid()
            )));
        }
        Ok(())
    }

    /// Holds an exclusive lock on a container until dropped.
    pub(crate) fn lock(&self, id: &str) -> Result<(PathBuf, File)> {
        let dir = self.dir(id)?;
        let handle = File::open(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(id.to_string()),
            _ => Error::io(format!("open {}", dir.display()), e),
        })?;
        handle
            .lock()
            .map_err(|e| Error::io(format!("lock container {id}"), e))?;
        Ok((dir, handle))
    }

    /// Claims the id: mkdir is atomic, so two creates of one id cannot both win. No
    /// lock is held across the spawn: a flock lives in the open file description,
    /// which the container's process would inherit and hold until it execs.
    fn new_container_dir(&self, id: &str) -> Result<(PathBuf, Rollback)> {
        let dir = self.dir(id)?;
        self.ensure_root()?;
        match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(id.to_string()));
            }
            Err(e) => return Err(Error::io(format!("create {}", dir.display()), e)),
        }
        Ok((
            dir.clone(),
            Rollback {
                dir: Some(dir),
                cgroup: None,
                poststop: None,
            },
        ))
    }

    fn record(cfg: &ContainerConfig, id: &str, pid: Pid, cgroup: Option<&Cgroup>) -> Record {
        Record {
            id: id.to_string(),
            bundle: cfg.bundle.clone(),
            rootfs: cfg.rootfs.rootfs.clone(),
            pid: pid.as_raw(),
            pid_start: sys::process_start_time(pid.as_raw()).unwrap_or(0),
            created: state::now_rfc3339(),
            owner: Uid::effective().as_raw(),
            spec: cfg.spec.clone(),
            cgroup: cgroup.map(|c| c.dir.clone()),
        }
    }

    /// Claims the id, starts the container's init up to Ready and records it. On any
    /// failure the process is killed and the state directory removed.
    fn launch(
        &self,
        id: &str,
        cfg: &ContainerConfig,
        gate: impl FnOnce(&Path) -> Result<Gate>,
        signals: &BlockedSignals,
        pid_file: Option<&Path>,
    ) -> Result<(Spawned, Option<OwnedFd>, Rollback)> {
        let (dir, mut rollback) = self.new_container_dir(id)?;
        let placed = cgroup::prepare(
            &cfg.spec,
            &self.default_cgroup_name(id),
            self.systemd_cgroup,
        )?;
        rollback.cgroup = placed.as_ref().map(|p| p.cgroup.clone());
        let gate = gate(&dir)?;
        // Idmapped mounts of host filesystems can only be made here, as root.
        let premade = mountattr::premake(&cfg.rootfs.mounts)?;
        let mask = signals.original;
        let spawned = spawn::spawn(
            &cfg.namespaces,
            cfg.maps.as_ref(),
            cfg.process.oom_score_adj,
            placed.as_ref().map(|p| &p.fd),
            |ch| init_body(cfg, &premade, &gate, &mask, ch),
        )?;
        let state = HookState::new(&cfg.spec, id, spawned.pid, &cfg.bundle, Status::Creating);
        rollback.poststop = hooks::Poststop::new(&cfg.spec, state.clone());
        if let Err(e) = hooks::serve_pause(&spawned.channel, &cfg.spec, &state) {
            kill_and_reap(spawned.pid);
            return Err(e);
        }
        let ready = await_ready(&spawned)?;
        let record = Self::record(cfg, id, spawned.pid, placed.as_ref().map(|p| &p.cgroup));
        let saved = record
            .save(&dir)
            .and_then(|()| write_pid_file(pid_file, spawned.pid))
            .and_then(|()| {
                let mut state = record.state(&dir);
                state.status = Status::Creating;
                seccomp::send_listener(cfg.process.seccomp.as_ref(), ready.seccomp_listener, &state)
            });
        if let Err(e) = saved {
            kill_and_reap(spawned.pid);
            return Err(e);
        }
        Ok((spawned, ready.pty, rollback))
    }

    /// Sets the container up and leaves its process waiting for `start`.
    pub fn create(&self, id: &str, bundle: &Path, opts: &CreateOptions) -> Result<()> {
        let mut cfg = load_and_warn(bundle, opts.overlay.as_ref())?;
        apply_start_options(&mut cfg, &opts.start);
        let console = console_socket(cfg.process.terminal, true, &opts.start.console_socket)?;
        let (_, pty, rollback) = self.launch(
            id,
            &cfg,
            exec_fifo,
            &BlockedSignals::current(),
            opts.pid_file.as_deref(),
        )?;
        if let (Some(console), Some(pty)) = (console, pty) {
            tty::send_console(&console, pty)?;
        }
        rollback.disarm();
        Ok(())
    }

    /// Lets a created container's process exec; returns once it has (or has exited).
    pub fn start(&self, id: &str) -> Result<()> {
        let (dir, _lock) = self.lock(id)?;
        let rec = Record::load(&dir, id)?;
        let status = rec.status(&dir);
        if status != Status::Created {
            return Err(Error::WrongState {
                id: id.to_string(),
                status: status.as_str(),
                hint: "only a created container can be started",
            });
        }
        // Before the fifo releases the process: a short-lived one may have run and
        // been reaped by the time we looked for it afterwards.
        let pidfd = sys::pidfd_open(Pid::from_raw(rec.pid)).map_err(|e| match e {
            Errno::ESRCH => Error::WrongState {
                id: id.to_string(),
                status: "stopped",
                hint: "its process exited before it was started",
            },
            e => Error::sys(format!("open the process of container {id}"), e),
        })?;
        let fifo_path = dir.join(FIFO);
        let fifo = nix::fcntl::open(
            &fifo_path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::sys(format!("open {}", fifo_path.display()), e))?;
        // Opening the read end released the process; from here on it is running.
        let _ = std::fs::remove_file(&fifo_path);
        let mut released = false;
        // After the gate's byte: a startContainer hook's failure, if any.
        let mut after_gate = Vec::new();
        loop {
            let mut fds = [
                PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
                PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("wait for the container to start", e)),
                Ok(_) => {}
            }
            let fifo_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            let exited = fds[1].revents().is_some_and(|r| !r.is_empty());
            if (fifo_ready || exited) && read_gate(&fifo, &mut released, &mut after_gate) {
                break;
            }
            if exited && released {
                break;
            }
            if exited {
                return Err(Error::WrongState {
                    id: id.to_string(),
                    status: "stopped",
                    hint: "its process exited before it was started",
                });
            }
        }
        if let Some(f) = hooks::failure_from_fifo(&after_gate) {
            // The spec's lifecycle: stop and destroy the container, run poststop.
            kill_and_wait(&rec)?;
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("remove {}", dir.display()), e))?;
            hooks::run_warning(
                hooks::Kind::Poststop,
                &rec.spec,
                &rec.hook_state(Status::Stopped),
            );
            return Err(f.into());
        }
        hooks::run_warning(
            hooks::Kind::Poststart,
            &rec.spec,
            &rec.hook_state(Status::Running),
        );
        Ok(())
    }

    /// Creates and starts a container. In the foreground rcrun is its monitor and
    /// returns its exit code (128+N if killed by signal N), then deletes it.
    pub fn run(&self, id: &str, bundle: &Path, opts: &RunOptions) -> Result<i32> {
        let mut cfg = load_and_warn(bundle, opts.overlay.as_ref())?;
        cfg.process.die_with_parent = opts.die_with_parent;
        apply_start_options(&mut cfg, &opts.start);
        let console = console_socket(
            cfg.process.terminal,
            opts.detach,
            &opts.start.console_socket,
        )?;
        if console.is_none() {
            // Sized before the process runs: it may ask at once.
            cfg.process.console_size = tty::own_size().or(cfg.process.console_size);
        }
        let signals = if opts.detach {
            BlockedSignals::current()
        } else {
            BlockedSignals::block()?
        };
        let (spawned, mut pty, rollback) = self.launch(
            id,
            &cfg,
            |_| Ok(Gate::Message),
            &signals,
            opts.pid_file.as_deref(),
        )?;
        if let Some(console) = &console
            && let Some(master) = pty.take()
            && let Err(e) = tty::send_console(console, master)
        {
            kill_and_reap(spawned.pid);
            return Err(e);
        }
        let started = spawned
            .channel
            .send(&ToChild::Start, None)
            .map_err(|e| Error::sys("start the container", e))
            .and_then(|()| await_exec(&spawned));
        if let Err(e) = started {
            kill_and_reap(spawned.pid);
            return Err(e);
        }
        hooks::run_warning(
            hooks::Kind::Poststart,
            &cfg.spec,
            &HookState::new(&cfg.spec, id, spawned.pid, &cfg.bundle, Status::Running),
        );
        if opts.detach {
            rollback.disarm();
            return Ok(0);
        }
        // The container is running: the rollback now deletes it once it exits,
        // unless it is to be kept.
        let code = monitor::wait(spawned.pid, pty, &signals);
        if opts.keep {
            rollback.disarm();
        }
        code
    }

    pub fn state(&self, id: &str) -> Result<State> {
        let dir = self.dir(id)?;
        Ok(Record::load(&dir, id)?.state(&dir))
    }

    pub fn list(&self) -> Result<Vec<State>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", self.root.display()), e)),
        };
        let mut out: Vec<State> = entries
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().to_str()?.to_string();
                state::validate_id(&id).ok()?;
                Record::load(&e.path(), &id)
                    .ok()
                    .map(|r| r.state(&e.path()))
            })
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Sends a signal to the container's process.
    pub fn kill(&self, id: &str, signal: i32) -> Result<()> {
        let dir = self.dir(id)?;
        let rec = Record::load(&dir, id)?;
        if !matches!(
            rec.status(&dir),
            Status::Created | Status::Running | Status::Paused
        ) {
            return Err(Error::WrongState {
                id: id.to_string(),
                status: "stopped",
                hint: "there is no process to signal; delete it with `delete`",
            });
        }
        let pidfd = sys::pidfd_open(Pid::from_raw(rec.pid))
            .map_err(|e| Error::sys(format!("open the process of container {id}"), e))?;
        // The pidfd pins the process: check it is still ours before signalling.
        if !rec.alive() {
            return Err(Error::WrongState {
                id: id.to_string(),
                status: "stopped",
                hint: "its process has exited",
            });
        }
        // SAFETY: plain syscall on a valid pidfd.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        Errno::result(ret)
            .map(drop)
            .map_err(|e| Error::sys(format!("send signal {signal} to container {id}"), e))
    }

    /// Removes a container. A running one needs `force` (it is killed first).
    /// With `force`, a container that does not exist is no error (runc's rule:
    /// containerd's shim deletes once more when it cleans up).
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let (dir, _lock) = match self.lock(id) {
            Err(Error::NotFound(_)) if force => return Ok(()),
            other => other?,
        };
        let rec = match Record::load(&dir, id) {
            Ok(r) => Some(r),
            // Left behind by a create that crashed before writing its state.
            Err(Error::NotFound(_)) => None,
            Err(e) if force => {
                crate::warn::warn(&e.to_string());
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(rec) = &rec {
            let status = rec.status(&dir);
            if matches!(status, Status::Running | Status::Paused) && !force {
                return Err(Error::WrongState {
                    id: id.to_string(),
                    status: status.as_str(),
                    hint: "stop it first (`kill`) or use `delete --force`",
                });
            }
            if rec.alive() {
                kill_and_wait(rec)?;
            }
            if let Some(dir) = &rec.cgroup {
                Cgroup { dir: dir.clone() }.remove();
            }
        }
        std::fs::remove_dir_all(&dir)
            .map_err(|e| Error::io(format!("remove {}", dir.display()), e))?;
        if let Some(rec) = &rec {
            hooks::run_warning(
                hooks::Kind::Poststop,
                &rec.spec,
                &rec.hook_state(Status::Stopped),
            );
        }
        Ok(())
    }

    /// Waits up to `timeout` for a container's process to exit; true if it has
    /// (or there is none).
    pub fn wait(&self, id: &str, timeout: Duration) -> Result<bool> {
        let dir = self.dir(id)?;
        let rec = Record::load(&dir, id)?;
        let pidfd = match sys::pidfd_open(Pid::from_raw(rec.pid)) {
            Ok(fd) => fd,
            Err(Errno::ESRCH) => return Ok(true),
            Err(e) => return Err(Error::sys(format!("open the process of container {id}"), e)),
        };
        if !rec.alive() {
            return Ok(true);
        }
        exited_within(&pidfd, timeout)
            .map_err(|e| Error::sys(format!("wait for container {id} to exit"), e))
    }

    /// Runs a new process inside a running container. Returns its exit code (0
    /// right after it starts with `detach`).
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32> {
        let dir = self.dir(id)?;
        let rec = Record::load(&dir, id)?;
        let status = rec.status(&dir);
        if !matches!(status, Status::Created | Status::Running) {
            return Err(Error::WrongState {
                id: id.to_string(),
                status: status.as_str(),
                hint: "exec needs a running container",
            });
        }
        if opts.process.is_none() && opts.args.is_empty() {
            return Err(Error::InvalidConfig("exec needs a command to run".into()));
        }
        let mut plan = exec_plan(&rec, opts)?;
        let console = console_socket(plan.terminal, opts.detach, &opts.console_socket)?;
        if console.is_none() {
            plan.console_size = tty::own_size();
        }
        let ns = join_plan(&rec)?;
        let signals = if opts.detach {
            BlockedSignals::current()
        } else {
            BlockedSignals::block()?
        };
        let mask = signals.original;
        let cgroup = rec.cgroup.as_deref().map(cgroup::open_dir).transpose()?;
        let spawned = spawn::spawn(&ns, None, plan.oom_score_adj, cgroup.as_ref(), |ch| {
            exec_body(&plan, &mask, ch)
        })?;
        let ready = await_ready(&spawned)?;
        if let Err(e) = seccomp::send_listener(
            plan.seccomp.as_ref(),
            ready.seccomp_listener,
            &rec.state(&dir),
        ) {
            kill_and_reap(spawned.pid);
            return Err(e);
        }
        let mut pty = ready.pty;
        if let Some(console) = &console
            && let Some(master) = pty.take()
            && let Err(e) = tty::send_console(console, master)
        {
            kill_and_reap(spawned.pid);
            return Err(e);
        }
        await_exec(&spawned)?;
        write_pid_file(opts.pid_file.as_deref(), spawned.pid)?;
        if opts.detach {
            return Ok(0);
        }
        monitor::wait(spawned.pid, pty, &signals)
    }
}

/// Reads what the exec fifo holds: the gate's byte, then (rarely) a startContainer
/// failure. True at EOF, which comes once the process has exec'd or exited.
fn read_gate(fifo: &OwnedFd, released: &mut bool, after_gate: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fifo, &mut buf) {
            Ok(0) => return *released,
            Ok(n) => {
                let rest = if *released { &buf[..n] } else { &buf[1..n] };
                *released = true;
                after_gate.extend_from_slice(rest);
            }
            Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// The fifo a created container's process blocks on until `start` opens it.
fn exec_fifo(dir: &Path) -> Result<Gate> {
    let path = dir.join(FIFO);
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o622))
        .map_err(|e| Error::sys(format!("create {}", path.display()), e))?;
    // mkfifo is subject to the umask; the container's user must be able to write it.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    nix::fcntl::open(&path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map(Gate::Fifo)
        .map_err(|e| Error::sys(format!("open {}", path.display()), e))
}

/// Loads a bundle; what rcrun cannot honour goes to stderr, as runc's warnings do.
fn load_and_warn(bundle: &Path, overlay: Option<&RootfsOverlay>) -> Result<ContainerConfig> {
    let cfg = config::load(bundle, overlay)?;
    for w in &cfg.warnings {
        crate::warn::warn(w);
    }
    Ok(cfg)
}

/// SIGKILL, then wait (on a pidfd, no polling loop) until the process is gone.
fn kill_and_wait(rec: &Record) -> Result<()> {
    let pid = Pid::from_raw(rec.pid);
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(Errno::ESRCH) => return Ok(()),
        Err(e) => {
            return Err(Error::sys(
                format!("open the process of container {}", rec.id),
                e,
            ));
        }
    };
    if !rec.alive() {
        return Ok(());
    }
    // SAFETY: plain syscall on a valid pidfd.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match exited_within(&pidfd, Duration::from_secs(10)) {
        Ok(false) => Err(Error::WrongState {
            id: rec.id.clone(),
            status: "running",
            hint: "its process did not die within 10 s of SIGKILL",
        }),
        Ok(true) => Ok(()),
        Err(e) => Err(Error::sys("wait for the container to exit", e)),
    }
}

/// Whether the process behind `pidfd` exits within `timeout`.
fn exited_within(pidfd: &OwnedFd, timeout: Duration) -> nix::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(n) => return Ok(n > 0),
        }
    }
}

/// The namespaces of a running container, joined through /proc/PID/ns.
fn join_plan(rec: &Record) -> Result<NamespacePlan> {
    let list = rec
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut plan = NamespacePlan::default();
    for ns in list {
        let flag = config::ns_flag(ns.typ());
        let name = match flag {
            libc::CLONE_NEWNS => "mnt",
            libc::CLONE_NEWNET => "net",
            libc::CLONE_NEWTIME => "time_for_children",
            _ => spawn::ns_name(flag as u64),
        };
        plan.join.push((
            PathBuf::from(format!("/proc/{}/ns/{name}", rec.pid)),
            flag as u64,
        ));
    }
    // User first (its capabilities let us join the rest), mount last.
    plan.join.sort_by_key(|(_, f)| match *f as i32 {
        libc::CLONE_NEWUSER => 0,
        libc::CLONE_NEWNS => 2,
        _ => 1,
    });
    Ok(plan)
}

fn exec_plan(rec: &Record, opts: &ExecOptions) -> Result<ProcessPlan> {
    let mut spec = rec.spec.clone();
    let mut proc_ = match &opts.process {
        Some(p) => p.clone(),
        None => {
            let mut p = spec.process().clone().ok_or_else(|| {
                Error::InvalidConfig("the container has no process section".into())
            })?;
            override_process(&mut p, opts);
            p
        }
    };
    if !opts.add_caps.is_empty() {
        add_capabilities(&mut proc_, &opts.add_caps)?;
    }
    if !opts.additional_gids.is_empty() {
        let mut gids = proc_.user().additional_gids().clone().unwrap_or_default();
        gids.extend(&opts.additional_gids);
        proc_.user_mut().set_additional_gids(Some(gids));
    }
    if opts.no_new_privileges {
        proc_.set_no_new_privileges(Some(true));
    }
    spec.set_process(Some(proc_));
    let mut plan = config::process_plan(&spec)?;
    plan.preserve_fds = opts.preserve_fds;
    Ok(plan)
}

/// `exec ARGS` with --env/--cwd/--user/--tty on top of the container's process.
fn override_process(proc_: &mut oci_spec::runtime::Process, opts: &ExecOptions) {
    proc_.set_args(Some(opts.args.clone()));
    let mut env = proc_.env().clone().unwrap_or_default();
    for extra in &opts.env {
        let key = extra.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(if extra.contains('=') {
            extra.clone()
        } else {
            // Docker's `-e KEY` takes the value from rcrun's environment.
            format!(
                "{extra}={}",
                std::env::var(OsStr::new(extra)).unwrap_or_default()
            )
        });
    }
    proc_.set_env(Some(env));
    if let Some(cwd) = &opts.cwd {
        proc_.set_cwd(cwd.clone());
    }
    if let Some((uid, gid)) = opts.user {
        proc_.user_mut().set_uid(uid);
        if let Some(gid) = gid {
            proc_.user_mut().set_gid(gid);
        }
        proc_.user_mut().set_additional_gids(None);
    }
    proc_.set_terminal(Some(opts.tty));
}

/// runc's `exec --cap`: the capability joins the bounding, effective and permitted sets.
fn add_capabilities(proc_: &mut oci_spec::runtime::Process, names: &[String]) -> Result<()> {
    use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder};
    let mut added = Vec::new();
    for name in names {
        let full = if name.to_ascii_uppercase().starts_with("CAP_") {
            name.to_ascii_uppercase()
        } else {
            format!("CAP_{}", name.to_ascii_uppercase())
        };
        let cap: Capability = serde_json::from_value(serde_json::Value::String(full.clone()))
            .map_err(|_| {
                Error::InvalidConfig(format!(
                    "--cap {name}: unknown capability; use a name like CAP_NET_ADMIN"
                ))
            })?;
        added.push(cap);
    }
    let current = proc_.capabilities().clone().unwrap_or_default();
    let with = |set: &Option<oci_spec::runtime::Capabilities>| {
        let mut set = set.clone().unwrap_or_default();
        set.extend(added.iter().copied());
        set
    };
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(with(current.bounding()))
        .effective(with(current.effective()))
        .permitted(with(current.permitted()))
        .inheritable(current.inheritable().clone().unwrap_or_default())
        .ambient(current.ambient().clone().unwrap_or_default())
        .build()
        .map_err(|e| Error::InvalidConfig(format!("--cap: {e}")))?;
    proc_.set_capabilities(Some(caps));
    Ok(())
}

/// Applies runc's create/run options to a loaded bundle.
fn apply_start_options(cfg: &mut ContainerConfig, opts: &StartOptions) {
    cfg.rootfs.no_pivot = opts.no_pivot;
    cfg.new_session_keyring = !opts.no_new_keyring;
    cfg.process.preserve_fds = opts.preserve_fds;
}

/// Checks runc's rules for `--console-socket` and connects to it before anything
/// is created, so a missing socket leaves nothing behind.
fn console_socket(
    terminal: bool,
    detached: bool,
    socket: &Option<PathBuf>,
) -> Result<Option<std::os::unix::net::UnixStream>> {
    match (terminal, socket) {
        (true, None) if detached => Err(Error::InvalidConfig(
            "process.terminal is true, so a detached container needs --console-socket to receive its terminal; pass one, or set terminal to false".into(),
        )),
        (false, Some(path)) => Err(Error::InvalidConfig(format!(
            "--console-socket {} was given, but process.terminal is false; drop the option or set terminal to true",
            path.display()
        ))),
        (true, Some(path)) => std::os::unix::net::UnixStream::connect(path)
            .map(Some)
            .map_err(|e| {
                Error::io(
                    format!(
                        "connect to the console socket {} (it must be a listening unix socket)",
                        path.display()
                    ),
                    e,
                )
            }),
        _ => Ok(None),
    }
}
