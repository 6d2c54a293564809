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

/// The nice value of the threads that do a node's background work: preparing the next Raft
/// log segment (`log-prealloc`), writing applied batches out to sled (`state-write`) and
/// flushing it ahead of compaction (`state-flush`). Nothing waits on them in the write path
/// (the log's `fdatasync` is the durable point), so when the CPU is contended the Raft driver,
/// the transport and the ingress, which every acknowledgement waits on, should win it.
///
/// Measured with the queue bench on the 2-core box (2026-12-06, six pairs of runs side by
/// side, one binary): 64-client enqueue 1.01-1.18x with the three threads at 19, CPU per
/// enqueue 50-63 against 53-68 us (a writer that runs later writes bigger batches). Nice 10
/// was no clear gain (0.92-1.01x in three pairs).
///
/// What a low priority cannot do is starve them: each still gets its weight's share of a
/// contended CPU, and all the CPU once the latency-critical threads wait. A writer that falls
/// behind fills its buffer to `store::buffered::MAX_BUFFERED_BYTES`, and the driver then waits
/// for it (backpressure), which frees the CPU it needs; a late spare segment only means the log
/// grows a segment file for a while (`raft::log`). The cost: while the CPU is saturated by
/// work that does not wait on the writer (sync proxy calls at full load, say), the writer
/// gets about 1.5% of a CPU (weight 15 against 1,024 per busy thread), so queue writes slow
/// to what it can write out.
pub const BACKGROUND_NICE: i32 = 19;

/// Starts a named background thread that runs `f` at [`BACKGROUND_NICE`].
pub fn spawn_background<F, T>(name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_background_priority();
            f()
        })
}

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`]. On Linux the nice value
/// is per thread. Best effort: raising one's own nice value needs no privilege, and where it
/// fails the thread only keeps its priority.
fn lower_background_priority() {
    // SAFETY: setpriority takes and returns plain integers and touches no memory.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, this_thread_id(), BACKGROUND_NICE) };
}

/// The kernel's id of the calling thread (what `PRIO_PROCESS` calls a process on Linux).
fn this_thread_id() -> libc::id_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t }
}

#[cfg(test)]
mod tests {
    /// A background thread runs at BACKGROUND_NICE under its name, and the thread that
    /// spawned it keeps its own priority (nice is per thread on Linux, not per process).
    #[test]
    fn background_priority_is_per_thread() {
        // SAFETY: getpriority takes and returns plain integers.
        let nice_of_this_thread =
            || unsafe { libc::getpriority(libc::PRIO_PROCESS, super::this_thread_id()) };
        let before = nice_of_this_thread();
        let (nice, name) = super::spawn_background("bg-test", move || {
            let name = std::thread::current().name().map(str::to_string);
            (nice_of_this_thread(), name)
        })
        .expect("spawn")
        .join()
        .expect("thread");
        assert_eq!(nice, super::BACKGROUND_NICE);
        assert_eq!(name.as_deref(), Some("bg-test"));
        assert_eq!(nice_of_this_thread(), before);
    }
}
