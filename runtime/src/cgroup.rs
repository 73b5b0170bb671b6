//! cgroup v2 for containers: where a container's cgroup lives, `linux.resources`
//! turned into cgroup v2 files, freezing, listing and killing its processes.
//!
//! Placement (the path is recorded in the container's state):
//! - `linux.cgroupsPath` absolute: that path from the root of the v2 hierarchy.
//! - relative: under the parent of rcrun's own cgroup (where a user's delegated
//!   slice is: the caller's own group holds processes and cannot take limits).
//! - absent: `rcrun-<id>` next to rcrun's own cgroup (`rcrun-<id>-<hash of the state
//!   root>` for a state root other than the default, so ids of two roots never meet).
//! - systemd style `slice:prefix:name` (`Runtime::systemd_cgroup`): turned into the
//!   cgroupfs path systemd would use (`/a.slice/a-b.slice/prefix-name.scope`),
//!   absolute for root, relative (as above) for everyone else; there is no systemd.
//!
//! Without a writable v2 tree (rootless on a host that delegates none) the container
//! runs without a cgroup; when the spec asks for limits that is said once, and it is
//! an error with `RCRUN_CGROUPS=required`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Spec};

use crate::container::Runtime;
use crate::error::{Error, Result};
use crate::state::{Record, Status};

/// The environment variable that makes limits mandatory (`required`) or not (`auto`).
pub const MODE_ENV: &str = "RCRUN_CGROUPS";

fn cgroup_error(msg: impl Into<String>) -> Error {
    Error::Cgroup(msg.into())
}

/// Whether limits the spec asks for may be dropped when no cgroup tree is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Auto,
    Required,
}

fn policy() -> Result<Policy> {
    match std::env::var(MODE_ENV).as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(Policy::Auto),
        Ok("required") => Ok(Policy::Required),
        Ok(other) => Err(Error::InvalidConfig(format!(
            "{MODE_ENV}={other:?} is not understood: use `required` (limits must be applied) or `auto`"
        ))),
    }
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts), from /proc/self/mountinfo text.
fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether a controller is bound to a cgroup v1 hierarchy (a hybrid host).
fn bound_to_v1(mountinfo: &str, controller: &str) -> bool {
    mountinfo.lines().any(|line| {
        line.split_once(" - ").is_some_and(|(_, right)| {
            let mut f = right.split_whitespace();
            f.next() == Some("cgroup")
                && f.nth(1)
                    .is_some_and(|opts| opts.split(',').any(|o| o == controller))
        })
    })
}

/// The v2 path of a process's cgroup, from /proc/PID/cgroup text ("0::/path").
fn own_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// Joins `rel` onto `base` (both "/"-rooted v2 paths), refusing `..` and empty names.
fn join_checked(base: &str, rel: &str) -> Result<String> {
    let mut out = PathBuf::from(base);
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "linux.cgroupsPath {rel:?} must not contain '..'"
                )));
            }
        }
    }
    Ok(out.to_string_lossy().into_owned())
}

/// `slice:prefix:name` as systemd would lay it out in cgroupfs: each dash in a slice
/// name is a level (`a-b.slice` lives in `a.slice`); the unit is `prefix-name.scope`.
pub(crate) fn systemd_path(spec_path: &str, root: bool) -> Result<String> {
    let parts: Vec<&str> = spec_path.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(Error::InvalidConfig(format!(
            "linux.cgroupsPath {spec_path:?} is not systemd's slice:prefix:name (the --systemd-cgroup form)"
        )));
    };
    let slice = if slice.is_empty() {
        if root { "system.slice" } else { "user.slice" }
    } else {
        slice
    };
    let bad = |s: &str| s.contains('/') || s == "..";
    let Some(stem) = slice
        .strip_suffix(".slice")
        .filter(|s| !s.is_empty() && !bad(s))
    else {
        return Err(Error::InvalidConfig(format!(
            "linux.cgroupsPath {spec_path:?}: {slice:?} is not a slice name (NAME.slice)"
        )));
    };
    if bad(prefix) || bad(name) || name.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "linux.cgroupsPath {spec_path:?}: prefix and name must be plain names"
        )));
    }
    let mut path = String::new();
    let mut acc = String::new();
    for (i, part) in stem.split('-').enumerate() {
        if i > 0 {
            acc.push('-');
        }
        acc.push_str(part);
        if stem != "-" && part.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "linux.cgroupsPath {spec_path:?}: slice {slice:?} has an empty part"
            )));
        }
        path.push_str(&format!("/{acc}.slice"));
    }
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(format!("{path}/{unit}"))
}

/// The container's cgroup as a "/"-rooted path in the v2 hierarchy.
fn container_path(
    cgroups_path: Option<&str>,
    own: &str,
    default_name: &str,
    systemd: bool,
    root: bool,
) -> Result<String> {
    let base = Path::new(own)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let requested = match cgroups_path.filter(|p| !p.is_empty()) {
        None => return join_checked(&base, default_name),
        Some(p) if systemd => {
            let p = systemd_path(p, root)?;
            return if root {
                join_checked("/", &p)
            } else {
                join_checked(&base, &p)
            };
        }
        Some(p) => p,
    };
    if requested.starts_with('/') {
        join_checked("/", requested)
    } else {
        join_checked(&base, requested)
    }
}

/// One value to write into one of the cgroup's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Write {
    pub file: String,
    pub value: String,
}

impl Write {
    fn new(file: impl Into<String>, value: impl Into<String>) -> Self {
        Write {
            file: file.into(),
            value: value.into(),
        }
    }

    /// The controller that provides the file (`memory.max` -> memory).
    fn controller(&self) -> Option<&str> {
        let c = self.file.split('.').next()?;
        (c != "cgroup").then_some(c)
    }
}

fn max_or(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

/// runc's cpu.shares (2..262144) to cpu.weight (1..10000) conversion.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// runc's swap conversion: the spec's swap is memory+swap; v2's swap.max is swap alone.
pub(crate) fn swap_max(swap: i64, limit: Option<i64>) -> Result<Option<String>> {
    let limit = limit.unwrap_or(0);
    match swap {
        -1 => Ok(Some("max".into())),
        0 => Ok(None),
        _ if limit <= 0 => Err(Error::InvalidConfig(
            "linux.resources.memory.swap needs memory.limit: it is memory+swap".into(),
        )),
        s if s < limit => Err(Error::InvalidConfig(format!(
            "linux.resources.memory.swap ({s}) is memory+swap and must be at least memory.limit ({limit})"
        ))),
        s => Ok(Some((s - limit).to_string())),
    }
}

/// blkio weight (10..1000) to io.weight (1..10000), as runc converts it.
pub(crate) fn blkio_to_io_weight(weight: u16) -> u64 {
    let w = u64::from(weight.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

/// The cgroup v2 writes for `linux.resources`, checked. `io.bfq.weight` is used for a
/// blkio weight when the kernel has it (same scale), `io.weight` otherwise.
pub(crate) fn writes(r: &LinuxResources, has_bfq: bool) -> Result<Vec<Write>> {
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        if let Some(l) = m.limit() {
            out.push(Write::new("memory.max", max_or(l)));
        }
        if let Some(l) = m.reservation() {
            out.push(Write::new("memory.low", max_or(l)));
        }
        if let Some(s) = m.swap()
            && let Some(v) = swap_max(s, m.limit())?
        {
            out.push(Write::new("memory.swap.max", v));
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares().filter(|s| *s > 0) {
            out.push(Write::new("cpu.weight", shares_to_weight(s).to_string()));
        }
        if c.quota().is_some() || c.period().is_some() {
            let quota = c
                .quota()
                .filter(|q| *q > 0)
                .map_or("max".into(), |q| q.to_string());
            let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
            out.push(Write::new("cpu.max", format!("{quota} {period}")));
        }
        if let Some(b) = c.burst() {
            out.push(Write::new("cpu.max.burst", b.to_string()));
        }
        if let Some(i) = c.idle() {
            out.push(Write::new("cpu.idle", i.to_string()));
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            out.push(Write::new("cpuset.cpus", cpus));
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            out.push(Write::new("cpuset.mems", mems));
        }
    }
    if let Some(p) = r.pids()
        && p.limit() != 0
    {
        out.push(Write::new("pids.max", max_or(p.limit())));
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight() {
            out.push(if has_bfq {
                Write::new("io.bfq.weight", w.to_string())
            } else {
                Write::new("io.weight", blkio_to_io_weight(w).to_string())
            });
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight() {
                out.push(Write::new(
                    "io.weight",
                    format!("{}:{} {}", d.major(), d.minor(), blkio_to_io_weight(w)),
                ));
            }
        }
        let throttles = [
            ("rbps", b.throttle_read_bps_device()),
            ("wbps", b.throttle_write_bps_device()),
            ("riops", b.throttle_read_iops_device()),
            ("wiops", b.throttle_write_iops_device()),
        ];
        for (key, list) in throttles {
            for d in list.iter().flatten() {
                out.push(Write::new(
                    "io.max",
                    format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                ));
            }
        }
    }
    for h in r.hugepage_limits().iter().flatten() {
        let size = h.page_size();
        if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::InvalidConfig(format!(
                "linux.resources.hugepageLimits: page size {size:?} is not like 2MB or 1GB"
            )));
        }
        out.push(Write::new(format!("hugetlb.{size}.max"), max_or(h.limit())));
    }
    if let Some(u) = r.unified() {
        let mut keys: Vec<&String> = u.keys().collect();
        keys.sort();
        for k in keys {
            if k.is_empty() || k.contains('/') || k.contains("..") || !k.contains('.') {
                return Err(Error::InvalidConfig(format!(
                    "linux.resources.unified key {k:?} is not a cgroup file name (like memory.high)"
                )));
            }
            out.push(Write::new(k.as_str(), u[k].as_str()));
        }
    }
    Ok(out)
}

/// The spec's resource groups rcrun cannot apply in cgroup v2 (v1-only settings).
fn v1_only(r: &LinuxResources) -> Vec<&'static str> {
    let m = r.memory().as_ref();
    [
        ("memory.kernel", m.and_then(|m| m.kernel()).is_some()),
        ("memory.kernelTCP", m.and_then(|m| m.kernel_tcp()).is_some()),
        (
            "memory.swappiness",
            m.and_then(|m| m.swappiness()).is_some(),
        ),
        (
            "memory.disableOOMKiller",
            m.and_then(|m| m.disable_oom_killer()) == Some(true),
        ),
        ("network", r.network().is_some()),
        ("rdma", r.rdma().as_ref().is_some_and(|x| !x.is_empty())),
        (
            "cpu.realtime",
            r.cpu()
                .as_ref()
                .is_some_and(|c| c.realtime_runtime().is_some() || c.realtime_period().is_some()),
        ),
    ]
    .into_iter()
    .filter_map(|(n, set)| set.then_some(n))
    .collect()
}

fn controllers_of(writes: &[Write]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in writes {
        if let Some(c) = w.controller()
            && !out.iter().any(|o| o == c)
        {
            out.push(c.to_string());
        }
    }
    out
}

fn read_words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// A container's cgroup directory.
#[derive(Debug, Clone)]
pub(crate) struct Cgroup {
    pub dir: PathBuf,
}

/// What `prepare` decided, for the spawn and the state record.
pub(crate) struct Prepared {
    pub cgroup: Cgroup,
    /// The open directory, for clone3's CLONE_INTO_CGROUP.
    pub fd: OwnedFd,
}

/// Creates the container's cgroup and applies the spec's limits. `Ok(None)`: no
/// usable tree (warned about once when the spec asks for limits).
/// `default_name` is the cgroup's name when the spec gives no cgroupsPath.
pub(crate) fn prepare(spec: &Spec, default_name: &str, systemd: bool) -> Result<Option<Prepared>> {
    let policy = policy()?;
    let linux = spec.linux().as_ref();
    let resources = linux
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mount = v2_mount(&mountinfo);
    let mut wanted = writes(&resources, false)?;
    let asked = controllers_of(&wanted);
    let unusable = |why: String| -> Result<Option<Prepared>> {
        if asked.is_empty() {
            return Ok(None);
        }
        if policy == Policy::Required {
            return Err(cgroup_error(format!(
                "linux.resources ({}) cannot be applied: {why}; {MODE_ENV}=required makes that an error",
                asked.join(", ")
            )));
        }
        crate::warn::warn(&format!(
            "linux.resources ({}) not applied: {why}; the container runs without these limits (set {MODE_ENV}=required to refuse instead)",
            asked.join(", ")
        ));
        Ok(None)
    };
    let Some(mount) = mount else {
        return unusable("no cgroup v2 hierarchy is mounted".into());
    };
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| own_path(&t))
        .unwrap_or_else(|| "/".into());
    let cgroups_path = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    let rel = container_path(
        cgroups_path.as_deref(),
        &own,
        default_name,
        systemd,
        nix::unistd::Uid::effective().is_root(),
    )?;
    let dir = mount.join(rel.trim_start_matches('/'));
    if dir == mount {
        return Err(Error::InvalidConfig(
            "linux.cgroupsPath names the root cgroup, which cannot hold limits or a container"
                .into(),
        ));
    }
    // delete kills whatever is in the container's cgroup: it must not be someone else's.
    if std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()) {
        return Err(Error::InvalidConfig(format!(
            "the cgroup {} already holds processes; give the container a cgroup of its own (linux.cgroupsPath)",
            dir.display()
        )));
    }
    if let Err(e) = create_path(&mount, &dir, &asked) {
        let hint = if matches!(
            e.raw_os_error(),
            Some(libc::EACCES | libc::EPERM | libc::EROFS)
        ) {
            ": no cgroup v2 tree is delegated to you here"
        } else {
            ""
        };
        return unusable(format!(
            "cannot create the cgroup {} ({e}){hint}",
            dir.display()
        ));
    }
    let cgroup = Cgroup { dir };
    let result = (|| {
        wanted = writes(&resources, cgroup.file("io.bfq.weight").exists())?;
        let missing = cgroup.missing_controllers(&asked);
        let (v1, absent): (Vec<String>, Vec<String>) = missing
            .into_iter()
            .partition(|c| bound_to_v1(&mountinfo, c));
        if !absent.is_empty() {
            return Err(cgroup_error(format!(
                "the cgroup v2 controller(s) {} needed by linux.resources are not available in {} (not enabled in the parent's cgroup.subtree_control, or not delegated to you)",
                absent.join(", "),
                cgroup.dir.display()
            )));
        }
        if !v1.is_empty() {
            if policy == Policy::Required {
                return Err(cgroup_error(format!(
                    "the controller(s) {} are bound to cgroup v1 on this host, so linux.resources cannot be applied; {MODE_ENV}=required makes that an error",
                    v1.join(", ")
                )));
            }
            crate::warn::warn(&format!(
                "linux.resources ({}) not applied: these controllers are bound to cgroup v1 on this host; the container runs without these limits",
                v1.join(", ")
            ));
            wanted.retain(|w| w.controller().is_none_or(|c| !v1.iter().any(|x| x == c)));
        }
        cgroup.apply(&wanted)?;
        open_dir(&cgroup.dir)
    })();
    match result {
        Ok(fd) => {
            let v1 = v1_only(&resources);
            if !v1.is_empty() {
                crate::warn::warn(&format!(
                    "linux.resources {} exist only in cgroup v1 and are not applied",
                    v1.join(", ")
                ));
            }
            Ok(Some(Prepared { cgroup, fd }))
        }
        Err(e) => {
            cgroup.remove();
            Err(e)
        }
    }
}

/// mkdir -p from the mount down to `dir`, enabling `controllers` on the way in each
/// ancestor's cgroup.subtree_control where they are not yet enabled. Fails only if
/// `dir` cannot be created.
fn create_path(mount: &Path, dir: &Path, controllers: &[String]) -> std::io::Result<()> {
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    let mut level = mount.to_path_buf();
    for part in rel.components() {
        enable(&level, controllers);
        level.push(part);
        match std::fs::create_dir(&level) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Best effort: a parent that cannot enable a controller shows as a missing
/// controller in the child, which is reported with its name.
fn enable(level: &Path, controllers: &[String]) {
    let enabled = read_words(&level.join("cgroup.subtree_control"));
    let offered = read_words(&level.join("cgroup.controllers"));
    let todo: Vec<String> = controllers
        .iter()
        .filter(|c| !enabled.contains(c) && offered.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if !todo.is_empty() {
        let _ = std::fs::write(level.join("cgroup.subtree_control"), todo.join(" "));
    }
}

impl Cgroup {
    fn missing_controllers(&self, wanted: &[String]) -> Vec<String> {
        let have = read_words(&self.dir.join("cgroup.controllers"));
        wanted
            .iter()
            .filter(|c| !have.contains(c))
            .cloned()
            .collect()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn apply(&self, writes: &[Write]) -> Result<()> {
        for w in writes {
            std::fs::write(self.file(&w.file), &w.value).map_err(|e| {
                cgroup_error(format!(
                    "write {:?} to {}: {e}{}",
                    w.value,
                    self.file(&w.file).display(),
                    if e.kind() == std::io::ErrorKind::NotFound {
                        " (the kernel has no such cgroup file)"
                    } else {
                        ""
                    }
                ))
            })?;
        }
        Ok(())
    }

    /// New limits for a running container; enables controllers it did not need yet.
    pub fn update(&self, r: &LinuxResources) -> Result<()> {
        let writes = writes(r, self.file("io.bfq.weight").exists())?;
        let wanted = controllers_of(&writes);
        if let Some(parent) = self.dir.parent() {
            enable(parent, &wanted);
        }
        let missing = self.missing_controllers(&wanted);
        if !missing.is_empty() {
            return Err(cgroup_error(format!(
                "the cgroup v2 controller(s) {} are not available in {}",
                missing.join(", "),
                self.dir.display()
            )));
        }
        self.apply(&writes)
    }

    /// Freezes or thaws, and waits until cgroup.events says it is done.
    pub fn freeze(&self, on: bool) -> Result<()> {
        let path = self.file("cgroup.freeze");
        std::fs::write(&path, if on { "1" } else { "0" }).map_err(|e| {
            cgroup_error(format!(
                "write {}: {e} (is this kernel's freezer missing?)",
                path.display()
            ))
        })?;
        let want = if on { "frozen 1" } else { "frozen 0" };
        let events = self.file("cgroup.events");
        poll_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&events).is_ok_and(|s| s.lines().any(|l| l == want))
        })
        .then_some(())
        .ok_or_else(|| {
            cgroup_error(format!(
                "{} did not report `{want}` within 10 s",
                events.display()
            ))
        })
    }

    /// The cgroup's directory and those of its descendants, parents first.
    fn subtree(&self) -> Vec<PathBuf> {
        let mut all = vec![self.dir.clone()];
        let mut i = 0;
        while i < all.len() {
            if let Ok(entries) = std::fs::read_dir(&all[i]) {
                all.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            i += 1;
        }
        all
    }

    /// Every process in the cgroup and its descendants.
    pub fn pids(&self) -> Vec<i32> {
        self.subtree()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Signals every process; SIGKILL through cgroup.kill where the kernel has it.
    pub fn kill_all(&self, signal: i32) -> Result<()> {
        if signal == libc::SIGKILL && std::fs::write(self.file("cgroup.kill"), "1").is_ok() {
            return Ok(());
        }
        for pid in self.pids() {
            // SAFETY: plain kill(2).
            let ret = unsafe { libc::kill(pid, signal) };
            if ret != 0 && Errno::last() != Errno::ESRCH {
                return Err(Error::sys(
                    format!("send signal {signal} to pid {pid}"),
                    Errno::last(),
                ));
            }
        }
        Ok(())
    }

    /// Kills what is left and removes the cgroup (and sub-cgroups the container made).
    pub fn remove(&self) {
        if !self.dir.exists() {
            return;
        }
        let _ = self.kill_all(libc::SIGKILL);
        // Nothing stays frozen while it is torn down.
        let _ = std::fs::write(self.file("cgroup.freeze"), "0");
        let all = self.subtree();
        // Deepest first; rmdir fails with EBUSY until the killed processes are gone.
        for d in all.iter().rev() {
            let gone = poll_until(Duration::from_secs(5), || match std::fs::remove_dir(d) {
                Ok(()) => true,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            });
            if !gone {
                crate::warn::warn(&format!("could not remove cgroup {}", d.display()));
            }
        }
    }
}

/// Polls `done` with backoff (1 ms doubling to 100 ms) until it holds or `limit` passes.
fn poll_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Opens a cgroup directory for CLONE_INTO_CGROUP.
pub(crate) fn open_dir(dir: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open the container's cgroup {}", dir.display()), e))
}

/// Whether the cgroup at `dir` is (being) frozen by `pause`.
pub(crate) fn is_frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
}

/// In a freshly cloned child whose clone3 could not place it (kernel without
/// CLONE_INTO_CGROUP): moves itself into the cgroup before running anything.
pub(crate) fn join_self(cgroup_dir: &impl AsFd) -> nix::Result<()> {
    let procs = nix::fcntl::openat(
        cgroup_dir.as_fd(),
        c"cgroup.procs",
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    nix::unistd::write(&procs, b"0").map(drop)
}

/// The processes of a container without a cgroup: those in the pid namespace of
/// `init` when it has its own, else `init` and its descendants.
pub(crate) fn pids_without_cgroup(init: i32, own_pid_ns: bool) -> Vec<i32> {
    let ns_of = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let init_ns = ns_of(init);
    let mut procs: Vec<(i32, i32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0);
        procs.push((pid, ppid));
    }
    if own_pid_ns && init_ns.is_some() {
        return procs
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| ns_of(*p) == init_ns)
            .collect();
    }
    let mut out = vec![init];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            procs
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// Control of a running container through its cgroup: the runtime's side of runc's
/// `pause`, `resume`, `update`, `ps` and `kill --all`.
impl Runtime {
    /// The record and cgroup of a container whose process is still there.
    fn live(&self, id: &str, action: &'static str) -> Result<(Record, Status, Option<Cgroup>)> {
        let dir = self.dir(id)?;
        let rec = Record::load(&dir, id)?;
        let status = rec.status(&dir);
        if matches!(status, Status::Stopped | Status::Creating) {
            return Err(Error::WrongState {
                id: id.to_string(),
                status: status.as_str(),
                hint: action,
            });
        }
        let cgroup = rec.cgroup.clone().map(|dir| Cgroup { dir });
        Ok((rec, status, cgroup))
    }

    fn freezer(id: &str, cgroup: Option<Cgroup>) -> Result<Cgroup> {
        cgroup.ok_or_else(|| {
            cgroup_error(format!(
                "no freezer for container {id}: it runs without a cgroup (no writable cgroup v2 tree when it was created)"
            ))
        })
    }

    /// Freezes every process of a running container (cgroup.freeze); `state` then
    /// says `paused`. Error 125 when the container has no cgroup.
    pub fn pause(&self, id: &str) -> Result<()> {
        self.set_frozen(id, true)
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        self.set_frozen(id, false)
    }

    fn set_frozen(&self, id: &str, on: bool) -> Result<()> {
        let (from, hint) = if on {
            (Status::Running, "only a running container can be paused")
        } else {
            (Status::Paused, "only a paused container can be resumed")
        };
        let (_dir, _lock) = self.lock(id)?;
        let (_, status, cgroup) = self.live(id, hint)?;
        if status != from {
            return Err(Error::WrongState {
                id: id.to_string(),
                status: status.as_str(),
                hint,
            });
        }
        Self::freezer(id, cgroup)?.freeze(on)
    }

    /// Applies new limits to a created, running or paused container's cgroup and
    /// records them in its spec (each group given replaces the old one).
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let (dir, _lock) = self.lock(id)?;
        let (mut rec, _, cgroup) = self.live(id, "only a live container can be updated")?;
        let cgroup = cgroup.ok_or_else(|| {
            cgroup_error(format!(
                "container {id} runs without a cgroup (no writable cgroup v2 tree when it was created), so its limits cannot be updated"
            ))
        })?;
        cgroup.update(resources)?;
        let mut linux = rec.spec.linux().clone().unwrap_or_default();
        let mut merged = linux.resources().clone().unwrap_or_default();
        macro_rules! take {
            ($get:ident, $set:ident) => {
                if resources.$get().is_some() {
                    merged.$set(resources.$get().clone());
                }
            };
        }
        take!(memory, set_memory);
        take!(cpu, set_cpu);
        take!(pids, set_pids);
        take!(block_io, set_block_io);
        take!(hugepage_limits, set_hugepage_limits);
        take!(unified, set_unified);
        linux.set_resources(Some(merged));
        rec.spec.set_linux(Some(linux));
        rec.save(&dir)
    }

    /// The pids (as seen from the host) of every process of the container: its
    /// cgroup's, or without one those in its pid namespace (or init's descendants).
    /// Empty once it has stopped.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let dir = self.dir(id)?;
        let rec = Record::load(&dir, id)?;
        let mut pids = match (&rec.cgroup, rec.alive()) {
            (Some(cg), _) => Cgroup { dir: cg.clone() }.pids(),
            (None, true) => pids_without_cgroup(rec.pid, creates_pid_ns(&rec)),
            (None, false) => Vec::new(),
        };
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Sends `signal` to every process of the container (runc's `kill --all`).
    pub fn kill_all(&self, id: &str, signal: i32) -> Result<()> {
        let (rec, _, cgroup) =
            self.live(id, "there is no process to signal; delete it with `delete`")?;
        if let Some(cgroup) = cgroup {
            return cgroup.kill_all(signal);
        }
        for pid in pids_without_cgroup(rec.pid, creates_pid_ns(&rec)) {
            // SAFETY: plain kill(2).
            if unsafe { libc::kill(pid, signal) } != 0 && Errno::last() != Errno::ESRCH {
                return Err(Error::sys(
                    format!("send signal {signal} to pid {pid} of container {id}"),
                    Errno::last(),
                ));
            }
        }
        Ok(())
    }
}

fn creates_pid_ns(rec: &Record) -> bool {
    rec.spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|list| {
            list.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    fn resources(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn finds_the_v2_mount_and_v1_controllers() {
        assert_eq!(
            v2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert!(bound_to_v1(HYBRID, "memory") && bound_to_v1(HYBRID, "pids"));
        assert!(!bound_to_v1(HYBRID, "cpu"));
        let unified = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(v2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert!(!bound_to_v1(unified, "memory"));
        assert_eq!(v2_mount("1 2 0:1 / / rw - ext4 /dev/sda rw"), None);
    }

    #[test]
    fn own_cgroup_is_the_v2_line() {
        assert_eq!(
            own_path("4:memory:/x\n0::/user/scenario\n").as_deref(),
            Some("/user/scenario")
        );
        assert_eq!(own_path("4:memory:/x\n"), None);
    }

    #[test]
    fn container_paths() {
        let p = |path: Option<&str>, own: &str| container_path(path, own, "rcrun-c1", false, false);
        assert_eq!(p(None, "/user/scenario").unwrap(), "/user/rcrun-c1");
        assert_eq!(p(None, "/").unwrap(), "/rcrun-c1");
        assert_eq!(p(Some("/a/b"), "/user/scenario").unwrap(), "/a/b");
        assert_eq!(p(Some("pod/c1"), "/user/scenario").unwrap(), "/user/pod/c1");
        assert!(p(Some("../escape"), "/user/s").is_err());
        assert!(p(Some("/a/../../b"), "/user/s").is_err());
        assert_eq!(
            container_path(Some("system.slice:docker:abc"), "/", "rcrun-c1", true, true).unwrap(),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(
            container_path(
                Some("user-1000.slice:libpod:x"),
                "/user/s",
                "rcrun-c1",
                true,
                false
            )
            .unwrap(),
            "/user/user.slice/user-1000.slice/libpod-x.scope"
        );
    }

    #[test]
    fn systemd_paths() {
        assert_eq!(
            systemd_path(":rcrun:c", true).unwrap(),
            "/system.slice/rcrun-c.scope"
        );
        assert_eq!(
            systemd_path("a-b-c.slice::x", true).unwrap(),
            "/a.slice/a-b.slice/a-b-c.slice/x.scope"
        );
        assert_eq!(
            systemd_path("machine.slice:p:sub.slice", true).unwrap(),
            "/machine.slice/sub.slice"
        );
        for bad in [
            "nocolons",
            "a:b",
            "notaslice:p:n",
            "x.slice:p:../n",
            "x.slice:p:",
            "a--b.slice:p:n",
        ] {
            assert!(systemd_path(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn conversions_follow_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
        assert_eq!(blkio_to_io_weight(500), 4950);
        assert_eq!(swap_max(-1, Some(100)).unwrap().as_deref(), Some("max"));
        assert_eq!(swap_max(0, Some(100)).unwrap(), None);
        assert_eq!(swap_max(300, Some(100)).unwrap().as_deref(), Some("200"));
        assert!(swap_max(50, Some(100)).is_err());
        assert!(swap_max(50, None).is_err());
    }

    #[test]
    fn resources_become_v2_files() {
        let r = resources(json!({
            "memory": {"limit": 67108864, "reservation": -1, "swap": 134217728},
            "cpu": {"shares": 1024, "quota": 50000, "cpus": "0-1", "mems": "0"},
            "pids": {"limit": 32},
            "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
            "unified": {"memory.high": "50M"}
        }));
        let got: Vec<(String, String)> = writes(&r, false)
            .unwrap()
            .into_iter()
            .map(|w| (w.file, w.value))
            .collect();
        let want = [
            ("memory.max", "67108864"),
            ("memory.low", "max"),
            ("memory.swap.max", "67108864"),
            ("cpu.weight", "39"),
            ("cpu.max", "50000 100000"),
            ("cpuset.cpus", "0-1"),
            ("cpuset.mems", "0"),
            ("pids.max", "32"),
            ("io.weight", "4950"),
            ("io.max", "8:0 rbps=1048576"),
            ("hugetlb.2MB.max", "0"),
            ("memory.high", "50M"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        let with_bfq = writes(&resources(json!({"blockIO": {"weight": 500}})), true).unwrap();
        assert_eq!(with_bfq, vec![Write::new("io.bfq.weight", "500")]);
        let unlimited = writes(
            &resources(
                json!({"memory": {"limit": -1}, "pids": {"limit": -1}, "cpu": {"period": 20000}}),
            ),
            false,
        )
        .unwrap();
        assert_eq!(
            unlimited,
            vec![
                Write::new("memory.max", "max"),
                Write::new("cpu.max", "max 20000"),
                Write::new("pids.max", "max")
            ]
        );
        assert_eq!(
            controllers_of(&writes(&r, false).unwrap()),
            ["memory", "cpu", "cpuset", "pids", "io", "hugetlb"]
        );
    }

    #[test]
    fn bad_unified_keys_and_page_sizes_are_refused() {
        for key in ["../memory.max", "a/b.c", "nodot", ""] {
            let r = resources(json!({"unified": {key: "1"}}));
            assert!(writes(&r, false).is_err(), "{key}");
        }
        let r = resources(json!({"hugepageLimits": [{"pageSize": "../x", "limit": 1}]}));
        assert!(writes(&r, false).is_err());
    }
}
