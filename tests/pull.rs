//! `rcrun pull` end to end: from a local registry (plain HTTP, TLS with basic auth),
//! from oci and docker archives, refusing broken or hostile images without keeping
//! anything, and showing progress only on a terminal. The registry is Debian's
//! docker-registry (snapshots::testing::Registry), filled with the fixture images.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Env, stderr, stdout};
use serde_json::Value;
use snapshots::Compression;
use snapshots::testing::{
    Layout, Registry, SETUP, fixtures, free_port, hardlink_tar, layout_manifest, tar_of,
};

/// `rcrun ARGS` in `env`, with no auth file from the environment (HOME and the XDG
/// directories point into the test's directory): credentials come only from the test.
fn isolated(env: &Env, args: &[&str]) -> Command {
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut c = env.cmd(args);
    c.env("HOME", &home)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("REGISTRY_AUTH_FILE");
    c
}

/// Insists on exit code 125 with `needle` in stderr; returns stderr.
fn refused(out: &Output, what: &str, needle: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(125), "{what}: {err}{}", stdout(out));
    assert!(err.contains(needle), "{what}: {err:?} lacks {needle:?}");
    err
}

fn succeeded(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        stderr(out),
        stdout(out)
    );
    stdout(out)
}

/// The only image's names, after checking there is exactly one.
fn only_image(env: &Env) -> Value {
    let images = env.images();
    assert_eq!(images.len(), 1, "{images:?}");
    images[0].clone()
}

/// Nothing of a failed pull is left: no image, no snapshot, none of `layers` stored.
fn nothing_kept(env: &Env, layers: &[String]) {
    assert!(env.images().is_empty(), "{:?}", env.images());
    assert!(
        env.entries("snapshots").is_empty(),
        "snapshots left: {:?}",
        env.entries("snapshots")
    );
    let blobs = env.entries("blobs/sha256");
    for layer in layers {
        let hex = layer.strip_prefix("sha256:").unwrap();
        assert!(
            !blobs.iter().any(|b| b == hex),
            "layer blob {layer} kept: {blobs:?}"
        );
    }
}

/// The layer digests of `tag` in an OCI layout.
fn layout_layers(layout: &Path, tag: &str) -> Vec<String> {
    let (_, manifest) = layout_manifest(layout, tag);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Pulls `source`, checks that it is the only image, named `name`, and that it runs
/// (as `image`); returns what pull printed.
fn pull_and_run(env: &Env, source: &str, name: &str, image: &str) -> String {
    let printed = env.ok(&["pull", source]);
    assert_eq!(only_image(env)["names"], serde_json::json!([name]));
    assert_eq!(env.ok(&["run", "--rm", image, "echo", "hi"]), "hi\n");
    printed
}

/// The busybox fixture's layout; fails, saying to run scripts/setup, if it is not built.
fn busybox_layout() -> PathBuf {
    PathBuf::from(fixtures(&["path", "busybox"]).trim())
}

/// Runs a tool the fixtures install; fails (with what to do) when it is missing.
fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}; {SETUP}"));
    succeeded(&out, &format!("{program} {args:?}"));
}

/// `skopeo copy oci:<busybox fixture>:1.35 DEST`
fn skopeo_from_busybox(dest: &str) {
    let src = format!("oci:{}:1.35", busybox_layout().display());
    tool("skopeo", &["--insecure-policy", "copy", "-q", &src, dest]);
}

fn oci_archive(env: &Env) -> PathBuf {
    let file = env.dir.path().join("busybox.tar");
    skopeo_from_busybox(&format!("oci-archive:{}:1.35", file.display()));
    file
}

/// A plain HTTP registry holding the busybox fixture, and `HOST/busybox:1.35`.
fn busybox_registry() -> (Registry, String) {
    let registry = Registry::start(false, None);
    registry.push(&["busybox"]);
    let reference = format!("{}/busybox:1.35", registry.host);
    (registry, reference)
}

#[test]
fn plain_http_registry_pull_names_runs_and_repeats() {
    let (_registry, reference) = busybox_registry();
    let env = Env::new();

    let first = env.rcrun(&["pull", &reference]);
    let printed = succeeded(&first, "pull");
    assert_eq!(stderr(&first), "", "stderr is not a terminal: no progress");
    let image = only_image(&env);
    let id = image["id"].as_str().unwrap();
    assert_eq!(printed, format!("{id} {reference}\n"));
    assert_eq!(image["names"], serde_json::json!([reference]));
    let want = layout_layers(&busybox_layout(), "1.35");
    let got: Vec<&str> = image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(got, want, "the registry's layers, byte for byte");

    assert_eq!(env.ok(&["run", "--rm", &reference, "echo", "hi"]), "hi\n");

    assert_eq!(env.ok(&["pull", &reference]), printed, "a second pull");
    assert_eq!(env.images().len(), 1);
}

#[test]
fn tls_registry_with_basic_auth() {
    let registry = Registry::start(true, Some("rc:rcpass"));
    registry.push(&["busybox"]);
    let reference = format!("{}/busybox:1.35", registry.host);
    let certs = registry.certs();
    let certs = certs.to_str().unwrap();
    let layers = layout_layers(&busybox_layout(), "1.35");

    let env = Env::new();
    let pull = [
        "pull",
        "--cert-dir",
        certs,
        "--creds",
        "rc:rcpass",
        &reference,
    ];
    succeeded(
        &isolated(&env, &pull).output().unwrap(),
        "pull with --creds",
    );
    assert_eq!(only_image(&env)["names"][0], reference.as_str());
    assert_eq!(env.ok(&["run", "--rm", &reference, "echo", "hi"]), "hi\n");

    let env = Env::new();
    let wrong = [
        "pull",
        "--cert-dir",
        certs,
        "--creds",
        "rc:wrong",
        &reference,
    ];
    let out = isolated(&env, &wrong).output().unwrap();
    refused(&out, "wrong password", "authentication");
    nothing_kept(&env, &layers);

    let out = isolated(&env, &["pull", "--cert-dir", certs, &reference])
        .output()
        .unwrap();
    refused(&out, "no credentials", "credentials");
    nothing_kept(&env, &layers);

    // Without the CA: a TLS error that says what to do.
    let out = isolated(&env, &["pull", "--creds", "rc:rcpass", &reference])
        .output()
        .unwrap();
    refused(&out, "unknown CA", "--cert-dir");
    nothing_kept(&env, &layers);

    // An auth file, as podman login writes it ("cmM6cmNwYXNz" is base64 of rc:rcpass).
    let auth = |name: &str, encoded: &str| {
        let path = env.dir.path().join(name);
        let json = serde_json::json!({"auths": {registry.host.as_str(): {"auth": encoded}}});
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        path
    };
    // base64 of rc:nope
    let bad = auth("bad.json", "cmM6bm9wZQ==");
    let out = isolated(&env, &["pull", "--cert-dir", certs, &reference])
        .env("REGISTRY_AUTH_FILE", &bad)
        .output()
        .unwrap();
    refused(&out, "wrong auth file", &bad.display().to_string());
    nothing_kept(&env, &layers);
    let good = auth("auth.json", "cmM6cmNwYXNz");
    let out = isolated(&env, &["pull", "--cert-dir", certs, &reference])
        .env("REGISTRY_AUTH_FILE", &good)
        .output()
        .unwrap();
    succeeded(&out, "pull with REGISTRY_AUTH_FILE");
    assert_eq!(only_image(&env)["names"][0], reference.as_str());
}

#[test]
fn oci_archive_imports_and_runs() {
    let env = Env::new();
    let file = oci_archive(&env);
    let source = format!("oci-archive:{}:1.35", file.display());
    let name = "localhost/busybox:1.35";
    let printed = pull_and_run(&env, &source, name, name);
    assert!(printed.ends_with(&format!(" {name}\n")), "{printed}");
}

#[test]
fn docker_archives_are_named_from_their_repo_tags() {
    // skopeo writes the normalised name: it has a registry host and is kept.
    let env = Env::new();
    let file = env.dir.path().join("docker.tar");
    skopeo_from_busybox(&format!("docker-archive:{}:dockerbox:2.0", file.display()));
    let name = "docker.io/library/dockerbox:2.0";
    pull_and_run(
        &env,
        &format!("docker-archive:{}", file.display()),
        name,
        name,
    );

    // `docker save` writes a short name: it lands under localhost/.
    let unpacked = env.dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let (file_arg, unpacked_arg) = (file.to_str().unwrap(), unpacked.to_str().unwrap());
    tool("tar", &["-xf", file_arg, "-C", unpacked_arg]);
    let manifest = unpacked.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains(name), "{text}");
    // (written read-only)
    std::fs::remove_file(&manifest).unwrap();
    std::fs::write(&manifest, text.replace(name, "dockerbox:2.0")).unwrap();
    let saved = env.dir.path().join("saved.tar");
    let mut args = vec!["-cf".to_string(), saved.display().to_string()];
    args.extend(["-C".to_string(), unpacked.display().to_string()]);
    for entry in std::fs::read_dir(&unpacked).unwrap() {
        args.push(entry.unwrap().file_name().to_string_lossy().into_owned());
    }
    tool("tar", &args.iter().map(String::as_str).collect::<Vec<_>>());

    let env = Env::new();
    let source = format!("docker-archive:{}", saved.display());
    pull_and_run(&env, &source, "localhost/dockerbox:2.0", "dockerbox:2.0");
}

#[test]
fn a_truncated_archive_is_refused_and_nothing_kept() {
    let env = Env::new();
    let file = oci_archive(&env);
    let size = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let out = env.rcrun(&["pull", &format!("oci-archive:{}:1.35", file.display())]);
    refused(&out, "truncated archive", "truncated");
    nothing_kept(&env, &layout_layers(&busybox_layout(), "1.35"));
}

#[test]
fn a_tampered_layer_blob_is_refused_and_nothing_kept() {
    let env = Env::new();
    let layout = env.dir.path().join("layout");
    tool(
        "cp",
        &[
            "-r",
            busybox_layout().to_str().unwrap(),
            layout.to_str().unwrap(),
        ],
    );
    let layers = layout_layers(&layout, "1.35");
    let blob = layout
        .join("blobs/sha256")
        .join(layers[0].strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&blob, &bytes).unwrap();

    let out = env.rcrun(&["pull", &format!("oci:{}:1.35", layout.display())]);
    let err = refused(&out, "tampered blob", "does not match");
    assert!(err.contains(&layers[0]), "{err}");
    nothing_kept(&env, &layers);
}

#[test]
fn layers_escaping_their_root_are_refused_and_nothing_kept() {
    let mut layout = Layout::new();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("dotdot", tar_of(&[("../evil", b"outside")]), "../evil"),
        ("absolute", tar_of(&[("/evil", b"outside")]), "/evil"),
        (
            "hardlink-absolute",
            hardlink_tar("passwd", "/etc/passwd"),
            "passwd (hardlink to /etc/passwd)",
        ),
        (
            "hardlink-dotdot",
            hardlink_tar("passwd", "../../../../etc/passwd"),
            "passwd (hardlink to ../../../../etc/passwd)",
        ),
    ];
    for (tag, tar, _) in &cases {
        let desc = layout.image(std::slice::from_ref(tar), Compression::Gzip, "amd64");
        layout.tag(desc, tag);
    }
    let env = Env::new();
    for (tag, _, entry) in &cases {
        let reference = format!("oci:{}:{tag}", layout.path().display());
        let out = env.rcrun(&["pull", "--platform", "linux/amd64", &reference]);
        let err = refused(&out, tag, &format!("entry {entry:?}"));
        assert!(err.contains("rejected"), "{tag}: {err}");
        nothing_kept(&env, &layout_layers(layout.path(), tag));
    }
    assert!(!env.dir.path().join("evil").exists());
    assert!(!env.data().join("evil").exists());
    assert!(!Path::new("/evil").exists());
}

#[test]
fn unknown_tags_and_unreachable_registries() {
    let (registry, _) = busybox_registry();
    let env = Env::new();
    let missing = format!("{}/busybox:no-such-tag", registry.host);
    let out = env.rcrun(&["pull", &missing]);
    let err = refused(&out, "unknown tag", "not found");
    assert!(err.contains(&missing), "{err}");
    nothing_kept(&env, &[]);

    let host = format!("127.0.0.1:{}", free_port());
    let out = env.rcrun(&["pull", &format!("{host}/busybox:1.35")]);
    refused(&out, "nothing listening", &format!("cannot reach {host}"));
    nothing_kept(&env, &[]);
}

/// Quotes for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn progress_is_shown_per_layer_on_a_terminal_only() {
    let found = Command::new("sh")
        .args(["-c", "command -v script"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "script (util-linux) is not installed: {SETUP}");
    let (_registry, reference) = busybox_registry();
    let layers = layout_layers(&busybox_layout(), "1.35");

    let quiet = Env::new();
    let out = quiet.rcrun(&["pull", &reference]);
    succeeded(&out, "pull");
    assert_eq!(stderr(&out), "", "stderr is a pipe: no progress");

    let env = Env::new();
    let command = format!(
        "RCRUN_DATA_DIR={} {} pull {}",
        quote(env.data().to_str().unwrap()),
        quote(common::rcrun().to_str().unwrap()),
        quote(&reference)
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let shown = succeeded(&out, "pull under a pty");
    for layer in &layers {
        let short = &layer.strip_prefix("sha256:").unwrap()[..12];
        for phase in ["downloading ", "unpacking", "unpacked"] {
            assert!(
                shown.contains(&format!("{short}: {phase}")),
                "no {phase:?} line for {short} in {shown:?}"
            );
        }
    }
    assert!(shown.contains(" MB / "), "{shown:?}");
    assert_eq!(only_image(&env)["names"][0], reference.as_str());
}
