//! Which kernel modules the guest loads, in which order: resolved from the kernel's
//! `modules.dep`, `modules.softdep`, `modules.alias` and `modules.builtin` (written by
//! `depmod`), as modprobe would, because the guest has no modprobe.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What rcrun needs from a kernel that Debian builds as modules: overlay rootfs, veth +
/// bridge networking, the nf_tables firewall and NAT of its networks, and the guest's
/// ext4 scratch disk on virtio.
pub const GUEST_MODULES: &[&str] = &[
    "overlay",
    "veth",
    "bridge",
    "nf_tables",
    "nft_ct",
    "nft_masq",
    "nft_chain_nat",
    "nft_socket",
    "virtio_pci",
    "virtio_blk",
    "ext4",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// The `.ko` file (maybe compressed) on the host.
    pub file: PathBuf,
    /// A soft dependency (or one of its hard dependencies): loading it may fail without
    /// harm, as when an accelerated crypto driver finds no CPU support under TCG.
    pub optional: bool,
}

#[derive(Debug, Default)]
pub struct Resolved {
    /// Dependencies before the modules that need them.
    pub load_order: Vec<Module>,
    /// Wanted but built into the kernel: nothing to load.
    pub builtin: Vec<String>,
    /// Wanted but neither a module nor built in.
    pub missing: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error(
        "cannot read {path}: {source} (is this a kernel's modules directory, with depmod run on it?)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A module's name as the kernel knows it: the file name without `.ko[.xz|.zst|.gz]`,
/// with `-` as `_`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

struct Index {
    dir: PathBuf,
    /// name → (path relative to the modules dir, hard dependencies' names)
    deps: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
    /// name → modules to load before it
    soft_pre: HashMap<String, Vec<String>>,
    /// alias → modules
    aliases: HashMap<String, Vec<String>>,
}

impl Index {
    fn load(dir: &Path) -> Result<Index, ModulesError> {
        let read = |name: &str, required: bool| -> Result<String, ModulesError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(String::new())
                }
                Err(source) => Err(ModulesError::Read { path, source }),
            }
        };
        let mut deps = HashMap::new();
        for line in read("modules.dep", true)?.lines() {
            let Some((module, needs)) = line.split_once(':') else {
                continue;
            };
            let needs = needs.split_whitespace().map(module_name).collect();
            deps.insert(module_name(module), (module.to_string(), needs));
        }
        let builtin = read("modules.builtin", false)?
            .lines()
            .map(module_name)
            .collect();
        let mut soft_pre: HashMap<String, Vec<String>> = HashMap::new();
        for line in read("modules.softdep", false)?.lines() {
            // softdep MODULE pre: A B post: C
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let mut pre = false;
            for word in words {
                match word {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    dep if pre => soft_pre
                        .entry(module.replace('-', "_"))
                        .or_default()
                        .push(dep.to_string()),
                    _ => {}
                }
            }
        }
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        for line in read("modules.alias", false)?.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                aliases
                    .entry(alias.to_string())
                    .or_default()
                    .push(module.replace('-', "_"));
            }
        }
        Ok(Index {
            dir: dir.to_path_buf(),
            deps,
            builtin,
            soft_pre,
            aliases,
        })
    }

    /// The modules a name stands for: itself, or what its alias points at.
    fn candidates(&self, name: &str) -> Vec<String> {
        let own = name.replace('-', "_");
        if self.deps.contains_key(&own) || self.builtin.contains(&own) {
            return vec![own];
        }
        self.aliases.get(name).cloned().unwrap_or_default()
    }
}

/// Resolves `wanted` (names or aliases) in the modules directory `dir`.
pub fn resolve(dir: &Path, wanted: &[&str]) -> Result<Resolved, ModulesError> {
    let index = Index::load(dir)?;
    let mut resolved = Resolved::default();
    let mut placed: HashMap<String, usize> = HashMap::new();
    for name in wanted {
        let candidates = index.candidates(name);
        if candidates.is_empty() {
            resolved.missing.push(name.to_string());
        }
        for module in candidates {
            if index.builtin.contains(&module) {
                resolved.builtin.push(module);
            } else {
                visit(
                    &index,
                    &module,
                    false,
                    &mut placed,
                    &mut resolved.load_order,
                );
            }
        }
    }
    Ok(resolved)
}

fn visit(
    index: &Index,
    name: &str,
    optional: bool,
    placed: &mut HashMap<String, usize>,
    order: &mut Vec<Module>,
) {
    if let Some(&at) = placed.get(name) {
        // needed for real by something after all: no longer optional (usize::MAX: still
        // being resolved, as in a soft-dependency loop)
        if !optional && at != usize::MAX {
            order[at].optional = false;
        }
        return;
    }
    if index.builtin.contains(name) {
        return;
    }
    let Some((file, deps)) = index.deps.get(name) else {
        return;
    };
    // mark before recursing: dependency cycles do not exist in modules.dep, but be safe
    placed.insert(name.to_string(), usize::MAX);
    for soft in index.soft_pre.get(name).into_iter().flatten() {
        for candidate in index.candidates(soft) {
            visit(index, &candidate, true, placed, order);
        }
    }
    for dep in deps {
        visit(index, dep, optional, placed, order);
    }
    placed.insert(name.to_string(), order.len());
    order.push(Module {
        name: name.to_string(),
        file: index.dir.join(file),
        optional,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(modules: &[Module]) -> Vec<(&str, bool)> {
        modules
            .iter()
            .map(|m| (m.name.as_str(), m.optional))
            .collect()
    }

    #[test]
    fn dependencies_come_first_and_soft_dependencies_are_optional_alternatives() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "modules.dep",
            "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko\n\
             kernel/lib/crc16.ko:\n\
             kernel/fs/jbd2/jbd2.ko:\n\
             kernel/arch/x86/crypto/crc32c-intel.ko.xz:\n\
             kernel/crypto/crc32c_generic.ko:\n\
             kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
             kernel/net/llc/llc.ko:\n",
        );
        write("modules.builtin", "kernel/fs/overlayfs/overlay.ko\n");
        write(
            "modules.softdep",
            "# comment\nsoftdep ext4 pre: crypto-crc32c post: nothing\n",
        );
        write(
            "modules.alias",
            "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias net-pf-7 bridge\n",
        );

        let resolved =
            resolve(dir.path(), &["overlay", "ext4", "bridge", "no_such_thing"]).unwrap();
        assert_eq!(
            names(&resolved.load_order),
            [
                ("crc32c_intel", true),
                ("crc32c_generic", true),
                ("crc16", false),
                ("jbd2", false),
                ("ext4", false),
                ("llc", false),
                ("stp", false),
                ("bridge", false),
            ]
        );
        assert_eq!(
            resolved.load_order[0].file,
            dir.path().join("kernel/arch/x86/crypto/crc32c-intel.ko.xz")
        );
        assert_eq!(resolved.builtin, ["overlay"]);
        assert_eq!(resolved.missing, ["no_such_thing"]);

        // an alias resolves too; a module already placed optionally becomes required
        let resolved = resolve(dir.path(), &["ext4", "crc32c_generic", "net-pf-7"]).unwrap();
        let generic = resolved
            .load_order
            .iter()
            .find(|m| m.name == "crc32c_generic")
            .unwrap();
        assert!(!generic.optional);
        assert!(resolved.load_order.iter().any(|m| m.name == "bridge"));
    }

    #[test]
    fn a_directory_without_depmod_output_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(dir.path(), &["overlay"]).unwrap_err().to_string();
        assert!(
            err.contains("modules.dep") && err.contains("depmod"),
            "{err}"
        );
    }
}
