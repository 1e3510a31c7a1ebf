//! An HTTP proxy in front of the emulator that tampers with chosen calls,
//! for faults a TCP proxy cannot make: an SQS answer that comes late, an
//! SQS call that takes effect but is never answered, entries the queue
//! refuses, and S3 writes of chosen keys answered with a service error.
//! Everything else passes untouched.
//!
//! SQS calls are told apart by the JSON protocol's `X-Amz-Target` header
//! (`AmazonSQS.SendMessageBatch`), S3 calls by method and path. Refusals are real: the proxy gives the
//! chosen entries a `DelaySeconds` over SQS's 900 s limit, so the emulator
//! itself fails them, and whatever it accepted is really queued.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A `DelaySeconds` SQS refuses (its limit is 900).
const REFUSED_DELAY: u64 = 1800;

#[derive(Debug, Default)]
struct Rules {
    delay: HashMap<String, Duration>,
    swallow: HashSet<String>,
    /// Operation → entry ids to spoil (ignored for `SendMessage`).
    spoil: HashMap<String, Vec<String>>,
    /// (method, path suffix, status): answered at once, not forwarded.
    refuse: Vec<(String, String, u16)>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    rules: Mutex<Rules>,
    calls: Mutex<Vec<String>>,
    stopped: watch::Sender<bool>,
}

/// A running proxy. Dropping it stops it and ends the calls it holds.
#[derive(Debug)]
pub struct AwsProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl AwsProxy {
    /// Listen on a free loopback port and forward to the `http://host:port`
    /// endpoint of the emulator.
    pub async fn start(endpoint: &str) -> Self {
        let url = url::Url::parse(endpoint).expect("endpoint is a URL");
        let upstream = tokio::net::lookup_host((
            url.host_str().expect("endpoint has a host"),
            url.port_or_known_default().expect("endpoint has a port"),
        ))
        .await
        .expect("resolve the endpoint")
        .next()
        .expect("the endpoint resolves");
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::default(),
            calls: Mutex::default(),
            stopped: watch::channel(false).0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// `http://` URL of the proxy, to use as an endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer `operation` calls `delay` after the emulator has answered.
    pub fn delay_answers(&self, operation: &str, delay: Duration) {
        self.rules().delay.insert(operation.to_owned(), delay);
    }

    /// Pass `operation` calls on and never answer them: the call takes
    /// effect and the client hears nothing until it gives up.
    pub fn swallow_answers(&self, operation: &str) {
        self.rules().swallow.insert(operation.to_owned());
    }

    /// Have the emulator refuse, for real, the `SendMessageBatch` entries
    /// with these ids, or (for `SendMessage`) every call.
    pub fn spoil(&self, operation: &str, entry_ids: &[&str]) {
        self.rules().spoil.insert(
            operation.to_owned(),
            entry_ids.iter().map(|id| (*id).to_owned()).collect(),
        );
    }

    /// Answer `method` requests whose path ends with `suffix` with `status`
    /// and an S3 error body (`SlowDown` for 503, `InternalError` else),
    /// without forwarding them: a store that fails those writes.
    pub fn refuse(&self, method: &str, suffix: &str, status: u16) {
        self.rules()
            .refuse
            .push((method.to_owned(), suffix.to_owned(), status));
    }

    /// How many requests [`refuse`](Self::refuse) has answered.
    pub fn refused(&self) -> usize {
        self.calls("(refused)")
    }

    /// How many `operation` calls have come in.
    pub fn calls(&self, operation: &str) -> usize {
        let calls = self.shared.calls.lock().expect("calls");
        calls.iter().filter(|c| *c == operation).count()
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.shared.rules.lock().expect("rules")
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        self.shared.stopped.send_replace(true);
        self.task.abort();
    }
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("AmazonSQS."))
        .unwrap_or_default()
        .to_owned();
    if !operation.is_empty() {
        shared.calls.lock().expect("calls").push(operation.clone());
    }
    let refusal = {
        let rules = shared.rules.lock().expect("rules");
        rules
            .refuse
            .iter()
            .find(|(m, suffix, _)| *m == method.as_str() && uri.path().ends_with(suffix.as_str()))
            .map(|(_, _, status)| *status)
    };
    if let Some(status) = refusal {
        shared.calls.lock().expect("calls").push("(refused)".into());
        let code = if status == 503 {
            "SlowDown"
        } else {
            "InternalError"
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>refused by the test proxy</Message></Error>"
        );
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, [("content-type", "application/xml")], body).into_response();
    }
    let (delay, swallow, spoil) = {
        let rules = shared.rules.lock().expect("rules");
        (
            rules.delay.get(&operation).copied(),
            rules.swallow.contains(&operation),
            rules.spoil.get(&operation).cloned(),
        )
    };
    let body = match spoil {
        Some(ids) => spoiled(&operation, &body, &ids),
        None => body.to_vec(),
    };
    let answer = exchange(shared.upstream, &method, &uri, &headers, &body).await;
    if swallow {
        let mut stopped = shared.stopped.subscribe();
        let _ = stopped.wait_for(|s| *s).await;
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match answer {
        Some((status, headers, body)) => {
            let mut response = (status, body).into_response();
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    axum::http::HeaderName::from_bytes(name.as_bytes()),
                    axum::http::HeaderValue::from_str(&value),
                ) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        None => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// The call's JSON body with the chosen entries (or the message) given a
/// delay SQS refuses.
fn spoiled(operation: &str, body: &[u8], ids: &[String]) -> Vec<u8> {
    let Ok(mut call) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    if operation == "SendMessage" {
        call["DelaySeconds"] = REFUSED_DELAY.into();
    } else if let Some(entries) = call.get_mut("Entries").and_then(Value::as_array_mut) {
        for entry in entries {
            if entry["Id"]
                .as_str()
                .is_some_and(|id| ids.iter().any(|i| i == id))
            {
                entry["DelaySeconds"] = REFUSED_DELAY.into();
            }
        }
    }
    call.to_string().into_bytes()
}

type Answer = (StatusCode, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 exchange with the emulator on a connection of its own.
async fn exchange(
    upstream: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Answer> {
    const HOP: [&str; 4] = [
        "connection",
        "content-length",
        "transfer-encoding",
        "keep-alive",
    ];
    let mut stream = TcpStream::connect(upstream).await.ok()?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        if !HOP.contains(&name.as_str())
            && let Ok(value) = value.to_str()
        {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!(
        "connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(body).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let reply = crate::http::parse(&raw)?;
    let headers = reply
        .headers
        .into_iter()
        .filter(|(k, _)| !HOP.contains(&k.as_str()))
        .collect();
    Some((
        StatusCode::from_u16(reply.status).ok()?,
        headers,
        reply.body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_chosen_entries_are_spoiled() {
        let call = serde_json::json!({
            "QueueUrl": "q",
            "Entries": [{"Id": "0", "MessageBody": "a"}, {"Id": "1", "MessageBody": "b"}],
        });
        let out: Value = serde_json::from_slice(&spoiled(
            "SendMessageBatch",
            call.to_string().as_bytes(),
            &["1".to_owned()],
        ))
        .unwrap();
        assert!(out["Entries"][0].get("DelaySeconds").is_none());
        assert_eq!(out["Entries"][1]["DelaySeconds"], REFUSED_DELAY);
    }
}
