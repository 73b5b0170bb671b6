//! dnsd end to end: real resolvers (dig, nslookup, glibc's getent) inside
//! containers ask the network's gateway for names, aliases and short ids; names
//! come and go with containers; other networks stay invisible; everything else
//! goes to an upstream the test runs on the host's loopback. CI runs this as root
//! and as an unprivileged user.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Env;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use serde_json::Value;

const BUSYBOX: &str = "busybox:1.35";
const CLIENT: &str = "client:latest";
/// What the test's upstream answers for `example.test`.
const EXAMPLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

fn env_with(vars: &[(&str, &str)]) -> Env {
    let mut env = Env::new();
    env.vars = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.pull_fixture("busybox", "1.35");
    env.pull_fixture("client", "latest");
    env
}

fn ip_on(env: &Env, container: &str, network: &str) -> String {
    let v: Value = serde_json::from_str(&env.ok(&["inspect", container])).unwrap();
    v[0]["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["network"] == network)
        .unwrap_or_else(|| panic!("{container} is not on {network}"))["addresses"][0]
        .as_str()
        .unwrap()
        .to_string()
}

fn id_of(env: &Env, container: &str) -> String {
    let v: Value = serde_json::from_str(&env.ok(&["inspect", container])).unwrap();
    v[0]["id"].as_str().unwrap().to_string()
}

fn sleeper(env: &Env, name: &str, extra: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend(extra);
    args.extend([BUSYBOX, "sleep", "600"]);
    env.ok(&args);
}

/// Runs `script` in a fresh client container on `network`; its stdout.
fn client(env: &Env, network: &str, script: &str) -> String {
    env.ok(&[
        "run",
        "--rm",
        "--network",
        network,
        CLIENT,
        "sh",
        "-c",
        script,
    ])
}

/// `dig` status line value (NOERROR, NXDOMAIN, …) in `dig` output.
fn status(dig: &str) -> &str {
    dig.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in {dig}"))
}

#[test]
fn names_aliases_and_short_ids_resolve_with_round_robin() {
    let env = env_with(&[]);
    env.ok(&["network", "create", "front"]);
    for name in ["web1", "web2", "web3"] {
        sleeper(
            &env,
            name,
            &["--network", "front", "--network-alias", "app"],
        );
    }
    let ips: Vec<String> = ["web1", "web2", "web3"]
        .iter()
        .map(|n| ip_on(&env, n, "front"))
        .collect();
    let short = &id_of(&env, "web2")[..12];
    let script = format!(
        "echo NAME $(dig +short web1); echo FQDN $(dig +short WEB1.front.rcrun.internal); \
         echo SHORT $(dig +short {short}); \
         for i in 1 2 3; do echo APP $(dig +short app); done; \
         echo TCP $(dig +tcp +short web2); echo PTR $(dig +short -x {ip1}); \
         echo GETENT $(getent hosts web3); dig AAAA web1; cat /etc/resolv.conf",
        ip1 = ips[0]
    );
    let out = client(&env, "front", &script);
    let line = |tag: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with(&format!("{tag} ")))
            .map(|l| l[tag.len() + 1..].trim().to_string())
            .collect()
    };
    assert_eq!(line("NAME"), [ips[0].clone()], "{out}");
    assert_eq!(line("FQDN"), [ips[0].clone()], "{out}");
    assert_eq!(line("SHORT"), [ips[1].clone()], "{out}");
    assert_eq!(line("TCP"), [ips[1].clone()], "{out}");
    assert_eq!(line("PTR"), ["web1.front.rcrun.internal."], "{out}");
    assert!(line("GETENT")[0].starts_with(&ips[2]), "{out}");
    // Every answer holds all three; the first one moves on each query.
    let apps = line("APP");
    let mut firsts = Vec::new();
    for answer in &apps {
        let mut got: Vec<&str> = answer.split_whitespace().collect();
        firsts.push(got[0].to_string());
        got.sort();
        let mut want: Vec<&str> = ips.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(got, want, "{out}");
    }
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), 3, "round robin did not rotate: {apps:?}");
    // A v4-only name has no AAAA: NODATA, not NXDOMAIN.
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("ANSWER: 0,"), "{out}");
    let gateway = {
        let v: Value = serde_json::from_str(&env.ok(&["network", "inspect", "front"])).unwrap();
        v[0]["subnets"][0][1].as_str().unwrap().to_string()
    };
    assert!(out.contains(&format!("nameserver {gateway}\n")), "{out}");
    assert!(out.contains("search front.rcrun.internal"), "{out}");

    // busybox's own resolver too.
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "front",
        BUSYBOX,
        "nslookup",
        "web3",
    ]);
    assert!(out.contains(&ips[2]), "{out}");
}

#[test]
fn names_come_with_run_and_connect_and_go_with_stop_and_disconnect() {
    let env = env_with(&[]);
    env.ok(&["network", "create", "lan"]);
    env.ok(&["network", "create", "other"]);
    env.ok(&[
        "run",
        "-d",
        "--name",
        "asker",
        "--network",
        "lan",
        CLIENT,
        "sleep",
        "600",
    ]);
    let dig = |name: &str| env.ok(&["exec", "asker", "dig", name]);

    // Resolvable the moment `run -d` returns: no retry.
    sleeper(&env, "late", &["--network", "lan"]);
    let ip = ip_on(&env, "late", "lan");
    assert_eq!(
        env.ok(&["exec", "asker", "dig", "+short", "late"]).trim(),
        ip
    );
    env.ok(&["stop", "-t", "1", "late"]);
    assert_eq!(status(&dig("late")), "NXDOMAIN");

    // A name on a network the asker is not on is invisible, until it connects.
    sleeper(&env, "elsewhere", &["--network", "other"]);
    let there = ip_on(&env, "elsewhere", "other");
    assert_eq!(status(&dig("elsewhere")), "NXDOMAIN");
    env.ok(&["network", "connect", "other", "asker"]);
    assert_eq!(
        env.ok(&["exec", "asker", "dig", "+short", "elsewhere"])
            .trim(),
        there
    );
    // Its resolv.conf was updated in place: the search domain works for glibc.
    let resolv = env.ok(&["exec", "asker", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("other.rcrun.internal"), "{resolv}");
    assert!(
        env.ok(&["exec", "asker", "getent", "hosts", "elsewhere"])
            .starts_with(&there)
    );
    env.ok(&["network", "disconnect", "other", "asker"]);
    assert_eq!(status(&dig("elsewhere")), "NXDOMAIN");
    let resolv = env.ok(&["exec", "asker", "cat", "/etc/resolv.conf"]);
    assert!(!resolv.contains("other.rcrun.internal"), "{resolv}");

    // A container connected later is found under its alias on that network.
    env.ok(&["network", "connect", "--alias", "cache", "lan", "elsewhere"]);
    assert_eq!(
        env.ok(&["exec", "asker", "dig", "+short", "cache"]).trim(),
        ip_on(&env, "elsewhere", "lan")
    );
}

/// A test upstream on 127.0.0.1 (host side): `example.test` A, NXDOMAIN for the
/// rest; counts the queries it gets.
struct Upstream {
    port: u16,
    queries: Arc<AtomicUsize>,
}

fn upstream() -> Upstream {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let queries = Arc::new(AtomicUsize::new(0));
    let seen = queries.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut reply = Message::response(query.id, OpCode::Query);
            reply.metadata.recursion_desired = query.recursion_desired;
            reply.metadata.recursion_available = true;
            reply.queries = query.queries.clone();
            match query.queries.first() {
                Some(q)
                    if q.name.to_ascii().eq_ignore_ascii_case("example.test.")
                        && q.query_type == RecordType::A =>
                {
                    reply.add_answer(Record::from_rdata(q.name.clone(), 60, RData::A(A(EXAMPLE))));
                }
                _ => reply.metadata.response_code = ResponseCode::NXDomain,
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), from);
        }
    });
    Upstream { port, queries }
}

/// A loopback port where nothing listens (queries to it are refused at once).
fn dead_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn other_names_are_forwarded_past_a_dead_upstream_but_not_from_internal_networks() {
    let up = upstream();
    let upstreams = format!("127.0.0.1:{},127.0.0.1:{}", dead_port(), up.port);
    let env = env_with(&[("RCRUN_DNS_UPSTREAMS", &upstreams)]);
    env.ok(&["network", "create", "out"]);
    env.ok(&["network", "create", "--internal", "sealed"]);
    let out = client(&env, "out", "dig +short example.test; dig nowhere.test");
    assert!(out.starts_with(&format!("{EXAMPLE}\n")), "{out}");
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    let asked = up.queries.load(Ordering::SeqCst);
    assert!(asked >= 2, "the upstream saw {asked} queries");

    let out = client(
        &env,
        "sealed",
        "dig example.test; dig +short sealed-peer || true",
    );
    assert_eq!(status(&out), "REFUSED", "{out}");
    assert_eq!(
        up.queries.load(Ordering::SeqCst),
        asked,
        "an internal network's query went upstream"
    );
}

#[test]
fn hosts_and_resolv_conf_take_links_added_hosts_and_dns_flags() {
    let env = env_with(&[]);
    env.ok(&["network", "create", "app"]);
    sleeper(&env, "db", &["--network", "app"]);
    let db = ip_on(&env, "db", "app");
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        "--hostname",
        "tester",
        "--link",
        "db:database",
        "--add-host",
        "extra.example:192.0.2.9",
        CLIENT,
        "sh",
        "-c",
        "cat /etc/hosts; echo GETENT $(getent hosts database)",
    ]);
    assert!(out.contains("127.0.0.1\tlocalhost\n"), "{out}");
    assert!(out.contains("\ttester\n"), "{out}");
    assert!(out.contains(&format!("{db}\tdatabase\n")), "{out}");
    assert!(out.contains(&format!("{db}\tdb\n")), "{out}");
    assert!(out.contains("192.0.2.9\textra.example\n"), "{out}");
    assert!(out.contains(&format!("GETENT {db}")), "{out}");

    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        "--dns",
        "192.0.2.53",
        "--dns-search",
        "corp.example",
        BUSYBOX,
        "cat",
        "/etc/resolv.conf",
    ]);
    assert!(out.contains("nameserver 192.0.2.53\n"), "{out}");
    assert!(out.contains("search corp.example\n"), "{out}");
    assert!(!out.contains("rcrun.internal"), "{out}");
}

#[test]
fn bad_names_are_refused_before_anything_starts() {
    let env = env_with(&[]);
    env.ok(&["network", "create", "app"]);
    sleeper(&env, "db", &["--network", "app"]);
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--rm", "--network", "app"];
        args.extend(extra);
        args.extend([BUSYBOX, "true"]);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    for (extra, needle) in [
        (
            vec!["--network-alias", "bad_alias"],
            "--network-alias \"bad_alias\"",
        ),
        (vec!["--network-alias=-lead"], "invalid DNS name"),
        (vec!["--dns-search", "a b"], "--dns-search"),
        (vec!["--link", "db:no_good"], "--link"),
        (vec!["--link", "nosuch"], "nosuch"),
        (vec!["--add-host", "bad name:192.0.2.1"], "--add-host"),
    ] {
        let args = run(&extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.fails(&args, needle);
    }
    env.fails(
        &["network", "connect", "--alias", "x..y", "app", "db"],
        "--alias",
    );
    assert_eq!(env.ps(true).len(), 1, "a refused run left a container");
}
