//! Keys: the password wraps a random master key, so the password can change without re-encrypting.
//!
//! The master key has two halves: an AES-256-GCM key that seals chunks and manifests, and a
//! BLAKE3 key that names chunks (so equal plaintexts share a name only inside this repository,
//! and names reveal nothing about content).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// Cost of deriving the key-encryption key from a password.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// OWASP's argon2id recommendation (64 MiB, 3 passes): a fraction of a second per open.
    fn default() -> Self {
        KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 }
    }
}

/// The `keys/default` object: the master key, sealed under a key derived from the password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub kdf: String,
    pub params: KdfParams,
    pub salt: String,
    pub nonce: String,
    pub wrapped_master_key: String,
}

/// The repository's secret material; `None` for an unencrypted repository.
#[derive(Clone)]
pub struct Keys {
    seal: Option<(Aes256Gcm, [u8; 32], Box<[u8; 64]>)>,
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the kernel's random source is available");
    b
}

fn derive_kek(password: &[u8], salt: &[u8], p: KdfParams) -> Result<[u8; 32], String> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| format!("bad key derivation parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon.hash_password_into(password, salt, &mut out).map_err(|e| format!("key derivation failed: {e}"))?;
    Ok(out)
}

impl Keys {
    pub fn none() -> Self {
        Keys { seal: None }
    }

    pub fn is_encrypted(&self) -> bool {
        self.seal.is_some()
    }

    /// A fresh random master key and its key file wrapped under `password`.
    pub fn generate(password: &[u8], params: KdfParams) -> Result<(Keys, KeyFile), String> {
        let master: [u8; 64] = random_bytes();
        let keys = Keys::from_master(&master);
        Ok((keys, wrap(&master, password, params)?))
    }

    /// Keys from a master key handed over by a data mover (see [`Keys::master_key`]).
    pub fn from_master(master: &[u8; 64]) -> Keys {
        let cipher = Aes256Gcm::new_from_slice(&master[..32]).expect("32-byte key");
        let mut id_key = [0u8; 32];
        id_key.copy_from_slice(&master[32..]);
        Keys { seal: Some((cipher, id_key, Box::new(*master))) }
    }

    /// The keys of one computer in a repository whose computers are isolated: derived from the
    /// master key and the computer's name, so the repository (holding the master key) reads
    /// every computer's points, while an agent given its own keys can neither read another
    /// computer's chunks nor compute the name another computer's content is stored under.
    /// `None` for an unencrypted repository (it has no secret to derive from).
    pub fn scoped(&self, scope: &str) -> Option<Keys> {
        let master = self.master_key()?;
        let mut derived = [0u8; 64];
        let mut h = blake3::Hasher::new_derive_key("bulwark 2026 per-computer keys");
        h.update(&master).update(&(scope.len() as u64).to_le_bytes()).update(scope.as_bytes());
        h.finalize_xof().fill(&mut derived);
        Some(Keys::from_master(&derived))
    }

    /// The master key, for a data mover to hand to the agent it serves (over mutual TLS), so
    /// that the agent encrypts at the source and never needs the password.
    pub fn master_key(&self) -> Option<[u8; 64]> {
        self.seal.as_ref().map(|s| *s.2)
    }

    /// Unwraps the master key; `None` means the password is wrong (or the key file was altered).
    pub fn unlock(file: &KeyFile, password: &[u8]) -> Result<Option<(Keys, [u8; 64])>, String> {
        if file.kdf != "argon2id" {
            return Err(format!("unknown key derivation {:?}", file.kdf));
        }
        let salt = hex::decode(&file.salt).map_err(|_| "key file: bad salt")?;
        let nonce = hex::decode(&file.nonce).map_err(|_| "key file: bad nonce")?;
        let wrapped = hex::decode(&file.wrapped_master_key).map_err(|_| "key file: bad key")?;
        if nonce.len() != NONCE_LEN {
            return Err("key file: bad nonce".into());
        }
        let kek = derive_kek(password, &salt, file.params)?;
        let cipher = Aes256Gcm::new_from_slice(&kek).expect("32-byte key");
        let Ok(master) =
            cipher.decrypt(Nonce::from_slice(&nonce), Payload { msg: &wrapped, aad: b"bulwark master key" })
        else {
            return Ok(None);
        };
        let master: [u8; 64] = master.try_into().map_err(|_| "key file: master key has the wrong length")?;
        Ok(Some((Keys::from_master(&master), master)))
    }

    /// The digest that names a chunk.
    pub fn chunk_digest(&self, data: &[u8]) -> [u8; 32] {
        match &self.seal {
            Some((_, k, _)) => *blake3::keyed_hash(k, data).as_bytes(),
            None => *blake3::hash(data).as_bytes(),
        }
    }

    /// A hasher for authenticating a whole object (block indexes): keyed when encrypted, so only
    /// the key holder can forge one.
    pub fn object_hasher(&self) -> blake3::Hasher {
        match &self.seal {
            Some((_, k, _)) => blake3::Hasher::new_keyed(&blake3::derive_key("bulwark 2026 object authentication", k)),
            None => blake3::Hasher::new(),
        }
    }

    /// Seals `plain` bound to `aad`: nonce ‖ ciphertext ‖ tag. Identity when unencrypted.
    pub fn seal(&self, aad: &[u8], plain: Vec<u8>) -> Vec<u8> {
        let Some((cipher, _, _)) = &self.seal else { return plain };
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad })
            .expect("AES-GCM encrypts any buffer under 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`Keys::seal`] sealed; `None` when the bytes were altered or bound to other `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let Some((cipher, _, _)) = &self.seal else { return Some(sealed.to_vec()) };
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).ok()
    }
}

/// Wraps a master key under a password (used at init and by `repo passwd`).
pub fn wrap(master: &[u8; 64], password: &[u8], params: KdfParams) -> Result<KeyFile, String> {
    let salt: [u8; 16] = random_bytes();
    let nonce: [u8; NONCE_LEN] = random_bytes();
    let kek = derive_kek(password, &salt, params)?;
    let cipher = Aes256Gcm::new_from_slice(&kek).expect("32-byte key");
    let wrapped = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: master, aad: b"bulwark master key" })
        .expect("AES-GCM encrypts 64 bytes");
    Ok(KeyFile {
        kdf: "argon2id".into(),
        params,
        salt: hex::encode(salt),
        nonce: hex::encode(nonce),
        wrapped_master_key: hex::encode(wrapped),
    })
}
