//! `rcrun up`: an up-file's jobs, with the services they bind started just in
//! time (or joined, when another rcrun process already runs them), healthy before
//! any job starts, and let go of when the jobs end.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{ForkResult, Pid};

use crate::containers::{Containers, HostTarget, NetworkMode, RunFlags};
use crate::images::PullOptions;
use crate::services::{self, Held, HoldRequest, Service};
use crate::spec::RunRequest;
use crate::upfile::{self, JobDef, UpFile};

pub struct UpOptions {
    pub file: PathBuf,
    /// Jobs to run (none: every job in the file).
    pub jobs: Vec<String>,
    pub grace: Duration,
    pub verbose: bool,
    /// Hold the services after the jobs until interrupted.
    pub keep: bool,
    pub pull: PullOptions,
}

/// Blocks the signals that end `up` and reads them from a signalfd, so that an
/// interrupt is handled in the same loop as everything else.
pub struct Interrupts {
    fd: SignalFd,
    original: SigSet,
}

impl AsFd for Interrupts {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Interrupts {
    pub fn block() -> Result<Self> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        let mut original = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut original))
            .context("block signals")?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .context("create a signalfd")?;
        Ok(Interrupts { fd, original })
    }

    /// The signal that arrived, if one did.
    pub fn take(&self) -> Option<i32> {
        let mut last = None;
        while let Ok(Some(info)) = self.fd.read_signal() {
            last = Some(info.ssi_signo as i32);
        }
        last
    }

    /// For a forked child: the mask rcrun started with.
    fn restore_in_child(&self) {
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.original), None);
    }
}

/// The jobs to run, in the order given (the file's order when none are named).
fn select_jobs<'a>(file: &'a UpFile, names: &[String]) -> Result<Vec<(&'a str, &'a JobDef)>> {
    let defined = || file.jobs.keys().cloned().collect::<Vec<_>>().join(", ");
    if file.jobs.is_empty() {
        bail!(
            "{} defines no jobs: add a `jobs:` section",
            file.path.display()
        );
    }
    if names.is_empty() {
        return Ok(file.jobs.iter().map(|(k, v)| (k.as_str(), v)).collect());
    }
    let mut out = Vec::new();
    for name in names {
        let (key, job) = file.jobs.get_key_value(name).ok_or_else(|| {
            anyhow!(
                "{}: no job {name:?} (defined: {})",
                file.path.display(),
                defined()
            )
        })?;
        if !out.iter().any(|(k, _)| k == key) {
            out.push((key.as_str(), job));
        }
    }
    Ok(out)
}

/// Resolves the named services of the up-file (each once, in order).
pub fn resolve_services<'a>(
    containers: &mut Containers,
    file: &UpFile,
    names: impl IntoIterator<Item = &'a String>,
    pull: &PullOptions,
) -> Result<Vec<Service>> {
    let mut out: Vec<Service> = Vec::new();
    for name in names {
        if out.iter().any(|s| &s.name == name) {
            continue;
        }
        let def = file.services.get(name).ok_or_else(|| {
            anyhow!(
                "{}: no service {name:?} (defined: {})",
                file.path.display(),
                file.services.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        out.push(Service::resolve(containers, name, def, pull)?);
    }
    Ok(out)
}

/// Holds every service (starting those nobody runs) and waits until all are
/// healthy. Progress goes to stderr.
pub fn hold_services(
    containers: &mut Containers,
    services: &[Service],
    binds: &[(String, String)],
    client: &str,
    grace: Duration,
    interrupts: Option<&Interrupts>,
) -> Result<Vec<Held>> {
    let mut pending = Vec::new();
    for service in services {
        let aliases = binds
            .iter()
            .filter(|(_, s)| *s == service.name)
            .map(|(a, _)| a.clone())
            .collect();
        let p = services::request(
            containers,
            service,
            &HoldRequest {
                client: client.to_string(),
                aliases,
                grace,
            },
        )?;
        eprintln!(
            "rcrun: service {} ({}): {}",
            service.name,
            service.hostname(),
            if p.started() {
                "starting"
            } else {
                "joining the running one"
            }
        );
        pending.push(p);
    }
    let held = services::await_ready(pending, interrupts.map(AsFd::as_fd))?;
    for h in &held {
        eprintln!(
            "rcrun: service {} is ready at {} ({}){}",
            h.service.name,
            h.info.hostname,
            h.info.address.map(|a| a.to_string()).unwrap_or_default(),
            if h.info.ports.is_empty() {
                String::new()
            } else {
                format!(", ports {}", h.info.ports.join(" "))
            }
        );
    }
    Ok(held)
}

/// `/etc/hosts` entries for bindings: each alias at its service's address.
pub fn binding_hosts(
    binds: &[(String, String)],
    held: &[Held],
) -> Result<Vec<(String, HostTarget)>> {
    binds
        .iter()
        .map(|(alias, name)| {
            let h = held
                .iter()
                .find(|h| &h.service.name == name)
                .ok_or_else(|| anyhow!("service {name} is not held"))?;
            let ip = h
                .info
                .address
                .ok_or_else(|| anyhow!("service {name} has no address"))?;
            Ok((alias.clone(), HostTarget::Ip(ip)))
        })
        .collect()
}

/// One job being run by a forked rcrun.
struct Running {
    name: String,
    pid: Pid,
    pidfd: OwnedFd,
    /// Its combined output, when several jobs share the terminal.
    output: Option<(std::fs::File, Vec<u8>)>,
    code: Option<i32>,
}

/// A service log followed for `--verbose`.
struct Follow {
    prefix: String,
    file: std::fs::File,
    partial: Vec<u8>,
}

pub fn up(containers: &mut Containers, opts: &UpOptions) -> Result<i32> {
    let file = upfile::load(&opts.file)?;
    let jobs = select_jobs(&file, &opts.jobs)?;
    let binds: Vec<(String, String)> = jobs
        .iter()
        .flat_map(|(_, j)| j.bind.iter().map(|(a, s)| (a.clone(), s.clone())))
        .collect();
    // Every image first: a bad one fails before anything starts.
    let services = resolve_services(containers, &file, binds.iter().map(|(_, s)| s), &opts.pull)?;
    for (name, job) in &jobs {
        containers
            .find_or_pull(&job.image, &opts.pull)
            .with_context(|| format!("job {name}: image {}", job.image))?;
    }
    let interrupts = Interrupts::block()?;
    let client = format!(
        "rcrun up {} (pid {})",
        jobs.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" "),
        std::process::id()
    );
    let mut held = hold_services(
        containers,
        &services,
        &binds,
        &client,
        opts.grace,
        Some(&interrupts),
    )?;
    let mut follows = Vec::new();
    if opts.verbose {
        for h in &held {
            if let Ok(file) = std::fs::File::open(&h.info.log) {
                follows.push(Follow {
                    prefix: format!("{} | ", h.service.name),
                    file,
                    partial: Vec::new(),
                });
            }
        }
    }
    let prefixed = jobs.len() > 1;
    let mut running = Vec::new();
    for (name, job) in &jobs {
        let mut flags = job_flags(job, &opts.pull);
        let job_binds: Vec<(String, String)> = job
            .bind
            .iter()
            .map(|(a, s)| (a.clone(), s.clone()))
            .collect();
        flags.add_hosts = binding_hosts(&job_binds, &held)?;
        running.push(start_job(
            containers,
            name,
            &job.image,
            &flags,
            prefixed,
            &held,
            &interrupts,
        )?);
    }
    let interrupted = watch(&mut running, &mut held, &mut follows, &interrupts)?;
    // Job containers whose runner was killed are cleaned by a fresh open.
    let data_dir = containers.data_dir().to_path_buf();
    let _ = Containers::open(&data_dir);
    let code = if let Some(signal) = interrupted {
        128 + signal
    } else {
        running
            .iter()
            .map(|r| r.code.unwrap_or(125))
            .find(|c| *c != 0)
            .unwrap_or(0)
    };
    if code != 0 && !opts.verbose && interrupted.is_none() {
        for h in &held {
            eprintln!(
                "rcrun: the last lines of service {}'s log ({}):\n{}",
                h.service.name,
                h.info.hostname,
                services::log_tail(&h.info.log, services::LOG_TAIL_LINES)
            );
        }
    }
    if opts.keep && interrupted.is_none() {
        for h in &held {
            eprintln!(
                "rcrun: keeping service {} at {}",
                h.service.name,
                h.endpoint(None).unwrap_or_else(|_| h.info.hostname.clone())
            );
        }
        eprintln!("rcrun: press Ctrl-C to let go of the services");
        let mut none = Vec::new();
        watch(&mut none, &mut held, &mut follows, &interrupts)?;
    }
    drop(held);
    Ok(code)
}

/// Holds services until an interrupt (exit code 0) or until one of them ends (1).
pub fn hold_until_interrupted(mut held: Vec<Held>, interrupts: &Interrupts) -> i32 {
    match watch(&mut [], &mut held, &mut [], interrupts) {
        Ok(Some(_)) => 0,
        _ => 1,
    }
}

/// A job's container: on the default network, removed when it ends.
fn job_flags(job: &JobDef, pull: &PullOptions) -> RunFlags {
    RunFlags {
        request: RunRequest {
            command: job.run.clone().unwrap_or_default(),
            env: job.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            workdir: job.workdir.clone(),
            user: job.user.clone(),
            ..Default::default()
        },
        remove: true,
        network: NetworkMode::default(),
        pull: pull.clone(),
        ..Default::default()
    }
}

/// Forks an rcrun that runs the job in the foreground (the container's monitor).
fn start_job(
    containers: &mut Containers,
    name: &str,
    image: &str,
    flags: &RunFlags,
    prefixed: bool,
    held: &[Held],
    interrupts: &Interrupts,
) -> Result<Running> {
    let pipe = if prefixed {
        Some(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create a pipe")?)
    } else {
        None
    };
    let data_dir = containers.data_dir().to_path_buf();
    match containers.fork("the job's runner")? {
        ForkResult::Child => {
            // SAFETY: plain prctl: the runner (and so its container) goes with `up`.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            interrupts.restore_in_child();
            for h in held {
                // SAFETY: the runner must not hold the services: `up` does.
                unsafe { libc::close(h.as_fd().as_raw_fd()) };
            }
            if let Some((read_end, write_end)) = pipe {
                drop(read_end);
                for to in [1, 2] {
                    // SAFETY: both are open.
                    unsafe { libc::dup2(write_end.as_raw_fd(), to) };
                }
            }
            let code = Containers::open(&data_dir)
                .and_then(|mut c| c.run(image, flags))
                .unwrap_or_else(|e| {
                    eprintln!("rcrun: job {name}: {e:#}");
                    crate::exit_code_of(&e)
                });
            std::process::exit(code)
        }
        ForkResult::Parent { child } => Ok(Running {
            name: name.to_string(),
            pid: child,
            pidfd: crate::containers::pidfd_open(child)?,
            output: pipe.map(|(r, _)| (std::fs::File::from(r), Vec::new())),
            code: None,
        }),
    }
}

/// Serves until every job has ended (or, with no jobs, until interrupted or a
/// service ends): prefixes output, follows service logs, reports services that
/// die, and stops the jobs on an interrupt. The signal, if one ended it.
fn watch(
    running: &mut [Running],
    held: &mut [Held],
    follows: &mut [Follow],
    interrupts: &Interrupts,
) -> Result<Option<i32>> {
    let keep_mode = running.is_empty();
    let mut interrupted: Option<i32> = None;
    let mut kill_at: Option<Instant> = None;
    let mut lost = vec![false; held.len()];
    let mut pause = Duration::from_millis(10);
    loop {
        copy_follows(follows);
        if running.iter().all(|r| r.code.is_some()) && !keep_mode {
            return Ok(interrupted);
        }
        if keep_mode && (interrupted.is_some() || lost.iter().any(|l| *l)) {
            return Ok(interrupted);
        }
        let mut fds = vec![PollFd::new(interrupts.fd.as_fd(), PollFlags::POLLIN)];
        let mut slots = Vec::new();
        for (i, r) in running.iter().enumerate() {
            if r.code.is_none() {
                fds.push(PollFd::new(r.pidfd.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Job(i));
            }
            if let Some((f, _)) = &r.output {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Output(i));
            }
        }
        for (i, h) in held.iter().enumerate() {
            if !lost[i] {
                fds.push(PollFd::new(h.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Service(i));
            }
        }
        // Logs are files: poll cannot wait on them, so they are read with backoff.
        let timeout = if !follows.is_empty() {
            Some(pause)
        } else {
            kill_at.map(|t| t.saturating_duration_since(Instant::now()))
        };
        let timeout = timeout
            .map(|t| {
                PollTimeout::try_from(t.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::ZERO)
            })
            .unwrap_or(PollTimeout::NONE);
        let n = match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("wait for the jobs"),
            Ok(n) => n,
        };
        pause = if n > 0 {
            Duration::from_millis(10)
        } else {
            (pause * 2).min(Duration::from_millis(250))
        };
        let hits: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if hits[0]
            && let Some(signal) = interrupts.take()
        {
            if interrupted.is_some() {
                kill_at = Some(Instant::now());
            } else {
                interrupted = Some(signal);
                eprintln!("rcrun: interrupted: stopping the jobs and letting go of the services");
                for r in running.iter().filter(|r| r.code.is_none()) {
                    let _ = nix::sys::signal::kill(r.pid, Signal::SIGTERM);
                }
                kill_at = Some(Instant::now() + Duration::from_secs(5));
            }
        }
        if let Some(t) = kill_at
            && Instant::now() >= t
        {
            for r in running.iter().filter(|r| r.code.is_none()) {
                let _ = nix::sys::signal::kill(r.pid, Signal::SIGKILL);
            }
        }
        for (slot, hit) in slots.into_iter().zip(&hits[1..]) {
            if !hit {
                continue;
            }
            match slot {
                Slot::Job(i) => {
                    let r = &mut running[i];
                    r.code = Some(match nix::sys::wait::waitpid(r.pid, None) {
                        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                        Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                        _ => 125,
                    });
                    if let Some((f, partial)) = &mut r.output {
                        copy_prefixed(f, partial, &format!("{} | ", r.name), true);
                    }
                    if running.len() > 1 {
                        let r = &running[i];
                        eprintln!(
                            "rcrun: job {} exited with {}",
                            r.name,
                            r.code.unwrap_or(125)
                        );
                    }
                }
                Slot::Output(i) => {
                    let r = &mut running[i];
                    if let Some((f, partial)) = &mut r.output {
                        copy_prefixed(f, partial, &format!("{} | ", r.name), false);
                    }
                }
                Slot::Service(i) => {
                    lost[i] = true;
                    let h = &mut held[i];
                    match h.event() {
                        services::Event::Exited(code, log) => eprintln!(
                            "rcrun: service {} exited with code {code} while jobs use it; the last lines of its log:\n{log}",
                            h.service.name
                        ),
                        services::Event::Lost => eprintln!(
                            "rcrun: the supervisor of service {} went away; the service is gone",
                            h.service.name
                        ),
                    }
                }
            }
        }
    }
}

enum Slot {
    Job(usize),
    Output(usize),
    Service(usize),
}

/// Copies what a job wrote, line by line, behind its prefix.
fn copy_prefixed(f: &mut std::fs::File, partial: &mut Vec<u8>, prefix: &str, flush: bool) {
    let mut buf = [0u8; 16 * 1024];
    if let Ok(n) = f.read(&mut buf) {
        partial.extend_from_slice(&buf[..n]);
    }
    write_lines(partial, prefix, flush);
}

fn write_lines(partial: &mut Vec<u8>, prefix: &str, flush: bool) {
    let mut out = std::io::stdout().lock();
    while let Some(end) = partial.iter().position(|b| *b == b'\n') {
        let _ = out.write_all(prefix.as_bytes());
        let _ = out.write_all(&partial[..=end]);
        partial.drain(..=end);
    }
    if flush && !partial.is_empty() {
        let _ = out.write_all(prefix.as_bytes());
        let _ = out.write_all(partial);
        let _ = out.write_all(b"\n");
        partial.clear();
    }
    let _ = out.flush();
}

fn copy_follows(follows: &mut [Follow]) {
    for f in follows {
        let mut buf = Vec::new();
        if f.file.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
            f.partial.extend_from_slice(&buf);
            write_lines(&mut f.partial, &f.prefix, false);
        }
        // A log that was rotated or truncated starts over.
        let _ = f.file.stream_position().map(|pos| {
            if f.file.metadata().is_ok_and(|m| m.len() < pos) {
                let _ = f.file.seek(SeekFrom::Start(0));
            }
        });
    }
}
