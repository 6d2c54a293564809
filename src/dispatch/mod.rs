//! Leader-side workers: tasks that run on every node but act only while it leads, turning
//! replicated state into proposals and tenant calls.

pub mod scheduler;
