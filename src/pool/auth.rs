//! Authentication to one tenant: OAuth2 client-credentials bearer tokens and the CSRF token +
//! session cookies of the management API (cpi-api.md §1.2-§1.4).
//!
//! Tokens are cached per tenant and plane (runtime, management), fetched by one caller at a
//! time (the others wait for it rather than stampeding the token server), and refreshed
//! [`refresh_margin`] before they expire. A 401 invalidates the token that was used so the
//! retry fetches a fresh one. The CSRF token is fetched with `GET {api_url}/` and
//! `X-CSRF-Token: Fetch`; its `Set-Cookie` values are kept and sent with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{HeaderValue, AUTHORIZATION, COOKIE, SET_COOKIE};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::spec::AuthSecret;
use super::PoolError;

/// Refresh margin cap: a token is refreshed at most this long before it expires.
pub const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Largest token-endpoint or CSRF-fetch answer read.
const MAX_AUTH_BODY_BYTES: usize = 64 * 1024;

/// How long before expiry a token is refreshed: a fifth of its lifetime, at most a minute.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(MAX_REFRESH_MARGIN)
}

#[derive(Clone)]
struct Token {
    value: String,
    refresh_at: Instant,
}

#[derive(Clone)]
pub struct CsrfSession {
    pub token: String,
    pub cookies: String,
}

/// Which credentials a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Runtime,
    Management,
}

#[derive(Default)]
pub struct AuthCache {
    runtime: Mutex<Option<Token>>,
    management: Mutex<Option<Token>>,
    csrf: Mutex<Option<CsrfSession>>,
    /// Tokens fetched (both planes), for tests and metrics.
    pub token_fetches: AtomicU64,
    /// Calls retried after a 401.
    pub unauthorized_retries: AtomicU64,
    /// CSRF tokens fetched.
    pub csrf_fetches: AtomicU64,
    /// Management writes retried after `403 X-CSRF-Token: Required`.
    pub csrf_retries: AtomicU64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

/// Lifetime assumed when the token endpoint does not say (`expires_in` missing).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

impl AuthCache {
    fn slot(&self, plane: Plane) -> &Mutex<Option<Token>> {
        match plane {
            Plane::Runtime => &self.runtime,
            Plane::Management => &self.management,
        }
    }

    /// Forgets everything (credentials changed).
    pub async fn clear(&self) {
        *self.runtime.lock().await = None;
        *self.management.lock().await = None;
        *self.csrf.lock().await = None;
    }

    /// The `Authorization` header value for `plane`. `stale`: the header a call just got a
    /// 401 with; if the cache still holds it, it is dropped and a new token fetched.
    pub async fn authorization(
        &self,
        http: &reqwest::Client,
        tenant: &str,
        secret: &AuthSecret,
        plane: Plane,
        stale: Option<&HeaderValue>,
    ) -> Result<HeaderValue, PoolError> {
        let (client_id, client_secret, token_url) = match secret {
            AuthSecret::Basic { user, password } => return Ok(basic(user, password)),
            AuthSecret::Oauth2 {
                client_id,
                client_secret,
                token_url,
            } => (client_id, client_secret, token_url),
        };
        let mut slot = self.slot(plane).lock().await;
        if let (Some(t), Some(stale)) = (slot.as_ref(), stale) {
            if bearer(&t.value).as_ref().ok() == Some(stale) {
                *slot = None;
            }
        }
        if let Some(t) = slot.as_ref() {
            if Instant::now() < t.refresh_at {
                return bearer(&t.value).map_err(|m| auth_err(tenant, m));
            }
        }
        let started = Instant::now();
        let resp = http
            .post(token_url)
            .query(&[("grant_type", "client_credentials")])
            .header(AUTHORIZATION, basic(client_id, client_secret))
            .send()
            .await
            .map_err(|e| auth_err(tenant, format!("token endpoint: {e}")))?;
        let status = resp.status();
        let body = read_limited(resp, MAX_AUTH_BODY_BYTES)
            .await
            .map_err(|m| auth_err(tenant, format!("token endpoint: {m}")))?;
        if !status.is_success() {
            return Err(auth_err(
                tenant,
                format!("token endpoint answered {status}"),
            ));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| auth_err(tenant, format!("token endpoint answer: {e}")))?;
        let lifetime = answer
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        self.token_fetches.fetch_add(1, Ordering::Relaxed);
        let header = bearer(&answer.access_token).map_err(|m| auth_err(tenant, m))?;
        *slot = Some(Token {
            value: answer.access_token,
            refresh_at: started + lifetime.saturating_sub(refresh_margin(lifetime)),
        });
        Ok(header)
    }

    /// The CSRF session for management writes; `refetch` drops the cached one first.
    pub async fn csrf(
        &self,
        http: &reqwest::Client,
        tenant: &str,
        api_url: &str,
        authorization: &HeaderValue,
        refetch: bool,
    ) -> Result<Result<CsrfSession, u16>, PoolError> {
        let mut slot = self.csrf.lock().await;
        if refetch {
            *slot = None;
        }
        if let Some(s) = slot.as_ref() {
            return Ok(Ok(s.clone()));
        }
        let resp = http
            .get(format!("{api_url}/"))
            .header(AUTHORIZATION, authorization.clone())
            .header("X-CSRF-Token", "Fetch")
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| PoolError::from_reqwest(tenant, e))?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            // The caller decides (a 401 refreshes the bearer token and tries again).
            return Ok(Err(status));
        }
        let token = resp
            .headers()
            .get("X-CSRF-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| auth_err(tenant, "CSRF fetch answered without X-CSRF-Token"))?;
        let cookies = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        self.csrf_fetches.fetch_add(1, Ordering::Relaxed);
        let session = CsrfSession { token, cookies };
        *slot = Some(session.clone());
        Ok(Ok(session))
    }
}

/// Adds the CSRF session to a request.
pub fn with_csrf(req: reqwest::RequestBuilder, s: &CsrfSession) -> reqwest::RequestBuilder {
    let req = req.header("X-CSRF-Token", s.token.as_str());
    if s.cookies.is_empty() {
        req
    } else {
        req.header(COOKIE, s.cookies.as_str())
    }
}

fn auth_err(tenant: &str, message: impl Into<String>) -> PoolError {
    PoolError::Auth {
        tenant: tenant.into(),
        message: message.into(),
    }
}

fn basic(user: &str, password: &str) -> HeaderValue {
    let raw = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {raw}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

fn bearer(token: &str) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        "the token endpoint returned a token that is not a valid header".to_string()
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Reads a response body up to `limit` bytes.
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short-lived tokens refresh after 80% of their life, long-lived ones a minute early.
    #[test]
    fn refresh_margins() {
        assert_eq!(
            refresh_margin(Duration::from_secs(1)),
            Duration::from_millis(200)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(43_199)),
            MAX_REFRESH_MARGIN
        );
    }
}
