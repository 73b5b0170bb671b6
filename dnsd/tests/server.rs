//! dnsd over real sockets: local names, views, wire behaviour.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use common::*;
use dnsd::reverse_name;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

const WEB: &str = "127.0.0.2";
const DB: &str = "127.0.0.3";
const API_FRONT: &str = "127.0.0.4";
const API_BACK: &str = "127.0.0.5";
const SECRET: &str = "127.0.0.6";
const SIX: &str = "127.0.0.7";
/// Not an endpoint: sees the socket's network ("front").
const STRANGER: &str = "127.0.0.1";

/// front and back have egress, vault does not; the server socket is front's.
async fn setup() -> (Server, Upstream) {
    let up = upstream(Behaviour::Answer).await;
    let server = start(vec![up.addr], Duration::from_secs(4), "front").await;
    let d = &server.dnsd;
    d.set_network(network("front", false));
    d.set_network(network("back", false));
    d.set_network(network("vault", true));
    d.add_endpoint(endpoint(
        "c-web",
        "front",
        &["web", "aaaaaaaaaaaa", "www.example"],
        &[WEB],
    ));
    d.add_endpoint(endpoint("c-db", "back", &["db", "bbbbbbbbbbbb"], &[DB]));
    d.add_endpoint(endpoint("c-api", "front", &["api"], &[API_FRONT]));
    d.add_endpoint(endpoint("c-api", "back", &["api", "api-b"], &[API_BACK]));
    d.add_endpoint(endpoint("c-secret", "vault", &["secret"], &[SECRET]));
    d.add_endpoint(endpoint("c-six", "front", &["six"], &[SIX, "fd00::5"]));
    (server, up)
}

async fn a(from: &str, server: &Server, name: &str) -> Message {
    ask_udp(from, server.udp, &query(name, RecordType::A)).await
}

fn addrs(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| ip(a)).collect()
}

#[tokio::test]
async fn a_by_name_short_id_alias_and_qualified_name() {
    let (server, _up) = setup().await;
    for name in [
        "web.",
        "aaaaaaaaaaaa.",
        "www.example.",
        "web.front.rcrun.internal.",
        "WEB.Front.RCRUN.internal.",
    ] {
        let r = a(STRANGER, &server, name).await;
        assert_eq!(r.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(v4_answers(&r), addrs(&[WEB]), "{name}");
        assert!(r.authoritative && r.recursion_available && r.recursion_desired);
        assert_eq!(r.answers[0].ttl, dnsd::TTL);
        assert_eq!(r.answers[0].name.to_ascii(), name, "owner as asked");
    }
}

#[tokio::test]
async fn one_alias_many_containers_rotates() {
    let (server, _up) = setup().await;
    let pool = ["127.0.1.1", "127.0.1.2", "127.0.1.3"];
    for (i, addr) in pool.iter().enumerate() {
        server.dnsd.add_endpoint(endpoint(
            &format!("p{i}"),
            "front",
            &[&format!("p{i}"), "pool"],
            &[addr],
        ));
    }
    let mut firsts = BTreeSet::new();
    for _ in 0..3 {
        let got = v4_answers(&a(STRANGER, &server, "pool.").await);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got.iter().collect::<BTreeSet<_>>(),
            addrs(&pool).iter().collect()
        );
        firsts.insert(got[0]);
    }
    assert_eq!(firsts.len(), 3, "each query starts with another address");
}

#[tokio::test]
async fn aaaa_nodata_carries_the_soa() {
    let (server, _up) = setup().await;
    let r = ask_udp(STRANGER, server.udp, &query("web.", RecordType::AAAA)).await;
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty() && r.authoritative);
    assert_eq!(r.authorities.len(), 1);
    let soa = &r.authorities[0];
    assert_eq!(soa.name.to_ascii(), "front.rcrun.internal.");
    match &soa.data {
        RData::SOA(soa) => assert_eq!(soa.minimum, dnsd::TTL),
        other => panic!("{other:?}"),
    }
    let r = ask_udp(STRANGER, server.udp, &query("six.", RecordType::AAAA)).await;
    assert_eq!(v4_answers(&r), addrs(&["fd00::5"]));
    let r = ask_udp(STRANGER, server.udp, &query("six.", RecordType::ANY)).await;
    assert_eq!(v4_answers(&r), addrs(&[SIX, "fd00::5"]));
    let r = ask_udp(STRANGER, server.udp, &query("web.", RecordType::MX)).await;
    assert_eq!(
        (r.response_code, r.answers.len()),
        (ResponseCode::NoError, 0)
    );
}

#[tokio::test]
async fn unknown_names_are_nxdomain_and_never_forwarded() {
    let (server, up) = setup().await;
    let r = a(STRANGER, &server, "nope.front.rcrun.internal.").await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    assert!(r.authoritative);
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    let r = a(STRANGER, &server, "nope.").await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    let r = a(STRANGER, &server, "x.nonet.rcrun.internal.").await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    // A forwarded name afterwards, on the same path: only it reaches the upstream.
    let r = a(STRANGER, &server, "example.test.").await;
    assert_eq!(v4_answers(&r), [IpAddr::V4(EXAMPLE_ADDR)]);
    assert_eq!(up.udp_queries.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn ptr_v4_and_v6() {
    let (server, _up) = setup().await;
    let ptr = |m: &Message| -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect()
    };
    let r = ask_udp(
        STRANGER,
        server.udp,
        &query("2.0.0.127.in-addr.arpa.", RecordType::PTR),
    )
    .await;
    assert_eq!(ptr(&r), ["web.front.rcrun.internal."]);
    assert!(r.authoritative);
    let v6 = reverse_name(ip("fd00::5"));
    let r = ask_udp(STRANGER, server.udp, &query(&v6, RecordType::PTR)).await;
    assert_eq!(ptr(&r), ["six.front.rcrun.internal."]);
    // c-api on both networks: seen from inside, each address names its network.
    let r = ask_udp(
        API_FRONT,
        server.udp,
        &query("5.0.0.127.in-addr.arpa.", RecordType::PTR),
    )
    .await;
    assert_eq!(ptr(&r), ["api.back.rcrun.internal."]);
}

#[tokio::test]
async fn views_follow_the_asking_container() {
    let (server, _up) = setup().await;
    // db is on back only: web (front) does not exist for it, api's back address does.
    let r = a(DB, &server, "web.").await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    let r = a(DB, &server, "web.front.rcrun.internal.").await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    assert_eq!(
        v4_answers(&a(DB, &server, "api.").await),
        addrs(&[API_BACK])
    );
    // A stranger on front's socket does not see back.
    let r = a(STRANGER, &server, "db.").await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    let r = a(STRANGER, &server, "db.back.rcrun.internal.").await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    // api is on both: sees both, bare names are the union.
    assert_eq!(
        v4_answers(&a(API_FRONT, &server, "db.").await),
        addrs(&[DB])
    );
    assert_eq!(
        v4_answers(&a(API_BACK, &server, "web.").await),
        addrs(&[WEB])
    );
    let both = v4_answers(&a(API_FRONT, &server, "api.").await);
    assert_eq!(
        both.iter().collect::<BTreeSet<_>>(),
        addrs(&[API_FRONT, API_BACK]).iter().collect()
    );
    let r = a(API_FRONT, &server, "api.back.rcrun.internal.").await;
    assert_eq!(v4_answers(&r), addrs(&[API_BACK]));
    // secret's own network is internal: names of front stay hidden.
    let r = a(SECRET, &server, "web.").await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    assert_eq!(
        v4_answers(&a(SECRET, &server, "secret.").await),
        addrs(&[SECRET])
    );
}

#[tokio::test]
async fn removals_apply_at_once() {
    let (server, _up) = setup().await;
    assert_eq!(
        v4_answers(&a(STRANGER, &server, "web.").await),
        addrs(&[WEB])
    );
    server.dnsd.remove_endpoint("c-web", "front");
    assert_eq!(
        a(STRANGER, &server, "web.").await.response_code,
        ResponseCode::NXDomain
    );

    assert_eq!(
        v4_answers(&a(DB, &server, "api.").await),
        addrs(&[API_BACK])
    );
    server.dnsd.remove_container("c-api");
    assert_eq!(
        a(DB, &server, "api.").await.response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(
        a(STRANGER, &server, "api.").await.response_code,
        ResponseCode::NXDomain
    );

    server.dnsd.remove_network("back");
    assert_eq!(
        a(STRANGER, &server, "six.").await.response_code,
        ResponseCode::NoError
    );
    // db's endpoint went with its network, so its address is a stranger now.
    assert_eq!(
        a(DB, &server, "six.").await.response_code,
        ResponseCode::NoError
    );

    // Re-adding replaces; the new address answers at once.
    server
        .dnsd
        .add_endpoint(endpoint("c-six", "front", &["six"], &["127.0.0.77"]));
    assert_eq!(
        v4_answers(&a(STRANGER, &server, "six.").await),
        addrs(&["127.0.0.77"])
    );
}

#[tokio::test]
async fn tcp_several_queries_per_connection() {
    let (server, _up) = setup().await;
    let mut stream = tcp_client(DB, server.tcp).await;
    for (name, want) in [("db.", DB), ("api.", API_BACK), ("bbbbbbbbbbbb.", DB)] {
        let q = query(name, RecordType::A);
        write_tcp(&mut stream, &q.to_vec().unwrap()).await;
        let r = Message::from_vec(&read_tcp(&mut stream).await).unwrap();
        assert_eq!(r.id, q.id);
        assert_eq!(v4_answers(&r), addrs(&[want]), "{name}");
    }
    // The connection is seen as db: web is invisible over TCP too.
    let r = ask_tcp(DB, server.tcp, &query("web.", RecordType::A)).await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn large_answers_truncate_over_udp_only() {
    let (server, _up) = setup().await;
    let crowd: Vec<String> = (1..=60).map(|i| format!("127.0.2.{i}")).collect();
    for (i, addr) in crowd.iter().enumerate() {
        server
            .dnsd
            .add_endpoint(endpoint(&format!("crowd{i}"), "front", &["crowd"], &[addr]));
    }
    let r = a(STRANGER, &server, "crowd.").await;
    assert!(r.truncation, "60 A records do not fit in 512 bytes");
    assert!(r.answers.is_empty());
    assert_eq!(r.queries.len(), 1);

    let q = with_edns(query("crowd.", RecordType::A), 1232);
    let r = ask_udp(STRANGER, server.udp, &q).await;
    assert!(!r.truncation);
    assert_eq!(r.answers.len(), 60);

    let r = ask_tcp(STRANGER, server.tcp, &query("crowd.", RecordType::A)).await;
    assert!(!r.truncation);
    assert_eq!(r.answers.len(), 60);
}

#[tokio::test]
async fn edns_is_echoed() {
    let (server, _up) = setup().await;
    let r = ask_udp(
        STRANGER,
        server.udp,
        &with_edns(query("web.", RecordType::A), 4096),
    )
    .await;
    let edns = r.edns.clone().expect("OPT in the reply");
    assert_eq!((edns.max_payload(), edns.version()), (1232, 0));
    assert_eq!(v4_answers(&r), addrs(&[WEB]));
    let r = a(STRANGER, &server, "web.").await;
    assert!(r.edns.is_none(), "no OPT without one in the query");
}

#[tokio::test]
async fn stop_ends_the_listeners() {
    let (server, _up) = setup().await;
    assert_eq!(
        v4_answers(&a(STRANGER, &server, "web.").await),
        addrs(&[WEB])
    );
    server.dnsd.stop();
    for task in server.tasks {
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("serve returned")
            .unwrap();
    }
}
