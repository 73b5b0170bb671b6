//! Validated DNS names: what may reach a DNS answer, a hosts line or a search line.

use std::fmt;
use std::str::FromStr;

use crate::{DOMAIN_SUFFIX, Error};

/// A validated DNS name: dot-separated RFC 1123 labels (letters, digits and '-',
/// 1 to 63 characters, no leading or trailing '-'), at most 253 characters,
/// lower-cased, no trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One label of a [`Name`].
pub fn is_valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn invalid(name: &str, why: &'static str) -> Error {
    Error::InvalidName {
        name: name.to_string(),
        why,
    }
}

impl FromStr for Name {
    type Err = Error;

    fn from_str(s: &str) -> Result<Name, Error> {
        if s.is_empty() {
            return Err(invalid(s, "it is empty"));
        }
        if s.len() > 253 {
            return Err(invalid(s, "it is longer than 253 characters"));
        }
        for label in s.split('.') {
            if label.is_empty() {
                return Err(invalid(s, "it has an empty label"));
            }
            if label.len() > 63 {
                return Err(invalid(s, "a label is longer than 63 characters"));
            }
            if !is_valid_label(label) {
                return Err(invalid(
                    s,
                    "labels are letters, digits and '-', not starting or ending with '-'",
                ));
            }
        }
        Ok(Name(s.to_ascii_lowercase()))
    }
}

impl TryFrom<&str> for Name {
    type Error = Error;

    fn try_from(s: &str) -> Result<Name, Error> {
        s.parse()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Network `network`'s domain, e.g. "backend.rcrun.internal" (lower-cased: DNS
/// compares names without case).
pub fn network_domain(network: &str) -> String {
    format!("{}.{DOMAIN_SUFFIX}", network.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for good in ["db", "my-app.local", "a", "0abc", "x1-2.y", &"a".repeat(63)] {
            let name: Name = good.parse().unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(name.as_str(), good);
        }
        let name = Name::try_from("My-App.Local").unwrap();
        assert_eq!(name.to_string(), "my-app.local");
        let long = ["a".repeat(63).as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        assert!(long[..253].parse::<Name>().is_ok());
    }

    #[test]
    fn bad_names() {
        let label64 = "a".repeat(64);
        let too_long = ["a".repeat(63).as_str(); 4].join(".");
        for bad in [
            "a_b",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            label64.as_str(),
            too_long.as_str(),
            "",
            "a b",
            "ünïcode",
            "a/b",
            "a\nb",
        ] {
            match bad.parse::<Name>() {
                Err(Error::InvalidName { name, .. }) => assert_eq!(name, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn labels() {
        assert!(is_valid_label("db"));
        assert!(!is_valid_label("a.b"));
        assert!(!is_valid_label(""));
        assert!(!is_valid_label("a_b"));
    }

    #[test]
    fn domains() {
        assert_eq!(network_domain("Backend"), "backend.rcrun.internal");
    }
}
