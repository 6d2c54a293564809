//! One tenant's identity and state: credentials, tokens, CSRF sessions, chaos switches, runtime
//! flows, counters, MPLs, security and integration content.
//!
//! All mutable state sits behind one `std::sync::Mutex` that is never held across an `.await`;
//! request handlers lock, read or change, and unlock. That keeps the emulator simple and its
//! behaviour deterministic, which matters more here than throughput.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use super::runtime::{FlowCounters, RuntimeFlow};
use super::{EmulatorError, TenantConfig, TenantDescription};

/// Roles (CPI role templates) the tenant knows about; the generated client and user hold all.
pub const ALL_ROLES: &[&str] = &[
    "ESBMessaging.send",
    "MonitoringDataRead",
    "MonitoringArtifactsDeploy",
    "WorkspacePackagesRead",
    "WorkspacePackagesEdit",
    "WorkspaceArtifactsDeploy",
];

/// An OAuth client or Basic user and its role set.
#[derive(Debug, Clone)]
pub struct Principal {
    pub secret: String,
    pub roles: HashSet<String>,
    /// Clients can fetch tokens; plain users only authenticate with Basic.
    pub is_client: bool,
}

/// Chaos switches, set through `PUT /_emulator/chaos`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Chaos {
    /// Tenant listener closed: connections refused.
    pub down: bool,
    /// Extra latency on every tenant request (token, API, runtime), ms.
    pub slow_ms: u64,
    /// Fraction (0..=1) of runtime requests answered with `runtime_error_status`.
    pub runtime_error_rate: f64,
    pub runtime_error_status: u16,
    /// Fraction (0..=1) of API requests answered with `api_error_status`.
    pub api_error_rate: f64,
    pub api_error_status: u16,
    /// Token endpoint answers 503.
    pub token_down: bool,
    /// Deployments (integration flows and security content) never leave DEPLOYING / STARTING.
    pub deploy_stuck: bool,
    /// Integration-flow deployments end in runtime ERROR.
    pub deploy_error: bool,
}

/// Per-message-id counters (see `runtime`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Requests carrying this id that reached a deployed flow.
    pub received: u64,
    /// Runs that completed the flow's work (the number to sum for exactly-once proofs).
    pub processed: u64,
    /// Requests skipped by the idempotent process call because the id had completed before.
    pub duplicates_skipped: u64,
    /// Runs that failed (the `fail` behaviour). Injected chaos errors happen before routing and
    /// are not counted.
    pub failed: u64,
    /// Requests refused before running: 503 (worker slots exhausted, overload behaviour) or 413.
    pub rejected: u64,
}

/// Cap on distinct message ids tracked by the counters.
pub const MAX_COUNTED_MESSAGE_IDS: usize = 1_000_000;

#[derive(Default)]
pub struct State {
    pub principals: HashMap<String, Principal>,
    /// access token -> (client id, expiry in tenant ms)
    pub tokens: HashMap<String, (String, i64)>,
    /// JSESSIONID -> CSRF token
    pub csrf_sessions: HashMap<String, String>,
    pub chaos: Chaos,
    pub flows: BTreeMap<String, RuntimeFlow>,
    /// flow name -> message id -> completion time (tenant ms)
    pub idempotent_done: HashMap<String, HashMap<String, i64>>,
    pub counters: HashMap<String, Counters>,
    pub counters_truncated: bool,
    pub totals: Counters,
    pub flow_counters: BTreeMap<String, FlowCounters>,
    pub mpls: super::mpl::MplStore,
    pub security: super::security::SecurityStore,
    pub content: super::content::ContentStore,
}

pub struct Tenant {
    pub cfg: TenantConfig,
    pub addr: SocketAddr,
    pub control_addr: SocketAddr,
    pub client_id: String,
    pub client_secret: String,
    pub basic_user: String,
    pub basic_password: String,
    pub(crate) state: Mutex<State>,
    pub(crate) slots: Arc<Semaphore>,
    /// Per (flow, message id) locks serialising concurrent duplicates in the idempotent call.
    pub(crate) idem_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) up_desired: watch::Sender<bool>,
    pub(crate) up_actual: watch::Sender<bool>,
}

/// Random string from URL-safe base64 of `n_bytes` random bytes.
pub fn random_b64(n_bytes: usize) -> String {
    let mut b = vec![0u8; n_bytes];
    rand::thread_rng().fill(&mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Random lowercase hex of `n_bytes` random bytes.
pub fn random_hex(n_bytes: usize) -> String {
    let mut b = vec![0u8; n_bytes];
    rand::thread_rng().fill(&mut b[..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A CPI-style message GUID: 28 URL-safe characters starting with `A`.
pub fn message_guid() -> String {
    let s = random_b64(21);
    format!("A{}", &s[1..])
}

impl Tenant {
    pub(crate) fn new(
        cfg: TenantConfig,
        addr: SocketAddr,
        control_addr: SocketAddr,
    ) -> Result<Self, EmulatorError> {
        if cfg.worker_slots == 0 {
            return Err(EmulatorError::Config(
                "worker_slots must be at least 1".into(),
            ));
        }
        let client_id = cfg.client_id.clone().unwrap_or_else(|| {
            format!(
                "sb-corral-{}-{}!b{}|it!b1",
                cfg.name,
                random_hex(4),
                addr.port()
            )
        });
        let client_secret = cfg.client_secret.clone().unwrap_or_else(|| {
            let mut b = [0u8; 24];
            rand::thread_rng().fill(&mut b[..]);
            format!("{}$x=", base64::engine::general_purpose::STANDARD.encode(b))
        });
        let basic_user = cfg.basic_user.clone().unwrap_or_else(|| {
            format!(
                "S00{}",
                rand::thread_rng().gen_range(10_000_000u64..99_999_999)
            )
        });
        let basic_password = cfg.basic_password.clone().unwrap_or_else(|| random_b64(18));
        let all: HashSet<String> = ALL_ROLES.iter().map(|s| s.to_string()).collect();
        let mut st = State::default();
        st.principals.insert(
            client_id.clone(),
            Principal {
                secret: client_secret.clone(),
                roles: all.clone(),
                is_client: true,
            },
        );
        st.principals.insert(
            basic_user.clone(),
            Principal {
                secret: basic_password.clone(),
                roles: all,
                is_client: false,
            },
        );
        st.chaos.runtime_error_status = 500;
        st.chaos.api_error_status = 500;
        let t = Tenant {
            slots: Arc::new(Semaphore::new(cfg.worker_slots)),
            cfg,
            addr,
            control_addr,
            client_id,
            client_secret,
            basic_user,
            basic_password,
            state: Mutex::new(st),
            idem_locks: Mutex::new(HashMap::new()),
            up_desired: watch::channel(true).0,
            up_actual: watch::channel(true).0,
        };
        let now = t.now_ms();
        {
            let mut st = t.lock();
            for (name, spec) in t.cfg.flows.clone() {
                let mut spec = spec;
                spec.normalise().map_err(|e| EmulatorError::FlowSpec {
                    spec: name.clone(),
                    reason: e,
                })?;
                st.flows
                    .insert(name.clone(), RuntimeFlow::direct(&name, spec, now));
            }
        }
        Ok(t)
    }

    /// Lock the state; a poisoned lock (a panicking handler) is recovered, not propagated.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tenant's clock (wall clock plus configured skew), epoch ms.
    pub fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.cfg.clock_skew_ms
    }

    pub fn base_url(&self) -> String {
        format!("http://{}:{}", self.cfg.host, self.addr.port())
    }

    pub fn api_url(&self) -> String {
        format!("{}/api/v1", self.base_url())
    }

    pub fn control_url(&self) -> String {
        format!(
            "http://{}:{}/_emulator",
            self.cfg.host,
            self.control_addr.port()
        )
    }

    pub fn description(&self) -> TenantDescription {
        TenantDescription {
            name: self.cfg.name.clone(),
            runtime_url: self.base_url(),
            api_url: self.api_url(),
            token_url: format!("{}/oauth/token", self.base_url()),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            control_url: self.control_url(),
            basic_user: self.basic_user.clone(),
            basic_password: self.basic_password.clone(),
        }
    }

    pub fn chaos(&self) -> Chaos {
        self.lock().chaos.clone()
    }

    /// Worker slots currently held by running flows.
    pub fn busy_worker_slots(&self) -> usize {
        self.cfg
            .worker_slots
            .saturating_sub(self.slots.available_permits())
    }

    /// Counters summed over all message ids (and requests without one).
    pub fn totals(&self) -> Counters {
        self.lock().totals
    }

    /// Counters for one message id.
    pub fn counters_for(&self, message_id: &str) -> Counters {
        self.lock()
            .counters
            .get(message_id)
            .copied()
            .unwrap_or_default()
    }
}
