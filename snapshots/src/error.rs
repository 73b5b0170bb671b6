//! Errors of the snapshots crate: each names the blob, image or entry at fault.

use std::path::PathBuf;

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {0:?}: expected sha256: followed by 64 lowercase hex digits")]
    InvalidDigest(String),

    #[error(
        "blob {expected} does not match its content: got {actual} ({size} bytes); the image is corrupt or was tampered with, nothing was kept"
    )]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },

    #[error("blob {digest} should be {expected} bytes but is {actual}; nothing was kept")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },

    #[error("blob {0} is not in the content store")]
    BlobNotFound(Digest),

    #[error("{path}: {reason}")]
    Layout { path: PathBuf, reason: String },

    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },

    #[error("layer {layer}: entry {entry:?} {reason}; the layer was rejected")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: &'static str,
    },

    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid credentials: {0}")]
    InvalidCredentials(&'static str),

    #[error("cannot reach {registry} at {url}: {reason}")]
    RegistryUnreachable {
        registry: String,
        url: String,
        reason: String,
    },

    #[error(
        "TLS connection to {registry} at {url} failed: {reason}; if the registry's certificate comes from a private CA, pass --cert-dir DIR holding the CA's *.crt, or --tls-verify=false to skip verification"
    )]
    RegistryTls {
        registry: String,
        url: String,
        reason: String,
    },

    #[error(
        "{registry} refused to serve {repository} without credentials: log in (an auth file entry for {registry}) or pass --creds USER:PASS; or the repository does not exist"
    )]
    AuthRequired {
        registry: String,
        repository: String,
    },

    #[error(
        "authentication to {registry} failed: check the user name and password (--creds or the auth file); the credentials came from {origin}"
    )]
    AuthFailed { registry: String, origin: String },

    #[error("manifest unknown: {reference} not found in {registry}")]
    ManifestUnknown { reference: String, registry: String },

    /// Anything else a registry did that rcrun cannot go on with.
    #[error("{registry}: {reason}")]
    Registry { registry: String, reason: String },

    /// An auth file or certificate directory rcrun cannot use.
    #[error("{path}: {reason}")]
    Settings { path: PathBuf, reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
