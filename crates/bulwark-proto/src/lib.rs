//! Bulwark's internal wire protocol and the identities that secure it.
//!
//! `pb` is generated from `proto/bulwark.proto`. `pki` is the certificate authority and the
//! nodes' certificates; `tls` turns them into mutual-TLS listeners and channels for tonic.

pub mod apps;
pub mod domain;
pub mod node;
pub mod pki;
pub mod tls;

pub use rustls;

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("bulwark.v1");
}

/// The protocol version this build speaks. Bumped on any incompatible change to `pb`.
pub const PROTOCOL: u32 = 2;

/// Refuses a peer that speaks another protocol version, naming both.
/// A size for people: `512 B`, `27.8 MiB` (binary units), as the CLI and the console show it.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn check_protocol(peer: u32, peer_kind: &str) -> Result<(), tonic::Status> {
    if peer == PROTOCOL {
        return Ok(());
    }
    let advice = if peer < PROTOCOL { "upgrade it" } else { "upgrade this node" };
    Err(tonic::Status::failed_precondition(format!(
        "protocol mismatch: the {peer_kind} speaks Bulwark protocol {peer}, this node speaks {PROTOCOL}; {advice}"
    )))
}

/// Bulwark's version, reported by nodes.
pub const SOFTWARE: &str = concat!("bulwark ", env!("CARGO_PKG_VERSION"));
