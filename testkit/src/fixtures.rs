//! A loopback web server for fixture pages with controllable behaviour.
//!
//! Pages registered with [`Fixtures::page`] are served at their exact path.
//! Any other path serves a small default page whose behaviour the query
//! string controls:
//!
//! - `status=503`: answer with that status code;
//! - `delay_ms=200`: wait that long before answering;
//! - `redirect=/elsewhere` (or an absolute URL): answer `302` to it.
//!
//! Every request is recorded as a [`Hit`]; [`Fixtures::wait_for_hits`]
//! awaits a count instead of sleeping.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: Method,
    /// Path, without the query string.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The client's end of the connection the request came on.
    pub peer: SocketAddr,
}

/// What a registered path answers.
#[derive(Debug, Clone)]
pub struct Page {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
    delay: Duration,
    headers: Vec<(String, String)>,
}

impl Page {
    /// A `200` HTML page.
    pub fn html(body: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "text/html; charset=utf-8".into(),
            body: body.into().into_bytes(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// A `200` answer with any content type and body.
    pub fn bytes(content_type: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            content_type: content_type.into(),
            body: body.into(),
            ..Self::html("")
        }
    }

    /// A `302` to `location`.
    pub fn redirect(location: impl Into<String>) -> Self {
        Self::html("").status(302).header("location", location)
    }

    /// Answer with this status code.
    pub fn status(mut self, code: u16) -> Self {
        self.status = StatusCode::from_u16(code).expect("valid status code");
        self
    }

    /// Wait this long before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Add a response header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

#[derive(Debug, Default)]
struct Shared {
    pages: Mutex<HashMap<String, Page>>,
    hits: Mutex<Vec<Hit>>,
}

/// A running fixture server. Dropping it stops the server.
#[derive(Debug)]
pub struct Fixtures {
    addr: SocketAddr,
    shared: Arc<Shared>,
    hit_count: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl Fixtures {
    /// Serve on `127.0.0.1` and a free port.
    pub async fn start() -> Self {
        Self::start_on(IpAddr::from([127, 0, 0, 1])).await
    }

    /// Serve on `ip` (any loopback address, e.g. `127.0.0.3`, to stand for
    /// another site) and a free port.
    pub async fn start_on(ip: IpAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .expect("bind fixture server");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        let (count_tx, hit_count) = watch::channel(0);
        let app = Router::new()
            .fallback(serve)
            .with_state((shared.clone(), Arc::new(count_tx)));
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Self {
            addr,
            shared,
            hit_count,
            task,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An absolute URL for `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Serve `page` at exactly `path`, replacing what was there.
    pub fn page(&self, path: impl Into<String>, page: Page) -> &Self {
        self.shared
            .pages
            .lock()
            .expect("pages lock")
            .insert(path.into(), page);
        self
    }

    /// Every request so far, oldest first.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().expect("hits lock").clone()
    }

    /// How many requests so far had this path.
    pub fn hits_on(&self, path: &str) -> usize {
        self.shared
            .hits
            .lock()
            .expect("hits lock")
            .iter()
            .filter(|h| h.path == path)
            .count()
    }

    /// Wait until `path` has had at least `count` requests, or `timeout`
    /// passes; returns whether it happened.
    pub async fn wait_for_hits(&self, path: &str, count: usize, timeout: Duration) -> bool {
        let mut changes = self.hit_count.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if self.hits_on(path) >= count {
                    return;
                }
                if changes.changed().await.is_err() {
                    // The server is gone; no more hits will come.
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type AppState = (Arc<Shared>, Arc<watch::Sender<usize>>);

async fn serve(
    State((shared, count)): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let uri = request.uri().clone();
    let hit = Hit {
        method: request.method().clone(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: request.headers().clone(),
        peer,
    };
    let total = {
        let mut hits = shared.hits.lock().expect("hits lock");
        hits.push(hit);
        hits.len()
    };
    count.send_replace(total);

    let registered = shared
        .pages
        .lock()
        .expect("pages lock")
        .get(uri.path())
        .cloned();
    let page = registered.unwrap_or_else(|| default_page(uri.path(), uri.query()));
    if !page.delay.is_zero() {
        tokio::time::sleep(page.delay).await;
    }
    let mut response = Response::new(Body::from(page.body));
    *response.status_mut() = page.status;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&page.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    // Fixtures are not cached unless a page says how.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let mut own_cache_control = false;
    for (name, value) in page.headers {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            if n == header::CACHE_CONTROL && !own_cache_control {
                headers.remove(header::CACHE_CONTROL);
                own_cache_control = true;
            }
            headers.append(n, v);
        }
    }
    response
}

/// The default page, shaped by the query string.
fn default_page(path: &str, query: Option<&str>) -> Page {
    let params: HashMap<String, String> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let escaped: String = path
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            c => c.to_string(),
        })
        .collect();
    let mut page = Page::html(format!(
        "<!doctype html><html><head><title>{escaped}</title></head>\
         <body style=\"margin:0;background:#2a6;color:#fff;font:32px sans-serif\">\
         <h1 id=\"ready\">fixture {escaped}</h1></body></html>"
    ));
    if let Some(code) = params
        .get("status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        page.status = code;
    }
    if let Some(ms) = params.get("delay_ms").and_then(|s| s.parse().ok()) {
        page = page.delay(Duration::from_millis(ms));
    }
    if let Some(location) = params.get("redirect") {
        page = Page::redirect(location.clone()).delay(page.delay);
    }
    page
}
