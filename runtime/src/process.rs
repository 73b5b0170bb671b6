//! The container's process: limits, credentials, capabilities and the final exec.
//! Shared by a container's init and by processes exec'd into it. The plan is built
//! (and validated) in rcrun's process; the functions here run in the child.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{Gid, Uid};

use crate::caps::{self, CapSets};
use crate::error::{FailureKind, SetupFailure};
use crate::procattrs::{self, ProcessAttrs};
use crate::{seccomp, sys};

pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rlimit {
    pub name: String,
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct ProcessPlan {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub path_var: String,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: CapSets,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    pub terminal: bool,
    /// (rows, columns) of the terminal, set before the process runs.
    pub console_size: Option<(u16, u16)>,
    /// (dev, ino) of rcrun's own executable: never a valid exec target inside.
    pub runtime_exe: Option<(u64, u64)>,
    /// SIGKILL the process when rcrun (its parent) dies.
    pub die_with_parent: bool,
    /// rcrun's fds 3..3+N stay open in the process (`--preserve-fds`).
    pub preserve_fds: u32,
    pub attrs: ProcessAttrs,
    /// linux.seccomp, compiled.
    pub seccomp: Option<seccomp::Program>,
}

fn failure(step: impl Into<String>, errno: Errno) -> SetupFailure {
    SetupFailure {
        step: step.into(),
        detail: errno.desc().to_string(),
        kind: FailureKind::Setup,
    }
}

pub(crate) fn rlimit_resource(name: &str) -> Option<i32> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    } as i32)
}

/// Applies rlimits. Raising a hard limit needs CAP_SYS_RESOURCE
/// in the initial namespace, which a rootless (and here even a root) rcrun lacks.
pub(crate) fn apply_limits(plan: &ProcessPlan) -> Result<(), SetupFailure> {
    for r in &plan.rlimits {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain getrlimit into a local.
        unsafe { libc::getrlimit(r.resource as _, &mut current) };
        let wanted = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: plain setrlimit from a local.
        if unsafe { libc::setrlimit(r.resource as _, &wanted) } != 0 {
            let errno = Errno::last();
            let detail = if errno == Errno::EPERM && r.hard > current.rlim_max {
                format!(
                    "hard limit {} is above the current hard limit {}, which only a process with CAP_SYS_RESOURCE may raise; lower it in config.json",
                    r.hard, current.rlim_max
                )
            } else if r.soft > r.hard {
                format!("soft limit {} is above the hard limit {}", r.soft, r.hard)
            } else {
                errno.desc().to_string()
            };
            return Err(SetupFailure {
                step: format!("setrlimit {}", r.name),
                detail,
                kind: FailureKind::Setup,
            });
        }
    }
    Ok(())
}

/// Sets oom_score_adj. It is inherited across fork, and must be written while the
/// process is still dumpable (else its /proc files belong to the host's root).
pub(crate) fn set_oom_score_adj(score: i32) -> Result<(), SetupFailure> {
    std::fs::write("/proc/self/oom_score_adj", score.to_string()).map_err(|e| SetupFailure {
        step: format!("set oom_score_adj to {score}"),
        detail: format!("{e} (lowering it needs CAP_SYS_RESOURCE)"),
        kind: FailureKind::Setup,
    })
}

fn can_execute(md: &std::fs::Metadata, plan: &ProcessPlan) -> bool {
    let mode = md.mode();
    if !md.is_file() {
        return false;
    }
    if plan.uid == 0 {
        return mode & 0o111 != 0;
    }
    if md.uid() == plan.uid {
        mode & 0o100 != 0
    } else if md.gid() == plan.gid || plan.additional_gids.contains(&md.gid()) {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Finds `args[0]` the way execvp does, but with the container's PATH and for the
/// container's user: 127 when nothing is found, 126 when only unusable files are.
pub(crate) fn resolve_executable(plan: &ProcessPlan) -> Result<PathBuf, SetupFailure> {
    let arg0 = Path::new(std::ffi::OsStr::from_bytes(plan.args[0].as_bytes()));
    let shown = arg0.display().to_string();
    let candidates: Vec<PathBuf> = if arg0.as_os_str().as_bytes().contains(&b'/') {
        vec![arg0.to_path_buf()]
    } else {
        plan.path_var
            .split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(arg0))
            .collect()
    };
    let mut found_unusable = None;
    for candidate in candidates {
        match std::fs::metadata(&candidate) {
            Ok(md) if can_execute(&md, plan) => return Ok(candidate),
            Ok(md) => {
                found_unusable.get_or_insert((candidate, md.is_dir()));
            }
            Err(_) => {}
        }
    }
    Err(match found_unusable {
        Some((path, is_dir)) => SetupFailure {
            step: format!("exec {shown}"),
            detail: format!(
                "{} is {}",
                path.display(),
                if is_dir {
                    "a directory"
                } else {
                    "not executable (permission denied)"
                }
            ),
            kind: FailureKind::NotExecutable,
        },
        None => SetupFailure {
            step: format!("exec {shown}"),
            detail: if shown.contains('/') {
                "no such file or directory in the container".into()
            } else {
                format!("executable file not found in $PATH ({})", plan.path_var)
            },
            kind: FailureKind::NotFound,
        },
    })
}

/// The interpreter the kernel would load for `file`: a `#!` line or an ELF PT_INTERP.
fn interpreter_of(file: &File) -> Option<PathBuf> {
    let mut head = [0u8; 256];
    let n = file.read_at(&mut head, 0).ok()?;
    let head = &head[..n];
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|&b| b == b'\n').next()?;
        let interp = line
            .split(|&b| b == b' ' || b == b'\t')
            .find(|w| !w.is_empty())?;
        return Some(PathBuf::from(std::ffi::OsStr::from_bytes(interp)));
    }
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as u64;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let wide = head[4] == 2;
    let (phoff, phentsize, phnum) = if wide {
        (u64_at(head, 32), u16_at(head, 54), u16_at(head, 56))
    } else {
        (u32_at(head, 28), u16_at(head, 42), u16_at(head, 44))
    };
    let mut ph = [0u8; 56];
    let entry = (phentsize as usize).min(ph.len());
    for i in 0..phnum.min(64) {
        file.read_exact_at(&mut ph[..entry], phoff + i * phentsize)
            .ok()?;
        if u32_at(&ph, 0) != 3 {
            continue; // not PT_INTERP
        }
        let (offset, size) = if wide {
            (u64_at(&ph, 8), u64_at(&ph, 32))
        } else {
            (u32_at(&ph, 4), u32_at(&ph, 16))
        };
        let mut path = vec![0u8; size.min(4096) as usize];
        file.read_exact_at(&mut path, offset).ok()?;
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        path.truncate(end);
        return Some(PathBuf::from(std::ffi::OsStr::from_bytes(&path)));
    }
    None
}

/// Refuses an exec whose program or interpreter chain is rcrun's own binary, e.g.
/// a script starting `#!/proc/self/exe`: run by us, that path is rcrun, and the
/// container could then reopen the binary and overwrite it (CVE-2019-5736). This
/// costs a few syscalls, not a copy of the binary per start.
pub(crate) fn guard_runtime_binary(exe: &Path, plan: &ProcessPlan) -> Result<(), SetupFailure> {
    let Some(runtime) = plan.runtime_exe else {
        return Ok(());
    };
    let mut current = exe.to_path_buf();
    // The kernel follows at most 5 levels of interpreters.
    for _ in 0..6 {
        if sys::file_id(&current) == Some(runtime) {
            return Err(SetupFailure {
                step: format!("exec {}", exe.display()),
                detail: format!(
                    "{} resolves to the rcrun binary itself; a container may not execute the runtime",
                    current.display()
                ),
                kind: FailureKind::NotExecutable,
            });
        }
        let Ok(file) = File::open(&current) else {
            return Ok(());
        };
        match interpreter_of(&file) {
            Some(next) => current = next,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// Becomes root in a user namespace just entered, when root is mapped there.
pub(crate) fn become_root() -> Result<(), SetupFailure> {
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid).map_err(|e| failure("setresgid 0", e))?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid).map_err(|e| failure("setresuid 0", e))
}

fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

/// Switches to the container's user and capability sets.
pub(crate) fn switch_user(plan: &ProcessPlan) -> Result<(), SetupFailure> {
    caps::drop_bounding(plan.caps.bounding).map_err(|(cap, e)| {
        failure(
            format!(
                "drop {} from the bounding set",
                caps::name(cap).unwrap_or_default()
            ),
            e,
        )
    })?;
    // SAFETY: plain prctl.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })
        .map_err(|e| failure("keep capabilities across setuid", e))?;
    if setgroups_denied() {
        if !plan.additional_gids.is_empty() {
            return Err(SetupFailure {
                step: "set additional groups".into(),
                detail: "setgroups is disabled in this user namespace (single-id mapping); add subordinate gid ranges or drop additionalGids".into(),
                kind: FailureKind::Setup,
            });
        }
    } else {
        let groups: Vec<Gid> = plan
            .additional_gids
            .iter()
            .map(|g| Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups).map_err(|e| failure("setgroups", e))?;
    }
    let gid = Gid::from_raw(plan.gid);
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| failure(format!("setresgid {} (is the gid mapped?)", plan.gid), e))?;
    let uid = Uid::from_raw(plan.uid);
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| failure(format!("setresuid {} (is the uid mapped?)", plan.uid), e))?;
    // SAFETY: plain prctl.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) })
        .map_err(|e| failure("clear keep-capabilities", e))?;
    caps::apply(&plan.caps).map_err(|(step, e)| failure(step, e))?;
    if let Some(mask) = plan.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

/// Everything up to the exec: limits, cwd, the executable, credentials (and the
/// seccomp filter when it cannot wait for the exec).
/// Returns the path to exec and the seccomp listener fd for the agent, if any.
pub(crate) fn prepare(plan: &ProcessPlan) -> Result<(CString, Option<OwnedFd>), SetupFailure> {
    apply_limits(plan)?;
    procattrs::apply(&plan.attrs)?;
    nix::unistd::chdir(&plan.cwd).map_err(|e| {
        failure(
            format!("chdir to the working directory {}", plan.cwd.display()),
            e,
        )
    })?;
    let exe = resolve_executable(plan)?;
    guard_runtime_binary(&exe, plan)?;
    let listener = match early_seccomp(plan) {
        Some(program) => seccomp::load(program)?,
        None => None,
    };
    switch_user(plan)?;
    Ok((
        CString::new(exe.as_os_str().as_bytes()).unwrap_or_default(),
        listener,
    ))
}

/// The filter to load in `prepare`, before the user switch, instead of right before
/// execve: without no_new_privs loading needs CAP_SYS_ADMIN, which the container's
/// capabilities may lack (runc does the same); and a filter with a listener must be
/// in place while rcrun can still hand the listener to the agent (before Ready).
fn early_seccomp(plan: &ProcessPlan) -> Option<&seccomp::Program> {
    plan.seccomp
        .as_ref()
        .filter(|p| !plan.no_new_privileges || p.has_listener())
}

/// Restores default signal handling (rcrun ignores SIGPIPE and blocks the signals it
/// forwards; an exec'd program would inherit both).
fn reset_signals(original_mask: &SigSet) {
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL has no handler to be unsafe about.
            let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(original_mask), None);
}

/// The last step: no_new_privs, close-on-exec for every inherited fd, execve.
pub(crate) fn exec(plan: &ProcessPlan, exe: &CString, original_mask: &SigSet) -> SetupFailure {
    if plan.no_new_privileges {
        // SAFETY: plain prctl.
        if let Err(e) = Errno::result(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        {
            return failure("set no_new_privs", e);
        }
    }
    // Set last: any change of credentials clears it.
    if plan.die_with_parent {
        // SAFETY: plain prctl.
        if let Err(e) =
            Errno::result(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
        {
            return failure("tie the container's life to rcrun's", e);
        }
    }
    if let Err(e) = sys::cloexec_from(3 + plan.preserve_fds) {
        return failure("mark inherited file descriptors close-on-exec", e);
    }
    if let Err(e) = sys::keep_fds_open(plan.preserve_fds) {
        return failure(
            format!("keep {} preserved file descriptors open", plan.preserve_fds),
            e,
        );
    }
    reset_signals(original_mask);
    // Last, so that the filter constrains the user's program and as little of ours as
    // possible (no_new_privs lets an unprivileged process load it).
    if let Some(program) = plan.seccomp.as_ref()
        && early_seccomp(plan).is_none()
        && let Err(f) = seccomp::load(program)
    {
        return f;
    }
    let err = nix::unistd::execve(exe, &plan.args, &plan.env).unwrap_err();
    SetupFailure {
        step: format!("exec {}", exe.to_string_lossy()),
        detail: err.desc().to_string(),
        kind: if err == Errno::ENOENT {
            FailureKind::NotFound
        } else {
            FailureKind::NotExecutable
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn plan() -> ProcessPlan {
        ProcessPlan {
            args: vec![CString::new("x").unwrap()],
            env: vec![],
            path_var: DEFAULT_PATH.into(),
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            umask: None,
            caps: CapSets::default(),
            rlimits: vec![],
            no_new_privileges: true,
            oom_score_adj: None,
            terminal: false,
            runtime_exe: None,
            die_with_parent: false,
            preserve_fds: 0,
            console_size: None,
            attrs: ProcessAttrs::default(),
            seccomp: None,
        }
    }

    #[test]
    fn resolves_through_path_and_reports_126_and_127() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let mut p = plan();
        p.path_var = format!("/nonexistent:{}", dir.path().display());
        p.args = vec![CString::new("tool").unwrap()];
        // Mode 0644: found but not executable.
        let err = resolve_executable(&p).unwrap_err();
        assert_eq!(err.kind, FailureKind::NotExecutable);
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(resolve_executable(&p).unwrap(), exe);
        p.args = vec![CString::new("missing").unwrap()];
        assert_eq!(
            resolve_executable(&p).unwrap_err().kind,
            FailureKind::NotFound
        );
    }

    #[test]
    fn shebang_chain_to_the_runtime_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake_runtime = dir.path().join("runtime");
        std::fs::write(&fake_runtime, "binary").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fake_runtime, &link).unwrap();
        let inner = dir.path().join("inner");
        writeln!(File::create(&inner).unwrap(), "#!{} -x", link.display()).unwrap();
        let outer = dir.path().join("outer");
        writeln!(File::create(&outer).unwrap(), "#! {}", inner.display()).unwrap();
        let mut p = plan();
        p.runtime_exe = sys::file_id(&fake_runtime);
        let err = guard_runtime_binary(&outer, &p).unwrap_err();
        assert_eq!(err.kind, FailureKind::NotExecutable);
        // An ordinary ELF binary with its dynamic loader passes.
        assert!(guard_runtime_binary(Path::new("/bin/ls"), &p).is_ok());
    }

    #[test]
    fn elf_interpreter_is_read() {
        let file = File::open("/bin/ls").unwrap();
        let interp = interpreter_of(&file).expect("/bin/ls is dynamically linked");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
    }
}
