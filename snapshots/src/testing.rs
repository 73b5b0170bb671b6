//! Builders for OCI layouts and layer tars, for tests here and in rcrun (feature
//! `testing`). They write bytes directly, so tests can also make hostile images.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::digest::Digest;
use crate::layer::Compression;
use crate::registry::Reference;

/// A tar of regular files; names are written raw ('..' and absolute names too).
pub fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses '..' and absolute paths: write the raw name, as a hostile tool would.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A tar with one hardlink entry, its target written raw.
pub fn hardlink_tar(name: &str, target: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    let raw = target.as_bytes();
    h.as_old_mut().linkname[..raw.len()].copy_from_slice(raw);
    h.set_path(name).unwrap();
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    b.into_inner().unwrap()
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

pub fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// An OCI image layout in a temporary directory.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub manifests: Vec<serde_json::Value>,
}

impl Layout {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        Layout {
            dir,
            manifests: vec![],
        }
    }

    pub fn blob(&self, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        std::fs::write(self.path().join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Adds an image of the given layer tars; returns the manifest descriptor.
    pub fn image(&self, layers: &[Vec<u8>], c: Compression, arch: &str) -> serde_json::Value {
        let diff_ids: Vec<String> = layers.iter().map(|t| Digest::of(t).to_string()).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        }))
        .unwrap();
        let config_digest = self.blob(&config);
        let layer_descs: Vec<_> = layers
            .iter()
            .map(|t| {
                let blob = compress(t, c);
                json!({"mediaType": media_type(c), "digest": self.blob(&blob).to_string(), "size": blob.len()})
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
            "layers": layer_descs
        }))
        .unwrap();
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.blob(&manifest).to_string(),
            "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}
        })
    }

    pub fn tag(&mut self, mut desc: serde_json::Value, tag: &str) {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.manifests.push(desc);
        self.write_index();
    }

    pub fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "manifests": self.manifests});
        std::fs::write(
            self.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

/// A layer tar under construction, written through the tar crate like real tools;
/// entries belong to uid 1234, gid 4321 unless [`Layer::owner`] says otherwise.
pub struct Layer(tar::Builder<Vec<u8>>, (u32, u32));

#[allow(clippy::new_without_default)]
impl Layer {
    pub fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()), (1234, 4321))
    }

    /// The owner of the entries added next.
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.1 = (uid, gid);
        self
    }

    fn header(&self, kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(self.1.0 as u64);
        h.set_gid(self.1.1 as u64);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut h = self.header(tar::EntryType::Directory, 0o755);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let mut h = self.header(tar::EntryType::Regular, mode);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = self.header(kind, 0o777);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.link(tar::EntryType::Symlink, path, target)
    }

    pub fn special(mut self, kind: tar::EntryType, path: &str) -> Self {
        let mut h = self.header(kind, 0o666);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn xattr_file(mut self, path: &str, attr: &str, value: &[u8]) -> Self {
        self.0
            .append_pax_extensions([(format!("SCHILY.xattr.{attr}").as_str(), value)])
            .unwrap();
        self.file(path, b"with xattr", 0o644)
    }

    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// The manifest that `tag` names in the index of an OCI layout: its digest and JSON.
pub fn layout_manifest(layout: &Path, tag: &str) -> (Digest, serde_json::Value) {
    let read = |path: &Path| -> serde_json::Value {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).unwrap()
    };
    let index = read(&layout.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("{} has no tag {tag}", layout.display()));
    let digest: Digest = desc["digest"].as_str().unwrap().parse().unwrap();
    let manifest = read(&layout.join("blobs/sha256").join(digest.hex()));
    (digest, manifest)
}

/// What to do when a registry or fixture is missing: tests fail with this, never skip.
pub const SETUP: &str = "run `sudo scripts/setup` (it installs docker-registry and builds the \
                         fixture images; CI does this)";

/// The checkout: the first ancestor of `$CARGO_MANIFEST_DIR` (set by cargo, and by
/// scripts/test when tests run as another user) with scripts/fixtures, else the one
/// this crate was built in.
pub fn repo_root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::env::var_os("CARGO_MANIFEST_DIR")
        .and_then(|dir| {
            Path::new(&dir)
                .ancestors()
                .find(|d| d.join("scripts/fixtures").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| built.to_path_buf())
}

/// Runs `scripts/fixtures ARGS`, returning its stdout; fails the test with its stderr.
pub fn fixtures(args: &[&str]) -> String {
    let out = Command::new(repo_root().join("scripts/fixtures"))
        .args(args)
        .output()
        .expect("run scripts/fixtures");
    assert!(
        out.status.success(),
        "scripts/fixtures {} failed: {}\n{SETUP}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A port nothing listened on a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Debian's docker-registry on 127.0.0.1, started by `scripts/fixtures registry start`
/// in a temporary directory and stopped (by its recorded pid) when dropped.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub host: String,
    state: PathBuf,
    tls: bool,
    auth: Option<String>,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free port: `tls` makes a CA in [`Registry::certs`],
    /// `auth` (USER:PASS) turns on basic auth. Fails the test if it cannot.
    pub fn start(tls: bool, auth: Option<&str>) -> Self {
        let found = Command::new("sh")
            .args(["-c", "command -v docker-registry"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "docker-registry is not installed: {SETUP}");
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("registry");
        let state_arg = state.to_str().unwrap();
        // The port is free when chosen; another process may take it before the
        // registry binds it, so try a few.
        for _ in 0..5 {
            let port = free_port().to_string();
            let mut args = vec!["registry", "start", state_arg, "--port", &port];
            if tls {
                args.push("--tls");
            }
            if let Some(auth) = auth {
                args.extend(["--auth", auth]);
            }
            let out = Command::new(repo_root().join("scripts/fixtures"))
                .args(&args)
                .output()
                .unwrap();
            if out.status.success() {
                return Registry {
                    host: format!("127.0.0.1:{port}"),
                    state,
                    tls,
                    auth: auth.map(str::to_string),
                    _dir: dir,
                };
            }
            eprintln!(
                "registry start on port {port} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("the registry did not start; {SETUP}");
    }

    /// The directory holding the registry's CA certificate (`ca.crt`), for `--cert-dir`.
    pub fn certs(&self) -> PathBuf {
        self.state.join("certs")
    }

    /// Pushes every tag of the fixture images `names`, byte for byte, with this
    /// registry's CA and credentials.
    pub fn push(&self, names: &[&str]) {
        let certs = self.certs();
        let mut args = vec!["push", self.host.as_str()];
        if self.tls {
            args.extend(["--cert-dir", certs.to_str().unwrap()]);
        }
        if let Some(auth) = &self.auth {
            args.extend(["--creds", auth.as_str()]);
        }
        args.extend(names);
        fixtures(&args);
    }

    /// `HOST/rest`
    pub fn reference(&self, rest: &str) -> Reference {
        Reference::parse(&format!("{}/{rest}", self.host)).unwrap()
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_file(&self, digest: &Digest) -> PathBuf {
        self.state
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex())
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Stops the pid recorded in the state dir: the registry this test started.
        let _ = Command::new(repo_root().join("scripts/fixtures"))
            .args(["registry", "stop", self.state.to_str().unwrap()])
            .output();
    }
}
