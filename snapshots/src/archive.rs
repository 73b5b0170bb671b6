//! Single-file image archives: `oci-archive:FILE[:TAG]` (a tarred OCI layout) and
//! `docker-archive:FILE[:NAME:TAG]` (what `docker save`/`podman save` write). Both are
//! read front to back twice: metadata first, then the blobs, straight into the store.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex};
use serde::Deserialize;
use serde_json::json;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{self, BlobSource, ImportedImage, Platform};
use crate::layer::{self, Compression};
use crate::store::{ContentStore, MAX_METADATA_BYTES};

fn archive_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Layout {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Blobs already in the content store, named after the archive in errors.
struct StoreSource<'a> {
    store: &'a ContentStore,
    name: String,
}

impl BlobSource for StoreSource<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.store.open_blob(digest).map_err(|_| {
            Error::Image {
                image: self.name.clone(),
                reason: format!("blob {digest} is missing from the archive"),
            }
        })?))
    }
}

/// Calls `visit` with each entry's normalised path; symlinks are reported through
/// `links` (name -> target, relative to the archive root).
fn walk(
    path: &Path,
    mut visit: impl FnMut(&Path, &mut dyn Read) -> Result<()>,
    mut links: Option<&mut HashMap<PathBuf, PathBuf>>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| archive_error(path, format!("cannot open: {e}")))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries()
        .map_err(|e| archive_error(path, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| archive_error(path, format!("truncated or corrupt: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| archive_error(path, format!("bad entry name: {e}")))?
            .into_owned();
        let name = layer::relative_inside(&raw).map_err(|reason| Error::UnsafeEntry {
            layer: path.display().to_string(),
            entry: raw.display().to_string(),
            reason,
        })?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => visit(&name, &mut entry)?,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Some(links) = links.as_deref_mut() {
                    let target = entry
                        .link_name()
                        .map_err(|e| {
                            archive_error(path, format!("bad link in {}: {e}", name.display()))
                        })?
                        .unwrap_or_default();
                    // Symlinks are relative to their directory, hardlinks to the root.
                    let base = if entry.header().entry_type().is_symlink() {
                        name.parent().unwrap_or(Path::new("")).join(&target)
                    } else {
                        target.into_owned()
                    };
                    let mut folded = PathBuf::new();
                    for c in base.components() {
                        match c {
                            std::path::Component::Normal(n) => folded.push(n),
                            std::path::Component::ParentDir if folded.pop() => {}
                            std::path::Component::CurDir => {}
                            _ => {
                                return Err(Error::UnsafeEntry {
                                    layer: path.display().to_string(),
                                    entry: name.display().to_string(),
                                    reason: "links outside the archive",
                                });
                            }
                        }
                    }
                    links.insert(name, folded);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn read_small(path: &Path, name: &Path, reader: &mut dyn Read) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| archive_error(path, format!("read {}: {e}", name.display())))?;
    if out.len() as u64 > MAX_METADATA_BYTES {
        return Err(archive_error(
            path,
            format!("{} is too large", name.display()),
        ));
    }
    Ok(out)
}

/// Imports `oci-archive:FILE[:TAG]`.
pub fn import_oci_archive(
    store: &ContentStore,
    path: &Path,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<ImportedImage> {
    let mut index_bytes = None;
    let mut has_marker = false;
    walk(
        path,
        |name, r| {
            if name == Path::new("index.json") {
                index_bytes = Some(read_small(path, name, r)?);
            } else if name == Path::new("oci-layout") {
                has_marker = true;
            }
            Ok(())
        },
        None,
    )?;
    let (true, Some(index_bytes)) = (has_marker, index_bytes) else {
        return Err(archive_error(
            path,
            "is not an oci-archive (no oci-layout and index.json)",
        ));
    };
    let index: ImageIndex = serde_json::from_slice(&index_bytes)
        .map_err(|e| archive_error(path, format!("malformed index.json: {e}")))?;
    let root =
        crate::layout::pick_tagged(&index, tag).map_err(|reason| archive_error(path, reason))?;
    walk(
        path,
        |name, r| {
            if let Ok(rest) = name.strip_prefix("blobs/sha256")
                && let Ok(digest) = format!("sha256:{}", rest.display()).parse::<Digest>()
            {
                store.ingest(r, &digest, None)?;
            }
            Ok(())
        },
        None,
    )?;
    let source = StoreSource {
        store,
        name: format!("oci-archive:{}", path.display()),
    };
    image::import(store, &source, &root, platform)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: PathBuf,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<PathBuf>,
}

/// The entries of a docker archive's manifest.json (and its symlinks, if asked).
fn docker_entries(
    path: &Path,
    links: Option<&mut HashMap<PathBuf, PathBuf>>,
) -> Result<Vec<DockerEntry>> {
    let mut manifest_bytes = None;
    walk(
        path,
        |name, r| {
            if name == Path::new("manifest.json") {
                manifest_bytes = Some(read_small(path, name, r)?);
            }
            Ok(())
        },
        links,
    )?;
    let bytes = manifest_bytes
        .ok_or_else(|| archive_error(path, "is not a docker-archive (no manifest.json)"))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| archive_error(path, format!("malformed manifest.json: {e}")))
}

/// The names (`RepoTags`) of the images in a docker archive, in its order.
pub fn docker_archive_tags(path: &Path) -> Result<Vec<String>> {
    Ok(docker_entries(path, None)?
        .into_iter()
        .flat_map(|e| e.repo_tags.unwrap_or_default())
        .collect())
}

/// Imports `docker-archive:FILE[:NAME:TAG]`.
pub fn import_docker_archive(
    store: &ContentStore,
    path: &Path,
    reference: Option<&str>,
    platform: &Platform,
) -> Result<ImportedImage> {
    let mut links = HashMap::new();
    let entries = docker_entries(path, Some(&mut links))?;
    let tags = |e: &DockerEntry| e.repo_tags.clone().unwrap_or_default();
    let entry = match reference {
        Some(r) => entries.iter().find(|e| {
            tags(e)
                .iter()
                .any(|t| t == r || t.strip_suffix(":latest") == Some(r))
        }),
        None if entries.len() == 1 => entries.first(),
        None => None,
    }
    .ok_or_else(|| {
        let all: Vec<String> = entries.iter().flat_map(tags).collect();
        archive_error(
            path,
            format!(
                "has no image {} (it has: {})",
                reference.map_or("without a name".to_string(), |r| format!("named {r:?}")),
                if all.is_empty() {
                    "untagged images".into()
                } else {
                    all.join(", ")
                }
            ),
        )
    })?;
    // Resolve docker's symlinked duplicate layers to the files holding the bytes.
    let resolve = |p: &Path| -> PathBuf {
        let mut p = layer::relative_inside(p).unwrap_or_default();
        for _ in 0..8 {
            match links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        p
    };
    let wanted: Vec<PathBuf> = std::iter::once(&entry.config)
        .chain(&entry.layers)
        .map(|p| resolve(p))
        .collect();
    let mut stored: HashMap<PathBuf, (Digest, u64, Compression)> = HashMap::new();
    walk(
        path,
        |name, r| {
            if wanted.iter().any(|w| w == name) && !stored.contains_key(name) {
                let mut head = [0u8; 4];
                let n = r
                    .read(&mut head)
                    .map_err(|e| Error::io(format!("read {}", name.display()), e))?;
                let (digest, size) = store.ingest_unverified((&head[..n]).chain(r))?;
                stored.insert(
                    name.to_path_buf(),
                    (digest, size, Compression::sniff(&head[..n])),
                );
            }
            Ok(())
        },
        None,
    )?;
    let blob = |p: &PathBuf| {
        stored.get(p).cloned().ok_or_else(|| {
            archive_error(
                path,
                format!(
                    "manifest.json names {}, which the archive lacks",
                    p.display()
                ),
            )
        })
    };
    let (config_digest, config_size, _) = blob(&wanted[0])?;
    let layers = wanted[1..]
        .iter()
        .map(|p| {
            let (digest, size, compression) = blob(p)?;
            let media_type = match compression {
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            };
            Ok(json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}))
        })
        .collect::<Result<Vec<_>>>()?;
    // docker-archives carry no manifest: write the one they imply.
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_size},
        "layers": layers,
    }))
    .expect("manifest serialises");
    let manifest_digest = store.put(&manifest)?;
    let root: Descriptor = serde_json::from_value(json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest.to_string(),
        "size": manifest.len(),
    }))
    .expect("descriptor is valid");
    let source = StoreSource {
        store,
        name: format!("docker-archive:{}", path.display()),
    };
    image::import(store, &source, &root, platform)
}
