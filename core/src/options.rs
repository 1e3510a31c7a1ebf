//! The parts of [`crate::job::RenderOptions`] that are more than a number:
//! what to capture, what to wait for, how to clean a page up, whom to
//! pretend to be. Each type checks its own bounds; the field names in the
//! errors are given by the caller.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{ContractError, ErrorCode, MAX_SELECTOR_BYTES};

/// A rectangle of the page to capture, in CSS pixels from the top left of
/// the document (not of the viewport).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clip {
    #[cfg_attr(feature = "openapi", schema(maximum = 32768))]
    pub x: u32,
    #[cfg_attr(feature = "openapi", schema(maximum = 32768))]
    pub y: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 7680))]
    pub width: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 32768))]
    pub height: u32,
}

/// Largest offset of a clip, in CSS pixels.
pub const CLIP_OFFSET_MAX: u32 = 32_768;

/// A smaller copy of the capture, made in the worker.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thumbnail {
    /// Width of the box, in pixels of the image.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 7680))]
    pub width: u32,
    /// Height of the box; without it, the width alone decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 32768))]
    pub height: Option<u32>,
    #[serde(default)]
    pub fit: Fit,
}

/// How a thumbnail fills its box. An image already inside the box is kept
/// as it is: nothing is enlarged.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// The whole image, as large as fits, proportions kept.
    #[default]
    Contain,
    /// The box filled, proportions kept, the overflow cut (from the top
    /// left, where a page starts).
    Cover,
    /// The box exactly, proportions not kept.
    Fill,
}

/// How a page is printed to PDF.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PdfOptions {
    pub paper: Paper,
    pub landscape: bool,
    /// Every margin, in millimetres.
    #[cfg_attr(feature = "openapi", schema(maximum = 100, default = 10))]
    pub margin_mm: u32,
    /// Print backgrounds (colours and images), as a screenshot shows them.
    #[cfg_attr(feature = "openapi", schema(default = true))]
    pub print_background: bool,
    /// Pages to print, such as `1-3, 5`; all by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_ranges: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0.1, maximum = 2.0, default = 1.0)
    )]
    pub scale: f64,
    /// A page size the page's own CSS (`@page`) gives wins over `paper`.
    pub prefer_css_page_size: bool,
}

impl Default for PdfOptions {
    fn default() -> Self {
        Self {
            paper: Paper::default(),
            landscape: false,
            margin_mm: 10,
            print_background: true,
            page_ranges: None,
            scale: 1.0,
            prefer_css_page_size: false,
        }
    }
}

/// A paper size.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Paper {
    #[default]
    A4,
    A3,
    A5,
    Letter,
    Legal,
    Tabloid,
}

impl Paper {
    /// Width and height in inches, portrait.
    pub fn inches(self) -> (f64, f64) {
        match self {
            Self::A4 => (8.27, 11.69),
            Self::A3 => (11.69, 16.54),
            Self::A5 => (5.83, 8.27),
            Self::Letter => (8.5, 11.0),
            Self::Legal => (8.5, 14.0),
            Self::Tabloid => (11.0, 17.0),
        }
    }
}

/// What a selector wait waits for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectorState {
    /// An element matches and is in the document.
    Attached,
    /// An element matches, has a non-empty box and is not
    /// `visibility: hidden`.
    #[default]
    Visible,
    /// No matching element is visible (none matches, or none has a box).
    Hidden,
    /// No element matches.
    Detached,
}

/// A kind of sub-resource a job can refuse to load.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Image,
    Media,
    Font,
    Stylesheet,
    Script,
    /// `fetch`, `XMLHttpRequest` and `EventSource` requests.
    Fetch,
    /// Documents of frames inside the page (never the page itself).
    Frame,
}

/// `prefers-color-scheme`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColorScheme {
    Light,
    Dark,
}

/// The CSS media type the page is rendered for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaType {
    Screen,
    Print,
}

/// A position the page's `navigator.geolocation` reports.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geolocation {
    #[cfg_attr(feature = "openapi", schema(minimum = -90.0, maximum = 90.0))]
    pub latitude: f64,
    #[cfg_attr(feature = "openapi", schema(minimum = -180.0, maximum = 180.0))]
    pub longitude: f64,
    /// In metres.
    #[serde(default = "default_accuracy")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0.0, maximum = 100000.0, default = 100.0)
    )]
    pub accuracy: f64,
}

fn default_accuracy() -> f64 {
    100.0
}

/// `SameSite` of a cookie.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// A cookie set in the job's own browser context before the page loads.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    /// The cookie's domain; without it, the page's own host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<SameSite>,
}

/// A named device: its viewport, scale, mobile and touch, and user agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceSpec {
    pub name: &'static str,
    pub width: u32,
    pub height: u32,
    pub scale: f64,
    pub mobile: bool,
    pub touch: bool,
    /// A [`USER_AGENTS`] preset name.
    pub user_agent: &'static str,
}

/// The devices a job can name with `device`.
pub const DEVICES: &[DeviceSpec] = &[
    DeviceSpec {
        name: "iphone_15",
        width: 393,
        height: 852,
        scale: 3.0,
        mobile: true,
        touch: true,
        user_agent: "iphone",
    },
    DeviceSpec {
        name: "iphone_se",
        width: 375,
        height: 667,
        scale: 2.0,
        mobile: true,
        touch: true,
        user_agent: "iphone",
    },
    DeviceSpec {
        name: "pixel_8",
        width: 412,
        height: 915,
        scale: 2.625,
        mobile: true,
        touch: true,
        user_agent: "android",
    },
    DeviceSpec {
        name: "galaxy_s23",
        width: 360,
        height: 780,
        scale: 3.0,
        mobile: true,
        touch: true,
        user_agent: "android",
    },
    DeviceSpec {
        name: "ipad_air",
        width: 820,
        height: 1180,
        scale: 2.0,
        mobile: true,
        touch: true,
        user_agent: "ipad",
    },
    DeviceSpec {
        name: "ipad_pro",
        width: 1024,
        height: 1366,
        scale: 2.0,
        mobile: true,
        touch: true,
        user_agent: "ipad",
    },
    DeviceSpec {
        name: "laptop",
        width: 1440,
        height: 900,
        scale: 2.0,
        mobile: false,
        touch: false,
        user_agent: "mac",
    },
    DeviceSpec {
        name: "desktop_1080p",
        width: 1920,
        height: 1080,
        scale: 1.0,
        mobile: false,
        touch: false,
        user_agent: "desktop",
    },
];

/// Where a user agent preset puts the browser's own major version.
pub const CHROME_MAJOR: &str = "{chrome_major}";

/// User agent presets: a job's `user_agent` may name one instead of giving
/// the string. [`CHROME_MAJOR`] is replaced by the rendering browser's
/// major version, so a Chrome preset never claims a version it is not.
pub const USER_AGENTS: &[(&str, &str)] = &[
    (
        "desktop",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome_major}.0.0.0 Safari/537.36",
    ),
    (
        "mac",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome_major}.0.0.0 Safari/537.36",
    ),
    (
        "linux",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome_major}.0.0.0 Safari/537.36",
    ),
    (
        "android",
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome_major}.0.0.0 Mobile Safari/537.36",
    ),
    (
        "iphone",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    ),
    (
        "ipad",
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    ),
];

/// The named device, if there is one of that name.
pub fn device(name: &str) -> Option<&'static DeviceSpec> {
    DEVICES.iter().find(|d| d.name == name)
}

/// A user agent option as the browser should send it: a preset's string
/// (with the browser's major version filled in) or the option itself.
pub fn user_agent(option: &str, chrome_major: &str) -> String {
    USER_AGENTS
        .iter()
        .find(|(name, _)| *name == option)
        .map_or_else(
            || option.to_owned(),
            |(_, ua)| ua.replace(CHROME_MAJOR, chrome_major),
        )
}

/// Most selectors in `hide_selectors`.
pub const HIDE_SELECTORS_MAX: usize = 32;
/// Most patterns in `block_urls`.
pub const BLOCK_URLS_MAX: usize = 32;
/// Longest `block_urls` pattern, in bytes.
pub const BLOCK_URL_BYTES: usize = 1024;
/// Longest injected stylesheet, in bytes.
pub const CSS_MAX_BYTES: usize = 8 * 1024;
/// Longest injected script, in bytes.
pub const SCRIPT_MAX_BYTES: usize = 8 * 1024;
/// Longest wait expression, in bytes.
pub const EXPRESSION_MAX_BYTES: usize = 2 * 1024;
/// Most extra headers, and the longest name and value.
pub const HEADERS_MAX: usize = 32;
pub const HEADER_NAME_BYTES: usize = 256;
pub const HEADER_VALUE_BYTES: usize = 4096;
/// Most extra hosts that get the extra headers.
pub const HEADER_HOSTS_MAX: usize = 16;
/// Most cookies, and the longest name and value.
pub const COOKIES_MAX: usize = 50;
pub const COOKIE_VALUE_BYTES: usize = 4096;
/// Longest user agent, Accept-Language, locale and time zone.
pub const USER_AGENT_BYTES: usize = 512;
pub const ACCEPT_LANGUAGE_BYTES: usize = 256;
pub const LOCALE_BYTES: usize = 64;
pub const TIMEZONE_BYTES: usize = 64;
/// Most padding around a captured element, in CSS pixels.
pub const SELECTOR_PADDING_MAX: u32 = 1000;
/// Pre-scroll bounds: the step in CSS pixels, the pause in milliseconds.
pub const SCROLL_STEP_MIN: u32 = 100;
pub const SCROLL_STEP_MAX: u32 = 10_000;
pub const SCROLL_DELAY_MAX_MS: u32 = 2_000;
pub const SCROLL_DELAY_DEFAULT_MS: u32 = 100;
/// Network idle quiet period bounds, in milliseconds.
pub const NETWORK_IDLE_MIN_MS: u32 = 100;
pub const NETWORK_IDLE_MAX_MS: u32 = 10_000;
pub const NETWORK_IDLE_DEFAULT_MS: u32 = 500;

/// Request headers a job may not set: those that frame the HTTP message or
/// talk to a proxy (the egress proxy is the worker's), and `Cookie`, which
/// has its own option scoped by domain.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "cookie",
    "proxy-authorization",
    "proxy-connection",
];

pub(crate) fn err(code: ErrorCode, field: &str, message: impl Into<String>) -> ContractError {
    ContractError {
        code,
        field: Some(field.to_owned()),
        message: message.into(),
    }
}

/// A non-empty, bounded string without control characters.
pub(crate) fn text(field: &str, value: &str, max: usize, what: &str) -> Result<(), ContractError> {
    if value.trim().is_empty() {
        return Err(err(ErrorCode::Invalid, field, format!("{what} is empty")));
    }
    if value.len() > max {
        return Err(err(
            ErrorCode::OutOfRange,
            field,
            format!("{what} is {} bytes; the limit is {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(err(
            ErrorCode::Invalid,
            field,
            format!("{what} contains control characters"),
        ));
    }
    Ok(())
}

/// Like [`text`], but a script may span lines (other control characters
/// are still refused).
pub(crate) fn source(
    field: &str,
    value: &str,
    max: usize,
    what: &str,
) -> Result<(), ContractError> {
    let flat: String = value
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    text(field, &flat, max, what)
}

pub(crate) fn selector(field: &str, value: &str) -> Result<(), ContractError> {
    text(field, value, MAX_SELECTOR_BYTES, "selector")
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A host name (or `*.` and a host name) as a header or cookie scope.
fn host_name(field: &str, value: &str) -> Result<(), ContractError> {
    let name = value.strip_prefix("*.").unwrap_or(value);
    let name = name.strip_prefix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
        || name.parse::<std::net::IpAddr>().is_ok();
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorCode::Invalid,
            field,
            format!("`{value}` is not a host name"),
        ))
    }
}

pub(crate) fn headers(
    field: &str,
    headers: &BTreeMap<String, String>,
) -> Result<(), ContractError> {
    if headers.len() > HEADERS_MAX {
        return Err(err(
            ErrorCode::OutOfRange,
            field,
            format!("{} headers; the limit is {HEADERS_MAX}", headers.len()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in headers {
        let at = format!("{field}.{name}");
        if name.len() > HEADER_NAME_BYTES || !is_token(name) {
            return Err(err(
                ErrorCode::Invalid,
                &at,
                "a header name is a token of at most 256 bytes",
            ));
        }
        let lower = name.to_ascii_lowercase();
        if FORBIDDEN_HEADERS.contains(&lower.as_str())
            || lower.starts_with("proxy-")
            || lower.starts_with("sec-")
        {
            return Err(err(
                ErrorCode::Invalid,
                &at,
                format!("header `{name}` may not be set by a job"),
            ));
        }
        if !seen.insert(lower) {
            return Err(err(
                ErrorCode::Invalid,
                &at,
                "the same header appears twice (names are case-insensitive)",
            ));
        }
        if value.len() > HEADER_VALUE_BYTES {
            return Err(err(
                ErrorCode::OutOfRange,
                &at,
                format!(
                    "value is {} bytes; the limit is {HEADER_VALUE_BYTES}",
                    value.len()
                ),
            ));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(err(
                ErrorCode::Invalid,
                &at,
                "value contains control characters",
            ));
        }
    }
    Ok(())
}

pub(crate) fn header_hosts(field: &str, hosts: &[String]) -> Result<(), ContractError> {
    if hosts.len() > HEADER_HOSTS_MAX {
        return Err(err(
            ErrorCode::OutOfRange,
            field,
            format!("{} hosts; the limit is {HEADER_HOSTS_MAX}", hosts.len()),
        ));
    }
    for (i, host) in hosts.iter().enumerate() {
        host_name(&format!("{field}[{i}]"), host)?;
    }
    Ok(())
}

pub(crate) fn cookies(field: &str, cookies: &[Cookie]) -> Result<(), ContractError> {
    if cookies.len() > COOKIES_MAX {
        return Err(err(
            ErrorCode::OutOfRange,
            field,
            format!("{} cookies; the limit is {COOKIES_MAX}", cookies.len()),
        ));
    }
    for (i, cookie) in cookies.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        if cookie.name.len() > HEADER_NAME_BYTES || !is_token(&cookie.name) {
            return Err(err(
                ErrorCode::Invalid,
                &at("name"),
                "a cookie name is a token of at most 256 bytes",
            ));
        }
        if cookie.value.len() > COOKIE_VALUE_BYTES {
            return Err(err(
                ErrorCode::OutOfRange,
                &at("value"),
                format!(
                    "value is {} bytes; the limit is {COOKIE_VALUE_BYTES}",
                    cookie.value.len()
                ),
            ));
        }
        if cookie
            .value
            .chars()
            .any(|c| c.is_control() || matches!(c, ';' | ','))
        {
            return Err(err(
                ErrorCode::Invalid,
                &at("value"),
                "value contains a control character, `;` or `,`",
            ));
        }
        if let Some(domain) = &cookie.domain {
            host_name(&at("domain"), domain)?;
        }
        if let Some(path) = &cookie.path
            && (!path.starts_with('/')
                || path.len() > 1024
                || path.chars().any(|c| c.is_control() || c == ';'))
        {
            return Err(err(
                ErrorCode::Invalid,
                &at("path"),
                "a path starts with `/`, has no `;` or control characters and is at most 1024 bytes",
            ));
        }
        if cookie.same_site == Some(SameSite::None) && !cookie.secure {
            return Err(err(
                ErrorCode::Invalid,
                &at("same_site"),
                "same_site none needs secure: browsers drop such a cookie otherwise",
            ));
        }
    }
    Ok(())
}

pub(crate) fn block_urls(field: &str, patterns: &[String]) -> Result<(), ContractError> {
    if patterns.len() > BLOCK_URLS_MAX {
        return Err(err(
            ErrorCode::OutOfRange,
            field,
            format!("{} patterns; the limit is {BLOCK_URLS_MAX}", patterns.len()),
        ));
    }
    for (i, pattern) in patterns.iter().enumerate() {
        let at = format!("{field}[{i}]");
        text(&at, pattern, BLOCK_URL_BYTES, "pattern")?;
        if pattern.chars().all(|c| c == '*') {
            return Err(err(
                ErrorCode::Invalid,
                &at,
                "a pattern of only `*` blocks everything; use block_resources",
            ));
        }
    }
    Ok(())
}

/// `en-US,en;q=0.9` and the like.
pub(crate) fn accept_language(field: &str, value: &str) -> Result<(), ContractError> {
    text(field, value, ACCEPT_LANGUAGE_BYTES, "Accept-Language")?;
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" -_,;=.*".contains(&b))
    {
        Ok(())
    } else {
        Err(err(
            ErrorCode::Invalid,
            field,
            "an Accept-Language list has language tags, `,`, `;q=` weights and nothing else",
        ))
    }
}

/// A BCP 47 tag such as `de-CH` (checked for shape; Chromium checks it is
/// known).
pub(crate) fn locale(field: &str, value: &str) -> Result<(), ContractError> {
    text(field, value, LOCALE_BYTES, "locale")?;
    let ok = value.split(['-', '_']).all(|part| {
        (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorCode::Invalid,
            field,
            format!("`{value}` is not a language tag such as `de-CH`"),
        ))
    }
}

/// An IANA time zone name such as `Europe/Zurich` (checked for shape;
/// Chromium checks it exists).
pub(crate) fn timezone(field: &str, value: &str) -> Result<(), ContractError> {
    text(field, value, TIMEZONE_BYTES, "time zone")?;
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
        && !value.starts_with('/')
        && !value.contains("//");
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorCode::Invalid,
            field,
            format!("`{value}` is not a time zone name such as `Europe/Zurich`"),
        ))
    }
}

pub(crate) fn thumbnail(field: &str, t: &Thumbnail) -> Result<(), ContractError> {
    if !(1..=crate::job::VIEWPORT_MAX).contains(&t.width) {
        return Err(err(
            ErrorCode::OutOfRange,
            &format!("{field}.width"),
            format!("{} is outside 1..={}", t.width, crate::job::VIEWPORT_MAX),
        ));
    }
    match t.height {
        Some(h) if !(1..=crate::job::FULL_PAGE_MAX_HEIGHT_LIMIT).contains(&h) => Err(err(
            ErrorCode::OutOfRange,
            &format!("{field}.height"),
            format!(
                "{h} is outside 1..={}",
                crate::job::FULL_PAGE_MAX_HEIGHT_LIMIT
            ),
        )),
        None if t.fit != Fit::Contain => Err(err(
            ErrorCode::Invalid,
            &format!("{field}.fit"),
            "cover and fill need a box: give a height",
        )),
        _ => Ok(()),
    }
}

pub(crate) fn pdf(field: &str, p: &PdfOptions) -> Result<(), ContractError> {
    if p.margin_mm > 100 {
        return Err(err(
            ErrorCode::OutOfRange,
            &format!("{field}.margin_mm"),
            format!("{} is outside 0..=100", p.margin_mm),
        ));
    }
    if !p.scale.is_finite() || !(0.1..=2.0).contains(&p.scale) {
        return Err(err(
            ErrorCode::OutOfRange,
            &format!("{field}.scale"),
            format!("{} is outside 0.1..=2", p.scale),
        ));
    }
    if let Some(ranges) = &p.page_ranges {
        let at = format!("{field}.page_ranges");
        text(&at, ranges, 256, "page ranges")?;
        if !ranges
            .bytes()
            .all(|b| b.is_ascii_digit() || b" ,-".contains(&b))
        {
            return Err(err(
                ErrorCode::Invalid,
                &at,
                "page ranges are numbers, `-` and `,` such as `1-3, 5`",
            ));
        }
    }
    Ok(())
}

pub(crate) fn geolocation(field: &str, g: &Geolocation) -> Result<(), ContractError> {
    let check = |name: &str, v: f64, min: f64, max: f64| {
        if v.is_finite() && (min..=max).contains(&v) {
            Ok(())
        } else {
            Err(err(
                ErrorCode::OutOfRange,
                &format!("{field}.{name}"),
                format!("{v} is outside {min}..={max}"),
            ))
        }
    };
    check("latitude", g.latitude, -90.0, 90.0)?;
    check("longitude", g.longitude, -180.0, 180.0)?;
    check("accuracy", g.accuracy, 0.0, 100_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_fill_in_the_browser_version_and_strings_pass_through() {
        assert!(user_agent("desktop", "131").contains("Chrome/131.0.0.0"));
        assert!(!user_agent("iphone", "131").contains(CHROME_MAJOR));
        assert_eq!(user_agent("MyBot/1.0", "131"), "MyBot/1.0");
        for d in DEVICES {
            assert!(
                USER_AGENTS.iter().any(|(name, _)| *name == d.user_agent),
                "{} names an unknown preset",
                d.name
            );
        }
    }

    #[test]
    fn header_rules() {
        let one = |name: &str, value: &str| {
            headers("h", &BTreeMap::from([(name.to_owned(), value.to_owned())]))
        };
        one("X-Test", "a b\tc").unwrap();
        one("Authorization", "Bearer x").unwrap();
        for bad in [
            "Host",
            "cookie",
            "Proxy-Authorization",
            "proxy-x",
            "Sec-Fetch-Site",
            "a b",
            "",
            "a:b",
        ] {
            assert!(one(bad, "v").is_err(), "{bad}");
        }
        assert!(one("X-Test", "a\r\nInjected: 1").is_err());
        let twice = BTreeMap::from([
            ("X-A".to_owned(), "1".to_owned()),
            ("x-a".to_owned(), "2".to_owned()),
        ]);
        assert!(headers("h", &twice).is_err());
    }

    #[test]
    fn cookie_rules() {
        let cookie = |name: &str, value: &str| Cookie {
            name: name.into(),
            value: value.into(),
            domain: None,
            path: None,
            secure: false,
            http_only: false,
            same_site: None,
        };
        cookies("c", &[cookie("session", "abc123")]).unwrap();
        assert!(cookies("c", &[cookie("a b", "x")]).is_err());
        assert!(cookies("c", &[cookie("a", "x; Domain=evil")]).is_err());
        let mut c = cookie("a", "b");
        c.same_site = Some(SameSite::None);
        assert!(cookies("c", &[c.clone()]).is_err());
        c.secure = true;
        cookies("c", &[c.clone()]).unwrap();
        c.path = Some("relative".into());
        assert!(cookies("c", &[c]).is_err());
        let mut c = cookie("a", "b");
        c.domain = Some("exa mple.com".into());
        assert!(cookies("c", &[c]).is_err());
    }

    #[test]
    fn locale_and_time_zone_shapes() {
        for good in ["en", "de-CH", "zh-Hant-TW", "en_US"] {
            locale("l", good).unwrap();
        }
        for bad in ["", "en US", "de-CH;", "a-toolongsubtag"] {
            assert!(locale("l", bad).is_err(), "{bad}");
        }
        for good in [
            "UTC",
            "Europe/Zurich",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+3",
        ] {
            timezone("t", good).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "Europe//Zurich",
            "Europe/Zurich\n",
            "a b",
        ] {
            assert!(timezone("t", bad).is_err(), "{bad}");
        }
        accept_language("a", "de-CH,de;q=0.9,en;q=0.5").unwrap();
        assert!(accept_language("a", "de\r\nX: 1").is_err());
    }
}
