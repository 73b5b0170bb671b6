//! Images on disk: the content store and the chain-id snapshots under the data
//! directory, the image names in the metadata database, pulling (import from local
//! formats, registries) and unpacking an image's layers into snapshots inside the
//! user namespace, so the owners of the image's files survive; removal and gc.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::mount::{MntFlags, MsFlags};
use snapshots::{ContentStore, Digest, ImportedImage, LayerInfo, Platform, Prepared, Snapshotter};

use crate::db::{Db, ImageRow};

pub struct Images {
    data_dir: PathBuf,
    content: ContentStore,
    snapshots: Snapshotter,
    db: Db,
}

/// Where `rcrun pull` takes an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `oci:DIR[:TAG]`
    Layout { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`
    OciArchive { file: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE[:NAME:TAG]`
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
    /// `host[:port]/repo[:tag|@digest]` or a Docker Hub short name.
    Registry(String),
}

impl Source {
    pub fn parse(text: &str) -> Result<Self> {
        // The path ends at the first ':' after the transport, as in skopeo.
        let split = |rest: &str| -> Result<(PathBuf, Option<String>)> {
            let (path, tag) = match rest.split_once(':') {
                Some((p, t)) => (p, Some(t.to_string())),
                None => (rest, None),
            };
            if path.is_empty() {
                bail!("{text:?} names no file or directory: write e.g. oci:./layout:latest");
            }
            if tag.as_deref() == Some("") {
                bail!("{text:?} ends with ':' but names no tag after it");
            }
            Ok((PathBuf::from(path), tag))
        };
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = split(rest)?;
            return Ok(Source::Layout { dir, tag });
        }
        if let Some(rest) = text.strip_prefix("oci-archive:") {
            let (file, tag) = split(rest)?;
            return Ok(Source::OciArchive { file, tag });
        }
        if let Some(rest) = text.strip_prefix("docker-archive:") {
            let (file, reference) = split(rest)?;
            return Ok(Source::DockerArchive { file, reference });
        }
        if text.is_empty() {
            bail!("no image given");
        }
        Ok(Source::Registry(text.to_string()))
    }

    /// The name an import is stored under: `localhost/<file stem>:<tag>`, or the
    /// archive's own name for docker archives.
    fn local_name(&self) -> Option<String> {
        let stem = |p: &Path, tag: &Option<String>| {
            let base = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let base = base
                .trim_end_matches(".tar")
                .trim_end_matches(".tgz")
                .to_lowercase();
            let base: String = base
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let base = base.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            if base.is_empty() {
                return None;
            }
            Some(format!(
                "localhost/{base}:{}",
                tag.as_deref().unwrap_or("latest")
            ))
        };
        match self {
            Source::Layout { dir, tag } => stem(dir, tag),
            Source::OciArchive { file, tag } => stem(file, tag),
            Source::DockerArchive { reference, .. } => reference.as_deref().map(qualify_local),
            Source::Registry(_) => None,
        }
    }
}

/// `busybox:1.35` → `localhost/busybox:1.35`; names with a registry stay as they are.
fn qualify_local(name: &str) -> String {
    let (repo, tag) = split_tag(name);
    let first = repo.split('/').next().unwrap_or_default();
    let has_host =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let repo = if has_host {
        repo.to_string()
    } else {
        format!("localhost/{repo}")
    };
    format!("{repo}:{}", tag.unwrap_or("latest"))
}

/// Splits `repo[:tag]` (a ':' before the last '/' belongs to a host port).
fn split_tag(name: &str) -> (&str, Option<&str>) {
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
        None => (name, None),
    }
}

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub platform: Option<String>,
    pub creds: Option<String>,
    pub cert_dir: Option<PathBuf>,
    pub tls_verify: Option<bool>,
}

/// What a pull stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub id: String,
    pub name: Option<String>,
    pub unpack: UnpackReport,
}

/// Shows a pull's progress: downloads (from the snapshots crate) and unpacks.
pub trait PullDisplay: UnpackDisplay {
    fn as_progress(&self) -> &dyn snapshots::Progress;
    fn as_unpack(&self) -> &dyn UnpackDisplay;
}

pub trait UnpackDisplay {
    fn unpacking(&self, _layer: &Digest) {}
    fn unpacked(&self, _layer: &Digest) {}
}

/// Nothing shown (stderr is not a terminal, or a library caller).
pub struct NoDisplay;

impl UnpackDisplay for NoDisplay {}

impl PullDisplay for NoDisplay {
    fn as_progress(&self) -> &dyn snapshots::Progress {
        &snapshots::NoProgress
    }
    fn as_unpack(&self) -> &dyn UnpackDisplay {
        self
    }
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub blobs: usize,
    pub snapshots: usize,
    pub leftovers: usize,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    pub unpacked: usize,
    pub reused: usize,
    pub warnings: Vec<String>,
}

/// `$RCRUN_DATA_DIR` if set; else `$XDG_DATA_HOME/rcrun` (default
/// `~/.local/share/rcrun`), `/var/lib/rcrun` for root.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RCRUN_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
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

/// Opens (creating) and flocks `path`; the lock lasts as long as the file.
fn lock_file(path: &Path, exclusive: bool) -> Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    if exclusive {
        file.lock()
    } else {
        file.lock_shared()
    }
    .with_context(|| format!("lock {}", path.display()))?;
    Ok(file)
}

/// Removes host paths whose contents belong to subordinate ids, from inside the user
/// namespace where they are ours.
pub fn remove_trees(what: &str, paths: &[PathBuf]) -> Result<()> {
    let existing: Vec<&PathBuf> = paths.iter().filter(|p| p.exists()).collect();
    if existing.is_empty() {
        return Ok(());
    }
    runtime::run_in_user_namespace(what, || {
        for p in &existing {
            match std::fs::remove_dir_all(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("remove {}: {e}", p.display()));
                }
                _ => {}
            }
        }
        Ok(())
    })
    .with_context(|| what.to_string())
}

impl Images {
    pub fn open(data_dir: &Path) -> Result<Self> {
        Ok(Images {
            data_dir: data_dir.to_path_buf(),
            content: ContentStore::open(data_dir)?,
            snapshots: Snapshotter::open(&data_dir.join("snapshots"))?,
            db: Db::open(data_dir)?,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn db(&mut self) -> &mut Db {
        &mut self.db
    }

    pub fn db_ref(&self) -> &Db {
        &self.db
    }

    /// Pulls and gc exclude each other: a pull holds this shared, gc exclusive.
    pub fn lock(&self, exclusive: bool) -> Result<File> {
        lock_file(&self.data_dir.join("gc.lock"), exclusive)
    }

    /// Holds an exclusive lock on unpacking `chain` until dropped.
    fn lock_chain(&self, chain: &Digest) -> Result<File> {
        let dir = self.data_dir.join("locks");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        lock_file(&dir.join(chain.hex()), true)
    }

    /// Imports or downloads an image, names it, and unpacks its layers.
    pub fn pull(&mut self, reference: &str, opts: &PullOptions) -> Result<Pulled> {
        self.pull_with(reference, opts, &NoDisplay)
    }

    pub fn pull_with(
        &mut self,
        reference: &str,
        opts: &PullOptions,
        display: &dyn PullDisplay,
    ) -> Result<Pulled> {
        let source = Source::parse(reference)?;
        let platform = match &opts.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        };
        let _lock = self.lock(false)?;
        let (image, name, unpack) = match &source {
            Source::Registry(text) => self.pull_registry(text, opts, platform, display)?,
            local => {
                let image = match local {
                    Source::Layout { dir, tag } => {
                        snapshots::import_layout(&self.content, dir, tag.as_deref(), &platform)?
                    }
                    Source::OciArchive { file, tag } => snapshots::import_oci_archive(
                        &self.content,
                        file,
                        tag.as_deref(),
                        &platform,
                    )?,
                    Source::DockerArchive { file, reference } => snapshots::import_docker_archive(
                        &self.content,
                        file,
                        reference.as_deref(),
                        &platform,
                    )?,
                    Source::Registry(_) => unreachable!("handled above"),
                };
                let name = match (local, source.local_name()) {
                    (_, Some(n)) => Some(n),
                    (Source::DockerArchive { file, .. }, None) => {
                        snapshots::docker_archive_tags(file)?
                            .first()
                            .map(|t| qualify_local(t))
                    }
                    _ => None,
                };
                let mut report = UnpackReport::default();
                let chains = image.chain_ids();
                for (k, layer) in image.layers.iter().enumerate() {
                    self.unpack_one(&chains[..=k], layer, &mut report, display.as_unpack())?;
                }
                (image, name, report)
            }
        };
        if unpack.unpacked > 0
            && !nix::unistd::Uid::effective().is_root()
            && !runtime::current_user_mappings().2
        {
            eprintln!(
                "warning: no subordinate ids for this user in /etc/subuid and /etc/subgid: every file of the image is owned by you (add ranges with `usermod --add-subuids`/`--add-subgids`, then pull again)"
            );
        }
        self.db
            .put_image(&image, name.as_deref(), reference)
            .context("record the image")?;
        Ok(Pulled {
            id: image.config.to_string(),
            name,
            unpack,
        })
    }

    /// Finds a stored image by full name, short name or id (prefix); also says
    /// which of its names matched, if one did.
    pub fn find_named(&self, reference: &str) -> Result<Option<(ImageRow, Option<String>)>> {
        let (repo, tag) = split_tag(reference);
        let tagged = format!("{repo}:{}", tag.unwrap_or("latest"));
        for candidate in [
            reference.to_string(),
            tagged.clone(),
            qualify_local(reference),
            format!("docker.io/library/{tagged}"),
            format!("docker.io/{tagged}"),
        ] {
            if let Some(found) = self.db.image_by_name(&candidate)? {
                return Ok(Some((found, Some(candidate))));
            }
        }
        let matches = self.db.names_ending_with(&tagged)?;
        match matches.as_slice() {
            [one] => {
                return Ok(self
                    .db
                    .image_by_name(one)?
                    .map(|found| (found, Some(one.clone()))));
            }
            [] => {}
            many => bail!(
                "{reference} is ambiguous: it could be any of {}; give the full name",
                many.join(", ")
            ),
        }
        if reference.len() >= 4 {
            return Ok(self.db.image_by_id(reference)?.map(|found| (found, None)));
        }
        Ok(None)
    }

    pub fn find(&self, reference: &str) -> Result<Option<ImageRow>> {
        Ok(self.find_named(reference)?.map(|(image, _)| image))
    }

    /// The image to run: stored, else pulled.
    pub fn find_or_pull(
        &mut self,
        reference: &str,
        opts: &PullOptions,
        display: &dyn PullDisplay,
    ) -> Result<ImageRow> {
        let is_local_source =
            Source::parse(reference).is_ok_and(|s| !matches!(s, Source::Registry(_)));
        if !is_local_source && let Some(found) = self.find(reference)? {
            return Ok(found);
        }
        let pulled = self.pull_with(reference, opts, display)?;
        self.db
            .image_by_id(&pulled.id)?
            .ok_or_else(|| anyhow!("image {} vanished after the pull", pulled.id))
    }

    /// The image's config, from the content store.
    pub fn config(&self, image: &ImageRow) -> Result<oci_spec::image::ImageConfiguration> {
        let digest: Digest = image.id.parse()?;
        let bytes = self.content.read_metadata(&digest)?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("image {}: malformed config", image.id))
    }

    /// Overlay lower directories of an image, top layer first.
    pub fn lowerdirs(&self, image: &ImageRow) -> Result<Vec<PathBuf>> {
        let chains = image.chain_ids()?;
        let lowers = self.snapshots.lowerdirs(&chains).with_context(|| {
            format!(
                "image {} is incomplete on disk; pull it again",
                image.names.first().unwrap_or(&image.id)
            )
        })?;
        if lowers.is_empty() {
            bail!("image {} has no layers", image.id);
        }
        Ok(lowers)
    }

    /// `rmi`: a name of an image with several names is only untagged; otherwise
    /// the image goes, unless a container uses it (with `force`, its names go).
    pub fn remove(&mut self, reference: &str, force: bool) -> Result<Vec<String>> {
        let (image, matched) = self
            .find_named(reference)?
            .ok_or_else(|| anyhow!("no such image: {reference} (see `rcrun images`)"))?;
        if let Some(name) = matched.filter(|_| image.names.len() > 1) {
            self.db.untag(&name)?;
            return Ok(vec![format!("Untagged: {name}")]);
        }
        let users = self.db.remove_image(&image.id, force)?;
        if !users.is_empty() && !force {
            bail!(
                "image {reference} is in use by container(s) {}: remove them first (rcrun rm) or pass --force",
                users.join(", ")
            );
        }
        let mut done: Vec<String> = image
            .names
            .iter()
            .map(|n| format!("Untagged: {n}"))
            .collect();
        if users.is_empty() {
            done.push(format!("Deleted: {}", image.id));
        }
        Ok(done)
    }

    /// `image prune`: drops images without a name (all unused ones with `all`).
    pub fn prune(&mut self, all: bool) -> Result<Vec<String>> {
        let ids = self.db.dangling_images(all)?;
        for id in &ids {
            self.db.remove_image(id, false)?;
        }
        Ok(ids)
    }

    /// Removes every blob and snapshot no image or container needs, crashed
    /// unpacks and ingests, and container directories with no record.
    pub fn gc(&mut self) -> Result<GcReport> {
        let _lock = self.lock(true)?;
        let mut report = GcReport::default();
        let mut blobs: HashSet<Digest> = HashSet::new();
        let mut chains: HashSet<Digest> = HashSet::new();
        for image in self.db.images()? {
            blobs.insert(image.id.parse()?);
            blobs.insert(image.manifest.parse()?);
            for l in &image.layers {
                blobs.insert(l.digest.parse()?);
            }
            chains.extend(image.chain_ids()?);
        }
        for digest in self.content.list()? {
            if !blobs.contains(&digest) {
                self.content.remove(&digest)?;
                report.blobs += 1;
            }
        }
        let mut doomed = Vec::new();
        for chain in self.snapshots.list()? {
            if !chains.contains(&chain) {
                doomed.push(self.snapshots.root().join(chain.hex()));
                report.snapshots += 1;
            }
        }
        let mut leftovers = self.content.clean()?;
        for entry in std::fs::read_dir(self.snapshots.root())?.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                doomed.push(entry.path());
                leftovers += 1;
            }
        }
        // Nothing unpacks while gc holds its lock: every chain lock is stale.
        let _ = std::fs::remove_dir_all(self.data_dir.join("locks"));
        let known: HashSet<String> = self.db.containers()?.into_iter().map(|c| c.id).collect();
        if let Ok(entries) = std::fs::read_dir(self.data_dir.join("containers")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if !known.contains(&name) {
                    doomed.push(entry.path());
                    leftovers += 1;
                }
            }
        }
        remove_trees("remove unused snapshots", &doomed)?;
        report.leftovers = leftovers;
        Ok(report)
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
            self.unpack_one(&chains[..=k], layer, &mut report, &NoDisplay)?;
        }
        Ok(report)
    }

    /// Unpacks the layer whose chain is `chains` (its own chain id last) unless a
    /// snapshot of it exists.
    fn unpack_one(
        &self,
        chains: &[Digest],
        layer: &LayerInfo,
        report: &mut UnpackReport,
        display: &dyn UnpackDisplay,
    ) -> Result<()> {
        let chain = chains.last().expect("a layer has a chain id");
        // Concurrent pulls of one layer: the second waits here, then reuses.
        let _unpacking = self.lock_chain(chain)?;
        if self.snapshots.exists(chain) {
            report.reused += 1;
            return Ok(());
        }
        display.unpacking(&layer.digest);
        let prepared = self.snapshots.prepare(chains)?;
        let leftover = prepared.dir.clone();
        let result = self.unpack_layer(layer, &prepared).and_then(|warnings| {
            for w in warnings {
                if !report.warnings.contains(&w) {
                    report.warnings.push(w);
                }
            }
            Ok(self.snapshots.commit(prepared)?)
        });
        // The files belong to subordinate ids: remove what is left (a failed
        // unpack) from inside the user namespace.
        remove_trees("remove a failed unpack", &[leftover])?;
        result?;
        report.unpacked += 1;
        display.unpacked(&layer.digest);
        Ok(())
    }

    /// Downloads from a registry; each layer is unpacked as soon as it and the ones
    /// below it are verified, while later layers still download.
    fn pull_registry(
        &self,
        text: &str,
        opts: &PullOptions,
        platform: Platform,
        display: &dyn PullDisplay,
    ) -> Result<(ImportedImage, Option<String>, UnpackReport)> {
        let reference = snapshots::Reference::parse(text)?;
        let options = snapshots::PullOptions {
            platform,
            creds: opts
                .creds
                .as_deref()
                .map(snapshots::Credentials::parse)
                .transpose()?,
            cert_dir: opts.cert_dir.clone(),
            tls_verify: opts.tls_verify.unwrap_or(true),
            ..Default::default()
        };
        let mut report = UnpackReport::default();
        let mut diff_ids = Vec::new();
        let pulled = snapshots::pull(
            &self.content,
            &reference,
            &options,
            display.as_progress(),
            &mut |_, layer| {
                diff_ids.push(layer.diff_id.clone());
                let chains = snapshots::chain_ids(&diff_ids);
                self.unpack_one(&chains, layer, &mut report, display.as_unpack())
                    .map_err(|e| snapshots::Error::Image {
                        image: reference.to_string(),
                        reason: format!("{e:#}"),
                    })
            },
        )?;
        // By digest only: no tag to name it by, as docker.
        let name = reference
            .tag()
            .map(|tag| format!("{}:{tag}", reference.name()));
        Ok((pulled.image, name, report))
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
