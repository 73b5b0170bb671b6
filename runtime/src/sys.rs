//! Thin wrappers over the syscalls that nix does not cover (clone3, openat2,
//! pidfd_open, close_range). Each returns `nix::Result` so callers add context.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::Pid;

/// Fork-like clone3: the child continues on a copy of the stack.
///
/// Returns `None` in the child. The caller must be single-threaded (see
/// [`ensure_single_threaded`]): no atfork handlers run, so locks held by other
/// threads would stay locked in the child.
pub(crate) fn clone3(flags: u64) -> nix::Result<Option<Pid>> {
    clone3_into(flags, None)
}

/// libc's constant is a c_int, too narrow for this bit.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// [`clone3`], the child starting in the cgroup whose directory is `cgroup`
/// (CLONE_INTO_CGROUP, Linux 5.7+: older kernels fail with E2BIG or EINVAL).
pub(crate) fn clone3_into(flags: u64, cgroup: Option<&OwnedFd>) -> nix::Result<Option<Pid>> {
    // SAFETY: clone_args is plain data; all-zero is "no options".
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags;
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // With CLONE_PARENT the kernel insists on 0 and uses the caller's exit signal.
    if flags & libc::CLONE_PARENT as u64 == 0 {
        args.exit_signal = libc::SIGCHLD as u64;
    }
    // SAFETY: a fork-like clone3 (no stack, no tls); the process is single-threaded.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    match Errno::result(ret)? {
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as i32))),
    }
}

/// Starting a container forks with clone3, which skips libc's atfork handlers, so the
/// caller must not have other threads that could hold the allocator's locks.
pub(crate) fn ensure_single_threaded() -> Result<(), String> {
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|e| e.to_string())?;
    // Field 20 (num_threads); fields after the parenthesised comm never contain spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    match after.split_whitespace().nth(17) {
        Some("1") => Ok(()),
        Some(n) => Err(format!(
            "the calling process has {n} threads; containers must be started from a single-threaded process"
        )),
        None => Err("cannot read the thread count from /proc/self/stat".into()),
    }
}

pub(crate) fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: plain syscall, returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(fd)? as RawFd;
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// openat2 with `RESOLVE_IN_ROOT`: `path` (absolute or relative) is resolved as if
/// `root` were `/`, so neither `..` nor symlinks can leave it.
pub(crate) fn open_in_root(
    root: &OwnedFd,
    path: &CStr,
    flags: i32,
    mode: u32,
) -> nix::Result<OwnedFd> {
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: `how` and `path` outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                path.as_ptr(),
                &mut how as *mut libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match Errno::result(fd) {
            // openat2 asks to retry when a rename raced with the lookup.
            Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
            // SAFETY: the kernel just gave us this fd.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        }
    }
}

/// Marks every fd from `first` up as close-on-exec, so nothing of rcrun's reaches
/// the container's process.
pub(crate) fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: plain syscall.
    let ret = unsafe { libc::close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    Errno::result(ret).map(drop)
}

/// The `/proc/self/fd/N` path of an fd, for the syscalls that only take paths.
pub(crate) fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

pub(crate) fn set_dumpable(dumpable: bool) -> nix::Result<()> {
    // SAFETY: plain prctl.
    let ret = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, dumpable as libc::c_ulong, 0, 0, 0) };
    Errno::result(ret).map(drop)
}

/// Device and inode of a path, following symlinks.
pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    nix::sys::stat::stat(path)
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat),
/// used with the pid to tell a process from a later one that reused its pid.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The state letter of a process (R, S, Z, ...), from /proc/PID/stat.
pub(crate) fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

pub(crate) fn fd_result(ret: libc::c_long) -> nix::Result<OwnedFd> {
    let fd = Errno::result(ret)? as RawFd;
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fsopen(2): a filesystem context, the first step of the new mount API.
pub(crate) fn fsopen(fstype: &CStr) -> nix::Result<OwnedFd> {
    // SAFETY: plain syscall with a valid C string.
    fd_result(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) })
}

/// fsconfig(2) with a string value, a flag (`value` None) or a command (`key` None).
pub(crate) fn fsconfig(
    fs: &OwnedFd,
    command: libc::c_uint,
    key: Option<&CStr>,
    value: Option<&CStr>,
) -> nix::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: plain syscall; the strings outlive it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            command,
            ptr(key),
            ptr(value),
            0,
        )
    };
    Errno::result(ret).map(drop)
}

/// fsmount(2) then move_mount(2): attaches a configured filesystem context on `target`.
pub(crate) fn fsmount_on(fs: &OwnedFd, target: &CStr) -> nix::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    let mnt = fd_result(unsafe {
        libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, 0)
    })?;
    // SAFETY: plain syscall; the strings outlive it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(ret).map(drop)
}

/// The messages a filesystem context logged (the kernel's reason for an EINVAL).
pub(crate) fn fs_context_messages(fs: &OwnedFd) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // Each read returns one message; ENODATA once the log is empty.
    while let Ok(n) = nix::unistd::read(fs, &mut buf) {
        if n == 0 || out.len() >= 8 {
            break;
        }
        out.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
    }
    out
}

/// Whether this process is root in the initial user namespace. Root inside a user
/// namespace (podman's rootless `unshare`, for one) is treated like an ordinary
/// user: it cannot mknod, and /run is not its own.
pub(crate) fn host_root() -> bool {
    static HOST_ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HOST_ROOT.get_or_init(|| {
        nix::unistd::Uid::effective().is_root()
            && std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
                let fields: Vec<&str> = m.split_whitespace().collect();
                fields == ["0", "0", "4294967295"]
            })
    })
}

/// Clears close-on-exec on `count` fds from 3 up: runc's `--preserve-fds`.
pub(crate) fn keep_fds_open(count: u32) -> nix::Result<()> {
    for fd in 3..3 + count as RawFd {
        // SAFETY: F_SETFD on an fd number; EBADF if it is not open.
        Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
    }
    Ok(())
}

/// Gives the process a fresh anonymous session keyring, so the container shares
/// none of the caller's keys. ENOSYS (no keyrings in this kernel) is not an error.
pub(crate) fn join_new_session_keyring() -> nix::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a NULL name makes an anonymous keyring.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    match Errno::result(ret) {
        Ok(_) | Err(Errno::ENOSYS) => Ok(()),
        Err(e) => Err(e),
    }
}
