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
use crate::monitor::{self, BlockedSignals};
use crate::overlay::RootfsOverlay;
use crate::process::{self, ProcessPlan};
use crate::spawn::{self, Spawned, kill_and_reap};
use crate::state::{self, FIFO, Record, State, Status};
use crate::{mounts, sys, tty};

/// Where a runtime keeps its containers' state.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    /// `linux.cgroupsPath` is systemd's slice:prefix:name (see cgroup.rs).
    systemd_cgroup: bool,
}

#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    pub pid_file: Option<PathBuf>,
    /// Mount this overlay on the bundle's root.path, inside the container.
    pub overlay: Option<RootfsOverlay>,
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
}

/// How a created container's process learns that it may exec.
enum Gate {
    /// `create`: it blocks opening the fifo until `start` opens the other end.
    Fifo(OwnedFd),
    /// `run`: rcrun sends `Start` once the state is written.
    Message,
}

/// Removes a half-made container directory and its cgroup unless disarmed.
struct Rollback(Option<PathBuf>, Option<Cgroup>);

impl Rollback {
    fn disarm(mut self) {
        self.0 = None;
        self.1 = None;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if let Some(cgroup) = self.1.take() {
            cgroup.remove();
        }
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
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

/// Waits for the setup process to report Ready; returns the pty master if any.
fn await_ready(spawned: &Spawned) -> Result<Option<OwnedFd>> {
    let outcome = match spawned.channel.recv::<ToParent>() {
        Ok(Some((ToParent::Ready, pty))) => return Ok(pty),
        Ok(Some((ToParent::Failed(f), _))) => Err(f.into()),
        Ok(Some((other, _))) => Err(Error::InvalidConfig(format!(
            "unexpected message {other:?} from the container's setup"
        ))),
        Ok(None) => Err(Error::InvalidConfig(
            "the container's setup process exited without a word".into(),
        )),
        Err(e) => Err(Error::sys("read from the container's setup process", e)),
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

/// Sends Ready (with the pty master, which this process then closes) and returns
/// the program to exec.
fn report_ready(
    channel: &Channel,
    prepared: Result<(CString, Option<OwnedFd>), SetupFailure>,
) -> Result<CString, SetupFailure> {
    let (exe, pty) = prepared?;
    channel
        .send(&ToParent::Ready, pty.as_ref().map(|p| p.as_raw_fd()))
        .map_err(|e| setup_failure("report ready", e))?;
    Ok(exe)
}

/// The container's init: namespaces are set; build the rootfs, prepare the
/// process, report Ready, wait for the gate, exec.
fn init_body(cfg: &ContainerConfig, gate: &Gate, mask: &SigSet, channel: &Channel) -> SetupFailure {
    let prepared = (|| -> Result<(CString, Option<OwnedFd>), SetupFailure> {
        sys::set_dumpable(false)
            .map_err(|e| setup_failure("make the setup process non-dumpable", e))?;
        nix::unistd::setsid().map_err(|e| setup_failure("setsid", e))?;
        if let Some(h) = &cfg.hostname {
            mounts::set_hostname(h)?;
        }
        mounts::setup_rootfs(&cfg.rootfs)?;
        let pty = if cfg.process.terminal {
            let size = cfg
                .spec
                .process()
                .as_ref()
                .and_then(|p| p.console_size())
                .map(|b| (b.height() as u16, b.width() as u16));
            Some(tty::open_console(size)?)
        } else {
            None
        };
        let exe = process::prepare(&cfg.process)?;
        Ok((exe, pty))
    })();
    let exe = match report_ready(channel, prepared) {
        Ok(exe) => exe,
        Err(f) => return f,
    };
    // Held open until the exec closes it (close-on-exec): `start` returns on that EOF,
    // once the process is the user's program, which `exec` can then join.
    let _fifo_until_exec = match gate {
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
    process::exec(&cfg.process, &exe, mask)
}

/// A process exec'd into a running container: namespaces are joined.
fn exec_body(plan: &ProcessPlan, mask: &SigSet, channel: &Channel) -> SetupFailure {
    let prepared = (|| -> Result<(CString, Option<OwnedFd>), SetupFailure> {
        nix::unistd::setsid().map_err(|e| setup_failure("setsid", e))?;
        let pty = if plan.terminal {
            Some(tty::open_console(None)?)
        } else {
            None
        };
        Ok((process::prepare(plan)?, pty))
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
        if Uid::effective().is_root() {
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
        Ok((dir.clone(), Rollback(Some(dir), None)))
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
        let placed = cgroup::prepare(&cfg.spec, id, self.systemd_cgroup)?;
        rollback.1 = placed.as_ref().map(|p| p.cgroup.clone());
        let gate = gate(&dir)?;
        let mask = signals.original;
        let spawned = spawn::spawn(
            &cfg.namespaces,
            cfg.maps.as_ref(),
            cfg.process.oom_score_adj,
            placed.as_ref().map(|p| &p.fd),
            |ch| init_body(cfg, &gate, &mask, ch),
        )?;
        let pty = await_ready(&spawned)?;
        let saved = Self::record(cfg, id, spawned.pid, placed.as_ref().map(|p| &p.cgroup))
            .save(&dir)
            .and_then(|()| write_pid_file(pid_file, spawned.pid));
        if let Err(e) = saved {
            kill_and_reap(spawned.pid);
            return Err(e);
        }
        Ok((spawned, pty, rollback))
    }

    /// Sets the container up and leaves its process waiting for `start`.
    pub fn create(&self, id: &str, bundle: &Path, opts: &CreateOptions) -> Result<()> {
        let cfg = load_and_warn(bundle, opts.overlay.as_ref())?;
        if cfg.process.terminal {
            return Err(Error::InvalidConfig(
                "process.terminal is true, which needs a console socket for create; use `run` in the foreground or set terminal to false".into(),
            ));
        }
        let (_, _, rollback) = self.launch(
            id,
            &cfg,
            exec_fifo,
            &BlockedSignals::current(),
            opts.pid_file.as_deref(),
        )?;
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
        let fifo_path = dir.join(FIFO);
        let fifo = nix::fcntl::open(
            &fifo_path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::sys(format!("open {}", fifo_path.display()), e))?;
        // Opening the read end released the process; from here on it is running.
        let _ = std::fs::remove_file(&fifo_path);
        let pidfd = sys::pidfd_open(Pid::from_raw(rec.pid))
            .map_err(|e| Error::sys(format!("open the process of container {id}"), e))?;
        let mut released = false;
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
            if fifo_ready {
                let mut byte = [0u8; 1];
                match nix::unistd::read(&fifo, &mut byte) {
                    // Past the gate; EOF follows once it has exec'd.
                    Ok(1) => released = true,
                    Ok(0) if released => return Ok(()),
                    _ => {}
                }
            }
            if exited && released {
                return Ok(());
            }
            if exited {
                return Err(Error::WrongState {
                    id: id.to_string(),
                    status: "stopped",
                    hint: "its process exited before it was started",
                });
            }
        }
    }

    /// Creates and starts a container. In the foreground rcrun is its monitor and
    /// returns its exit code (128+N if killed by signal N), then deletes it.
    pub fn run(&self, id: &str, bundle: &Path, opts: &RunOptions) -> Result<i32> {
        let mut cfg = load_and_warn(bundle, opts.overlay.as_ref())?;
        cfg.process.die_with_parent = opts.die_with_parent;
        if cfg.process.terminal && opts.detach {
            return Err(Error::InvalidConfig(
                "process.terminal is true, which needs a console socket with --detach; run in the foreground or set terminal to false".into(),
            ));
        }
        let signals = if opts.detach {
            BlockedSignals::current()
        } else {
            BlockedSignals::block()?
        };
        let (spawned, pty, rollback) = self.launch(
            id,
            &cfg,
            |_| Ok(Gate::Message),
            &signals,
            opts.pid_file.as_deref(),
        )?;
        let started = spawned
            .channel
            .send(&ToChild::Start, None)
            .map_err(|e| Error::sys("start the container", e))
            .and_then(|()| await_exec(&spawned));
        if let Err(e) = started {
            kill_and_reap(spawned.pid);
            return Err(e);
        }
        if opts.detach {
            rollback.disarm();
            return Ok(0);
        }
        // The container is running: the rollback now deletes it once it exits.
        monitor::wait(spawned.pid, pty, &signals)
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
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let (dir, _lock) = self.lock(id)?;
        let rec = match Record::load(&dir, id) {
            Ok(r) => Some(r),
            // Left behind by a create that crashed before writing its state.
            Err(Error::NotFound(_)) => None,
            Err(e) if force => {
                eprintln!("warning: {e}");
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(rec) = rec {
            let status = rec.status(&dir);
            if matches!(status, Status::Running | Status::Paused) && !force {
                return Err(Error::WrongState {
                    id: id.to_string(),
                    status: status.as_str(),
                    hint: "stop it first (`kill`) or use `delete --force`",
                });
            }
            if rec.alive() {
                kill_and_wait(&rec)?;
            }
            if let Some(dir) = &rec.cgroup {
                Cgroup { dir: dir.clone() }.remove();
            }
        }
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("remove {}", dir.display()), e))
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
        if opts.args.is_empty() {
            return Err(Error::InvalidConfig("exec needs a command to run".into()));
        }
        if opts.tty && opts.detach {
            return Err(Error::InvalidConfig(
                "--tty with --detach needs a console socket; drop one of them".into(),
            ));
        }
        let plan = exec_plan(&rec, opts)?;
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
        let pty = await_ready(&spawned)?;
        await_exec(&spawned)?;
        write_pid_file(opts.pid_file.as_deref(), spawned.pid)?;
        if opts.detach {
            return Ok(0);
        }
        monitor::wait(spawned.pid, pty, &signals)
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
        eprintln!("rcrun: warning: {w}");
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
    let mut proc_ = spec
        .process()
        .clone()
        .ok_or_else(|| Error::InvalidConfig("the container has no process section".into()))?;
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
    spec.set_process(Some(proc_));
    config::process_plan(&spec)
}
