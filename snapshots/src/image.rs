//! Resolving an image from any blob source (an OCI layout, an archive, a registry):
//! index → the manifest for our platform → config → layers, each blob verified into
//! the content store, each layer's uncompressed digest checked against the config.
//! Layers are fetched by a few threads at once and handed to the caller in order.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::{self, Compression};
use crate::store::ContentStore;

/// Where blobs come from. Layers are fetched from several threads at once.
pub trait BlobSource: Sync {
    /// How the source is named in errors (`oci:/path/layout`).
    fn name(&self) -> String;
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + '_>>;
    /// Opens a manifest or index named by an index; registries serve them apart.
    fn open_manifest(&self, digest: &Digest) -> Result<Box<dyn Read + '_>> {
        self.open(digest)
    }
}

/// Told about each layer of an image as it is fetched; called from worker threads.
pub trait Progress: Send + Sync {
    /// Work on a layer of `total` bytes begins.
    fn start(&self, _digest: &Digest, _total: u64) {}
    /// `bytes` more of it came from the source (never called for a reused layer).
    fn advance(&self, _digest: &Digest, _bytes: u64) {}
    /// The layer is stored and verified; `reused`: it was in the store already.
    fn done(&self, _digest: &Digest, _reused: bool) {}
}

/// Progress that nobody watches.
pub struct NoProgress;

impl Progress for NoProgress {}

/// Layers fetched at once, unless the caller says otherwise.
pub const DEFAULT_JOBS: usize = 4;

/// How layers are fetched and who hears about them.
pub(crate) struct LayerFetch<'a> {
    pub jobs: usize,
    pub progress: &'a dyn Progress,
    /// Called on the calling thread, in layer order, once the layer and every layer
    /// below it are verified; an error stops the import.
    pub on_layer: &'a mut dyn FnMut(usize, &LayerInfo) -> Result<()>,
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

pub(crate) const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
pub(crate) const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

fn digest_of(desc: &Descriptor) -> Result<Digest> {
    Digest::try_from(desc.digest())
}

/// Stores the blob `desc` names unless the store has it; `open` reads it from the source.
fn fetch<'s>(
    store: &ContentStore,
    desc: &Descriptor,
    open: impl FnOnce(&Digest) -> Result<Box<dyn Read + 's>>,
) -> Result<Digest> {
    let digest = digest_of(desc)?;
    if !store.contains(&digest) {
        store.ingest(open(&digest)?, &digest, Some(desc.size()))?;
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
    let fetch = LayerFetch {
        jobs: DEFAULT_JOBS,
        progress: &NoProgress,
        on_layer: &mut |_, _| Ok(()),
    };
    import_with(store, source, root, platform, fetch)
}

/// [`import`], with the layer fetching under the caller's control.
pub(crate) fn import_with(
    store: &ContentStore,
    source: &dyn BlobSource,
    root: &Descriptor,
    platform: &Platform,
    layers: LayerFetch<'_>,
) -> Result<ImportedImage> {
    let image = source.name();
    let mut desc = root.clone();
    // An index may point at another index; real images nest at most once.
    for _ in 0..4 {
        let digest = fetch(store, &desc, |d| source.open_manifest(d))?;
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
        return import_manifest(store, source, &image, digest, &manifest, layers);
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
    fetch_layers: LayerFetch<'_>,
) -> Result<ImportedImage> {
    let config = fetch(store, manifest.config(), |d| source.open(d))?;
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
    // Check every layer before fetching any.
    let planned = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(desc, diff_id)| {
            let media_type = desc.media_type().to_string();
            let compression =
                Compression::from_media_type(&media_type).ok_or_else(|| Error::Image {
                    image: image.into(),
                    reason: format!(
                        "layer {} has media type {media_type}, which rcrun cannot unpack",
                        desc.digest()
                    ),
                })?;
            Ok(LayerInfo {
                digest: digest_of(desc)?,
                size: desc.size(),
                compression,
                diff_id: diff_id.parse()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let layers = fetch_all(store, source, image, &planned, fetch_layers)?;
    Ok(ImportedImage {
        manifest: manifest_digest,
        config,
        layers,
    })
}

/// Fetches `planned` layers on up to `jobs` threads, earliest first, and reports each
/// to `on_layer` in order as soon as it and all below it are verified. The first
/// error stops the workers (a download in flight ends at its next read).
fn fetch_all(
    store: &ContentStore,
    source: &dyn BlobSource,
    image: &str,
    planned: &[LayerInfo],
    fetch: LayerFetch<'_>,
) -> Result<Vec<LayerInfo>> {
    let LayerFetch {
        jobs,
        progress,
        on_layer,
    } = fetch;
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..jobs.clamp(1, planned.len().max(1)) {
            let tx = tx.clone();
            let (next, abort) = (&next, &abort);
            scope.spawn(move || {
                while !abort.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(layer) = planned.get(k) else { break };
                    let result = fetch_layer(store, source, image, layer, progress, abort);
                    let failed = result.is_err();
                    if tx.send((k, result)).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut verified: Vec<Option<LayerInfo>> = vec![None; planned.len()];
        let mut reported = 0;
        let mut deliver = || -> Result<()> {
            for (k, result) in &rx {
                verified[k] = Some(result?);
                while let Some(Some(layer)) = verified.get(reported) {
                    on_layer(reported, layer)?;
                    reported += 1;
                }
            }
            Ok(())
        };
        let delivered = deliver();
        if delivered.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        delivered?;
        // Workers only stop early after sending an error, so every layer is here.
        Ok(verified.into_iter().flatten().collect())
    })
}

/// Stores one layer (unless present) while scanning it, and checks its diff id.
fn fetch_layer(
    store: &ContentStore,
    source: &dyn BlobSource,
    image: &str,
    layer: &LayerInfo,
    progress: &dyn Progress,
    abort: &AtomicBool,
) -> Result<LayerInfo> {
    let digest = &layer.digest;
    progress.start(digest, layer.size);
    let name = digest.to_string();
    let scan = |r: &mut dyn Read| layer::scan(&name, layer.compression.decompress(r)?);
    let reused = store.contains(digest);
    let summary = if reused {
        scan(&mut store.open_blob(digest)?)?
    } else {
        let reader = Watched {
            inner: source.open(digest)?,
            digest,
            progress,
            abort,
        };
        store.ingest_with(reader, digest, Some(layer.size), scan)?
    };
    if summary.diff_id != layer.diff_id {
        return Err(Error::Image {
            image: image.into(),
            reason: format!(
                "layer {digest} unpacks to {}, but the config says its diff id is {}",
                summary.diff_id, layer.diff_id
            ),
        });
    }
    progress.done(digest, reused);
    Ok(layer.clone())
}

/// A source stream that reports its progress and stops when the import is aborted.
struct Watched<'a, R> {
    inner: R,
    digest: &'a Digest,
    progress: &'a dyn Progress,
    abort: &'a AtomicBool,
}

impl<R: Read> Read for Watched<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.abort.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the import was aborted"));
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.progress.advance(self.digest, n as u64);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::layout::OciLayout;
    use crate::testing::{Layout, tar_of};

    #[derive(Default)]
    struct Recorded {
        started: Mutex<Vec<Digest>>,
        advanced: AtomicUsize,
        reused: Mutex<Vec<bool>>,
    }

    impl Progress for Recorded {
        fn start(&self, digest: &Digest, _total: u64) {
            self.started.lock().unwrap().push(digest.clone());
        }
        fn advance(&self, _digest: &Digest, bytes: u64) {
            self.advanced.fetch_add(bytes as usize, Ordering::Relaxed);
        }
        fn done(&self, _digest: &Digest, reused: bool) {
            self.reused.lock().unwrap().push(reused);
        }
    }

    /// Imports an image of `layers` small gzip layers through `fetch`.
    fn import_layers(
        layers: usize,
        store: &ContentStore,
        fetch: LayerFetch<'_>,
    ) -> Result<ImportedImage> {
        let mut layout = Layout::new();
        let tars: Vec<Vec<u8>> = (0..layers)
            .map(|k| tar_of(&[(&format!("file-{k}"), format!("layer {k}").as_bytes())]))
            .collect();
        let desc = layout.image(&tars, Compression::Gzip, "amd64");
        layout.tag(desc, "t");
        let source = OciLayout::open(layout.path()).unwrap();
        let root = source.resolve(Some("t")).unwrap();
        import_with(store, &source, &root, &Platform::host(), fetch)
    }

    #[test]
    fn layers_reach_the_caller_in_order_once_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let progress = Recorded::default();
        let mut seen = Vec::new();
        let fetch = LayerFetch {
            jobs: 3,
            progress: &progress,
            on_layer: &mut |k, layer| {
                assert_eq!(k, seen.len(), "layers come in order");
                assert!(store.contains(&layer.digest), "layer {k} is stored first");
                seen.push(layer.clone());
                Ok(())
            },
        };
        let image = import_layers(7, &store, fetch).unwrap();
        assert_eq!(seen, image.layers);
        assert_eq!(progress.started.lock().unwrap().len(), 7);
        let fetched: u64 = image.layers.iter().map(|l| l.size).sum();
        assert_eq!(progress.advanced.load(Ordering::Relaxed) as u64, fetched);
        assert!(progress.reused.lock().unwrap().iter().all(|r| !r));

        // Again (the layout is rebuilt byte for byte): nothing is read from the source.
        let again = Recorded::default();
        let fetch = LayerFetch {
            jobs: 3,
            progress: &again,
            on_layer: &mut |_, _| Ok(()),
        };
        assert_eq!(import_layers(7, &store, fetch).unwrap(), image);
        assert_eq!(again.advanced.load(Ordering::Relaxed), 0);
        assert_eq!(*again.reused.lock().unwrap(), vec![true; 7]);
    }

    #[test]
    fn an_error_from_the_caller_stops_the_import() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let mut calls = 0;
        let fetch = LayerFetch {
            jobs: 2,
            progress: &NoProgress,
            on_layer: &mut |k, _| {
                calls += 1;
                Err(Error::Image {
                    image: "test".into(),
                    reason: format!("stop at {k}"),
                })
            },
        };
        let err = import_layers(6, &store, fetch).unwrap_err();
        assert!(err.to_string().contains("stop at 0"), "{err}");
        assert_eq!(calls, 1);
    }

    #[test]
    fn an_unsafe_layer_is_rejected_while_streaming_and_not_kept() {
        let mut layout = Layout::new();
        let evil = tar_of(&[("../escape", b"x")]);
        let desc = layout.image(std::slice::from_ref(&evil), Compression::Gzip, "amd64");
        layout.tag(desc, "t");
        let source = OciLayout::open(layout.path()).unwrap();
        let root = source.resolve(Some("t")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let err = import(&store, &source, &root, &Platform::host()).unwrap_err();
        assert!(matches!(err, Error::UnsafeEntry { .. }), "{err}");
        let blob = Digest::of(&crate::testing::compress(&evil, Compression::Gzip));
        assert!(!store.contains(&blob));
    }
}
