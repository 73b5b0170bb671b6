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
