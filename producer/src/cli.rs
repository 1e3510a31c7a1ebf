//! `url2png-producer submit`: put one job on the queue from a terminal and,
//! with `--wait`, follow it until its image or failure record exists.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use url2png_core::aws::Clients;
use url2png_core::config::{CommonArgs, IdArgs, PolicyArgs, StoreArgs};
use url2png_core::job::{
    Clip, Cookie, Geolocation, ImageFormat, JobMessage, RenderOptions, WaitFor,
};
use url2png_core::keys::FailureRecord;

/// Settings of `url2png-producer submit`.
#[derive(Debug, Clone, Parser)]
#[command(name = "url2png-producer submit", about = "Queue one screenshot job.")]
pub struct SubmitArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    /// The page to render.
    pub url: String,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub ids: IdArgs,

    /// POST the job's status here, signed, when it ends (the workers need
    /// URL2PNG_WEBHOOK_QUEUE_URL).
    #[arg(long)]
    pub webhook_url: Option<String>,

    #[arg(long, default_value_t = 1280)]
    pub width: u32,

    #[arg(long, default_value_t = 800)]
    pub height: u32,

    #[arg(long, default_value_t = 1.0)]
    pub device_scale_factor: f64,

    #[arg(long)]
    pub full_page: bool,

    /// png, jpeg or webp.
    #[arg(long, default_value = "png")]
    pub format: String,

    #[arg(long)]
    pub quality: Option<u8>,

    /// `load`, `network_idle`, or `selector:<css>`.
    #[arg(long, default_value = "load")]
    pub wait_for: String,

    #[arg(long, default_value_t = 0)]
    pub delay_ms: u32,

    #[arg(long, default_value_t = url2png_core::job::TIMEOUT_DEFAULT_MS)]
    pub timeout_ms: u32,

    #[arg(long)]
    pub fail_on_http_error: bool,

    /// With --full-page, the tallest capture in CSS pixels.
    #[arg(long)]
    pub full_page_max_height: Option<u32>,

    /// Capture only the first element matching this CSS selector.
    #[arg(long)]
    pub selector: Option<String>,

    /// CSS pixels around the --selector element.
    #[arg(long, default_value_t = 0)]
    pub selector_padding: u32,

    /// Capture this rectangle of the document: `x,y,width,height`.
    #[arg(long)]
    pub clip: Option<String>,

    /// Store a thumbnail instead: `width` or `width,height` (see --fit).
    #[arg(long)]
    pub thumbnail: Option<String>,

    /// How the thumbnail fills its box: contain (default), cover, fill.
    #[arg(long)]
    pub fit: Option<String>,

    /// With --format pdf: a4 (default), a3, a5, letter, legal, tabloid.
    #[arg(long)]
    pub paper: Option<String>,

    /// With --format pdf: print in landscape.
    #[arg(long)]
    pub pdf_landscape: bool,

    /// With --format pdf: every margin in millimetres (default 10).
    #[arg(long)]
    pub margin_mm: Option<u32>,

    /// With --format pdf: the pages to print, such as `1-3, 5`.
    #[arg(long)]
    pub page_ranges: Option<String>,

    /// Transparent background where the page sets none (png, webp).
    #[arg(long)]
    pub omit_background: bool,

    /// Scroll through the page first, so lazy content loads.
    #[arg(long)]
    pub scroll_page: bool,

    #[arg(long)]
    pub scroll_step: Option<u32>,

    #[arg(long)]
    pub scroll_delay_ms: Option<u32>,

    /// Wait for an element matching this selector (see --wait-for-selector-state).
    #[arg(long)]
    pub wait_for_selector: Option<String>,

    /// attached, visible (default), hidden or detached.
    #[arg(long)]
    pub wait_for_selector_state: Option<String>,

    /// Wait until this JavaScript expression is truthy (the operator must
    /// allow scripts).
    #[arg(long)]
    pub wait_for_expression: Option<String>,

    /// With --wait-for network_idle, the quiet period in milliseconds.
    #[arg(long)]
    pub network_idle_ms: Option<u32>,

    /// Hide elements matching this selector (repeatable).
    #[arg(long = "hide-selector")]
    pub hide_selectors: Vec<String>,

    /// A stylesheet to add to the page.
    #[arg(long)]
    pub css: Option<String>,

    /// A script to run in the page after it loads (the operator must allow
    /// scripts).
    #[arg(long)]
    pub script: Option<String>,

    /// Do not load sub-resources of this kind: image, media, font,
    /// stylesheet, script, fetch, frame (repeatable).
    #[arg(long = "block-resource")]
    pub block_resources: Vec<String>,

    /// Do not load sub-resources whose URL matches this pattern, `*` any
    /// run, `?` one character (repeatable).
    #[arg(long = "block-url")]
    pub block_urls: Vec<String>,

    /// Do not load ads and hide their slots.
    #[arg(long)]
    pub block_ads: bool,

    /// Do not load trackers.
    #[arg(long)]
    pub block_trackers: bool,

    /// Decline cookie and consent pop-ups before the capture.
    #[arg(long)]
    pub block_cookie_banners: bool,

    /// A named device (iphone_15, pixel_8, ipad_air, …).
    #[arg(long)]
    pub device: Option<String>,

    #[arg(long)]
    pub landscape: bool,

    #[arg(long)]
    pub mobile: bool,

    #[arg(long)]
    pub touch: bool,

    /// A user agent string or preset (desktop, mac, linux, android, iphone, ipad).
    #[arg(long)]
    pub user_agent: Option<String>,

    #[arg(long)]
    pub accept_language: Option<String>,

    #[arg(long)]
    pub locale: Option<String>,

    #[arg(long)]
    pub timezone: Option<String>,

    /// `latitude,longitude[,accuracy]`.
    #[arg(long)]
    pub geolocation: Option<String>,

    /// light or dark.
    #[arg(long)]
    pub color_scheme: Option<String>,

    #[arg(long)]
    pub reduced_motion: bool,

    /// screen or print.
    #[arg(long)]
    pub media: Option<String>,

    /// An extra request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,

    /// Another host that gets the headers (repeatable).
    #[arg(long = "header-host")]
    pub header_hosts: Vec<String>,

    /// A cookie for the page's host, `name=value` (repeatable; other
    /// fields through --options).
    #[arg(long = "cookie")]
    pub cookies: Vec<String>,

    /// Render options as a JSON object, applied over the flags (for
    /// anything the flags do not say).
    #[arg(long)]
    pub options: Option<String>,

    /// Wait for the image or the failure record.
    #[arg(long)]
    pub wait: bool,

    /// How long `--wait` waits, in seconds.
    #[arg(long, default_value_t = 300)]
    pub wait_seconds: u64,
}

impl SubmitArgs {
    /// The job these arguments describe, validated like the API does.
    pub fn job(&self) -> Result<JobMessage, String> {
        let format = match self.format.to_ascii_lowercase().as_str() {
            "png" => ImageFormat::Png,
            "jpeg" | "jpg" => ImageFormat::Jpeg,
            "webp" => ImageFormat::Webp,
            "pdf" => ImageFormat::Pdf,
            other => return Err(format!("--format {other}: use png, jpeg, webp or pdf")),
        };
        let wait_for = match self.wait_for.as_str() {
            "load" => WaitFor::Load,
            "network_idle" => WaitFor::NetworkIdle,
            other => match other.strip_prefix("selector:") {
                Some(css) => WaitFor::Selector(css.to_owned()),
                None => {
                    return Err(format!(
                        "--wait-for {other}: use load, network_idle or selector:<css>"
                    ));
                }
            },
        };
        let defaults = RenderOptions::default();
        let options = RenderOptions {
            width: self.width,
            height: self.height,
            device_scale_factor: self.device_scale_factor,
            full_page: self.full_page,
            full_page_max_height: self
                .full_page_max_height
                .unwrap_or(defaults.full_page_max_height),
            format,
            quality: self.quality,
            wait_for,
            delay_ms: self.delay_ms,
            timeout_ms: self.timeout_ms,
            fail_on_http_error: self.fail_on_http_error,
            selector: self.selector.clone(),
            selector_padding: self.selector_padding,
            clip: self.clip.as_deref().map(parse_clip).transpose()?,
            thumbnail: self
                .thumbnail
                .as_deref()
                .map(|t| parse_thumbnail(t, named("--fit", &self.fit)?.unwrap_or_default()))
                .transpose()?,
            pdf: self.pdf()?,
            omit_background: self.omit_background,
            scroll_page: self.scroll_page,
            scroll_step: self.scroll_step,
            scroll_delay_ms: self.scroll_delay_ms.unwrap_or(defaults.scroll_delay_ms),
            wait_for_selector: self.wait_for_selector.clone(),
            wait_for_selector_state: named(
                "--wait-for-selector-state",
                &self.wait_for_selector_state,
            )?
            .unwrap_or_default(),
            wait_for_expression: self.wait_for_expression.clone(),
            network_idle_ms: self.network_idle_ms.unwrap_or(defaults.network_idle_ms),
            hide_selectors: self.hide_selectors.clone(),
            css: self.css.clone(),
            script: self.script.clone(),
            block_resources: self
                .block_resources
                .iter()
                .map(|k| named("--block-resource", &Some(k.clone())).map(Option::unwrap))
                .collect::<Result<_, _>>()?,
            block_urls: self.block_urls.clone(),
            block_ads: self.block_ads,
            block_trackers: self.block_trackers,
            block_cookie_banners: self.block_cookie_banners,
            device: self.device.clone(),
            landscape: self.landscape,
            mobile: self.mobile,
            touch: self.touch,
            user_agent: self.user_agent.clone(),
            accept_language: self.accept_language.clone(),
            locale: self.locale.clone(),
            timezone: self.timezone.clone(),
            geolocation: self
                .geolocation
                .as_deref()
                .map(parse_geolocation)
                .transpose()?,
            color_scheme: named("--color-scheme", &self.color_scheme)?,
            reduced_motion: self.reduced_motion,
            media: named("--media", &self.media)?,
            headers: self
                .headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .ok_or_else(|| format!("--header {h}: use `Name: value`"))
                })
                .collect::<Result<_, _>>()?,
            header_hosts: self.header_hosts.clone(),
            cookies: self
                .cookies
                .iter()
                .map(|c| {
                    c.split_once('=')
                        .map(|(name, value)| Cookie {
                            name: name.trim().to_owned(),
                            value: value.trim().to_owned(),
                            domain: None,
                            path: None,
                            secure: false,
                            http_only: false,
                            same_site: None,
                        })
                        .ok_or_else(|| format!("--cookie {c}: use `name=value`"))
                })
                .collect::<Result<_, _>>()?,
        };
        let options = match &self.options {
            None => options,
            Some(json) => overlay(options, json)?,
        };
        let mut job = JobMessage::new(self.url.clone(), options);
        job.webhook_url = self.webhook_url.clone();
        job.validate().map_err(|e| e.to_string())?;
        job.id = url2png_core::id::mint(
            self.ids.id_secret.as_bytes(),
            job.options.format,
            std::time::SystemTime::now(),
        );
        let policy = self.policy.policy()?;
        policy
            .check_url(&job.url)
            .map_err(|e| format!("url: {e}"))?;
        if let Some(webhook) = &job.webhook_url {
            policy
                .check_url(webhook)
                .map_err(|e| format!("webhook_url: {e}"))?;
        }
        Ok(job)
    }
}

impl SubmitArgs {
    /// The PDF settings the flags give, if any.
    fn pdf(&self) -> Result<Option<url2png_core::job::PdfOptions>, String> {
        if self.paper.is_none()
            && !self.pdf_landscape
            && self.margin_mm.is_none()
            && self.page_ranges.is_none()
        {
            return Ok(None);
        }
        let defaults = url2png_core::job::PdfOptions::default();
        Ok(Some(url2png_core::job::PdfOptions {
            paper: named("--paper", &self.paper)?.unwrap_or_default(),
            landscape: self.pdf_landscape,
            margin_mm: self.margin_mm.unwrap_or(defaults.margin_mm),
            page_ranges: self.page_ranges.clone(),
            ..defaults
        }))
    }
}

/// A flag's value read as the contract's snake_case name of an enum.
fn named<T: serde::de::DeserializeOwned>(
    flag: &str,
    value: &Option<String>,
) -> Result<Option<T>, String> {
    value
        .as_ref()
        .map(|v| {
            serde_json::from_value(serde_json::Value::String(v.clone()))
                .map_err(|e| format!("{flag} {v}: {e}"))
        })
        .transpose()
}

fn numbers<T: std::str::FromStr>(flag: &str, value: &str) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .map_err(|_| format!("{flag} {value}: `{n}` is not a number"))
        })
        .collect()
}

fn parse_clip(value: &str) -> Result<Clip, String> {
    match numbers::<u32>("--clip", value)?[..] {
        [x, y, width, height] => Ok(Clip {
            x,
            y,
            width,
            height,
        }),
        _ => Err(format!("--clip {value}: use x,y,width,height")),
    }
}

fn parse_thumbnail(
    value: &str,
    fit: url2png_core::job::Fit,
) -> Result<url2png_core::job::Thumbnail, String> {
    match numbers::<u32>("--thumbnail", value)?[..] {
        [width] => Ok(url2png_core::job::Thumbnail {
            width,
            height: None,
            fit,
        }),
        [width, height] => Ok(url2png_core::job::Thumbnail {
            width,
            height: Some(height),
            fit,
        }),
        _ => Err(format!("--thumbnail {value}: use width or width,height")),
    }
}

fn parse_geolocation(value: &str) -> Result<Geolocation, String> {
    let n = numbers::<f64>("--geolocation", value)?;
    match n[..] {
        [latitude, longitude] | [latitude, longitude, _] => Ok(Geolocation {
            latitude,
            longitude,
            accuracy: n.get(2).copied().unwrap_or(100.0),
        }),
        _ => Err(format!(
            "--geolocation {value}: use latitude,longitude[,accuracy]"
        )),
    }
}

/// The options with the fields of a JSON object put over them.
fn overlay(options: RenderOptions, json: &str) -> Result<RenderOptions, String> {
    let over: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| format!("--options: not a JSON object: {e}"))?;
    let mut base = match serde_json::to_value(&options) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    base.extend(over);
    serde_json::from_value(serde_json::Value::Object(base)).map_err(|e| format!("--options: {e}"))
}

/// Run `submit`. Exit codes: 0 queued (or, with `--wait`, stored), 1 the job
/// failed, 2 bad arguments or the queue refused, 3 `--wait` timed out.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut job = match args.job() {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    job.submitted_at = Some(time::OffsetDateTime::now_utc());
    let layout = args.store.layout().map_err(anyhow::Error::msg)?;
    let clients = Clients::load(&args.common.aws_options().map_err(anyhow::Error::msg)?).await;
    if let Err(e) = clients
        .sqs
        .send_message()
        .queue_url(&args.store.queue_url)
        .message_body(job.to_json())
        .send()
        .await
    {
        eprintln!(
            "error: the queue did not take the job: {}",
            aws_sdk_sqs::error::DisplayErrorContext(&e)
        );
        return Ok(ExitCode::from(2));
    }
    let image_key = layout.image(job.id, job.options.format);
    let mut out = std::io::stdout();
    writeln!(out, "id: {}", job.id)?;
    writeln!(out, "image: s3://{}/{image_key}", args.store.bucket)?;
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }

    let started = Instant::now();
    let failure_key = layout.failure(job.id);
    let spinner = ['|', '/', '-', '\\'];
    let tty = std::io::stderr().is_terminal();
    let mut tick = 0usize;
    loop {
        let image = clients
            .s3
            .head_object()
            .bucket(&args.store.bucket)
            .key(&image_key)
            .send()
            .await;
        if image.is_ok() {
            if tty {
                eprint!("\r\x1b[K");
            }
            writeln!(
                out,
                "done after {:.1} s: s3://{}/{image_key}",
                started.elapsed().as_secs_f64(),
                args.store.bucket
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        if let Ok(object) = clients
            .s3
            .get_object()
            .bucket(&args.store.bucket)
            .key(&failure_key)
            .send()
            .await
        {
            let bytes = object.body.collect().await?.into_bytes();
            if tty {
                eprint!("\r\x1b[K");
            }
            match FailureRecord::from_json(&bytes) {
                Ok(record) => eprintln!("failed ({}): {}", record.reason.as_str(), record.message),
                Err(_) => eprintln!("failed: see s3://{}/{failure_key}", args.store.bucket),
            }
            return Ok(ExitCode::from(1));
        }
        if started.elapsed() > Duration::from_secs(args.wait_seconds) {
            if tty {
                eprint!("\r\x1b[K");
            }
            eprintln!("still pending after {} s", args.wait_seconds);
            return Ok(ExitCode::from(3));
        }
        if tty {
            eprint!(
                "\r{} waiting {:.0} s",
                spinner[tick % spinner.len()],
                started.elapsed().as_secs_f64()
            );
            tick += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use url2png_core::job::{ColorScheme, MediaType, ResourceKind, SelectorState};

    fn job(flags: &[&str]) -> Result<JobMessage, String> {
        let mut args = vec!["submit", "--queue-url", "http://q", "--bucket", "b"];
        args.extend_from_slice(flags);
        args.push("https://example.com/");
        SubmitArgs::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .job()
    }

    #[test]
    fn a_webhook_flag_is_checked_by_the_contract_and_the_policy() {
        let hooked = job(&["--webhook-url", "https://example.com/hook"]).unwrap();
        assert_eq!(
            hooked.webhook_url.as_deref(),
            Some("https://example.com/hook")
        );
        assert_eq!(job(&[]).unwrap().webhook_url, None);
        let e = job(&["--webhook-url", "http://169.254.169.254/"]).unwrap_err();
        assert!(e.starts_with("webhook_url:"), "{e}");
        let e = job(&["--webhook-url", "ftp://example.com/"]).unwrap_err();
        assert!(e.contains("webhook_url"), "{e}");
    }

    #[test]
    fn every_option_has_a_flag() {
        let job = job(&[
            "--selector",
            "#card",
            "--selector-padding",
            "8",
            "--omit-background",
            "--scroll-page",
            "--scroll-step",
            "400",
            "--scroll-delay-ms",
            "50",
            "--wait-for-selector",
            ".ready",
            "--wait-for-selector-state",
            "hidden",
            "--wait-for-expression",
            "window.ready",
            "--wait-for",
            "network_idle",
            "--network-idle-ms",
            "900",
            "--hide-selector",
            ".a",
            "--hide-selector",
            ".b",
            "--css",
            "body{}",
            "--script",
            "1",
            "--block-resource",
            "image",
            "--block-resource",
            "fetch",
            "--block-url",
            "*ads*",
            "--block-ads",
            "--block-trackers",
            "--block-cookie-banners",
            "--device",
            "pixel_8",
            "--landscape",
            "--user-agent",
            "desktop",
            "--accept-language",
            "de-CH",
            "--locale",
            "de-CH",
            "--timezone",
            "Europe/Zurich",
            "--geolocation",
            "47.3,8.5,20",
            "--color-scheme",
            "dark",
            "--reduced-motion",
            "--media",
            "print",
            "--header",
            "X-Tenant: acme",
            "--header-host",
            "*.cdn.example",
            "--cookie",
            "session=abc",
        ])
        .unwrap();
        let o = &job.options;
        assert_eq!(o.selector.as_deref(), Some("#card"));
        assert_eq!(
            (o.selector_padding, o.scroll_step, o.scroll_delay_ms),
            (8, Some(400), 50)
        );
        assert!(o.omit_background && o.scroll_page && o.landscape && o.reduced_motion);
        assert!(o.block_ads && o.block_trackers && o.block_cookie_banners);
        assert_eq!(o.wait_for_selector_state, SelectorState::Hidden);
        assert_eq!(o.network_idle_ms, 900);
        assert_eq!(o.hide_selectors, [".a", ".b"]);
        assert_eq!(
            o.block_resources,
            [ResourceKind::Image, ResourceKind::Fetch]
        );
        assert_eq!(o.device.as_deref(), Some("pixel_8"));
        assert_eq!(o.geolocation.map(|g| g.accuracy), Some(20.0));
        assert_eq!(
            (o.color_scheme, o.media),
            (Some(ColorScheme::Dark), Some(MediaType::Print))
        );
        assert_eq!(o.headers["X-Tenant"], "acme");
        assert_eq!(o.cookies[0].value, "abc");
    }

    #[test]
    fn clip_and_options_json_and_clear_errors() {
        let job = job(&[
            "--clip",
            "1,2,300,200",
            "--options",
            r#"{"cookies":[{"name":"a","value":"b","domain":"x.example"}]}"#,
        ])
        .unwrap();
        assert_eq!(
            job.options.clip,
            Some(Clip {
                x: 1,
                y: 2,
                width: 300,
                height: 200
            })
        );
        assert_eq!(job.options.cookies[0].domain.as_deref(), Some("x.example"));
        for (flags, says) in [
            (&["--clip", "1,2,3"][..], "--clip"),
            (&["--color-scheme", "purple"][..], "--color-scheme"),
            (&["--header", "no colon"][..], "--header"),
            (&["--options", "[1]"][..], "--options"),
            (&["--options", r#"{"colour":1}"#][..], "colour"),
            (
                &["--device", "pixel_8", "--width", "500"][..],
                "options.width",
            ),
        ] {
            let e = super::tests::job(flags).unwrap_err();
            assert!(e.contains(says), "{flags:?}: {e}");
        }
    }
}

/// Settings of `url2png-producer sign-link`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "url2png-producer sign-link",
    about = "Print a signed render link (GET /v1/render) for <img src>."
)]
pub struct SignLinkArgs {
    /// The page to render.
    pub url: String,

    /// Where clients reach the API, such as `https://shots.example.com`.
    #[arg(long, env = "URL2PNG_PUBLIC_URL")]
    pub base_url: String,

    /// The link key (one of URL2PNG_LINK_SECRETS's names).
    #[arg(long, env = "URL2PNG_LINK_KEY")]
    pub key: String,

    /// The link key's secret.
    #[arg(long, env = "URL2PNG_LINK_SECRET", hide_env_values = true)]
    pub secret: String,

    /// A render option, as `name=value` (repeatable): `--set width=800
    /// --set full_page=true`. Values are read as JSON when they parse as
    /// JSON, as text otherwise.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,

    /// Refuse the link this many seconds from now.
    #[arg(long)]
    pub expires_in: Option<u64>,
}

impl SignLinkArgs {
    /// The signed link.
    pub fn link(&self) -> Result<String, String> {
        if self.secret.len() < 16 {
            return Err("the secret is shorter than 16 characters".into());
        }
        let mut pairs = vec![
            ("url".to_owned(), self.url.clone()),
            ("key".to_owned(), self.key.clone()),
        ];
        for set in &self.set {
            let Some((name, value)) = set.split_once('=') else {
                return Err(format!("--set {set:?}: give name=value"));
            };
            if matches!(name, "url" | "key" | "signature" | "expires") {
                return Err(format!("--set {name}: use the flag for it"));
            }
            pairs.push((name.to_owned(), value.to_owned()));
        }
        if let Some(secs) = self.expires_in {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            pairs.push(("expires".to_owned(), (now + secs).to_string()));
        }
        Ok(crate::links::signed_link(
            &self.base_url,
            self.secret.as_bytes(),
            &pairs,
        ))
    }
}

/// `url2png-producer sign-link`: print the link, or the error (exit 2).
pub fn sign_link(args: &SignLinkArgs) -> ExitCode {
    match args.link() {
        Ok(link) => {
            println!("{link}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
