//! The config.json `spec` writes: runc's defaults, and for rootless use the user's
//! subordinate ranges mapped above root.

use oci_spec::runtime::{LinuxIdMapping, Spec};
use serde_json::json;

/// A default spec; `rootless` adds a user namespace with `uid_maps`/`gid_maps`.
pub fn default_spec(rootless: Option<(&[LinuxIdMapping], &[LinuxIdMapping])>) -> Spec {
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "network"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    // gid 5 (tty) exists only when more than our own gid is mapped.
    let tty_gid_mapped = rootless.is_none_or(|(_, gids)| {
        gids.iter()
            .any(|m| m.container_id() <= 5 && 5 < m.container_id() + m.size())
    });
    let mut devpts = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    if tty_gid_mapped {
        devpts.push("gid=5");
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": devpts}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    let mut linux = json!({
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
            "/proc/scsi"
        ],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    });
    match rootless {
        Some((uids, gids)) => {
            namespaces.push(json!({"type": "user"}));
            linux["uidMappings"] = serde_json::to_value(uids).expect("maps serialise");
            linux["gidMappings"] = serde_json::to_value(gids).expect("maps serialise");
        }
        None => mounts.push(
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        ),
    }
    linux["namespaces"] = json!(namespaces);
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let spec = json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "rcrun",
        "mounts": mounts,
        "linux": linux,
    });
    serde_json::from_value(spec).expect("the default spec is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::{SubordinateRange, rootless_mappings};

    #[test]
    fn rootless_spec_has_user_namespace_and_maps() {
        let uids = rootless_mappings(
            1000,
            &[SubordinateRange {
                start: 100000,
                count: 65536,
            }],
        );
        let spec = default_spec(Some((&uids, &uids)));
        let v = serde_json::to_value(&spec).unwrap();
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"user") && ns.contains(&"mount") && ns.contains(&"pid"));
        assert_eq!(v["linux"]["uidMappings"][1]["hostID"], 100000);
        let devpts = &v["mounts"][2]["options"];
        assert!(devpts.as_array().unwrap().contains(&json!("gid=5")));
    }

    #[test]
    fn single_id_spec_leaves_out_the_tty_gid() {
        let own = rootless_mappings(1000, &[]);
        let v = serde_json::to_value(default_spec(Some((&own, &own)))).unwrap();
        assert!(
            !v["mounts"][2]["options"]
                .as_array()
                .unwrap()
                .contains(&json!("gid=5"))
        );
        let root = serde_json::to_value(default_spec(None)).unwrap();
        assert!(root["linux"]["uidMappings"].is_null());
    }
}
