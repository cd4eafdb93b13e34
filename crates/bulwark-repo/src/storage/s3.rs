//! A repository in an S3 bucket (AWS, or a self-hosted store: Ceph RGW, MinIO, SeaweedFS).
//!
//! A small client of our own over `ureq`, signed with [`super::sigv4`]: the few calls a
//! repository makes, plus the bucket and Object Lock calls the immutability work needs, which
//! the lean crates lack and the full SDK would take minutes to compile for.
//!
//! What it guarantees beyond the plain calls:
//! - every PUT carries a checksum the server verifies (buckets with Object Lock refuse PUTs
//!   without one): object data an `x-amz-checksum-crc32c`, with the payload left out of the
//!   signature (`UNSIGNED-PAYLOAD`), so that its bytes are run through one cheap pass instead
//!   of SHA-256 on both sides; small documents (configurations, retentions) a signed payload
//!   and `x-amz-checksum-sha256`;
//! - failures that may pass (5xx, throttling, timeouts, lost connections) are retried a bounded
//!   number of times with exponential backoff and jitter, then reported naming the endpoint,
//!   bucket and key; other refusals are reported at once, mapped to an `io::ErrorKind` callers
//!   can act on (`NotFound` only ever means "no such object" or "no such bucket");
//! - at most [`S3Options::max_in_flight`] requests of one storage are in flight;
//! - credentials never appear in a URL, a message or `Debug` output.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use ureq::http;

use super::location::S3Location;
use super::sigv4::{self, EMPTY_SHA256};
use super::{Entry, StagedObject, Storage, VersionsTidied};

/// How an [`S3Storage`] talks to its endpoint.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Requests of one storage in flight at once; more wait for a turn.
    pub max_in_flight: usize,
    /// Tries of a request that failed in a way that may pass, the first included.
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles with each retry (with jitter) up to
    /// `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Objects larger than this go up as multipart uploads in parts of this size (S3 wants
    /// parts of 5 MiB at least; smaller values are raised to that). Smaller objects are held
    /// in memory until committed and sent whole: the default is above a pack's usual size (32
    /// MiB and its last chunk), so that a pack goes up in one request, at its commit, and
    /// writing into it never waits on the network.
    pub part_size: usize,
    /// Keys asked for per listing page (S3 answers at most 1000).
    pub page_size: u32,
    pub connect_timeout: Duration,
    /// Longest silence while sending or receiving (a stalled transfer fails after this, however
    /// long the transfer as a whole takes).
    pub io_timeout: Duration,
    /// Longest wait for an answer once a request is sent.
    pub response_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            max_in_flight: 8,
            max_attempts: 5,
            retry_base: Duration::from_millis(400),
            retry_cap: Duration::from_secs(8),
            part_size: 64 << 20,
            page_size: 1000,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(120),
        }
    }
}

const MIN_PART: usize = 5 << 20;

/// An access key, its secret and an optional session token.
#[derive(Clone)]
pub struct Credentials {
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
    /// Where they came from, for messages (never the keys themselves).
    source: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("source", &self.source).finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(access_key: &str, secret_key: &str, session_token: Option<&str>) -> Credentials {
        Credentials {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            session_token: session_token.map(String::from),
            source: "credentials given by the caller".into(),
        }
    }

    /// The credentials for `loc`: its `credentials-file` when it names one (an explicit choice
    /// wins), else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, else the
    /// shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, or `.aws/credentials` in the home
    /// directory). Files are read in the section `AWS_PROFILE` names, `default` otherwise.
    pub fn for_location(loc: &S3Location) -> io::Result<Credentials> {
        let profile = std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "default".into());
        if let Some(file) = &loc.credentials_file {
            return Credentials::from_file(file, &profile)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: no aws_access_key_id and aws_secret_access_key in section [{profile}]",
                        file.display()
                    ),
                )
            });
        }
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key), Some(secret_key)) => {
                return Ok(Credentials {
                    access_key,
                    secret_key,
                    session_token: var("AWS_SESSION_TOKEN"),
                    source: "credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                })
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together",
                ))
            }
            (None, None) => {}
        }
        let shared = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".aws").join("credentials")));
        if let Some(file) = shared.filter(|f| f.exists()) {
            if let Some(c) = Credentials::from_file(&file, &profile)? {
                return Ok(c);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "no S3 credentials for {}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a file \
                 in the location's credentials-file=",
                super::Location::S3(loc.clone())
            ),
        ))
    }

    /// Reads `[profile]` of an AWS credentials file (INI); `None` when it has no keys there.
    fn from_file(path: &Path, profile: &str) -> io::Result<Option<Credentials>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("reading S3 credentials from {}: {e}", path.display())))?;
        let (mut access_key, mut secret_key, mut session_token) = (None, None, None);
        let mut in_section = false;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim();
                in_section = name == profile || name.strip_prefix("profile ").map(str::trim) == Some(profile);
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { continue };
            if !in_section {
                continue;
            }
            let v = Some(v.trim().to_string()).filter(|v| !v.is_empty());
            match k.trim().to_ascii_lowercase().trim_start_matches("aws_") {
                "access_key_id" => access_key = v,
                "secret_access_key" => secret_key = v,
                "session_token" => session_token = v,
                _ => {}
            }
        }
        Ok(match (access_key, secret_key) {
            (Some(access_key), Some(secret_key)) => Some(Credentials {
                access_key,
                secret_key,
                session_token,
                source: format!("credentials from {} [{profile}]", path.display()),
            }),
            _ => None,
        })
    }
}

/// The two Object Lock retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionMode {
    /// Nobody, not even the account's root, can delete the version or shorten its retention.
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can; others cannot.
    Governance,
}

impl RetentionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionMode::Compliance => "COMPLIANCE",
            RetentionMode::Governance => "GOVERNANCE",
        }
    }

    fn parse(s: &str) -> Option<RetentionMode> {
        match s.trim() {
            "COMPLIANCE" => Some(RetentionMode::Compliance),
            "GOVERNANCE" => Some(RetentionMode::Governance),
            _ => None,
        }
    }
}

/// An object version's retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub mode: RetentionMode,
    pub until: SystemTime,
}

/// How long a bucket's default retention keeps each new object version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionPeriod {
    Days(u32),
    Years(u32),
}

/// A bucket's Object Lock configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLockConfiguration {
    pub enabled: bool,
    /// The retention every new object version gets unless its PUT says otherwise.
    pub default_retention: Option<(RetentionMode, RetentionPeriod)>,
}

/// One version of an object (or a delete marker) as a version listing shows it.
#[derive(Debug, Clone)]
pub struct ObjectVersion {
    /// The key relative to the listed prefix.
    pub name: String,
    pub version_id: String,
    pub latest: bool,
    pub delete_marker: bool,
    pub size: u64,
    pub modified: SystemTime,
}

/// The server refused to delete a version or shorten its retention because Object Lock
/// protects it. Carried inside an `io::Error` of kind `PermissionDenied`; see
/// [`ObjectLocked::find`].
#[derive(Debug)]
pub struct ObjectLocked {
    /// The key relative to the repository.
    pub key: String,
    pub version: Option<String>,
    /// The retention the version has, when the server told it.
    pub retention: Option<Retention>,
    /// What was refused, and the server's words.
    pub detail: String,
}

impl ObjectLocked {
    /// The lock refusal inside `e`, if that is what `e` is.
    pub fn find(e: &io::Error) -> Option<&ObjectLocked> {
        e.get_ref().and_then(|i| i.downcast_ref::<ObjectLocked>())
    }
}

impl fmt::Display for ObjectLocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.detail)?;
        if let Some(r) = &self.retention {
            write!(f, " (the version is locked in {} mode until {})", r.mode.as_str(), iso8601(r.until))?;
        }
        Ok(())
    }
}

impl std::error::Error for ObjectLocked {}

/// A repository in an S3 bucket, under a prefix.
#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage").field("location", &self.inner.label).finish_non_exhaustive()
    }
}

struct Inner {
    loc: S3Location,
    /// The location as written, for messages.
    label: String,
    /// Where requests go, for messages: `http(s)://host[:port]`.
    endpoint: String,
    scheme: String,
    /// The `Host` header (and URL authority) of every request.
    host: String,
    /// `/bucket` with path-style addressing, empty with virtual hosts.
    path_base: String,
    /// The repository's prefix with a trailing `/`, or empty.
    prefix: String,
    agent: ureq::Agent,
    creds: Credentials,
    opts: S3Options,
    permits: Arc<Semaphore>,
    /// Seconds to add to our clock to get the server's, learnt from a `RequestTimeTooSkewed`.
    skew: AtomicI64,
    /// Whether the bucket is known to exist, so a 404 means "no such object".
    bucket_seen: AtomicBool,
    /// Whether the bucket keeps old versions, asked at the first delete (see
    /// [`Storage::delete`] below).
    versioned: std::sync::OnceLock<bool>,
}

impl S3Storage {
    /// The storage at `loc`, with credentials from the usual places and default options. Makes
    /// no request: a missing bucket or wrong credentials show at the first operation.
    pub fn open(loc: &S3Location) -> io::Result<S3Storage> {
        S3Storage::with_options(loc, Credentials::for_location(loc)?, S3Options::default())
    }

    /// The storage at `loc` with these credentials and options (for callers that hold the
    /// credentials themselves, and for tests that want other timeouts or retries).
    pub fn with_options(loc: &S3Location, creds: Credentials, opts: S3Options) -> io::Result<S3Storage> {
        let label = super::Location::S3(loc.clone()).to_string();
        let endpoint = match &loc.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://s3.{}.amazonaws.com", loc.region),
        };
        let Some((scheme, authority)) = endpoint.split_once("://") else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{label}: the endpoint must be http://HOST[:PORT] or https://HOST[:PORT]"),
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        if authority.contains('/') || authority.is_empty() {
            // Requests go to the host's root; a store behind a path prefix would get them wrong.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{label}: the endpoint must be http://HOST[:PORT] or https://HOST[:PORT], without a path"),
            ));
        }
        // The Host we sign must be the one sent: without the scheme's default port.
        let authority = match (scheme.as_str(), authority.rsplit_once(':')) {
            ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
            _ => authority.to_string(),
        };
        let (host, path_base) = if loc.path_style {
            (authority, format!("/{}", loc.bucket))
        } else {
            (format!("{}.{authority}", loc.bucket), String::new())
        };
        let mut opts = opts;
        opts.part_size = opts.part_size.max(MIN_PART);
        opts.max_in_flight = opts.max_in_flight.max(1);
        opts.max_attempts = opts.max_attempts.max(1);
        opts.page_size = opts.page_size.clamp(1, 1000);
        let agent = ureq::Agent::config_builder()
            .tls_config(tls_config(loc)?)
            .http_status_as_error(false)
            // A redirect (a bucket in another region, say) would change the signed host: report
            // it rather than follow it.
            .max_redirects(0)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.io_timeout))
            .timeout_per_write(Some(opts.io_timeout))
            .timeout_recv_response(Some(opts.response_timeout))
            .max_idle_connections(opts.max_in_flight)
            .max_idle_connections_per_host(opts.max_in_flight)
            .user_agent(concat!("bulwark/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let prefix = if loc.prefix.is_empty() { String::new() } else { format!("{}/", loc.prefix) };
        Ok(S3Storage {
            inner: Arc::new(Inner {
                loc: loc.clone(),
                label,
                endpoint,
                scheme,
                host,
                path_base,
                prefix,
                agent,
                creds,
                permits: Arc::new(Semaphore::new(opts.max_in_flight)),
                opts,
                skew: AtomicI64::new(0),
                bucket_seen: AtomicBool::new(false),
                versioned: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn location(&self) -> &S3Location {
        &self.inner.loc
    }

    /// Creates the bucket (in the location's region), with Object Lock enabled if asked (which
    /// also turns on versioning, for good). An existing bucket is an `AlreadyExists` error.
    pub fn create_bucket(&self, object_lock: bool) -> io::Result<()> {
        let me = &self.inner;
        let body = if me.loc.region == "us-east-1" {
            String::new()
        } else {
            format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                xml::escape(&me.loc.region)
            )
        };
        let mut req = Req::new("PUT", None).body(body.as_bytes());
        if object_lock {
            req = req.header("x-amz-bucket-object-lock-enabled", "true");
        }
        // A try that failed in flight may have made the bucket: "yours already" is then ours.
        let mut in_doubt = false;
        match me.run(|| me.once(&req, &[]).map(drop).inspect_err(|f| in_doubt |= f.retry)) {
            Ok(()) => Ok(()),
            Err(f) if in_doubt && f.code == "BucketAlreadyOwnedByYou" => Ok(()),
            Err(f) => Err(f.into_io(&me.target("creating", None))),
        }
    }

    /// The bucket's Object Lock configuration; `enabled` is false for a bucket without one.
    pub fn object_lock_configuration(&self) -> io::Result<ObjectLockConfiguration> {
        let me = &self.inner;
        let req = Req::new("GET", None).query("object-lock", "");
        let target = me.target("reading the Object Lock configuration of", None);
        let (status, doc) = me.fetch_doc(&req, &target)?;
        if status == 404 {
            let (code, message) = xml::error(&doc);
            if code == "ObjectLockConfigurationNotFoundError" {
                return Ok(ObjectLockConfiguration { enabled: false, default_retention: None });
            }
            return Err(me.status_failure(404, &code, &message).into_io(&target));
        }
        let enabled = xml::text(&doc, "ObjectLockEnabled").is_some_and(|v| v.trim() == "Enabled");
        let default_retention = xml::first(&doc, "DefaultRetention").and_then(|d| {
            let mode = RetentionMode::parse(&xml::text(d, "Mode")?)?;
            let num = |t| xml::text(d, t).and_then(|v| v.trim().parse::<u32>().ok());
            let period = match (num("Days"), num("Years")) {
                (Some(d), _) => RetentionPeriod::Days(d),
                (None, Some(y)) => RetentionPeriod::Years(y),
                (None, None) => return None,
            };
            Some((mode, period))
        });
        Ok(ObjectLockConfiguration { enabled, default_retention })
    }

    /// Sets (or with `None` removes) the retention new object versions get by default, in a
    /// bucket created with Object Lock.
    pub fn set_default_retention(&self, rule: Option<(RetentionMode, RetentionPeriod)>) -> io::Result<()> {
        let me = &self.inner;
        let rule = match rule {
            None => String::new(),
            Some((mode, period)) => {
                let period = match period {
                    RetentionPeriod::Days(d) => format!("<Days>{d}</Days>"),
                    RetentionPeriod::Years(y) => format!("<Years>{y}</Years>"),
                };
                format!("<Rule><DefaultRetention><Mode>{}</Mode>{period}</DefaultRetention></Rule>", mode.as_str())
            }
        };
        let body = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <ObjectLockEnabled>Enabled</ObjectLockEnabled>{rule}</ObjectLockConfiguration>"
        );
        let req = Req::new("PUT", None).query("object-lock", "").body(body.as_bytes());
        me.run(|| me.once(&req, &[]).map(drop))
            .map_err(|f| f.into_io(&me.target("setting the default retention of", None)))
    }

    /// Locks a version of an object (the current one with `None`) until `until`. Extending a
    /// retention is always allowed; shortening a COMPLIANCE one never is (the error then
    /// carries an [`ObjectLocked`]).
    pub fn put_retention(
        &self,
        key: &str,
        version: Option<&str>,
        mode: RetentionMode,
        until: SystemTime,
    ) -> io::Result<()> {
        let me = &self.inner;
        let full = me.full(key);
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode.as_str(),
            iso8601(until)
        );
        let mut req = Req::new("PUT", Some(&full)).query("retention", "").body(body.as_bytes());
        if let Some(v) = version {
            req = req.query("versionId", v);
        }
        let target = me.target("setting the retention of", Some(&full));
        match me.run(|| me.once(&req, &[]).map(drop)) {
            Ok(()) => Ok(()),
            Err(f) if f.status == 403 || f.code == "ObjectLocked" => {
                let detail = format!("{target}: refused: {}", f.text);
                Err(self.locked_or(key, version, detail, f, &target))
            }
            Err(f) => Err(f.into_io(&target)),
        }
    }

    /// The retention of a version of an object (the current one with `None`); `None` when it
    /// has none.
    pub fn retention(&self, key: &str, version: Option<&str>) -> io::Result<Option<Retention>> {
        let me = &self.inner;
        let full = me.full(key);
        let mut req = Req::new("GET", Some(&full)).query("retention", "");
        if let Some(v) = version {
            req = req.query("versionId", v);
        }
        let target = me.target("reading the retention of", Some(&full));
        let (status, doc) = me.fetch_doc(&req, &target)?;
        if status == 404 {
            let (code, message) = xml::error(&doc);
            if code == "NoSuchObjectLockConfiguration" || code == "ObjectLockConfigurationNotFoundError" {
                return Ok(None);
            }
            return Err(me.status_failure(404, &code, &message).into_io(&target));
        }
        let mode = xml::text(&doc, "Mode").and_then(|m| RetentionMode::parse(&m));
        let until = xml::text(&doc, "RetainUntilDate").and_then(|d| parse_iso8601(&d));
        match (mode, until) {
            (Some(mode), Some(until)) => Ok(Some(Retention { mode, until })),
            _ => Ok(None),
        }
    }

    /// Every version of every object (and every delete marker) whose key starts with `prefix`,
    /// named relative to it.
    pub fn list_versions(&self, prefix: &str) -> io::Result<Vec<ObjectVersion>> {
        let me = &self.inner;
        let full = me.full(prefix);
        let target = || me.target("listing the versions in", Some(&full));
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut req = Req::new("GET", None)
                .query("versions", "")
                .query("prefix", &full)
                .query("max-keys", &me.opts.page_size.to_string());
            if let Some((k, v)) = &markers {
                req = req.query("key-marker", k).query("version-id-marker", v);
            }
            let doc = me.run(|| me.once(&req, &[])?.text()).map_err(|f| f.into_io(&target()))?;
            for (tag, marker) in [("Version", false), ("DeleteMarker", true)] {
                for v in xml::all(&doc, tag) {
                    let key = xml::text(v, "Key").unwrap_or_default();
                    let Some(name) = key.strip_prefix(full.as_str()) else { continue };
                    out.push(ObjectVersion {
                        name: name.to_string(),
                        version_id: xml::text(v, "VersionId").unwrap_or_default(),
                        latest: xml::text(v, "IsLatest").is_some_and(|l| l.trim() == "true"),
                        delete_marker: marker,
                        size: xml::text(v, "Size").and_then(|s| s.trim().parse().ok()).unwrap_or(0),
                        modified: xml::text(v, "LastModified")
                            .and_then(|t| parse_iso8601(&t))
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
            if xml::text(&doc, "IsTruncated").is_none_or(|t| t.trim() != "true") {
                break;
            }
            let next = (
                xml::text(&doc, "NextKeyMarker").unwrap_or_default(),
                xml::text(&doc, "NextVersionIdMarker").unwrap_or_default(),
            );
            if next.0.is_empty() || markers.as_ref() == Some(&next) {
                return Err(io::Error::other(format!("{}: a truncated listing without a way on", target())));
            }
            markers = Some(next);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(b.modified.cmp(&a.modified)));
        Ok(out)
    }

    /// Multipart uploads begun under `prefix` and never completed nor aborted (a writer that
    /// died mid-object leaves one, its parts stored and billed): each as its key relative to
    /// the prefix, its upload id and when it began.
    pub fn incomplete_uploads(&self, prefix: &str) -> io::Result<Vec<(String, String, SystemTime)>> {
        let me = &self.inner;
        let full = me.full(prefix);
        let target = || me.target("listing the multipart uploads in", Some(&full));
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut req = Req::new("GET", None).query("uploads", "").query("prefix", &full);
            if let Some((k, u)) = &markers {
                req = req.query("key-marker", k).query("upload-id-marker", u);
            }
            let doc = me.run(|| me.once(&req, &[])?.text()).map_err(|f| f.into_io(&target()))?;
            for u in xml::all(&doc, "Upload") {
                let key = xml::text(u, "Key").unwrap_or_default();
                let Some(name) = key.strip_prefix(full.as_str()) else { continue };
                let started =
                    xml::text(u, "Initiated").and_then(|t| parse_iso8601(&t)).unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((name.to_string(), xml::text(u, "UploadId").unwrap_or_default(), started));
            }
            if xml::text(&doc, "IsTruncated").is_none_or(|t| t.trim() != "true") {
                return Ok(out);
            }
            let next = (
                xml::text(&doc, "NextKeyMarker").unwrap_or_default(),
                xml::text(&doc, "NextUploadIdMarker").unwrap_or_default(),
            );
            if next.0.is_empty() || markers.as_ref() == Some(&next) {
                return Err(io::Error::other(format!("{}: a truncated listing without a way on", target())));
            }
            markers = Some(next);
        }
    }

    /// Aborts a multipart upload (see [`S3Storage::incomplete_uploads`]), freeing its parts.
    pub fn abort_upload(&self, key: &str, upload_id: &str) -> io::Result<()> {
        let me = &self.inner;
        let full = me.full(key);
        let req = Req::new("DELETE", Some(&full)).query("uploadId", upload_id);
        me.run(|| me.once(&req, &[404]).map(drop))
            .map_err(|f| f.into_io(&me.target("aborting a multipart upload of", Some(&full))))
    }

    /// Whether the bucket keeps old versions of objects (versioning enabled or suspended: a
    /// bucket with Object Lock always does). Asked once.
    pub fn versioned(&self) -> io::Result<bool> {
        if let Some(v) = self.inner.versioned.get() {
            return Ok(*v);
        }
        let me = &self.inner;
        let req = Req::new("GET", None).query("versioning", "");
        let target = me.target("reading the versioning state of", None);
        let (status, doc) = me.fetch_doc(&req, &target)?;
        if status == 404 {
            let (code, message) = xml::error(&doc);
            return Err(me.status_failure(404, &code, &message).into_io(&target));
        }
        // "Suspended" still keeps the versions written before.
        let versioned = xml::text(&doc, "Status").is_some_and(|s| matches!(s.trim(), "Enabled" | "Suspended"));
        Ok(*me.versioned.get_or_init(|| versioned))
    }

    /// Takes away what a versioned bucket keeps behind the repository's back (see
    /// [`Storage::tidy_versions`]).
    fn tidy(&self) -> io::Result<VersionsTidied> {
        let mut report = VersionsTidied::default();
        if !self.versioned()? {
            return Ok(report);
        }
        let versions = self.list_versions("")?;
        let mut i = 0;
        while i < versions.len() {
            let key = &versions[i].name;
            let n = versions[i..].iter().take_while(|v| &v.name == key).count();
            let group = &versions[i..i + n];
            i += n;
            // A delete marker is someone else's delete (this program deletes every version of
            // an object): it goes, and the newest version beneath it is current again.
            for v in group.iter().filter(|v| v.delete_marker) {
                self.delete_version(key, &v.version_id)?;
                report.markers_removed += 1;
            }
            // Versions come newest first; all but the newest were overwritten.
            let mut real = group.iter().filter(|v| !v.delete_marker);
            if real.next().is_some() && group.iter().any(|v| v.latest && v.delete_marker) {
                report.restored.push(key.clone());
            }
            for v in real {
                match self.delete_version(key, &v.version_id) {
                    Ok(()) => report.old_versions_removed += 1,
                    Err(e) if ObjectLocked::find(&e).is_some() => report.old_versions_locked += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    /// A plain DELETE of the key, what a client unaware of versions sends: in a versioned
    /// bucket it only adds a delete marker (which succeeds even under Object Lock) and every
    /// version stays. [`Storage::delete`] deletes the versions themselves.
    pub fn delete_latest(&self, key: &str) -> io::Result<()> {
        let me = &self.inner;
        let full = me.full(key);
        let req = Req::new("DELETE", Some(&full));
        me.run(|| {
            let r = me.once(&req, &[404])?;
            if r.status == 404 {
                let (code, message) = xml::error(&r.text()?);
                if code == "NoSuchBucket" {
                    return Err(me.status_failure(404, &code, &message));
                }
            }
            Ok(())
        })
        .map_err(|f| f.into_io(&me.target("deleting", Some(&full))))
    }

    /// Deletes one version of an object for good (or a delete marker). A version Object Lock
    /// protects is refused with an [`ObjectLocked`] inside the error.
    pub fn delete_version(&self, key: &str, version: &str) -> io::Result<()> {
        let me = &self.inner;
        let full = me.full(key);
        let req = Req::new("DELETE", Some(&full)).query("versionId", version);
        let target = me.target("deleting a version of", Some(&full));
        match me.run(|| me.once(&req, &[]).map(drop)) {
            Ok(()) => Ok(()),
            Err(f) if f.status == 403 || f.code == "ObjectLocked" => {
                let detail = format!("{target} ({version}): refused: {}", f.text);
                Err(self.locked_or(key, Some(version), detail, f, &target))
            }
            Err(f) => Err(f.into_io(&target)),
        }
    }

    /// The error for a refused change to a version: an [`ObjectLocked`] when the version has a
    /// retention still running (or the server said so), else the plain refusal.
    fn locked_or(&self, key: &str, version: Option<&str>, detail: String, f: Failure, target: &str) -> io::Error {
        let retention = self.retention(key, version).ok().flatten();
        let running = retention.as_ref().is_some_and(|r| r.until > self.now().unwrap_or_else(|_| SystemTime::now()));
        let said = f.code == "ObjectLocked" || {
            let t = f.text.to_ascii_lowercase();
            t.contains("lock") || t.contains("retention") || t.contains("worm")
        };
        if running || said {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                ObjectLocked { key: key.into(), version: version.map(String::from), retention, detail },
            )
        } else {
            f.into_io(target)
        }
    }

    fn put_object(&self, full: &str, data: &[u8]) -> io::Result<()> {
        let me = &self.inner;
        if data.len() > me.opts.part_size {
            let mut up = Multipart::start(me.clone(), full.to_string())?;
            for part in data.chunks(me.opts.part_size) {
                up.upload(part)?;
            }
            return up.complete();
        }
        let req = Req::new("PUT", Some(full)).data(data);
        me.run(|| me.once(&req, &[]).map(drop)).map_err(|f| f.into_io(&me.target("writing", Some(full))))
    }

    fn get(&self, key: &str, range: Option<(u64, u64)>, buf: &mut Vec<u8>) -> io::Result<()> {
        let me = &self.inner;
        let full = me.full(key);
        let target = || me.target("reading", Some(&full));
        let short = |offset: u64, len: u64| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: the object is shorter than {offset}+{len}", target()),
            )
        };
        let mut req = Req::new("GET", Some(&full));
        if let Some((offset, len)) = range {
            let last = offset.checked_add(len - 1).ok_or_else(|| short(offset, len))?;
            req = req.header("range", &format!("bytes={offset}-{last}"));
        }
        let status = me
            .run(|| {
                let mut r = me.once(&req, &[416])?;
                buf.clear();
                if r.status == 206 {
                    let start = header(&r.headers, "content-range")
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if start != range.map(|r| r.0) {
                        return Err(Failure::fatal(
                            io::ErrorKind::InvalidData,
                            format!("the server sent another range than asked for ({start:?})"),
                        ));
                    }
                }
                if r.status != 416 {
                    r.read_all(buf)?;
                }
                Ok(r.status)
            })
            .map_err(|f| f.into_io(&target()))?;
        let Some((offset, len)) = range else { return Ok(()) };
        if status == 200 {
            // A server that ignores ranges sends the whole object.
            let end = (offset + len).min(buf.len() as u64);
            let start = offset.min(end);
            buf.drain(..start as usize);
            buf.truncate((end - start) as usize);
        }
        if status == 416 || (buf.len() as u64) < len {
            return Err(short(offset, len));
        }
        buf.truncate(len as usize);
        Ok(())
    }
}

/// The trust roots: the usual (Mozilla's, as ureq has built in), plus the location's CA file.
fn tls_config(loc: &S3Location) -> io::Result<ureq::tls::TlsConfig> {
    let tls = ureq::tls::TlsConfig::builder();
    let Some(ca) = &loc.ca_file else { return Ok(tls.build()) };
    let pem = std::fs::read(ca)
        .map_err(|e| io::Error::new(e.kind(), format!("reading the CA file {}: {e}", ca.display())))?;
    let mut certs: Vec<ureq::tls::Certificate<'static>> = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the CA file {}: {e}", ca.display())))
            }
        }
    }
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the CA file {} holds no PEM certificate", ca.display()),
        ));
    }
    certs.extend(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().map(|c| ureq::tls::Certificate::from_der(c)));
    Ok(tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs)).build())
}

impl Storage for S3Storage {
    fn describe(&self) -> String {
        self.inner.label.clone()
    }

    fn read_into(&self, key: &str, buf: &mut Vec<u8>) -> io::Result<()> {
        self.get(key, None, buf)
    }

    fn read_range(&self, key: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        if len == 0 {
            // No byte range can say "none"; the object need only be long enough.
            let full = self.inner.full(key);
            let target = || self.inner.target("reading", Some(&full));
            let size = self.stat(key)?.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, target()))?.size;
            buf.clear();
            if size < offset {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: the object is shorter than {offset}", target()),
                ));
            }
            return Ok(());
        }
        self.get(key, Some((offset, len)), buf)
    }

    fn open_read(&self, key: &str) -> io::Result<Box<dyn Read + Send>> {
        let mut r = S3Reader {
            inner: self.inner.clone(),
            full: self.inner.full(key),
            pos: 0,
            len: None,
            etag: None,
            body: None,
            failures: 0,
        };
        r.reopen()?;
        Ok(Box::new(r))
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn StagedObject>> {
        Ok(Box::new(S3Staged {
            storage: self.clone(),
            full: self.inner.full(key),
            buf: Vec::new(),
            upload: None,
            failed: false,
        }))
    }

    fn put(&self, key: &str, data: &[u8], _durable: bool) -> io::Result<()> {
        self.put_object(&self.inner.full(key), data)
    }

    fn put_new(&self, key: &str, data: &[u8]) -> io::Result<bool> {
        let me = &self.inner;
        let full = me.full(key);
        let req = Req::new("PUT", Some(&full)).header("if-none-match", "*").data(data);
        let target = me.target("writing (if absent)", Some(&full));
        // A try that failed in flight may have written the object all the same: a later 412
        // then means our own object, which its bytes tell.
        let mut in_doubt = false;
        let status = me
            .run(|| me.once(&req, &[412]).map(|r| r.status).inspect_err(|f| in_doubt |= f.retry && f.status != 409))
            .map_err(|f| {
                if f.status == 501 || f.code == "NotImplemented" {
                    io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "{target}: the server does not support conditional writes (If-None-Match: *), \
                             which the repository's locks need: {}",
                            f.text
                        ),
                    )
                } else {
                    f.into_io(&target)
                }
            })?;
        if status != 412 {
            return Ok(true);
        }
        if in_doubt {
            let mut there = Vec::new();
            if self.read_into(key, &mut there).is_ok() && there == data {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn stat(&self, key: &str) -> io::Result<Option<Entry>> {
        let me = &self.inner;
        let full = me.full(key);
        let req = Req::new("HEAD", Some(&full));
        let r = me
            .run(|| me.once(&req, &[404]).map(|r| (r.status, r.headers)))
            .map_err(|f| f.into_io(&me.target("checking", Some(&full))))?;
        if r.0 == 404 {
            me.check_bucket()?;
            return Ok(None);
        }
        let size = header(&r.1, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let modified = header(&r.1, "last-modified").and_then(parse_http_date).unwrap_or(SystemTime::UNIX_EPOCH);
        let tag = header(&r.1, "etag").map(String::from);
        Ok(Some(Entry { name: key.into(), size, modified, tag }))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        let me = &self.inner;
        let full = me.full(prefix);
        let target = || me.target("listing", Some(&full));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = Req::new("GET", None)
                .query("list-type", "2")
                .query("prefix", &full)
                .query("max-keys", &me.opts.page_size.to_string());
            if let Some(t) = &token {
                req = req.query("continuation-token", t);
            }
            let doc = me.run(|| me.once(&req, &[])?.text()).map_err(|f| f.into_io(&target()))?;
            for c in xml::all(&doc, "Contents") {
                let key = xml::text(c, "Key").unwrap_or_default();
                let Some(name) = key.strip_prefix(full.as_str()) else { continue };
                out.push(Entry {
                    name: name.to_string(),
                    size: xml::text(c, "Size").and_then(|s| s.trim().parse().ok()).unwrap_or(0),
                    modified: xml::text(c, "LastModified")
                        .and_then(|t| parse_iso8601(&t))
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    tag: xml::text(c, "ETag"),
                });
            }
            if xml::text(&doc, "IsTruncated").is_none_or(|t| t.trim() != "true") {
                return Ok(out);
            }
            match xml::text(&doc, "NextContinuationToken").filter(|t| !t.is_empty()) {
                Some(t) if token.as_ref() != Some(&t) => token = Some(t),
                _ => return Err(io::Error::other(format!("{}: a truncated listing without a way on", target()))),
            }
        }
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        // In a versioned bucket a plain DELETE only hides the object behind a delete marker
        // (and succeeds even when Object Lock protects it): every version is deleted instead,
        // so the space is freed and a locked object refuses, as a local file does.
        if self.versioned()? {
            let versions = self.list_versions(key)?;
            for v in versions.iter().filter(|v| v.name.is_empty()) {
                self.delete_version(key, &v.version_id)?;
            }
            return Ok(());
        }
        self.delete_latest(key)
    }

    fn tidy_versions(&self) -> io::Result<VersionsTidied> {
        self.tidy()
    }

    fn abort_stale_uploads(&self, before: SystemTime) -> io::Result<u64> {
        let mut aborted = 0;
        for (key, upload, started) in self.incomplete_uploads("")? {
            if started < before {
                self.abort_upload(&key, &upload)?;
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    fn now(&self) -> io::Result<SystemTime> {
        let me = &self.inner;
        let req = Req::new("HEAD", None);
        let target = || me.target("reading the clock of", None);
        let headers = me.run(|| me.once(&req, &[]).map(|r| r.headers)).map_err(|f| f.into_io(&target()))?;
        header(&headers, "date")
            .and_then(parse_http_date)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{}: the answer has no Date", target())))
    }
}

impl Inner {
    /// The key in the bucket of a key of the repository.
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// "`what` s3://bucket/key at endpoint", for messages.
    /// Sends `req` (retried like any other) and returns its status and body, a 404 included:
    /// the caller tells "not configured" from "no such bucket" by the error code.
    fn fetch_doc(&self, req: &Req<'_>, target: &str) -> io::Result<(u16, String)> {
        self.run(|| {
            let r = self.once(req, &[404])?;
            let status = r.status;
            Ok((status, r.text()?))
        })
        .map_err(|f| f.into_io(target))
    }

    fn target(&self, what: &str, full: Option<&str>) -> String {
        match full {
            Some(k) => format!("{what} s3://{}/{k} at {}", self.loc.bucket, self.endpoint),
            None => format!("{what} bucket {} at {}", self.loc.bucket, self.endpoint),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or has failed in a way that may pass
    /// `max_attempts` times, waiting longer (with jitter) before each new try. A vague refusal
    /// is explained (see [`Inner::explained`]).
    fn run<T>(&self, attempt: impl FnMut() -> Result<T, Failure>) -> Result<T, Failure> {
        self.retrying(attempt).map_err(|f| self.explained(f))
    }

    fn retrying<T>(&self, mut attempt: impl FnMut() -> Result<T, Failure>) -> Result<T, Failure> {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt() {
                Ok(v) => return Ok(v),
                Err(f) if !f.retry => return Err(f),
                Err(mut f) => {
                    if tries >= self.opts.max_attempts {
                        if self.opts.max_attempts > 1 {
                            f.text = format!("{} (gave up after {tries} attempts)", f.text);
                        }
                        return Err(f);
                    }
                    if f.code != "RequestTimeTooSkewed" {
                        std::thread::sleep(backoff(&self.opts, tries));
                    }
                }
            }
        }
    }

    /// One request, signed; an answer with a status outside 2xx and `accept` is a [`Failure`].
    fn once(&self, req: &Req<'_>, accept: &[u16]) -> Result<Resp, Failure> {
        let path = match req.key {
            Some(k) => format!("{}/{}", self.path_base, sigv4::uri_encode(k, true)),
            None if self.path_base.is_empty() => "/".to_string(),
            None => self.path_base.clone(),
        };
        let query = sigv4::canonical_query(&req.query);
        let url = if query.is_empty() {
            format!("{}://{}{path}", self.scheme, self.host)
        } else {
            format!("{}://{}{path}?{query}", self.scheme, self.host)
        };
        let now = SystemTime::now();
        let skew = self.skew.load(Ordering::Relaxed);
        let now = if skew >= 0 {
            now + Duration::from_secs(skew as u64)
        } else {
            now - Duration::from_secs(skew.unsigned_abs())
        };
        let amz_date = DateTime::<Utc>::from(now).format("%Y%m%dT%H%M%SZ").to_string();
        let payload_hash = match req.body.map(|(_, sum)| sum) {
            None => EMPTY_SHA256.to_string(),
            Some(Sum::Sha256(d)) => hex::encode(d),
            Some(Sum::Crc32c(_)) => UNSIGNED_PAYLOAD.to_string(),
        };
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), self.host.clone()),
            ("x-amz-date".into(), amz_date.clone()),
            ("x-amz-content-sha256".into(), payload_hash.clone()),
        ];
        match (req.body.map(|(_, sum)| sum), req.method) {
            (Some(Sum::Sha256(d)), "PUT") => headers.push(("x-amz-checksum-sha256".into(), base64(&d))),
            (Some(sum @ Sum::Crc32c(_)), _) => headers.push(("x-amz-checksum-crc32c".into(), sum.base64())),
            _ => {}
        }
        if let Some(t) = &self.creds.session_token {
            headers.push(("x-amz-security-token".into(), t.clone()));
        }
        headers.extend(req.headers.iter().cloned());
        let auth = sigv4::authorization(
            &self.creds.access_key,
            &self.creds.secret_key,
            &self.loc.region,
            "s3",
            &amz_date,
            &sigv4::Request {
                method: req.method,
                path: &path,
                query: &req.query,
                headers: &headers,
                payload_hash: &payload_hash,
            },
        );
        let mut builder = http::Request::builder().method(req.method).uri(&url);
        for (k, v) in &headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        builder = builder.header("authorization", auth);
        let permit = acquire(&self.permits);
        let answer = match req.body {
            Some((b, _)) => builder.body(b).map(|r| self.agent.run(r)),
            None => builder.body(()).map(|r| self.agent.run(r)),
        };
        let answer =
            answer.map_err(|e| Failure::fatal(io::ErrorKind::InvalidInput, format!("a malformed request: {e}")))?;
        let resp = answer.map_err(transport_failure)?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let resp = Resp { status, headers: parts.headers, body, _permit: permit };
        if (200..300).contains(&status) {
            self.bucket_seen.store(true, Ordering::Relaxed);
            return Ok(resp);
        }
        if accept.contains(&status) {
            return Ok(resp);
        }
        let date = header(&resp.headers, "date").and_then(parse_http_date);
        let doc = if req.method == "HEAD" { String::new() } else { resp.text().unwrap_or_default() };
        let (code, message) = xml::error(&doc);
        if code == "RequestTimeTooSkewed" {
            if let Some(server) = date {
                let ours = SystemTime::now();
                let skew = match server.duration_since(ours) {
                    Ok(ahead) => ahead.as_secs() as i64,
                    Err(behind) => -(behind.duration().as_secs() as i64),
                };
                self.skew.store(skew, Ordering::Relaxed);
            }
        }
        Err(self.status_failure(status, &code, &message))
    }

    /// What a refusal means, as an error kind callers can act on, and in words.
    fn status_failure(&self, status: u16, code: &str, message: &str) -> Failure {
        use io::ErrorKind as K;
        let said = match (code.is_empty(), message.is_empty()) {
            (true, _) => format!("HTTP {status}"),
            (false, true) => format!("{code} (HTTP {status})"),
            (false, false) => format!("{code}: {message} (HTTP {status})"),
        };
        let bucket = &self.loc.bucket;
        let (kind, text) = match (status, code) {
            (_, "NoSuchBucket") => (K::NotFound, format!("there is no bucket {bucket} ({said})")),
            (_, "NoSuchKey") | (404, "") => (K::NotFound, format!("no such object ({said})")),
            (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AuthorizationHeaderMalformed") => {
                (K::PermissionDenied, format!("the S3 credentials are wrong ({}; {said})", self.creds.source))
            }
            (_, "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired") => (
                K::PermissionDenied,
                format!("the S3 session token is expired or invalid ({}; {said})", self.creds.source),
            ),
            (403, _) => (K::PermissionDenied, format!("access denied ({said})")),
            (416, _) | (_, "InvalidRange") => (K::UnexpectedEof, said),
            (409, "BucketAlreadyExists" | "BucketAlreadyOwnedByYou") => (K::AlreadyExists, said),
            (501, _) | (_, "NotImplemented") => (K::Unsupported, format!("the server does not support this ({said})")),
            (301 | 307, _) | (_, "PermanentRedirect") => {
                (K::Other, format!("the bucket is elsewhere (another region or endpoint?) ({said})"))
            }
            (400, _) => (K::InvalidInput, said),
            _ => (K::Other, said),
        };
        let retry = status >= 500
            || status == 429
            || matches!(
                code,
                "SlowDown"
                    | "RequestTimeout"
                    | "InternalError"
                    | "ServiceUnavailable"
                    | "ConditionalRequestConflict"
                    | "OperationAborted"
                    | "RequestTimeTooSkewed"
            );
        Failure { kind, status, code: code.to_string(), text, retry: retry && status != 501 }
    }

    /// Fails unless the bucket exists (asked once per storage): a 404 on an object is "no such
    /// object" only in a bucket that is there.
    fn check_bucket(&self) -> io::Result<()> {
        if self.bucket_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let req = self.probe_request();
        self.retrying(|| self.once(&req, &[]).map(drop)).map_err(|f| f.into_io(&self.target("opening", None)))
    }

    fn probe_request(&self) -> Req<'static> {
        Req::new("GET", None).query("list-type", "2").query("max-keys", "1").query("prefix", &self.prefix)
    }

    /// A vague refusal made precise, until the storage has once been used successfully: an
    /// answer to a HEAD has no body to say why, and some servers refuse a PUT into a missing
    /// bucket as "access denied". A one-key listing is refused with the real reason (no such
    /// bucket, wrong credentials) if there is a general one.
    fn explained(&self, f: Failure) -> Failure {
        let vague = match f.status {
            403 => matches!(f.code.as_str(), "" | "AccessDenied"),
            404 => f.code.is_empty(),
            _ => false,
        };
        if !vague || self.bucket_seen.load(Ordering::Relaxed) {
            return f;
        }
        let req = self.probe_request();
        match self.retrying(|| self.once(&req, &[]).map(drop)) {
            Err(probe) if !matches!(probe.code.as_str(), "" | "AccessDenied") => probe,
            _ => f,
        }
    }
}

/// Exponential backoff with jitter: about `base * 2^(tries-1)`, capped, randomised between half
/// and all of it so that writers that failed together do not retry together.
fn backoff(opts: &S3Options, tries: u32) -> Duration {
    let full = opts.retry_base.saturating_mul(1u32 << (tries - 1).min(16)).min(opts.retry_cap);
    let mut r = [0u8; 4];
    let _ = getrandom::getrandom(&mut r);
    let frac = 0.5 + 0.5 * (u32::from_le_bytes(r) as f64 / u32::MAX as f64);
    full.mul_f64(frac)
}

/// A request before signing.
struct Req<'a> {
    method: &'static str,
    /// The object's key in the bucket; `None` for the bucket itself.
    key: Option<&'a str>,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    /// The body and its checksum (computed once, however many tries send it).
    body: Option<(&'a [u8], Sum)>,
}

/// What a body is checked by.
#[derive(Clone, Copy)]
enum Sum {
    /// Its SHA-256, signed (and sent as `x-amz-checksum-sha256` with a PUT).
    Sha256([u8; 32]),
    /// Its CRC-32C, sent as `x-amz-checksum-crc32c` (signed as a header) for the server to
    /// verify; the payload itself is not signed.
    Crc32c(u32),
}

impl Sum {
    /// The checksum as S3 writes it in headers and in a multipart completion.
    fn base64(self) -> String {
        match self {
            Sum::Sha256(d) => base64(&d),
            Sum::Crc32c(c) => base64(&c.to_be_bytes()),
        }
    }
}

/// The signature's payload hash for a payload left out of it.
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// CRC-32C (Castagnoli), as S3's `x-amz-checksum-crc32c`.
fn crc32c(data: &[u8]) -> u32 {
    const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
    CRC.checksum(data)
}

impl<'a> Req<'a> {
    fn new(method: &'static str, key: Option<&'a str>) -> Req<'a> {
        // S3 wants a length on every PUT and POST, even an empty one.
        let body = (method == "PUT" || method == "POST").then(|| (&[][..], Sum::Sha256(sigv4::sha256(&[]))));
        Req { method, key, query: Vec::new(), headers: Vec::new(), body }
    }
    fn query(mut self, k: &str, v: &str) -> Self {
        self.query.push((k.into(), v.into()));
        self
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    /// A small document as the body: signed, with its SHA-256.
    fn body(mut self, b: &'a [u8]) -> Self {
        self.body = Some((b, Sum::Sha256(sigv4::sha256(b))));
        self
    }
    /// Object data as the body: checked by its CRC-32C (see [`Sum::Crc32c`]).
    fn data(mut self, b: &'a [u8]) -> Self {
        self.body = Some((b, Sum::Crc32c(crc32c(b))));
        self
    }
}

/// An answer; holds its turn among the requests in flight until dropped.
struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: ureq::Body,
    _permit: Permit,
}

impl Resp {
    /// The whole body, checked against its length; a body cut short is a failure that may pass.
    fn read_all(&mut self, buf: &mut Vec<u8>) -> Result<(), Failure> {
        let expected = header(&self.headers, "content-length").and_then(|v| v.parse::<usize>().ok());
        if let Some(n) = expected {
            buf.reserve(n);
        }
        self.body.as_reader().read_to_end(buf).map_err(body_failure)?;
        match expected {
            Some(n) if n != buf.len() => Err(Failure::retry(
                io::ErrorKind::ConnectionAborted,
                format!("the answer ended after {} of {n} bytes", buf.len()),
            )),
            _ => Ok(()),
        }
    }

    fn text(mut self) -> Result<String, Failure> {
        let mut buf = Vec::new();
        self.read_all(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

fn header<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Why a request failed, without the "what and where" [`Failure::into_io`] adds.
#[derive(Debug, Clone)]
struct Failure {
    kind: io::ErrorKind,
    /// The HTTP status, 0 when there was no answer.
    status: u16,
    /// S3's error code, when it said one.
    code: String,
    text: String,
    /// Whether trying again may succeed.
    retry: bool,
}

impl Failure {
    fn fatal(kind: io::ErrorKind, text: String) -> Failure {
        Failure { kind, status: 0, code: String::new(), text, retry: false }
    }

    fn retry(kind: io::ErrorKind, text: String) -> Failure {
        Failure { kind, status: 0, code: String::new(), text, retry: true }
    }

    fn into_io(self, target: &str) -> io::Error {
        io::Error::new(self.kind, format!("{target}: {}", self.text))
    }
}

/// A failure to talk to the server at all. Its kind is kept (a timeout stays `TimedOut`)
/// except where the trait gives a kind a meaning of its own.
fn transport_failure(e: ureq::Error) -> Failure {
    use io::ErrorKind as K;
    let (kind, retry) = match &e {
        ureq::Error::Timeout(_) => (K::TimedOut, true),
        // What TLS refuses (a certificate we do not trust) comes as InvalidData, and trying
        // again will not change it.
        ureq::Error::Io(io) if io.kind() == K::InvalidData => (K::InvalidData, false),
        ureq::Error::Io(io) => (io.kind(), true),
        ureq::Error::ConnectionFailed => (K::ConnectionRefused, true),
        ureq::Error::HostNotFound => (K::HostUnreachable, true),
        ureq::Error::Protocol(_) | ureq::Error::BodyStalled => (K::ConnectionAborted, true),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => (K::InvalidData, false),
        _ => (K::Other, false),
    };
    Failure { kind: sanitize(kind), status: 0, code: String::new(), text: format!("no answer: {e}"), retry }
}

fn body_failure(e: io::Error) -> Failure {
    Failure::retry(sanitize(e.kind()), format!("the answer broke off: {e}"))
}

/// `NotFound` and `UnexpectedEof` mean "no such object" and "object too short" to callers;
/// a broken connection must not look like either.
fn sanitize(kind: io::ErrorKind) -> io::ErrorKind {
    match kind {
        io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof => io::ErrorKind::ConnectionAborted,
        k => k,
    }
}

/// A counting semaphore: the turns of requests in flight.
struct Semaphore {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Permit(Arc<Semaphore>);

impl Semaphore {
    fn new(n: usize) -> Semaphore {
        Semaphore { free: Mutex::new(n), freed: Condvar::new() }
    }
}

fn acquire(sem: &Arc<Semaphore>) -> Permit {
    let mut free = sem.free.lock().expect("no panics while held");
    while *free == 0 {
        free = sem.freed.wait(free).expect("no panics while held");
    }
    *free -= 1;
    Permit(sem.clone())
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.0.free.lock().expect("no panics while held") += 1;
        self.0.freed.notify_one();
    }
}

/// A multipart upload under way; aborted if dropped before completion.
struct Multipart {
    inner: Arc<Inner>,
    full: String,
    id: String,
    /// Number, ETag and checksum of each part sent.
    parts: Vec<(u32, String, String)>,
    done: bool,
}

impl Multipart {
    fn start(inner: Arc<Inner>, full: String) -> io::Result<Multipart> {
        let req = Req::new("POST", Some(&full)).query("uploads", "").header("x-amz-checksum-algorithm", "CRC32C");
        let doc = inner
            .run(|| inner.once(&req, &[])?.text())
            .map_err(|f| f.into_io(&inner.target("starting a multipart upload of", Some(&full))))?;
        let id = xml::text(&doc, "UploadId").filter(|i| !i.is_empty()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no UploadId in the answer", inner.target("starting a multipart upload of", Some(&full))),
            )
        })?;
        Ok(Multipart { inner, full, id, parts: Vec::new(), done: false })
    }

    fn upload(&mut self, data: &[u8]) -> io::Result<()> {
        let me = &self.inner;
        let n = self.parts.len() as u32 + 1;
        let req = Req::new("PUT", Some(&self.full))
            .query("partNumber", &n.to_string())
            .query("uploadId", &self.id)
            .data(data);
        let target = || me.target(&format!("writing part {n} of"), Some(&self.full));
        let etag = me.run(|| me.once(&req, &[]).map(|r| header(&r.headers, "etag").map(String::from)));
        let etag = etag.map_err(|f| f.into_io(&target()))?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: no ETag in the answer", target()))
        })?;
        let sum = req.body.map(|(_, sum)| sum.base64()).unwrap_or_default();
        self.parts.push((n, etag, sum));
        Ok(())
    }

    fn complete(mut self) -> io::Result<()> {
        let me = self.inner.clone();
        let mut body = String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
        for (n, etag, sum) in &self.parts {
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag><ChecksumCRC32C>{sum}</ChecksumCRC32C></Part>",
                xml::escape(etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let req = Req::new("POST", Some(&self.full)).query("uploadId", &self.id).body(body.as_bytes());
        let target = me.target("completing a multipart upload of", Some(&self.full));
        let mut in_doubt = false;
        let r = me.run(|| {
            let doc = me.once(&req, &[]).and_then(Resp::text).inspect_err(|f| in_doubt |= f.retry)?;
            // S3 may answer 200 and still report a failure in the body.
            let (code, message) = xml::error(&doc);
            if code.is_empty() {
                Ok(())
            } else {
                let f = me.status_failure(500, &code, &message);
                in_doubt |= f.retry;
                Err(f)
            }
        });
        match r {
            Ok(()) => {}
            // The try that failed in flight completed it.
            Err(f) if in_doubt && f.code == "NoSuchUpload" => {}
            Err(f) => return Err(f.into_io(&target)),
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Parts of an upload never completed are kept (and billed) until aborted.
        let me = &self.inner;
        let req = Req::new("DELETE", Some(&self.full)).query("uploadId", &self.id);
        let _ = me.run(|| me.once(&req, &[404]).map(drop));
    }
}

/// An object being written: buffered up to a part's size, then sent as a multipart upload.
struct S3Staged {
    storage: S3Storage,
    full: String,
    buf: Vec<u8>,
    upload: Option<Multipart>,
    failed: bool,
}

impl S3Staged {
    /// Sends the buffer (a whole part) as the next part.
    fn send_part(&mut self) -> io::Result<()> {
        if self.upload.is_none() {
            self.upload = Some(Multipart::start(self.storage.inner.clone(), self.full.clone())?);
        }
        let up = self.upload.as_mut().expect("started above");
        if let Err(e) = up.upload(&self.buf) {
            // Dropping it aborts the upload; a later write or commit fails.
            self.upload = None;
            self.buf = Vec::new();
            self.failed = true;
            return Err(e);
        }
        self.buf.clear();
        Ok(())
    }
}

impl Write for S3Staged {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other(format!(
                "{}: an earlier part failed",
                self.storage.inner.target("writing", Some(&self.full))
            )));
        }
        let part = self.storage.inner.opts.part_size;
        let mut rest = data;
        while !rest.is_empty() {
            // A full buffer goes up once more follows: an object of exactly one part is sent
            // whole at commit.
            if self.buf.len() >= part {
                self.send_part()?;
            }
            if self.buf.capacity() == 0 {
                // Reserved once, whole: growing by doubling would copy a pack twice over and
                // leave the smaller buffers behind. Pages are only taken as they are written.
                self.buf.reserve_exact(part);
            }
            let n = (part - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StagedObject for S3Staged {
    fn commit(mut self: Box<Self>, _durable: bool) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(format!(
                "{}: an earlier part failed",
                self.storage.inner.target("writing", Some(&self.full))
            )));
        }
        match self.upload.take() {
            None => self.storage.put_object(&self.full, &self.buf),
            Some(mut up) => {
                up.upload(&self.buf)?;
                up.complete()
            }
        }
    }
}

/// A streamed object. A connection lost midway is picked up where it broke off (by a range
/// request for the rest, of the same version), a bounded number of times in a row.
struct S3Reader {
    inner: Arc<Inner>,
    full: String,
    pos: u64,
    len: Option<u64>,
    etag: Option<String>,
    body: Option<ureq::BodyReader<'static>>,
    failures: u32,
}

impl S3Reader {
    fn reopen(&mut self) -> io::Result<()> {
        let me = self.inner.clone();
        let mut req = Req::new("GET", Some(&self.full));
        if self.pos > 0 {
            req = req.header("range", &format!("bytes={}-", self.pos));
        }
        if let Some(e) = &self.etag {
            req = req.header("if-match", e);
        }
        let target = || me.target("reading", Some(&self.full));
        let r = me.run(|| me.once(&req, &[])).map_err(|f| {
            if f.status == 412 {
                return io::Error::other(format!("{}: the object changed while it was read", target()));
            }
            f.into_io(&target())
        })?;
        if r.status == 200 && self.pos > 0 {
            return Err(io::Error::other(format!("{}: the server ignored a range request", target())));
        }
        if self.len.is_none() {
            self.len = header(&r.headers, "content-length").and_then(|v| v.parse().ok());
            self.etag = header(&r.headers, "etag").map(String::from);
        }
        // The turn is given back once the answer has come: a stream the caller reads slowly
        // (or keeps open while it makes other requests) must not hold up the rest.
        let Resp { body, _permit: turn, .. } = r;
        drop(turn);
        self.body = Some(body.into_reader());
        Ok(())
    }
}

impl Read for S3Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.len.is_some_and(|l| self.pos >= l) {
                return Ok(0);
            }
            if self.body.is_none() {
                self.reopen()?;
            }
            let err = match self.body.as_mut().expect("opened above").read(out) {
                Ok(0) if self.len.is_none() => return Ok(0),
                Ok(0) => io::Error::new(io::ErrorKind::ConnectionAborted, "the answer ended early"),
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) => e,
            };
            self.body = None;
            self.failures += 1;
            if self.failures >= self.inner.opts.max_attempts {
                return Err(io::Error::new(
                    sanitize(err.kind()),
                    format!(
                        "{}: the answer broke off at byte {} ({} times in a row): {err}",
                        self.inner.target("reading", Some(&self.full)),
                        self.pos,
                        self.failures
                    ),
                ));
            }
            std::thread::sleep(backoff(&self.inner.opts, self.failures));
        }
    }
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn iso8601(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_iso8601(s: &str) -> Option<SystemTime> {
    DateTime::parse_from_rfc3339(s.trim()).ok().map(SystemTime::from)
}

fn parse_http_date(s: &str) -> Option<SystemTime> {
    DateTime::parse_from_rfc2822(s.trim()).ok().map(SystemTime::from)
}

/// Just enough XML for S3's answers: the text of elements by name. S3 documents are flat
/// records without attributes we need, CDATA or nested elements of the same name.
mod xml {
    /// The content of every `<tag>…</tag>` in `doc`, in order.
    pub fn all<'a>(doc: &'a str, tag: &str) -> Vec<&'a str> {
        let open = format!("<{tag}");
        let close = format!("</{tag}>");
        let mut out = Vec::new();
        let mut rest = doc;
        while let Some(at) = rest.find(&open) {
            let after = &rest[at + open.len()..];
            let Some(end) = after.find('>') else { break };
            let head = &after[..end];
            if !(head.is_empty() || head.starts_with(char::is_whitespace) || head == "/" || head.ends_with('/')) {
                // A longer name that starts the same (`<KeyMarker>` when looking for `<Key>`).
                rest = after;
                continue;
            }
            let body = &after[end + 1..];
            if head.ends_with('/') {
                out.push("");
                rest = body;
                continue;
            }
            let Some(stop) = body.find(&close) else { break };
            out.push(&body[..stop]);
            rest = &body[stop + close.len()..];
        }
        out
    }

    pub fn first<'a>(doc: &'a str, tag: &str) -> Option<&'a str> {
        all(doc, tag).into_iter().next()
    }

    /// The text of the first `<tag>`, unescaped.
    pub fn text(doc: &str, tag: &str) -> Option<String> {
        first(doc, tag).map(unescape)
    }

    /// The code and message of an `<Error>` document (empty when it is none).
    pub fn error(doc: &str) -> (String, String) {
        match first(doc, "Error") {
            Some(e) => (text(e, "Code").unwrap_or_default(), text(e, "Message").unwrap_or_default()),
            None => (String::new(), String::new()),
        }
    }

    pub fn unescape(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(at) = rest.find('&') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            let Some(semi) = rest.find(';') else { break };
            let entity = &rest[1..semi];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .map(|h| u32::from_str_radix(h, 16).ok())
                    .unwrap_or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            match c {
                Some(c) => {
                    out.push(c);
                    rest = &rest[semi + 1..];
                }
                None => {
                    out.push('&');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    pub fn escape(s: &str) -> String {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_s3_xml() {
        let doc = "<?xml version=\"1.0\"?><ListBucketResult><KeyCount>2</KeyCount>\
                   <Contents><Key>a&amp;b</Key><Size>3</Size></Contents>\
                   <Contents><Key>c&#x2F;d&#47;</Key><Size>0</Size><Owner/></Contents>\
                   <IsTruncated>false</IsTruncated></ListBucketResult>";
        let keys: Vec<String> = xml::all(doc, "Contents").iter().map(|c| xml::text(c, "Key").unwrap()).collect();
        assert_eq!(keys, ["a&b", "c/d/"]);
        assert_eq!(xml::text(doc, "KeyCount").as_deref(), Some("2"));
        assert_eq!(xml::all(doc, "Owner"), [""]);
        assert_eq!(xml::text(doc, "IsTruncated").as_deref(), Some("false"));
        let err = "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>";
        assert_eq!(xml::error(err), ("NoSuchKey".into(), "The specified key does not exist.".into()));
        assert_eq!(xml::error(doc), (String::new(), String::new()));
    }

    #[test]
    fn crc32c_is_castagnolis() {
        // The check value of CRC-32C, and the header value S3's documentation shows for "".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(Sum::Crc32c(crc32c(b"")).base64(), "AAAAAA==");
    }

    /// The server, not only the client, checks object data: a body that does not match its
    /// checksum (damaged on the way) is refused and stores nothing, whatever the request's
    /// signature says (the payload is not signed).
    #[test]
    fn a_body_that_does_not_match_its_checksum_is_refused() {
        let Some(server) = bulwark_testkit::S3Server::start() else { return };
        let open = |bucket: &str| {
            let super::super::Location::S3(loc) = server.location(bucket, "").parse().unwrap() else { panic!() };
            S3Storage::with_options(&loc, Credentials::new("a", "b", None), S3Options::default()).unwrap()
        };
        let s = open("crc");
        s.create_bucket(false).unwrap();
        let me = &s.inner;
        let data = bulwark_testkit::random_bytes(1 << 20, 1);
        let mut damaged = data.clone();
        damaged[1234] ^= 0x10;
        for key in ["damaged", "damaged-part"] {
            let full = me.full(key);
            let good = Req::new("PUT", Some(&full)).data(&data);
            let mut bad = Req::new("PUT", Some(&full)).data(&damaged);
            bad.body = Some((&damaged, good.body.unwrap().1));
            let refused = if key == "damaged" {
                me.once(&bad, &[]).map(drop).unwrap_err()
            } else {
                // A part of a multipart upload, likewise.
                let mut up = Multipart::start(me.clone(), full.clone()).unwrap();
                let part = Req::new("PUT", Some(&full)).query("partNumber", "1").query("uploadId", &up.id);
                let part = Req { body: bad.body, ..part };
                let r = me.once(&part, &[]).map(drop).unwrap_err();
                up.done = false;
                r
            };
            assert_eq!(refused.status / 100, 4, "{key}: {refused:?}");
            assert!(!s.exists(key).unwrap(), "{key}: a damaged body was stored");
        }
        // The same request with the body it was made for goes through.
        s.put("whole", &data, false).unwrap();
        assert!(s.read("whole").unwrap() == data);
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn dates_round_trip() {
        let t = parse_iso8601("2026-11-27T00:45:47.000Z").unwrap();
        assert_eq!(iso8601(t), "2026-11-27T00:45:47.000Z");
        assert_eq!(parse_http_date("Fri, 27 Nov 2026 00:45:47 GMT"), Some(t));
    }

    #[test]
    fn addresses_buckets_by_path_or_by_host() {
        let open = |l: &str| {
            let super::super::Location::S3(loc) = l.parse().unwrap() else { panic!("{l}") };
            S3Storage::with_options(&loc, Credentials::new("a", "b", None), S3Options::default()).unwrap()
        };
        let aws = open("s3://bkt/p?region=eu-west-1");
        assert_eq!((aws.inner.host.as_str(), aws.inner.path_base.as_str()), ("bkt.s3.eu-west-1.amazonaws.com", ""));
        assert_eq!(aws.inner.endpoint, "https://s3.eu-west-1.amazonaws.com");
        let own = open("s3://bkt?endpoint=https://store.example:443");
        assert_eq!((own.inner.host.as_str(), own.inner.path_base.as_str()), ("store.example", "/bkt"));
        let vhost = open("s3://bkt?endpoint=http://store.example:8333&path-style=false");
        assert_eq!(vhost.inner.host, "bkt.store.example:8333");
        assert_eq!(open("s3://bkt/a/b").inner.prefix, "a/b/");
        let super::super::Location::S3(loc) = "s3://bkt?endpoint=http://h:1/sub".parse().unwrap() else { panic!() };
        let e = S3Storage::with_options(&loc, Credentials::new("a", "b", None), S3Options::default()).unwrap_err();
        assert!(e.to_string().contains("without a path"), "{e}");
    }

    #[test]
    fn credentials_never_show() {
        let c = Credentials::new("AKIDSECRETISH", "very-secret", Some("tok"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("AKID") && !shown.contains("very-secret") && !shown.contains("tok"), "{shown}");
    }

    #[test]
    fn reads_the_profile_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "# comment\n[default]\naws_access_key_id = A1\naws_secret_access_key=S1\n\n\
             [profile backup]\naws_access_key_id=A2\naws_secret_access_key = S2\naws_session_token = T2\n",
        )
        .unwrap();
        let d = Credentials::from_file(&file, "default").unwrap().unwrap();
        assert_eq!((d.access_key.as_str(), d.secret_key.as_str(), d.session_token), ("A1", "S1", None));
        let b = Credentials::from_file(&file, "backup").unwrap().unwrap();
        assert_eq!((b.access_key.as_str(), b.session_token.as_deref()), ("A2", Some("T2")));
        assert!(Credentials::from_file(&file, "other").unwrap().is_none());
    }
}
