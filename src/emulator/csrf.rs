//! The X-CSRF-Token dance on `/api/v1` (cpi-api.md §1.4).
//!
//! `X-CSRF-Token: Fetch` on a GET/HEAD issues a token bound to a session cookie (`JSESSIONID`,
//! plus a `__VCAP_ID__` sticky-session cookie). Writes by Basic-auth callers (and by bearer callers
//! in strict mode) must send the token and the cookie; otherwise 403 with `X-CSRF-Token: Required`.

// Helpers short-circuit with a ready HTTP response; it is built and moved once per request,
// so its size does not matter here.
#![allow(clippy::result_large_err)]

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::tenant::{random_hex, Tenant};

/// Most CSRF sessions kept per tenant; when exceeded all sessions are dropped (clients refetch).
pub const MAX_CSRF_SESSIONS: usize = 50_000;

/// Headers to attach to the response of a fetch.
pub struct Issued {
    pub token: String,
    pub cookies: Vec<String>,
}

/// True when the request asks for a token (`X-CSRF-Token: Fetch`, case-insensitive).
pub fn is_fetch(headers: &HeaderMap) -> bool {
    headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("fetch"))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == "JSESSIONID" {
                    return Some(val.to_string());
                }
            }
        }
    }
    None
}

/// Issue (or re-issue within the caller's existing session) a CSRF token.
pub fn fetch(t: &Tenant, headers: &HeaderMap) -> Issued {
    let mut st = t.lock();
    let existing = session_cookie(headers).filter(|s| st.csrf_sessions.contains_key(s));
    let token = random_hex(16).to_uppercase();
    let mut cookies = Vec::new();
    let sid = match existing {
        Some(sid) => sid,
        None => {
            if st.csrf_sessions.len() >= MAX_CSRF_SESSIONS {
                st.csrf_sessions.clear();
            }
            let sid = random_hex(16).to_uppercase();
            cookies.push(format!("JSESSIONID={sid}; Path=/; HttpOnly"));
            cookies.push(format!("__VCAP_ID__={}; Path=/; HttpOnly", random_hex(14)));
            sid
        }
    };
    // A fetch within a live session returns that session's token, as servlet containers do.
    let token = st.csrf_sessions.entry(sid).or_insert(token).clone();
    Issued { token, cookies }
}

impl Issued {
    pub fn apply(&self, resp: &mut Response) {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.token) {
            h.insert("x-csrf-token", v);
        }
        for c in &self.cookies {
            if let Ok(v) = HeaderValue::from_str(c) {
                h.append(header::SET_COOKIE, v);
            }
        }
    }
}

/// The 403 CPI gives when the token is missing, wrong or expired.
pub fn required() -> Response {
    (
        StatusCode::FORBIDDEN,
        [("x-csrf-token", "Required")],
        "CSRF token validation failed",
    )
        .into_response()
}

/// Check a modifying request. Bearer callers are exempt unless the tenant runs strict CSRF.
pub fn check(t: &Tenant, caller: &Caller, headers: &HeaderMap) -> Result<(), Response> {
    if !caller.basic && !t.cfg.strict_csrf {
        return Ok(());
    }
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    let sid = session_cookie(headers);
    let st = t.lock();
    match (sent, sid.and_then(|s| st.csrf_sessions.get(&s))) {
        (Some(sent), Some(expected)) if sent == expected => Ok(()),
        _ => Err(required()),
    }
}

/// Expire every session (control API), so clients must refetch.
pub fn expire_all(t: &Tenant) {
    t.lock().csrf_sessions.clear();
}
