//! Seccomp: `linux.seccomp` of config.json is compiled to a BPF program in rcrun's
//! own process (with libseccomp, at config-load time, so every bad input is an error
//! before any process exists) and loaded as raw BPF with seccomp(2) in the
//! container's process: no libseccomp code runs after fork.

use std::io::{IoSlice, Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, MsgFlags};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, FailureKind, Result, SetupFailure};
use crate::state::State;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 8;

/// The actions of the runtime spec.
const ACTIONS: [&str; 9] = [
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
];

const OPERATORS: [&str; 7] = [
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

const ARCHS: [&str; 23] = [
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
];

/// The filter flags of the runtime spec, with their seccomp(2) bits.
const FLAGS: [(&str, libc::c_ulong); 4] = [
    ("SECCOMP_FILTER_FLAG_TSYNC", 1),
    ("SECCOMP_FILTER_FLAG_LOG", 2),
    ("SECCOMP_FILTER_FLAG_SPEC_ALLOW", 4),
    ("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", 32),
];

/// A compiled filter, ready for seccomp(2).
#[derive(Clone)]
pub(crate) struct Program {
    filter: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
    /// Where the listener fd goes, for SCMP_ACT_NOTIFY rules.
    listener: Option<Listener>,
}

/// The seccomp agent of `listenerPath` (runtime spec: containerProcessState).
#[derive(Debug, Clone)]
struct Listener {
    path: PathBuf,
    metadata: String,
}

impl Program {
    /// A filter with SCMP_ACT_NOTIFY rules hands its listener to an agent, through
    /// rcrun: it is loaded before the process reports Ready.
    pub(crate) fn has_listener(&self) -> bool {
        self.listener.is_some()
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Program({} instructions, flags {:#x}, listener {:?})",
            self.filter.len(),
            self.flags,
            self.listener
        )
    }
}

/// `linux.seccomp` as the runtime spec writes it; enums stay strings so that an
/// error can name the exact entry.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<String>>,
    flags: Option<Vec<String>>,
    listener_path: Option<PathBuf>,
    listener_metadata: Option<String>,
    syscalls: Option<Vec<SyscallRule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyscallRule {
    names: Option<Vec<String>>,
    action: String,
    errno_ret: Option<u32>,
    args: Option<Vec<Arg>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u64,
    value: u64,
    value_two: Option<u64>,
    op: String,
}

/// What rcrun supports, in the runtime spec's `features` terms (`linux.seccomp`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SeccompFeatures {
    pub enabled: bool,
    pub actions: Vec<String>,
    pub operators: Vec<String>,
    pub archs: Vec<String>,
    pub known_flags: Vec<String>,
    /// The known flags this kernel accepts.
    pub supported_flags: Vec<String>,
}

/// The seccomp part of `rcrun oci features`.
pub fn seccomp_features() -> SeccompFeatures {
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    SeccompFeatures {
        enabled: true,
        actions: strings(&ACTIONS),
        operators: strings(&OPERATORS),
        archs: strings(&ARCHS),
        known_flags: FLAGS.iter().map(|(n, _)| n.to_string()).collect(),
        supported_flags: FLAGS
            .iter()
            .filter(|(_, bit)| kernel_accepts_flag(*bit))
            .map(|(n, _)| n.to_string())
            .collect(),
    }
}

/// Compiles and checks a `linux.seccomp` object given as JSON (an OCI profile), as
/// `create` would: for callers that build specs and want the error early.
pub fn check_seccomp(profile: &Value) -> std::result::Result<(), String> {
    compile_value(profile).map(drop)
}

/// Whether seccomp(2) knows `flag`: with a NULL program it fails with EFAULT for a
/// known flag and EINVAL for an unknown one, and loads nothing.
fn kernel_accepts_flag(flag: libc::c_ulong) -> bool {
    // SAFETY: a NULL program is never dereferenced by a successful call: there is none.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flag,
            std::ptr::null::<libc::c_void>(),
        )
    };
    ret == -1 && Errno::last() == Errno::EFAULT
}

/// The program for a spec's `linux.seccomp`, if it has one.
pub(crate) fn compile(spec: &Spec) -> Result<Option<Program>> {
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(None);
    };
    let value = serde_json::to_value(seccomp)
        .map_err(|e| Error::InvalidConfig(format!("linux.seccomp: {e}")))?;
    compile_value(&value)
        .map(Some)
        .map_err(Error::InvalidConfig)
}

/// When config.json does not parse: the precise complaint about its `linux.seccomp`,
/// naming the entry, if that is where the problem is.
pub(crate) fn explain_parse_error(config_json: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(config_json).ok()?;
    let seccomp = value.get("linux")?.get("seccomp")?;
    compile_value(seccomp).err()
}

fn action(name: &str, errno_ret: Option<u32>, path: &str) -> Result<ScmpAction, String> {
    let errno = errno_ret.unwrap_or(libc::EPERM as u32);
    let errno_in_range = |kind: &str| {
        u16::try_from(errno)
            .map_err(|_| format!("{path}: the {kind} value {errno} is out of range (0 to 65535)"))
    };
    Ok(match name {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno_in_range("errnoRet")? as i32),
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno_in_range("errnoRet")?),
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        "SCMP_ACT_NOTIFY" => ScmpAction::Notify,
        other => {
            return Err(format!(
                "{path}: unknown action {other:?} (use one of {})",
                ACTIONS.join(", ")
            ));
        }
    })
}

fn condition(arg: &Arg, path: &str) -> Result<ScmpArgCompare, String> {
    if arg.index > 5 {
        return Err(format!(
            "{path}.index is {}: a syscall has arguments 0 to 5",
            arg.index
        ));
    }
    let op = match arg.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        // value is the mask, valueTwo what the masked argument must equal.
        "SCMP_CMP_MASKED_EQ" => {
            return Ok(ScmpArgCompare::new(
                arg.index as u32,
                ScmpCompareOp::MaskedEqual(arg.value),
                arg.value_two.unwrap_or(0),
            ));
        }
        other => {
            return Err(format!(
                "{path}.op: unknown operator {other:?} (use one of {})",
                OPERATORS.join(", ")
            ));
        }
    };
    Ok(ScmpArgCompare::new(arg.index as u32, op, arg.value))
}

/// A rule, checked, as libseccomp takes it.
struct CheckedRule<'a> {
    path: String,
    action: ScmpAction,
    names: &'a [String],
    /// Each is one rule: all its conditions must hold.
    alternatives: Vec<Vec<ScmpArgCompare>>,
}

fn compile_value(value: &Value) -> Result<Program, String> {
    let profile: Profile =
        serde_json::from_value(value.clone()).map_err(|e| format!("linux.seccomp: {e}"))?;
    let default = action(
        &profile.default_action,
        profile.default_errno_ret,
        "linux.seccomp.defaultAction",
    )?;
    if default == ScmpAction::Notify {
        return Err(
            "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY cannot be the default action (the agent's own syscalls would wait for it); name the syscalls in a rule".into(),
        );
    }
    let mut archs = Vec::new();
    for (i, name) in profile.architectures.iter().flatten().enumerate() {
        let arch = ARCHS
            .contains(&name.as_str())
            .then(|| ScmpArch::from_str(name).ok())
            .flatten()
            .ok_or_else(|| {
                format!(
                    "linux.seccomp.architectures[{i}]: unknown architecture {name:?} (use one of {})",
                    ARCHS.join(", ")
                )
            })?;
        archs.push(arch);
    }
    let mut flags = 0;
    for (i, name) in profile.flags.iter().flatten().enumerate() {
        let path = format!("linux.seccomp.flags[{i}]");
        let (_, bit) = FLAGS.iter().find(|(n, _)| n == name).ok_or_else(|| {
            let known: Vec<&str> = FLAGS.iter().map(|(n, _)| *n).collect();
            format!(
                "{path}: unknown flag {name:?} (use one of {})",
                known.join(", ")
            )
        })?;
        if !kernel_accepts_flag(*bit) {
            return Err(format!("{path}: this kernel does not support {name}"));
        }
        flags |= bit;
    }
    let mut notifies = false;
    let mut rules = Vec::new();
    for (i, rule) in profile.syscalls.iter().flatten().enumerate() {
        let path = format!("linux.seccomp.syscalls[{i}]");
        let names = rule.names.as_deref().unwrap_or_default();
        if names.is_empty() {
            return Err(format!(
                "{path}.names is empty: list the syscalls the rule is for"
            ));
        }
        let act = action(&rule.action, rule.errno_ret, &format!("{path}.action"))?;
        let args = rule.args.as_deref().unwrap_or_default();
        let conditions = args
            .iter()
            .enumerate()
            .map(|(j, a)| condition(a, &format!("{path}.args[{j}]")))
            .collect::<Result<Vec<_>, String>>()?;
        if let Some(j) = names.iter().position(|n| n.is_empty()) {
            return Err(format!("{path}.names[{j}] is empty"));
        }
        notifies |= act == ScmpAction::Notify;
        // libseccomp refuses a rule that repeats the default action; it is a no-op.
        if act == default {
            continue;
        }
        // As runc: conditions on distinct arguments must all hold; several on one
        // argument are alternatives, one rule each.
        let mut indexes: Vec<u64> = args.iter().map(|a| a.index).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let alternatives = if indexes.len() < args.len() {
            conditions.iter().map(|c| vec![*c]).collect()
        } else {
            vec![conditions]
        };
        rules.push(CheckedRule {
            path,
            action: act,
            names,
            alternatives,
        });
    }
    let listener = match (notifies, profile.listener_path) {
        (false, _) => None,
        (true, None) => {
            return Err("linux.seccomp: a rule uses SCMP_ACT_NOTIFY but listenerPath is not set: give the unix socket of the seccomp agent".into());
        }
        (true, Some(path)) if !path.is_absolute() => {
            return Err(format!(
                "linux.seccomp.listenerPath {} must be an absolute path",
                path.display()
            ));
        }
        (true, Some(path)) => Some(Listener {
            path,
            metadata: profile.listener_metadata.unwrap_or_default(),
        }),
    };
    let key = cache::key(value);
    let bpf = match cache::get(&key) {
        Some(bpf) => bpf,
        None => {
            let bpf = build(default, &archs, &rules)?;
            cache::put(&key, &bpf);
            bpf
        }
    };
    Ok(Program {
        filter: to_filter(&bpf)?,
        flags,
        listener,
    })
}

/// libseccomp's BPF for checked rules.
fn build(
    default: ScmpAction,
    archs: &[ScmpArch],
    rules: &[CheckedRule],
) -> Result<Vec<u8>, String> {
    let lib = |what: String| move |e: libseccomp::error::SeccompError| format!("{what}: {e}");
    let mut ctx = ScmpFilterContext::new(default).map_err(lib("linux.seccomp".into()))?;
    for (i, arch) in archs.iter().enumerate() {
        ctx.add_arch(*arch)
            .map_err(lib(format!("linux.seccomp.architectures[{i}]")))?;
    }
    for rule in rules {
        for name in rule.names {
            // Profiles list syscalls of newer kernels than libseccomp knows: skipped.
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            for conds in &rule.alternatives {
                ctx.add_rule_conditional(rule.action, syscall, conds)
                    .map_err(lib(format!("{}: syscall {name}", rule.path)))?;
            }
        }
    }
    export(&ctx).map_err(|e| format!("linux.seccomp: export the filter: {e}"))
}

/// The filter as the kernel's sock_filter array (libseccomp 2.5 exports to an fd only).
fn export(ctx: &ScmpFilterContext) -> std::result::Result<Vec<u8>, String> {
    // SAFETY: memfd_create with a constant NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"rcrun-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", Errno::last()));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    ctx.export_bpf(&file).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

fn to_filter(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, String> {
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty()
        || !bytes.len().is_multiple_of(size)
        || bytes.len() / size > u16::MAX as usize
    {
        return Err(format!(
            "linux.seccomp: unexpected BPF program size {} bytes",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Compiled programs by profile: libseccomp takes ~10 ms for a Docker-size profile
/// on three architectures, several times a container's whole start. Kept under the
/// runtime directory (gone at reboot, with any kernel change), in a 0700 directory of
/// ours; anything else there is not trusted and the profile is compiled afresh.
mod cache {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    use std::path::PathBuf;

    use serde_json::Value;
    use sha2::{Digest, Sha256};

    pub(super) fn key(profile: &Value) -> String {
        let version = libseccomp::ScmpVersion::current()
            .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
            .unwrap_or_default();
        let mut h = Sha256::new();
        h.update(format!(
            "rcrun-seccomp-1 {version} {}\0",
            std::env::consts::ARCH
        ));
        h.update(serde_json::to_vec(profile).unwrap_or_default());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The cache directory, made if missing, if it is ours alone.
    fn dir() -> Option<PathBuf> {
        let dir = crate::Runtime::default_root().parent()?.join("seccomp");
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir);
        let md = std::fs::symlink_metadata(&dir).ok()?;
        let ours = md.is_dir()
            && md.uid() == nix::unistd::Uid::effective().as_raw()
            && md.mode() & 0o077 == 0;
        ours.then_some(dir)
    }

    pub(super) fn get(key: &str) -> Option<Vec<u8>> {
        let size = std::mem::size_of::<libc::sock_filter>();
        std::fs::read(dir()?.join(key))
            .ok()
            .filter(|b| !b.is_empty() && b.len().is_multiple_of(size))
    }

    /// Best effort: a cache that cannot be written only costs time.
    pub(super) fn put(key: &str, bpf: &[u8]) {
        let Some(dir) = dir() else { return };
        let tmp = dir.join(format!(".{key}.{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(bpf));
        if written.is_err() || std::fs::rename(&tmp, dir.join(key)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// Loads the program into the calling process (in the container, before execve);
/// returns the listener fd when the program has SCMP_ACT_NOTIFY rules.
/// Without no_new_privs this needs CAP_SYS_ADMIN in the process's user namespace.
pub(crate) fn load(program: &Program) -> Result<Option<OwnedFd>, SetupFailure> {
    let flags = match program.listener {
        Some(_) => program.flags | SECCOMP_FILTER_FLAG_NEW_LISTENER,
        None => program.flags,
    };
    let prog = libc::sock_fprog {
        len: program.filter.len() as u16,
        filter: program.filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at a filter that lives until the call returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    let ret = Errno::result(ret).map_err(|e| SetupFailure {
        step: "load the seccomp filter".into(),
        detail: match e {
            Errno::EACCES => {
                "permission denied: without process.noNewPrivileges it needs CAP_SYS_ADMIN".into()
            }
            e => e.desc().to_string(),
        },
        kind: FailureKind::Setup,
    })?;
    // SAFETY: with NEW_LISTENER the kernel returned a fresh fd that we now own.
    Ok(program
        .listener
        .as_ref()
        .map(|_| unsafe { OwnedFd::from_raw_fd(ret as RawFd) }))
}

/// Hands a container process's listener fd to the seccomp agent at listenerPath, as
/// the runtime spec says: one message, the containerProcessState JSON with the fd
/// attached (SCM_RIGHTS).
pub(crate) fn send_listener(
    program: Option<&Program>,
    fd: Option<OwnedFd>,
    state: &State,
) -> Result<()> {
    let (Some(listener), Some(fd)) = (program.and_then(|p| p.listener.as_ref()), fd) else {
        return Ok(());
    };
    let shown = listener.path.display();
    let message = serde_json::json!({
        "ociVersion": state.oci_version,
        "fds": ["seccompFd"],
        "pid": state.pid,
        "metadata": listener.metadata,
        "state": state,
    });
    let bytes = serde_json::to_vec(&message)
        .map_err(|e| Error::InvalidConfig(format!("seccomp agent message: {e}")))?;
    let stream = UnixStream::connect(&listener.path).map_err(|e| {
        Error::io(
            format!("connect to the seccomp agent at linux.seccomp.listenerPath {shown} (is it listening?)"),
            e,
        )
    })?;
    let fds = [fd.as_raw_fd()];
    socket::sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
    .map_err(|e| {
        Error::sys(
            format!("send the seccomp listener to the agent at {shown}"),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(profile: Value) -> String {
        compile_value(&profile).unwrap_err()
    }

    #[test]
    fn a_typical_profile_compiles() {
        let p = compile_value(&json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["read", "write", "no_such_syscall_yet"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0x7e020000u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
                {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["getpid"], "action": "SCMP_ACT_TRACE"},
                {"names": ["getppid"], "action": "SCMP_ACT_LOG"},
                {"names": ["getuid"], "action": "SCMP_ACT_TRAP"},
                {"names": ["getgid"], "action": "SCMP_ACT_KILL"},
                // The default action again: accepted, and a no-op.
                {"names": ["acct"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        }))
        .unwrap();
        assert_eq!(p.flags, 2);
        // Three architectures' checks and the rules: far more than a bare filter.
        let bare = compile_value(&json!({"defaultAction": "SCMP_ACT_ALLOW"})).unwrap();
        assert!(p.filter.len() > bare.filter.len() + 20, "{p:?} vs {bare:?}");
    }

    #[test]
    fn bad_entries_are_named() {
        let e = err(json!({"defaultAction": "SCMP_ACT_EXPLODE"}));
        assert!(
            e.contains("linux.seccomp.defaultAction") && e.contains("SCMP_ACT_EXPLODE"),
            "{e}"
        );
        let e = err(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_VAX"]}),
        );
        assert!(
            e.contains("architectures[1]") && e.contains("SCMP_ARCH_VAX"),
            "{e}"
        );
        let e =
            err(json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}));
        assert!(
            e.contains("flags[0]") && e.contains("SECCOMP_FILTER_FLAG_NOPE"),
            "{e}"
        );
        let e = err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}));
        assert!(e.contains("syscalls[1].args[0].index is 6"), "{e}");
        let e = err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]}));
        assert!(
            e.contains("syscalls[0].args[0].op") && e.contains("SCMP_CMP_ALMOST"),
            "{e}"
        );
        let e = err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": [], "action": "SCMP_ACT_ERRNO"}]}));
        assert!(e.contains("syscalls[0].names is empty"), "{e}");
        let e = err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}));
        assert!(
            e.contains("syscalls[0].action") && e.contains("70000"),
            "{e}"
        );
        let e = err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}));
        assert!(e.contains("listenerPath is not set"), "{e}");
        let e = err(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "agent.sock",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}),
        );
        assert!(
            e.contains("listenerPath agent.sock must be an absolute path"),
            "{e}"
        );
        let e = err(json!({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/a.sock"}));
        assert!(
            e.contains("defaultAction: SCMP_ACT_NOTIFY cannot be the default"),
            "{e}"
        );
        let p = compile_value(&json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/a.sock",
            "listenerMetadata": "m", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}))
        .unwrap();
        assert!(p.has_listener());
        // Without a NOTIFY rule the listener is not asked for.
        let p =
            compile_value(&json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/a.sock"}))
                .unwrap();
        assert!(!p.has_listener());
        let e = err(json!({"syscalls": []}));
        assert!(e.contains("defaultAction"), "{e}");
    }

    #[test]
    fn a_parse_error_of_config_json_is_explained_by_its_seccomp_entry() {
        let config = json!({"ociVersion": "1.0.2", "linux": {"seccomp": {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_BOOM"}]}}});
        let e = explain_parse_error(config.to_string().as_bytes()).unwrap();
        assert!(e.contains("syscalls[0].action"), "{e}");
        let fine = json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}});
        assert_eq!(explain_parse_error(fine.to_string().as_bytes()), None);
    }

    #[test]
    fn compiled_programs_are_cached_by_profile() {
        let profile = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7}]});
        let first = compile_value(&profile).unwrap();
        let key = cache::key(&profile);
        let cached = cache::get(&key).expect("the program was cached");
        let second = compile_value(&profile).unwrap();
        let bytes = |p: &Program| {
            p.filter
                .iter()
                .flat_map(|i| [i.code as u32, i.jt as u32, i.jf as u32, i.k])
                .collect::<Vec<_>>()
        };
        assert_eq!(bytes(&first), bytes(&second));
        assert_eq!(cached.len(), first.filter.len() * 8);
        // Another errno is another program.
        let other = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 8}]});
        assert_ne!(cache::key(&other), key);
        assert_ne!(bytes(&compile_value(&other).unwrap()), bytes(&first));
    }

    #[test]
    fn features_list_what_the_compiler_accepts() {
        let f = seccomp_features();
        for a in &f.actions {
            action(a, None, "x").unwrap();
        }
        for arch in &f.archs {
            ScmpArch::from_str(arch).unwrap();
        }
        // Every kernel rcrun runs on has SECCOMP_FILTER_FLAG_TSYNC (3.17).
        assert!(
            f.supported_flags
                .iter()
                .any(|s| s == "SECCOMP_FILTER_FLAG_TSYNC")
        );
    }
}
