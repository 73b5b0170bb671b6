//! The metadata store: images (names → manifest), containers and volumes, in one
//! SQLite database (WAL, busy timeout), so concurrent rcrun processes never corrupt it and a
//! container name is claimed by exactly one of them.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use runtime::now_rfc3339;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use snapshots::{Digest, ImportedImage, LayerInfo};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    id       TEXT PRIMARY KEY,      -- config digest
    manifest TEXT NOT NULL,
    layers   TEXT NOT NULL,         -- JSON list of StoredLayer
    size     INTEGER NOT NULL,      -- compressed bytes of the layers
    created  TEXT NOT NULL,         -- when rcrun stored it
    source   TEXT NOT NULL          -- what it was pulled from
);
CREATE TABLE IF NOT EXISTS image_names (
    name  TEXT PRIMARY KEY,
    image TEXT NOT NULL REFERENCES images(id)
);
CREATE TABLE IF NOT EXISTS containers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    image       TEXT NOT NULL,      -- image id
    image_name  TEXT NOT NULL,      -- as the user typed it
    command     TEXT NOT NULL,      -- JSON argv
    created     TEXT NOT NULL,
    auto_remove INTEGER NOT NULL,
    exit_code   INTEGER,
    finished    TEXT,
    owner_pid   INTEGER,            -- the process that is its monitor while it runs
    owner_start INTEGER             -- that process's start time (pid reuse)
);
";

const VOLUME_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS volumes (
    name    TEXT PRIMARY KEY,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS volume_users (
    container TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    volume    TEXT NOT NULL REFERENCES volumes(name),
    PRIMARY KEY (container, volume)
);
";

/// A layer as the database keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredLayer {
    pub digest: String,
    pub size: u64,
    pub compression: String,
    pub diff_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    pub id: String,
    pub manifest: String,
    pub layers: Vec<StoredLayer>,
    pub size: u64,
    pub created: String,
    pub source: String,
    pub names: Vec<String>,
}

impl ImageRow {
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        self.layers
            .iter()
            .map(|l| {
                l.diff_id
                    .parse()
                    .with_context(|| format!("image {} in the database", self.id))
            })
            .collect()
    }

    pub fn chain_ids(&self) -> Result<Vec<Digest>> {
        Ok(snapshots::chain_ids(&self.diff_ids()?))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerRow {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_name: String,
    pub command: Vec<String>,
    pub created: String,
    pub auto_remove: bool,
    pub exit_code: Option<i32>,
    pub finished: Option<String>,
}

/// A named volume and the containers (running or not) that use it.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeRow {
    pub name: String,
    pub created: String,
    pub users: Vec<VolumeUser>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VolumeUser {
    pub id: String,
    pub name: String,
}

/// What [`Db::remove_volume`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeRemoval {
    Removed,
    NotFound,
    /// Kept: these containers use it.
    InUse(Vec<VolumeUser>),
}

pub struct Db {
    conn: Connection,
    path: std::path::PathBuf,
}

fn layer_to_stored(l: &LayerInfo) -> StoredLayer {
    StoredLayer {
        digest: l.digest.to_string(),
        size: l.size,
        compression: format!("{:?}", l.compression).to_lowercase(),
        diff_id: l.diff_id.to_string(),
    }
}

impl Db {
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("create {}", data_dir.display()))?;
        let path = data_dir.join("rcrun.db");
        let conn =
            Connection::open(&path).with_context(|| format!("open database {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        enable_wal(&conn).with_context(|| format!("enable WAL on {}", path.display()))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("create the schema of {}", path.display()))?;
        conn.execute_batch(crate::networks::SCHEMA)
            .with_context(|| format!("create the network schema of {}", path.display()))?;
        conn.execute_batch(VOLUME_SCHEMA)
            .with_context(|| format!("create the volume schema of {}", path.display()))?;
        Ok(Db { conn, path })
    }

    /// Closes the database before a fork: SQLite's per-process lock state must not
    /// be inherited. Until [`Db::resume`], queries see an empty in-memory database.
    pub fn suspend(&mut self) -> Result<()> {
        let memory = Connection::open_in_memory()?;
        drop(std::mem::replace(&mut self.conn, memory));
        Ok(())
    }

    pub fn resume(&mut self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        *self = Db::open(dir)?;
        Ok(())
    }

    /// Records an image and points `name` (if any) at it, moving the name off any
    /// image that had it.
    pub fn put_image(
        &mut self,
        image: &ImportedImage,
        name: Option<&str>,
        source: &str,
    ) -> Result<()> {
        let layers: Vec<StoredLayer> = image.layers.iter().map(layer_to_stored).collect();
        let size: u64 = image.layers.iter().map(|l| l.size).sum();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO images (id, manifest, layers, size, created, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET manifest = excluded.manifest, source = excluded.source",
            params![
                image.config.to_string(),
                image.manifest.to_string(),
                serde_json::to_string(&layers)?,
                size as i64,
                now_rfc3339(),
                source
            ],
        )?;
        if let Some(name) = name {
            tx.execute(
                "INSERT INTO image_names (name, image) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET image = excluded.image",
                params![name, image.config.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn image_from_row(&self, row: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRow> {
        let layers: String = row.get(2)?;
        Ok(ImageRow {
            id: row.get(0)?,
            manifest: row.get(1)?,
            layers: serde_json::from_str(&layers).unwrap_or_default(),
            size: row.get::<_, i64>(3)? as u64,
            created: row.get(4)?,
            source: row.get(5)?,
            names: Vec::new(),
        })
    }

    fn with_names(&self, mut image: ImageRow) -> Result<ImageRow> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM image_names WHERE image = ?1 ORDER BY name")?;
        image.names = stmt
            .query_map([&image.id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(image)
    }

    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, manifest, layers, size, created, source FROM images ORDER BY created DESC",
        )?;
        let rows: Vec<ImageRow> = stmt
            .query_map([], |r| self.image_from_row(r))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter().map(|r| self.with_names(r)).collect()
    }

    pub fn image_by_name(&self, name: &str) -> Result<Option<ImageRow>> {
        let row = self
            .conn
            .query_row(
                "SELECT i.id, i.manifest, i.layers, i.size, i.created, i.source
                 FROM images i JOIN image_names n ON n.image = i.id WHERE n.name = ?1",
                [name],
                |r| self.image_from_row(r),
            )
            .optional()?;
        row.map(|r| self.with_names(r)).transpose()
    }

    /// An image by full id, or by an unambiguous id prefix (`sha256:` optional).
    pub fn image_by_id(&self, prefix: &str) -> Result<Option<ImageRow>> {
        let hex = prefix.strip_prefix("sha256:").unwrap_or(prefix);
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let mut stmt = self.conn.prepare(
            "SELECT id, manifest, layers, size, created, source FROM images WHERE id LIKE ?1",
        )?;
        let rows: Vec<ImageRow> = stmt
            .query_map([format!("sha256:{}%", hex.to_lowercase())], |r| {
                self.image_from_row(r)
            })?
            .collect::<rusqlite::Result<_>>()?;
        match rows.len() {
            0 => Ok(None),
            1 => Ok(Some(self.with_names(rows.into_iter().next().unwrap())?)),
            n => {
                bail!("image id prefix {prefix} is ambiguous ({n} images match); give more digits")
            }
        }
    }

    /// Names that end in `/short` (for short-name lookup of local images).
    pub fn names_ending_with(&self, short: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT name FROM image_names")?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let suffix = format!("/{short}");
        Ok(names.into_iter().filter(|n| n.ends_with(&suffix)).collect())
    }

    /// Drops `name`; the image itself stays until it has no name (then it goes too,
    /// unless a container uses it). Returns the image id the name pointed at.
    pub fn untag(&mut self, name: &str) -> Result<Option<String>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id: Option<String> = tx
            .query_row(
                "SELECT image FROM image_names WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        if id.is_some() {
            tx.execute("DELETE FROM image_names WHERE name = ?1", [name])?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// Deletes an image and its names unless a container uses it; returns the
    /// names of the containers that do.
    pub fn remove_image(&mut self, id: &str, force: bool) -> Result<Vec<String>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let users: Vec<String> = {
            let mut stmt = tx.prepare("SELECT name FROM containers WHERE image = ?1")?;
            stmt.query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        if !users.is_empty() && !force {
            return Ok(users);
        }
        tx.execute("DELETE FROM image_names WHERE image = ?1", [id])?;
        if users.is_empty() {
            tx.execute("DELETE FROM images WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(users)
    }

    /// Images with no name and no container.
    pub fn dangling_images(&self, all_unused: bool) -> Result<Vec<String>> {
        let sql = if all_unused {
            "SELECT id FROM images WHERE id NOT IN (SELECT image FROM containers)"
        } else {
            "SELECT id FROM images WHERE id NOT IN (SELECT image FROM image_names)
             AND id NOT IN (SELECT image FROM containers)"
        };
        let mut stmt = self.conn.prepare(sql)?;
        Ok(stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Claims a container name: fails if another container has it.
    pub fn insert_container(&mut self, c: &ContainerRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO containers (id, name, image, image_name, command, created, auto_remove)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                c.id,
                c.name,
                c.image,
                c.image_name,
                serde_json::to_string(&c.command)?,
                c.created,
                c.auto_remove
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let holder = self.container(&c.name)?.map(|h| h.id).unwrap_or_default();
                bail!(
                    "the container name {:?} is already in use by container {}: remove that container (rcrun rm {}) or choose another name",
                    c.name,
                    short_id(&holder),
                    c.name
                )
            }
            Err(e) => Err(e).context("record the container"),
        }
    }

    fn container_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ContainerRow> {
        let command: String = row.get(4)?;
        Ok(ContainerRow {
            id: row.get(0)?,
            name: row.get(1)?,
            image: row.get(2)?,
            image_name: row.get(3)?,
            command: serde_json::from_str(&command).unwrap_or_default(),
            created: row.get(5)?,
            auto_remove: row.get(6)?,
            exit_code: row.get(7)?,
            finished: row.get(8)?,
        })
    }

    const CONTAINER_COLUMNS: &str =
        "id, name, image, image_name, command, created, auto_remove, exit_code, finished";

    /// A container by name, full id or unambiguous id prefix.
    pub fn container(&self, key: &str) -> Result<Option<ContainerRow>> {
        let by_name = self
            .conn
            .query_row(
                &format!(
                    "SELECT {} FROM containers WHERE name = ?1 OR id = ?1",
                    Self::CONTAINER_COLUMNS
                ),
                [key],
                Self::container_from_row,
            )
            .optional()?;
        if by_name.is_some() || key.len() < 3 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(by_name);
        }
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM containers WHERE id LIKE ?1",
            Self::CONTAINER_COLUMNS
        ))?;
        let rows: Vec<ContainerRow> = stmt
            .query_map([format!("{key}%")], Self::container_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        match rows.len() {
            0 => Ok(None),
            1 => Ok(rows.into_iter().next()),
            n => bail!(
                "container id prefix {key} is ambiguous ({n} containers match); give more digits"
            ),
        }
    }

    pub fn containers(&self) -> Result<Vec<ContainerRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM containers ORDER BY created DESC",
            Self::CONTAINER_COLUMNS
        ))?;
        Ok(stmt
            .query_map([], Self::container_from_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_exit(&mut self, id: &str, code: i32) -> Result<()> {
        self.conn.execute(
            "UPDATE containers SET exit_code = ?2, finished = ?3, owner_pid = NULL WHERE id = ?1",
            params![id, code, now_rfc3339()],
        )?;
        Ok(())
    }

    pub(crate) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub(crate) fn conn_ref(&self) -> &Connection {
        &self.conn
    }

    /// Records which process monitors the container (and must be alive while
    /// it runs).
    pub fn set_owner(&mut self, id: &str, owner: Option<(i32, u64)>) -> Result<()> {
        self.conn.execute(
            "UPDATE containers SET owner_pid = ?2, owner_start = ?3 WHERE id = ?1",
            params![id, owner.map(|o| o.0), owner.map(|o| o.1 as i64)],
        )?;
        Ok(())
    }

    /// Containers without a recorded exit that have a monitor: (id, pid, start).
    pub fn monitored(&self) -> Result<Vec<(String, i32, u64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, owner_pid, owner_start FROM containers
             WHERE exit_code IS NULL AND owner_pid IS NOT NULL",
        )?;
        Ok(stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets a container, and with it (ON DELETE CASCADE) its network
    /// attachments, leases, ports and volume uses.
    pub fn remove_container(&mut self, id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM containers WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Records a volume unless it exists; true if this call made it.
    pub fn create_volume(&mut self, name: &str) -> Result<bool> {
        let made = self.conn.execute(
            "INSERT OR IGNORE INTO volumes (name, created) VALUES (?1, ?2)",
            params![name, now_rfc3339()],
        )?;
        Ok(made == 1)
    }

    /// Records that `container` uses `volumes`, making the ones that do not exist,
    /// in one transaction; returns the names it made.
    pub fn use_volumes(&mut self, container: &str, volumes: &[String]) -> Result<Vec<String>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut made = Vec::new();
        for name in volumes {
            let new = tx.execute(
                "INSERT OR IGNORE INTO volumes (name, created) VALUES (?1, ?2)",
                params![name, now_rfc3339()],
            )?;
            if new == 1 {
                made.push(name.clone());
            }
            tx.execute(
                "INSERT OR IGNORE INTO volume_users (container, volume) VALUES (?1, ?2)",
                params![container, name],
            )?;
        }
        tx.commit()?;
        Ok(made)
    }

    fn volume_users(conn: &Connection, name: &str) -> Result<Vec<VolumeUser>> {
        let mut stmt = conn.prepare_cached(
            "SELECT c.id, c.name FROM volume_users u JOIN containers c ON c.id = u.container
             WHERE u.volume = ?1 ORDER BY c.name",
        )?;
        Ok(stmt
            .query_map([name], |r| {
                Ok(VolumeUser {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    pub fn volume(&self, name: &str) -> Result<Option<VolumeRow>> {
        let created: Option<String> = self
            .conn
            .query_row("SELECT created FROM volumes WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        created
            .map(|created| {
                Ok(VolumeRow {
                    name: name.to_string(),
                    created,
                    users: Self::volume_users(&self.conn, name)?,
                })
            })
            .transpose()
    }

    pub fn volumes(&self) -> Result<Vec<VolumeRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, created FROM volumes ORDER BY name")?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(name, created)| {
                let users = Self::volume_users(&self.conn, &name)?;
                Ok(VolumeRow {
                    name,
                    created,
                    users,
                })
            })
            .collect()
    }

    /// Forgets a volume that no container uses. `unlink` (moving its files out of
    /// the way) runs inside the transaction, so no container can start using the
    /// volume between the check and the removal; if it fails, nothing changes.
    pub fn remove_volume(
        &mut self,
        name: &str,
        unlink: impl FnOnce() -> Result<()>,
    ) -> Result<VolumeRemoval> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row("SELECT 1 FROM volumes WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some();
        if !exists {
            return Ok(VolumeRemoval::NotFound);
        }
        let users = Self::volume_users(&tx, name)?;
        if !users.is_empty() {
            return Ok(VolumeRemoval::InUse(users));
        }
        tx.execute("DELETE FROM volumes WHERE name = ?1", [name])?;
        unlink()?;
        tx.commit()?;
        Ok(VolumeRemoval::Removed)
    }
}

/// Switches a new database to WAL (it persists). SQLite answers BUSY at once, without
/// its busy handler, when two processes create the database together: retry with
/// backoff for as long as the busy timeout would wait.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(1);
    loop {
        let mode = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0));
        match mode {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other.map(drop),
        }
    }
}

pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshots::Compression;

    fn image(n: u8) -> ImportedImage {
        let d = |s: &str| Digest::of(format!("{s}{n}").as_bytes());
        ImportedImage {
            manifest: d("manifest"),
            config: d("config"),
            layers: vec![LayerInfo {
                digest: d("layer"),
                size: 10,
                compression: Compression::Gzip,
                diff_id: d("diff"),
            }],
        }
    }

    fn container(id: &str, name: &str, image: &str) -> ContainerRow {
        ContainerRow {
            id: id.into(),
            name: name.into(),
            image: image.into(),
            image_name: "x".into(),
            command: vec!["sh".into()],
            created: now_rfc3339(),
            auto_remove: false,
            exit_code: None,
            finished: None,
        }
    }

    #[test]
    fn a_name_moves_to_the_newer_image_and_the_old_one_dangles() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path()).unwrap();
        db.put_image(&image(1), Some("localhost/a:1"), "test")
            .unwrap();
        db.put_image(&image(2), Some("localhost/a:1"), "test")
            .unwrap();
        let found = db.image_by_name("localhost/a:1").unwrap().unwrap();
        assert_eq!(found.id, image(2).config.to_string());
        assert_eq!(found.names, vec!["localhost/a:1".to_string()]);
        assert_eq!(
            db.dangling_images(false).unwrap(),
            vec![image(1).config.to_string()]
        );
        assert_eq!(found.layers[0].compression, "gzip");
    }

    #[test]
    fn container_names_are_unique_across_connections() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Db::open(dir.path()).unwrap();
        let mut b = Db::open(dir.path()).unwrap();
        a.insert_container(&container("aaaa1111", "web", "img"))
            .unwrap();
        let err = b
            .insert_container(&container("bbbb2222", "web", "img"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already in use by container aaaa1111"),
            "{err}"
        );
        assert_eq!(b.container("aaaa").unwrap().unwrap().name, "web");
    }

    #[test]
    fn an_image_in_use_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path()).unwrap();
        let id = image(1).config.to_string();
        db.put_image(&image(1), Some("localhost/a:1"), "test")
            .unwrap();
        db.insert_container(&container("c1", "one", &id)).unwrap();
        assert_eq!(db.remove_image(&id, false).unwrap(), vec!["one"]);
        assert!(db.image_by_id(&id).unwrap().is_some());
        db.remove_container("c1").unwrap();
        assert!(db.remove_image(&id, false).unwrap().is_empty());
        assert!(db.image_by_id(&id).unwrap().is_none());
    }

    #[test]
    fn a_volume_is_made_once_and_kept_while_a_container_uses_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Db::open(dir.path()).unwrap();
        let mut b = Db::open(dir.path()).unwrap();
        a.insert_container(&container("c1", "one", "img")).unwrap();
        a.insert_container(&container("c2", "two", "img")).unwrap();
        let vols = ["cache".to_string()];
        assert_eq!(a.use_volumes("c1", &vols).unwrap(), vols);
        assert!(b.use_volumes("c2", &vols).unwrap().is_empty());
        assert!(!b.create_volume("cache").unwrap());
        let users = |db: &Db| -> Vec<String> {
            db.volume("cache")
                .unwrap()
                .unwrap()
                .users
                .into_iter()
                .map(|u| u.name)
                .collect()
        };
        assert_eq!(users(&b), ["one", "two"]);
        let removal = b.remove_volume("cache", || panic!("in use")).unwrap();
        assert!(matches!(removal, VolumeRemoval::InUse(u) if u.len() == 2));
        a.remove_container("c1").unwrap();
        assert_eq!(users(&a), ["two"]);
        b.remove_container("c2").unwrap();
        assert!(users(&a).is_empty());
        let failed = a.remove_volume("cache", || bail!("cannot move it"));
        assert!(failed.is_err());
        assert!(
            a.volume("cache").unwrap().is_some(),
            "a failed unlink keeps the record"
        );
        let mut unlinked = false;
        let removal = a.remove_volume("cache", || {
            unlinked = true;
            Ok(())
        });
        assert_eq!(removal.unwrap(), VolumeRemoval::Removed);
        assert!(unlinked);
        assert!(b.volume("cache").unwrap().is_none());
        assert_eq!(
            b.remove_volume("cache", || Ok(())).unwrap(),
            VolumeRemoval::NotFound
        );
    }
}
