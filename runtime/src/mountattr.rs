//! The new mount API's attributes: recursive mount options (`rro`, `rnosuid`, ...)
//! through mount_setattr(AT_RECURSIVE), and idmapped bind mounts (`idmap`/`ridmap`
//! with the mount's uidMappings/gidMappings) through open_tree + MOUNT_ATTR_IDMAP.

use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::unistd::Uid;
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Mount};

use crate::config::IdMaps;
use crate::error::{Error, Result};
use crate::mounts::{MountKind, MountPlan};
use crate::sys;

/// Attributes to set and clear on a mount and everything below it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RecursiveAttrs {
    pub set: u64,
    pub clear: u64,
}

impl RecursiveAttrs {
    pub fn is_empty(&self) -> bool {
        self.set == 0 && self.clear == 0
    }

    /// Adds a recursive option (`rro`, `rnoatime`, ...); false if `name` is none.
    pub fn add(&mut self, name: &str) -> bool {
        use libc::{
            MOUNT_ATTR__ATIME as ATIME, MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODEV,
            MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NOSYMFOLLOW,
            MOUNT_ATTR_RDONLY, MOUNT_ATTR_RELATIME, MOUNT_ATTR_STRICTATIME,
        };
        let (set, clear) = match name {
            "rro" => (MOUNT_ATTR_RDONLY, 0),
            "rrw" => (0, MOUNT_ATTR_RDONLY),
            "rnosuid" => (MOUNT_ATTR_NOSUID, 0),
            "rsuid" => (0, MOUNT_ATTR_NOSUID),
            "rnodev" => (MOUNT_ATTR_NODEV, 0),
            "rdev" => (0, MOUNT_ATTR_NODEV),
            "rnoexec" => (MOUNT_ATTR_NOEXEC, 0),
            "rexec" => (0, MOUNT_ATTR_NOEXEC),
            "rnodiratime" => (MOUNT_ATTR_NODIRATIME, 0),
            "rdiratime" => (0, MOUNT_ATTR_NODIRATIME),
            "rnosymfollow" => (MOUNT_ATTR_NOSYMFOLLOW, 0),
            "rsymfollow" => (0, MOUNT_ATTR_NOSYMFOLLOW),
            // The atime mode is one field: it is replaced as a whole.
            "rnoatime" => (MOUNT_ATTR_NOATIME, ATIME),
            "rstrictatime" => (MOUNT_ATTR_STRICTATIME, ATIME),
            "rrelatime" | "ratime" | "rnorelatime" | "rnostrictatime" => {
                (MOUNT_ATTR_RELATIME, ATIME)
            }
            _ => return false,
        };
        self.set = (self.set & !clear) | set;
        self.clear = (self.clear & !set) | clear;
        true
    }
}

fn mount_setattr(fd: &OwnedFd, flags: u32, attr: &libc::mount_attr) -> nix::Result<()> {
    // SAFETY: `attr` outlives the call; the path is an empty C string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags | libc::AT_EMPTY_PATH as u32,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(ret).map(drop)
}

/// Applies `attrs` to the mount `fd` is the root of, and to all mounts below it.
pub(crate) fn apply_recursive(fd: &OwnedFd, attrs: RecursiveAttrs) -> nix::Result<()> {
    let attr = libc::mount_attr {
        attr_set: attrs.set,
        attr_clr: attrs.clear,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(fd, libc::AT_RECURSIVE as u32, &attr)
}

/// An idmapped bind mount. The spec's mappings are in the host's terms (as runc and
/// crun read them); `idmap` without mappings uses the container's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Idmap {
    pub uid: Vec<LinuxIdMapping>,
    pub gid: Vec<LinuxIdMapping>,
    /// `ridmap`: submounts are idmapped too.
    pub recursive: bool,
    /// rcrun is root: the mount is made on the host before the container starts, so
    /// any filesystem that supports idmapping works. Otherwise it is made inside the
    /// container with the mappings translated to the container's ids, which the
    /// kernel allows only for filesystems mounted there.
    pub outside: bool,
}

fn invalid(msg: String) -> Error {
    Error::InvalidConfig(msg)
}

/// Host ids `list` in the terms of the user namespace `container` describes.
fn to_container(
    list: &[LinuxIdMapping],
    container: &[LinuxIdMapping],
) -> Option<Vec<LinuxIdMapping>> {
    list.iter()
        .map(|m| {
            let c = container.iter().find(|c| {
                c.host_id() <= m.host_id()
                    && m.host_id() as u64 + m.size() as u64 <= c.host_id() as u64 + c.size() as u64
            })?;
            LinuxIdMappingBuilder::default()
                .container_id(m.container_id())
                .host_id(c.container_id() + (m.host_id() - c.host_id()))
                .size(m.size())
                .build()
                .ok()
        })
        .collect()
}

/// The idmap of a spec mount (`idmap`/`ridmap` option, uidMappings/gidMappings).
pub(crate) fn plan(
    m: &Mount,
    option: Option<bool>,
    is_bind: bool,
    container: Option<&IdMaps>,
) -> Result<Option<Idmap>> {
    let dest = m.destination().display();
    let uid = m.uid_mappings().clone().unwrap_or_default();
    let gid = m.gid_mappings().clone().unwrap_or_default();
    if option.is_none() && uid.is_empty() && gid.is_empty() {
        return Ok(None);
    }
    if !is_bind {
        return Err(invalid(format!(
            "mount on {dest}: idmap and uidMappings/gidMappings are only supported on bind mounts"
        )));
    }
    let (uid, gid) = match (uid.is_empty(), gid.is_empty(), container) {
        (false, false, _) => (uid, gid),
        (true, true, Some(maps)) => (maps.uid.clone(), maps.gid.clone()),
        (true, true, None) => {
            return Err(invalid(format!(
                "mount on {dest}: idmap without uidMappings/gidMappings uses the container's user namespace, and this container creates none; add the mappings to the mount"
            )));
        }
        _ => {
            return Err(invalid(format!(
                "mount on {dest}: an idmapped mount needs both uidMappings and gidMappings on the mount"
            )));
        }
    };
    if uid.iter().chain(&gid).any(|m| m.size() == 0) {
        return Err(invalid(format!(
            "mount on {dest}: an id mapping has size 0"
        )));
    }
    let recursive = option.unwrap_or(false);
    if Uid::effective().is_root() {
        return Ok(Some(Idmap {
            uid,
            gid,
            recursive,
            outside: true,
        }));
    }
    let inside = |list: &[LinuxIdMapping], theirs: Option<&Vec<LinuxIdMapping>>| {
        theirs.and_then(|c| to_container(list, c)).ok_or_else(|| {
            invalid(format!(
                "mount on {dest}: the idmap's host ids are not all mapped in the container's user namespace, so rcrun (not root) cannot use them"
            ))
        })
    };
    Ok(Some(Idmap {
        uid: inside(&uid, container.map(|c| &c.uid))?,
        gid: inside(&gid, container.map(|c| &c.gid))?,
        recursive,
        outside: false,
    }))
}

fn map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// A user namespace carrying `idmap`'s mapping, made as a child of the caller's:
/// a child process unshares it and waits while this process writes its maps.
fn mapping_userns(idmap: &Idmap) -> Result<OwnedFd, String> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("pipe: {}", e.desc()))?;
    let (hold_r, hold_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("pipe: {}", e.desc()))?;
    let child = match sys::clone3(libc::CLONE_NEWUSER as u64) {
        Err(e) => return Err(format!("create a user namespace: {}", e.desc())),
        Ok(None) => {
            drop(ready_r);
            drop(hold_w);
            // Non-dumpable (inherited), our /proc files would belong to the host's root
            // and the parent could not write our maps. Nothing else runs here.
            let _ = sys::set_dumpable(true);
            // Our pid as the mounted /proc sees it (the caller may be in another pid ns).
            let me = std::fs::read_link("/proc/self").unwrap_or_default();
            let mut w = std::fs::File::from(ready_w);
            let _ = w.write_all(me.as_os_str().as_encoded_bytes());
            drop(w);
            let mut byte = [0u8; 1];
            while let Err(Errno::EINTR) = nix::unistd::read(&hold_r, &mut byte) {}
            // SAFETY: _exit in a forked child.
            unsafe { libc::_exit(0) }
        }
        Ok(Some(pid)) => pid,
    };
    drop(ready_w);
    drop(hold_r);
    let result = (|| {
        let mut pid = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(ready_r), &mut pid)
            .map_err(|e| e.to_string())?;
        let dir = format!("/proc/{}", String::from_utf8_lossy(&pid));
        for (file, maps) in [("uid_map", &idmap.uid), ("gid_map", &idmap.gid)] {
            std::fs::write(format!("{dir}/{file}"), map_text(maps)).map_err(|e| {
                format!("write {file} ({e}; are the mapped ids mapped in the container?)")
            })?;
        }
        std::fs::File::open(format!("{dir}/ns/user"))
            .map(OwnedFd::from)
            .map_err(|e| format!("open the user namespace: {e}"))
    })();
    drop(hold_w);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

fn open_tree(source: &CStr, recursive: bool) -> nix::Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: plain syscall with a valid C string.
    sys::fd_result(unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, source.as_ptr(), flags)
    })
}

/// A detached, idmapped copy of the mount tree at `source`.
pub(crate) fn idmapped_tree(
    source: &CStr,
    recursive: bool,
    idmap: &Idmap,
) -> Result<OwnedFd, String> {
    let tree = open_tree(source, recursive)
        .map_err(|e| format!("clone the source mount: {}", e.desc()))?;
    let userns = mapping_userns(idmap)?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let flags = if idmap.recursive {
        libc::AT_RECURSIVE as u32
    } else {
        0
    };
    mount_setattr(&tree, flags, &attr).map_err(|e| {
        format!(
            "idmap the mount: {} (the filesystem must support idmapped mounts, and without root on the host only filesystems mounted inside the container can be idmapped)",
            e.desc()
        )
    })?;
    Ok(tree)
}

/// Attaches a detached mount tree on the directory or file `target` is open on.
pub(crate) fn attach(tree: &OwnedFd, target: &OwnedFd) -> Result<(), String> {
    // SAFETY: plain syscall; the strings outlive it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(ret)
        .map(drop)
        .map_err(|e| format!("attach the idmapped mount: {}", e.desc()))
}

/// The idmapped mounts rcrun makes as root before the container starts, one entry
/// per planned mount (None where the mount is not made here). The container's
/// process inherits the fds and attaches them.
pub(crate) struct Premade(Vec<Option<OwnedFd>>);

impl Premade {
    pub fn get(&self, index: usize) -> Option<&OwnedFd> {
        self.0.get(index).and_then(Option::as_ref)
    }
}

pub(crate) fn premake(mounts: &[MountPlan]) -> Result<Premade> {
    let mut out = Vec::new();
    if !mounts
        .iter()
        .any(|m| m.idmap.as_ref().is_some_and(|i| i.outside))
    {
        return Ok(Premade(out));
    }
    for m in mounts {
        let (Some(idmap), MountKind::Bind { source, recursive }) = (&m.idmap, &m.kind) else {
            out.push(None);
            continue;
        };
        if !idmap.outside {
            out.push(None);
            continue;
        }
        let c = CString::new(source.as_os_str().as_bytes()).unwrap_or_default();
        let tree = idmapped_tree(&c, *recursive, idmap).map_err(|detail| {
            invalid(format!(
                "idmapped bind mount {} on {}: {detail}",
                source.display(),
                m.dest.display()
            ))
        })?;
        out.push(Some(tree));
    }
    Ok(Premade(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_recursive_options_win_and_atime_is_one_field() {
        let mut a = RecursiveAttrs::default();
        assert!(a.add("rro") && a.add("rnosuid") && a.add("rnoatime"));
        assert_eq!(
            a.set,
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOATIME
        );
        assert_eq!(a.clear, libc::MOUNT_ATTR__ATIME);
        assert!(a.add("rrw") && a.add("rstrictatime"));
        assert_eq!(
            a.set,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_STRICTATIME
        );
        assert_eq!(a.clear, libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR__ATIME);
        assert!(!a.add("rbogus"));
    }

    fn id(container: u32, host: u32, size: u32) -> LinuxIdMapping {
        LinuxIdMappingBuilder::default()
            .container_id(container)
            .host_id(host)
            .size(size)
            .build()
            .unwrap()
    }

    #[test]
    fn host_ids_are_translated_into_the_containers() {
        let container = [id(0, 1000, 1), id(1, 100000, 65536)];
        assert_eq!(
            to_container(&[id(0, 100004, 10), id(50, 1000, 1)], &container),
            Some(vec![id(0, 5, 10), id(50, 0, 1)])
        );
        // Not mapped, or straddling two ranges.
        assert_eq!(to_container(&[id(0, 7, 1)], &container), None);
        assert_eq!(to_container(&[id(0, 1000, 2)], &container), None);
    }
}
