//! cgroups on this host class: hybrid v1/v2 with no systemd, where root can make
//! cgroups in the v2 tree (which has no memory or pids controller) and an ordinary
//! user has no writable tree at all. Limits themselves are enforced and tested in the
//! vm-tests guest (scenario cgroup-limits); here: the warning, RCRUN_CGROUPS=required,
//! bad input, pause/resume, ps and kill --all, and cgroups removed after use.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Bundle, stderr, stdout, wait_until};
use serde_json::{Value, json};

/// The v2 mount point, from /proc/self/mountinfo.
fn v2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
    })
}

/// Where rcrun puts containers by default: next to our own cgroup.
fn default_parent() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim()
        .to_string();
    let parent = PathBuf::from(own)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| "/".into());
    Some(v2_mount()?.join(parent.strip_prefix("/").unwrap()))
}

/// The default cgroup of container `id` of bundle `b`'s state root.
fn default_cgroup(b: &Bundle, id: &str) -> Option<PathBuf> {
    let name = runtime::Runtime::new(b.state.path()).default_cgroup_name(id);
    Some(default_parent()?.join(name))
}

/// Whether rcrun can make cgroups for us here (as root on this host: yes, rootless: no).
fn tree_writable() -> bool {
    default_parent()
        .map(|d| nix::unistd::access(&d, nix::unistd::AccessFlags::W_OK).is_ok())
        .unwrap_or(false)
}

/// Whether the v2 tree has every controller `names` (not on this host: they are in v1).
fn v2_offers(names: &[&str]) -> bool {
    let have = v2_mount()
        .and_then(|m| std::fs::read_to_string(m.join("cgroup.controllers")).ok())
        .unwrap_or_default();
    names
        .iter()
        .all(|n| have.split_whitespace().any(|h| h == *n))
}

fn limits_applicable() -> bool {
    tree_writable() && v2_offers(&["memory", "pids"])
}

fn with_limits(b: &Bundle) {
    b.edit(|c| {
        c["linux"]["resources"] = json!({"memory": {"limit": 67108864}, "pids": {"limit": 64}})
    });
}

/// Foreground `run` with RCRUN_CGROUPS=`mode`.
fn run_with_mode(b: &Bundle, id: &str, mode: &str) -> std::process::Output {
    let mut cmd = b.cmd(&["run", "--bundle", b.path().to_str().unwrap(), id]);
    cmd.env("RCRUN_CGROUPS", mode);
    common::output_via_files(cmd)
}

fn pid_of(b: &Bundle, id: &str) -> i32 {
    let out = b.oci(&["state", id]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

fn ps(b: &Bundle, id: &str) -> Vec<i32> {
    let out = b.oci(&["ps", "--format", "json", id]);
    assert!(out.status.success(), "ps: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn limits_without_a_usable_tree_are_reported_once_and_the_container_runs() {
    if limits_applicable() {
        eprintln!("skipped: this host can apply memory and pids limits (see vm-tests)");
        return;
    }
    let b = Bundle::busybox(&["echo", "ran"]);
    with_limits(&b);
    let out = b.run("warned");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ran\n");
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("memory, pids") && warnings[0].contains("without these limits"),
        "{err}"
    );
    // Without limits in the spec nothing is said.
    b.edit(|c| {
        c["linux"].as_object_mut().unwrap().remove("resources");
    });
    let out = b.run("quiet");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn required_limits_without_a_usable_tree_fail_and_leave_nothing() {
    if limits_applicable() {
        eprintln!("skipped: this host can apply memory and pids limits (see vm-tests)");
        return;
    }
    let b = Bundle::busybox(&["echo", "ran"]);
    with_limits(&b);
    let out = run_with_mode(&b, "strict", "required");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(!stdout(&out).contains("ran"));
    assert!(
        stderr(&out).contains("RCRUN_CGROUPS=required") && stderr(&out).contains("memory"),
        "{}",
        stderr(&out)
    );
    assert!(b.list().is_empty());
    assert!(!default_cgroup(&b, "strict").unwrap().exists());
    // A spec without limits runs even then.
    b.edit(|c| {
        c["linux"].as_object_mut().unwrap().remove("resources");
    });
    let out = run_with_mode(&b, "nolimits", "required");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn bad_cgroup_settings_are_refused_and_leave_nothing() {
    let b = Bundle::busybox(&["echo", "ran"]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"cgroupsPath": "../../escape"}), "'..'"),
        (
            json!({"resources": {"unified": {"../memory.max": "1"}}}),
            "unified key",
        ),
        (
            json!({"resources": {"memory": {"limit": 100000000, "swap": 1000}}}),
            "memory+swap",
        ),
        (
            json!({"resources": {"hugepageLimits": [{"pageSize": "2M/B", "limit": 1}]}}),
            "page size",
        ),
    ];
    for (i, (linux, needle)) in cases.into_iter().enumerate() {
        b.edit(|c| {
            for (k, v) in linux.as_object().unwrap() {
                c["linux"][k] = v.clone();
            }
        });
        let id = format!("bad{i}");
        let out = b.run(&id);
        assert_eq!(out.status.code(), Some(125), "{linux}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{linux}: {}", stderr(&out));
        assert!(!stdout(&out).contains("ran"));
        assert!(b.list().is_empty());
        assert!(!default_cgroup(&b, &id).unwrap().exists());
        b.edit(|c| {
            c["linux"].as_object_mut().unwrap().remove("cgroupsPath");
            c["linux"].as_object_mut().unwrap().remove("resources");
        });
    }
    let out = run_with_mode(&b, "mode", "always");
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("RCRUN_CGROUPS"), "{}", stderr(&out));
    assert!(b.list().is_empty());
}

/// A container without a pid namespace (so killing its init alone would leave its
/// child running) and without /proc (which needs one when rootless).
fn two_sleeps() -> Bundle {
    let b = Bundle::busybox(&["sh", "-c", "sleep 300 & exec sleep 301"]);
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "pid");
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.retain(|m| m["destination"] != "/proc");
        c["linux"].as_object_mut().unwrap().remove("maskedPaths");
        c["linux"].as_object_mut().unwrap().remove("readonlyPaths");
    });
    b
}

#[test]
fn ps_and_kill_all_reach_every_process() {
    let b = two_sleeps();
    let out = b.oci(&["run", "-d", "--bundle", b.path().to_str().unwrap(), "pair"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let init = pid_of(&b, "pair");
    assert!(
        wait_until(Duration::from_secs(10), || ps(&b, "pair").len() == 2),
        "{:?}",
        ps(&b, "pair")
    );
    let pids = ps(&b, "pair");
    assert!(pids.contains(&init), "{pids:?} lacks init {init}");
    let out = b.oci(&["kill", "--all", "pair", "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gone = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
            .unwrap_or(true)
    };
    assert!(
        wait_until(Duration::from_secs(10), || pids.iter().all(gone)),
        "still there: {pids:?}"
    );
    assert!(wait_until(Duration::from_secs(10), || b.status("pair") == "stopped"));
    assert!(ps(&b, "pair").is_empty());
    let out = b.oci(&["delete", "pair"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!default_cgroup(&b, "pair").unwrap().exists());
}

#[test]
fn pause_and_resume_freeze_and_thaw_or_say_there_is_no_freezer() {
    let b = Bundle::busybox(&["sleep", "300"]);
    let out = b.oci(&[
        "run",
        "-d",
        "--bundle",
        b.path().to_str().unwrap(),
        "frozen",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cgroup = default_cgroup(&b, "frozen").unwrap();
    if !tree_writable() {
        assert!(!cgroup.exists());
        let out = b.oci(&["pause", "frozen"]);
        assert_eq!(out.status.code(), Some(125));
        assert!(stderr(&out).contains("no freezer"), "{}", stderr(&out));
        assert_eq!(b.status("frozen"), "running");
        let out = b.oci(&["update", "--pids-limit", "5", "frozen"]);
        assert_eq!(out.status.code(), Some(125));
        assert!(
            stderr(&out).contains("without a cgroup"),
            "{}",
            stderr(&out)
        );
        return;
    }
    let pid = pid_of(&b, "frozen");
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert_eq!(
        procs.trim(),
        pid.to_string(),
        "the container's cgroup holds its process"
    );
    let out = b.oci(&["pause", "frozen"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.status("frozen"), "paused");
    let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let out = b.oci(&["exec", "frozen", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("paused"), "{}", stderr(&out));
    let out = b.oci(&["pause", "frozen"]);
    assert_eq!(out.status.code(), Some(125), "pausing twice");
    let out = b.oci(&["resume", "frozen"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.status("frozen"), "running");
    let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 0"), "{events}");
    // An exec'd process joins the container's cgroup.
    let out = b.oci(&["exec", "-d", "frozen", "sleep", "299"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert_eq!(procs.lines().count(), 2, "{procs}");
    let out = b.oci(&["delete", "--force", "frozen"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!cgroup.exists(), "delete left {}", cgroup.display());
}

#[test]
fn a_failed_create_leaves_no_cgroup() {
    let b = Bundle::busybox(&["/no/such/program"]);
    let out = b.oci(&["create", "--bundle", b.path().to_str().unwrap(), "broken"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(b.list().is_empty());
    assert!(!default_cgroup(&b, "broken").unwrap().exists());
}

/// The cgroup of a running container's process, from the host.
fn cgroup_of(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string()
}

#[test]
fn cgroups_path_relative_absolute_and_systemd_style() {
    if !tree_writable() {
        // No tree: the path is still checked, the container runs without a cgroup.
        let b = Bundle::busybox(&["echo", "ran"]);
        b.edit(|c| c["linux"]["cgroupsPath"] = json!("/somewhere/else"));
        let out = b.run("elsewhere");
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stderr(&out), "");
        return;
    }
    let own_parent = default_parent().unwrap();
    let mount = v2_mount().unwrap();
    let top = format!("rcrun-test-{}", std::process::id());
    let cases: Vec<(String, bool, PathBuf)> = vec![
        (
            format!("{top}/rel"),
            false,
            own_parent.join(&top).join("rel"),
        ),
        (format!("/{top}/abs"), false, mount.join(&top).join("abs")),
        // Each dash of a slice name is a level: a-b.slice lives in a.slice.
        (
            format!("{top}.slice:pre:name"),
            true,
            mount.join(format!(
                "rcrun.slice/rcrun-test.slice/{top}.slice/pre-name.scope"
            )),
        ),
    ];
    for (i, (path, systemd, expected)) in cases.into_iter().enumerate() {
        let b = Bundle::busybox(&["sleep", "300"]);
        b.edit(|c| c["linux"]["cgroupsPath"] = json!(path));
        let id = format!("path{i}");
        let mut args = vec!["run", "-d", "--bundle", b.path().to_str().unwrap(), &id];
        if systemd {
            args.insert(0, "--systemd-cgroup");
        }
        let out = b.oci(&args);
        assert!(out.status.success(), "{path}: {}", stderr(&out));
        let seen = cgroup_of(pid_of(&b, &id));
        assert_eq!(mount.join(seen.trim_start_matches('/')), expected, "{path}");
        let out = b.oci(&["delete", "--force", &id]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!expected.exists(), "delete left {}", expected.display());
        // rcrun keeps the parents it made (as runc does): the test removes them.
        let mut dir = expected.parent().unwrap();
        while dir != mount && dir != own_parent && std::fs::remove_dir(dir).is_ok() {
            dir = dir.parent().unwrap();
        }
    }
}

#[test]
fn a_cgroup_that_holds_processes_is_not_taken_over() {
    if !tree_writable() {
        return; // no cgroups here at all: nothing could be taken over
    }
    let first = Bundle::busybox(&["sleep", "300"]);
    let out = first.oci(&[
        "run",
        "-d",
        "--bundle",
        first.path().to_str().unwrap(),
        "owner",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let taken = default_cgroup(&first, "owner").unwrap();
    let mount = v2_mount().unwrap();
    let b = Bundle::busybox(&["echo", "ran"]);
    let path = format!("/{}", taken.strip_prefix(&mount).unwrap().display());
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(path));
    let out = b.run("intruder");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already holds processes"),
        "{}",
        stderr(&out)
    );
    assert!(b.list().is_empty());
    assert_eq!(
        first.status("owner"),
        "running",
        "the first container was harmed"
    );
    assert!(taken.exists());
}
