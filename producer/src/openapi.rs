//! `GET /openapi.json`: the API described as OpenAPI 3, generated from the
//! handlers and the types they read and write, so it cannot drift from them.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use serde_json::{Map, Value, json};
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "url2png fleet",
        description = "Screenshots of web pages, rendered by a fleet of headless Chromium workers. \
            Submit a URL, then poll its status or fetch its image.",
    ),
    paths(
        api::submit,
        api::submit_batch,
        api::status,
        api::image,
        api::report,
        crate::links::render
    ),
    modifiers(&BearerKeys),
    tags((name = "screenshots", description = "Submit jobs and read their results")),
)]
struct ApiDoc;

/// API keys, sent as `Authorization: Bearer <key>`, when the operator set
/// any (`URL2PNG_API_KEYS`).
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required only when the service was started with API keys.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document for a service with or without API keys, as JSON.
pub fn document(keys_required: bool) -> Value {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    if keys_required {
        doc.security = Some(vec![SecurityRequirement::new(
            "api_key",
            Vec::<String>::new(),
        )]);
    }
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.values_mut().for_each(merge_all_of);
    }
    doc
}

/// Merge an `allOf` of plain inline objects into one object.
///
/// A request is the URL plus the render options at the same level
/// (`#[serde(flatten)]`), and unknown fields are refused. As an `allOf`, the
/// options part would carry `additionalProperties: false` and so forbid
/// `url` to a validating client; as one object, it says what the API does.
fn merge_all_of(schema: &mut Value) {
    let Some(parts) = schema.get("allOf").and_then(Value::as_array) else {
        return;
    };
    if !parts
        .iter()
        .all(|p| p.get("type") == Some(&json!("object")) && p.get("properties").is_some())
    {
        return;
    }
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut closed = false;
    for part in parts {
        if let Some(p) = part["properties"].as_object() {
            properties.extend(p.clone());
        }
        if let Some(r) = part.get("required").and_then(Value::as_array) {
            required.extend(r.iter().cloned());
        }
        closed |= part.get("additionalProperties") == Some(&json!(false));
    }
    let mut merged = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        merged["required"] = Value::Array(required);
    }
    if closed {
        merged["additionalProperties"] = json!(false);
    }
    if let Some(description) = schema.get("description") {
        merged["description"] = description.clone();
    }
    *schema = merged;
}

/// A router serving `GET /openapi.json`, rendered once.
pub fn router<S: Clone + Send + Sync + 'static>(keys_required: bool) -> Router<S> {
    let body = document(keys_required).to_string();
    Router::new().route(
        "/openapi.json",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    )
}
