//! The container's root filesystem: the mount plan built from the spec (validated in
//! rcrun's process) and its execution inside the container's mount namespace.
//!
//! Every mount destination is resolved with `openat2(RESOLVE_IN_ROOT)` against the
//! rootfs and mounted through `/proc/self/fd/N`, so a symlink or `..` in the image
//! can never point a mount outside the rootfs.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::{FsFlags, statvfs};

use crate::error::{FailureKind, SetupFailure};
use crate::mountattr::{self, Idmap, Premade, RecursiveAttrs};
use crate::nsfields;
use crate::overlay::OverlayPlan;
use crate::sys;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MountKind {
    Bind {
        source: PathBuf,
        recursive: bool,
    },
    Fs {
        fstype: String,
        source: String,
    },
    /// `type: cgroup`: a read-only view of the host's hierarchy.
    Cgroup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountPlan {
    /// Absolute path inside the container.
    pub dest: PathBuf,
    pub kind: MountKind,
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Option<String>,
    /// `rro`, `rnosuid`, ...: applied to the mount and its submounts.
    pub recursive_attrs: RecursiveAttrs,
    /// An idmapped bind mount.
    pub idmap: Option<Idmap>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DevicePlan {
    pub path: PathBuf,
    pub kind: SFlag,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct RootfsPlan {
    pub rootfs: PathBuf,
    /// Mounted on `rootfs` first, so everything below applies on top of it.
    pub overlay: Option<OverlayPlan>,
    /// Applied recursively to `/` first, so nothing done here reaches the host.
    pub root_propagation: MsFlags,
    /// A shared root: pivot_root refuses one, so it is shared again after the pivot.
    pub share_root_after_pivot: bool,
    pub mounts: Vec<MountPlan>,
    /// Populate `/dev` (devices and the standard symlinks): the spec mounts a tmpfs there.
    pub populate_dev: bool,
    pub devices: Vec<DevicePlan>,
    /// mknod is not allowed in a user namespace: bind the host's nodes instead.
    pub bind_devices: bool,
    /// Move the rootfs onto `/` and chroot, instead of pivot_root (`--no-pivot`).
    pub no_pivot: bool,
    pub masked: Vec<PathBuf>,
    pub readonly: Vec<PathBuf>,
    pub readonly_root: bool,
    /// `linux.sysctl`: (path under /proc/sys, value).
    pub sysctl: Vec<(PathBuf, String)>,
    pub cwd: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MountOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    /// `Some(recursive)` for `bind`/`rbind`.
    pub bind: Option<bool>,
    pub data: Vec<String>,
    pub recursive_attrs: RecursiveAttrs,
    /// `Some(recursive)` for `idmap`/`ridmap`.
    pub idmap: Option<bool>,
}

/// Splits fstab-style options into mount flags, propagation changes and fs data.
pub(crate) fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        bind: None,
        data: Vec::new(),
        recursive_attrs: RecursiveAttrs::default(),
        idmap: None,
    };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            "bind" => {
                out.bind = Some(out.bind.unwrap_or(false));
                continue;
            }
            "rbind" => {
                out.bind = Some(true);
                continue;
            }
            "defaults" | "tmpcopyup" => continue,
            "idmap" => {
                out.idmap = Some(out.idmap.unwrap_or(false));
                continue;
            }
            "ridmap" => {
                out.idmap = Some(true);
                continue;
            }
            other => {
                if out.recursive_attrs.add(other) {
                    continue;
                }
                if let Some(p) = propagation_flag(other) {
                    out.propagation.push(p);
                } else {
                    out.data.push(other.to_string());
                }
                continue;
            }
        };
        out.flags.insert(set);
        out.flags.remove(clear);
    }
    out
}

pub(crate) fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Lexically cleans a container path: absolute, no `.` or `..` (which cannot climb
/// above `/`), so it can be joined and compared.
pub(crate) fn clean_container_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// The default devices every container gets when `/dev` is a tmpfs.
pub(crate) fn default_devices(uid: u32, gid: u32) -> Vec<DevicePlan> {
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .into_iter()
    .map(|(name, major, minor)| DevicePlan {
        path: PathBuf::from("/dev").join(name),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid,
        gid,
    })
    .collect()
}

fn failure(step: impl Into<String>, errno: Errno) -> SetupFailure {
    SetupFailure {
        step: step.into(),
        detail: errno.desc().to_string(),
        kind: FailureKind::Setup,
    }
}

fn cpath(path: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// Opens `path` inside `root`, creating missing directories (and the last component
/// as an empty file when `file` is set) on the way, all resolved inside `root`. A
/// dangling symlink on the way is followed to its target, also inside `root`.
pub(crate) fn create_in_root(root: &OwnedFd, path: &Path, file: bool) -> nix::Result<OwnedFd> {
    let mut path = clean_container_path(path);
    let mut symlinks = 0;
    'restart: loop {
        match sys::open_in_root(root, &cpath(&path), libc::O_PATH, 0) {
            Err(Errno::ENOENT) => {}
            other => return other,
        }
        let parts: Vec<_> = path.components().skip(1).collect();
        let mut current = PathBuf::from("/");
        for (i, part) in parts.iter().enumerate() {
            let next = current.join(part);
            match sys::open_in_root(root, &cpath(&next), libc::O_PATH, 0) {
                Ok(_) => {}
                Err(Errno::ENOENT) => {
                    let parent = sys::open_in_root(
                        root,
                        &cpath(&current),
                        libc::O_PATH | libc::O_DIRECTORY,
                        0,
                    )?;
                    let name = part.as_os_str();
                    if let Ok(target) = nix::fcntl::readlinkat(&parent, name) {
                        symlinks += 1;
                        if symlinks > 40 {
                            return Err(Errno::ELOOP);
                        }
                        let base = if Path::new(&target).is_absolute() {
                            PathBuf::from("/")
                        } else {
                            current
                        };
                        let rest: PathBuf = parts[i + 1..].iter().collect();
                        path = clean_container_path(&base.join(target).join(rest));
                        continue 'restart;
                    }
                    let created = if i + 1 == parts.len() && file {
                        nix::fcntl::openat(
                            &parent,
                            name,
                            OFlag::O_CREAT
                                | OFlag::O_EXCL
                                | OFlag::O_WRONLY
                                | OFlag::O_NOFOLLOW
                                | OFlag::O_CLOEXEC,
                            Mode::from_bits_truncate(0o644),
                        )
                        .map(drop)
                    } else {
                        nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o755))
                    };
                    match created {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            current = next;
        }
        return sys::open_in_root(root, &cpath(&path), libc::O_PATH, 0);
    }
}

/// Flags the kernel locks on a mount made in a user namespace; a bind remount must
/// keep them or it fails with EPERM.
fn locked_flags(path: &str) -> MsFlags {
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out.insert(ms);
        }
    }
    out
}

fn remount_bind(path: &str, flags: MsFlags) -> nix::Result<()> {
    let flags = flags | locked_flags(path) | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
}

/// The flags a bind mount can only get through a remount.
const REMOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

fn bind(source: &Path, target: &str, recursive: bool) -> nix::Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
}

fn do_mount(root: &OwnedFd, m: &MountPlan, premade: Option<&OwnedFd>) -> Result<(), SetupFailure> {
    let dest = m.dest.display();
    let is_file = match &m.kind {
        MountKind::Bind { source, .. } => std::fs::metadata(source)
            .map(|md| !md.is_dir())
            .map_err(|e| SetupFailure {
                step: format!("bind mount {} on {dest}", source.display()),
                detail: e.to_string(),
                kind: FailureKind::Setup,
            })?,
        _ => false,
    };
    let target = create_in_root(root, &m.dest, is_file)
        .map_err(|e| failure(format!("create mount point {dest} inside the rootfs"), e))?;
    let tpath = sys::fd_path(&target);
    // Flags a bind mount can only get from a remount of the new mount.
    let mut remount = None;
    match &m.kind {
        MountKind::Bind { source, recursive } => {
            let idmapped = match (premade, &m.idmap) {
                (Some(tree), _) => Some(mountattr::attach(tree, &target)),
                (None, Some(idmap)) => Some(
                    mountattr::idmapped_tree(&cpath(source), *recursive, idmap)
                        .and_then(|tree| mountattr::attach(&tree, &target)),
                ),
                (None, None) => None,
            };
            if let Some(result) = idmapped {
                result.map_err(|detail| SetupFailure {
                    step: format!("idmapped bind mount {} on {dest}", source.display()),
                    detail,
                    kind: FailureKind::Setup,
                })?;
            } else {
                bind(source, &tpath, *recursive).map_err(|e| {
                    failure(format!("bind mount {} on {dest}", source.display()), e)
                })?;
            }
            remount = Some(m.flags & REMOUNT_FLAGS).filter(|f| !f.is_empty());
        }
        MountKind::Fs { fstype, source } => {
            let flags = m.flags - MsFlags::MS_REMOUNT;
            let result = mount(
                Some(source.as_str()),
                tpath.as_str(),
                Some(fstype.as_str()),
                flags,
                m.data.as_deref(),
            );
            match (result, fstype.as_str()) {
                (Ok(()), _) => {}
                // Without its own network namespace a rootless container may not mount
                // sysfs; without an ipc namespace, mqueue. Bind the host's instead.
                (Err(Errno::EPERM | Errno::EACCES), "sysfs") => {
                    bind(Path::new("/sys"), &tpath, true)
                        .map_err(|e| failure(format!("bind mount /sys on {dest}"), e))?;
                    remount = Some((m.flags & REMOUNT_FLAGS) | MsFlags::MS_RDONLY);
                }
                (Err(Errno::EPERM | Errno::EACCES), "mqueue") => {
                    bind(Path::new("/dev/mqueue"), &tpath, false)
                        .map_err(|e| failure(format!("bind mount /dev/mqueue on {dest}"), e))?;
                    remount = Some(m.flags & REMOUNT_FLAGS).filter(|f| !f.is_empty());
                }
                // gid=5 is invalid when gid 5 is not mapped in the user namespace.
                (Err(Errno::EINVAL), "devpts")
                    if m.data.as_deref().is_some_and(|d| d.contains("gid=")) =>
                {
                    let data: Vec<&str> = m
                        .data
                        .as_deref()
                        .unwrap_or("")
                        .split(',')
                        .filter(|o| !o.starts_with("gid="))
                        .collect();
                    mount(
                        Some(source.as_str()),
                        tpath.as_str(),
                        Some("devpts"),
                        flags,
                        Some(data.join(",").as_str()),
                    )
                    .map_err(|e| failure(format!("mount devpts on {dest}"), e))?;
                }
                (Err(e), _) => return Err(failure(format!("mount {fstype} on {dest}"), e)),
            }
        }
        MountKind::Cgroup => {
            bind(Path::new("/sys/fs/cgroup"), &tpath, true)
                .map_err(|e| failure(format!("bind mount /sys/fs/cgroup on {dest}"), e))?;
            remount = Some((m.flags & REMOUNT_FLAGS) | MsFlags::MS_RDONLY);
        }
    }
    // The fd we mounted through still points at the directory underneath: reopen the
    // path to land on the new mount before changing its flags or propagation.
    if remount.is_some() || !m.propagation.is_empty() || !m.recursive_attrs.is_empty() {
        let top = sys::open_in_root(root, &cpath(&m.dest), libc::O_PATH, 0)
            .map_err(|e| failure(format!("reopen mount {dest}"), e))?;
        let top_path = sys::fd_path(&top);
        if let Some(flags) = remount {
            remount_bind(&top_path, flags)
                .map_err(|e| failure(format!("remount {dest} with its options"), e))?;
        }
        if !m.recursive_attrs.is_empty() {
            mountattr::apply_recursive(&top, m.recursive_attrs).map_err(|e| {
                failure(
                    format!("set the recursive options (rro, rnosuid, ...) of {dest}"),
                    e,
                )
            })?;
        }
        for p in &m.propagation {
            mount(
                None::<&str>,
                top_path.as_str(),
                None::<&str>,
                *p,
                None::<&str>,
            )
            .map_err(|e| failure(format!("set propagation of {dest}"), e))?;
        }
    }
    Ok(())
}

fn populate_dev(root: &OwnedFd, plan: &RootfsPlan) -> Result<(), SetupFailure> {
    for dev in &plan.devices {
        let shown = dev.path.display();
        if plan.bind_devices {
            let target = create_in_root(root, &dev.path, true)
                .map_err(|e| failure(format!("create {shown}"), e))?;
            bind(&dev.path, &sys::fd_path(&target), false)
                .map_err(|e| failure(format!("bind mount host {shown}"), e))?;
            continue;
        }
        let path = clean_container_path(&dev.path);
        let parent_path = path.parent().unwrap_or(Path::new("/"));
        let parent = create_in_root(root, parent_path, false)
            .map_err(|e| failure(format!("create parent of {shown}"), e))?;
        let name = path.file_name().unwrap_or_default();
        let dev_t = nix::sys::stat::makedev(dev.major, dev.minor);
        match nix::sys::stat::mknodat(
            &parent,
            name,
            dev.kind,
            Mode::from_bits_truncate(dev.mode),
            dev_t,
        ) {
            Ok(()) => {
                // mknod applied the umask; the spec's fileMode is exact.
                nix::sys::stat::fchmodat(
                    &parent,
                    name,
                    Mode::from_bits_truncate(dev.mode),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| failure(format!("chmod {shown}"), e))?;
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(failure(format!("mknod {shown}"), e)),
        }
        nix::unistd::fchownat(
            &parent,
            name,
            Some(dev.uid.into()),
            Some(dev.gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| failure(format!("chown {shown}"), e))?;
    }
    let dev_dir =
        create_in_root(root, Path::new("/dev"), false).map_err(|e| failure("open /dev", e))?;
    let dir = nix::fcntl::openat(
        &dev_dir,
        ".",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| failure("open /dev", e))?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        match nix::unistd::symlinkat(target, &dir, name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(failure(format!("symlink /dev/{name}"), e)),
        }
    }
    Ok(())
}

fn is_mount_root(path: &Path) -> bool {
    // SAFETY: statx into a zeroed local.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let c = cpath(path);
    // SAFETY: valid C string and buffer.
    let ret = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            0,
            &mut st,
        )
    };
    ret == 0 && st.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0
}

/// Makes the mount holding `rootfs` (the bind of it inherits its propagation)
/// private, as pivot_root needs when `/` was made shared.
fn make_enclosing_mount_private(rootfs: &Path) -> Result<(), SetupFailure> {
    let mut dir = rootfs;
    while !is_mount_root(dir) {
        match dir.parent() {
            Some(parent) => dir = parent,
            None => break,
        }
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| failure(format!("make {} private for pivot_root", dir.display()), e))
}

fn pivot(rootfs: &Path, no_pivot: bool) -> Result<(), SetupFailure> {
    nix::unistd::chdir(rootfs).map_err(|e| failure("chdir into the rootfs", e))?;
    if no_pivot {
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| failure("move the rootfs onto /", e))?;
        nix::unistd::chroot(".").map_err(|e| failure("chroot into the rootfs", e))?;
        return nix::unistd::chdir("/").map_err(|e| failure("chdir /", e));
    }
    // Stack the old root on the new one and detach it: no put_old directory needed.
    nix::unistd::pivot_root(".", ".").map_err(|e| failure("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| failure("detach the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| failure("chdir /", e))
}

fn mask(path: &Path) -> Result<(), SetupFailure> {
    let result = match std::fs::metadata(path) {
        Err(_) => return Ok(()),
        Ok(md) if md.is_dir() => mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        ),
        Ok(_) => bind(Path::new("/dev/null"), &path.to_string_lossy(), false),
    };
    result.map_err(|e| failure(format!("mask {}", path.display()), e))
}

fn make_readonly(path: &Path) -> Result<(), SetupFailure> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let shown = path.to_string_lossy();
    bind(path, &shown, true)
        .and_then(|()| remount_bind(&shown, MsFlags::MS_RDONLY))
        .map_err(|e| failure(format!("make {shown} read-only"), e))
}

/// Builds the container's root and makes it `/`. Runs in the container's fresh
/// mount namespace, before the process's credentials change.
/// `before_pivot` runs once the mounts are in place (the createContainer hooks' point).
pub(crate) fn setup_rootfs(
    plan: &RootfsPlan,
    premade: &Premade,
    before_pivot: impl FnOnce() -> Result<(), SetupFailure>,
) -> Result<(), SetupFailure> {
    let propagate_root = |step: &str| {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            plan.root_propagation,
            None::<&str>,
        )
        .map_err(|e| failure(step, e))
    };
    propagate_root("set propagation of /")?;
    // After the propagation change: as root the overlay must not reach the host.
    if let Some(overlay) = &plan.overlay {
        overlay.mount(&plan.rootfs)?;
    }
    if plan.share_root_after_pivot {
        make_enclosing_mount_private(&plan.rootfs)?;
    }
    bind(&plan.rootfs, &plan.rootfs.to_string_lossy(), true).map_err(|e| {
        failure(
            format!("bind mount the rootfs {}", plan.rootfs.display()),
            e,
        )
    })?;
    let root = nix::fcntl::open(
        &plan.rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| failure(format!("open the rootfs {}", plan.rootfs.display()), e))?;
    for (i, m) in plan.mounts.iter().enumerate() {
        do_mount(&root, m, premade.get(i))?;
    }
    if plan.populate_dev {
        populate_dev(&root, plan)?;
    }
    drop(root);
    before_pivot()?;
    pivot(&plan.rootfs, plan.no_pivot)?;
    if plan.share_root_after_pivot {
        propagate_root("share the container's root (linux.rootfsPropagation)")?;
    }
    if plan.cwd != Path::new("/") {
        // Like docker's WORKDIR, a missing working directory is created.
        let _ = std::fs::create_dir_all(&plan.cwd);
    }
    // Through the container's own /proc, before readonlyPaths covers /proc/sys.
    nsfields::write_sysctls(&plan.sysctl)?;
    for path in &plan.masked {
        mask(path)?;
    }
    for path in &plan.readonly {
        make_readonly(path)?;
    }
    if plan.readonly_root {
        remount_bind("/", MsFlags::MS_RDONLY)
            .map_err(|e| failure("make the rootfs read-only", e))?;
    }
    Ok(())
}

/// Sets the hostname (the container has its own UTS namespace).
pub(crate) fn set_hostname(name: &str) -> Result<(), SetupFailure> {
    nix::unistd::sethostname(name).map_err(|e| failure("sethostname", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_data_and_propagation_are_split() {
        let o = opts(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(o.bind, None);
    }

    #[test]
    fn later_options_override_earlier_ones() {
        assert_eq!(opts(&["ro", "rw"]).flags, MsFlags::empty());
        assert_eq!(opts(&["rw", "ro"]).flags, MsFlags::MS_RDONLY);
    }

    #[test]
    fn bind_and_rbind() {
        assert_eq!(opts(&["bind"]).bind, Some(false));
        assert_eq!(opts(&["rbind", "ro"]).bind, Some(true));
        assert_eq!(opts(&["bind", "rbind"]).bind, Some(true));
    }

    #[test]
    fn container_paths_cannot_climb_above_root() {
        assert_eq!(
            clean_container_path(Path::new("/a/../../etc")),
            PathBuf::from("/etc")
        );
        assert_eq!(
            clean_container_path(Path::new("../x/./y")),
            PathBuf::from("/x/y")
        );
        assert_eq!(clean_container_path(Path::new("/")), PathBuf::from("/"));
    }

    #[test]
    fn create_in_root_keeps_symlinks_inside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let rootfs = dir.path();
        // An absolute symlink that would escape if followed on the host.
        std::os::unix::fs::symlink(outside.path(), rootfs.join("escape")).unwrap();
        let root =
            nix::fcntl::open(rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        create_in_root(&root, Path::new("/escape/sub/dir"), false).unwrap();
        create_in_root(&root, Path::new("/../../file"), true).unwrap();
        assert!(
            std::fs::read_dir(outside.path()).unwrap().next().is_none(),
            "nothing created outside"
        );
        // The symlink resolved inside the rootfs: <rootfs>/<outside path>/sub/dir.
        let inside = rootfs
            .join(outside.path().strip_prefix("/").unwrap())
            .join("sub/dir");
        assert!(inside.is_dir(), "{} should exist", inside.display());
        assert!(rootfs.join("file").is_file());
    }
}
