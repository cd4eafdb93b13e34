//! The task driver: steps 4 to 8 of a task, one way for backups and restores. It asks the
//! transport service for a data mover, hands the agent its work with the mover's address and
//! ticket, follows the agent's progress, and takes the data mover's word for what was committed.
//! Every failure says whether a retry can help.

use std::sync::Arc;

use bulwark_proto::domain::{Failure, TaskStatus};
use bulwark_proto::pb::agent_client::AgentClient;
use bulwark_proto::pb::transport_client::TransportClient;
use bulwark_proto::pb::{
    self, task_event, InventoryRequest, MoverAddress, MoverRef, MoverSpec, Progress, Revocations, TaskRef, TaskSpec,
    Throttle,
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
    pub order: RestoreOrder,
}

/// What a restore restores where (a restore task keeps it in the config database).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoreOrder {
    pub point: String,
    /// The point's backup name (the only one its data mover serves).
    pub name: String,
    pub target: String,
    pub overwrite: bool,
    /// Only these paths (of a file-level point, or of the filesystem on `volume`).
    pub paths: Vec<String>,
    /// Files of a computer that is not trusted.
    pub safe: bool,
    /// Volume points restored by paths: the volume the files are on.
    pub volume: u32,
}

/// How a task ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskOutcome {
    pub task_id: String,
    pub status: TaskStatus,
    pub error: Option<String>,
    /// Failed: whether a retry can help.
    pub failure: Option<Failure>,
    /// The restore points the data mover committed.
    pub points: Vec<Manifest>,
    /// The agent's report per source.
    pub reports: Vec<serde_json::Value>,
    pub log: Vec<String>,
    pub received_bytes: u64,
    /// The data mover's peak resident memory.
    pub mover_peak_rss_bytes: u64,
}

impl Default for TaskOutcome {
    fn default() -> Self {
        TaskOutcome {
            task_id: String::new(),
            status: TaskStatus::Failed,
            error: None,
            failure: None,
            points: Vec::new(),
            reports: Vec::new(),
            log: Vec::new(),
            received_bytes: 0,
            mover_peak_rss_bytes: 0,
        }
    }
}

/// The agent's last word on a task.
struct Finish {
    status: TaskStatus,
    error: String,
    failure: Option<Failure>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("{node}: {reason}")]
    Node { node: String, reason: String },
}

/// Follows an agent's task events to the outcome it reports.
async fn follow(
    agent: &str,
    mut events: tonic::Streaming<bulwark_proto::pb::TaskEvent>,
    out: &mut TaskOutcome,
    mut progress: impl FnMut(&Progress),
) -> Result<Finish, (String, Failure)> {
    loop {
        match events.message().await {
            Ok(Some(e)) => match e.event {
                Some(task_event::Event::Progress(p)) => progress(&p),
                Some(task_event::Event::Log(l)) => out.log.push(l),
                Some(task_event::Event::SourceDone(d)) => {
                    out.reports.push(serde_json::from_str(&d.report_json).unwrap_or_default())
                }
                Some(task_event::Event::Finished(f)) => {
                    let status = TaskStatus::try_from(f.status())
                        .map_err(|e| (format!("agent {agent} reported no outcome: {e}"), Failure::Transient))?;
                    let failure = Failure::try_from(f.failure()).ok();
                    return Ok(Finish { status, error: f.error, failure });
                }
                None => {}
            },
            Ok(None) => return Err((format!("agent {agent} ended the task without an outcome"), Failure::Transient)),
            Err(s) => return Err((format!("lost contact with agent {agent}: {}", s.message()), Failure::Transient)),
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
        let mover = MoverSpec {
            max_streams: 4,
            names: vec![req.order.name.clone()],
            restore_point: req.order.point.clone(),
            ..mover_spec(&req.task_id, &req.agent, &req.repository, &req.password)
        };
        let restore = bulwark_proto::pb::RestoreSpec {
            protocol: bulwark_proto::PROTOCOL,
            task_id: req.task_id.clone(),
            point: req.order.point.clone(),
            target: req.order.target.clone(),
            overwrite: req.order.overwrite,
            paths: req.order.paths.clone(),
            safe: req.order.safe,
            volume: req.order.volume,
            mover: None,
            streams: 4,
        };
        self.drive(&req.task_id, &req.agent, &req.transport, mover, Work::Restore(restore), |_| {}).await
    }

    /// Runs a backup task to its end. `progress` sees the agent's reports as they come.
    pub async fn run_task(&self, req: TaskRequest, progress: impl FnMut(&Progress)) -> TaskOutcome {
        let mover = MoverSpec {
            throttle: Some(req.throttle.clone()),
            max_streams: req.spec.streams.max(1),
            names: req.spec.sources.iter().map(|s| s.name.clone()).collect(),
            ..mover_spec(&req.task_id, &req.agent, &req.repository, &req.password)
        };
        let mut spec = req.spec.clone();
        spec.protocol = bulwark_proto::PROTOCOL;
        spec.task_id = req.task_id.clone();
        self.drive(&req.task_id, &req.agent, &req.transport, mover, Work::Backup(spec), progress).await
    }

    /// Steps 4 to 8 of a task, backups and restores alike: a data mover from the transport
    /// service, the agent's work against it, the agent's events followed to its outcome, and the
    /// data mover's word on what was committed. Whatever happens, the outcome says so: this
    /// never leaves a data mover running.
    async fn drive(
        &self,
        task_id: &str,
        agent_node: &NodeAddress,
        transport_node: &NodeAddress,
        mover_spec: MoverSpec,
        mut work: Work,
        mut progress: impl FnMut(&Progress),
    ) -> TaskOutcome {
        let mut out = TaskOutcome { task_id: task_id.to_string(), ..Default::default() };
        let fail = |mut out: TaskOutcome, e: String, failure: Failure| {
            warn!("task {}: {e}", out.task_id);
            out.error = Some(e);
            out.status = TaskStatus::Failed;
            out.failure = Some(failure);
            out
        };
        let mut transport = match self.transport(transport_node).await {
            Ok(t) => t,
            Err(e) => return fail(out, e.to_string(), Failure::Transient),
        };
        let started = match transport.start_mover(mover_spec).await {
            Ok(s) => s.into_inner(),
            Err(s) => return fail(out, format!("transport {}: {}", transport_node.name, s.message()), failure_of(&s)),
        };
        info!("task {task_id}: data mover {} at {}", started.mover_id, started.address);
        let mover = MoverRef { protocol: bulwark_proto::PROTOCOL, mover_id: started.mover_id.clone() };
        let address = MoverAddress {
            address: started.address.clone(),
            node: transport_node.name.clone(),
            ticket: started.ticket,
        };
        let restoring = matches!(work, Work::Restore(_));
        let agent_result = async {
            let mut agent = self.agent(agent_node).await.map_err(|e| (e.to_string(), Failure::Transient))?;
            let rpc_err = |s: tonic::Status| (format!("agent {}: {}", agent_node.name, s.message()), failure_of(&s));
            let events = match &mut work {
                Work::Backup(spec) => {
                    spec.mover = Some(address);
                    agent.run_task(spec.clone()).await.map_err(rpc_err)?.into_inner()
                }
                Work::Restore(spec) => {
                    spec.mover = Some(address);
                    agent.run_restore(spec.clone()).await.map_err(rpc_err)?.into_inner()
                }
            };
            follow(&agent_node.name, events, &mut out, &mut progress).await
        }
        .await;
        // The agent is done (or gone): a backup's data mover ends by itself once the agent's
        // streams close and says what it committed; otherwise (a failed backup, any restore,
        // an agent that never connected) it is stopped.
        let finished_cleanly = matches!(&agent_result, Ok(f) if f.status.succeeded());
        let report = if finished_cleanly && !restoring {
            transport.wait_mover(mover).await
        } else {
            transport.stop_mover(mover).await
        };
        let report = match report {
            Ok(r) => Some(r.into_inner()),
            Err(s) => {
                out.log.push(format!("transport {}: {}", transport_node.name, s.message()));
                None
            }
        };
        if let Some(r) = &report {
            out.received_bytes = r.received_bytes;
            out.mover_peak_rss_bytes = r.peak_rss_bytes;
            out.points = r.manifests_json.iter().filter_map(|m| serde_json::from_str(m).ok()).collect();
        }
        match agent_result {
            Err((e, failure)) => fail(out, e, failure),
            Ok(f) if !f.status.succeeded() => {
                out.status = f.status;
                out.error = Some(f.error);
                out.failure = f.failure;
                out
            }
            Ok(f) if restoring => {
                out.status = f.status;
                out.error = (!f.error.is_empty()).then_some(f.error);
                out
            }
            Ok(f) => match report {
                None => fail(out, format!("lost contact with transport {}", transport_node.name), Failure::Transient),
                Some(r) if r.status() != pb::MoverStatus::Committed => {
                    let failure = Failure::try_from(r.failure()).unwrap_or(Failure::Transient);
                    fail(out, format!("data mover: {}", r.error), failure)
                }
                Some(_) => {
                    out.status = f.status;
                    out.error = (!f.error.is_empty()).then_some(f.error);
                    out
                }
            },
        }
    }
}

/// What every data mover is told: its task, its repository, the one agent it serves.
fn mover_spec(task_id: &str, agent: &NodeAddress, repository: &str, password: &Option<String>) -> MoverSpec {
    MoverSpec {
        protocol: bulwark_proto::PROTOCOL,
        task_id: task_id.to_string(),
        repository: repository.to_string(),
        password: password.clone().unwrap_or_default(),
        agent: agent.name.clone(),
        connect_timeout_s: 120,
        ..Default::default()
    }
}

/// What the agent does with a data mover.
enum Work {
    Backup(TaskSpec),
    Restore(bulwark_proto::pb::RestoreSpec),
}

/// Whether a refused call can succeed later, from its code: the peers answer a request that
/// cannot be honoured as it stands (a source or setting the agent refuses, a repository that
/// will not open) with a code of that kind, and a busy or failing node with one that may pass.
pub fn failure_of(s: &tonic::Status) -> Failure {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Unauthenticated => Failure::Permanent,
        _ => Failure::Transient,
    }
}
