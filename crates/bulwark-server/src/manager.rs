//! The backup manager's task driver: steps 4 to 8 of a task. It asks the transport service for
//! a data mover, hands the agent its task with the mover's address and ticket, follows the
//! agent's progress, and takes the data mover's word for what was committed.

use std::sync::Arc;

use bulwark_proto::pb::agent_client::AgentClient;
use bulwark_proto::pb::transport_client::TransportClient;
use bulwark_proto::pb::{
    task_event, InventoryRequest, MoverAddress, MoverRef, MoverSpec, Progress, Revocations, TaskRef, TaskSpec, Throttle,
};
use bulwark_proto::pki::{identity_name, Role};
use bulwark_proto::tls;
use bulwark_repo::Manifest;
use tonic::transport::Channel;
use tracing::{info, warn};

/// A node the manager talks to.
#[derive(Debug, Clone)]
pub struct NodeAddress {
    pub name: String,
    /// host:port of its service.
    pub address: String,
}

/// One task: what the agent backs up, where it goes, under which rules.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    pub task_id: String,
    pub agent: NodeAddress,
    pub transport: NodeAddress,
    /// The repository's path on the transport node.
    pub repository: String,
    pub password: Option<String>,
    pub throttle: Throttle,
    /// What the agent does; `mover`, `protocol` and `task_id` are filled in here.
    pub spec: TaskSpec,
}

/// A restore: a point of a repository onto a path of a computer.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub task_id: String,
    pub agent: NodeAddress,
    pub transport: NodeAddress,
    pub repository: String,
    pub password: Option<String>,
    pub point: String,
    /// The point's backup name (the only one the data mover serves).
    pub name: String,
    pub target: String,
    pub overwrite: bool,
    pub paths: Vec<String>,
    pub safe: bool,
}

/// How a task ended.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TaskOutcome {
    pub task_id: String,
    /// success, warning, failed or cancelled.
    pub status: String,
    pub error: Option<String>,
    /// The restore points the data mover committed.
    pub points: Vec<Manifest>,
    /// The agent's report per source.
    pub reports: Vec<serde_json::Value>,
    pub log: Vec<String>,
    pub received_bytes: u64,
    /// The data mover's peak resident memory.
    pub mover_peak_rss_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("{node}: {reason}")]
    Node { node: String, reason: String },
}

/// Follows an agent's task events to the outcome it reports: (status, error).
async fn follow(
    agent: &str,
    mut events: tonic::Streaming<bulwark_proto::pb::TaskEvent>,
    out: &mut TaskOutcome,
    mut progress: impl FnMut(&Progress),
) -> Result<(String, String), String> {
    loop {
        match events.message().await {
            Ok(Some(e)) => match e.event {
                Some(task_event::Event::Progress(p)) => progress(&p),
                Some(task_event::Event::Log(l)) => out.log.push(l),
                Some(task_event::Event::SourceDone(d)) => {
                    out.reports.push(serde_json::from_str(&d.report_json).unwrap_or_default())
                }
                Some(task_event::Event::Finished(f)) => return Ok((f.status, f.error)),
                None => {}
            },
            Ok(None) => return Err(format!("agent {agent} ended the task without an outcome")),
            Err(s) => return Err(format!("lost contact with agent {agent}: {}", s.message())),
        }
    }
}

/// The manager's connections, authenticated as the server.
#[derive(Clone)]
pub struct Manager {
    tls: Arc<bulwark_proto::rustls::ClientConfig>,
}

impl Manager {
    pub fn new(tls: Arc<bulwark_proto::rustls::ClientConfig>) -> Self {
        Manager { tls }
    }

    async fn channel(&self, role: Role, node: &NodeAddress) -> Result<Channel, ManagerError> {
        tls::connect(&node.address, &identity_name(role, &node.name), self.tls.clone())
            .await
            .map_err(|e| ManagerError::Node { node: format!("{role} {}", node.name), reason: e.to_string() })
    }

    pub async fn agent(&self, node: &NodeAddress) -> Result<AgentClient<Channel>, ManagerError> {
        Ok(AgentClient::new(self.channel(Role::Agent, node).await?))
    }

    pub async fn transport(&self, node: &NodeAddress) -> Result<TransportClient<Channel>, ManagerError> {
        Ok(TransportClient::new(self.channel(Role::Transport, node).await?))
    }

    /// The agent's inventory (JSON, see the agent's `inventory` module).
    pub async fn inventory(&self, node: &NodeAddress) -> Result<serde_json::Value, ManagerError> {
        let err = |reason: String| ManagerError::Node { node: format!("agent {}", node.name), reason };
        let reply = self
            .agent(node)
            .await?
            .inventory(InventoryRequest { protocol: bulwark_proto::PROTOCOL })
            .await
            .map_err(|s| err(s.message().to_string()))?
            .into_inner();
        serde_json::from_str(&reply.inventory_json).map_err(|e| err(format!("unreadable inventory: {e}")))
    }

    /// Sends the CA's revocation list to a node.
    pub async fn push_revocations(
        &self,
        role: Role,
        node: &NodeAddress,
        serials: Vec<String>,
    ) -> Result<(), ManagerError> {
        let err = |reason: String| ManagerError::Node { node: format!("{role} {}", node.name), reason };
        let r = Revocations { protocol: bulwark_proto::PROTOCOL, serials };
        let result = match role {
            Role::Agent => self.agent(node).await?.update_revocations(r).await,
            Role::Transport => self.transport(node).await?.update_revocations(r).await,
            Role::Server => return Ok(()),
        };
        result.map(|_| ()).map_err(|s| err(s.message().to_string()))
    }

    /// Cancels a running task on its agent.
    pub async fn cancel(&self, agent: &NodeAddress, task_id: &str) -> Result<bool, ManagerError> {
        let r = TaskRef { protocol: bulwark_proto::PROTOCOL, task_id: task_id.into() };
        let reply = self.agent(agent).await?.cancel_task(r).await.map_err(|s| ManagerError::Node {
            node: format!("agent {}", agent.name),
            reason: s.message().to_string(),
        })?;
        Ok(reply.into_inner().found)
    }

    /// Runs a restore to its end: a data mover serving only that point, and the agent
    /// restoring from it.
    pub async fn run_restore(&self, req: RestoreRequest) -> TaskOutcome {
        let mut out = TaskOutcome { task_id: req.task_id.clone(), status: "failed".into(), ..Default::default() };
        let mut transport = match self.transport(&req.transport).await {
            Ok(t) => t,
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        };
        let spec = MoverSpec {
            protocol: bulwark_proto::PROTOCOL,
            task_id: req.task_id.clone(),
            repository: req.repository.clone(),
            password: req.password.clone().unwrap_or_default(),
            agent: req.agent.name.clone(),
            max_streams: 4,
            connect_timeout_s: 120,
            names: vec![req.name.clone()],
            restore_point: req.point.clone(),
            ..Default::default()
        };
        let started = match transport.start_mover(spec).await {
            Ok(s) => s.into_inner(),
            Err(s) => {
                out.error = Some(format!("transport {}: {}", req.transport.name, s.message()));
                return out;
            }
        };
        let mover = MoverRef { protocol: bulwark_proto::PROTOCOL, mover_id: started.mover_id.clone() };
        let restore = bulwark_proto::pb::RestoreSpec {
            protocol: bulwark_proto::PROTOCOL,
            task_id: req.task_id.clone(),
            point: req.point.clone(),
            target: req.target.clone(),
            overwrite: req.overwrite,
            paths: req.paths.clone(),
            safe: req.safe,
            mover: Some(MoverAddress {
                address: started.address,
                node: req.transport.name.clone(),
                ticket: started.ticket,
            }),
            streams: 4,
        };
        let result = async {
            let mut agent = self.agent(&req.agent).await.map_err(|e| e.to_string())?;
            let events = agent
                .run_restore(restore)
                .await
                .map_err(|s| format!("agent {}: {}", req.agent.name, s.message()))?
                .into_inner();
            follow(&req.agent.name, events, &mut out, |_| {}).await
        }
        .await;
        // The agent is done with the data mover either way; it ends when the agent hangs up.
        let _ = transport.stop_mover(mover).await;
        match result {
            Ok((status, error)) => {
                out.status = status;
                out.error = (!error.is_empty()).then_some(error);
            }
            Err(e) => out.error = Some(e),
        }
        out
    }

    /// Runs a task to its end. `progress` sees the agent's reports as they come. Whatever
    /// happens, the outcome says so: this never leaves a data mover running.
    pub async fn run_task(&self, req: TaskRequest, mut progress: impl FnMut(&Progress)) -> TaskOutcome {
        let mut out = TaskOutcome { task_id: req.task_id.clone(), status: "failed".into(), ..Default::default() };
        let fail = |mut out: TaskOutcome, e: String| {
            warn!("task {}: {e}", out.task_id);
            out.error = Some(e);
            out.status = "failed".into();
            out
        };
        let mut transport = match self.transport(&req.transport).await {
            Ok(t) => t,
            Err(e) => return fail(out, e.to_string()),
        };
        let mover_spec = MoverSpec {
            protocol: bulwark_proto::PROTOCOL,
            task_id: req.task_id.clone(),
            repository: req.repository.clone(),
            password: req.password.clone().unwrap_or_default(),
            agent: req.agent.name.clone(),
            throttle: Some(req.throttle.clone()),
            max_streams: req.spec.streams.max(1),
            connect_timeout_s: 120,
            names: req.spec.sources.iter().map(|s| s.name.clone()).collect(),
            restore_point: String::new(),
        };
        let started = match transport.start_mover(mover_spec).await {
            Ok(s) => s.into_inner(),
            Err(s) => return fail(out, format!("transport {}: {}", req.transport.name, s.message())),
        };
        info!("task {}: data mover {} at {}", req.task_id, started.mover_id, started.address);
        let mover = MoverRef { protocol: bulwark_proto::PROTOCOL, mover_id: started.mover_id.clone() };
        let mut spec = req.spec.clone();
        spec.protocol = bulwark_proto::PROTOCOL;
        spec.task_id = req.task_id.clone();
        spec.mover = Some(MoverAddress {
            address: started.address.clone(),
            node: req.transport.name.clone(),
            ticket: started.ticket.clone(),
        });
        let agent_result = async {
            let mut agent = self.agent(&req.agent).await.map_err(|e| e.to_string())?;
            let events = agent
                .run_task(spec)
                .await
                .map_err(|s| format!("agent {}: {}", req.agent.name, s.message()))?
                .into_inner();
            follow(&req.agent.name, events, &mut out, &mut progress).await
        }
        .await;
        // The agent is done (or gone): the data mover ends by itself once the agent's streams
        // close, unless the agent never connected; then it is stopped.
        let finished_cleanly = matches!(&agent_result, Ok((s, _)) if s != "failed" && s != "cancelled");
        let report =
            if finished_cleanly { transport.wait_mover(mover).await } else { transport.stop_mover(mover).await };
        let report = match report {
            Ok(r) => Some(r.into_inner()),
            Err(s) => {
                out.log.push(format!("transport {}: {}", req.transport.name, s.message()));
                None
            }
        };
        if let Some(r) = &report {
            out.received_bytes = r.received_bytes;
            out.mover_peak_rss_bytes = r.peak_rss_bytes;
            out.points = r.manifests_json.iter().filter_map(|m| serde_json::from_str(m).ok()).collect();
        }
        match agent_result {
            Err(e) => fail(out, e),
            Ok((status, error)) if status == "failed" || status == "cancelled" => {
                out.status = status;
                out.error = Some(error);
                out
            }
            Ok((status, error)) => match report {
                None => fail(out, format!("lost contact with transport {}", req.transport.name)),
                Some(r) if r.status != "committed" => fail(out, format!("data mover: {}", r.error)),
                Some(_) => {
                    out.status = status;
                    out.error = (!error.is_empty()).then_some(error);
                    out
                }
            },
        }
    }
}
