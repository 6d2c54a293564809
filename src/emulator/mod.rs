//! CPI tenant emulator: N independent, in-process imitations of SAP Cloud Integration tenants.
//!
//! Owns the `corral emulate` entry point ([`EmulateArgs`], [`run`]) and the in-process API used by
//! tests ([`spawn_tenant`], [`TenantConfig`], [`TenantHandle`]). Each tenant has its own listener
//! (token endpoint, `/api/v1` management API, `/http/...` runtime), its own control listener
//! (`/_emulator`, never goes down so tests can always switch chaos off again), its own credentials
//! and its own state. The behaviour it imitates is described in `shared/cpi-api.md`; the choices made
//! where that reference is silent are listed in `docs/emulator.md`.
//!
//! This module tree imports nothing else from the crate so it can be merged independently.

mod api;
pub mod auth;
pub mod content;
pub mod control;
pub mod csrf;
pub mod mpl;
pub mod odata;
pub mod runtime;
pub mod security;
mod server;
mod tenant;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use runtime::{Behaviour, FlowSpec};
pub use tenant::{Chaos, Counters, Tenant};

/// Typical XSUAA client-credentials token lifetime (`expires_in`), in seconds.
pub const DEFAULT_TOKEN_LIFETIME_S: u64 = 43_199;
/// Default delay between a 202 on a deploy-type call and the artifact reaching its final state.
pub const DEFAULT_DEPLOY_DELAY_MS: u64 = 500;
/// Default number of concurrent runtime executions per tenant (worker slots).
pub const DEFAULT_WORKER_SLOTS: usize = 64;
/// Default idempotent-process-call retention (CPI: 90 days), in seconds.
pub const DEFAULT_IDEMPOTENCY_RETENTION_S: u64 = 90 * 24 * 3600;
/// Default header carrying the message id used for counters and idempotency.
pub const DEFAULT_MESSAGE_ID_HEADER: &str = "X-Message-ID";

/// Errors at the emulator's public boundary.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid flow spec {spec:?}: {reason}")]
    FlowSpec { spec: String, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// `corral emulate`: run N emulated CPI tenants.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulateArgs {
    /// Number of independent tenants to start.
    #[arg(long, default_value_t = 1)]
    pub tenants: u16,
    /// Port of the first tenant (tenant i listens on base_port + i). 0 = ephemeral ports.
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
    /// Port of the first tenant's control API (tenant i: control_base_port + i). Default: ephemeral.
    #[arg(long)]
    pub control_base_port: Option<u16>,
    /// Address to bind and to advertise in the printed URLs.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Tenant name prefix; tenant i is named "<prefix><i+1>".
    #[arg(long, default_value = "tenant")]
    pub name_prefix: String,
    /// OAuth2 access-token lifetime (`expires_in`), seconds.
    #[arg(long, default_value_t = DEFAULT_TOKEN_LIFETIME_S)]
    pub token_lifetime_s: u64,
    /// Delay before deployed security content / integration flows reach their final state, ms.
    #[arg(long, default_value_t = DEFAULT_DEPLOY_DELAY_MS)]
    pub deploy_delay_ms: u64,
    /// Require the CSRF token for bearer-token writes too (default: only for Basic auth, as observed).
    #[arg(long)]
    pub strict_csrf: bool,
    /// Concurrent runtime executions per tenant; beyond it the runtime answers 503.
    #[arg(long, default_value_t = DEFAULT_WORKER_SLOTS)]
    pub worker_slots: usize,
    /// Delay before a message processing log becomes visible in the API, ms.
    #[arg(long, default_value_t = 0)]
    pub mpl_visibility_delay_ms: u64,
    /// Pre-deployed runtime flow, repeatable: NAME=BEHAVIOUR[:ARG][,idempotent][,path=/p][,header=H].
    /// BEHAVIOUR: echo | status:CODE | delay:MS | fail | overload. Example: --flow orders=echo,idempotent
    #[arg(long = "flow", value_name = "NAME=SPEC")]
    pub flows: Vec<String>,
    /// Do not deploy the default echo flow at /http/echo.
    #[arg(long)]
    pub no_default_flow: bool,
}

/// Configuration of one in-process tenant. Build with [`TenantConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub name: String,
    /// Address to bind; also used in the advertised URLs.
    pub host: String,
    /// Tenant port (token, API, runtime); 0 = ephemeral.
    pub port: u16,
    /// Control API port; 0 = ephemeral.
    pub control_port: u16,
    pub token_lifetime_s: u64,
    pub deploy_delay_ms: u64,
    pub strict_csrf: bool,
    pub worker_slots: usize,
    pub mpl_visibility_delay_ms: u64,
    pub idempotency_retention_s: u64,
    /// Simulated clock skew of this tenant, ms (added to every timestamp it produces).
    pub clock_skew_ms: i64,
    /// OAuth client id / secret; generated when `None`.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// Basic-auth user (a "BTP user"); generated when `None`.
    pub basic_user: Option<String>,
    pub basic_password: Option<String>,
    /// Runtime flows deployed at start: (name, spec).
    pub flows: Vec<(String, FlowSpec)>,
}

impl TenantConfig {
    /// Defaults: ephemeral ports on 127.0.0.1, generated credentials, one echo flow at `/http/echo`.
    pub fn new(name: impl Into<String>) -> Self {
        TenantConfig {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 0,
            control_port: 0,
            token_lifetime_s: DEFAULT_TOKEN_LIFETIME_S,
            deploy_delay_ms: DEFAULT_DEPLOY_DELAY_MS,
            strict_csrf: false,
            worker_slots: DEFAULT_WORKER_SLOTS,
            mpl_visibility_delay_ms: 0,
            idempotency_retention_s: DEFAULT_IDEMPOTENCY_RETENTION_S,
            clock_skew_ms: 0,
            client_id: None,
            client_secret: None,
            basic_user: None,
            basic_password: None,
            flows: vec![("echo".into(), FlowSpec::echo("/echo"))],
        }
    }
}

/// The JSON line `corral emulate` prints per tenant; corral's tenant pool registers from it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantDescription {
    pub name: String,
    /// Base URL where `/http/...` lives.
    pub runtime_url: String,
    /// Management API service root, ends with `/api/v1`.
    pub api_url: String,
    /// OAuth2 token endpoint, ends with `/oauth/token`.
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Emulator control API (no auth), ends with `/_emulator`.
    pub control_url: String,
    /// Basic-auth user accepted on the API and runtime.
    pub basic_user: String,
    pub basic_password: String,
}

/// A running tenant. Dropping it (or calling [`TenantHandle::shutdown`]) stops its listeners.
pub struct TenantHandle {
    tenant: Arc<Tenant>,
    stop: tokio::sync::watch::Sender<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TenantHandle {
    pub fn description(&self) -> TenantDescription {
        self.tenant.description()
    }
    /// Address of the tenant listener (token, API, runtime).
    pub fn addr(&self) -> SocketAddr {
        self.tenant.addr
    }
    /// Address of the control listener.
    pub fn control_addr(&self) -> SocketAddr {
        self.tenant.control_addr
    }
    /// Direct access to the tenant's state (for in-process assertions).
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }
    /// Stop both listeners and wait for their tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(());
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for TenantHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Start one tenant: bind both listeners (port 0 = ephemeral) and serve until the handle drops.
pub async fn spawn_tenant(cfg: TenantConfig) -> Result<TenantHandle, EmulatorError> {
    server::spawn(cfg).await
}

/// Parse a `--flow` value: `NAME=BEHAVIOUR[:ARG][,idempotent][,path=/p][,header=H]`.
pub fn parse_flow_arg(s: &str) -> Result<(String, FlowSpec), EmulatorError> {
    let bad = |reason: &str| EmulatorError::FlowSpec {
        spec: s.to_string(),
        reason: reason.to_string(),
    };
    let (name, rest) = s.split_once('=').ok_or_else(|| bad("expected NAME=SPEC"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(bad("empty flow name"));
    }
    let mut parts = rest.split(',');
    let head = parts.next().unwrap_or("").trim();
    let (beh, arg) = match head.split_once(':') {
        Some((b, a)) => (b, Some(a)),
        None => (head, None),
    };
    let mut spec = FlowSpec::echo(&format!("/{name}"));
    spec.behaviour = match beh {
        "echo" => Behaviour::Echo,
        "status" => Behaviour::Status,
        "delay" => Behaviour::Delay,
        "fail" => Behaviour::Fail,
        "overload" => Behaviour::Overload,
        _ => return Err(bad("behaviour must be echo|status|delay|fail|overload")),
    };
    match (spec.behaviour, arg) {
        (Behaviour::Status, Some(a)) => {
            spec.status = Some(a.parse().map_err(|_| bad("status code must be a number"))?)
        }
        (Behaviour::Delay, Some(a)) => {
            spec.delay_ms = Some(a.parse().map_err(|_| bad("delay must be milliseconds"))?)
        }
        (Behaviour::Fail, Some(a)) => spec.message = Some(a.to_string()),
        (_, None) => {}
        (_, Some(_)) => return Err(bad("this behaviour takes no argument")),
    }
    for p in parts {
        let p = p.trim();
        if p == "idempotent" {
            spec.idempotent = true;
        } else if let Some(v) = p.strip_prefix("path=") {
            spec.path = v.to_string();
        } else if let Some(v) = p.strip_prefix("header=") {
            spec.idempotency_header = Some(v.to_string());
        } else if !p.is_empty() {
            return Err(bad("unknown option (idempotent | path=/p | header=H)"));
        }
    }
    spec.normalise().map_err(|e| bad(&e))?;
    Ok((name.to_string(), spec))
}

fn port_at(base: u16, i: u16) -> Result<u16, EmulatorError> {
    if base == 0 {
        return Ok(0);
    }
    base.checked_add(i)
        .ok_or_else(|| EmulatorError::Config(format!("port {base}+{i} overflows")))
}

/// Run `corral emulate`: start the tenants, print one JSON description per line, serve until
/// ctrl-c or SIGTERM.
pub async fn run(args: EmulateArgs) -> anyhow::Result<()> {
    if args.tenants == 0 {
        anyhow::bail!("--tenants must be at least 1");
    }
    let mut flows = Vec::new();
    if !args.no_default_flow {
        flows.push(("echo".to_string(), FlowSpec::echo("/echo")));
    }
    for f in &args.flows {
        let (name, spec) = parse_flow_arg(f)?;
        flows.retain(|(n, _)| *n != name);
        flows.push((name, spec));
    }
    let mut handles = Vec::new();
    for i in 0..args.tenants {
        let mut cfg = TenantConfig::new(format!("{}{}", args.name_prefix, i + 1));
        cfg.host = args.host.clone();
        cfg.port = port_at(args.base_port, i)?;
        cfg.control_port = match args.control_base_port {
            Some(p) => port_at(p, i)?,
            None => 0,
        };
        cfg.token_lifetime_s = args.token_lifetime_s;
        cfg.deploy_delay_ms = args.deploy_delay_ms;
        cfg.strict_csrf = args.strict_csrf;
        cfg.worker_slots = args.worker_slots;
        cfg.mpl_visibility_delay_ms = args.mpl_visibility_delay_ms;
        cfg.flows = flows.clone();
        handles.push(spawn_tenant(cfg).await?);
    }
    {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for h in &handles {
            writeln!(out, "{}", serde_json::to_string(&h.description())?)?;
        }
        out.flush()?;
    }
    wait_for_shutdown_signal().await;
    for h in handles {
        h.shutdown().await;
    }
    Ok(())
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--flow` syntax: behaviour with argument, options, path default and validation errors.
    #[test]
    fn flow_args() {
        let (n, s) = parse_flow_arg("orders=echo,idempotent").unwrap();
        assert_eq!(n, "orders");
        assert_eq!(s.path, "/orders");
        assert!(s.idempotent);
        let (_, s) = parse_flow_arg("slow=delay:250,path=/http/Slow/*,header=X-Id").unwrap();
        assert_eq!(s.behaviour, Behaviour::Delay);
        assert_eq!(s.delay_ms, Some(250));
        assert_eq!(s.path, "/Slow/*");
        assert_eq!(s.message_id_header(), "X-Id");
        let (_, s) = parse_flow_arg("t=status:418").unwrap();
        assert_eq!(s.status, Some(418));
        assert!(parse_flow_arg("x=teleport").is_err());
        assert!(parse_flow_arg("noequals").is_err());
        assert!(parse_flow_arg("x=echo,path=/a b").is_err());
        assert!(
            parse_flow_arg("x=echo,path=/httü").is_err(),
            "non-ASCII must not panic"
        );
    }
}
