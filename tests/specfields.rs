//! The runtime-spec fields beyond the basics: sysctl, domainname, devices,
//! rootfsPropagation, SELinux labels, ioPriority, scheduler, personality,
//! timeOffsets, recursive mount options and idmapped mounts. Each is observed from
//! inside the container, and each bad input is refused with 125 before anything
//! runs. Passes as root and as an unprivileged user.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{Bundle, is_root, stderr, stdout};
use serde_json::{Value, json};

/// Runs the bundle and returns its stdout, failing with stderr if it did not exit 0.
fn run_ok(b: &Bundle, id: &str) -> String {
    let out = b.run(id);
    assert!(
        out.status.success(),
        "{id}: exit {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs the bundle, expects exit 125 with `needle` in stderr, and no container left.
fn refused(b: &Bundle, id: &str, needle: &str) {
    b.assert_refused(&b.run(id), needle);
}

fn drop_namespace(c: &mut Value, kind: &str) {
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != kind);
}

fn add_namespace(c: &mut Value, kind: &str) {
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": kind}));
}

#[test]
fn namespaced_sysctls_are_written_in_the_container() {
    let b = Bundle::busybox(&[
        "cat",
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/kernel/shmmni",
    ]);
    b.edit(|c| c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"}));
    assert_eq!(run_ok(&b, "sysctl"), "1\n1234\n");
    // The host's value is untouched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap(),
        "4096\n"
    );
}

#[test]
fn bad_sysctls_are_refused() {
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| c["linux"]["sysctl"] = json!({"vm.swappiness": "10"}));
    refused(&b, "host-wide", "vm.swappiness is not namespaced");
    b.edit(|c| c["linux"]["sysctl"] = json!({"net.ipv4/../../vm/swappiness": "10"}));
    refused(&b, "path", "is not a sysctl name");
    b.edit(|c| {
        c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        drop_namespace(c, "network");
    });
    refused(
        &b,
        "no-netns",
        "needs the container's own network namespace",
    );
    // Joined by path, the host's own network namespace is no better.
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "network", "path": "/proc/self/ns/net"}));
    });
    refused(&b, "host-netns", "network namespace (not the host's)");
}

#[test]
fn domainname_is_set_in_the_uts_namespace() {
    let b = Bundle::busybox(&[
        "cat",
        "/proc/sys/kernel/domainname",
        "/proc/sys/kernel/hostname",
    ]);
    b.edit(|c| {
        c["domainname"] = json!("example.org");
        c["hostname"] = json!("box");
    });
    assert_eq!(run_ok(&b, "domain"), "example.org\nbox\n");
    b.edit(|c| {
        c.as_object_mut().unwrap().remove("hostname");
        drop_namespace(c, "uts");
    });
    refused(
        &b,
        "no-uts",
        "domainname is set but linux.namespaces creates no uts",
    );
}

#[test]
fn process_io_priority_scheduler_and_personality_are_applied() {
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "ionice -p $$; cat /proc/self/personality; uname -m; cat /proc/self/stat",
    ]);
    b.edit(|c| {
        c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 6});
        c["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 7});
        c["linux"]["personality"] = json!({"domain": "LINUX32", "flags": ["ADDR_NO_RANDOMIZE"]});
    });
    let out = run_ok(&b, "attrs");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "best-effort: prio 6", "{out}");
    assert_eq!(lines[1], "00040008", "{out}");
    assert_eq!(lines[2], "i686", "{out}");
    // /proc/PID/stat: field 19 is nice, 41 the policy (3 = SCHED_BATCH).
    let fields: Vec<&str> = lines[3]
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!((fields[16], fields[38]), ("7", "3"), "{out}");

    // Exec'd processes get them too.
    let b = Bundle::busybox(&["sleep", "60"]);
    b.edit(|c| {
        c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
        c["linux"]["personality"] = json!({"domain": "LINUX32"});
    });
    let out = b.oci(&[
        "run",
        "--detach",
        "--bundle",
        b.path().to_str().unwrap(),
        "bg",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.oci(&["exec", "bg", "sh", "-c", "ionice -p $$; uname -m"]);
    assert_eq!(stdout(&out), "idle\ni686\n", "{}", stderr(&out));
}

#[test]
fn realtime_io_class_and_negative_nice_need_host_privileges() {
    let b = Bundle::busybox(&["sh", "-c", "ionice -p $$"]);
    b.edit(|c| c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_RT", "priority": 2}));
    if is_root() {
        assert_eq!(run_ok(&b, "rt"), "realtime: prio 2\n");
    } else {
        refused(&b, "rt", "IOPRIO_CLASS_RT needs CAP_SYS_ADMIN");
    }
    let b = Bundle::busybox(&["cat", "/proc/self/stat"]);
    b.edit(|c| c["process"]["scheduler"] = json!({"policy": "SCHED_OTHER", "nice": -5}));
    if is_root() {
        let stat = run_ok(&b, "nice");
        let nice = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(16);
        assert_eq!(nice, Some("-5"), "{stat}");
    } else {
        refused(&b, "nice", "negative nice value need CAP_SYS_NICE");
    }
}

#[test]
fn bad_process_attributes_are_refused() {
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_FAST", "priority": 1}));
    refused(&b, "io-class", "IOPRIO_CLASS_FAST");
    b.edit(|c| c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 9}));
    refused(&b, "io-prio", "priority 9 is out of range");
    b.edit(|c| {
        c["process"].as_object_mut().unwrap().remove("ioPriority");
        c["process"]["scheduler"] = json!({"policy": "SCHED_FASTEST"});
    });
    refused(&b, "policy", "SCHED_FASTEST");
    b.edit(|c| c["process"]["scheduler"] = json!({"policy": "SCHED_RR", "priority": 0}));
    refused(&b, "rr-prio", "needs 1..99");
    b.edit(|c| {
        c["process"].as_object_mut().unwrap().remove("scheduler");
        c["linux"]["personality"] = json!({"domain": "LINUX64"});
    });
    refused(&b, "domain", "LINUX64");
    b.edit(|c| c["linux"]["personality"] = json!({"domain": "LINUX", "flags": ["FAST"]}));
    refused(&b, "flag", "unknown linux.personality flag \"FAST\"");
}

fn uptime(text: &str) -> f64 {
    text.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn time_offsets_shift_the_container_clocks() {
    let b = Bundle::busybox(&["cat", "/proc/uptime", "/proc/self/timens_offsets"]);
    b.edit(|c| {
        add_namespace(c, "time");
        c["linux"]["timeOffsets"] = json!({
            "boottime": {"secs": 1_000_000, "nanosecs": 0},
            "monotonic": {"secs": 5000}
        });
    });
    let before = uptime(&std::fs::read_to_string("/proc/uptime").unwrap());
    let out = run_ok(&b, "timens");
    let after = uptime(&std::fs::read_to_string("/proc/uptime").unwrap());
    let inside = uptime(&out);
    let offsets: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        offsets,
        [["monotonic", "5000", "0"], ["boottime", "1000000", "0"]],
        "{out}"
    );
    assert!(
        inside >= before + 1_000_000.0 && inside <= after + 1_000_000.0,
        "{before} {inside} {after}"
    );
    // Without offsets the time namespace changes nothing.
    b.edit(|c| {
        c["linux"].as_object_mut().unwrap().remove("timeOffsets");
    });
    let inside = uptime(&run_ok(&b, "plain"));
    assert!(inside < before + 1000.0, "{inside} {before}");
}

#[test]
fn bad_time_offsets_are_refused() {
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 10}}));
    refused(&b, "no-timens", "creates no time namespace");
    b.edit(|c| {
        add_namespace(c, "time");
        c["linux"]["timeOffsets"] = json!({"realtime": {"secs": 10}});
    });
    refused(&b, "realtime", "only monotonic and boottime");
}

#[test]
fn recursive_read_only_reaches_submounts() {
    // The host's /dev has /dev/shm (world-writable) mounted below it.
    let name = format!("rcrun-specfields-{}", std::process::id());
    let script = format!("touch /hostdev/shm/{name} && echo wrote || echo refused");
    let b = Bundle::busybox(&["sh", "-c", &script]);
    let with = |opts: Value| {
        b.edit(|c| {
            let mounts = c["mounts"].as_array_mut().unwrap();
            mounts.retain(|m| m["destination"] != "/hostdev");
            mounts.push(json!({"destination": "/hostdev", "type": "bind", "source": "/dev", "options": opts}));
        })
    };
    with(json!(["rbind", "rro", "rnosuid"]));
    let out = run_ok(&b, "rro");
    let leaked = std::path::Path::new("/dev/shm").join(&name);
    let _ = std::fs::remove_file(&leaked);
    assert_eq!(out, "refused\n");
    // Plain `ro` leaves the submount writable: rro is what made it read-only.
    with(json!(["rbind", "ro"]));
    let out = run_ok(&b, "ro");
    let wrote = leaked.exists();
    let _ = std::fs::remove_file(&leaked);
    assert_eq!(out, "wrote\n");
    assert!(wrote);
}

#[test]
fn unknown_bind_mount_option_is_refused() {
    let b = Bundle::busybox(&["true"]);
    let data = b.data.path().to_str().unwrap().to_string();
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/x", "type": "bind", "source": data, "options": ["rbind", "rnosuidd"]}),
        )
    });
    refused(&b, "opt", "unknown option \"rnosuidd\" for a bind mount");
}

/// The `/` line of a mountinfo text.
fn root_line(mountinfo: &str) -> String {
    mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn rootfs_propagation_sets_the_roots_peer_group() {
    let b = Bundle::busybox(&["cat", "/proc/self/mountinfo"]);
    b.edit(|c| c["linux"]["rootfsPropagation"] = json!("shared"));
    let shared = root_line(&run_ok(&b, "shared"));
    assert!(shared.contains(" shared:"), "{shared}");
    b.edit(|c| c["linux"]["rootfsPropagation"] = json!("private"));
    let private = root_line(&run_ok(&b, "private"));
    assert!(
        !private.contains("shared:") && !private.contains("master:"),
        "{private}"
    );
    b.edit(|c| c["linux"]["rootfsPropagation"] = json!("sideways"));
    refused(&b, "bad", "unknown linux.rootfsPropagation \"sideways\"");
}

#[test]
fn selinux_labels_are_ignored_with_a_warning_without_selinux() {
    assert!(
        !std::path::Path::new("/sys/fs/selinux/enforce").exists(),
        "this test expects a host without SELinux"
    );
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| {
        c["linux"]["mountLabel"] = json!("system_u:object_r:container_file_t:s0");
        c["process"]["selinuxLabel"] = json!("system_u:system_r:container_t:s0");
    });
    let out = b.run("label");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "linux.mountLabel, process.selinuxLabel ignored: SELinux is not enabled on this host"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn spec_devices_are_created_or_bound() {
    let host = std::fs::metadata("/dev/fuse").expect("the host has /dev/fuse");
    let (major, minor) = (
        nix::sys::stat::major(host.rdev()),
        nix::sys::stat::minor(host.rdev()),
    );
    let b = Bundle::busybox(&["stat", "-c", "%F %t %T %a", "/dev/fuse"]);
    b.edit(|c| {
        c["linux"]["devices"] = json!([{"path": "/dev/fuse", "type": "c", "major": major, "minor": minor, "fileMode": 0o620}]);
    });
    // As root rcrun makes the node with the spec's mode; in a user namespace it binds
    // the host's node, which keeps the host's mode.
    let mode = if is_root() {
        "620".to_string()
    } else {
        format!("{:o}", host.mode() & 0o7777)
    };
    assert_eq!(
        run_ok(&b, "fuse"),
        format!("character special file {major:x} {minor:x} {mode}\n")
    );
    // A device the host does not have: made as root, refused in a user namespace.
    let b = Bundle::busybox(&["stat", "-c", "%t %T", "/dev/rcrun-null"]);
    b.edit(|c| {
        c["linux"]["devices"] =
            json!([{"path": "/dev/rcrun-null", "type": "c", "major": 1, "minor": 3}]);
    });
    if is_root() {
        assert_eq!(run_ok(&b, "null"), "1 3\n");
    } else {
        refused(&b, "null", "device nodes cannot be created");
    }
    b.edit(|c| {
        c["linux"]["devices"] = json!([{"path": "/dev/any", "type": "a", "major": 1, "minor": 3}])
    });
    refused(&b, "type-a", "only valid in cgroup rules");
    // Without a /dev mount there is nowhere to make them: said, not silently skipped.
    b.edit(|c| {
        c["linux"]["devices"] = json!([{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}]);
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| !m["destination"].as_str().unwrap().starts_with("/dev"));
        c["process"]["args"] = json!(["true"]);
        // Masking files binds /dev/null, which this container lacks.
        c["linux"]["maskedPaths"] = json!([]);
    });
    let out = b.run("no-dev");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("linux.devices ignored"),
        "{}",
        stderr(&out)
    );
}

/// The host id that container id `id` maps to, from the spec's `key` mappings.
fn host_id(b: &Bundle, key: &str, id: u64) -> u64 {
    let c = b.config();
    for m in c["linux"][key].as_array().into_iter().flatten() {
        let (cid, hid, size) = (
            m["containerID"].as_u64().unwrap(),
            m["hostID"].as_u64().unwrap(),
            m["size"].as_u64().unwrap(),
        );
        if (cid..cid + size).contains(&id) {
            return hid + id - cid;
        }
    }
    id
}

#[test]
fn idmapped_mount_shows_mapped_owners() {
    // Mount mappings are in host ids. Rootless, rcrun can idmap only a filesystem
    // mounted inside the container (the tmpfs on /idsrc); as root it idmaps the host
    // directory under it (the bind source is resolved on the host), where the same
    // file name is made beforehand.
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "touch /idsrc/f && stat -c '%u:%g' /idsrc/f /idmapped/f",
    ]);
    let source = b.rootfs().join("idsrc");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("f"), "").unwrap();
    let (uid, gid) = (host_id(&b, "uidMappings", 1), host_id(&b, "gidMappings", 2));
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/idsrc", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}));
        mounts.push(json!({
            "destination": "/idmapped", "type": "bind", "source": source, "options": ["bind", "idmap"],
            "uidMappings": [{"containerID": 0, "hostID": uid, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": gid, "size": 1}]
        }));
    });
    assert_eq!(run_ok(&b, "idmap"), "0:0\n1:2\n");
}

#[test]
fn idmap_without_mappings_uses_the_containers_user_namespace() {
    // A host directory owned by the host's root, seen from a user namespace: nobody
    // through a plain bind, the container's root through an idmapped one.
    let b = Bundle::busybox_userns(&["stat", "-c", "%u:%g", "/plain/f", "/idmapped/f"]);
    std::fs::write(b.data.path().join("f"), "").unwrap();
    let data = b.data.path().to_str().unwrap().to_string();
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/plain", "type": "bind", "source": data, "options": ["rbind"]}));
        mounts.push(json!({"destination": "/idmapped", "type": "bind", "source": data, "options": ["rbind", "ridmap"]}));
    });
    if is_root() {
        assert_eq!(run_ok(&b, "host"), "65534:65534\n0:0\n");
    } else {
        // The kernel lets only the host's root idmap a host filesystem.
        refused(&b, "host", "idmapped bind mount");
    }
}

#[test]
fn bad_idmapped_mounts_are_refused() {
    let b = Bundle::busybox(&["true"]);
    let data = b.data.path().to_str().unwrap().to_string();
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/i", "type": "bind", "source": data, "options": ["bind", "idmap"]}))
    });
    if is_root() {
        // As root the default spec has no user namespace to take mappings from.
        refused(&b, "no-maps", "this container creates none");
    }
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.last_mut().unwrap()["uidMappings"] =
            json!([{"containerID": 0, "hostID": 1, "size": 1}]);
    });
    refused(&b, "uid-only", "needs both uidMappings and gidMappings");
    if !is_root() {
        // Rootless, the mapping's host ids must be ids of the container.
        b.edit(|c| {
            let mounts = c["mounts"].as_array_mut().unwrap();
            let m = mounts.last_mut().unwrap();
            m["uidMappings"] = json!([{"containerID": 0, "hostID": 5, "size": 1}]);
            m["gidMappings"] = json!([{"containerID": 0, "hostID": 5, "size": 1}]);
        });
        refused(
            &b,
            "unmapped",
            "not all mapped in the container's user namespace",
        );
    }
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.retain(|m| m["destination"] != "/i");
        mounts.push(json!({
            "destination": "/i", "type": "tmpfs", "source": "tmpfs", "options": ["idmap"],
            "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]
        }));
    });
    refused(&b, "tmpfs", "only supported on bind mounts");
}
