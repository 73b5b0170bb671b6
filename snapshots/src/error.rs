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
