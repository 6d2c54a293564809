//! What a tenant is: the admin API's input forms, their validation, and the split into a
//! non-secret [`TenantSpec`] (replicated as JSON, shown by GET) and secret [`Credentials`]
//! (sealed before they are proposed, never shown).
//!
//! Two input forms are accepted by one parser: the JSON line `corral emulate` prints (flat
//! `client_id`/`client_secret`/`token_url`, OAuth2 for runtime and management; unknown fields
//! such as `control_url` are ignored), and an explicit form with `runtime_auth` and
//! `management_auth` objects. Every validation error names the field.

use serde::{Deserialize, Serialize};

/// Longest tenant name, bytes.
pub const MAX_NAME_BYTES: usize = crate::state::MAX_RESOURCE_NAME_BYTES;
/// Weight bounds (relative share within a priority group).
pub const MAX_WEIGHT: u32 = 1_000;
/// Largest configurable `max_in_flight` (requests outstanding to one tenant from one node).
pub const MAX_IN_FLIGHT_LIMIT: u32 = 10_000;
/// Default `max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
/// Probe interval bounds, ms.
pub const MIN_PROBE_INTERVAL_MS: u64 = 100;
pub const MAX_PROBE_INTERVAL_MS: u64 = 60_000;
/// Default probe path, below `runtime_url`. Unauthenticated by default: any answer below 500
/// (a real runtime and the emulator answer 401) proves the runtime listener is serving.
pub const DEFAULT_PROBE_PATH: &str = "/http/";

/// A validation failure, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// Administrative state of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Receives new work.
    #[default]
    Active,
    /// No new work; requests already out finish normally.
    Draining,
    /// No work at all (and not probed).
    Disabled,
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSpec {
    /// Path below `runtime_url` (or `api_url` when `target` is `management`).
    pub path: String,
    /// `runtime` (default) or `management`.
    pub target: ProbeTarget,
    /// Attach the tenant's credentials to the probe.
    pub auth: bool,
    /// Probe every this many ms.
    pub interval_ms: u64,
    /// A probe not answered within this many ms fails.
    pub timeout_ms: u64,
    /// The status a healthy tenant answers; `null` means "any status below 500".
    pub expected_status: Option<u16>,
    /// Consecutive failed probes that eject a healthy tenant.
    pub fall: u32,
    /// Consecutive good probes that readmit an ejected tenant.
    pub rise: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeTarget {
    #[default]
    Runtime,
    Management,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: DEFAULT_PROBE_PATH.into(),
            target: ProbeTarget::Runtime,
            auth: false,
            interval_ms: 1_000,
            timeout_ms: 1_000,
            expected_status: None,
            fall: 2,
            rise: 2,
        }
    }
}

/// Non-secret description of how to authenticate (shown by GET).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AuthInfo {
    Oauth2 {
        client_id: String,
        token_url: String,
    },
    Basic {
        user: String,
    },
}

/// The replicated, non-secret part of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSpec {
    pub runtime_url: String,
    pub api_url: String,
    pub runtime_auth: AuthInfo,
    pub management_auth: AuthInfo,
    pub weight: u32,
    pub priority: u32,
    pub max_in_flight: u32,
    pub state: AdminState,
    pub health: HealthSpec,
}

/// Secret credentials for one plane (runtime or management).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AuthSecret {
    Oauth2 {
        client_id: String,
        client_secret: String,
        token_url: String,
    },
    Basic {
        user: String,
        password: String,
    },
}

impl std::fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthSecret::Oauth2 { .. } => "Oauth2(..)",
            AuthSecret::Basic { .. } => "Basic(..)",
        })
    }
}

impl AuthSecret {
    pub fn info(&self) -> AuthInfo {
        match self {
            AuthSecret::Oauth2 {
                client_id,
                token_url,
                ..
            } => AuthInfo::Oauth2 {
                client_id: client_id.clone(),
                token_url: token_url.clone(),
            },
            AuthSecret::Basic { user, .. } => AuthInfo::Basic { user: user.clone() },
        }
    }
}

/// The sealed part of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub runtime: AuthSecret,
    pub management: AuthSecret,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum AuthBody {
    Oauth2 {
        client_id: String,
        client_secret: String,
        token_url: Option<String>,
    },
    Basic {
        user: String,
        password: String,
    },
}

/// Both input forms in one shape. Unknown fields are ignored (the emulator's `control_url`).
#[derive(Deserialize)]
struct TenantBody {
    name: Option<String>,
    runtime_url: String,
    api_url: String,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    basic_user: Option<String>,
    basic_password: Option<String>,
    runtime_auth: Option<AuthBody>,
    management_auth: Option<AuthBody>,
    weight: Option<u32>,
    priority: Option<u32>,
    max_in_flight: Option<u32>,
    state: Option<AdminState>,
    health: Option<HealthSpec>,
}

/// Checks a tenant name: 1 to 64 bytes of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    if crate::state::is_resource_name(name) {
        Ok(())
    } else {
        Err(err(
            "name",
            format!("must be 1 to {MAX_NAME_BYTES} of A-Z a-z 0-9 . _ -, not starting with . or -"),
        ))
    }
}

fn validate_url(field: &str, url: &str) -> Result<String, SpecError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| err(field, format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(err(field, "must be an http:// or https:// URL with a host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(err(field, "must not carry a query or fragment"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn resolve_auth(
    field: &str,
    explicit: Option<AuthBody>,
    b: &TenantBody,
) -> Result<AuthSecret, SpecError> {
    let token_url = |own: Option<String>| -> Result<String, SpecError> {
        match own.or_else(|| b.token_url.clone()) {
            Some(u) => validate_url(&format!("{field}.token_url"), &u),
            None => Err(err("token_url", "OAuth2 credentials need a token_url")),
        }
    };
    let nonempty = |f: &str, v: &str| {
        if v.is_empty() {
            Err(err(f, "must not be empty"))
        } else {
            Ok(())
        }
    };
    let secret = match explicit {
        Some(AuthBody::Oauth2 {
            client_id,
            client_secret,
            token_url: own,
        }) => AuthSecret::Oauth2 {
            token_url: token_url(own)?,
            client_id,
            client_secret,
        },
        Some(AuthBody::Basic { user, password }) => AuthSecret::Basic { user, password },
        None => match (&b.client_id, &b.client_secret, &b.basic_user, &b.basic_password) {
            (Some(id), Some(secret), _, _) => AuthSecret::Oauth2 {
                token_url: token_url(None)?,
                client_id: id.clone(),
                client_secret: secret.clone(),
            },
            (None, None, Some(u), Some(p)) => AuthSecret::Basic {
                user: u.clone(),
                password: p.clone(),
            },
            _ => {
                return Err(err(
                    field,
                    "give runtime_auth/management_auth, or client_id + client_secret + token_url, or basic_user + basic_password",
                ))
            }
        },
    };
    match &secret {
        AuthSecret::Oauth2 {
            client_id,
            client_secret,
            ..
        } => {
            nonempty(&format!("{field}.client_id"), client_id)?;
            nonempty(&format!("{field}.client_secret"), client_secret)?;
        }
        AuthSecret::Basic { user, password } => {
            nonempty(&format!("{field}.user"), user)?;
            nonempty(&format!("{field}.password"), password)?;
        }
    }
    Ok(secret)
}

fn validate_health(h: &HealthSpec) -> Result<(), SpecError> {
    if !h.path.starts_with('/') {
        return Err(err("health.path", "must start with /"));
    }
    if !(MIN_PROBE_INTERVAL_MS..=MAX_PROBE_INTERVAL_MS).contains(&h.interval_ms) {
        return Err(err(
            "health.interval_ms",
            format!("must be {MIN_PROBE_INTERVAL_MS} to {MAX_PROBE_INTERVAL_MS}"),
        ));
    }
    if h.timeout_ms < 10 || h.timeout_ms > MAX_PROBE_INTERVAL_MS {
        return Err(err(
            "health.timeout_ms",
            format!("must be 10 to {MAX_PROBE_INTERVAL_MS}"),
        ));
    }
    if let Some(s) = h.expected_status {
        if !(100..=599).contains(&s) {
            return Err(err("health.expected_status", "must be an HTTP status"));
        }
    }
    for (f, v) in [("health.fall", h.fall), ("health.rise", h.rise)] {
        if !(1..=100).contains(&v) {
            return Err(err(f, "must be 1 to 100"));
        }
    }
    Ok(())
}

/// Parses and validates a PUT body for tenant `name`.
pub fn parse_tenant(name: &str, body: &[u8]) -> Result<(TenantSpec, Credentials), SpecError> {
    validate_name(name)?;
    let de = &mut serde_json::Deserializer::from_slice(body);
    let b: TenantBody = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // serde names a missing field only in its message; lift it into `field`.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string);
        let field = match (path.as_str(), missing) {
            (".", Some(m)) => m,
            (".", None) => "body".into(),
            _ => path,
        };
        err(&field, message)
    })?;
    if let Some(n) = &b.name {
        if n != name {
            return Err(err(
                "name",
                format!("`{n}` in the body differs from `{name}` in the path"),
            ));
        }
    }
    let runtime_url = validate_url("runtime_url", &b.runtime_url)?;
    let api_url = validate_url("api_url", &b.api_url)?;
    let mut b = b;
    let runtime_explicit = b.runtime_auth.take();
    let management_explicit = b.management_auth.take();
    let runtime = resolve_auth("runtime_auth", runtime_explicit, &b)?;
    let management = resolve_auth("management_auth", management_explicit, &b)?;
    let weight = b.weight.unwrap_or(1);
    if !(1..=MAX_WEIGHT).contains(&weight) {
        return Err(err("weight", format!("must be 1 to {MAX_WEIGHT}")));
    }
    let max_in_flight = b.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&max_in_flight) {
        return Err(err(
            "max_in_flight",
            format!("must be 1 to {MAX_IN_FLIGHT_LIMIT}"),
        ));
    }
    let health = b.health.clone().unwrap_or_default();
    validate_health(&health)?;
    let spec = TenantSpec {
        runtime_url,
        api_url,
        runtime_auth: runtime.info(),
        management_auth: management.info(),
        weight,
        priority: b.priority.unwrap_or(0),
        max_in_flight,
        state: b.state.unwrap_or_default(),
        health,
    };
    Ok((
        spec,
        Credentials {
            runtime,
            management,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, body: &str) -> String {
        parse_tenant(name, body.as_bytes()).unwrap_err().field
    }

    /// The emulator's JSON line is accepted as is (OAuth2 for both planes, extras ignored).
    #[test]
    fn emulator_line_is_accepted() {
        let line = r#"{"name":"t1","runtime_url":"http://127.0.0.1:9001","api_url":"http://127.0.0.1:9001/api/v1",
          "token_url":"http://127.0.0.1:9001/oauth/token","client_id":"sb-x!b1|it!b2","client_secret":"s$+/=",
          "control_url":"http://127.0.0.1:9101/_emulator","basic_user":"S1","basic_password":"pw"}"#;
        let (spec, creds) = parse_tenant("t1", line.as_bytes()).unwrap();
        assert_eq!(spec.weight, 1);
        assert_eq!(spec.state, AdminState::Active);
        assert_eq!(spec.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        assert!(
            matches!(creds.runtime, AuthSecret::Oauth2 { ref client_secret, .. } if client_secret == "s$+/=")
        );
        assert_eq!(creds.runtime, creds.management);
        let shown = serde_json::to_string(&spec).unwrap();
        assert!(!shown.contains("s$+/=") && !shown.contains("pw"));
    }

    /// The explicit form with Basic management auth and settings.
    #[test]
    fn explicit_form() {
        let body = r#"{"runtime_url":"https://rt.example","api_url":"https://tmn.example/api/v1",
          "runtime_auth":{"kind":"oauth2","client_id":"c","client_secret":"s","token_url":"https://a.example/oauth/token"},
          "management_auth":{"kind":"basic","user":"u","password":"p"},
          "weight":5,"priority":1,"max_in_flight":8,"state":"draining","health":{"interval_ms":500,"expected_status":401}}"#;
        let (spec, creds) = parse_tenant("x", body.as_bytes()).unwrap();
        assert_eq!((spec.weight, spec.priority, spec.max_in_flight), (5, 1, 8));
        assert_eq!(spec.state, AdminState::Draining);
        assert_eq!(spec.health.interval_ms, 500);
        assert_eq!(spec.health.fall, 2);
        assert!(matches!(creds.management, AuthSecret::Basic { .. }));
    }

    /// Data-driven: each bad input names its field.
    #[test]
    fn validation_names_the_field() {
        let ok = r#""runtime_url":"http://h","api_url":"http://h/api/v1","token_url":"http://h/t","client_id":"c","client_secret":"s""#;
        let cases = [
            ("bad name", format!("{{{ok}}}"), "name"),
            ("t", format!("{{{ok},\"name\":\"other\"}}"), "name"),
            ("t", format!("{{{ok},\"weight\":0}}"), "weight"),
            ("t", format!("{{{ok},\"weight\":1001}}"), "weight"),
            ("t", format!("{{{ok},\"max_in_flight\":0}}"), "max_in_flight"),
            ("t", format!("{{{ok},\"state\":\"sleepy\"}}"), "state"),
            ("t", format!("{{{ok},\"health\":{{\"fall\":0}}}}"), "health.fall"),
            ("t", format!("{{{ok},\"health\":{{\"interval_ms\":1}}}}"), "health.interval_ms"),
            ("t", format!("{{{ok},\"health\":{{\"path\":\"x\"}}}}"), "health.path"),
            ("t", r#"{"runtime_url":"ftp://h","api_url":"http://h"}"#.into(), "runtime_url"),
            ("t", r#"{"api_url":"http://h"}"#.into(), "runtime_url"),
            ("t", r#"{"runtime_url":"http://h","api_url":"http://h"}"#.into(), "runtime_auth"),
            ("t", r#"{"runtime_url":"http://h","api_url":"http://h","client_id":"c","client_secret":"s"}"#.into(), "token_url"),
            ("t", r#"{"runtime_url":"http://h","api_url":"http://h","runtime_auth":{"kind":"magic"}}"#.into(), "runtime_auth.kind"),
        ];
        for (name, body, want) in cases {
            assert_eq!(field(name, &body), want, "{body}");
        }
    }
}
