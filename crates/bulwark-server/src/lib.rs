//! The backup server: the certificate authority and node registration, the REST API, and the
//! job model's parts — the job scheduler, sessions, the resource scheduler, the backup manager
//! and its task driver (transport service, data mover, agent, in that order) — over the config
//! database, whose every query is in `store`.

pub mod answers;
pub mod api;
pub mod backup_manager;
pub mod db;
pub mod exports;
pub mod health;
pub mod job_scheduler;
pub mod job_sources;
pub mod job_update;
pub mod login_guard;
pub mod model;
mod openapi;
pub mod point_files;
mod reconcile;
pub mod registration;
pub mod resource_scheduler;
pub mod scale_out;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod session;
pub mod store;
pub mod task_driver;
pub mod ui;
pub mod views;
