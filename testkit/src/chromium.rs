//! A headless Chromium for tests and benchmarks that drive a browser
//! directly (not through the worker's pool): Debian's `/usr/bin/chromium`,
//! a fresh profile, no sandbox (tests run as root), and the flags that keep
//! it from reaching for the internet at start.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use chromiumoxide::browser::{Browser, BrowserConfig};
use futures::StreamExt;
use tokio::task::JoinHandle;

/// A launched browser. Call [`TestBrowser::close`] to end it and reap it.
#[derive(Debug)]
pub struct TestBrowser {
    pub browser: Browser,
    driver: JoinHandle<()>,
    profile: PathBuf,
}

impl TestBrowser {
    /// Launch `/usr/bin/chromium` with `extra` arguments (with or without
    /// leading dashes).
    pub async fn launch(extra: &[String]) -> Result<Self, String> {
        Self::launch_at("/usr/bin/chromium", extra).await
    }

    /// Launch the Chromium at `executable`.
    pub async fn launch_at(executable: &str, extra: &[String]) -> Result<Self, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let profile = std::env::temp_dir().join(format!(
            "url2png-test-browser-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let config = BrowserConfig::builder()
            .chrome_executable(executable)
            .no_sandbox()
            .user_data_dir(&profile)
            .viewport(None)
            // chromiumoxide adds the leading dashes itself.
            .args([
                "disable-background-networking",
                "disable-component-update",
                "disable-sync",
                "no-first-run",
                "disable-gpu",
            ])
            .args(extra.iter().map(|a| a.trim_start_matches('-').to_owned()))
            .build()?;
        let (browser, mut handler) = Browser::launch(config).await.map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Ok(Self {
            browser,
            driver,
            profile,
        })
    }

    /// Close the browser, wait for its process, and remove its profile.
    pub async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.driver.abort();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
