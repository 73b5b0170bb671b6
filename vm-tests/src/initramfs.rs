//! The guest's initramfs: a base archive (busybox, the agent, the setuid id-mapping
//! helpers, the registry, kernel modules, the user's account) and a per-run payload
//! appended to it (rcrun, the scenarios, the images).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cpio::Archive;
use crate::modules::Module;
use crate::registry;
use crate::scenarios::{LIBRARY, Scenario};

/// Stage 1, PID 1 on the initramfs. pivot_root(2) cannot move the initramfs root and
/// rcrun pivot_roots into every container, so the root moves into a tmpfs first.
const STAGE1_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t tmpfs -o mode=0755 root /newroot || exec /sbin/vm-agent
cd /
for entry in *; do
  case $entry in newroot|proc|sys|dev) ;; *) /bin/busybox cp -a "$entry" /newroot/ ;; esac
done
/bin/busybox mkdir -p /newroot/proc /newroot/sys /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/vm-agent
"#;

/// The test user `rc` (1000) with 65536 subordinate ids, as `useradd` would make it;
/// nobody runs the registry.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nrc:x:1000:1000:rcrun tester:/var/lib/vm/home:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ntty:x:5:\nrc:x:1000:\nnogroup:x:65534:\n";
const SUBIDS: &str = "rc:100000:65536\n";

const REGISTRY_CONFIG: &str = "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: /srv/registry
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: true
http:
  addr: 127.0.0.1:5000
";

/// Host programs for the guest.
pub struct GuestTools {
    pub busybox: PathBuf,
    pub newuidmap: PathBuf,
    pub newgidmap: PathBuf,
    /// Only when a scenario needs the registry.
    pub registry: Option<PathBuf>,
    pub agent: PathBuf,
    pub rcrun: PathBuf,
}

/// OCI layouts the scenarios use, by name (`/vm/images/NAME` in the guest).
pub struct Images<'a> {
    pub layouts: Vec<(&'a str, PathBuf)>,
    /// `(layout name, repository, tag)` served by the guest's registry.
    pub registry: Option<(&'a str, &'a str, &'a str)>,
}

pub fn build(
    out: &Path,
    tools: &GuestTools,
    modules: &[Module],
    scenarios: &[Scenario],
    library: &Path,
    images: &Images,
) -> Result<()> {
    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut writer = BufWriter::new(file);
    // the kernel unpacks the two archives one after the other
    base(&mut writer, tools, modules).context("the initramfs base")?;
    payload(&mut writer, tools, scenarios, library, images).context("the initramfs payload")?;
    writer.flush()?;
    Ok(())
}

fn base<W: Write>(out: W, tools: &GuestTools, modules: &[Module]) -> Result<W> {
    let mut cpio = Archive::new(out);
    for dir in [
        "newroot",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "var/lib/vm",
        "usr/local/bin",
    ] {
        cpio.dir(dir, 0o755)?;
    }
    cpio.file("init", 0o755, STAGE1_INIT.as_bytes())?;
    cpio.file_from("bin/busybox", 0o755, &tools.busybox)?;
    for applet in busybox_applets(&tools.busybox)? {
        if applet != "bin/busybox" && applet != "init" {
            let depth = applet.matches('/').count();
            cpio.symlink(&applet, &format!("{}bin/busybox", "../".repeat(depth)))?;
        }
    }
    for (path, text) in [
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/subuid", SUBIDS),
        ("etc/subgid", SUBIDS),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        (
            "etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n",
        ),
        ("etc/resolv.conf", ""),
        ("etc/vm/registry.yml", REGISTRY_CONFIG),
    ] {
        cpio.file(path, 0o644, text.as_bytes())?;
    }
    let mut list = String::new();
    for module in modules {
        let guest = format!("lib/modules/vm/{}.ko", module.name);
        cpio.file(&guest, 0o644, &read_module(&module.file)?)?;
        let need = if module.optional {
            "optional"
        } else {
            "required"
        };
        list.push_str(&format!("{}\t/{guest}\t{need}\n", module.name));
    }
    cpio.file("etc/vm/modules", 0o644, list.as_bytes())?;
    // setuid root, as Debian's uidmap package installs them
    add_dynamic(&mut cpio, "usr/bin/newuidmap", 0o4755, &tools.newuidmap)?;
    add_dynamic(&mut cpio, "usr/bin/newgidmap", 0o4755, &tools.newgidmap)?;
    if let Some(registry) = &tools.registry {
        add_dynamic(&mut cpio, "usr/bin/docker-registry", 0o755, registry)?;
    }
    cpio.file_from("sbin/vm-agent", 0o755, &tools.agent)?;
    Ok(cpio.finish()?)
}

fn payload<W: Write>(
    out: W,
    tools: &GuestTools,
    scenarios: &[Scenario],
    library: &Path,
    images: &Images,
) -> Result<W> {
    let mut cpio = Archive::new(out);
    cpio.file_from("usr/local/bin/rcrun", 0o755, &tools.rcrun)?;
    cpio.file_from(&format!("vm/scenarios/{LIBRARY}"), 0o644, library)?;
    for scenario in scenarios {
        cpio.file_from(
            &format!("vm/scenarios/{}.sh", scenario.name),
            0o644,
            &scenario.script,
        )?;
    }
    for (name, layout) in &images.layouts {
        cpio.tree(&format!("vm/images/{name}"), layout)
            .with_context(|| format!("add the {name} image from {}", layout.display()))?;
    }
    if let Some((name, repo, tag)) = images.registry {
        let (_, layout) = images
            .layouts
            .iter()
            .find(|(n, _)| *n == name)
            .context("the registry's image is not in the payload")?;
        cpio.dir("srv/registry", 0o755)?;
        registry::add_repository(&mut cpio, "srv/registry", layout, repo, &[tag])?;
    }
    Ok(cpio.finish()?)
}

/// Every applet's path (`bin/sh`, `sbin/switch_root`, …) from `busybox --list-full`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("run {}", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list-full failed", busybox.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// A dynamically linked host program and the libraries `ldd` finds for it, at the same
/// paths in the guest.
fn add_dynamic<W: Write>(cpio: &mut Archive<W>, guest: &str, mode: u32, host: &Path) -> Result<()> {
    cpio.file_from(guest, mode, host)?;
    let out = Command::new("ldd").arg(host).output().context("run ldd")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            cpio.file_from(path, 0o755, Path::new(path))
                .with_context(|| format!("add {path}, which {} needs", host.display()))?;
        }
    }
    Ok(())
}

/// A module file, decompressed if need be: the guest loads plain `.ko` files.
fn read_module(file: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let Some(tool) = crate::kernel::decompressor(&bytes) else {
        return Ok(bytes);
    };
    crate::kernel::decompress(tool, &bytes)
        .filter(|ko| ko.starts_with(b"\x7fELF"))
        .with_context(|| {
            format!(
                "decompress {} with {} (is it installed?)",
                file.display(),
                tool[0]
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_decompressed_by_their_magic_and_must_give_an_elf() {
        let dir = tempfile::tempdir().unwrap();
        let ko = dir.path().join("m.ko");
        std::fs::write(&ko, b"\x7fELF fake module").unwrap();
        assert_eq!(read_module(&ko).unwrap(), b"\x7fELF fake module");

        for tool in ["xz", "zstd", "gzip"] {
            let status = Command::new(tool).arg("-kq").arg(&ko).status().unwrap();
            assert!(status.success(), "{tool}");
        }
        for packed in ["m.ko.xz", "m.ko.zst", "m.ko.gz"] {
            assert_eq!(
                read_module(&dir.path().join(packed)).unwrap(),
                b"\x7fELF fake module",
                "{packed}"
            );
        }

        // compressed, but not a module inside: an error naming the file
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, b"not an ELF").unwrap();
        Command::new("gzip").arg("-k").arg(&text).status().unwrap();
        let err = read_module(&dir.path().join("notes.txt.gz"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("notes.txt.gz"), "{err}");
    }
}
