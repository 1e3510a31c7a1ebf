//! A loopback TCP proxy that can be broken on demand, to put an outage
//! between a process and a service it talks to.
//!
//! While [`FaultProxy::fail`] is in force the proxy drops every connection
//! it holds and closes each new one as soon as it is accepted, so clients
//! see resets and empty replies, as they would when a load balancer or NAT
//! in front of the service fails. [`FaultProxy::stall`] is the quieter
//! fault: every connection, open or new, goes silent and stays open, as
//! when a route black-holes packets or a NAT entry is lost; only a client
//! with timeouts notices. [`FaultProxy::restore`] forwards again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const FORWARD: u8 = 0;
const FAIL: u8 = 1;
const STALL: u8 = 2;

#[derive(Debug)]
struct State {
    /// `FORWARD`, `FAIL` or `STALL`.
    mode: AtomicU8,
    /// Bumped on every `fail` and `stall`, so connections opened before
    /// them end or go silent.
    generation: watch::Sender<u64>,
    forwarded: AtomicU64,
    refused: AtomicU64,
    held: AtomicU64,
}

/// A running proxy. Dropping it stops accepting.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State {
            mode: AtomicU8::new(FORWARD),
            generation: watch::channel(0).0,
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            held: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, upstream, state.clone()));
        Self { addr, state, task }
    }

    /// Forward to the `http://host:port` endpoint of an HTTP service.
    pub async fn for_endpoint(endpoint: &str) -> Self {
        let url = url::Url::parse(endpoint).expect("endpoint is a URL");
        let host = url.host_str().expect("endpoint has a host");
        let port = url.port_or_known_default().expect("endpoint has a port");
        let upstream = tokio::net::lookup_host((host, port))
            .await
            .expect("resolve the endpoint")
            .next()
            .expect("the endpoint resolves");
        Self::start(upstream).await
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` URL of the proxy, to use as an endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drop every open connection and refuse new ones until [`restore`].
    ///
    /// [`restore`]: FaultProxy::restore
    pub fn fail(&self) {
        self.state.mode.store(FAIL, Ordering::SeqCst);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Go silent until [`restore`]: open connections stop carrying bytes
    /// and stay open, new ones are accepted and never answered. The silent
    /// ones stay silent after `restore`, until the proxy is dropped, as a
    /// connection whose NAT entry was lost does.
    ///
    /// [`restore`]: FaultProxy::restore
    pub fn stall(&self) {
        self.state.mode.store(STALL, Ordering::SeqCst);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Forward new connections again.
    pub fn restore(&self) {
        self.state.mode.store(FORWARD, Ordering::SeqCst);
    }

    /// Connections forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the proxy was failing.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Connections gone silent because the proxy was stalling, open ones
    /// included.
    pub fn held(&self) -> u64 {
        self.state.held.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.fail();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, state: Arc<State>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let mut generation = state.generation.subscribe();
        generation.mark_unchanged();
        match state.mode.load(Ordering::SeqCst) {
            FAIL => {
                state.refused.fetch_add(1, Ordering::SeqCst);
                // A reset rather than an orderly close, like a dead peer.
                let _ = client.set_zero_linger();
                drop(client);
                continue;
            }
            STALL => {
                state.held.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(hold(client, None, generation, state.clone()));
                continue;
            }
            _ => {}
        }
        state.forwarded.fetch_add(1, Ordering::SeqCst);
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                _ = generation.changed() => {}
            }
            if state.mode.load(Ordering::SeqCst) == STALL {
                state.held.fetch_add(1, Ordering::SeqCst);
                hold(client, Some(server), generation, state).await;
            } else {
                let _ = client.set_zero_linger();
            }
        });
    }
}

/// Keep a connection open and silent until the proxy fails or is dropped.
async fn hold(
    client: TcpStream,
    server: Option<TcpStream>,
    mut generation: watch::Receiver<u64>,
    state: Arc<State>,
) {
    while generation.changed().await.is_ok() {
        if state.mode.load(Ordering::SeqCst) == FAIL {
            break;
        }
    }
    let _ = client.set_zero_linger();
    drop((client, server));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An upstream that echoes every byte.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<u8> {
        stream.write_all(b"x").await.ok()?;
        let mut byte = [0u8];
        match tokio::time::timeout(within, stream.read(&mut byte)).await {
            Ok(Ok(1)) => Some(byte[0]),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_stall_silences_open_and_new_connections_until_restored() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut open, Duration::from_secs(5)).await,
            Some(b'x')
        );

        proxy.stall();
        // Silence can only be observed for a while; 300 ms is far beyond a
        // loopback echo's round trip.
        let quiet = Duration::from_millis(300);
        assert_eq!(round_trip(&mut open, quiet).await, None, "open one silent");
        let mut new = TcpStream::connect(proxy.addr())
            .await
            .expect("accepted while stalled");
        assert_eq!(round_trip(&mut new, quiet).await, None, "new one silent");
        assert_eq!(proxy.held(), 2);
        assert_eq!(proxy.refused(), 0);

        proxy.restore();
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut fresh, Duration::from_secs(5)).await,
            Some(b'x')
        );
        assert_eq!(round_trip(&mut open, quiet).await, None, "stays silent");

        proxy.fail();
        let mut byte = [0u8];
        let closed = tokio::time::timeout(Duration::from_secs(5), open.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "a failure ends the silent ones: {closed:?}"
        );
    }
}
