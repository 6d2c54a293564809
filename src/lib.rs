//! corral: an active-active layer in front of a pool of SAP Cloud Integration tenants.
//!
//! The crate is a library with one thin binary (`src/main.rs`) so that integration tests and
//! benchmarks reach the same code the binary runs. Layers, each importing only those below it
//! (see `docs/architecture.md`):
//!
//! - `node`, `dev`, `init`, `status`: the commands, wiring everything together;
//! - `api` (admin HTTP), `ingress` (data-plane HTTP) and `dispatch` (leader-side workers);
//! - `client`: the one way into consensus (write, linearizable read barrier);
//! - `raft` (the only owner of `RawNode`), `transport` (peer frames over mutual TLS) and
//!   `snapshot` (streams snapshot files between nodes over the transport);
//! - `state` (the deterministic state machine), `store` (the storage trait and sled), `seal`.

/// The allocator of every binary linking corral (the node, tests, benches). Profiles of the
/// queue benchmark put ~30% of the Raft driver threads' CPU in glibc malloc (sled allocates
/// and frees node copies on every write) and RSS grew to 5 GB under a million-message
/// backlog; mimalloc serves that pattern from per-thread free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod client;
pub mod config;
pub mod dev;
pub mod dispatch;
pub mod emulator;
pub mod ingress;
pub mod init;
pub mod metrics;
pub mod node;
pub mod pool;
pub mod raft;
pub mod recurrence;
pub mod seal;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod store;
pub mod transport;
