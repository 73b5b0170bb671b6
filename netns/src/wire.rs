//! Typed messages over a SOCK_SEQPACKET unix socket: one JSON message per
//! datagram, descriptors attached with SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

const MAX_MESSAGE: usize = 256 * 1024;
pub(crate) const MAX_FDS: usize = 64;

pub(crate) fn send<T: Serialize>(fd: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> nix::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(|_| nix::Error::EINVAL)?;
    if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(nix::Error::EMSGSIZE);
    }
    let iov = [IoSlice::new(&bytes)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
    socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// One message; `None` at end of stream. Received descriptors are close-on-exec.
pub(crate) fn recv<T: DeserializeOwned>(
    fd: BorrowedFd<'_>,
    flags: MsgFlags,
) -> nix::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel just gave us these descriptors.
                fds.extend(
                    received
                        .into_iter()
                        .map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Ok(None);
    }
    let value = serde_json::from_slice(&buf[..len]).map_err(|_| nix::Error::EBADMSG)?;
    Ok(Some((value, fds)))
}

fn seqpacket(nonblocking: bool) -> nix::Result<OwnedFd> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    socket::socket(AddressFamily::Unix, SockType::SeqPacket, flags, None)
}

pub(crate) fn connect(path: &Path) -> nix::Result<OwnedFd> {
    let fd = seqpacket(false)?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

/// A non-blocking listening socket at `path` (a stale socket file is replaced:
/// the caller holds the lock that makes it the only server).
pub(crate) fn listen(path: &Path) -> nix::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let fd = seqpacket(true)?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    socket::listen(&fd, Backlog::new(64)?)?;
    Ok(fd)
}
