//! Applying a layer (a tar diff) onto a directory tree: the first layer onto an
//! empty directory, later ones onto a mount of the layers below. Whiteouts and
//! opaque directories become deletions (on an overlay mount the kernel records them
//! as whiteouts in the upper directory).
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)`: symlinks that lower
//! layers put in the tree are followed (Debian's `lib -> usr/lib`) but can never
//! lead outside the root. The last component of an entry is never followed.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;

use crate::error::{Error, Result};
use crate::layer::{self, EntryKind};

/// What could not be kept exactly, in words for the user (once per kind).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub entries: u64,
    pub warnings: Vec<String>,
}

impl ApplyReport {
    fn warn(&mut self, text: String) {
        if !self.warnings.contains(&text) {
            self.warnings.push(text);
        }
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// openat2 with RESOLVE_IN_ROOT; `path` is relative to the root.
pub(crate) fn open_in_root(root: &OwnedFd, path: &Path, flags: i32) -> nix::Result<OwnedFd> {
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    let name = cpath(if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    });
    loop {
        // SAFETY: `how` and `name` outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                name.as_ptr(),
                &mut how as *mut libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match Errno::result(fd) {
            Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
            // SAFETY: a new fd from the kernel.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        }
    }
}

struct Applier<'a> {
    layer: &'a str,
    root: OwnedFd,
    report: ApplyReport,
    /// Paths this layer wrote: its own whiteouts and opaque markers leave them alone.
    written: HashSet<PathBuf>,
    /// Directory times are set last: writing their children changes them.
    dir_times: Vec<(PathBuf, i64)>,
}

/// The target of a symlink or hardlink entry.
fn link_target(layer: &str, entry: &tar::Entry<'_, impl Read>, path: &Path) -> Result<PathBuf> {
    let target = entry.link_name().map_err(|e| {
        Error::io(
            format!("layer {layer}: read the target of {}", path.display()),
            e,
        )
    })?;
    Ok(target.map(|t| t.into_owned()).unwrap_or_default())
}

/// A path relative to the root with `.` and `..` folded; `..` stops at the root.
fn clean_relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn io_err(layer: &str, path: &Path, what: &str, e: Errno) -> Error {
    Error::io(
        format!("layer {layer}: {what} {}", path.display()),
        std::io::Error::from_raw_os_error(e as i32),
    )
}

/// Removes `name` in `dir`, recursively, never following a symlink.
fn remove_all_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<()> {
    match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(e) => return Err(e),
    }
    let sub = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    clear_dir(&sub, &HashSet::new(), Path::new(""))?;
    match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes every child of `dir` except those whose path (`base`/name) is in `keep`.
fn clear_dir(dir: &OwnedFd, keep: &HashSet<PathBuf>, base: &Path) -> nix::Result<()> {
    let dup = nix::unistd::dup(dir)?;
    let mut listing = nix::dir::Dir::from_fd(dup)?;
    let names: Vec<Vec<u8>> = listing
        .iter()
        .flatten()
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n.as_slice() != b"." && n.as_slice() != b"..")
        .collect();
    for name in names {
        let name = OsStr::from_bytes(&name);
        if keep.contains(&base.join(name)) {
            continue;
        }
        remove_all_at(dir, name)?;
    }
    Ok(())
}

impl Applier<'_> {
    /// The parent directory of `path`, created (0755) where missing.
    fn parent(&mut self, path: &Path) -> Result<OwnedFd> {
        self.ensure_dir(path.parent().unwrap_or(Path::new("")))
    }

    /// Opens directory `dir_path`, creating what is missing. A dangling symlink on
    /// the way is followed (its target created, inside the root); a non-directory
    /// in the way is replaced, as a later layer's directory would replace it.
    fn ensure_dir(&mut self, dir_path: &Path) -> Result<OwnedFd> {
        let mut target = dir_path.to_path_buf();
        let mut symlinks = 0;
        'restart: loop {
            match open_in_root(&self.root, &target, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(fd) => return Ok(fd),
                Err(Errno::ENOENT | Errno::ENOTDIR) => {}
                Err(e) => return Err(io_err(self.layer, &target, "open directory", e)),
            }
            let parts: Vec<_> = target.components().collect();
            let mut current = PathBuf::new();
            for (i, part) in parts.iter().enumerate() {
                let next = current.join(part);
                if open_in_root(&self.root, &next, libc::O_PATH | libc::O_DIRECTORY).is_err() {
                    let dir = open_in_root(&self.root, &current, libc::O_PATH | libc::O_DIRECTORY)
                        .map_err(|e| io_err(self.layer, &current, "open directory", e))?;
                    let name = part.as_os_str();
                    if let Ok(link) = nix::fcntl::readlinkat(&dir, name) {
                        symlinks += 1;
                        if symlinks > 40 {
                            return Err(io_err(self.layer, dir_path, "resolve", Errno::ELOOP));
                        }
                        let base = if Path::new(&link).is_absolute() {
                            PathBuf::new()
                        } else {
                            current
                        };
                        let rest: PathBuf = parts[i + 1..].iter().collect();
                        target = clean_relative(&base.join(link).join(rest));
                        continue 'restart;
                    }
                    let mode = Mode::from_bits_truncate(0o755);
                    match nix::sys::stat::mkdirat(&dir, name, mode) {
                        Ok(()) => {}
                        Err(Errno::EEXIST) => remove_all_at(&dir, name)
                            .and_then(|()| nix::sys::stat::mkdirat(&dir, name, mode))
                            .map_err(|e| {
                                io_err(self.layer, &next, "replace with a directory", e)
                            })?,
                        Err(e) => return Err(io_err(self.layer, &next, "create directory", e)),
                    }
                }
                current = next;
            }
            return open_in_root(&self.root, &target, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| io_err(self.layer, &target, "open directory", e));
        }
    }

    fn whiteout(&mut self, path: &Path) -> Result<()> {
        if self.written.contains(path) {
            return Ok(()); // a whiteout hides lower layers only
        }
        let Ok(parent) = open_in_root(
            &self.root,
            path.parent().unwrap_or(Path::new("")),
            libc::O_PATH | libc::O_DIRECTORY,
        ) else {
            return Ok(()); // nothing there to delete
        };
        let name = path.file_name().unwrap_or_default();
        let dir = nix::fcntl::openat(
            &parent,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(self.layer, path, "open the parent of", e))?;
        remove_all_at(&dir, name).map_err(|e| io_err(self.layer, path, "delete (whiteout)", e))
    }

    fn opaque(&mut self, dir_path: &Path) -> Result<()> {
        let dir = match open_in_root(&self.root, dir_path, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(d) => d,
            Err(Errno::ENOENT) => {
                self.ensure_dir(dir_path)?;
                return Ok(());
            }
            Err(e) => return Err(io_err(self.layer, dir_path, "open opaque directory", e)),
        };
        let keep = self.written.clone();
        clear_dir(&dir, &keep, dir_path)
            .map_err(|e| io_err(self.layer, dir_path, "clear opaque directory", e))
    }

    fn entry(&mut self, entry: &mut tar::Entry<'_, impl Read>, path: PathBuf) -> Result<()> {
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        if path.as_os_str().is_empty() {
            // The layer's root: only its metadata.
            let root = open_in_root(&self.root, &path, libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(|e| io_err(self.layer, Path::new("/"), "open", e))?;
            self.metadata(&root, None, &path, &header, mode, entry)?;
            return Ok(());
        }
        let parent = self.parent(&path)?;
        let name = path.file_name().unwrap_or_default().to_os_string();
        let dir = nix::fcntl::openat(
            &parent,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(self.layer, &path, "open the parent of", e))?;
        let existing =
            nix::sys::stat::fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok();
        let existing_dir = existing.is_some_and(|st| {
            SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFDIR
        });
        // Anything but a directory over a directory replaces what is there.
        if existing.is_some() && !(kind.is_dir() && existing_dir) {
            remove_all_at(&dir, &name).map_err(|e| io_err(self.layer, &path, "replace", e))?;
        }
        let at = |e| io_err(self.layer, &path, "create", e);
        match kind {
            tar::EntryType::Directory => {
                if !existing_dir {
                    nix::sys::stat::mkdirat(
                        &dir,
                        name.as_os_str(),
                        Mode::from_bits_truncate(0o700),
                    )
                    .map_err(at)?;
                }
                let fd = nix::fcntl::openat(
                    &dir,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(at)?;
                self.metadata(&fd, None, &path, &header, mode, entry)?;
                self.dir_times
                    .push((path.clone(), header.mtime().unwrap_or(0) as i64));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = nix::fcntl::openat(
                    &dir,
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(at)?;
                let mut file = std::fs::File::from(fd);
                std::io::copy(entry, &mut file).map_err(|e| {
                    Error::io(
                        format!(
                            "layer {}: write {} (truncated layer?)",
                            self.layer,
                            path.display()
                        ),
                        e,
                    )
                })?;
                let fd = OwnedFd::from(file);
                self.metadata(&fd, None, &path, &header, mode, entry)?;
            }
            tar::EntryType::Symlink => {
                let target = link_target(self.layer, entry, &path)?;
                nix::unistd::symlinkat(target.as_path(), &dir, name.as_os_str()).map_err(at)?;
                self.metadata(&dir, Some(&name), &path, &header, mode, entry)?;
            }
            tar::EntryType::Link => {
                let raw = link_target(self.layer, entry, &path)?;
                let target = layer::hardlink_target(self.layer, &path, &raw)?;
                let target_parent = open_in_root(
                    &self.root,
                    target.parent().unwrap_or(Path::new("")),
                    libc::O_PATH | libc::O_DIRECTORY,
                )
                .map_err(|e| io_err(self.layer, &target, "find hardlink target", e))?;
                nix::unistd::linkat(
                    &target_parent,
                    target.file_name().unwrap_or_default(),
                    &dir,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| {
                    io_err(
                        self.layer,
                        &path,
                        &format!("hardlink to {}", target.display()),
                        e,
                    )
                })?;
            }
            tar::EntryType::Fifo => {
                nix::sys::stat::mknodat(
                    &dir,
                    name.as_os_str(),
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                )
                .map_err(at)?;
                self.metadata(&dir, Some(&name), &path, &header, mode, entry)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let (kind_flag, what) = if kind == tar::EntryType::Char {
                    (SFlag::S_IFCHR, "character")
                } else {
                    (SFlag::S_IFBLK, "block")
                };
                let dev = nix::sys::stat::makedev(
                    header.device_major().ok().flatten().unwrap_or(0) as u64,
                    header.device_minor().ok().flatten().unwrap_or(0) as u64,
                );
                match nix::sys::stat::mknodat(&dir, name.as_os_str(), kind_flag, Mode::from_bits_truncate(0o600), dev) {
                    Ok(()) => self.metadata(&dir, Some(&name), &path, &header, mode, entry)?,
                    Err(Errno::EPERM) => self.report.warn(format!(
                        "device nodes cannot be created without privileges: skipped {what} device /{} (and any others) from layer {}",
                        path.display(),
                        self.layer
                    )),
                    Err(e) => return Err(at(e)),
                }
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => self.report.warn(format!(
                "skipped /{} of unsupported tar type {other:?}",
                path.display()
            )),
        }
        // Ancestors count as written too: an opaque marker must not clear them.
        for ancestor in path.ancestors() {
            if !self.written.insert(ancestor.to_path_buf()) {
                break;
            }
        }
        Ok(())
    }

    /// Owner, mode (after chown, which clears setuid), xattrs and times. `name` set:
    /// the entry is `name` in directory `fd` (symlinks, fifos, devices).
    fn metadata(
        &mut self,
        fd: &OwnedFd,
        name: Option<&OsStr>,
        path: &Path,
        header: &tar::Header,
        mode: u32,
        entry: &mut tar::Entry<'_, impl Read>,
    ) -> Result<()> {
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let target = name.unwrap_or(OsStr::new(""));
        let flags = if name.is_some() {
            AtFlags::AT_SYMLINK_NOFOLLOW
        } else {
            AtFlags::AT_EMPTY_PATH
        };
        let is_symlink = header.entry_type() == tar::EntryType::Symlink;
        match nix::unistd::fchownat(fd, target, Some(uid.into()), Some(gid.into()), flags) {
            Ok(()) => {}
            Err(Errno::EPERM | Errno::EINVAL) => self.report.warn(
                "file ownership from the image could not be kept (ids outside this user's mapping); files belong to the unpacking user".into(),
            ),
            Err(e) => return Err(io_err(self.layer, path, "chown", e)),
        }
        if !is_symlink {
            let result = match name {
                None => nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode)),
                Some(n) => nix::sys::stat::fchmodat(
                    fd,
                    n,
                    Mode::from_bits_truncate(mode),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                ),
            };
            result.map_err(|e| io_err(self.layer, path, "chmod", e))?;
            if name.is_none() {
                self.xattrs(fd, path, entry);
            }
        }
        if header.entry_type() != tar::EntryType::Directory {
            let mtime = TimeSpec::new(header.mtime().unwrap_or(0) as i64, 0);
            let _ = match name {
                None => nix::sys::stat::futimens(fd, &mtime, &mtime),
                Some(n) => nix::sys::stat::utimensat(
                    fd,
                    n,
                    &mtime,
                    &mtime,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                ),
            };
        }
        Ok(())
    }

    fn xattrs(&mut self, fd: &OwnedFd, path: &Path, entry: &mut tar::Entry<'_, impl Read>) {
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return;
        };
        for ext in exts.flatten() {
            let Ok(key) = ext.key() else { continue };
            let Some(attr) = key.strip_prefix("SCHILY.xattr.") else {
                continue;
            };
            let Ok(cattr) = CString::new(attr) else {
                continue;
            };
            let value = ext.value_bytes();
            // SAFETY: valid fd, NUL-terminated name, value slice.
            let ret = unsafe {
                libc::fsetxattr(
                    fd.as_raw_fd(),
                    cattr.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            if ret != 0 {
                self.report.warn(format!(
                    "extended attribute {attr} on /{} could not be set: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
    }

    fn finish_dir_times(&mut self) {
        for (path, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            if let Ok(fd) = open_in_root(&self.root, &path, libc::O_RDONLY | libc::O_DIRECTORY) {
                let t = TimeSpec::new(mtime, 0);
                let _ = nix::sys::stat::futimens(&fd, &t, &t);
            }
        }
    }
}

/// Applies the (decompressed) layer `tar_stream` onto the tree at `root`.
pub fn apply(layer: &str, tar_stream: impl Read, root: &Path) -> Result<ApplyReport> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(layer, root, "open", e))?;
    let mut applier = Applier {
        layer,
        root: root_fd,
        report: ApplyReport::default(),
        written: HashSet::new(),
        dir_times: Vec::new(),
    };
    let mut archive = tar::Archive::new(tar_stream);
    let entries = archive
        .entries()
        .map_err(|e| Error::io(format!("read layer {layer}"), e))?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| Error::io(format!("read layer {layer} (truncated or corrupt?)"), e))?;
        let raw = entry
            .path()
            .map_err(|e| Error::io(format!("read an entry name in layer {layer}"), e))?
            .into_owned();
        match layer::classify(layer, &raw)? {
            EntryKind::Whiteout(p) => applier.whiteout(&p)?,
            EntryKind::Opaque(p) => applier.opaque(&p)?,
            EntryKind::Path(p) => applier.entry(&mut entry, p)?,
        }
        applier.report.entries += 1;
    }
    applier.finish_dir_times();
    Ok(applier.report)
}
