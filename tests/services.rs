//! Service containers and `rcrun up`, end to end with real servers (MariaDB,
//! Redis, busybox httpd) and real clients (mysql, redis-cli, wget) inside
//! containers. CI runs this as root and as an unprivileged user.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Env, stderr, stdout, wait_until};
use serde_json::Value;

fn env() -> Env {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    env
}

fn write_file(env: &Env, name: &str, text: &str) -> PathBuf {
    let path = env.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn up(env: &Env, file: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["up", "-f", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    common::output_via_files(env.cmd(&args))
}

fn spawn_up(env: &Env, file: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["up", "-f", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.cmd(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child) -> (Option<i32>, String, String) {
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), out, err)
}

fn services(env: &Env) -> Vec<Value> {
    serde_json::from_str(&env.ok(&["service", "ls", "--format", "json"])).unwrap()
}

/// Waits until no service takes clients; how long that took.
fn await_no_services(env: &Env, limit: Duration) -> Duration {
    let start = Instant::now();
    assert!(
        wait_until(limit, || services(env).is_empty()),
        "services still run after {limit:?}: {:?}",
        services(env)
    );
    start.elapsed()
}

/// Waits until no container is left (a stopping service takes its stop timeout).
fn await_no_containers(env: &Env) {
    assert!(
        wait_until(Duration::from_secs(30), || env.ps(true).is_empty()),
        "{:?}",
        env.ps(true)
    );
}

/// A volume's file as the host sees it.
fn volume_file(env: &Env, volume: &str, file: &str) -> String {
    std::fs::read_to_string(
        env.data()
            .join("volumes")
            .join(volume)
            .join("_data")
            .join(file),
    )
    .unwrap_or_default()
}

/// The body of `GET /index.html` from a server on the host's side.
fn http_get(addr: std::net::SocketAddr) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .unwrap_or(response)
}

/// A busybox web server that records each start in its cache volume and only
/// listens after `delay` seconds.
fn web_service(delay: u32, extra: &str) -> String {
    format!(
        r#"
  web:
    image: busybox:1.35
    ports: [8080]
    stop_timeout: 1s
    cache: {{ web-data: /www }}
    entrypoint: ["sh", "-c", "echo started >> /www/starts; echo hello > /www/index.html; echo web-up-marker; sleep {delay}; exec httpd -f -p 8080 -h /www"]
{extra}"#
    )
}

#[test]
fn a_job_starts_only_once_its_service_is_healthy() {
    let env = env();
    // The server listens 2 s after it starts; the job tries exactly once.
    let gated = write_file(
        &env,
        "gated.yaml",
        &format!(
            "services:{}\njobs:\n  fetch:\n    image: busybox:1.35\n    bind: {{ w: web }}\n    run: wget -q -O- http://w:8080/index.html\n",
            web_service(2, "")
        ),
    );
    let out = up(&env, &gated, &["--grace", "0s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "hello");
    await_no_services(&env, Duration::from_secs(30));
    // Proof that the wait mattered: without a declared port there is nothing to
    // check, the service is ready at once, and the same job fails.
    let ungated = write_file(
        &env,
        "ungated.yaml",
        &format!(
            "services:{}\njobs:\n  fetch:\n    image: busybox:1.35\n    bind: {{ w: web }}\n    run: wget -q -O- http://w:8080/index.html\n",
            web_service(2, "").replace("    ports: [8080]\n", "")
        ),
    );
    let out = up(&env, &ungated, &["--grace", "0s"]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    await_no_services(&env, Duration::from_secs(30));
}

#[test]
fn a_job_reaches_mariadb_as_db_and_redis_as_cache_and_the_data_outlives_the_run() {
    let env = env();
    env.pull_fixture("mariadb", "10.11");
    env.pull_fixture("redis", "7.0");
    env.pull_fixture("client", "latest");
    // The Debian fixture has no docker-entrypoint: the service makes a remote root.
    let file = write_file(
        &env,
        "rcrun.yaml",
        r#"
services:
  db:
    image: mariadb:10.11
    ports: [3306]
    cache: { mariadb-data: /var/lib/mysql }
    health: { timeout: 120s }
    entrypoint:
      - sh
      - -c
      - |
        printf "CREATE USER IF NOT EXISTS 'root'@'%%' IDENTIFIED BY 'secret';\nGRANT ALL ON *.* TO 'root'@'%%';\n" > /tmp/init.sql
        exec mariadbd --skip-name-resolve --bind-address=0.0.0.0 --socket=/tmp/mysqld.sock --pid-file=/tmp/mysqld.pid --init-file=/tmp/init.sql
  kv:
    image: redis:7.0
    ports: [6379]
    cache: { redis-data: /var/lib/redis }
jobs:
  write:
    image: client:latest
    bind: { db: db, cache: kv }
    run: |
      set -e
      mysql -h db -uroot -psecret -e "CREATE DATABASE IF NOT EXISTS app; CREATE TABLE app.t (v TEXT); INSERT INTO app.t VALUES ('kept')"
      redis-cli -h cache ping
      redis-cli -h cache set greeting hi
      redis-cli -h cache save
  read:
    image: client:latest
    bind: { db: db, cache: kv }
    run: |
      set -e
      mysql -h db -uroot -psecret -N -e "SELECT v FROM app.t"
      redis-cli -h cache get greeting
"#,
    );
    let out = up(&env, &file, &["--grace", "0s", "write"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("PONG"), "{}", stdout(&out));
    await_no_services(&env, Duration::from_secs(60));
    // A second run: new containers, the same cache volumes.
    let out = up(&env, &file, &["--grace", "0s", "read"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(lines.contains(&"kept"), "{lines:?}");
    assert!(lines.contains(&"hi"), "{lines:?}");
    await_no_services(&env, Duration::from_secs(60));
    let volumes = env.ok(&["volume", "ls", "-q"]);
    assert!(volumes.lines().any(|v| v == "mariadb-data"), "{volumes}");
}

#[test]
fn concurrent_clients_share_one_run_which_stops_after_the_grace_period() {
    let env = env();
    let file = write_file(
        &env,
        "rcrun.yaml",
        &format!(
            "services:{}\njobs:\n  fetch:\n    image: busybox:1.35\n    bind: {{ w: web }}\n    run: wget -q -O- http://w:8080/starts\n",
            web_service(1, "")
        ),
    );
    // Both ask while the service is still starting.
    let first = spawn_up(&env, &file, &["--grace", "3s"]);
    let second = spawn_up(&env, &file, &["--grace", "3s"]);
    let (code1, out1, err1) = finish(first);
    let (code2, out2, err2) = finish(second);
    let done = Instant::now();
    assert_eq!(code1, Some(0), "{err1}");
    assert_eq!(code2, Some(0), "{err2}");
    assert_eq!(volume_file(&env, "web-data", "starts"), "started\n");
    assert_eq!(out1.trim(), "started");
    assert_eq!(out2.trim(), "started");
    let joined = [&err1, &err2]
        .iter()
        .filter(|e| e.contains("joining the running one"))
        .count();
    assert_eq!(joined, 1, "{err1}\n---\n{err2}");

    // Nobody holds it now: it waits out the grace period.
    let listed = services(&env);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "idle", "{listed:?}");
    assert!(listed[0]["grace_left_ms"].as_u64().unwrap() <= 3000);
    // A client inside the grace period reuses the run.
    let out = up(&env, &file, &["--grace", "3s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("joining the running one"),
        "{}",
        stderr(&out)
    );
    let released = Instant::now();
    assert_eq!(volume_file(&env, "web-data", "starts"), "started\n");
    // Gone after the grace period, and not before.
    await_no_services(&env, Duration::from_secs(30));
    assert!(
        released.elapsed() >= Duration::from_secs(3),
        "stopped {:?} after its last client, before the 3 s grace period",
        released.elapsed()
    );
    assert!(done.elapsed() >= Duration::from_secs(3));
    await_no_containers(&env);
}

#[test]
fn hostnames_are_the_same_across_runs_and_data_dirs_and_resolve() {
    let file_text = format!("services:{}", web_service(0, ""));
    let mut hostnames = Vec::new();
    for _ in 0..2 {
        let env = env();
        let file = write_file(&env, "rcrun.yaml", &file_text);
        let mut holder = env
            .cmd(&[
                "service",
                "up",
                "-f",
                file.to_str().unwrap(),
                "--grace",
                "0s",
                "-p",
                "127.0.0.1::8080",
                "web",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `service up` prints the published ports once the service is healthy.
        let mut published = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
            &mut published,
        )
        .unwrap();
        let host_port: std::net::SocketAddr = published
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(published.contains(":8080/tcp"), "{published}");
        assert_eq!(services(&env)[0]["state"], "ready");
        assert_eq!(http_get(host_port), "hello");
        let logs = env.ok(&["service", "logs", "web"]);
        assert!(logs.contains("web-up-marker"), "{logs}");
        let endpoint = env.ok(&["service", "endpoint", "web"]).trim().to_string();
        let (host, port) = endpoint.split_once(':').unwrap();
        assert_eq!(port, "8080");
        assert_eq!(
            env.ok(&["service", "endpoint", "web", "8080"]).trim(),
            endpoint
        );
        env.fails(
            &["service", "endpoint", "web", "9999"],
            "does not expose port 9999",
        );
        // The hostname through dnsd, the alias through /etc/hosts: one address.
        let got = env.ok(&[
            "run", "--rm", "-f", file.to_str().unwrap(), "--bind", "w=web", "busybox:1.35", "sh", "-c",
            &format!("wget -q -O- http://{host}:8080/index.html && wget -q -O- http://w:8080/index.html && nslookup {host} | tail -n +3 | grep Address && grep -w w /etc/hosts"),
        ]);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(&lines[..2], ["hello", "hello"], "{got}");
        let resolved = lines[2].split_whitespace().last().unwrap();
        let hosts = lines[3].split_whitespace().next().unwrap();
        assert_eq!(resolved, hosts, "{got}");
        let listed = services(&env);
        assert_eq!(listed[0]["hostname"], host);
        assert_eq!(listed[0]["address"], hosts);
        assert_eq!(
            listed[0]["clients"].as_array().unwrap().len(),
            1,
            "{listed:?}"
        );
        // A detached client's monitor holds the service for the container's life.
        let id = env.ok(&[
            "run",
            "-d",
            "-f",
            file.to_str().unwrap(),
            "--bind",
            "web2=web",
            "busybox:1.35",
            "sleep",
            "600",
        ]);
        let clients = || services(&env)[0]["clients"].as_array().unwrap().len();
        assert_eq!(clients(), 2);
        assert_eq!(services(&env)[0]["aliases"], serde_json::json!(["web2"]));
        env.ok(&["rm", "-f", id.trim()]);
        assert!(wait_until(Duration::from_secs(10), || clients() == 1));
        hostnames.push(host.to_string());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(holder.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        assert_eq!(holder.wait().unwrap().code(), Some(0));
        let mut err = String::new();
        holder
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        await_no_services(&env, Duration::from_secs(30));
        // The infra drops the port when it sees `service up`'s connection close.
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
                host_port
            )
            .is_err()),
            "{host_port} is still published"
        );
    }
    assert_eq!(hostnames[0], hostnames[1]);
}

#[test]
fn a_service_that_never_gets_healthy_fails_naming_the_port_with_its_log() {
    let env = env();
    let file = write_file(
        &env,
        "rcrun.yaml",
        r#"
services:
  web:
    image: busybox:1.35
    ports: [8080]
    health: { timeout: 2s }
    stop_timeout: 1s
    entrypoint: ["sh", "-c", "echo still-booting-marker; exec sleep 600"]
jobs:
  never:
    image: busybox:1.35
    bind: { w: web }
    run: echo the-job-ran
"#,
    );
    let out = up(&env, &file, &[]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("port 8080/tcp"), "{err}");
    assert!(err.contains("not healthy after 2s"), "{err}");
    assert!(err.contains("still-booting-marker"), "{err}");
    assert!(!stdout(&out).contains("the-job-ran"));
    // The failed run was cleaned up before the error came back.
    assert!(services(&env).is_empty());
    assert!(env.ps(true).is_empty(), "{:?}", env.ps(true));
}

#[test]
fn a_service_that_dies_under_its_clients_is_reported() {
    let env = env();
    let file = write_file(
        &env,
        "rcrun.yaml",
        r#"
services:
  web:
    image: busybox:1.35
    ports: [8080]
    entrypoint: ["sh", "-c", "httpd -p 8080 -h /; sleep 1; echo going-down-marker; exit 3"]
jobs:
  wait:
    image: busybox:1.35
    bind: { w: web }
    run: sleep 4; echo job-done
"#,
    );
    let out = up(&env, &file, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout(&out).contains("job-done"));
    assert!(
        err.contains("service web exited with code 3 while jobs use it"),
        "{err}"
    );
    assert!(err.contains("going-down-marker"), "{err}");
    await_no_services(&env, Duration::from_secs(30));
}

#[test]
fn an_interrupt_stops_the_jobs_and_lets_go_of_the_services() {
    let env = env();
    let file = write_file(
        &env,
        "rcrun.yaml",
        &format!(
            "services:{}\njobs:\n  long:\n    image: busybox:1.35\n    bind: {{ w: web }}\n    run: echo job-started; exec sleep 600\n",
            web_service(0, "")
        ),
    );
    let child = env
        .cmd(&["up", "-f", file.to_str().unwrap(), "--grace", "0s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    assert!(
        wait_until(Duration::from_secs(30), || env.ps(false).len() == 2),
        "the job never started: {:?}",
        env.ps(true)
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let (code, out, err) = finish(child);
    assert_eq!(code, Some(130), "{err}");
    assert!(out.contains("job-started"));
    assert!(err.contains("interrupted"), "{err}");
    await_no_services(&env, Duration::from_secs(30));
    await_no_containers(&env);
}

#[test]
fn bad_up_files_and_bindings_are_rejected_with_file_and_line() {
    let env = env();
    let cases = [
        (
            "services:\n  web:\n    image: busybox:1.35\n    portz: [1]\n",
            ":4:5: services.web.portz: unknown key",
        ),
        (
            "services:\n  web:\n    image: busybox:1.35\njobs:\n  t:\n    image: busybox:1.35\n    bind: { w: nope }\n",
            ":7:",
        ),
        (
            "services:\n  web:\n    image: busybox:1.35\n    ports: [abc]\n",
            ":4:13: services.web.ports[0]",
        ),
        ("jobs:\n  t:\n    image: [1]\n", ":3:12: jobs.t.image"),
    ];
    for (text, needle) in cases {
        let file = write_file(&env, "bad.yaml", text);
        let out = up(&env, &file, &[]);
        assert_eq!(out.status.code(), Some(125), "{text}");
        let err = stderr(&out);
        assert!(err.contains(&format!("bad.yaml{needle}")), "{text}: {err}");
    }
    let missing = env.dir.path().join("missing.yaml");
    env.fails(&["up", "-f", missing.to_str().unwrap()], "no such file");
    let file = write_file(
        &env,
        "rcrun.yaml",
        &format!(
            "services:{}\njobs:\n  t:\n    image: busybox:1.35\n    run: true\n",
            web_service(0, "")
        ),
    );
    let f = file.to_str().unwrap();
    env.fails(&["up", "-f", f, "nosuchjob"], "no job \"nosuchjob\"");
    env.fails(
        &[
            "run",
            "--rm",
            "-f",
            f,
            "--bind",
            "w=nope",
            "busybox:1.35",
            "true",
        ],
        "no service \"nope\"",
    );
    env.fails(
        &[
            "run",
            "--rm",
            "-f",
            f,
            "--bind",
            "w",
            "busybox:1.35",
            "true",
        ],
        "expected ALIAS=SERVICE",
    );
    env.fails(
        &[
            "run",
            "--rm",
            "-f",
            f,
            "--bind",
            "bad_alias=web",
            "busybox:1.35",
            "true",
        ],
        "--bind",
    );
    env.fails(
        &[
            "run",
            "--rm",
            "-f",
            f,
            "--bind",
            "w=web",
            "--network",
            "none",
            "busybox:1.35",
            "true",
        ],
        "--bind needs the container on the rcrun network",
    );
    env.fails(
        &["service", "logs", "nothing"],
        "no running service nothing",
    );
    // Nothing was started or left behind.
    assert!(services(&env).is_empty());
    assert!(env.ps(true).is_empty(), "{:?}", env.ps(true));
}

#[test]
fn a_service_is_stopped_with_its_stop_signal_before_its_stop_timeout() {
    let env = env();
    // `up` blocks SIGINT and SIGTERM for itself; the service must not inherit that.
    let file = write_file(
        &env,
        "rcrun.yaml",
        r#"
services:
  web:
    image: busybox:1.35
    ports: [8080]
    stop_timeout: 120s
    cache: { stops: /www }
    entrypoint: ["sh", "-c", "trap 'echo stopped-by-term >> /www/stops; exit 0' TERM; httpd -p 8080 -h /www; sleep 600 & wait"]
jobs:
  quick:
    image: busybox:1.35
    bind: { w: web }
    run: "true"
"#,
    );
    let out = up(&env, &file, &["--grace", "0s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    await_no_services(&env, Duration::from_secs(30));
    // Well before the 120 s stop timeout, and by the service's own handler.
    await_no_containers(&env);
    assert_eq!(volume_file(&env, "stops", "stops"), "stopped-by-term\n");
}

#[test]
fn several_jobs_share_the_services_and_the_first_failure_is_the_exit_code() {
    let env = env();
    let file = write_file(
        &env,
        "rcrun.yaml",
        &format!(
            "services:{}\njobs:\n  ok:\n    image: busybox:1.35\n    bind: {{ w: web }}\n    run: wget -q -O- http://w:8080/index.html\n  bad:\n    image: busybox:1.35\n    bind: {{ site: web }}\n    run: wget -q -O- http://site:8080/index.html; exit 3\n",
            web_service(0, "")
        ),
    );
    let out = up(&env, &file, &["--grace", "0s"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l == "ok | hello"), "{text}");
    assert!(text.lines().any(|l| l == "bad | hello"), "{text}");
    assert_eq!(volume_file(&env, "web-data", "starts"), "started\n");
    // A failed job shows the services' last lines.
    assert!(stderr(&out).contains("web-up-marker"), "{}", stderr(&out));
    await_no_services(&env, Duration::from_secs(30));
    await_no_containers(&env);
}

#[test]
fn a_client_killed_outright_lets_go_of_its_services() {
    let env = env();
    let file = write_file(
        &env,
        "rcrun.yaml",
        &format!(
            "services:{}\njobs:\n  long:\n    image: busybox:1.35\n    bind: {{ w: web }}\n    run: exec sleep 600\n",
            web_service(0, "")
        ),
    );
    let mut child = env
        .cmd(&["up", "-f", file.to_str().unwrap(), "--grace", "0s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || env.ps(false).len() == 2),
        "{:?}",
        env.ps(true)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // No goodbye: the kernel closed its connection; the job went with its runner.
    await_no_services(&env, Duration::from_secs(30));
    await_no_containers(&env);
}

#[test]
fn up_keep_holds_the_services_after_the_jobs_until_interrupted() {
    let env = env();
    let file = write_file(
        &env,
        "rcrun.yaml",
        &format!(
            "services:{}\njobs:\n  quick:\n    image: busybox:1.35\n    bind: {{ w: web }}\n    run: exit 4\n",
            web_service(0, "")
        ),
    );
    let mut child = env
        .cmd(&[
            "up",
            "-f",
            file.to_str().unwrap(),
            "--grace",
            "0s",
            "--keep",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the job is over `up` says it keeps the services.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("press Ctrl-C") {
        assert!(
            std::io::BufRead::read_line(&mut err, &mut said).unwrap() > 0,
            "{said}"
        );
    }
    assert!(said.contains("keeping service web at"), "{said}");
    assert!(env.ps(true).len() == 1, "{:?}", env.ps(true));
    let listed = services(&env);
    assert_eq!(listed[0]["state"], "ready");
    assert_eq!(listed[0]["clients"].as_array().unwrap().len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    // The job's exit code, not the interrupt's.
    assert_eq!(child.wait().unwrap().code(), Some(4), "{said}");
    await_no_services(&env, Duration::from_secs(30));
    await_no_containers(&env);
}
