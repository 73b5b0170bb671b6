//! Pulling images from registries (OCI distribution v2): `host[:port]/repo[:tag|@digest]`.
//!
//! Transport: HTTPS, trusting the system's CAs plus `cert_dir`'s. A loopback host
//! (localhost, 127.0.0.0/8, ::1) whose port does not speak TLS is reached over plain
//! HTTP, as docker does for local registries; with `tls_verify` off any certificate
//! is accepted and any host may fall back to HTTP. A certificate error is never a
//! reason to fall back: it is reported, with what to do.

mod auth;
mod certs;
mod client;
mod reference;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::{Credentials, default_auth_files};
pub use reference::Reference;

use crate::digest::Digest;
use crate::error::Result;
use crate::image::{self, DEFAULT_JOBS, ImportedImage, LayerFetch, LayerInfo, Platform, Progress};
use crate::store::ContentStore;

/// How to reach a registry and what to pull from it.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform picked from a multi-platform image.
    pub platform: Platform,
    /// `--creds USER:PASS`; when set, the auth files are not read.
    pub creds: Option<Credentials>,
    /// Auth files searched in order, the first with an entry for the registry wins.
    pub auth_files: Vec<PathBuf>,
    /// `--cert-dir`: extra CAs (`*.crt`) and a client certificate (`NAME.cert` + `NAME.key`).
    pub cert_dir: Option<PathBuf>,
    /// `--tls-verify=false` accepts any certificate and allows plain HTTP.
    pub tls_verify: bool,
    /// Layers downloaded at once.
    pub jobs: usize,
    /// Longest wait to resolve the host and connect (TLS handshake included).
    pub connect_timeout: Duration,
    /// Longest wait for an answer or for any read of a body.
    pub read_timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            creds: None,
            auth_files: default_auth_files(),
            cert_dir: None,
            tls_verify: true,
            jobs: DEFAULT_JOBS,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The image for the chosen platform, every blob in the store and verified.
    pub image: ImportedImage,
    /// The digest of what the reference resolved to (the index of a multi-platform
    /// image, else the manifest): `name@repo_digest` pulls the same image again.
    pub repo_digest: Digest,
}

/// Pulls `reference` into `store`. Layers download `options.jobs` at a time, each
/// verified (size, digest, diff id, safe entries) as it streams in; blobs already in
/// the store are not fetched. `on_layer(k, layer)` runs on the calling thread, in
/// layer order, as soon as layers `0..=k` are verified, so they can be unpacked while
/// later ones download; an error from it stops the pull and is returned.
pub fn pull(
    store: &ContentStore,
    reference: &Reference,
    options: &PullOptions,
    progress: &dyn Progress,
    on_layer: &mut dyn FnMut(usize, &LayerInfo) -> Result<()>,
) -> Result<PulledImage> {
    let client = client::Client::connect(reference, options)?;
    let root = client.fetch_root(store)?;
    let repo_digest = Digest::try_from(root.digest())?;
    let layers = LayerFetch {
        jobs: options.jobs,
        progress,
        on_layer,
    };
    let image = image::import_with(store, &client, &root, &options.platform, layers)?;
    Ok(PulledImage { image, repo_digest })
}
