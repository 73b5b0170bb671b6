//! rcrun's image storage: a verified content store, image import from OCI layouts
//! (registries and archives come next), and layer handling: compression, chain
//! ids, and validation of every tar entry before anything is unpacked.

mod apply;
mod digest;
mod error;
mod image;
mod layer;
mod layout;
mod store;

pub use apply::{ApplyReport, apply};
pub use digest::{Digest, DigestingReader};
pub use error::{Error, Result};
pub use image::{BlobSource, ImportedImage, LayerInfo, Platform, import};
pub use layer::{Compression, EntryKind, LayerSummary, chain_ids, classify, hardlink_target, scan};
pub use layout::{OciLayout, import_layout};
pub use store::{ContentStore, MAX_METADATA_BYTES};
