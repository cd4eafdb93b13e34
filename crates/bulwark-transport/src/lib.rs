//! The repository host's side of a backup: the transport service, which starts one data mover
//! per task, and the data mover, which receives one agent's stream and writes the repository.

pub mod browse;
pub mod data_mover;
pub mod frames;
pub mod service;
pub mod throttle;

pub use data_mover::{MoverConfig, MoverOutcome};
pub use service::{TransportConfig, TransportService};
