//! A dnsd on 127.0.0.1, clients bound to other loopback addresses (so that the
//! server sees them as containers), and a small upstream resolver.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dnsd::{Config, Dnsd, Endpoint, LocalSockets, NetworkInfo};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name as DnsName, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long a test waits for any one reply before calling it lost.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct Server {
    pub dnsd: Dnsd,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tasks: Vec<JoinHandle<()>>,
}

/// A dnsd serving `network` on 127.0.0.1 (UDP and TCP, ephemeral ports).
pub async fn start(upstreams: Vec<SocketAddr>, forward_timeout: Duration, network: &str) -> Server {
    let dnsd = Dnsd::new(Config {
        upstreams,
        forward_timeout,
        sockets: Arc::new(LocalSockets),
    });
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let (d1, d2) = (dnsd.clone(), dnsd.clone());
    let (n1, n2) = (network.to_string(), network.to_string());
    let tasks = vec![
        tokio::spawn(async move { d1.serve_udp(udp, n1).await }),
        tokio::spawn(async move { d2.serve_tcp(tcp, n2).await }),
    ];
    Server {
        dnsd,
        udp: udp_addr,
        tcp: tcp_addr,
        tasks,
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn endpoint(container: &str, network: &str, names: &[&str], addrs: &[&str]) -> Endpoint {
    Endpoint {
        container: container.into(),
        network: network.into(),
        names: names.iter().map(|n| n.parse().unwrap()).collect(),
        addresses: addrs.iter().map(|a| ip(a)).collect(),
    }
}

pub fn network(name: &str, internal: bool) -> NetworkInfo {
    NetworkInfo {
        name: name.into(),
        internal,
    }
}

pub fn query(name: &str, qtype: RecordType) -> Message {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(DnsName::from_ascii(name).unwrap(), qtype));
    q
}

pub fn with_edns(mut q: Message, payload: u16) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    q.set_edns(edns);
    q
}

/// A client socket on `from` (a loopback address), connected to `server`.
pub async fn client(from: &str, server: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind((ip(from), 0)).await.unwrap();
    socket.connect(server).await.unwrap();
    socket
}

pub async fn recv(socket: &UdpSocket) -> Message {
    let mut buf = vec![0; 65535];
    let n = timeout(PATIENCE, socket.recv(&mut buf))
        .await
        .expect("no reply")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

pub async fn ask_udp(from: &str, server: SocketAddr, q: &Message) -> Message {
    let socket = client(from, server).await;
    socket.send(&q.to_vec().unwrap()).await.unwrap();
    let reply = recv(&socket).await;
    assert_eq!(reply.id, q.id);
    reply
}

pub async fn tcp_client(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((ip(from), 0).into()).unwrap();
    socket.connect(server).await.unwrap()
}

pub async fn write_tcp(stream: &mut TcpStream, message: &[u8]) {
    let mut framed = (message.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed).await.unwrap();
}

pub async fn read_tcp(stream: &mut TcpStream) -> Vec<u8> {
    timeout(PATIENCE, async {
        let mut len = [0; 2];
        stream.read_exact(&mut len).await?;
        let mut message = vec![0; u16::from_be_bytes(len).into()];
        stream.read_exact(&mut message).await?;
        Ok::<_, std::io::Error>(message)
    })
    .await
    .expect("no reply")
    .unwrap()
}

pub async fn ask_tcp(from: &str, server: SocketAddr, q: &Message) -> Message {
    let mut stream = tcp_client(from, server).await;
    write_tcp(&mut stream, &q.to_vec().unwrap()).await;
    let reply = Message::from_vec(&read_tcp(&mut stream).await).unwrap();
    assert_eq!(reply.id, q.id);
    reply
}

pub fn v4_answers(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

pub const EXAMPLE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// A for example.test., NXDOMAIN for anything else.
    Answer,
    /// Over UDP: TC and no answer, as a large answer would; full over TCP.
    TruncateUdp,
    /// SERVFAIL for everything.
    ServFail,
}

/// A test-only upstream on one port, UDP and TCP. Every query it gets is sent to
/// `seen` (with its transport), so tests wait on real events.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<(&'static str, Message)>,
    pub udp_queries: Arc<AtomicUsize>,
    pub tcp_queries: Arc<AtomicUsize>,
}

fn upstream_reply(query: &Message, behaviour: Behaviour, udp: bool) -> Vec<u8> {
    let mut reply = Message::response(query.id, OpCode::Query);
    reply.metadata.recursion_desired = query.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries = query.queries.clone();
    let q = &query.queries[0];
    match behaviour {
        Behaviour::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
        Behaviour::TruncateUdp if udp => reply.metadata.truncation = true,
        _ if q.name.to_ascii().eq_ignore_ascii_case("example.test.")
            && q.query_type == RecordType::A =>
        {
            reply.add_answer(Record::from_rdata(
                q.name.clone(),
                300,
                RData::A(A(EXAMPLE_ADDR)),
            ));
        }
        _ => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.to_vec().unwrap()
}

pub async fn upstream(behaviour: Behaviour) -> Upstream {
    // UDP and TCP on one port: a truncated answer is retried on the same upstream.
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    let udp_queries = Arc::new(AtomicUsize::new(0));
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let (tx2, count) = (tx.clone(), udp_queries.clone());
    tokio::spawn(async move {
        let mut buf = vec![0; 65535];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            let q = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(q.message_type, MessageType::Query);
            count.fetch_add(1, Ordering::SeqCst);
            let _ = tx2.send(("udp", q.clone()));
            udp.send_to(&upstream_reply(&q, behaviour, true), peer)
                .await
                .unwrap();
        }
    });
    let count = tcp_queries.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let (tx, count) = (tx.clone(), count.clone());
            tokio::spawn(async move {
                let mut len = [0; 2];
                while stream.read_exact(&mut len).await.is_ok() {
                    let mut buf = vec![0; u16::from_be_bytes(len).into()];
                    stream.read_exact(&mut buf).await.unwrap();
                    let q = Message::from_vec(&buf).unwrap();
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(("tcp", q.clone()));
                    write_tcp(&mut stream, &upstream_reply(&q, behaviour, false)).await;
                }
            });
        }
    });
    Upstream {
        addr,
        seen,
        udp_queries,
        tcp_queries,
    }
}

/// A UDP socket that takes queries and never answers.
pub async fn blackhole() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// A loopback UDP port with nothing behind it: a connected socket gets
/// ECONNREFUSED.
pub async fn dead_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}
