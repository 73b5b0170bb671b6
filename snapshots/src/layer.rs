//! Image layers: compression, chain ids, and the validation every tar entry passes
//! before anything is written (paths that climb out, hardlinks that point out).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, DigestingReader};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From a layer media type (OCI or Docker schema2); `None` for unknown types.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        Some(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            _ => return None,
        })
    }

    /// From the first bytes of a blob (docker-archive layers carry no media type).
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn decompress<'a>(self, reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(reader)
                    .map_err(|e| Error::io("start zstd decoding", e))?,
            ),
        })
    }
}

/// Chain ids of a layer stack: the first is its diff id, each next one
/// `sha256(previous + " " + diff_id)`. A snapshot is named by its chain id, so
/// images sharing a stack of layers share its snapshots.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => {
                let mut h = Sha256::new();
                h.update(format!("{prev} {diff}").as_bytes());
                Digest::from_hasher(h)
            }
        };
        out.push(next);
    }
    out
}

/// What a tar entry means for the layer it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// An ordinary entry at this relative path (empty: the layer's root).
    Path(PathBuf),
    /// `.wh.NAME`: NAME from lower layers is deleted.
    Whiteout(PathBuf),
    /// `.wh..wh..opq` in DIR: DIR's contents from lower layers are hidden.
    Opaque(PathBuf),
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// A relative path inside the layer, or the reason it is unsafe.
pub(crate) fn relative_inside(raw: &Path) -> std::result::Result<PathBuf, &'static str> {
    if raw.is_absolute() {
        return Err("is an absolute path");
    }
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("climbs out of the layer with '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(out)
}

/// Classifies an entry path, rejecting any that could land outside the layer.
pub fn classify(layer: &str, raw: &Path) -> Result<EntryKind> {
    let unsafe_entry = |reason| Error::UnsafeEntry {
        layer: layer.to_string(),
        entry: raw.display().to_string(),
        reason,
    };
    let path = relative_inside(raw).map_err(unsafe_entry)?;
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(EntryKind::Path(path));
    };
    let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
    if name == OPAQUE_MARKER {
        return Ok(EntryKind::Opaque(parent));
    }
    if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        if target.is_empty() || target == "." || target == ".." {
            return Err(unsafe_entry("is a whiteout without a valid name"));
        }
        return Ok(EntryKind::Whiteout(parent.join(target)));
    }
    Ok(EntryKind::Path(path))
}

/// A hardlink's target must be an entry of the same layer tree.
pub fn hardlink_target(layer: &str, entry: &Path, target: &Path) -> Result<PathBuf> {
    let path = relative_inside(target).map_err(|reason| Error::UnsafeEntry {
        layer: layer.to_string(),
        entry: format!("{} (hardlink to {})", entry.display(), target.display()),
        reason,
    })?;
    if path.as_os_str().is_empty() {
        return Err(Error::UnsafeEntry {
            layer: layer.to_string(),
            entry: entry.display().to_string(),
            reason: "is a hardlink to the layer's root",
        });
    }
    Ok(path)
}

/// What a full read of a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// Digest of the uncompressed tar: must equal the config's diff id.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    pub entries: u64,
}

/// Reads a whole (decompressed) layer, validating every entry; names the first
/// unsafe or unreadable one. Truncated archives fail here.
pub fn scan(layer: &str, tar_stream: impl Read) -> Result<LayerSummary> {
    let mut digesting = DigestingReader::new(tar_stream);
    let mut entries = 0;
    {
        let mut archive = tar::Archive::new(&mut digesting);
        let iter = archive
            .entries()
            .map_err(|e| Error::io(format!("read layer {layer}"), e))?;
        for entry in iter {
            let entry = entry
                .map_err(|e| Error::io(format!("read layer {layer} (truncated or corrupt?)"), e))?;
            let path = entry
                .path()
                .map_err(|e| Error::io(format!("read an entry name in layer {layer}"), e))?
                .into_owned();
            classify(layer, &path)?;
            if entry.header().entry_type().is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| {
                        Error::io(
                            format!("read the link of {} in layer {layer}", path.display()),
                            e,
                        )
                    })?
                    .ok_or_else(|| Error::UnsafeEntry {
                        layer: layer.to_string(),
                        entry: path.display().to_string(),
                        reason: "is a hardlink without a target",
                    })?;
                hardlink_target(layer, &path, &target)?;
            }
            entries += 1;
        }
    }
    // Whatever follows the end-of-archive blocks still counts for the diff id.
    std::io::copy(&mut digesting, &mut std::io::sink())
        .map_err(|e| Error::io(format!("read layer {layer}"), e))?;
    let (diff_id, uncompressed_size) = digesting.finish();
    Ok(LayerSummary {
        diff_id,
        uncompressed_size,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let ids = chain_ids(&[d("a"), d("b"), d("c")]);
        assert_eq!(ids[0], d("a"));
        assert_eq!(
            ids[1],
            Digest::of(format!("{} {}", d("a"), d("b")).as_bytes())
        );
        assert_eq!(
            ids[2],
            Digest::of(format!("{} {}", ids[1], d("c")).as_bytes())
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn entries_are_classified() {
        let c = |p: &str| classify("l", Path::new(p)).unwrap();
        assert_eq!(c("./etc/passwd"), EntryKind::Path("etc/passwd".into()));
        assert_eq!(c("./"), EntryKind::Path("".into()));
        assert_eq!(
            c("etc/.wh.shadow"),
            EntryKind::Whiteout("etc/shadow".into())
        );
        assert_eq!(
            c("var/cache/.wh..wh..opq"),
            EntryKind::Opaque("var/cache".into())
        );
        assert_eq!(c(".wh..wh..opq"), EntryKind::Opaque("".into()));
    }

    #[test]
    fn escaping_entries_are_rejected() {
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "x/.wh..",
            "x/.wh.",
        ] {
            let err = classify("sha256:abc", Path::new(bad)).unwrap_err();
            assert!(
                err.to_string().contains(bad) && err.to_string().contains("sha256:abc"),
                "{err}"
            );
        }
        assert!(hardlink_target("l", Path::new("a"), Path::new("../../etc/shadow")).is_err());
        assert!(hardlink_target("l", Path::new("a"), Path::new("/etc/shadow")).is_err());
        assert_eq!(
            hardlink_target("l", Path::new("a"), Path::new("./bin/sh")).unwrap(),
            PathBuf::from("bin/sh")
        );
    }

    #[test]
    fn compression_is_recognised() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/\0\0"), Compression::None);
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_media_type("application/x-unknown"), None);
    }
}
