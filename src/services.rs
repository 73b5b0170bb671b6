//! Service containers with Dagger's semantics.
//!
//! A service is identified by the digest of its canonical definition, runs at most
//! once per data dir however many rcrun processes ask for it, is healthy before any
//! client gets it, and stops a grace period after its last client lets go.
//!
//! Each running service has a supervisor: a fork of rcrun that is also the service
//! container's monitor. It listens on `<runtime>/services/<key>.sock`, and a client
//! holds the service by keeping a connection open, so the kernel lets go for a
//! client that dies. `<key>.lock` orders "connect or start" against the
//! supervisor's decision to stop; `<key>.run` is held by a supervisor for its whole
//! life, so a new run of a service never overlaps the end of the previous one.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::containers::{Containers, NetworkMode, RunFlags};
use crate::db::ImageRow;
use crate::images::PullOptions;
use crate::networks;
use crate::spec::RunRequest;
use crate::upfile::{PortSpec, ServiceDef};

/// How much of a service's log a failure report shows.
pub const LOG_TAIL_LINES: usize = 20;

/// A service definition with its image resolved.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its name in the up-file, for messages.
    pub name: String,
    pub def: ServiceDef,
    pub image: ImageRow,
    pub image_name: String,
    /// The digest of the canonical definition (hex).
    pub key: String,
}

impl Service {
    /// Finds (or pulls) the service's image and computes its key.
    pub fn resolve(
        containers: &mut Containers,
        name: &str,
        def: &ServiceDef,
        pull: &PullOptions,
    ) -> Result<Self> {
        let image = containers
            .find_or_pull(&def.image, pull)
            .with_context(|| format!("service {name}: image {}", def.image))?;
        let key = definition_key(def, &image.id);
        Ok(Service {
            name: name.to_string(),
            def: def.clone(),
            image,
            image_name: def.image.clone(),
            key,
        })
    }

    /// The service's hostname: derived from its key only, so the same definition
    /// has the same name on every run and machine.
    pub fn hostname(&self) -> String {
        hostname_of(&self.key)
    }

    fn file(&self, dir: &Path, ext: &str) -> PathBuf {
        // Half the digest keeps socket paths well under sun_path's 108 bytes.
        dir.join(format!("{}.{ext}", &self.key[..32]))
    }
}

/// The digest of a definition: the image by digest, never by tag, and everything
/// that changes what runs. Health checks are not part of it: they change when a
/// client may use the service, not what the service is.
fn definition_key(def: &ServiceDef, image_id: &str) -> String {
    let mut ports: Vec<String> = def.ports.iter().map(port_label).collect();
    ports.sort();
    let canonical = serde_json::json!({
        "image": image_id,
        "entrypoint": def.entrypoint,
        "command": def.command,
        "env": def.env,
        "ports": ports,
        "cache": def.cache,
        "user": def.user,
        "workdir": def.workdir,
        "instance": def.instance,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// 13 characters of lowercase base32 (RFC 4648 alphabet) of the key's bytes, as
/// Dagger shortens digests into hostnames: a valid DNS label, 65 bits.
pub fn hostname_of(key: &str) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bytes: Vec<u8> = (0..9)
        .map(|i| u8::from_str_radix(&key[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    let bits = bytes.iter().fold(0u128, |acc, b| (acc << 8) | *b as u128);
    // 72 bits; the first 65 make 13 characters.
    (0..13)
        .map(|i| ALPHABET[((bits >> (72 - 5 * (i + 1))) & 31) as usize] as char)
        .collect()
}

pub fn port_label(p: &PortSpec) -> String {
    format!("{}/{}", p.port, p.protocol)
}

/// What a supervisor tells about its service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub key: String,
    pub name: String,
    pub hostname: String,
    pub container: String,
    pub address: Option<IpAddr>,
    pub ports: Vec<String>,
    /// Every alias its clients bind it under.
    pub aliases: Vec<String>,
    pub clients: Vec<String>,
    /// starting, ready, idle (grace timer running) or stopping.
    pub state: String,
    pub grace_left_ms: Option<u64>,
    pub supervisor: i32,
    pub started: String,
    pub log: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ToSupervisor {
    Hold {
        client: String,
        aliases: Vec<String>,
        grace_ms: u64,
    },
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FromSupervisor {
    Ready(Info),
    Failed(String),
    Exited { code: i32, log: String },
    Status(Info),
}

/// Who holds a service, under which aliases, and for how long it lingers after
/// the last holder goes.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub client: String,
    pub aliases: Vec<String>,
    pub grace: Duration,
}

/// A service asked for, not yet known to be healthy.
pub struct Pending {
    service: Service,
    stream: UnixStream,
    started: bool,
}

impl Pending {
    /// Whether this process started the service (rather than joined a run).
    pub fn started(&self) -> bool {
        self.started
    }
}

/// A healthy service this process holds: it runs at least as long as this lives.
pub struct Held {
    pub service: Service,
    pub info: Info,
    stream: UnixStream,
}

/// What a held service reported while held.
#[derive(Debug)]
pub enum Event {
    /// The service ended on its own (code, last lines of its log).
    Exited(i32, String),
    /// Its supervisor went away without a word.
    Lost,
}

impl AsFd for Held {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl Held {
    /// Reads what the supervisor said, once its connection is readable.
    pub fn event(&mut self) -> Event {
        let mut line = String::new();
        let mut reader = BufReader::new(&self.stream);
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => match serde_json::from_str(&line) {
                Ok(FromSupervisor::Exited { code, log }) => Event::Exited(code, log),
                _ => Event::Lost,
            },
            _ => Event::Lost,
        }
    }

    pub fn endpoint(&self, port: Option<u16>) -> Result<String> {
        endpoint(&self.info, port)
    }
}

/// `hostname:port`, the first exposed port by default.
pub fn endpoint(info: &Info, port: Option<u16>) -> Result<String> {
    let exposed: Vec<u16> = info
        .ports
        .iter()
        .filter_map(|p| p.split('/').next()?.parse().ok())
        .collect();
    let port = match port {
        Some(p) if exposed.contains(&p) => p,
        Some(p) => bail!(
            "service {} does not expose port {p} (it exposes {}); add it to its ports",
            info.name,
            info.ports.join(", ")
        ),
        None => *exposed.first().ok_or_else(|| {
            anyhow!(
                "service {} exposes no ports; give it `ports:` in the up-file",
                info.name
            )
        })?,
    };
    Ok(format!("{}:{port}", info.hostname))
}

/// `<runtime>/services`, where supervisors listen.
pub fn services_dir(data_dir: &Path) -> Result<PathBuf> {
    let dir = networks::runtime_dir(data_dir)?.join("services");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn lock_file(path: &Path) -> Result<Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("lock {}: {e}", path.display()))
}

fn send(stream: &mut UnixStream, message: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Joins the running service or starts it; returns at once (use [`await_ready`]).
/// Only `containers`' process may be single-threaded here: starting forks.
pub fn request(
    containers: &mut Containers,
    service: &Service,
    hold: &HoldRequest,
) -> Result<Pending> {
    let dir = services_dir(containers.data_dir())?;
    let socket = service.file(&dir, "sock");
    let _lock = lock_file(&service.file(&dir, "lock"))?;
    let mut started = false;
    let mut stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            // No supervisor, or a dead one's socket: start a run.
            let _ = std::fs::remove_file(&socket);
            start_supervisor(containers, service, &dir)?;
            started = true;
            UnixStream::connect(&socket)
                .with_context(|| format!("connect to the supervisor of service {}", service.name))?
        }
        Err(e) => {
            return Err(e).with_context(|| format!("connect to {}", socket.display()));
        }
    };
    send(
        &mut stream,
        &ToSupervisor::Hold {
            client: hold.client.clone(),
            aliases: hold.aliases.clone(),
            grace_ms: hold.grace.as_millis() as u64,
        },
    )
    .with_context(|| format!("hold service {}", service.name))?;
    Ok(Pending {
        service: service.clone(),
        stream,
        started,
    })
}

/// Waits until every service is healthy; the first failure ends the wait (and
/// lets go of the others). `interrupted` is polled too: when it becomes readable
/// the wait ends with an error.
pub fn await_ready(
    pending: Vec<Pending>,
    interrupted: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<Vec<Held>> {
    let mut readers: Vec<(Pending, Vec<u8>)> =
        pending.into_iter().map(|p| (p, Vec::new())).collect();
    let mut ready: Vec<Option<Info>> = vec![None; readers.len()];
    while ready.iter().any(Option::is_none) {
        let waiting: Vec<usize> = (0..readers.len()).filter(|i| ready[*i].is_none()).collect();
        let mut fds: Vec<PollFd> = waiting
            .iter()
            .map(|i| PollFd::new(readers[*i].0.stream.as_fd(), PollFlags::POLLIN))
            .collect();
        if let Some(fd) = &interrupted {
            fds.push(PollFd::new(*fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("wait for services"),
            Ok(_) => {}
        }
        if interrupted.is_some()
            && fds
                .last()
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        {
            return Err(anyhow::Error::new(crate::Failure {
                code: 130,
                message: "interrupted while waiting for services".into(),
            }));
        }
        let readable: Vec<usize> = waiting
            .iter()
            .zip(&fds)
            .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(i, _)| *i)
            .collect();
        for i in readable {
            let (p, buf) = &mut readers[i];
            let mut chunk = [0u8; 64 * 1024];
            let n = p.stream.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                bail!(
                    "the supervisor of service {} went away before the service was ready (see `rcrun service logs {}`)",
                    p.service.name,
                    p.service.name
                );
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                continue;
            };
            let message: FromSupervisor = serde_json::from_slice(&buf[..end])
                .with_context(|| format!("read the supervisor of service {}", p.service.name))?;
            buf.drain(..=end);
            match message {
                FromSupervisor::Ready(info) => ready[i] = Some(info),
                FromSupervisor::Failed(message) => bail!("service {}: {message}", p.service.name),
                FromSupervisor::Exited { code, log } => bail!(
                    "service {} exited with code {code} before it was ready; the last lines of its log:\n{log}",
                    p.service.name
                ),
                FromSupervisor::Status(_) => {}
            }
        }
    }
    Ok(readers
        .into_iter()
        .zip(ready)
        .map(|((p, _), info)| Held {
            service: p.service,
            info: info.expect("every service is ready"),
            stream: p.stream,
        })
        .collect())
}

/// Every running service, as its supervisor describes it.
pub fn running(data_dir: &Path) -> Result<Vec<Info>> {
    let dir = services_dir(data_dir)?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "sock") {
            continue;
        }
        let Ok(mut stream) = UnixStream::connect(&path) else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if send(&mut stream, &ToSupervisor::Status).is_err() {
            continue;
        }
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_ok()
            && let Ok(FromSupervisor::Status(info)) = serde_json::from_str(&line)
        {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.key.cmp(&b.key)));
    Ok(out)
}

/// A running service by up-file name, hostname or key prefix.
pub fn find_running(data_dir: &Path, key: &str) -> Result<Info> {
    let all = running(data_dir)?;
    let matches: Vec<&Info> = all
        .iter()
        .filter(|i| {
            i.name == key || i.hostname == key || (key.len() >= 6 && i.key.starts_with(key))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no running service {key} (see `rcrun service ls`)"),
        many => bail!(
            "{} running services match {key}: use a hostname or key instead ({})",
            many.len(),
            many.iter()
                .map(|i| i.hostname.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    if out.is_empty() {
        out = "(the log is empty)".into();
    }
    out
}

/// Forks the supervisor (detached: a grandchild in its own session) and returns
/// once it listens.
fn start_supervisor(containers: &mut Containers, service: &Service, dir: &Path) -> Result<()> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create a pipe")?;
    let data_dir = containers.data_dir().to_path_buf();
    match containers.fork("the service's supervisor")? {
        ForkResult::Child => {
            drop(read_end);
            let _ = nix::unistd::setsid();
            // SAFETY: as above.
            match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Child) => {
                    let code = Supervisor::run(service, &data_dir, dir, write_end);
                    std::process::exit(code)
                }
                // SAFETY: leaves without running the parent's destructors.
                _ => unsafe { libc::_exit(0) },
            }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut answer = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut answer);
            if answer == "ok" {
                Ok(())
            } else if answer.is_empty() {
                bail!(
                    "the supervisor of service {} died as it started",
                    service.name
                )
            } else {
                bail!("start service {}: {answer}", service.name)
            }
        }
    }
}

struct Client {
    stream: UnixStream,
    name: String,
    aliases: Vec<String>,
    grace: Duration,
}

enum Phase {
    Starting {
        deadline: Instant,
        next_probe: Instant,
        pause: Duration,
        unopened: Vec<PortSpec>,
        last_problem: String,
    },
    Ready,
    Idle {
        until: Instant,
    },
}

/// How a run ended, for the supervisor's exit.
enum End {
    /// Stopped after the grace period.
    Stopped,
    /// The service died on its own: its exit code.
    Exited(i32),
    /// It never became healthy.
    Unhealthy(String),
}

struct Supervisor {
    service: Service,
    containers: Containers,
    id: String,
    pid: Pid,
    pidfd: OwnedFd,
    listener: Option<UnixListener>,
    socket: PathBuf,
    lock: PathBuf,
    clients: Vec<Client>,
    /// The grace period the latest client asked for.
    grace: Duration,
    phase: Phase,
    address: Option<IpAddr>,
    started: String,
    // Held to the end: the network goes with it.
    net: crate::containers::ContainerNet,
}

impl Supervisor {
    /// The supervisor's life: listen, report to the starter, wait for the previous
    /// run's end, create and start the container, then serve until the end.
    fn run(service: &Service, data_dir: &Path, dir: &Path, report: OwnedFd) -> i32 {
        // A client such as `up` blocks SIGINT and SIGTERM for itself; the service
        // (which inherits the mask) must get its stop signal.
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        );
        let mut report = std::fs::File::from(report);
        let socket = service.file(dir, "sock");
        let listener = match UnixListener::bind(&socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = write!(report, "listen on {}: {e}", socket.display());
                return 125;
            }
        };
        let _ = report.write_all(b"ok");
        drop(report);
        let started = (|| -> Result<_> {
            let run = lock_file(&service.file(dir, "run"))?;
            // No descriptor of the client that forked us; output nowhere until
            // the container's log exists.
            crate::containers::redirect_stdin_to_null()?;
            crate::containers::redirect_output_to(Path::new("/dev/null"))?;
            crate::containers::close_other_fds(&[listener.as_raw_fd(), run.as_raw_fd()]);
            let supervisor = Supervisor::start(service, data_dir, dir, listener.try_clone()?)?;
            Ok((run, supervisor))
        })();
        match started {
            Ok((_run, mut supervisor)) => {
                // The supervisor's copy is the only one: closing it stops the listening.
                drop(listener);
                let end = supervisor.serve();
                supervisor.finish(end)
            }
            Err(e) => {
                fail_backlog(&listener, &format!("{e:#}"));
                let _ = std::fs::remove_file(&socket);
                125
            }
        }
    }

    fn start(
        service: &Service,
        data_dir: &Path,
        dir: &Path,
        listener: UnixListener,
    ) -> Result<Self> {
        let mut containers = Containers::open(data_dir)?;
        let flags = run_flags(service);
        let (id, overlay, net) = containers.create(&service.image, &service.image_name, &flags)?;
        let net = net.ok_or_else(|| anyhow!("the service has no network"))?;
        let started = crate::containers::redirect_output_to(&containers.log_path(&id))
            .and_then(|()| containers.start_attached(&id, overlay))
            .and_then(|pid| Ok((pid, crate::containers::pidfd_open(pid)?)));
        let (pid, pidfd) = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = containers.finish_service(&id, 125);
                return Err(e);
            }
        };
        let address = containers.primary_address(&id).ok().flatten();
        let now = Instant::now();
        let _ = listener.set_nonblocking(true);
        Ok(Supervisor {
            service: service.clone(),
            id,
            pid,
            pidfd,
            listener: Some(listener),
            socket: service.file(dir, "sock"),
            lock: service.file(dir, "lock"),
            clients: Vec::new(),
            grace: Duration::from_secs(10),
            phase: Phase::Starting {
                deadline: now + service.def.health.timeout,
                next_probe: now,
                pause: Duration::from_millis(5),
                unopened: service.def.ports.clone(),
                last_problem: "not checked yet".into(),
            },
            address,
            started: runtime::now_rfc3339(),
            containers,
            net,
        })
    }

    fn info(&self) -> Info {
        let mut aliases = BTreeSet::new();
        for c in &self.clients {
            aliases.extend(c.aliases.iter().cloned());
        }
        let (state, grace_left_ms) = match &self.phase {
            Phase::Starting { .. } => ("starting", None),
            Phase::Ready => ("ready", None),
            Phase::Idle { until } => (
                "idle",
                Some(until.saturating_duration_since(Instant::now()).as_millis() as u64),
            ),
        };
        Info {
            key: self.service.key.clone(),
            name: self.service.name.clone(),
            hostname: self.service.hostname(),
            container: self.id.clone(),
            address: self.address,
            ports: self.service.def.ports.iter().map(port_label).collect(),
            aliases: aliases.into_iter().collect(),
            clients: self.clients.iter().map(|c| c.name.clone()).collect(),
            state: state.into(),
            grace_left_ms,
            supervisor: std::process::id() as i32,
            started: self.started.clone(),
            log: self.containers.log_path(&self.id),
        }
    }

    fn serve(&mut self) -> End {
        loop {
            let now = Instant::now();
            if let Phase::Starting {
                deadline,
                next_probe,
                ..
            } = &self.phase
            {
                if now >= *next_probe {
                    if let Some(end) = self.check_health() {
                        return end;
                    }
                    continue;
                }
                if now >= *deadline {
                    return End::Unhealthy(self.unhealthy_message());
                }
            }
            if let Phase::Idle { until } = self.phase
                && now >= until
                && self.close_if_unwanted()
            {
                return End::Stopped;
            }
            let wake = match &self.phase {
                Phase::Starting {
                    next_probe,
                    deadline,
                    ..
                } => Some((*next_probe).min(*deadline)),
                Phase::Idle { until } => Some(*until),
                Phase::Ready => None,
            };
            let timeout = match wake {
                Some(t) => {
                    let ms = t.saturating_duration_since(Instant::now()).as_millis();
                    PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::ZERO)
                }
                None => PollTimeout::NONE,
            };
            let (listener_ready, child_exited, hung_up) = {
                let mut fds = vec![PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
                if let Some(l) = &self.listener {
                    fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                }
                let first_client = fds.len();
                fds.extend(
                    self.clients
                        .iter()
                        .map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLIN)),
                );
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return End::Exited(self.reap()),
                }
                let hit = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let hung_up: Vec<usize> = fds[first_client..]
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| hit(f))
                    .map(|(i, _)| i)
                    .collect();
                (
                    self.listener.is_some() && hit(&fds[1]),
                    hit(&fds[0]),
                    hung_up,
                )
            };
            if child_exited {
                return End::Exited(self.reap());
            }
            for i in hung_up.into_iter().rev() {
                // Clients send nothing after their hello: readable means gone.
                let mut byte = [0u8; 256];
                let gone = match (&self.clients[i].stream).read(&mut byte) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                if gone {
                    self.grace = self.clients.remove(i).grace;
                    if self.clients.is_empty() && matches!(self.phase, Phase::Ready) {
                        self.phase = Phase::Idle {
                            until: Instant::now() + self.grace,
                        };
                    }
                }
            }
            if listener_ready {
                self.accept_all();
            }
        }
    }

    /// Takes every waiting connection: holders join, status requests are answered.
    fn accept_all(&mut self) -> bool {
        let mut joined = false;
        while let Some(listener) = &self.listener {
            let Ok((mut stream, _)) = listener.accept() else {
                break;
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_err() {
                continue;
            }
            match serde_json::from_str::<ToSupervisor>(&line) {
                Ok(ToSupervisor::Hold {
                    client,
                    aliases,
                    grace_ms,
                }) => {
                    let _ = stream.set_nonblocking(true);
                    let client = Client {
                        stream,
                        name: client,
                        aliases,
                        grace: Duration::from_millis(grace_ms),
                    };
                    joined = true;
                    self.grace = client.grace;
                    if matches!(self.phase, Phase::Idle { .. }) {
                        self.phase = Phase::Ready;
                    }
                    if matches!(self.phase, Phase::Ready) {
                        self.clients.push(client);
                        let info = self.info();
                        let last = self.clients.last_mut().expect("just pushed");
                        let _ = send(&mut last.stream, &FromSupervisor::Ready(info));
                    } else {
                        let _ = client.stream.set_nonblocking(true);
                        self.clients.push(client);
                    }
                }
                Ok(ToSupervisor::Status) => {
                    let _ = send(&mut stream, &FromSupervisor::Status(self.info()));
                }
                Err(_) => {}
            }
        }
        joined
    }

    /// At the end of the grace period: under the start lock (so no client is half
    /// way in), takes late holders; stops listening if there are none.
    fn close_if_unwanted(&mut self) -> bool {
        let Ok(_lock) = lock_file(&self.lock) else {
            return false;
        };
        if self.accept_all() || !self.clients.is_empty() {
            return false;
        }
        self.stop_listening();
        true
    }

    fn stop_listening(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        self.listener = None;
    }

    /// One round of health checks; the end when the service cannot get healthy.
    fn check_health(&mut self) -> Option<End> {
        let Phase::Starting {
            deadline,
            next_probe,
            pause,
            unopened,
            last_problem,
        } = &mut self.phase
        else {
            return None;
        };
        let healthy = match &self.service.def.health.cmd {
            Some(cmd) => match self.containers.exec_captured(&self.id, cmd) {
                Ok((0, _)) => true,
                Ok((code, output)) => {
                    *last_problem = format!(
                        "the health command {cmd:?} exited with {code}: {}",
                        output.trim()
                    );
                    false
                }
                Err(e) => {
                    *last_problem = format!("the health command {cmd:?} failed: {e:#}");
                    false
                }
            },
            None => {
                let Some(address) = self.address else {
                    return Some(End::Unhealthy("the service has no address".into()));
                };
                while let Some(port) = unopened.first() {
                    let per_try = deadline
                        .saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(10), Duration::from_secs(1));
                    match self.net.infra.probe(
                        port.protocol,
                        SocketAddr::new(address, port.port),
                        per_try,
                    ) {
                        Ok(netns::Probe::Open) => {
                            unopened.remove(0);
                        }
                        Ok(netns::Probe::Closed(reason)) => {
                            *last_problem = format!("port {}: {reason}", port_label(port));
                            break;
                        }
                        Err(e) => {
                            *last_problem = format!("port {}: {e}", port_label(port));
                            break;
                        }
                    }
                }
                unopened.is_empty()
            }
        };
        if healthy {
            self.phase = if self.clients.is_empty() {
                // Everyone left while it started: it still gets its grace period.
                Phase::Idle {
                    until: Instant::now() + self.grace,
                }
            } else {
                Phase::Ready
            };
            let info = self.info();
            for c in &mut self.clients {
                let _ = send(&mut c.stream, &FromSupervisor::Ready(info.clone()));
            }
            return None;
        }
        let interval = self.service.def.health.interval;
        let now = Instant::now();
        *next_probe = if self.service.def.health.cmd.is_some() {
            now + interval
        } else {
            // Ports: back off from a few ms up to the interval.
            let wait = *pause;
            *pause = (*pause * 2).min(interval.min(Duration::from_millis(50)));
            now + wait
        };
        if now >= *deadline {
            return Some(End::Unhealthy(self.unhealthy_message()));
        }
        None
    }

    fn unhealthy_message(&self) -> String {
        let problem = match &self.phase {
            Phase::Starting { last_problem, .. } => last_problem.clone(),
            _ => String::new(),
        };
        format!(
            "not healthy after {:?}: {problem}; the last lines of its log:\n{}",
            self.service.def.health.timeout,
            log_tail(&self.containers.log_path(&self.id), LOG_TAIL_LINES)
        )
    }

    /// Reaps the container's process (and orphans); its exit code.
    fn reap(&mut self) -> i32 {
        crate::containers::reap_until(self.pid)
    }

    /// Ends the run: stops taking clients, stops the container if it still runs,
    /// removes it and its network, then tells the clients, so that a client that
    /// hears of a failure finds nothing left behind.
    fn finish(mut self, end: End) -> i32 {
        let message = match &end {
            End::Stopped => None,
            End::Exited(code) => Some(FromSupervisor::Exited {
                code: *code,
                log: log_tail(&self.containers.log_path(&self.id), LOG_TAIL_LINES),
            }),
            End::Unhealthy(message) => Some(FromSupervisor::Failed(message.clone())),
        };
        if message.is_some() {
            // Under the lock, so that nobody joins a run that is ending.
            if let Ok(_lock) = lock_file(&self.lock) {
                self.accept_all();
                self.stop_listening();
            }
        }
        let code = match end {
            End::Exited(code) => code,
            End::Stopped | End::Unhealthy(_) => {
                let timeout = self.service.def.stop_timeout;
                self.containers.stop_process(&self.id, &self.pidfd, timeout);
                self.reap()
            }
        };
        if let Err(e) = self.containers.finish_service(&self.id, code) {
            eprintln!(
                "rcrun supervisor: clean up service {}: {e:#}",
                self.service.name
            );
        }
        if let Some(message) = message {
            for c in &mut self.clients {
                let _ = send(&mut c.stream, &message);
            }
        }
        0
    }
}

/// A service's container: on the default network under its hostname, removed
/// when it stops.
fn run_flags(service: &Service) -> RunFlags {
    let def = &service.def;
    let (entrypoint, mut command) = match &def.entrypoint {
        Some(e) => (
            Some(e.first().cloned().unwrap_or_default()),
            e.iter().skip(1).cloned().collect(),
        ),
        None => (None, Vec::new()),
    };
    command.extend(def.command.iter().flatten().cloned());
    RunFlags {
        request: RunRequest {
            command,
            entrypoint,
            env: def.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            workdir: def.workdir.clone(),
            user: def.user.clone(),
            volumes: def
                .cache
                .iter()
                .map(|(volume, path)| format!("{volume}:{path}"))
                .collect(),
            hostname: Some(service.hostname()),
            ..Default::default()
        },
        name: Some(service.hostname()),
        detach: true,
        remove: true,
        network: NetworkMode::default(),
        ..Default::default()
    }
}

/// Tells whoever is waiting in the backlog that the run failed.
fn fail_backlog(listener: &UnixListener, message: &str) {
    let _ = listener.set_nonblocking(true);
    while let Ok((mut stream, _)) = listener.accept() {
        let _ = send(&mut stream, &FromSupervisor::Failed(message.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> ServiceDef {
        crate::upfile::parse(
            Path::new("t.yaml"),
            "services:\n  db:\n    image: x\n    env: { A: '1', B: '2' }\n    ports: [3306]\n",
        )
        .unwrap()
        .services["db"]
            .clone()
    }

    #[test]
    fn the_key_is_the_definition_by_image_digest() {
        let base = definition_key(&def(), "sha256:aaaa");
        assert_eq!(base, definition_key(&def(), "sha256:aaaa"));
        // Another image behind the same tag is another service.
        assert_ne!(base, definition_key(&def(), "sha256:bbbb"));
        let mut other = def();
        other.instance = Some("2".into());
        assert_ne!(base, definition_key(&other, "sha256:aaaa"));
        let mut other = def();
        other.env.insert("A".into(), "3".into());
        assert_ne!(base, definition_key(&other, "sha256:aaaa"));
        let mut other = def();
        other.ports[0].port = 3307;
        assert_ne!(base, definition_key(&other, "sha256:aaaa"));
        // When a client may use it is not what it is.
        let mut other = def();
        other.health.timeout = Duration::from_secs(1);
        assert_eq!(base, definition_key(&other, "sha256:aaaa"));
    }

    #[test]
    fn hostnames_are_dns_labels_from_the_key() {
        let key = "00".repeat(32);
        assert_eq!(hostname_of(&key), "aaaaaaaaaaaaa");
        let key = "ff".repeat(32);
        assert_eq!(hostname_of(&key), "7777777777777");
        let key = format!("f8{}", "00".repeat(31));
        // 11111 000...: the first character takes the top five bits.
        assert_eq!(&hostname_of(&key)[..2], "7a");
        for key in [&"0123456789abcdef".repeat(4), &"deadbeef".repeat(8)] {
            let name = hostname_of(key);
            assert_eq!(name.len(), 13);
            assert!(name.parse::<dnsd::Name>().is_ok(), "{name}");
        }
    }
}
