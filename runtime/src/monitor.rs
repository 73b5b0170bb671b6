//! A foreground container's monitor: rcrun forwards signals to the container's
//! process, proxies its terminal, reaps it and returns its exit code.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::tty;

/// Signals rcrun passes on to the container, as docker's sig-proxy does.
const FORWARDED: [Signal; 8] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGCONT,
];

/// Blocks the forwarded signals plus SIGCHLD and SIGWINCH so they queue for the
/// signalfd; must happen before the container's process is forked so none is lost.
pub(crate) struct BlockedSignals {
    pub original: SigSet,
    set: SigSet,
}

impl BlockedSignals {
    pub(crate) fn block() -> Result<Self> {
        let mut set = SigSet::empty();
        for s in FORWARDED {
            set.add(s);
        }
        set.add(Signal::SIGCHLD);
        set.add(Signal::SIGWINCH);
        let mut original = SigSet::empty();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut original))
            .map_err(|e| Error::sys("block signals", e))?;
        Ok(BlockedSignals { original, set })
    }

    pub(crate) fn current() -> Self {
        let original = SigSet::thread_get_mask().unwrap_or_else(|_| SigSet::empty());
        BlockedSignals {
            original,
            set: SigSet::empty(),
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.original), None);
    }
}

fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

fn write_all(fd: impl AsFd, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        match nix::unistd::write(&fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(_) => return false,
        }
    }
    true
}

/// Waits for `pid` (a child of rcrun), forwarding signals and proxying `pty`.
/// Returns the exit code, 128+N when killed by signal N.
pub(crate) fn wait(pid: Pid, pty: Option<OwnedFd>, signals: &BlockedSignals) -> Result<i32> {
    let sfd = SignalFd::with_flags(&signals.set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::sys("create a signalfd", e))?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let _raw = pty
        .as_ref()
        .and_then(|_| tty::RawMode::enter(stdin.as_fd()));
    if let Some(master) = &pty {
        tty::copy_window_size(stdin.as_fd(), master.as_fd());
    }
    let mut stdin_open = pty.is_some();
    let mut master_open = pty.is_some();
    let mut buf = [0u8; 16 * 1024];
    loop {
        // Reap first: SIGCHLD may have arrived before the signalfd existed.
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    if let Some(master) = pty.as_ref().filter(|_| master_open) {
                        drain(master, &stdout, &mut buf);
                    }
                    return Ok(code);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("wait for the container", e)),
        }
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let master_idx = pty.as_ref().filter(|_| master_open).map(|m| {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let stdin_idx = stdin_open.then(|| {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll", e)),
            Ok(_) => {}
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let sig_ready = ready(0);
        let master_ready = master_idx.is_some_and(ready);
        let stdin_ready = stdin_idx.is_some_and(ready);
        drop(fds);
        if sig_ready {
            while let Ok(Some(info)) = sfd.read_signal() {
                let sig = info.ssi_signo as i32;
                if sig == libc::SIGCHLD {
                    continue;
                }
                if sig == libc::SIGWINCH {
                    if let Some(master) = &pty {
                        tty::copy_window_size(stdin.as_fd(), master.as_fd());
                    }
                    continue;
                }
                if let Ok(signal) = Signal::try_from(sig) {
                    let _ = kill(pid, signal);
                }
            }
        }
        if master_ready && let Some(master) = &pty {
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(Errno::EIO) => master_open = false,
                Ok(n) => {
                    write_all(&stdout, &buf[..n]);
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => master_open = false,
            }
        }
        if stdin_ready && let Some(master) = &pty {
            match nix::unistd::read(&stdin, &mut buf) {
                Ok(0) => stdin_open = false,
                Ok(n) => {
                    if !write_all(master, &buf[..n]) {
                        stdin_open = false;
                    }
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => stdin_open = false,
            }
        }
    }
}

/// Copies what the container wrote to its terminal before it exited.
fn drain(master: &OwnedFd, stdout: &std::io::Stdout, buf: &mut [u8]) {
    let _ = nix::fcntl::fcntl(
        master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    while let Ok(n) = nix::unistd::read(master, buf) {
        if n == 0 || !write_all(stdout, &buf[..n]) {
            break;
        }
    }
}
