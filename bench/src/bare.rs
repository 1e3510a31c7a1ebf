//! The ceilings: a bare CDP loop over the worker's own client, with the
//! worker's Chromium flags, doing only what a job needs and nothing else
//! (no queue, no S3, no egress guard, no request check). Isolated: a fresh
//! context per job (context, target, attach, `Page.enable` with the device
//! metrics, navigate, `load`, screenshot, dispose). Warm: tabs set up once
//! and reused, no isolation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::page::{
    self, CaptureScreenshotFormat, CaptureScreenshotParams, EventLoadEventFired, NavigateParams,
};
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams, DisposeBrowserContextParams, SessionId,
};
use url2png_worker::cdp::{self, Cdp, Events};

const CALL: Duration = Duration::from_secs(30);

/// Open a target (in `context`, if given), attach, enable `Page` and set
/// the device metrics, the last two pipelined.
pub async fn open(
    cdp: &Cdp,
    context: Option<chromiumoxide::cdp::browser_protocol::browser::BrowserContextId>,
) -> anyhow::Result<(SessionId, Events)> {
    let mut params = CreateTargetParams::new("about:blank");
    params.browser_context_id = context;
    let target = cdp.call(None, params, CALL).await?.target_id;
    let (session, events) = cdp.attach(target, CALL).await?;
    let sid = Some(session.as_ref());
    let (enabled, metrics) = futures::join!(
        cdp.call(sid, page::EnableParams::default(), CALL),
        cdp.call(
            sid,
            SetDeviceMetricsOverrideParams::new(1280, 800, 1.0, false),
            CALL
        ),
    );
    enabled?;
    metrics?;
    Ok((session, events))
}

/// Navigate, wait for `load` and take a PNG; returns the image.
pub async fn shoot(
    cdp: &Cdp,
    session: &SessionId,
    events: &mut Events,
    url: &str,
) -> anyhow::Result<Vec<u8>> {
    while events.try_recv().is_ok() {}
    let sid = Some(session.as_ref());
    let nav = cdp.call(sid, NavigateParams::new(url), CALL).await?;
    anyhow::ensure!(
        nav.error_text.is_none(),
        "navigation failed: {:?}",
        nav.error_text
    );
    loop {
        let event = events
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("page went away"))?;
        if event.is::<EventLoadEventFired>() {
            break;
        }
    }
    let shot = CaptureScreenshotParams {
        format: Some(CaptureScreenshotFormat::Png),
        from_surface: Some(true),
        ..CaptureScreenshotParams::default()
    };
    let data = cdp.call(sid, shot, CALL).await?.data;
    Ok(base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        AsRef::<[u8]>::as_ref(&data),
    )?)
}

/// Render every URL on `tabs` concurrent tabs of one browser; returns the
/// seconds taken and the peak private memory (MiB) of the browser's tree.
pub async fn run(
    chromium: &str,
    extra_args: &[String],
    urls: &[String],
    tabs: usize,
    isolated: bool,
) -> anyhow::Result<(f64, f64)> {
    let profile = cdp::profile_dir("bench-bare");
    std::fs::create_dir_all(&profile)?;
    let args = url2png_worker::pool::chromium_args(false, None, extra_args);
    let launched = cdp::launch(chromium.as_ref(), &args, &profile, CALL)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut child = launched.child;
    let memory = crate::measure::PeakMemory::start(child.id().unwrap_or(0));
    let cdp = launched.cdp;
    let mut warm = Vec::new();
    if !isolated {
        for _ in 0..tabs {
            warm.push(Some(open(&cdp, None).await?));
        }
    } else {
        warm.resize_with(tabs, || None);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let loops = warm.into_iter().map(|tab| {
        let (cdp, next) = (cdp.clone(), next.clone());
        async move {
            let mut tab = tab;
            loop {
                let i = next.fetch_add(1, Ordering::AcqRel);
                let Some(url) = urls.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                match &mut tab {
                    Some((session, events)) => {
                        shoot(&cdp, session, events, url).await?;
                    }
                    None => {
                        let context = cdp
                            .call(None, CreateBrowserContextParams::default(), CALL)
                            .await?
                            .browser_context_id;
                        let (session, mut events) = open(&cdp, Some(context.clone())).await?;
                        shoot(&cdp, &session, &mut events, url).await?;
                        cdp.forget(&session);
                        cdp.call(None, DisposeBrowserContextParams::new(context), CALL)
                            .await?;
                    }
                }
            }
        }
    });
    for result in futures::future::join_all(loops).await {
        result?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = memory.finish().await;
    let _ = child.kill().await;
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&profile);
    Ok((seconds, peak))
}
