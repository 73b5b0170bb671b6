//! rcrun's image storage: a verified content store, image import from OCI layouts,
//! oci/docker archives and registries, and layer handling: compression, chain ids, and
//! validation of every tar entry before anything is unpacked.
//!
//! Pulling from a registry (OCI distribution v2):
//!
//! ```no_run
//! # fn main() -> snapshots::Result<()> {
//! use snapshots::{ContentStore, NoProgress, PullOptions, Reference, pull};
//! let store = ContentStore::open(std::path::Path::new("/tmp/store"))?;
//! let reference = Reference::parse("127.0.0.1:5000/busybox:1.35")?; // redis:7 = docker.io/library/redis:7
//! let pulled = pull(&store, &reference, &PullOptions::default(), &NoProgress, &mut |k, layer| {
//!     // Layers 0..=k are verified and stored: layer k can be unpacked now.
//!     Ok(())
//! })?;
//! println!("{}@{}", reference.name(), pulled.repo_digest);
//! # Ok(()) }
//! ```
//!
//! [`PullOptions`] carries the platform, credentials (`creds`, else `auth_files`), TLS
//! settings (`cert_dir`, `tls_verify`), the number of parallel layer downloads and the
//! timeouts; [`Progress`] hears about each layer from the download threads. Layouts and
//! archives go through the same resolution ([`import`]), with the same verification.

mod apply;
mod archive;
mod digest;
mod error;
mod flatten;
mod image;
mod layer;
mod layout;
mod registry;
mod snapshot;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use apply::{ApplyReport, apply};
pub use archive::{docker_archive_tags, import_docker_archive, import_oci_archive};
pub use digest::{Digest, DigestingReader};
pub use error::{Error, Result};
pub use flatten::{flatten, flatten_subtree};
pub use image::{
    BlobSource, DEFAULT_JOBS, ImportedImage, LayerInfo, NoProgress, Platform, Progress, import,
};
pub use layer::{Compression, EntryKind, LayerSummary, chain_ids, classify, hardlink_target, scan};
pub use layout::{OciLayout, import_layout};
pub use registry::{Credentials, PullOptions, PulledImage, Reference, default_auth_files, pull};
pub use snapshot::{Prepared, Snapshotter};
pub use store::{ContentStore, MAX_METADATA_BYTES};
