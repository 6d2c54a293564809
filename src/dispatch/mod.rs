//! Leader-side workers: they read the applied state, act on the outside world (tenants), and
//! record what happened through Raft. Each runs on every node but works only while that node
//! leads, so a leader change hands the work over with the log.

pub mod push;
pub mod scheduler;
pub mod secrets;
