//! netns::nft against the kernel. Each test runs again in a child process of this binary
//! that has a network namespace of its own (inside a new user namespace when not root), so
//! nothing touches the host's namespace and everything goes when the child exits
//! ([`common::isolated`]).
//! The table is read back with nf_tables netlink dumps written here, apart from the module.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use netns::nft::{self, NetworkRules, NftError, Ruleset};
use nix::errno::Errno;
use nix::sched::{CloneFlags, unshare};

mod common;
use common::isolated;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

// ---- reading nf_tables back ----

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFPROTO_INET: u8 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

fn nl_socket() -> OwnedFd {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .unwrap()
}

fn put_msg(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    buf.extend((20 + attrs.len() as u32).to_ne_bytes());
    buf.extend(ty.to_ne_bytes());
    buf.extend(flags.to_ne_bytes());
    buf.extend(seq.to_ne_bytes());
    buf.extend(0u32.to_ne_bytes());
    buf.extend([family, 0]);
    buf.extend(res_id.to_be_bytes());
    buf.extend(attrs);
}

fn put_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    buf.extend((4 + data.len() as u16).to_ne_bytes());
    buf.extend(ty.to_ne_bytes());
    buf.extend(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Sends one message and collects the replies, as (type, payload after nfgenmsg), until
/// the dump ends or the request is acked.
fn request(fd: &OwnedFd, msg: &[u8]) -> Vec<(u16, Vec<u8>)> {
    sendto(
        fd.as_raw_fd(),
        msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        let mut data = &buf[..n];
        while data.len() >= 16 {
            let len = u32::from_ne_bytes(data[..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes([data[4], data[5]]);
            match ty {
                NLMSG_DONE => return out,
                NLMSG_ERROR => {
                    let err = i32::from_ne_bytes(data[16..20].try_into().unwrap());
                    assert_eq!(err, 0, "netlink request failed: {}", Errno::from_raw(-err));
                    return out;
                }
                _ => out.push((ty, data[20..len].to_vec())),
            }
            data = &data[len.next_multiple_of(4).min(data.len())..];
        }
    }
}

fn dump(ty: u16) -> Vec<BTreeMap<u16, Vec<u8>>> {
    let fd = nl_socket();
    let mut msg = Vec::new();
    put_msg(
        &mut msg,
        (NFNL_SUBSYS_NFTABLES << 8) | ty,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        NFPROTO_INET,
        0,
        &[],
    );
    request(&fd, &msg)
        .into_iter()
        .map(|(_, payload)| attrs(&payload))
        .collect()
}

fn attrs(mut data: &[u8]) -> BTreeMap<u16, Vec<u8>> {
    let mut out = BTreeMap::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        out.insert(ty, data[4..len].to_vec());
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    out
}

fn list(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        out.push(data[4..len].to_vec());
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    out
}

fn string(v: &[u8]) -> String {
    String::from_utf8(v.strip_suffix(b"\0").unwrap_or(v).to_vec()).unwrap()
}

fn be32(v: &[u8]) -> u32 {
    u32::from_be_bytes(v.try_into().unwrap())
}

fn tables() -> Vec<String> {
    dump(NFT_MSG_GETTABLE)
        .iter()
        .map(|t| string(&t[&1]))
        .collect()
}

/// The chains of table rcrun: name -> (type, hook, priority, policy).
fn chains() -> BTreeMap<String, (String, u32, i32, u32)> {
    dump(NFT_MSG_GETCHAIN)
        .into_iter()
        .filter(|c| string(&c[&1]) == "rcrun")
        .map(|c| {
            let hook = attrs(&c[&4]);
            (
                string(&c[&3]),
                (
                    string(&c[&7]),
                    be32(&hook[&1]),
                    be32(&hook[&2]) as i32,
                    be32(&c[&5]),
                ),
            )
        })
        .collect()
}

/// The rules of table rcrun: chain -> the expression names of each rule, in order.
fn rules() -> BTreeMap<String, Vec<Vec<String>>> {
    let mut out: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for r in dump(NFT_MSG_GETRULE) {
        if string(&r[&1]) != "rcrun" {
            continue;
        }
        let names = list(&r[&4]).iter().map(|e| string(&attrs(e)[&1])).collect();
        out.entry(string(&r[&2])).or_default().push(names);
    }
    out
}

fn counts() -> BTreeMap<String, usize> {
    rules().into_iter().map(|(c, r)| (c, r.len())).collect()
}

fn net(bridge: &str, internal: bool, subnets: &[(&str, u8)]) -> NetworkRules {
    NetworkRules {
        bridge: bridge.into(),
        internal,
        subnets: subnets
            .iter()
            .map(|(a, p)| (a.parse().unwrap(), *p))
            .collect(),
    }
}

fn full() -> Ruleset {
    Ruleset {
        egress: Some("tap0".into()),
        networks: vec![
            net("rcbr0", false, &[("10.88.0.0", 24), ("fd00:88::", 64)]),
            net("rcbr1", true, &[("10.88.1.0", 24)]),
        ],
        host_gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
        host_access: vec!["10.88.0.2".parse().unwrap(), "fd00:88::2".parse().unwrap()],
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn map(v: &[(&str, usize)]) -> BTreeMap<String, usize> {
    v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

#[test]
fn apply_installs_the_table() {
    isolated("apply_installs_the_table", &[], || {
        assert!(tables().is_empty());
        nft::apply(&full()).unwrap();
        assert_eq!(tables(), ["rcrun"]);
        let c = chains();
        assert_eq!(c["forward"], ("filter".into(), 2, 0, 1));
        assert_eq!(c["postrouting"], ("nat".into(), 4, 100, 1));
        // replies for transparent sockets (published ports keeping the client's address)
        assert_eq!(c["prerouting"], ("filter".into(), 0, -150, 1));
        assert_eq!(
            rules()["prerouting"],
            [strs(&["socket", "cmp", "immediate", "meta"])]
        );
        assert_eq!(c.len(), 3);

        let r = rules();
        let iif_oif_accept = strs(&["meta", "cmp", "meta", "cmp", "immediate"]);
        let fwd = &r["forward"];
        assert_eq!(fwd.len(), 8, "{fwd:?}");
        assert_eq!(fwd[0], iif_oif_accept);
        assert_eq!(
            fwd[2],
            strs(&[
                "meta",
                "cmp",
                "payload",
                "cmp",
                "payload",
                "cmp",
                "immediate"
            ])
        );
        assert_eq!(
            fwd[3],
            strs(&["meta", "cmp", "payload", "cmp", "immediate"])
        );
        assert_eq!(fwd[4], iif_oif_accept);
        assert_eq!(
            fwd[5],
            strs(&[
                "meta",
                "cmp",
                "meta",
                "cmp",
                "ct",
                "bitwise",
                "cmp",
                "immediate"
            ])
        );
        assert_eq!(fwd[6], strs(&["meta", "cmp", "immediate"]));
        assert_eq!(fwd[7], strs(&["meta", "cmp", "immediate"]));
        let masq = strs(&[
            "meta", "cmp", "payload", "bitwise", "cmp", "meta", "cmp", "masq",
        ]);
        assert_eq!(r["postrouting"], [masq.clone(), masq]);
    });
}

#[test]
fn apply_is_idempotent_and_replaces() {
    isolated("apply_is_idempotent_and_replaces", &[], || {
        nft::apply(&full()).unwrap();
        let first = rules();
        nft::apply(&full()).unwrap();
        assert_eq!(rules(), first);
        assert_eq!(
            counts(),
            map(&[("forward", 8), ("postrouting", 2), ("prerouting", 1)])
        );
        assert_eq!(tables(), ["rcrun"]);

        // No egress, no host gateway, three networks: isolation only.
        let other = Ruleset {
            networks: vec![
                net("rcbr0", false, &[("10.88.0.0", 24)]),
                net("rcbr5", false, &[("10.88.5.0", 24)]),
                net("rcbr12", true, &[]),
            ],
            ..Default::default()
        };
        nft::apply(&other).unwrap();
        assert_eq!(counts(), map(&[("forward", 5), ("prerouting", 1)]));
        assert_eq!(chains().len(), 3);

        // A larger one: many networks with v4 and v6 subnets, in one batch.
        let big = Ruleset {
            egress: Some("tap0".into()),
            networks: (0..40)
                .map(|i| NetworkRules {
                    bridge: format!("rcbr{i}"),
                    internal: i % 4 == 3,
                    subnets: vec![
                        (IpAddr::V4(Ipv4Addr::new(10, 89, i, 0)), 24),
                        (format!("fd00:89:{i}::").parse().unwrap(), 64),
                    ],
                })
                .collect(),
            host_gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            host_access: (0..20)
                .map(|i| IpAddr::V4(Ipv4Addr::new(10, 89, i, 2)))
                .collect(),
        };
        nft::apply(&big).unwrap();
        // 40 same-bridge + 20 host access + 1 drop + 2 * 30 egress + 2; 30 * 2 masquerades.
        assert_eq!(
            counts(),
            map(&[("forward", 123), ("postrouting", 60), ("prerouting", 1)])
        );

        nft::apply(&full()).unwrap();
        assert_eq!(rules(), first);
    });
}

#[test]
fn remove_deletes_the_table() {
    isolated("remove_deletes_the_table", &[], || {
        // Nothing there yet: fine.
        nft::remove().unwrap();
        nft::apply(&full()).unwrap();
        nft::remove().unwrap();
        assert!(tables().is_empty());
        assert!(rules().is_empty());
        nft::remove().unwrap();
        nft::apply(&Ruleset::default()).unwrap();
        assert_eq!(counts(), map(&[("forward", 2), ("prerouting", 1)]));
        nft::remove().unwrap();
        assert!(tables().is_empty());
    });
}

/// The kernel's refusal is reported with the step it refused, and the batch changes nothing.
#[test]
fn kernel_errors_name_the_step() {
    isolated("kernel_errors_name_the_step", &[], || {
        // Another socket creates `inet rcrun` as its owner (NFT_TABLE_F_OWNER): nobody
        // else may touch it while that socket is open.
        let owner = nl_socket();
        let mut attrs = Vec::new();
        put_attr(&mut attrs, 1, b"rcrun\0"); // NFTA_TABLE_NAME
        put_attr(&mut attrs, 2, &2u32.to_be_bytes()); // NFTA_TABLE_FLAGS: owner
        let mut batch = Vec::new();
        put_msg(
            &mut batch,
            0x10,
            NLM_F_REQUEST,
            1,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        put_msg(
            &mut batch,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            2,
            NFPROTO_INET,
            0,
            &attrs,
        );
        put_msg(
            &mut batch,
            0x11,
            NLM_F_REQUEST,
            3,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        request(&owner, &batch);
        assert_eq!(tables(), ["rcrun"]);

        let err = nft::apply(&full()).unwrap_err();
        match &err {
            NftError::Netlink { step, errno } => {
                assert_eq!(*errno, Errno::EPERM, "{err}");
                assert_eq!(step, "add table inet rcrun", "{err}");
            }
            _ => panic!("{err}"),
        }
        assert!(err.to_string().contains("EPERM"), "{err}");
        assert!(matches!(
            nft::remove(),
            Err(NftError::Netlink {
                errno: Errno::EPERM,
                ..
            })
        ));
        // Nothing of the failed batches landed.
        assert!(chains().is_empty());

        // The owner's table goes with its socket.
        drop(owner);
        assert!(tables().is_empty());
        nft::apply(&full()).unwrap();
        assert_eq!(
            counts(),
            map(&[("forward", 8), ("postrouting", 2), ("prerouting", 1)])
        );
    });
}

// ---- forwarding through the firewall ----

/// Runs `ip` in the calling thread's network namespace.
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("ip {args}: {e} (iproute2 is needed for this test)"));
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace of its own, held by a thread that runs jobs in it.
struct Ns {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    path: String,
}

impl Ns {
    fn new() -> Ns {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tid_tx, tid_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).unwrap();
            tid_tx.send(nix::unistd::gettid()).unwrap();
            for job in rx {
                job();
            }
        });
        let tid = tid_rx.recv().unwrap();
        Ns {
            jobs: Some(jobs),
            thread: Some(thread),
            path: format!("/proc/{}/task/{tid}/ns/net", std::process::id()),
        }
    }

    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || tx.send(f()).unwrap());
        self.jobs.as_ref().unwrap().send(job).unwrap();
        rx.recv().unwrap()
    }

    fn ip(&self, args: &'static str) {
        self.run(move || ip(args));
    }

    /// Connects to `addr` from this namespace; Some(the source address the server saw).
    fn connect(&self, addr: &str) -> Option<IpAddr> {
        let addr: SocketAddr = format!("{addr}:{PORT}").parse().unwrap();
        self.run(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut seen = String::new();
            s.read_to_string(&mut seen).ok()?;
            seen.parse().ok()
        })
    }

    /// A server in this namespace that tells each client its address.
    fn serve(&self) -> Server {
        let listener = self.run(|| TcpListener::bind(("0.0.0.0", PORT)).unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const PORT: u16 = 7000;

struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Plugs `ns` into this namespace by a veth: `host` here (on `bridge` if given), eth0 there.
fn plug(ns: &Ns, host: &str, bridge: Option<&str>) {
    ip(&format!(
        "link add {host} type veth peer name eth0 netns {}",
        ns.path
    ));
    match bridge {
        Some(b) => ip(&format!("link set {host} master {b} up")),
        None => ip(&format!("link set {host} up")),
    }
    ns.ip("link set lo up");
    ns.ip("link set eth0 up");
}

fn v4(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// Containers a (10.88.0.2) and a2 (10.88.0.3) on rcbr0, b (10.88.1.2) on the internal
/// rcbr1, and the outside e (10.0.2.2 = host gateway, 10.0.2.3) behind tap0 (10.0.2.100).
#[test]
fn forwarding_through_the_firewall() {
    isolated("forwarding_through_the_firewall", &[], || {
        ip("link set lo up");
        for (br, addr) in [("rcbr0", "10.88.0.1/24"), ("rcbr1", "10.88.1.1/24")] {
            ip(&format!("link add {br} type bridge"));
            ip(&format!("addr add {addr} dev {br}"));
            ip(&format!("link set {br} up"));
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();

        let (a, a2, b, e) = (Ns::new(), Ns::new(), Ns::new(), Ns::new());
        plug(&a, "veth-a", Some("rcbr0"));
        a.ip("addr add 10.88.0.2/24 dev eth0");
        a.ip("route add default via 10.88.0.1");
        plug(&a2, "veth-a2", Some("rcbr0"));
        a2.ip("addr add 10.88.0.3/24 dev eth0");
        a2.ip("route add default via 10.88.0.1");
        plug(&b, "veth-b", Some("rcbr1"));
        b.ip("addr add 10.88.1.2/24 dev eth0");
        b.ip("route add default via 10.88.1.1");
        plug(&e, "tap0", None);
        ip("addr add 10.0.2.100/24 dev tap0");
        e.ip("addr add 10.0.2.2/24 dev eth0");
        e.ip("addr add 10.0.2.3/24 dev eth0");
        e.ip("route add 10.88.0.0/16 via 10.0.2.100");
        let _servers = [a.serve(), a2.serve(), b.serve(), e.serve()];

        // No firewall: plain forwarding between everything, no NAT.
        assert_eq!(a.connect("10.88.1.2"), v4("10.88.0.2"));
        assert_eq!(b.connect("10.0.2.3"), v4("10.88.1.2"));

        nft::apply(&Ruleset {
            egress: Some("tap0".into()),
            networks: vec![
                net("rcbr0", false, &[("10.88.0.0", 24)]),
                net("rcbr1", true, &[("10.88.1.0", 24)]),
            ],
            host_gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            host_access: vec!["10.88.0.2".parse().unwrap()],
        })
        .unwrap();
        // Within a network.
        assert_eq!(a.connect("10.88.0.3"), v4("10.88.0.2"));
        assert_eq!(a2.connect("10.88.0.2"), v4("10.88.0.3"));
        // Across networks: no.
        assert_eq!(a.connect("10.88.1.2"), None);
        assert_eq!(b.connect("10.88.0.2"), None);
        // Out through the egress, masqueraded; the host gateway only for host_access.
        assert_eq!(a2.connect("10.0.2.3"), v4("10.0.2.100"));
        assert_eq!(a.connect("10.0.2.2"), v4("10.0.2.100"));
        assert_eq!(a2.connect("10.0.2.2"), None);
        // The internal network stays inside; nothing comes in from the outside.
        assert_eq!(b.connect("10.0.2.3"), None);
        assert_eq!(e.connect("10.88.0.2"), None);

        nft::remove().unwrap();
        assert_eq!(a.connect("10.88.1.2"), v4("10.88.0.2"));
        assert_eq!(b.connect("10.0.2.3"), v4("10.88.1.2"));
    });
}
