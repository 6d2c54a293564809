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

/// Turns transparent huge pages off for this process; call first thing in `main`.
///
/// mimalloc asks for huge pages on its arenas and returns freed memory to the kernel after a
/// short delay, so under load the kernel zeroed a fresh 2 MiB page again and again: 10.6% of
/// all CPU in a profile of the queue bench went to `clear_page_erms`. In alternating runs
/// with THP off the bench's Raft baseline did 9,587 and 9,851 writes/s against 8,245 and
/// 6,775 with it on (p99 13 ms against 24-31), enqueues were unchanged, and peak RSS was
/// lower (benches/README.md).
///
/// Best effort: it runs before logging starts, and where the kernel refuses, the process
/// keeps the system's THP setting, which is only slower.
pub fn disable_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

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
