//! Leader-side workers: tasks that run on every node but act only while it leads, reading the
//! applied state and writing their progress back through `Client` (so a new leader picks up
//! where the old one stopped).

pub mod secrets;
