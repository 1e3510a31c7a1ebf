//! What a job does inside its page once it has loaded: add its styles,
//! run its script, wait for its element or expression, scroll through it,
//! and find the box of the element to capture.
//!
//! Each step is one `Runtime.evaluate` of a fixed function applied to the
//! job's values written as JSON literals (a JSON string is a valid
//! JavaScript string literal), so a value is never spliced into code. The
//! job's own script and wait expression are the exception: they are code
//! by definition, which is why the operator must allow them.

use std::time::Duration;

use chromiumoxide::cdp::js_protocol::runtime::{EvaluateParams, EvaluateReturns};
use serde::Deserialize;
use url2png_core::job::SelectorState;

/// Add a stylesheet hiding `hide` and holding `css`. Resolves to `"ok"`, or
/// to `"invalid:<selector>"` for a selector that is not CSS.
const STYLE: &str = r#"(hide, css) => {
    for (const s of hide) {
        try { document.querySelector(s); } catch (e) { return "invalid:" + s; }
    }
    const style = document.createElement("style");
    style.setAttribute("data-url2png", "");
    style.textContent = hide.map((s) => s + " { display: none !important; }").join("\n")
        + "\n" + css;
    (document.head || document.documentElement).appendChild(style);
    return "ok";
}"#;

/// Resolve once the selector is in `state`: `"found"`, or `"invalid"`
/// when the selector is not CSS. Watches mutations, and polls for what
/// mutations do not tell (a box that appears by layout or animation).
const SELECTOR: &str = r#"(sel, state) => new Promise((resolve) => {
    const visible = (el) => {
        const r = el.getBoundingClientRect();
        return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== "hidden";
    };
    const holds = () => {
        let list;
        try { list = Array.from(document.querySelectorAll(sel)); } catch (e) { return "invalid"; }
        switch (state) {
            case "attached": return list.length > 0 ? "found" : null;
            case "detached": return list.length === 0 ? "found" : null;
            case "visible": return list.some(visible) ? "found" : null;
            default: return list.some(visible) ? null : "found";
        }
    };
    let obs = null, timer = null;
    const check = () => {
        const r = holds();
        if (r) { if (obs) obs.disconnect(); if (timer) clearInterval(timer); resolve(r); }
        return r;
    };
    if (check()) return;
    obs = new MutationObserver(check);
    obs.observe(document, { childList: true, subtree: true, attributes: true });
    timer = setInterval(check, 50);
})"#;

/// Scroll down `step` pixels at a time, pausing `pause` ms after each
/// step, until the bottom (or `limit` pixels), then back to the top.
/// Resolves to how far it scrolled.
const SCROLL: &str = r#"async (step, pause, limit) => {
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const bottom = () => Math.min(limit, Math.max(document.documentElement.scrollHeight,
        document.body ? document.body.scrollHeight : 0));
    let y = 0;
    while (y + window.innerHeight < bottom()) {
        y = Math.min(y + step, limit);
        window.scrollTo({ top: y, left: 0, behavior: "instant" });
        await sleep(pause);
    }
    window.scrollTo({ top: 0, left: 0, behavior: "instant" });
    await sleep(pause);
    return y;
}"#;

/// The document-relative box of the first element matching the selector,
/// scrolled into view, and the document's size: `{box, width, height}`;
/// `"missing"`, `"empty"` (no box) or `"invalid"` otherwise.
const ELEMENT: &str = r#"(sel) => {
    let el;
    try { el = document.querySelector(sel); } catch (e) { return "invalid"; }
    if (!el) return "missing";
    el.scrollIntoView({ block: "center", inline: "center", behavior: "instant" });
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) return "empty";
    const d = document.documentElement;
    return {
        x: r.left + window.scrollX, y: r.top + window.scrollY,
        width: r.width, height: r.height,
        doc_width: Math.max(d.scrollWidth, d.clientWidth),
        doc_height: Math.max(d.scrollHeight, d.clientHeight),
    };
}"#;

/// Every class and id name in the document (at most 20 000 of each).
const NAMES: &str = r#"(() => {
    const classes = new Set(), ids = new Set();
    for (const el of document.querySelectorAll("[class], [id]")) {
        if (el.id && ids.size < 20000) ids.add(el.id);
        for (const c of el.classList) if (classes.size < 20000) classes.add(c);
    }
    return { classes: [...classes], ids: [...ids] };
})()"#;

/// Add a stylesheet hiding each selector of a filter list: one rule each,
/// so a selector Chromium does not understand (lists carry some for other
/// engines) is skipped alone.
const HIDE_LISTED: &str = r#"(selectors) => {
    const style = document.createElement("style");
    style.setAttribute("data-url2png-lists", "");
    (document.head || document.documentElement).appendChild(style);
    let added = 0;
    for (const s of selectors) {
        try { style.sheet.insertRule(s + " { display: none !important; }", style.sheet.cssRules.length); added++; }
        catch (e) {}
    }
    return added;
}"#;

/// Where the consent rules are, by their own lifecycle: `"done"` once
/// they finished (declined, failed, or found nothing), `"busy"` while they
/// work on a pop-up they found, `"searching"` before, `"absent"` when
/// they are not in the page.
const CONSENT: &str = r#"(() => {
    const s = window.autoconsentStandalone;
    if (!s || !s.instance || !s.instance.state) return "absent";
    const l = s.instance.state.lifecycle;
    if (["nothingDetected", "optOutSucceeded", "optOutFailed", "optInSucceeded", "optInFailed", "done"].includes(l)) return "done";
    if (["cmpDetected", "openPopupDetected", "runningOptOut", "runningOptIn"].includes(l)) return "busy";
    return "searching";
})()"#;

/// Counts `console.error` calls and uncaught errors in every document of
/// the page, behind a symbol the page does not know.
pub const COUNT_ERRORS: &str = r#"(() => {
  const key = Symbol.for("url2png.errors");
  if (Object.prototype.hasOwnProperty.call(window, key)) return;
  let count = 0;
  Object.defineProperty(window, key, { get: () => count });
  const error = console.error;
  console.error = function (...args) { count++; return error.apply(this, args); };
  window.addEventListener("error", (e) => { if (e instanceof ErrorEvent) count++; });
  window.addEventListener("unhandledrejection", () => { count++; });
})()"#;

/// What `COUNT_ERRORS` counted in the page's main document.
pub fn errors_counted() -> Result<EvaluateParams, String> {
    params(
        r#"window[Symbol.for("url2png.errors")] ?? null"#.to_owned(),
        false,
    )
}

/// `NAMES`.
pub fn class_and_id_names() -> Result<EvaluateParams, String> {
    params(NAMES.to_owned(), false)
}

/// `HIDE_LISTED` applied to a filter list's selectors.
pub fn hide_listed(selectors: &[String]) -> Result<EvaluateParams, String> {
    params(format!("({HIDE_LISTED})({})", literal(selectors)), false)
}

/// `CONSENT`.
pub fn consent_state() -> Result<EvaluateParams, String> {
    params(CONSENT.to_owned(), false)
}

fn literal<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn params(expression: String, await_promise: bool) -> Result<EvaluateParams, String> {
    EvaluateParams::builder()
        .expression(expression)
        .await_promise(await_promise)
        .return_by_value(true)
        .build()
}

/// `STYLE` applied to the job's values.
pub fn style(hide: &[String], css: &str) -> Result<EvaluateParams, String> {
    params(
        format!("({STYLE})({}, {})", literal(hide), literal(css)),
        false,
    )
}

/// `SELECTOR` applied to the job's values.
pub fn selector(selector: &str, state: SelectorState) -> Result<EvaluateParams, String> {
    let state = match state {
        SelectorState::Attached => "attached",
        SelectorState::Visible => "visible",
        SelectorState::Hidden => "hidden",
        SelectorState::Detached => "detached",
    };
    params(
        format!("({SELECTOR})({}, {})", literal(selector), literal(state)),
        true,
    )
}

/// `SCROLL` applied to the job's values.
pub fn scroll(step: u32, pause: Duration, limit: u32) -> Result<EvaluateParams, String> {
    params(
        format!("({SCROLL})({step}, {}, {limit})", pause.as_millis()),
        true,
    )
}

/// `ELEMENT` applied to the job's selector.
pub fn element(selector: &str) -> Result<EvaluateParams, String> {
    params(format!("({ELEMENT})({})", literal(selector)), false)
}

/// The job's wait expression, as it wrote it; a promise it gives is
/// awaited.
pub fn expression(source: &str) -> Result<EvaluateParams, String> {
    params(source.to_owned(), true)
}

/// The job's script, as the body of an async function (so it may `await`
/// and `return`), awaited.
pub fn script(source: &str) -> Result<EvaluateParams, String> {
    params(format!("(async () => {{\n{source}\n}})()"), true)
}

/// What an element's box answer says.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct ElementBox {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub doc_width: f64,
    pub doc_height: f64,
}

/// What a finished evaluation gave: its value, or the exception it threw.
#[derive(Debug)]
pub enum Evaluated {
    Value(serde_json::Value),
    /// The class (`SyntaxError`, `TypeError`…) and the description.
    Threw {
        class: String,
        text: String,
    },
}

impl From<EvaluateReturns> for Evaluated {
    fn from(returns: EvaluateReturns) -> Self {
        match returns.exception_details {
            Some(details) => {
                let class = details
                    .exception
                    .as_ref()
                    .and_then(|e| e.class_name.clone())
                    .unwrap_or_default();
                let text = details
                    .exception
                    .and_then(|e| e.description)
                    .unwrap_or(details.text);
                Self::Threw { class, text }
            }
            None => Self::Value(returns.result.value.unwrap_or(serde_json::Value::Null)),
        }
    }
}

/// JavaScript truthiness of a value returned by value.
pub fn truthy(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        serde_json::Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// The clip of an element's box grown by `padding`, in whole CSS pixels,
/// kept inside the document: `(x, y, width, height)`.
pub fn padded(b: &ElementBox, padding: u32) -> (f64, f64, f64, f64) {
    let pad = f64::from(padding);
    let left = (b.x - pad).floor().max(0.0);
    let top = (b.y - pad).floor().max(0.0);
    let right = (b.x + b.width + pad)
        .ceil()
        .min(b.doc_width.max(b.x + b.width).ceil());
    let bottom = (b.y + b.height + pad)
        .ceil()
        .min(b.doc_height.max(b.y + b.height).ceil());
    (left, top, (right - left).max(1.0), (bottom - top).max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_as_literals_not_code() {
        let p = style(&["a\"); alert(1); (\"".into()], "</style><script>").unwrap();
        assert!(p.expression.contains(r#"["a\"); alert(1); (\""]"#));
        let p = selector("x'`${y}`", SelectorState::Hidden).unwrap();
        assert!(p.expression.ends_with(r#"("x'`${y}`", "hidden")"#));
    }

    #[test]
    fn padding_grows_the_box_within_the_document() {
        let b = ElementBox {
            x: 10.4,
            y: 20.6,
            width: 100.2,
            height: 50.0,
            doc_width: 200.0,
            doc_height: 1000.0,
        };
        assert_eq!(padded(&b, 0), (10.0, 20.0, 101.0, 51.0));
        assert_eq!(padded(&b, 20), (0.0, 0.0, 131.0, 91.0));
        assert_eq!(
            padded(&b, 500),
            (0.0, 0.0, 200.0, 571.0),
            "cut at the right edge"
        );
    }

    #[test]
    fn truthiness_is_javascripts() {
        for (v, t) in [
            (serde_json::json!(null), false),
            (serde_json::json!(0), false),
            (serde_json::json!(""), false),
            (serde_json::json!(false), false),
            (serde_json::json!(1), true),
            (serde_json::json!("0"), true),
            (serde_json::json!([]), true),
            (serde_json::json!({}), true),
        ] {
            assert_eq!(truthy(&v), t, "{v}");
        }
    }
}
