//! `isolation-cost`: what a fresh browser context per job costs, in wall
//! time and in machine CPU, against a warm tab and a new tab in the
//! default context. Drives Chromium directly, one job at a time, on three
//! loopback sites; CPU is read from `/proc/stat` (all processes, so run it
//! on an otherwise idle machine).
//!
//! Run: `cargo run --release -p url2png-bench --bin isolation-cost [-- CHROMIUM FLAGS]`.

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotParams;
use chromiumoxide::cdp::browser_protocol::target::{
    CloseTargetParams, CreateBrowserContextParams, CreateTargetParams,
};
use url2png_testkit::Fixtures;

const JOBS: usize = 40;

/// Busy CPU time of the whole machine so far, in clock ticks.
fn busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    anyhow::ensure!(fields.len() > 4, "unexpected /proc/stat");
    Ok(fields.iter().sum::<u64>() - fields[3] - fields[4])
}

/// CPU time of this process (the CDP client) so far, in clock ticks.
fn own_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    anyhow::ensure!(fields.len() > 12, "unexpected /proc/self/stat");
    Ok(fields[10] + fields[11])
}

async fn measure<F, Fut>(name: &str, mut job: F) -> anyhow::Result<()>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let before = busy_ticks()?;
    let own_before = own_ticks()?;
    let started = Instant::now();
    for i in 0..JOBS {
        job(i).await?;
    }
    let wall = started.elapsed() / JOBS as u32;
    // Clock ticks are 10 ms on Linux.
    let cpu_ms = (busy_ticks()? - before) as f64 * 10.0 / JOBS as f64;
    let client_ms = (own_ticks()? - own_before) as f64 * 10.0 / JOBS as f64;
    println!(
        "| {name} | {:.0} | {cpu_ms:.0} | {client_ms:.0} |",
        wall.as_secs_f64() * 1000.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let extra: Vec<String> = std::env::args().skip(1).collect();
    let sites = futures::future::join_all(
        [3u8, 4, 5].map(|last| Fixtures::start_on(IpAddr::from([127, 0, 0, last]))),
    )
    .await;
    let url = |i: usize, tag: &str| sites[i % sites.len()].url(&format!("/{tag}/{i}"));
    let test_browser = url2png_testkit::TestBrowser::launch(&extra)
        .await
        .map_err(anyhow::Error::msg)?;
    let browser = &test_browser.browser;
    let shot = CaptureScreenshotParams::default;
    let b = &browser;

    println!(
        "| per job ({JOBS} jobs, one at a time) | wall ms | machine CPU ms | of which the client |"
    );
    println!("| --- | ---: | ---: | ---: |");
    let warm = browser.new_page("about:blank").await?;
    measure("warm tab: navigate + screenshot", |i| {
        let (warm, url) = (&warm, url(i, "warm"));
        async move {
            warm.goto(url).await?;
            warm.execute(shot()).await?;
            Ok(())
        }
    })
    .await?;
    measure(
        "new tab, default context: open, navigate, screenshot, close",
        |i| {
            let url = url(i, "tab");
            async move {
                let page = b.new_page("about:blank").await?;
                page.goto(url).await?;
                page.execute(shot()).await?;
                page.close().await?;
                Ok(())
            }
        },
    )
    .await?;
    measure(
        "new context + page: open, navigate, screenshot, close, dispose",
        |i| {
            let url = url(i, "context");
            async move {
                let ctx = b
                    .create_browser_context(CreateBrowserContextParams::default())
                    .await?;
                let params = CreateTargetParams::builder()
                    .url("about:blank")
                    .browser_context_id(ctx.clone())
                    .build()
                    .map_err(anyhow::Error::msg)?;
                let page = b.new_page(params).await?;
                page.goto(url).await?;
                page.execute(shot()).await?;
                page.close().await?;
                b.dispose_browser_context(ctx).await?;
                Ok(())
            }
        },
    )
    .await?;
    measure(
        "new context + page opened at the page's URL by the client, screenshot, close, dispose",
        |i| {
            let url = url(i, "direct-page");
            async move {
                let ctx = b
                    .create_browser_context(CreateBrowserContextParams::default())
                    .await?;
                let params = CreateTargetParams::builder()
                    .url(url)
                    .browser_context_id(ctx.clone())
                    .build()
                    .map_err(anyhow::Error::msg)?;
                let page = b.new_page(params).await?;
                page.wait_for_navigation().await?;
                page.execute(shot()).await?;
                page.close().await?;
                b.dispose_browser_context(ctx).await?;
                Ok(())
            }
        },
    )
    .await?;
    measure("new context only: create, dispose", |_| async move {
        let ctx = b
            .create_browser_context(CreateBrowserContextParams::default())
            .await?;
        b.dispose_browser_context(ctx).await?;
        Ok(())
    })
    .await?;
    measure(
        "new context + page set up by the client, no navigation",
        |_| async move {
            let ctx = b
                .create_browser_context(CreateBrowserContextParams::default())
                .await?;
            let params = CreateTargetParams::builder()
                .url("about:blank")
                .browser_context_id(ctx.clone())
                .build()
                .map_err(anyhow::Error::msg)?;
            b.new_page(params).await?.close().await?;
            b.dispose_browser_context(ctx).await?;
            Ok(())
        },
    )
    .await?;
    measure(
        "new context + bare target (Target.createTarget), no navigation",
        |_| async move {
            let ctx = b
                .create_browser_context(CreateBrowserContextParams::default())
                .await?;
            let params = CreateTargetParams::builder()
                .url("about:blank")
                .browser_context_id(ctx.clone())
                .build()
                .map_err(anyhow::Error::msg)?;
            let target = b.execute(params).await?.result.target_id;
            b.execute(CloseTargetParams::new(target)).await?;
            b.dispose_browser_context(ctx).await?;
            Ok(())
        },
    )
    .await?;
    measure("new context + bare target opened at the page's URL", |i| {
        let (path, site) = (format!("/direct/{i}"), &sites[i % sites.len()]);
        async move {
            let ctx = b
                .create_browser_context(CreateBrowserContextParams::default())
                .await?;
            let params = CreateTargetParams::builder()
                .url(site.url(&path))
                .browser_context_id(ctx.clone())
                .build()
                .map_err(anyhow::Error::msg)?;
            let target = b.execute(params).await?.result.target_id;
            anyhow::ensure!(
                site.wait_for_hits(&path, 1, Duration::from_secs(10)).await,
                "page not loaded"
            );
            b.execute(CloseTargetParams::new(target)).await?;
            b.dispose_browser_context(ctx).await?;
            Ok(())
        }
    })
    .await?;

    test_browser.close().await;
    Ok(())
}
