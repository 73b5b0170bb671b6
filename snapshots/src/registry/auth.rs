//! Registry credentials: `--creds USER:PASS`, the auth files podman and docker write,
//! and the `WWW-Authenticate` challenges that say how to use them.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::error::{Error, Result};

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// Parses `USER:PASS` (the password may contain ':').
    pub fn parse(text: &str) -> Result<Self> {
        match text.split_once(':') {
            Some((user, pass)) if !user.is_empty() => Ok(Credentials {
                username: user.into(),
                password: pass.into(),
            }),
            _ => Err(Error::InvalidCredentials(
                "expected USER:PASS with a non-empty user",
            )),
        }
    }

    /// The value of an `Authorization: Basic` header.
    pub(crate) fn basic(&self) -> String {
        format!(
            "Basic {}",
            BASE64.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}:***)", self.username)
    }
}

/// The auth files to search, in order: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json` (podman login),
/// `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`, `~/.docker/config.json`.
pub fn default_auth_files() -> Vec<PathBuf> {
    auth_files_from(|name| std::env::var_os(name))
}

fn auth_files_from(var: impl Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let dir = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = dir("HOME");
    let config = dir("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")));
    [
        dir("REGISTRY_AUTH_FILE"),
        dir("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")),
        config.map(|d| d.join("containers/auth.json")),
        home.map(|h| h.join(".docker/config.json")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The credentials for `registry`/`repository` in the first of `files` that has
/// some, with the file they came from. Missing files are skipped; unreadable or
/// malformed ones are errors, so a typo is not mistaken for "no credentials".
pub(crate) fn lookup(
    files: &[PathBuf],
    registry: &str,
    repository: &str,
) -> Result<Option<(Credentials, PathBuf)>> {
    for file in files {
        let text = match std::fs::read(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(settings(file, format!("cannot read: {e}"))),
        };
        if let Some(creds) = lookup_in(file, &text, registry, repository)? {
            return Ok(Some((creds, file.clone())));
        }
    }
    Ok(None)
}

fn settings(path: &Path, reason: impl Into<String>) -> Error {
    Error::Settings {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// An `auths` key as the registry (and optional repository prefix) it stands for:
/// `https://index.docker.io/v1/` → `docker.io`, `quay.io/org` stays.
fn normalize_key(key: &str) -> String {
    let key = match key.split_once("://") {
        // A URL names a whole registry: its path is an API version, not a namespace.
        Some((_, rest)) => rest.split('/').next().unwrap_or(rest),
        None => key.trim_end_matches('/'),
    };
    let (host, path) = key.split_once('/').unwrap_or((key, ""));
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    };
    if path.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{path}")
    }
}

fn lookup_in(
    file: &Path,
    text: &[u8],
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>> {
    let json: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| settings(file, format!("malformed: {e}")))?;
    let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let full = format!("{registry}/{repository}");
    // The most specific key wins: `host/org/repo` over `host/org` over `host`.
    let best = auths
        .iter()
        .map(|(key, entry)| (normalize_key(key), key, entry))
        .filter(|(k, _, _)| {
            k == registry
                || k == &full
                || full
                    .strip_prefix(k.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
        .max_by_key(|(k, _, _)| k.len());
    let Some((_, key, entry)) = best else {
        return Ok(None);
    };
    let bad = |why: &str| settings(file, format!("auths.{key:?}: {why}"));
    let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).unwrap_or("");
    if !field("auth").is_empty() {
        let decoded = BASE64
            .decode(field("auth").trim())
            .map_err(|_| bad("\"auth\" is not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| bad("\"auth\" is not UTF-8"))?;
        return Credentials::parse(&text)
            .map(Some)
            .map_err(|_| bad("\"auth\" does not decode to USER:PASS"));
    }
    if !field("username").is_empty() {
        return Ok(Some(Credentials {
            username: field("username").into(),
            password: field("password").into(),
        }));
    }
    Ok(None)
}

/// What a `401 Unauthorized` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// Get a token from `realm`, then send `Authorization: Bearer TOKEN`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
    /// Send the user name and password with every request.
    Basic,
}

/// The challenge of a `WWW-Authenticate` header rcrun can answer, Bearer first.
/// The header may hold several challenges: `Scheme k=v, k="v, w", Scheme2 ...`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let mut challenges: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        let end = rest.find([' ', '=', ',']).unwrap_or(rest.len());
        let token = &rest[..end];
        let after = rest[end..].trim_start_matches(' ');
        if let Some(value) = after.strip_prefix('=') {
            let (value, tail) = parse_value(value.trim_start());
            if let Some((_, params)) = challenges.last_mut() {
                params.push((token.to_ascii_lowercase(), value));
            }
            rest = tail;
        } else {
            if !token.is_empty() {
                challenges.push((token.to_ascii_lowercase(), Vec::new()));
            }
            rest = after;
        }
        rest = rest.trim_start_matches([' ', ',']);
    }
    let param = |params: &[(String, String)], name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let bearer = challenges.iter().find_map(|(scheme, params)| {
        let realm = param(params, "realm").filter(|_| scheme == "bearer")?;
        Some(Challenge::Bearer {
            realm,
            service: param(params, "service"),
        })
    });
    bearer.or_else(|| {
        challenges
            .iter()
            .any(|(scheme, _)| scheme == "basic")
            .then_some(Challenge::Basic)
    })
}

/// A token or quoted string (with `\` escapes); returns it and what follows.
fn parse_value(text: &str) -> (String, &str) {
    let Some(quoted) = text.strip_prefix('"') else {
        let end = text.find([',', ' ']).unwrap_or(text.len());
        return (text[..end].to_string(), &text[end..]);
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => value.extend(chars.next().map(|(_, c)| c)),
            '"' => return (value, &quoted[i + 1..]),
            c => value.push(c),
        }
    }
    (value, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed() {
        let bearer = |realm: &str, service: Option<&str>| {
            Some(Challenge::Bearer {
                realm: realm.into(),
                service: service.map(str::to_string),
            })
        };
        let cases = [
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull""#,
                bearer("https://auth.docker.io/token", Some("registry.docker.io")),
            ),
            (
                r#"bearer  Realm = "https://a/t?x=1" , service=reg"#,
                bearer("https://a/t?x=1", Some("reg")),
            ),
            (
                r#"Bearer realm="https://a/\"q\",b""#,
                bearer(r#"https://a/"q",b"#, None),
            ),
            (r#"Basic realm="rcrun-fixtures""#, Some(Challenge::Basic)),
            ("Basic", Some(Challenge::Basic)),
            (
                r#"Basic realm="x", Bearer realm="https://t",service="s""#,
                bearer("https://t", Some("s")),
            ),
            (r#"Negotiate abc, Basic realm="r""#, Some(Challenge::Basic)),
            (r#"Bearer service="no realm""#, None),
            (r#"Digest realm="r", nonce="n""#, None),
            ("", None),
        ];
        for (header, wanted) in cases {
            assert_eq!(parse_challenge(header), wanted, "{header}");
        }
    }

    #[test]
    fn basic_header_and_creds_flag() {
        let c = Credentials::parse("user:pa:ss").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(c.basic(), format!("Basic {}", BASE64.encode("user:pa:ss")));
        assert!(!format!("{c:?}").contains("pa:ss"));
        for bad in ["user", ":pass", ""] {
            assert!(Credentials::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_auth_files_follow_podman_then_docker() {
        let env = |vars: &'static [(&str, &str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let all = auth_files_from(env(&[
            ("REGISTRY_AUTH_FILE", "/a/auth.json"),
            ("XDG_RUNTIME_DIR", "/run/user/1"),
            ("XDG_CONFIG_HOME", "/cfg"),
            ("HOME", "/home/u"),
        ]));
        let paths: Vec<PathBuf> = [
            "/a/auth.json",
            "/run/user/1/containers/auth.json",
            "/cfg/containers/auth.json",
            "/home/u/.docker/config.json",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(all, paths);
        let home_only = auth_files_from(env(&[("HOME", "/home/u"), ("REGISTRY_AUTH_FILE", "")]));
        assert_eq!(
            home_only,
            [
                PathBuf::from("/home/u/.config/containers/auth.json"),
                PathBuf::from("/home/u/.docker/config.json")
            ]
        );
    }

    fn write(dir: &Path, name: &str, json: serde_json::Value) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        path
    }

    fn auth(user_pass: &str) -> serde_json::Value {
        serde_json::json!({ "auth": BASE64.encode(user_pass) })
    }

    #[test]
    fn auth_files_are_searched_in_order_and_keys_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let podman = write(
            dir.path(),
            "auth.json",
            serde_json::json!({"auths": {
                "127.0.0.1:5000": auth("local:one"),
                "quay.io": auth("quay:top"),
                "quay.io/org": auth("quay:org"),
                "quay.io/org/app": {"username": "quay", "password": "app"},
            }}),
        );
        let docker = write(
            dir.path(),
            "config.json",
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": auth("hub:secret"),
                "https://127.0.0.1:5000": auth("local:two"),
                "http://plain.example:8080/v2/": auth("plain:p"),
                "ghcr.io": {},
            }}),
        );
        let files = [
            dir.path().join("missing.json"),
            podman.clone(),
            docker.clone(),
        ];
        let found = |registry: &str, repo: &str| {
            lookup(&files, registry, repo)
                .unwrap()
                .map(|(c, path)| (format!("{}:{}", c.username, c.password), path))
        };
        let cases = [
            ("127.0.0.1:5000", "x", "local:one", &podman),
            ("docker.io", "library/redis", "hub:secret", &docker),
            ("plain.example:8080", "a", "plain:p", &docker),
            ("quay.io", "other/x", "quay:top", &podman),
            ("quay.io", "org/x", "quay:org", &podman),
            ("quay.io", "org/app", "quay:app", &podman),
            ("quay.io", "org/application", "quay:org", &podman),
        ];
        for (registry, repo, creds, file) in cases {
            let wanted = Some((creds.to_string(), file.clone()));
            assert_eq!(found(registry, repo), wanted, "{registry}/{repo}");
        }
        assert_eq!(found("ghcr.io", "a"), None, "an entry without credentials");
        assert_eq!(found("127.0.0.2:5000", "x"), None);
        assert_eq!(found("quay.io.evil.com", "org/app"), None);
    }

    #[test]
    fn broken_auth_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.json");
        std::fs::write(&garbage, "{not json").unwrap();
        let bad_b64 = write(
            dir.path(),
            "b64.json",
            serde_json::json!({"auths": {"h.io": {"auth": "%%%"}}}),
        );
        let no_colon = write(
            dir.path(),
            "colon.json",
            serde_json::json!({"auths": {"h.io": auth("nocolon")}}),
        );
        for (file, wanted) in [
            (&garbage, "malformed"),
            (&bad_b64, "not base64"),
            (&no_colon, "USER:PASS"),
        ] {
            let err = lookup(std::slice::from_ref(file), "h.io", "r").unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&file.display().to_string()) && msg.contains(wanted),
                "{msg}"
            );
        }
        // A directory where a file should be.
        let err = lookup(&[dir.path().to_path_buf()], "h.io", "r").unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
