//! Where a repository is: a directory, an S3 bucket (and prefix), or memory (for tests).
//!
//! Written as `/srv/backup`, `file:///srv/backup`, `s3://bucket/prefix?endpoint=URL&region=R`
//! or `memory://name`. A location never holds a credential: S3 keys come from the standard
//! environment variables or a credentials file (see the S3 backend), so a location can be
//! printed, logged, stored by the server and shown in `--json` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Location),
    /// A process-wide in-memory store, shared by every opening of the same name.
    Memory(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Keys of the repository start with this (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// `http(s)://host[:port]`; AWS's regional endpoint when absent.
    pub endpoint: Option<String>,
    pub region: String,
    /// Bucket in the path (`endpoint/bucket/key`) rather than in the host name. The default
    /// with an explicit endpoint, since self-hosted stores (Ceph RGW, MinIO, SeaweedFS) expect it.
    pub path_style: bool,
    /// A file with `access_key_id`/`secret_access_key` (AWS credentials file format); else the
    /// `AWS_*` environment variables, else the default AWS credentials file.
    pub credentials_file: Option<PathBuf>,
    /// A PEM file of certificate authorities to trust for the endpoint, besides the usual ones.
    pub ca_file: Option<PathBuf>,
}

impl Location {
    /// The directory of a local location.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            _ => None,
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            Location::Local(_) => "file",
            Location::S3(_) => "s3",
            Location::Memory(_) => "memory",
        }
    }
}

impl FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Location, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty repository location".into());
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Ok(Location::Local(PathBuf::from(s)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(format!("{s:?}: a file location needs an absolute path (file:///srv/backup)"));
                }
                Ok(Location::Local(PathBuf::from(rest)))
            }
            "memory" if !rest.is_empty() => Ok(Location::Memory(rest.to_string())),
            "s3" => parse_s3(s, rest).map(Location::S3),
            other => Err(format!("{s:?}: unknown storage scheme {other:?} (a path, file://, s3:// or memory://)")),
        }
    }
}

fn parse_s3(whole: &str, rest: &str) -> Result<S3Location, String> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if !valid_bucket(bucket) {
        return Err(format!(
            "{whole:?}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, dots and hyphens)"
        ));
    }
    let mut loc = S3Location {
        bucket: bucket.into(),
        prefix: prefix.trim_matches('/').into(),
        endpoint: None,
        region: "us-east-1".into(),
        path_style: false,
        credentials_file: None,
        ca_file: None,
    };
    let mut path_style = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| format!("{whole:?}: {k}= has a malformed %-escape"))?;
        match k {
            "endpoint" => {
                let v = v.trim_end_matches('/');
                if !(v.starts_with("http://") || v.starts_with("https://")) || v.len() < 9 {
                    return Err(format!("{whole:?}: endpoint must be http://HOST[:PORT] or https://HOST[:PORT]"));
                }
                loc.endpoint = Some(v.into());
            }
            "region" if !v.is_empty() => loc.region = v,
            "path-style" | "path_style" => {
                path_style = Some(match v.as_str() {
                    "" | "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(format!("{whole:?}: path-style is true or false")),
                })
            }
            "credentials-file" | "credentials_file" => loc.credentials_file = Some(v.into()),
            "ca-file" | "ca_file" => loc.ca_file = Some(v.into()),
            "access-key" | "access_key" | "secret-key" | "secret_key" | "secret" | "password" => {
                return Err(format!(
                    "a repository location must not hold a credential ({k}=): use AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or credentials-file="
                ))
            }
            _ => {
                return Err(format!(
                    "{whole:?}: unknown option {k:?} (endpoint, region, path-style, credentials-file, ca-file)"
                ))
            }
        }
    }
    loc.path_style = path_style.unwrap_or(loc.endpoint.is_some());
    Ok(loc)
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Memory(n) => write!(f, "memory://{n}"),
            Location::S3(s) => {
                write!(f, "s3://{}", s.bucket)?;
                if !s.prefix.is_empty() {
                    write!(f, "/{}", s.prefix)?;
                }
                let mut sep = '?';
                let mut opt = |f: &mut fmt::Formatter<'_>, k: &str, v: &str| {
                    let r = write!(f, "{sep}{k}={v}");
                    sep = '&';
                    r
                };
                if let Some(e) = &s.endpoint {
                    opt(f, "endpoint", e)?;
                }
                if s.region != "us-east-1" {
                    opt(f, "region", &s.region)?;
                }
                if s.path_style != s.endpoint.is_some() {
                    opt(f, "path-style", if s.path_style { "true" } else { "false" })?;
                }
                if let Some(c) = &s.credentials_file {
                    opt(f, "credentials-file", &c.display().to_string())?;
                }
                if let Some(c) = &s.ca_file {
                    opt(f, "ca-file", &c.display().to_string())?;
                }
                Ok(())
            }
        }
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Location {
        Location::Local(p)
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Location {
        Location::Local(p.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Location {
        Location::Local(p.clone())
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Location {
        l.clone()
    }
}

/// A location travels (in configs, between processes) as the text an operator writes.
impl serde::Serialize for Location {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Location {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Location, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_operators_write() {
        assert_eq!("/srv/backup".parse::<Location>().unwrap(), Location::Local("/srv/backup".into()));
        assert_eq!("file:///srv/b".parse::<Location>().unwrap(), Location::Local("/srv/b".into()));
        assert_eq!("rel/dir".parse::<Location>().unwrap(), Location::Local("rel/dir".into()));
        let Location::S3(s) = "s3://bk-1/a/b/?endpoint=http://127.0.0.1:8333&region=eu-1".parse().unwrap() else {
            panic!()
        };
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("bk-1", "a/b"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert!(s.path_style);
        assert_eq!(s.region, "eu-1");
        let Location::S3(aws) = "s3://bucket".parse().unwrap() else { panic!() };
        assert!(!aws.path_style && aws.prefix.is_empty() && aws.endpoint.is_none());
    }

    #[test]
    fn round_trips_through_display() {
        for s in [
            "/srv/backup",
            "memory://t",
            "s3://bucket",
            "s3://bucket/p/q?endpoint=http://127.0.0.1:8333&region=eu-1",
            "s3://bucket?path-style=true&credentials-file=/etc/bulwark/s3",
        ] {
            let l: Location = s.parse().unwrap();
            assert_eq!(l.to_string().parse::<Location>().unwrap(), l, "{s}");
        }
    }

    #[test]
    fn refuses_nonsense_and_credentials() {
        for bad in [
            "",
            "ftp://x",
            "file://relative",
            "s3://Bad_Bucket",
            "s3://ab",
            "s3://bucket?endpoint=localhost",
            "s3://bucket?colour=blue",
            "s3://bucket?secret_key=abc",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad:?} parsed");
        }
        let e = "s3://bucket?access_key=AKIA".parse::<Location>().unwrap_err();
        assert!(e.contains("credential") && !e.contains("AKIA"), "{e}");
    }
}
