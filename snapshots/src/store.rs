//! The content store: blobs by digest under `blobs/sha256/<hex>`. A blob enters only
//! through [`ContentStore::ingest`], which verifies size and digest on a temporary
//! file and renames it into place, so the store never holds a blob whose name lies.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digest, DigestingReader};
use crate::error::{Error, Result};

/// Manifests and configs are read into memory; real ones are a few KiB.
pub const MAX_METADATA_BYTES: u64 = 4 << 20;

pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

impl ContentStore {
    /// Opens (creating) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        for dir in [&blobs, &ingest] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        Ok(ContentStore { blobs, ingest })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Stores what `reader` yields as `expected`, checking the size when known.
    /// A blob already present is not read again.
    pub fn ingest(
        &self,
        reader: impl Read,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<PathBuf> {
        let target = self.path(expected);
        if !target.is_file() {
            self.write_blob(reader, Some((expected, size)))?;
        }
        Ok(target)
    }

    /// Stores a stream whose digest is not known in advance (docker-archive layers),
    /// named by what it hashes to.
    pub fn ingest_unverified(&self, reader: impl Read) -> Result<(Digest, u64)> {
        self.write_blob(reader, None)
    }

    /// Stores bytes held in memory (metadata rcrun writes itself, tests).
    pub fn put(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        self.ingest(bytes, &digest, Some(bytes.len() as u64))?;
        Ok(digest)
    }

    /// Writes a blob to a temporary file while hashing it, checks it against
    /// `expected` (digest, and size when known), and renames it into place under the
    /// digest it has. The temporary file is removed on any failure.
    fn write_blob(
        &self,
        reader: impl Read,
        expected: Option<(&Digest, Option<u64>)>,
    ) -> Result<(Digest, u64)> {
        let tmp = self.ingest.join(format!(
            "{}-{}-{}",
            expected.map_or("unnamed", |(d, _)| d.hex()),
            std::process::id(),
            INGEST_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.write_to(reader, expected, &tmp);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_to(
        &self,
        reader: impl Read,
        expected: Option<(&Digest, Option<u64>)>,
        tmp: &Path,
    ) -> Result<(Digest, u64)> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        let mut out = BufWriter::with_capacity(256 << 10, file);
        // Read at most one byte past the announced size: a lying server cannot fill the disk.
        let limit = expected
            .and_then(|(_, size)| size)
            .map_or(u64::MAX, |s| s + 1);
        let mut digesting = DigestingReader::new(reader.take(limit));
        std::io::copy(&mut digesting, &mut out).map_err(|e| {
            let name = expected.map_or("blob".to_string(), |(d, _)| format!("blob {d}"));
            Error::io(format!("read {name}"), e)
        })?;
        let (actual, count) = digesting.finish();
        if let Some((expected, size)) = expected {
            if let Some(size) = size
                && count != size
            {
                return Err(Error::SizeMismatch {
                    digest: expected.clone(),
                    expected: size,
                    actual: count,
                });
            }
            if &actual != expected {
                return Err(Error::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                    size: count,
                });
            }
        }
        let file = out
            .into_inner()
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(format!("sync {}", tmp.display()), e))?;
        std::fs::rename(tmp, self.path(&actual))
            .map_err(|e| Error::io(format!("commit blob {actual}"), e))?;
        if let Ok(dir) = File::open(&self.blobs) {
            let _ = dir.sync_all();
        }
        Ok((actual, count))
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        File::open(self.path(digest)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::BlobNotFound(digest.clone()),
            _ => Error::io(format!("open blob {digest}"), e),
        })
    }

    /// Reads a small blob (manifest, index, config) whole.
    pub fn read_metadata(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_blob(digest)?
            .take(MAX_METADATA_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::io(format!("read blob {digest}"), e))?;
        if out.len() as u64 > MAX_METADATA_BYTES {
            return Err(Error::Image {
                image: digest.to_string(),
                reason: format!("metadata blob is larger than {MAX_METADATA_BYTES} bytes"),
            });
        }
        Ok(out)
    }

    /// Every blob in the store (for garbage collection).
    pub fn list(&self) -> Result<Vec<Digest>> {
        crate::digest::named_in(&self.blobs)
    }

    pub fn remove(&self, digest: &Digest) -> Result<()> {
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove blob {digest}"), e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_verifies_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = store.put(b"layer bytes").unwrap();
        assert!(store.contains(&d));
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), b"layer bytes");
        store
            .ingest(&b"ignored: already present"[..], &d, None)
            .unwrap();
        assert_eq!(store.list().unwrap(), vec![d]);
    }

    #[test]
    fn wrong_digest_or_size_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let claimed = Digest::of(b"the real content");
        let err = store
            .ingest(&b"tampered content"[..], &claimed, None)
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        let err = store
            .ingest(&b"the real content"[..], &claimed, Some(3))
            .unwrap_err();
        assert!(
            matches!(err, Error::SizeMismatch { actual: 4, .. }),
            "{err}"
        );
        assert!(!store.contains(&claimed));
        assert!(store.list().unwrap().is_empty());
        assert!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .next()
                .is_none(),
            "no temp files left"
        );
    }
}
