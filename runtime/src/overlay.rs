//! The container's rootfs as an overlay of read-only layers plus the container's own
//! upper and work directories. Checked in rcrun's process; mounted by the container's
//! init inside its user and mount namespaces, so an ordinary user may mount it and it
//! vanishes with the container's mount namespace (nothing to unmount on delete).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::unistd::Uid;

use crate::error::{Error, FailureKind, Result, SetupFailure};
use crate::{sys, userns};

/// An overlay rootfs, mounted on the bundle's `root.path`. The runtime knows nothing
/// of images: the caller passes the layers' directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsOverlay {
    /// Read-only layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Where the container's writes land; on the same filesystem as `work`.
    pub upper: PathBuf,
    pub work: PathBuf,
    pub driver: OverlayDriver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayDriver {
    /// The kernel's overlayfs (mountable in a user namespace since Linux 5.11).
    Kernel,
    /// fuse-overlayfs, for kernels that do not let an ordinary user mount overlay.
    Fuse,
}

/// The kernel copies one page of mount options, the NUL included.
const MAX_MOUNT_OPTIONS: usize = 4095;

/// A validated overlay, ready for the init to mount.
#[derive(Debug, Clone)]
pub(crate) struct OverlayPlan {
    /// The lowers' common parent: the init chdirs here and names them relative to it,
    /// so ~60 layers fit in one page of mount options.
    base: PathBuf,
    /// Absolute, top first.
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    /// Decided here, outside: inside the user namespace everyone is root.
    userxattr: bool,
    /// The fuse-overlayfs binary, for the Fuse driver.
    fuse: Option<PathBuf>,
}

fn overlay_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Overlay {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Canonical path of an existing directory whose name overlay options can carry.
fn layer_dir(path: &Path, role: &str) -> Result<PathBuf> {
    let canonical =
        std::fs::canonicalize(path).map_err(|e| overlay_error(path, format!("{role}: {e}")))?;
    if !canonical.is_dir() {
        return Err(overlay_error(path, format!("{role} is not a directory")));
    }
    let Some(text) = canonical.to_str() else {
        return Err(overlay_error(path, format!("{role} path is not UTF-8")));
    };
    if text.contains([',', ':', '\\']) {
        return Err(overlay_error(
            path,
            format!(
                "{role} path contains ',', ':' or '\\', which overlay mount options cannot carry; use a path without them"
            ),
        ));
    }
    Ok(canonical)
}

fn common_parent(paths: &[PathBuf]) -> PathBuf {
    let mut base = paths
        .first()
        .and_then(|p| p.parent())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    for p in paths {
        while !p.starts_with(&base) && base.pop() {}
    }
    base
}

/// An executable named `name` in $PATH.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

fn cstring(text: &str) -> CString {
    // Paths were checked to be UTF-8 without NUL (canonicalize refuses NUL).
    CString::new(text).unwrap_or_default()
}

impl OverlayPlan {
    /// Checks the directories; `in_userns` says whether the mount happens in a user
    /// namespace, where overlay must keep its xattrs under `user.` (`userxattr`).
    pub(crate) fn new(overlay: &RootfsOverlay, in_userns: bool) -> Result<Self> {
        if overlay.lowers.is_empty() {
            return Err(overlay_error(
                &overlay.upper,
                "no lower layers given; an overlay needs at least one",
            ));
        }
        let lowers = overlay
            .lowers
            .iter()
            .map(|p| layer_dir(p, "lower layer"))
            .collect::<Result<Vec<_>>>()?;
        let upper = layer_dir(&overlay.upper, "upper directory")?;
        let work = layer_dir(&overlay.work, "work directory")?;
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        if dev(&upper) != dev(&work) {
            return Err(overlay_error(
                &overlay.work,
                format!(
                    "the work directory must be on the same filesystem as the upper directory {}",
                    upper.display()
                ),
            ));
        }
        let fuse = match overlay.driver {
            OverlayDriver::Kernel => None,
            OverlayDriver::Fuse => Some(find_in_path("fuse-overlayfs").ok_or_else(|| {
                overlay_error(
                    &overlay.upper,
                    "the fuse driver needs fuse-overlayfs, which is not in PATH; install it (apt install fuse-overlayfs) or use the kernel overlay",
                )
            })?),
        };
        Ok(OverlayPlan {
            base: common_parent(&lowers),
            lowers,
            upper,
            work,
            userxattr: in_userns,
            fuse,
        })
    }

    /// `path` relative to `base` when it lies below it.
    fn short<'a>(&self, path: &'a Path) -> &'a str {
        let rel = path.strip_prefix(&self.base).unwrap_or(path);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rel.to_str().unwrap_or_default()
    }

    fn relative_lowers(&self) -> Vec<&str> {
        self.lowers.iter().map(|p| self.short(p)).collect()
    }

    /// The kernel's mount options, paths relative to `base`.
    fn kernel_options(&self) -> String {
        let mut options = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.relative_lowers().join(":"),
            self.short(&self.upper),
            self.short(&self.work)
        );
        if self.userxattr {
            options.push_str(",userxattr");
        }
        options
    }

    /// The mount, for error messages: all layers when few, else the first and last.
    fn describe(&self) -> String {
        let shown = |p: &PathBuf| p.display().to_string();
        let lowers = match self.lowers.as_slice() {
            [first, _, _, _, .., last] => format!(
                "{}:…:{}, {} layers",
                shown(first),
                shown(last),
                self.lowers.len()
            ),
            all => all.iter().map(shown).collect::<Vec<_>>().join(":"),
        };
        format!(
            "lowerdir={lowers}, upperdir={}, workdir={}",
            self.upper.display(),
            self.work.display()
        )
    }

    /// Mounts the overlay on `target`; runs in the container's namespaces.
    pub(crate) fn mount(&self, target: &Path) -> Result<(), SetupFailure> {
        let step = format!("mount the overlay rootfs ({})", self.describe());
        if let Some(fuse) = &self.fuse {
            return self.mount_fuse(fuse, target, step);
        }
        nix::unistd::chdir(&self.base).map_err(|e| SetupFailure {
            step: format!(
                "chdir to the overlay layers' parent {}",
                self.base.display()
            ),
            detail: e.desc().to_string(),
            kind: FailureKind::Setup,
        })?;
        let options = self.kernel_options();
        if options.len() <= MAX_MOUNT_OPTIONS {
            return nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            )
            .map_err(|e| self.failure(step, e, &[]));
        }
        self.mount_layer_by_layer(target, step, options.len())
    }

    /// The new mount API takes one lower per call (`lowerdir+`, Linux 6.8+), for
    /// layer lists longer than a page of options.
    fn mount_layer_by_layer(
        &self,
        target: &Path,
        step: String,
        options_len: usize,
    ) -> Result<(), SetupFailure> {
        let too_long = || SetupFailure {
            step: step.clone(),
            detail: format!(
                "{} layers do not fit in the kernel's mount options ({options_len} bytes, at most {MAX_MOUNT_OPTIONS}) and this kernel cannot take them one by one (`lowerdir+` needs Linux 6.8+); use fewer layers",
                self.lowers.len()
            ),
            kind: FailureKind::Setup,
        };
        let fs = sys::fsopen(c"overlay").map_err(|e| match e {
            Errno::ENOSYS => too_long(),
            e => self.failure(step.clone(), e, &[]),
        })?;
        for lower in self.relative_lowers() {
            sys::fsconfig(
                &fs,
                libc::FSCONFIG_SET_STRING,
                Some(c"lowerdir+"),
                Some(&cstring(lower)),
            )
            .map_err(|e| {
                let log = sys::fs_context_messages(&fs);
                if log.iter().any(|m| m.contains("Unknown parameter")) {
                    too_long()
                } else {
                    self.failure(step.clone(), e, &log)
                }
            })?;
        }
        let set = |key: &std::ffi::CStr, value: &str| {
            sys::fsconfig(
                &fs,
                libc::FSCONFIG_SET_STRING,
                Some(key),
                Some(&cstring(value)),
            )
        };
        set(c"upperdir", self.short(&self.upper))
            .and_then(|()| set(c"workdir", self.short(&self.work)))
            .and_then(|()| match self.userxattr {
                true => sys::fsconfig(&fs, libc::FSCONFIG_SET_FLAG, Some(c"userxattr"), None),
                false => Ok(()),
            })
            .and_then(|()| sys::fsconfig(&fs, libc::FSCONFIG_CMD_CREATE, None, None))
            .and_then(|()| {
                let target = CString::new(target.as_os_str().as_bytes()).unwrap_or_default();
                sys::fsmount_on(&fs, &target)
            })
            .map_err(|e| self.failure(step.clone(), e, &sys::fs_context_messages(&fs)))
    }

    fn mount_fuse(&self, fuse: &Path, target: &Path, step: String) -> Result<(), SetupFailure> {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        );
        // It daemonizes once mounted; its errors go to the container's stderr.
        let status = Command::new(fuse)
            .arg("-o")
            .arg(options)
            .arg(target)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        let detail = match status {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => format!("{} failed ({s}); its message is above", fuse.display()),
            Err(e) => format!("run {}: {e}", fuse.display()),
        };
        Err(SetupFailure {
            step,
            detail,
            kind: FailureKind::Setup,
        })
    }

    /// A mount failure with what the kernel said and, where known, what to do.
    fn failure(&self, step: String, errno: Errno, log: &[String]) -> SetupFailure {
        let mut detail = errno.desc().to_string();
        for message in log {
            // The kernel prefixes each message with its level ("e ", "w ", "i ").
            detail.push_str(&format!("; {}", message.get(2..).unwrap_or(message)));
        }
        let hint = match errno {
            Errno::EPERM if self.userxattr => {
                " (overlay in a user namespace is not supported on this kernel: it needs Linux 5.11+; use the fuse driver)"
            }
            Errno::ENODEV => " (this kernel has no overlay filesystem: modprobe overlay)",
            Errno::EINVAL if log.is_empty() => {
                " (the kernel refused the overlay options; `dmesg` says why)"
            }
            _ => "",
        };
        detail.push_str(hint);
        SetupFailure {
            step,
            detail,
            kind: FailureKind::Setup,
        }
    }
}

/// Which overlay this user can mount for containers whose upper directories live on
/// `dir`'s filesystem: the kernel's (in a user namespace unless root), else
/// fuse-overlayfs when installed. Mounts a two-layer overlay in a scratch directory
/// under `dir`, deletes a lower file through it (a whiteout) and writes one; nothing
/// is cached. Err([`Error::OverlayUnavailable`]) says why neither works, so the
/// caller can fall back to copying and tell the user.
pub fn probe_overlay(dir: &Path) -> Result<OverlayDriver> {
    let scratch = dir.join(format!(".overlay-probe-{}", std::process::id()));
    std::fs::create_dir(&scratch)
        .map_err(|e| Error::io(format!("create {}", scratch.display()), e))?;
    let result = match exercise(&scratch, OverlayDriver::Kernel) {
        Ok(()) => Ok(OverlayDriver::Kernel),
        Err(kernel) if find_in_path("fuse-overlayfs").is_none() => Err(Error::OverlayUnavailable(
            format!("{kernel}; fuse-overlayfs is not installed"),
        )),
        Err(kernel) => match exercise(&scratch, OverlayDriver::Fuse) {
            Ok(()) => Ok(OverlayDriver::Fuse),
            Err(fuse) => Err(Error::OverlayUnavailable(format!("{kernel}; {fuse}"))),
        },
    };
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Mounts and uses a tiny overlay with `driver` inside a user namespace, then
/// removes it there (as the namespace's root, who may enter overlay's mode-0 work dir).
fn exercise(scratch: &Path, driver: OverlayDriver) -> Result<()> {
    let what = match driver {
        OverlayDriver::Kernel => "the kernel overlay",
        OverlayDriver::Fuse => "fuse-overlayfs",
    };
    let in_userns = !Uid::effective().is_root();
    userns::run_in_user_namespace(&format!("mount {what}"), || {
        let dir = |name: &str| -> Result<PathBuf, String> {
            let p = scratch.join(name);
            std::fs::create_dir(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
            Ok(p)
        };
        let (bottom, top, upper, work, merged) =
            (dir("l0")?, dir("l1")?, dir("u")?, dir("w")?, dir("m")?);
        std::fs::write(bottom.join("old"), "").map_err(|e| e.to_string())?;
        let overlay = RootfsOverlay {
            lowers: vec![top, bottom],
            upper: upper.clone(),
            work,
            driver,
        };
        let plan = OverlayPlan::new(&overlay, in_userns).map_err(|e| e.to_string())?;
        plan.mount(&merged)
            .map_err(|f| format!("{}: {}", f.step, f.detail))?;
        let used = std::fs::remove_file(merged.join("old"))
            .and_then(|()| std::fs::write(merged.join("new"), ""))
            .map_err(|e| format!("write through the overlay: {e}"));
        let _ = nix::mount::umount2(&merged, MntFlags::MNT_DETACH);
        used?;
        if !upper.join("new").exists() {
            return Err("a file written through the overlay is not in its upper directory".into());
        }
        for entry in std::fs::read_dir(scratch)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(lowers: &[&str], upper: &str) -> OverlayPlan {
        let lowers: Vec<PathBuf> = lowers.iter().map(PathBuf::from).collect();
        OverlayPlan {
            base: common_parent(&lowers),
            lowers,
            upper: upper.into(),
            work: format!("{upper}-work").into(),
            userxattr: true,
            fuse: None,
        }
    }

    #[test]
    fn lowers_are_named_relative_to_their_common_parent() {
        let p = plan(
            &["/data/snapshots/b/fs", "/data/snapshots/a/fs"],
            "/data/containers/x/upper",
        );
        assert_eq!(p.base, Path::new("/data/snapshots"));
        assert_eq!(
            p.kernel_options(),
            "lowerdir=b/fs:a/fs,upperdir=/data/containers/x/upper,workdir=/data/containers/x/upper-work,userxattr"
        );
        let single = plan(&["/data/snapshots/a/fs"], "/data/snapshots/u");
        assert_eq!(
            single.kernel_options(),
            "lowerdir=fs,upperdir=/data/snapshots/u,workdir=/data/snapshots/u-work,userxattr"
        );
        let root = plan(&["/a", "/b"], "/u");
        assert_eq!(root.base, Path::new("/"));
        assert!(
            root.kernel_options()
                .starts_with("lowerdir=a:b,upperdir=u,")
        );
    }

    #[test]
    fn fifty_five_digest_named_layers_fit_in_one_page() {
        let lowers: Vec<String> = (0..55)
            .map(|i| format!("/home/someone/.local/share/rcrun/snapshots/{i:064x}/fs"))
            .collect();
        let refs: Vec<&str> = lowers.iter().map(String::as_str).collect();
        let p = plan(&refs, "/home/someone/.local/share/rcrun/containers/c/upper");
        assert!(p.kernel_options().len() <= MAX_MOUNT_OPTIONS);
        assert!(
            lowers.join(":").len() > MAX_MOUNT_OPTIONS,
            "absolute would not"
        );
    }

    #[test]
    fn long_lists_are_described_by_their_ends() {
        let p = plan(&["/s/1", "/s/2", "/s/3", "/s/4", "/s/5"], "/u");
        assert_eq!(
            p.describe(),
            "lowerdir=/s/1:…:/s/5, 5 layers, upperdir=/u, workdir=/u-work"
        );
        assert!(
            plan(&["/s/1", "/s/2"], "/u")
                .describe()
                .starts_with("lowerdir=/s/1:/s/2,")
        );
    }

    #[test]
    fn bad_directories_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::create_dir(&ok).unwrap();
        let colon = dir.path().join("a:b");
        std::fs::create_dir(&colon).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let overlay = |lower: &Path| RootfsOverlay {
            lowers: vec![ok.clone(), lower.to_path_buf()],
            upper: ok.clone(),
            work: ok.clone(),
            driver: OverlayDriver::Kernel,
        };
        for (lower, says) in [
            (dir.path().join("missing"), "No such file"),
            (file.clone(), "not a directory"),
            (colon.clone(), "cannot carry"),
        ] {
            let err = OverlayPlan::new(&overlay(&lower), true).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&*lower.to_string_lossy()), "{text}");
            assert!(text.contains(says), "{text}");
            assert_eq!(err.exit_code(), 125);
        }
    }
}
