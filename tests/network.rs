//! rcrun networks end to end, on the busybox image: bridges in the infra
//! namespace, veth pairs, IP leases, isolation, connect/disconnect, published
//! ports, egress to the host's loopback, and teardown whatever way a container
//! ends. CI runs this as root and as an unprivileged user.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use common::{Env, wait_until};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const IMAGE: &str = "busybox:1.35";

fn env() -> Env {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    env
}

/// The container's addresses, network by network.
fn addresses(env: &Env, container: &str) -> Vec<(String, String)> {
    let out = env.ok(&["inspect", container]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["network"].as_str().unwrap().to_string(),
                a["addresses"][0].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn ip_on(env: &Env, container: &str, network: &str) -> String {
    addresses(env, container)
        .into_iter()
        .find(|(n, _)| n == network)
        .unwrap_or_else(|| panic!("{container} is not on {network}"))
        .1
}

/// A server that answers every connection with "pong" (kept running).
fn serve(env: &Env, name: &str, networks: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name];
    for n in networks {
        args.extend(["--network", n]);
    }
    args.extend([IMAGE, "nc", "-ll", "-p", "7000", "-e", "echo", "pong"]);
    env.ok(&args);
}

/// Whether a client on `networks` gets "pong" from ip:7000.
fn reaches(env: &Env, networks: &[&str], ip: &str) -> bool {
    let mut args = vec!["run", "--rm"];
    for n in networks {
        args.extend(["--network", n]);
    }
    let script = format!("nc -w 2 {ip} 7000 </dev/null");
    args.extend([IMAGE, "sh", "-c", &script]);
    let out = env.rcrun(&args);
    String::from_utf8_lossy(&out.stdout).contains("pong")
}

fn infra_status(env: &Env) -> Value {
    serde_json::from_str(&env.ok(&["network", "infra"])).unwrap()
}

/// The veths (host ends) the infra holds.
fn veths(env: &Env) -> Vec<String> {
    let status = infra_status(env);
    if status.is_null() {
        return Vec::new();
    }
    status[1]["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .filter(|l| l.starts_with("rcv"))
        .map(str::to_string)
        .collect()
}

fn network_containers(env: &Env, network: &str) -> usize {
    let v: Value = serde_json::from_str(&env.ok(&["network", "inspect", network])).unwrap();
    v[0]["containers"].as_array().unwrap().len()
}

#[test]
fn containers_on_one_network_reach_each_other_and_leave_nothing() {
    let env = env();
    env.ok(&["network", "create", "ci"]);
    serve(&env, "server", &["ci"]);
    let ip = ip_on(&env, "server", "ci");
    assert!(ip.starts_with("10."), "{ip}");
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "ci",
        IMAGE,
        "sh",
        "-c",
        &format!("ping -c1 -W2 {ip} >/dev/null && echo ping-ok; ip -o link show eth0; ip route"),
    ]);
    assert!(out.contains("ping-ok"), "{out}");
    assert!(out.contains("mtu 1500"), "{out}");
    assert!(out.contains("default via"), "{out}");
    assert!(reaches(&env, &["ci"], &ip));
    assert_eq!(network_containers(&env, "ci"), 1);
    assert_eq!(veths(&env).len(), 1, "only the server's veth stays");

    env.ok(&["rm", "-f", "server"]);
    assert_eq!(network_containers(&env, "ci"), 0, "the lease is released");
    assert!(
        wait_until(WAIT, || veths(&env).is_empty()),
        "veths left: {:?}",
        veths(&env)
    );
    // The address is free again: the next container gets it.
    serve(&env, "again", &["ci"]);
    assert_eq!(ip_on(&env, "again", "ci"), ip);
}

#[test]
fn networks_are_isolated_and_a_container_can_be_on_two() {
    let env = env();
    env.ok(&["network", "create", "front"]);
    env.ok(&["network", "create", "back"]);
    serve(&env, "web", &["front"]);
    serve(&env, "db", &["back"]);
    let web = ip_on(&env, "web", "front");
    let db = ip_on(&env, "db", "back");
    assert!(
        reaches(&env, &["front", "back"], &web),
        "two networks: front"
    );
    assert!(reaches(&env, &["front", "back"], &db), "two networks: back");
    assert!(!reaches(&env, &["front"], &db), "front must not reach back");
    assert!(!reaches(&env, &["back"], &web), "back must not reach front");
}

#[test]
fn a_running_container_connects_and_disconnects() {
    let env = env();
    env.ok(&["network", "create", "app"]);
    env.ok(&["network", "create", "data"]);
    serve(&env, "db", &["data"]);
    env.ok(&["network", "connect", "--alias", "database", "app", "db"]);
    let on_app = ip_on(&env, "db", "app");
    assert!(reaches(&env, &["app"], &on_app), "reachable once connected");
    let v: Value = serde_json::from_str(&env.ok(&["inspect", "db"])).unwrap();
    let app = v[0]["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["network"] == "app")
        .unwrap()
        .clone();
    assert_eq!(app["ifname"], "eth1");
    assert_eq!(app["aliases"][0], "database");
    env.ok(&["network", "disconnect", "app", "db"]);
    assert!(
        !reaches(&env, &["app"], &on_app),
        "unreachable once disconnected"
    );
    assert_eq!(network_containers(&env, "app"), 0);
    assert!(reaches(&env, &["data"], &ip_on(&env, "db", "data")));
    env.fails(
        &["network", "disconnect", "app", "db"],
        "is not on network app",
    );
}

#[test]
fn twenty_concurrent_containers_get_distinct_addresses() {
    let env = env();
    env.ok(&["network", "create", "many"]);
    let children: Vec<_> = (0..20)
        .map(|i| {
            env.cmd(&[
                "run",
                "-d",
                "--name",
                &format!("c{i}"),
                "--network",
                "many",
                IMAGE,
                "sleep",
                "60",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut ips: Vec<String> = (0..20)
        .map(|i| ip_on(&env, &format!("c{i}"), "many"))
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "{ips:?}");
    assert_eq!(veths(&env).len(), 20);
}

#[test]
fn kill_9_of_a_foreground_run_frees_its_lease_and_veth() {
    let env = env();
    env.ok(&["network", "create", "k"]);
    let mut child = env
        .cmd(&[
            "run",
            "--name",
            "victim",
            "--network",
            "k",
            IMAGE,
            "sleep",
            "600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(WAIT, || env.ps(false).len() == 1),
        "the container never ran"
    );
    assert_eq!(veths(&env).len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    // Any command notices: the container is gone and its lease freed.
    assert!(
        wait_until(WAIT, || env.ps(false).is_empty()),
        "the container outlived its rcrun"
    );
    assert_eq!(network_containers(&env, "k"), 0, "lease left behind");
    let all = env.ps(true);
    assert_eq!(all[0]["exit_code"], 137, "{all:?}");
    assert!(
        wait_until(WAIT, || veths(&env).is_empty()),
        "veth left: {:?}",
        veths(&env)
    );
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// The IPv4 address of this host's first non-loopback interface, if any.
fn host_address() -> Option<String> {
    let route = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = route.lines().nth(1)?.split_whitespace().next()?.to_string();
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", &iface])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    Some(cidr.split('/').next()?.to_string())
}

#[test]
fn published_ports_reach_the_container_from_the_host() {
    let env = env();
    env.ok(&["network", "create", "pub"]);
    let script = "mkdir -p /www/cgi-bin && echo hello > /www/index.html && \
                  printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/peer && \
                  chmod +x /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www";
    env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "pub",
        "-p",
        "8080",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    let port_line = env.ok(&["port", "web"]);
    let host = port_line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(port_line.starts_with("8080/tcp -> 0.0.0.0:"), "{port_line}");
    let port = host.rsplit(':').next().unwrap();
    let local = format!("127.0.0.1:{port}");
    assert!(
        wait_until(WAIT, || TcpStream::connect(&local)
            .and_then(|mut s| {
                write!(s, "GET / HTTP/1.0\r\n\r\n")?;
                let mut b = String::new();
                s.read_to_string(&mut b)?;
                Ok(b.contains("hello"))
            })
            .unwrap_or(false)),
        "the published port never answered"
    );
    // A loopback client cannot be shown to the container (127.0.0.1 there is the
    // container itself): it sees its network's gateway instead.
    let peer = http_get(&local, "/cgi-bin/peer");
    let gateway = {
        let v: Value = serde_json::from_str(&env.ok(&["network", "inspect", "pub"])).unwrap();
        v[0]["subnets"][0][1].as_str().unwrap().to_string()
    };
    let seen = peer.lines().last().unwrap_or_default();
    assert!(
        seen.trim_start_matches("[::ffff:").trim_end_matches(']') == gateway,
        "{peer}"
    );
    // Any other client keeps its address: the infra connects with it.
    let addr = host_address().expect("the host has an IPv4 address besides loopback");
    assert!(http_get(&format!("{addr}:{port}"), "/").contains("hello"));
    let peer = http_get(&format!("{addr}:{port}"), "/cgi-bin/peer");
    let seen = peer.lines().last().unwrap_or_default();
    assert_eq!(
        seen.trim_start_matches("[::ffff:").trim_end_matches(']'),
        addr,
        "{peer}"
    );

    // The port is taken now: a second container asking for it fails first.
    env.fails(
        &[
            "run",
            "--rm",
            "--network",
            "pub",
            "-p",
            &format!("{port}:80"),
            IMAGE,
            "true",
        ],
        "already in use",
    );
    assert_eq!(env.ps(true).len(), 1, "the failed container left a record");
    assert_eq!(
        network_containers(&env, "pub"),
        1,
        "the failed run kept a lease"
    );

    env.ok(&["rm", "-f", "web"]);
    assert!(
        wait_until(WAIT, || TcpStream::connect(&local).is_err()),
        "the port stayed open after the container went"
    );
}

#[test]
fn egress_reaches_the_hosts_loopback_only_when_asked_and_never_from_internal() {
    let env = env();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"from-host\n");
        }
    });
    env.ok(&["network", "create", "out"]);
    env.ok(&["network", "create", "--internal", "sealed"]);
    let probe = |network: &str, add_host: bool| -> String {
        let mut args = vec!["run", "--rm", "--network", network];
        if add_host {
            args.extend(["--add-host", "host.rcrun.internal:host-gateway"]);
        }
        let script = format!(
            "grep host.rcrun.internal /etc/hosts; nc -w 3 host.rcrun.internal {port} </dev/null || nc -w 3 10.0.2.2 {port} </dev/null"
        );
        args.extend([IMAGE, "sh", "-c", &script]);
        let out = env.rcrun(&args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let allowed = probe("out", true);
    let status = infra_status(&env);
    assert!(
        status[0]["egress_off"].is_null(),
        "egress is off on this machine: {} (CI makes /dev/net/tun usable and installs slirp4netns)",
        status[0]["egress_off"]
    );
    assert!(allowed.contains("from-host"), "{allowed}");
    assert!(
        !probe("out", false).contains("from-host"),
        "host access without asking"
    );
    assert!(
        !probe("sealed", true).contains("from-host"),
        "an internal network got out"
    );
}

#[test]
fn bad_network_input_is_refused_with_nothing_left_behind() {
    let env = env();
    env.fails(
        &["run", "--rm", "--network", "nope", IMAGE, "true"],
        "network \"nope\" not found",
    );
    env.ok(&["network", "create", "--subnet", "10.89.50.0/24", "fixed"]);
    env.fails(
        &["network", "create", "--subnet", "10.89.50.128/25", "other"],
        "overlaps network \"fixed\"",
    );
    env.fails(&["network", "create", "fixed"], "already exists");
    env.fails(
        &["network", "create", "--subnet", "10.89.51.1/24", "x"],
        "host bits set",
    );
    env.fails(&["network", "create", "bad/name"], "invalid network name");
    env.fails(
        &["network", "create", "--subnet", "10.0.2.0/24", "slirp"],
        "egress uses",
    );
    env.fails(
        &[
            "run",
            "--rm",
            "--network",
            "fixed",
            "--ip",
            "10.89.60.5",
            IMAGE,
            "true",
        ],
        "outside network",
    );
    env.fails(
        &[
            "run",
            "--rm",
            "--network",
            "fixed",
            "--ip",
            "10.89.50.1",
            IMAGE,
            "true",
        ],
        "reserved",
    );
    env.ok(&[
        "run",
        "-d",
        "--name",
        "holder",
        "--network",
        "fixed",
        "--ip",
        "10.89.50.9",
        IMAGE,
        "sleep",
        "60",
    ]);
    assert_eq!(ip_on(&env, "holder", "fixed"), "10.89.50.9");
    env.fails(
        &[
            "run",
            "--rm",
            "--network",
            "fixed",
            "--ip",
            "10.89.50.9",
            IMAGE,
            "true",
        ],
        "already in use on network \"fixed\" by container holder",
    );
    env.fails(&["network", "rm", "fixed"], "in use by container(s) holder");
    env.fails(
        &["run", "--rm", "-p", "80/sctp", IMAGE, "true"],
        "tcp or udp",
    );
    env.fails(
        &[
            "run",
            "--rm",
            "--network",
            "host",
            "-p",
            "80",
            IMAGE,
            "true",
        ],
        "does nothing with --network host",
    );
    env.fails(&["network", "rm", "rcrun"], "default network");
    // Only the holder exists; every refused run left nothing.
    assert_eq!(env.ps(true).len(), 1);
    assert_eq!(network_containers(&env, "fixed"), 1);
    env.ok(&["network", "rm", "-f", "fixed"]);
    let names: Vec<Value> =
        serde_json::from_str(&env.ok(&["network", "ls", "--format", "json"])).unwrap();
    assert!(names.iter().all(|n| n["name"] != "fixed"));
}

#[test]
fn the_infra_exits_when_unused_and_a_dead_one_is_replaced() {
    let env = env();
    env.ok(&["run", "--rm", IMAGE, "true"]);
    let infra_pid = || infra_status(&env)[0]["pid"].as_i64().unwrap() as i32;
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    };
    let pid = infra_pid();
    // A killed infra is noticed and replaced; containers work again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(WAIT, || gone(pid)));
    let out = env.ok(&[
        "run",
        "--rm",
        "--name",
        "after",
        IMAGE,
        "sh",
        "-c",
        "ip -o -4 addr show eth0 | wc -l",
    ]);
    assert_eq!(out.trim(), "1");
    let replacement = infra_pid();
    assert_ne!(replacement, pid);
    // Unused, it goes away after its linger (the tests set it short). Watched
    // through /proc: asking it would keep it in use.
    assert!(
        wait_until(WAIT, || gone(replacement)),
        "the infra stayed up with nothing to serve"
    );
    assert!(infra_status(&env).is_null());
}
