//! The socket protocol: one JSON object per line each way, a reply for every request, in order,
//! any number of requests per connection.
//!
//! ```text
//! → {"op":"lock","repository":"/srv/bulwark/r1","keys":["points/5e1c.manifest"],"until":"2026-12-24T00:00:00Z"}
//! ← {"reply":"locked","repository":"/srv/bulwark/r1","keys":[{"key":"points/5e1c.manifest","until":"2026-12-24T00:00:00Z","change":"new"}]}
//! → {"op":"status","repository":"/srv/bulwark/r1","keys":["points/5e1c.manifest","config"]}
//! ← {"reply":"status","keys":[{"key":"points/5e1c.manifest","locked_until":"2026-12-24T00:00:00Z"},{"key":"config","locked_until":null}]}
//! ← {"reply":"error","kind":"refused","message":"repository /home/x is not under any of this service's roots (/srv/bulwark)"}
//! ```
//! Dates are RFC 3339 in UTC. An error reply answers one request; the connection stays usable,
//! except after a line that is too long or not UTF-8, which ends it.

use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, HardenedError};
use crate::service::{KeyLock, KeyStatus};

/// The longest line either side accepts: room for a lock of a few hundred thousand keys.
pub const MAX_LINE: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// See [`crate::Service::lock`].
    Lock { repository: PathBuf, keys: Vec<String>, until: DateTime<Utc> },
    /// See [`crate::Service::status`].
    Status { repository: PathBuf, keys: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Locked { repository: PathBuf, keys: Vec<KeyLock> },
    Status { keys: Vec<KeyStatus> },
    Error { kind: ErrorKind, message: String },
}

impl From<&HardenedError> for Reply {
    fn from(e: &HardenedError) -> Self {
        Reply::Error { kind: e.kind(), message: e.message().to_string() }
    }
}

/// Writes one message as a line.
pub fn write_line<T: Serialize>(out: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Reads one line (without its newline); `None` at the end of the stream. A line longer than
/// [`MAX_LINE`] is an error, so a peer cannot make the other side buffer without bound.
pub fn read_line<R: BufRead>(input: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = Read::take(input, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("line longer than {MAX_LINE} bytes")));
    }
    String::from_utf8(buf).map(Some).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented() {
        let r: Request = serde_json::from_str(
            r#"{"op":"lock","repository":"/srv/r","keys":["config"],"until":"2026-12-24T00:00:00Z"}"#,
        )
        .unwrap();
        let Request::Lock { repository, keys, until } = r else { panic!("{r:?}") };
        assert_eq!(
            (repository.to_str().unwrap(), keys, until.to_rfc3339()),
            ("/srv/r", vec!["config".to_string()], "2026-12-24T00:00:00+00:00".to_string())
        );
        let e = serde_json::to_string(&Reply::Error { kind: ErrorKind::Refused, message: "no".into() }).unwrap();
        assert_eq!(e, r#"{"reply":"error","kind":"refused","message":"no"}"#);
    }

    #[test]
    fn an_overlong_line_is_an_error() {
        let long = vec![b'x'; MAX_LINE + 10];
        assert!(read_line(&mut &long[..]).is_err());
        assert_eq!(read_line(&mut &b"{}\nrest"[..]).unwrap().as_deref(), Some("{}"));
        assert_eq!(read_line(&mut &b""[..]).unwrap(), None);
    }
}
