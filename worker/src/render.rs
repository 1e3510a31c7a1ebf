//! Rendering one job on one page: the page's session set-up, viewport,
//! navigation and status, wait conditions, and the capture.
//!
//! A [`Tab`] is a target in its own browser context, attached over the
//! worker's own CDP connection ([`crate::cdp`]) with only what a render
//! needs: `Page` (load, frames and dialogs), `Fetch` (the request check
//! inside the browser, and the main document's status) and, for a job that
//! waits for the network to go quiet, `Network`. The set-up calls are sent
//! at once and answered together. A pump task per tab answers paused
//! requests and dialogs as they come, without waiting for Chromium's reply,
//! so no request waits for another's answer.
//!
//! Every call into Chromium has its own timeout (`cdp_timeout`) except the
//! navigation and the wait condition, which the caller's per-job timeout
//! bounds. Full-page captures keep the requested device scale factor by
//! setting the device metrics here and capturing a clip beyond the
//! viewport, instead of resizing the viewport (which would also reset the
//! scale).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use chromiumoxide::cdp::browser_protocol::browser::{
    BrowserContextId, GetVersionParams, PermissionDescriptor, PermissionSetting,
    SetPermissionParams,
};
use chromiumoxide::cdp::browser_protocol::dom::Rgba;
use chromiumoxide::cdp::browser_protocol::emulation::{
    MediaFeature, SetDefaultBackgroundColorOverrideParams, SetDeviceMetricsOverrideParams,
    SetEmulatedMediaParams, SetGeolocationOverrideParams, SetLocaleOverrideParams,
    SetTimezoneOverrideParams, SetTouchEmulationEnabledParams, SetUserAgentOverrideParams,
};
use chromiumoxide::cdp::browser_protocol::fetch::{
    self, AuthChallengeResponse, AuthChallengeResponseResponse, ContinueWithAuthParams,
    EventAuthRequired, EventRequestPaused, RequestStage,
};
use chromiumoxide::cdp::browser_protocol::inspector::{self, EventTargetCrashed};
use chromiumoxide::cdp::browser_protocol::network::{
    self, CookieParam, CookieSameSite, ErrorReason, EventLoadingFailed, EventLoadingFinished,
    EventRequestWillBeSent, RequestId, ResourceType, SetCookiesParams,
};
use chromiumoxide::cdp::browser_protocol::page::{
    self, AddScriptToEvaluateOnNewDocumentParams, CaptureScreenshotFormat, CaptureScreenshotParams,
    DialogType, EventFrameNavigated, EventJavascriptDialogOpening, EventLifecycleEvent,
    GetLayoutMetricsParams, HandleJavaScriptDialogParams, NavigateParams, PrintToPdfParams,
    SetBypassCspParams, SetLifecycleEventsEnabledParams, Viewport,
};
use chromiumoxide::cdp::browser_protocol::target::{SessionId, TargetId};
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::types::Command;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use url2png_core::job::{
    ColorScheme, ImageFormat, MediaType, RenderOptions, SameSite, SelectorState, WaitFor,
};
use url2png_core::keys::Phase;
use url2png_core::policy::UrlPolicy;

use crate::blocking::Blockers;
use crate::cdp::{Cdp, CdpError, Event, Events};
use crate::egress::Unreached;
use crate::in_page::{self, Evaluated};
use crate::rules::{RequestRules, Verdict};

/// The image and what is known about it.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    /// Image size in device pixels.
    pub width: u32,
    pub height: u32,
    /// A full-page capture was clipped at the height limit.
    pub truncated: bool,
    /// HTTP status of the main document, when it came over HTTP.
    pub status: Option<u16>,
    /// Sub-resources the job's own rules kept from loading.
    pub blocked_requests: u32,
    /// `console.error` calls and uncaught errors in the page, when they
    /// could be read.
    pub console_errors: Option<u32>,
}

/// Why a render did not produce an image.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Chromium could not load the page: its `net::ERR_…` code, decoded.
    #[error("the page did not load ({text})")]
    Navigation { error: NetError, text: String },
    /// The main document answered with an error status and the job asked
    /// to fail on that.
    #[error("the page answered HTTP {0}")]
    HttpStatus(u16),
    /// The egress guard refused the page itself (its `403` was the main
    /// document); `reason` is the guard's rule.
    #[error("the page was refused by the egress policy: {reason}")]
    Blocked { reason: String },
    /// The request check inside the browser refused the page itself (a
    /// redirect to a refused address literal or scheme).
    #[error("the page was refused inside the browser: {url}: {reason}")]
    RefusedInBrowser { url: String, reason: String },
    /// The egress proxy could not reach the page's host (its `502` was the
    /// main document).
    #[error("the page's host was not reached ({})", .0.code())]
    Unreached(Unreached),
    /// The page asks for credentials; a job has none to give.
    #[error("the page asks for credentials")]
    AuthRequired,
    /// A selector of the job is not valid CSS.
    #[error("invalid selector: {0}")]
    InvalidSelector(String),
    /// Chromium refused an option's value (an unknown time zone or
    /// locale).
    #[error("options.{field}: {message}")]
    InvalidOption {
        field: &'static str,
        message: String,
    },
    /// The element to capture is not in the page, or has no box.
    #[error("no element to capture matches `{selector}` ({why})")]
    ElementNotFound { selector: String, why: &'static str },
    /// A blocker the job asked for is not installed on this worker.
    #[error("{0}")]
    Unavailable(crate::blocking::Missing),
    /// The job's script or wait expression threw; `what` names the option.
    #[error("options.{what} threw: {text}")]
    Script { what: &'static str, text: String },
    /// The page's renderer crashed (or was killed).
    #[error("the page's renderer crashed")]
    Crashed,
    /// The connection to the browser closed during a call: the browser
    /// exited or was killed.
    #[error("the browser went away during `{0}`")]
    BrowserGone(&'static str),
    /// A call into Chromium did not answer in time.
    #[error("Chromium did not answer `{0}` within {1:?}")]
    CdpTimeout(&'static str, Duration),
    /// A call into Chromium failed.
    #[error("Chromium call `{0}` failed: {1}")]
    Cdp(&'static str, String),
}

impl RenderError {
    /// Whether the failure points at the browser rather than the page.
    pub fn suspects_browser(&self) -> bool {
        matches!(
            self,
            Self::CdpTimeout(..) | Self::Cdp(..) | Self::BrowserGone(_)
        )
    }

    fn from_cdp(name: &'static str, error: CdpError) -> Self {
        match error {
            CdpError::Timeout { timeout, .. } => Self::CdpTimeout(name, timeout),
            CdpError::Closed => Self::BrowserGone(name),
            other => Self::Cdp(name, other.to_string()),
        }
    }
}

/// The kind of a network error Chromium reports, decoded once from the
/// `net::ERR_…` code in `Page.navigate`'s answer (Chromium's
/// `net_error_list.h` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetError {
    /// The name does not exist.
    NameNotResolved,
    /// The resolver failed or did not answer.
    ResolverFailed,
    /// A certificate or TLS handshake error.
    Tls,
    /// Refused, reset, closed, timed out or unreachable.
    Connection,
    /// The proxy did not open a tunnel; its own log says why.
    Tunnel,
    /// Refused inside the browser (the request check).
    BlockedByClient,
    /// The navigation was cut short: a download, or a renderer that died.
    Aborted,
    /// What no retry changes: a redirect loop, an invalid response or
    /// redirect, a URL, scheme or port Chromium refuses.
    Permanent,
    /// Anything else.
    Other,
}

impl NetError {
    /// Decode `net::ERR_NAME_NOT_RESOLVED` and the like.
    pub fn parse(text: &str) -> Self {
        let code = text.trim();
        let code = code.strip_prefix("net::").unwrap_or(code);
        let code = code.split_whitespace().next().unwrap_or_default();
        match code {
            "ERR_NAME_NOT_RESOLVED" => Self::NameNotResolved,
            "ERR_NAME_RESOLUTION_FAILED" | "ERR_DNS_TIMED_OUT" | "ERR_DNS_SERVER_FAILED" => {
                Self::ResolverFailed
            }
            "ERR_TUNNEL_CONNECTION_FAILED" | "ERR_PROXY_CONNECTION_FAILED" => Self::Tunnel,
            "ERR_BLOCKED_BY_CLIENT" => Self::BlockedByClient,
            "ERR_ABORTED" => Self::Aborted,
            "ERR_CONNECTION_REFUSED"
            | "ERR_CONNECTION_RESET"
            | "ERR_CONNECTION_CLOSED"
            | "ERR_CONNECTION_FAILED"
            | "ERR_CONNECTION_TIMED_OUT"
            | "ERR_CONNECTION_ABORTED"
            | "ERR_TIMED_OUT"
            | "ERR_ADDRESS_UNREACHABLE"
            | "ERR_EMPTY_RESPONSE"
            | "ERR_NETWORK_CHANGED"
            | "ERR_INTERNET_DISCONNECTED" => Self::Connection,
            "ERR_BAD_SSL_CLIENT_AUTH_CERT" => Self::Tls,
            c if c.starts_with("ERR_CERT_") || c.starts_with("ERR_SSL_") => Self::Tls,
            "ERR_INVALID_URL"
            | "ERR_UNSAFE_PORT"
            | "ERR_UNSAFE_REDIRECT"
            | "ERR_DISALLOWED_URL_SCHEME"
            | "ERR_UNKNOWN_URL_SCHEME"
            | "ERR_BLOCKED_BY_ADMINISTRATOR"
            | "ERR_BLOCKED_BY_RESPONSE"
            | "ERR_TOO_MANY_REDIRECTS"
            | "ERR_INVALID_RESPONSE"
            | "ERR_INVALID_REDIRECT"
            | "ERR_ADDRESS_INVALID"
            | "ERR_ACCESS_DENIED"
            | "ERR_INVALID_AUTH_CREDENTIALS"
            | "ERR_RESPONSE_HEADERS_TOO_BIG"
            | "ERR_CONTENT_DECODING_FAILED" => Self::Permanent,
            _ => Self::Other,
        }
    }
}

/// The second layer of the URL policy, inside Chromium: every request a
/// job's page makes is paused (CDP `Fetch`) and let through only if its
/// scheme is http(s) or ws(s) and, for an address literal, the address is
/// allowed. The egress proxy remains the layer that checks what names
/// resolve to.
#[derive(Debug, Clone)]
pub struct RequestCheck {
    pub policy: Arc<UrlPolicy>,
    /// Counts the requests refused here.
    pub refused: prometheus::IntCounter,
}

/// How a tab is set up and how long its calls may take.
#[derive(Clone)]
pub struct TabSettings {
    /// The in-browser request check; `None` lets every request through
    /// (the egress proxy, when on, still checks each one).
    pub check: Option<RequestCheck>,
    /// Budget of every single call.
    pub cdp_timeout: Duration,
    /// Longest wait for `Page.navigate` to answer (the job's own timeout is
    /// usually shorter and bounds it first).
    pub navigation_timeout: Duration,
}

/// What the pump saw of the main document.
#[derive(Debug, Default)]
struct Document {
    /// Status of the main frame's latest document response.
    status: Option<u16>,
    /// The egress guard's refusal header on that response.
    blocked: Option<String>,
    /// The egress proxy's header on that response when it could not reach
    /// the host.
    unreached: Option<Unreached>,
    /// The request check refused a main-frame document: its URL and why.
    refused: Option<(String, String)>,
    /// The main document asked for credentials.
    auth_required: bool,
    /// The page's renderer crashed (or was killed).
    crashed: bool,
    /// Every response of the main frame's document, in order (redirects,
    /// then the page), for the render report.
    responses: Vec<(String, Option<u16>)>,
    /// Requests the check inside the browser refused: URL and why.
    refusals: Vec<(String, String)>,
}

/// When a render entered each phase, for the render report.
#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    navigation: Option<Instant>,
    wait: Option<Instant>,
    capture: Option<Instant>,
    finished: Option<Instant>,
}

/// How long a render spent in each phase it reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PhaseTimes {
    pub navigation: Option<Duration>,
    pub wait: Option<Duration>,
    pub capture: Option<Duration>,
}

/// A target in its own browser context, attached and set up for one job.
pub struct Tab {
    cdp: Cdp,
    session: SessionId,
    /// The target's own browser context.
    context: BrowserContextId,
    /// The target's id, which is also its main frame's id.
    target: TargetId,
    settings: TabSettings,
    /// Lifecycle, frame and network events the pump passes on.
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    document: Arc<Mutex<Document>>,
    /// Whether `Network` events are passed on (a job waiting for the
    /// network to go quiet enables the domain itself).
    network: Arc<std::sync::atomic::AtomicBool>,
    /// Where the current render is, for a timeout to say (a [`Phase`]
    /// index).
    phase: std::sync::atomic::AtomicU8,
    /// What the render is waiting for, while it waits.
    waiting: Mutex<Option<String>>,
    marks: Mutex<Marks>,
    /// The job's own rules for its requests, which the pump applies.
    rules: Arc<std::sync::RwLock<Option<Arc<RequestRules>>>>,
    pump: tokio::task::JoinHandle<()>,
}

/// The phases a render goes through, in order.
const PHASES: [Phase; 3] = [Phase::Navigation, Phase::Wait, Phase::Capture];

impl Drop for Tab {
    fn drop(&mut self) {
        self.pump.abort();
        self.cdp.forget(&self.session);
    }
}

impl Tab {
    /// Set up an attached target: `Page` with lifecycle events, and `Fetch`
    /// for the request check and the main document's response. The calls
    /// are pipelined: one round trip in all.
    pub async fn start(
        cdp: Cdp,
        context: BrowserContextId,
        target: TargetId,
        session: SessionId,
        events: Events,
        settings: TabSettings,
    ) -> Result<Self, RenderError> {
        let timeout = settings.cdp_timeout;
        let sid = Some(session.as_ref());
        // Every request of the page when checking; the main document's
        // response (its status) in any case.
        let mut patterns = Vec::new();
        if settings.check.is_some() {
            patterns.extend(
                check_patterns()
                    .into_iter()
                    .map(|url| fetch::RequestPattern {
                        url_pattern: Some(url),
                        resource_type: None,
                        request_stage: Some(RequestStage::Request),
                    }),
            );
        }
        patterns.push(fetch::RequestPattern {
            url_pattern: Some("*".into()),
            resource_type: Some(ResourceType::Document),
            request_stage: Some(RequestStage::Response),
        });
        let fetch_enable = fetch::EnableParams {
            patterns: Some(patterns),
            handle_auth_requests: Some(true),
        };
        let (page, lifecycle, fetch, crashes) = futures::join!(
            cdp.call(sid, page::EnableParams::default(), timeout),
            cdp.call(sid, SetLifecycleEventsEnabledParams::new(true), timeout),
            cdp.call(sid, fetch_enable, timeout),
            // Only for `targetCrashed`: a killed renderer is a retry, not a
            // page that failed.
            cdp.call(sid, inspector::EnableParams::default(), timeout),
        );
        page.map_err(|e| RenderError::from_cdp("Page.enable", e))?;
        crashes.map_err(|e| RenderError::from_cdp("Inspector.enable", e))?;
        lifecycle.map_err(|e| RenderError::from_cdp("Page.setLifecycleEventsEnabled", e))?;
        fetch.map_err(|e| RenderError::from_cdp("Fetch.enable", e))?;
        let (forward, forwarded) = mpsc::unbounded_channel();
        let document = Arc::new(Mutex::new(Document::default()));
        let network = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rules = Arc::new(std::sync::RwLock::new(None));
        let pump = tokio::spawn(pump(
            cdp.clone(),
            session.clone(),
            target.clone(),
            events,
            settings.check.clone(),
            document.clone(),
            network.clone(),
            rules.clone(),
            forward,
        ));
        Ok(Self {
            cdp,
            session,
            context,
            target,
            settings,
            events: tokio::sync::Mutex::new(forwarded),
            document,
            network,
            phase: std::sync::atomic::AtomicU8::new(0),
            waiting: Mutex::new(None),
            marks: Mutex::new(Marks::default()),
            rules,
            pump,
        })
    }

    /// What the render was waiting for when it stopped, if it was waiting.
    pub fn waiting_for(&self) -> Option<String> {
        self.waiting.lock().expect("waiting").clone()
    }

    fn wait_on(&self, what: Option<String>) {
        *self.waiting.lock().expect("waiting") = what;
    }

    /// The phase the latest render reached.
    pub fn phase(&self) -> Phase {
        PHASES[usize::from(self.phase.load(std::sync::atomic::Ordering::Acquire)).min(2)]
    }

    fn enter(&self, phase: Phase) {
        let index = PHASES.iter().position(|p| *p == phase).unwrap_or(0);
        self.phase.store(
            u8::try_from(index).unwrap_or(0),
            std::sync::atomic::Ordering::Release,
        );
        let now = Some(Instant::now());
        let mut marks = self.marks.lock().expect("marks");
        match phase {
            Phase::Navigation => {
                *marks = Marks {
                    navigation: now,
                    ..Marks::default()
                }
            }
            Phase::Wait => marks.wait = now,
            Phase::Capture => marks.capture = now,
            Phase::Page => {}
        }
    }

    /// How long the latest render spent in each phase it reached (a phase
    /// still running counts to now).
    pub fn phase_times(&self) -> PhaseTimes {
        let marks = *self.marks.lock().expect("marks");
        let end = marks.finished.unwrap_or_else(Instant::now);
        let span = |from: Option<Instant>, to: Option<Instant>| {
            from.map(|f| to.unwrap_or(end).saturating_duration_since(f))
        };
        PhaseTimes {
            navigation: span(marks.navigation, marks.wait.or(marks.capture)),
            wait: span(marks.wait, marks.capture),
            capture: span(marks.capture, None),
        }
    }

    /// The main frame's document responses so far: URL and status.
    pub fn document_responses(&self) -> Vec<(String, Option<u16>)> {
        self.document.lock().expect("document").responses.clone()
    }

    /// Requests the check inside the browser refused so far: URL and why.
    pub fn refused_in_browser(&self) -> Vec<(String, String)> {
        self.document.lock().expect("document").refusals.clone()
    }

    /// What the job's own rules refused: how many, and the first URLs.
    pub fn rules_blocked(&self) -> (u32, Vec<String>) {
        self.rules
            .read()
            .expect("rules")
            .as_ref()
            .map_or((0, Vec::new()), |r| (r.blocked(), r.blocked_urls()))
    }

    /// Chromium's product string (`Chrome/131.0.…`).
    pub async fn browser_product(&self) -> Option<String> {
        self.cdp
            .call(None, GetVersionParams::default(), self.settings.cdp_timeout)
            .await
            .ok()
            .map(|v| v.product)
    }

    async fn call<C: Command>(
        &self,
        name: &'static str,
        command: C,
        timeout: Duration,
    ) -> Result<C::Response, RenderError> {
        self.cdp
            .call(Some(self.session.as_ref()), command, timeout)
            .await
            .map_err(|e| RenderError::from_cdp(name, e))
    }

    /// Render `url` as `options` say. The caller bounds the whole call with
    /// the job's timeout.
    pub async fn render(
        &self,
        url: &str,
        options: &RenderOptions,
        blockers: &Blockers,
    ) -> Result<Rendered, RenderError> {
        self.enter(Phase::Navigation);
        self.wait_on(None);
        let mut events = self.events.lock().await;
        let engines = self.prepare(url, options, blockers).await?;

        let navigation = self
            .call(
                "Page.navigate",
                NavigateParams::new(url),
                self.settings.navigation_timeout,
            )
            .await?;
        if let Some(text) = navigation.error_text {
            // A navigation cut short by the renderer's death says
            // `ERR_ABORTED` like a download would; it is the browser's
            // trouble, not the page's.
            if self.renderer_crashed(&mut events).await {
                return Err(RenderError::Crashed);
            }
            // The pump notes the main document's response before letting it
            // through, so what the egress proxy said about it is known by
            // now: Chromium may turn the proxy's empty error answer into a
            // failed navigation (`ERR_HTTP_RESPONSE_CODE_FAILURE`) rather
            // than a page, and the proxy's reason is the better one.
            let (blocked, unreached) = {
                let document = self.document.lock().expect("document");
                (document.blocked.clone(), document.unreached)
            };
            if let Some(reason) = blocked {
                return Err(RenderError::Blocked { reason });
            }
            if let Some(kind) = unreached {
                return Err(RenderError::Unreached(kind));
            }
            let error = NetError::parse(&text);
            if error == NetError::BlockedByClient
                && let Some((url, reason)) = self.document.lock().expect("document").refused.clone()
            {
                return Err(RenderError::RefusedInBrowser { url, reason });
            }
            return Err(RenderError::Navigation { error, text });
        }
        // The document this navigation made, and any a client redirect
        // makes after it, count; an earlier one (about:blank) does not.
        let mut loaders: HashSet<String> = HashSet::new();
        let mut committed = false;
        if let Some(loader) = &navigation.loader_id {
            loaders.insert(loader.as_ref().to_owned());
        }
        let mut network = NetworkIdle::default();
        loop {
            let Some(event) = events.recv().await else {
                return Err(RenderError::Cdp(
                    "Page.navigate",
                    "the page went away".into(),
                ));
            };
            network.observe(&event);
            if event.is::<EventTargetCrashed>() {
                return Err(RenderError::Crashed);
            }
            if let Some(nav) = event.decode::<EventFrameNavigated>() {
                if nav.frame.parent_id.is_none() {
                    let loader = nav.frame.loader_id.as_ref().to_owned();
                    if committed || loaders.contains(&loader) {
                        committed = true;
                        loaders.insert(loader);
                    }
                }
            } else if let Some(life) = event.decode::<EventLifecycleEvent>()
                && life.name == "load"
                && life.frame_id.as_ref() == self.target.as_ref()
                && loaders.contains(life.loader_id.as_ref())
            {
                break;
            }
        }

        let (status, blocked, unreached, auth) = {
            let document = self.document.lock().expect("document");
            (
                document.status,
                document.blocked.clone(),
                document.unreached,
                document.auth_required,
            )
        };
        if let Some(reason) = blocked {
            return Err(RenderError::Blocked { reason });
        }
        if let Some(kind) = unreached {
            return Err(RenderError::Unreached(kind));
        }
        if auth {
            return Err(RenderError::AuthRequired);
        }
        if options.fail_on_http_error
            && let Some(code) = status.filter(|s| *s >= 400)
        {
            return Err(RenderError::HttpStatus(code));
        }

        self.enter(Phase::Wait);
        if !options.hide_selectors.is_empty() || options.css.is_some() {
            self.add_style(options).await?;
        }
        if let Some(ads) = &engines.ads {
            self.hide_ads(ads, url).await?;
        }
        if options.block_cookie_banners {
            self.wait_on(Some("the consent pop-up to be declined".into()));
            self.decline_consent().await?;
        }
        if let Some(script) = &options.script {
            self.wait_on(Some("the job's script to finish".into()));
            match self
                .evaluate("Runtime.evaluate", in_page::script(script))
                .await?
            {
                Evaluated::Value(_) => {}
                Evaluated::Threw { text, .. } => {
                    return Err(RenderError::Script {
                        what: "script",
                        text,
                    });
                }
            }
        }
        match &options.wait_for {
            WaitFor::Load => {}
            WaitFor::NetworkIdle => {
                self.wait_on(Some(format!(
                    "{} ms without a network request",
                    options.network_idle_ms
                )));
                network
                    .wait(
                        &mut events,
                        Duration::from_millis(options.network_idle_ms.into()),
                    )
                    .await;
            }
            WaitFor::Selector(selector) => {
                self.wait_for_selector(selector, SelectorState::Attached)
                    .await?;
            }
        }
        drop(events);
        if let Some(selector) = &options.wait_for_selector {
            self.wait_for_selector(selector, options.wait_for_selector_state)
                .await?;
        }
        if let Some(expression) = &options.wait_for_expression {
            self.wait_for_expression(expression).await?;
        }
        if options.scroll_page {
            self.wait_on(Some("the pre-scroll to reach the bottom".into()));
            let view = options.viewport();
            let step = options.scroll_step.unwrap_or(view.height).max(1);
            let pause = Duration::from_millis(options.scroll_delay_ms.into());
            let limit = options.full_page_height_limit();
            if let Evaluated::Threw { text, .. } = self
                .evaluate("Runtime.evaluate", in_page::scroll(step, pause, limit))
                .await?
            {
                return Err(RenderError::Cdp("Runtime.evaluate", text));
            }
        }
        self.wait_on(None);
        if options.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(options.delay_ms.into())).await;
        }

        self.enter(Phase::Capture);
        let blocked = self
            .rules
            .read()
            .expect("rules")
            .as_ref()
            .map_or(0, |r| r.blocked());
        let mut rendered = self.capture(options).await?;
        self.marks.lock().expect("marks").finished = Some(Instant::now());
        rendered.status = status;
        rendered.blocked_requests = blocked;
        // After the capture, so that a page that stopped answering fails
        // in the capture as before; a count that cannot be read is left
        // out of the report.
        rendered.console_errors = match in_page::errors_counted() {
            Ok(params) => match self
                .call("Runtime.evaluate", params, self.settings.cdp_timeout)
                .await
                .map(Evaluated::from)
            {
                Ok(Evaluated::Value(v)) => v.as_u64().and_then(|n| u32::try_from(n).ok()),
                _ => None,
            },
            Err(_) => None,
        };
        Ok(rendered)
    }

    /// Set the page up as the job asks before it loads: the viewport and
    /// every emulation, cookies, and the job's request rules. The calls are
    /// sent at once and answered together.
    async fn prepare(
        &self,
        url: &str,
        options: &RenderOptions,
        blockers: &Blockers,
    ) -> Result<Engines, RenderError> {
        let timeout = self.settings.cdp_timeout;
        let engines = Engines {
            ads: if options.block_ads {
                Some(blockers.ads().await.map_err(RenderError::Unavailable)?)
            } else {
                None
            },
            trackers: if options.block_trackers {
                Some(
                    blockers
                        .trackers()
                        .await
                        .map_err(RenderError::Unavailable)?,
                )
            } else {
                None
            },
        };
        let view = options.viewport();
        let mut calls: Vec<BoxFuture<'_, Result<(), RenderError>>> = Vec::new();
        let mut metrics = SetDeviceMetricsOverrideParams::new(
            i64::from(view.width),
            i64::from(view.height),
            view.scale,
            view.mobile,
        );
        if options.landscape {
            metrics.screen_orientation =
                Some(chromiumoxide::cdp::browser_protocol::emulation::ScreenOrientation::new(
                    chromiumoxide::cdp::browser_protocol::emulation::ScreenOrientationType::LandscapePrimary,
                    90,
                ));
        }
        calls.push(self.unit("Emulation.setDeviceMetricsOverride", metrics, timeout));
        if matches!(options.wait_for, WaitFor::NetworkIdle) {
            self.network
                .store(true, std::sync::atomic::Ordering::Release);
            calls.push(self.unit("Network.enable", network::EnableParams::default(), timeout));
        }
        if view.touch {
            calls.push(self.unit(
                "Emulation.setTouchEmulationEnabled",
                SetTouchEmulationEnabledParams {
                    enabled: true,
                    max_touch_points: Some(5),
                },
                timeout,
            ));
        }
        let user_agent = options.user_agent_option();
        if user_agent.is_some() || options.accept_language.is_some() {
            let version = self
                .cdp
                .call(None, GetVersionParams::default(), timeout)
                .await
                .map_err(|e| RenderError::from_cdp("Browser.getVersion", e))?;
            let major = version
                .product
                .split('/')
                .nth(1)
                .and_then(|v| v.split('.').next())
                .unwrap_or_default()
                .to_owned();
            let user_agent = user_agent.map_or(version.user_agent, |ua| {
                url2png_core::options::user_agent(ua, &major)
            });
            calls.push(self.unit(
                "Emulation.setUserAgentOverride",
                SetUserAgentOverrideParams {
                    user_agent,
                    accept_language: options.accept_language.clone(),
                    platform: None,
                    user_agent_metadata: None,
                },
                timeout,
            ));
        }
        if let Some(locale) = &options.locale {
            calls.push(self.option(
                "locale",
                "Emulation.setLocaleOverride",
                SetLocaleOverrideParams {
                    locale: Some(locale.clone()),
                },
            ));
        }
        if let Some(zone) = &options.timezone {
            calls.push(self.option(
                "timezone",
                "Emulation.setTimezoneOverride",
                SetTimezoneOverrideParams::new(zone.clone()),
            ));
        }
        if let Some(g) = &options.geolocation {
            calls.push(self.unit(
                "Emulation.setGeolocationOverride",
                SetGeolocationOverrideParams {
                    latitude: Some(g.latitude),
                    longitude: Some(g.longitude),
                    accuracy: Some(g.accuracy),
                    altitude: None,
                    altitude_accuracy: None,
                    heading: None,
                    speed: None,
                },
                timeout,
            ));
            let permission = SetPermissionParams {
                permission: PermissionDescriptor::new("geolocation"),
                setting: PermissionSetting::Granted,
                origin: None,
                embedded_origin: None,
                browser_context_id: Some(self.context.clone()),
            };
            calls.push(Box::pin(async move {
                self.cdp
                    .call(None, permission, timeout)
                    .await
                    .map(|_| ())
                    .map_err(|e| RenderError::from_cdp("Browser.setPermission", e))
            }));
        }
        let mut features = Vec::new();
        if let Some(scheme) = options.color_scheme {
            let value = match scheme {
                ColorScheme::Light => "light",
                ColorScheme::Dark => "dark",
            };
            features.push(MediaFeature::new("prefers-color-scheme", value));
        }
        if options.reduced_motion {
            features.push(MediaFeature::new("prefers-reduced-motion", "reduce"));
        }
        if !features.is_empty() || options.media.is_some() {
            let media = options.media.map(|m| match m {
                MediaType::Screen => "screen".to_owned(),
                MediaType::Print => "print".to_owned(),
            });
            calls.push(self.unit(
                "Emulation.setEmulatedMedia",
                SetEmulatedMediaParams {
                    media,
                    features: (!features.is_empty()).then_some(features),
                },
                timeout,
            ));
        }
        if options.omit_background {
            calls.push(self.unit(
                "Emulation.setDefaultBackgroundColorOverride",
                SetDefaultBackgroundColorOverrideParams {
                    color: Some(Rgba {
                        r: 0,
                        g: 0,
                        b: 0,
                        a: Some(0.0),
                    }),
                },
                timeout,
            ));
        }
        if !options.hide_selectors.is_empty() || options.css.is_some() {
            // The job's styles are its own, not the page's: the page's
            // content security policy does not keep them out.
            calls.push(self.unit("Page.setBypassCSP", SetBypassCspParams::new(true), timeout));
        }
        if !options.cookies.is_empty() {
            let cookies = options
                .cookies
                .iter()
                .map(|c| CookieParam {
                    name: c.name.clone(),
                    value: c.value.clone(),
                    url: c.domain.is_none().then(|| url.to_owned()),
                    domain: c.domain.clone(),
                    path: c.path.clone(),
                    secure: c.secure.then_some(true),
                    http_only: c.http_only.then_some(true),
                    same_site: c.same_site.map(|s| match s {
                        SameSite::Strict => CookieSameSite::Strict,
                        SameSite::Lax => CookieSameSite::Lax,
                        SameSite::None => CookieSameSite::None,
                    }),
                    expires: None,
                    priority: None,
                    same_party: None,
                    source_scheme: None,
                    source_port: None,
                    partition_key: None,
                })
                .collect();
            calls.push(self.option(
                "cookies",
                "Network.setCookies",
                SetCookiesParams::new(cookies),
            ));
        }
        calls.push(self.unit(
            "Page.addScriptToEvaluateOnNewDocument",
            AddScriptToEvaluateOnNewDocumentParams {
                source: in_page::COUNT_ERRORS.to_owned(),
                world_name: None,
                include_command_line_api: None,
                run_immediately: None,
            },
            timeout,
        ));
        if options.block_cookie_banners {
            let source = blockers
                .consent_script()
                .await
                .map_err(RenderError::Unavailable)?;
            calls.push(self.unit(
                "Page.addScriptToEvaluateOnNewDocument",
                AddScriptToEvaluateOnNewDocumentParams {
                    source: source.as_str().to_owned(),
                    world_name: None,
                    include_command_line_api: None,
                    run_immediately: None,
                },
                timeout,
            ));
        }
        let listed: Vec<_> = engines
            .ads
            .iter()
            .chain(engines.trackers.iter())
            .cloned()
            .collect();
        if let Some(rules) = RequestRules::new(options, url, listed) {
            *self.rules.write().expect("rules") = Some(Arc::new(rules));
            // Every request pauses: the rules are decided here, by the
            // same matcher the tests check, not by Chromium's patterns.
            let patterns = vec![
                fetch::RequestPattern {
                    url_pattern: Some("*".into()),
                    resource_type: None,
                    request_stage: Some(RequestStage::Request),
                },
                fetch::RequestPattern {
                    url_pattern: Some("*".into()),
                    resource_type: Some(ResourceType::Document),
                    request_stage: Some(RequestStage::Response),
                },
            ];
            calls.push(self.unit(
                "Fetch.enable",
                fetch::EnableParams {
                    patterns: Some(patterns),
                    handle_auth_requests: Some(true),
                },
                timeout,
            ));
        }
        futures::future::try_join_all(calls).await?;
        Ok(engines)
    }

    /// Hide what the ad lists say to hide on this page: the rules for its
    /// host, and the generic ones for the classes and ids it has.
    async fn hide_ads(&self, engine: &adblock::Engine, url: &str) -> Result<(), RenderError> {
        #[derive(serde::Deserialize, Default)]
        struct Names {
            classes: Vec<String>,
            ids: Vec<String>,
        }
        let names = match self
            .evaluate("Runtime.evaluate", in_page::class_and_id_names())
            .await?
        {
            Evaluated::Value(v) => serde_json::from_value::<Names>(v).unwrap_or_default(),
            Evaluated::Threw { text, .. } => {
                return Err(RenderError::Cdp("Runtime.evaluate", text));
            }
        };
        let selectors = crate::blocking::hiding(engine, url, &names.classes, &names.ids);
        if selectors.is_empty() {
            return Ok(());
        }
        match self
            .evaluate("Runtime.evaluate", in_page::hide_listed(&selectors))
            .await?
        {
            Evaluated::Value(_) => Ok(()),
            Evaluated::Threw { text, .. } => Err(RenderError::Cdp("Runtime.evaluate", text)),
        }
    }

    /// Let the consent rules find the page's consent pop-up and decline
    /// it: done when they say they are (declined, failed, or nothing
    /// found), or when they found nothing within [`CONSENT_SEARCH`].
    async fn decline_consent(&self) -> Result<(), RenderError> {
        let started = tokio::time::Instant::now();
        loop {
            let state = match self
                .evaluate("Runtime.evaluate", in_page::consent_state())
                .await?
            {
                Evaluated::Value(v) => v,
                Evaluated::Threw { text, .. } => {
                    return Err(RenderError::Cdp("Runtime.evaluate", text));
                }
            };
            let waited = started.elapsed();
            match state.as_str() {
                Some("done") => return Ok(()),
                Some("absent") if waited >= CONSENT_START => return Ok(()),
                Some("searching") if waited >= CONSENT_SEARCH => return Ok(()),
                // A pop-up found is declined, however long that takes
                // within the job's timeout.
                _ => tokio::time::sleep(EXPRESSION_POLL).await,
            }
        }
    }

    /// A call whose answer carries nothing the render needs.
    fn unit<C: Command + Send + 'static>(
        &self,
        name: &'static str,
        command: C,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(), RenderError>>
    where
        C::Response: Send,
    {
        Box::pin(async move { self.call(name, command, timeout).await.map(|_| ()) })
    }

    /// A call Chromium may refuse for the value of the job's `field` (an
    /// unknown time zone or locale, a cookie it will not set): then the
    /// job is wrong, not the browser.
    fn option<C: Command + Send + 'static>(
        &self,
        field: &'static str,
        name: &'static str,
        command: C,
    ) -> BoxFuture<'_, Result<(), RenderError>>
    where
        C::Response: Send,
    {
        let timeout = self.settings.cdp_timeout;
        Box::pin(async move {
            match self
                .cdp
                .call(Some(self.session.as_ref()), command, timeout)
                .await
            {
                Ok(_) => Ok(()),
                Err(CdpError::Protocol { message, .. }) => {
                    Err(RenderError::InvalidOption { field, message })
                }
                Err(e) => Err(RenderError::from_cdp(name, e)),
            }
        })
    }

    /// Evaluate in the page, bounded by the job's timeout (the caller's).
    async fn evaluate(
        &self,
        name: &'static str,
        params: Result<EvaluateParams, String>,
    ) -> Result<Evaluated, RenderError> {
        let params = params.map_err(|e| RenderError::Cdp(name, e))?;
        Ok(self
            .call(name, params, self.settings.navigation_timeout)
            .await?
            .into())
    }

    /// Add the job's stylesheet: its hidden selectors and its CSS.
    async fn add_style(&self, options: &RenderOptions) -> Result<(), RenderError> {
        let css = options.css.as_deref().unwrap_or_default();
        match self
            .evaluate(
                "Runtime.evaluate",
                in_page::style(&options.hide_selectors, css),
            )
            .await?
        {
            Evaluated::Value(v) if v == "ok" => Ok(()),
            Evaluated::Value(serde_json::Value::String(s)) if s.starts_with("invalid:") => Err(
                RenderError::InvalidSelector(s["invalid:".len()..].to_owned()),
            ),
            other => Err(RenderError::Cdp(
                "Runtime.evaluate",
                format!("adding the job's styles answered {other:?}"),
            )),
        }
    }

    /// Poll the job's expression until it is truthy. A syntax error fails
    /// at once; any other exception counts as "not yet".
    async fn wait_for_expression(&self, expression: &str) -> Result<(), RenderError> {
        self.wait_on(Some(format!("`{}` to be true", truncate(expression, 200))));
        loop {
            match self
                .evaluate("Runtime.evaluate", in_page::expression(expression))
                .await?
            {
                Evaluated::Value(v) if in_page::truthy(&v) => return Ok(()),
                Evaluated::Threw { class, text } if class == "SyntaxError" => {
                    return Err(RenderError::Script {
                        what: "wait_for_expression",
                        text,
                    });
                }
                _ => tokio::time::sleep(EXPRESSION_POLL).await,
            }
        }
    }

    /// Whether the renderer crashed: known to the pump, or told within a
    /// moment (the crash and the failed navigation race each other).
    async fn renderer_crashed(&self, events: &mut mpsc::UnboundedReceiver<Event>) -> bool {
        if self.document.lock().expect("document").crashed {
            return true;
        }
        let seen = tokio::time::timeout(CRASH_GRACE, async {
            while let Some(event) = events.recv().await {
                if event.is::<EventTargetCrashed>() {
                    return true;
                }
            }
            false
        });
        seen.await.unwrap_or(false) || self.document.lock().expect("document").crashed
    }

    /// Resolve once `selector` is in `state`, watching DOM mutations (and
    /// polling for what they do not show). An invalid selector fails at
    /// once.
    async fn wait_for_selector(
        &self,
        selector: &str,
        state: SelectorState,
    ) -> Result<(), RenderError> {
        let what = match state {
            SelectorState::Attached => "in the page",
            SelectorState::Visible => "visible",
            SelectorState::Hidden => "hidden or gone",
            SelectorState::Detached => "gone from the page",
        };
        self.wait_on(Some(format!("`{}` to be {what}", truncate(selector, 200))));
        match self
            .evaluate("Runtime.evaluate", in_page::selector(selector, state))
            .await?
        {
            Evaluated::Value(v) if v == "found" => Ok(()),
            Evaluated::Value(v) if v == "invalid" => {
                Err(RenderError::InvalidSelector(selector.to_owned()))
            }
            other => Err(RenderError::Cdp(
                "Runtime.evaluate",
                format!("the selector wait answered {other:?}"),
            )),
        }
    }

    /// The clip of the element to capture, scrolled into view and padded.
    async fn element_clip(
        &self,
        selector: &str,
        padding: u32,
    ) -> Result<(f64, f64, f64, f64), RenderError> {
        let not_found = |why| RenderError::ElementNotFound {
            selector: selector.to_owned(),
            why,
        };
        match self
            .evaluate("Runtime.evaluate", in_page::element(selector))
            .await?
        {
            Evaluated::Value(v) if v == "invalid" => {
                Err(RenderError::InvalidSelector(selector.to_owned()))
            }
            Evaluated::Value(v) if v == "missing" => Err(not_found("no element matches")),
            Evaluated::Value(v) if v == "empty" => Err(not_found("the element has no box")),
            Evaluated::Value(v) => serde_json::from_value::<in_page::ElementBox>(v.clone())
                .map(|b| in_page::padded(&b, padding))
                .map_err(|_| {
                    RenderError::Cdp(
                        "Runtime.evaluate",
                        format!("the element's box answered {v}"),
                    )
                }),
            Evaluated::Threw { text, .. } => Err(RenderError::Cdp("Runtime.evaluate", text)),
        }
    }

    async fn capture(&self, options: &RenderOptions) -> Result<Rendered, RenderError> {
        if options.format == ImageFormat::Pdf {
            return self.print(options).await;
        }
        let timeout = self.settings.cdp_timeout;
        let view = options.viewport();
        let scale = view.scale;
        // The largest area the image may cover, in CSS pixels, at this
        // scale: a clip or an element taller than that is cut (and said to
        // be).
        let max_rows = |width: f64| {
            let row = (width * scale).ceil().max(1.0);
            ((url2png_core::job::MAX_OUTPUT_PIXELS as f64 / row) / scale).floor()
        };
        let (clip, truncated, beyond) = if let Some(selector) = &options.selector {
            let (x, y, width, height) = self
                .element_clip(selector, options.selector_padding)
                .await?;
            let width = width.min(f64::from(url2png_core::job::VIEWPORT_MAX));
            let limit =
                max_rows(width).min(f64::from(url2png_core::job::FULL_PAGE_MAX_HEIGHT_LIMIT));
            let cut = height.min(limit);
            (
                Some(Viewport {
                    x,
                    y,
                    width,
                    height: cut,
                    scale: 1.0,
                }),
                height > limit,
                true,
            )
        } else if let Some(c) = &options.clip {
            (
                Some(Viewport {
                    x: f64::from(c.x),
                    y: f64::from(c.y),
                    width: f64::from(c.width),
                    height: f64::from(c.height),
                    scale: 1.0,
                }),
                false,
                true,
            )
        } else if options.full_page {
            let metrics = self
                .call(
                    "Page.getLayoutMetrics",
                    GetLayoutMetricsParams::default(),
                    timeout,
                )
                .await?;
            let content = metrics.css_content_size.height.ceil().max(1.0);
            let limit = f64::from(options.full_page_height_limit());
            let height = content.min(limit);
            let clip = Viewport {
                x: 0.0,
                y: 0.0,
                width: f64::from(view.width),
                height,
                scale: 1.0,
            };
            (Some(clip), content > limit, true)
        } else {
            (None, false, false)
        };
        let format = match options.format {
            ImageFormat::Png | ImageFormat::Pdf => CaptureScreenshotFormat::Png,
            ImageFormat::Jpeg => CaptureScreenshotFormat::Jpeg,
            ImageFormat::Webp => CaptureScreenshotFormat::Webp,
        };
        let params = CaptureScreenshotParams {
            format: Some(format),
            quality: options.effective_quality().map(i64::from),
            clip,
            from_surface: Some(true),
            capture_beyond_viewport: Some(beyond),
            optimize_for_speed: None,
        };
        // Encoding a large image takes a while; give the capture more than a
        // plain call.
        let data = self
            .call("Page.captureScreenshot", params, timeout * 3)
            .await?
            .data;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(AsRef::<[u8]>::as_ref(&data))
            .map_err(|e| {
                RenderError::Cdp("Page.captureScreenshot", format!("bad image data: {e}"))
            })?;
        // The image's own size, read from its header: what a capture gives
        // can differ by a pixel from the clip times the scale.
        let (width, height) = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok())
            .ok_or_else(|| {
                RenderError::Cdp(
                    "Page.captureScreenshot",
                    "the image's size cannot be read".into(),
                )
            })?;
        Ok(Rendered {
            bytes,
            width,
            height,
            truncated,
            status: None,
            blocked_requests: 0,
            console_errors: None,
        })
    }
}

impl Tab {
    /// Print the page to PDF. Its size is the paper's, in CSS pixels (96
    /// per inch).
    async fn print(&self, options: &RenderOptions) -> Result<Rendered, RenderError> {
        let pdf = options.pdf.clone().unwrap_or_default();
        // Chromium turns the paper itself for `landscape`.
        let (w, h) = pdf.paper.inches();
        let margin = f64::from(pdf.margin_mm) / 25.4;
        let params = PrintToPdfParams {
            landscape: Some(pdf.landscape),
            display_header_footer: Some(false),
            print_background: Some(pdf.print_background),
            scale: Some(pdf.scale),
            paper_width: Some(w),
            paper_height: Some(h),
            margin_top: Some(margin),
            margin_bottom: Some(margin),
            margin_left: Some(margin),
            margin_right: Some(margin),
            page_ranges: pdf.page_ranges.clone(),
            header_template: None,
            footer_template: None,
            prefer_css_page_size: Some(pdf.prefer_css_page_size),
            transfer_mode: None,
            generate_tagged_pdf: None,
            generate_document_outline: None,
        };
        let data = match self
            .cdp
            .call(
                Some(self.session.as_ref()),
                params,
                self.settings.cdp_timeout * 3,
            )
            .await
        {
            Ok(printed) => printed.data,
            // Chromium refuses a range past the last page.
            Err(CdpError::Protocol { message, .. }) if pdf.page_ranges.is_some() => {
                return Err(RenderError::InvalidOption {
                    field: "pdf.page_ranges",
                    message,
                });
            }
            Err(e) => return Err(RenderError::from_cdp("Page.printToPDF", e)),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(AsRef::<[u8]>::as_ref(&data))
            .map_err(|e| RenderError::Cdp("Page.printToPDF", format!("bad PDF data: {e}")))?;
        let (w, h) = if pdf.landscape { (h, w) } else { (w, h) };
        Ok(Rendered {
            bytes,
            width: (w * 96.0).round() as u32,
            height: (h * 96.0).round() as u32,
            truncated: false,
            status: None,
            blocked_requests: 0,
            console_errors: None,
        })
    }
}

/// Answer what must be answered at once (paused requests, credential
/// prompts, dialogs), note the main document's response, and pass the rest
/// on. Answers are written without waiting for Chromium's reply, so
/// requests are let through concurrently, in the order they paused.
#[allow(clippy::too_many_arguments)]
async fn pump(
    cdp: Cdp,
    session: SessionId,
    target: TargetId,
    mut events: Events,
    check: Option<RequestCheck>,
    document: Arc<Mutex<Document>>,
    network: Arc<std::sync::atomic::AtomicBool>,
    rules: Arc<std::sync::RwLock<Option<Arc<RequestRules>>>>,
    forward: mpsc::UnboundedSender<Event>,
) {
    let sid = Some(session.as_ref());
    while let Some(event) = events.recv().await {
        if let Some(paused) = event.decode::<EventRequestPaused>() {
            let main_document = paused.resource_type == ResourceType::Document
                && paused.frame_id.as_ref() == target.as_ref();
            let at_response =
                paused.response_status_code.is_some() || paused.response_error_reason.is_some();
            let verdict = match (&check, at_response) {
                (Some(check), false) => check_request(&check.policy, &paused.request.url)
                    .inspect_err(|reason| {
                        tracing::info!(url = %truncate(&paused.request.url, 200), reason, "request refused in the browser");
                        check.refused.inc();
                        let mut doc = document.lock().expect("document");
                        if doc.refusals.len() < url2png_core::report::MAX_ENTRIES {
                            doc.refusals
                                .push((truncate(&paused.request.url, 500).to_owned(), reason.clone()));
                        }
                    }),
                _ => Ok(()),
            };
            if at_response && main_document {
                let mut doc = document.lock().expect("document");
                doc.status = paused
                    .response_status_code
                    .and_then(|s| u16::try_from(s).ok());
                if doc.responses.len() < url2png_core::report::MAX_ENTRIES {
                    let url = truncate(&paused.request.url, 2000).to_owned();
                    let status = doc.status;
                    doc.responses.push((url, status));
                }
                let header =
                    |name: &str| {
                        paused.response_headers.iter().flatten().find_map(|h| {
                            h.name.eq_ignore_ascii_case(name).then(|| h.value.clone())
                        })
                    };
                doc.blocked = header(crate::egress::BLOCKED_HEADER);
                doc.unreached =
                    header(crate::egress::UNREACHED_HEADER).and_then(|c| Unreached::from_code(&c));
            }
            if main_document
                && !at_response
                && let Err(reason) = &verdict
            {
                document.lock().expect("document").refused = Some((
                    truncate(&paused.request.url, 500).to_owned(),
                    reason.clone(),
                ));
            }
            let job = match (&verdict, at_response) {
                (Ok(()), false) => rules
                    .read()
                    .expect("rules")
                    .as_ref()
                    .map(|r| r.verdict(&paused.request, &paused.resource_type, main_document)),
                _ => None,
            };
            let sent = match (verdict, job) {
                (Ok(()), None | Some(Verdict::Continue)) => {
                    cdp.send(sid, &fetch::ContinueRequestParams::new(paused.request_id))
                }
                (Ok(()), Some(Verdict::WithHeaders(headers))) => {
                    let mut params = fetch::ContinueRequestParams::new(paused.request_id);
                    params.headers = Some(headers);
                    cdp.send(sid, &params)
                }
                (Ok(()), Some(Verdict::Block)) | (Err(_), _) => cdp.send(
                    sid,
                    &fetch::FailRequestParams::new(paused.request_id, ErrorReason::BlockedByClient),
                ),
            };
            if sent.is_err() {
                return;
            }
        } else if let Some(auth) = event.decode::<EventAuthRequired>() {
            // A job has no credentials to give: cancel, and fail the job if
            // it was the page itself that asked.
            if auth.resource_type == ResourceType::Document
                && auth.frame_id.as_ref() == target.as_ref()
            {
                document.lock().expect("document").auth_required = true;
            }
            let cancel = ContinueWithAuthParams::new(
                auth.request_id,
                AuthChallengeResponse::new(AuthChallengeResponseResponse::CancelAuth),
            );
            if cdp.send(sid, &cancel).is_err() {
                return;
            }
        } else if let Some(dialog) = event.decode::<EventJavascriptDialogOpening>() {
            // A page's `alert`, `confirm`, `prompt` or `beforeunload`
            // dialog would block it until answered: answer each at once,
            // as a user who only clicks it away would (OK for alerts and
            // leaving, Cancel for questions).
            let accept = matches!(dialog.r#type, DialogType::Alert | DialogType::Beforeunload);
            tracing::debug!(kind = ?dialog.r#type, accept, "answering a page dialog");
            if cdp
                .send(sid, &HandleJavaScriptDialogParams::new(accept))
                .is_err()
            {
                return;
            }
        } else if event.is::<EventTargetCrashed>() {
            document.lock().expect("document").crashed = true;
            let _ = forward.send(event);
        } else if event.is::<EventLifecycleEvent>()
            || event.is::<EventFrameNavigated>()
            || (network.load(std::sync::atomic::Ordering::Acquire)
                && (event.is::<EventRequestWillBeSent>()
                    || event.is::<EventLoadingFinished>()
                    || event.is::<EventLoadingFailed>()))
        {
            let _ = forward.send(event);
        }
    }
}

/// How long a failed navigation waits to learn whether the renderer died.
const CRASH_GRACE: Duration = Duration::from_millis(300);

/// How long after load the consent rules may take to start (a document
/// that runs no script, such as an image, never starts them).
const CONSENT_START: Duration = Duration::from_millis(1500);
/// How long after load they may search for a pop-up; they stop sooner on
/// a page whose document stops changing.
const CONSENT_SEARCH: Duration = Duration::from_secs(5);

/// The filter-list engines a job uses.
struct Engines {
    ads: Option<Arc<adblock::Engine>>,
    trackers: Option<Arc<adblock::Engine>>,
}

/// How often a wait expression is evaluated again.
const EXPRESSION_POLL: Duration = Duration::from_millis(100);

/// Requests in flight, counted from `Network` events (only a job waiting
/// for the network to go quiet has them). A request counts until its body
/// is fully loaded (a response whose body the page never reads keeps the
/// network busy, as in Chromium's own notion). Requests are counted here
/// rather than relying on Chromium's `networkIdle` lifecycle event, which
/// headless mode does not always send.
#[derive(Default)]
struct NetworkIdle {
    in_flight: HashSet<RequestId>,
}

impl NetworkIdle {
    fn observe(&mut self, event: &Event) {
        if let Some(sent) = event.decode::<EventRequestWillBeSent>() {
            self.in_flight.insert(sent.request_id);
        } else if let Some(done) = event.decode::<EventLoadingFinished>() {
            self.in_flight.remove(&done.request_id);
        } else if let Some(failed) = event.decode::<EventLoadingFailed>() {
            self.in_flight.remove(&failed.request_id);
        }
    }

    /// Resolve once no request has been in flight for `quiet`.
    async fn wait(&mut self, events: &mut mpsc::UnboundedReceiver<Event>, quiet: Duration) {
        loop {
            while !self.in_flight.is_empty() {
                match events.recv().await {
                    Some(event) => self.observe(&event),
                    // The page is gone; nothing more will load.
                    None => return,
                }
            }
            let quiet = tokio::time::sleep(quiet);
            tokio::pin!(quiet);
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => {
                            self.observe(&event);
                            if !self.in_flight.is_empty() {
                                break;
                            }
                        }
                        None => return,
                    },
                    () = &mut quiet => return,
                }
            }
        }
    }
}

/// The URLs the in-browser check pauses: those whose host is an address
/// literal (Chromium writes every IPv4 form as dotted decimal, so such a
/// host starts with a digit; an IPv6 one with `[`), those with user info
/// before the host, and other schemes. A request for a name is not paused:
/// nothing about it can be refused before it is resolved, which is the
/// egress proxy's work, so pausing it would only cost a round trip through
/// the browser for each of a page's sub-resources.
fn check_patterns() -> Vec<String> {
    let mut patterns = Vec::new();
    for scheme in ["http", "https", "ws", "wss"] {
        patterns.push(format!("{scheme}://[*"));
        patterns.push(format!("{scheme}://*@*"));
        patterns.extend((0..10).map(|d| format!("{scheme}://{d}*")));
    }
    for scheme in [
        "file",
        "ftp",
        "filesystem",
        "chrome",
        "chrome-extension",
        "devtools",
    ] {
        patterns.push(format!("{scheme}:*"));
    }
    patterns
}

/// Whether a request may leave the browser, as far as its URL tells.
fn check_request(policy: &UrlPolicy, url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => policy.check_url(url).map(|_| ()).map_err(|e| e.to_string()),
        "ws" | "wss" => {
            let port = parsed.port_or_known_default().unwrap_or(0);
            let host = parsed.host_str().unwrap_or_default();
            policy
                .check_authority(host, port)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        // Inline and in-memory content never leaves the browser.
        "data" | "blob" | "about" => Ok(()),
        other => Err(format!("scheme `{other}` is not allowed")),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_browser_checks() {
        let policy = UrlPolicy::new("127.0.0.1/32", "", "").unwrap();
        assert!(check_request(&policy, "http://127.0.0.1:8080/a").is_ok());
        assert!(check_request(&policy, "data:image/png;base64,AAAA").is_ok());
        assert!(check_request(&policy, "ws://127.0.0.1:9/").is_ok());
        for refused in [
            "http://127.0.0.2/",
            "https://169.254.169.254/",
            "ws://[::1]:80/",
            "wss://10.0.0.1/",
            "file:///etc/passwd",
            "ftp://example.com/",
            "chrome://version",
            "http://localhost:80/",
        ] {
            assert!(check_request(&policy, refused).is_err(), "{refused}");
        }
    }

    /// CDP's `urlPattern` wildcards: `*` any run, `?` one character.
    fn wildcard(pattern: &str, text: &str) -> bool {
        match pattern.chars().next() {
            None => text.is_empty(),
            Some('*') => (0..=text.len())
                .filter(|i| text.is_char_boundary(*i))
                .any(|i| wildcard(&pattern[1..], &text[i..])),
            Some(c) => text.chars().next().is_some_and(|t| {
                (c == '?' || c == t) && wildcard(&pattern[c.len_utf8()..], &text[t.len_utf8()..])
            }),
        }
    }

    #[test]
    fn every_url_the_check_refuses_is_paused_and_names_are_not() {
        let policy = UrlPolicy::new("", "", "").unwrap();
        let patterns = check_patterns();
        let paused = |url: &str| patterns.iter().any(|p| wildcard(p, url));
        // As Chromium writes them: every IPv4 form canonicalised.
        for url in [
            "http://127.0.0.1/x",
            "https://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1:8080/",
            "https://[::1]/",
            "http://[::ffff:7f00:1]/",
            "ws://192.168.1.1/socket",
            "http://user@10.0.0.1/",
            "file:///etc/passwd",
            "ftp://example.com/",
            "chrome://version",
        ] {
            assert!(check_request(&policy, url).is_err(), "{url} is refused");
            assert!(paused(url), "{url} is paused");
        }
        for url in [
            "https://example.com/a.css",
            "http://docs.rs/x",
            "https://xn--bcher-kva.example/",
        ] {
            assert!(!paused(url), "{url} is not paused");
        }
    }

    #[test]
    fn decodes_network_error_codes() {
        for (text, kind) in [
            ("net::ERR_NAME_NOT_RESOLVED", NetError::NameNotResolved),
            ("net::ERR_NAME_RESOLUTION_FAILED", NetError::ResolverFailed),
            ("net::ERR_CERT_AUTHORITY_INVALID", NetError::Tls),
            ("net::ERR_CERT_DATE_INVALID", NetError::Tls),
            ("net::ERR_SSL_PROTOCOL_ERROR", NetError::Tls),
            ("net::ERR_CONNECTION_REFUSED", NetError::Connection),
            ("net::ERR_CONNECTION_RESET", NetError::Connection),
            ("net::ERR_TIMED_OUT", NetError::Connection),
            ("net::ERR_TUNNEL_CONNECTION_FAILED", NetError::Tunnel),
            ("net::ERR_BLOCKED_BY_CLIENT", NetError::BlockedByClient),
            ("net::ERR_ABORTED", NetError::Aborted),
            ("net::ERR_TOO_MANY_REDIRECTS", NetError::Permanent),
            ("net::ERR_INVALID_AUTH_CREDENTIALS", NetError::Permanent),
            ("net::ERR_SOMETHING_NEW", NetError::Other),
            // A code is matched whole, not by a part of it.
            ("net::ERR_NAME_NOT_RESOLVED_LATER", NetError::Other),
            ("", NetError::Other),
        ] {
            assert_eq!(NetError::parse(text), kind, "{text}");
        }
    }
}
