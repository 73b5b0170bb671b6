//! Spec fields that configure the container's namespaces rather than its process:
//! `linux.sysctl`, `domainname`, `linux.timeOffsets`, and the SELinux labels
//! (`linux.mountLabel`, `process.selinuxLabel`), which rcrun does not apply.
//! Checked against the namespaces the container gets when the spec is loaded.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::config::NamespacePlan;
use crate::error::{Error, FailureKind, Result, SetupFailure};
use crate::sys;

fn invalid(msg: String) -> Error {
    Error::InvalidConfig(msg)
}

/// Whether the container has its own namespace of this kind, created or joined by
/// path (as podman joins its network namespace), and not rcrun's own: a sysctl
/// written there stays out of the host.
fn own_namespace(ns: &NamespacePlan, flag: i32, proc_name: &str) -> bool {
    if ns.creates(flag) {
        return true;
    }
    ns.join.iter().any(|(path, f)| {
        *f == flag as u64
            && sys::file_id(path) != sys::file_id(Path::new(&format!("/proc/self/ns/{proc_name}")))
    })
}

/// The namespace a namespaced sysctl lives in (flag, spec type, /proc/PID/ns name),
/// or None for a host-wide one.
fn sysctl_namespace(name: &str) -> Option<(i32, &'static str, &'static str)> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if name.starts_with("net.") {
        Some((libc::CLONE_NEWNET, "network", "net"))
    } else if IPC.contains(&name) || name.starts_with("fs.mqueue.") {
        Some((libc::CLONE_NEWIPC, "ipc", "ipc"))
    } else if name == "kernel.hostname" || name == "kernel.domainname" {
        Some((libc::CLONE_NEWUTS, "uts", "uts"))
    } else {
        None
    }
}

/// `linux.sysctl` as (path under /proc/sys, value), in a stable order.
pub(crate) fn sysctls(spec: &Spec, ns: &NamespacePlan) -> Result<Vec<(PathBuf, String)>> {
    let Some(map) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let parts: Vec<&str> = name.split(['.', '/']).collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(invalid(format!(
                "linux.sysctl key {name:?} is not a sysctl name: use dotted names like net.ipv4.ip_forward"
            )));
        }
        if value.contains('\0') {
            return Err(invalid(format!(
                "linux.sysctl value of {name} contains a NUL byte"
            )));
        }
        match sysctl_namespace(name) {
            None => {
                return Err(invalid(format!(
                    "linux.sysctl {name} is not namespaced: it would change the host; only net.*, kernel.shm*/msg*/sem, fs.mqueue.* and kernel.hostname/domainname may be set"
                )));
            }
            Some((flag, kind, proc_name)) if !own_namespace(ns, flag, proc_name) => {
                return Err(invalid(format!(
                    "linux.sysctl {name} needs the container's own {kind} namespace (not the host's): add {{\"type\": \"{kind}\"}} to linux.namespaces"
                )));
            }
            Some(_) => {}
        }
        out.push((parts.iter().collect(), value.clone()));
    }
    out.sort();
    Ok(out)
}

/// Writes the sysctls through the container's /proc (mounted by now).
pub(crate) fn write_sysctls(list: &[(PathBuf, String)]) -> Result<(), SetupFailure> {
    for (path, value) in list {
        let full = Path::new("/proc/sys").join(path);
        std::fs::write(&full, value).map_err(|e| SetupFailure {
            step: format!("set sysctl {}", path.display()),
            detail: format!("{e} (writing {}; is /proc mounted?)", full.display()),
            kind: FailureKind::Setup,
        })?;
    }
    Ok(())
}

/// `domainname`, which needs the container's own uts namespace.
pub(crate) fn domainname(spec: &Spec, ns: &NamespacePlan) -> Result<Option<String>> {
    let Some(name) = spec.domainname().clone().filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    if !ns.creates(libc::CLONE_NEWUTS) {
        return Err(invalid(
            "domainname is set but linux.namespaces creates no uts namespace: add {\"type\": \"uts\"}"
                .into(),
        ));
    }
    if name.len() > 64 || name.contains('\0') {
        return Err(invalid(format!(
            "domainname {name:?} is longer than 64 bytes"
        )));
    }
    Ok(Some(name))
}

pub(crate) fn set_domainname(name: &str) -> Result<(), SetupFailure> {
    // SAFETY: the pointer and length describe `name`.
    let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    nix::errno::Errno::result(ret)
        .map(drop)
        .map_err(|e| SetupFailure {
            step: "setdomainname".into(),
            detail: e.desc().to_string(),
            kind: FailureKind::Setup,
        })
}

/// `linux.timeOffsets` as the text for /proc/self/timens_offsets, which must be
/// written before any process enters the new time namespace.
pub(crate) fn time_offsets(spec: &Spec, ns: &NamespacePlan) -> Result<Option<String>> {
    let Some(map) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().as_ref())
    else {
        return Ok(None);
    };
    if map.is_empty() {
        return Ok(None);
    }
    if !ns.creates(libc::CLONE_NEWTIME) {
        return Err(invalid(
            "linux.timeOffsets is set but linux.namespaces creates no time namespace: add {\"type\": \"time\"}".into(),
        ));
    }
    let mut clocks: Vec<_> = map.iter().collect();
    clocks.sort_by_key(|(name, _)| name.as_str());
    let mut text = String::new();
    for (clock, offset) in clocks {
        if clock != "monotonic" && clock != "boottime" {
            return Err(invalid(format!(
                "linux.timeOffsets has clock {clock:?}: only monotonic and boottime can be offset"
            )));
        }
        let nanos = offset.nanosecs().unwrap_or(0);
        if nanos >= 1_000_000_000 {
            return Err(invalid(format!(
                "linux.timeOffsets.{clock}.nanosecs {nanos} must be below 1000000000"
            )));
        }
        text.push_str(&format!("{clock} {} {nanos}\n", offset.secs().unwrap_or(0)));
    }
    Ok(Some(text))
}

/// SELinux labels: nothing to do where SELinux is off (said once as a warning);
/// refused where it is on, since rcrun cannot apply them.
pub(crate) fn selinux_labels(spec: &Spec, warnings: &mut Vec<String>) -> Result<()> {
    let set = |v: Option<&String>| v.is_some_and(|s| !s.is_empty());
    let named: Vec<&str> = [
        (
            "linux.mountLabel",
            set(spec.linux().as_ref().and_then(|l| l.mount_label().as_ref())),
        ),
        (
            "process.selinuxLabel",
            set(spec
                .process()
                .as_ref()
                .and_then(|p| p.selinux_label().as_ref())),
        ),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    if named.is_empty() {
        return Ok(());
    }
    if Path::new("/sys/fs/selinux/enforce").exists() {
        return Err(invalid(format!(
            "{} is set and SELinux is enabled on this host, but rcrun cannot apply SELinux labels; remove the field",
            named.join(" and ")
        )));
    }
    warnings.push(format!(
        "{} ignored: SELinux is not enabled on this host",
        named.join(", ")
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(flags: i32) -> NamespacePlan {
        NamespacePlan {
            create: flags as u64,
            ..Default::default()
        }
    }

    fn with_sysctl(pairs: &[(&str, &str)]) -> Spec {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_sysctl(Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        spec.set_linux(Some(linux));
        spec
    }

    #[test]
    fn sysctls_need_their_namespace_and_clean_names() {
        let s = with_sysctl(&[("net.ipv4.ip_forward", "1"), ("kernel.shmmax", "4096")]);
        let list = sysctls(&s, &ns(libc::CLONE_NEWNET | libc::CLONE_NEWIPC)).unwrap();
        assert_eq!(
            list,
            vec![
                (PathBuf::from("kernel/shmmax"), "4096".to_string()),
                (PathBuf::from("net/ipv4/ip_forward"), "1".to_string()),
            ]
        );
        assert!(sysctls(&s, &ns(libc::CLONE_NEWNET)).is_err());
        // Joining rcrun's own network namespace is joining the host's.
        let host = NamespacePlan {
            create: libc::CLONE_NEWIPC as u64,
            join: vec![("/proc/self/ns/net".into(), libc::CLONE_NEWNET as u64)],
            ..Default::default()
        };
        assert!(sysctls(&s, &host).is_err());
        for bad in ["vm.swappiness", "net..x", "net.ipv4/../../x", "net.."] {
            let s = with_sysctl(&[(bad, "1")]);
            assert!(sysctls(&s, &ns(libc::CLONE_NEWNET)).is_err(), "{bad}");
        }
    }
}
