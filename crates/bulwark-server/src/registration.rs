//! Node registration: one-time join tokens for the CA's certificates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bulwark_proto::pb::registration_server::{Registration, RegistrationServer};
use bulwark_proto::pb::{JoinReply, JoinRequest};
use bulwark_proto::pki::{validate_node_name, Ca, JoinToken, Role};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// A node the CA issued a certificate to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JoinedNode {
    pub name: String,
    pub role: String,
    /// Where its own service listens.
    pub address: String,
    pub serial: String,
}

/// What a join token allows: a role, and one node name or any new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    /// `None`: any name no node has had.
    pub name: Option<String>,
    /// May take back the name of a removed node.
    pub replace: bool,
}

/// A node of the requested name already on record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub role: String,
    /// Removed by an operator: its certificate is revoked.
    pub removed: bool,
    /// An operator allowed the removed name to join again.
    pub readmitted: bool,
}

/// The admin CLI's noun for nodes of a role, for messages.
pub fn noun(role: &str) -> &'static str {
    if role == "transport" {
        "transport-node"
    } else {
        "computer"
    }
}

/// Whether a token granting `grant` admits `role` `name`, given the node of that name on
/// record (if any) and whether jobs, groups or restore points refer to that name (`referenced`).
/// A name is never taken over silently: a joined node must be removed first, a removed one
/// comes back only by an operator's word (a token made for it with `replace`, or a
/// readmission), and a token for any name takes only names nothing refers to (whoever takes a
/// name inherits its jobs and restore points).
pub fn admission(grant: &Grant, role: Role, name: &str, known: Option<&Known>, referenced: bool) -> Result<(), String> {
    if grant.role != role {
        return Err(format!("the token is for role {}, not {role}", grant.role));
    }
    if let Some(n) = grant.name.as_deref().filter(|n| *n != name) {
        return Err(format!("the token admits {role} {n}, not {name}"));
    }
    let cli = noun(role.as_str());
    match known {
        Some(k) if k.role != role.as_str() => Err(format!("the name {name} is taken by a {}", k.role)),
        Some(k) if !k.removed => {
            Err(format!("{role} {name} has joined already; remove it first (`bulwark {cli} delete {name}`)"))
        }
        Some(k) if grant.name.is_some() && (grant.replace || k.readmitted) => Ok(()),
        Some(_) => Err(format!(
            "{role} {name} was removed: it joins again only after `bulwark {cli} readmit {name}` or with a token \
             made for it (`bulwark token create --role {role} --name {name} --replace`)"
        )),
        None if grant.name.is_none() && referenced => Err(format!(
            "jobs, groups or restore points refer to {name}: a token for any new name cannot claim it; create \
             one with --name {name}"
        )),
        None => Ok(()),
    }
}

/// Where tokens and nodes are kept: memory (tests), or the config database (the server).
#[tonic::async_trait]
pub trait NodeStore: Send + Sync + 'static {
    /// Admits a node with a token: checks the token against the node (see [`admission`]),
    /// spends it and records the node, all at once or not at all, so a refused join wastes
    /// no token.
    async fn admit(&self, secret: &str, role: Role, node: JoinedNode) -> Result<(), String>;
}

/// Tokens (each for any new name) and nodes in memory.
#[derive(Default)]
pub struct MemoryNodes {
    tokens: Mutex<HashMap<String, Grant>>,
    nodes: Mutex<Vec<JoinedNode>>,
}

impl MemoryNodes {
    pub fn add_token(&self, token: &JoinToken, role: Role) {
        self.tokens.lock().expect("lock").insert(token.secret.clone(), Grant { role, name: None, replace: false });
    }

    pub fn nodes(&self) -> Vec<JoinedNode> {
        self.nodes.lock().expect("lock").clone()
    }
}

#[tonic::async_trait]
impl NodeStore for MemoryNodes {
    async fn admit(&self, secret: &str, role: Role, node: JoinedNode) -> Result<(), String> {
        let mut tokens = self.tokens.lock().expect("lock");
        let grant = tokens.get(secret).ok_or("unknown or already used join token")?;
        let mut nodes = self.nodes.lock().expect("lock");
        let known = nodes.iter().find(|n| n.name == node.name).map(|n| Known {
            role: n.role.clone(),
            removed: false,
            readmitted: false,
        });
        admission(grant, role, &node.name, known.as_ref(), false)?;
        tokens.remove(secret);
        nodes.push(node);
        Ok(())
    }
}

pub struct Registrar<S> {
    ca: Arc<Ca>,
    store: Arc<S>,
}

impl<S: NodeStore> Registrar<S> {
    pub fn new(ca: Arc<Ca>, store: Arc<S>) -> Self {
        Registrar { ca, store }
    }

    pub fn into_server(self) -> RegistrationServer<Self> {
        RegistrationServer::new(self)
    }
}

#[tonic::async_trait]
impl<S: NodeStore> Registration for Registrar<S> {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let remote = req.remote_addr().map_or_else(|| "unknown".into(), |a| a.to_string());
        let remote = req.extensions().get::<bulwark_proto::tls::PeerInfo>().map_or(remote, |p| p.remote.to_string());
        let r = req.into_inner();
        let refuse = |why: String| {
            warn!("refused to join {} {:?} from {remote}: {why}", r.role, r.name);
            Status::permission_denied(why)
        };
        bulwark_proto::check_protocol(r.protocol, "node").map_err(|e| refuse(e.message().into()))?;
        let role: Role = r.role.parse().map_err(|e: String| refuse(e))?;
        if role == Role::Server {
            return Err(refuse("a server cannot join".into()));
        }
        validate_node_name(&r.name).map_err(refuse)?;
        let token: JoinToken = r.token.parse().map_err(|e: String| refuse(e))?;
        // The request is checked before the token is looked at: a malformed one wastes nothing.
        let issued = self.ca.sign_request(&r.csr_pem, role, &r.name).map_err(|e| refuse(e.to_string()))?;
        let node = JoinedNode { name: r.name.clone(), role: r.role.clone(), address: r.address, serial: issued.serial };
        self.store.admit(&token.secret, role, node).await.map_err(refuse)?;
        info!("{role} {} joined from {remote}", r.name);
        Ok(Response::new(JoinReply { certificate_pem: issued.cert_pem, ca_pem: self.ca.cert_pem().to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: Option<&str>, replace: bool) -> Grant {
        Grant { role: Role::Agent, name: name.map(String::from), replace }
    }

    fn known(removed: bool, readmitted: bool) -> Known {
        Known { role: "agent".into(), removed, readmitted }
    }

    #[test]
    fn a_token_admits_only_its_role_and_name() {
        assert!(admission(&grant(Some("web-1"), false), Role::Agent, "web-1", None, false).is_ok());
        let e = admission(&grant(Some("web-1"), false), Role::Agent, "web-2", None, false).unwrap_err();
        assert!(e.contains("admits agent web-1, not web-2"), "{e}");
        let e = admission(&grant(None, false), Role::Transport, "t", None, false).unwrap_err();
        assert!(e.contains("the token is for role agent, not transport"), "{e}");
        assert!(admission(&grant(None, false), Role::Agent, "new", None, false).is_ok());
        let e = admission(&grant(None, false), Role::Agent, "old", None, true).unwrap_err();
        assert!(e.contains("restore points refer to old"), "{e}");
    }

    #[test]
    fn a_removed_name_comes_back_only_by_the_operators_word() {
        let removed = known(true, false);
        for g in [grant(None, false), grant(Some("web-1"), false)] {
            let e = admission(&g, Role::Agent, "web-1", Some(&removed), false).unwrap_err();
            assert!(e.contains("readmit web-1") && e.contains("--replace"), "{e}");
        }
        assert!(admission(&grant(Some("web-1"), true), Role::Agent, "web-1", Some(&removed), false).is_ok());
        let readmitted = known(true, true);
        assert!(admission(&grant(Some("web-1"), false), Role::Agent, "web-1", Some(&readmitted), false).is_ok());
        assert!(admission(&grant(None, false), Role::Agent, "web-1", Some(&readmitted), false).is_err());
        let e = admission(&grant(Some("web-1"), true), Role::Agent, "web-1", Some(&known(false, false)), false)
            .unwrap_err();
        assert!(e.contains("remove it first"), "{e}");
    }
}
