//! The job message contract: the only type serialised onto the SQS queue.
//!
//! A message is versioned JSON. The producer builds a [`JobMessage`] and
//! validates it before sending; the worker parses every body with
//! [`JobMessage::parse`], which checks size, version, shape and bounds and
//! names the offending field in its error. A body that fails here can never
//! succeed, so the worker records a permanent failure instead of retrying.

use std::collections::BTreeMap;
use std::fmt;

use crate::options::{
    self as opt, NETWORK_IDLE_DEFAULT_MS, NETWORK_IDLE_MAX_MS, NETWORK_IDLE_MIN_MS,
    SCROLL_DELAY_DEFAULT_MS, SCROLL_DELAY_MAX_MS, SCROLL_STEP_MAX, SCROLL_STEP_MIN,
};
pub use crate::options::{
    Clip, ColorScheme, Cookie, Fit, Geolocation, MediaType, Paper, PdfOptions, ResourceKind,
    SameSite, SelectorState, Thumbnail,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The contract version this build writes and the only one it reads.
pub const CURRENT_VERSION: u32 = 1;

/// Longest accepted URL, in bytes.
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// Longest accepted message body, in bytes. Far above any valid job (URL
/// plus selector plus options) and far below SQS's own limit, so a hostile
/// body is refused before it is parsed.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// Longest accepted CSS selector, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 1024;

/// Viewport bounds in CSS pixels.
pub const VIEWPORT_MIN: u32 = 1;
pub const VIEWPORT_MAX: u32 = 7680;
/// Device scale factor bounds.
pub const SCALE_MIN: f64 = 1.0;
pub const SCALE_MAX: f64 = 4.0;
/// Bounds of the full-page height cap, in CSS pixels.
pub const FULL_PAGE_MAX_HEIGHT_DEFAULT: u32 = 16_384;
pub const FULL_PAGE_MAX_HEIGHT_LIMIT: u32 = 32_768;
/// Largest image, in device pixels (width × height after scaling). Equal to
/// the largest viewport at scale 1; a viewport that is larger once scaled is
/// refused, and a full-page capture is clipped to stay within it.
pub const MAX_OUTPUT_PIXELS: u64 = VIEWPORT_MAX as u64 * VIEWPORT_MAX as u64;
/// Longest `webhook_url`, in bytes once encoded.
pub const MAX_WEBHOOK_URL_BYTES: usize = 1024;
/// Per-job timeout bounds, in milliseconds.
pub const TIMEOUT_MIN_MS: u32 = 1_000;
pub const TIMEOUT_MAX_MS: u32 = 120_000;
pub const TIMEOUT_DEFAULT_MS: u32 = 30_000;
/// Longest extra delay after the wait condition, in milliseconds.
pub const DELAY_MAX_MS: u32 = 10_000;
/// Default quality of lossy formats.
pub const QUALITY_DEFAULT: u8 = 80;

/// One screenshot job, as it travels on the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    /// Contract version; see [`CURRENT_VERSION`].
    pub version: u32,
    /// The job id, chosen by the producer; it names the S3 objects.
    pub id: Uuid,
    /// The page to render: an absolute http(s) URL.
    pub url: String,
    /// How to render it.
    #[serde(default)]
    pub options: RenderOptions,
    /// When the producer accepted the job, for end-to-end latency.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub submitted_at: Option<OffsetDateTime>,
    /// Where to POST the status document, signed, when the job ends
    /// (`done` or `failed`): an absolute http(s) URL, checked by the URL
    /// policy like a page, when submitted and again when delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

/// How to render a page. Every field has a default, so `{}` is valid.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderOptions {
    /// Viewport width in CSS pixels.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 7680, default = 1280)
    )]
    pub width: u32,
    /// Viewport height in CSS pixels.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 7680, default = 800)
    )]
    pub height: u32,
    /// Device pixels per CSS pixel.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1.0, maximum = 4.0, default = 1.0)
    )]
    pub device_scale_factor: f64,
    /// Capture the whole scrollable page instead of the viewport.
    pub full_page: bool,
    /// With `full_page`, the tallest capture in CSS pixels; longer pages are
    /// clipped.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 32768, default = 16384)
    )]
    pub full_page_max_height: u32,
    /// Image encoding.
    pub format: ImageFormat,
    /// Quality of `jpeg` and `webp` (1..=100); not allowed with `png`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub quality: Option<u8>,
    /// When the page counts as ready.
    pub wait_for: WaitFor,
    /// Extra time to wait after `wait_for` holds, in milliseconds.
    #[cfg_attr(feature = "openapi", schema(maximum = 10000, default = 0))]
    pub delay_ms: u32,
    /// Budget for navigation, waiting and capture together, in milliseconds.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1000, maximum = 120000, default = 30000)
    )]
    pub timeout_ms: u32,
    /// Fail for good, without an image, when the page answers with an HTTP
    /// status of 400 or more (otherwise the error page is captured).
    pub fail_on_http_error: bool,

    // What is captured.
    /// Capture only the first element matching this CSS selector, scrolled
    /// into view. A job whose element is absent (or has no box) fails with
    /// `element_not_found`; add `wait_for_selector` to wait for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// CSS pixels of the page around the captured element.
    #[serde(skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "openapi", schema(maximum = 1000, default = 0))]
    pub selector_padding: u32,
    /// Capture this rectangle of the document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip: Option<Clip>,
    /// With `format: pdf`, how the page is printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdf: Option<PdfOptions>,
    /// Store a smaller copy of the capture instead: resized in the worker
    /// to fit this box.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Thumbnail>,
    /// A transparent background where the page sets none (png and webp).
    #[serde(skip_serializing_if = "is_false")]
    pub omit_background: bool,
    /// Scroll through the page before the capture, so content that loads
    /// when scrolled into view is there; back to the top afterwards.
    #[serde(skip_serializing_if = "is_false")]
    pub scroll_page: bool,
    /// With `scroll_page`, CSS pixels per step; the viewport's height by
    /// default.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 100, maximum = 10000))]
    pub scroll_step: Option<u32>,
    /// With `scroll_page`, the pause after each step, in milliseconds.
    #[serde(skip_serializing_if = "is_default_scroll_delay")]
    #[cfg_attr(feature = "openapi", schema(maximum = 2000, default = 100))]
    pub scroll_delay_ms: u32,

    // When.
    /// Wait until an element matching this selector is in
    /// `wait_for_selector_state`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_for_selector: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub wait_for_selector_state: SelectorState,
    /// Wait until this JavaScript expression is truthy (a promise is
    /// awaited; an exception counts as not yet). Runs with the page's
    /// privileges, so the operator must allow scripts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_for_expression: Option<String>,
    /// With `wait_for: network_idle`, how long no request may be in flight,
    /// in milliseconds.
    #[serde(skip_serializing_if = "is_default_network_idle")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 100, maximum = 10000, default = 500)
    )]
    pub network_idle_ms: u32,

    // Cleanup.
    /// Elements to hide (`display: none`) before the capture.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hide_selectors: Vec<String>,
    /// A stylesheet added to the page after it loads. What it loads goes
    /// through the egress policy like the page's own requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub css: Option<String>,
    /// A script run in the page after it loads (a promise is awaited).
    /// Runs with the page's privileges, so the operator must allow scripts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Sub-resources of these kinds are not loaded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub block_resources: Vec<ResourceKind>,
    /// Sub-resources whose URL matches one of these patterns (`*` any run
    /// of characters, `?` one) are not loaded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub block_urls: Vec<String>,

    /// Do not load ads, and hide their slots (EasyList and uBlock's
    /// filters).
    #[serde(skip_serializing_if = "is_false")]
    pub block_ads: bool,
    /// Do not load trackers (EasyPrivacy and uBlock's privacy filters).
    #[serde(skip_serializing_if = "is_false")]
    pub block_trackers: bool,
    /// Decline cookie and consent pop-ups (DuckDuckGo's autoconsent rules)
    /// before the capture.
    #[serde(skip_serializing_if = "is_false")]
    pub block_cookie_banners: bool,

    // Emulation.
    /// A named device: sets the viewport, scale, mobile, touch and user
    /// agent (leave those out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// With `device`, swap its width and height.
    #[serde(skip_serializing_if = "is_false")]
    pub landscape: bool,
    /// Emulate a mobile browser (meta viewport, overlay scrollbars).
    #[serde(skip_serializing_if = "is_false")]
    pub mobile: bool,
    /// Emulate a touch screen.
    #[serde(skip_serializing_if = "is_false")]
    pub touch: bool,
    /// The `User-Agent` string, or a preset: `desktop`, `mac`, `linux`,
    /// `android`, `iphone`, `ipad`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The `Accept-Language` header and `navigator.languages`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_language: Option<String>,
    /// The locale of `Intl` and date formatting, such as `de-CH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// An IANA time zone, such as `Europe/Zurich`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The position `navigator.geolocation` reports (permission granted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geolocation: Option<Geolocation>,
    /// `prefers-color-scheme`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color_scheme: Option<ColorScheme>,
    /// `prefers-reduced-motion: reduce`.
    #[serde(skip_serializing_if = "is_false")]
    pub reduced_motion: bool,
    /// The CSS media type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaType>,
    /// Extra request headers, sent only to the page's own host and to
    /// `header_hosts`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// More hosts (`*.example.com` for a domain and its subdomains) that
    /// get `headers`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header_hosts: Vec<String>,
    /// Cookies set in the job's own browser context before the page loads;
    /// without a `domain`, for the page's host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<Cookie>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_default_scroll_delay(n: &u32) -> bool {
    *n == SCROLL_DELAY_DEFAULT_MS
}

fn is_default_network_idle(n: &u32) -> bool {
    *n == NETWORK_IDLE_DEFAULT_MS
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            width: 1280,
            height: 800,
            device_scale_factor: 1.0,
            full_page: false,
            full_page_max_height: FULL_PAGE_MAX_HEIGHT_DEFAULT,
            format: ImageFormat::Png,
            quality: None,
            wait_for: WaitFor::Load,
            delay_ms: 0,
            timeout_ms: TIMEOUT_DEFAULT_MS,
            fail_on_http_error: false,
            selector: None,
            selector_padding: 0,
            clip: None,
            thumbnail: None,
            pdf: None,
            omit_background: false,
            scroll_page: false,
            scroll_step: None,
            scroll_delay_ms: SCROLL_DELAY_DEFAULT_MS,
            wait_for_selector: None,
            wait_for_selector_state: SelectorState::default(),
            wait_for_expression: None,
            network_idle_ms: NETWORK_IDLE_DEFAULT_MS,
            hide_selectors: Vec::new(),
            css: None,
            script: None,
            block_resources: Vec::new(),
            block_urls: Vec::new(),
            block_ads: false,
            block_trackers: false,
            block_cookie_banners: false,
            device: None,
            landscape: false,
            mobile: false,
            touch: false,
            user_agent: None,
            accept_language: None,
            locale: None,
            timezone: None,
            geolocation: None,
            color_scheme: None,
            reduced_motion: false,
            media: None,
            headers: BTreeMap::new(),
            header_hosts: Vec::new(),
            cookies: Vec::new(),
        }
    }
}

/// Image encoding of the result.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
    /// A PDF printed by Chromium (`Page.printToPDF`); see `pdf`.
    Pdf,
}

impl ImageFormat {
    /// File extension used in the S3 key.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
            Self::Pdf => "pdf",
        }
    }

    /// MIME type stored as the object's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Pdf => "application/pdf",
        }
    }

    /// Whether the format takes a quality setting.
    pub fn is_lossy(self) -> bool {
        matches!(self, Self::Jpeg | Self::Webp)
    }

    /// Whether the result is an image (not a PDF).
    pub fn is_image(self) -> bool {
        !matches!(self, Self::Pdf)
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
            Self::Pdf => "pdf",
        })
    }
}

/// The condition after which the page is captured.
///
/// In JSON: `"load"`, `"network_idle"` or `{"selector": "css"}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    /// The `load` event has fired.
    #[default]
    Load,
    /// No network request has been in flight for a short quiet period.
    NetworkIdle,
    /// An element matching this CSS selector is in the document.
    Selector(String),
}

/// What kind of contract violation was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not JSON, or not a JSON object.
    Malformed,
    /// The body is larger than [`MAX_BODY_BYTES`].
    TooLarge,
    /// The `version` is not one this build reads.
    UnsupportedVersion,
    /// A required field is absent.
    MissingField,
    /// A field this version does not define.
    UnknownField,
    /// A field has the wrong JSON type or an unknown enum value.
    WrongType,
    /// A number is outside its bounds, or a string is too long.
    OutOfRange,
    /// A value has the right type but is not acceptable (a bad URL, an
    /// empty selector, a combination of options that cannot work).
    Invalid,
}

impl ErrorCode {
    /// The stable snake_case name used in API errors and failure records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::UnsupportedVersion => "unsupported_version",
            Self::MissingField => "missing_field",
            Self::UnknownField => "unknown_field",
            Self::WrongType => "wrong_type",
            Self::OutOfRange => "out_of_range",
            Self::Invalid => "invalid",
        }
    }
}

/// A contract violation, naming the field (a dotted path such as
/// `options.width`) where one is to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct ContractError {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub message: String,
}

impl ContractError {
    fn new(code: ErrorCode, field: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    fn field(code: ErrorCode, field: &str, message: impl Into<String>) -> Self {
        Self::new(code, Some(field.to_owned()), message)
    }
}

impl JobMessage {
    /// A new current-version job with a fresh id.
    pub fn new(url: impl Into<String>, options: RenderOptions) -> Self {
        Self {
            version: CURRENT_VERSION,
            id: Uuid::new_v4(),
            url: url.into(),
            options,
            submitted_at: None,
            webhook_url: None,
        }
    }

    /// Parse and validate a message body. Every error names what is wrong
    /// and, where one is to blame, the field.
    pub fn parse(body: &[u8]) -> Result<Self, ContractError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(ContractError::new(
                ErrorCode::TooLarge,
                None,
                format!(
                    "body is {} bytes; the limit is {MAX_BODY_BYTES}",
                    body.len()
                ),
            ));
        }
        // First just enough to know it is an object and which version it
        // claims, so that a future version is reported as such rather than
        // as a pile of unknown fields.
        let envelope: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| {
                ContractError::new(
                    ErrorCode::Malformed,
                    None,
                    format!("body is not a JSON object: {e}"),
                )
            })?;
        match envelope.get("version") {
            None => {
                return Err(ContractError::field(
                    ErrorCode::MissingField,
                    "version",
                    "missing field",
                ));
            }
            Some(serde_json::Value::Number(n))
                if n.as_u64() == Some(u64::from(CURRENT_VERSION)) => {}
            Some(serde_json::Value::Number(n)) => {
                return Err(ContractError::field(
                    ErrorCode::UnsupportedVersion,
                    "version",
                    format!(
                        "version {n} is not supported; this build reads version {CURRENT_VERSION}"
                    ),
                ));
            }
            Some(_) => {
                return Err(ContractError::field(
                    ErrorCode::WrongType,
                    "version",
                    "expected an integer",
                ));
            }
        }
        // serde reads a struct from a JSON array too, by position; the
        // contract only has objects.
        if envelope.get("options").is_some_and(|o| !o.is_object()) {
            return Err(ContractError::field(
                ErrorCode::WrongType,
                "options",
                "expected an object",
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(body);
        let job: Self = serde_path_to_error::deserialize(de).map_err(serde_error)?;
        job.validate()?;
        Ok(job)
    }

    /// Serialise to the JSON body sent to SQS.
    pub fn to_json(&self) -> String {
        // A struct of plain fields with string keys cannot fail to serialise.
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("job serialises: {e}"))
    }

    /// Check every bound of the contract.
    pub fn validate(&self) -> Result<(), ContractError> {
        if self.version != CURRENT_VERSION {
            return Err(ContractError::field(
                ErrorCode::UnsupportedVersion,
                "version",
                format!(
                    "version {} is not supported; this build reads version {CURRENT_VERSION}",
                    self.version
                ),
            ));
        }
        validate_url(&self.url)?;
        if let Some(webhook) = &self.webhook_url {
            let parsed = check_url("webhook_url", webhook)?;
            // It travels in the image's object metadata, which S3 caps at
            // 2 KB in all; measured as sent (IDNA and percent-encoded).
            if parsed.as_str().len() > MAX_WEBHOOK_URL_BYTES {
                return Err(ContractError::field(
                    ErrorCode::OutOfRange,
                    "webhook_url",
                    format!(
                        "webhook URL is {} bytes encoded; the limit is {MAX_WEBHOOK_URL_BYTES}",
                        parsed.as_str().len()
                    ),
                ));
            }
        }
        self.options.validate()?;
        let size = self.to_json().len();
        if size > MAX_BODY_BYTES {
            return Err(ContractError::new(
                ErrorCode::TooLarge,
                None,
                format!("the job is {size} bytes as a message; the limit is {MAX_BODY_BYTES}"),
            ));
        }
        Ok(())
    }
}

/// Check that `url` is an absolute http(s) URL with a host, within the
/// length limit. Which hosts and addresses may be reached is the URL
/// policy's business, not the contract's.
pub fn validate_url(raw: &str) -> Result<url::Url, ContractError> {
    check_url("url", raw)
}

/// [`validate_url`] for the URL in `field`.
fn check_url(field: &str, raw: &str) -> Result<url::Url, ContractError> {
    if raw.len() > MAX_URL_BYTES {
        return Err(ContractError::field(
            ErrorCode::OutOfRange,
            field,
            format!("URL is {} bytes; the limit is {MAX_URL_BYTES}", raw.len()),
        ));
    }
    if raw.trim().is_empty() {
        return Err(ContractError::field(
            ErrorCode::Invalid,
            field,
            "URL is empty",
        ));
    }
    let parsed = url::Url::parse(raw).map_err(|e| {
        ContractError::field(
            ErrorCode::Invalid,
            field,
            format!("not an absolute URL: {e}"),
        )
    })?;
    // The parser lower-cases the scheme, so `HTTP://` is http.
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ContractError::field(
            ErrorCode::Invalid,
            field,
            format!(
                "scheme `{}` is not allowed; use http or https",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host().is_none() {
        return Err(ContractError::field(
            ErrorCode::Invalid,
            field,
            "URL has no host",
        ));
    }
    Ok(parsed)
}

impl RenderOptions {
    /// Check every bound. Field names are given as `options.<field>`.
    pub fn validate(&self) -> Result<(), ContractError> {
        let range = |field: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ContractError::field(
                    ErrorCode::OutOfRange,
                    &format!("options.{field}"),
                    format!("{value} is outside {min}..={max}"),
                ))
            }
        };
        let (min, max) = (u64::from(VIEWPORT_MIN), u64::from(VIEWPORT_MAX));
        range("width", self.width.into(), min, max)?;
        range("height", self.height.into(), min, max)?;

        let scale = self.device_scale_factor;
        if !scale.is_finite() || !(SCALE_MIN..=SCALE_MAX).contains(&scale) {
            return Err(ContractError::field(
                ErrorCode::OutOfRange,
                "options.device_scale_factor",
                format!("{scale} is outside {SCALE_MIN}..={SCALE_MAX}"),
            ));
        }
        self.validate_device()?;
        let view = self.viewport();
        let viewport_pixels =
            device_pixels(view.width, view.scale) * device_pixels(view.height, view.scale);
        if viewport_pixels > MAX_OUTPUT_PIXELS {
            return Err(ContractError::field(
                ErrorCode::OutOfRange,
                "options.device_scale_factor",
                format!(
                    "a {}x{} viewport at scale {} is {viewport_pixels} device pixels; the limit is {MAX_OUTPUT_PIXELS}",
                    view.width, view.height, view.scale
                ),
            ));
        }

        range(
            "full_page_max_height",
            self.full_page_max_height.into(),
            1,
            FULL_PAGE_MAX_HEIGHT_LIMIT.into(),
        )?;

        match (self.format.is_lossy(), self.quality) {
            (false, Some(_)) => {
                return Err(ContractError::field(
                    ErrorCode::Invalid,
                    "options.quality",
                    format!("quality applies only to jpeg and webp, not {}", self.format),
                ));
            }
            (true, Some(q)) => range("quality", q.into(), 1, 100)?,
            _ => {}
        }

        if let WaitFor::Selector(selector) = &self.wait_for {
            let field = "options.wait_for.selector";
            if selector.trim().is_empty() {
                return Err(ContractError::field(
                    ErrorCode::Invalid,
                    field,
                    "selector is empty",
                ));
            }
            if selector.len() > MAX_SELECTOR_BYTES {
                return Err(ContractError::field(
                    ErrorCode::OutOfRange,
                    field,
                    format!(
                        "selector is {} bytes; the limit is {MAX_SELECTOR_BYTES}",
                        selector.len()
                    ),
                ));
            }
            if selector.chars().any(char::is_control) {
                return Err(ContractError::field(
                    ErrorCode::Invalid,
                    field,
                    "selector contains control characters",
                ));
            }
        }

        range(
            "timeout_ms",
            self.timeout_ms.into(),
            TIMEOUT_MIN_MS.into(),
            TIMEOUT_MAX_MS.into(),
        )?;
        range("delay_ms", self.delay_ms.into(), 0, DELAY_MAX_MS.into())?;
        if self.delay_ms >= self.timeout_ms {
            return Err(ContractError::field(
                ErrorCode::Invalid,
                "options.delay_ms",
                format!(
                    "delay of {} ms leaves nothing of the {} ms timeout",
                    self.delay_ms, self.timeout_ms
                ),
            ));
        }
        self.validate_capture()?;
        self.validate_waits()?;
        self.validate_cleanup()?;
        self.validate_emulation()
    }

    /// Whether the job runs JavaScript of its own in the page
    /// (`script`, `wait_for_expression`), which the operator must allow.
    pub fn uses_scripts(&self) -> bool {
        self.script.is_some() || self.wait_for_expression.is_some()
    }

    /// The viewport the page is rendered with: the device's when the job
    /// names one (turned with `landscape`), the job's own fields otherwise.
    pub fn viewport(&self) -> ViewportSpec {
        match self.device.as_deref().and_then(opt::device) {
            Some(d) => {
                let (width, height) = if self.landscape {
                    (d.height, d.width)
                } else {
                    (d.width, d.height)
                };
                ViewportSpec {
                    width,
                    height,
                    scale: d.scale,
                    mobile: d.mobile,
                    touch: d.touch,
                }
            }
            None => ViewportSpec {
                width: self.width,
                height: self.height,
                scale: self.device_scale_factor,
                mobile: self.mobile,
                touch: self.touch,
            },
        }
    }

    /// The user agent option in effect: the job's, else its device's preset.
    pub fn user_agent_option(&self) -> Option<&str> {
        self.user_agent.as_deref().or_else(|| {
            self.device
                .as_deref()
                .and_then(opt::device)
                .map(|d| d.user_agent)
        })
    }

    fn validate_device(&self) -> Result<(), ContractError> {
        let Some(name) = &self.device else {
            if self.landscape {
                return Err(ContractError::field(
                    ErrorCode::Invalid,
                    "options.landscape",
                    "landscape turns a device; name one with device",
                ));
            }
            return Ok(());
        };
        let Some(device) = opt::device(name) else {
            let names: Vec<_> = opt::DEVICES.iter().map(|d| d.name).collect();
            return Err(ContractError::field(
                ErrorCode::Invalid,
                "options.device",
                format!("unknown device `{name}`; use one of {}", names.join(", ")),
            ));
        };
        let defaults = Self::default();
        for (field, set) in [
            ("width", self.width != defaults.width),
            ("height", self.height != defaults.height),
            (
                "device_scale_factor",
                self.device_scale_factor != defaults.device_scale_factor,
            ),
            ("mobile", self.mobile),
            ("touch", self.touch),
        ] {
            if set {
                return Err(ContractError::field(
                    ErrorCode::Invalid,
                    &format!("options.{field}"),
                    format!(
                        "device `{}` sets {field}; leave it out or name no device",
                        device.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_capture(&self) -> Result<(), ContractError> {
        let invalid = |field: &str, message: &str| {
            Err(ContractError::field(
                ErrorCode::Invalid,
                &format!("options.{field}"),
                message,
            ))
        };
        if let Some(selector) = &self.selector {
            opt::selector("options.selector", selector)?;
            if self.full_page {
                return invalid(
                    "selector",
                    "an element capture is not a full-page capture; drop one of them",
                );
            }
            if self.clip.is_some() {
                return invalid("clip", "give an element or a clip, not both");
            }
        }
        if self.selector_padding > 0 && self.selector.is_none() {
            return invalid(
                "selector_padding",
                "padding is around an element; name one with selector",
            );
        }
        if self.selector_padding > opt::SELECTOR_PADDING_MAX {
            return Err(ContractError::field(
                ErrorCode::OutOfRange,
                "options.selector_padding",
                format!(
                    "{} is outside 0..={}",
                    self.selector_padding,
                    opt::SELECTOR_PADDING_MAX
                ),
            ));
        }
        if let Some(clip) = &self.clip {
            if self.full_page {
                return invalid(
                    "clip",
                    "a clip is not a full-page capture; drop one of them",
                );
            }
            let range = |field: &str, value: u32, min: u32, max: u32| {
                if (min..=max).contains(&value) {
                    Ok(())
                } else {
                    Err(ContractError::field(
                        ErrorCode::OutOfRange,
                        &format!("options.clip.{field}"),
                        format!("{value} is outside {min}..={max}"),
                    ))
                }
            };
            range("x", clip.x, 0, opt::CLIP_OFFSET_MAX)?;
            range("y", clip.y, 0, opt::CLIP_OFFSET_MAX)?;
            range("width", clip.width, 1, VIEWPORT_MAX)?;
            range("height", clip.height, 1, FULL_PAGE_MAX_HEIGHT_LIMIT)?;
            let scale = self.viewport().scale;
            let pixels = device_pixels(clip.width, scale) * device_pixels(clip.height, scale);
            if pixels > MAX_OUTPUT_PIXELS {
                return Err(ContractError::field(
                    ErrorCode::OutOfRange,
                    "options.clip",
                    format!(
                        "a {}x{} clip at scale {scale} is {pixels} device pixels; the limit is {MAX_OUTPUT_PIXELS}",
                        clip.width, clip.height
                    ),
                ));
            }
        }
        if let Some(t) = &self.thumbnail {
            opt::thumbnail("options.thumbnail", t)?;
        }
        if self.format == ImageFormat::Pdf {
            for (field, set) in [
                ("selector", self.selector.is_some()),
                ("clip", self.clip.is_some()),
                ("full_page", self.full_page),
                ("thumbnail", self.thumbnail.is_some()),
                ("omit_background", self.omit_background),
            ] {
                if set {
                    return invalid(
                        field,
                        "a PDF is the whole page printed: it has no capture area, thumbnail or transparency",
                    );
                }
            }
        }
        match &self.pdf {
            Some(_) if self.format != ImageFormat::Pdf => {
                return invalid("pdf", "PDF settings need format: pdf");
            }
            Some(pdf) => opt::pdf("options.pdf", pdf)?,
            None => {}
        }
        if self.omit_background && self.format == ImageFormat::Jpeg {
            return invalid(
                "omit_background",
                "jpeg has no transparency; use png or webp",
            );
        }
        if let Some(step) = self.scroll_step {
            if !self.scroll_page {
                return invalid("scroll_step", "a scroll step needs scroll_page");
            }
            if !(SCROLL_STEP_MIN..=SCROLL_STEP_MAX).contains(&step) {
                return Err(ContractError::field(
                    ErrorCode::OutOfRange,
                    "options.scroll_step",
                    format!("{step} is outside {SCROLL_STEP_MIN}..={SCROLL_STEP_MAX}"),
                ));
            }
        }
        if self.scroll_delay_ms > SCROLL_DELAY_MAX_MS {
            return Err(ContractError::field(
                ErrorCode::OutOfRange,
                "options.scroll_delay_ms",
                format!(
                    "{} is outside 0..={SCROLL_DELAY_MAX_MS}",
                    self.scroll_delay_ms
                ),
            ));
        }
        Ok(())
    }

    fn validate_waits(&self) -> Result<(), ContractError> {
        match &self.wait_for_selector {
            Some(selector) => opt::selector("options.wait_for_selector", selector)?,
            None if self.wait_for_selector_state != SelectorState::default() => {
                return Err(ContractError::field(
                    ErrorCode::Invalid,
                    "options.wait_for_selector_state",
                    "a selector state needs wait_for_selector",
                ));
            }
            None => {}
        }
        if let Some(expression) = &self.wait_for_expression {
            opt::source(
                "options.wait_for_expression",
                expression,
                opt::EXPRESSION_MAX_BYTES,
                "expression",
            )?;
        }
        if !(NETWORK_IDLE_MIN_MS..=NETWORK_IDLE_MAX_MS).contains(&self.network_idle_ms) {
            return Err(ContractError::field(
                ErrorCode::OutOfRange,
                "options.network_idle_ms",
                format!(
                    "{} is outside {NETWORK_IDLE_MIN_MS}..={NETWORK_IDLE_MAX_MS}",
                    self.network_idle_ms
                ),
            ));
        }
        if self.network_idle_ms != NETWORK_IDLE_DEFAULT_MS && self.wait_for != WaitFor::NetworkIdle
        {
            return Err(ContractError::field(
                ErrorCode::Invalid,
                "options.network_idle_ms",
                "a quiet period needs wait_for: network_idle",
            ));
        }
        Ok(())
    }

    fn validate_cleanup(&self) -> Result<(), ContractError> {
        if self.hide_selectors.len() > opt::HIDE_SELECTORS_MAX {
            return Err(ContractError::field(
                ErrorCode::OutOfRange,
                "options.hide_selectors",
                format!(
                    "{} selectors; the limit is {}",
                    self.hide_selectors.len(),
                    opt::HIDE_SELECTORS_MAX
                ),
            ));
        }
        for (i, selector) in self.hide_selectors.iter().enumerate() {
            opt::selector(&format!("options.hide_selectors[{i}]"), selector)?;
        }
        if let Some(css) = &self.css {
            opt::source("options.css", css, opt::CSS_MAX_BYTES, "stylesheet")?;
        }
        if let Some(script) = &self.script {
            opt::source("options.script", script, opt::SCRIPT_MAX_BYTES, "script")?;
        }
        opt::block_urls("options.block_urls", &self.block_urls)
    }

    fn validate_emulation(&self) -> Result<(), ContractError> {
        if let Some(ua) = &self.user_agent {
            opt::text(
                "options.user_agent",
                ua,
                opt::USER_AGENT_BYTES,
                "user agent",
            )?;
        }
        if let Some(value) = &self.accept_language {
            opt::accept_language("options.accept_language", value)?;
        }
        if let Some(value) = &self.locale {
            opt::locale("options.locale", value)?;
        }
        if let Some(value) = &self.timezone {
            opt::timezone("options.timezone", value)?;
        }
        if let Some(g) = &self.geolocation {
            opt::geolocation("options.geolocation", g)?;
        }
        opt::headers("options.headers", &self.headers)?;
        if !self.header_hosts.is_empty() && self.headers.is_empty() {
            return Err(ContractError::field(
                ErrorCode::Invalid,
                "options.header_hosts",
                "header hosts say where headers go; give headers",
            ));
        }
        opt::header_hosts("options.header_hosts", &self.header_hosts)?;
        opt::cookies("options.cookies", &self.cookies)
    }

    /// Quality to encode with: the given one, or the default for lossy
    /// formats; `None` for png.
    pub fn effective_quality(&self) -> Option<u8> {
        self.format
            .is_lossy()
            .then(|| self.quality.unwrap_or(QUALITY_DEFAULT))
    }

    /// The tallest full-page capture, in CSS pixels, that keeps the image
    /// within [`MAX_OUTPUT_PIXELS`] at this width and scale.
    pub fn full_page_height_limit(&self) -> u32 {
        let view = self.viewport();
        let scale = view.scale;
        let row = device_pixels(view.width, scale).max(1);
        let max_device_rows = MAX_OUTPUT_PIXELS / row;
        let max_css_rows = (max_device_rows as f64 / scale).floor() as u64;
        u64::from(self.full_page_max_height)
            .min(max_css_rows)
            .max(1) as u32
    }
}

/// The viewport a page is rendered with, devices resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewportSpec {
    pub width: u32,
    pub height: u32,
    pub scale: f64,
    pub mobile: bool,
    pub touch: bool,
}

/// Device pixels of `css` CSS pixels at `scale`, rounded up.
pub fn device_pixels(css: u32, scale: f64) -> u64 {
    (f64::from(css) * scale).ceil() as u64
}

/// Map a serde error, with the path where it happened, to a contract error.
fn serde_error(err: serde_path_to_error::Error<serde_json::Error>) -> ContractError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let message = inner.to_string();
    // serde_json's messages carry " at line L column C"; the path says more.
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(head, _)| head)
        .to_owned();
    let field = |path: String| (path != ".").then_some(path);
    if inner.is_syntax() || inner.is_eof() {
        return ContractError::new(
            ErrorCode::Malformed,
            None,
            format!("body is not valid JSON: {message}"),
        );
    }
    if let Some(name) = quoted_after(&message, "missing field ") {
        let full = match field(path) {
            Some(parent) => format!("{parent}.{name}"),
            None => name,
        };
        return ContractError::new(ErrorCode::MissingField, Some(full), "missing field");
    }
    if let Some(name) = quoted_after(&message, "duplicate field ") {
        let full = match field(path) {
            Some(parent) => format!("{parent}.{name}"),
            None => name,
        };
        return ContractError::new(
            ErrorCode::Invalid,
            Some(full),
            "field appears more than once",
        );
    }
    if let Some(name) = quoted_after(&message, "unknown field ") {
        let full = match field(path.clone()) {
            // serde_path_to_error already includes the unknown key in the path.
            Some(p) if p.ends_with(&name) => p,
            Some(parent) => format!("{parent}.{name}"),
            None => name,
        };
        return ContractError::new(ErrorCode::UnknownField, Some(full), message);
    }
    ContractError::new(ErrorCode::WrongType, field(path), message)
}

/// The text between the first pair of backticks after `prefix`.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    let rest = rest.strip_prefix('`')?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({
            "version": 1,
            "id": "6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11",
            "url": "https://example.com/",
        })
    }

    fn with_options(options: serde_json::Value) -> Vec<u8> {
        let mut v = base();
        v["options"] = options;
        body(v)
    }

    fn err(body: &[u8]) -> ContractError {
        JobMessage::parse(body).expect_err("body must be refused")
    }

    #[test]
    fn minimal_body_gets_defaults() {
        let job = JobMessage::parse(&body(base())).unwrap();
        assert_eq!(job.options, RenderOptions::default());
        assert_eq!(job.url, "https://example.com/");
        assert_eq!(job.submitted_at, None);
    }

    #[test]
    fn round_trip_preserves_every_field() {
        let mut job = JobMessage::new(
            "http://example.com/a?b=c#d",
            RenderOptions {
                width: 390,
                height: 844,
                device_scale_factor: 3.0,
                full_page: true,
                full_page_max_height: 5000,
                format: ImageFormat::Webp,
                quality: Some(55),
                wait_for: WaitFor::Selector("main > .ready".into()),
                delay_ms: 250,
                timeout_ms: 45_000,
                fail_on_http_error: true,
                ..RenderOptions::default()
            },
        );
        job.submitted_at = Some(time::macros::datetime!(2026-11-25 10:00:00.123 UTC));
        let parsed = JobMessage::parse(job.to_json().as_bytes()).unwrap();
        assert_eq!(parsed, job);

        for wait in [WaitFor::Load, WaitFor::NetworkIdle] {
            let mut j = job.clone();
            j.options.wait_for = wait;
            assert_eq!(JobMessage::parse(j.to_json().as_bytes()).unwrap(), j);
        }
    }

    #[test]
    fn wire_format_is_stable() {
        let v: serde_json::Value = serde_json::from_str(
            &JobMessage::parse(&with_options(json!({
                "format": "jpeg", "wait_for": {"selector": "#x"}
            })))
            .unwrap()
            .to_json(),
        )
        .unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["options"]["format"], "jpeg");
        assert_eq!(v["options"]["wait_for"], json!({"selector": "#x"}));
        assert_eq!(v["options"]["width"], 1280);
        let v = JobMessage::parse(&with_options(json!({"wait_for": "network_idle"}))).unwrap();
        assert_eq!(v.options.wait_for, WaitFor::NetworkIdle);
    }

    #[test]
    fn malformed_bodies() {
        for b in [
            &b""[..],
            b"not json",
            b"{",
            b"[]",
            b"null",
            b"42",
            b"\"string\"",
            b"\xff\xfe{}",
            b"{\"version\":1,\"id\":",
            b"[1]",
            b"[{\"version\":1}]",
        ] {
            let e = err(b);
            assert!(
                matches!(e.code, ErrorCode::Malformed),
                "{:?} gave {e:?}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn oversized_body_is_refused_before_parsing() {
        let e = err(&vec![b' '; MAX_BODY_BYTES + 1]);
        assert_eq!(e.code, ErrorCode::TooLarge);
    }

    #[test]
    fn versions() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("version");
        assert_eq!(err(&body(v)).field.as_deref(), Some("version"));

        for bad in [
            json!(0),
            json!(2),
            json!(999_999_999_999u64),
            json!(-1),
            json!(1.5),
        ] {
            let mut v = base();
            v["version"] = bad.clone();
            let e = err(&body(v));
            assert_eq!(e.code, ErrorCode::UnsupportedVersion, "{bad}: {e:?}");
            assert_eq!(e.field.as_deref(), Some("version"));
        }
        for bad in [json!("1"), json!(null), json!([1]), json!(true)] {
            let mut v = base();
            v["version"] = bad.clone();
            assert_eq!(err(&body(v)).code, ErrorCode::WrongType, "{bad}");
        }
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        for field in ["id", "url"] {
            let mut v = base();
            v.as_object_mut().unwrap().remove(field);
            let e = err(&body(v));
            assert_eq!(e.code, ErrorCode::MissingField);
            assert_eq!(e.field.as_deref(), Some(field));
        }
        let mut v = base();
        v["colour"] = json!("red");
        let e = err(&body(v));
        assert_eq!(e.code, ErrorCode::UnknownField);
        assert_eq!(e.field.as_deref(), Some("colour"));

        let e = err(&with_options(json!({"fullpage": true})));
        assert_eq!(e.code, ErrorCode::UnknownField);
        assert_eq!(e.field.as_deref(), Some("options.fullpage"));
    }

    #[test]
    fn wrong_types_are_named() {
        let cases = [
            (json!({"width": "1280"}), "options.width"),
            (json!({"width": -1}), "options.width"),
            (json!({"width": 1.5}), "options.width"),
            (json!({"width": 4_294_967_296u64}), "options.width"),
            (json!({"full_page": "yes"}), "options.full_page"),
            (json!({"format": "gif"}), "options.format"),
            (json!({"format": "PNG"}), "options.format"),
            (json!({"wait_for": "dom"}), "options.wait_for"),
            (json!({"wait_for": {"xpath": "//a"}}), "options.wait_for"),
            (json!({"wait_for": {"selector": 3}}), "options.wait_for"),
            (json!({"quality": 300}), "options.quality"),
            (
                json!({"device_scale_factor": "2"}),
                "options.device_scale_factor",
            ),
        ];
        for (options, field) in cases {
            let e = err(&with_options(options.clone()));
            assert_eq!(e.code, ErrorCode::WrongType, "{options}: {e:?}");
            assert!(
                e.field.as_deref().is_some_and(|f| f.starts_with(field)),
                "{options}: {e:?}"
            );
        }
        let mut v = base();
        v["id"] = json!("not-a-uuid");
        let e = err(&body(v));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::WrongType, Some("id"))
        );
        let mut v = base();
        v["url"] = json!(["https://example.com"]);
        assert_eq!(err(&body(v)).field.as_deref(), Some("url"));
        for options in [json!([]), json!([1280, 800]), json!(null), json!("big")] {
            let e = err(&with_options(options));
            assert_eq!(
                (e.code, e.field.as_deref()),
                (ErrorCode::WrongType, Some("options"))
            );
        }
        let dup = br#"{"version":1,"id":"6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11","url":"https://a.example/","url":"http://169.254.169.254/"}"#;
        let e = err(dup);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::Invalid, Some("url"))
        );
    }

    #[test]
    fn bounds_are_enforced_at_both_ends() {
        let ok =
            |o: serde_json::Value| JobMessage::parse(&with_options(o.clone())).map_err(|e| (o, e));
        let bad = |o: serde_json::Value, field: &str| {
            let e = err(&with_options(o.clone()));
            assert_eq!(e.field.as_deref(), Some(field), "{o}: {e:?}");
            assert!(
                matches!(e.code, ErrorCode::OutOfRange | ErrorCode::Invalid),
                "{o}: {e:?}"
            );
        };
        for edge in [
            json!({"width": 1}),
            json!({"width": 7680, "height": 1}),
            json!({"height": 7680}),
        ] {
            ok(edge).unwrap();
        }
        bad(json!({"width": 0}), "options.width");
        bad(json!({"width": 7681}), "options.width");
        bad(json!({"height": 0}), "options.height");
        bad(json!({"height": 7681}), "options.height");

        ok(json!({"device_scale_factor": 1})).unwrap();
        ok(json!({"device_scale_factor": 4, "width": 1920, "height": 1080})).unwrap();
        bad(
            json!({"device_scale_factor": 0.5}),
            "options.device_scale_factor",
        );
        bad(
            json!({"device_scale_factor": 4.01}),
            "options.device_scale_factor",
        );
        bad(
            json!({"device_scale_factor": 0}),
            "options.device_scale_factor",
        );
        // A large viewport is fine alone but not once scaled past the pixel limit.
        bad(
            json!({"device_scale_factor": 2, "width": 7680, "height": 7680}),
            "options.device_scale_factor",
        );

        ok(json!({"timeout_ms": 1000})).unwrap();
        ok(json!({"timeout_ms": 120000})).unwrap();
        bad(json!({"timeout_ms": 999}), "options.timeout_ms");
        bad(json!({"timeout_ms": 120001}), "options.timeout_ms");

        ok(json!({"delay_ms": 10000, "timeout_ms": 10001})).unwrap();
        bad(json!({"delay_ms": 10001}), "options.delay_ms");
        bad(
            json!({"delay_ms": 5000, "timeout_ms": 5000}),
            "options.delay_ms",
        );

        ok(json!({"full_page": true, "full_page_max_height": 32768})).unwrap();
        bad(
            json!({"full_page_max_height": 0}),
            "options.full_page_max_height",
        );
        bad(
            json!({"full_page_max_height": 32769}),
            "options.full_page_max_height",
        );

        ok(json!({"format": "jpeg", "quality": 1})).unwrap();
        ok(json!({"format": "webp", "quality": 100})).unwrap();
        bad(json!({"format": "jpeg", "quality": 0}), "options.quality");
        bad(json!({"format": "webp", "quality": 101}), "options.quality");
        bad(json!({"quality": 80}), "options.quality");
        bad(json!({"format": "png", "quality": 80}), "options.quality");
    }

    #[test]
    fn non_finite_scale_is_refused() {
        let options = RenderOptions {
            device_scale_factor: f64::NAN,
            ..RenderOptions::default()
        };
        let e = options.validate().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("options.device_scale_factor"));
        let options = RenderOptions {
            device_scale_factor: f64::INFINITY,
            ..RenderOptions::default()
        };
        assert!(options.validate().is_err());
    }

    #[test]
    fn selectors() {
        let field = Some("options.wait_for.selector");
        for s in ["", "   ", "a\u{0}b", "a\nb"] {
            let e = err(&with_options(json!({"wait_for": {"selector": s}})));
            assert_eq!(e.field.as_deref(), field, "{s:?}");
        }
        let long = "a".repeat(MAX_SELECTOR_BYTES + 1);
        let e = err(&with_options(json!({"wait_for": {"selector": long}})));
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::OutOfRange, field));
        let fits = "a".repeat(MAX_SELECTOR_BYTES);
        JobMessage::parse(&with_options(json!({"wait_for": {"selector": fits}}))).unwrap();
    }

    #[test]
    fn urls() {
        let check = |url: &str| {
            let mut v = base();
            v["url"] = json!(url);
            JobMessage::parse(&body(v))
        };
        for good in [
            "http://example.com",
            "HTTP://EXAMPLE.COM/Path",
            "https://example.com:8443/a?q=1#frag",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "https://xn--bcher-kva.example/",
        ] {
            check(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            " ",
            "example.com",
            "/relative/path",
            "file:///etc/passwd",
            "data:text/html,<h1>x</h1>",
            "javascript:alert(1)",
            "chrome://settings",
            "view-source:http://example.com",
            "blob:http://example.com/uuid",
            "ftp://example.com/",
            "about:blank",
            "http://",
            "http://exa mple.com/",
            "https://[::1/",
        ] {
            let e = check(bad).expect_err(bad);
            assert_eq!(e.field.as_deref(), Some("url"), "{bad}: {e:?}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        let e = check(&long).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::OutOfRange, Some("url"))
        );
        let fits = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES - 20));
        assert_eq!(fits.len(), MAX_URL_BYTES);
        check(&fits).unwrap();
    }

    #[test]
    fn webhook_urls_are_checked_like_page_urls_and_measured_encoded() {
        let check = |webhook: serde_json::Value| {
            let mut v = base();
            v["webhook_url"] = webhook;
            JobMessage::parse(&body(v))
        };
        let job = check(json!("https://example.com/hooks/1")).unwrap();
        assert_eq!(
            job.webhook_url.as_deref(),
            Some("https://example.com/hooks/1")
        );
        assert_eq!(check(json!(null)).unwrap().webhook_url, None);
        for bad in ["file:///etc/passwd", "example.com/hook", "http://", ""] {
            let e = check(json!(bad)).expect_err(bad);
            assert_eq!(e.field.as_deref(), Some("webhook_url"), "{bad}: {e:?}");
        }
        let e = check(json!(1)).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("webhook_url"));
        // 200 characters of two bytes, six once percent-encoded: over the
        // limit though the raw text is not.
        let wide = format!("https://example.com/{}", "é".repeat(200));
        assert!(wide.len() < MAX_WEBHOOK_URL_BYTES);
        let e = check(json!(wide)).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::OutOfRange, Some("webhook_url"))
        );
        let fits = format!(
            "https://example.com/{}",
            "a".repeat(MAX_WEBHOOK_URL_BYTES - 20)
        );
        check(json!(fits)).unwrap();
    }

    #[test]
    fn error_display_names_the_field() {
        let e = err(&with_options(json!({"width": 0})));
        assert_eq!(e.to_string(), "options.width: 0 is outside 1..=7680");
    }

    #[test]
    fn quality_and_full_page_limits() {
        let mut o = RenderOptions::default();
        assert_eq!(o.effective_quality(), None);
        o.format = ImageFormat::Jpeg;
        assert_eq!(o.effective_quality(), Some(QUALITY_DEFAULT));
        o.quality = Some(10);
        assert_eq!(o.effective_quality(), Some(10));

        let o = RenderOptions::default();
        assert_eq!(o.full_page_height_limit(), FULL_PAGE_MAX_HEIGHT_DEFAULT);
        let o = RenderOptions {
            width: 7680,
            height: 1000,
            device_scale_factor: 4.0,
            full_page_max_height: 32_768,
            ..RenderOptions::default()
        };
        let h = o.full_page_height_limit();
        let pixels = device_pixels(o.width, 4.0) * device_pixels(h, 4.0);
        assert!(pixels <= MAX_OUTPUT_PIXELS, "{h} rows give {pixels}");
        assert!(device_pixels(o.width, 4.0) * device_pixels(h + 1, 4.0) > MAX_OUTPUT_PIXELS);
    }

    fn every_option() -> RenderOptions {
        RenderOptions {
            selector: Some("#card".into()),
            selector_padding: 8,
            omit_background: true,
            thumbnail: Some(Thumbnail {
                width: 320,
                height: Some(200),
                fit: Fit::Cover,
            }),
            scroll_page: true,
            scroll_step: Some(400),
            scroll_delay_ms: 50,
            wait_for: WaitFor::NetworkIdle,
            wait_for_selector: Some(".ready".into()),
            wait_for_selector_state: SelectorState::Hidden,
            wait_for_expression: Some("window.done === true".into()),
            network_idle_ms: 1500,
            hide_selectors: vec![".banner".into(), "#chat".into()],
            css: Some("body { background: red }".into()),
            script: Some("document.title = 'x'".into()),
            block_resources: vec![ResourceKind::Image, ResourceKind::Font],
            block_urls: vec!["*://ads.example/*".into()],
            block_ads: true,
            block_trackers: true,
            block_cookie_banners: true,
            device: Some("pixel_8".into()),
            landscape: true,
            user_agent: Some("desktop".into()),
            accept_language: Some("de-CH,de;q=0.9".into()),
            locale: Some("de-CH".into()),
            timezone: Some("Europe/Zurich".into()),
            geolocation: Some(Geolocation {
                latitude: 47.37,
                longitude: 8.54,
                accuracy: 10.0,
            }),
            color_scheme: Some(ColorScheme::Dark),
            reduced_motion: true,
            media: Some(MediaType::Print),
            headers: BTreeMap::from([("X-Tenant".into(), "acme".into())]),
            header_hosts: vec!["*.example.com".into()],
            cookies: vec![Cookie {
                name: "session".into(),
                value: "abc".into(),
                domain: None,
                path: Some("/".into()),
                secure: true,
                http_only: true,
                same_site: Some(SameSite::Lax),
            }],
            ..RenderOptions::default()
        }
    }

    #[test]
    fn every_new_option_round_trips_and_a_job_without_them_keeps_its_old_shape() {
        let job = JobMessage::new("https://example.com/", every_option());
        job.validate().unwrap();
        assert_eq!(JobMessage::parse(job.to_json().as_bytes()).unwrap(), job);
        let mut clip = JobMessage::new("https://example.com/", RenderOptions::default());
        clip.options.clip = Some(Clip {
            x: 10,
            y: 20,
            width: 300,
            height: 200,
        });
        assert_eq!(JobMessage::parse(clip.to_json().as_bytes()).unwrap(), clip);

        // A build that predates these options reads a job that uses none.
        let plain = JobMessage::new("https://example.com/", RenderOptions::default());
        let v: serde_json::Value = serde_json::from_str(&plain.to_json()).unwrap();
        let keys: Vec<_> = v["options"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "delay_ms",
                "device_scale_factor",
                "fail_on_http_error",
                "format",
                "full_page",
                "full_page_max_height",
                "height",
                "timeout_ms",
                "wait_for",
                "width"
            ]
        );
    }

    #[test]
    fn new_options_are_bounded_and_combinations_that_cannot_work_are_refused() {
        let bad = |o: serde_json::Value, field: &str| {
            let e = err(&with_options(o.clone()));
            assert_eq!(e.field.as_deref(), Some(field), "{o}: {e:?}");
        };
        let ok = |o: serde_json::Value| {
            JobMessage::parse(&with_options(o.clone())).unwrap_or_else(|e| panic!("{o}: {e}"))
        };
        ok(json!({"selector": "#a", "selector_padding": 1000}));
        bad(
            json!({"selector": "#a", "selector_padding": 1001}),
            "options.selector_padding",
        );
        bad(json!({"selector_padding": 4}), "options.selector_padding");
        bad(json!({"selector": ""}), "options.selector");
        bad(
            json!({"selector": "#a", "full_page": true}),
            "options.selector",
        );
        bad(
            json!({"selector": "#a", "clip": {"x": 0, "y": 0, "width": 1, "height": 1}}),
            "options.clip",
        );
        ok(json!({"clip": {"x": 32768, "y": 32768, "width": 7680, "height": 7680}}));
        bad(
            json!({"clip": {"x": 0, "y": 32769, "width": 1, "height": 1}}),
            "options.clip.y",
        );
        bad(
            json!({"clip": {"x": 0, "y": 0, "width": 0, "height": 1}}),
            "options.clip.width",
        );
        bad(
            json!({"clip": {"x": 0, "y": 0, "width": 7680, "height": 7681}}),
            "options.clip",
        );
        bad(
            json!({"clip": {"x": 0, "y": 0, "width": 1, "height": 1}, "full_page": true}),
            "options.clip",
        );
        bad(
            json!({"clip": {"x": 0, "y": 0, "width": 1}}),
            "options.clip.height",
        );
        bad(
            json!({"omit_background": true, "format": "jpeg"}),
            "options.omit_background",
        );
        ok(json!({"omit_background": true, "format": "webp"}));
        ok(
            json!({"format": "pdf", "pdf": {"paper": "a4", "landscape": true, "margin_mm": 10, "page_ranges": "1-2, 4", "scale": 0.5}}),
        );
        ok(json!({"format": "pdf"}));
        bad(json!({"pdf": {"paper": "a4"}}), "options.pdf");
        bad(json!({"format": "pdf", "quality": 50}), "options.quality");
        bad(
            json!({"format": "pdf", "full_page": true}),
            "options.full_page",
        );
        bad(
            json!({"format": "pdf", "pdf": {"scale": 3}}),
            "options.pdf.scale",
        );
        bad(
            json!({"format": "pdf", "pdf": {"margin_mm": 101}}),
            "options.pdf.margin_mm",
        );
        bad(
            json!({"format": "pdf", "pdf": {"page_ranges": "1;2"}}),
            "options.pdf.page_ranges",
        );
        bad(json!({"scroll_step": 500}), "options.scroll_step");
        bad(
            json!({"scroll_page": true, "scroll_step": 99}),
            "options.scroll_step",
        );
        bad(
            json!({"scroll_page": true, "scroll_step": 10001}),
            "options.scroll_step",
        );
        bad(json!({"scroll_delay_ms": 2001}), "options.scroll_delay_ms");
        bad(
            json!({"wait_for_selector_state": "hidden"}),
            "options.wait_for_selector_state",
        );
        bad(
            json!({"wait_for_selector": "a\nb"}),
            "options.wait_for_selector",
        );
        bad(
            json!({"wait_for_selector": "a", "wait_for_selector_state": "gone"}),
            "options.wait_for_selector_state",
        );
        ok(json!({"wait_for_expression": "a &&\n b"}));
        bad(
            json!({"wait_for_expression": "x".repeat(2049)}),
            "options.wait_for_expression",
        );
        bad(json!({"network_idle_ms": 1000}), "options.network_idle_ms");
        bad(
            json!({"wait_for": "network_idle", "network_idle_ms": 99}),
            "options.network_idle_ms",
        );
        ok(json!({"wait_for": "network_idle", "network_idle_ms": 10000}));
        bad(
            json!({"hide_selectors": vec!["a"; 33]}),
            "options.hide_selectors",
        );
        bad(
            json!({"hide_selectors": ["a", " "]}),
            "options.hide_selectors[1]",
        );
        bad(json!({"css": "a".repeat(8193)}), "options.css");
        bad(
            json!({"block_resources": ["images"]}),
            "options.block_resources[0]",
        );
        bad(json!({"block_urls": ["***"]}), "options.block_urls[0]");
        bad(json!({"device": "nokia_3310"}), "options.device");
        bad(
            json!({"device": "iphone_15", "width": 500}),
            "options.width",
        );
        bad(
            json!({"device": "iphone_15", "touch": true}),
            "options.touch",
        );
        bad(json!({"landscape": true}), "options.landscape");
        bad(json!({"timezone": "../../etc"}), "options.timezone");
        bad(json!({"locale": "en US"}), "options.locale");
        bad(
            json!({"accept_language": "en\r\nX: y"}),
            "options.accept_language",
        );
        bad(json!({"user_agent": "a".repeat(513)}), "options.user_agent");
        bad(
            json!({"geolocation": {"latitude": 91, "longitude": 0}}),
            "options.geolocation.latitude",
        );
        bad(json!({"headers": {"Host": "x"}}), "options.headers.Host");
        bad(
            json!({"header_hosts": ["a.example"]}),
            "options.header_hosts",
        );
        bad(
            json!({"headers": {"X-A": "1"}, "header_hosts": ["a b"]}),
            "options.header_hosts[0]",
        );
        bad(
            json!({"cookies": [{"name": "a", "value": "b", "colour": 1}]}),
            "options.cookies[0].colour",
        );
        bad(
            json!({"cookies": [{"name": "a;b", "value": "c"}]}),
            "options.cookies[0].name",
        );
    }

    #[test]
    fn a_device_sets_the_viewport_and_the_pixel_limit_counts_it() {
        let o = RenderOptions {
            device: Some("iphone_15".into()),
            landscape: true,
            ..RenderOptions::default()
        };
        let view = o.viewport();
        assert_eq!((view.width, view.height, view.scale), (852, 393, 3.0));
        assert!(view.mobile && view.touch);
        assert_eq!(o.user_agent_option(), Some("iphone"));
        let pixels_per_row = device_pixels(852, 3.0);
        let rows = device_pixels(o.full_page_height_limit(), 3.0);
        assert!(pixels_per_row * rows <= MAX_OUTPUT_PIXELS);
        let own = RenderOptions {
            user_agent: Some("Bot/1".into()),
            ..o
        };
        assert_eq!(own.user_agent_option(), Some("Bot/1"));
    }

    #[test]
    fn a_job_too_large_as_a_message_is_refused() {
        let mut job = JobMessage::new("https://example.com/", RenderOptions::default());
        job.options.css = Some("a".repeat(opt::CSS_MAX_BYTES));
        job.options.script = Some("b".repeat(opt::SCRIPT_MAX_BYTES));
        job.options.headers = (0..opt::HEADERS_MAX)
            .map(|i| (format!("X-H{i}"), "v".repeat(1000)))
            .collect();
        let e = job.validate().unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
    }
}
