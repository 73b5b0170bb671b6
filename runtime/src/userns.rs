//! Work that must run as the container's ids, outside any container: unpacking
//! image layers so their owners survive, mounting overlays to apply them. Runs in
//! a child in a new user namespace (root = the user, 1.. = the subordinate range)
//! and a private mount namespace, so nothing it mounts is seen outside.

use nix::mount::{MsFlags, mount};
use nix::sys::wait::{WaitStatus, waitpid};

use crate::channel::ToParent;
use crate::config::{IdMaps, NamespacePlan};
use crate::error::{Error, FailureKind, Result, SetupFailure};
use crate::{idmap, spawn};

/// Runs `work` in a child process inside a new user and mount namespace (as root:
/// only a new mount namespace, ids are real already). `work`'s error text becomes
/// the error. The caller must be single-threaded.
pub fn run_in_user_namespace(
    what: &str,
    work: impl FnOnce() -> std::result::Result<(), String>,
) -> Result<()> {
    let root = nix::unistd::Uid::effective().is_root();
    let (uid, gid, _) = idmap::current_user_mappings();
    let user = if root { 0 } else { libc::CLONE_NEWUSER as u64 };
    let ns = NamespacePlan {
        create: libc::CLONE_NEWNS as u64 | user,
        ..Default::default()
    };
    let maps = (!root).then(|| IdMaps {
        writer: idmap::choose_writer(&uid, &gid),
        uid,
        gid,
    });
    let spawned = spawn::spawn(&ns, maps.as_ref(), None, |_| {
        if let Err(e) = mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ) {
            return SetupFailure {
                step: "make mounts private".into(),
                detail: e.desc().into(),
                kind: FailureKind::Setup,
            };
        }
        match work() {
            // SAFETY: _exit skips atexit handlers and buffers that belong to the parent.
            Ok(()) => unsafe { libc::_exit(0) },
            Err(detail) => SetupFailure {
                step: what.to_string(),
                detail,
                kind: FailureKind::Setup,
            },
        }
    })?;
    let reported = spawned.channel.recv::<ToParent>();
    let status =
        waitpid(spawned.pid, None).map_err(|e| Error::sys(format!("wait for {what}"), e))?;
    match (reported, status) {
        (Ok(Some((ToParent::Failed(f), _))), _) => Err(f.into()),
        (_, WaitStatus::Exited(_, 0)) => Ok(()),
        (_, status) => Err(Error::Setup {
            step: what.to_string(),
            detail: format!("the helper process ended unexpectedly ({status:?})"),
            kind: FailureKind::Setup,
        }),
    }
}
