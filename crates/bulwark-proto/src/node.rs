//! Joining: a new node trades a one-time token for a certificate from the server's CA.

use crate::pb::registration_client::RegistrationClient;
use crate::pb::JoinRequest;
use crate::pki::{self, Identity, JoinToken, NodeRequest, Role};
use crate::tls::{self, Revocations, SERVER_NODE};

/// `https://host:port` or `host:port` to `host:port`.
pub fn server_address(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("https://").unwrap_or(url).trim_end_matches('/');
    if rest.contains("://") || !rest.contains(':') {
        return Err(format!("{url:?} is not a server address (https://HOST:PORT)"));
    }
    Ok(rest.to_string())
}

/// Joins the server at `url` as `role` `name`, announcing `address` as where this node's own
/// service listens. The key is generated here and never sent. The server is trusted only if
/// its CA is the one the token pins.
pub async fn join(url: &str, token: &str, role: Role, name: &str, address: &str) -> Result<Identity, String> {
    let token: JoinToken = token.parse()?;
    pki::validate_node_name(name)?;
    let addr = server_address(url)?;
    let request = NodeRequest::generate(role, name).map_err(|e| e.to_string())?;
    let cfg =
        tls::client_config(None, Some(&token.ca_fingerprint), &Revocations::default()).map_err(|e| e.to_string())?;
    let channel = tls::connect(&addr, &pki::identity_name(Role::Server, SERVER_NODE), cfg)
        .await
        .map_err(|e| format!("joining {url}: {e}"))?;
    let reply = RegistrationClient::new(channel)
        .join(JoinRequest {
            protocol: crate::PROTOCOL,
            token: token.to_string(),
            name: name.to_string(),
            role: role.as_str().to_string(),
            csr_pem: request.csr_pem,
            address: address.to_string(),
        })
        .await
        .map_err(|s| format!("the server refused to join {role} {name}: {}", s.message()))?
        .into_inner();
    let ca = pki::pem_to_der(&reply.ca_pem).map_err(|e| e.to_string())?;
    if pki::fingerprint(&ca) != token.ca_fingerprint {
        return Err("the server answered with a CA other than the one the token pins".into());
    }
    let identity = Identity { cert_pem: reply.certificate_pem, key_pem: request.key_pem, ca_pem: reply.ca_pem };
    let me = identity.peer_identity().map_err(|e| e.to_string())?;
    if me.role != role || me.name != name {
        return Err(format!("the server issued a certificate for {me}, not for {role} {name}"));
    }
    Ok(identity)
}
