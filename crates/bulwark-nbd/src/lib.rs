//! Restore points as network block devices: an NBD server (fixed-newstyle handshake; simple
//! replies, or structured ones for clients that ask) over any [`bulwark_repo::Image`].
//!
//! What it is for: booting a VM straight from a backup, attaching a point to a host as a disk
//! (`nbd-client`, `qemu-nbd`, `nbdfuse`), or handing it to a tool that reads NBD (`qemu-img
//! convert`, `nbdcopy`). A read-only export refuses writes (`EPERM`); a writable one takes them
//! into a copy-on-write [`Overlay`], so the repository is never written either way. There is no
//! authentication and no TLS: listen on loopback, or on a network only trusted hosts reach.

pub mod overlay;
pub mod proto;
mod server;

pub use overlay::Overlay;
pub use server::{Export, Options, Server};

/// Why a server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("invalid NBD exports: {0}")]
    Config(String),
    #[error("cannot set up a writable overlay: {0}")]
    Overlay(#[source] std::io::Error),
}
