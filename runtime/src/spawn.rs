//! Starting a process in the container's namespaces.
//!
//! Fast path (nothing to join): one clone3 with every new namespace; the child is
//! the container's pid 1 and waits only for its id maps.
//! Join path (a namespace given by path, or `exec`): an intermediate process joins
//! them (user first), unshares the new ones, and clones the final process with
//! CLONE_PARENT so it is rcrun's own child; the intermediate exits at once.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::channel::{self, Channel, ToChild, ToParent};
use crate::config::{IdMaps, NamespacePlan};
use crate::error::{Error, FailureKind, Result, SetupFailure};
use crate::{cgroup, idmap, process, sys};

/// The started process and the parent's end of its channel.
pub(crate) struct Spawned {
    pub pid: Pid,
    pub channel: Channel,
}

fn failure(step: impl Into<String>, errno: Errno) -> SetupFailure {
    SetupFailure {
        step: step.into(),
        detail: errno.desc().to_string(),
        kind: FailureKind::Setup,
    }
}

/// Runs `body` in a child and never returns: a failure is sent to the parent and
/// becomes the exit code (127, 126, or 125 for setup errors).
fn run_child(channel: &Channel, body: impl FnOnce() -> SetupFailure) -> ! {
    let f = body();
    let code = match f.kind {
        FailureKind::NotFound => 127,
        FailureKind::NotExecutable => 126,
        FailureKind::Setup => 125,
    };
    let _ = channel.send(&ToParent::Failed(f), None);
    // SAFETY: _exit skips atexit handlers and stdio buffers that belong to rcrun.
    unsafe { libc::_exit(code) }
}

fn wait_for_maps(channel: &Channel) -> Result<(), SetupFailure> {
    match channel.recv::<ToChild>() {
        Ok(Some((ToChild::MapsWritten, _))) => process::become_root(),
        Ok(_) => Err(SetupFailure {
            step: "wait for the user namespace maps".into(),
            detail: "rcrun went away".into(),
            kind: FailureKind::Setup,
        }),
        Err(e) => Err(failure("wait for the user namespace maps", e)),
    }
}

pub(crate) fn kill_and_reap(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = waitpid(pid, None);
}

fn write_maps(pid: Pid, maps: &IdMaps, channel: &Channel) -> Result<()> {
    idmap::write_maps(pid, maps.writer, &maps.uid, &maps.gid)?;
    channel
        .send(&ToChild::MapsWritten, None)
        .map_err(|e| Error::sys("tell the container its id maps are written", e))
}

/// clone3 straight into `cgroup`. On a kernel without CLONE_INTO_CGROUP a plain
/// clone3, and `true`: the child must move itself there before anything else.
fn clone_into(flags: u64, cgroup: Option<&OwnedFd>) -> nix::Result<(Option<Pid>, bool)> {
    match sys::clone3_into(flags, cgroup) {
        Err(Errno::E2BIG | Errno::EINVAL) if cgroup.is_some() => {
            sys::clone3(flags).map(|pid| (pid, true))
        }
        other => other.map(|pid| (pid, false)),
    }
}

/// The child's first steps: the cgroup move clone3 could not do (see
/// [`clone_into`]), then its oom_score_adj.
fn child_start(
    cgroup: Option<&OwnedFd>,
    must_join: bool,
    oom_score_adj: Option<i32>,
) -> Result<(), SetupFailure> {
    if let Some(fd) = cgroup.filter(|_| must_join) {
        cgroup::join_self(fd).map_err(|e| failure("join the container's cgroup", e))?;
    }
    oom_score_adj.map_or(Ok(()), process::set_oom_score_adj)
}

/// Starts `body` in the planned namespaces, in `cgroup` (an open cgroup directory)
/// from its first instruction. `body` runs in the final process and returns only
/// on failure (success ends in exec).
pub(crate) fn spawn(
    ns: &NamespacePlan,
    maps: Option<&IdMaps>,
    oom_score_adj: Option<i32>,
    cgroup: Option<&OwnedFd>,
    body: impl FnOnce(&Channel) -> SetupFailure,
) -> Result<Spawned> {
    sys::ensure_single_threaded().map_err(Error::InvalidConfig)?;
    let (parent, child) = channel::pair().map_err(|e| Error::sys("create the sync socket", e))?;
    let join: Vec<(OwnedFd, u64)> = ns
        .join
        .iter()
        .map(|(path, flag)| {
            nix::fcntl::open(
                path,
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map(|fd| (fd, *flag))
            .map_err(|e| Error::sys(format!("open namespace {}", path.display()), e))
        })
        .collect::<Result<_>>()?;
    let new_user = ns.creates(libc::CLONE_NEWUSER);

    // Time offsets must be written before the init enters its time namespace:
    // only the intermediate path has a process to write them from.
    if join.is_empty() && ns.time_offsets.is_none() {
        // A cgroup namespace made by the same clone3 would be rooted at rcrun's own
        // cgroup: the child unshares it once it is in the container's.
        let late_cgroup_ns = cgroup.is_some() && ns.creates(libc::CLONE_NEWCGROUP);
        let flags = if late_cgroup_ns {
            ns.create & !(libc::CLONE_NEWCGROUP as u64)
        } else {
            ns.create
        };
        let pid =
            match clone_into(flags, cgroup).map_err(|e| clone_error(e, flags, cgroup.is_some()))? {
                (None, must_join) => {
                    drop(parent);
                    run_child(&child, || {
                        if let Err(f) = child_start(cgroup, must_join, oom_score_adj) {
                            return f;
                        }
                        if new_user && let Err(f) = wait_for_maps(&child) {
                            return f;
                        }
                        if late_cgroup_ns
                            && let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                        {
                            return failure("create the cgroup namespace", e);
                        }
                        body(&child)
                    })
                }
                (Some(pid), _) => pid,
            };
        drop(child);
        if let Some(maps) = maps.filter(|_| new_user)
            && let Err(e) = write_maps(pid, maps, &parent)
        {
            kill_and_reap(pid);
            return Err(e);
        }
        return Ok(Spawned {
            pid,
            channel: parent,
        });
    }

    // The intermediate starts in the cgroup, so its child (the container's process)
    // is born there, whatever namespaces it joins in between.
    let middle = match clone_into(0, cgroup).map_err(|e| clone_error(e, 0, cgroup.is_some()))? {
        (None, must_join) => {
            drop(parent);
            run_child(&child, || {
                if let Err(f) = child_start(cgroup, must_join, oom_score_adj) {
                    return f;
                }
                intermediate(ns, &join, &child, body)
            })
        }
        (Some(pid), _) => pid,
    };
    drop(child);
    drop(join);
    let result = (|| loop {
        match parent.recv::<ToParent>() {
            Ok(Some((ToParent::MapsNeeded, _))) => match maps {
                Some(maps) => write_maps(middle, maps, &parent)?,
                None => {
                    return Err(Error::InvalidConfig(
                        "a new user namespace needs id mappings".into(),
                    ));
                }
            },
            Ok(Some((ToParent::InitPid(pid), _))) => return Ok(Pid::from_raw(pid)),
            Ok(Some((ToParent::Failed(f), _))) => return Err(f.into()),
            Ok(Some((other, _))) => {
                return Err(Error::InvalidConfig(format!(
                    "unexpected message {other:?} from the setup process"
                )));
            }
            Ok(None) => {
                return Err(Error::InvalidConfig(
                    "the setup process exited before starting the container".into(),
                ));
            }
            Err(e) => return Err(Error::sys("read from the setup process", e)),
        }
    })();
    match result {
        Ok(pid) => {
            let _ = waitpid(middle, None);
            Ok(Spawned {
                pid,
                channel: parent,
            })
        }
        Err(e) => {
            kill_and_reap(middle);
            Err(e)
        }
    }
}

fn clone_error(e: Errno, flags: u64, into_cgroup: bool) -> Error {
    // What CLONE_INTO_CGROUP alone fails with: the target is not a leaf we may join.
    if into_cgroup
        && matches!(
            e,
            Errno::EBUSY | Errno::EACCES | Errno::ENOENT | Errno::EOPNOTSUPP
        )
    {
        return Error::sys(
            "start the container's process in its cgroup (is the cgroup writable for you, and a leaf without enabled controllers?)",
            e,
        );
    }
    let hint = if flags == 0 {
        ""
    } else if e == Errno::EPERM || e == Errno::ENOSPC || e == Errno::EUSERS {
        if flags & libc::CLONE_NEWUSER as u64 != 0 {
            " (are unprivileged user namespaces enabled? see sysctl kernel.unprivileged_userns_clone and user.max_user_namespaces)"
        } else {
            " (creating namespaces without a user namespace needs root)"
        }
    } else {
        ""
    };
    let what = if flags == 0 {
        "fork"
    } else {
        "create the container's namespaces"
    };
    Error::sys(format!("{what}{hint}"), e)
}

fn intermediate(
    ns: &NamespacePlan,
    join: &[(OwnedFd, u64)],
    channel: &Channel,
    body: impl FnOnce(&Channel) -> SetupFailure,
) -> SetupFailure {
    // Nothing in the container may open this process's /proc entries (or its exe).
    if let Err(e) = sys::set_dumpable(false) {
        return failure("make the setup process non-dumpable", e);
    }
    for (fd, flag) in join {
        if let Err(e) = nix::sched::setns(fd.as_fd(), CloneFlags::from_bits_retain(*flag as i32)) {
            return failure(format!("join the {} namespace", ns_name(*flag)), e);
        }
        if *flag == libc::CLONE_NEWUSER as u64
            && let Err(f) = process::become_root()
        {
            return f;
        }
    }
    if ns.creates(libc::CLONE_NEWUSER) {
        if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
            return failure("create a user namespace", e);
        }
        if let Err(e) = channel.send(&ToParent::MapsNeeded, None) {
            return failure("ask for the user namespace maps", e);
        }
        if let Err(f) = wait_for_maps(channel) {
            return f;
        }
    }
    let rest = ns.create & !(libc::CLONE_NEWUSER as u64);
    if rest != 0
        && let Err(e) = nix::sched::unshare(CloneFlags::from_bits_retain(rest as i32))
    {
        return failure("create the container's namespaces", e);
    }
    if let Some(offsets) = &ns.time_offsets
        && let Err(f) = write_time_offsets(offsets)
    {
        return f;
    }
    // The container's process shares the channel with this one: it must not report
    // (Ready, Failed) before InitPid is sent, or rcrun would read them out of order. It
    // waits for EOF on this pipe, which comes when this process exits after InitPid.
    let (gate_read, gate_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => return failure("make the setup gate", e),
    };
    match sys::clone3(libc::CLONE_PARENT as u64) {
        Err(e) => failure("fork the container's process", e),
        Ok(None) => {
            drop(gate_write);
            let mut byte = [0u8; 1];
            while let Err(Errno::EINTR) = nix::unistd::read(&gate_read, &mut byte) {}
            drop(gate_read);
            run_child(channel, || body(channel))
        }
        Ok(Some(pid)) => {
            if let Err(e) = channel.send(&ToParent::InitPid(pid.as_raw()), None) {
                return failure("report the container's pid", e);
            }
            // SAFETY: see run_child.
            unsafe { libc::_exit(0) }
        }
    }
}

/// Writes the offsets of the time namespace this process's children will enter.
/// Non-dumpable, our /proc files belong to the host's root: an ordinary user opens
/// this one during a short dumpable window, before any container process exists.
fn write_time_offsets(offsets: &str) -> Result<(), SetupFailure> {
    let step = "write linux.timeOffsets to /proc/self/timens_offsets";
    let path = "/proc/self/timens_offsets";
    let mut written = std::fs::write(path, offsets);
    if written
        .as_ref()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    {
        sys::set_dumpable(true).map_err(|e| failure(step, e))?;
        written = std::fs::write(path, offsets);
        sys::set_dumpable(false).map_err(|e| failure(step, e))?;
    }
    written.map_err(|e| SetupFailure {
        step: step.into(),
        detail: e.to_string(),
        kind: FailureKind::Setup,
    })
}

pub(crate) fn ns_name(flag: u64) -> &'static str {
    match flag as i32 {
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWNET => "network",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWTIME => "time",
        _ => "unknown",
    }
}
