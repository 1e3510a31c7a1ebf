//! Rendering one job on one page: viewport, navigation, the wait condition,
//! and the capture.
//!
//! Every call into Chromium has its own timeout (`cdp_timeout`) except the
//! navigation and the wait condition, which the caller's per-job timeout
//! bounds. Full-page captures keep the requested device scale factor by
//! setting the device metrics here and capturing a clip beyond the
//! viewport, instead of resizing the viewport (which would also reset the
//! scale).

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::fetch::{self, EventRequestPaused};
use chromiumoxide::cdp::browser_protocol::network::{
    EventLoadingFailed, EventLoadingFinished, EventRequestWillBeSent, EventResponseReceived,
    RequestId, ResourceType,
};
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, CaptureScreenshotParams, DialogType, EventJavascriptDialogOpening,
    GetLayoutMetricsParams, HandleJavaScriptDialogParams, NavigateParams, Viewport,
};
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::page::Page;
use futures::{FutureExt, StreamExt};
use url2png_core::job::{ImageFormat, RenderOptions, WaitFor};
use url2png_core::policy::UrlPolicy;

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
}

/// Why a render did not produce an image.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Chromium could not load the page (`net::ERR_…`).
    #[error("navigation failed: {text}")]
    Navigation { text: String, permanent: bool },
    /// The main document answered with an error status and the job asked
    /// to fail on that.
    #[error("the page answered HTTP {0}")]
    HttpStatus(u16),
    /// The egress guard refused the page itself.
    #[error("blocked by policy: {0}")]
    Blocked(String),
    /// The wait selector is not valid CSS.
    #[error("invalid selector: {0}")]
    InvalidSelector(String),
    /// A call into Chromium did not answer in time.
    #[error("Chromium did not answer `{0}` within {1:?}")]
    CdpTimeout(&'static str, Duration),
    /// A call into Chromium failed.
    #[error("Chromium call `{0}` failed: {1}")]
    Cdp(&'static str, String),
}

impl RenderError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Navigation { permanent, .. } => !permanent,
            Self::HttpStatus(_) | Self::InvalidSelector(_) | Self::Blocked(_) => false,
            Self::CdpTimeout(..) | Self::Cdp(..) => true,
        }
    }

    /// Whether the failure points at the browser rather than the page.
    pub fn suspects_browser(&self) -> bool {
        matches!(self, Self::CdpTimeout(..) | Self::Cdp(..))
    }
}

/// Network errors that no retry will fix: the name does not exist, the URL
/// or port is refused by Chromium itself, the certificate is bad, the page
/// asks for credentials, or the target is a download rather than a page.
fn is_permanent_net_error(text: &str) -> bool {
    const PERMANENT: &[&str] = &[
        "ERR_NAME_NOT_RESOLVED",
        "ERR_INVALID_URL",
        "ERR_UNSAFE_PORT",
        "ERR_UNSAFE_REDIRECT",
        "ERR_DISALLOWED_URL_SCHEME",
        "ERR_UNKNOWN_URL_SCHEME",
        "ERR_BLOCKED_BY_CLIENT",
        "ERR_BLOCKED_BY_ADMINISTRATOR",
        "ERR_BLOCKED_BY_RESPONSE",
        "ERR_TOO_MANY_REDIRECTS",
        "ERR_INVALID_RESPONSE",
        "ERR_INVALID_REDIRECT",
        "ERR_ABORTED",
        "ERR_CERT_",
        "ERR_SSL_",
        "ERR_BAD_SSL_CLIENT_AUTH_CERT",
        "ERR_ADDRESS_INVALID",
        "ERR_ADDRESS_UNREACHABLE",
        "ERR_ACCESS_DENIED",
        // The page asks for credentials; a job has none to give.
        "ERR_INVALID_AUTH_CREDENTIALS",
    ];
    PERMANENT.iter().any(|p| text.contains(p))
}

async fn cdp<T, E: std::fmt::Display>(
    name: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, RenderError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RenderError::Cdp(name, e.to_string())),
        Err(_) => Err(RenderError::CdpTimeout(name, timeout)),
    }
}

/// The second layer of the URL policy, inside Chromium: every request the
/// page's own session makes is paused (CDP `Fetch` domain) and let through
/// only if its scheme is http(s) or ws(s) and, for an address literal, the
/// address is allowed. The egress proxy remains the layer that checks what
/// names resolve to. Dropping the guard stops it.
pub struct RequestGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RequestGuard {
    /// Start pausing and checking the requests of `page`.
    pub async fn start(
        page: &Page,
        policy: std::sync::Arc<UrlPolicy>,
        blocked: prometheus::IntCounter,
        cdp_timeout: Duration,
    ) -> Result<Self, RenderError> {
        let mut paused = cdp(
            "listen Fetch.requestPaused",
            cdp_timeout,
            page.event_listener::<EventRequestPaused>(),
        )
        .await?;
        let enable = fetch::EnableParams::builder()
            .pattern(fetch::RequestPattern::builder().url_pattern("*").build())
            .build();
        cdp("Fetch.enable", cdp_timeout, page.execute(enable)).await?;
        let page = page.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = paused.next().await {
                let url = &event.request.url;
                let verdict = check_request(&policy, url);
                let id = event.request_id.clone();
                let sent = match verdict {
                    Ok(()) => page
                        .execute(fetch::ContinueRequestParams::new(id))
                        .await
                        .map(|_| ()),
                    Err(reason) => {
                        tracing::info!(url = %truncate(url, 200), reason, "request refused in the browser");
                        blocked.inc();
                        page.execute(fetch::FailRequestParams::new(
                            id,
                            chromiumoxide::cdp::browser_protocol::network::ErrorReason::BlockedByClient,
                        ))
                        .await
                        .map(|_| ())
                    }
                };
                if sent.is_err() {
                    // The page is going away.
                    return;
                }
            }
        });
        Ok(Self { task })
    }
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

/// Render `url` on `page` as `options` say. The caller bounds the whole
/// call with the job's timeout.
pub async fn render(
    page: &Page,
    url: &str,
    options: &RenderOptions,
    cdp_timeout: Duration,
) -> Result<Rendered, RenderError> {
    cdp(
        "Emulation.setDeviceMetricsOverride",
        cdp_timeout,
        page.execute(SetDeviceMetricsOverrideParams::new(
            i64::from(options.width),
            i64::from(options.height),
            options.device_scale_factor,
            false,
        )),
    )
    .await?;

    // A page's `alert`, `confirm`, `prompt` or `beforeunload` dialog
    // would block it until answered: answer each at once, as a user who
    // only clicks it away would (OK for alerts and leaving, Cancel for
    // questions).
    let dialogs = cdp(
        "listen Page.javascriptDialogOpening",
        cdp_timeout,
        page.event_listener::<EventJavascriptDialogOpening>(),
    )
    .await?;
    let _dialogs = DismissDialogs(tokio::spawn(dismiss_dialogs(
        page.clone(),
        dialogs,
        cdp_timeout,
    )));

    // Listen before navigating, so no event of this navigation is missed.
    let mut responses = cdp(
        "listen Network.responseReceived",
        cdp_timeout,
        page.event_listener::<EventResponseReceived>(),
    )
    .await?;
    let mut network = match options.wait_for {
        WaitFor::NetworkIdle => Some(network_events(page, cdp_timeout).await?),
        _ => None,
    };

    // Page.navigate resolves once the page has loaded (the `load` event).
    let navigation = page
        .execute(NavigateParams::new(url))
        .await
        .map_err(|e| RenderError::Cdp("Page.navigate", e.to_string()))?
        .result;
    if let Some(text) = navigation.error_text {
        return Err(navigation_error(text));
    }
    let loader = navigation.loader_id;

    // The main document's final response (after redirects) carries the
    // status. Events up to `load` are already queued.
    let mut status = None;
    let mut blocked = None;
    while let Some(Some(event)) = responses.next().now_or_never() {
        if event.r#type == ResourceType::Document && Some(&event.loader_id) == loader.as_ref() {
            status = u16::try_from(event.response.status).ok();
            // The egress guard answers a refused document itself.
            blocked = event
                .response
                .headers
                .inner()
                .as_object()
                .and_then(|h| {
                    h.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(crate::egress::BLOCKED_HEADER))
                })
                .map(|(_, v)| v.as_str().unwrap_or_default().to_owned());
        }
    }
    if let Some(reason) = blocked {
        return Err(RenderError::Blocked(reason));
    }
    drop(responses);
    if options.fail_on_http_error
        && let Some(code) = status.filter(|s| *s >= 400)
    {
        return Err(RenderError::HttpStatus(code));
    }

    match &options.wait_for {
        WaitFor::Load => {}
        WaitFor::NetworkIdle => {
            if let Some(events) = network.as_mut() {
                wait_for_network_idle(events).await;
            }
        }
        WaitFor::Selector(selector) => wait_for_selector(page, selector).await?,
    }
    drop(network);
    if options.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(options.delay_ms.into())).await;
    }

    capture(page, options, cdp_timeout).await.map(|mut r| {
        r.status = status;
        r
    })
}

/// The task answering a page's dialogs; stopped when the render ends.
struct DismissDialogs(tokio::task::JoinHandle<()>);

impl Drop for DismissDialogs {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn dismiss_dialogs(
    page: Page,
    mut dialogs: chromiumoxide::listeners::EventStream<EventJavascriptDialogOpening>,
    cdp_timeout: Duration,
) {
    while let Some(dialog) = dialogs.next().await {
        let accept = matches!(dialog.r#type, DialogType::Alert | DialogType::Beforeunload);
        tracing::debug!(kind = ?dialog.r#type, accept, "answering a page dialog");
        let answer = HandleJavaScriptDialogParams::new(accept);
        if let Err(e) = cdp(
            "Page.handleJavaScriptDialog",
            cdp_timeout,
            page.execute(answer),
        )
        .await
        {
            tracing::debug!(error = %e, "cannot answer a page dialog");
        }
    }
}

/// How long no request may be in flight for the network to count as idle.
const NETWORK_QUIET: Duration = Duration::from_millis(500);

enum NetworkEvent {
    Started(RequestId),
    Ended(RequestId),
}

type NetworkStream = futures::stream::BoxStream<'static, NetworkEvent>;

/// Requests starting and ending on `page`, from now on.
async fn network_events(page: &Page, cdp_timeout: Duration) -> Result<NetworkStream, RenderError> {
    let sent = cdp(
        "listen Network.requestWillBeSent",
        cdp_timeout,
        page.event_listener::<EventRequestWillBeSent>(),
    )
    .await?
    .map(|e| NetworkEvent::Started(e.request_id.clone()));
    let finished = cdp(
        "listen Network.loadingFinished",
        cdp_timeout,
        page.event_listener::<EventLoadingFinished>(),
    )
    .await?
    .map(|e| NetworkEvent::Ended(e.request_id.clone()));
    let failed = cdp(
        "listen Network.loadingFailed",
        cdp_timeout,
        page.event_listener::<EventLoadingFailed>(),
    )
    .await?
    .map(|e| NetworkEvent::Ended(e.request_id.clone()));
    Ok(futures::stream::select(sent, futures::stream::select(finished, failed)).boxed())
}

/// Resolve once no request has been in flight for [`NETWORK_QUIET`]. A
/// request counts until its body is fully loaded (a response whose body the
/// page never reads keeps the network busy, as in Chromium's own notion).
/// Requests are counted here rather than relying on Chromium's
/// `networkIdle` lifecycle event, which headless mode does not always send.
async fn wait_for_network_idle(events: &mut NetworkStream) {
    let mut in_flight = std::collections::HashSet::new();
    loop {
        let quiet = tokio::time::sleep(NETWORK_QUIET);
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                event = events.next() => {
                    match event {
                        Some(NetworkEvent::Started(id)) => { in_flight.insert(id); }
                        Some(NetworkEvent::Ended(id)) => { in_flight.remove(&id); }
                        // The page is gone; nothing more will load.
                        None => return,
                    }
                    if !in_flight.is_empty() {
                        break;
                    }
                    quiet.as_mut().reset(tokio::time::Instant::now() + NETWORK_QUIET);
                }
                _ = &mut quiet, if in_flight.is_empty() => return,
            }
        }
        // Something is loading: wait until it all ends, then be quiet again.
        while !in_flight.is_empty() {
            match events.next().await {
                Some(NetworkEvent::Started(id)) => {
                    in_flight.insert(id);
                }
                Some(NetworkEvent::Ended(id)) => {
                    in_flight.remove(&id);
                }
                None => return,
            }
        }
    }
}

fn navigation_error(text: String) -> RenderError {
    RenderError::Navigation {
        permanent: is_permanent_net_error(&text),
        text,
    }
}

/// Resolve once an element matches `selector`, watching DOM mutations
/// rather than polling. An invalid selector fails at once.
async fn wait_for_selector(page: &Page, selector: &str) -> Result<(), RenderError> {
    const SCRIPT: &str = r#"(sel) => new Promise((resolve, reject) => {
        try { if (document.querySelector(sel)) return resolve(true); }
        catch (e) { return reject(new Error("invalid selector")); }
        const obs = new MutationObserver(() => {
            if (document.querySelector(sel)) { obs.disconnect(); resolve(true); }
        });
        obs.observe(document, { childList: true, subtree: true, attributes: true });
    })"#;
    // A JSON string is a valid JavaScript string literal: no injection.
    let literal = serde_json::to_string(selector).unwrap_or_else(|_| "\"\"".into());
    let params = EvaluateParams::builder()
        .expression(format!("({SCRIPT})({literal})"))
        .await_promise(true)
        .return_by_value(true)
        .build()
        .map_err(|e| RenderError::Cdp("Runtime.evaluate", e))?;
    let result = page
        .execute(params)
        .await
        .map_err(|e| RenderError::Cdp("Runtime.evaluate", e.to_string()))?
        .result;
    if let Some(exception) = result.exception_details {
        let text = exception
            .exception
            .and_then(|e| e.description)
            .unwrap_or(exception.text);
        if text.contains("invalid selector") {
            return Err(RenderError::InvalidSelector(selector.to_owned()));
        }
        return Err(RenderError::Cdp("Runtime.evaluate", text));
    }
    Ok(())
}

async fn capture(
    page: &Page,
    options: &RenderOptions,
    cdp_timeout: Duration,
) -> Result<Rendered, RenderError> {
    let scale = options.device_scale_factor;
    let (css_height, truncated, clip) = if options.full_page {
        let metrics = cdp(
            "Page.getLayoutMetrics",
            cdp_timeout,
            page.execute(GetLayoutMetricsParams::default()),
        )
        .await?
        .result;
        let content = metrics.css_content_size.height.ceil().max(1.0);
        let limit = f64::from(options.full_page_height_limit());
        let height = content.min(limit);
        let clip = Viewport {
            x: 0.0,
            y: 0.0,
            width: f64::from(options.width),
            height,
            scale: 1.0,
        };
        (height as u32, content > limit, Some(clip))
    } else {
        (options.height, false, None)
    };
    let format = match options.format {
        ImageFormat::Png => CaptureScreenshotFormat::Png,
        ImageFormat::Jpeg => CaptureScreenshotFormat::Jpeg,
        ImageFormat::Webp => CaptureScreenshotFormat::Webp,
    };
    let params = CaptureScreenshotParams {
        format: Some(format),
        quality: options.effective_quality().map(i64::from),
        clip,
        from_surface: Some(true),
        capture_beyond_viewport: Some(options.full_page),
        optimize_for_speed: None,
    };
    // Encoding a large image takes a while; give the capture more than a
    // plain call.
    let data = cdp(
        "Page.captureScreenshot",
        cdp_timeout * 3,
        page.execute(params),
    )
    .await?
    .result
    .data;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(AsRef::<[u8]>::as_ref(&data))
        .map_err(|e| RenderError::Cdp("Page.captureScreenshot", format!("bad image data: {e}")))?;
    let px = |css: u32| (f64::from(css) * scale).round() as u32;
    Ok(Rendered {
        bytes,
        width: px(options.width),
        height: px(css_height),
        truncated,
        status: None,
    })
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

    #[test]
    fn classifies_network_errors() {
        assert!(is_permanent_net_error("net::ERR_NAME_NOT_RESOLVED"));
        assert!(is_permanent_net_error("net::ERR_CERT_AUTHORITY_INVALID"));
        assert!(is_permanent_net_error("net::ERR_INVALID_AUTH_CREDENTIALS"));
        assert!(!is_permanent_net_error("net::ERR_CONNECTION_REFUSED"));
        assert!(!is_permanent_net_error("net::ERR_CONNECTION_RESET"));
        assert!(!is_permanent_net_error("net::ERR_TIMED_OUT"));
    }
}
