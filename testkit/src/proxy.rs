//! A loopback TCP proxy that can be broken on demand, to put an outage
//! between a process and a service it talks to.
//!
//! While [`FaultProxy::fail`] is in force the proxy drops every connection
//! it holds and closes each new one as soon as it is accepted, so clients
//! see resets and empty replies, as they would when a load balancer or NAT
//! in front of the service fails. [`FaultProxy::restore`] forwards again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug)]
struct State {
    failing: AtomicBool,
    /// Bumped on every `fail`, so connections opened before it end.
    generation: watch::Sender<u64>,
    forwarded: AtomicU64,
    refused: AtomicU64,
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
            failing: AtomicBool::new(false),
            generation: watch::channel(0).0,
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
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
        self.state.failing.store(true, Ordering::SeqCst);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Forward again.
    pub fn restore(&self) {
        self.state.failing.store(false, Ordering::SeqCst);
    }

    /// Connections forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the proxy was failing.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
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
        if state.failing.load(Ordering::SeqCst) {
            state.refused.fetch_add(1, Ordering::SeqCst);
            // A reset rather than an orderly close, like a dead peer.
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        state.forwarded.fetch_add(1, Ordering::SeqCst);
        let mut generation = state.generation.subscribe();
        generation.mark_unchanged();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = generation.changed() => {
                    let _ = client.set_zero_linger();
                }
            }
        });
    }
}
