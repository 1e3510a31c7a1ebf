//! Who may use the API and how much: optional API keys, a per-client rate
//! limit, and a timeout on every request. Health and metrics routes are not
//! behind any of these.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::sender::Handoff;

/// Who may submit jobs that run their own JavaScript in the page
/// (`script`, `wait_for_expression`): such code runs with the page's
/// privileges, so it is off unless the operator turns it on.
#[derive(Debug, Default)]
pub enum Scripts {
    /// Nobody.
    #[default]
    Off,
    /// Every client that may submit.
    All,
    /// Requests carrying one of these bearer tokens.
    Keys(Vec<Vec<u8>>),
}

impl Scripts {
    /// From `URL2PNG_ALLOW_SCRIPTS` (`false`, `true`) and
    /// `URL2PNG_SCRIPT_API_KEYS` (the keys that may, comma-separated).
    pub fn new(all: bool, keys: &str) -> Self {
        let keys: Vec<Vec<u8>> = keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        match (all, keys.is_empty()) {
            (true, _) => Self::All,
            (false, false) => Self::Keys(keys),
            (false, true) => Self::Off,
        }
    }

    /// Whether a request with these headers may run scripts.
    pub fn allowed(&self, headers: &axum::http::HeaderMap) -> bool {
        match self {
            Self::Off => false,
            Self::All => true,
            Self::Keys(keys) => bearer(headers).is_some_and(|token| {
                keys.iter().fold(false, |found, key| {
                    found | constant_time_eq(key, token.as_bytes())
                })
            }),
        }
    }
}

/// The request's bearer token, if it carries one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Access settings, shared by the middleware.
#[derive(Debug)]
pub struct Access {
    /// Accepted bearer tokens; empty: no authentication.
    keys: Vec<Vec<u8>>,
    /// Requests per client per minute; 0: no limit.
    per_minute: u32,
    /// Take the client address from the last `X-Forwarded-For` entry (the
    /// one the load balancer added) rather than the peer.
    trust_forwarded: bool,
    timeout: Duration,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Access {
    pub fn new(keys: &str, per_minute: u32, trust_forwarded: bool, timeout: Duration) -> Self {
        Self {
            keys: keys
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            per_minute,
            trust_forwarded,
            timeout,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether requests must carry one of the keys.
    pub fn keys_required(&self) -> bool {
        !self.keys.is_empty()
    }

    fn authorised(&self, request: &Request) -> bool {
        if self.keys.is_empty() {
            return true;
        }
        let Some(token) = bearer(request.headers()) else {
            return false;
        };
        // Compare with every key, each in constant time, so timing tells
        // nothing about which bytes matched.
        self.keys.iter().fold(false, |found, key| {
            found | constant_time_eq(key, token.as_bytes())
        })
    }

    fn client(&self, request: &Request) -> String {
        if self.trust_forwarded
            && let Some(last) = request
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
        {
            return last.to_string();
        }
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into())
    }

    /// Take a token for `client`; `Err(seconds)` to wait when none is left.
    fn take(&self, client: &str) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let rate = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate buckets");
        if buckets.len() > 100_000 {
            // Forget clients that have been idle long enough to be full.
            buckets.retain(|_, b| now.duration_since(b.updated).as_secs_f64() * rate < capacity);
        }
        let bucket = buckets.entry(client.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The rate limit's answer for a client over its rate, if it is.
fn over_rate(access: &Access, request: &Request) -> Option<Response> {
    let wait = access.take(&access.client(request)).err()?;
    Some(
        ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; slow down",
            )
        }
        .into_response(),
    )
}

/// Middleware for routes open without an API key (render links): the
/// rate limit only.
pub async fn limit(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    if let Some(refused) = over_rate(&access, &request) {
        return refused;
    }
    next.run(request).await
}

/// Middleware for the API routes.
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    if !access.authorised(&request) {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <API key>`",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    if let Some(refused) = over_rate(&access, &request) {
        return refused;
    }
    // The handoff lets the timeout give up only on a request none of whose
    // jobs is on the wire: a 504 never leaves a job queued behind it.
    let handoff = Handoff::default();
    let mut request = request;
    request.extensions_mut().insert(handoff.clone());
    let run = next.run(request);
    tokio::pin!(run);
    tokio::select! {
        response = &mut run => response,
        () = tokio::time::sleep(access.timeout) => {
            if handoff.expire() {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("the request took over {:?}; nothing was queued", access.timeout),
                )
                .into_response()
            } else {
                // A job is on the wire: SQS's answer, not the clock, decides.
                run.await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn a_client_gets_its_share_then_waits() {
        let access = Access::new("", 3, false, Duration::from_secs(1));
        assert!(access.take("a").is_ok());
        assert!(access.take("a").is_ok());
        assert!(access.take("a").is_ok());
        let wait = access.take("a").unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(access.take("b").is_ok(), "clients are counted apart");
        let unlimited = Access::new("", 0, false, Duration::from_secs(1));
        assert!((0..1000).all(|_| unlimited.take("a").is_ok()));
    }
}
