//! End-to-end tests of `rcrun oci` on busybox bundles. scripts/test runs them as
//! the unprivileged user and as root.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::{Bundle, is_root, stderr, stdout, wait_until};
use serde_json::json;

#[test]
fn exit_codes_propagate() {
    let b = Bundle::busybox(&["true"]);
    assert_eq!(b.run("zero").status.code(), Some(0));
    b.edit(|c| c["process"]["args"] = json!(["sh", "-c", "exit 3"]));
    let out = b.run("three");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        b.list().is_empty(),
        "a foreground run deletes its container"
    );
}

#[test]
fn killed_container_exits_128_plus_signal() {
    let b = Bundle::busybox(&["sleep", "30"]);
    let child = b
        .cmd(&["run", "--bundle", b.path().to_str().unwrap(), "victim"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || b
            .list()
            .contains(&"victim".to_string())
            && b.status("victim") == "running"),
        "container never ran"
    );
    let kill = b.oci(&["kill", "victim", "KILL"]);
    assert!(kill.status.success(), "{}", stderr(&kill));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 9), "{}", stderr(&out));
}

#[test]
fn env_cwd_and_hostname_come_from_the_spec() {
    let b = Bundle::busybox(&["sh", "-c", "echo $FOO $(hostname) $(pwd)"]);
    b.edit(|c| {
        c["hostname"] = json!("testhost");
        c["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
        c["process"]["cwd"] = json!("/made/up");
    });
    let out = b.run("env");
    assert_eq!(
        stdout(&out).trim(),
        "bar testhost /made/up",
        "{}",
        stderr(&out)
    );
}

#[test]
fn process_is_pid_1_and_proc_shows_only_the_container() {
    // A shell loop (no fork): /proc must list exactly pid 1.
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "echo pid=$$; for p in /proc/[0-9]*; do echo ${p#/proc/}; done",
    ]);
    let out = b.run("pid1");
    assert_eq!(stdout(&out), "pid=1\n1\n", "{}", stderr(&out));
}

#[test]
fn container_root_is_the_user_outside() {
    let b = Bundle::busybox_userns(&["sh", "-c", "id -u; touch /data/by-root"]);
    let out = b.run("root");
    assert_eq!(stdout(&out).trim(), "0", "{}", stderr(&out));
    let owner = std::fs::metadata(b.data.path().join("by-root"))
        .unwrap()
        .uid();
    assert_eq!(owner as u64, b.host_uid(0));
    if !is_root() {
        assert_eq!(
            owner,
            nix::unistd::Uid::current().as_raw(),
            "container root is the user"
        );
    }
}

#[test]
fn uid_1000_inside_lands_on_a_subordinate_id_outside() {
    let b = Bundle::busybox_userns(&["sh", "-c", "id -u; touch /data/by-1000"]);
    b.edit(|c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    });
    if b.host_uid(1000) == 1000 {
        panic!("no subordinate uid range for this user: scripts/setup adds one");
    }
    let out = b.run("u1000");
    assert_eq!(stdout(&out).trim(), "1000", "{}", stderr(&out));
    let md = std::fs::metadata(b.data.path().join("by-1000")).unwrap();
    assert_eq!(md.uid() as u64, b.host_uid(1000));
    assert!(md.uid() >= 100000, "uid {} is a subordinate id", md.uid());
}

fn cap_line(out: &str, name: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn capabilities_are_dropped() {
    let b = Bundle::busybox(&["cat", "/proc/self/status"]);
    let out = b.run("defaults");
    let status = stdout(&out);
    // AUDIT_WRITE (29), KILL (5), NET_BIND_SERVICE (10)
    assert_eq!(cap_line(&status, "CapEff:"), "0000000020000420", "{status}");
    assert_eq!(cap_line(&status, "CapBnd:"), "0000000020000420", "{status}");

    b.edit(|c| {
        let kill = json!(["CAP_KILL"]);
        c["process"]["capabilities"] =
            json!({"bounding": kill, "effective": kill, "permitted": kill});
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "grep Cap /proc/self/status; chown 5 /data && echo CHOWNED"
        ]);
    });
    let out = b.run("only-kill");
    let status = stdout(&out);
    assert_eq!(cap_line(&status, "CapEff:"), "0000000000000020", "{status}");
    assert_eq!(cap_line(&status, "CapPrm:"), "0000000000000020", "{status}");
    assert!(
        !status.contains("CHOWNED"),
        "chown must fail without CAP_CHOWN: {status}"
    );
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn masked_paths_are_unreadable() {
    let b = Bundle::busybox(&["sh", "-c", "cat /etc/secret; ls /hidden; echo done"]);
    std::fs::write(b.rootfs().join("etc/secret"), "TOPSECRET").unwrap();
    std::fs::create_dir(b.rootfs().join("hidden")).unwrap();
    std::fs::write(b.rootfs().join("hidden/file"), "x").unwrap();
    b.edit(|c| {
        c["linux"]["maskedPaths"]
            .as_array_mut()
            .unwrap()
            .extend([json!("/etc/secret"), json!("/hidden")]);
    });
    let out = b.run("masked");
    assert_eq!(stdout(&out), "done\n", "{}", stderr(&out));
    // /proc/keys from the default list is masked too: /dev/null is bound over it.
    b.edit(|c| c["process"]["args"] = json!(["stat", "-c", "%t:%T", "/proc/keys"]));
    let out = b.run("keys");
    assert_eq!(stdout(&out).trim(), "1:3", "{}", stderr(&out));
}

#[test]
fn read_only_rootfs_and_paths_are_enforced() {
    let b = Bundle::busybox(&["sh", "-c", "touch /newfile 2>&1; echo rc=$?"]);
    let out = b.run("ro");
    assert!(
        stdout(&out).contains("Read-only file system"),
        "{}",
        stdout(&out)
    );
    assert!(!b.rootfs().join("newfile").exists());

    b.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["linux"]["readonlyPaths"]
            .as_array_mut()
            .unwrap()
            .push(json!("/etc"));
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "touch /etc/x || echo etc-ro; touch /ok && echo root-rw"
        ]);
    });
    let out = b.run("ro-paths");
    assert_eq!(stdout(&out), "etc-ro\nroot-rw\n", "{}", stderr(&out));
}

#[test]
fn create_start_state_kill_delete_lifecycle() {
    let b = Bundle::busybox(&["sh", "-c", "echo started > /data/started; exec sleep 30"]);
    let bundle = b.path().to_str().unwrap();
    let pid_file = b.state.path().join("pid");
    let out = b.oci(&[
        "create",
        "--bundle",
        bundle,
        "--pid-file",
        pid_file.to_str().unwrap(),
        "life",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.status("life"), "created");
    assert!(
        !b.data.path().join("started").exists(),
        "created must not run the process"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&b.oci(&["state", "life"]).stdout).unwrap();
    assert_eq!(state["pid"], pid);
    assert_eq!(state["id"], "life");

    let out = b.oci(&["start", "life"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.status("life"), "running");
    assert!(wait_until(Duration::from_secs(5), || b
        .data
        .path()
        .join("started")
        .exists()));
    let again = b.oci(&["start", "life"]);
    assert_eq!(again.status.code(), Some(125));
    assert!(
        stderr(&again).contains("only a created container can be started"),
        "{}",
        stderr(&again)
    );

    let del = b.oci(&["delete", "life"]);
    assert_eq!(
        del.status.code(),
        Some(125),
        "a running container needs --force"
    );
    assert_eq!(b.status("life"), "running");

    assert!(b.oci(&["kill", "life", "SIGKILL"]).status.success());
    assert!(wait_until(Duration::from_secs(5), || b.status("life") == "stopped"));
    let out = b.oci(&["delete", "life"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(b.list().is_empty());
    let gone = b.oci(&["state", "life"]);
    assert_eq!(gone.status.code(), Some(125));
    assert!(stderr(&gone).contains("does not exist"));
}

#[test]
fn delete_force_kills_a_running_container() {
    let b = Bundle::busybox(&["sleep", "30"]);
    b.start_detached("bg");
    let pid = serde_json::from_slice::<serde_json::Value>(&b.oci(&["state", "bg"]).stdout).unwrap()
        ["pid"]
        .as_i64()
        .unwrap();
    let out = b.oci(&["delete", "--force", "bg"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(b.list().is_empty());
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false);
    assert!(!alive, "the container's process is gone");
}

#[test]
fn exec_joins_a_running_container() {
    let b = Bundle::busybox(&["sleep", "30"]);
    b.edit(|c| c["hostname"] = json!("exechost"));
    b.start_detached("ex");
    let out = b.oci(&[
        "exec",
        "ex",
        "sh",
        "-c",
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out), "exechost\nsleep 30 \n");

    let out = b.oci(&[
        "exec",
        "--cwd",
        "/tmp",
        "-e",
        "A=1",
        "-u",
        "1000:1000",
        "ex",
        "sh",
        "-c",
        "echo $(id -u):$(id -g) $(pwd) $A",
    ]);
    assert_eq!(stdout(&out), "1000:1000 /tmp 1\n", "{}", stderr(&out));

    let missing = b.oci(&["exec", "ex", "no-such-tool"]);
    assert_eq!(missing.status.code(), Some(127), "{}", stderr(&missing));
    let nope = b.oci(&["exec", "nosuchcontainer", "true"]);
    assert_eq!(nope.status.code(), Some(125));
    assert!(
        stderr(&nope).contains("does not exist"),
        "{}",
        stderr(&nope)
    );
}

#[test]
fn no_rcrun_fd_reaches_the_container() {
    let b = Bundle::busybox(&["sleep", "30"]);
    let bundle = b.path().to_str().unwrap().to_string();
    // Hand rcrun an inherited (not close-on-exec) fd 7: it must not reach the container.
    let run = |args: &[&str]| {
        let mut cmd = b.cmd(args);
        let leak = std::fs::File::open("/dev/null").unwrap();
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd;
                if libc::dup2(leak.as_raw_fd(), 7) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        common::output_via_files(cmd)
    };
    let out = run(&["run", "-d", "--bundle", &bundle, "fds"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // `; true` keeps sh from exec'ing ls, so $$ is the exec'd shell, not ls.
    let out = run(&[
        "exec",
        "fds",
        "sh",
        "-c",
        "ls /proc/1/fd; echo --; ls /proc/$$/fd; true",
    ]);
    let text = stdout(&out);
    let (init, exec) = text.split_once("--\n").expect("two listings");
    assert_eq!(
        init.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2"],
        "{text}"
    );
    assert_eq!(
        exec.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2"],
        "{text}"
    );
}

#[test]
fn foreground_signals_are_forwarded() {
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "trap 'exit 42' TERM; touch /data/ready; while :; do sleep 0.05; done",
    ]);
    let child = b
        .cmd(&["run", "--bundle", b.path().to_str().unwrap(), "sig"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || b
        .data
        .path()
        .join("ready")
        .exists()));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
}

#[test]
fn terminal_gives_the_process_a_pty() {
    let b = Bundle::busybox(&["sh", "-c", "tty; [ -t 0 ] && [ -t 1 ] && echo interactive"]);
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let out = b.run("tty");
    let text = stdout(&out);
    assert!(text.contains("/dev/pts/0"), "{text} {}", stderr(&out));
    assert!(text.contains("interactive"), "{text}");
}

#[test]
fn the_runtime_binary_cannot_be_executed_inside() {
    let b = Bundle::busybox(&["/bin/evil"]);
    let evil = b.rootfs().join("bin/evil");
    std::fs::write(&evil, "#!/proc/self/exe\n").unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = b.run("evil");
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(stderr(&out).contains("rcrun binary"), "{}", stderr(&out));
    assert!(b.list().is_empty());
}

// ---- bad input: a clear error, exit 125 (126/127 for exec), nothing left behind ----

#[test]
fn missing_bundle_is_an_error() {
    let b = Bundle::busybox(&["true"]);
    let out = b.oci(&["run", "--bundle", "/nonexistent/bundle", "x"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("/nonexistent/bundle"),
        "{}",
        stderr(&out)
    );
    assert!(b.list().is_empty());
}

#[test]
fn malformed_config_is_an_error() {
    let b = Bundle::busybox(&["true"]);
    std::fs::write(
        b.path().join("config.json"),
        "{\"ociVersion\": \"1.2.0\", \"process\": ",
    )
    .unwrap();
    let out = b.run("x");
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("config.json"), "{}", stderr(&out));
    assert!(b.list().is_empty());
    assert!(
        std::fs::read_dir(b.state.path()).unwrap().next().is_none(),
        "no state left"
    );
}

#[test]
fn unknown_namespace_type_is_an_error() {
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "bogus"}))
    });
    let out = b.run("x");
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("bogus"), "{}", stderr(&out));
    assert!(b.list().is_empty());
}

#[test]
fn missing_and_non_executable_commands_give_127_and_126() {
    let b = Bundle::busybox(&["no-such-command"]);
    let out = b.run("nf");
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    b.edit(|c| c["process"]["args"] = json!(["/etc/passwd"]));
    let out = b.run("nx");
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    b.edit(|c| c["process"]["args"] = json!(["/tmp"]));
    assert_eq!(b.run("dir").status.code(), Some(126));
    assert!(b.list().is_empty());
    // create reports it too, before anything runs.
    b.edit(|c| c["process"]["args"] = json!(["no-such-command"]));
    let out = b.oci(&["create", "--bundle", b.path().to_str().unwrap(), "c"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(b.list().is_empty());
}

#[test]
fn duplicate_id_is_refused_and_the_first_container_survives() {
    let b = Bundle::busybox(&["sleep", "30"]);
    let bundle = b.path().to_str().unwrap();
    assert!(
        b.oci(&["create", "--bundle", bundle, "dup"])
            .status
            .success()
    );
    let out = b.oci(&["create", "--bundle", bundle, "dup"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(b.status("dup"), "created");
    assert!(b.oci(&["start", "dup"]).status.success());
    assert_eq!(b.status("dup"), "running");
}

#[test]
fn invalid_ids_and_signals_are_refused() {
    let b = Bundle::busybox(&["true"]);
    for id in ["../escape", "a/b", "", ".hidden"] {
        let out = b.run(id);
        assert_eq!(out.status.code(), Some(125), "id {id:?}");
        assert!(
            stderr(&out).contains("invalid container id"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!b.state.path().parent().unwrap().join("escape").exists());
    let out = b.oci(&["kill", "whatever", "SIGNOPE"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("unknown signal"), "{}", stderr(&out));
}

#[test]
fn rlimit_above_the_hard_limit_is_a_clear_error() {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) };
    let b = Bundle::busybox(&["sh", "-c", "ulimit -n"]);
    b.edit(|c| {
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 100}])
    });
    assert_eq!(stdout(&b.run("ok")).trim(), "100");
    let too_high = current.rlim_max + 1;
    b.edit(|c| {
        c["process"]["rlimits"] =
            json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": too_high}]);
    });
    let out = b.run("high");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("RLIMIT_NOFILE") && stderr(&out).contains("hard limit"),
        "{}",
        stderr(&out)
    );
    assert!(b.list().is_empty());
}

#[test]
fn mount_destination_cannot_escape_the_rootfs() {
    let b = Bundle::busybox(&["sh", "-c", "ls /escape/inside && echo ok"]);
    let outside = tempfile::tempdir().unwrap();
    // A symlink in the image pointing at a host path: the mount must land inside.
    std::os::unix::fs::symlink(outside.path(), b.rootfs().join("escape")).unwrap();
    let data = b.data.path().to_str().unwrap().to_string();
    std::fs::write(b.data.path().join("marker"), "").unwrap();
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/escape/inside", "type": "bind", "source": data, "options": ["rbind"]}));
    });
    let out = b.run("esc");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "marker\nok\n");
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "nothing was created outside the rootfs"
    );
}

#[test]
fn rootless_without_user_namespace_is_refused() {
    if is_root() {
        return; // root may run without a user namespace
    }
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "user");
        c["linux"].as_object_mut().unwrap().remove("uidMappings");
        c["linux"].as_object_mut().unwrap().remove("gidMappings");
    });
    let out = b.run("x");
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("user namespace"), "{}", stderr(&out));
}

// ---- runc's command line ----

#[test]
fn rcrun_oci_link_speaks_runcs_cli_with_options_anywhere() {
    let b = Bundle::busybox(&["sleep", "30"]);
    let links = tempfile::tempdir().unwrap();
    let runc_like = links.path().join("rcrun-oci");
    std::os::unix::fs::symlink(common::rcrun(), &runc_like).unwrap();
    let state = b.state.path().to_str().unwrap();
    let bundle = b.path().to_str().unwrap();
    let oci = |args: &[&str]| {
        let mut cmd = std::process::Command::new(&runc_like);
        cmd.args(args);
        common::output_via_files(cmd)
    };
    // Global options before the command, command options after the id.
    let out = oci(&["--root", state, "create", "linked", "--bundle", bundle]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.status("linked"), "created");
    let out = oci(&["--root", state, "list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], "linked");
    assert_eq!(list[0]["status"], "created");
    let out = oci(&["delete", "linked", "--force", "--root", state]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(b.list().is_empty());
}

#[test]
fn errors_go_to_the_log_as_json_and_usage_errors_exit_125() {
    let b = Bundle::busybox(&["true"]);
    let log = b.state.path().join("log.json");
    let out = b.oci(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "state",
        "ghost",
    ]);
    assert_eq!(out.status.code(), Some(125));
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(
        line["msg"]
            .as_str()
            .unwrap()
            .contains("ghost does not exist"),
        "{line}"
    );
    let out = b.oci(&["run", "--no-such-flag", "x"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
}

#[test]
fn spec_refuses_to_overwrite_and_writes_a_runnable_config() {
    let b = Bundle::busybox(&["true"]);
    let out = b.oci(&["spec", "--bundle", b.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    // The bundle from `spec` (with only terminal and args changed) ran in every test above;
    // its rootless mappings put 1.. on the user's subordinate range.
    if !is_root() {
        let c = b.config();
        assert_eq!(
            c["linux"]["uidMappings"][0]["hostID"],
            nix::unistd::Uid::current().as_raw()
        );
        assert_eq!(c["linux"]["uidMappings"][1]["containerID"], 1);
    }
}

// ---- namespaces, mounts and process attributes ----

#[test]
fn namespaces_can_be_joined_by_path() {
    let a = Bundle::busybox_userns(&["sleep", "30"]);
    a.edit(|c| c["hostname"] = json!("shared-uts"));
    let out = a.oci(&["run", "-d", "--bundle", a.path().to_str().unwrap(), "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let state: serde_json::Value = serde_json::from_slice(&a.oci(&["state", "a"]).stdout).unwrap();
    let pid = state["pid"].as_i64().unwrap();

    // B joins A's user and uts namespaces and creates its own mount and pid ones.
    let b = Bundle::busybox(&["sh", "-c", "hostname; echo pid=$$"]);
    b.edit(|c| {
        let linux = c["linux"].as_object_mut().unwrap();
        linux.remove("uidMappings");
        linux.remove("gidMappings");
        c["hostname"] = serde_json::Value::Null;
        c["linux"]["namespaces"] = json!([
            {"type": "user", "path": format!("/proc/{pid}/ns/user")},
            {"type": "uts", "path": format!("/proc/{pid}/ns/uts")},
            {"type": "mount"}, {"type": "pid"}, {"type": "ipc"}, {"type": "network"}
        ]);
    });
    if is_root() {
        common::chown_tree(&b.rootfs(), 300000);
    }
    let out = b.run("b");
    assert_eq!(stdout(&out), "shared-uts\npid=1\n", "{}", stderr(&out));

    b.edit(|c| c["linux"]["namespaces"][1]["path"] = json!("/proc/999999999/ns/uts"));
    let out = b.run("bad");
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[test]
fn mount_entries_honour_their_options() {
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "touch /ro/x 2>/dev/null || echo ro-ok; grep -E ' /(ro|scratch) ' /proc/mounts; cp /bin/true /scratch/t; /scratch/t || echo noexec-ok",
    ]);
    let data = b.data.path().to_str().unwrap().to_string();
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/ro", "type": "bind", "source": data, "options": ["rbind", "ro", "nosuid", "rprivate"]}));
        mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["noexec", "nodev", "size=1m", "mode=1777"]}));
    });
    let out = b.run("mnt");
    let text = stdout(&out);
    assert!(text.contains("ro-ok"), "{text} {}", stderr(&out));
    assert!(text.contains("noexec-ok"), "{text}");
    let ro_line = text
        .lines()
        .find(|l| l.contains(" /ro "))
        .expect("/ro mounted");
    assert!(
        ro_line.contains(" ro,") && ro_line.contains("nosuid"),
        "{ro_line}"
    );
    let tmp_line = text
        .lines()
        .find(|l| l.contains(" /scratch "))
        .expect("/scratch mounted");
    assert!(
        tmp_line.starts_with("tmpfs")
            && tmp_line.contains("noexec")
            && tmp_line.contains("size=1024k"),
        "{tmp_line}"
    );
}

#[test]
fn sysfs_is_bound_read_only_without_a_network_namespace() {
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "grep ' /sys ' /proc/mounts; ls /sys/class/net | grep -c lo",
    ]);
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network");
    });
    let out = b.run("sys");
    let text = stdout(&out);
    let line = text.lines().next().unwrap_or_default();
    assert!(
        line.contains(" /sys ") && line.contains(" ro,"),
        "{text} {}",
        stderr(&out)
    );
    assert_eq!(text.lines().nth(1), Some("1"), "{text}");
}

#[test]
fn process_attributes_are_applied() {
    let b = Bundle::busybox_userns(&[
        "sh",
        "-c",
        "id -G; cat /proc/self/oom_score_adj; grep NoNewPrivs /proc/self/status; umask",
    ]);
    b.edit(|c| {
        c["process"]["user"] =
            json!({"uid": 1000, "gid": 1000, "additionalGids": [2000, 2001], "umask": 23});
        c["process"]["oomScoreAdj"] = json!(500);
    });
    let out = b.run("attrs");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"1000 2000 2001"),
        "{text} {}",
        stderr(&out)
    );
    assert_eq!(lines.get(1), Some(&"500"));
    assert!(lines.get(2).is_some_and(|l| l.ends_with('1')), "{text}");
    assert_eq!(lines.get(3), Some(&"0027"));
}

#[test]
fn unsupported_fields_are_reported() {
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({"memory": {"limit": 67108864}, "pids": {"limit": 10}})
    });
    let out = b.run("limits");
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning")
            && err.contains("memory, pids")
            && err.contains("without these limits"),
        "{err}"
    );
    b.edit(|c| {
        c["linux"]["intelRdt"] = json!({"closID": "rcrun"});
    });
    let err = stderr(&b.run("fields"));
    assert!(err.contains("linux.intelRdt not supported yet"), "{err}");
    // Without any of these in the spec, nothing is said.
    b.edit(|c| {
        c["linux"].as_object_mut().unwrap().remove("intelRdt");
    });
    b.edit(|c| {
        c["linux"].as_object_mut().unwrap().remove("resources");
    });
    assert_eq!(stderr(&b.run("quiet")), "");
}

#[test]
fn default_state_root_ignores_a_runtime_dir_that_is_not_ours() {
    if is_root() {
        return; // root always uses /run/rcrun/oci
    }
    let b = Bundle::busybox(&["true"]);
    // As under `su`: XDG_RUNTIME_DIR still names a directory of another user (here /).
    let mut cmd = std::process::Command::new(common::rcrun());
    cmd.env("XDG_RUNTIME_DIR", "/")
        .args(["oci", "run", "--bundle", b.path().to_str().unwrap()])
        .arg(format!("xdg-{}", std::process::id()));
    let out = common::output_via_files(cmd);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn rootless_user_namespace_without_mappings_maps_the_users_own_ids() {
    let b = Bundle::busybox(&["cat", "/proc/self/uid_map", "/proc/self/gid_map"]);
    b.edit(|c| {
        let linux = c["linux"].as_object_mut().unwrap();
        linux.remove("uidMappings");
        linux.remove("gidMappings");
        // devpts gid=5 needs more than one mapped gid.
        c["mounts"][2]["options"] = json!([
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620"
        ]);
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "user");
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
    });
    let out = b.run("nomaps");
    if is_root() {
        assert_eq!(out.status.code(), Some(125), "root must give mappings");
        assert!(stderr(&out).contains("uidMappings"), "{}", stderr(&out));
        return;
    }
    let maps: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    let uid = nix::unistd::Uid::current().to_string();
    let gid = nix::unistd::Gid::current().to_string();
    assert_eq!(
        maps,
        vec![
            vec!["0".to_string(), uid, "1".into()],
            vec!["0".to_string(), gid, "1".into()]
        ],
        "{}",
        stderr(&out)
    );
}

#[test]
fn exec_with_a_tty_and_kill_of_a_created_container() {
    let b = Bundle::busybox(&["sleep", "30"]);
    let bundle = b.path().to_str().unwrap();
    assert!(
        b.oci(&["run", "-d", "--bundle", bundle, "t"])
            .status
            .success()
    );
    let out = b.oci(&[
        "exec",
        "-t",
        "t",
        "sh",
        "-c",
        "tty; [ -t 0 ] && echo tty-stdin; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("/dev/pts/") && text.contains("tty-stdin"),
        "{text}"
    );

    assert!(
        b.oci(&["create", "--bundle", bundle, "waiting"])
            .status
            .success()
    );
    let out = b.oci(&["kill", "waiting", "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(wait_until(Duration::from_secs(5), || b.status("waiting") == "stopped"));
    assert_eq!(b.oci(&["start", "waiting"]).status.code(), Some(125));
    assert!(b.oci(&["delete", "waiting"]).status.success());
}
