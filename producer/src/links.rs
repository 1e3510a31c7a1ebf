//! Render links: `GET /v1/render?url=…&<options>&key=…&signature=…`, an
//! address a page can put in `<img src>` without an API key in it.
//!
//! The signature is the lower-case hex HMAC-SHA256, keyed by the link
//! key's secret (`URL2PNG_LINK_SECRETS=<key>:<secret>,…`), of the
//! *canonical query*: every parameter but `signature`, decoded, sorted by
//! name and then value, and encoded again as
//! `application/x-www-form-urlencoded` (`name=value` joined by `&`, space
//! as `+`). `expires` (Unix seconds), when present, is signed like the rest
//! and a link past it is refused. Option values are read as JSON when they
//! parse as JSON (`width=800`, `full_page=true`), as text otherwise
//! (`format=jpeg`).
//!
//! A link's result is cached (`cache_ttl`, by default
//! `URL2PNG_LINK_CACHE_TTL_SECONDS`) per link key, so a page viewed many
//! times renders once; a view waits up to `URL2PNG_LINK_WAIT_SECONDS` for
//! the render and is redirected (303) to the image, or told 503 with
//! `Retry-After` when it is not ready yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::api::{ApiError, AppState};
use crate::cache::hex;

/// The link keys and how links are answered.
#[derive(Debug, Default)]
pub struct LinkSettings {
    secrets: HashMap<String, Vec<u8>>,
    /// `cache_ttl` of a link that does not give one.
    pub cache_ttl: Duration,
    /// How long a view waits for its render.
    pub wait: Duration,
}

impl LinkSettings {
    /// From `URL2PNG_LINK_SECRETS` (`key:secret,…`).
    pub fn new(secrets: &str, cache_ttl: Duration, wait: Duration) -> Result<Self, String> {
        let mut map = HashMap::new();
        for entry in secrets.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((key, secret)) = entry.split_once(':') else {
                return Err("URL2PNG_LINK_SECRETS: give entries as <key>:<secret>".into());
            };
            let (key, secret) = (key.trim(), secret.trim());
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!(
                    "URL2PNG_LINK_SECRETS: key {key:?} must be letters, digits, `-`, `_` or `.`"
                ));
            }
            if secret.len() < 16 {
                return Err(format!(
                    "URL2PNG_LINK_SECRETS: the secret of key {key:?} is shorter than 16 characters"
                ));
            }
            if map
                .insert(key.to_owned(), secret.as_bytes().to_vec())
                .is_some()
            {
                return Err(format!("URL2PNG_LINK_SECRETS: key {key:?} is given twice"));
            }
        }
        Ok(Self {
            secrets: map,
            cache_ttl,
            wait,
        })
    }

    /// Whether render links are enabled (some key is configured).
    pub fn enabled(&self) -> bool {
        !self.secrets.is_empty()
    }
}

/// The canonical query of `pairs` (without `signature`).
pub fn canonical(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(name, _)| name != "signature")
        .collect();
    sorted.sort();
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in sorted {
        out.append_pair(name, value);
    }
    out.finish()
}

/// The signature of `pairs` with `secret`.
pub fn sign(secret: &[u8], pairs: &[(String, String)]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|e| unreachable!("HMAC takes a key of any length: {e}"));
    mac.update(canonical(pairs).as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// A signed link: `base` (the API's URL) and the query of `pairs` with
/// its signature.
pub fn signed_link(base: &str, secret: &[u8], pairs: &[(String, String)]) -> String {
    let signature = sign(secret, pairs);
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        query.append_pair(name, value);
    }
    query.append_pair("signature", &signature);
    format!(
        "{}/v1/render?{}",
        base.trim_end_matches('/'),
        query.finish()
    )
}

fn forbidden(code: &str, message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// The link's key, after checking its signature and expiry.
fn verify<'a>(settings: &LinkSettings, pairs: &'a [(String, String)]) -> Result<&'a str, ApiError> {
    let one = |name: &str| -> Result<Option<&'a str>, ApiError> {
        let mut values = pairs.iter().filter(|(n, _)| n == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(ApiError {
                field: Some(name.into()),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("`{name}` is given more than once"),
                )
            });
        }
        Ok(first)
    };
    let bad = || forbidden("invalid_signature", "the link's signature is not valid");
    let (Some(key), Some(signature)) = (one("key")?, one("signature")?) else {
        return Err(bad());
    };
    let secret = settings.secrets.get(key).ok_or_else(bad)?;
    let given = decode_hex(signature).ok_or_else(bad)?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|e| unreachable!("HMAC takes a key of any length: {e}"));
    mac.update(canonical(pairs).as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&given).map_err(|_| bad())?;
    if let Some(expires) = one("expires")? {
        let expires: u64 = expires.parse().map_err(|_| ApiError {
            field: Some("expires".into()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "`expires` is Unix time in whole seconds",
            )
        })?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if now >= expires {
            return Err(forbidden("link_expired", "the link has expired"));
        }
    }
    Ok(key)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A query parameter's value as a request field: JSON when it parses as
/// JSON, text otherwise.
fn field_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// Render a page from a signed link and redirect to its image.
#[utoipa::path(
    get,
    path = "/v1/render",
    tag = "screenshots",
    security(()),
    params(
        ("url" = String, Query, description = "The page to render"),
        ("key" = String, Query, description = "The link key (`URL2PNG_LINK_SECRETS`) that signed the link"),
        ("signature" = String, Query, description = "Hex HMAC-SHA256 of the canonical query (every other parameter, sorted, form-encoded) with the key's secret"),
        ("expires" = Option<u64>, Query, description = "Unix seconds after which the link is refused"),
        ("cache_ttl" = Option<u64>, Query, description = "Reuse a result this many seconds old (default URL2PNG_LINK_CACHE_TTL_SECONDS)"),
    ),
    responses(
        (status = 303, description = "Done; Location is a presigned GET URL of the image", headers(("Location" = String))),
        (status = 400, description = "A parameter is given twice or malformed", body = crate::api::ErrorBody),
        (status = 403, description = "Bad signature or unknown key (code `invalid_signature`), past `expires` (code `link_expired`), or a script the operator does not allow", body = crate::api::ErrorBody),
        (status = 404, description = "Render links are not enabled (no URL2PNG_LINK_SECRETS)", body = crate::api::ErrorBody),
        (status = 410, description = "The render failed; the code is the failure reason", body = crate::api::ErrorBody),
        (status = 422, description = "An option is out of bounds or the URL is refused", body = crate::api::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::api::ErrorBody),
        (status = 503, description = "Not rendered yet (code `pending`), or the queue or the bucket is unreachable; see Retry-After", body = crate::api::ErrorBody),
    )
)]
pub async fn render(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let settings = &state.links;
    if !settings.enabled() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "render links are not enabled on this service",
        ));
    }
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let key = verify(settings, &pairs)?.to_owned();
    let mut object = Map::new();
    for (name, value) in &pairs {
        if matches!(name.as_str(), "key" | "signature" | "expires") {
            continue;
        }
        if name == "force" {
            return Err(ApiError {
                field: Some("force".into()),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    "a link cannot force a render: every view would render again",
                )
            });
        }
        let value = if name == "url" {
            Value::String(value.clone())
        } else {
            field_value(value)
        };
        if object.insert(name.clone(), value).is_some() {
            return Err(ApiError {
                field: Some(name.clone()),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("`{name}` is given more than once"),
                )
            });
        }
    }
    if !object.contains_key("cache_ttl") {
        object.insert("cache_ttl".into(), settings.cache_ttl.as_secs().into());
    }
    let submission = crate::api::admit_link(&state, Value::Object(object))?;
    let handoff = crate::sender::Handoff::default();
    let scope = format!("link:{key}");
    let outcome = crate::api::place(&state, &scope, submission, &handoff).await?;
    let id = outcome.id();
    let found = match outcome {
        crate::api::Outcome::Hit(_, found) => Some(Arc::new(found)),
        _ => {
            handoff.commit();
            crate::wait::finish(&state, id, settings.wait).await
        }
    };
    let Some(found) = found else {
        return Err(ApiError {
            retry_after: Some(state.retry_after_secs),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "pending",
                "the image is being rendered; try again shortly",
            )
        });
    };
    let crate::api::Status::Done { key, .. } = &*found else {
        return crate::api::finished_image(&state, id, &found).await;
    };
    let url = crate::api::presign(&state, key).await?;
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&url) {
        headers.insert(header::LOCATION, v);
    }
    // Browsers may reuse the redirect for a while, never past the
    // presigned URL's life.
    let max_age = (state.presign_lifetime.as_secs() / 2).min(300);
    if let Ok(v) = HeaderValue::from_str(&format!("private, max-age={max_age}")) {
        headers.insert(header::CACHE_CONTROL, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn the_canonical_query_is_sorted_encoded_and_leaves_out_the_signature() {
        let p = pairs(&[
            ("url", "https://example.com/a b?x=1&y=2"),
            ("width", "800"),
            ("key", "site"),
            ("signature", "ffff"),
            ("full_page", "true"),
        ]);
        assert_eq!(
            canonical(&p),
            "full_page=true&key=site&url=https%3A%2F%2Fexample.com%2Fa+b%3Fx%3D1%26y%3D2&width=800"
        );
    }

    #[test]
    fn a_signed_link_verifies_and_any_change_breaks_it() {
        let settings = LinkSettings::new(
            "site:0123456789abcdef-secret",
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
        .unwrap();
        let p = pairs(&[
            ("url", "https://example.com/"),
            ("width", "800"),
            ("key", "site"),
        ]);
        let link = signed_link("http://api.test", b"0123456789abcdef-secret", &p);
        let query = link.split_once('?').unwrap().1;
        let parsed: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(verify(&settings, &parsed).unwrap(), "site");
        for (i, tampered) in [
            query.replace("width=800", "width=801"),
            query.replace("key=site", "key=other"),
            format!("{query}&full_page=true"),
            query.replace("signature=", "signature=00"),
        ]
        .iter()
        .enumerate()
        {
            let parsed: Vec<(String, String)> = url::form_urlencoded::parse(tampered.as_bytes())
                .into_owned()
                .collect();
            let e = verify(&settings, &parsed).unwrap_err();
            assert_eq!(e.code, "invalid_signature", "tampering {i}: {tampered}");
        }
    }

    #[test]
    fn link_secrets_are_checked() {
        let ok = |s| LinkSettings::new(s, Duration::ZERO, Duration::ZERO);
        assert!(!ok("").unwrap().enabled());
        assert!(
            ok("a:0123456789abcdef, b.2:0123456789abcdef")
                .unwrap()
                .enabled()
        );
        for bad in [
            "nokey",
            "a:short",
            "a b:0123456789abcdef",
            "a:0123456789abcdef,a:0123456789abcdef",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }
}
