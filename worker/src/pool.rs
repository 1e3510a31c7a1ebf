//! The shared, self-healing Chromium pool.
//!
//! `browsers` Chromium processes are launched once and shared by every job;
//! each takes at most `pages_per_browser` jobs at a time. A job gets a
//! [`Lease`]: a new target in a new browser context of the least-loaded
//! live browser, so no cookies, storage or cache pass between jobs.
//! Dropping the lease disposes of the context, which closes its target.
//!
//! The pool starts Chromium itself and talks to it over the worker's own
//! CDP connection ([`crate::cdp`]): a job's page costs a context, a target,
//! an attach and one pipelined set-up round trip ([`Tab::start`]).
//!
//! Healing: a task per browser watches its CDP connection and marks the
//! browser dead when the connection breaks (a crash); a probe marks it hung
//! when it stops answering. A dead or hung browser takes no new jobs, its
//! process is killed and reaped, and a replacement is launched. After
//! `recycle_after` renders a browser is drained: a replacement starts at
//! once and the old one is closed when its last job ends.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::browser::{BrowserContextId, GetVersionParams};
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams, DisposeBrowserContextParams,
};
use tokio::process::Child;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::cdp::{self, Cdp};
use crate::egress::{Blocked, Egress, EgressEvent, Proxy, Scope};
use crate::metrics::Metrics;
use crate::render::{RequestCheck, Tab, TabSettings};

/// How the pool launches and manages browsers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub chromium_path: PathBuf,
    /// Extra command-line arguments for Chromium.
    pub extra_args: Vec<String>,
    /// Run Chromium's sandbox. Off when running as root, where Chromium
    /// refuses to start with it.
    pub sandbox: bool,
    pub browsers: usize,
    pub pages_per_browser: usize,
    /// Close and replace a browser after this many renders.
    pub recycle_after: u64,
    /// Pages each browser keeps open ahead of need, each in a fresh
    /// context, so a job does not wait for one to be set up.
    pub spare_pages: usize,
    /// Budget of every single call into Chromium.
    pub cdp_timeout: Duration,
    /// Longest navigation Chromium's client waits for; the job's own
    /// timeout is shorter.
    pub navigation_timeout: Duration,
    /// How often each browser is asked whether it still answers.
    pub probe_interval: Duration,
    /// The egress guard every request goes through; `None` turns the guard
    /// off (benchmarks of its cost; the URL policy is still checked before
    /// a job starts).
    pub egress: Option<Egress>,
    /// The request check inside Chromium (on with the egress guard).
    pub request_check: Option<RequestCheck>,
}

/// Why the pool could not hand out a page.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no browser could give a page: {0}")]
    Unavailable(String),
    #[error("the pool is shutting down")]
    Closed,
}

/// Why a browser was replaced, as the `reason` label of restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    Crash,
    Hang,
    Recycle,
}

impl RestartReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Hang => "hang",
            Self::Recycle => "recycle",
        }
    }
}

enum Event {
    /// The browser is gone or stuck: kill it and launch another.
    Failed(u64, RestartReason),
    /// The browser reached its render budget: launch another now.
    Drain(u64),
    /// A drained browser's last job ended: close it.
    Retire(u64),
}

struct Slot {
    id: u64,
    cdp: Cdp,
    /// The browser process, until it is reaped.
    child: tokio::sync::Mutex<Option<Child>>,
    pid: Option<u32>,
    alive: AtomicBool,
    draining: AtomicBool,
    active: AtomicUsize,
    renders: AtomicU64,
    /// Pages opened ahead of need, each in its own fresh context.
    spares: Mutex<VecDeque<Opened>>,
    refilling: AtomicBool,
    user_data_dir: PathBuf,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Slot {
    fn usable(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

/// A set-up target in its own context, behind its own proxy.
struct Opened {
    context: BrowserContextId,
    tab: Tab,
    proxy: Option<Proxy>,
}

struct Inner {
    config: PoolConfig,
    /// The proxy for what browsers fetch outside any job.
    background_proxy: Option<Proxy>,
    metrics: Metrics,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    /// One permit per page the pool may have open.
    pages: Arc<Semaphore>,
    changed: Notify,
    events: mpsc::UnboundedSender<Event>,
    next_id: AtomicU64,
    closing: AtomicBool,
}

/// The browser pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
    supervisor: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("live_browsers", &self.live_browsers())
            .finish()
    }
}

impl Pool {
    /// Launch `config.browsers` browsers. Fails if the first cannot start
    /// (a wrong path, a missing library): nothing would ever render.
    pub async fn start(config: PoolConfig, metrics: Metrics) -> anyhow::Result<Self> {
        let (events, rx) = mpsc::unbounded_channel();
        let background_proxy = match &config.egress {
            Some(egress) => Some(egress.proxy(Scope::Browser).await?),
            None => None,
        };
        let inner = Arc::new(Inner {
            background_proxy,
            pages: Arc::new(Semaphore::new(config.browsers * config.pages_per_browser)),
            config,
            metrics,
            slots: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            events,
            next_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
        });
        let launches = (0..inner.config.browsers).map(|_| launch(&inner));
        for slot in futures::future::join_all(launches).await {
            let slot = slot?;
            inner.slots.lock().expect("slots").insert(slot.id, slot);
        }
        for slot in inner.slots.lock().expect("slots").values() {
            refill(&inner, slot);
        }
        let supervisor = tokio::spawn(supervise(inner.clone(), rx));
        Ok(Self {
            inner,
            supervisor: Arc::new(Mutex::new(Some(supervisor))),
        })
    }

    /// Browsers that can take jobs now.
    pub fn live_browsers(&self) -> usize {
        self.inner
            .slots
            .lock()
            .expect("slots")
            .values()
            .filter(|s| s.alive.load(Ordering::Acquire))
            .count()
    }

    /// Total pages the pool can have open at once.
    pub fn capacity(&self) -> usize {
        self.inner.config.browsers * self.inner.config.pages_per_browser
    }

    /// A fresh page in a fresh browser context, waiting at most `wait` for
    /// a browser to have room.
    pub async fn acquire(&self, wait: Duration) -> Result<Lease, PoolError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + wait;
        let permit = tokio::time::timeout_at(deadline, inner.pages.clone().acquire_owned())
            .await
            .map_err(|_| PoolError::Unavailable("every page is busy".into()))?
            .map_err(|_| PoolError::Closed)?;
        let mut last_error = String::from("no live browser");
        for _attempt in 0..3 {
            let slot = loop {
                if inner.closing.load(Ordering::Acquire) {
                    return Err(PoolError::Closed);
                }
                let notified = inner.changed.notified();
                if let Some(slot) = self.pick() {
                    break slot;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Err(PoolError::Unavailable(last_error));
                }
            };
            let spare = slot.spares.lock().expect("spares").pop_front();
            let opened = match spare {
                Some(ready) => Ok(ready),
                None => open_page(inner, &slot).await,
            };
            refill(inner, &slot);
            match opened {
                Ok(Opened {
                    context,
                    tab,
                    proxy,
                }) => {
                    return Ok(Lease {
                        tab: Some(tab),
                        context: Some(context),
                        proxy,
                        slot,
                        inner: inner.clone(),
                        _permit: permit,
                    });
                }
                Err(e) => {
                    finish_job(inner, &slot, false);
                    last_error = e;
                }
            }
        }
        Err(PoolError::Unavailable(last_error))
    }

    /// The least-loaded usable browser with room, counted as taken.
    fn pick(&self) -> Option<Arc<Slot>> {
        let slots = self.inner.slots.lock().expect("slots");
        let max = self.inner.config.pages_per_browser;
        let slot = slots
            .values()
            .filter(|s| s.usable() && s.active.load(Ordering::Acquire) < max)
            .min_by_key(|s| (s.active.load(Ordering::Acquire), s.id))?
            .clone();
        slot.active.fetch_add(1, Ordering::AcqRel);
        Some(slot)
    }

    /// Tell the pool that a browser seems broken (for example, a render on
    /// it timed out in a CDP call). It is probed and replaced if need be.
    pub fn report_suspect(&self, lease: &Lease) {
        let slot = lease.slot.clone();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if !probe(&inner, &slot).await {
                mark_failed(&inner, &slot, RestartReason::Hang);
            }
        });
    }

    /// Close every browser and wait for their processes to exit.
    pub async fn close(&self) {
        self.inner.closing.store(true, Ordering::Release);
        self.inner.pages.close();
        self.inner.changed.notify_waiters();
        let supervisor = self.supervisor.lock().expect("supervisor").take();
        if let Some(task) = supervisor {
            task.abort();
            let _ = task.await;
        }
        let slots: Vec<_> = self
            .inner
            .slots
            .lock()
            .expect("slots")
            .drain()
            .map(|(_, s)| s)
            .collect();
        futures::future::join_all(slots.iter().map(|slot| shut_down(&self.inner, slot))).await;
    }

    /// Process ids of the running browsers, for tests that kill one.
    pub async fn browser_pids(&self) -> Vec<u32> {
        let slots: Vec<_> = self
            .inner
            .slots
            .lock()
            .expect("slots")
            .values()
            .cloned()
            .collect();
        slots.iter().filter_map(|s| s.pid).collect()
    }
}

async fn open_page(inner: &Arc<Inner>, slot: &Arc<Slot>) -> Result<Opened, String> {
    let timeout = inner.config.cdp_timeout;
    let proxy = match &inner.config.egress {
        Some(egress) => Some(
            egress
                .proxy(Scope::Job)
                .await
                .map_err(|e| format!("starting the egress proxy: {e}"))?,
        ),
        None => None,
    };
    let cdp = &slot.cdp;
    // Every request of the context goes through its own proxy; `<-loopback>`
    // removes Chromium's implicit bypass for loopback addresses.
    let params = CreateBrowserContextParams {
        dispose_on_detach: None,
        proxy_server: proxy.as_ref().map(Proxy::url),
        proxy_bypass_list: proxy.as_ref().map(|_| "<-loopback>".to_owned()),
        origins_with_universal_network_access: None,
    };
    let context = match cdp.call(None, params, timeout).await {
        Ok(created) => created.browser_context_id,
        Err(e) => {
            let reason = match e {
                cdp::CdpError::Timeout { .. } => RestartReason::Hang,
                _ => RestartReason::Crash,
            };
            if !matches!(e, cdp::CdpError::Protocol { .. }) {
                mark_failed(inner, slot, reason);
            }
            return Err(format!("creating a browser context: {e}"));
        }
    };
    let opened = async {
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(context.clone())
            .build()?;
        let target = cdp
            .call(None, params, timeout)
            .await
            .map_err(|e| format!("opening a target: {e}"))?
            .target_id;
        let (session, events) = cdp
            .attach(target.clone(), timeout)
            .await
            .map_err(|e| format!("attaching to a target: {e}"))?;
        let settings = TabSettings {
            check: inner.config.request_check.clone(),
            cdp_timeout: timeout,
            navigation_timeout: inner.config.navigation_timeout,
        };
        Tab::start(
            cdp.clone(),
            context.clone(),
            target,
            session,
            events,
            settings,
        )
        .await
        .map_err(|e| format!("setting up a page: {e}"))
    }
    .await;
    match opened {
        Ok(tab) => Ok(Opened {
            context,
            tab,
            proxy,
        }),
        Err(message) => {
            // The context is of no use without its page.
            let _ = cdp
                .call(None, DisposeBrowserContextParams::new(context), timeout)
                .await;
            if cdp.is_closed() {
                mark_failed(inner, slot, RestartReason::Crash);
            }
            Err(message)
        }
    }
}

/// Open spare pages on `slot` in the background until it has its share.
/// One refill runs per browser at a time.
fn refill(inner: &Arc<Inner>, slot: &Arc<Slot>) {
    let target = inner.config.spare_pages;
    if target == 0 || slot.refilling.swap(true, Ordering::AcqRel) {
        return;
    }
    let inner = inner.clone();
    let slot = slot.clone();
    tokio::spawn(async move {
        while slot.usable()
            && !inner.closing.load(Ordering::Acquire)
            && slot.spares.lock().expect("spares").len() < target
        {
            match open_page(&inner, &slot).await {
                Ok(ready) => slot.spares.lock().expect("spares").push_back(ready),
                Err(e) => {
                    tracing::debug!(browser = slot.id, error = %e, "cannot open a spare page");
                    break;
                }
            }
        }
        slot.refilling.store(false, Ordering::Release);
    });
}

/// One job's page. Dropping it disposes of its context (and so the page).
pub struct Lease {
    tab: Option<Tab>,
    context: Option<BrowserContextId>,
    proxy: Option<Proxy>,
    slot: Arc<Slot>,
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("browser", &self.slot.id)
            .finish()
    }
}

impl Lease {
    /// The page to render on.
    pub fn tab(&self) -> &Tab {
        self.tab
            .as_ref()
            .expect("a lease holds its page until dropped")
    }

    /// What the egress guard refused for this page so far.
    pub fn blocked(&self) -> Vec<Blocked> {
        self.proxy.as_ref().map(Proxy::blocked).unwrap_or_default()
    }

    /// What this page's proxy refused or could not reach, in order.
    pub fn egress_events(&self) -> Vec<EgressEvent> {
        self.proxy.as_ref().map(Proxy::events).unwrap_or_default()
    }

    /// The hosts this page's proxy connected to, with the addresses.
    pub fn connected(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.proxy
            .as_ref()
            .map(Proxy::connected)
            .unwrap_or_default()
    }

    /// Whether the browser behind this page is still alive.
    pub fn browser_alive(&self) -> bool {
        self.slot.alive.load(Ordering::Acquire)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (Some(tab), Some(context)) = (self.tab.take(), self.context.take()) else {
            return;
        };
        // The tab stops answering for the page now; its context goes next.
        drop(tab);
        let proxy = self.proxy.take();
        let slot = self.slot.clone();
        let inner = self.inner.clone();
        let timeout = inner.config.cdp_timeout;
        // Cleanup needs async calls; it also runs when a job is cancelled.
        let cleanup = async move {
            if slot.alive.load(Ordering::Acquire) {
                let _ = slot
                    .cdp
                    .call(None, DisposeBrowserContextParams::new(context), timeout)
                    .await;
            }
            drop(proxy);
            finish_job(&inner, &slot, true);
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(cleanup);
        }
    }
}

/// A job on `slot` ended (or never started, when `rendered` is false).
fn finish_job(inner: &Arc<Inner>, slot: &Arc<Slot>, rendered: bool) {
    let active = slot.active.fetch_sub(1, Ordering::AcqRel) - 1;
    if rendered {
        let renders = slot.renders.fetch_add(1, Ordering::AcqRel) + 1;
        if renders >= inner.config.recycle_after && !slot.draining.swap(true, Ordering::AcqRel) {
            let _ = inner.events.send(Event::Drain(slot.id));
        }
    }
    if active == 0 && (slot.draining.load(Ordering::Acquire)) {
        let _ = inner.events.send(Event::Retire(slot.id));
    }
    inner.changed.notify_waiters();
}

fn mark_failed(inner: &Arc<Inner>, slot: &Arc<Slot>, reason: RestartReason) {
    if slot.alive.swap(false, Ordering::AcqRel) {
        let _ = inner.events.send(Event::Failed(slot.id, reason));
    }
}

/// Whether the browser answers a trivial call in time.
async fn probe(inner: &Inner, slot: &Slot) -> bool {
    slot.cdp
        .call(None, GetVersionParams::default(), inner.config.cdp_timeout)
        .await
        .is_ok()
}

/// Replace failed and drained browsers, retire drained ones.
async fn supervise(inner: Arc<Inner>, mut events: mpsc::UnboundedReceiver<Event>) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Failed(id, reason) => {
                let slot = inner.slots.lock().expect("slots").remove(&id);
                if let Some(slot) = slot {
                    tracing::warn!(browser = id, reason = reason.as_str(), "replacing browser");
                    inner
                        .metrics
                        .browser_restarts
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    // A drained browser already has its replacement.
                    let replaced = slot.draining.load(Ordering::Acquire);
                    let task_inner = inner.clone();
                    tokio::spawn(async move { shut_down(&task_inner, &slot).await });
                    if !replaced {
                        replace(&inner).await;
                    }
                }
            }
            Event::Drain(id) => {
                tracing::info!(browser = id, "recycling browser after its render budget");
                inner
                    .metrics
                    .browser_restarts
                    .with_label_values(&[RestartReason::Recycle.as_str()])
                    .inc();
                replace(&inner).await;
            }
            Event::Retire(id) => {
                let slot = inner.slots.lock().expect("slots").remove(&id);
                if let Some(slot) = slot {
                    let task_inner = inner.clone();
                    tokio::spawn(async move { shut_down(&task_inner, &slot).await });
                }
            }
        }
    }
}

/// Launch a browser, retrying with backoff until it starts or the pool closes.
async fn replace(inner: &Arc<Inner>) {
    let mut delay = Duration::from_millis(250);
    while !inner.closing.load(Ordering::Acquire) {
        match launch(inner).await {
            Ok(slot) => {
                refill(inner, &slot);
                inner.slots.lock().expect("slots").insert(slot.id, slot);
                inner.changed.notify_waiters();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "cannot launch a browser");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Chromium features turned off in every browser. Each new browser
/// context opens a window, and with these on each window starts
/// "top-chrome" WebUI renderers (the toolbar's reload button and omnibox
/// pop-ups) that a headless screenshot never shows: turning them off halves
/// the CPU of a job in its own context (bench/README.md, "Chromium flags").
const DISABLED_FEATURES: &[&str] = &[
    "WebUIReloadButton",
    "WebUIOmniboxPopup",
    "WebUIOmniboxAimPopup",
    // Translation prompts and their language model downloads.
    "Translate",
    // The cast dialog and its device discovery.
    "MediaRouter",
    // Hints fetched from Google for page loads.
    "OptimizationHints",
];

/// The command line every browser of the pool starts with (without the
/// leading dashes; [`cdp::launch`] adds them and the profile and debugging
/// port). `extra` comes last, except that its `disable-features` and
/// `enable-features` lists are merged into ours: Chromium keeps only the
/// last of a repeated switch.
pub fn chromium_args(sandbox: bool, proxy: Option<&str>, extra: &[String]) -> Vec<String> {
    let mut disabled: Vec<String> = DISABLED_FEATURES.iter().map(|f| (*f).to_owned()).collect();
    let mut args: Vec<String> = [
        "headless",
        // Chromium reaches for Google's hosts at start without these.
        "disable-background-networking",
        "disable-component-update",
        "disable-sync",
        "no-first-run",
        "no-default-browser-check",
        "disable-domain-reliability",
        "no-pings",
        "metrics-recording-only",
        "disable-breakpad",
        "disable-client-side-phishing-detection",
        // Extensions and their background pages cost processes.
        "disable-extensions",
        "disable-component-extensions-with-background-pages",
        "disable-default-apps",
        // No GPU here: software compositing in the browser process.
        "disable-gpu",
        // Containers give /dev/shm 64 MB; shared memory there runs out
        // under load and renderers crash.
        "disable-dev-shm-usage",
        // Every job's window is a background window to Chromium: without
        // these its timers and rendering are throttled, and waits and
        // delays run long.
        "disable-renderer-backgrounding",
        "disable-background-timer-throttling",
        "disable-backgrounding-occluded-windows",
        // No keyring or keychain prompts on a server.
        "password-store=basic",
        "use-mock-keychain",
        // The same colours on every machine.
        "force-color-profile=srgb",
        "mute-audio",
        // Traffic an HTTP proxy does not carry: WebRTC's UDP, QUIC, and
        // Chromium's own DNS prefetching.
        "force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        "webrtc-ip-handling-policy=disable_non_proxied_udp",
        "disable-quic",
        "dns-prefetch-disable",
        // `window.open` and pop-ups fail: a page cannot spawn tabs.
        "block-new-web-contents",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    if let Some(proxy) = proxy {
        // Everything goes through the egress guard, loopback included.
        args.push(format!("proxy-server={proxy}"));
        args.push("proxy-bypass-list=<-loopback>".to_owned());
    }
    if !sandbox {
        args.push("no-sandbox".to_owned());
    }
    let mut enabled: Vec<String> = Vec::new();
    for arg in extra {
        let arg = arg.trim_start_matches('-');
        if let Some(list) = arg.strip_prefix("disable-features=") {
            disabled.extend(list.split(',').map(str::to_owned));
        } else if let Some(list) = arg.strip_prefix("enable-features=") {
            enabled.extend(list.split(',').map(str::to_owned));
        } else {
            args.push(arg.to_owned());
        }
    }
    args.push(format!("disable-features={}", disabled.join(",")));
    if !enabled.is_empty() {
        args.push(format!("enable-features={}", enabled.join(",")));
    }
    args
}

async fn launch(inner: &Arc<Inner>) -> anyhow::Result<Arc<Slot>> {
    let config = &inner.config;
    let id = inner.next_id.fetch_add(1, Ordering::AcqRel);
    let user_data_dir =
        std::env::temp_dir().join(format!("url2png-chromium-{}-{id}", std::process::id()));
    let _ = std::fs::remove_dir_all(&user_data_dir);
    std::fs::create_dir_all(&user_data_dir)?;
    let proxy = inner.background_proxy.as_ref().map(Proxy::url);
    let args = chromium_args(config.sandbox, proxy.as_deref(), &config.extra_args);
    let launched = cdp::launch(
        &config.chromium_path,
        &args,
        &user_data_dir,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| {
        let _ = std::fs::remove_dir_all(&user_data_dir);
        anyhow::anyhow!("launching {}: {e}", config.chromium_path.display())
    })?;
    let slot = Arc::new(Slot {
        id,
        pid: launched.child.id(),
        cdp: launched.cdp,
        child: tokio::sync::Mutex::new(Some(launched.child)),
        alive: AtomicBool::new(true),
        draining: AtomicBool::new(false),
        active: AtomicUsize::new(0),
        renders: AtomicU64::new(0),
        spares: Mutex::new(VecDeque::new()),
        refilling: AtomicBool::new(false),
        user_data_dir,
        tasks: Mutex::new(Vec::new()),
    });
    // When the connection breaks, the browser is gone.
    let watcher = {
        let inner = Arc::downgrade(inner);
        let slot = Arc::downgrade(&slot);
        let cdp = slot.upgrade().map(|s| s.cdp.clone());
        tokio::spawn(async move {
            if let Some(cdp) = cdp {
                cdp.closed().await;
            }
            if let (Some(inner), Some(slot)) = (inner.upgrade(), slot.upgrade()) {
                tracing::debug!(browser = slot.id, "CDP connection lost");
                mark_failed(&inner, &slot, RestartReason::Crash);
            }
        })
    };
    // Ask now and then whether it still answers; a hung browser does not.
    let prober = {
        let inner = Arc::downgrade(inner);
        let slot = Arc::downgrade(&slot);
        let interval = config.probe_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let (Some(inner), Some(slot)) = (inner.upgrade(), slot.upgrade()) else {
                    return;
                };
                if !slot.alive.load(Ordering::Acquire) {
                    return;
                }
                if !probe(&inner, &slot).await {
                    mark_failed(&inner, &slot, RestartReason::Hang);
                    return;
                }
            }
        })
    };
    slot.tasks.lock().expect("tasks").extend([watcher, prober]);
    tracing::info!(browser = id, "browser launched");
    Ok(slot)
}

/// Close a browser politely, kill it if it does not go, reap it, and remove
/// its profile directory.
async fn shut_down(inner: &Inner, slot: &Slot) {
    slot.alive.store(false, Ordering::Release);
    let timeout = inner.config.cdp_timeout;
    // Spare pages go with their browser; their proxies stop here.
    slot.spares.lock().expect("spares").clear();
    let mut child = slot.child.lock().await;
    if let Some(mut process) = child.take() {
        // The connection may close before the answer comes: wait for the
        // process either way.
        if !slot.cdp.is_closed() {
            let _ = slot
                .cdp
                .call(
                    None,
                    chromiumoxide::cdp::browser_protocol::browser::CloseParams::default(),
                    timeout,
                )
                .await;
        }
        let exited = matches!(
            tokio::time::timeout(timeout, process.wait()).await,
            Ok(Ok(_))
        );
        if !exited {
            let _ = process.kill().await;
            let _ = process.wait().await;
        }
    }
    for task in slot.tasks.lock().expect("tasks").drain(..) {
        task.abort();
    }
    let _ = std::fs::remove_dir_all(&slot.user_data_dir);
    tracing::debug!(browser = slot.id, "browser closed");
}
