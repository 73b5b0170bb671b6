//! Terminals: the container side allocates a pty from its own devpts; rcrun's side
//! copies between its terminal and the pty master.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::pty::{Winsize, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{self, SetArg, Termios};

use crate::error::{FailureKind, SetupFailure};

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);
nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, Winsize);

fn failure(step: &str, errno: Errno) -> SetupFailure {
    SetupFailure {
        step: step.into(),
        detail: errno.desc().to_string(),
        kind: FailureKind::Setup,
    }
}

/// In the container (after pivot_root): a new pty whose slave becomes the
/// controlling terminal and stdio, bound over /dev/console. Returns the master.
pub(crate) fn open_console(size: Option<(u16, u16)>) -> Result<OwnedFd, SetupFailure> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| failure("open /dev/ptmx (is devpts mounted on /dev/pts?)", e))?;
    grantpt(&master).map_err(|e| failure("grantpt", e))?;
    unlockpt(&master).map_err(|e| failure("unlockpt", e))?;
    let slave_path = ptsname_r(&master).map_err(|e| failure("ptsname", e))?;
    if let Some((rows, cols)) = size {
        let ws = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: ioctl with a valid winsize.
        unsafe { set_winsize(master.as_raw_fd(), &ws) }
            .map_err(|e| failure("set the console size", e))?;
    }
    let slave = nix::fcntl::open(
        slave_path.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| failure("open the pty slave", e))?;
    // SAFETY: TIOCSCTTY takes an int argument; we are a session leader.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(failure(
            "make the pty the controlling terminal",
            Errno::last(),
        ));
    }
    if let Ok(console) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/dev/console")
    {
        drop(console);
        let _ = nix::mount::mount(
            Some(slave_path.as_str()),
            "/dev/console",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(failure("attach stdio to the pty", Errno::last()));
        }
    }
    Ok(master.into())
}

/// Puts rcrun's terminal in raw mode while the container owns it; restores on drop.
pub(crate) struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub(crate) fn enter(fd: BorrowedFd<'_>) -> Option<Self> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// (rows, columns) of the terminal on `fd`, if it is one with a size.
fn size_of(fd: BorrowedFd<'_>) -> Option<Winsize> {
    let mut ws = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills a winsize.
    unsafe { get_winsize(fd.as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some(ws)
}

/// Copies rcrun's terminal size onto the pty.
pub(crate) fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    if let Some(ws) = size_of(from) {
        // SAFETY: ioctl on a valid fd with a valid winsize.
        let _ = unsafe { set_winsize(to.as_raw_fd(), &ws) };
    }
}

/// Hands the pty master to a `--console-socket` listener as runc does: one message
/// whose data is the terminal's name and whose SCM_RIGHTS carries the master. Our
/// copy is closed afterwards, so the listener holds the only one.
pub(crate) fn send_console(
    socket: &std::os::unix::net::UnixStream,
    master: OwnedFd,
) -> crate::error::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let name = ptsname_of(&master).unwrap_or_else(|| "/dev/console".into());
    let iov = [std::io::IoSlice::new(name.as_bytes())];
    let fds = [master.as_raw_fd()];
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(crate::error::Error::sys(
                    "send the terminal to the console socket",
                    e,
                ));
            }
            Ok(_) => return Ok(()),
        }
    }
}

/// `/dev/pts/N` of a pty master (TIOCGPTN works from any mount namespace).
fn ptsname_of(master: &OwnedFd) -> Option<String> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    (ret == 0).then(|| format!("/dev/pts/{n}"))
}

/// (rows, columns) of rcrun's own terminal on stdin, if it has one.
pub(crate) fn own_size() -> Option<(u16, u16)> {
    size_of(std::io::stdin().as_fd()).map(|ws| (ws.ws_row, ws.ws_col))
}
