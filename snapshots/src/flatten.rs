//! The copy fallback for hosts where no overlay can be mounted: an image's layers
//! (overlay-form diffs, top first) merged into one plain directory, applying
//! whiteouts and opaque directories the way overlayfs would. Owners, modes, times,
//! symlinks, fifos, hardlinks (within a layer) and xattrs are kept; call it inside the
//! user namespace so the subordinate owners can be set.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn cstr(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::io(
            path.display().to_string(),
            std::io::ErrorKind::InvalidInput.into(),
        )
    })
}

fn last_error(what: &str, path: &Path) -> Error {
    Error::io(
        format!("{what} {}", path.display()),
        std::io::Error::last_os_error(),
    )
}

/// Names of the xattrs of `path` (not followed) that an image may carry.
fn xattr_names(path: &Path) -> Result<Vec<CString>> {
    let p = cstr(path)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C string and buffer.
    let len = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Ok(Vec::new()); // no xattr support: nothing to carry
    }
    Ok(buf[..len as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        // overlay's own markers describe the layer, not the file
        .filter(|n| !n.starts_with(b"trusted.overlay.") && !n.starts_with(b"user.overlay."))
        .filter_map(|n| CString::new(n).ok())
        .collect())
}

pub(crate) fn get_xattr(path: &Path, name: &CString) -> Option<Vec<u8>> {
    let p = cstr(path).ok()?;
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and buffer.
    let len = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

/// Whether a directory is an overlay opaque directory.
pub(crate) fn is_opaque(dir: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| {
            CString::new(*name)
                .ok()
                .and_then(|n| get_xattr(dir, &n))
                .is_some_and(|v| v == b"y")
        })
}

fn is_whiteout(md: &std::fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn remove_any(path: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    result.map_err(|e| Error::io(format!("remove {}", path.display()), e))
}

/// Owner, mode, xattrs and times of `src` onto `dst` (not followed).
fn copy_metadata(src: &Path, dst: &Path, md: &std::fs::Metadata) -> Result<()> {
    let d = cstr(dst)?;
    // SAFETY: valid C string.
    if unsafe { libc::lchown(d.as_ptr(), md.uid(), md.gid()) } != 0 {
        return Err(last_error("chown", dst));
    }
    for name in xattr_names(src)? {
        if let Some(value) = get_xattr(src, &name) {
            // SAFETY: valid C strings and value.
            unsafe {
                libc::lsetxattr(
                    d.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
        }
    }
    if !md.file_type().is_symlink() {
        // After chown, which clears setuid bits.
        // SAFETY: valid C string.
        if unsafe { libc::chmod(d.as_ptr(), md.mode() & 0o7777) } != 0 {
            return Err(last_error("chmod", dst));
        }
    }
    let times = [
        libc::timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        libc::timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    ];
    // SAFETY: valid C string and two timespecs.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            d.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Ok(())
}

/// Copies one layer's diff onto `dst`; `links` maps a source inode to its first copy.
fn merge_dir(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(src).map_err(|e| Error::io(format!("read {}", src.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("read {}", src.display()), e))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let md = std::fs::symlink_metadata(&from)
            .map_err(|e| Error::io(format!("stat {}", from.display()), e))?;
        if is_whiteout(&md) {
            remove_any(&to)?;
            continue;
        }
        if md.is_dir() {
            let keep = std::fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir());
            if !keep {
                remove_any(&to)?;
                std::fs::create_dir(&to)
                    .map_err(|e| Error::io(format!("create {}", to.display()), e))?;
            } else if is_opaque(&from) {
                for old in std::fs::read_dir(&to)
                    .map_err(|e| Error::io(format!("read {}", to.display()), e))?
                {
                    remove_any(
                        &old.map_err(|e| Error::io(format!("read {}", to.display()), e))?
                            .path(),
                    )?;
                }
            }
            merge_dir(&from, &to, links)?;
            copy_metadata(&from, &to, &md)?;
            continue;
        }
        remove_any(&to)?;
        if md.nlink() > 1
            && let Some(first) = links.get(&(md.dev(), md.ino()))
        {
            std::fs::hard_link(first, &to)
                .map_err(|e| Error::io(format!("link {}", to.display()), e))?;
            continue;
        }
        let ft = md.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&from)
                .map_err(|e| Error::io(format!("readlink {}", from.display()), e))?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| Error::io(format!("symlink {}", to.display()), e))?;
        } else if ft.is_fifo() {
            let t = cstr(&to)?;
            // SAFETY: valid C string.
            if unsafe { libc::mkfifo(t.as_ptr(), 0o600) } != 0 {
                return Err(last_error("mkfifo", &to));
            }
        } else if ft.is_file() {
            std::fs::copy(&from, &to)
                .map_err(|e| Error::io(format!("copy {}", from.display()), e))?;
        } else {
            continue; // devices are never unpacked into snapshots
        }
        copy_metadata(&from, &to, &md)?;
        if md.nlink() > 1 {
            links.insert((md.dev(), md.ino()), to);
        }
    }
    Ok(())
}

/// Merges `lowers` (top first, as overlayfs takes them) into the empty directory `target`.
pub fn flatten(lowers: &[PathBuf], target: &Path) -> Result<()> {
    for lower in lowers.iter().rev() {
        merge_dir(lower, target, &mut HashMap::new())?;
        let md = std::fs::metadata(lower)
            .map_err(|e| Error::io(format!("stat {}", lower.display()), e))?;
        copy_metadata(lower, target, &md)?;
    }
    Ok(())
}

/// What one layer (a diff in overlay form) holds at a path.
enum Seen {
    /// Nothing; the layers below decide.
    Nothing,
    /// Nothing, and the layers below are hidden here: a whiteout, a non-directory on
    /// the way, or nothing under an opaque directory.
    Hidden,
    /// An entry; `last`: the layers below add nothing to it (it is not a directory,
    /// or it or a directory above it is opaque).
    Entry { md: std::fs::Metadata, last: bool },
}

/// Looks at `rel` (no symlinks, no `..`) in one layer, without following any
/// symlink of the layer on the way.
fn seen(lower: &Path, rel: &Path) -> Result<Seen> {
    let stat = |p: &Path| match std::fs::symlink_metadata(p) {
        Ok(md) => Ok(Some(md)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("stat {}", p.display()), e)),
    };
    let mut path = lower.to_path_buf();
    let mut opaque = false;
    let mut names = rel.iter().peekable();
    while let Some(name) = names.next() {
        path.push(name);
        let Some(md) = stat(&path)? else {
            return Ok(if opaque { Seen::Hidden } else { Seen::Nothing });
        };
        if is_whiteout(&md) {
            return Ok(Seen::Hidden);
        }
        if names.peek().is_none() {
            let last = opaque || !md.is_dir() || is_opaque(&path);
            return Ok(Seen::Entry { md, last });
        }
        if !md.is_dir() {
            return Ok(Seen::Hidden);
        }
        opaque |= is_opaque(&path);
    }
    let md = stat(lower)?.ok_or_else(|| {
        Error::io(
            lower.display().to_string(),
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    Ok(Seen::Entry { md, last: false })
}

/// The layer whose entry at `rel` the merged image shows, and that entry.
fn lookup<'a>(lowers: &'a [PathBuf], rel: &Path) -> Result<Option<(&'a Path, std::fs::Metadata)>> {
    for lower in lowers {
        match seen(lower, rel)? {
            Seen::Nothing => {}
            Seen::Hidden => return Ok(None),
            Seen::Entry { md, .. } => return Ok(Some((lower, md))),
        }
    }
    Ok(None)
}

/// Resolves `path` in the merged image as a container's mount would: each symlink
/// followed inside the image (an absolute target from the image's root), `..`
/// stopping at the root. The image path of a directory there, or `None` when the
/// image has none (nothing, or not a directory).
fn resolve_dir(lowers: &[PathBuf], path: &Path) -> Result<Option<PathBuf>> {
    use std::path::Component;
    // Components still to walk, the next one last.
    let pending = |p: &Path| -> Vec<Option<std::ffi::OsString>> {
        p.components()
            .rev()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(Some(name.to_os_string())),
                Component::ParentDir => Some(None),
                _ => None,
            })
            .collect()
    };
    let mut todo = pending(path);
    let mut done = PathBuf::new();
    let mut links = 0;
    while let Some(step) = todo.pop() {
        let Some(name) = step else {
            done.pop();
            continue;
        };
        let candidate = done.join(name);
        let Some((lower, md)) = lookup(lowers, &candidate)? else {
            return Ok(None);
        };
        if md.is_dir() {
            done = candidate;
            continue;
        }
        if !md.file_type().is_symlink() {
            return Ok(None);
        }
        links += 1;
        if links > 40 {
            return Err(Error::io(
                format!("resolve {} in the image", path.display()),
                std::io::Error::from_raw_os_error(libc::ELOOP),
            ));
        }
        let link = lower.join(&candidate);
        let target = std::fs::read_link(&link)
            .map_err(|e| Error::io(format!("readlink {}", link.display()), e))?;
        if target.is_absolute() {
            done = PathBuf::new();
        }
        todo.extend(pending(&target));
    }
    Ok(Some(done))
}

/// Copies what the image of `lowers` (top first) has at `path` into the empty
/// directory `target`, as [`flatten`] copies a whole image, `target` taking the
/// owner and mode of that directory: a new volume's copy-up. `path` is resolved
/// inside the image and nothing outside it is read. False (nothing copied) when
/// the image has no directory there.
pub fn flatten_subtree(lowers: &[PathBuf], path: &Path, target: &Path) -> Result<bool> {
    let Some(rel) = resolve_dir(lowers, path)? else {
        return Ok(false);
    };
    let mut sources = Vec::new();
    for lower in lowers {
        match seen(lower, &rel)? {
            Seen::Nothing => {}
            Seen::Hidden => break,
            Seen::Entry { md, last } => {
                if !md.is_dir() {
                    break;
                }
                sources.push(lower.join(&rel));
                if last {
                    break;
                }
            }
        }
    }
    flatten(&sources, target)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A whiteout as overlayfs makes it; false where mknod is not allowed.
    fn whiteout(path: &Path) -> bool {
        let p = cstr(path).unwrap();
        // SAFETY: valid C string.
        unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, 0) == 0 }
    }

    fn set_opaque(dir: &Path) {
        let p = cstr(dir).unwrap();
        let name = CString::new("user.overlay.opaque").unwrap();
        // SAFETY: valid C strings and value.
        let rc = unsafe { libc::lsetxattr(p.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(
            rc,
            0,
            "set {}: {}",
            name.to_string_lossy(),
            std::io::Error::last_os_error()
        );
    }

    #[test]
    fn a_subtree_is_the_merged_directory_resolved_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
        let outside = dir.path().join("outside");
        write(&outside.join("secret"), "host");
        write(&bottom.join("var/lib/db/a"), "a");
        write(&bottom.join("var/lib/db/sub/b"), "b");
        write(&bottom.join("var/lib/other/x"), "x");
        write(&bottom.join("etc/file"), "f");
        std::os::unix::fs::symlink("/var/lib/db", bottom.join("data")).unwrap();
        std::os::unix::fs::symlink("../../../../../var/lib/db", bottom.join("etc/up")).unwrap();
        std::os::unix::fs::symlink(&outside, bottom.join("escape")).unwrap();
        write(&top.join("var/lib/db/c"), "c");
        std::fs::set_permissions(
            top.join("var/lib/db"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let removed = whiteout(&top.join("var/lib/db/a"));
        write(&top.join("var/lib/other/y"), "y");
        set_opaque(&top.join("var/lib/other"));
        let lowers = vec![top, bottom];

        let copy = |path: &str| {
            let target = tempfile::tempdir_in(dir.path()).unwrap();
            let copied = flatten_subtree(&lowers, Path::new(path), target.path()).unwrap();
            (copied, target)
        };
        let mut want = vec!["c", "sub"];
        if !removed {
            want.insert(0, "a"); // no whiteouts without CAP_MKNOD
        }
        for path in ["/var/lib/db", "/data", "/etc/up", "/var/../var/lib/./db/"] {
            let (copied, target) = copy(path);
            assert!(copied, "{path}");
            assert_eq!(names(target.path()), want, "{path}");
            assert_eq!(
                std::fs::read_to_string(target.path().join("sub/b")).unwrap(),
                "b"
            );
            let mode = std::fs::metadata(target.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o750, "{path}: the top layer's mode");
        }
        let (copied, target) = copy("/var/lib/other");
        assert!(copied);
        assert_eq!(
            names(target.path()),
            ["y"],
            "an opaque directory hides the layers below"
        );
        for path in ["/escape", "/etc/file", "/nothing/here", "/data/a/deeper"] {
            let (copied, target) = copy(path);
            assert!(!copied, "{path}");
            assert!(names(target.path()).is_empty(), "{path}");
        }
    }
}
