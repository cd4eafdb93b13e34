//! The server's certificate authority and the nodes' identities.
//!
//! Every node (server, agent, transport) holds a certificate issued by the server's own CA. Its
//! identity is one DNS name, `NAME.ROLE.bulwark`: a peer verifies both who and what the other
//! end is by checking that name, whatever address it connects to. A node generates its key
//! itself and sends only a certificate request with a one-time join token; the token also pins
//! the CA's fingerprint, so the very first connection cannot be intercepted.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, PkiError>;

/// What a node is; part of its certificate's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Server,
    Agent,
    Transport,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Transport => "transport",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "server" => Ok(Role::Server),
            "agent" => Ok(Role::Agent),
            "transport" => Ok(Role::Transport),
            _ => Err(format!("{s:?} is not a node role (agent, transport or server)")),
        }
    }
}

/// A node's name becomes a DNS label in its certificate: lowercase letters, digits, hyphens.
pub fn validate_node_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid node name (1-63 lowercase letters, digits and inner hyphens)"))
    }
}

/// The DNS name a node's certificate carries and its peers verify.
pub fn identity_name(role: Role, name: &str) -> String {
    format!("{name}.{role}.bulwark")
}

/// Who is at the other end of a verified connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
    /// The certificate's serial number, hex: what revocation lists name.
    pub serial: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (certificate {})", self.role, self.name, self.serial)
    }
}

/// Reads the identity out of a certificate issued by [`Ca`].
pub fn peer_identity(cert_der: &[u8]) -> std::result::Result<PeerIdentity, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let serial = hex::encode(cert.raw_serial());
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative name: {e}"))?
        .ok_or("certificate has no subject alternative name")?;
    for n in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = n {
            let mut parts = dns.rsplitn(3, '.');
            if let (Some("bulwark"), Some(role), Some(name)) = (parts.next(), parts.next(), parts.next()) {
                if let Ok(role) = role.parse() {
                    return Ok(PeerIdentity { role, name: name.to_string(), serial });
                }
            }
        }
    }
    Err("certificate names no Bulwark node".into())
}

/// Hex SHA-256 of a certificate (DER): what join tokens pin.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// The first certificate in a PEM text, as DER.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))
}

fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the kernel's random source is available");
    hex::encode(b)
}

/// A one-time join token: `bwt1.SECRET.CA_FINGERPRINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    pub ca_fingerprint: String,
}

impl JoinToken {
    pub fn generate(ca_fingerprint: &str) -> JoinToken {
        JoinToken { secret: random_hex::<24>(), ca_fingerprint: ca_fingerprint.to_string() }
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bwt1.{}.{}", self.secret, self.ca_fingerprint)
    }
}

impl FromStr for JoinToken {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut parts = s.trim().split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("bwt1"), Some(secret), Some(fp), None)
                if secret.len() == 48
                    && fp.len() == 64
                    && (secret.bytes().chain(fp.bytes())).all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok(JoinToken { secret: secret.into(), ca_fingerprint: fp.into() })
            }
            _ => Err("not a Bulwark join token (they look like bwt1.<48 hex>.<64 hex>)".into()),
        }
    }
}

/// Creates `dir` (and its parents) if needed and makes it enterable by its owner only: a node's
/// data directory holds its private key and, on the server, the keys of the CA and of the
/// database's secrets. A wider mode an older version left is taken back.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what, source| PkiError::Io { what, path: dir.into(), source };
    fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io("securing", e))
}

/// Writes `data` to `path` readable by its owner only, atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let io = |source| PkiError::Io { what: "writing", path: path.into(), source };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| PkiError::Io { what: "reading", path: path.into(), source })
}

fn node_params(role: Role, name: &str, serial: &[u8], extra_names: &[String]) -> Result<CertificateParams> {
    validate_node_name(name).map_err(PkiError::Invalid)?;
    let mut names = vec![identity_name(role, name)];
    names.extend(extra_names.iter().cloned());
    let mut p = CertificateParams::new(names).map_err(|e| PkiError::Invalid(format!("certificate parameters: {e}")))?;
    p.distinguished_name.push(DnType::CommonName, identity_name(role, name));
    p.serial_number = Some(SerialNumber::from_slice(serial));
    // Every node both serves (its own service) and calls (other nodes' services).
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p.not_before = time_now_minus_day();
    p.not_after = p.not_before + std::time::Duration::from_secs(5 * 365 * 86_400);
    Ok(p)
}

/// Validity starts a day back, so a peer whose clock is a little behind still accepts it.
fn time_now_minus_day() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::days(1)
}

/// A certificate issued to a node, and its serial (hex).
pub struct Issued {
    pub cert_pem: String,
    pub serial: String,
}

/// The server's certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl Ca {
    /// Loads the CA kept in `dir` (`ca.pem`, `ca.key`), creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Ca> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert.exists() {
            let key = KeyPair::from_pem(&read(&key)?)
                .map_err(|e| PkiError::Invalid(format!("{}: unreadable CA key: {e}", key.display())))?;
            let cert_pem = read(&cert)?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
                .map_err(|e| PkiError::Invalid(format!("{}: unreadable CA certificate: {e}", cert.display())))?;
            let cert_der = pem_to_der(&cert_pem)?;
            return Ok(Ca { issuer, cert_pem, cert_der });
        }
        private_dir(dir)?;
        let key = KeyPair::generate().map_err(|e| PkiError::Invalid(format!("generating the CA key: {e}")))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("no names");
        p.distinguished_name.push(DnType::CommonName, format!("Bulwark CA {}", &random_hex::<4>()));
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = time_now_minus_day();
        p.not_after = p.not_before + std::time::Duration::from_secs(20 * 365 * 86_400);
        let cert = p.self_signed(&key).map_err(|e| PkiError::Invalid(format!("creating the CA: {e}")))?;
        write_private(&dir.join("ca.key"), key.serialize_pem().as_bytes())?;
        write_private(&dir.join("ca.pem"), cert.pem().as_bytes())?;
        let cert_der = cert.der().to_vec();
        Ok(Ca { issuer: Issuer::new(p, key), cert_pem: cert.pem(), cert_der })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Signs a node's certificate request. The name and role come from the join (the token
    /// says what may join), never from the request, whose only use is its public key.
    pub fn sign_request(&self, csr_pem: &str, role: Role, name: &str) -> Result<Issued> {
        self.sign_request_with_names(csr_pem, role, name, &[])
    }

    fn sign_request_with_names(&self, csr_pem: &str, role: Role, name: &str, extra: &[String]) -> Result<Issued> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Invalid(format!("bad certificate request: {e}")))?;
        // A serial with its top bit clear and a non-zero first byte is encoded in DER exactly as
        // generated, so the serial recorded here is the one verifiers read from the certificate.
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).expect("random source");
        bytes[0] = (bytes[0] & 0x7f) | 0x01;
        let serial = hex::encode(bytes);
        let params = node_params(role, name, &bytes, extra)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| PkiError::Invalid(format!("signing the certificate: {e}")))?;
        Ok(Issued { cert_pem: cert.pem(), serial })
    }

    /// A complete identity for a node of this same host (the server's own).
    pub fn issue(&self, role: Role, name: &str) -> Result<Identity> {
        self.issue_with_names(role, name, &[])
    }

    /// [`Ca::issue`] with further names (DNS names or IP addresses) in the certificate: the
    /// server's, which HTTPS clients reach by host name or address.
    pub fn issue_with_names(&self, role: Role, name: &str, extra: &[String]) -> Result<Identity> {
        let req = NodeRequest::generate(role, name)?;
        let issued = self.sign_request_with_names(&req.csr_pem, role, name, extra)?;
        Ok(Identity { cert_pem: issued.cert_pem, key_pem: req.key_pem, ca_pem: self.cert_pem.clone() })
    }
}

/// A fresh key and a certificate request for it.
pub struct NodeRequest {
    pub key_pem: String,
    pub csr_pem: String,
}

impl NodeRequest {
    pub fn generate(role: Role, name: &str) -> Result<NodeRequest> {
        let key = KeyPair::generate().map_err(|e| PkiError::Invalid(format!("generating a key: {e}")))?;
        validate_node_name(name).map_err(PkiError::Invalid)?;
        // The request carries only the key and the name asked for; the CA decides the rest.
        let params = CertificateParams::new(vec![identity_name(role, name)])
            .map_err(|e| PkiError::Invalid(format!("certificate request: {e}")))?;
        let csr = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| PkiError::Invalid(format!("certificate request: {e}")))?;
        Ok(NodeRequest { key_pem: key.serialize_pem(), csr_pem: csr })
    }
}

/// A node's certificate, key and the CA it trusts, as kept in its data directory.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl Identity {
    const FILES: [&'static str; 3] = ["node.pem", "node.key", "ca.pem"];

    /// The identity stored in `dir`, if the node has joined.
    pub fn load(dir: &Path) -> Result<Option<Identity>> {
        if !dir.join(Self::FILES[1]).exists() {
            return Ok(None);
        }
        let [c, k, a] = Self::FILES.map(|f| read(&dir.join(f)));
        Ok(Some(Identity { cert_pem: c?, key_pem: k?, ca_pem: a? }))
    }

    /// Stores the identity, every file readable by its owner only; the key last, since its
    /// presence is what [`Identity::load`] looks for.
    pub fn save(&self, dir: &Path) -> Result<()> {
        private_dir(dir)?;
        write_private(&dir.join(Self::FILES[0]), self.cert_pem.as_bytes())?;
        write_private(&dir.join(Self::FILES[2]), self.ca_pem.as_bytes())?;
        write_private(&dir.join(Self::FILES[1]), self.key_pem.as_bytes())
    }

    pub fn peer_identity(&self) -> Result<PeerIdentity> {
        peer_identity(&pem_to_der(&self.cert_pem)?).map_err(PkiError::Invalid)
    }
}
