//! The egress guard: an HTTP proxy inside the worker, on loopback, through
//! which Chromium makes every request.
//!
//! For each request (a `CONNECT host:port` for TLS and WebSockets, an
//! absolute-form `GET http://…` for plain HTTP) the proxy checks the host
//! against the URL policy, resolves it itself, checks every address, and
//! connects to exactly an address it checked: there is no second lookup,
//! so DNS rebinding gets nowhere. A refused request gets `403` with an
//! `x-url2png-blocked` header naming the rule, and is recorded.
//!
//! Plain HTTP is kept alive on both sides (hyper's HTTP/1.1): Chromium may
//! send many requests, for any hosts, on one connection to the proxy, and
//! each is checked on its own before it goes out on an idle connection of
//! this proxy's to a checked address of that host (or a new one). Idle
//! connections are never shared between proxies, so not between jobs.
//!
//! Each job's browser context gets a proxy of its own, so what it blocked
//! is known per job; the browser-wide proxy catches what Chromium fetches
//! outside any job (its background traffic), which is refused and counted
//! apart. Chromium is started with `--proxy-bypass-list=<-loopback>`, so not
//! even loopback goes around the proxy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use url2png_core::policy::{PolicyError, UrlPolicy};

use crate::metrics::Metrics;

/// Header on a refusal, naming the rule.
pub const BLOCKED_HEADER: &str = "x-url2png-blocked";
/// Longest request head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;
/// Time allowed for a client to send its request head, and for connecting
/// to a host (all of its addresses together).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an address that does not answer has before the next one is
/// tried alongside it (RFC 8305's connection attempt delay).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);
/// How long a name's checked addresses are reused. A page's sub-resources
/// ask for the same few hosts over and over; each answer was checked when
/// it was resolved, and a connection goes only to one of those addresses,
/// so reuse does not weaken pinning (a rebinding answer is never used
/// without its check).
const RESOLVE_TTL: Duration = Duration::from_secs(10);
/// Names kept at most; the oldest half goes when it is full.
const RESOLVE_CACHE_MAX: usize = 1024;

/// Whose traffic a proxy carries, as the `scope` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One job's browser context.
    Job,
    /// The browser outside any job (its own background requests).
    Browser,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Job => "job",
            Self::Browser => "browser",
        }
    }
}

/// Header on the proxy's `502`, naming why the host was not reached:
/// `name_not_found`, `resolver` or `connect` ([`Unreached::code`]).
pub const UNREACHED_HEADER: &str = "x-url2png-unreached";

/// One refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// `host:port` as requested.
    pub target: String,
    /// The rule, as a person reads it.
    pub reason: String,
    /// The host or address the policy refused, when there is one.
    pub refused: Option<String>,
}

/// A request the policy let through that the proxy could not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreached {
    /// The name does not exist.
    NameNotFound,
    /// The resolver failed or did not answer.
    Resolver,
    /// No checked address of the host accepted a connection in time.
    Connect,
}

impl Unreached {
    /// The value of [`UNREACHED_HEADER`].
    pub fn code(self) -> &'static str {
        match self {
            Self::NameNotFound => "name_not_found",
            Self::Resolver => "resolver",
            Self::Connect => "connect",
        }
    }

    /// The inverse of [`code`](Self::code).
    pub fn from_code(code: &str) -> Option<Self> {
        [Self::NameNotFound, Self::Resolver, Self::Connect]
            .into_iter()
            .find(|u| u.code() == code)
    }
}

/// What a proxy did not let through or could not carry, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressEvent {
    Blocked(Blocked),
    Unreached {
        /// `host:port` as requested.
        target: String,
        kind: Unreached,
        /// The resolver's or the connection's own words.
        detail: String,
    },
}

/// Why [`Egress::connect`] did not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL policy refused the host or an address it resolves to.
    #[error("refused by the URL policy: {0}")]
    Refused(PolicyError),
    /// Allowed, but not reached: the name did not resolve, or nothing
    /// answered.
    #[error("{0}")]
    Unreached(String),
}

/// Checked addresses of names, with the time they were resolved.
type Resolved = HashMap<(String, u16), (Instant, Vec<SocketAddr>)>;

/// What every proxy shares.
#[derive(Debug, Clone)]
pub struct Egress {
    policy: Arc<UrlPolicy>,
    metrics: Metrics,
    resolved: Arc<Mutex<Resolved>>,
}

impl Egress {
    pub fn new(policy: UrlPolicy, metrics: Metrics) -> Self {
        Self {
            policy: Arc::new(policy),
            metrics,
            resolved: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Check `host:port` and give the addresses to connect to: checked now
    /// or, for a name, checked when it was resolved less than
    /// [`RESOLVE_TTL`] ago.
    async fn admit(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, PolicyError> {
        let target = self.policy.check_authority(host, port)?;
        let key = (target.host.clone(), target.port);
        if let Some((at, addrs)) = self.resolved.lock().expect("resolved").get(&key)
            && at.elapsed() < RESOLVE_TTL
        {
            return Ok(addrs.clone());
        }
        let addrs = self.policy.resolve(&target).await?;
        let mut cache = self.resolved.lock().expect("resolved");
        if cache.len() >= RESOLVE_CACHE_MAX {
            let mut ages: Vec<Instant> = cache.values().map(|(at, _)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            cache.retain(|_, (at, _)| *at > cut);
        }
        cache.insert(key, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }

    /// Connect to `host:port` for the worker itself (a webhook): the same
    /// check, resolution and pinning as a proxied request. Gives the stream
    /// and the checked address it is connected to.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(TcpStream, SocketAddr), ConnectError> {
        let addrs = self.admit(host, port).await.map_err(|e| {
            if e.is_refusal() {
                ConnectError::Refused(e)
            } else {
                ConnectError::Unreached(e.to_string())
            }
        })?;
        let stream = connect_any(&addrs).await.ok_or_else(|| {
            ConnectError::Unreached(format!("no address of {host}:{port} accepted a connection"))
        })?;
        let peer = stream
            .peer_addr()
            .map_err(|e| ConnectError::Unreached(e.to_string()))?;
        Ok((stream, peer))
    }

    /// The policy the proxies enforce.
    pub fn policy(&self) -> &UrlPolicy {
        &self.policy
    }

    /// Start a proxy on a free loopback port.
    pub async fn proxy(&self, scope: Scope) -> io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept(
            listener,
            self.clone(),
            scope,
            events.clone(),
            connected.clone(),
        ));
        Ok(Proxy {
            addr,
            events,
            connected,
            task,
        })
    }
}

/// A running proxy. Dropping it stops it and closes its connections.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<EgressEvent>>>,
    connected: Arc<Mutex<Vec<(String, SocketAddr)>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// The proxy's URL, for `--proxy-server` or a browser context.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it refused so far.
    pub fn blocked(&self) -> Vec<Blocked> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                EgressEvent::Blocked(b) => Some(b),
                EgressEvent::Unreached { .. } => None,
            })
            .collect()
    }

    /// What it refused or could not reach so far, in order.
    pub fn events(&self) -> Vec<EgressEvent> {
        self.events.lock().expect("egress events").clone()
    }

    /// The hosts (`host:port` as requested) it connected to so far, each
    /// with the checked address it chose, in order, each pair once.
    pub fn connected(&self) -> Vec<(String, SocketAddr)> {
        self.connected.lock().expect("egress connections").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the connections of one proxy share: its refusals, its idle
/// upstream connections, and the tasks that outlive a request (tunnels,
/// upstream connections), which end with the proxy.
struct Shared {
    egress: Egress,
    scope: Scope,
    events: Arc<Mutex<Vec<EgressEvent>>>,
    connected: Arc<Mutex<Vec<(String, SocketAddr)>>>,
    idle: Mutex<HashMap<(String, u16), Vec<Upstream>>>,
    tasks: Mutex<JoinSet<()>>,
}

/// A kept-alive connection to an origin, and the checked address it goes to.
struct Upstream {
    addr: SocketAddr,
    sender: client::SendRequest<Incoming>,
}

type Body = BoxBody<Bytes, hyper::Error>;

/// Idle connections kept per origin; Chromium opens at most six per host.
const IDLE_PER_ORIGIN: usize = 8;

/// Headers of one hop, never forwarded (RFC 9110, section 7.6.1), besides
/// those the `Connection` header names.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

impl Shared {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().expect("proxy tasks");
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// An idle connection for `origin` to one of `addrs`, if one is ready.
    fn take_idle(&self, origin: &(String, u16), addrs: &[SocketAddr]) -> Option<Upstream> {
        let mut idle = self.idle.lock().expect("idle connections");
        let list = idle.get_mut(origin)?;
        list.retain(|u| !u.sender.is_closed());
        let at = list
            .iter()
            .position(|u| u.sender.is_ready() && addrs.contains(&u.addr))?;
        Some(list.swap_remove(at))
    }

    fn put_idle(&self, origin: (String, u16), upstream: Upstream) {
        let mut idle = self.idle.lock().expect("idle connections");
        let list = idle.entry(origin).or_default();
        list.retain(|u| !u.sender.is_closed());
        if list.len() < IDLE_PER_ORIGIN {
            list.push(upstream);
        }
    }

    /// Note a connection to `target` at `addr` (each pair once, the first
    /// few hundred).
    fn note_connection(&self, target: &str, addr: SocketAddr) {
        let mut connected = self.connected.lock().expect("egress connections");
        if connected.len() < 256 && !connected.iter().any(|(t, a)| t == target && *a == addr) {
            connected.push((target.to_owned(), addr));
        }
    }

    /// Open a connection to one of `addrs` of `target` for plain HTTP
    /// requests.
    async fn open(&self, target: &str, addrs: &[SocketAddr]) -> Option<Upstream> {
        let stream = connect_any(addrs).await?;
        let addr = stream.peer_addr().ok()?;
        self.note_connection(target, addr);
        let (sender, connection) = client::handshake(TokioIo::new(stream)).await.ok()?;
        self.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Some(Upstream { addr, sender })
    }

    fn count(&self, result: &str) {
        self.egress
            .metrics
            .egress_requests
            .with_label_values(&[self.scope.as_str(), result])
            .inc();
    }

    /// Check the host of a request and the addresses it resolves to; the
    /// browser's own traffic is refused whole.
    async fn admit(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, PolicyError> {
        match self.scope {
            Scope::Browser => Err(PolicyError::Host {
                host: host.to_owned(),
                rule: "requests outside a job are not allowed".into(),
            }),
            Scope::Job => self.egress.admit(host, port).await,
        }
    }

    /// Answer one request: every request on a connection is checked on its
    /// own, whatever the connection's earlier requests were for.
    async fn serve(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        Ok(if request.method() == Method::CONNECT {
            self.tunnel(request).await
        } else {
            self.forward(request).await
        })
    }

    /// `CONNECT host:port`: a tunnel to a checked address (TLS, WebSockets).
    async fn tunnel(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let authority = request.uri().to_string();
        let Some((host, port)) = split_authority(&authority, 443) else {
            return self.refuse(&authority, "malformed CONNECT target", None);
        };
        let target = format!("{host}:{port}");
        let addrs = match self.admit(&host, port).await {
            Ok(addrs) => addrs,
            Err(e) => return self.not_admitted(&target, &e),
        };
        let Some(mut upstream) = connect_any(&addrs).await else {
            return self.unreachable(
                &target,
                Unreached::Connect,
                "no address accepted a connection",
            );
        };
        if let Ok(addr) = upstream.peer_addr() {
            self.note_connection(&target, addr);
        }
        self.count("allowed");
        self.spawn(async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => {
                    let mut client = TokioIo::new(upgraded);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT not upgraded"),
            }
        });
        Response::new(empty())
    }

    /// An absolute-form `http://` request, sent on a kept-alive connection
    /// to a checked address of its host.
    async fn forward(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let raw = request.uri().to_string();
        let Ok(url) = url::Url::parse(&raw) else {
            return self.refuse(&raw, "not an absolute URL", None);
        };
        if url.scheme() != "http" {
            let reason = format!("scheme `{}` is not allowed through the proxy", url.scheme());
            return self.refuse(&raw, &reason, Some(format!("{}:", url.scheme())));
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return self.refuse(&raw, "no host", None);
        };
        let origin = (host.to_owned(), port);
        let target = format!("{host}:{port}");
        let addrs = match self.admit(host, port).await {
            Ok(addrs) => addrs,
            Err(e) => return self.not_admitted(&target, &e),
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let (mut parts, body) = request.into_parts();
        let Ok(uri) = path.parse() else {
            return self.refuse(&raw, "not an absolute URL", None);
        };
        parts.uri = uri;
        strip_hop_by_hop(&mut parts.headers);
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        if let Ok(value) = HeaderValue::from_str(&host_header) {
            parts.headers.insert(header::HOST, value);
        }
        let mut request = Request::from_parts(parts, body);
        // An idle connection may have been closed by the origin meanwhile:
        // then the request comes back unsent and goes on a new one.
        let mut fresh = false;
        loop {
            let idle = if fresh {
                None
            } else {
                self.take_idle(&origin, &addrs)
            };
            let reused = idle.is_some();
            let Some(mut upstream) = (match idle {
                Some(u) => Some(u),
                None => self.open(&target, &addrs).await,
            }) else {
                return self.unreachable(
                    &target,
                    Unreached::Connect,
                    "no address accepted a connection",
                );
            };
            match upstream.sender.try_send_request(request).await {
                Ok(mut response) => {
                    self.count("allowed");
                    self.put_idle(origin, upstream);
                    strip_hop_by_hop(response.headers_mut());
                    return response.map(BodyExt::boxed);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        request = unsent;
                        fresh = true;
                    }
                    _ => {
                        let error = e.into_error().to_string();
                        return self.unreachable(&target, Unreached::Connect, &error);
                    }
                },
            }
        }
    }

    /// The answer to a request the policy did not admit: a refusal, or
    /// DNS having no (or no usable) answer, which is not one.
    fn not_admitted(&self, target: &str, error: &PolicyError) -> Response<Body> {
        match error {
            PolicyError::NameNotFound { .. } => {
                self.unreachable(target, Unreached::NameNotFound, &error.to_string())
            }
            PolicyError::Unresolvable { .. } => {
                self.unreachable(target, Unreached::Resolver, &error.to_string())
            }
            _ => self.refuse(target, &error.to_string(), error.refused()),
        }
    }

    fn unreachable(&self, target: &str, kind: Unreached, detail: &str) -> Response<Body> {
        tracing::debug!(
            target,
            kind = kind.code(),
            detail,
            "egress could not reach a host"
        );
        self.count("unreachable");
        self.events
            .lock()
            .expect("egress events")
            .push(EgressEvent::Unreached {
                target: target.to_owned(),
                kind,
                detail: detail.to_owned(),
            });
        text(
            StatusCode::BAD_GATEWAY,
            Some((UNREACHED_HEADER, HeaderValue::from_static(kind.code()))),
            format!("cannot reach {target}: {}\n", visible(detail)),
        )
    }

    fn refuse(&self, target: &str, reason: &str, refused: Option<String>) -> Response<Body> {
        match self.scope {
            Scope::Job => tracing::info!(target, reason, "egress refused"),
            Scope::Browser => tracing::debug!(target, reason, "background request refused"),
        }
        self.count("blocked");
        self.events
            .lock()
            .expect("egress events")
            .push(EgressEvent::Blocked(Blocked {
                target: target.to_owned(),
                reason: reason.to_owned(),
                refused,
            }));
        text(
            StatusCode::FORBIDDEN,
            HeaderValue::from_str(&visible(reason))
                .ok()
                .map(|v| (BLOCKED_HEADER, v)),
            format!("blocked by the url2png egress policy: {reason}\n"),
        )
    }
}

/// `text` with anything but visible ASCII and spaces replaced, as header
/// values must be.
fn visible(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A plain-text answer of the proxy's own, with its header if any.
fn text(
    status: StatusCode,
    extra: Option<(&'static str, HeaderValue)>,
    body: String,
) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some((name, value)) = extra {
        headers.insert(name, value);
    }
    response
}

/// Drop the headers that belong to one hop, including those `Connection`
/// names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

async fn accept(
    listener: TcpListener,
    egress: Egress,
    scope: Scope,
    events: Arc<Mutex<Vec<EgressEvent>>>,
    connected: Arc<Mutex<Vec<(String, SocketAddr)>>>,
) {
    let shared = Arc::new(Shared {
        egress,
        scope,
        events,
        connected,
        idle: Mutex::new(HashMap::new()),
        tasks: Mutex::new(JoinSet::new()),
    });
    let mut builder = server::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    // Connections live in the set, so stopping the proxy ends them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let connection = builder
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |request| shared.clone().serve(request)),
                    )
                    .with_upgrades();
                connections.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "proxy connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// `host:port`, with brackets around IPv6 hosts.
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((format!("[{host}]"), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), default_port)),
    }
}

/// Connect to one of `addrs` (all checked): each gets [`ATTEMPT_DELAY`]
/// before the next is tried beside it, the first to connect wins, and all
/// together get [`CONNECT_TIMEOUT`]. An address that refuses at once hands
/// over to the next at once.
async fn connect_any(addrs: &[SocketAddr]) -> Option<TcpStream> {
    use futures::StreamExt;
    let attempt = |addr: SocketAddr| async move { TcpStream::connect(addr).await.ok() };
    let mut pending = addrs.iter().copied();
    let mut attempts = futures::stream::FuturesUnordered::new();
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        if let Some(addr) = pending.next() {
            attempts.push(attempt(addr));
        } else if attempts.is_empty() {
            return None;
        }
        tokio::select! {
            done = attempts.next(), if !attempts.is_empty() => {
                if let Some(Some(stream)) = done {
                    let _ = stream.set_nodelay(true);
                    return Some(stream);
                }
                // This one failed: try the next now.
            }
            _ = tokio::time::sleep(ATTEMPT_DELAY) => {}
            _ = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split() {
        assert_eq!(
            split_authority("example.com:443", 443),
            Some(("example.com".into(), 443))
        );
        assert_eq!(
            split_authority("example.com", 80),
            Some(("example.com".into(), 80))
        );
        assert_eq!(
            split_authority("[::1]:8443", 443),
            Some(("[::1]".into(), 8443))
        );
        assert_eq!(split_authority("[::1]", 443), Some(("[::1]".into(), 443)));
        assert_eq!(split_authority("[::1]x", 443), None);
        assert_eq!(split_authority("host:notaport", 443), None);
    }
}
