//! Egress for the infra namespace: slirp4netns, started from the host side for
//! the infra's pid, gives N0 a tap device with a default route out; the firewall
//! masquerades the bridges behind it.

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The tap device slirp4netns makes in N0.
pub(crate) const TAP: &str = "tap0";
/// slirp4netns's gateway: connections to it reach the host's loopback.
pub(crate) const HOST_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Why egress cannot work here, checked before starting anything.
fn unavailable() -> Option<String> {
    if find_in_path("slirp4netns").is_none() {
        return Some(
            "slirp4netns is not installed (Debian/Ubuntu: apt install slirp4netns)".into(),
        );
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(
            "/dev/net/tun is not accessible to this user (it is usually mode 0666; as root: chmod 0666 /dev/net/tun)".into(),
        ),
        Err(e) => Some(format!("/dev/net/tun cannot be opened: {e}")),
    }
}

/// Starts slirp4netns for the namespace of `pid`; it exits when `exit_read` sees
/// end of file (the infra holds the write end). Returns why egress is off instead
/// when it cannot start.
pub(crate) fn start(pid: i32, exit_read: OwnedFd, log: &Path) -> Result<(), String> {
    if let Some(reason) = unavailable() {
        return Err(reason);
    }
    let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("create a pipe for slirp4netns: {e}"))?;
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("open {}: {e}", log.display()))?;
    let exit_fd = exit_read.as_raw_fd();
    let ready_fd = ready_write.as_raw_fd();
    let mut command = Command::new("slirp4netns");
    command
        .args([
            "--configure",
            "--mtu=65520",
            "--exit-fd=3",
            "--ready-fd=4",
            &pid.to_string(),
            TAP,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Move both out of the way first: either may already be 3 or 4, and
            // dup2 onto itself would keep close-on-exec.
            let exit_high = libc::fcntl(exit_fd, libc::F_DUPFD_CLOEXEC, 10);
            let ready_high = libc::fcntl(ready_fd, libc::F_DUPFD_CLOEXEC, 10);
            if libc::setsid() < 0
                || exit_high < 0
                || ready_high < 0
                || libc::dup2(exit_high, 3) < 0
                || libc::dup2(ready_high, 4) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| format!("start slirp4netns: {e}"))?;
    drop(ready_write);
    drop(exit_read);
    let mut answer = Vec::new();
    let _ = std::fs::File::from(ready_read).read_to_end(&mut answer);
    if answer.first() == Some(&b'1') {
        // It runs on, in its own session, until the infra goes away; init reaps it.
        std::mem::forget(child);
        return Ok(());
    }
    let status = child
        .wait_with_output()
        .map(|o| o.status.to_string())
        .unwrap_or_default();
    Err(format!(
        "slirp4netns failed to start ({status}); its messages are in {}",
        log.display()
    ))
}
