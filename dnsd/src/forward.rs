//! Asking the upstream resolvers.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use hickory_proto::op::{Header, Message, MessageType, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};

use crate::answer::Request;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Makes unconnected sockets for talking to upstreams. In production they are
/// made on the host side (host network namespace) and passed in; a socket keeps
/// the netns it was created in, so dnsd just connect()s them. Must be cheap-ish
/// and synchronous.
pub trait UpstreamSockets: Send + Sync + 'static {
    fn socket(&self, family: Family, transport: Transport) -> io::Result<OwnedFd>;
}

/// Sockets of the current network namespace (CLOEXEC, NONBLOCK).
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalSockets;

impl UpstreamSockets for LocalSockets {
    fn socket(&self, family: Family, transport: Transport) -> io::Result<OwnedFd> {
        match transport {
            Transport::Udp => {
                let any: SocketAddr = match family {
                    Family::V4 => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    Family::V6 => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let socket = std::net::UdpSocket::bind(any)?;
                socket.set_nonblocking(true)?;
                Ok(socket.into())
            }
            Transport::Tcp => {
                let socket = match family {
                    Family::V4 => TcpSocket::new_v4()?,
                    Family::V6 => TcpSocket::new_v6()?,
                };
                // dup (F_DUPFD_CLOEXEC) rather than unsafe fd juggling; the
                // original closes here.
                socket.as_fd().try_clone_to_owned()
            }
        }
    }
}

fn family(addr: SocketAddr) -> Family {
    if addr.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// The upstream answered SERVFAIL or REFUSED, or something unusable: next one.
fn unusable() -> io::Error {
    io::Error::other("unusable answer")
}

/// Asks `upstreams` in order for the answer to the client's query, passed on as
/// it came but for the id; the reply keeps the upstream's id, for the caller to
/// map back. `total` bounds the whole exchange and is spread over the upstreams not
/// yet tried, so one that never answers leaves time for the next.
pub(crate) async fn forward(
    sockets: &dyn UpstreamSockets,
    upstreams: &[SocketAddr],
    total: Duration,
    request: &Request,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + total;
    for (i, &upstream) in upstreams.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let budget = left / u32::try_from(upstreams.len() - i).unwrap_or(u32::MAX);
        if let Ok(Ok(reply)) = timeout(budget, attempt(sockets, upstream, request)).await {
            return Some(reply);
        }
    }
    None
}

async fn attempt(
    sockets: &dyn UpstreamSockets,
    upstream: SocketAddr,
    request: &Request,
) -> io::Result<Vec<u8>> {
    let question = &request.query.queries;
    // An upstream keeps UDP answers within the query's EDNS size (512 without).
    let udp_size = usize::from(request.query.max_payload());
    // A fresh random id for every attempt, so that replies cannot be guessed.
    let id: u16 = rand::random();
    let mut query = request.bytes.clone();
    query[..2].copy_from_slice(&id.to_be_bytes());

    let mut reply = udp_exchange(sockets, upstream, &query, id, question, udp_size).await?;
    if header(&reply).is_some_and(|h| h.truncation) {
        reply = tcp_exchange(sockets, upstream, &query, id, question).await?;
    }
    match header(&reply).map(|h| h.response_code) {
        Some(ResponseCode::ServFail | ResponseCode::Refused) | None => Err(unusable()),
        Some(_) => Ok(reply),
    }
}

fn header(message: &[u8]) -> Option<Header> {
    Header::read(&mut BinDecoder::new(message)).ok()
}

/// Whether `reply` answers our query: our id, a response, the same question.
fn answers(reply: &[u8], id: u16, question: &[Query]) -> bool {
    let mut decoder = BinDecoder::new(reply);
    let Ok(header) = Header::read(&mut decoder) else {
        return false;
    };
    if header.id != id
        || header.message_type != MessageType::Response
        || usize::from(header.counts.queries) != question.len()
    {
        return false;
    }
    let Ok(queries) = Message::read_queries(&mut decoder, question.len()) else {
        return false;
    };
    queries.iter().zip(question).all(|(a, b)| {
        a.name == b.name && a.query_type == b.query_type && a.query_class == b.query_class
    })
}

async fn udp_exchange(
    sockets: &dyn UpstreamSockets,
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &[Query],
    udp_size: usize,
) -> io::Result<Vec<u8>> {
    let socket = std::net::UdpSocket::from(sockets.socket(family(upstream), Transport::Udp)?);
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket)?;
    // Connected: only the upstream's datagrams arrive, and a closed port shows
    // as ECONNREFUSED at once instead of a timeout.
    socket.connect(upstream).await?;
    socket.send(query).await?;
    // One byte more than allowed, so that an oversized answer shows instead of
    // being cut silently.
    let mut buf = vec![0; udp_size + 1];
    loop {
        let n = socket.recv(&mut buf).await?;
        if n > udp_size {
            return Err(unusable());
        }
        if answers(&buf[..n], id, question) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(
    sockets: &dyn UpstreamSockets,
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &[Query],
) -> io::Result<Vec<u8>> {
    let stream = std::net::TcpStream::from(sockets.socket(family(upstream), Transport::Tcp)?);
    stream.set_nonblocking(true)?;
    let mut stream: TcpStream = TcpSocket::from_std_stream(stream).connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    let reply = read_framed(&mut stream).await?;
    if answers(&reply, id, question) {
        Ok(reply)
    } else {
        Err(unusable())
    }
}

/// One message with its 2-byte length (RFC 1035 4.2.2), in one write.
pub(crate) async fn write_framed<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    message: &[u8],
) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    w.write_all(&framed).await
}

pub(crate) async fn read_framed<R: AsyncReadExt + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut message = vec![0; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut message).await?;
    Ok(message)
}
