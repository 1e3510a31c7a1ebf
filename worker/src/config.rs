//! The worker's settings: every one a flag and an environment variable,
//! checked together before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use url2png_core::config::{CommonArgs, LinkArgs, PolicyArgs, StoreArgs, parse_addr};

use crate::heartbeat::MAX_INVISIBLE;

/// Settings of `url2png-worker`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "url2png-worker",
    version,
    about = "Render screenshot jobs from SQS into S3."
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub links: LinkArgs,

    /// The webhook deliveries queue (with its own dead-letter queue);
    /// empty: jobs' `webhook_url` is not delivered.
    #[arg(long, env = "URL2PNG_WEBHOOK_QUEUE_URL", default_value = "")]
    pub webhook_queue_url: String,

    /// The key webhook bodies are signed with (HMAC-SHA256), at least 16
    /// characters; required with a deliveries queue.
    #[arg(
        long,
        env = "URL2PNG_WEBHOOK_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub webhook_secret: String,

    /// Time a receiver has to answer one delivery, in seconds (1..=60).
    #[arg(long, env = "URL2PNG_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    pub webhook_timeout_seconds: u64,

    /// First delay after a failed delivery, in seconds; it doubles with
    /// each attempt.
    #[arg(long, env = "URL2PNG_WEBHOOK_RETRY_BASE_SECONDS", default_value_t = 10)]
    pub webhook_retry_base_seconds: u64,

    /// Longest delay between deliveries, in seconds (at most 43200).
    #[arg(long, env = "URL2PNG_WEBHOOK_RETRY_MAX_SECONDS", default_value_t = 900)]
    pub webhook_retry_max_seconds: u64,

    /// Deliveries attempted at once.
    #[arg(long, env = "URL2PNG_WEBHOOK_CONCURRENCY", default_value_t = 16)]
    pub webhook_concurrency: usize,

    /// Attempts a delivery has when the deliveries queue has no redrive
    /// policy (with one, its `maxReceiveCount` is the limit).
    #[arg(long, env = "URL2PNG_WEBHOOK_MAX_ATTEMPTS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub webhook_max_attempts: u32,

    /// The ECS agent's endpoint, which ECS sets in every task's
    /// containers; empty outside ECS (no scale-in protection).
    #[arg(long, env = "ECS_AGENT_URI", default_value = "")]
    pub ecs_agent_uri: String,

    /// Protect the task from ECS scale-in while it holds messages (with
    /// ECS_AGENT_URI set). The task role needs `ecs:UpdateTaskProtection`.
    #[arg(long, env = "URL2PNG_SCALE_IN_PROTECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub scale_in_protection: bool,

    /// Expiry of each protection, in minutes (1..=2880); it is renewed at
    /// half of it while messages are held, so a hung worker loses it.
    #[arg(long, env = "URL2PNG_SCALE_IN_PROTECTION_MINUTES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=2880))]
    pub scale_in_protection_minutes: u32,

    /// Time without a held message before the protection is cleared, in
    /// seconds; shorter than the expiry.
    #[arg(
        long,
        env = "URL2PNG_SCALE_IN_PROTECTION_IDLE_SECONDS",
        default_value_t = 10
    )]
    pub scale_in_protection_idle_seconds: u64,

    /// Jobs rendered at once; at most browsers × pages per browser
    /// (the default).
    #[arg(long, env = "URL2PNG_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Messages held ahead of free pages while the queue has a backlog, in
    /// slots of their own: a receive then asks for this many at once
    /// instead of one per freed page (fewer SQS requests per job), and a
    /// page that frees starts the next job without a receive round trip.
    /// 0 receives only what can start at once.
    #[arg(long, env = "URL2PNG_PREFETCH", default_value_t = 10)]
    pub prefetch: usize,

    /// Chromium processes in the pool.
    #[arg(long, env = "URL2PNG_BROWSERS", default_value_t = 1)]
    pub browsers: usize,

    /// Pages (jobs) each browser renders at once.
    #[arg(long, env = "URL2PNG_PAGES_PER_BROWSER", default_value_t = 4)]
    pub pages_per_browser: usize,

    /// Pages each browser keeps open ahead of need, each in a fresh
    /// context, so that a job does not wait for its page to be set up.
    #[arg(long, env = "URL2PNG_SPARE_PAGES", default_value_t = 1)]
    pub spare_pages: usize,

    /// Most messages asked for in one receive (1..=10).
    #[arg(long, env = "URL2PNG_RECEIVE_BATCH_MAX", default_value_t = 10)]
    pub receive_batch_max: usize,

    /// Long-poll wait of a receive, in seconds (0..=20).
    #[arg(long, env = "URL2PNG_WAIT_TIME_SECONDS", default_value_t = 20)]
    pub wait_time_seconds: u32,

    /// Receive calls that may be outstanding at once, so a slot that frees
    /// during a long poll is filled by another poll.
    #[arg(long, env = "URL2PNG_RECEIVE_POLLERS", default_value_t = 2)]
    pub receive_pollers: usize,

    /// While the queue has a backlog, how long a freed slot may wait for
    /// more to free before receiving, in milliseconds: fewer, fuller
    /// receives. Ends early once the prefetch (or half the slots, up to a
    /// batch) is free, or a page has no prefetched job left to start.
    #[arg(long, env = "URL2PNG_RECEIVE_GATHER_MS", default_value_t = 3000)]
    pub receive_gather_ms: u64,

    /// Pause after every receive, in milliseconds (0 in production; 1000
    /// reproduces a sleep-between-polls design for benchmarks).
    #[arg(long, env = "URL2PNG_POLL_PAUSE_MS", default_value_t = 0)]
    pub poll_pause_ms: u64,

    /// Visibility timeout asked for on receive and on every extension, in
    /// seconds.
    #[arg(long, env = "URL2PNG_VISIBILITY_TIMEOUT_SECONDS", default_value_t = 60)]
    pub visibility_timeout_seconds: u64,

    /// Time between heartbeat ticks, in seconds; at most half the
    /// visibility timeout.
    #[arg(long, env = "URL2PNG_HEARTBEAT_SECONDS", default_value_t = 20)]
    pub heartbeat_seconds: u64,

    /// Upper bound of any job's render time, in seconds; a job's own
    /// `timeout_ms` applies when shorter.
    #[arg(long, env = "URL2PNG_RENDER_TIMEOUT_SECONDS", default_value_t = 120)]
    pub render_timeout_seconds: u64,

    /// Budget of each single call into Chromium, in seconds.
    #[arg(long, env = "URL2PNG_CDP_TIMEOUT_SECONDS", default_value_t = 10)]
    pub cdp_timeout_seconds: u64,

    /// Replace a browser after this many renders (1: a fresh browser per
    /// job).
    #[arg(long, env = "URL2PNG_RECYCLE_AFTER", default_value_t = 200)]
    pub recycle_after: u64,

    /// Time in-flight jobs get to finish after SIGTERM, in seconds; keep it
    /// below the orchestrator's stop timeout (ECS: 30 s by default).
    #[arg(long, env = "URL2PNG_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,

    /// Longest wait before queued deletes are sent, in milliseconds.
    #[arg(long, env = "URL2PNG_DELETE_FLUSH_MS", default_value_t = 5000)]
    pub delete_flush_ms: u64,

    /// First retry delay after a retryable failure, in seconds; it doubles
    /// with each receive.
    #[arg(long, env = "URL2PNG_RETRY_BASE_SECONDS", default_value_t = 5)]
    pub retry_base_seconds: u64,

    /// Longest retry delay, in seconds.
    #[arg(long, env = "URL2PNG_RETRY_MAX_SECONDS", default_value_t = 300)]
    pub retry_max_seconds: u64,

    /// Attempts a job has when the queue has no redrive policy (with one,
    /// its `maxReceiveCount` is the limit). The last attempt writes the
    /// failure record.
    #[arg(long, env = "URL2PNG_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,

    /// Render pages whose TLS certificate is not valid (self-signed,
    /// expired, wrong name) instead of failing them with `tls_error`.
    #[arg(long, env = "URL2PNG_ACCEPT_INVALID_CERTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub accept_invalid_certs: bool,

    /// Run jobs' own JavaScript (`script`, `wait_for_expression`). The
    /// producer decides which clients may submit such jobs; a worker with
    /// this off fails them with `invalid_message`.
    #[arg(long, env = "URL2PNG_ALLOW_SCRIPTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_scripts: bool,

    /// Where the filter lists for `block_ads` and `block_trackers` are:
    /// the assets of Debian's `webext-ublock-origin-chromium` (EasyList,
    /// EasyPrivacy and uBlock's own lists).
    #[arg(
        long,
        env = "URL2PNG_FILTER_LISTS_DIR",
        default_value = "/usr/share/chromium/extensions/ublock-origin/assets"
    )]
    pub filter_lists_dir: std::path::PathBuf,

    /// The consent pop-up rules for `block_cookie_banners`: the standalone
    /// bundle of the `@duckduckgo/autoconsent` npm package.
    #[arg(
        long,
        env = "URL2PNG_CONSENT_SCRIPT",
        default_value = "/usr/local/share/url2png/autoconsent.standalone.js"
    )]
    pub consent_script: std::path::PathBuf,

    /// Address of `/healthz` and `/metrics`.
    #[arg(long, env = "URL2PNG_WORKER_LISTEN", default_value = "127.0.0.1:9091", value_parser = parse_addr)]
    pub listen: SocketAddr,

    /// Chromium executable.
    #[arg(
        long,
        env = "URL2PNG_CHROMIUM_PATH",
        default_value = "/usr/bin/chromium"
    )]
    pub chromium_path: PathBuf,

    /// Extra Chromium arguments, separated by spaces.
    #[arg(
        long,
        env = "URL2PNG_CHROMIUM_ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub chromium_args: String,

    /// Send every request Chromium makes through the egress guard (`true`).
    /// `false` only for measuring the guard's cost: pages could then reach
    /// private and metadata addresses.
    #[arg(long, env = "URL2PNG_EGRESS_GUARD", default_value_t = true, action = clap::ArgAction::Set)]
    pub egress_guard: bool,

    /// With the egress guard on, also check every request inside Chromium
    /// before it leaves the browser (`true`): a second layer that refuses
    /// other schemes and refused address literals even if the proxy were
    /// bypassed. `false` leaves the proxy as the only layer.
    #[arg(long, env = "URL2PNG_BROWSER_REQUEST_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    pub browser_request_check: bool,

    /// Chromium's sandbox: `auto` (on unless running as root, where
    /// Chromium cannot use it), `on` or `off`.
    #[arg(long, env = "URL2PNG_CHROMIUM_SANDBOX", default_value = "auto")]
    pub chromium_sandbox: Sandbox,
}

/// Whether Chromium runs sandboxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sandbox {
    Auto,
    On,
    Off,
}

impl Config {
    /// Check settings that only make sense together. The message says what
    /// to change.
    pub fn validate(&self) -> Result<(), String> {
        let err = |m: String| Err(m);
        self.store.layout()?;
        self.common.aws_options()?;
        self.policy
            .policy()
            .map_err(|e| format!("URL2PNG_EGRESS_ALLOW/DENY/PORTS: {e}"))?;
        if self.browsers == 0 || self.pages_per_browser == 0 {
            return err("URL2PNG_BROWSERS and URL2PNG_PAGES_PER_BROWSER must be at least 1".into());
        }
        let pages = self.browsers * self.pages_per_browser;
        match self.concurrency {
            Some(0) => return err("URL2PNG_CONCURRENCY must be at least 1".into()),
            Some(c) if c > pages => {
                return err(format!(
                    "URL2PNG_CONCURRENCY={c} is more than the pool's {pages} pages \
                     ({} browsers × {} pages): a received job would wait for a page",
                    self.browsers, self.pages_per_browser
                ));
            }
            _ => {}
        }
        if !(1..=10).contains(&self.receive_batch_max) {
            return err(format!(
                "URL2PNG_RECEIVE_BATCH_MAX={} is outside 1..=10, SQS's limit",
                self.receive_batch_max
            ));
        }
        if self.wait_time_seconds > 20 {
            return err(format!(
                "URL2PNG_WAIT_TIME_SECONDS={} is over 20, SQS's limit",
                self.wait_time_seconds
            ));
        }
        if self.receive_pollers == 0 {
            return err("URL2PNG_RECEIVE_POLLERS must be at least 1".into());
        }
        let visibility = self.visibility_timeout_seconds;
        if visibility < 2 || Duration::from_secs(visibility) > MAX_INVISIBLE {
            return err(format!(
                "URL2PNG_VISIBILITY_TIMEOUT_SECONDS={visibility} is outside 2..=43200"
            ));
        }
        if self.heartbeat_seconds == 0 || self.heartbeat_seconds * 2 > visibility {
            return err(format!(
                "URL2PNG_HEARTBEAT_SECONDS={} must be at least 1 and at most half of \
                 URL2PNG_VISIBILITY_TIMEOUT_SECONDS={visibility}, so a late tick still \
                 extends in time",
                self.heartbeat_seconds
            ));
        }
        if self.render_timeout_seconds == 0 || self.cdp_timeout_seconds == 0 {
            return err(
                "URL2PNG_RENDER_TIMEOUT_SECONDS and URL2PNG_CDP_TIMEOUT_SECONDS must be at least 1"
                    .into(),
            );
        }
        if self.recycle_after == 0 {
            return err("URL2PNG_RECYCLE_AFTER must be at least 1".into());
        }
        if self.retry_base_seconds == 0 || self.retry_base_seconds > self.retry_max_seconds {
            return err("URL2PNG_RETRY_BASE_SECONDS must be at least 1 and at most URL2PNG_RETRY_MAX_SECONDS".into());
        }
        if self.retry_max_seconds > 43_200 {
            return err("URL2PNG_RETRY_MAX_SECONDS is over 43200, SQS's limit".into());
        }
        self.links.check()?;
        if self.scale_in_protection && !self.ecs_agent_uri.is_empty() {
            match url::Url::parse(&self.ecs_agent_uri) {
                Ok(uri) if uri.scheme() == "http" && uri.host_str().is_some() => {}
                _ => {
                    return err(format!(
                        "ECS_AGENT_URI={:?} is not an http URL with a host",
                        self.ecs_agent_uri
                    ));
                }
            }
            if self.scale_in_protection_idle_seconds
                >= u64::from(self.scale_in_protection_minutes) * 60
            {
                return err(
                    "URL2PNG_SCALE_IN_PROTECTION_IDLE_SECONDS must be shorter than \
                     URL2PNG_SCALE_IN_PROTECTION_MINUTES"
                        .into(),
                );
            }
        }
        if !self.webhook_queue_url.is_empty() {
            if self.webhook_secret.len() < 16 {
                return err(
                    "URL2PNG_WEBHOOK_SECRET must be at least 16 characters when \
                     URL2PNG_WEBHOOK_QUEUE_URL is set: receivers check every body with it"
                        .into(),
                );
            }
            if !(1..=60).contains(&self.webhook_timeout_seconds) {
                return err(format!(
                    "URL2PNG_WEBHOOK_TIMEOUT_SECONDS={} is outside 1..=60",
                    self.webhook_timeout_seconds
                ));
            }
            if self.webhook_retry_base_seconds == 0
                || self.webhook_retry_base_seconds > self.webhook_retry_max_seconds
                || self.webhook_retry_max_seconds > 43_200
            {
                return err(
                    "URL2PNG_WEBHOOK_RETRY_BASE_SECONDS must be at least 1 and at most \
                     URL2PNG_WEBHOOK_RETRY_MAX_SECONDS, which is at most 43200 (SQS's limit)"
                        .into(),
                );
            }
            if self.webhook_concurrency == 0 {
                return err("URL2PNG_WEBHOOK_CONCURRENCY must be at least 1".into());
            }
        }
        Ok(())
    }

    /// Jobs at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
            .unwrap_or(self.browsers * self.pages_per_browser)
    }

    /// Whether Chromium runs sandboxed, resolving `auto`.
    pub fn sandbox(&self) -> bool {
        match self.chromium_sandbox {
            Sandbox::On => true,
            Sandbox::Off => false,
            Sandbox::Auto => !running_as_root(),
        }
    }

    pub fn visibility(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout_seconds)
    }

    /// The scale-in protection settings, when it is on and the task runs
    /// on ECS.
    pub fn protection(&self) -> Option<crate::protection::ProtectionSettings> {
        if !self.scale_in_protection {
            return None;
        }
        let agent_uri = url::Url::parse(&self.ecs_agent_uri).ok()?;
        Some(crate::protection::ProtectionSettings {
            agent_uri,
            expires_minutes: self.scale_in_protection_minutes,
            renew: Duration::from_secs(u64::from(self.scale_in_protection_minutes) * 30),
            idle: Duration::from_secs(self.scale_in_protection_idle_seconds),
            retry: Duration::from_secs(5),
        })
    }

    /// The webhook settings, when a deliveries queue is set.
    pub fn webhooks(&self) -> Option<crate::webhook::WebhookSettings> {
        (!self.webhook_queue_url.is_empty()).then(|| crate::webhook::WebhookSettings {
            queue_url: self.webhook_queue_url.clone(),
            secret: self.webhook_secret.as_bytes().to_vec(),
            timeout: Duration::from_secs(self.webhook_timeout_seconds),
            retry_base: Duration::from_secs(self.webhook_retry_base_seconds),
            retry_max: Duration::from_secs(self.webhook_retry_max_seconds),
            concurrency: self.webhook_concurrency,
            wait_time_seconds: self.wait_time_seconds.into(),
            max_attempts: self.webhook_max_attempts,
            public_url: self.links.public_url.clone(),
            presign_lifetime: self.links.presign_lifetime(),
        })
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let mut args = vec!["url2png-worker", "--queue-url", "http://q", "--bucket", "b"];
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn defaults_are_consistent() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.concurrency(), 4);
        assert_eq!(config.visibility(), Duration::from_secs(60));
    }

    #[test]
    fn contradictions_are_refused_with_the_variable_named() {
        for (args, needle) in [
            (
                &["--heartbeat-seconds", "60"][..],
                "URL2PNG_HEARTBEAT_SECONDS",
            ),
            (
                &["--heartbeat-seconds", "31"][..],
                "URL2PNG_HEARTBEAT_SECONDS",
            ),
            (
                &["--receive-batch-max", "11"][..],
                "URL2PNG_RECEIVE_BATCH_MAX",
            ),
            (
                &["--receive-batch-max", "0"][..],
                "URL2PNG_RECEIVE_BATCH_MAX",
            ),
            (
                &["--wait-time-seconds", "21"][..],
                "URL2PNG_WAIT_TIME_SECONDS",
            ),
            (
                &["--concurrency", "9", "--browsers", "2"][..],
                "URL2PNG_CONCURRENCY",
            ),
            (&["--concurrency", "0"][..], "URL2PNG_CONCURRENCY"),
            (&["--browsers", "0"][..], "URL2PNG_BROWSERS"),
            (
                &["--visibility-timeout-seconds", "43201"][..],
                "URL2PNG_VISIBILITY_TIMEOUT",
            ),
            (&["--recycle-after", "0"][..], "URL2PNG_RECYCLE_AFTER"),
            (&["--key-prefix", "/abs/"][..], "prefix"),
            (&["--ecs-agent-uri", "ftp://agent"][..], "ECS_AGENT_URI"),
            (
                &[
                    "--ecs-agent-uri",
                    "http://169.254.170.2/api/t",
                    "--scale-in-protection-minutes",
                    "1",
                    "--scale-in-protection-idle-seconds",
                    "60",
                ][..],
                "URL2PNG_SCALE_IN_PROTECTION_IDLE_SECONDS",
            ),
            (
                &["--retry-base-seconds", "600"][..],
                "URL2PNG_RETRY_BASE_SECONDS",
            ),
            (
                &[
                    "--webhook-queue-url",
                    "http://w",
                    "--webhook-secret",
                    "short",
                ][..],
                "URL2PNG_WEBHOOK_SECRET",
            ),
            (
                &[
                    "--webhook-queue-url",
                    "http://w",
                    "--webhook-secret",
                    "0123456789abcdef",
                    "--webhook-timeout-seconds",
                    "0",
                ][..],
                "URL2PNG_WEBHOOK_TIMEOUT_SECONDS",
            ),
            (
                &[
                    "--webhook-queue-url",
                    "http://w",
                    "--webhook-secret",
                    "0123456789abcdef",
                    "--webhook-retry-base-seconds",
                    "1000",
                ][..],
                "URL2PNG_WEBHOOK_RETRY_BASE_SECONDS",
            ),
            (&["--presign-seconds", "0"][..], "URL2PNG_PRESIGN_SECONDS"),
        ] {
            let e = parse(args).expect_err(&format!("{args:?} must be refused"));
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn concurrency_may_exceed_a_batch() {
        let config = parse(&["--browsers", "4", "--pages-per-browser", "5"]).unwrap();
        assert_eq!(config.concurrency(), 20);
        let config = parse(&[
            "--browsers",
            "4",
            "--pages-per-browser",
            "5",
            "--concurrency",
            "12",
        ])
        .unwrap();
        assert_eq!(config.concurrency(), 12);
    }

    #[test]
    fn required_settings() {
        assert!(Config::try_parse_from(["url2png-worker", "--bucket", "b"]).is_err());
        assert!(parse(&["--chromium-sandbox", "maybe"]).is_err());
        assert!(parse(&["--chromium-sandbox", "off"]).is_ok_and(|c| !c.sandbox()));
    }
}
