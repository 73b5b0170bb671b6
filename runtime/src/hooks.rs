//! OCI hooks (runtime-spec config.md "POSIX-platform Hooks"): programs run at fixed
//! points of the lifecycle with the container's state as JSON on stdin.
//!
//! prestart and createRuntime run in rcrun while the container's init waits before
//! pivot_root (it asks with `ToParent::CreateRuntimeHooks`); createContainer and
//! startContainer run in the init itself; poststart and poststop run in rcrun.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{Hook, Spec};
use serde::{Deserialize, Serialize};

use crate::channel::{Channel, ToChild, ToParent};
use crate::error::{Error, FailureKind, Result, SetupFailure};
use crate::state::Status;
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

const ALL: [Kind; 6] = [
    Kind::Prestart,
    Kind::CreateRuntime,
    Kind::CreateContainer,
    Kind::StartContainer,
    Kind::Poststart,
    Kind::Poststop,
];

/// How much of a failed hook's stderr goes into the error.
const STDERR_TAIL: usize = 2048;

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Prestart => "prestart",
            Kind::CreateRuntime => "createRuntime",
            Kind::CreateContainer => "createContainer",
            Kind::StartContainer => "startContainer",
            Kind::Poststart => "poststart",
            Kind::Poststop => "poststop",
        }
    }

    fn of(self, spec: &Spec) -> &[Hook] {
        let Some(hooks) = spec.hooks().as_ref() else {
            return &[];
        };
        #[allow(deprecated)] // prestart is deprecated, still part of the spec
        let list = match self {
            Kind::Prestart => hooks.prestart(),
            Kind::CreateRuntime => hooks.create_runtime(),
            Kind::CreateContainer => hooks.create_container(),
            Kind::StartContainer => hooks.start_container(),
            Kind::Poststart => hooks.poststart(),
            Kind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or(&[])
    }
}

/// The state a hook reads on stdin (runtime.md "State").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HookState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

impl HookState {
    pub fn new(spec: &Spec, id: &str, pid: Pid, bundle: &std::path::Path, status: Status) -> Self {
        HookState {
            oci_version: spec.version().clone(),
            id: id.to_string(),
            status,
            pid: pid.as_raw(),
            bundle: bundle.to_path_buf(),
            annotations: spec.annotations().clone().unwrap_or_default(),
        }
    }

    fn with_status(&self, status: Status) -> Self {
        HookState {
            status,
            ..self.clone()
        }
    }
}

/// Checks every hook at config load: the spec wants absolute paths and positive
/// timeouts.
pub(crate) fn validate(spec: &Spec) -> Result<()> {
    for kind in ALL {
        for (i, hook) in kind.of(spec).iter().enumerate() {
            let at = format!("hooks.{}[{i}]", kind.name());
            if !hook.path().is_absolute() {
                return Err(Error::InvalidConfig(format!(
                    "{at}.path {:?} must be an absolute path",
                    hook.path()
                )));
            }
            if let Some(t) = hook.timeout()
                && t <= 0
            {
                return Err(Error::InvalidConfig(format!(
                    "{at}.timeout is {t}; it must be a number of seconds greater than zero (or left out for no limit)"
                )));
            }
            if let Some(bad) = hook.env().iter().flatten().find(|e| !e.contains('=')) {
                return Err(Error::InvalidConfig(format!(
                    "{at}.env entry {bad:?} is not of the form KEY=VALUE"
                )));
            }
            if hook.args().as_ref().is_some_and(|a| a.is_empty()) {
                return Err(Error::InvalidConfig(format!(
                    "{at}.args is empty; it needs at least argv[0] (or leave it out)"
                )));
            }
        }
    }
    Ok(())
}

/// Whether the container's init must wait before pivot_root for rcrun: for the
/// hooks rcrun runs there, and to learn the state in-container hooks read.
pub(crate) fn pause_before_pivot(spec: &Spec) -> bool {
    [
        Kind::Prestart,
        Kind::CreateRuntime,
        Kind::CreateContainer,
        Kind::StartContainer,
    ]
    .iter()
    .any(|k| !k.of(spec).is_empty())
}

/// Runs the hooks of `kind` in order; the first failure stops them.
pub(crate) fn run(kind: Kind, spec: &Spec, state: &HookState) -> Result<(), SetupFailure> {
    let json = serde_json::to_vec(state).expect("state serialises");
    for (i, hook) in kind.of(spec).iter().enumerate() {
        run_one(kind, i, hook, &json)?;
    }
    Ok(())
}

/// Runs the hooks of `kind`, turning failures into warnings (poststart, poststop).
pub(crate) fn run_warning(kind: Kind, spec: &Spec, state: &HookState) {
    let json = serde_json::to_vec(state).expect("state serialises");
    for (i, hook) in kind.of(spec).iter().enumerate() {
        if let Err(f) = run_one(kind, i, hook, &json) {
            crate::warn::warn(&format!("{}: {}", f.step, f.detail));
        }
    }
}

/// rcrun's side of the pause before pivot_root: runs prestart and createRuntime
/// hooks, then lets the init go on with the state it needs for its own hooks.
pub(crate) fn serve_pause(channel: &Channel, spec: &Spec, state: &HookState) -> Result<()> {
    if !pause_before_pivot(spec) {
        return Ok(());
    }
    match channel.recv::<ToParent>() {
        Ok(Some((ToParent::CreateRuntimeHooks, _))) => {}
        Ok(Some((ToParent::Failed(f), _))) => return Err(f.into()),
        Ok(Some((other, _))) => {
            return Err(Error::InvalidConfig(format!(
                "unexpected message {other:?} from the container's setup"
            )));
        }
        Ok(None) => {
            return Err(Error::InvalidConfig(
                "the container's setup process exited without a word".into(),
            ));
        }
        Err(e) => return Err(Error::sys("read from the container's setup process", e)),
    }
    run(Kind::Prestart, spec, state)?;
    run(Kind::CreateRuntime, spec, state)?;
    channel
        .send(&ToChild::HooksRan(state.clone()), None)
        .map_err(|e| Error::sys("let the container's setup continue", e))
}

/// The init's side of the pause: waits for rcrun's hooks, then runs the
/// createContainer hooks. Returns the state for startContainer hooks.
pub(crate) fn pause(channel: &Channel, spec: &Spec) -> Result<Option<HookState>, SetupFailure> {
    if !pause_before_pivot(spec) {
        return Ok(None);
    }
    let failed = |detail: String| SetupFailure {
        step: "wait for rcrun to run the createRuntime hooks".into(),
        detail,
        kind: FailureKind::Setup,
    };
    channel
        .send(&ToParent::CreateRuntimeHooks, None)
        .map_err(|e| failed(e.desc().to_string()))?;
    let state = match channel.recv::<ToChild>() {
        Ok(Some((ToChild::HooksRan(state), _))) => state,
        Ok(_) => return Err(failed("rcrun went away".into())),
        Err(e) => return Err(failed(e.desc().to_string())),
    };
    run(Kind::CreateContainer, spec, &state)?;
    Ok(Some(state.with_status(Status::Created)))
}

fn set_nonblocking(fd: BorrowedFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// Keeps the last `STDERR_TAIL` bytes.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    if tail.len() > STDERR_TAIL {
        tail.drain(..tail.len() - STDERR_TAIL);
    }
}

/// Reads what `fd` has now: its stderr is copied to ours and its tail kept.
/// Returns false at EOF.
fn pump_stderr(fd: &OwnedFd, tail: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let _ = std::io::stderr().write_all(&buf[..n]);
                keep_tail(tail, &buf[..n]);
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}

fn run_one(kind: Kind, index: usize, hook: &Hook, state: &[u8]) -> Result<(), SetupFailure> {
    let step = format!(
        "hook hooks.{}[{index}] ({})",
        kind.name(),
        hook.path().display()
    );
    let fail = |detail: String| SetupFailure {
        step: step.clone(),
        detail,
        kind: FailureKind::Setup,
    };
    let (pid, stdin, stderr) = spawn(hook).map_err(&fail)?;
    let kill = || {
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(pid, None);
    };
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            kill();
            return Err(fail(format!("cannot watch it: {}", e.desc())));
        }
    };
    let mut stdin = Some(stdin);
    let mut stderr = Some(stderr);
    let deadline = hook
        .timeout()
        .map(|t| (t, Instant::now() + Duration::from_secs(t.max(1) as u64)));
    let mut written = 0;
    let mut tail = Vec::new();
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some((secs, at)) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    kill();
                    if let Some(fd) = &stderr {
                        pump_stderr(fd, &mut tail);
                    }
                    return Err(fail(format!(
                        "timed out after {secs} s and was killed{}",
                        tail_text(&tail)
                    )));
                }
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        if let Some(fd) = &stderr {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        if let Some(fd) = &stdin {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
        }
        match poll(&mut fds, timeout) {
            Err(Errno::EINTR) | Ok(0) => continue,
            Err(e) => {
                kill();
                return Err(fail(format!("cannot wait for it: {}", e.desc())));
            }
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let exited = ready[0];
        let mut next = 1;
        if stderr.is_some() {
            if ready[next] && !pump_stderr(stderr.as_ref().unwrap(), &mut tail) {
                stderr = None;
            }
            next += 1;
        }
        if let Some(fd) = &stdin
            && ready[next]
        {
            match nix::unistd::write(fd, &state[written..]) {
                Ok(n) => written += n,
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                // It closed stdin (EPIPE): it does not want the state.
                Err(_) => written = state.len(),
            }
            if written == state.len() {
                stdin = None;
            }
        }
        if exited {
            break;
        }
    }
    drop(stdin);
    if let Some(fd) = &stderr {
        pump_stderr(fd, &mut tail);
    }
    let outcome = loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
            Ok(WaitStatus::Exited(_, code)) => break format!("exited with status {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => break format!("was killed by {sig}"),
            Ok(other) => break format!("ended as {other:?}"),
            Err(e) => break format!("cannot be reaped: {}", e.desc()),
        }
    };
    Err(fail(format!("it {outcome}{}", tail_text(&tail))))
}

/// Forks and execs a hook with exactly its argv and env (in their order), in its
/// own process group (a timeout kills what it started too), stdout on our stderr.
/// Returns its pid, the write end of its stdin and the read end of its stderr,
/// both non-blocking.
fn spawn(hook: &Hook) -> Result<(Pid, OwnedFd, OwnedFd), String> {
    let cstr =
        |s: &[u8]| CString::new(s).map_err(|_| "an argument contains a NUL byte".to_string());
    let path = cstr(hook.path().as_os_str().as_bytes())?;
    let argv = match hook.args().as_deref() {
        Some(args) if !args.is_empty() => args
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?,
        _ => vec![path.clone()],
    };
    let envp = hook
        .env()
        .iter()
        .flatten()
        .map(|e| cstr(e.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    // NULL-terminated pointer arrays, built before fork: the child must not allocate.
    let pointers = |list: &[CString]| -> Vec<*const libc::c_char> {
        list.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv_p, envp_p) = (pointers(&argv), pointers(&envp));
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot make a pipe: {}", e.desc()))
    };
    let (stdin_r, stdin_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    // execve's errno comes back here; EOF (close-on-exec) means it ran.
    let (exec_r, exec_w) = pipe()?;
    // SAFETY: the child makes only async-signal-safe calls until execve or _exit;
    // everything it needs was allocated above.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("cannot fork: {}", e.desc()))? {
        ForkResult::Child => {
            let errno = exec_child(&path, &argv_p, &envp_p, &stdin_r, &stderr_w);
            let _ = nix::unistd::write(&exec_w, &(errno as i32).to_ne_bytes());
            // SAFETY: leave without running anything of rcrun's.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop((stdin_r, stderr_w, exec_w));
            let mut buf = [0u8; 4];
            let n = loop {
                match nix::unistd::read(&exec_r, &mut buf) {
                    Err(Errno::EINTR) => continue,
                    other => break other.unwrap_or(0),
                }
            };
            if n == 4 {
                let _ = waitpid(child, None);
                return Err(format!(
                    "cannot execute it: {}",
                    Errno::from_raw(i32::from_ne_bytes(buf)).desc()
                ));
            }
            for fd in [&stdin_w, &stderr_r] {
                let _ = set_nonblocking(fd.as_fd());
            }
            Ok((child, stdin_w, stderr_r))
        }
    }
}

/// In the forked child: stdio, a process group of its own, default signals,
/// nothing inherited past fd 2, execve. Returns only on failure.
fn exec_child(
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    stdin: &OwnedFd,
    stderr: &OwnedFd,
) -> Errno {
    // SAFETY: plain async-signal-safe calls on fds we own.
    unsafe {
        if libc::setpgid(0, 0) < 0
            || libc::dup2(stdin.as_raw_fd(), 0) < 0
            || libc::dup2(2, 1) < 0
            || libc::dup2(stderr.as_raw_fd(), 2) < 0
        {
            return Errno::last();
        }
        // rcrun ignores SIGPIPE and may block signals: the hook starts clean.
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    if let Err(e) = sys::cloexec_from(3) {
        return e;
    }
    // SAFETY: NULL-terminated arrays of pointers into CStrings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::last()
}

fn tail_text(tail: &[u8]) -> String {
    let text = String::from_utf8_lossy(tail);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with: {text}")
    }
}

/// Poststop hooks to run once a container is destroyed.
#[derive(Debug)]
pub(crate) struct Poststop {
    spec: Spec,
    state: HookState,
}

impl Poststop {
    /// None when the spec has no poststop hooks.
    pub fn new(spec: &Spec, state: HookState) -> Option<Self> {
        (!Kind::Poststop.of(spec).is_empty()).then(|| Poststop {
            spec: spec.clone(),
            state: state.with_status(Status::Stopped),
        })
    }

    pub fn run(self) {
        run_warning(Kind::Poststop, &self.spec, &self.state);
    }
}

/// For the fifo gate: a startContainer failure travels to `start` after the
/// gate's byte.
pub(crate) fn report_on_fifo(fifo: &OwnedFd, failure: &SetupFailure) {
    let bytes = serde_json::to_vec(failure).expect("failure serialises");
    let mut off = 0;
    while off < bytes.len() {
        match nix::unistd::write(fifo, &bytes[off..]) {
            Ok(n) => off += n,
            Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// What `start` read from the fifo after the gate's byte: a startContainer failure
/// if there is anything.
pub(crate) fn failure_from_fifo(bytes: &[u8]) -> Option<SetupFailure> {
    if bytes.is_empty() {
        return None;
    }
    Some(
        serde_json::from_slice(bytes).unwrap_or_else(|_| SetupFailure {
            step: "start the container".into(),
            detail: format!(
                "its process sent an unreadable message: {}",
                String::from_utf8_lossy(bytes)
            ),
            kind: FailureKind::Setup,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(hooks: serde_json::Value) -> Spec {
        let mut v = serde_json::to_value(Spec::default()).unwrap();
        v["hooks"] = hooks;
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn relative_paths_and_bad_timeouts_are_refused() {
        let err = validate(&spec_with(
            serde_json::json!({"createRuntime": [{"path": "/bin/true"}, {"path": "rel"}]}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("hooks.createRuntime[1].path"), "{err}");
        let err = validate(&spec_with(
            serde_json::json!({"poststop": [{"path": "/bin/true", "timeout": 0}]}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("hooks.poststop[0].timeout"), "{err}");
        assert!(
            validate(&spec_with(
                serde_json::json!({"poststop": [{"path": "/bin/true", "timeout": 3}]})
            ))
            .is_ok()
        );
    }

    fn state() -> HookState {
        HookState::new(
            &Spec::default(),
            "t",
            Pid::from_raw(1),
            std::path::Path::new("/b"),
            Status::Creating,
        )
    }

    #[test]
    fn failure_names_the_hook_and_carries_stderr() {
        let spec = spec_with(serde_json::json!({"poststart": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo broken >&2; exit 3"]}
        ]}));
        let f = run(Kind::Poststart, &spec, &state()).unwrap_err();
        assert!(f.step.contains("hooks.poststart[0] (/bin/sh)"), "{f:?}");
        assert!(
            f.detail.contains("3") && f.detail.contains("broken"),
            "{f:?}"
        );
    }

    #[test]
    fn timeout_kills_the_hook() {
        let spec = spec_with(serde_json::json!({"poststart": [
            {"path": "/bin/sh", "args": ["sh", "-c", "sleep 30"], "timeout": 1}
        ]}));
        let started = Instant::now();
        let f = run(Kind::Poststart, &spec, &state()).unwrap_err();
        assert!(f.detail.contains("timed out"), "{f:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn state_on_stdin_env_and_argv0() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let spec = spec_with(serde_json::json!({"poststart": [{
            "path": "/bin/sh",
            "args": ["custom0", "-c", format!("cat > {0}; echo \"$0 $ONLY\" >> {0}; env | wc -l >> {0}", out.display())],
            "env": ["ONLY=1"]
        }]}));
        run(Kind::Poststart, &spec, &state()).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let (json, rest) = text.split_once('}').unwrap();
        let v: serde_json::Value = serde_json::from_str(&format!("{json}}}")).unwrap();
        assert_eq!(v["id"], "t");
        assert_eq!(v["status"], "creating");
        assert_eq!(v["pid"], 1);
        let lines: Vec<&str> = rest.lines().collect();
        assert_eq!(lines[0], "custom0 1");
        // ONLY and the PWD that sh adds itself.
        assert!(lines[1].trim().parse::<u32>().unwrap() <= 2, "{rest}");
    }

    #[test]
    fn no_fd_of_ours_reaches_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fds");
        let leaked = std::fs::File::open("/dev/null").unwrap();
        nix::fcntl::fcntl(&leaked, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        let spec = spec_with(serde_json::json!({"poststart": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("ls /proc/$$/fd > {}", out.display())],
        }]}));
        run(Kind::Poststart, &spec, &state()).unwrap();
        let fds = std::fs::read_to_string(&out).unwrap();
        let fds: Vec<&str> = fds.split_whitespace().collect();
        // (dash keeps a saved stdout at 10 while redirecting.)
        assert!(
            !fds.contains(&leaked.as_raw_fd().to_string().as_str()) && fds.contains(&"2"),
            "{fds:?} has our fd {}",
            leaked.as_raw_fd()
        );
    }
}
