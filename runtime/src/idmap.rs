//! User-namespace id maps: the user's subordinate ranges, and writing a child's
//! uid_map/gid_map directly or through the setuid helpers newuidmap/newgidmap.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::unistd::{Gid, Pid, Uid, User};
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

use crate::error::{Error, Result};

/// One line of /etc/subuid or /etc/subgid that belongs to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubordinateRange {
    pub start: u32,
    pub count: u32,
}

/// Parses the subordinate ranges of a user (by name or numeric id) from the text of
/// /etc/subuid or /etc/subgid.
pub fn parse_subordinate(text: &str, name: &str, id: u32) -> Vec<SubordinateRange> {
    let id = id.to_string();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let owner = fields.next()?;
            let start = fields.next()?.parse().ok()?;
            let count = fields.next()?.parse().ok()?;
            (owner == name || owner == id).then_some(SubordinateRange { start, count })
        })
        .filter(|r| r.count > 0)
        .collect()
}

fn ranges_of(file: &Path, id: u32) -> Vec<SubordinateRange> {
    let name = User::from_uid(Uid::from_raw(id))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    std::fs::read_to_string(file)
        .map(|text| parse_subordinate(&text, &name, id))
        .unwrap_or_default()
}

fn mapping(container: u32, host: u32, size: u32) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .container_id(container)
        .host_id(host)
        .size(size)
        .build()
        .expect("id mapping has no required fields")
}

/// The rootless maps rcrun uses when it builds a spec itself: 0 is the user, and
/// 1..=65536 the user's first subordinate range when there is one.
pub fn rootless_mappings(id: u32, ranges: &[SubordinateRange]) -> Vec<LinuxIdMapping> {
    let mut maps = vec![mapping(0, id, 1)];
    if let Some(r) = ranges.first() {
        maps.push(mapping(1, r.start, r.count.min(65536)));
    }
    maps
}

/// (uid maps, gid maps, whether subordinate ranges were found for both).
pub fn current_user_mappings() -> (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>, bool) {
    let uid = Uid::current().as_raw();
    let gid = Gid::current().as_raw();
    let uids = ranges_of(Path::new("/etc/subuid"), uid);
    let gids = ranges_of(Path::new("/etc/subgid"), uid);
    let have = !uids.is_empty() && !gids.is_empty();
    if have {
        (
            rootless_mappings(uid, &uids),
            rootless_mappings(gid, &gids),
            true,
        )
    } else {
        (
            rootless_mappings(uid, &[]),
            rootless_mappings(gid, &[]),
            false,
        )
    }
}

fn map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// How a child's maps get written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapWriter {
    /// Root in the initial namespace, or a single mapping of our own id.
    Direct,
    /// Several ranges as an ordinary user: newuidmap/newgidmap check /etc/sub[ug]id.
    Helpers,
}

pub(crate) fn choose_writer(uid_maps: &[LinuxIdMapping], gid_maps: &[LinuxIdMapping]) -> MapWriter {
    if Uid::effective().is_root() {
        return MapWriter::Direct;
    }
    let own = |maps: &[LinuxIdMapping], id: u32| {
        maps.len() == 1 && maps[0].host_id() == id && maps[0].size() == 1
    };
    if own(uid_maps, Uid::effective().as_raw()) && own(gid_maps, Gid::effective().as_raw()) {
        MapWriter::Direct
    } else {
        MapWriter::Helpers
    }
}

fn spawn_helper(helper: &str, pid: Pid, maps: &[LinuxIdMapping]) -> Result<Child> {
    let mut cmd = Command::new(helper);
    cmd.arg(pid.to_string());
    for m in maps {
        cmd.args([
            m.container_id().to_string(),
            m.host_id().to_string(),
            m.size().to_string(),
        ]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::io(
                format!("run {helper} (install the uidmap package, or use a single-id mapping)"),
                e,
            )
        })
}

fn wait_helper(helper: &str, child: Child) -> Result<()> {
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("wait for {helper}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::InvalidConfig(format!(
        "{helper} refused the mappings: {}; the ranges must be in /etc/sub{}id for this user",
        String::from_utf8_lossy(&out.stderr).trim(),
        if helper == "newuidmap" { "u" } else { "g" },
    )))
}

fn write_proc(pid: Pid, file: &str, text: &str) -> Result<()> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, text).map_err(|e| Error::io(format!("write {path} ({})", text.trim()), e))
}

/// Writes the maps of the user namespace that `pid` created.
pub(crate) fn write_maps(
    pid: Pid,
    writer: MapWriter,
    uid_maps: &[LinuxIdMapping],
    gid_maps: &[LinuxIdMapping],
) -> Result<()> {
    match writer {
        MapWriter::Direct => {
            if !Uid::effective().is_root() {
                // An unprivileged writer must give up setgroups before it may map a gid.
                write_proc(pid, "setgroups", "deny")?;
            }
            write_proc(pid, "gid_map", &map_text(gid_maps))?;
            write_proc(pid, "uid_map", &map_text(uid_maps))
        }
        MapWriter::Helpers => {
            // The two helpers are independent: run them side by side.
            let uid_helper = spawn_helper("newuidmap", pid, uid_maps)?;
            let gid_helper = spawn_helper("newgidmap", pid, gid_maps);
            let uid_result = wait_helper("newuidmap", uid_helper);
            wait_helper("newgidmap", gid_helper?)?;
            uid_result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_by_name_or_id() {
        let text =
            "alice:100000:65536\n1001:200000:1000\nbob:300000:65536\nbad line\nalice:400000:0\n";
        assert_eq!(
            parse_subordinate(text, "alice", 1000),
            vec![SubordinateRange {
                start: 100000,
                count: 65536
            }]
        );
        assert_eq!(
            parse_subordinate(text, "carol", 1001),
            vec![SubordinateRange {
                start: 200000,
                count: 1000
            }]
        );
        assert!(parse_subordinate(text, "dave", 7).is_empty());
    }

    #[test]
    fn rootless_maps_user_to_root_and_range_above() {
        let maps = rootless_mappings(
            1000,
            &[SubordinateRange {
                start: 100000,
                count: 70000,
            }],
        );
        assert_eq!(map_text(&maps), "0 1000 1\n1 100000 65536\n");
        assert_eq!(map_text(&rootless_mappings(1000, &[])), "0 1000 1\n");
    }
}
