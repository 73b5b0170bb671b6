//! OCI image layouts (`oci:DIR[:TAG]`): the `oci-layout` marker, `index.json`, and
//! blobs under `blobs/sha256/`.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{self, BlobSource, ImportedImage, Platform};
use crate::store::ContentStore;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub struct OciLayout {
    dir: PathBuf,
    index: ImageIndex,
}

fn layout_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Layout {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl OciLayout {
    pub fn open(dir: &Path) -> Result<Self> {
        let marker = dir.join("oci-layout");
        let text = std::fs::read(&marker).map_err(|e| {
            layout_error(
                dir,
                format!("is not an OCI image layout (reading oci-layout: {e})"),
            )
        })?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| layout_error(&marker, format!("malformed: {e}")))?;
        match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(ver) if ver.starts_with("1.") => {}
            other => {
                return Err(layout_error(
                    &marker,
                    format!("unsupported imageLayoutVersion {other:?}; rcrun reads 1.x"),
                ));
            }
        }
        let index_path = dir.join("index.json");
        let bytes =
            std::fs::read(&index_path).map_err(|e| layout_error(&index_path, e.to_string()))?;
        let index = serde_json::from_slice(&bytes)
            .map_err(|e| layout_error(&index_path, format!("malformed: {e}")))?;
        Ok(OciLayout {
            dir: dir.to_path_buf(),
            index,
        })
    }

    /// The descriptor for `tag`, or the only image when no tag is given.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        pick_tagged(&self.index, tag).map_err(|reason| layout_error(&self.dir, reason))
    }
}

/// The manifest of an index (a layout's or an oci-archive's) tagged `tag` through the
/// `org.opencontainers.image.ref.name` annotation, or the only one without a tag.
pub(crate) fn pick_tagged(
    index: &ImageIndex,
    tag: Option<&str>,
) -> std::result::Result<Descriptor, String> {
    let manifests = index.manifests();
    let name_of = |m: &Descriptor| {
        m.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let found = match tag {
        Some(tag) => manifests
            .iter()
            .find(|m| name_of(m).as_deref() == Some(tag)),
        None if manifests.len() == 1 => manifests.first(),
        None => None,
    };
    found.cloned().ok_or_else(|| {
        let tags: Vec<String> = manifests.iter().filter_map(name_of).collect();
        let listed = if tags.is_empty() {
            "none".to_string()
        } else {
            tags.join(", ")
        };
        match tag {
            Some(t) => format!("has no image tagged {t:?} (tags: {listed})"),
            None if manifests.is_empty() => "holds no image".to_string(),
            None => format!(
                "holds {} images; name one with :TAG (tags: {listed})",
                manifests.len()
            ),
        }
    })
}

impl BlobSource for OciLayout {
    fn name(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + '_>> {
        let path = self.dir.join("blobs").join("sha256").join(digest.hex());
        let file = std::fs::File::open(&path).map_err(|e| {
            layout_error(
                &path,
                format!("blob {digest} is missing or unreadable: {e}"),
            )
        })?;
        Ok(Box::new(file))
    }
}

/// Imports `oci:DIR[:TAG]` into the store.
pub fn import_layout(
    store: &ContentStore,
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<ImportedImage> {
    let layout = OciLayout::open(dir)?;
    let root = layout.resolve(tag)?;
    image::import(store, &layout, &root, platform)
}
