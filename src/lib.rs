//! rcrun's orchestration: the metadata store, images and containers on top of the
//! `snapshots` and `runtime` crates.

pub mod containers;
pub mod db;
pub mod images;
pub mod networks;
pub mod progress;
pub mod seccomp;
pub mod services;
pub mod spec;
pub mod up;
pub mod upfile;
pub mod volumes;

/// A failure that must end rcrun with a particular exit code (125 by default; 126,
/// 127 or the container's own code where docker uses those).
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code an error maps to: the runtime's (126/127 for exec problems), a
/// [`Failure`]'s, else 125.
pub fn exit_code_of(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|cause| {
            cause
                .downcast_ref::<runtime::Error>()
                .map(|r| r.exit_code())
                .or_else(|| cause.downcast_ref::<Failure>().map(|f| f.code))
        })
        .unwrap_or(125)
}
