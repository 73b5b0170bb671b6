//! rcrun's OCI runtime: runs a runtime-spec bundle (config.json + rootfs) in fresh
//! namespaces, as an ordinary user (through a user namespace) or as root.
//!
//! The start path is one process tree: rcrun clones the container's init with all
//! its namespaces at once (an intermediate process only when namespaces are joined
//! by path), writes its id maps, and the init builds the rootfs (on an overlay of
//! the caller's layers when asked: [`RootfsOverlay`]), drops privileges
//! and execs the user's program as pid 1. Nothing is re-exec'd or shelled out,
//! except the setuid helpers newuidmap/newgidmap for multi-range maps.
//!
//! Callers must be single-threaded when they create, run or exec (see
//! [`Runtime::run`]); the CLI is.

mod caps;
mod cgroup;
mod channel;
mod config;
mod container;
mod error;
mod features;
mod hooks;
mod idmap;
mod monitor;
mod mountattr;
mod mounts;
mod nsfields;
mod overlay;
mod procattrs;
mod process;
mod seccomp;
mod signal;
mod spawn;
mod spec;
mod state;
mod sys;
mod tty;
mod userns;
mod warn;

pub use cgroup::MODE_ENV as CGROUPS_MODE_ENV;
pub use container::{CreateOptions, ExecOptions, RunOptions, Runtime, StartOptions};
pub use error::{Error, FailureKind, Result};
pub use features::{SPEC_VERSION, features};
pub use idmap::{SubordinateRange, current_user_mappings, parse_subordinate};
pub use oci_spec::runtime::LinuxResources;
pub use overlay::{OverlayDriver, RootfsOverlay, probe_overlay};
pub use seccomp::{SeccompFeatures, check_seccomp, seccomp_features};
pub use signal::parse_signal;
pub use spec::default_spec;
pub use state::{State, Status, now_rfc3339};
pub use userns::{fork_in_user_namespace, run_in_user_namespace};
pub use warn::set_warning_sink;
