//! A job's own rules for its page's requests: which sub-resources not to
//! load (`block_resources`, `block_urls`) and which requests carry the
//! job's extra headers (`headers`, to the page's host and `header_hosts`).
//!
//! The rules are applied where the tab's pump answers paused requests
//! (CDP `Fetch`), after the egress check: a request the policy refuses is
//! refused whatever the job says, and the rules never block the page's own
//! document.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};

use std::sync::Arc;

use adblock::Engine;
use chromiumoxide::cdp::browser_protocol::fetch::HeaderEntry;
use chromiumoxide::cdp::browser_protocol::network::{Request, ResourceType};
use url2png_core::job::{RenderOptions, ResourceKind};

/// The rules of one job.
#[derive(Default)]
pub struct RequestRules {
    kinds: HashSet<ResourceType>,
    /// Sub-documents (frames) are blocked.
    frames: bool,
    urls: Vec<String>,
    headers: Vec<(String, String)>,
    /// Exact host names, and suffixes (`.example.com`) from `*.` rules.
    hosts: Vec<HostRule>,
    /// Filter-list engines (ads, trackers) and the page they judge for.
    engines: Vec<Arc<Engine>>,
    page: String,
    /// Requests these rules refused.
    blocked: AtomicU32,
    /// The first URLs they refused, for the render report.
    blocked_urls: std::sync::Mutex<Vec<String>>,
}

impl std::fmt::Debug for RequestRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestRules")
            .field("kinds", &self.kinds)
            .field("urls", &self.urls)
            .field("engines", &self.engines.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Exact(String),
    /// A domain and its subdomains.
    Domain(String),
}

impl HostRule {
    fn parse(rule: &str) -> Self {
        let rule = rule.to_ascii_lowercase();
        match rule.strip_prefix("*.").or_else(|| rule.strip_prefix('.')) {
            Some(domain) => Self::Domain(domain.to_owned()),
            None => Self::Exact(rule),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Domain(d) => {
                host == d
                    || (host.ends_with(d.as_str()) && host[..host.len() - d.len()].ends_with('.'))
            }
        }
    }
}

/// What the pump does with a request the egress check let through.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Let it through as it is.
    Continue,
    /// Let it through with these headers instead of its own.
    WithHeaders(Vec<HeaderEntry>),
    /// Refuse it: the job asked not to load it.
    Block,
}

impl RequestRules {
    /// The rules `options` ask for on a page at `page_url`; `None` when
    /// they ask for none (the pump then pauses nothing for them).
    pub fn new(options: &RenderOptions, page_url: &str, engines: Vec<Arc<Engine>>) -> Option<Self> {
        if options.block_resources.is_empty()
            && options.block_urls.is_empty()
            && options.headers.is_empty()
            && engines.is_empty()
        {
            return None;
        }
        let mut rules = Self {
            engines,
            page: page_url.to_owned(),
            ..Self::default()
        };
        for kind in &options.block_resources {
            match kind {
                ResourceKind::Image => {
                    rules.kinds.insert(ResourceType::Image);
                }
                ResourceKind::Media => {
                    rules.kinds.insert(ResourceType::Media);
                }
                ResourceKind::Font => {
                    rules.kinds.insert(ResourceType::Font);
                }
                ResourceKind::Stylesheet => {
                    rules.kinds.insert(ResourceType::Stylesheet);
                }
                ResourceKind::Script => {
                    rules.kinds.insert(ResourceType::Script);
                }
                ResourceKind::Fetch => {
                    rules.kinds.extend([
                        ResourceType::Xhr,
                        ResourceType::Fetch,
                        ResourceType::EventSource,
                    ]);
                }
                ResourceKind::Frame => rules.frames = true,
            }
        }
        rules.urls = options.block_urls.clone();
        rules.headers = options
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(host) = url::Url::parse(page_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        {
            rules.hosts.push(HostRule::Exact(host));
        }
        rules
            .hosts
            .extend(options.header_hosts.iter().map(|h| HostRule::parse(h)));
        Some(rules)
    }

    /// How many requests the rules refused.
    pub fn blocked(&self) -> u32 {
        self.blocked.load(Ordering::Relaxed)
    }

    /// The first URLs the rules refused.
    pub fn blocked_urls(&self) -> Vec<String> {
        self.blocked_urls.lock().expect("blocked urls").clone()
    }

    /// What to do with `request`, of `kind`, that the egress check let
    /// through. `main_document` is the page's own document, which is never
    /// blocked.
    pub fn verdict(&self, request: &Request, kind: &ResourceType, main_document: bool) -> Verdict {
        if !main_document && self.blocks(&request.url, kind, &request.method) {
            self.blocked.fetch_add(1, Ordering::Relaxed);
            let mut urls = self.blocked_urls.lock().expect("blocked urls");
            if urls.len() < url2png_core::report::MAX_ENTRIES {
                let mut end = request.url.len().min(500);
                while !request.url.is_char_boundary(end) {
                    end -= 1;
                }
                urls.push(request.url[..end].to_owned());
            }
            return Verdict::Block;
        }
        if self.headers.is_empty() {
            return Verdict::Continue;
        }
        let own: Vec<(String, String)> = request
            .headers
            .inner()
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let is_extra = |name: &str| {
            self.headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        let host = url::Url::parse(&request.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        let to_host = host
            .as_deref()
            .is_some_and(|h| self.hosts.iter().any(|r| r.matches(h)));
        let entry = |(name, value): (String, String)| HeaderEntry { name, value };
        if to_host {
            let mut headers: Vec<HeaderEntry> = own
                .into_iter()
                .filter(|(k, _)| !is_extra(k))
                .map(entry)
                .collect();
            headers.extend(self.headers.iter().cloned().map(entry));
            Verdict::WithHeaders(headers)
        } else if own.iter().any(|(k, _)| is_extra(k)) {
            // A redirect to another host carries the headers of the hop
            // before it: take the job's off again.
            Verdict::WithHeaders(
                own.into_iter()
                    .filter(|(k, _)| !is_extra(k))
                    .map(entry)
                    .collect(),
            )
        } else {
            Verdict::Continue
        }
    }

    fn blocks(&self, url: &str, kind: &ResourceType, method: &str) -> bool {
        self.kinds.contains(kind)
            || (self.frames && *kind == ResourceType::Document)
            || self.urls.iter().any(|p| wildcard(p, url))
            || self
                .engines
                .iter()
                .any(|e| crate::blocking::blocks(e, url, &self.page, kind, method))
    }
}

/// Whether `text` matches `pattern`, where `*` is any run of characters
/// and `?` one character (CDP's `urlPattern` syntax). Linear in the text
/// for each star, so a hostile pattern cannot make it blow up.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use chromiumoxide::cdp::browser_protocol::network::{Headers, RequestReferrerPolicy};
    use std::collections::BTreeMap;

    fn request(url: &str, headers: serde_json::Value) -> Request {
        Request {
            url: url.into(),
            url_fragment: None,
            method: "GET".into(),
            headers: Headers::new(headers),
            post_data_entries: None,
            mixed_content_type: None,
            initial_priority: chromiumoxide::cdp::browser_protocol::network::ResourcePriority::High,
            referrer_policy: RequestReferrerPolicy::NoReferrer,
            is_link_preload: None,
            trust_token_params: None,
            is_same_site: None,
            is_ad_related: None,
            has_post_data: None,
        }
    }

    #[test]
    fn wildcards_match_like_cdp_and_stay_linear() {
        assert!(wildcard("*://ads.example/*", "https://ads.example/x.js"));
        assert!(wildcard("*.png", "http://a/b.png"));
        assert!(!wildcard("*.png", "http://a/b.png?x"));
        assert!(wildcard("http://?/", "http://a/"));
        assert!(!wildcard("http://?/", "http://ab/"));
        assert!(wildcard("*", ""));
        let hostile = "*a".repeat(200) + "b";
        assert!(!wildcard(&hostile, &"a".repeat(5000)));
    }

    #[test]
    fn headers_go_to_the_page_host_and_named_hosts_and_come_off_elsewhere() {
        let options = RenderOptions {
            headers: BTreeMap::from([("X-Tenant".into(), "acme".into())]),
            header_hosts: vec!["*.cdn.example".into()],
            ..RenderOptions::default()
        };
        let rules = RequestRules::new(&options, "https://Shop.example/a", Vec::new()).unwrap();
        let with = |v: Verdict| match v {
            Verdict::WithHeaders(h) => h.into_iter().map(|e| (e.name, e.value)).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let doc = ResourceType::Document;
        let own = serde_json::json!({"Accept": "*/*", "x-tenant": "old"});
        assert_eq!(
            with(rules.verdict(&request("https://shop.example/b", own.clone()), &doc, true)),
            [
                ("Accept".into(), "*/*".into()),
                ("X-Tenant".into(), "acme".into())
            ]
        );
        assert!(matches!(
            rules.verdict(
                &request("https://img.cdn.example/1.png", own.clone()),
                &doc,
                false
            ),
            Verdict::WithHeaders(_)
        ));
        assert_eq!(
            with(rules.verdict(&request("https://other.example/", own), &doc, false)),
            [("Accept".into(), "*/*".into())]
        );
        assert_eq!(
            rules.verdict(
                &request(
                    "https://notcdn.example/",
                    serde_json::json!({"Accept": "*/*"})
                ),
                &doc,
                false
            ),
            Verdict::Continue
        );
    }

    #[test]
    fn blocks_kinds_and_patterns_but_never_the_page_itself() {
        let options = RenderOptions {
            block_resources: vec![ResourceKind::Image, ResourceKind::Frame],
            block_urls: vec!["*tracker*".into()],
            ..RenderOptions::default()
        };
        let rules = RequestRules::new(&options, "http://127.0.0.1/", Vec::new()).unwrap();
        let none = serde_json::json!({});
        let v = |url: &str, kind: ResourceType, main: bool| {
            rules.verdict(&request(url, none.clone()), &kind, main)
        };
        assert_eq!(
            v("http://a/x.png", ResourceType::Image, false),
            Verdict::Block
        );
        assert_eq!(
            v("http://a/frame", ResourceType::Document, false),
            Verdict::Block
        );
        assert_eq!(
            v("http://a/tracker.js", ResourceType::Script, false),
            Verdict::Block
        );
        assert_eq!(
            v("http://a/tracker", ResourceType::Document, true),
            Verdict::Continue
        );
        assert_eq!(
            v("http://a/app.js", ResourceType::Script, false),
            Verdict::Continue
        );
        assert_eq!(rules.blocked(), 3);
        assert_eq!(rules.blocked_urls().len(), 3);
        assert!(RequestRules::new(&RenderOptions::default(), "http://a/", Vec::new()).is_none());
    }
}
