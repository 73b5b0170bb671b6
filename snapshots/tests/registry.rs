//! Pulls from a real registry (Debian's docker-registry) on 127.0.0.1, filled with the
//! fixture images byte for byte by `scripts/fixtures push`. Each test starts its own
//! registry on a free port in a temporary directory and stops it when done.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use snapshots::testing::{Registry, fixtures, free_port, layout_manifest};
use snapshots::{
    Compression, ContentStore, Credentials, Digest, Error, LayerInfo, NoProgress, Platform,
    Progress, PullOptions, PulledImage, Reference, pull,
};

fn layout_path(name: &str) -> PathBuf {
    PathBuf::from(fixtures(&["path", name]).trim())
}

/// A fixture image as its layout holds it.
struct Expected {
    manifest: Digest,
    config: Digest,
    layers: Vec<Digest>,
}

fn expected(name: &str, tag: &str) -> Expected {
    let (manifest, json) = layout_manifest(&layout_path(name), tag);
    let digest = |v: &serde_json::Value| v["digest"].as_str().unwrap().parse().unwrap();
    Expected {
        manifest,
        config: digest(&json["config"]),
        layers: json["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(digest)
            .collect(),
    }
}

fn options() -> PullOptions {
    PullOptions {
        platform: Platform::parse("linux/amd64").unwrap(),
        auth_files: vec![],
        ..PullOptions::default()
    }
}

fn new_store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    (dir, store)
}

#[derive(Default)]
struct Counted {
    fetched_bytes: AtomicU64,
    outcomes: Mutex<Vec<(Digest, bool)>>,
}

impl Progress for Counted {
    fn advance(&self, _digest: &Digest, bytes: u64) {
        self.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn done(&self, digest: &Digest, reused: bool) {
        self.outcomes.lock().unwrap().push((digest.clone(), reused));
    }
}

/// Pulls, checking that layers reach the caller in order and already stored.
fn pull_in_order(
    store: &ContentStore,
    reference: &Reference,
    options: &PullOptions,
    progress: &dyn Progress,
) -> Result<PulledImage, Error> {
    let mut seen: Vec<LayerInfo> = Vec::new();
    let pulled = pull(store, reference, options, progress, &mut |k, layer| {
        assert_eq!(k, seen.len(), "layer {k} out of order");
        assert!(
            store.contains(&layer.digest),
            "layer {k} handed over unstored"
        );
        seen.push(layer.clone());
        Ok(())
    })?;
    assert_eq!(seen, pulled.image.layers);
    Ok(pulled)
}

fn assert_matches_layout(store: &ContentStore, pulled: &PulledImage, want: &Expected) {
    let image = &pulled.image;
    assert_eq!(image.manifest, want.manifest);
    assert_eq!(image.config, want.config);
    let layers: Vec<Digest> = image.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layers, want.layers);
    for d in std::iter::once(&image.manifest)
        .chain([&image.config])
        .chain(&layers)
    {
        assert!(store.contains(d), "{d} is not in the store");
    }
}

#[test]
fn anonymous_http_pulls_keep_every_digest_and_reuse_the_store() {
    let registry = Registry::start(false, None);
    registry.push(&["busybox", "layers"]);
    let (_d, store) = new_store();
    for (name, tag, compression) in [
        ("busybox", "1.35", Compression::Gzip),
        ("layers", "zstd", Compression::Zstd),
        ("layers", "plain", Compression::None),
    ] {
        let reference = registry.reference(&format!("{name}:{tag}"));
        let pulled = pull_in_order(&store, &reference, &options(), &NoProgress)
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        let want = expected(name, tag);
        assert_matches_layout(&store, &pulled, &want);
        assert_eq!(pulled.repo_digest, want.manifest, "no index: the manifest");
        assert!(
            pulled
                .image
                .layers
                .iter()
                .all(|l| l.compression == compression)
        );
    }

    // Everything is in the store: the layers are verified again but not fetched.
    let busybox = registry.reference("busybox:1.35");
    let again = Counted::default();
    let pulled = pull_in_order(&store, &busybox, &options(), &again).unwrap();
    assert_eq!(again.fetched_bytes.load(Ordering::Relaxed), 0);
    let outcomes = again.outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len(), pulled.image.layers.len());
    assert!(outcomes.iter().all(|(_, reused)| *reused), "{outcomes:?}");

    // By digest, into a fresh store: fetched, and the same image.
    let want = expected("busybox", "1.35");
    let (_d2, fresh) = new_store();
    let counted = Counted::default();
    let by_digest = registry.reference(&format!("busybox@{}", want.manifest));
    let pulled = pull_in_order(&fresh, &by_digest, &options(), &counted).unwrap();
    assert_matches_layout(&fresh, &pulled, &want);
    let layer_bytes: u64 = pulled.image.layers.iter().map(|l| l.size).sum();
    assert_eq!(counted.fetched_bytes.load(Ordering::Relaxed), layer_bytes);

    // The caller stops the pull from its layer callback.
    let (_d3, other) = new_store();
    let stop = registry.reference("layers:gzip");
    let err = pull(&other, &stop, &options(), &NoProgress, &mut |k, _| {
        Err(Error::Image {
            image: "caller".into(),
            reason: format!("stopped at layer {k}"),
        })
    })
    .unwrap_err();
    assert!(err.to_string().contains("stopped at layer 0"), "{err}");
}

#[test]
fn unknown_tags_repositories_and_digests_are_not_found() {
    let registry = Registry::start(false, None);
    registry.push(&["busybox"]);
    let (_d, store) = new_store();
    let missing = Digest::of(b"no such manifest");
    for rest in [
        "busybox:no-such-tag".to_string(),
        "nosuchrepo:1.35".to_string(),
        format!("busybox@{missing}"),
    ] {
        let reference = registry.reference(&rest);
        let err = pull(&store, &reference, &options(), &NoProgress, &mut |_, _| {
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(err, Error::ManifestUnknown { .. }),
            "{rest}: {err}"
        );
        let msg = err.to_string();
        let shown = format!("{}/{rest}", registry.host);
        assert!(
            msg.contains(&shown) && msg.contains(&format!("not found in {}", registry.host)),
            "{msg}"
        );
    }
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn an_index_is_resolved_for_the_requested_platform() {
    let registry = Registry::start(false, None);
    registry.push(&["layers"]);
    let (gzip, zstd) = (expected("layers", "gzip"), expected("layers", "zstd"));
    let entry = |want: &Expected, arch: &str| {
        let path = layout_path("layers")
            .join("blobs/sha256")
            .join(want.manifest.hex());
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": want.manifest.to_string(),
            "size": std::fs::metadata(path).unwrap().len(),
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&gzip, "amd64"), entry(&zstd, "arm64")],
    }))
    .unwrap();
    let url = format!("http://{}/v2/layers/manifests/multi", registry.host);
    let response = ureq::put(&url)
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .send(&index[..])
        .unwrap_or_else(|e| panic!("push the index: {e}"));
    assert_eq!(response.status(), 201);

    let (_d, store) = new_store();
    let multi = registry.reference("layers:multi");
    let arm64 = PullOptions {
        platform: Platform::parse("linux/arm64").unwrap(),
        ..options()
    };
    let pulled = pull_in_order(&store, &multi, &arm64, &NoProgress).unwrap();
    assert_matches_layout(&store, &pulled, &zstd);
    assert_eq!(pulled.repo_digest, Digest::of(&index));
    let pulled = pull_in_order(&store, &multi, &options(), &NoProgress).unwrap();
    assert_matches_layout(&store, &pulled, &gzip);

    let s390x = PullOptions {
        platform: Platform::parse("linux/s390x").unwrap(),
        ..options()
    };
    let err = pull(&store, &multi, &s390x, &NoProgress, &mut |_, _| Ok(())).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/amd64, linux/arm64"),
        "{msg}"
    );
}

#[test]
fn tls_with_basic_auth() {
    let registry = Registry::start(true, Some("rc:rcpass"));
    let certs = registry.certs();
    registry.push(&["busybox"]);
    let busybox = registry.reference("busybox:1.35");
    let want = expected("busybox", "1.35");
    let secure = |creds: Option<&str>| PullOptions {
        cert_dir: Some(certs.clone()),
        creds: creds.map(|c| Credentials::parse(c).unwrap()),
        ..options()
    };
    let try_pull = |options: &PullOptions| {
        let (dir, store) = new_store();
        let result = pull_in_order(&store, &busybox, options, &NoProgress);
        if let Ok(pulled) = &result {
            assert_matches_layout(&store, pulled, &want);
        } else {
            assert!(store.list().unwrap().is_empty(), "a failed pull kept blobs");
        }
        drop(dir);
        result
    };

    try_pull(&secure(Some("rc:rcpass"))).unwrap();

    let err = try_pull(&secure(Some("rc:wrong"))).unwrap_err();
    assert!(matches!(err, Error::AuthFailed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("authentication to {} failed", registry.host))
            && msg.contains("--creds"),
        "{msg}"
    );

    let err = try_pull(&secure(None)).unwrap_err();
    assert!(matches!(err, Error::AuthRequired { .. }), "{err}");
    assert!(err.to_string().contains("--creds USER:PASS"), "{err}");

    // Credentials from an auth file, found by host; a wrong one names the file.
    let auth_dir = tempfile::tempdir().unwrap();
    let auth_file = |user_pass: &str| {
        use base64::Engine as _;
        let path = auth_dir
            .path()
            .join(format!("{}.json", user_pass.replace(':', "-")));
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_pass);
        let json = serde_json::json!({"auths": {registry.host.clone(): {"auth": encoded}}});
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        path
    };
    let good = auth_file("rc:rcpass");
    try_pull(&PullOptions {
        auth_files: vec![auth_dir.path().join("absent.json"), good],
        ..secure(None)
    })
    .unwrap();
    let bad = auth_file("rc:nope");
    let err = try_pull(&PullOptions {
        auth_files: vec![bad.clone()],
        ..secure(None)
    })
    .unwrap_err();
    assert!(
        err.to_string().contains(&bad.display().to_string()),
        "{err}"
    );

    // Without the CA: a TLS error that says what to do, and no fall back to HTTP.
    let err = try_pull(&PullOptions {
        cert_dir: None,
        ..secure(Some("rc:rcpass"))
    })
    .unwrap_err();
    assert!(matches!(err, Error::RegistryTls { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("--cert-dir") && msg.contains("--tls-verify=false"),
        "{msg}"
    );

    try_pull(&PullOptions {
        cert_dir: None,
        tls_verify: false,
        ..secure(Some("rc:rcpass"))
    })
    .unwrap();
}

#[test]
fn a_tampered_blob_or_manifest_is_rejected_and_nothing_kept() {
    let registry = Registry::start(false, None);
    registry.push(&["busybox"]);
    let want = expected("busybox", "1.35");
    let layer = &want.layers[0];
    let file = registry.blob_file(layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let (dir, store) = new_store();
    let busybox = registry.reference("busybox:1.35");
    let err = pull(
        &store,
        &busybox,
        &options(),
        &NoProgress,
        &mut |_, _| Ok(()),
    )
    .unwrap_err();
    match &err {
        Error::DigestMismatch { expected, .. } => assert_eq!(expected, layer),
        other => panic!("wanted a digest mismatch, got {other}"),
    }
    assert!(!store.contains(layer));
    let left = std::fs::read_dir(dir.path().join("ingest"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "temporary files left behind");

    // A manifest that does not hash to the digest it was pulled by.
    let manifest = registry.blob_file(&want.manifest);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let config_hex = want.config.hex();
    let flipped = if config_hex.starts_with('0') {
        "1"
    } else {
        "0"
    };
    let tampered = text.replace(config_hex, &format!("{flipped}{}", &config_hex[1..]));
    assert_ne!(text, tampered);
    std::fs::write(&manifest, tampered).unwrap();
    let (_d, fresh) = new_store();
    let by_digest = registry.reference(&format!("busybox@{}", want.manifest));
    let err = pull(&fresh, &by_digest, &options(), &NoProgress, &mut |_, _| {
        Ok(())
    })
    .unwrap_err();
    match &err {
        Error::DigestMismatch { expected, .. } => assert_eq!(expected, &want.manifest),
        other => panic!("wanted a digest mismatch, got {other}"),
    }
    assert!(fresh.list().unwrap().is_empty());
}

#[test]
fn an_unreachable_registry_is_named_with_its_url() {
    let port = free_port();
    let (_d, store) = new_store();
    let quick = PullOptions {
        connect_timeout: std::time::Duration::from_secs(5),
        ..options()
    };
    let reference = Reference::parse(&format!("127.0.0.1:{port}/busybox:1.35")).unwrap();
    let err = pull(&store, &reference, &quick, &NoProgress, &mut |_, _| Ok(())).unwrap_err();
    assert!(matches!(err, Error::RegistryUnreachable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "cannot reach 127.0.0.1:{port} at https://127.0.0.1:{port}"
        )),
        "{msg}"
    );
    // A name that never resolves (RFC 6761).
    let reference = Reference::parse("registry.invalid/app:1").unwrap();
    let err = pull(&store, &reference, &quick, &NoProgress, &mut |_, _| Ok(())).unwrap_err();
    assert!(matches!(err, Error::RegistryUnreachable { .. }), "{err}");
    assert!(
        err.to_string().contains("cannot reach registry.invalid"),
        "{err}"
    );
}
