//! Shared secrets in the replicated state: immutable versions (sealed before proposal), the
//! current-version pointer, enable/disable, rollback, soft delete with retention, per-tenant
//! push state, and the bounded audit log of every change and reveal.
//!
//! Deterministic like the rest of `state/`: values arrive already sealed (envelope: a fresh data
//! key per version, wrapped by the master key; see `seal.rs`), and every time is stamped into the
//! command. Layout (after the store's `s` prefix):
//! - `x/m/<name>` -> [`SecretRecord`]: settings, versions (oldest first), push state per tenant.
//!   One record per secret keeps rollback and push bookkeeping atomic; its size is bounded by
//!   [`MAX_VERSIONS_LIMIT`] x the admin API's value cap.
//! - `x/a/<seq:020>` -> [`AuditEntry`], `x/n` -> [`AuditCounter`]: the audit log. It keeps the
//!   newest [`MAX_AUDIT_ENTRIES`]; appending past the bound drops the oldest entry in the same
//!   batch (a ring, never a refusal: an audit that blocked writes would block rotation).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{decode, encode};
use crate::store::{keys, Store, StoreError, WriteBatch};

/// Versions kept per secret unless the secret says otherwise.
pub const DEFAULT_MAX_VERSIONS: u32 = 10;
/// Most versions a secret may keep (bounds the record size).
pub const MAX_VERSIONS_LIMIT: u32 = 50;
/// How long a soft-deleted secret stays restorable unless the secret says otherwise (7 days).
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// How long before expiry a secret is flagged as expiring unless it says otherwise (14 days).
pub const DEFAULT_EXPIRY_WARNING_MS: u64 = 14 * 24 * 3600 * 1000;
/// Audit entries kept; the oldest is dropped when a new one would exceed this.
pub const MAX_AUDIT_ENTRIES: u64 = 10_000;
/// Longest push error kept in the state (tenant answers can be long).
pub const MAX_PUSH_ERROR_BYTES: usize = 512;

/// The CPI Security Content artifact a secret becomes (cpi-api.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    UserCredential,
    SecureParameter,
    #[serde(rename = "oauth2_client_credential")]
    OAuth2ClientCredential,
}

impl SecretKind {
    /// The OData entity set on the tenant.
    pub fn cpi_set(self) -> &'static str {
        match self {
            SecretKind::UserCredential => "UserCredentials",
            SecretKind::SecureParameter => "SecureParameters",
            SecretKind::OAuth2ClientCredential => "OAuth2ClientCredentials",
        }
    }
}

/// Which tenants a secret is pushed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// Every tenant of the pool, including those added later.
    All,
    /// Only these tenants (names need not be registered yet).
    Tenants(Vec<String>),
}

impl Targets {
    pub fn includes(&self, tenant: &str) -> bool {
        match self {
            Targets::All => true,
            Targets::Tenants(t) => t.iter().any(|x| x == tenant),
        }
    }
}

/// A value sealed under its own data key; the data key sealed under the master key.
/// Both use the AAD `secret/<name>/<value_id>`, binding the ciphertext to its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedValue {
    /// Random id stamped by the handler (AAD component; unique per version).
    pub value_id: String,
    #[serde(with = "serde_bytes")]
    pub wrapped_key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// A new version as the handler built it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewVersion {
    pub sealed: SealedValue,
    /// Non-secret fields shown in answers (user, client id, token URL).
    pub summary: BTreeMap<String, String>,
    pub not_before_ms: Option<u64>,
    pub expires_ms: Option<u64>,
}

/// Settings sent with every PUT (they apply to the secret, not to one version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSettings {
    pub description: Option<String>,
    pub targets: Targets,
    pub max_versions: u32,
    pub retention_ms: u64,
    pub expiry_warning_ms: u64,
}

/// One immutable version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub version: u64,
    pub sealed: SealedValue,
    pub summary: BTreeMap<String, String>,
    pub not_before_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub enabled: bool,
    pub created_ms: u64,
    /// The log index that created it.
    pub index: u64,
}

/// What corral knows about one tenant's copy of a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushState {
    /// Version last confirmed DEPLOYED on the tenant (0: never).
    pub version: u64,
    pub pushed_ms: Option<u64>,
    /// Version the latest attempt pushed, and how many attempts it took so far.
    pub attempting_version: u64,
    pub attempts: u32,
    pub last_attempt_ms: Option<u64>,
    /// Error of the latest attempt, `None` once it succeeded.
    pub last_error: Option<String>,
    /// No retry before this (backoff after a failure), tenant-independent wall clock ms.
    pub next_attempt_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub kind: SecretKind,
    pub settings: SecretSettings,
    /// The version pushed to tenants and revealed by default.
    pub current: u64,
    pub next_version: u64,
    /// Oldest first.
    pub versions: Vec<Version>,
    /// Set while soft-deleted; the secret is purged once `purge_at_ms` has passed.
    pub deleted_ms: Option<u64>,
    pub purge_at_ms: Option<u64>,
    pub push: BTreeMap<String, PushState>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The log index of the last change.
    pub revision: u64,
}

impl SecretRecord {
    pub fn version(&self, v: u64) -> Option<&Version> {
        self.versions.iter().find(|x| x.version == v)
    }

    pub fn current_version(&self) -> Option<&Version> {
        self.version(self.current)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Created,
    NewVersion,
    Enabled,
    Disabled,
    RolledBack,
    Deleted,
    Restored,
    Purged,
    Revealed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub secret: String,
    pub action: AuditAction,
    pub version: Option<u64>,
    /// Which credential made the change (`admin`, `reveal`, `leader` for retention purges).
    pub actor: String,
    pub index: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCounter {
    /// Sequence number of the next entry.
    pub next: u64,
    /// Oldest entry still kept.
    pub first: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretResponse {
    Put {
        version: u64,
        created: bool,
    },
    /// The change was made; `current` is the current version afterwards.
    Done {
        current: u64,
    },
    NotFound,
    /// A precondition does not hold (deleted, kind changed, disabling the current version...).
    Conflict(String),
    /// Push result or reveal recorded.
    Recorded,
    Purged,
}

fn record_key(name: &str) -> Vec<u8> {
    keys::state(format!("x/m/{name}").as_bytes())
}

fn audit_key(seq: u64) -> Vec<u8> {
    keys::state(format!("x/a/{seq:020}").as_bytes())
}

fn audit_counter_key() -> Vec<u8> {
    keys::state(b"x/n")
}

/// The state commands of this module, carried by `state::Command::Secret`. Like `Command`,
/// variants are only ever appended (bincode encodes the variant index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretCommand {
    Put {
        name: String,
        kind: SecretKind,
        settings: SecretSettings,
        version: NewVersion,
        actor: String,
        now_ms: u64,
    },
    SetEnabled {
        name: String,
        version: u64,
        enabled: bool,
        actor: String,
        now_ms: u64,
    },
    Rollback {
        name: String,
        version: u64,
        actor: String,
        now_ms: u64,
    },
    Delete {
        name: String,
        actor: String,
        now_ms: u64,
    },
    Restore {
        name: String,
        actor: String,
        now_ms: u64,
    },
    Purge {
        name: String,
        actor: String,
        now_ms: u64,
        due_only: bool,
    },
    PushResult {
        name: String,
        tenant: String,
        version: u64,
        error: Option<String>,
        next_attempt_ms: u64,
        now_ms: u64,
    },
    Revealed {
        name: String,
        version: u64,
        actor: String,
        now_ms: u64,
    },
}

/// Applies secret commands to one batch.
pub struct Apply<'a> {
    pub kv: &'a dyn Store,
    pub batch: &'a mut WriteBatch,
}

fn conflict(m: &str) -> SecretResponse {
    SecretResponse::Conflict(m.to_string())
}

impl Apply<'_> {
    fn read(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        read_through(self.kv, self.batch, name)
    }

    /// Stamps a changed record with the log index and time of the change, then writes it.
    fn write_changed(&mut self, name: &str, rec: &mut SecretRecord, index: u64, now_ms: u64) {
        rec.updated_ms = now_ms;
        rec.revision = index;
        self.write(name, rec);
    }

    fn write(&mut self, name: &str, rec: &SecretRecord) {
        self.batch.put(record_key(name), encode(rec));
    }

    fn audit(
        &mut self,
        index: u64,
        at_ms: u64,
        secret: &str,
        action: AuditAction,
        version: Option<u64>,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut c: AuditCounter = match self.batch.read_through(self.kv, &audit_counter_key())? {
            Some(b) => {
                decode(&b).map_err(|e| StoreError::Corrupt(format!("audit counter: {e}")))?
            }
            None => AuditCounter::default(),
        };
        let entry = AuditEntry {
            seq: c.next,
            at_ms,
            secret: secret.to_string(),
            action,
            version,
            actor: actor.to_string(),
            index,
        };
        self.batch.put(audit_key(c.next), encode(&entry));
        c.next += 1;
        while c.next - c.first > MAX_AUDIT_ENTRIES {
            self.batch.delete(audit_key(c.first));
            c.first += 1;
        }
        self.batch.put(audit_counter_key(), encode(&c));
        Ok(())
    }

    pub fn apply(&mut self, index: u64, cmd: SecretCommand) -> Result<SecretResponse, StoreError> {
        match cmd {
            SecretCommand::Put {
                name,
                kind,
                settings,
                version,
                actor,
                now_ms,
            } => self.put(index, &name, kind, settings, version, &actor, now_ms),
            SecretCommand::SetEnabled {
                name,
                version,
                enabled,
                actor,
                now_ms,
            } => self.set_enabled(index, &name, version, enabled, &actor, now_ms),
            SecretCommand::Rollback {
                name,
                version,
                actor,
                now_ms,
            } => self.rollback(index, &name, version, &actor, now_ms),
            SecretCommand::Delete {
                name,
                actor,
                now_ms,
            } => self.delete(index, &name, &actor, now_ms),
            SecretCommand::Restore {
                name,
                actor,
                now_ms,
            } => self.restore(index, &name, &actor, now_ms),
            SecretCommand::Purge {
                name,
                actor,
                now_ms,
                due_only,
            } => self.purge(index, &name, &actor, now_ms, due_only),
            SecretCommand::PushResult {
                name,
                tenant,
                version,
                error,
                next_attempt_ms,
                now_ms,
            } => self.push_result(&name, &tenant, version, error, next_attempt_ms, now_ms),
            SecretCommand::Revealed {
                name,
                version,
                actor,
                now_ms,
            } => self.revealed(index, &name, version, &actor, now_ms),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        index: u64,
        name: &str,
        kind: SecretKind,
        settings: SecretSettings,
        new: NewVersion,
        actor: &str,
        now_ms: u64,
    ) -> Result<SecretResponse, StoreError> {
        let existing = self.read(name)?;
        let created = existing.is_none();
        let mut rec = match existing {
            Some(r) if r.deleted_ms.is_some() => {
                return Ok(conflict(
                    "the secret is deleted; restore it (or purge it) first",
                ))
            }
            Some(r) if r.kind != kind => {
                return Ok(SecretResponse::Conflict(format!(
                    "the secret is of kind {:?}; a version cannot change its kind",
                    r.kind
                )))
            }
            Some(r) => r,
            None => SecretRecord {
                kind,
                settings: settings.clone(),
                current: 0,
                next_version: 1,
                versions: Vec::new(),
                deleted_ms: None,
                purge_at_ms: None,
                push: BTreeMap::new(),
                created_ms: now_ms,
                updated_ms: now_ms,
                revision: index,
            },
        };
        let v = rec.next_version;
        rec.next_version += 1;
        rec.versions.push(Version {
            version: v,
            sealed: new.sealed,
            summary: new.summary,
            not_before_ms: new.not_before_ms,
            expires_ms: new.expires_ms,
            enabled: true,
            created_ms: now_ms,
            index,
        });
        rec.current = v;
        rec.settings = settings;
        let keep = rec.settings.max_versions.clamp(1, MAX_VERSIONS_LIMIT) as usize;
        while rec.versions.len() > keep {
            rec.versions.remove(0);
        }
        self.write_changed(name, &mut rec, index, now_ms);
        let action = if created {
            AuditAction::Created
        } else {
            AuditAction::NewVersion
        };
        self.audit(index, now_ms, name, action, Some(v), actor)?;
        Ok(SecretResponse::Put {
            version: v,
            created,
        })
    }

    /// Reads a secret that must exist and not be deleted.
    fn live(&self, name: &str) -> Result<Result<SecretRecord, SecretResponse>, StoreError> {
        Ok(match self.read(name)? {
            None => Err(SecretResponse::NotFound),
            Some(r) if r.deleted_ms.is_some() => {
                Err(conflict("the secret is deleted; restore it first"))
            }
            Some(r) => Ok(r),
        })
    }

    fn set_enabled(
        &mut self,
        index: u64,
        name: &str,
        version: u64,
        enabled: bool,
        actor: &str,
        now_ms: u64,
    ) -> Result<SecretResponse, StoreError> {
        let mut rec = match self.live(name)? {
            Ok(r) => r,
            Err(resp) => return Ok(resp),
        };
        if !enabled && rec.current == version {
            return Ok(conflict(
                "cannot disable the current version; roll back to another version first",
            ));
        }
        let Some(v) = rec.versions.iter_mut().find(|v| v.version == version) else {
            return Ok(SecretResponse::NotFound);
        };
        v.enabled = enabled;
        let current = rec.current;
        self.write_changed(name, &mut rec, index, now_ms);
        let action = if enabled {
            AuditAction::Enabled
        } else {
            AuditAction::Disabled
        };
        self.audit(index, now_ms, name, action, Some(version), actor)?;
        Ok(SecretResponse::Done { current })
    }

    fn rollback(
        &mut self,
        index: u64,
        name: &str,
        version: u64,
        actor: &str,
        now_ms: u64,
    ) -> Result<SecretResponse, StoreError> {
        let mut rec = match self.live(name)? {
            Ok(r) => r,
            Err(resp) => return Ok(resp),
        };
        match rec.version(version) {
            None => return Ok(SecretResponse::NotFound),
            Some(v) if !v.enabled => {
                return Ok(conflict("the version is disabled; enable it first"))
            }
            Some(_) => {}
        }
        rec.current = version;
        self.write_changed(name, &mut rec, index, now_ms);
        self.audit(
            index,
            now_ms,
            name,
            AuditAction::RolledBack,
            Some(version),
            actor,
        )?;
        Ok(SecretResponse::Done { current: version })
    }

    fn delete(
        &mut self,
        index: u64,
        name: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<SecretResponse, StoreError> {
        let mut rec = match self.live(name)? {
            Ok(r) => r,
            Err(resp) => return Ok(resp),
        };
        rec.deleted_ms = Some(now_ms);
        rec.purge_at_ms = Some(now_ms.saturating_add(rec.settings.retention_ms));
        let current = rec.current;
        self.write_changed(name, &mut rec, index, now_ms);
        self.audit(index, now_ms, name, AuditAction::Deleted, None, actor)?;
        Ok(SecretResponse::Done { current })
    }

    fn restore(
        &mut self,
        index: u64,
        name: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<SecretResponse, StoreError> {
        let Some(mut rec) = self.read(name)? else {
            return Ok(SecretResponse::NotFound);
        };
        if rec.deleted_ms.is_none() {
            return Ok(conflict("the secret is not deleted"));
        }
        rec.deleted_ms = None;
        rec.purge_at_ms = None;
        let current = rec.current;
        self.write_changed(name, &mut rec, index, now_ms);
        self.audit(index, now_ms, name, AuditAction::Restored, None, actor)?;
        Ok(SecretResponse::Done { current })
    }

    fn purge(
        &mut self,
        index: u64,
        name: &str,
        actor: &str,
        now_ms: u64,
        due_only: bool,
    ) -> Result<SecretResponse, StoreError> {
        let Some(rec) = self.read(name)? else {
            return Ok(SecretResponse::NotFound);
        };
        match rec.purge_at_ms {
            None => return Ok(conflict("only a deleted secret can be purged")),
            Some(at) if due_only && at > now_ms => {
                return Ok(conflict("the retention period has not passed"))
            }
            Some(_) => {}
        }
        self.batch.delete(record_key(name));
        self.audit(index, now_ms, name, AuditAction::Purged, None, actor)?;
        Ok(SecretResponse::Purged)
    }

    fn push_result(
        &mut self,
        name: &str,
        tenant: &str,
        version: u64,
        error: Option<String>,
        next_attempt_ms: u64,
        now_ms: u64,
    ) -> Result<SecretResponse, StoreError> {
        let Some(mut rec) = self.read(name)? else {
            return Ok(SecretResponse::NotFound);
        };
        let ps = rec.push.entry(tenant.to_string()).or_default();
        if ps.attempting_version != version {
            ps.attempting_version = version;
            ps.attempts = 0;
        }
        ps.attempts = ps.attempts.saturating_add(1);
        ps.last_attempt_ms = Some(now_ms);
        match error {
            None => {
                ps.version = version;
                ps.pushed_ms = Some(now_ms);
                ps.last_error = None;
                ps.next_attempt_ms = 0;
            }
            Some(mut e) => {
                if e.len() > MAX_PUSH_ERROR_BYTES {
                    let mut cut = MAX_PUSH_ERROR_BYTES;
                    while !e.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    e.truncate(cut);
                }
                ps.last_error = Some(e);
                ps.next_attempt_ms = next_attempt_ms;
            }
        }
        self.write(name, &rec);
        Ok(SecretResponse::Recorded)
    }

    fn revealed(
        &mut self,
        index: u64,
        name: &str,
        version: u64,
        actor: &str,
        now_ms: u64,
    ) -> Result<SecretResponse, StoreError> {
        let rec = match self.live(name)? {
            Ok(r) => r,
            Err(resp) => return Ok(resp),
        };
        if rec.version(version).is_none() {
            return Ok(SecretResponse::NotFound);
        }
        self.audit(
            index,
            now_ms,
            name,
            AuditAction::Revealed,
            Some(version),
            actor,
        )?;
        Ok(SecretResponse::Recorded)
    }
}

fn read_through(
    kv: &dyn Store,
    batch: &WriteBatch,
    name: &str,
) -> Result<Option<SecretRecord>, StoreError> {
    match batch.read_through(kv, &record_key(name))? {
        Some(b) => decode(&b)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("secret {name}: {e}"))),
        None => Ok(None),
    }
}

/// Reads one secret from the local state (no consistency barrier).
pub fn read_secret(kv: &dyn Store, name: &str) -> Result<Option<SecretRecord>, StoreError> {
    read_through(kv, &WriteBatch::default(), name)
}

/// Lists secrets by name, after `after`, at most `limit`.
pub fn list_secrets(
    kv: &dyn Store,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, SecretRecord)>, StoreError> {
    super::list_named(kv, &record_key(""), after, limit, "secret")
}

/// Lists audit entries oldest first, with sequence numbers above `after`, at most `limit`.
pub fn list_audit(
    kv: &dyn Store,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let from = match after {
        Some(a) => audit_key(a.saturating_add(1)),
        None => audit_key(0),
    };
    let mut end = keys::state(b"x/a/");
    end.push(0xff);
    let mut out = Vec::new();
    for (_, v) in kv.range(&from, &end, limit)? {
        out.push(decode(&v).map_err(|e| StoreError::Corrupt(format!("audit: {e}")))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
