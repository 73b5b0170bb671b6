//! Named volumes: `<data>/volumes/<name>/_data`, recorded in the metadata store with
//! the containers (running or stopped) that use them: `rcrun volume …`, and what
//! `run -v NAME:/path` needs.
//!
//! A volume's `_data` is made when a container first mounts it, as docker does: the
//! image's content at the mount path is copied in with its owners and modes, or,
//! where the image has no directory there, `_data` is empty, mode 0755, owned by
//! the container's user. It is built beside `_data` and renamed into place without
//! replacing anything, so racing rcrun processes agree on one; a volume that has
//! `_data` is never touched again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::containers::random_hex;
use crate::db::{Db, VolumeRemoval, VolumeRow, VolumeUser};
use crate::images::remove_trees;
use crate::spec::{self, ResolvedUser, VolumeSource};

/// `<data>/volumes`.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("volumes")
}

/// Where volume `name` is mounted from, under `root` (`<data>/volumes`).
pub fn mountpoint(root: &Path, name: &str) -> PathBuf {
    root.join(name).join("_data")
}

/// Where a removed volume's files wait to be deleted: out of the way at once, so
/// a new volume of the same name starts empty. `.trash-NAME-PID-RANDOM`.
const TRASH_PREFIX: &str = ".trash-";

/// A volume's `_data` being built, beside it: `.init-PID-RANDOM`.
const INIT_PREFIX: &str = ".init-";

/// The entries of `dir` named `PREFIX…-PID-RANDOM` whose process is gone (a live
/// one removes its own).
fn left_by_dead_processes(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(prefix)
                .and_then(|rest| rest.rsplit('-').nth(1))
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|e| e.path())
        .collect()
}

/// A volume as `volume ls` and `volume inspect` show it.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeView {
    pub name: String,
    pub mountpoint: PathBuf,
    pub created: String,
    /// The containers that use it; it cannot be removed while there are any.
    pub users: Vec<VolumeUser>,
}

fn view(data_dir: &Path, row: VolumeRow) -> VolumeView {
    VolumeView {
        mountpoint: mountpoint(&root(data_dir), &row.name),
        name: row.name,
        created: row.created,
        users: row.users,
    }
}

fn not_found(name: &str) -> anyhow::Error {
    anyhow!("no such volume: {name} (see `rcrun volume ls`)")
}

/// `volume create [NAME]`: records the volume (its files come with its first
/// container); an existing one is left as it is, as docker does. Returns the name.
pub fn create(db: &mut Db, name: Option<&str>) -> Result<String> {
    let name = match name {
        Some(n) => {
            spec::validate_name("volume", n)?;
            n.to_string()
        }
        None => random_hex(32)?,
    };
    db.create_volume(&name)
        .with_context(|| format!("record volume {name}"))?;
    Ok(name)
}

pub fn list(db: &Db, data_dir: &Path) -> Result<Vec<VolumeView>> {
    Ok(db
        .volumes()?
        .into_iter()
        .map(|row| view(data_dir, row))
        .collect())
}

pub fn inspect(db: &Db, data_dir: &Path, name: &str) -> Result<VolumeView> {
    let row = db.volume(name)?.ok_or_else(|| not_found(name))?;
    Ok(view(data_dir, row))
}

/// Forgets an unused volume and deletes its files.
fn remove_unused(db: &mut Db, data_dir: &Path, name: &str) -> Result<VolumeRemoval> {
    let dir = root(data_dir).join(name);
    let trash = root(data_dir).join(format!(
        "{TRASH_PREFIX}{name}-{}-{}",
        std::process::id(),
        random_hex(4)?
    ));
    let removal = db.remove_volume(name, || match std::fs::rename(&dir, &trash) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("move {} out of the way", dir.display()))
        }
        _ => Ok(()),
    })?;
    if removal == VolumeRemoval::Removed {
        remove_trees(&format!("remove the files of volume {name}"), &[trash]).with_context(
            || {
                format!(
                    "volume {name} is gone, but its files are left: `rcrun volume prune` retries"
                )
            },
        )?;
    }
    Ok(removal)
}

/// `volume rm`: refused while any container uses the volume (`force` does not
/// change that, as in docker; it only makes an unknown name no error). False if
/// there was no such volume.
pub fn remove(db: &mut Db, data_dir: &Path, name: &str, force: bool) -> Result<bool> {
    match remove_unused(db, data_dir, name)? {
        VolumeRemoval::Removed => Ok(true),
        VolumeRemoval::NotFound if force => Ok(false),
        VolumeRemoval::NotFound => Err(not_found(name)),
        VolumeRemoval::InUse(users) => {
            let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
            bail!(
                "volume {name} is in use by container(s) {}: remove them first (rcrun rm -f {}), then the volume; -f does not override this",
                names.join(", "),
                names.join(" ")
            )
        }
    }
}

/// `volume prune`: removes every volume no container uses, and the files of
/// removals that were interrupted. Returns the names removed.
pub fn prune(db: &mut Db, data_dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for row in db.volumes()? {
        if row.users.is_empty() && remove_unused(db, data_dir, &row.name)? == VolumeRemoval::Removed
        {
            removed.push(row.name);
        }
    }
    let leftovers = left_by_dead_processes(&root(data_dir), TRASH_PREFIX);
    remove_trees("remove the files of removed volumes", &leftovers)?;
    Ok(removed)
}

/// A named volume a container mounts, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub name: String,
    pub dest: String,
}

/// The named volumes among `-v` flags (each flag checked).
pub fn uses(volumes: &[String]) -> Result<Vec<Use>> {
    let mut out = Vec::new();
    for v in volumes {
        let parsed = spec::parse_volume(v)?;
        if let VolumeSource::Named(name) = parsed.source {
            out.push(Use {
                name,
                dest: parsed.dest,
            });
        }
    }
    Ok(out)
}

/// Records that `container` uses `uses` (making the volumes that do not exist; their
/// names are added to `made`) and makes each volume's `_data` that is missing from
/// the image `lowers` (top first) at the mount path, owned as described at the top.
pub fn attach(
    db: &mut Db,
    data_dir: &Path,
    container: &str,
    uses: &[Use],
    lowers: &[PathBuf],
    user: &ResolvedUser,
    made: &mut Vec<String>,
) -> Result<()> {
    if uses.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = uses.iter().map(|u| u.name.clone()).collect();
    made.extend(
        db.use_volumes(container, &names)
            .context("record the container's volumes")?,
    );
    for u in uses {
        populate(data_dir, u, lowers, user)
            .with_context(|| format!("-v {}:{}: make volume {}", u.name, u.dest, u.name))?;
    }
    Ok(())
}

/// After a failed container create: removes the volumes it made, unless another
/// container uses them by now.
pub fn discard(db: &mut Db, data_dir: &Path, made: &[String]) -> Result<()> {
    for name in made {
        remove_unused(db, data_dir, name)?;
    }
    Ok(())
}

/// Makes `_data` of a volume that has none; see the top of the module.
fn populate(data_dir: &Path, u: &Use, lowers: &[PathBuf], user: &ResolvedUser) -> Result<()> {
    let data = mountpoint(&root(data_dir), &u.name);
    if std::fs::symlink_metadata(&data).is_ok() {
        return Ok(());
    }
    let dir = root(data_dir).join(&u.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let temp = dir.join(format!(
        "{INIT_PREFIX}{}-{}",
        std::process::id(),
        random_hex(4)?
    ));
    let crashed = left_by_dead_processes(&dir, INIT_PREFIX);
    let (uid, gid) = (user.uid, user.gid);
    // Inside the user namespace the owners are the container's ids.
    runtime::run_in_user_namespace(&format!("initialize volume {}", u.name), || {
        for old in &crashed {
            let _ = std::fs::remove_dir_all(old);
        }
        let made = (|| {
            std::fs::create_dir(&temp).map_err(|e| format!("create {}: {e}", temp.display()))?;
            let copied = snapshots::flatten_subtree(lowers, Path::new(&u.dest), &temp)
                .map_err(|e| format!("copy {} from the image: {e}", u.dest))?;
            if !copied {
                match std::os::unix::fs::lchown(&temp, Some(uid), Some(gid)) {
                    // Without subordinate ids only the user's own id is mapped.
                    Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
                        return Err(format!("chown {} to {uid}:{gid}: {e}", temp.display()));
                    }
                    _ => {}
                }
                std::fs::set_permissions(
                    &temp,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )
                .map_err(|e| format!("chmod {}: {e}", temp.display()))?;
            }
            // Never over another process's `_data`, even an empty one.
            match nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &temp,
                nix::fcntl::AT_FDCWD,
                &data,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
                Err(e) => Err(format!(
                    "rename {} to {}: {e}",
                    temp.display(),
                    data.display()
                )),
            }
        })();
        if std::fs::symlink_metadata(&temp).is_ok() {
            let _ = std::fs::remove_dir_all(&temp);
        }
        made
    })?;
    Ok(())
}
