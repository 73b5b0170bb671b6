//! Typed messages between rcrun and the process it is setting up, over a
//! SOCK_SEQPACKET socketpair (one message per datagram, fds attached with
//! SCM_RIGHTS). Both ends are close-on-exec: the parent reads EOF once the
//! container's process has exec'd.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::error::SetupFailure;
use crate::hooks::HookState;

/// From the setup process to rcrun.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToParent {
    /// The intermediate process made a new user namespace and waits for its maps.
    MapsNeeded,
    /// The intermediate process forked the container's init: its pid (rcrun's view).
    InitPid(i32),
    /// Setup is done; the process is waiting to be started (an attached fd is the
    /// pty master when the process has a terminal).
    Ready,
    /// The init waits before pivot_root for rcrun to run prestart and createRuntime
    /// hooks (only when the spec has hooks that need it).
    CreateRuntimeHooks,
    /// Sent before Ready: the attached fd is the seccomp listener for the agent.
    SeccompListener,
    Failed(SetupFailure),
}

/// From rcrun to the setup process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToChild {
    MapsWritten,
    /// Exec the container's process now (foreground run; create uses the fifo).
    Start,
    /// The createRuntime hooks ran: the state for the init's own hooks.
    HooksRan(HookState),
}

pub(crate) struct Channel {
    fd: OwnedFd,
}

const MAX_MESSAGE: usize = 64 * 1024;

pub(crate) fn pair() -> nix::Result<(Channel, Channel)> {
    let (a, b) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    pub(crate) fn send<T: Serialize>(&self, msg: &T, fd: Option<RawFd>) -> nix::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(|_| nix::Error::EINVAL)?;
        let iov = [IoSlice::new(&bytes)];
        let fds;
        let cmsgs: &[ControlMessage] = match fd {
            Some(fd) => {
                fds = [fd];
                &[ControlMessage::ScmRights(&fds)]
            }
            None => &[],
        };
        loop {
            match socket::sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None) {
                Err(nix::Error::EINTR) => continue,
                other => return other.map(drop),
            }
        }
    }

    /// Receives one message. `Ok(None)` is EOF: the other side exec'd or exited.
    pub(crate) fn recv<T: for<'de> Deserialize<'de>>(
        &self,
    ) -> nix::Result<Option<(T, Option<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg_space = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(msg) => {
                    let mut received = None;
                    for c in msg.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for fd in fds {
                                // SAFETY: the kernel installed this fd for us.
                                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                                received.get_or_insert(owned);
                            }
                        }
                    }
                    break (msg.bytes, received);
                }
            }
        };
        if len == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..len]).map_err(|_| nix::Error::EBADMSG)?;
        Ok(Some((msg, fd)))
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
