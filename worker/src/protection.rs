//! ECS task scale-in protection: while this worker holds messages, the
//! task asks the ECS agent (`$ECS_AGENT_URI/task-protection/v1/state`) not
//! to be chosen when the service scales in, so target tracking never stops
//! a task mid-render.
//!
//! - The first message held sets protection with an expiry
//!   (`ExpiresInMinutes`); while messages are held it is renewed at half
//!   the expiry, so a worker that hangs loses it by itself.
//! - When the worker has held nothing for the idle period, protection is
//!   cleared, and the task may be scaled in again.
//! - A failed call is logged and counted, and tried again a few seconds
//!   later; jobs never wait for the agent.
//!
//! The agent's answer is `{"protection": {…}}`, or `{"failure": {…}}` /
//! `{"error": {…}}` when ECS refused (the task role lacks
//! `ecs:UpdateTaskProtection`, for instance).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Time one call to the agent may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of [`Protection`].
#[derive(Debug, Clone)]
pub struct ProtectionSettings {
    /// `ECS_AGENT_URI`, as the agent injects it.
    pub agent_uri: url::Url,
    /// `ExpiresInMinutes` of each set (1..=2880).
    pub expires_minutes: u32,
    /// Time between renewals while messages are held (half the expiry).
    pub renew: Duration,
    /// Time without a held message before protection is cleared.
    pub idle: Duration,
    /// Time before a failed call is tried again.
    pub retry: Duration,
}

/// How many messages this worker holds; the protection task watches it,
/// and the `jobs_in_flight` gauge shows it.
#[derive(Debug, Clone)]
pub struct Busy {
    held: watch::Sender<usize>,
    /// The `jobs_in_flight` gauge, kept equal to the count.
    gauge: Option<IntGauge>,
}

impl Default for Busy {
    fn default() -> Self {
        Self {
            held: watch::channel(0).0,
            gauge: None,
        }
    }
}

/// One held message, counted in [`Busy`] until dropped.
#[derive(Debug)]
pub struct Held(Busy);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.send_modify(|n| *n = n.saturating_sub(1));
        if let Some(gauge) = &self.0.gauge {
            gauge.dec();
        }
    }
}

impl Busy {
    /// A count that `gauge` shows too.
    pub fn with_gauge(gauge: IntGauge) -> Self {
        Self {
            gauge: Some(gauge),
            ..Self::default()
        }
    }

    /// Count a message as held until the guard is dropped.
    pub fn hold(&self) -> Held {
        self.held.send_modify(|n| *n += 1);
        if let Some(gauge) = &self.gauge {
            gauge.inc();
        }
        Held(self.clone())
    }

    /// Messages held now.
    pub fn held(&self) -> usize {
        *self.held.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<usize> {
        self.held.subscribe()
    }
}

/// Why a call to the agent did not set the state.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No answer: connection, timeout or protocol.
    #[error("the ECS agent did not answer: {0}")]
    Unreached(String),
    /// An answer refusing the change (its status and body).
    #[error("the ECS agent refused: HTTP {status}: {body}")]
    Refused { status: u16, body: String },
}

/// Sets and clears the task's scale-in protection from [`Busy`].
#[derive(Debug)]
pub struct Protection {
    settings: ProtectionSettings,
    busy: Busy,
    metrics: Metrics,
}

impl Protection {
    pub fn new(settings: ProtectionSettings, busy: Busy, metrics: Metrics) -> Self {
        Self {
            settings,
            busy,
            metrics,
        }
    }

    /// Follow [`Busy`] until `stop`; then clear protection if it is set.
    pub async fn run(self, stop: CancellationToken) {
        let mut held = self.busy.subscribe();
        // Whether the agent was last told `true`; when a set (or renewal)
        // is due; when a failed clear may be tried again.
        let mut protected = false;
        let mut set_due = Instant::now();
        let mut clear_due: Option<Instant> = None;
        let mut idle_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let wake = if *held.borrow_and_update() > 0 {
                idle_since = None;
                clear_due = None;
                if set_due <= now {
                    set_due = match self.put(true).await {
                        Ok(()) => {
                            protected = true;
                            Instant::now() + self.settings.renew
                        }
                        Err(_) => Instant::now() + self.settings.retry,
                    };
                }
                Some(set_due)
            } else if protected {
                let idle_end = *idle_since.get_or_insert(now) + self.settings.idle;
                let at = clear_due.map_or(idle_end, |retry| retry.max(idle_end));
                if at <= now {
                    match self.put(false).await {
                        Ok(()) => {
                            protected = false;
                            set_due = Instant::now();
                            clear_due = None;
                            None
                        }
                        Err(_) => {
                            clear_due = Some(Instant::now() + self.settings.retry);
                            clear_due
                        }
                    }
                } else {
                    Some(at)
                }
            } else {
                None
            };
            tokio::select! {
                () = stop.cancelled() => break,
                changed = held.changed() => if changed.is_err() { break },
                () = sleep_until(wake) => {}
            }
        }
        if protected {
            let _ = self.put(false).await;
        }
    }

    /// One PUT to the agent; counted and logged.
    async fn put(&self, enabled: bool) -> Result<(), AgentError> {
        let label = if enabled { "set" } else { "cleared" };
        let result = put_state(
            &self.settings.agent_uri,
            enabled,
            self.settings.expires_minutes,
        )
        .await;
        match &result {
            Ok(()) => {
                tracing::debug!(enabled, "scale-in protection {label}");
                self.metrics.scale_in_protected.set(i64::from(enabled));
                self.metrics
                    .scale_in_protection_calls
                    .with_label_values(&[label])
                    .inc();
            }
            Err(e) => {
                tracing::warn!(enabled, error = %e, "setting scale-in protection failed");
                self.metrics
                    .scale_in_protection_calls
                    .with_label_values(&["failed"])
                    .inc();
            }
        }
        result
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The request body the agent takes.
pub fn state_body(enabled: bool, expires_minutes: u32) -> String {
    if enabled {
        format!(r#"{{"ProtectionEnabled":true,"ExpiresInMinutes":{expires_minutes}}}"#)
    } else {
        r#"{"ProtectionEnabled":false}"#.to_owned()
    }
}

/// `PUT $ECS_AGENT_URI/task-protection/v1/state`.
pub async fn put_state(
    agent_uri: &url::Url,
    enabled: bool,
    expires_minutes: u32,
) -> Result<(), AgentError> {
    let call = async {
        let host = agent_uri
            .host_str()
            .ok_or_else(|| AgentError::Unreached("ECS_AGENT_URI has no host".into()))?;
        let port = agent_uri.port_or_known_default().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| AgentError::Unreached(e.to_string()))?;
        let path = format!(
            "{}/task-protection/v1/state",
            agent_uri.path().trim_end_matches('/')
        );
        let authority = match agent_uri.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let request = Request::builder()
            .method(Method::PUT)
            .uri(path)
            .header(
                header::HOST,
                HeaderValue::from_str(&authority)
                    .map_err(|e| AgentError::Unreached(e.to_string()))?,
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(state_body(enabled, expires_minutes))))
            .map_err(|e| AgentError::Unreached(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AgentError::Unreached(e.to_string()))?;
        let connection = tokio::spawn(connection);
        let answer = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| AgentError::Unreached(e.to_string()))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| AgentError::Unreached(e.to_string()))?
                .to_bytes();
            Ok::<_, AgentError>((status, body))
        }
        .await;
        connection.abort();
        let (status, body) = answer?;
        accepted(status, &body)
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| AgentError::Unreached(format!("no answer in {CALL_TIMEOUT:?}")))?
}

/// Whether an answer of the agent set the state: a 2xx whose body has
/// `protection` and neither `failure` nor `error`.
pub fn accepted(status: u16, body: &[u8]) -> Result<(), AgentError> {
    let refused = || AgentError::Refused {
        status,
        body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    };
    if !(200..300).contains(&status) {
        return Err(refused());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| refused())?;
    match value.get("protection") {
        Some(_) if value.get("failure").is_none() && value.get("error").is_none() => Ok(()),
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_carries_the_expiry_and_clear_does_not() {
        let set: serde_json::Value = serde_json::from_str(&state_body(true, 7)).unwrap();
        assert_eq!(set["ProtectionEnabled"], true);
        assert_eq!(set["ExpiresInMinutes"], 7);
        let clear: serde_json::Value = serde_json::from_str(&state_body(false, 7)).unwrap();
        assert_eq!(clear["ProtectionEnabled"], false);
        assert!(clear.get("ExpiresInMinutes").is_none());
    }

    #[test]
    fn only_a_protection_answer_is_accepted() {
        let ok = br#"{"protection":{"ProtectionEnabled":true,"TaskArn":"arn:aws:ecs:x"}}"#;
        assert!(accepted(200, ok).is_ok());
        let failure = br#"{"failure":{"Arn":"arn","Reason":"TASK_NOT_VALID"}}"#;
        assert!(matches!(
            accepted(200, failure),
            Err(AgentError::Refused { status: 200, .. })
        ));
        let error = br#"{"error":{"Code":"AccessDeniedException","Message":"no"}}"#;
        assert!(matches!(
            accepted(400, error),
            Err(AgentError::Refused { status: 400, .. })
        ));
        assert!(accepted(500, ok).is_err());
        assert!(accepted(200, b"not json").is_err());
    }

    #[test]
    fn busy_counts_held_messages_until_dropped_and_its_gauge_agrees() {
        let gauge = IntGauge::new("held", "held").unwrap();
        let busy = Busy::with_gauge(gauge.clone());
        let a = busy.hold();
        let b = busy.hold();
        assert_eq!((busy.held(), gauge.get()), (2, 2));
        drop(a);
        assert_eq!((busy.held(), gauge.get()), (1, 1));
        drop(b);
        assert_eq!((busy.held(), gauge.get()), (0, 0));
    }
}
