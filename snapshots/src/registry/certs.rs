//! TLS trust for a registry: the system's CA bundle, plus a certificate directory in
//! the containers-certs.d layout (`*.crt`: extra CAs; `NAME.cert` + `NAME.key`: a
//! client certificate), as podman's and skopeo's `--cert-dir` read it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::error::{Error, Result};

/// Where distributions keep the CA bundle; `SSL_CERT_FILE` overrides them.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

pub(crate) fn tls_config(cert_dir: Option<&Path>, verify: bool) -> Result<TlsConfig> {
    let (extra, client) = match cert_dir {
        Some(dir) => load_cert_dir(dir)?,
        None => (Vec::new(), None),
    };
    let mut roots = system_roots();
    roots.extend(extra);
    // Without a system bundle, the CAs built into rcrun (Mozilla's) still work.
    let roots = if roots.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::Specific(Arc::new(roots))
    };
    Ok(TlsConfig::builder()
        .root_certs(roots)
        .client_cert(client)
        .disable_verification(!verify)
        .build())
}

fn system_roots() -> Vec<Certificate<'static>> {
    let chosen = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = chosen
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        if let Ok(pem) = std::fs::read(&path) {
            return certificates(&pem).unwrap_or_default();
        }
    }
    Vec::new()
}

fn certificates(pem: &[u8]) -> std::result::Result<Vec<Certificate<'static>>, ureq::Error> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        if let PemItem::Certificate(c) = item? {
            out.push(c);
        }
    }
    Ok(out)
}

fn settings(path: &Path, reason: impl Into<String>) -> Error {
    Error::Settings {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The extra CAs and the client certificate (if any) of `dir`.
pub(crate) fn load_cert_dir(dir: &Path) -> Result<(Vec<Certificate<'static>>, Option<ClientCert>)> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| settings(dir, format!("cannot read the certificate directory: {e}")))?;
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    let with_ext = |ext: &str| -> Vec<&PathBuf> {
        names
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect()
    };
    let read =
        |path: &Path| std::fs::read(path).map_err(|e| settings(path, format!("cannot read: {e}")));
    let mut roots = Vec::new();
    for path in with_ext("crt") {
        let found = certificates(&read(path)?)
            .map_err(|e| settings(path, format!("malformed PEM: {e}")))?;
        if found.is_empty() {
            return Err(settings(path, "holds no PEM certificate"));
        }
        roots.extend(found);
    }
    for key in with_ext("key") {
        if !key.with_extension("cert").is_file() {
            return Err(settings(
                key,
                "is a client key without its certificate (the same name ending in .cert)",
            ));
        }
    }
    let client_certs = with_ext("cert");
    if client_certs.len() > 1 {
        return Err(settings(
            dir,
            "holds more than one client certificate (*.cert)",
        ));
    }
    let client = match client_certs.first() {
        None => None,
        Some(cert) => {
            let key_path = cert.with_extension("key");
            if !key_path.is_file() {
                return Err(settings(
                    cert,
                    "is a client certificate without its key (the same name ending in .key)",
                ));
            }
            let chain = certificates(&read(cert)?)
                .map_err(|e| settings(cert, format!("malformed PEM: {e}")))?;
            if chain.is_empty() {
                return Err(settings(cert, "holds no PEM certificate"));
            }
            let key = PrivateKey::from_pem(&read(&key_path)?)
                .map_err(|e| settings(&key_path, format!("holds no usable private key: {e}")))?;
            Some(ClientCert::new_with_certs(&chain, key))
        }
    };
    Ok((roots, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Base64 of anything passes as PEM: parsing the DER is rustls' business.
    const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn a_cert_dir_gives_cas_and_a_client_certificate() {
        let two = format!("{PEM_CERT}{PEM_CERT}");
        let dir = dir_with(&[
            ("ca.crt", &two),
            ("other.crt", PEM_CERT),
            ("client.cert", PEM_CERT),
            ("client.key", PEM_KEY),
            ("README", "ignored"),
        ]);
        let (roots, client) = load_cert_dir(dir.path()).unwrap();
        assert_eq!(roots.len(), 3);
        assert_eq!(client.expect("client certificate").certs().len(), 1);
        let (roots, client) = load_cert_dir(dir_with(&[("ca.crt", PEM_CERT)]).path()).unwrap();
        assert_eq!((roots.len(), client.is_none()), (1, true));
    }

    #[test]
    fn cert_dir_problems_name_the_file() {
        type Files<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Files, &str, &str); 6] = [
            (
                &[("ca.crt", "not pem at all")],
                "ca.crt",
                "holds no PEM certificate",
            ),
            (
                &[(
                    "ca.crt",
                    "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
                )],
                "ca.crt",
                "malformed PEM",
            ),
            (
                &[("client.cert", PEM_CERT)],
                "client.cert",
                "without its key",
            ),
            (
                &[("client.key", PEM_KEY)],
                "client.key",
                "without its certificate",
            ),
            (
                &[("client.cert", PEM_CERT), ("client.key", "no key here")],
                "client.key",
                "no usable private key",
            ),
            (
                &[
                    ("a.cert", PEM_CERT),
                    ("a.key", PEM_KEY),
                    ("b.cert", PEM_CERT),
                    ("b.key", PEM_KEY),
                ],
                "",
                "more than one client certificate",
            ),
        ];
        for (files, file, wanted) in cases {
            let dir = dir_with(files);
            let msg = load_cert_dir(dir.path()).unwrap_err().to_string();
            let path = match file {
                "" => dir.path().display().to_string(),
                file => dir.path().join(file).display().to_string(),
            };
            assert!(
                msg.contains(&path) && msg.contains(wanted),
                "{files:?}: {msg}"
            );
        }
        let missing = Path::new("/nonexistent/rcrun-certs");
        let msg = tls_config(Some(missing), true).unwrap_err().to_string();
        assert!(
            msg.contains("/nonexistent/rcrun-certs") && msg.contains("cannot read"),
            "{msg}"
        );
    }
}
