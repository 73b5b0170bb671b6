//! Resolving an image from any blob source (an OCI layout now, a registry later):
//! index → the manifest for our platform → config → layers, each blob verified into
//! the content store, each layer's uncompressed digest checked against the config.

use std::io::Read;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::{self, Compression};
use crate::store::ContentStore;

/// Where blobs come from.
pub trait BlobSource {
    /// How the source is named in errors (`oci:/path/layout`).
    fn name(&self) -> String;
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + '_>>;
}

/// An OS/architecture/variant triple such as `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform rcrun runs on.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.split('/').collect();
        let bad = || Error::Image {
            image: text.into(),
            reason: "is not a platform: use os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8"
                .into(),
        };
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(variant.to_string()),
                })
            }
            _ => Err(bad()),
        }
    }

    fn matches(&self, p: &oci_spec::image::Platform) -> bool {
        p.os().to_string() == self.os
            && p.architecture().to_string() == self.architecture
            && (self.variant.is_none() || p.variant() == &self.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
    pub diff_id: Digest,
}

/// An image whose blobs are all in the content store, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<LayerInfo>,
}

impl ImportedImage {
    pub fn chain_ids(&self) -> Vec<Digest> {
        layer::chain_ids(
            &self
                .layers
                .iter()
                .map(|l| l.diff_id.clone())
                .collect::<Vec<_>>(),
        )
    }
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

fn digest_of(desc: &Descriptor) -> Result<Digest> {
    Digest::try_from(desc.digest())
}

fn fetch(store: &ContentStore, source: &dyn BlobSource, desc: &Descriptor) -> Result<Digest> {
    let digest = digest_of(desc)?;
    if !store.contains(&digest) {
        let reader = source.open(&digest)?;
        store.ingest(reader, &digest, Some(desc.size()))?;
    }
    Ok(digest)
}

fn parse<T: for<'de> serde::Deserialize<'de>>(image: &str, what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Image {
        image: image.into(),
        reason: format!("malformed {what}: {e}"),
    })
}

/// The media type of a manifest-ish blob: its descriptor's, else its own field.
fn kind_of(desc: &Descriptor, bytes: &[u8]) -> String {
    let declared = desc.media_type().to_string();
    if INDEX_TYPES.contains(&declared.as_str()) || MANIFEST_TYPES.contains(&declared.as_str()) {
        return declared;
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_string(),
        None if v.get("manifests").is_some() => INDEX_TYPES[0].into(),
        None => MANIFEST_TYPES[0].into(),
    }
}

/// Resolves `root` (an index or a manifest) for `platform` and stores every blob.
pub fn import(
    store: &ContentStore,
    source: &dyn BlobSource,
    root: &Descriptor,
    platform: &Platform,
) -> Result<ImportedImage> {
    let image = source.name();
    let mut desc = root.clone();
    // An index may point at another index; real images nest at most once.
    for _ in 0..4 {
        let digest = fetch(store, source, &desc)?;
        let bytes = store.read_metadata(&digest)?;
        let kind = kind_of(&desc, &bytes);
        if INDEX_TYPES.contains(&kind.as_str()) {
            let index: ImageIndex = parse(&image, "image index", &bytes)?;
            desc = select_platform(&image, &index, platform)?;
            continue;
        }
        if !MANIFEST_TYPES.contains(&kind.as_str()) {
            return Err(Error::Image {
                image,
                reason: format!(
                    "{digest} has media type {kind}, which is not an image manifest or index"
                ),
            });
        }
        let manifest: ImageManifest = parse(&image, "image manifest", &bytes)?;
        return import_manifest(store, source, &image, digest, &manifest);
    }
    Err(Error::Image {
        image,
        reason: "image indexes nest too deeply".into(),
    })
}

fn select_platform(image: &str, index: &ImageIndex, platform: &Platform) -> Result<Descriptor> {
    let found = index
        .manifests()
        .iter()
        .find(|m| m.platform().as_ref().is_some_and(|p| platform.matches(p)));
    if let Some(m) = found {
        return Ok(m.clone());
    }
    let available: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|m| m.platform().as_ref())
        .map(|p| {
            let mut s = format!("{}/{}", p.os(), p.architecture());
            if let Some(v) = p.variant() {
                s.push('/');
                s.push_str(v);
            }
            s
        })
        .collect();
    Err(Error::Image {
        image: image.into(),
        reason: format!(
            "has no manifest for {platform} (it has: {}); choose one with --platform",
            if available.is_empty() {
                "none with a platform".to_string()
            } else {
                available.join(", ")
            }
        ),
    })
}

fn import_manifest(
    store: &ContentStore,
    source: &dyn BlobSource,
    image: &str,
    manifest_digest: Digest,
    manifest: &ImageManifest,
) -> Result<ImportedImage> {
    let config = fetch(store, source, manifest.config())?;
    let config_json: ImageConfiguration =
        parse(image, "image config", &store.read_metadata(&config)?)?;
    let diff_ids = config_json.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::Image {
            image: image.into(),
            reason: format!(
                "the manifest lists {} layers but the config has {} diff ids",
                manifest.layers().len(),
                diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let media_type = desc.media_type().to_string();
        let compression =
            Compression::from_media_type(&media_type).ok_or_else(|| Error::Image {
                image: image.into(),
                reason: format!(
                    "layer {} has media type {media_type}, which rcrun cannot unpack",
                    desc.digest()
                ),
            })?;
        let diff_id: Digest = diff_id.parse()?;
        let digest = fetch(store, source, desc)?;
        let summary = layer::scan(
            &digest.to_string(),
            compression.decompress(store.open_blob(&digest)?)?,
        )?;
        if summary.diff_id != diff_id {
            return Err(Error::Image {
                image: image.into(),
                reason: format!(
                    "layer {digest} unpacks to {}, but the config says its diff id is {diff_id}",
                    summary.diff_id
                ),
            });
        }
        layers.push(LayerInfo {
            digest,
            size: desc.size(),
            compression,
            diff_id,
        });
    }
    Ok(ImportedImage {
        manifest: manifest_digest,
        config,
        layers,
    })
}
