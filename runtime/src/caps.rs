//! Capability sets as bitmasks, applied with raw prctl/capset: no allocation in the
//! container's setup path.

use nix::errno::Errno;
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

/// Capability names by number (linux/capability.h); OCI names carry a `CAP_` prefix.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Number of a capability from its OCI name (`CAP_SYS_ADMIN` or `SYS_ADMIN`).
pub fn number(name: &str) -> Option<u8> {
    let bare = name.strip_prefix("CAP_").unwrap_or(name);
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(bare))
        .map(|i| i as u8)
}

pub fn name(number: u8) -> Option<String> {
    NAMES.get(number as usize).map(|n| format!("CAP_{n}"))
}

/// The five capability sets of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

fn mask(set: &Option<Capabilities>) -> u64 {
    set.iter()
        .flatten()
        .filter_map(|c| number(&c.to_string()))
        .fold(0, |m, n| m | (1u64 << n))
}

impl CapSets {
    pub fn from_spec(caps: Option<&LinuxCapabilities>) -> Self {
        match caps {
            None => CapSets::default(),
            Some(c) => CapSets {
                bounding: mask(c.bounding()),
                effective: mask(c.effective()),
                permitted: mask(c.permitted()),
                inheritable: mask(c.inheritable()),
                ambient: mask(c.ambient()),
            },
        }
    }
}

fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drops every capability not in `bounding` from the bounding set (needs CAP_SETPCAP,
/// so it runs before the switch to the container's user).
pub(crate) fn drop_bounding(bounding: u64) -> Result<(), (u8, Errno)> {
    for cap in 0..=last_cap() {
        if cap < 64 && bounding & (1u64 << cap) == 0 {
            // SAFETY: plain prctl.
            let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            match Errno::result(ret) {
                Ok(_) | Err(Errno::EINVAL) => {}
                Err(e) => return Err((cap, e)),
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets effective, permitted and inheritable, then raises the ambient ones.
pub(crate) fn apply(sets: &CapSets) -> Result<(), (&'static str, Errno)> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: sets.effective as u32,
            permitted: sets.permitted as u32,
            inheritable: sets.inheritable as u32,
        },
        CapData {
            effective: (sets.effective >> 32) as u32,
            permitted: (sets.permitted >> 32) as u32,
            inheritable: (sets.inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and two data words, as capset(2) expects for version 3.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    Errno::result(ret).map_err(|e| ("capset", e))?;
    // SAFETY: plain prctl.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(ret).map_err(|e| ("clear ambient capabilities", e))?;
    for cap in 0..64u8 {
        if sets.ambient & (1u64 << cap) != 0 {
            // SAFETY: plain prctl.
            let ret = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            // A cap missing from permitted or inheritable cannot be ambient; runc ignores it too.
            if let Err(e) = Errno::result(ret)
                && e != Errno::EPERM
            {
                return Err(("raise ambient capability", e));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("SYS_ADMIN"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
        assert_eq!(name(21).as_deref(), Some("CAP_SYS_ADMIN"));
    }

    #[test]
    fn masks_from_spec() {
        let caps: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_NET_BIND_SERVICE"],"effective":["CAP_KILL"]}"#,
        )
        .unwrap();
        let sets = CapSets::from_spec(Some(&caps));
        assert_eq!(sets.bounding, (1 << 5) | (1 << 10));
        assert_eq!(sets.effective, 1 << 5);
        assert_eq!(sets.ambient, 0);
    }
}
