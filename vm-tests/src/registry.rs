//! Serves an OCI layout's images from a real registry in the guest: the layout is written
//! straight into the storage tree of the CNCF distribution registry (Debian's
//! `docker-registry`, filesystem driver), which the guest agent starts on 127.0.0.1:5000.
//! No push, no host port and no network device are needed.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cpio::Archive;

/// Adds `repo:TAG` for each tag of the layout at `layout` to the registry storage rooted
/// at `root` (the registry's `rootdirectory`) in `archive`.
pub fn add_repository<W: Write>(
    archive: &mut Archive<W>,
    root: &str,
    layout: &Path,
    repo: &str,
    tags: &[&str],
) -> Result<()> {
    let index: Value = read_json(&layout.join("index.json"))?;
    let v2 = format!("{}/docker/registry/v2", root.trim_end_matches('/'));
    let repo_dir = format!("{v2}/repositories/{repo}");
    let mut blobs_added = std::collections::HashSet::new();
    for tag in tags {
        let descriptor = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == *tag)
            .with_context(|| format!("{}: no tag {tag}", layout.display()))?;
        let digest = digest_of(descriptor)?;
        let link = format!("sha256:{digest}");
        archive.file(
            &format!("{repo_dir}/_manifests/tags/{tag}/current/link"),
            0o644,
            link.as_bytes(),
        )?;
        archive.file(
            &format!("{repo_dir}/_manifests/tags/{tag}/index/sha256/{digest}/link"),
            0o644,
            link.as_bytes(),
        )?;
        add_manifest(
            archive,
            &v2,
            &repo_dir,
            layout,
            descriptor,
            &mut blobs_added,
        )?;
    }
    Ok(())
}

/// A manifest (or index) blob, its revision link, and everything it points at.
fn add_manifest<W: Write>(
    archive: &mut Archive<W>,
    v2: &str,
    repo_dir: &str,
    layout: &Path,
    descriptor: &Value,
    added: &mut std::collections::HashSet<String>,
) -> Result<()> {
    let digest = digest_of(descriptor)?;
    let link = format!("sha256:{digest}");
    archive.file(
        &format!("{repo_dir}/_manifests/revisions/sha256/{digest}/link"),
        0o644,
        link.as_bytes(),
    )?;
    add_blob(archive, v2, layout, &digest, added)?;
    let manifest = read_json(&blob_path(layout, &digest))?;
    for child in manifest["manifests"].as_array().into_iter().flatten() {
        add_manifest(archive, v2, repo_dir, layout, child, added)?;
    }
    let config = manifest.get("config").into_iter();
    for blob in config.chain(manifest["layers"].as_array().into_iter().flatten()) {
        let digest = digest_of(blob)?;
        archive.file(
            &format!("{repo_dir}/_layers/sha256/{digest}/link"),
            0o644,
            format!("sha256:{digest}").as_bytes(),
        )?;
        add_blob(archive, v2, layout, &digest, added)?;
    }
    Ok(())
}

fn add_blob<W: Write>(
    archive: &mut Archive<W>,
    v2: &str,
    layout: &Path,
    digest: &str,
    added: &mut std::collections::HashSet<String>,
) -> Result<()> {
    if added.insert(digest.to_string()) {
        let path = blob_path(layout, digest);
        archive
            .file_from(
                &format!("{v2}/blobs/sha256/{}/{digest}/data", &digest[..2]),
                0o644,
                &path,
            )
            .with_context(|| format!("add blob {digest}"))?;
    }
    Ok(())
}

fn blob_path(layout: &Path, hex: &str) -> PathBuf {
    layout.join("blobs/sha256").join(hex)
}

/// The hex part of a descriptor's sha256 digest, checked (it becomes a path).
fn digest_of(descriptor: &Value) -> Result<String> {
    let digest = descriptor["digest"]
        .as_str()
        .context("a descriptor without a digest")?;
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(hex.to_string())
        }
        _ => bail!("a descriptor with a digest that is not sha256: {digest}"),
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))
}
