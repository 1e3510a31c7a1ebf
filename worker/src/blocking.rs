//! Blocking ads, trackers and cookie banners for jobs that ask.
//!
//! Ads and trackers: Brave's `adblock` engine over filter lists that come
//! from a package installed with the worker (Debian's
//! `webext-ublock-origin-chromium`: EasyList, EasyPrivacy and uBlock's own
//! lists), never from the network. Each engine is built once per worker,
//! on the first job that needs it, and shared by every tab. Requests are
//! checked where the tab's pump answers paused requests; element hiding
//! rules are added to the page as a stylesheet.
//!
//! Cookie banners and consent pop-ups: DuckDuckGo's `autoconsent` rules
//! (the npm package's standalone bundle), run in the page from its first
//! script on, which finds the consent platform and declines what it asks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use adblock::Engine;
use adblock::lists::{FilterSet, ParseOptions};
use chromiumoxide::cdp::browser_protocol::network::ResourceType;
use tokio::sync::OnceCell;

/// Where the lists and the consent script are, and what was built of them.
pub struct Blockers {
    lists: PathBuf,
    consent: PathBuf,
    ads: OnceCell<Arc<Engine>>,
    trackers: OnceCell<Arc<Engine>>,
    consent_script: OnceCell<Arc<String>>,
}

impl std::fmt::Debug for Blockers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blockers")
            .field("lists", &self.lists)
            .field("consent", &self.consent)
            .finish_non_exhaustive()
    }
}

/// A blocker the job asked for is not installed on this worker.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} is not installed on this worker: {detail} (see {setting})")]
pub struct Missing {
    pub what: &'static str,
    pub detail: String,
    pub setting: &'static str,
}

/// The lists of each engine, relative to the lists directory.
const AD_LISTS: &[&str] = &[
    "thirdparties/easylist/easylist.txt",
    "ublock/filters.min.txt",
    "ublock/quick-fixes.min.txt",
    "ublock/unbreak.min.txt",
];
const TRACKER_LISTS: &[&str] = &[
    "thirdparties/easylist/easyprivacy.txt",
    "ublock/privacy.min.txt",
    "ublock/unbreak.min.txt",
];

impl Blockers {
    pub fn new(lists: impl Into<PathBuf>, consent: impl Into<PathBuf>) -> Self {
        Self {
            lists: lists.into(),
            consent: consent.into(),
            ads: OnceCell::new(),
            trackers: OnceCell::new(),
            consent_script: OnceCell::new(),
        }
    }

    /// The ad engine, built on first use.
    pub async fn ads(&self) -> Result<Arc<Engine>, Missing> {
        self.ads
            .get_or_try_init(|| build(self.lists.clone(), AD_LISTS, "ad blocking"))
            .await
            .cloned()
    }

    /// The tracker engine, built on first use.
    pub async fn trackers(&self) -> Result<Arc<Engine>, Missing> {
        self.trackers
            .get_or_try_init(|| build(self.lists.clone(), TRACKER_LISTS, "tracker blocking"))
            .await
            .cloned()
    }

    /// The consent script, read on first use.
    pub async fn consent_script(&self) -> Result<Arc<String>, Missing> {
        self.consent_script
            .get_or_try_init(|| async {
                tokio::fs::read_to_string(&self.consent)
                    .await
                    .map(Arc::new)
                    .map_err(|e| Missing {
                        what: "cookie banner blocking",
                        detail: format!("{}: {e}", self.consent.display()),
                        setting: "URL2PNG_CONSENT_SCRIPT",
                    })
            })
            .await
            .cloned()
    }
}

async fn build(
    dir: PathBuf,
    lists: &'static [&'static str],
    what: &'static str,
) -> Result<Arc<Engine>, Missing> {
    let started = std::time::Instant::now();
    let engine = tokio::task::spawn_blocking(move || engine(&dir, lists))
        .await
        .map_err(|e| Missing {
            what,
            detail: e.to_string(),
            setting: "URL2PNG_FILTER_LISTS_DIR",
        })?
        .map_err(|detail| Missing {
            what,
            detail,
            setting: "URL2PNG_FILTER_LISTS_DIR",
        })?;
    tracing::info!(what, elapsed = ?started.elapsed(), "filter lists loaded");
    Ok(Arc::new(engine))
}

/// An engine of `lists` under `dir`. Every list must be there: a partial
/// engine would block less than the job was told.
pub fn engine(dir: &Path, lists: &[&str]) -> Result<Engine, String> {
    let mut set = FilterSet::new(false);
    for list in lists {
        let path = dir.join(list);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        set.add_filter_list(text, ParseOptions::default());
    }
    Ok(Engine::new_with_filter_set(set))
}

/// Whether `engine` blocks a request for `url` of `kind` made by the page
/// at `page`.
pub fn blocks(engine: &Engine, url: &str, page: &str, kind: &ResourceType, method: &str) -> bool {
    let kind = match kind {
        ResourceType::Document => "sub_frame",
        ResourceType::Stylesheet => "stylesheet",
        ResourceType::Image => "image",
        ResourceType::Media => "media",
        ResourceType::Font => "font",
        ResourceType::Script => "script",
        ResourceType::Xhr | ResourceType::Fetch | ResourceType::EventSource => "xmlhttprequest",
        ResourceType::WebSocket => "websocket",
        ResourceType::Ping | ResourceType::CspViolationReport => "ping",
        _ => "other",
    };
    adblock::request::Request::new(url, page, kind, &method.to_ascii_lowercase())
        .is_ok_and(|request| engine.check_network_request(&request).should_block())
}

/// The element hiding selectors of `engine` for the page at `url`, given
/// the classes and ids its document has.
pub fn hiding(engine: &Engine, url: &str, classes: &[String], ids: &[String]) -> Vec<String> {
    let resources = engine.url_cosmetic_resources(url);
    let mut selectors: Vec<String> = resources.hide_selectors.into_iter().collect();
    if !resources.generichide {
        selectors.extend(engine.hidden_class_id_selectors(classes, ids, &resources.exceptions));
    }
    selectors.sort_unstable();
    selectors.dedup();
    selectors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(dir: &Path) {
        std::fs::create_dir_all(dir.join("ublock")).unwrap();
        std::fs::write(
            dir.join("ublock/filters.min.txt"),
            "||ads.example^\n##.ad-slot\nshop.example##.promo\n@@||ads.example/allowed.js\n",
        )
        .unwrap();
    }

    #[test]
    fn requests_and_elements_are_blocked_as_the_lists_say() {
        let dir = std::env::temp_dir().join(format!("url2png-lists-{}", std::process::id()));
        lists(&dir);
        let engine = engine(&dir, &["ublock/filters.min.txt"]).unwrap();
        let page = "https://shop.example/";
        assert!(blocks(
            &engine,
            "https://ads.example/a.js",
            page,
            &ResourceType::Script,
            "GET"
        ));
        assert!(!blocks(
            &engine,
            "https://ads.example/allowed.js",
            page,
            &ResourceType::Script,
            "GET"
        ));
        assert!(!blocks(
            &engine,
            "https://shop.example/app.js",
            page,
            &ResourceType::Script,
            "GET"
        ));
        let hide = hiding(&engine, page, &["ad-slot".into(), "content".into()], &[]);
        assert_eq!(hide, [".ad-slot", ".promo"]);
        let elsewhere = hiding(&engine, "https://other.example/", &[], &[]);
        assert!(elsewhere.is_empty(), "{elsewhere:?}");
        let Err(missing) = super::engine(&dir, &["nope.txt"]) else {
            panic!("an engine without its list");
        };
        assert!(missing.contains("nope.txt"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
