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
//! Each job's browser context gets a proxy of its own, so what it blocked
//! is known per job; the browser-wide proxy catches what Chromium fetches
//! outside any job (its background traffic), which is refused and counted
//! apart. Chromium is started with `--proxy-bypass-list=<-loopback>`, so not
//! even loopback goes around the proxy.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// One refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// `host:port` as requested.
    pub target: String,
    /// The rule, as a person reads it.
    pub reason: String,
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

    /// The policy the proxies enforce.
    pub fn policy(&self) -> &UrlPolicy {
        &self.policy
    }

    /// Start a proxy on a free loopback port.
    pub async fn proxy(&self, scope: Scope) -> io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let blocked = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept(listener, self.clone(), scope, blocked.clone()));
        Ok(Proxy {
            addr,
            blocked,
            task,
        })
    }
}

/// A running proxy. Dropping it stops it and closes its connections.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    blocked: Arc<Mutex<Vec<Blocked>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// The proxy's URL, for `--proxy-server` or a browser context.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it refused so far.
    pub fn blocked(&self) -> Vec<Blocked> {
        self.blocked.lock().expect("blocked log").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    egress: Egress,
    scope: Scope,
    blocked: Arc<Mutex<Vec<Blocked>>>,
) {
    // Connections live in the set, so stopping the proxy ends them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let egress = egress.clone();
                let blocked = blocked.clone();
                connections.spawn(async move {
                    if let Err(e) = handle(stream, &egress, scope, &blocked).await {
                        tracing::debug!(error = %e, "proxy connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

async fn read_head(stream: &mut TcpStream) -> io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf[end + 4..].to_vec();
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok((
        Head {
            method: method.to_owned(),
            target: target.to_owned(),
            version: version.to_owned(),
            headers,
        },
        rest,
    ))
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

async fn handle(
    mut client: TcpStream,
    egress: &Egress,
    scope: Scope,
    blocked: &Mutex<Vec<Blocked>>,
) -> io::Result<()> {
    let (head, rest) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request head"))??;
    let connect = head.method.eq_ignore_ascii_case("CONNECT");
    let (host, port, path) = if connect {
        match split_authority(&head.target, 443) {
            Some((host, port)) => (host, port, None),
            None => {
                return refuse(
                    &mut client,
                    egress,
                    scope,
                    blocked,
                    &head.target,
                    "malformed CONNECT target",
                )
                .await;
            }
        }
    } else {
        let Ok(url) = url::Url::parse(&head.target) else {
            return refuse(
                &mut client,
                egress,
                scope,
                blocked,
                &head.target,
                "not an absolute URL",
            )
            .await;
        };
        if url.scheme() != "http" {
            let reason = format!("scheme `{}` is not allowed through the proxy", url.scheme());
            return refuse(&mut client, egress, scope, blocked, &head.target, &reason).await;
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return refuse(&mut client, egress, scope, blocked, &head.target, "no host").await;
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        (host.to_owned(), port, Some(path))
    };
    let target = format!("{host}:{port}");

    // Background traffic of the browser is never a job's: refuse it all.
    let admitted = match scope {
        Scope::Browser => Err(PolicyError::Host {
            host: host.clone(),
            rule: "requests outside a job are not allowed".into(),
        }),
        Scope::Job => egress.admit(&host, port).await,
    };
    let addrs = match admitted {
        Ok(addrs) => addrs,
        Err(e) => {
            return refuse(&mut client, egress, scope, blocked, &target, &e.to_string()).await;
        }
    };
    let Some(mut upstream) = connect_any(&addrs).await else {
        egress
            .metrics
            .egress_requests
            .with_label_values(&[scope.as_str(), "unreachable"])
            .inc();
        let body = format!("cannot connect to {target}\n");
        let reply = format!(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return client.write_all(reply.as_bytes()).await;
    };
    egress
        .metrics
        .egress_requests
        .with_label_values(&[scope.as_str(), "allowed"])
        .inc();
    match path {
        None => {
            client
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await?;
        }
        Some(path) => {
            // One request per connection: the next request may be for
            // another host, which must be checked on its own.
            let mut out = format!("{} {path} {}\r\n", head.method, head.version);
            for (name, value) in &head.headers {
                let lower = name.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "proxy-connection" | "proxy-authorization" | "connection" | "keep-alive"
                ) {
                    continue;
                }
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            out.push_str("Connection: close\r\n\r\n");
            upstream.write_all(out.as_bytes()).await?;
        }
    }
    if !rest.is_empty() {
        upstream.write_all(&rest).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
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

async fn refuse(
    client: &mut TcpStream,
    egress: &Egress,
    scope: Scope,
    blocked: &Mutex<Vec<Blocked>>,
    target: &str,
    reason: &str,
) -> io::Result<()> {
    match scope {
        Scope::Job => tracing::info!(target, reason, "egress refused"),
        Scope::Browser => tracing::debug!(target, reason, "background request refused"),
    }
    egress
        .metrics
        .egress_requests
        .with_label_values(&[scope.as_str(), "blocked"])
        .inc();
    blocked.lock().expect("blocked log").push(Blocked {
        target: target.to_owned(),
        reason: reason.to_owned(),
    });
    // Header values must be visible ASCII.
    let header: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let body = format!("blocked by the url2png egress policy: {reason}\n");
    let reply = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n{BLOCKED_HEADER}: {header}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(reply.as_bytes()).await
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
