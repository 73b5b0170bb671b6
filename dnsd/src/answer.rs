//! One query in, one decision out: a reply built from the table, a forward, or
//! nothing. No I/O here.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name as DnsName, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::TTL;
use crate::table::{Resolution, Table};

/// Our EDNS payload size (DNS flag day 2020: no IP fragmentation on any path),
/// also the most we send over UDP.
pub(crate) const MAX_UDP_PAYLOAD: u16 = 1232;
/// What a UDP client without EDNS takes (RFC 1035).
const PLAIN_UDP_PAYLOAD: usize = 512;
/// TCP replies are bounded by the 2-byte length prefix only.
pub(crate) const MAX_TCP_MESSAGE: usize = u16::MAX as usize;

pub(crate) enum Outcome {
    Reply(Vec<u8>),
    Forward(Request),
    /// Not even a header, or a response: never answer those (no loops).
    Drop,
}

/// A query that goes upstream.
pub(crate) struct Request {
    pub query: Message,
    pub bytes: Vec<u8>,
    /// The largest reply the client takes.
    pub limit: usize,
}

impl Request {
    /// The upstream's reply as the client gets it: its id, within its limit.
    pub fn reply(&self, mut upstream: Vec<u8>) -> Vec<u8> {
        upstream[..2].copy_from_slice(&self.query.id.to_be_bytes());
        if upstream.len() <= self.limit {
            return upstream;
        }
        match Message::from_vec(&upstream) {
            Ok(message) => encode(&message, self.limit),
            Err(_) => {
                let mut reply = response(&self.query);
                reply.metadata.truncation = true;
                encode(&reply, self.limit)
            }
        }
    }

    pub fn servfail(&self) -> Vec<u8> {
        let mut reply = response(&self.query);
        reply.metadata.response_code = ResponseCode::ServFail;
        encode(&reply, self.limit)
    }
}

pub(crate) fn handle(
    table: &Table,
    bytes: &[u8],
    source: IpAddr,
    network: &str,
    udp: bool,
) -> Outcome {
    let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
        return Outcome::Drop;
    };
    if header.message_type != MessageType::Query {
        return Outcome::Drop;
    }
    let query = match Message::from_vec(bytes) {
        Ok(query) => query,
        Err(_) => {
            let mut reply = Message::response(header.id, header.op_code);
            reply.metadata = response_metadata(&header.metadata);
            reply.metadata.response_code = ResponseCode::FormErr;
            return Outcome::Reply(encode(&reply, PLAIN_UDP_PAYLOAD));
        }
    };
    let limit = match (&query.edns, udp) {
        (_, false) => MAX_TCP_MESSAGE,
        (None, true) => PLAIN_UDP_PAYLOAD,
        (Some(edns), true) => usize::from(
            edns.max_payload()
                .clamp(PLAIN_UDP_PAYLOAD as u16, MAX_UDP_PAYLOAD),
        ),
    };
    let mut reply = response(&query);
    let code = if query.op_code != OpCode::Query {
        Some(ResponseCode::NotImp)
    } else if query.edns.as_ref().is_some_and(|e| e.version() > 0) {
        Some(ResponseCode::BADVERS)
    } else if query.queries.len() != 1 {
        Some(ResponseCode::FormErr)
    } else {
        None
    };
    if let Some(code) = code {
        reply.metadata.response_code = code;
        return Outcome::Reply(encode(&reply, limit));
    }
    let question = &query.queries[0];
    let owner = question.name.clone();
    let qtype = question.query_type;
    let single_label = question.name.num_labels() == 1;

    let view = table.view(source, network);
    let resolution = match lower_name(&owner) {
        Some(name) if matches!(question.query_class, DNSClass::IN | DNSClass::ANY) => {
            table.resolve(&name, &view)
        }
        _ => Resolution::Unknown,
    };
    let record = |data: RData| Record::from_rdata(owner.clone(), TTL, data);
    let (answers, zone) = match resolution {
        Resolution::Host(mut host) => {
            let mut answers = Vec::new();
            if matches!(qtype, RecordType::A | RecordType::ANY) {
                host.counters.rotate_v4(&mut host.v4);
                answers.extend(host.v4.iter().map(|&a| record(RData::A(A(a)))));
            }
            if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
                host.counters.rotate_v6(&mut host.v6);
                answers.extend(host.v6.iter().map(|&a| record(RData::AAAA(AAAA(a)))));
            }
            (answers, host.zone)
        }
        Resolution::Reverse { zone, targets } => {
            let answers = match qtype {
                RecordType::PTR | RecordType::ANY => targets
                    .iter()
                    .filter_map(|t| DnsName::from_ascii(t).ok())
                    .map(|t| record(RData::PTR(PTR(t))))
                    .collect(),
                _ => Vec::new(),
            };
            (answers, zone)
        }
        Resolution::Apex { zone } => {
            let answers = match qtype {
                RecordType::SOA | RecordType::ANY => soa(&zone, table.serial).into_iter().collect(),
                _ => Vec::new(),
            };
            (answers, zone)
        }
        Resolution::NxDomain { zone } => {
            reply.metadata.response_code = ResponseCode::NXDomain;
            (Vec::new(), zone)
        }
        Resolution::Unknown if single_label => {
            // Not ours and not worth asking upstream: the stub goes on with its
            // search domains.
            reply.metadata.response_code = ResponseCode::NXDomain;
            return Outcome::Reply(encode(&reply, limit));
        }
        Resolution::Unknown if table.may_forward(&view) => {
            return Outcome::Forward(Request {
                query,
                bytes: bytes.to_vec(),
                limit,
            });
        }
        Resolution::Unknown => {
            reply.metadata.response_code = ResponseCode::Refused;
            return Outcome::Reply(encode(&reply, limit));
        }
    };
    reply.metadata.authoritative = true;
    if answers.is_empty() {
        // Negative answers carry the SOA, whose minimum bounds negative caching.
        reply.authorities.extend(soa(&zone, table.serial));
    }
    reply.answers = answers;
    Outcome::Reply(encode(&reply, limit))
}

/// The query name as we index names: lower-cased labels joined by dots, no
/// trailing dot. `None` for labels no name of ours has (dots, spaces, binary).
fn lower_name(name: &DnsName) -> Option<String> {
    let mut out = String::new();
    for (i, label) in name.iter().enumerate() {
        if !label.iter().all(|b| b.is_ascii_graphic() && *b != b'.') {
            return None;
        }
        if i > 0 {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    Some(out)
}

fn soa(zone: &str, serial: u32) -> Option<Record> {
    let mname = DnsName::from_ascii(format!("{zone}.")).ok()?;
    let rname = DnsName::from_ascii(format!("hostmaster.{zone}.")).ok()?;
    let soa = SOA::new(mname.clone(), rname, serial, 3600, 600, 86400, TTL);
    Some(Record::from_rdata(mname, TTL, RData::SOA(soa)))
}

fn response_metadata(request: &Metadata) -> Metadata {
    let mut metadata = Metadata::response_from_request(request);
    metadata.recursion_available = true;
    metadata
}

/// An empty reply to `query`: its id, RD and question; RA; our OPT when it had one.
fn response(query: &Message) -> Message {
    let mut reply = Message::response(query.id, query.op_code);
    reply.metadata = response_metadata(&query.metadata);
    reply.queries = query.queries.clone();
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        reply.edns = Some(edns);
    }
    reply
}

/// `message` on the wire, or when longer than `limit` the truncated form (TC,
/// question and OPT only) so that the client asks again over TCP.
pub(crate) fn encode(message: &Message, limit: usize) -> Vec<u8> {
    if let Ok(bytes) = message.to_vec()
        && bytes.len() <= limit
    {
        return bytes;
    }
    let truncated = message.truncate();
    if let Ok(bytes) = truncated.to_vec()
        && bytes.len() <= limit
    {
        return bytes;
    }
    // A question that alone is too long: the header says enough.
    let mut bare = Message::response(message.id, message.op_code);
    bare.metadata = truncated.metadata;
    bare.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::State;
    use crate::{Endpoint, NetworkInfo};
    use hickory_proto::op::Query;

    fn table() -> Table {
        let mut state = State::default();
        let endpoint = Endpoint {
            container: "c1".into(),
            network: "n".into(),
            names: vec!["web".parse().unwrap()],
            addresses: vec!["10.0.0.2".parse().unwrap()],
        };
        state.endpoints.insert(("c1".into(), "n".into()), endpoint);
        state.networks.insert(
            "lonely".into(),
            NetworkInfo {
                name: "lonely".into(),
                internal: true,
            },
        );
        Table::build(&state, &Table::default())
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(DnsName::from_ascii(name).unwrap(), qtype));
        q
    }

    fn ask(message: &Message, network: &str) -> Message {
        ask_bytes(&message.to_vec().unwrap(), network).expect("a reply")
    }

    fn ask_bytes(bytes: &[u8], network: &str) -> Option<Message> {
        let source = "192.0.2.1".parse().unwrap();
        match handle(&table(), bytes, source, network, true) {
            Outcome::Reply(bytes) => Some(Message::from_vec(&bytes).unwrap()),
            Outcome::Forward(_) => panic!("forwarded"),
            Outcome::Drop => None,
        }
    }

    #[test]
    fn header_flags() {
        let q = query("web.", RecordType::A);
        let r = ask(&q, "n");
        assert_eq!(r.id, q.id);
        assert_eq!(r.message_type, MessageType::Response);
        assert!(r.recursion_desired && r.recursion_available && r.authoritative);
        assert_eq!(r.queries, q.queries);
        assert!(r.edns.is_none());

        let mut q = query("web.", RecordType::A);
        q.metadata.recursion_desired = false;
        assert!(!ask(&q, "n").recursion_desired);
    }

    #[test]
    fn case_is_kept_in_answers_and_ignored_in_lookups() {
        let r = ask(&query("WeB.N.rcrun.INTERNAL.", RecordType::A), "n");
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].name.to_ascii(), "WeB.N.rcrun.INTERNAL.");
    }

    #[test]
    fn other_types_are_nodata() {
        for qtype in [RecordType::MX, RecordType::TXT, RecordType::AAAA] {
            let r = ask(&query("web.", qtype), "n");
            assert_eq!(r.response_code, ResponseCode::NoError);
            assert!(r.answers.is_empty());
            assert_eq!(r.authorities.len(), 1);
            assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
            assert_eq!(r.authorities[0].name.to_ascii(), "n.rcrun.internal.");
        }
        let r = ask(&query("web.", RecordType::ANY), "n");
        assert_eq!(r.answers.len(), 1);
        let r = ask(&query("n.rcrun.internal.", RecordType::SOA), "n");
        assert_eq!(r.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn opcodes_versions_and_malformed() {
        let mut q = query("web.", RecordType::A);
        q.metadata.op_code = OpCode::Status;
        assert_eq!(ask(&q, "n").response_code, ResponseCode::NotImp);

        let mut q = query("web.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_version(1);
        q.set_edns(edns);
        let r = ask(&q, "n");
        // 16: BADVERS, which hickory decodes as its twin BADSIG.
        assert_eq!(u16::from(r.response_code), 16);
        assert_eq!(r.edns.as_ref().unwrap().version(), 0);

        let mut q = query("web.", RecordType::A);
        q.queries.clear();
        assert_eq!(ask(&q, "n").response_code, ResponseCode::FormErr);

        // A header and garbage: FORMERR with the query's id.
        let mut bytes = query("web.", RecordType::A).to_vec().unwrap();
        bytes.truncate(bytes.len() - 3);
        let r = ask_bytes(&bytes, "n").unwrap();
        assert_eq!(r.response_code, ResponseCode::FormErr);
        assert_eq!(r.id, u16::from_be_bytes([bytes[0], bytes[1]]));

        // No header, or a response: silence.
        assert!(ask_bytes(&bytes[..11], "n").is_none());
        let mut response = query("web.", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert!(ask_bytes(&response.to_vec().unwrap(), "n").is_none());
    }

    #[test]
    fn internal_only_refuses_and_single_labels_stay_local() {
        let r = ask(&query("example.com.", RecordType::A), "lonely");
        assert_eq!(r.response_code, ResponseCode::Refused);
        let r = ask(&query("nosuch.", RecordType::A), "n");
        assert_eq!(r.response_code, ResponseCode::NXDomain);
        assert!(!r.authoritative);
        let source = "192.0.2.1".parse().unwrap();
        let bytes = query("example.com.", RecordType::A).to_vec().unwrap();
        assert!(matches!(
            handle(&table(), &bytes, source, "n", true),
            Outcome::Forward(_)
        ));
    }

    #[test]
    fn forwarded_replies_get_the_client_id_and_limit() {
        let source = "192.0.2.1".parse().unwrap();
        let q = query("example.com.", RecordType::A);
        let Outcome::Forward(request) = handle(&table(), &q.to_vec().unwrap(), source, "n", true)
        else {
            panic!("not forwarded");
        };
        let mut upstream = Message::response(q.id.wrapping_add(1), OpCode::Query);
        upstream.queries = q.queries.clone();
        for i in 0..40u8 {
            upstream.add_answer(Record::from_rdata(
                q.queries[0].name.clone(),
                60,
                RData::A(A([192, 0, 2, i].into())),
            ));
        }
        let r = Message::from_vec(&request.reply(upstream.to_vec().unwrap())).unwrap();
        assert_eq!(r.id, q.id);
        assert!(
            r.truncation && r.answers.is_empty(),
            "40 answers exceed 512 bytes"
        );
        upstream.answers.truncate(2);
        let r = Message::from_vec(&request.reply(upstream.to_vec().unwrap())).unwrap();
        assert_eq!((r.id, r.answers.len()), (q.id, 2));
        let r = Message::from_vec(&request.servfail()).unwrap();
        assert_eq!((r.id, r.response_code), (q.id, ResponseCode::ServFail));
    }
}
