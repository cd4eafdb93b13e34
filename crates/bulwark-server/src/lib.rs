#![recursion_limit = "512"]

//! The backup server's side of a task: the certificate authority and node registration, and
//! the backup manager's task driver (transport service, data mover, agent, in that order).

pub mod api;
pub mod backup_manager;
pub mod db;
pub mod health;
pub mod job_sources;
pub mod job_update;
pub mod login_guard;
pub mod manager;
pub mod model;
mod openapi;
pub mod registration;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod store;
pub mod views;
