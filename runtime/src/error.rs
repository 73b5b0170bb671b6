//! Errors of the runtime crate. Every variant names the object and, where there is
//! one, what the user can do about it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What went wrong inside the container's setup, sent back over the sync socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetupFailure {
    /// Which step failed ("mount /proc", "setrlimit RLIMIT_NOFILE", ...).
    pub step: String,
    /// Human readable detail, including the errno text when there is one.
    pub detail: String,
    pub kind: FailureKind,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum FailureKind {
    /// The container could not be set up (exit 125).
    Setup,
    /// `process.args[0]` was not found (exit 127).
    NotFound,
    /// `process.args[0]` exists but cannot be executed (exit 126).
    NotExecutable,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bundle {path}: {reason}")]
    Bundle { path: PathBuf, reason: String },

    #[error(
        "config.json in bundle {path}: {reason}; fix the file (`rcrun oci spec` writes a valid one)"
    )]
    Config { path: PathBuf, reason: String },

    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    #[error(
        "invalid container id {0:?}: use 1-128 characters from [A-Za-z0-9_.-], not starting with '.' or '-'"
    )]
    InvalidId(String),

    #[error("overlay rootfs: {path}: {reason}")]
    Overlay { path: PathBuf, reason: String },

    /// Neither the kernel's overlay nor fuse-overlayfs works for this user.
    #[error("no overlay filesystem is usable here: {0}")]
    OverlayUnavailable(String),

    #[error("container {0} already exists; delete it first (`delete {0}`) or choose another id")]
    Exists(String),

    #[error("container {0} does not exist")]
    NotFound(String),

    #[error("container {id} is {status}: {hint}")]
    WrongState {
        id: String,
        status: &'static str,
        hint: &'static str,
    },

    #[error("unknown signal {0:?}: use a name like TERM, SIGKILL or a number 1-64")]
    UnknownSignal(String),

    /// cgroup placement or limits failed (see cgroup.rs).
    #[error("cgroup: {0}")]
    Cgroup(String),

    #[error("{step}: {detail}")]
    Setup {
        step: String,
        detail: String,
        kind: FailureKind,
    },

    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The exit code the CLI uses for this error, docker-style.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Setup {
                kind: FailureKind::NotFound,
                ..
            } => 127,
            Error::Setup {
                kind: FailureKind::NotExecutable,
                ..
            } => 126,
            _ => 125,
        }
    }

    pub(crate) fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<SetupFailure> for Error {
    fn from(f: SetupFailure) -> Self {
        Error::Setup {
            step: f.step,
            detail: f.detail,
            kind: f.kind,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
