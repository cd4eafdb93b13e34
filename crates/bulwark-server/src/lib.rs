//! The backup server's side of a task: the certificate authority and node registration, and
//! the backup manager's task driver (transport service, data mover, agent, in that order).

pub mod manager;
pub mod registration;
pub mod schedule;
