//! One repository of one registry over the distribution API: choosing HTTPS or HTTP,
//! answering `401` challenges, and serving manifests and blobs as a [`BlobSource`].

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use oci_spec::image::Descriptor;
use ureq::Agent;
use ureq::http::{Response, StatusCode};

use super::PullOptions;
use super::auth::{self, Challenge, Credentials};
use super::certs;
use super::reference::Reference;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{BlobSource, INDEX_TYPES, MANIFEST_TYPES};
use crate::store::{ContentStore, MAX_METADATA_BYTES};

type HttpResponse = Response<ureq::Body>;

/// Error bodies are read only this far.
const MAX_ERROR_BODY: u64 = 64 << 10;

pub(crate) struct Client {
    agent: Agent,
    /// `https://host:port` or `http://host:port`.
    base: String,
    reference: Reference,
    explicit_creds: Option<Credentials>,
    auth_files: Vec<PathBuf>,
    /// Credentials and where they came from, looked up at the first challenge.
    creds: OnceLock<Option<(Credentials, String)>>,
    /// The `Authorization` header to send, once a challenge asked for one.
    authorization: Mutex<Option<String>>,
}

/// `localhost`, 127.0.0.0/8 and ::1, with or without a port.
fn is_loopback(endpoint: &str) -> bool {
    let host = match endpoint.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => endpoint.split(':').next().unwrap_or(""),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The rustls error behind a failed request, if TLS is what failed.
fn tls_cause(error: &ureq::Error) -> Option<&rustls::Error> {
    match error {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(e) => e.get_ref()?.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}

/// The TLS handshake failed in a way a plain HTTP server causes (it answers with
/// HTTP text, or hangs up); not for certificate errors or an unreachable host.
fn may_be_plain_http(error: &ureq::Error) -> bool {
    match (tls_cause(error), error) {
        (Some(rustls::Error::InvalidCertificate(_)), _) => false,
        (Some(_), _) => true,
        (None, ureq::Error::Io(e)) => matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::InvalidData
        ),
        (None, ureq::Error::Protocol(_)) => true,
        _ => false,
    }
}

fn transport_error(registry: &str, url: &str, error: ureq::Error) -> Error {
    let (registry, url) = (registry.to_string(), url.to_string());
    let reason = match &error {
        ureq::Error::Io(e) => e.to_string(),
        ureq::Error::HostNotFound => "the host name does not resolve".to_string(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        other => other.to_string(),
    };
    if tls_cause(&error).is_some() || matches!(error, ureq::Error::Tls(_)) {
        return Error::RegistryTls {
            registry,
            url,
            reason,
        };
    }
    Error::RegistryUnreachable {
        registry,
        url,
        reason,
    }
}

/// What a registry said about a failed request: its `errors` list, or the body's start.
fn describe_failure(response: HttpResponse) -> String {
    let status = response.status();
    let mut body = String::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_string(&mut body);
    let listed: Vec<String> = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("errors")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let field = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
            format!("{} {}", field("code"), field("message"))
                .trim()
                .to_string()
        })
        .collect();
    let detail = if listed.is_empty() {
        body.trim().chars().take(200).collect()
    } else {
        listed.join("; ")
    };
    match detail.is_empty() {
        true => format!("HTTP {status}"),
        false => format!("HTTP {status}: {detail}"),
    }
}

impl Client {
    /// Reaches the registry (HTTPS; HTTP for a loopback host that does not speak TLS, or
    /// any host with `tls_verify` off) and authenticates if `/v2/` asks for it.
    pub(crate) fn connect(reference: &Reference, options: &PullOptions) -> Result<Self> {
        let tls = certs::tls_config(options.cert_dir.as_deref(), options.tls_verify)?;
        let endpoint = reference.endpoint();
        let mut config = Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .timeout_resolve(Some(options.connect_timeout))
            .timeout_connect(Some(options.connect_timeout))
            .timeout_recv_response(Some(options.read_timeout))
            .timeout_per_read(Some(options.read_timeout))
            .user_agent(concat!("rcrun/", env!("CARGO_PKG_VERSION")));
        // Like Go's (docker's) client: a proxy from the environment never serves loopback.
        if is_loopback(endpoint) {
            config = config.proxy(None);
        }
        let agent: Agent = config.build().into();
        let https = format!("https://{endpoint}");
        let (base, ping) = match agent.get(format!("{https}/v2/")).call() {
            Ok(r) => (https, r),
            Err(e) if may_be_plain_http(&e) && (is_loopback(endpoint) || !options.tls_verify) => {
                // Plain HTTP only if a registry answers there; else the TLS error stands.
                let http = format!("http://{endpoint}");
                match agent.get(format!("{http}/v2/")).call() {
                    Ok(r) if r.status().is_success() || r.status() == StatusCode::UNAUTHORIZED => {
                        (http, r)
                    }
                    _ => return Err(transport_error(reference.registry(), &https, e)),
                }
            }
            Err(e) => return Err(transport_error(reference.registry(), &https, e)),
        };
        let client = Client {
            agent,
            base,
            reference: reference.clone(),
            explicit_creds: options.creds.clone(),
            auth_files: options.auth_files.clone(),
            creds: OnceLock::new(),
            authorization: Mutex::new(None),
        };
        let ping = client.get_after("/v2/", None, Some(ping))?;
        if !ping.status().is_success() {
            return Err(client.failure(format!(
                "{}/v2/ is not a registry API endpoint ({})",
                client.base,
                describe_failure(ping)
            )));
        }
        Ok(client)
    }

    fn registry(&self) -> &str {
        self.reference.registry()
    }

    fn failure(&self, reason: String) -> Error {
        Error::Registry {
            registry: self.registry().to_string(),
            reason,
        }
    }

    fn credentials(&self) -> Result<Option<&(Credentials, String)>> {
        if let Some(found) = self.creds.get() {
            return Ok(found.as_ref());
        }
        let found = match &self.explicit_creds {
            Some(c) => Some((c.clone(), "--creds".to_string())),
            None => auth::lookup(
                &self.auth_files,
                self.registry(),
                self.reference.repository(),
            )?
            .map(|(c, path)| (c, path.display().to_string())),
        };
        Ok(self.creds.get_or_init(|| found).as_ref())
    }

    /// Refused after authenticating: bad credentials, or none and the registry wants some.
    fn denied(&self) -> Error {
        let origin = self
            .creds
            .get()
            .and_then(|c| c.as_ref())
            .map(|(_, origin)| origin.clone());
        match origin {
            Some(origin) => Error::AuthFailed {
                registry: self.registry().to_string(),
                origin,
            },
            None => Error::AuthRequired {
                registry: self.registry().to_string(),
                repository: self.reference.repository().to_string(),
            },
        }
    }

    fn authenticate(&self, challenge: &Challenge) -> Result<()> {
        let creds = self.credentials()?.map(|(c, _)| c);
        let header = match challenge {
            Challenge::Basic => creds.ok_or_else(|| self.denied())?.basic(),
            Challenge::Bearer { realm, service } => {
                format!("Bearer {}", self.token(realm, service.as_deref(), creds)?)
            }
        };
        *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(header);
        Ok(())
    }

    /// A pull token for the repository from the token server `realm`.
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        creds: Option<&Credentials>,
    ) -> Result<String> {
        let realm_host = realm
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or(""));
        if creds.is_some() && realm_host.is_some_and(|host| !is_loopback(host)) {
            return Err(self.failure(format!(
                "its token server {realm} is not HTTPS; rcrun will not send credentials there"
            )));
        }
        let mut request = self.agent.get(realm).query(
            "scope",
            format!("repository:{}:pull", self.reference.repository()),
        );
        if let Some(service) = service {
            request = request.query("service", service);
        }
        if let Some(creds) = creds {
            request = request.header("Authorization", creds.basic());
        }
        let response = request
            .call()
            .map_err(|e| transport_error(self.registry(), realm, e))?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(self.denied()),
            _ => {
                return Err(self.failure(format!(
                    "its token server {realm} refused a token: {}",
                    describe_failure(response)
                )));
            }
        }
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_METADATA_BYTES)
            .read_to_end(&mut body)
            .map_err(|e| Error::io(format!("read a token from {realm}"), e))?;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        ["token", "access_token"]
            .iter()
            .find_map(|k| json.get(k)?.as_str().filter(|t| !t.is_empty()))
            .map(str::to_string)
            .ok_or_else(|| {
                self.failure(format!("its token server {realm} answered without a token"))
            })
    }

    fn get(&self, path: &str, accept: Option<&str>) -> Result<HttpResponse> {
        self.get_after(path, accept, None)
    }

    /// GETs `path`, answering one `401` challenge; `first` is an answer already had.
    fn get_after(
        &self,
        path: &str,
        accept: Option<&str>,
        mut first: Option<HttpResponse>,
    ) -> Result<HttpResponse> {
        let url = format!("{}{path}", self.base);
        let mut challenged = false;
        loop {
            let response = match first.take() {
                Some(r) => r,
                None => {
                    let authorization = self
                        .authorization
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    let mut request = self.agent.get(&url);
                    if let Some(accept) = accept {
                        request = request.header("Accept", accept);
                    }
                    if let Some(header) = authorization {
                        request = request.header("Authorization", header);
                    }
                    request
                        .call()
                        .map_err(|e| transport_error(self.registry(), &url, e))?
                }
            };
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if challenged {
                return Err(self.denied());
            }
            let challenge = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .and_then(auth::parse_challenge)
                .ok_or_else(|| {
                    self.failure(format!(
                        "{url} wants authentication without a challenge rcrun understands ({})",
                        describe_failure(response)
                    ))
                })?;
            self.authenticate(&challenge)?;
            challenged = true;
        }
    }

    fn manifest_accept() -> String {
        INDEX_TYPES
            .iter()
            .chain(MANIFEST_TYPES.iter())
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn manifest_response(&self, reference: &str) -> Result<HttpResponse> {
        let path = format!("/v2/{}/manifests/{reference}", self.reference.repository());
        let response = self.get(&path, Some(&Self::manifest_accept()))?;
        match response.status() {
            s if s.is_success() => Ok(response),
            StatusCode::NOT_FOUND => Err(Error::ManifestUnknown {
                reference: match reference.starts_with("sha256:") {
                    true => format!("{}@{reference}", self.reference.name()),
                    false => format!("{}:{reference}", self.reference.name()),
                },
                registry: self.registry().to_string(),
            }),
            _ => Err(self.failure(format!(
                "fetching the manifest {reference} of {}: {}",
                self.reference.repository(),
                describe_failure(response)
            ))),
        }
    }

    /// Fetches the manifest or index the reference names, checks it against the
    /// reference's digest if any, and stores it; returns a descriptor for it.
    pub(crate) fn fetch_root(&self, store: &ContentStore) -> Result<Descriptor> {
        let response = self.manifest_response(&self.reference.manifest_ref())?;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let mut bytes = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_METADATA_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("read the manifest of {}", self.reference), e))?;
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(self.failure(format!(
                "the manifest of {} is larger than {MAX_METADATA_BYTES} bytes",
                self.reference
            )));
        }
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if content_type.starts_with("application/vnd.docker.distribution.manifest.v1")
            || json.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1)
        {
            return Err(self.failure(format!(
                "{} has a Docker schema 1 manifest, which is unsupported (deprecated since 2017): push the image again with a current docker, podman or skopeo",
                self.reference
            )));
        }
        let digest = Digest::of(&bytes);
        if let Some(wanted) = self.reference.digest()
            && wanted != &digest
        {
            return Err(Error::DigestMismatch {
                expected: wanted.clone(),
                actual: digest,
                size: bytes.len() as u64,
            });
        }
        store.put(&bytes)?;
        let media_type = if content_type.is_empty() {
            json.get("mediaType")
                .and_then(|m| m.as_str())
                .unwrap_or("application/json")
                .to_string()
        } else {
            content_type
        };
        serde_json::from_value(serde_json::json!({
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": bytes.len(),
        }))
        .map_err(|e| self.failure(format!("cannot describe the manifest {digest}: {e}")))
    }

    fn blob_response(&self, digest: &Digest) -> Result<HttpResponse> {
        let repository = self.reference.repository();
        let response = self.get(&format!("/v2/{repository}/blobs/{digest}"), None)?;
        match response.status() {
            s if s.is_success() => Ok(response),
            s => Err(self.failure(format!(
                "blob {digest} of {repository}{}: {}",
                if s == StatusCode::NOT_FOUND {
                    " is missing"
                } else {
                    " could not be fetched"
                },
                describe_failure(response)
            ))),
        }
    }
}

impl BlobSource for Client {
    fn name(&self) -> String {
        self.reference.to_string()
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(
            self.blob_response(digest)?.into_body().into_reader(),
        ))
    }

    fn open_manifest(&self, digest: &Digest) -> Result<Box<dyn Read + '_>> {
        let response = self.manifest_response(&digest.to_string())?;
        Ok(Box::new(response.into_body().into_reader()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.8.9.1:80",
            "[::1]",
            "[::1]:5000",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1:5000",
            "[::2]:5000",
            "localhost.example.com",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    /// A plain-HTTP registry front that wants a bearer token from its own `/token`,
    /// given for `user:pass` only; it answers `/v2/` once the token is presented.
    /// Docker Hub works this way; the test registry has no token server.
    fn token_registry() -> (String, std::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let realm = format!("http://{host}/token");
        let (seen, requests) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(&stream);
                let mut first = Vec::new();
                reader.read_until(b'\n', &mut first).unwrap();
                if !first.starts_with(b"GET ") {
                    continue; // a TLS handshake: hang up, as some plain servers do
                }
                let request = String::from_utf8_lossy(&first).trim().to_string();
                let authorization = reader
                    .lines()
                    .map_while(|l| l.ok())
                    .take_while(|l| !l.is_empty())
                    .find_map(|l| {
                        let (name, value) = l.split_once(": ")?;
                        name.eq_ignore_ascii_case("authorization")
                            .then(|| value.to_string())
                    })
                    .unwrap_or_default();
                let basic = Credentials::parse("user:pass").unwrap().basic();
                let (status, extra, body) = if request.starts_with("GET /token?") {
                    match authorization == basic {
                        true => ("200 OK", String::new(), r#"{"access_token":"t0k"}"#),
                        false => ("401 Unauthorized", String::new(), ""),
                    }
                } else if authorization == "Bearer t0k" && request.contains("/manifests/") {
                    let schema1 = "Content-Type: application/vnd.docker.distribution.manifest.v1+prettyjws\r\n";
                    (
                        "200 OK",
                        schema1.to_string(),
                        r#"{"schemaVersion":1,"name":"org/app"}"#,
                    )
                } else if authorization == "Bearer t0k" {
                    ("200 OK", String::new(), "{}")
                } else {
                    let challenge =
                        format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"fake\"\r\n");
                    ("401 Unauthorized", challenge, "")
                };
                let _ = seen.send(format!("{request} [{authorization}]"));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (host, requests)
    }

    #[test]
    fn a_bearer_challenge_is_answered_with_a_token() {
        let (host, requests) = token_registry();
        let reference = Reference::parse(&format!("{host}/org/app:1")).unwrap();
        let options = |creds: Option<&str>| PullOptions {
            creds: creds.map(|c| Credentials::parse(c).unwrap()),
            auth_files: vec![],
            ..PullOptions::default()
        };
        let client = Client::connect(&reference, &options(Some("user:pass"))).unwrap();
        assert!(client.base.starts_with("http://"), "plain HTTP on loopback");
        let token_request = requests
            .try_iter()
            .find(|r| r.starts_with("GET /token"))
            .expect("a token request");
        assert!(
            token_request.contains("scope=repository%3Aorg%2Fapp%3Apull")
                && token_request.contains("service=fake"),
            "{token_request}"
        );
        // The token is kept for later requests, which find a schema 1 manifest here.
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let err = client.fetch_root(&store).unwrap_err().to_string();
        assert!(
            err.contains("schema 1") && err.contains("unsupported"),
            "{err}"
        );
        assert!(store.list().unwrap().is_empty());

        let err = Client::connect(&reference, &options(Some("user:wrong")))
            .err()
            .unwrap();
        assert!(matches!(err, Error::AuthFailed { .. }), "{err}");
        let err = Client::connect(&reference, &options(None)).err().unwrap();
        assert!(matches!(err, Error::AuthRequired { .. }), "{err}");
    }
}
