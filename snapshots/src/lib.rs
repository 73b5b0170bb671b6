//! rcrun's image storage: a verified content store, image import from OCI layouts
//! and oci/docker archives (registries come next), and layer handling: compression, chain
//! ids, and validation of every tar entry before anything is unpacked.

mod apply;
mod archive;
mod digest;
mod error;
mod image;
mod layer;
mod layout;
mod snapshot;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use apply::{ApplyReport, apply};
pub use archive::{import_docker_archive, import_oci_archive};
pub use digest::{Digest, DigestingReader};
pub use error::{Error, Result};
pub use image::{
    BlobSource, DEFAULT_JOBS, ImportedImage, LayerInfo, NoProgress, Platform, Progress, import,
};
pub use layer::{Compression, EntryKind, LayerSummary, chain_ids, classify, hardlink_target, scan};
pub use layout::{OciLayout, import_layout};
pub use snapshot::{Prepared, Snapshotter};
pub use store::{ContentStore, MAX_METADATA_BYTES};
