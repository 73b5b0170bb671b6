//! Seccomp for `rcrun run`: the default profile, `--security-opt`, and Docker's
//! profile format (includes/excludes by capability, architecture and kernel, and
//! archMap) resolved into the runtime spec's `linux.seccomp`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

/// rcrun's default profile, in Docker's format.
const DEFAULT_PROFILE: &str = include_str!("seccomp-default.json");

/// Which filter a container gets (`--security-opt seccomp=…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompChoice {
    #[default]
    Default,
    Unconfined,
    /// A profile in the OCI or Docker format.
    File(PathBuf),
}

/// `--security-opt` values, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityOpts {
    pub seccomp: SeccompChoice,
    pub no_new_privileges: bool,
}

const SECURITY_OPT_FORMS: &str =
    "seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges[=true|false]";

/// Parses the `--security-opt` flags; anything rcrun does not do is an error.
pub fn parse_security_opts(opts: &[String]) -> Result<SecurityOpts> {
    let mut out = SecurityOpts::default();
    for opt in opts {
        // Docker accepts KEY:VALUE as an old spelling of KEY=VALUE.
        let (key, value) = opt
            .split_once('=')
            .or_else(|| opt.split_once(':'))
            .map_or((opt.as_str(), None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("seccomp", Some("unconfined")) => out.seccomp = SeccompChoice::Unconfined,
            ("seccomp", Some(file)) if !file.is_empty() => {
                out.seccomp = SeccompChoice::File(PathBuf::from(file))
            }
            ("no-new-privileges", None | Some("true")) => out.no_new_privileges = true,
            ("no-new-privileges", Some("false")) => out.no_new_privileges = false,
            _ => bail!("--security-opt {opt:?} is not supported: use {SECURITY_OPT_FORMS}"),
        }
    }
    // A profile file is read and checked now, before any container exists.
    if let SeccompChoice::File(_) = &out.seccomp {
        linux_seccomp(&out.seccomp, &[])?;
    }
    Ok(out)
}

/// The `linux.seccomp` for a container with these bounding capabilities, or None
/// when it runs unconfined.
pub fn linux_seccomp(choice: &SeccompChoice, caps: &[&str]) -> Result<Option<Value>> {
    let (profile, origin) = match choice {
        SeccompChoice::Unconfined => return Ok(None),
        SeccompChoice::Default => (
            serde_json::from_str(DEFAULT_PROFILE).context("rcrun's default seccomp profile")?,
            "rcrun's default seccomp profile".to_string(),
        ),
        SeccompChoice::File(path) => (
            read_profile(path)?,
            format!("seccomp profile {}", path.display()),
        ),
    };
    let resolved = resolve(&profile, caps, &kernel_release()).context(origin.clone())?;
    // The runtime compiles it again at start; a user's file is checked here so that
    // its error names the file. rcrun's own profile is checked by the unit tests.
    if let SeccompChoice::File(_) = choice {
        runtime::check_seccomp(&resolved)
            .map_err(anyhow::Error::msg)
            .context(origin)?;
    }
    Ok(Some(resolved))
}

fn read_profile(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| {
        format!(
            "cannot read seccomp profile {} (--security-opt seccomp=FILE)",
            path.display()
        )
    })?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "seccomp profile {} is not valid JSON: give an OCI or Docker seccomp profile",
            path.display()
        )
    })
}

/// The architecture names Docker's profiles use for this machine (Go's and the kernel's).
fn native_arch_names() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "x86_64" => &["amd64", "x86_64"],
        "x86" => &["386", "x86"],
        "aarch64" => &["arm64", "aarch64"],
        "arm" => &["arm"],
        "riscv64" => &["riscv64"],
        "powerpc64" => &["ppc64le", "ppc64"],
        "s390x" => &["s390x"],
        _ => &[],
    }
}

/// The libseccomp name of this machine's architecture.
fn native_scmp_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "x86" => "SCMP_ARCH_X86",
        "aarch64" => "SCMP_ARCH_AARCH64",
        "arm" => "SCMP_ARCH_ARM",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "powerpc64" => "SCMP_ARCH_PPC64LE",
        "s390x" => "SCMP_ARCH_S390X",
        _ => "SCMP_ARCH_NATIVE",
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether kernel `release` (e.g. "6.1.0-18-amd64") is at least `min` ("4.8").
fn kernel_at_least(release: &str, min: &str) -> Result<bool> {
    let parse = |s: &str| -> Option<(u32, u32)> {
        let mut parts = s.split(['.', '-']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    let want = parse(min).with_context(|| format!("minKernel {min:?} is not MAJOR.MINOR"))?;
    Ok(parse(release).is_some_and(|have| have >= want))
}

fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone())
            .with_context(|| format!("{what} must be a list of strings")),
    }
}

/// Whether a rule's includes/excludes select it for this container (Docker's rules:
/// every included capability present, no excluded one).
fn selected(rule: &Value, path: &str, caps: &[&str], kernel: &str) -> Result<bool> {
    let arches = native_arch_names();
    for (key, include) in [("includes", true), ("excludes", false)] {
        let Some(cond) = rule.get(key).filter(|c| !c.is_null()) else {
            continue;
        };
        let here = format!("{path}.{key}");
        let want_caps = strings(cond.get("caps"), &format!("{here}.caps"))?;
        let want_arches = strings(cond.get("arches"), &format!("{here}.arches"))?;
        let min_kernel = cond.get("minKernel").and_then(Value::as_str);
        let arch_hit = want_arches.iter().any(|a| arches.contains(&a.as_str()));
        let kernel_hit = match min_kernel {
            Some(min) => Some(kernel_at_least(kernel, min).with_context(|| here.clone())?),
            None => None,
        };
        if include {
            if (!want_arches.is_empty() && !arch_hit)
                || !want_caps.iter().all(|c| caps.contains(&c.as_str()))
                || kernel_hit == Some(false)
            {
                return Ok(false);
            }
        } else if arch_hit
            || want_caps.iter().any(|c| caps.contains(&c.as_str()))
            || kernel_hit == Some(true)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A profile in Docker's format (or already OCI's) as the runtime spec's
/// `linux.seccomp`, for these capabilities on this machine.
fn resolve(profile: &Value, caps: &[&str], kernel: &str) -> Result<Value> {
    let obj = profile
        .as_object()
        .context("a seccomp profile must be a JSON object")?;
    let mut out = Map::new();
    for key in [
        "defaultAction",
        "defaultErrnoRet",
        "flags",
        "listenerPath",
        "listenerMetadata",
    ] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    let mut architectures = strings(obj.get("architectures"), "architectures")?;
    if let Some(map) = obj.get("archMap").and_then(Value::as_array) {
        let native = native_scmp_arch();
        for entry in map {
            if entry.get("architecture").and_then(Value::as_str) == Some(native) {
                architectures.push(native.to_string());
                architectures.extend(strings(
                    entry.get("subArchitectures"),
                    "archMap[].subArchitectures",
                )?);
            }
        }
    }
    if !architectures.is_empty() {
        out.insert("architectures".into(), json!(architectures));
    }
    let mut syscalls = Vec::new();
    for (i, rule) in obj
        .get("syscalls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("syscalls[{i}]");
        if !selected(rule, &path, caps, kernel)? {
            continue;
        }
        let mut names = strings(rule.get("names"), &format!("{path}.names"))?;
        if let Some(name) = rule.get("name").and_then(Value::as_str) {
            names.push(name.to_string());
        }
        let mut entry = Map::new();
        entry.insert("names".into(), json!(names));
        for key in ["action", "errnoRet", "args"] {
            if let Some(v) = rule.get(key).filter(|v| !v.is_null()) {
                entry.insert(key.into(), v.clone());
            }
        }
        syscalls.push(Value::Object(entry));
    }
    out.insert("syscalls".into(), Value::Array(syscalls));
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_names(seccomp: &Value, action: &str) -> Vec<String> {
        seccomp["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == action && r.get("args").is_none())
            .flat_map(|r| {
                r["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_string())
            })
            .collect()
    }

    const DOCKER_CAPS: &[&str] = &["CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_KILL"];

    #[test]
    fn the_default_profile_follows_the_capabilities() {
        let plain = linux_seccomp(&SeccompChoice::Default, DOCKER_CAPS)
            .unwrap()
            .unwrap();
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ERRNO");
        runtime::check_seccomp(&plain).unwrap();
        let allowed = rule_names(&plain, "SCMP_ACT_ALLOW");
        for denied in [
            "keyctl",
            "add_key",
            "request_key",
            "kexec_load",
            "kexec_file_load",
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "bpf",
            "perf_event_open",
            "open_by_handle_at",
            "init_module",
            "finit_module",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "settimeofday",
            "clock_settime",
            "kcmp",
            "chroot",
            "personality",
            "clone",
            "userfaultfd",
            "io_uring_setup",
        ] {
            assert!(
                !allowed.contains(&denied.to_string()),
                "{denied} is allowed unconditionally"
            );
        }
        assert!(allowed.contains(&"read".to_string()) && allowed.contains(&"execve".to_string()));
        let admin = linux_seccomp(
            &SeccompChoice::Default,
            &["CAP_SYS_ADMIN", "CAP_SYS_TIME", "CAP_SYS_CHROOT"],
        )
        .unwrap()
        .unwrap();
        runtime::check_seccomp(&admin).unwrap();
        let allowed = rule_names(&admin, "SCMP_ACT_ALLOW");
        for now_allowed in [
            "mount",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "clock_settime",
            "chroot",
        ] {
            assert!(allowed.contains(&now_allowed.to_string()), "{now_allowed}");
        }
        // Without CAP_SYS_ADMIN clone3 says ENOSYS, so libc falls back to clone.
        assert!(rule_names(&plain, "SCMP_ACT_ERRNO").contains(&"clone3".to_string()));
        assert!(!rule_names(&admin, "SCMP_ACT_ERRNO").contains(&"clone3".to_string()));
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(
                plain["architectures"],
                json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
            );
        }
    }

    #[test]
    fn docker_includes_and_excludes() {
        let profile = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"name": "a", "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["b"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
            {"names": ["c"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": native_arch_names()}},
            {"names": ["d"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_KILL", "CAP_CHOWN"]}},
            {"names": ["e"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_KILL", "CAP_SYS_ADMIN"]}},
            {"names": ["f"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        ]});
        let out = resolve(&profile, DOCKER_CAPS, "6.1.0-18-amd64").unwrap();
        assert_eq!(rule_names(&out, "SCMP_ACT_ALLOW"), ["a", "d", "f"]);
        let e = resolve(
            &json!({"syscalls": [{"names": ["x"], "includes": {"minKernel": "new"}}]}),
            &[],
            "6.1",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("syscalls[0].includes"), "{e:#}");
    }

    #[test]
    fn security_opts() {
        let parse =
            |v: &[&str]| parse_security_opts(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(parse(&[]).unwrap(), SecurityOpts::default());
        let o = parse(&["seccomp=unconfined", "no-new-privileges"]).unwrap();
        assert_eq!(o.seccomp, SeccompChoice::Unconfined);
        assert!(o.no_new_privileges);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(&file, r#"{"defaultAction": "SCMP_ACT_LOG"}"#).unwrap();
        let opt = format!("seccomp:{}", file.display());
        assert_eq!(parse(&[&opt]).unwrap().seccomp, SeccompChoice::File(file));
        for bad in [
            "apparmor=unconfined",
            "seccomp",
            "seccomp=",
            "no-new-privileges=maybe",
            "label=disable",
        ] {
            let e = parse(&[bad]).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("seccomp=unconfined"), "{e}");
        }
    }

    #[test]
    fn profile_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = format!(
            "{:#}",
            linux_seccomp(&SeccompChoice::File(missing.clone()), &[]).unwrap_err()
        );
        assert!(e.contains(missing.to_str().unwrap()), "{e}");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_NOPE"}]}"#).unwrap();
        let e = format!(
            "{:#}",
            linux_seccomp(&SeccompChoice::File(bad.clone()), &[]).unwrap_err()
        );
        assert!(
            e.contains(bad.to_str().unwrap()) && e.contains("SCMP_ACT_NOPE"),
            "{e}"
        );
        std::fs::write(&bad, "{not json").unwrap();
        let e = format!(
            "{:#}",
            linux_seccomp(&SeccompChoice::File(bad.clone()), &[]).unwrap_err()
        );
        assert!(e.contains("not valid JSON"), "{e}");
    }
}
