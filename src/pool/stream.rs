//! Streamed runtime calls for the sync proxy: the request body flows from the caller to the
//! tenant and the response body back, never whole in memory (the buffered
//! [`super::Pool::runtime_request`] stays for the queue dispatcher and small calls).
//!
//! A retry needs the body again. [`ProxyBody`] is either small enough to have been buffered
//! (replayable any number of times) or a stream that can be handed to one attempt at a time:
//! an attempt that failed before it read a byte (connection refused, reset before the body
//! was sent) gives it back untouched, so the request can still go to another tenant. Once
//! a byte left, the stream is spent and the proxy cannot retry.
//!
//! Authentication: with `tenant_auth` the tenant's own runtime credentials are attached
//! (bearer refreshed once on 401 when the body is replayable); CSRF-protected flows
//! (`403` + `X-CSRF-Token: Required`) get a token fetched with `GET` + `X-CSRF-Token: Fetch`
//! on the same path, cached per tenant and refetched once on the next `Required`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, SET_COOKIE};
use reqwest::Method;

use super::auth::{CsrfSession, Plane};
use super::{AuthSecret, PoolError, Tenant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The caller's body as a stream of chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

struct Shared {
    stream: Mutex<Option<ByteStream>>,
    /// A chunk was handed to some attempt: the stream cannot be replayed.
    started: AtomicBool,
    /// The attempt allowed to read; an older attempt still polling after a retry began
    /// gets an error instead of stealing chunks.
    owner: AtomicU64,
}

/// A request body for [`StreamRequest`].
#[derive(Clone)]
pub enum ProxyBody {
    Empty,
    /// Read whole (small, or needed for retries): replayable.
    Buffered(Bytes),
    /// Read chunk by chunk as the tenant takes it: replayable only until the first chunk.
    Stream(Arc<SharedStream>),
}

/// See [`ProxyBody::Stream`].
pub struct SharedStream(Shared);

impl ProxyBody {
    pub fn stream(s: ByteStream) -> ProxyBody {
        ProxyBody::Stream(Arc::new(SharedStream(Shared {
            stream: Mutex::new(Some(s)),
            started: AtomicBool::new(false),
            owner: AtomicU64::new(0),
        })))
    }

    /// Whether another attempt can still send the whole body.
    pub fn replayable(&self) -> bool {
        match self {
            ProxyBody::Stream(s) => !s.0.started.load(Ordering::Acquire),
            _ => true,
        }
    }

    /// The body for one attempt, or `None` if it was already (partly) sent.
    fn attempt(&self) -> Option<reqwest::Body> {
        match self {
            ProxyBody::Empty => Some(reqwest::Body::from(Bytes::new())),
            ProxyBody::Buffered(b) => Some(reqwest::Body::from(b.clone())),
            ProxyBody::Stream(s) => {
                if s.0.started.load(Ordering::Acquire) {
                    return None;
                }
                let me = s.0.owner.fetch_add(1, Ordering::AcqRel) + 1;
                Some(reqwest::Body::wrap_stream(Attempt {
                    shared: s.clone(),
                    me,
                }))
            }
        }
    }
}

/// One attempt's view of a [`SharedStream`].
struct Attempt {
    shared: Arc<SharedStream>,
    me: u64,
}

impl Stream for Attempt {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let s = &self.shared.0;
        if s.owner.load(Ordering::Acquire) != self.me {
            return Poll::Ready(Some(Err("request body taken over by a retry".into())));
        }
        let mut guard = s.stream.lock().unwrap_or_else(|e| e.into_inner());
        let Some(inner) = guard.as_mut() else {
            return Poll::Ready(None);
        };
        let next = inner.as_mut().poll_next(cx);
        if matches!(next, Poll::Ready(Some(_))) {
            s.started.store(true, Ordering::Release);
        }
        next
    }
}

/// One streamed call to a tenant's runtime.
#[derive(Clone)]
pub struct StreamRequest {
    pub method: Method,
    /// Path and query, appended to the tenant's `runtime_url`.
    pub path: String,
    /// Already cleaned of hop-by-hop headers by the caller.
    pub headers: HeaderMap,
    pub body: ProxyBody,
    /// Until the response headers are in (the body may take longer).
    pub timeout: Duration,
    /// Attach the tenant's own runtime credentials (replacing any caller `Authorization`).
    pub tenant_auth: bool,
}

fn is_write(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn csrf_required(r: &reqwest::Response) -> bool {
    r.status().as_u16() == 403
        && r.headers()
            .get("X-CSRF-Token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("required"))
}

impl Tenant {
    pub(super) async fn send_stream(
        &self,
        http: &reqwest::Client,
        req: &StreamRequest,
    ) -> Result<reqwest::Response, PoolError> {
        let conf = self.conf();
        let url = format!("{}{}", conf.spec.runtime_url, req.path);
        let secret = match (&conf.creds, req.tenant_auth) {
            (_, false) => None,
            (Ok(c), true) => Some(&c.runtime),
            (Err(m), true) => {
                return Err(PoolError::Credentials {
                    tenant: self.name.clone(),
                    message: m.clone(),
                })
            }
        };
        let oauth = matches!(secret, Some(AuthSecret::Oauth2 { .. }));
        let write = is_write(&req.method) && secret.is_some();
        let mut stale: Option<HeaderValue> = None;
        let (mut retried_401, mut retried_csrf) = (false, false);
        loop {
            let Some(body) = req.body.attempt() else {
                return Err(PoolError::Http {
                    tenant: self.name.clone(),
                    message: "the request body was already sent once; cannot resend it".into(),
                });
            };
            let mut rb = http
                .request(req.method.clone(), &url)
                .headers(req.headers.clone())
                .body(body);
            let mut authz = None;
            if let Some(secret) = secret {
                let a = self
                    .auth
                    .authorization(http, &self.name, secret, Plane::Runtime, stale.as_ref())
                    .await?;
                rb = rb.header(AUTHORIZATION, a.clone());
                authz = Some(a);
            }
            if write {
                if let Some(s) = self.runtime_csrf.lock().await.as_ref() {
                    rb = super::auth::with_csrf(rb, s);
                }
            }
            let resp = tokio::time::timeout(req.timeout, rb.send())
                .await
                .map_err(|_| PoolError::Timeout {
                    tenant: self.name.clone(),
                })?
                .map_err(|e| PoolError::from_reqwest(&self.name, e))?;
            let replay = req.body.replayable();
            if resp.status().as_u16() == 401 && oauth && !retried_401 && replay {
                retried_401 = true;
                self.auth
                    .unauthorized_retries
                    .fetch_add(1, Ordering::Relaxed);
                stale = authz;
                continue;
            }
            if write && csrf_required(&resp) && !retried_csrf && replay {
                retried_csrf = true;
                if let Some(a) = &authz {
                    self.fetch_runtime_csrf(http, &url, a, req.timeout).await?;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// `GET <flow url>` with `X-CSRF-Token: Fetch`; keeps the token and session cookies.
    async fn fetch_runtime_csrf(
        &self,
        http: &reqwest::Client,
        url: &str,
        authz: &HeaderValue,
        timeout: Duration,
    ) -> Result<(), PoolError> {
        let resp = http
            .get(url)
            .header(AUTHORIZATION, authz.clone())
            .header("X-CSRF-Token", "Fetch")
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| PoolError::from_reqwest(&self.name, e))?;
        let token = resp
            .headers()
            .get("X-CSRF-Token")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.eq_ignore_ascii_case("required"))
            .map(str::to_string)
            .ok_or_else(|| PoolError::Auth {
                tenant: self.name.clone(),
                message: "the CSRF fetch answered without a token".into(),
            })?;
        let cookies = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::trim))
            .collect::<Vec<_>>()
            .join("; ");
        self.auth.csrf_fetches.fetch_add(1, Ordering::Relaxed);
        *self.runtime_csrf.lock().await = Some(CsrfSession { token, cookies });
        Ok(())
    }
}
