//! Data-driven tests of the secret commands through the real state machine.

use super::*;
use crate::state::harness::Harness;
use crate::state::{Command, Response};

type T = Harness;

/// The secret tests' helpers on the shared harness.
trait Fixture {
    fn run(&mut self, cmd: SecretCommand) -> SecretResponse;
    fn rec(&self, name: &str) -> SecretRecord;
    fn audit_actions(&self) -> Vec<AuditAction>;
}

impl Fixture for Harness {
    fn run(&mut self, cmd: SecretCommand) -> SecretResponse {
        match self.apply(Command::Secret(cmd)) {
            Response::Secret(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn rec(&self, name: &str) -> SecretRecord {
        read_secret(&*self.kv, name).unwrap().unwrap()
    }

    fn audit_actions(&self) -> Vec<AuditAction> {
        list_audit(&*self.kv, None, 1000)
            .unwrap()
            .iter()
            .map(|e| e.action)
            .collect()
    }
}

fn settings(max_versions: u32) -> SecretSettings {
    SecretSettings {
        description: None,
        targets: Targets::All,
        max_versions,
        retention_ms: 1_000,
        expiry_warning_ms: DEFAULT_EXPIRY_WARNING_MS,
    }
}

fn put(name: &str, tag: &str, max_versions: u32, now_ms: u64) -> SecretCommand {
    SecretCommand::Put {
        name: name.into(),
        kind: SecretKind::UserCredential,
        settings: settings(max_versions),
        version: NewVersion {
            sealed: SealedValue {
                value_id: tag.into(),
                wrapped_key: vec![1],
                ciphertext: tag.as_bytes().to_vec(),
            },
            summary: BTreeMap::new(),
            not_before_ms: None,
            expires_ms: None,
        },
        actor: "admin".into(),
        now_ms,
    }
}

/// Versions number up from 1, the newest is current, the oldest are dropped past
/// `max_versions`, a version cannot change the kind, and each change is audited.
#[test]
fn versions_are_immutable_numbered_and_bounded() {
    let mut t = T::new();
    assert_eq!(
        t.run(put("s", "a", 2, 1)),
        SecretResponse::Put {
            version: 1,
            created: true
        }
    );
    assert_eq!(
        t.run(put("s", "b", 2, 2)),
        SecretResponse::Put {
            version: 2,
            created: false
        }
    );
    t.run(put("s", "c", 2, 3));
    let r = t.rec("s");
    assert_eq!(r.current, 3);
    assert_eq!(
        r.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 3]
    );
    let SecretCommand::Put {
        name,
        settings,
        version,
        actor,
        now_ms,
        ..
    } = put("s", "d", 2, 4)
    else {
        unreachable!()
    };
    let other_kind = SecretCommand::Put {
        name,
        kind: SecretKind::SecureParameter,
        settings,
        version,
        actor,
        now_ms,
    };
    assert!(matches!(t.run(other_kind), SecretResponse::Conflict(_)));
    assert_eq!(
        t.audit_actions(),
        [
            AuditAction::Created,
            AuditAction::NewVersion,
            AuditAction::NewVersion
        ]
    );
}

/// Rollback makes an older enabled version current; the current version cannot be disabled;
/// a disabled version cannot become current; unknown versions are not found.
#[test]
fn rollback_and_enable_rules() {
    let mut t = T::new();
    t.run(put("s", "a", 10, 1));
    t.run(put("s", "b", 10, 2));
    let dis = |v, enabled| SecretCommand::SetEnabled {
        name: "s".into(),
        version: v,
        enabled,
        actor: "admin".into(),
        now_ms: 3,
    };
    let rb = |v| SecretCommand::Rollback {
        name: "s".into(),
        version: v,
        actor: "admin".into(),
        now_ms: 4,
    };
    assert!(matches!(t.run(dis(2, false)), SecretResponse::Conflict(_)));
    assert_eq!(t.run(dis(1, false)), SecretResponse::Done { current: 2 });
    assert!(matches!(t.run(rb(1)), SecretResponse::Conflict(_)));
    assert_eq!(t.run(dis(1, true)), SecretResponse::Done { current: 2 });
    assert_eq!(t.run(rb(1)), SecretResponse::Done { current: 1 });
    assert_eq!(t.rec("s").current, 1);
    assert_eq!(t.run(rb(9)), SecretResponse::NotFound);
}

/// Soft delete blocks changes, restore undoes it, purge needs a deleted secret and (for the
/// leader's retention purge) a passed retention period.
#[test]
fn delete_restore_purge() {
    let mut t = T::new();
    t.run(put("s", "a", 10, 1));
    let del = SecretCommand::Delete {
        name: "s".into(),
        actor: "admin".into(),
        now_ms: 10,
    };
    let purge = |now_ms, due_only| SecretCommand::Purge {
        name: "s".into(),
        actor: "leader".into(),
        now_ms,
        due_only,
    };
    assert!(matches!(
        t.run(purge(10, false)),
        SecretResponse::Conflict(_)
    ));
    assert_eq!(t.run(del.clone()), SecretResponse::Done { current: 1 });
    assert_eq!(t.rec("s").purge_at_ms, Some(1_010));
    assert!(matches!(
        t.run(put("s", "b", 10, 11)),
        SecretResponse::Conflict(_)
    ));
    let restore = SecretCommand::Restore {
        name: "s".into(),
        actor: "admin".into(),
        now_ms: 12,
    };
    assert_eq!(t.run(restore), SecretResponse::Done { current: 1 });
    t.run(del);
    assert!(matches!(
        t.run(purge(500, true)),
        SecretResponse::Conflict(_)
    ));
    assert_eq!(t.run(purge(1_010, true)), SecretResponse::Purged);
    assert!(read_secret(&*t.kv, "s").unwrap().is_none());
    assert_eq!(t.run(purge(2_000, true)), SecretResponse::NotFound);
}

/// Push results count attempts per version, keep the (truncated) last error and the backoff,
/// and a success records the deployed version.
#[test]
fn push_results_track_attempts_and_errors() {
    let mut t = T::new();
    t.run(put("s", "a", 10, 1));
    let res = |version, error: Option<String>, now_ms| SecretCommand::PushResult {
        name: "s".into(),
        tenant: "t1".into(),
        version,
        error,
        next_attempt_ms: now_ms + 100,
        now_ms,
    };
    t.run(res(1, Some("x".repeat(2_000)), 5));
    t.run(res(1, Some("down".into()), 6));
    let ps = t.rec("s").push["t1"].clone();
    assert_eq!((ps.version, ps.attempts, ps.next_attempt_ms), (0, 2, 106));
    assert_eq!(ps.last_error.as_deref(), Some("down"));
    t.run(res(1, None, 7));
    let ps = t.rec("s").push["t1"].clone();
    assert_eq!((ps.version, ps.attempts, ps.pushed_ms), (1, 3, Some(7)));
    assert!(ps.last_error.is_none());
    t.run(put("s", "b", 10, 8));
    t.run(res(2, Some("y".repeat(2_000)), 9));
    let ps = t.rec("s").push["t1"].clone();
    assert_eq!((ps.version, ps.attempting_version, ps.attempts), (1, 2, 1));
    assert_eq!(ps.last_error.unwrap().len(), MAX_PUSH_ERROR_BYTES);
    let gone = SecretCommand::PushResult {
        name: "nope".into(),
        tenant: "t1".into(),
        version: 1,
        error: None,
        next_attempt_ms: 0,
        now_ms: 1,
    };
    assert_eq!(t.run(gone), SecretResponse::NotFound);
}

/// The audit log is a ring: past MAX_AUDIT_ENTRIES the oldest entries are dropped and the
/// sequence keeps counting.
#[test]
fn audit_log_is_bounded() {
    let mut t = T::new();
    t.run(put("s", "a", 10, 1));
    for i in 0..MAX_AUDIT_ENTRIES + 4 {
        let r = t.run(SecretCommand::Revealed {
            name: "s".into(),
            version: 1,
            actor: "reveal".into(),
            now_ms: i,
        });
        assert_eq!(r, SecretResponse::Recorded);
    }
    let all = list_audit(&*t.kv, None, 20_000).unwrap();
    assert_eq!(all.len() as u64, MAX_AUDIT_ENTRIES);
    assert_eq!(all[0].seq, 5);
    assert_eq!(all.last().unwrap().seq, MAX_AUDIT_ENTRIES + 4);
    let page = list_audit(&*t.kv, Some(MAX_AUDIT_ENTRIES + 2), 10).unwrap();
    assert_eq!(page.len(), 2);
}

/// Replaying the same commands gives the same answers and the same state bytes.
#[test]
fn replay_is_deterministic() {
    let run = || {
        let mut t = T::new();
        let answers = vec![
            t.run(put("s", "a", 3, 1)),
            t.run(put("s", "b", 3, 2)),
            t.run(SecretCommand::Rollback {
                name: "s".into(),
                version: 1,
                actor: "admin".into(),
                now_ms: 3,
            }),
        ];
        let state: Vec<_> =
            t.kv.scan_prefix(&keys::state(b"x/"))
                .map(|r| r.unwrap())
                .collect();
        (answers, state)
    };
    assert_eq!(run(), run());
}
