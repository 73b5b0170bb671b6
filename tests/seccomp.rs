//! Seccomp: `linux.seccomp` of OCI bundles, and the default profile of `rcrun run`.
//! scripts/test runs them as the unprivileged user and as root.

mod common;

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;

use common::{Bundle, Env, stderr, stdout};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use serde_json::{Value, json};

/// A denylist: everything is allowed but `rules`.
fn deny(b: &Bundle, rules: Value) {
    b.edit(|c| {
        c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules});
    });
}

/// glibc uses the *at variants where the old ones are missing: rule both.
const MKDIR: [&str; 2] = ["mkdir", "mkdirat"];

/// An ERRNO rule with its errnoRet; with no_new_privs the filter is loaded last,
/// without it before the container's capabilities (lacking CAP_SYS_ADMIN) apply.
fn errno_rule_returns_its_errno(no_new_privileges: bool) {
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "mkdir /data/a; echo rc=$?; touch /data/b && echo touched; grep NoNewPrivs /proc/self/status",
    ]);
    deny(
        &b,
        json!([{"names": MKDIR, "action": "SCMP_ACT_ERRNO", "errnoRet": 5}]),
    );
    b.edit(|c| {
        c["process"]["noNewPrivileges"] = json!(no_new_privileges);
        // Flags and architectures reach the kernel too.
        c["linux"]["seccomp"]["flags"] =
            json!(["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]);
        if std::env::consts::ARCH == "x86_64" {
            c["linux"]["seccomp"]["architectures"] =
                json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
        }
    });
    let out = b.run("errno");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // EIO's text: the errno came from the filter, not from the filesystem.
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    let nnp = no_new_privileges as u8;
    assert_eq!(stdout(&out), format!("rc=1\ntouched\nNoNewPrivs:\t{nnp}\n"));
}

#[test]
fn errno_rule_with_no_new_privileges() {
    errno_rule_returns_its_errno(true);
}

#[test]
fn errno_rule_without_no_new_privileges() {
    errno_rule_returns_its_errno(false);
}

#[test]
fn an_argument_condition_blocks_only_that_value() {
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "touch /data/f; chmod 700 /data/f; echo a=$?; chmod 755 /data/f; echo b=$?; stat -c %a /data/f",
    ]);
    let mode = |index: u64| json!([{"index": index, "value": 0o700, "op": "SCMP_CMP_EQ"}]);
    deny(
        &b,
        json!([
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": mode(1)},
            {"names": ["fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": mode(2)},
        ]),
    );
    let out = b.run("args");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "a=1\nb=0\n755\n");
}

#[test]
fn kill_process_exits_with_sigsys() {
    let b = Bundle::busybox(&["mkdir", "/data/a"]);
    deny(
        &b,
        json!([{"names": MKDIR, "action": "SCMP_ACT_KILL_PROCESS"}]),
    );
    let out = b.run("killed");
    assert_eq!(out.status.code(), Some(128 + 31), "{}", stderr(&out));
}

#[test]
fn an_allowlist_denies_the_rest() {
    // Everything busybox's sh and echo need, but not mkdir: the default ERRNO hits it.
    let b = Bundle::busybox(&["sh", "-c", "echo up; mkdir /data/a || echo denied"]);
    b.edit(|c| {
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "syscalls": [{"names": MKDIR, "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
                         {"names": ALLOWED, "action": "SCMP_ACT_ALLOW"}]
        });
    });
    let out = b.run("allow");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "up\ndenied\n");
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
}

/// What busybox sh needs to start, fork and exec, and rcrun's last steps before the
/// exec (signals, fds, execve).
const ALLOWED: &[&str] = &[
    "execve",
    "brk",
    "arch_prctl",
    "set_tid_address",
    "set_robust_list",
    "rseq",
    "prlimit64",
    "readlink",
    "readlinkat",
    "mprotect",
    "mmap",
    "munmap",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getpid",
    "getppid",
    "getcwd",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "ioctl",
    "fcntl",
    "dup2",
    "dup3",
    "close",
    "write",
    "writev",
    "read",
    "stat",
    "newfstatat",
    "fstat",
    "lstat",
    "statx",
    "clone",
    "clone3",
    "fork",
    "vfork",
    "wait4",
    "exit",
    "exit_group",
    "uname",
    "open",
    "openat",
    "getrandom",
    "futex",
    "sigaltstack",
    "getpgrp",
    "setpgid",
    "close_range",
];

#[test]
fn exec_d_processes_are_filtered_too() {
    let b = Bundle::busybox(&["sleep", "30"]);
    deny(
        &b,
        json!([{"names": MKDIR, "action": "SCMP_ACT_ERRNO", "errnoRet": 5}]),
    );
    let out = b.oci(&["run", "-d", "--bundle", b.path().to_str().unwrap(), "ex"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.oci(&["exec", "ex", "mkdir", "/data/x"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    let out = b.oci(&["exec", "ex", "touch", "/data/y"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A bad profile is refused: 125, the problem named, no
/// container left behind.
fn refused(seccomp: Value, needles: &[&str]) {
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| c["linux"]["seccomp"] = seccomp);
    for args in [
        vec!["run", "--bundle", b.path().to_str().unwrap(), "bad"],
        vec!["create", "--bundle", b.path().to_str().unwrap(), "bad"],
    ] {
        let out = b.oci(&args);
        assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
        for needle in needles {
            assert!(stderr(&out).contains(needle), "{needle}: {}", stderr(&out));
        }
        assert!(b.list().is_empty(), "a refused container left state");
        let left: Vec<_> = std::fs::read_dir(b.state.path())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "state root not empty: {left:?}");
    }
}

#[test]
fn unknown_action_is_refused() {
    refused(
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_EXPLODE"}]}),
        &["linux.seccomp.syscalls[0].action", "SCMP_ACT_EXPLODE"],
    );
}

#[test]
fn unknown_arch_is_refused() {
    refused(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PDP11"]}),
        &["linux.seccomp.architectures[0]", "SCMP_ARCH_PDP11"],
    );
}

#[test]
fn bad_operator_is_refused() {
    refused(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"],
               "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ISH"}]}]}),
        &["linux.seccomp.syscalls[0].args[0].op", "SCMP_CMP_ISH"],
    );
}

#[test]
fn argument_index_6_is_refused() {
    refused(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"],
               "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
        &["linux.seccomp.syscalls[0].args[0].index is 6"],
    );
}

#[test]
fn notify_without_a_listener_path_is_refused() {
    refused(
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
        &["SCMP_ACT_NOTIFY", "listenerPath is not set"],
    );
}

#[test]
fn notify_without_an_agent_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-listens.sock");
    refused(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": socket,
               "syscalls": [{"names": MKDIR, "action": "SCMP_ACT_NOTIFY"}]}),
        &["seccomp agent", socket.to_str().unwrap()],
    );
}

/// A seccomp agent: takes the containerProcessState and listener fd from rcrun,
/// answers the first notification with EXDEV; returns the state and the syscall.
fn agent(listener: UnixListener) -> (Value, i32) {
    let (stream, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("the listener fd is attached");
    let len = msg.bytes;
    let state: Value = serde_json::from_slice(&buf[..len]).unwrap();
    // SAFETY: zeroed plain C structs, ioctls on the listener fd we received.
    let nr = unsafe {
        let mut req: libc::seccomp_notif = std::mem::zeroed();
        assert_eq!(libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req), 0);
        let resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: -libc::EXDEV,
            flags: 0,
        };
        assert_eq!(libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &resp), 0);
        libc::close(fd);
        req.data.nr
    };
    (state, nr)
}

#[test]
fn notify_hands_the_listener_and_state_to_the_agent() {
    let b = Bundle::busybox(&["sh", "-c", "mkdir /data/a; echo rc=$?"]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    b.edit(|c| {
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": socket,
            "listenerMetadata": "hello-agent",
            "syscalls": [{"names": MKDIR, "action": "SCMP_ACT_NOTIFY"}]
        });
    });
    let agent = std::thread::spawn(move || agent(listener));
    let out = b.run("notified");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (state, nr) = agent.join().unwrap();
    // The agent's answer reached the container's mkdir.
    assert!(
        stderr(&out).contains("Invalid cross-device link"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "rc=1\n");
    assert!(
        nr as i64 == libc::SYS_mkdir || nr as i64 == libc::SYS_mkdirat,
        "{nr}"
    );
    assert_eq!(state["fds"], json!(["seccompFd"]), "{state}");
    assert_eq!(state["metadata"], "hello-agent");
    assert_eq!(state["state"]["id"], "notified");
    assert_eq!(state["state"]["status"], "creating");
    assert!(state["pid"].as_i64().unwrap() > 1, "{state}");
    assert_eq!(state["pid"], state["state"]["pid"]);
    assert_eq!(state["state"]["bundle"], json!(b.path()));
    assert!(
        state["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with('1'))
    );
}

/// `rcrun run --rm busybox:1.35 ARGS…` with `opts` before the image.
fn run_busybox(env: &Env, opts: &[&str], args: &[&str]) -> std::process::Output {
    let mut all = vec!["run", "--rm", "--network", "none"];
    all.extend_from_slice(opts);
    all.push("busybox:1.35");
    all.extend_from_slice(args);
    env.rcrun(&all)
}

#[test]
fn run_has_a_default_profile_and_unconfined_lifts_it() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    // A new user namespace needs no capability, so only seccomp stops it.
    let probe = ["sh", "-c", "unshare -U true && echo unshared"];
    let out = run_busybox(&env, &[], &probe);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    let out = run_busybox(&env, &["--security-opt", "seccomp=unconfined"], &probe);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "unshared\n");
    // A normal workload: processes, pipes, files, signals.
    let out = run_busybox(
        &env,
        &[],
        &[
            "sh",
            "-c",
            "mkdir /tmp/d && echo hi > /tmp/d/f && cat /tmp/d/f | wc -c; sleep 0 & wait; ls /proc/self/ >/dev/null && echo ok",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "3\nok\n");
}

#[test]
fn run_takes_a_profile_file_and_no_new_privileges() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    let profile = env.dir.path().join("profile.json");
    // Docker's format: the rule applies only where its capability is absent.
    std::fs::write(
        &profile,
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": MKDIR, "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}}]})
        .to_string(),
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = run_busybox(
        &env,
        &[
            "--security-opt",
            &opt,
            "--security-opt",
            "no-new-privileges",
        ],
        &[
            "sh",
            "-c",
            "grep NoNewPrivs /proc/self/status; mkdir /tmp/x",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("NoNewPrivs:\t1"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_refuses_bad_security_opts() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    env.fails(
        &[
            "run",
            "--rm",
            "--security-opt",
            "apparmor=unconfined",
            "busybox:1.35",
            "true",
        ],
        "apparmor=unconfined",
    );
    let missing = env.dir.path().join("no-such-profile.json");
    env.fails(
        &[
            "run",
            "--rm",
            "--security-opt",
            &format!("seccomp={}", missing.display()),
            "busybox:1.35",
            "true",
        ],
        missing.to_str().unwrap(),
    );
    let bad = env.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_FROB"}]}"#).unwrap();
    env.fails(
        &[
            "run",
            "--rm",
            "--security-opt",
            &format!("seccomp={}", bad.display()),
            "busybox:1.35",
            "true",
        ],
        "SCMP_ACT_FROB",
    );
    assert!(
        env.ps(true).is_empty(),
        "a refused run left {:?}",
        env.ps(true)
    );
}
