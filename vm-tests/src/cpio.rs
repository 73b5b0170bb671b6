//! A writer of `newc` cpio archives, the format the kernel unpacks as an initramfs.
//!
//! Every entry belongs to root (the kernel applies the owner and mode we write), so the
//! archive needs no privileges to build; the guest agent hands files to its user itself.
//! The kernel unpacks concatenated archives in order, which is how the per-run payload
//! is appended to the base.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

pub struct Archive<W: Write> {
    out: W,
    written: u64,
    next_inode: u32,
    dirs: HashSet<String>,
}

impl<W: Write> Archive<W> {
    pub fn new(out: W) -> Self {
        Archive {
            out,
            written: 0,
            next_inode: 1,
            dirs: HashSet::new(),
        }
    }

    /// A directory (and its missing parents, 0755).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        self.parents(path)?;
        self.dirs.insert(path.to_string());
        self.header(path, S_IFDIR | (mode & 0o7777), 2, 0)
    }

    /// A regular file with `data`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = path.trim_matches('/');
        self.parents(path)?;
        self.header(path, S_IFREG | (mode & 0o7777), 1, data.len() as u64)?;
        self.write(data)?;
        self.pad()
    }

    /// A regular file copied from the host file `src`, with `mode`.
    pub fn file_from(&mut self, path: &str, mode: u32, src: &Path) -> io::Result<()> {
        let path = path.trim_matches('/');
        let mut input = File::open(src).map_err(|e| with_path(e, src))?;
        let size = input.metadata()?.len();
        self.parents(path)?;
        self.header(path, S_IFREG | (mode & 0o7777), 1, size)?;
        let mut copied = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.write(&buf[..n])?;
            copied += n as u64;
        }
        if copied != size {
            return Err(io::Error::other(format!(
                "{} changed size while archived",
                src.display()
            )));
        }
        self.pad()
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = path.trim_matches('/');
        self.parents(path)?;
        self.header(path, S_IFLNK | 0o777, 1, target.len() as u64)?;
        self.write(target.as_bytes())?;
        self.pad()
    }

    /// The host directory `src`, recursively, at `path`: directories, regular files and
    /// symlinks with their modes (owned by root in the archive).
    pub fn tree(&mut self, path: &str, src: &Path) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(src).map_err(|e| with_path(e, src))?;
        self.dir(path, meta.permissions().mode())?;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| with_path(e, src))?
            .collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| {
                io::Error::other(format!(
                    "{}: a name that is not UTF-8",
                    entry.path().display()
                ))
            })?;
            let guest = format!("{}/{name}", path.trim_end_matches('/'));
            let meta = entry.path().symlink_metadata()?;
            let kind = meta.file_type();
            if kind.is_dir() {
                self.tree(&guest, &entry.path())?;
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                self.symlink(&guest, &target.to_string_lossy())?;
            } else if kind.is_file() {
                self.file_from(&guest, meta.mode(), &entry.path())?;
            } else {
                return Err(io::Error::other(format!(
                    "{}: only files, dirs and symlinks go into an initramfs",
                    entry.path().display()
                )));
            }
        }
        Ok(())
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 1, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, size: u64) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::other(format!("{name}: too big for cpio (4 GiB)")))?;
        let inode = self.next_inode;
        self.next_inode += 1;
        let fields = [
            inode,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::with_capacity(110 + name.len() + 1);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08X}"));
        }
        header.push_str(name);
        header.push('\0');
        self.write(header.as_bytes())?;
        self.pad()
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// newc aligns every header and every file's data to 4 bytes.
    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0u8; 3][..pad])
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// busybox's cpio (the tool the reference scripts used) unpacks what we write.
    #[test]
    fn busybox_cpio_unpacks_files_dirs_symlinks_and_modes() {
        let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            panic!("busybox is needed for this test (apt install busybox-static)");
        };
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/data"), b"0123456789").unwrap();
        std::os::unix::fs::symlink("sub/data", src.join("link")).unwrap();

        let mut archive = Archive::new(Vec::new());
        archive.file("etc/odd-sized", 0o640, b"abcde").unwrap();
        archive
            .file("usr/bin/tool", 0o4755, b"#!/bin/sh\n")
            .unwrap();
        archive.tree("payload", &src).unwrap();
        let bytes = archive.finish().unwrap();
        std::fs::write(work.path().join("a.cpio"), &bytes).unwrap();

        let out = work.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let status = Command::new(busybox)
            .args(["cpio", "-i", "-d", "-F"])
            .arg(work.path().join("a.cpio"))
            .current_dir(&out)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(out.join("etc/odd-sized")).unwrap(), b"abcde");
        assert_eq!(
            std::fs::read(out.join("payload/sub/data")).unwrap(),
            b"0123456789"
        );
        assert_eq!(
            std::fs::read_link(out.join("payload/link")).unwrap(),
            Path::new("sub/data")
        );
        let mode = std::fs::metadata(out.join("etc/odd-sized"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
        assert!(out.join("usr/bin").is_dir(), "parents are created");
    }
}
