//! A small Chrome DevTools Protocol client of our own: one websocket per
//! browser, flattened sessions, chromiumoxide's generated protocol types for
//! every command and event.
//!
//! It exists so that a job's page costs only the calls the job needs.
//! chromiumoxide's `Page` enables six domains, sets up an isolated world
//! and waits for `about:blank` on every new page, one round trip after
//! another; here a caller sends exactly what it wants and may pipeline it:
//! [`Cdp::call`] does not hold the connection while it waits, so several
//! calls on one session are in flight at once and Chromium answers them in
//! order, and [`Cdp::send`] writes a command without waiting for its answer
//! at all (answers to paused requests and dialogs).
//!
//! Events of an attached session go to that session's [`Events`]; when the
//! connection breaks every waiting call fails with [`CdpError::Closed`],
//! every event stream ends and [`Cdp::closed`] resolves: the browser is gone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use chromiumoxide::cdp::browser_protocol::target::{AttachToTargetParams, SessionId, TargetId};
use chromiumoxide::types::{Command, MethodType};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command as Process};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Why a call did not give an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CdpError {
    /// The connection to the browser is gone (the browser exited or was
    /// killed).
    #[error("the connection to Chromium is closed")]
    Closed,
    /// No answer within the call's budget.
    #[error("Chromium did not answer `{method}` within {timeout:?}")]
    Timeout { method: String, timeout: Duration },
    /// Chromium answered with an error.
    #[error("`{method}` failed: {message} ({code})")]
    Protocol {
        method: String,
        code: i64,
        message: String,
    },
    /// The answer does not have the shape the protocol types expect.
    #[error("cannot read the answer to `{method}`: {detail}")]
    Decode { method: String, detail: String },
}

/// One event of a session.
#[derive(Debug, Clone)]
pub struct Event {
    pub method: String,
    pub params: Value,
}

impl Event {
    /// Whether this is the event `E`.
    pub fn is<E: MethodType>(&self) -> bool {
        self.method == E::method_id()
    }

    /// The event's parameters as `E`, if it is that event.
    pub fn decode<E: MethodType + serde::de::DeserializeOwned>(&self) -> Option<E> {
        if !self.is::<E>() {
            return None;
        }
        serde_json::from_value(self.params.clone()).ok()
    }
}

/// The events of one session, in the order Chromium sent them. Ends when
/// the session detaches or the connection closes.
pub type Events = mpsc::UnboundedReceiver<Event>;

type Reply = Result<Value, (i64, String)>;

struct Shared {
    out: mpsc::UnboundedSender<Message>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    sessions: Mutex<HashMap<String, mpsc::UnboundedSender<Event>>>,
    next_id: AtomicU64,
    closed: CancellationToken,
}

/// A connection to one browser. Cheap to clone.
#[derive(Clone)]
pub struct Cdp {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Cdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cdp")
            .field("closed", &self.shared.closed.is_cancelled())
            .finish()
    }
}

#[derive(Deserialize)]
struct Incoming {
    id: Option<u64>,
    method: Option<String>,
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
    #[serde(default)]
    params: Value,
    result: Option<Value>,
    error: Option<ProtocolError>,
}

#[derive(Deserialize)]
struct ProtocolError {
    code: i64,
    message: String,
}

impl Cdp {
    /// Connect to a browser's websocket endpoint.
    pub async fn connect(ws_url: &str) -> Result<Self, String> {
        // Screenshots of tall pages arrive as one large message.
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (ws, _) = async_tungstenite::tokio::connect_async_with_config(ws_url, Some(config))
            .await
            .map_err(|e| format!("connecting to {ws_url}: {e}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let shared = Arc::new(Shared {
            out,
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: CancellationToken::new(),
        });
        let closed = shared.closed.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = outgoing.recv() => {
                        let Some(message) = message else { break };
                        if sink.send(message).await.is_err() {
                            break;
                        }
                    }
                    _ = closed.cancelled() => break,
                }
            }
            let _ = sink.close(None).await;
        });
        let reader = Arc::downgrade(&shared);
        let closed = shared.closed.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let text = match &message {
                    Message::Text(text) => text.as_str(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Some(shared) = reader.upgrade() else {
                    break;
                };
                dispatch(&shared, text);
            }
            closed.cancel();
            if let Some(shared) = reader.upgrade() {
                // Dropping the senders fails every waiting call and ends
                // every event stream.
                shared.pending.lock().expect("pending").clear();
                shared.sessions.lock().expect("sessions").clear();
            }
        });
        Ok(Self { shared })
    }

    /// Resolves once the connection is gone.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    fn write<C: Command>(&self, session: Option<&str>, command: &C) -> Result<u64, CdpError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let params = serde_json::to_value(command).map_err(|e| CdpError::Decode {
            method: command.identifier().into_owned(),
            detail: e.to_string(),
        })?;
        let mut call = serde_json::json!({
            "id": id,
            "method": command.identifier(),
            "params": params,
        });
        if let Some(session) = session {
            call["sessionId"] = Value::String(session.to_owned());
        }
        self.shared
            .out
            .send(Message::text(call.to_string()))
            .map_err(|_| CdpError::Closed)?;
        Ok(id)
    }

    /// Send `command` to `session` (or the browser) and wait at most
    /// `timeout` for its answer.
    pub async fn call<C: Command>(
        &self,
        session: Option<&str>,
        command: C,
        timeout: Duration,
    ) -> Result<C::Response, CdpError> {
        if self.is_closed() {
            return Err(CdpError::Closed);
        }
        let method = command.identifier();
        let (tx, rx) = oneshot::channel();
        // Register before the answer can come.
        let id = {
            let mut pending = self.shared.pending.lock().expect("pending");
            let id = self.write(session, &command)?;
            pending.insert(id, tx);
            id
        };
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(CdpError::Closed),
            Err(_) => {
                self.shared.pending.lock().expect("pending").remove(&id);
                return Err(CdpError::Timeout {
                    method: method.into_owned(),
                    timeout,
                });
            }
        };
        match reply {
            Ok(value) => C::response_from_value(value).map_err(|e| CdpError::Decode {
                method: method.into_owned(),
                detail: e.to_string(),
            }),
            Err((code, message)) => Err(CdpError::Protocol {
                method: method.into_owned(),
                code,
                message,
            }),
        }
    }

    /// Send `command` without waiting for its answer.
    pub fn send<C: Command>(&self, session: Option<&str>, command: &C) -> Result<(), CdpError> {
        self.write(session, command).map(|_| ())
    }

    /// Attach to `target` with a flattened session and start collecting its
    /// events (before the attach is answered, so none is missed).
    pub async fn attach(
        &self,
        target: TargetId,
        timeout: Duration,
    ) -> Result<(SessionId, Events), CdpError> {
        let session = self
            .call(
                None,
                AttachToTargetParams {
                    target_id: target,
                    flatten: Some(true),
                },
                timeout,
            )
            .await?
            .session_id;
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared
            .sessions
            .lock()
            .expect("sessions")
            .insert(session.as_ref().to_owned(), tx);
        Ok((session, rx))
    }

    /// Stop routing the events of `session`.
    pub fn forget(&self, session: &SessionId) {
        self.shared
            .sessions
            .lock()
            .expect("sessions")
            .remove(session.as_ref());
    }
}

fn dispatch(shared: &Shared, text: &str) {
    let Ok(incoming) = serde_json::from_str::<Incoming>(text) else {
        tracing::debug!(len = text.len(), "unreadable CDP message");
        return;
    };
    if let Some(id) = incoming.id {
        let waiter = shared.pending.lock().expect("pending").remove(&id);
        if let Some(waiter) = waiter {
            let reply = match incoming.error {
                Some(e) => Err((e.code, e.message)),
                None => Ok(incoming.result.unwrap_or(Value::Null)),
            };
            let _ = waiter.send(reply);
        }
        return;
    }
    let Some(method) = incoming.method else {
        return;
    };
    match incoming.session_id {
        Some(session) => {
            let sessions = shared.sessions.lock().expect("sessions");
            if let Some(events) = sessions.get(&session) {
                let _ = events.send(Event {
                    method,
                    params: incoming.params,
                });
            }
        }
        None if method == "Target.detachedFromTarget" => {
            // The session's target closed or crashed: end its events.
            if let Some(session) = incoming.params.get("sessionId").and_then(Value::as_str) {
                shared.sessions.lock().expect("sessions").remove(session);
            }
        }
        None => {}
    }
}

/// A Chromium process and the connection to it.
#[derive(Debug)]
pub struct Launched {
    pub child: Child,
    pub cdp: Cdp,
}

/// Start Chromium with exactly `args` (without leading dashes) plus a
/// fresh `--user-data-dir` and a debugging port chosen by Chromium, and
/// connect to it. The process is killed if the handle is dropped.
pub async fn launch(
    executable: &Path,
    args: &[String],
    user_data_dir: &Path,
    timeout: Duration,
) -> Result<Launched, String> {
    let mut command = Process::new(executable);
    command
        .args(
            args.iter()
                .map(|a| format!("--{}", a.trim_start_matches('-'))),
        )
        .arg(format!("--user-data-dir={}", user_data_dir.display()))
        .arg("--remote-debugging-port=0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting {}: {e}", executable.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let found = tokio::time::timeout(timeout, async {
        let mut tail = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.trim().strip_prefix("DevTools listening on ") {
                return Ok(url.to_owned());
            }
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
        Err(tail.join("\n"))
    })
    .await;
    let ws_url = match found {
        Ok(Ok(url)) => url,
        Ok(Err(output)) => {
            let _ = child.kill().await;
            return Err(format!(
                "{} exited before it listened: {output}",
                executable.display()
            ));
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(format!(
                "{} did not listen within {timeout:?}",
                executable.display()
            ));
        }
    };
    // Keep reading what it prints, or it blocks once the pipe is full.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::trace!(target: "chromium", "{line}");
        }
    });
    match Cdp::connect(&ws_url).await {
        Ok(cdp) => Ok(Launched { child, cdp }),
        Err(e) => {
            let _ = child.kill().await;
            Err(e)
        }
    }
}

/// A fresh profile directory under the system's temporary directory.
pub fn profile_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "url2png-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}
