//! Forwarding to upstream resolvers that the tests run on loopback.

mod common;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

const CLIENT: &str = "127.0.0.9";

fn example() -> Message {
    query("example.test.", RecordType::A)
}

fn answered(r: &Message) {
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert_eq!(v4_answers(r), [IpAddr::V4(EXAMPLE_ADDR)]);
}

#[tokio::test]
async fn forwards_with_a_fresh_id_and_maps_it_back() {
    let mut up = upstream(Behaviour::Answer).await;
    let server = start(vec![up.addr], Duration::from_secs(4), "front").await;
    let mut q = example();
    q.metadata.id = 0x1234;
    let r = ask_udp(CLIENT, server.udp, &q).await;
    answered(&r);
    assert!(r.recursion_available);
    let (transport, seen) = up.seen.recv().await.unwrap();
    assert_eq!(transport, "udp");
    assert_eq!(seen.queries, q.queries);

    // Names outside ours with a dot, in either case, and over TCP.
    let r = ask_tcp(CLIENT, server.tcp, &query("EXAMPLE.test.", RecordType::A)).await;
    answered(&r);
    let r = ask_udp(CLIENT, server.udp, &query("other.test.", RecordType::A)).await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn a_refusing_port_moves_on_at_once() {
    let up = upstream(Behaviour::Answer).await;
    // 10 s spread over two upstreams: 5 s each, unless the first fails fast.
    let server = start(
        vec![dead_port().await, up.addr],
        Duration::from_secs(10),
        "front",
    )
    .await;
    let started = Instant::now();
    answered(&ask_udp(CLIENT, server.udp, &example()).await);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn servfail_moves_on_at_once() {
    let bad = upstream(Behaviour::ServFail).await;
    let good = upstream(Behaviour::Answer).await;
    let server = start(vec![bad.addr, good.addr], Duration::from_secs(10), "front").await;
    let started = Instant::now();
    answered(&ask_udp(CLIENT, server.udp, &example()).await);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(bad.udp_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_silent_upstream_gets_its_share_of_the_time() {
    let hole = blackhole().await;
    let up = upstream(Behaviour::Answer).await;
    let server = start(
        vec![hole.local_addr().unwrap(), up.addr],
        Duration::from_secs(2),
        "front",
    )
    .await;
    let started = Instant::now();
    let client = client(CLIENT, server.udp).await;
    client.send(&example().to_vec().unwrap()).await.unwrap();
    // The first upstream got the query...
    let mut buf = [0; 512];
    tokio::time::timeout(PATIENCE, hole.recv(&mut buf))
        .await
        .expect("query reaches the first upstream")
        .unwrap();
    // ...and the answer comes from the second after the first's 1 s.
    answered(&recv(&client).await);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn all_upstreams_silent_is_servfail_within_the_timeout() {
    let (h1, h2) = (blackhole().await, blackhole().await);
    let upstreams = vec![h1.local_addr().unwrap(), h2.local_addr().unwrap()];
    let server = start(upstreams, Duration::from_millis(800), "front").await;
    let started = Instant::now();
    let r = ask_udp(CLIENT, server.udp, &example()).await;
    let elapsed = started.elapsed();
    assert_eq!(r.response_code, ResponseCode::ServFail);
    assert_eq!(r.queries, example().queries);
    assert!(elapsed >= Duration::from_millis(750), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");

    let server = start(vec![], Duration::from_millis(800), "front").await;
    let r = ask_udp(CLIENT, server.udp, &example()).await;
    assert_eq!(r.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn local_answers_do_not_wait_behind_forwards() {
    let hole = blackhole().await;
    let server = start(
        vec![hole.local_addr().unwrap()],
        Duration::from_secs(30),
        "front",
    )
    .await;
    server
        .dnsd
        .add_endpoint(endpoint("c1", "front", &["web"], &["127.0.0.2"]));
    let client = client(CLIENT, server.udp).await;
    client.send(&example().to_vec().unwrap()).await.unwrap();
    let mut buf = [0; 512];
    hole.recv(&mut buf).await.unwrap();
    // The forward hangs for 30 s; the local name answers now.
    let local = query("web.", RecordType::A);
    client.send(&local.to_vec().unwrap()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), recv(&client))
        .await
        .expect("local answer while a forward is pending");
    assert_eq!(r.id, local.id);
    assert_eq!(v4_answers(&r), [ip("127.0.0.2")]);
}

#[tokio::test]
async fn internal_only_views_are_refused_without_asking_upstream() {
    let up = upstream(Behaviour::Answer).await;
    let server = start(vec![up.addr], Duration::from_secs(4), "front").await;
    let d = &server.dnsd;
    d.set_network(network("front", false));
    d.set_network(network("vault", true));
    d.add_endpoint(endpoint("c-secret", "vault", &["secret"], &["127.0.0.6"]));
    d.add_endpoint(endpoint("c-mixed", "vault", &["mixed"], &["127.0.0.7"]));
    d.add_endpoint(endpoint("c-mixed", "front", &["mixed"], &["127.0.0.8"]));

    let r = ask_udp("127.0.0.6", server.udp, &example()).await;
    assert_eq!(r.response_code, ResponseCode::Refused);
    let r = ask_tcp("127.0.0.6", server.tcp, &example()).await;
    assert_eq!(r.response_code, ResponseCode::Refused);
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 0);
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 0);

    // A container also on a network with egress is forwarded, even from its
    // internal address.
    answered(&ask_udp("127.0.0.7", server.udp, &example()).await);

    // The socket's own network decides for strangers.
    let vault = start(vec![up.addr], Duration::from_secs(4), "vault").await;
    vault.dnsd.set_network(network("vault", true));
    let r = ask_udp(CLIENT, vault.udp, &example()).await;
    assert_eq!(r.response_code, ResponseCode::Refused);
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn truncated_upstream_answers_are_retried_over_tcp() {
    let mut up = upstream(Behaviour::TruncateUdp).await;
    let server = start(vec![up.addr], Duration::from_secs(4), "front").await;
    let r = ask_udp(CLIENT, server.udp, &example()).await;
    answered(&r);
    assert!(!r.truncation);
    assert_eq!(up.seen.recv().await.unwrap().0, "udp");
    assert_eq!(up.seen.recv().await.unwrap().0, "tcp");
}
