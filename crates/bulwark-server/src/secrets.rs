//! Secrets at rest. What the server must read back (repository passwords) is sealed in the
//! config database with AES-256-GCM under a key that is kept outside it: `secret.key` (0600) in
//! the server's data directory. A copy of the database alone — a dump, a replica, a stolen
//! backup of a PostgreSQL host — reveals nothing; each value is bound to the row it belongs to,
//! so sealed values cannot be swapped between rows either.
//!
//! Losing `secret.key` loses the sealed passwords (the repositories stay readable with the
//! passwords their operators know): back it up with the CA key.

use std::path::{Path, PathBuf};

use bulwark_repo::crypto::{random_bytes, Keys};

/// Sealed values start with this, then nonce ‖ ciphertext ‖ tag in hex.
const PREFIX: &str = "sealed1:";
const KEY_FILE: &str = "secret.key";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {what}: {source}")]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Write(#[from] bulwark_proto::pki::PkiError),
    #[error("{path}: not a Bulwark secret key (expected 128 hex digits); restore it from your backup of the server")]
    BadKey { path: PathBuf },
    #[error(
        "the {what} cannot be unsealed: the database was sealed with another secret key than the server's \
         secret.key, or the value was altered; restore secret.key from your backup of the server"
    )]
    Unsealable { what: String },
}

/// The key that seals the config database's secrets.
#[derive(Clone)]
pub struct Secrets {
    keys: Keys,
}

impl Secrets {
    /// The key in `dir/secret.key`, created (0600) on the first start.
    pub fn load_or_create(dir: &Path) -> Result<Secrets, SecretError> {
        let path = dir.join(KEY_FILE);
        let io = |what, source| SecretError::Io { path: path.clone(), what, source };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bad = || SecretError::BadKey { path: path.clone() };
                let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
                let master: [u8; 64] = bytes.try_into().map_err(|_| bad())?;
                Ok(Secrets { keys: Keys::from_master(&master) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let master: [u8; 64] = random_bytes();
                bulwark_proto::pki::write_private(&path, hex::encode(master).as_bytes())?;
                Ok(Secrets { keys: Keys::from_master(&master) })
            }
            Err(e) => Err(io("reading", e)),
        }
    }

    /// A key that lives only as long as the process (tests).
    pub fn ephemeral() -> Secrets {
        Secrets { keys: Keys::from_master(&random_bytes()) }
    }

    /// `plain` sealed for `what` (the row it is stored in, e.g. `repository main password`).
    pub fn seal(&self, what: &str, plain: &str) -> String {
        format!("{PREFIX}{}", hex::encode(self.keys.seal(what.as_bytes(), plain.as_bytes().to_vec())))
    }

    /// What [`Secrets::seal`] sealed for `what`.
    pub fn open(&self, what: &str, stored: &str) -> Result<String, SecretError> {
        let fail = || SecretError::Unsealable { what: what.to_string() };
        let sealed = stored.strip_prefix(PREFIX).and_then(|h| hex::decode(h).ok()).ok_or_else(fail)?;
        let plain = self.keys.open(what.as_bytes(), &sealed).ok_or_else(fail)?;
        String::from_utf8(plain).map_err(|_| fail())
    }

    /// Whether a stored value is sealed (older servers stored passwords in clear).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::load_or_create(dir.path()).unwrap();
        let sealed = s.seal("repository main password", "correct horse");
        assert!(!sealed.contains("correct horse") && Secrets::is_sealed(&sealed));
        assert_eq!(s.open("repository main password", &sealed).unwrap(), "correct horse");
        // Moved to another row, or read with another key: refused, never garbage.
        assert!(s.open("repository other password", &sealed).is_err());
        assert!(Secrets::ephemeral().open("repository main password", &sealed).is_err());
        // The key file is private and the same key comes back at the next start.
        let md = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777, 0o600);
        let again = Secrets::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open("repository main password", &sealed).unwrap(), "correct horse");
        std::fs::write(dir.path().join(KEY_FILE), "nonsense").unwrap();
        let e = Secrets::load_or_create(dir.path()).err().unwrap().to_string();
        assert!(e.contains("not a Bulwark secret key"), "{e}");
    }
}
