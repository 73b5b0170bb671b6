//! Image references as docker reads them, `[HOST[:PORT]/]REPO[:TAG][@DIGEST]`, with
//! Docker Hub's short names expanded: `redis:7` is `docker.io/library/redis:7`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's distribution API answers.
const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
const MAX_NAME_LEN: usize = 255;

/// A validated, normalised registry reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `text`; a reference without tag or digest means `:latest`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::InvalidReference {
            reference: text.to_string(),
            reason,
        };
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest.parse::<Digest>().map_err(|_| {
                    bad(format!(
                        "digest {digest:?} is not sha256: followed by 64 lowercase hex digits"
                    ))
                })?;
                (rest, Some(digest))
            }
            None => (text, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if name.is_empty() {
            return Err(bad("the repository name is empty".into()));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':']) || first == "localhost" || first.is_empty() =>
            {
                (first, rest.to_string())
            }
            _ => (DOCKER_HUB, name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB
        } else {
            registry
        };
        check_registry(registry).map_err(&bad)?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        for component in repository.split('/') {
            check_component(component).map_err(&bad)?;
        }
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "the name is longer than {MAX_NAME_LEN} characters"
            )));
        }
        if let Some(tag) = tag {
            check_tag(tag).map_err(&bad)?;
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// The registry as the reference names it: `docker.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository within the registry: `library/redis`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, how an image is listed: `docker.io/library/redis`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The `host[:port]` the registry's API answers at.
    pub fn endpoint(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            &self.registry
        }
    }

    /// What the manifest is fetched by: the digest if given (it wins over a tag).
    pub(crate) fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => unreachable!("parse gives a tag when there is no digest"),
        }
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `host[:port]`: DNS labels or an IPv4 address, or `[IPv6]`; port 1-65535.
fn check_registry(registry: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("registry {registry:?} {why}"));
    let (host, port) = if let Some(v6) = registry.strip_prefix('[') {
        let Some((addr, rest)) = v6.split_once(']') else {
            return bad("has an unclosed '['");
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("is not a valid IPv6 address");
        }
        match rest {
            "" => (None, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return bad("has text after the IPv6 address"),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return bad("is not a valid host name");
        }
    }
    if let Some(port) = port
        && !(port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return bad("has an invalid port");
    }
    Ok(())
}

/// A path component: lowercase `[a-z0-9]+` runs joined by `.`, `_`, `__` or dashes.
fn check_component(component: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("repository component {component:?} {why}"));
    if component.is_empty() {
        return bad("is empty (a leading, trailing or doubled '/')");
    }
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("has uppercase letters; repository names are lowercase");
    }
    if let Some(c) = component
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
    {
        return bad(&format!(
            "has {c:?}; only a-z, 0-9 and the separators . _ __ - are allowed"
        ));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let separators_ok = component
        .split(alnum)
        .filter(|s| !s.is_empty())
        .all(|s| matches!(s, "." | "_" | "__") || s.bytes().all(|b| b == b'-'));
    if !component.starts_with(alnum) || !component.ends_with(alnum) || !separators_ok {
        return bad(
            "must start and end with a letter or digit, with single separators (. _ __ or dashes) between",
        );
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let valid = tag.len() <= 128
        && tag.bytes().next().is_some_and(ok)
        && tag.bytes().all(|b| ok(b) || b == b'.' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is invalid: up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_expand_like_docker() {
        let digest = Digest::of(b"manifest");
        let cases = [
            ("redis:7", "docker.io", "library/redis", Some("7"), None),
            ("redis", "docker.io", "library/redis", Some("latest"), None),
            ("user/app", "docker.io", "user/app", Some("latest"), None),
            (
                "docker.io/redis",
                "docker.io",
                "library/redis",
                Some("latest"),
                None,
            ),
            (
                "index.docker.io/user/app:v1",
                "docker.io",
                "user/app",
                Some("v1"),
                None,
            ),
            ("localhost/app", "localhost", "app", Some("latest"), None),
            (
                "localhost:5000/a/b/c:t",
                "localhost:5000",
                "a/b/c",
                Some("t"),
                None,
            ),
            (
                "127.0.0.1:5000/busybox:1.35",
                "127.0.0.1:5000",
                "busybox",
                Some("1.35"),
                None,
            ),
            (
                "quay.io/org/app_x.y__z-w---v:Tag_1.0-rc",
                "quay.io",
                "org/app_x.y__z-w---v",
                Some("Tag_1.0-rc"),
                None,
            ),
            ("[::1]:5000/app", "[::1]:5000", "app", Some("latest"), None),
            // A first component without '.' or ':' is part of the repository.
            (
                "myhost/app",
                "docker.io",
                "myhost/app",
                Some("latest"),
                None,
            ),
            (
                "myhost:5000",
                "docker.io",
                "library/myhost",
                Some("5000"),
                None,
            ),
        ];
        for (text, registry, repository, tag, digest) in cases {
            let r = Reference::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (r.registry(), r.repository(), r.tag(), r.digest()),
                (registry, repository, tag, digest),
                "{text}"
            );
        }
        let r = Reference::parse(&format!("redis@{digest}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (None, Some(&digest)));
        assert_eq!(r.manifest_ref(), digest.to_string());
        let r = Reference::parse(&format!("h.io:1/a:t@{digest}")).unwrap();
        assert_eq!((r.tag(), r.manifest_ref()), (Some("t"), digest.to_string()));
        assert_eq!(r.to_string(), format!("h.io:1/a:t@{digest}"));
    }

    #[test]
    fn endpoint_and_names() {
        let r = Reference::parse("redis:7").unwrap();
        assert_eq!(r.endpoint(), "registry-1.docker.io");
        assert_eq!(r.name(), "docker.io/library/redis");
        assert_eq!(r.to_string(), "docker.io/library/redis:7");
        let r = Reference::parse("127.0.0.1:5000/x/y").unwrap();
        assert_eq!(r.endpoint(), "127.0.0.1:5000");
        assert_eq!(r.to_string(), "127.0.0.1:5000/x/y:latest");
        // The display form parses back to the same reference.
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn invalid_references_say_what_is_wrong() {
        let long = format!("h.io/{}", "a".repeat(251));
        let long_tag = format!("a:{}", "t".repeat(129));
        let cases = [
            ("", "empty"),
            (":tag", "empty"),
            ("Redis", "uppercase"),
            ("docker.io/Library/redis", "uppercase"),
            ("a//b", "is empty"),
            ("a/", "is empty"),
            ("/a", "is not a valid host name"),
            ("a b", "' '"),
            ("a$b", "'$'"),
            ("-a", "must start and end"),
            ("a-", "must start and end"),
            ("a..b", "single separators"),
            ("a___b", "single separators"),
            ("a._b", "single separators"),
            ("redis:", "tag \"\""),
            ("redis:.x", "tag \".x\""),
            ("redis:-x", "tag \"-x\""),
            ("redis:a+b", "tag \"a+b\""),
            (long_tag.as_str(), "tag"),
            (long.as_str(), "longer than 255"),
            ("redis@sha256:abc", "digest \"sha256:abc\""),
            ("redis@md5:0123", "digest"),
            ("h.io:99999/a", "invalid port"),
            ("h.io:/a", "invalid port"),
            ("h.io:x/a", "invalid port"),
            ("-h.io/a", "not a valid host name"),
            ("h_x.io/a", "not a valid host name"),
            ("[::1/a", "unclosed"),
            ("[zz]:5000/a", "IPv6"),
        ];
        for (text, wanted) in cases {
            let err = Reference::parse(text).expect_err(text);
            let msg = err.to_string();
            assert!(
                matches!(err, Error::InvalidReference { .. }),
                "{text}: {msg}"
            );
            assert!(msg.contains(wanted), "{text}: {msg}");
        }
    }
}
