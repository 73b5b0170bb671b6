//! The infra process against the kernel, through `netns::Infra`. Each test runs in a
//! child process of this binary with namespaces of its own ([`common::isolated`]), forks
//! an infra there as `rcrun __infra` does (infra_child / infra_parent), and enters the
//! container namespaces Setup returns to run servers in them. The child's namespace
//! stands for the host: published ports are bound there.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use netns::{Attachment, BridgeSpec, Error, Forward, Infra, Probe, Protocol, bind_host_port};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};

mod common;
use common::isolated;

/// No slirp4netns: egress is not under test, and nothing may reach out.
const NO_EGRESS: &[(&str, &str)] = &[("PATH", "/nonexistent")];

const GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 89, 0, 1));
const C1: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 89, 0, 2));
/// In the subnet, but no one answers ARP for it.
const NOBODY: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 89, 0, 3));
const SECOND: Duration = Duration::from_secs(1);

/// An infra process forked from this one, killed when dropped.
struct RunningInfra {
    pid: Pid,
    dir: tempfile::TempDir,
}

impl RunningInfra {
    fn start() -> RunningInfra {
        loopback_up();
        let dir = tempfile::tempdir().unwrap();
        let pair = netns::sync_pair().unwrap();
        // SAFETY: libtest's other thread only waits for this one; the child runs the
        // infra and leaves with _exit, never back into the harness.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                drop(pair.parent);
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    netns::infra_child(pair.child, dir.path(), Duration::from_secs(60))
                }))
                .unwrap_or(101);
                // SAFETY: ends this process without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(pair.child);
                let started = netns::infra_parent(pair.parent, child, dir.path());
                let infra = RunningInfra { pid: child, dir };
                started.expect("the infra starts");
                infra
            }
        }
    }

    fn connect(&self) -> Infra {
        Infra::connect(self.dir.path())
            .unwrap()
            .expect("the infra serves")
    }
}

impl Drop for RunningInfra {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// Brings up this namespace's loopback, where the "host" ports are published.
fn loopback_up() {
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    // SAFETY: an ifreq naming "lo", read and written back by the kernel.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
            *dst = *src as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req),
            0,
            "bring lo up: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Sets up container `id` at `addr` on network "t" (rcbr0, 10.89.0.0/24); returns its
/// network namespace.
fn setup(infra: &Infra, id: &str, addr: IpAddr) -> OwnedFd {
    let network = BridgeSpec {
        name: "t".into(),
        bridge: "rcbr0".into(),
        subnets: vec![("10.89.0.0/24".parse().unwrap(), GATEWAY)],
        internal: false,
        mtu: 1500,
    };
    let attachment = Attachment {
        network,
        ifname: "eth0".into(),
        addresses: vec![addr],
        default_route: true,
        dns_names: vec![id.into()],
    };
    infra
        .setup(id, vec![attachment], vec![], &[], false)
        .unwrap()
}

/// Runs `f` on a thread inside the network namespace `ns`.
fn in_netns<R: Send>(ns: &OwnedFd, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// Sets up c1 and binds, inside it, TCP port 7000 and UDP port 7001.
fn c1_listening(infra: &Infra) -> (TcpListener, UdpSocket) {
    let ns = setup(infra, "c1", C1);
    in_netns(&ns, || {
        (
            TcpListener::bind((C1, 7000)).unwrap(),
            UdpSocket::bind((C1, 7001)).unwrap(),
        )
    })
}

fn forward(protocol: Protocol, host: SocketAddr, container: SocketAddr) -> Forward {
    Forward {
        protocol,
        host,
        container,
    }
}

fn closed(reason: &str) -> Probe {
    Probe::Closed(reason.into())
}

/// The infra's own message for a request it turned down.
fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::Infra(message)) => message,
        other => panic!("expected the infra to refuse, got {other:?}"),
    }
}

#[test]
fn probe_from_the_bridge_side() {
    isolated("probe_from_the_bridge_side", NO_EGRESS, || {
        let infra = RunningInfra::start();
        let a = infra.connect();
        let (tcp, udp) = c1_listening(&a);
        let at = |port| SocketAddr::new(C1, port);

        assert_eq!(
            a.probe(Protocol::Tcp, at(7000), SECOND).unwrap(),
            Probe::Open
        );
        // From the bridge's side, and closed at once without a byte.
        let (mut conn, peer) = tcp.accept().unwrap();
        assert_eq!(peer.ip(), GATEWAY);
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        assert_eq!(conn.read_to_end(&mut got).unwrap(), 0);
        assert_eq!(
            a.probe(Protocol::Tcp, at(7002), SECOND).unwrap(),
            closed("connection refused")
        );

        assert_eq!(
            a.probe(Protocol::Udp, at(7001), SECOND).unwrap(),
            Probe::Open
        );
        // One empty datagram.
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let (len, from) = udp.recv_from(&mut buf).unwrap();
        assert_eq!((len, from.ip()), (0, GATEWAY));
        assert_eq!(
            a.probe(Protocol::Udp, at(7003), SECOND).unwrap(),
            closed("connection refused")
        );

        let short = Duration::from_millis(300);
        assert_eq!(
            a.probe(Protocol::Tcp, SocketAddr::new(NOBODY, 7000), short)
                .unwrap(),
            closed("no answer within 300ms")
        );

        for (addr, timeout) in [
            (at(7000), Duration::ZERO),
            (at(7000), Duration::from_secs(3600)),
            (at(0), SECOND),
            ("0.0.0.0:7000".parse().unwrap(), SECOND),
        ] {
            let message = refusal(a.probe(Protocol::Tcp, addr, timeout));
            assert!(
                message.starts_with(&format!("probe {addr}/tcp: ")),
                "{message}"
            );
        }
        // The connection still serves after a refused request.
        assert_eq!(
            a.probe(Protocol::Tcp, at(7000), SECOND).unwrap(),
            Probe::Open
        );
    });
}

#[test]
fn a_probe_does_not_hold_up_other_connections() {
    isolated(
        "a_probe_does_not_hold_up_other_connections",
        NO_EGRESS,
        || {
            let infra = RunningInfra::start();
            let a = infra.connect();
            let b = infra.connect();
            setup(&a, "c1", C1);
            let wait = Duration::from_secs(2);
            std::thread::scope(|s| {
                // ARP for NOBODY gives up after about 3 s: the probe waits its whole 2 s.
                let probing =
                    s.spawn(|| b.probe(Protocol::Tcp, SocketAddr::new(NOBODY, 7000), wait));
                std::thread::sleep(Duration::from_millis(300));
                let started = Instant::now();
                a.status().unwrap();
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "status took {:?} while another connection probed",
                    started.elapsed()
                );
                assert!(!probing.is_finished());
                assert_eq!(
                    probing.join().unwrap().unwrap(),
                    closed("no answer within 2s")
                );
            });
        },
    );
}

/// Serves `tcp`: a greeting line, then an echo; and echoes `udp`.
fn serve_echo(tcp: TcpListener, udp: UdpSocket) {
    std::thread::spawn(move || {
        for mut conn in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                conn.write_all(b"c1\n")?;
                let mut buf = [0u8; 512];
                loop {
                    let n = conn.read(&mut buf)?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    conn.write_all(&buf[..n])?;
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
}

/// Waits until the infra lists no published port.
fn wait_unpublished(infra: &Infra) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !infra.status().unwrap().published.is_empty() {
        assert!(
            Instant::now() < deadline,
            "published ports outlived their connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn publish_serves_until_its_connection_closes() {
    isolated(
        "publish_serves_until_its_connection_closes",
        NO_EGRESS,
        || {
            let infra = RunningInfra::start();
            let a = infra.connect();
            let (tcp, udp) = c1_listening(&a);
            serve_echo(tcp, udp);

            // A second connection publishes ports of a's container, in two calls.
            let b = infra.connect();
            let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let (socket, tcp_host) = bind_host_port(Protocol::Tcp, localhost).unwrap();
            let tcp_forward = forward(Protocol::Tcp, tcp_host, SocketAddr::new(C1, 7000));
            b.publish(vec![tcp_forward.clone()], &[socket]).unwrap();
            let (socket, udp_host) = bind_host_port(Protocol::Udp, localhost).unwrap();
            let udp_forward = forward(Protocol::Udp, udp_host, SocketAddr::new(C1, 7001));
            b.publish(vec![udp_forward.clone()], &[socket]).unwrap();
            let status = a.status().unwrap();
            assert_eq!(status.published, vec![tcp_forward, udp_forward]);
            assert!(status.containers[0].forwards.is_empty());

            let mut conn = TcpStream::connect(tcp_host).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut greeting = String::new();
            BufReader::new(&conn).read_line(&mut greeting).unwrap();
            assert_eq!(greeting, "c1\n");
            conn.write_all(b"ping").unwrap();
            let mut echoed = [0u8; 4];
            conn.read_exact(&mut echoed).unwrap();
            assert_eq!(&echoed, b"ping");

            let client = UdpSocket::bind(localhost).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            client.send_to(b"hi", udp_host).unwrap();
            let mut buf = [0u8; 16];
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&b"hi"[..], udp_host));

            drop(b);
            wait_unpublished(&a);
            let refused = TcpStream::connect(tcp_host).unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
            // The connection made through the port ends with it.
            let mut rest = Vec::new();
            match conn.read_to_end(&mut rest) {
                Ok(_) => {}
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            }
            // a's container is not b's to take away.
            let status = a.status().unwrap();
            assert_eq!(status.containers.len(), 1);
            assert_eq!(status.containers[0].id, "c1");
        },
    );
}

#[test]
fn publish_only_to_rcrun_networks() {
    isolated("publish_only_to_rcrun_networks", NO_EGRESS, || {
        let infra = RunningInfra::start();
        let a = infra.connect();
        let b = infra.connect();
        let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let publish = |container: SocketAddr| {
            let (socket, host) = bind_host_port(Protocol::Tcp, localhost).unwrap();
            b.publish(vec![forward(Protocol::Tcp, host, container)], &[socket])
        };

        // No network yet.
        let message = refusal(publish(SocketAddr::new(C1, 7000)));
        assert!(
            message.ends_with("10.89.0.2 is on no rcrun network"),
            "{message}"
        );
        setup(&a, "c1", C1);
        let message = refusal(publish("10.99.0.2:7000".parse().unwrap()));
        assert!(
            message.ends_with("10.99.0.2 is on no rcrun network"),
            "{message}"
        );
        let message = refusal(publish(SocketAddr::new(C1, 0)));
        assert!(message.contains("port 0"), "{message}");
        // One socket per forward.
        let unsent = forward(
            Protocol::Tcp,
            "127.0.0.1:1".parse().unwrap(),
            SocketAddr::new(C1, 7000),
        );
        let message = refusal(b.publish(vec![unsent], &[]));
        assert!(message.contains("came with 0 sockets"), "{message}");
        // A socket of the wrong kind.
        let (udp, host) = bind_host_port(Protocol::Udp, localhost).unwrap();
        let mismatched = forward(Protocol::Tcp, host, SocketAddr::new(C1, 7000));
        let message = refusal(b.publish(vec![mismatched], &[udp]));
        assert!(message.contains("is not a tcp socket"), "{message}");
        assert!(a.status().unwrap().published.is_empty());

        // On the network, it is accepted.
        publish(SocketAddr::new(C1, 7000)).unwrap();
        assert_eq!(a.status().unwrap().published.len(), 1);
    });
}
