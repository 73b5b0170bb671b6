//! Work that must run as the container's ids, outside any container: unpacking
//! image layers so their owners survive, mounting overlays to apply them. Runs in
//! a child in a new user namespace (root = the user, 1.. = the subordinate range)
//! and a private mount namespace, so nothing it mounts is seen outside.
//!
//! Unlike a container start this may be called from a multi-threaded process (a
//! parallel pull, a test harness): it forks through libc, whose fork handlers keep
//! the allocator usable in the child, then unshares.

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::channel::{self, Channel, ToChild, ToParent};
use crate::error::{Error, FailureKind, Result, SetupFailure};
use crate::{idmap, process};

/// In the child, already root in its user namespace: a private mount namespace,
/// then `work`. Ends in _exit on success.
fn child(work: impl FnOnce() -> std::result::Result<(), String>) -> SetupFailure {
    let fail = |step: &str, detail: String| SetupFailure {
        step: step.into(),
        detail,
        kind: FailureKind::Setup,
    };
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
        return fail("create the mount namespace", e.desc().into());
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        return fail("make mounts private", e.desc().into());
    }
    match work() {
        // SAFETY: _exit skips atexit handlers and buffers that belong to the parent.
        Ok(()) => unsafe { libc::_exit(0) },
        Err(detail) => fail("", detail),
    }
}

/// Maps the user and their subordinate ranges into `pid`'s new user namespace,
/// then tells it.
fn write_user_maps(pid: Pid, channel: &Channel, what: &str) -> Result<()> {
    let (uid, gid, _) = idmap::current_user_mappings();
    let writer = idmap::choose_writer(&uid, &gid);
    idmap::write_maps(pid, writer, &uid, &gid)?;
    channel
        .send(&ToChild::MapsWritten, None)
        .map_err(|e| Error::sys(format!("tell {what} its maps are written"), e))
}

/// Runs `work` in a child process inside a new user and mount namespace (as root:
/// only a new mount namespace, the ids are real already). `work`'s error text
/// becomes the error, under `what`.
pub fn run_in_user_namespace(
    what: &str,
    work: impl FnOnce() -> std::result::Result<(), String>,
) -> Result<()> {
    let (parent, child_end) =
        channel::pair().map_err(|e| Error::sys("create the sync socket", e))?;
    let Some(pid) = fork_in_user_namespace(what)? else {
        drop(parent);
        let f = child(work);
        let _ = child_end.send(&ToParent::Failed(f), None);
        // SAFETY: see `child`.
        unsafe { libc::_exit(125) }
    };
    drop(child_end);
    let outcome = match parent.recv::<ToParent>() {
        Ok(Some((ToParent::Failed(f), _))) => Err(Error::Setup {
            step: what.to_string(),
            detail: if f.step.is_empty() {
                f.detail
            } else {
                format!("{}: {}", f.step, f.detail)
            },
            kind: FailureKind::Setup,
        }),
        Ok(_) => Ok(()),
        Err(e) => Err(Error::sys(format!("read from the helper for {what}"), e)),
    };
    let status = waitpid(pid, None).map_err(|e| Error::sys(format!("wait for {what}"), e))?;
    match (outcome, status) {
        (Err(e), _) => Err(e),
        (Ok(()), WaitStatus::Exited(_, 0)) => Ok(()),
        (Ok(()), status) => Err(Error::Setup {
            step: what.to_string(),
            detail: format!("the helper process ended unexpectedly ({status:?})"),
            kind: FailureKind::Setup,
        }),
    }
}

/// Forks a long-lived child into a new user namespace mapped like the containers'
/// (the user as root, then the subordinate ranges): returns `None` in the child,
/// once it is root there, and the child's pid in the parent. As root there is no
/// user namespace to make and this is a plain fork. The child goes on running the
/// caller's code: from a multi-threaded caller it relies on libc's fork handlers,
/// as described at the top of this module.
pub fn fork_in_user_namespace(what: &str) -> Result<Option<Pid>> {
    let in_userns = !nix::unistd::Uid::effective().is_root();
    let (parent, child_end) =
        channel::pair().map_err(|e| Error::sys("create the sync socket", e))?;
    // SAFETY: the child returns to a single-threaded caller.
    let pid = match unsafe { libc::fork() } {
        -1 => return Err(Error::sys(format!("fork for {what}"), nix::Error::last())),
        0 => {
            drop(parent);
            if !in_userns {
                return Ok(None);
            }
            let entered = (|| {
                unshare(CloneFlags::CLONE_NEWUSER)
                    .map_err(|e| Error::sys("create the user namespace", e))?;
                child_end
                    .send(&ToParent::MapsNeeded, None)
                    .map_err(|e| Error::sys("ask for the id maps", e))?;
                match child_end.recv::<ToChild>() {
                    Ok(Some((ToChild::MapsWritten, _))) => {}
                    _ => return Err(Error::sys("wait for the id maps", nix::Error::EPIPE)),
                }
                process::become_root().map_err(Error::from)
            })();
            return match entered {
                Ok(()) => Ok(None),
                Err(e) => {
                    let _ = child_end.send(
                        &ToParent::Failed(SetupFailure {
                            step: String::new(),
                            detail: e.to_string(),
                            kind: FailureKind::Setup,
                        }),
                        None,
                    );
                    // SAFETY: nothing of the parent's must run in this child.
                    unsafe { libc::_exit(125) }
                }
            };
        }
        pid => Pid::from_raw(pid),
    };
    drop(child_end);
    if !in_userns {
        return Ok(Some(pid));
    }
    let kill = || {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(pid, None);
    };
    match parent.recv::<ToParent>() {
        Ok(Some((ToParent::MapsNeeded, _))) => {
            if let Err(e) = write_user_maps(pid, &parent, what) {
                kill();
                return Err(e);
            }
            Ok(Some(pid))
        }
        Ok(Some((ToParent::Failed(f), _))) => {
            kill();
            Err(Error::Setup {
                step: what.to_string(),
                detail: f.detail,
                kind: FailureKind::Setup,
            })
        }
        _ => {
            kill();
            Err(Error::Setup {
                step: what.to_string(),
                detail: "the child died before asking for its id maps".into(),
                kind: FailureKind::Setup,
            })
        }
    }
}
