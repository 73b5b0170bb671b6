//! rcrun's side of the infra: connecting (starting it when none runs), and the
//! requests. Blocking: the CLI is single-threaded.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::MsgFlags;

use crate::infra::{LOCK, SOCKET};
use crate::proto::{Attachment, Forward, Hello, Probe, Protocol, Request, Response, Status};
use crate::{Error, wire};

/// A connection to the running infra. Containers set up over it are released
/// when it closes (every copy of it, across forks).
pub struct Infra {
    fd: OwnedFd,
    hello: Hello,
}

fn open_lock_file(path: &Path) -> Result<File, Error> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))
}

fn lock(path: &Path) -> Result<File, Error> {
    let file = open_lock_file(path)?;
    file.lock()
        .map_err(|e| Error::io(format!("lock {}", path.display()), e))?;
    Ok(file)
}

impl Infra {
    /// Connects to the infra serving `dir`, if one runs.
    pub fn connect(dir: &Path) -> Result<Option<Infra>, Error> {
        let fd = match wire::connect(&dir.join(SOCKET)) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT | nix::Error::ECONNREFUSED) => return Ok(None),
            Err(e) => return Err(Error::sys("connect to the infra process", e)),
        };
        let mut infra = Infra {
            fd,
            hello: Hello {
                pid: 0,
                egress_off: None,
                host_gateway: None,
            },
        };
        match infra.call(&Request::Hello, &[]) {
            Ok((Response::Hello(hello), _)) => {
                infra.hello = hello;
                Ok(Some(infra))
            }
            // It was exiting as we connected.
            Err(_) => Ok(None),
            Ok((other, _)) => Err(Error::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Connects, starting the infra with `start` when none runs. Starters are
    /// serialised by a lock; `start` returns once the new infra serves.
    pub fn connect_or_start(
        dir: &Path,
        start: impl Fn() -> Result<(), Error>,
    ) -> Result<(Infra, bool), Error> {
        if let Some(infra) = Infra::connect(dir)? {
            return Ok((infra, false));
        }
        let _starting = lock(&dir.join("infra.start"))?;
        if let Some(infra) = Infra::connect(dir)? {
            return Ok((infra, false));
        }
        start()?;
        match Infra::connect(dir)? {
            Some(infra) => Ok((infra, true)),
            None => Err(Error::Infra(format!(
                "the infra process started but does not answer on {}",
                dir.join(SOCKET).display()
            ))),
        }
    }

    /// Takes the infra lock for a new infra process; `None` if one runs. The
    /// returned file must stay open for the infra's whole life.
    pub fn claim(dir: &Path) -> Result<Option<File>, Error> {
        let path = dir.join(LOCK);
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("lock {}", path.display()), e))
            }
        }
    }

    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    fn call(&self, req: &Request, fds: &[i32]) -> Result<(Response, Vec<OwnedFd>), Error> {
        wire::send(self.fd.as_fd(), req, fds)
            .map_err(|e| Error::sys("send a request to the infra process", e))?;
        match wire::recv::<Response>(self.fd.as_fd(), MsgFlags::empty()) {
            Ok(Some((Response::Failed(message), _))) => Err(Error::Infra(message)),
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(Error::Infra(
                "the infra process went away (see infra.log in rcrun's runtime directory)".into(),
            )),
            Err(e) => Err(Error::sys("read the infra process's answer", e)),
        }
    }

    fn done(&self, req: &Request) -> Result<(), Error> {
        match self.call(req, &[])? {
            (Response::Done, _) => Ok(()),
            (other, _) => Err(Error::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Makes `container`'s network namespace with its attachments and published
    /// ports (`sockets` from [`bind_host_port`], one per forward); returns it.
    pub fn setup(
        &self,
        container: &str,
        attachments: Vec<Attachment>,
        forwards: Vec<Forward>,
        sockets: &[OwnedFd],
        host_access: bool,
    ) -> Result<OwnedFd, Error> {
        let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
        let req = Request::Setup {
            container: container.to_string(),
            attachments,
            forwards,
            host_access,
        };
        match self.call(&req, &fds)? {
            (Response::Netns, mut fds) if fds.len() == 1 => Ok(fds.remove(0)),
            (other, _) => Err(Error::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    pub fn attach(&self, container: &str, attachment: Attachment) -> Result<(), Error> {
        self.done(&Request::Attach {
            container: container.to_string(),
            attachment,
        })
    }

    pub fn detach(&self, container: &str, bridge: &str) -> Result<(), Error> {
        self.done(&Request::Detach {
            container: container.to_string(),
            bridge: bridge.to_string(),
        })
    }

    pub fn release(&self, container: &str) -> Result<(), Error> {
        self.done(&Request::Release {
            container: container.to_string(),
        })
    }

    pub fn remove_bridge(&self, bridge: &str) -> Result<(), Error> {
        self.done(&Request::RemoveBridge {
            bridge: bridge.to_string(),
        })
    }

    pub fn status(&self) -> Result<Status, Error> {
        match self.call(&Request::Status, &[])? {
            (Response::Status(s), _) => Ok(s),
            (other, _) => Err(Error::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Tries once, from the infra's namespace (the bridges' side), to reach
    /// `addr` within `timeout`: TCP is open when a connection completes (it is
    /// closed at once, no data sent); UDP is closed only when refused (ICMP port
    /// unreachable) within min(`timeout`, 1s), else open.
    pub fn probe(
        &self,
        protocol: Protocol,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Probe, Error> {
        match self.call(
            &Request::Probe {
                protocol,
                addr,
                timeout,
            },
            &[],
        )? {
            (Response::Probe(p), _) => Ok(p),
            (other, _) => Err(Error::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Publishes host ports (`sockets` from [`bind_host_port`], one per forward)
    /// to container addresses on rcrun networks, whoever set those containers
    /// up. Served until this connection closes; calls accumulate.
    pub fn publish(&self, forwards: Vec<Forward>, sockets: &[OwnedFd]) -> Result<(), Error> {
        let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
        match self.call(&Request::Publish { forwards }, &fds)? {
            (Response::Done, _) => Ok(()),
            (other, _) => Err(Error::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens a published port's socket on the host side (port 0: the kernel picks);
/// returns it with the address it got.
pub fn bind_host_port(
    protocol: Protocol,
    addr: SocketAddr,
) -> Result<(OwnedFd, SocketAddr), Error> {
    let in_use = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::PortInUse { addr, protocol }
        } else {
            Error::io(format!("open host port {addr}/{protocol}"), e)
        }
    };
    match protocol {
        Protocol::Tcp => {
            let listener = std::net::TcpListener::bind(addr).map_err(in_use)?;
            let local = listener.local_addr().map_err(in_use)?;
            Ok((OwnedFd::from(listener), local))
        }
        Protocol::Udp => {
            let socket = std::net::UdpSocket::bind(addr).map_err(in_use)?;
            let local = socket.local_addr().map_err(in_use)?;
            Ok((OwnedFd::from(socket), local))
        }
    }
}
