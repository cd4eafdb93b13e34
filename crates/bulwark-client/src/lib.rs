//! A typed client of the backup server's REST API (`/api/v1`), for the command line and for
//! tests: one connection (TLS with the server's own CA, a bearer token), errors that say what
//! to do, and the server's own types for what goes in and comes back (`bulwark_server::store`
//! rows, `bulwark_server::model` inputs), so client and server cannot disagree on a field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_server::answers::RestoreOutcome;
use bulwark_server::model::RestoreInput;
use bulwark_server::point_files::{FilesPage, VolumeRow};
use bulwark_server::store::{ExportRow, NodeRow, PointRow, RepositoryRow, SessionRow};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// What can go wrong talking to the server, each saying what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA certificate {path}: {source}")]
    CaCertificate { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a PEM certificate")]
    NotPem { path: PathBuf },
    /// No answer: the connection or TLS failed.
    #[error("cannot connect to the server at {server}: {advice}")]
    Unreachable { server: String, advice: String },
    /// The server answered with an error.
    #[error("server: {message} ({status})")]
    Refused { status: u16, message: String },
    /// The server answered, but not with what this client expects (another version?).
    #[error("the server's answer to {request} is not what this client expects ({reason}); is it another version?")]
    Unexpected { request: String, reason: String },
}

impl ClientError {
    /// The HTTP status of a refusal (404: no such object, 409: conflict…).
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A connection to one server as one user (an API token).
pub struct Client {
    agent: ureq::Agent,
    server: String,
    base: String,
    token: String,
    ca_cert: Option<PathBuf>,
}

impl Client {
    /// The server at `server` (`https://host:port`), trusting the CA in `ca_cert` (the server's
    /// `ca.pem`) or the system's roots.
    pub fn connect(server: &str, token: &str, ca_cert: Option<&Path>) -> Result<Client> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = ca_cert {
            let pem =
                std::fs::read(ca).map_err(|source| ClientError::CaCertificate { path: ca.to_path_buf(), source })?;
            let cert =
                ureq::tls::Certificate::from_pem(&pem).map_err(|_| ClientError::NotPem { path: ca.to_path_buf() })?;
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            // Restores and health checks answer when done, however long that takes; only
            // connecting is bounded.
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .new_agent();
        let server = server.trim_end_matches('/').to_string();
        Ok(Client {
            agent,
            base: format!("{server}/api/v1"),
            server,
            token: token.to_string(),
            ca_cert: ca_cert.map(PathBuf::from),
        })
    }

    /// The server's URL, as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Any call by method and path under `/api/v1`, answered as JSON.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &auth).call(),
            ("POST", b) => self.agent.post(&url).header("Authorization", &auth).send_json(b.unwrap_or(json!({}))),
            ("PUT", b) => self.agent.put(&url).header("Authorization", &auth).send_json(b.unwrap_or(json!({}))),
            ("PATCH", b) => self.agent.patch(&url).header("Authorization", &auth).send_json(b.unwrap_or(json!({}))),
            (other, _) => panic!("HTTP method {other} is not one the API uses"),
        };
        let mut resp = resp.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        if !status.is_success() {
            let message = v["error"].as_str().map_or_else(|| v.to_string(), String::from);
            return Err(ClientError::Refused { status: status.as_u16(), message });
        }
        Ok(v)
    }

    fn typed<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<Value>) -> Result<T> {
        let v = self.call(method, path, body)?;
        serde_json::from_value(v)
            .map_err(|e| ClientError::Unexpected { request: format!("{method} {path}"), reason: e.to_string() })
    }

    /// Joined computers, each with whether it answers now.
    pub fn computers(&self) -> Result<Vec<NodeRow>> {
        self.typed("GET", "/computers", None)
    }

    /// A computer with its inventory, asked afresh.
    pub fn computer(&self, name: &str) -> Result<NodeRow> {
        self.typed("GET", &format!("/computers/{name}"), None)
    }

    /// Joined transport nodes.
    pub fn transports(&self) -> Result<Vec<NodeRow>> {
        self.typed("GET", "/transports", None)
    }

    pub fn repositories(&self) -> Result<Vec<RepositoryRow>> {
        self.typed("GET", "/repositories", None)
    }

    pub fn repository(&self, name: &str) -> Result<RepositoryRow> {
        self.typed("GET", &format!("/repositories/{name}"), None)
    }

    /// Sessions, newest first; of one job when given.
    pub fn sessions(&self, job: Option<&str>) -> Result<Vec<SessionRow>> {
        let path = job.map_or_else(|| "/sessions".to_string(), |j| format!("/sessions?job={j}"));
        self.typed("GET", &path, None)
    }

    /// A session with its tasks (their logs too with `logs`).
    pub fn session(&self, id: &str, logs: bool) -> Result<SessionRow> {
        self.typed("GET", &format!("/sessions/{id}?logs={logs}"), None)
    }

    /// Starts a session of a job now.
    pub fn start_job(&self, name: &str) -> Result<SessionRow> {
        self.typed("POST", &format!("/jobs/{name}/start"), None)
    }

    /// Runs a job again for the computers its last session did not back up.
    pub fn retry_job(&self, name: &str) -> Result<SessionRow> {
        self.typed("POST", &format!("/jobs/{name}/retry"), None)
    }

    /// Stops a job's running session.
    pub fn stop_job(&self, name: &str) -> Result<SessionRow> {
        self.typed("POST", &format!("/jobs/{name}/stop"), None)
    }

    /// Catalog points, oldest first; of one computer when given.
    pub fn points(&self, computer: Option<&str>) -> Result<Vec<PointRow>> {
        let path = computer.map_or_else(|| "/points".to_string(), |c| format!("/points?computer={c}"));
        self.typed("GET", &path, None)
    }

    /// A catalog point with its manifest.
    pub fn point(&self, id: &str) -> Result<PointRow> {
        self.typed("GET", &format!("/points/{id}"), None)
    }

    /// Restores a point; answers when the restore has ended.
    pub fn restore(&self, point: &str, input: &RestoreInput) -> Result<RestoreOutcome> {
        let body = serde_json::to_value(input).expect("a restore serializes");
        self.typed("POST", &format!("/points/{point}/restore"), Some(body))
    }

    /// A point's volumes (the whole image, then a disk's partitions).
    pub fn volumes(&self, point: &str) -> Result<Vec<VolumeRow>> {
        self.typed("GET", &format!("/points/{}/volumes", segment(point)), None)
    }

    /// One page of directory `path` of a point (of the filesystem on `volume`, for volume
    /// points), after `cursor`.
    pub fn files(&self, point: &str, volume: u32, path: &str, cursor: Option<&str>, limit: u32) -> Result<FilesPage> {
        let mut q = format!("?volume={volume}&limit={limit}&path={}", query_text(path));
        if let Some(c) = cursor {
            q.push_str(&format!("&cursor={}", query_text(c)));
        }
        self.typed("GET", &format!("/points/{}/files{q}", segment(point)), None)
    }

    /// Copies the file at `path` of a point into `out` (from byte `offset` on); returns the
    /// number of bytes copied.
    pub fn download(
        &self,
        point: &str,
        volume: u32,
        path: &str,
        offset: u64,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        self.stream("content", point, volume, path, offset, out)
    }

    /// Copies `path` of a point and everything under it into `out` as a tar stream.
    pub fn download_archive(&self, point: &str, volume: u32, path: &str, out: &mut dyn std::io::Write) -> Result<u64> {
        self.stream("archive", point, volume, path, 0, out)
    }

    fn stream(
        &self,
        what: &str,
        point: &str,
        volume: u32,
        path: &str,
        offset: u64,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        let url =
            format!("{}/points/{}/files/{what}?volume={volume}&path={}", self.base, segment(point), query_text(path));
        let mut req = self.agent.get(&url).header("Authorization", &format!("Bearer {}", self.token));
        if offset > 0 {
            req = req.header("Range", &format!("bytes={offset}-"));
        }
        let mut resp = req.call().map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
            let message = v["error"].as_str().map_or_else(|| v.to_string(), String::from);
            return Err(ClientError::Refused { status: status.as_u16(), message });
        }
        let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut body, out).map_err(|e| ClientError::Unexpected {
            request: format!("GET {path} of point {point}"),
            reason: e.to_string(),
        })
    }

    /// Publishes a volume point over NBD (instant recovery).
    pub fn publish(
        &self,
        point: &str,
        volume: u32,
        writable: bool,
        hours: Option<u32>,
        allowed_ip: Option<&str>,
    ) -> Result<ExportRow> {
        let body = json!({"volume": volume, "writable": writable, "hours": hours, "allowed_ip": allowed_ip});
        self.typed("POST", &format!("/points/{}/exports", segment(point)), Some(body))
    }

    /// Exports that have not ended.
    pub fn exports(&self) -> Result<Vec<ExportRow>> {
        self.typed("GET", "/exports", None)
    }

    /// Ends an export.
    pub fn unpublish(&self, id: &str) -> Result<ExportRow> {
        self.typed("DELETE", &format!("/exports/{}", segment(id)), None)
    }

    /// Why the server could not be reached, and what to do about it when that is ours to say:
    /// most often a certificate this computer has no reason to trust.
    fn unreachable(&self, e: ureq::Error) -> ClientError {
        use bulwark_proto::rustls;
        use rustls::CertificateError as C;
        let cert = match &e {
            ureq::Error::Rustls(rustls::Error::InvalidCertificate(c)) => Some(c.clone()),
            ureq::Error::Io(io) => match io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(c)) => Some(c.clone()),
                _ => None,
            },
            _ => None,
        };
        let server = &self.server;
        let advice = match (cert, &self.ca_cert) {
            (Some(C::UnknownIssuer | C::BadSignature), None) => {
                "the server's certificate is not trusted: it is issued by the server's own CA, which this computer \
                 does not know; set BULWARK_CA_CERT (or --ca-cert) to that CA's certificate, ca.pem in the server's \
                 data directory"
                    .to_string()
            }
            (Some(C::UnknownIssuer | C::BadSignature), Some(ca)) => format!(
                "the server's certificate is not issued by the CA in {} (BULWARK_CA_CERT or --ca-cert): give the \
                 ca.pem of this server's data directory",
                ca.display()
            ),
            (Some(C::NotValidForName | C::NotValidForNameContext { .. }), _) => format!(
                "the server's certificate does not hold the name in {server}: use a name it was made for \
                 (localhost, its host name or address), or start the server with --tls-name NAME"
            ),
            (Some(C::Expired | C::ExpiredContext { .. }), _) => {
                "the server's certificate has expired: restart the server, which renews it at each start".into()
            }
            (Some(other), _) => format!("the server's certificate is refused: {other:?}"),
            (None, _) => e.to_string(),
        };
        ClientError::Unreachable { server: server.clone(), advice }
    }
}

/// `s` as a URL query value (percent-encoded but for unreserved characters and `/`).
fn query_text(s: &str) -> String {
    encoded(s, b"-_.~/")
}

/// `s` as one segment of a URL's path: a `/` or `..` in it cannot reach another path.
fn segment(s: &str) -> String {
    encoded(s, b"-_~")
}

fn encoded(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
