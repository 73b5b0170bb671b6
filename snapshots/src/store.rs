//! The content store: blobs by digest under `blobs/sha256/<hex>`. A blob enters only
//! through [`ContentStore::ingest`], which verifies size and digest on a temporary
//! file and renames it into place, so the store never holds a blob whose name lies.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
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
            self.write_blob(reader, Some((expected, size)), drain)?;
        }
        Ok(target)
    }

    /// Like [`ContentStore::ingest`] (but always reading), and `consume` reads the
    /// blob's bytes as they stream to disk, so a layer is scanned in the same pass.
    /// The blob is kept only if it verifies and `consume` succeeds; a mismatch of
    /// size or digest is reported before `consume`'s error, which it usually causes.
    pub(crate) fn ingest_with<T>(
        &self,
        reader: impl Read,
        expected: &Digest,
        size: Option<u64>,
        consume: impl FnOnce(&mut dyn Read) -> Result<T>,
    ) -> Result<T> {
        self.write_blob(reader, Some((expected, size)), consume)
            .map(|(_, _, value)| value)
    }

    /// Stores a stream whose digest is not known in advance (docker-archive layers),
    /// named by what it hashes to.
    pub fn ingest_unverified(&self, reader: impl Read) -> Result<(Digest, u64)> {
        self.write_blob(reader, None, drain)
            .map(|(digest, size, ())| (digest, size))
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
    fn write_blob<T>(
        &self,
        reader: impl Read,
        expected: Option<(&Digest, Option<u64>)>,
        consume: impl FnOnce(&mut dyn Read) -> Result<T>,
    ) -> Result<(Digest, u64, T)> {
        let tmp = self.ingest.join(format!(
            "{}-{}-{}",
            expected.map_or("unnamed", |(d, _)| d.hex()),
            std::process::id(),
            INGEST_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.write_to(reader, expected, &tmp, consume);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_to<T>(
        &self,
        reader: impl Read,
        expected: Option<(&Digest, Option<u64>)>,
        tmp: &Path,
        consume: impl FnOnce(&mut dyn Read) -> Result<T>,
    ) -> Result<(Digest, u64, T)> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        // Read at most one byte past the announced size: a lying server cannot fill the disk.
        let limit = expected
            .and_then(|(_, size)| size)
            .map_or(u64::MAX, |s| s + 1);
        let mut tee = Tee {
            source: DigestingReader::new(reader.take(limit)),
            out: BufWriter::with_capacity(256 << 10, file),
            read_error: None,
            write_error: None,
        };
        let consumed = consume(&mut tee);
        // What the consumer left unread (trailing bytes) still belongs to the blob.
        let drained = drain(&mut tee);
        let name = expected.map_or("blob".to_string(), |(d, _)| format!("blob {d}"));
        if let Some(e) = tee.write_error {
            return Err(Error::io(format!("write {}", tmp.display()), e));
        }
        if let Some(e) = tee.read_error {
            return Err(Error::io(format!("read {name}"), e));
        }
        drained?;
        let (actual, count) = tee.source.finish();
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
        let value = consumed?;
        let file = tee
            .out
            .into_inner()
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(format!("sync {}", tmp.display()), e))?;
        std::fs::rename(tmp, self.path(&actual))
            .map_err(|e| Error::io(format!("commit blob {actual}"), e))?;
        if let Ok(dir) = File::open(&self.blobs) {
            let _ = dir.sync_all();
        }
        Ok((actual, count, value))
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

    /// Removes temporary files of interrupted ingests; call only while no ingest
    /// runs (rcrun's gc holds its exclusive lock). Returns how many.
    pub fn clean(&self) -> Result<usize> {
        let entries = std::fs::read_dir(&self.ingest)
            .map_err(|e| Error::io(format!("read {}", self.ingest.display()), e))?;
        Ok(entries
            .flatten()
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count())
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

fn drain(reader: &mut dyn Read) -> Result<()> {
    std::io::copy(reader, &mut std::io::sink())
        .map(drop)
        .map_err(|e| Error::io("read blob", e))
}

/// Hashes what is read through it and copies it to the temporary file. Errors are
/// kept apart, so the store can say whether the source or the disk failed.
struct Tee<R> {
    source: DigestingReader<std::io::Take<R>>,
    out: BufWriter<File>,
    read_error: Option<std::io::Error>,
    write_error: Option<std::io::Error>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.source.read(buf).inspect_err(|e| {
            self.read_error
                .get_or_insert_with(|| std::io::Error::new(e.kind(), e.to_string()));
        })?;
        self.out.write_all(&buf[..n]).inspect_err(|e| {
            self.write_error
                .get_or_insert_with(|| std::io::Error::new(e.kind(), e.to_string()));
        })?;
        Ok(n)
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

    #[test]
    fn ingest_with_sees_the_bytes_and_keeps_only_what_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let bytes = b"header and trailing bytes";
        let d = Digest::of(bytes);
        // A consumer that stops early: the rest is still stored and hashed.
        let head = store
            .ingest_with(&bytes[..], &d, Some(bytes.len() as u64), |r| {
                let mut head = [0u8; 6];
                r.read_exact(&mut head).unwrap();
                Ok(head)
            })
            .unwrap();
        assert_eq!(&head, b"header");
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), bytes);

        // A verified blob whose consumer fails is not kept, and the consumer's error is told.
        let other = b"a layer the scan rejects";
        let od = Digest::of(other);
        let err = store
            .ingest_with(&other[..], &od, None, |_| -> Result<()> {
                Err(Error::BlobNotFound(Digest::of(b"marker")))
            })
            .unwrap_err();
        assert!(matches!(err, Error::BlobNotFound(_)), "{err}");
        assert!(!store.contains(&od));

        // A mismatch wins over the consumer's error, which it would have caused.
        let err = store
            .ingest_with(&b"tampered"[..], &od, None, |_| -> Result<()> {
                Err(Error::BlobNotFound(od.clone()))
            })
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert_eq!(store.list().unwrap(), vec![d]);
    }
}
