//! OCI hooks through `rcrun oci`: what each kind sees (argv, env, state on stdin,
//! mount namespace), their order, and what a failing hook does to the lifecycle.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Bundle, stderr, wait_until};
use serde_json::{Value, json};

/// Records argv, environ, the state on stdin and the mount namespace of the shell
/// running it into OUT/KIND.*, then appends KIND to OUT/log. /proc/self, not $$:
/// a createContainer hook sees the host's /proc from the container's pid namespace.
/// (The shell opens redirections itself, or in a fork that shares its argv and env.)
const RECORDER: &str = r#"kind=$1; out=$2
cat > "$out/$kind.state"
tr '\0' '\n' < /proc/self/cmdline > "$out/$kind.argv"
tr '\0' '\n' < /proc/self/environ > "$out/$kind.env"
readlink /proc/self/ns/mnt > "$out/$kind.mnt"
echo "$kind" >> "$out/log"
"#;

const HOST_KINDS: [&str; 5] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "poststart",
    "poststop",
];

fn host_env(kind: &str) -> Vec<String> {
    vec!["PATH=/usr/bin:/bin".into(), format!("HOOK_KIND={kind}")]
}

/// A bundle whose hooks of every kind run the recorder, writing to its data dir.
fn recording_bundle(args: &[&str]) -> Bundle {
    let b = Bundle::busybox(args);
    let script = b.path().join("record.sh");
    std::fs::write(&script, RECORDER).unwrap();
    std::fs::write(b.rootfs().join("record.sh"), RECORDER).unwrap();
    let data = b.data.path().to_str().unwrap().to_string();
    let mut hooks = serde_json::Map::new();
    for kind in HOST_KINDS {
        hooks.insert(
            kind.into(),
            json!([{
                "path": "/bin/sh",
                "args": ["hook-argv0", script, kind, data],
                "env": host_env(kind),
            }]),
        );
    }
    hooks.insert(
        "startContainer".into(),
        json!([{
            // busybox picks its applet by argv[0]: "sh" only if args[0] is argv[0].
            "path": "/bin/busybox",
            "args": ["sh", "/record.sh", "startContainer", "/data"],
            "env": ["PATH=/bin", "HOOK_KIND=startContainer"],
        }]),
    );
    b.edit(|c| {
        c["hooks"] = Value::Object(hooks);
        c["annotations"] = json!({"org.example.hooks": "yes"});
    });
    b
}

fn read(b: &Bundle, name: &str) -> String {
    let path = b.data.path().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn lines(b: &Bundle, name: &str) -> Vec<String> {
    read(b, name).lines().map(str::to_string).collect()
}

fn hook_state(b: &Bundle, kind: &str) -> Value {
    serde_json::from_str(&read(b, &format!("{kind}.state"))).unwrap()
}

fn mnt_ns(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn canonical_bundle(b: &Bundle) -> String {
    std::fs::canonicalize(b.path())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Every kind of hook, in the order they run.
const EVERY_KIND: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// The setup hooks in order, then the program and poststart (which run side by side).
fn check_start_order(log: &[String]) {
    assert_eq!(log[..4], EVERY_KIND[..4], "{log:?}");
    let mut next = log[4..6].to_vec();
    next.sort();
    assert_eq!(next, ["main", "poststart"], "{log:?}");
}

/// Argv, env and the state of every hook, all of which ran for container `id` with
/// process `pid`.
fn check_records(b: &Bundle, id: &str, pid: &str) {
    let script = b.path().join("record.sh");
    for kind in &EVERY_KIND {
        let state = hook_state(b, kind);
        assert_eq!(state["id"], id, "{kind}: {state}");
        assert_eq!(pid_of(&state), pid, "{kind}: {state}");
        assert_eq!(state["bundle"], canonical_bundle(b), "{kind}: {state}");
        assert!(state["ociVersion"].is_string(), "{kind}: {state}");
        assert_eq!(
            state["annotations"]["org.example.hooks"], "yes",
            "{kind}: {state}"
        );
        let expected_status = match *kind {
            "prestart" | "createRuntime" | "createContainer" => "creating",
            "startContainer" => "created",
            "poststart" => "running",
            _ => "stopped",
        };
        assert_eq!(state["status"], expected_status, "{kind}: {state}");
        if *kind == "startContainer" {
            assert_eq!(
                lines(b, "startContainer.argv"),
                ["sh", "/record.sh", "startContainer", "/data"]
            );
            assert_eq!(
                lines(b, "startContainer.env"),
                ["PATH=/bin", "HOOK_KIND=startContainer"]
            );
        } else {
            assert_eq!(
                lines(b, &format!("{kind}.argv")),
                [
                    "hook-argv0",
                    script.to_str().unwrap(),
                    kind,
                    b.data.path().to_str().unwrap()
                ]
            );
            assert_eq!(lines(b, &format!("{kind}.env")), host_env(kind));
        }
    }
}

fn pid_of(state: &Value) -> String {
    state["pid"].as_i64().unwrap().to_string()
}

fn no_containers_left(b: &Bundle) {
    assert!(
        std::fs::read_dir(b.state.path()).unwrap().next().is_none(),
        "state left behind: {:?}",
        std::fs::read_dir(b.state.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect::<Vec<_>>()
    );
}

fn gone(pid: &str) -> bool {
    wait_until(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
}

#[test]
fn create_start_delete_run_every_hook_in_order_and_in_its_namespace() {
    let b = recording_bundle(&["sh", "-c", "echo main >> /data/log; exec sleep 1000"]);
    let bundle = b.path().to_str().unwrap();
    let out = b.oci(&["create", "--bundle", bundle, "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&b, "log"),
        ["prestart", "createRuntime", "createContainer"]
    );
    let state: Value = serde_json::from_slice(&b.oci(&["state", "c1"]).stdout).unwrap();
    let pid = pid_of(&state);

    let out = b.oci(&["start", "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Read once it runs the program: during setup it is not dumpable, so its /proc
    // entries are closed to a rootless caller.
    let host_mnt = mnt_ns("self");
    let container_mnt = mnt_ns(&pid);
    assert_ne!(host_mnt, container_mnt);
    assert_eq!(read(&b, "prestart.mnt").trim(), host_mnt);
    assert_eq!(read(&b, "createRuntime.mnt").trim(), host_mnt);
    assert_eq!(read(&b, "createContainer.mnt").trim(), container_mnt);
    // poststart ran before start returned; main runs alongside.
    assert!(wait_until(Duration::from_secs(10), || lines(&b, "log")
        .contains(&"main".to_string())));
    check_start_order(&lines(&b, "log"));
    assert_eq!(read(&b, "startContainer.mnt").trim(), container_mnt);
    assert_eq!(read(&b, "poststart.mnt").trim(), host_mnt);

    let out = b.oci(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&b, "log")[6..], ["poststop"]);
    check_records(&b, "c1", &pid);
    no_containers_left(&b);
}

#[test]
fn foreground_run_runs_every_hook_and_poststop_after_cleanup() {
    let b = recording_bundle(&["sh", "-c", "echo main >> /data/log"]);
    let out = b.run("r1");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = lines(&b, "log");
    check_start_order(&log);
    assert_eq!(log[6..], ["poststop"]);
    assert_ne!(
        read(&b, "createContainer.mnt"),
        read(&b, "createRuntime.mnt")
    );
    assert_eq!(read(&b, "createRuntime.mnt").trim(), mnt_ns("self"));
    check_records(&b, "r1", &pid_of(&hook_state(&b, "createRuntime")));
    no_containers_left(&b);
}

/// Replaces the hooks of `kind` with one shell command (in the runtime namespace's
/// /bin/sh, or busybox's for startContainer).
fn set_hook(b: &Bundle, kind: &str, script: &str, timeout: Option<u32>) {
    let path = if kind == "startContainer" {
        "/bin/busybox"
    } else {
        "/bin/sh"
    };
    let mut hook = json!({"path": path, "args": ["sh", "-c", script]});
    if let Some(t) = timeout {
        hook["timeout"] = json!(t);
    }
    b.edit(|c| c["hooks"][kind] = json!([hook]));
}

#[test]
fn failing_create_runtime_hook_destroys_the_container() {
    for run in [false, true] {
        let b = recording_bundle(&["sh", "-c", "echo main >> /data/log"]);
        set_hook(
            &b,
            "createRuntime",
            "echo the-hook-said-no >&2; exit 1",
            None,
        );
        let bundle = b.path().to_str().unwrap();
        let out = if run {
            b.run("bad")
        } else {
            b.oci(&["create", "--bundle", bundle, "bad"])
        };
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.contains("hooks.createRuntime[0] (/bin/sh)") && err.contains("the-hook-said-no"),
            "{err}"
        );
        // prestart ran before, then the container was destroyed and poststop ran.
        assert_eq!(lines(&b, "log"), ["prestart", "poststop"]);
        let pid = pid_of(&hook_state(&b, "prestart"));
        assert!(gone(&pid), "container process {pid} is left");
        assert_eq!(hook_state(&b, "poststop")["status"], "stopped");
        no_containers_left(&b);
    }
}

#[test]
fn failing_create_container_hook_destroys_the_container() {
    let b = recording_bundle(&["sh", "-c", "echo main >> /data/log"]);
    set_hook(&b, "createContainer", "exit 7", None);
    let out = b.oci(&["create", "--bundle", b.path().to_str().unwrap(), "bad"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("hooks.createContainer[0]") && err.contains("7"),
        "{err}"
    );
    assert_eq!(lines(&b, "log"), ["prestart", "createRuntime", "poststop"]);
    assert!(gone(&pid_of(&hook_state(&b, "createRuntime"))));
    no_containers_left(&b);
}

#[test]
fn hook_over_its_timeout_is_killed_with_what_it_started_and_fails() {
    for run in [false, true] {
        let b = Bundle::busybox(&["true"]);
        let sleeper = b.data.path().join("sleeper");
        set_hook(
            &b,
            "createRuntime",
            &format!("sleep 60 & echo $! > {}; wait", sleeper.display()),
            Some(1),
        );
        let started = Instant::now();
        let out = if run {
            b.run("slow")
        } else {
            b.oci(&["create", "--bundle", b.path().to_str().unwrap(), "slow"])
        };
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.contains("hooks.createRuntime[0]") && err.contains("timed out after 1 s"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        let pid = std::fs::read_to_string(&sleeper).unwrap();
        assert!(gone(pid.trim()), "the hook's child {pid} outlived it");
        no_containers_left(&b);
    }
}

#[test]
fn failing_start_container_hook_fails_start_before_the_program_runs() {
    for run in [false, true] {
        let b = recording_bundle(&["sh", "-c", "echo main >> /data/log"]);
        set_hook(
            &b,
            "startContainer",
            "echo in-container-no >&2; exit 1",
            None,
        );
        let out = if run {
            b.run("bad")
        } else {
            let create = b.oci(&["create", "--bundle", b.path().to_str().unwrap(), "bad"]);
            assert!(create.status.success(), "{}", stderr(&create));
            b.oci(&["start", "bad"])
        };
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.contains("hooks.startContainer[0] (/bin/busybox)")
                && err.contains("in-container-no"),
            "{err}"
        );
        assert_eq!(
            lines(&b, "log"),
            ["prestart", "createRuntime", "createContainer", "poststop"],
            "the program ran or poststart/poststop did not behave (run={run})"
        );
        assert!(gone(&pid_of(&hook_state(&b, "createRuntime"))));
        no_containers_left(&b);
    }
}

#[test]
fn failing_poststart_hook_is_a_warning() {
    let b = recording_bundle(&["sh", "-c", "echo main >> /data/log; exec sleep 1000"]);
    set_hook(&b, "poststart", "echo poststart-broke >&2; exit 2", None);
    let bundle = b.path().to_str().unwrap();
    let out = b.oci(&["create", "--bundle", bundle, "c"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.oci(&["start", "c"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning")
            && err.contains("hooks.poststart[0]")
            && err.contains("poststart-broke"),
        "{err}"
    );
    assert_eq!(b.status("c"), "running");
    assert!(wait_until(Duration::from_secs(10), || lines(&b, "log")
        .contains(&"main".to_string())));

    // And with `run`: the program's exit code is what counts.
    let r = recording_bundle(&["sh", "-c", "echo main >> /data/log; exit 4"]);
    set_hook(&r, "poststart", "exit 2", None);
    let out = r.run("r");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hooks.poststart[0]"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn failing_poststop_hook_is_a_warning_and_delete_succeeds() {
    let b = Bundle::busybox(&["sleep", "1000"]);
    set_hook(&b, "poststop", "echo poststop-broke >&2; exit 3", None);
    let bundle = b.path().to_str().unwrap();
    let out = b.oci(&["run", "--detach", "--bundle", bundle, "c"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.oci(&["delete", "--force", "c"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning")
            && err.contains("hooks.poststop[0]")
            && err.contains("poststop-broke"),
        "{err}"
    );
    no_containers_left(&b);

    // A foreground run that cleans up runs them too, and keeps the program's code.
    let r = Bundle::busybox(&["sh", "-c", "exit 5"]);
    set_hook(&r, "poststop", "echo poststop-broke >&2; exit 3", None);
    let out = r.run("fg");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("warning") && err.contains("poststop-broke"),
        "{err}"
    );
    no_containers_left(&r);
}

#[test]
fn bad_hooks_are_refused_before_anything_runs() {
    let cases: [(&str, Value, &str); 3] = [
        (
            "createRuntime",
            json!({"path": "relative/hook"}),
            "hooks.createRuntime[0].path",
        ),
        (
            "poststart",
            json!({"path": "/bin/true", "timeout": 0}),
            "hooks.poststart[0].timeout",
        ),
        (
            "prestart",
            json!({"path": "/bin/true", "env": ["NOVALUE"]}),
            "hooks.prestart[0].env",
        ),
    ];
    for (kind, hook, needle) in cases {
        let b = Bundle::busybox(&["true"]);
        b.edit(|c| c["hooks"] = json!({ kind: [hook] }));
        let out = b.oci(&["create", "--bundle", b.path().to_str().unwrap(), "bad"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
        no_containers_left(&b);
    }
}

#[test]
fn hooks_are_no_longer_reported_as_unsupported() {
    let b = Bundle::busybox(&["true"]);
    set_hook(&b, "poststart", "true", None);
    let out = b.run("quiet");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("hooks"), "{}", stderr(&out));
}
