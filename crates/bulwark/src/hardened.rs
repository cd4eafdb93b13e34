//! `bulwark hardened-service`: wiring of the immutability service (`bulwark-hardened`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bulwark_hardened::{ServerConfig, Service, ServiceConfig, DEFAULT_MAX_LOCK_DAYS};
use clap::Args;

#[derive(Args)]
pub struct HardenedServiceArgs {
    /// A directory holding hardened repositories; a repository is served if its real path
    /// (symbolic links resolved) lies under a root. Repeatable.
    #[arg(long = "root", required = true, value_name = "DIR")]
    roots: Vec<PathBuf>,
    /// The Unix socket to listen on (created mode 0660, owned by root and --group; an
    /// existing socket no service listens on is replaced). Keep its directory root's alone,
    /// /run/bulwark-hardened say.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Where the ledgers of lock dates are kept, one file per repository (mode 0644): created
    /// if missing; must lie outside every --root and be writable by root alone.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// The group whose members may connect: the group of the user the transport node and its
    /// data movers run as. Without it only root may connect.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// The furthest date a lock may reach, in days from now.
    #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_MAX_LOCK_DAYS)]
    max_days: u32,
}

pub fn run(a: HardenedServiceArgs) -> Result<ExitCode> {
    crate::nodes::init_logging();
    bulwark_hardened::check_privileges()?;
    let group = a.group.as_deref().map(bulwark_hardened::group_id).transpose()?;
    let service = Service::open(ServiceConfig { roots: a.roots, state_dir: a.state, max_lock_days: a.max_days })?;
    let server = bulwark_hardened::start(Arc::new(service), &ServerConfig::new(a.socket, group))?;
    println!("{}", serde_json::json!({ "role": "hardened-service", "socket": server.socket() }));
    while !crate::CANCEL.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    tracing::info!("immutability service stopping; locks stay in force");
    server.stop();
    Ok(ExitCode::SUCCESS)
}
