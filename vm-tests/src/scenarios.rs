//! Scenarios: shell scripts run in the guest as the unprivileged user under `sh -e`.
//! Exit 0 passes, 77 skips, anything else fails. A header comment may set
//! `# timeout: SECONDS` and `# needs: registry`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The helpers every scenario sources (`. "$VM_SCENARIOS/lib.sh"`); not a scenario.
pub const LIBRARY: &str = "lib.sh";
/// A scenario's time limit when its header sets none (the guest runs under TCG here).
pub const DEFAULT_TIMEOUT_S: u64 = 180;

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub script: PathBuf,
    pub timeout_s: u64,
    /// Guest services it needs beyond the basics (`registry`).
    pub needs: Vec<String>,
}

/// Every `*.sh` but the library in `dirs`, sorted by name.
pub fn discover(dirs: &[PathBuf]) -> Result<Vec<Scenario>> {
    let mut found: Vec<Scenario> = Vec::new();
    for dir in dirs {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("read the scenario directory {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".sh"))
            else {
                continue;
            };
            if path.file_name().is_some_and(|n| n == LIBRARY) {
                continue;
            }
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bail!(
                    "{}: a scenario's name may hold only letters, digits, - and _",
                    path.display()
                );
            }
            if let Some(other) = found.iter().find(|s| s.name == name) {
                bail!(
                    "two scenarios named {name}: {} and {}",
                    other.script.display(),
                    path.display()
                );
            }
            found.push(parse(name, &path)?);
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// A scenario from its script's header (the guest agent reads time limits this way too).
pub fn parse(name: &str, script: &Path) -> Result<Scenario> {
    let text =
        std::fs::read_to_string(script).with_context(|| format!("read {}", script.display()))?;
    let mut scenario = Scenario {
        name: name.to_string(),
        script: script.to_path_buf(),
        timeout_s: DEFAULT_TIMEOUT_S,
        needs: Vec::new(),
    };
    for line in text
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
    {
        let line = line.trim_start_matches('#').trim();
        if let Some(value) = line.strip_prefix("timeout:") {
            scenario.timeout_s = value.trim().parse().with_context(|| {
                format!(
                    "{}: `# timeout:` wants whole seconds, not {value:?}",
                    script.display()
                )
            })?;
        } else if let Some(value) = line.strip_prefix("needs:") {
            scenario
                .needs
                .extend(value.split_whitespace().map(str::to_string));
        }
    }
    Ok(scenario)
}

/// `pattern` selects a scenario by glob (`*` and `?`) on its name, or by substring when
/// it has no wildcard; several patterns may be separated by commas.
pub fn matches(pattern: &str, name: &str) -> bool {
    pattern
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|p| {
            if p.contains(['*', '?']) {
                glob(p.as_bytes(), name.as_bytes())
            } else {
                name.contains(p)
            }
        })
}

fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            glob(rest, name) || (!name.is_empty() && glob(pattern, &name[1..]))
        }
        (Some((b'?', rest)), Some((_, name_rest))) => glob(rest, name_rest),
        (Some((p, rest)), Some((n, name_rest))) if p == n => glob(rest, name_rest),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_substrings_globs_or_lists() {
        assert!(matches("dns", "dns-alias"));
        assert!(!matches("dns", "bundle-lifecycle"));
        assert!(matches("bundle-*", "bundle-lifecycle"));
        assert!(!matches("bundle-*", "a-bundle-lifecycle"));
        assert!(matches("*-up", "service-up"));
        assert!(matches("pull,dns", "dns-alias") && matches("pull, dns", "registry-pull"));
        assert!(matches("uid-range?", "uid-ranges"));
    }

    #[test]
    fn headers_set_timeout_and_needs_and_bad_names_and_duplicates_are_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(
            a.path().join("pull.sh"),
            "# Pulls.\n# timeout: 300\n# needs: registry\n\nrcrun pull x\n# timeout: 1\n",
        )
        .unwrap();
        std::fs::write(a.path().join("lib.sh"), "fail() { exit 1; }\n").unwrap();
        std::fs::write(a.path().join("README"), "not a scenario\n").unwrap();
        std::fs::write(b.path().join("alpha.sh"), "true\n").unwrap();
        let found = discover(&[a.path().to_path_buf(), b.path().to_path_buf()]).unwrap();
        let names: Vec<_> = found.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["alpha", "pull"]);
        assert_eq!(
            (found[0].timeout_s, found[1].timeout_s),
            (DEFAULT_TIMEOUT_S, 300)
        );
        assert_eq!(found[1].needs, ["registry"]);

        std::fs::write(b.path().join("pull.sh"), "true\n").unwrap();
        let err = discover(&[a.path().to_path_buf(), b.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("two scenarios named pull"), "{err}");

        std::fs::remove_file(b.path().join("pull.sh")).unwrap();
        std::fs::write(b.path().join("bad name.sh"), "true\n").unwrap();
        assert!(
            discover(&[b.path().to_path_buf()])
                .unwrap_err()
                .to_string()
                .contains("letters, digits")
        );

        std::fs::remove_file(b.path().join("bad name.sh")).unwrap();
        std::fs::write(b.path().join("slow.sh"), "# timeout: soon\n").unwrap();
        assert!(
            discover(&[b.path().to_path_buf()])
                .unwrap_err()
                .to_string()
                .contains("whole seconds")
        );
    }
}
