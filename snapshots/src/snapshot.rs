//! Read-only snapshots, one per layer chain id: `snapshots/<chain-hex>/fs` holds that
//! layer's diff in overlay form (an upper directory), so an image is the overlay of
//! its chain's directories, and images sharing a stack of layers share them.
//!
//! A snapshot is prepared in a temporary directory and committed by an atomic
//! rename: a crash leaves only `.prep-*` directories, which [`Snapshotter::clean`]
//! removes. This module makes no mounts; whoever unpacks mounts the overlay.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub struct Snapshotter {
    root: PathBuf,
}

/// Directories for unpacking one layer: apply it onto `upper` directly when there
/// are no `lowers`, else onto an overlay of `lowers` (top first) with `upper` and
/// `work`.
#[derive(Debug)]
pub struct Prepared {
    pub chain: Digest,
    pub dir: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub lowers: Vec<PathBuf>,
}

static PREP_SEQ: AtomicU64 = AtomicU64::new(0);
const PREP_PREFIX: &str = ".prep-";

impl Snapshotter {
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("create {}", root.display()), e))?;
        Ok(Snapshotter {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, chain: &Digest) -> PathBuf {
        self.root.join(chain.hex())
    }

    /// The committed diff directory of a chain id.
    pub fn fs(&self, chain: &Digest) -> PathBuf {
        self.dir(chain).join("fs")
    }

    pub fn exists(&self, chain: &Digest) -> bool {
        self.fs(chain).is_dir()
    }

    /// The overlay lower directories for an image's chain ids (bottom first in
    /// `chains`), top layer first as overlayfs wants them. Every one must exist.
    pub fn lowerdirs(&self, chains: &[Digest]) -> Result<Vec<PathBuf>> {
        chains
            .iter()
            .rev()
            .map(|c| {
                let fs = self.fs(c);
                if fs.is_dir() {
                    Ok(fs)
                } else {
                    Err(Error::Image {
                        image: c.to_string(),
                        reason: "snapshot is missing; pull or import the image again".into(),
                    })
                }
            })
            .collect()
    }

    /// Reads a small file of an image (e.g. etc/passwd) as the container will see
    /// it: from the topmost layer that has it, every lookup confined to that layer
    /// (RESOLVE_IN_ROOT). A whiteout or opaque directory above hides it: `None`.
    pub fn read_file(&self, chains: &[Digest], path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        use std::os::unix::fs::FileTypeExt;
        let rel = path.strip_prefix("/").unwrap_or(path);
        for lower in self.lowerdirs(chains)? {
            let target = lower.join(rel);
            // Deletions in overlay form: a 0:0 char device at the path, or an
            // opaque parent directory (which still shows the layer's own entry).
            let md = std::fs::symlink_metadata(&target);
            if md.as_ref().is_ok_and(|m| m.file_type().is_char_device()) {
                return Ok(None);
            }
            let root = nix::fcntl::open(
                &lower,
                nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| Error::io(format!("open {}", lower.display()), e.into()))?;
            match crate::apply::open_in_root(&root, rel, libc::O_RDONLY) {
                Ok(fd) => {
                    let mut out = Vec::new();
                    std::fs::File::from(fd)
                        .take(limit)
                        .read_to_end(&mut out)
                        .map_err(|e| Error::io(format!("read {}", target.display()), e))?;
                    return Ok(Some(out));
                }
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(Error::io(format!("open {}", target.display()), e.into())),
            }
            if rel
                .ancestors()
                .skip(1)
                .any(|dir| crate::flatten::is_opaque(&lower.join(dir)))
            {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Prepares to unpack the layer with chain id `chains.last()` over the ones below it.
    pub fn prepare(&self, chains: &[Digest]) -> Result<Prepared> {
        let (chain, below) = chains.split_last().ok_or_else(|| Error::Image {
            image: "(none)".into(),
            reason: "no layer to prepare".into(),
        })?;
        let lowers = self.lowerdirs(below)?;
        let dir = self.root.join(format!(
            "{PREP_PREFIX}{}-{}-{}",
            &chain.hex()[..12],
            std::process::id(),
            PREP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let upper = dir.join("fs");
        let work = dir.join("work");
        for d in [&upper, &work] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        Ok(Prepared {
            chain: chain.clone(),
            dir,
            upper,
            work,
            lowers,
        })
    }

    /// Makes a prepared snapshot visible under its chain id. If another process
    /// committed the same chain meanwhile, theirs stays and ours is dropped.
    pub fn commit(&self, prepared: Prepared) -> Result<()> {
        let _ = std::fs::remove_dir_all(&prepared.work);
        let target = self.dir(&prepared.chain);
        match std::fs::rename(&prepared.dir, &target) {
            Ok(()) => Ok(()),
            Err(_) if self.exists(&prepared.chain) => {
                let _ = std::fs::remove_dir_all(&prepared.dir);
                Ok(())
            }
            Err(e) => Err(Error::io(format!("commit snapshot {}", prepared.chain), e)),
        }
    }

    /// Drops a prepared snapshot that failed to unpack.
    pub fn abort(&self, prepared: Prepared) {
        let _ = std::fs::remove_dir_all(&prepared.dir);
    }

    /// Committed chain ids.
    pub fn list(&self) -> Result<Vec<Digest>> {
        crate::digest::named_in(&self.root)
    }

    pub fn remove(&self, chain: &Digest) -> Result<()> {
        match std::fs::remove_dir_all(self.dir(chain)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove snapshot {chain}"), e))
            }
            _ => Ok(()),
        }
    }

    /// Removes what crashed unpacks left behind; returns how many.
    pub fn clean(&self) -> Result<usize> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| Error::io(format!("read {}", self.root.display()), e))?;
        let mut removed = 0;
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(PREP_PREFIX)
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::chain_ids;

    #[test]
    fn prepare_commit_and_share() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(dir.path()).unwrap();
        let chains = chain_ids(&[Digest::of(b"base"), Digest::of(b"top")]);
        let err = s.prepare(&chains).unwrap_err();
        assert!(
            err.to_string().contains("missing"),
            "the base must come first: {err}"
        );

        let base = s.prepare(&chains[..1]).unwrap();
        assert!(base.lowers.is_empty());
        std::fs::write(base.upper.join("file"), "base").unwrap();
        s.commit(base).unwrap();
        assert!(s.exists(&chains[0]));

        let top = s.prepare(&chains).unwrap();
        assert_eq!(top.lowers, vec![s.fs(&chains[0])]);
        // A second unpacker of the same chain loses the race harmlessly.
        let racer = s.prepare(&chains).unwrap();
        s.commit(top).unwrap();
        s.commit(racer).unwrap();
        assert_eq!(
            s.lowerdirs(&chains).unwrap(),
            vec![s.fs(&chains[1]), s.fs(&chains[0])]
        );
        let mut listed = s.list().unwrap();
        listed.sort();
        let mut expected = chains.clone();
        expected.sort();
        assert_eq!(listed, expected);
    }

    #[test]
    fn crashed_preparations_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(dir.path()).unwrap();
        let chains = chain_ids(&[Digest::of(b"x")]);
        let p = s.prepare(&chains).unwrap();
        std::fs::write(p.upper.join("partial"), "").unwrap();
        std::mem::forget(p); // as if the process died here
        assert_eq!(s.clean().unwrap(), 1);
        assert!(s.list().unwrap().is_empty());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
