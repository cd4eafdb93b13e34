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

/// Where tokens and nodes are kept: memory (tests), or the config database (the server).
#[tonic::async_trait]
pub trait NodeStore: Send + Sync + 'static {
    /// Consumes a token: the role it admits, or `None` if it is unknown or was used.
    async fn redeem(&self, secret: &str) -> Option<Role>;
    /// Records a node; refuses a name already taken by a node of another role.
    async fn joined(&self, node: JoinedNode) -> Result<(), String>;
}

/// Tokens and nodes in memory.
#[derive(Default)]
pub struct MemoryNodes {
    tokens: Mutex<HashMap<String, Role>>,
    nodes: Mutex<Vec<JoinedNode>>,
}

impl MemoryNodes {
    pub fn add_token(&self, token: &JoinToken, role: Role) {
        self.tokens.lock().expect("lock").insert(token.secret.clone(), role);
    }

    pub fn nodes(&self) -> Vec<JoinedNode> {
        self.nodes.lock().expect("lock").clone()
    }
}

#[tonic::async_trait]
impl NodeStore for MemoryNodes {
    async fn redeem(&self, secret: &str) -> Option<Role> {
        self.tokens.lock().expect("lock").remove(secret)
    }
    async fn joined(&self, node: JoinedNode) -> Result<(), String> {
        let mut nodes = self.nodes.lock().expect("lock");
        if let Some(n) = nodes.iter().find(|n| n.name == node.name) {
            return Err(format!("the name {} is taken by a joined {}; remove it first", node.name, n.role));
        }
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
        // The request is checked before the token is spent: a malformed one wastes nothing.
        let issued = self.ca.sign_request(&r.csr_pem, role, &r.name).map_err(|e| refuse(e.to_string()))?;
        match self.store.redeem(&token.secret).await {
            Some(allowed) if allowed == role => {}
            Some(allowed) => return Err(refuse(format!("the token admits a {allowed}, not a {role}"))),
            None => return Err(refuse("unknown or already used join token".into())),
        }
        let node = JoinedNode { name: r.name.clone(), role: r.role.clone(), address: r.address, serial: issued.serial };
        self.store.joined(node).await.map_err(refuse)?;
        info!("{role} {} joined from {remote}", r.name);
        Ok(Response::new(JoinReply { certificate_pem: issued.cert_pem, ca_pem: self.ca.cert_pem().to_string() }))
    }
}
