//! Test-only: the real state machine over a temporary sled store, applying commands the way
//! the Raft driver does (consecutive indexes, one store batch per Ready). Shared by the
//! data-driven tests of the queue, schedule and secret commands; each adds its own helpers
//! through a local trait (`Fixture`), so their method names never meet.

use std::sync::Arc;

use super::{decode, encode, Command, CorralState, Response};
use crate::raft::StateMachine;
use crate::store::{SledStore, Store, WriteBatch};

pub struct Harness {
    pub kv: Arc<dyn Store>,
    /// The state machine's queue indexes, for the read functions handlers call.
    pub ix: crate::state::queue::SharedIndex,
    sm: CorralState,
    index: u64,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let sm = CorralState::new(kv.clone()).unwrap();
        Harness {
            ix: sm.queue_index(),
            sm,
            kv,
            index: 0,
            _dir: dir,
        }
    }

    /// Applies several commands into one batch (as one Ready does).
    pub fn apply_batch(&mut self, cmds: Vec<Command>) -> Vec<Response> {
        let mut batch = WriteBatch::default();
        let mut out = Vec::new();
        for cmd in cmds {
            self.index += 1;
            let bytes = self.sm.apply(self.index, &encode(&cmd), &mut batch);
            out.push(decode::<Response>(&bytes).unwrap());
        }
        self.kv.write(batch).unwrap();
        out
    }

    pub fn apply(&mut self, cmd: Command) -> Response {
        self.apply_batch(vec![cmd]).pop().unwrap()
    }
}
