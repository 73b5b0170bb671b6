//! Loads a bundle and turns its config.json into the plans the setup process
//! executes. Everything that can be checked without side effects is checked here,
//! before any process or state exists.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::SFlag;
use nix::unistd::Uid;
use oci_spec::runtime::{LinuxDeviceType, LinuxIdMapping, LinuxNamespaceType, Spec};

use crate::caps::CapSets;
use crate::error::{Error, Result};
use crate::hooks;
use crate::idmap::{self, MapWriter};
use crate::mountattr;
use crate::mounts::{self, DevicePlan, MountKind, MountPlan, RootfsPlan};
use crate::nsfields;
use crate::overlay::{OverlayPlan, RootfsOverlay};
use crate::procattrs;
use crate::process::{self, ProcessPlan, Rlimit};
use crate::sys;

/// The namespaces to create and to join, as clone flags.
#[derive(Debug, Clone, Default)]
pub(crate) struct NamespacePlan {
    pub create: u64,
    /// In join order: the user namespace first, so the others are joined with its
    /// capabilities.
    pub join: Vec<(PathBuf, u64)>,
    /// `linux.timeOffsets` for the new time namespace, in timens_offsets format.
    pub time_offsets: Option<String>,
}

impl NamespacePlan {
    pub fn creates(&self, flag: i32) -> bool {
        self.create & flag as u64 != 0
    }
    pub fn joins(&self, flag: i32) -> bool {
        self.join.iter().any(|(_, f)| *f == flag as u64)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct IdMaps {
    pub writer: MapWriter,
    pub uid: Vec<LinuxIdMapping>,
    pub gid: Vec<LinuxIdMapping>,
}

#[derive(Debug)]
pub(crate) struct ContainerConfig {
    pub spec: Spec,
    pub bundle: PathBuf,
    pub namespaces: NamespacePlan,
    pub maps: Option<IdMaps>,
    pub rootfs: RootfsPlan,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub process: ProcessPlan,
    /// What rcrun will not do for this spec, to tell the user.
    pub warnings: Vec<String>,
    /// Join a fresh session keyring (not with runc's `--no-new-keyring`).
    pub new_session_keyring: bool,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidConfig(msg.into())
}

pub(crate) fn ns_flag(t: LinuxNamespaceType) -> i32 {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// Reads `bundle/config.json`.
pub(crate) fn read_spec(bundle: &Path) -> Result<(PathBuf, Spec)> {
    let bundle = std::fs::canonicalize(bundle).map_err(|e| Error::Bundle {
        path: bundle.to_path_buf(),
        reason: format!("{e}; pass the directory that holds config.json with --bundle"),
    })?;
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::Bundle {
        path: bundle.clone(),
        reason: format!("cannot read config.json: {e}"),
    })?;
    let spec = serde_json::from_slice(&text).map_err(|e| Error::Config {
        path: bundle.clone(),
        reason: crate::seccomp::explain_parse_error(&text).unwrap_or_else(|| e.to_string()),
    })?;
    Ok((bundle, spec))
}

fn namespaces(spec: &Spec) -> Result<NamespacePlan> {
    let mut plan = NamespacePlan::default();
    let mut seen = HashSet::new();
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in &list {
        if !seen.insert(ns.typ()) {
            return Err(invalid(format!(
                "linux.namespaces lists the {} namespace twice",
                ns.typ()
            )));
        }
        let flag = ns_flag(ns.typ()) as u64;
        match ns.path() {
            None => plan.create |= flag,
            Some(p) => {
                if !p.exists() {
                    return Err(invalid(format!(
                        "namespace path {} ({}) does not exist",
                        p.display(),
                        ns.typ()
                    )));
                }
                plan.join.push((p.clone(), flag));
            }
        }
    }
    plan.join
        .sort_by_key(|(_, f)| *f != libc::CLONE_NEWUSER as u64);
    Ok(plan)
}

fn id_maps(spec: &Spec, ns: &NamespacePlan) -> Result<Option<IdMaps>> {
    let linux = spec.linux().as_ref();
    let uid = linux
        .and_then(|l| l.uid_mappings().clone())
        .unwrap_or_default();
    let gid = linux
        .and_then(|l| l.gid_mappings().clone())
        .unwrap_or_default();
    if !ns.creates(libc::CLONE_NEWUSER) {
        if !uid.is_empty() || !gid.is_empty() {
            return Err(invalid(
                "uidMappings/gidMappings are set but linux.namespaces creates no user namespace",
            ));
        }
        return Ok(None);
    }
    let (uid, gid) = if uid.is_empty() && gid.is_empty() && !Uid::effective().is_root() {
        // As crun does: an ordinary user's own ids, as root of the container.
        let own = |id: u32| idmap::rootless_mappings(id, &[]);
        (
            own(Uid::effective().as_raw()),
            own(nix::unistd::Gid::effective().as_raw()),
        )
    } else {
        (uid, gid)
    };
    if uid.is_empty() || gid.is_empty() {
        return Err(invalid(
            "a new user namespace needs both linux.uidMappings and linux.gidMappings",
        ));
    }
    for m in uid.iter().chain(&gid) {
        if m.size() == 0 {
            return Err(invalid("an id mapping has size 0"));
        }
    }
    Ok(Some(IdMaps {
        writer: idmap::choose_writer(&uid, &gid),
        uid,
        gid,
    }))
}

fn mount_plans(spec: &Spec, bundle: &Path, maps: Option<&IdMaps>) -> Result<Vec<MountPlan>> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination();
        if !dest.is_absolute() {
            return Err(invalid(format!(
                "mount destination {} must be an absolute path",
                dest.display()
            )));
        }
        let opts = mounts::parse_options(m.options().as_deref().unwrap_or(&[]));
        let typ = m.typ().as_deref().unwrap_or("");
        let kind = if typ == "bind" || opts.bind.is_some() {
            let source = m.source().as_ref().ok_or_else(|| {
                invalid(format!("bind mount on {} has no source", dest.display()))
            })?;
            let source = if source.is_absolute() {
                source.clone()
            } else {
                bundle.join(source)
            };
            if !source.exists() {
                return Err(invalid(format!(
                    "bind mount source {} for {} does not exist",
                    source.display(),
                    dest.display()
                )));
            }
            if let Some(unknown) = opts.data.first() {
                return Err(invalid(format!(
                    "mount on {}: unknown option {unknown:?} for a bind mount (known: bind, rbind, ro, rw, nosuid, nodev, noexec, the atime options, their recursive r-forms like rro, propagation and idmap/ridmap)",
                    dest.display()
                )));
            }
            MountKind::Bind {
                source,
                recursive: opts.bind.unwrap_or(false),
            }
        } else if typ == "cgroup" || typ == "cgroup2" {
            MountKind::Cgroup
        } else if typ.is_empty() {
            return Err(invalid(format!(
                "mount on {} has no type (use bind, tmpfs, proc, ...)",
                dest.display()
            )));
        } else {
            MountKind::Fs {
                fstype: typ.to_string(),
                source: m
                    .source()
                    .as_ref()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| typ.to_string()),
            }
        };
        let idmap = mountattr::plan(m, opts.idmap, matches!(kind, MountKind::Bind { .. }), maps)?;
        out.push(MountPlan {
            recursive_attrs: opts.recursive_attrs,
            idmap,
            dest: mounts::clean_container_path(dest),
            kind,
            flags: opts.flags,
            propagation: opts.propagation,
            data: (!opts.data.is_empty()).then(|| opts.data.join(",")),
        });
    }
    Ok(out)
}

/// In a user namespace the device is bound from the host: it must be there, and be
/// the device the spec names.
fn check_host_device(d: &DevicePlan) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let shown = d.path.display();
    let md = std::fs::metadata(&d.path).map_err(|e| {
        invalid(format!(
            "linux.devices {shown}: in a user namespace device nodes cannot be created, so rcrun binds the host's {shown}, which cannot be used ({e}); remove the entry or run as root without a user namespace"
        ))
    })?;
    let kind_matches = match d.kind {
        SFlag::S_IFCHR => md.file_type().is_char_device(),
        SFlag::S_IFBLK => md.file_type().is_block_device(),
        _ => md.file_type().is_fifo(),
    };
    let rdev = md.rdev();
    if !kind_matches
        || (d.kind != SFlag::S_IFIFO
            && (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)) != (d.major, d.minor))
    {
        return Err(invalid(format!(
            "linux.devices {shown}: in a user namespace rcrun binds the host's {shown}, which is not the device the spec names ({}:{}); fix major/minor/type",
            d.major, d.minor
        )));
    }
    Ok(())
}

fn device_plans(spec: &Spec, uid: u32, gid: u32, bind: bool) -> Result<Vec<DevicePlan>> {
    let mut devices = mounts::default_devices(uid, gid);
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(invalid(format!(
                    "device {} has type 'a', which is only valid in cgroup rules",
                    d.path().display()
                )));
            }
        };
        let path = mounts::clean_container_path(d.path());
        devices.retain(|existing| existing.path != path);
        let plan = DevicePlan {
            path,
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(uid),
            gid: d.gid().unwrap_or(gid),
        };
        if bind {
            check_host_device(&plan)?;
        }
        devices.push(plan);
    }
    Ok(devices)
}

pub(crate) fn cstrings(list: &[String], what: &str) -> Result<Vec<CString>> {
    list.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| invalid(format!("{what} {s:?} contains a NUL byte")))
        })
        .collect()
}

/// The process plan for `process` of a spec (also the base of exec'd processes).
pub(crate) fn process_plan(spec: &Spec) -> Result<ProcessPlan> {
    let p = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("config.json has no process section"))?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(invalid("process.args is empty: give the command to run"));
    }
    let env = p.env().clone().unwrap_or_default();
    for e in &env {
        if !e.contains('=') {
            return Err(invalid(format!("process.env entry {e:?} is not KEY=VALUE")));
        }
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(process::DEFAULT_PATH)
        .to_string();
    if !p.cwd().is_absolute() {
        return Err(invalid(format!(
            "process.cwd {} must be an absolute path",
            p.cwd().display()
        )));
    }
    let rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| {
            let name = r.typ().to_string();
            let resource = process::rlimit_resource(&name)
                .ok_or_else(|| invalid(format!("unknown rlimit {name}")))?;
            if r.soft() > r.hard() {
                return Err(invalid(format!(
                    "{name}: soft limit {} is above hard limit {}",
                    r.soft(),
                    r.hard()
                )));
            }
            Ok(Rlimit {
                name,
                resource,
                soft: r.soft(),
                hard: r.hard(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ProcessPlan {
        args: cstrings(&args, "process.args entry")?,
        env: cstrings(&env, "process.env entry")?,
        path_var,
        cwd: mounts::clean_container_path(p.cwd()),
        uid: p.user().uid(),
        gid: p.user().gid(),
        additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        umask: p.user().umask(),
        caps: CapSets::from_spec(p.capabilities().as_ref()),
        rlimits,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
        terminal: p.terminal().unwrap_or(false),
        console_size: p
            .console_size()
            .as_ref()
            .map(|b| (b.height() as u16, b.width() as u16)),
        runtime_exe: sys::file_id(Path::new("/proc/self/exe")),
        die_with_parent: false,
        preserve_fds: 0,
        attrs: procattrs::from_spec(spec)?,
        seccomp: crate::seccomp::compile(spec)?,
    })
}

/// Fields rcrun does not implement yet: said out loud instead of silently ignored.
fn unsupported_fields(spec: &Spec) -> Vec<String> {
    let linux = spec.linux().as_ref();
    let process = spec.process().as_ref();
    let named: Vec<&str> = [
        (
            "linux.intelRdt",
            linux.and_then(|l| l.intel_rdt().as_ref()).is_some(),
        ),
        (
            "linux.memoryPolicy",
            linux.and_then(|l| l.memory_policy().as_ref()).is_some(),
        ),
        (
            "linux.netDevices",
            linux
                .and_then(|l| l.net_devices().as_ref())
                .is_some_and(|n| !n.is_empty()),
        ),
        (
            "process.apparmorProfile",
            process
                .and_then(|p| p.apparmor_profile().as_ref())
                .is_some_and(|a| !a.is_empty()),
        ),
        (
            "process.execCPUAffinity",
            process
                .and_then(|p| p.exec_cpu_affinity().as_ref())
                .is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let mut out = Vec::new();
    if !named.is_empty() {
        out.push(format!(
            "{} not supported yet and ignored",
            named.join(", ")
        ));
    }
    out
}

/// Loads and validates a bundle, with `overlay` (if any) as its rootfs.
pub(crate) fn load(bundle: &Path, overlay: Option<&RootfsOverlay>) -> Result<ContainerConfig> {
    let (bundle, spec) = read_spec(bundle)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("config.json has no root section"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let rootfs = std::fs::canonicalize(&rootfs)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| Error::Bundle {
            path: bundle.clone(),
            reason: format!("root.path {} is not a directory", rootfs.display()),
        })?;
    if rootfs.as_os_str().as_bytes().contains(&0) {
        return Err(invalid("root.path contains a NUL byte"));
    }

    let mut namespaces = namespaces(&spec)?;
    namespaces.time_offsets = nsfields::time_offsets(&spec, &namespaces)?;
    let in_userns =
        namespaces.creates(libc::CLONE_NEWUSER) || namespaces.joins(libc::CLONE_NEWUSER);
    if !Uid::effective().is_root() && !in_userns {
        return Err(invalid(
            "rcrun runs as an ordinary user here, so the container needs a user namespace: add {\"type\": \"user\"} and id mappings to linux (`rcrun oci spec --rootless` writes them)",
        ));
    }
    if !namespaces.creates(libc::CLONE_NEWNS) {
        return Err(invalid(
            "linux.namespaces must create a mount namespace (type \"mount\") for the container's root filesystem",
        ));
    }
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if let Some(h) = &hostname {
        if !namespaces.creates(libc::CLONE_NEWUTS) {
            return Err(invalid(
                "hostname is set but linux.namespaces creates no uts namespace",
            ));
        }
        if h.len() > 64 || h.contains('\0') {
            return Err(invalid(format!("hostname {h:?} is longer than 64 bytes")));
        }
    }
    let domainname = nsfields::domainname(&spec, &namespaces)?;
    let maps = id_maps(&spec, &namespaces)?;
    let process = process_plan(&spec)?;
    let linux = spec.linux().clone().unwrap_or_default();
    let mounts = mount_plans(&spec, &bundle, maps.as_ref())?;
    let populate_dev = mounts
        .iter()
        .any(|m| m.dest == Path::new("/dev") && !matches!(m.kind, MountKind::Bind { .. }));
    let root_propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(p) => {
            mounts::propagation_flag(p)
                .ok_or_else(|| invalid(format!("unknown linux.rootfsPropagation {p:?}")))?
                | MsFlags::MS_REC
        }
    };
    // mknod needs host root; in any user namespace (podman's rootless one too) bind.
    let bind_devices = in_userns || !sys::host_root();
    let rootfs_plan = RootfsPlan {
        share_root_after_pivot: root_propagation.contains(MsFlags::MS_SHARED),
        rootfs,
        overlay: overlay
            .map(|o| OverlayPlan::new(o, in_userns))
            .transpose()?,
        root_propagation,
        mounts,
        populate_dev,
        devices: device_plans(&spec, 0, 0, bind_devices)?,
        bind_devices,
        no_pivot: false,
        masked: linux
            .masked_paths()
            .iter()
            .flatten()
            .map(|p| mounts::clean_container_path(Path::new(p)))
            .collect(),
        readonly: linux
            .readonly_paths()
            .iter()
            .flatten()
            .map(|p| mounts::clean_container_path(Path::new(p)))
            .collect(),
        readonly_root: root.readonly().unwrap_or(false),
        sysctl: nsfields::sysctls(&spec, &namespaces)?,
        cwd: process.cwd.clone(),
    };
    hooks::validate(&spec)?;
    let mut warnings = unsupported_fields(&spec);
    if !rootfs_plan.populate_dev && linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        warnings.push(
            "linux.devices ignored: rcrun creates devices only in a /dev that the spec mounts (type tmpfs), and this spec mounts none"
                .into(),
        );
    }
    nsfields::selinux_labels(&spec, &mut warnings)?;
    Ok(ContainerConfig {
        spec,
        bundle,
        namespaces,
        maps,
        rootfs: rootfs_plan,
        hostname,
        domainname,
        process,
        warnings,
        new_session_keyring: true,
    })
}
