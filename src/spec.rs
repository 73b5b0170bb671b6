//! The runtime spec of a container made from an image: the image config (Entrypoint,
//! Cmd, Env, User, WorkingDir) with docker's `run` flags on top.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{LinuxIdMapping, Spec};
use serde_json::{Value, json};

/// What `rcrun run` was asked for, beside the image.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub command: Vec<String>,
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub env_files: Vec<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub volumes: Vec<String>,
    pub tmpfs: Vec<String>,
    pub read_only: bool,
    pub hostname: Option<String>,
    pub tty: bool,
    pub network: NetNs,
    /// `--security-opt`: the seccomp profile and no-new-privileges.
    pub security: crate::seccomp::SecurityOpts,
    /// `--memory`, `--pids-limit`, `--cpus`…: linux.resources, if any were asked for.
    pub resources: Option<Value>,
}

/// docker's resource flags of `rcrun run`, as given.
#[derive(Debug, Clone, Default)]
pub struct LimitFlags {
    pub memory: Option<String>,
    pub memory_reservation: Option<String>,
    pub memory_swap: Option<String>,
    pub pids_limit: Option<i64>,
    pub cpus: Option<String>,
    pub cpu_shares: Option<u64>,
    pub cpuset_cpus: Option<String>,
}

/// A size as docker takes it: bytes, or a number with b, k, m or g (powers of 1024).
fn parse_size(flag: &str, text: &str) -> Result<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let scale: f64 = match unit.trim_end_matches('b') {
        _ if unit.is_empty() || unit == "b" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        _ => f64::NAN,
    };
    let value: f64 = digits.parse().unwrap_or(f64::NAN) * scale;
    if !value.is_finite() || value < 1.0 || value > i64::MAX as f64 {
        bail!("{flag} {text:?}: give a size in bytes, or a number with b, k, m or g (e.g. 512m)");
    }
    Ok(value as i64)
}

/// linux.resources for docker's resource flags; `None` when none was given.
pub fn resources(flags: &LimitFlags) -> Result<Option<Value>> {
    let mut r = serde_json::Map::new();
    let mut memory = serde_json::Map::new();
    let limit = flags
        .memory
        .as_deref()
        .map(|m| parse_size("--memory", m))
        .transpose()?;
    if let Some(limit) = limit {
        if limit < 6 * 1024 * 1024 {
            bail!(
                "--memory {limit}: the minimum is 6m, as with docker (a smaller limit kills the container before it starts)"
            );
        }
        memory.insert("limit".into(), json!(limit));
    }
    if let Some(m) = &flags.memory_reservation {
        memory.insert(
            "reservation".into(),
            json!(parse_size("--memory-reservation", m)?),
        );
    }
    if let Some(swap) = &flags.memory_swap {
        let Some(limit) = limit else {
            bail!("--memory-swap needs --memory (it is memory plus swap)");
        };
        let swap = if swap.trim() == "-1" {
            -1
        } else {
            parse_size("--memory-swap", swap)?
        };
        if swap != -1 && swap < limit {
            bail!(
                "--memory-swap {swap} is below --memory {limit}: it is memory plus swap, so give at least the memory limit (or -1 for unlimited swap)"
            );
        }
        memory.insert("swap".into(), json!(swap));
    }
    if !memory.is_empty() {
        r.insert("memory".into(), Value::Object(memory));
    }
    if let Some(n) = flags.pids_limit {
        if n == 0 || n < -1 {
            bail!("--pids-limit {n}: give a positive number, or -1 for no limit");
        }
        r.insert("pids".into(), json!({"limit": n}));
    }
    let mut cpu = serde_json::Map::new();
    if let Some(cpus) = &flags.cpus {
        let n: f64 = cpus.trim().parse().unwrap_or(f64::NAN);
        if !n.is_finite() || n <= 0.0 || n > 1024.0 {
            bail!("--cpus {cpus:?}: give a positive number of CPUs, e.g. 1.5");
        }
        const PERIOD: u64 = 100_000;
        cpu.insert("period".into(), json!(PERIOD));
        cpu.insert("quota".into(), json!((n * PERIOD as f64).round() as i64));
    }
    if let Some(shares) = flags.cpu_shares {
        if !(2..=262_144).contains(&shares) {
            bail!(
                "--cpu-shares {shares}: give a relative weight from 2 to 262144 (1024 is the default)"
            );
        }
        cpu.insert("shares".into(), json!(shares));
    }
    if let Some(set) = &flags.cpuset_cpus {
        let valid = !set.is_empty()
            && set.split(',').all(|part| {
                let mut ends = part.splitn(2, '-');
                ends.all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            });
        if !valid {
            bail!("--cpuset-cpus {set:?}: give CPU numbers and ranges, e.g. 0-2,4");
        }
        cpu.insert("cpus".into(), json!(set));
    }
    if !cpu.is_empty() {
        r.insert("cpu".into(), Value::Object(cpu));
    }
    Ok((!r.is_empty()).then_some(Value::Object(r)))
}

/// The container's network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetNs {
    /// A new one with only loopback (`--network none`).
    #[default]
    Own,
    /// The host's (`--network host`).
    Host,
    /// One made by the infra, inside its user namespace (rootless) that the
    /// container joins too.
    Join { user: Option<PathBuf>, net: PathBuf },
}

/// Where a container's generated files live on the host.
pub struct ContainerFiles<'a> {
    pub rootfs: &'a Path,
    pub hosts: &'a Path,
    pub hostname: &'a Path,
    pub resolv_conf: &'a Path,
    /// `<data>/volumes`, for named volumes.
    pub volumes: &'a Path,
}

/// A resolved `--user` / image User.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
const DOCKER_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Resolves `user[:group]` (names or numbers) against the image's passwd and group
/// files, as docker does: a numeric uid missing from passwd runs with gid 0.
pub fn resolve_user(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ResolvedUser> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let passwd_entries: Vec<Vec<&str>> = passwd
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let group_entries: Vec<Vec<&str>> = group
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let entry = passwd_entries.iter().find(|f| {
        f[0] == user
            || (user.parse::<u32>().is_ok() && f[2].parse::<u32>().ok() == user.parse().ok())
    });
    let (uid, mut gid, name, home) = match (entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse::<u32>()
                .with_context(|| format!("the image's /etc/passwd has a bad uid for {}", f[0]))?,
            f[3].parse::<u32>()
                .with_context(|| format!("the image's /etc/passwd has a bad gid for {}", f[0]))?,
            Some(f[0]),
            f[5].to_string(),
        ),
        (None, Ok(uid)) => (uid, 0, None, "/".to_string()),
        (None, Err(_)) => bail!(
            "unable to find user {user}: no matching entries in the image's /etc/passwd; use a uid or a user the image has"
        ),
    };
    if let Some(g) = grp {
        gid = match group_entries.iter().find(|f| f[0] == g) {
            Some(f) => f[2]
                .parse()
                .with_context(|| format!("the image's /etc/group has a bad gid for {g}"))?,
            None => g.parse().with_context(|| {
                format!("unable to find group {g}: no matching entries in the image's /etc/group")
            })?,
        };
    }
    let mut additional_gids = Vec::new();
    if let (Some(name), None) = (name, grp) {
        for f in &group_entries {
            if f[3].split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse::<u32>()
                && g != gid
                && !additional_gids.contains(&g)
            {
                additional_gids.push(g);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// `KEY=VALUE` lines of an env file; `KEY` alone takes the value from rcrun's env.
fn read_env_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--env-file {}: cannot read it", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(
            expand_env(line)
                .with_context(|| format!("--env-file {} line {}", path.display(), n + 1))?,
        );
    }
    Ok(out.into_iter().flatten().collect())
}

/// `K=V` as is; `K` from rcrun's own environment (dropped when unset).
fn expand_env(item: &str) -> Result<Option<String>> {
    let key = item.split('=').next().unwrap_or_default();
    if key.is_empty() || key.contains(char::is_whitespace) {
        bail!("{item:?} is not KEY=VALUE");
    }
    if item.contains('=') {
        return Ok(Some(item.to_string()));
    }
    Ok(std::env::var(key).ok().map(|v| format!("{key}={v}")))
}

/// Sets `item` (K=V) in `env`, replacing an earlier K.
fn set_env(env: &mut Vec<String>, item: String) {
    let key = item.split('=').next().unwrap_or_default().to_string();
    env.retain(|e| e.split('=').next() != Some(key.as_str()));
    env.push(item);
}

/// An absolute container path without `..`.
fn container_path(flag: &str, path: &str) -> Result<String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        bail!("{flag} {path:?}: the container path must be absolute");
    }
    if p.components().any(|c| c == Component::ParentDir) {
        bail!("{flag} {path:?}: the container path must not contain '..'");
    }
    Ok(path.to_string())
}

/// A hostname (RFC 1123 labels), before it reaches /etc/hosts.
pub fn validate_hostname(name: &str) -> Result<()> {
    if name.parse::<dnsd::Name>().is_err() {
        bail!("invalid hostname {name:?}: use letters, digits and '-' in dot-separated labels");
    }
    Ok(())
}

/// docker's rule for container and volume names, checked before a name reaches a
/// file, a hosts line or a shell.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok = name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!(
            "invalid {kind} name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit (at most 128)"
        );
    }
    Ok(())
}

/// Where a `-v` mount comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// An absolute host path that exists.
    Host(PathBuf),
    /// A named volume (validated name), made on first use.
    Named(String),
}

/// A parsed `-v SOURCE:DEST[:OPTS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub source: VolumeSource,
    pub dest: String,
    pub options: Vec<String>,
}

/// `-v SOURCE:DEST[:OPTS]`: a host path (absolute) or a named volume.
pub fn parse_volume(spec: &str) -> Result<VolumeSpec> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, dest, opts) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => bail!("-v {spec:?}: expected SOURCE:DEST[:ro|rw]"),
    };
    let dest = container_path("-v", dest)?;
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" | "rw" => options.push(o.to_string()),
            "z" | "Z" => {} // SELinux relabelling: nothing to do without SELinux
            other => bail!("-v {spec:?}: unknown option {other:?} (use ro or rw)"),
        }
    }
    let source = if source.starts_with('/') {
        let path = PathBuf::from(source);
        if !path.exists() {
            bail!("-v {spec:?}: the host path {source} does not exist; create it first");
        }
        VolumeSource::Host(path)
    } else {
        if source.contains('/') || source.starts_with('.') || source.starts_with('~') {
            bail!(
                "-v {spec:?}: {source:?} is not an absolute host path, and is an invalid volume name; write the host path in full, e.g. \"$PWD/{source}\""
            );
        }
        validate_name("volume", source).with_context(|| format!("-v {spec:?}"))?;
        VolumeSource::Named(source.to_string())
    };
    Ok(VolumeSpec {
        source,
        dest,
        options,
    })
}

/// The mount of a `-v`; a named volume's directory is made beforehand
/// (crate::volumes).
fn volume_mount(spec: &str, volumes: &Path) -> Result<Value> {
    let v = parse_volume(spec)?;
    let source = match &v.source {
        VolumeSource::Host(path) => path.clone(),
        VolumeSource::Named(name) => crate::volumes::mountpoint(volumes, name),
    };
    Ok(json!({"destination": v.dest, "type": "bind", "source": source, "options": v.options}))
}

/// `--tmpfs DEST[:OPTS]`.
fn tmpfs_mount(spec: &str) -> Result<Value> {
    let (dest, opts) = spec.split_once(':').unwrap_or((spec, ""));
    let dest = container_path("--tmpfs", dest)?;
    let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
    options.extend(
        opts.split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_string),
    );
    Ok(json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": options}))
}

/// The argv: `--entrypoint` replaces the image's and drops its Cmd; a command
/// after the image replaces Cmd.
pub fn command_line(config: Option<&ImageConfig>, req: &RunRequest) -> Result<Vec<String>> {
    let image_entrypoint = config
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    let image_cmd = config.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let mut args = match &req.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => image_entrypoint,
    };
    if !req.command.is_empty() {
        args.extend(req.command.iter().cloned());
    } else if req.entrypoint.is_none() {
        args.extend(image_cmd);
    }
    if args.is_empty() {
        bail!(
            "no command to run: the image has no Entrypoint or Cmd; give one after the image name"
        );
    }
    Ok(args)
}

/// Builds the spec of a container.
pub fn build(
    config: Option<&ImageConfig>,
    req: &RunRequest,
    user: &ResolvedUser,
    hostname: &str,
    maps: Option<(&[LinuxIdMapping], &[LinuxIdMapping])>,
    files: &ContainerFiles<'_>,
) -> Result<Spec> {
    let args = command_line(config, req)?;
    let mut env: Vec<String> = Vec::new();
    set_env(&mut env, DEFAULT_PATH.to_string());
    set_env(&mut env, format!("HOSTNAME={hostname}"));
    for e in config.and_then(|c| c.env().clone()).unwrap_or_default() {
        set_env(&mut env, e);
    }
    for file in &req.env_files {
        for e in read_env_file(file)? {
            set_env(&mut env, e);
        }
    }
    for e in &req.env {
        if let Some(e) = expand_env(e).with_context(|| format!("-e {e:?}"))? {
            set_env(&mut env, e);
        }
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    if req.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let cwd = match (&req.workdir, config.and_then(|c| c.working_dir().clone())) {
        (Some(w), _) => container_path("-w", w)?,
        (None, Some(w)) if !w.is_empty() => w,
        _ => "/".to_string(),
    };

    let mut spec = serde_json::to_value(runtime::default_spec(maps))?;
    spec["root"] = json!({"path": files.rootfs, "readonly": req.read_only});
    spec["hostname"] = json!(hostname);
    let process = &mut spec["process"];
    process["terminal"] = json!(req.tty);
    process["args"] = json!(args);
    process["env"] = json!(env);
    process["cwd"] = json!(cwd);
    process["user"] = json!({
        "uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids,
    });
    process["capabilities"] = json!({
        "bounding": DOCKER_CAPS, "effective": DOCKER_CAPS, "permitted": DOCKER_CAPS,
    });
    // Like docker: the container inherits rcrun's limits, and setuid entrypoints
    // (gosu, su-exec) keep working.
    process.as_object_mut().map(|p| p.remove("rlimits"));
    process["noNewPrivileges"] = json!(req.security.no_new_privileges);
    if let Some(seccomp) = crate::seccomp::linux_seccomp(&req.security.seccomp, &DOCKER_CAPS)? {
        spec["linux"]["seccomp"] = seccomp;
    }
    if let Some(resources) = &req.resources {
        spec["linux"]["resources"] = resources.clone();
    }
    let mounts = spec["mounts"]
        .as_array_mut()
        .expect("the default spec has mounts");
    for (dest, source) in [
        ("/etc/hosts", files.hosts),
        ("/etc/hostname", files.hostname),
        ("/etc/resolv.conf", files.resolv_conf),
    ] {
        mounts.push(
            json!({"destination": dest, "type": "bind", "source": source,
                           "options": ["rbind", "rprivate"]}),
        );
    }
    for v in &req.volumes {
        mounts.push(volume_mount(v, files.volumes)?);
    }
    for t in &req.tmpfs {
        mounts.push(tmpfs_mount(t)?);
    }
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        match &req.network {
            NetNs::Own => {}
            NetNs::Host => ns.retain(|n| n["type"] != "network"),
            NetNs::Join { user, net } => {
                for n in ns.iter_mut() {
                    if n["type"] == "network" {
                        n["path"] = json!(net);
                    }
                    if let Some(user) = user
                        && n["type"] == "user"
                    {
                        n["path"] = json!(user);
                    }
                }
            }
        }
    }
    if let NetNs::Join { user: Some(_), .. } = &req.network
        && let Some(linux) = spec["linux"].as_object_mut()
    {
        // Joined: the infra's user namespace is mapped already.
        linux.remove("uidMappings");
        linux.remove("gidMappings");
    }
    serde_json::from_value(spec).context("build the container's spec")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_flags_become_linux_resources() {
        let flags = LimitFlags {
            memory: Some("64m".into()),
            memory_swap: Some("128M".into()),
            pids_limit: Some(50),
            cpus: Some("1.5".into()),
            cpuset_cpus: Some("0-1,3".into()),
            ..Default::default()
        };
        assert_eq!(
            resources(&flags).unwrap().unwrap(),
            json!({
                "memory": {"limit": 67108864, "swap": 134217728},
                "pids": {"limit": 50},
                "cpu": {"period": 100000, "quota": 150000, "cpus": "0-1,3"},
            })
        );
        assert_eq!(resources(&LimitFlags::default()).unwrap(), None);
        let unlimited_swap = LimitFlags {
            memory: Some("1g".into()),
            memory_swap: Some("-1".into()),
            ..Default::default()
        };
        assert_eq!(
            resources(&unlimited_swap).unwrap().unwrap()["memory"]["swap"],
            json!(-1)
        );
    }

    #[test]
    fn bad_resource_flags_name_the_flag() {
        let none = LimitFlags::default;
        let cases = [
            (
                LimitFlags {
                    memory: Some("12x".into()),
                    ..none()
                },
                "--memory \"12x\"",
            ),
            (
                LimitFlags {
                    memory: Some("1k".into()),
                    ..none()
                },
                "minimum is 6m",
            ),
            (
                LimitFlags {
                    memory_swap: Some("1g".into()),
                    ..none()
                },
                "needs --memory",
            ),
            (
                LimitFlags {
                    memory: Some("1g".into()),
                    memory_swap: Some("512m".into()),
                    ..none()
                },
                "below --memory",
            ),
            (
                LimitFlags {
                    pids_limit: Some(0),
                    ..none()
                },
                "--pids-limit 0",
            ),
            (
                LimitFlags {
                    cpus: Some("lots".into()),
                    ..none()
                },
                "--cpus",
            ),
            (
                LimitFlags {
                    cpu_shares: Some(1),
                    ..none()
                },
                "--cpu-shares",
            ),
            (
                LimitFlags {
                    cpuset_cpus: Some("0-".into()),
                    ..none()
                },
                "--cpuset-cpus",
            ),
        ];
        for (flags, needle) in cases {
            let err = format!("{:#}", resources(&flags).unwrap_err());
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nredis:x:100:101:Redis:/var/lib/redis:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nredis:x:101:\nadm:x:4:redis,other\n";

    #[test]
    fn users_resolve_by_name_and_number() {
        let r = resolve_user("redis", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(
            r,
            ResolvedUser {
                uid: 100,
                gid: 101,
                additional_gids: vec![4],
                home: "/var/lib/redis".into()
            }
        );
        let r = resolve_user("100:adm", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids.len()), (100, 4, 0));
        let r = resolve_user("4242", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (4242, 0, "/"));
        let r = resolve_user("", None, None).unwrap();
        assert_eq!((r.uid, r.gid), (0, 0));
        let err = resolve_user("nobody", Some(PASSWD), Some(GROUP)).unwrap_err();
        assert!(
            err.to_string().contains("unable to find user nobody"),
            "{err}"
        );
        let err = resolve_user("redis:wheel", Some(PASSWD), Some(GROUP)).unwrap_err();
        assert!(
            err.to_string().contains("unable to find group wheel"),
            "{err}"
        );
    }

    fn config(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        serde_json::from_value(json!({
            "Entrypoint": if entrypoint.is_empty() { Value::Null } else { json!(entrypoint) },
            "Cmd": if cmd.is_empty() { Value::Null } else { json!(cmd) },
        }))
        .unwrap()
    }

    #[test]
    fn entrypoint_and_cmd_combine_as_in_docker() {
        let c = config(&["/entry.sh"], &["redis-server"]);
        let req = |cmd: &[&str], ep: Option<&str>| RunRequest {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            entrypoint: ep.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(
            command_line(Some(&c), &req(&[], None)).unwrap(),
            ["/entry.sh", "redis-server"]
        );
        assert_eq!(
            command_line(Some(&c), &req(&["sh"], None)).unwrap(),
            ["/entry.sh", "sh"]
        );
        assert_eq!(
            command_line(Some(&c), &req(&[], Some("id"))).unwrap(),
            ["id"]
        );
        assert_eq!(
            command_line(Some(&c), &req(&["-u"], Some("id"))).unwrap(),
            ["id", "-u"]
        );
        assert_eq!(
            command_line(Some(&c), &req(&["ls"], Some(""))).unwrap(),
            ["ls"]
        );
        let err = command_line(Some(&config(&[], &[])), &req(&[], None)).unwrap_err();
        assert!(err.to_string().contains("no command to run"), "{err}");
    }

    #[test]
    fn bad_mounts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (spec, expect) in [
            ("/nonexistent-rcrun-test:/data", "does not exist"),
            ("/tmp:data", "must be absolute"),
            ("/tmp:/a/../etc", "must not contain '..'"),
            ("/tmp:/data:rx", "unknown option"),
            ("../x:/data", "invalid volume name"),
            ("a:b:c:d", "expected SOURCE:DEST"),
        ] {
            let err = volume_mount(spec, dir.path()).unwrap_err().to_string();
            assert!(err.contains(expect), "{spec}: {err}");
        }
        let err = volume_mount("bad name:/data", dir.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid volume name \"bad name\""),
            "{err:#}"
        );
        let ok = volume_mount("cache:/var/cache:ro", dir.path()).unwrap();
        assert_eq!(ok["destination"], "/var/cache");
        assert_eq!(ok["source"], json!(dir.path().join("cache/_data")));
        assert!(ok["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(tmpfs_mount("tmp").is_err());
    }

    #[test]
    fn env_layers_image_then_files_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(&file, "# comment\nA=from-file\nB=file\n\n").unwrap();
        let c: ImageConfig =
            serde_json::from_value(json!({"Env": ["A=image", "PATH=/image/bin"], "Cmd": ["sh"]}))
                .unwrap();
        let req = RunRequest {
            env: vec!["B=flag".into()],
            env_files: vec![file],
            ..Default::default()
        };
        let files = ContainerFiles {
            rootfs: Path::new("/r"),
            hosts: Path::new("/h"),
            hostname: Path::new("/hn"),
            resolv_conf: Path::new("/rc"),
            volumes: dir.path(),
        };
        let user = resolve_user("", None, None).unwrap();
        let spec = build(Some(&c), &req, &user, "box", None, &files).unwrap();
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&"A=from-file".to_string()), "{env:?}");
        assert!(env.contains(&"B=flag".to_string()), "{env:?}");
        assert!(env.contains(&"PATH=/image/bin".to_string()), "{env:?}");
        assert!(env.contains(&"HOSTNAME=box".to_string()), "{env:?}");
        assert!(env.contains(&"HOME=/".to_string()), "{env:?}");
        assert!(!spec.root().as_ref().unwrap().readonly().unwrap_or(false));
    }
}
