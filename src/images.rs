//! Images on disk: the content store and the chain-id snapshots under the data
//! directory, and unpacking an imported image's layers into snapshots inside the
//! user namespace, so the owners of the image's files survive.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{MntFlags, MsFlags};
use snapshots::{ContentStore, ImportedImage, LayerInfo, Prepared, Snapshotter};

pub struct Images {
    content: ContentStore,
    snapshots: Snapshotter,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    pub unpacked: usize,
    pub reused: usize,
    pub warnings: Vec<String>,
}

/// `$XDG_DATA_HOME/rcrun` (default `~/.local/share/rcrun`); `/var/lib/rcrun` for root.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/lib/rcrun");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| {
            PathBuf::from(format!("/tmp/rcrun-data-{}", nix::unistd::Uid::effective()))
        })
        .join("rcrun")
}

/// Mounts the overlay a layer is applied onto. Paths are given relative to the
/// snapshots directory (the process's cwd) to keep the mount options short: the
/// kernel takes one page of them, which absolute paths fill at ~35 layers.
fn mount_overlay(
    prepared: &Prepared,
    root: &Path,
    target: &Path,
    userxattr: bool,
) -> Result<(), String> {
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    let lowers: Vec<String> = prepared.lowers.iter().map(|p| rel(p)).collect();
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        rel(&prepared.upper),
        rel(&prepared.work)
    );
    if userxattr {
        options.push_str(",userxattr");
    }
    nix::unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| format!("mount overlay ({options}): {e}"))
}

impl Images {
    pub fn open(data_dir: &Path) -> Result<Self> {
        Ok(Images {
            content: ContentStore::open(data_dir)?,
            snapshots: Snapshotter::open(&data_dir.join("snapshots"))?,
        })
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    pub fn snapshots(&self) -> &Snapshotter {
        &self.snapshots
    }

    /// Unpacks the layers of `image` that have no snapshot yet, bottom up: the first
    /// straight into its snapshot, later ones through an overlay of the ones below,
    /// so deletions become overlay whiteouts and image symlinks resolve as they will
    /// in the container.
    pub fn unpack(&self, image: &ImportedImage) -> Result<UnpackReport> {
        let mut report = UnpackReport::default();
        let chains = image.chain_ids();
        for (k, layer) in image.layers.iter().enumerate() {
            if self.snapshots.exists(&chains[k]) {
                report.reused += 1;
                continue;
            }
            let prepared = self.snapshots.prepare(&chains[..=k])?;
            match self.unpack_layer(layer, &prepared) {
                Ok(warnings) => {
                    for w in warnings {
                        if !report.warnings.contains(&w) {
                            report.warnings.push(w);
                        }
                    }
                    self.snapshots.commit(prepared)?;
                    report.unpacked += 1;
                }
                Err(e) => {
                    self.snapshots.abort(prepared);
                    return Err(e);
                }
            }
        }
        Ok(report)
    }

    fn unpack_layer(&self, layer: &LayerInfo, prepared: &Prepared) -> Result<Vec<String>> {
        let blob = self.content.path(&layer.digest);
        let merged = prepared.dir.join("merged");
        let warnings_file = prepared.dir.join("warnings");
        let root = self.snapshots.root().to_path_buf();
        let name = layer.digest.to_string();
        // Decided out here: inside the user namespace everyone is root. Without it an
        // unprivileged overlay cannot store its xattrs, and removing a lower directory fails.
        let userxattr = !nix::unistd::Uid::effective().is_root();
        runtime::run_in_user_namespace(&format!("unpack layer {name}"), || {
            let target = if prepared.lowers.is_empty() {
                prepared.upper.clone()
            } else {
                std::fs::create_dir(&merged)
                    .map_err(|e| format!("create {}: {e}", merged.display()))?;
                mount_overlay(prepared, &root, &merged, userxattr)?;
                merged.clone()
            };
            let file =
                std::fs::File::open(&blob).map_err(|e| format!("open {}: {e}", blob.display()))?;
            let reader = layer
                .compression
                .decompress(file)
                .map_err(|e| e.to_string())?;
            let applied = snapshots::apply(&name, reader, &target).map_err(|e| e.to_string())?;
            if target == merged {
                nix::mount::umount2(&merged, MntFlags::MNT_DETACH)
                    .map_err(|e| format!("unmount: {e}"))?;
            }
            std::fs::write(&warnings_file, applied.warnings.join("\n")).map_err(|e| e.to_string())
        })
        .with_context(|| format!("unpack layer {name}"))?;
        let warnings = std::fs::read_to_string(&warnings_file).unwrap_or_default();
        let _ = std::fs::remove_file(&warnings_file);
        let _ = std::fs::remove_dir(&merged);
        Ok(warnings
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }
}
