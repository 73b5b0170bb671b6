//! The guest kernel: a Debian `linux-image-*` package (fetched with apt, or a .deb given
//! by path) or a bare vmlinuz, unpacked into a cache with `depmod` run on its modules,
//! and, when the kernel supports it, decompressed once into an ELF `vmlinux` that QEMU
//! boots through the PVH entry: under TCG the bzImage's own xz decompressor costs
//! seconds per boot.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub struct Kernel {
    /// The kernel release (`uname -r` in the guest), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// What QEMU boots: the bzImage, or the PVH vmlinux made from it.
    pub boot_image: PathBuf,
    /// The modules directory (`lib/modules/RELEASE`), with `modules.dep`.
    pub modules_dir: Option<PathBuf>,
}

/// The apt packages that `--kernel cloud` and `--kernel generic` stand for.
pub fn package_for(name: &str) -> &str {
    match name {
        "cloud" => "linux-image-cloud-amd64",
        "generic" => "linux-image-amd64",
        other => other,
    }
}

/// Checks a `--kernel` argument that names a file before anything is built or fetched.
pub fn check_arg(arg: &str) -> Result<()> {
    let path = Path::new(arg);
    if (arg.ends_with(".deb") || arg.contains('/')) && !path.is_file() {
        bail!(
            "--kernel {arg}: no such file; give a linux-image-*.deb, a vmlinuz, or an apt package name (cloud, generic, linux-image-…)"
        );
    }
    Ok(())
}

/// Prepares the kernel named by `arg`: a path to a `.deb` or a vmlinuz, or an apt package
/// name (`cloud` and `generic` for Debian's metapackages). `cache` keeps downloads and
/// unpacked packages between runs.
pub fn prepare(arg: &str, modules_dir: Option<&Path>, cache: &Path) -> Result<Kernel> {
    let path = Path::new(arg);
    check_arg(arg)?;
    let kernel = if arg.ends_with(".deb") {
        unpack_deb(path, cache)?
    } else if arg.contains('/') || path.is_file() {
        from_vmlinuz(path, modules_dir)?
    } else {
        let deb = fetch_package(package_for(arg), cache, 0)?;
        unpack_deb(&deb, cache)?
    };
    match pvh_image(&kernel.vmlinuz, cache)? {
        Some(boot_image) => Ok(Kernel {
            boot_image,
            ..kernel
        }),
        None => Ok(kernel),
    }
}

fn from_vmlinuz(path: &Path, modules_dir: Option<&Path>) -> Result<Kernel> {
    std::fs::File::open(path)
        .with_context(|| format!("--kernel {}: cannot read it", path.display()))?;
    let release = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or("unknown")
        .to_string();
    let modules_dir = match modules_dir {
        Some(dir) => Some(dir.to_path_buf()),
        None => [
            path.parent()
                .unwrap_or(Path::new("."))
                .join("../lib/modules")
                .join(&release),
            Path::new("/lib/modules").join(&release),
        ]
        .into_iter()
        .find(|dir| dir.join("modules.dep").is_file()),
    };
    Ok(Kernel {
        release,
        vmlinuz: path.to_path_buf(),
        boot_image: path.to_path_buf(),
        modules_dir,
    })
}

/// Downloads `package` with apt into `cache` (reusing a complete earlier download), and
/// follows a metapackage (one without a kernel) to the image package it depends on.
fn fetch_package(package: &str, cache: &Path, depth: u32) -> Result<PathBuf> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("create {}", debs.display()))?;
    // 'URL' FILE SIZE SHA256:…
    let uris = run_output(Command::new("apt-get").args(["download", "--print-uris", package]).current_dir(&debs))
        .with_context(|| format!("ask apt for the package {package} (is it a package name? `apt-cache search linux-image` lists them)"))?;
    // apt prints nothing for a file already downloaded into the directory
    let deb = match uris.lines().find(|l| l.starts_with('\'')) {
        Some(line) => {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (file, size) = (fields.get(1).copied().unwrap_or_default(), fields.get(2).copied().unwrap_or_default());
            let deb = debs.join(file);
            let have = std::fs::metadata(&deb).map(|m| m.len().to_string()).unwrap_or_default();
            if have != size {
                eprintln!("vm-tests: apt-get download {package}");
                run_output(Command::new("apt-get").args(["download", "-q", package]).current_dir(&debs))
                    .with_context(|| format!("apt-get download {package}"))?;
            }
            deb
        }
        None => newest_download(&debs, package)?.with_context(|| {
            format!("apt has no download for {package}: run `apt-get update`, or give a .deb or vmlinuz path")
        })?,
    };
    if contains_kernel(&deb)? {
        return Ok(deb);
    }
    // a metapackage: Depends: linux-image-6.1.0-56-cloud-amd64 (= …)
    let depends = run_output(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Depends"),
    )?;
    let next = depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or_default())
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| {
            format!("{package} has no kernel and depends on no linux-image package")
        })?;
    if depth > 2 {
        bail!("{package}: too many metapackages in a row");
    }
    fetch_package(next, cache, depth + 1)
}

/// The newest `PACKAGE_*.deb` already in `dir`.
fn newest_download(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            found.push((entry.metadata()?.modified()?, entry.path()));
        }
    }
    Ok(found.into_iter().max().map(|(_, path)| path))
}

fn contains_kernel(deb: &Path) -> Result<bool> {
    let list = run_output(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    Ok(list.lines().any(|l| l.contains("/boot/vmlinuz-")))
}

/// Unpacks a kernel package once into the cache and runs depmod on its modules.
fn unpack_deb(deb: &Path, cache: &Path) -> Result<Kernel> {
    let stem = deb
        .file_stem()
        .and_then(|s| s.to_str())
        .context("a .deb file name")?;
    let root = cache.join("unpacked").join(stem);
    if !root.join(".complete").exists() {
        let partial = cache.join("unpacked").join(format!("{stem}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        run_output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))
            .with_context(|| format!("unpack {}", deb.display()))?;
        let release = find_release(&partial).with_context(|| {
            format!(
                "{} holds no boot/vmlinuz-*: not a kernel image package",
                deb.display()
            )
        })?;
        if partial.join("lib/modules").join(&release).is_dir() {
            // Debian's packages leave modules.dep to depmod at install time
            run_output(
                Command::new(depmod()?)
                    .arg("-b")
                    .arg(&partial)
                    .arg(&release),
            )
            .with_context(|| format!("depmod for {release}"))?;
        }
        std::fs::write(partial.join(".complete"), b"")?;
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&partial, &root)?;
    }
    let release = find_release(&root).context("an unpacked kernel without vmlinuz")?;
    let modules = root.join("lib/modules").join(&release);
    Ok(Kernel {
        vmlinuz: root.join("boot").join(format!("vmlinuz-{release}")),
        boot_image: root.join("boot").join(format!("vmlinuz-{release}")),
        modules_dir: modules.join("modules.dep").is_file().then_some(modules),
        release,
    })
}

fn find_release(root: &Path) -> Option<String> {
    std::fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
}

fn depmod() -> Result<PathBuf> {
    ["/usr/sbin/depmod", "/sbin/depmod", "/usr/bin/depmod"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("depmod is missing: apt install kmod")
}

/// The bzImage's payload decompressed into an ELF vmlinux with a PVH entry note, cached
/// beside the kernel; `None` when the kernel has no PVH entry or the payload cannot be
/// decompressed here (then QEMU boots the bzImage).
fn pvh_image(vmlinuz: &Path, cache: &Path) -> Result<Option<PathBuf>> {
    let bytes = std::fs::read(vmlinuz).with_context(|| format!("read {}", vmlinuz.display()))?;
    let Some(payload) = bzimage_payload(&bytes) else {
        return Ok(None);
    };
    let key = format!(
        "{:x}-{}",
        bytes.len(),
        vmlinuz
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("vmlinuz")
    );
    let out = cache.join("pvh").join(format!("{key}.vmlinux"));
    let no_pvh = cache.join("pvh").join(format!("{key}.no-pvh"));
    if out.exists() {
        return Ok(Some(out));
    }
    if no_pvh.exists() {
        return Ok(None);
    }
    std::fs::create_dir_all(out.parent().unwrap())?;
    let elf = if payload.starts_with(b"\x7fELF") {
        Some(payload.to_vec())
    } else {
        decompressor(payload).and_then(|tool| decompress(tool, payload))
    };
    match elf.filter(|elf| has_pvh_note(elf)) {
        Some(elf) => {
            let partial = out.with_extension("partial");
            std::fs::write(&partial, elf)?;
            std::fs::rename(&partial, &out)?;
            Ok(Some(out))
        }
        None => {
            std::fs::write(&no_pvh, b"")?;
            Ok(None)
        }
    }
}

/// The compressed kernel inside a bzImage (boot protocol 2.08+: `payload_offset` and
/// `payload_length` in the setup header, relative to the protected-mode code).
fn bzimage_payload(image: &[u8]) -> Option<&[u8]> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes(image.get(0x206..0x208)?.try_into().ok()?);
    if version < 0x208 {
        return None;
    }
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512;
    let offset = u32::from_le_bytes(image.get(0x248..0x24c)?.try_into().ok()?) as usize;
    let length = u32::from_le_bytes(image.get(0x24c..0x250)?.try_into().ok()?) as usize;
    image.get(start + offset..start + offset + length)
}

/// The command that decompresses `data`, told by its magic bytes.
pub(crate) fn decompressor(data: &[u8]) -> Option<&'static [&'static str]> {
    match data {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Some(&["xz", "-dc"]),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(&["zstd", "-qdc"]),
        [0x1f, 0x8b, ..] => Some(&["gzip", "-dc"]),
        [0x5d, 0, 0, ..] => Some(&["xz", "--format=lzma", "-dc"]),
        [b'B', b'Z', b'h', ..] => Some(&["bzip2", "-dc"]),
        [0x02, 0x21, 0x4c, 0x18, ..] => Some(&["lz4", "-dc"]),
        _ => None,
    }
}

/// What `command` makes of `input` on stdin; its exit status is not judged (a kernel's
/// payload may end with a size field the tool calls trailing garbage): callers check
/// the result.
pub(crate) fn decompress(command: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    let (tool, args) = command.split_first()?;
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().ok()?;
    let _ = writer.join();
    Some(output.stdout)
}

/// Whether an ELF64 file has the Xen `PHYS32_ENTRY` note (type 18) that QEMU's PVH boot needs.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    crate::elf::segments(elf)
        .into_iter()
        .flatten()
        .filter(|s| s.kind == crate::elf::PT_NOTE)
        .any(|s| {
            crate::elf::notes(s.data)
                .into_iter()
                .any(|(name, kind)| name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY)
        })
}

fn run_output(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            command.get_program(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pvh_note_is_found_and_other_notes_are_not_taken_for_it() {
        // a minimal ELF64 with one PT_NOTE segment holding a GNU note and then the Xen one
        let note = |name: &[u8], kind: u32, desc: &[u8]| {
            let mut n = Vec::new();
            n.extend((name.len() as u32).to_le_bytes());
            n.extend((desc.len() as u32).to_le_bytes());
            n.extend(kind.to_le_bytes());
            n.extend(name);
            n.resize(n.len().div_ceil(4) * 4, 0);
            n.extend(desc);
            n.resize(n.len().div_ceil(4) * 4, 0);
            n
        };
        let build = |notes: Vec<u8>| {
            let mut elf = vec![0u8; 0x40 + 0x38];
            elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
            elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
            elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes()); // phentsize
            elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // phnum
            elf[0x40..0x44].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
            let offset = elf.len() as u64;
            elf[0x48..0x50].copy_from_slice(&offset.to_le_bytes());
            elf[0x60..0x68].copy_from_slice(&(notes.len() as u64).to_le_bytes());
            elf.extend(notes);
            elf
        };
        let gnu = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        let xen = note(b"Xen\0", 18, &[0, 0, 0, 1]);
        assert!(has_pvh_note(&build([gnu.clone(), xen].concat())));
        assert!(!has_pvh_note(&build(gnu.clone())));
        assert!(!has_pvh_note(&build(
            [gnu, note(b"Xen\0", 17, &[0; 4])].concat()
        )));
        assert!(!has_pvh_note(b"not an elf"));
    }

    #[test]
    fn bzimage_payload_is_read_from_the_setup_header() {
        let mut image = vec![0u8; 5 * 512 + 64];
        image[0x1f1] = 4;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&6u32.to_le_bytes());
        image[5 * 512 + 16..5 * 512 + 22].copy_from_slice(&[0xfd, b'7', b'z', b'X', b'Z', 0]);
        assert_eq!(
            bzimage_payload(&image),
            Some(&[0xfd, b'7', b'z', b'X', b'Z', 0][..])
        );
        image[0x202] = b'X';
        assert_eq!(bzimage_payload(&image), None);
    }
}
