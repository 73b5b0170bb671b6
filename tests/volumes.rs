//! Named volumes (`run -v NAME:/path`, `rcrun volume …`) on the fixture images, each
//! test with its own data directory: data outlives containers, a new volume takes
//! the image's directory (owners included) or belongs to the container's user, and
//! a volume in use is never removed.

mod common;

use std::collections::BTreeSet;

use serde_json::Value;

use common::Env;

/// `rcrun run --rm --network none ARGS…` (the network plays no part here).
fn run(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["run", "--rm", "--network", "none"];
    all.extend_from_slice(args);
    env.ok(&all)
}

fn volumes(env: &Env) -> Vec<Value> {
    serde_json::from_str(&env.ok(&["volume", "ls", "--format", "json"])).unwrap()
}

fn user_names(volume: &Value) -> Vec<String> {
    volume["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn data_outlives_its_container_and_a_volume_in_use_stays() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    env.ok(&[
        "run",
        "--network",
        "none",
        "--name",
        "writer",
        "-v",
        "shared:/data",
        "busybox:1.35",
        "sh",
        "-c",
        "echo kept > /data/file",
    ]);
    let vols = volumes(&env);
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(vols[0]["name"], "shared");
    assert_eq!(
        user_names(&vols[0]),
        ["writer"],
        "a stopped container uses it"
    );

    // Refused while the stopped container exists, -f or not.
    for args in [
        &["volume", "rm", "shared"][..],
        &["volume", "rm", "-f", "shared"],
    ] {
        env.fails(args, "volume shared is in use by container(s) writer");
    }
    assert_eq!(
        env.ok(&["volume", "prune"]),
        "",
        "prune keeps a used volume"
    );

    env.ok(&["rm", "writer"]);
    assert!(user_names(&volumes(&env)[0]).is_empty());
    assert_eq!(
        run(
            &env,
            &["-v", "shared:/other", "busybox:1.35", "cat", "/other/file"]
        ),
        "kept\n"
    );

    // A running container holds it too.
    env.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "holder",
        "-v",
        "shared:/data:ro",
        "busybox:1.35",
        "sleep",
        "1000",
    ]);
    let inspect: Value = serde_json::from_str(&env.ok(&["volume", "inspect", "shared"])).unwrap();
    assert_eq!(user_names(&inspect[0]), ["holder"]);
    let mountpoint = inspect[0]["mountpoint"].as_str().unwrap();
    assert_eq!(
        mountpoint,
        env.data().join("volumes/shared/_data").to_str().unwrap()
    );
    env.fails(
        &["volume", "rm", "shared"],
        "remove them first (rcrun rm -f holder)",
    );
    env.ok(&["rm", "-f", "holder"]);
    assert_eq!(env.ok(&["volume", "rm", "shared"]), "shared\n");
    assert!(volumes(&env).is_empty());
    assert!(
        env.entries("volumes").is_empty(),
        "rm left {:?}",
        env.entries("volumes")
    );
}

#[test]
fn a_new_volume_takes_the_image_directory_once() {
    let env = Env::new();
    env.pull_fixture("redis", "7.0");
    env.pull_fixture("layers", "gzip");
    // /var/lib/redis is redis's (100:101) in the image; the container runs as root.
    let stat = ["-c", "stat -c '%u:%g %a' /var/lib/redis"];
    let redis = |volume: &str, user: &str| {
        let mut args = vec!["-u", user, "--entrypoint", "sh", "-v", volume, "redis:7.0"];
        args.extend_from_slice(&stat);
        run(&env, &args)
    };
    assert_eq!(redis("rdata:/var/lib/redis", "0"), "100:101 750\n");
    // Once made, the volume is left as it is: a chown inside sticks.
    run(
        &env,
        &[
            "-u",
            "0",
            "--entrypoint",
            "chown",
            "-v",
            "rdata:/var/lib/redis",
            "redis:7.0",
            "0:0",
            "/var/lib/redis",
        ],
    );
    assert_eq!(redis("rdata:/var/lib/redis", "redis"), "0:0 750\n");

    // The merged directory of the image: whiteouts and opaque directories applied,
    // files with their owners.
    let listing = run(
        &env,
        &[
            "-v",
            "lay:/data",
            "-v",
            "opq:/opaque",
            "layers:gzip",
            "sh",
            "-c",
            // (busybox ls escapes UTF-8 names; find does not)
            "find /data -mindepth 1 -maxdepth 1 | sed s,^/data/,,; echo --; ls -A /opaque; echo --; \
             stat -c %u:%g /data/owned-1000-kept; cat /data/keep.txt",
        ],
    );
    let mut parts = listing.split("--\n");
    let data: BTreeSet<&str> = parts.next().unwrap().lines().collect();
    let expected: BTreeSet<&str> = [
        "dangling-symlink",
        "dir-then-file",
        "emptydir",
        "fifo",
        "file-then-dir",
        "hardlink-to-keep",
        "keep.txt",
        "long-path",
        "owned-1000-kept",
        "owned-by-1000",
        "sgid-file",
        "sub",
        "suid-file",
        "symlink-to-keep",
        "ünïcödé-名前.txt",
    ]
    .into_iter()
    .collect();
    assert_eq!(
        data.iter()
            .filter(|n| !n.starts_with("xxxx"))
            .copied()
            .collect::<BTreeSet<_>>(),
        expected
    );
    assert_eq!(parts.next().unwrap(), "new-c\n");
    assert_eq!(parts.next().unwrap(), "1000:1000\nkeep\n");

    // Mounted where the image has other content, a made volume keeps its own.
    assert_eq!(
        run(
            &env,
            &["-v", "opq:/data", "layers:gzip", "ls", "-A", "/data"]
        ),
        "new-c\n"
    );
}

#[test]
fn a_new_volume_where_the_image_has_nothing_belongs_to_the_user() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    env.pull_fixture("redis", "7.0");
    assert_eq!(
        run(
            &env,
            &[
                "-u",
                "1234:555",
                "-v",
                "fresh:/cache/deep",
                "busybox:1.35",
                "sh",
                "-c",
                "stat -c '%u:%g %a' /cache/deep && echo ok > /cache/deep/file && cat /cache/deep/file",
            ],
        ),
        "1234:555 755\nok\n"
    );
    // The image's user when no -u is given.
    assert_eq!(
        run(
            &env,
            &[
                "--entrypoint",
                "stat",
                "-v",
                "cache:/nothing/here",
                "redis:7.0",
                "-c",
                "%U:%G %a",
                "/nothing/here",
            ],
        ),
        "redis:redis 755\n"
    );
}

#[test]
fn volume_commands_and_bad_input() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    env.fails(&["volume", "create", "bad/name"], "invalid volume name");
    env.fails(&["volume", "create", ".hidden"], "invalid volume name");
    assert_eq!(env.ok(&["volume", "create", "made"]), "made\n");
    assert_eq!(
        env.ok(&["volume", "create", "made"]),
        "made\n",
        "an existing volume is fine"
    );
    let anonymous = env.ok(&["volume", "create"]);
    assert_eq!(anonymous.trim().len(), 64, "{anonymous}");
    let listed = env.ok(&["volume", "ls", "-q"]);
    let mut want = vec![anonymous.trim(), "made"];
    want.sort();
    assert_eq!(listed.lines().collect::<Vec<_>>(), want);
    let table = env.ok(&["volume", "ls"]);
    assert!(table.starts_with("VOLUME NAME"), "{table}");

    env.fails(&["volume", "inspect", "nope"], "no such volume: nope");
    env.fails(&["volume", "rm", "nope"], "no such volume: nope");
    assert_eq!(
        env.ok(&["volume", "rm", "-f", "nope"]),
        "",
        "-f: an unknown name is no error"
    );

    // A made volume (no container yet) still takes the image's directory.
    assert_eq!(
        run(
            &env,
            &["-v", "made:/etc", "busybox:1.35", "cat", "/etc/group"]
        ),
        "root:x:0:\nnogroup:x:65534:\n"
    );

    // Bad -v: refused before anything is made.
    for (volume, needle) in [
        (
            "./rel:/x",
            "is not an absolute host path, and is an invalid volume name",
        ),
        ("rel/dir:/x", "write the host path in full"),
        ("bad!name:/x", "invalid volume name \"bad!name\""),
        ("good:relative", "the container path must be absolute"),
    ] {
        env.fails(
            &["run", "--rm", "-v", volume, "busybox:1.35", "true"],
            needle,
        );
    }
    // A create that fails after the volume was recorded leaves neither.
    env.fails(
        &[
            "run",
            "--rm",
            "--network",
            "no-such-net",
            "-v",
            "doomed:/data",
            "busybox:1.35",
            "true",
        ],
        "no-such-net",
    );
    assert!(env.ps(true).is_empty());
    let names: Vec<String> = volumes(&env)
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, want, "a failed run left a volume");
    assert!(!env.data().join("volumes/doomed").exists());

    env.ok(&[
        "run",
        "--network",
        "none",
        "--name",
        "user",
        "-v",
        "used:/data",
        "busybox:1.35",
        "true",
    ]);
    let mut pruned: Vec<String> = env
        .ok(&["volume", "prune"])
        .lines()
        .map(str::to_string)
        .collect();
    pruned.sort();
    assert_eq!(pruned, want);
    let left = volumes(&env);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["name"], "used");
    assert_eq!(env.entries("volumes"), ["used"]);
}

#[test]
fn racing_containers_share_one_new_volume() {
    let env = Env::new();
    env.pull_fixture("layers", "gzip");
    let runs: Vec<_> = (0..4)
        .map(|_| {
            env.cmd(&[
                "run",
                "--rm",
                "--network",
                "none",
                "-v",
                "race:/data",
                "layers:gzip",
                "sh",
                "-c",
                "ls -A /data | wc -l",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let counts: Vec<String> = runs
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert!(counts.iter().all(|c| *c == counts[0]), "{counts:?}");
    assert_ne!(counts[0].trim(), "0");
    let vols = volumes(&env);
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert!(user_names(&vols[0]).is_empty());
    assert_eq!(
        env.entries("volumes/race"),
        ["_data"],
        "the losers' copies are gone"
    );
}
