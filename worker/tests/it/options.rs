//! The render options beyond viewport and format, each shown by its effect
//! on a fixture page in real Chromium: what the image holds, what the page
//! sent, or what the failure record says.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use url2png_core::job::{
    Clip, ColorScheme, Cookie, Fit, Geolocation, ImageFormat, MediaType, Paper, PdfOptions,
    RenderOptions, ResourceKind, SelectorState, Thumbnail, WaitFor,
};
use url2png_core::{FailureReason, FailureRecord, JobMessage, KeyLayout};
use url2png_testkit::{Fixtures, Page, TestAws};

use crate::support::*;

const RED: [u8; 4] = [255, 0, 0, 255];
const WHITE: [u8; 4] = [255, 255, 255, 255];
const BLUE: [u8; 4] = [0, 0, 255, 255];

/// Every job's image or failure record, once all are written.
struct Results<'a> {
    aws: &'a TestAws,
    layout: KeyLayout,
}

impl<'a> Results<'a> {
    async fn wait(aws: &'a TestAws, jobs: &[&JobMessage]) -> Self {
        wait_for("every job finished", Duration::from_secs(180), || async {
            (keys(aws).await.len() >= jobs.len()).then_some(())
        })
        .await;
        Self {
            aws,
            layout: KeyLayout::default(),
        }
    }

    async fn image(&self, job: &JobMessage) -> image::RgbaImage {
        let key = self.layout.image(job.id, job.options.format);
        let bytes = get(self.aws, &key).await;
        image::load_from_memory(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", job.url))
            .to_rgba8()
    }

    async fn metadata(&self, job: &JobMessage) -> HashMap<String, String> {
        self.aws
            .clients
            .s3
            .head_object()
            .bucket(&self.aws.bucket)
            .key(self.layout.image(job.id, job.options.format))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: no image: {e}", job.url))
            .metadata
            .unwrap_or_default()
    }

    async fn failure(&self, job: &JobMessage) -> FailureRecord {
        FailureRecord::from_json(&get(self.aws, &self.layout.failure(job.id)).await)
            .unwrap_or_else(|e| panic!("{}: no failure record: {e}", job.url))
    }
}

fn px(image: &image::RgbaImage, x: u32, y: u32) -> [u8; 4] {
    image.get_pixel(x, y).0
}

/// A page that turns red when `condition` (JavaScript) holds once
/// `ready` (a promise expression) resolves, and then adds `#done`.
fn probe(ready: &str, condition: &str) -> Page {
    Page::html(format!(
        "<!doctype html><html><body style=\"margin:0;background:#fff\"><script>\
         Promise.resolve({ready}).then(() => {{ if ({condition}) document.body.style.background = '#f00'; \
         const d = document.createElement('div'); d.id = 'done'; document.body.appendChild(d); }});\
         </script></body></html>"
    ))
}

fn small(options: RenderOptions) -> RenderOptions {
    RenderOptions {
        width: 100,
        height: 100,
        ..options
    }
}

fn waits_for_done(options: RenderOptions) -> RenderOptions {
    small(RenderOptions {
        wait_for_selector: Some("#done".into()),
        wait_for_selector_state: SelectorState::Attached,
        ..options
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_an_element_a_clip_a_transparent_background_lazy_content_and_thumbnails() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let worker = start_worker(&aws, &["--browsers", "1", "--pages-per-browser", "4"]).await;
    // A blue card far below the first screen, 50 px from the left.
    fixtures.page(
        "/card",
        Page::html(
            "<!doctype html><body style=\"margin:0;background:#fff\">\
             <div style=\"height:1500px\"></div>\
             <div id=\"card\" style=\"width:200px;height:100px;margin-left:50px;background:#00f\"></div>\
             <div style=\"height:500px\"></div></body>",
        ),
    );
    fixtures.page(
        "/bare",
        Page::html("<!doctype html><body><p style=\"color:#000\">text</p></body>"),
    );
    // Red only once the block at 2500 px has been scrolled into view.
    fixtures.page(
        "/lazy",
        Page::html(
            "<!doctype html><body style=\"margin:0;background:#fff\">\
             <div style=\"height:3000px\"></div>\
             <div id=\"s\" style=\"position:absolute;top:2500px;left:0;width:100%;height:100px\"></div>\
             <script>new IntersectionObserver((es) => { if (es.some((e) => e.isIntersecting)) \
             document.getElementById('s').style.background = '#f00'; }).observe(document.getElementById('s'));\
             </script></body>",
        ),
    );

    let job = |path: &str, options: RenderOptions| JobMessage::new(fixtures.url(path), options);
    let element = job(
        "/card",
        RenderOptions {
            selector: Some("#card".into()),
            selector_padding: 10,
            ..RenderOptions::default()
        },
    );
    let element_scaled = job(
        "/card",
        RenderOptions {
            selector: Some("#card".into()),
            device_scale_factor: 2.0,
            ..RenderOptions::default()
        },
    );
    let missing = job(
        "/card",
        RenderOptions {
            selector: Some("#nothing-here".into()),
            ..RenderOptions::default()
        },
    );
    let clip = job(
        "/card",
        RenderOptions {
            clip: Some(Clip {
                x: 60,
                y: 1510,
                width: 100,
                height: 50,
            }),
            ..RenderOptions::default()
        },
    );
    let transparent = job(
        "/bare",
        small(RenderOptions {
            omit_background: true,
            ..RenderOptions::default()
        }),
    );
    let opaque = job("/bare", small(RenderOptions::default()));
    let transparent_webp = job(
        "/bare",
        small(RenderOptions {
            omit_background: true,
            format: ImageFormat::Webp,
            quality: Some(100),
            ..RenderOptions::default()
        }),
    );
    let lazy = |scroll: bool| {
        job(
            "/lazy",
            RenderOptions {
                width: 200,
                height: 600,
                full_page: true,
                scroll_page: scroll,
                scroll_step: scroll.then_some(500),
                scroll_delay_ms: 50,
                ..RenderOptions::default()
            },
        )
    };
    let (scrolled, unscrolled) = (lazy(true), lazy(false));
    let thumb = job(
        "/card",
        RenderOptions {
            width: 400,
            height: 300,
            thumbnail: Some(Thumbnail {
                width: 100,
                height: None,
                fit: Fit::Contain,
            }),
            ..RenderOptions::default()
        },
    );
    let thumb_cover = job(
        "/card",
        RenderOptions {
            selector: Some("#card".into()),
            format: ImageFormat::Jpeg,
            thumbnail: Some(Thumbnail {
                width: 50,
                height: Some(50),
                fit: Fit::Cover,
            }),
            ..RenderOptions::default()
        },
    );
    let all = [
        &thumb,
        &thumb_cover,
        &element,
        &element_scaled,
        &missing,
        &clip,
        &transparent,
        &opaque,
        &transparent_webp,
        &scrolled,
        &unscrolled,
    ];
    send_jobs(&aws, &all.map(Clone::clone)).await;
    let results = Results::wait(&aws, &all).await;

    let img = results.image(&element).await;
    assert_eq!(img.dimensions(), (220, 120), "the card and 10 px around it");
    assert_eq!(px(&img, 3, 3), WHITE, "padding");
    assert_eq!(px(&img, 110, 60), BLUE, "the card");
    assert_eq!(px(&img, 15, 15), BLUE, "the card starts after the padding");
    let meta = results.metadata(&element).await;
    assert_eq!(
        (meta["width"].as_str(), meta["height"].as_str()),
        ("220", "120"),
        "the status tells the image's own size"
    );
    let img = results.image(&element_scaled).await;
    assert_eq!(img.dimensions(), (400, 200));
    assert_eq!(px(&img, 1, 1), BLUE);
    assert_eq!(px(&img, 398, 198), BLUE);

    let record = results.failure(&missing).await;
    assert_eq!(record.reason, FailureReason::ElementNotFound);
    assert!(
        record.message.contains("#nothing-here"),
        "{}",
        record.message
    );

    let img = results.image(&clip).await;
    assert_eq!(img.dimensions(), (100, 50));
    assert!(
        img.pixels().all(|p| p.0 == BLUE),
        "a clip below the first screen holds only the card"
    );

    assert_eq!(px(&results.image(&transparent).await, 90, 90)[3], 0);
    assert_eq!(px(&results.image(&opaque).await, 90, 90), WHITE);
    assert_eq!(px(&results.image(&transparent_webp).await, 90, 90)[3], 0);

    let img = results.image(&thumb).await;
    assert_eq!(
        img.dimensions(),
        (100, 75),
        "resized to the width, proportions kept"
    );
    assert_eq!(results.metadata(&thumb).await["width"], "100");
    let img = results.image(&thumb_cover).await;
    assert_eq!(img.dimensions(), (50, 50));
    let [r, g, b, _] = px(&img, 25, 25);
    assert!(
        b > 200 && r < 40 && g < 40,
        "the card, cut to the box: {:?}",
        (r, g, b)
    );

    let img = results.image(&scrolled).await;
    assert_eq!(img.dimensions(), (200, 3000));
    assert_eq!(px(&img, 100, 2550), RED, "scrolled into view, it loaded");
    assert_eq!(
        px(&img, 100, 10),
        WHITE,
        "and the capture starts at the top"
    );
    let img = results.image(&unscrolled).await;
    assert_eq!(
        px(&img, 100, 2550),
        WHITE,
        "without the pre-scroll it never loads"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_selector_states_an_expression_and_a_quiet_period_of_its_length() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let worker = start_worker(
        &aws,
        &[
            "--browsers",
            "1",
            "--pages-per-browser",
            "4",
            "--allow-scripts",
            "true",
        ],
    )
    .await;
    // `#x` is in the page from the start but shown (and the page turned
    // red) only after 600 ms.
    fixtures.page(
        "/appears",
        Page::html(
            "<!doctype html><body style=\"margin:0;background:#fff\">\
             <div id=\"x\" style=\"display:none;width:10px;height:10px\"></div>\
             <script>setTimeout(() => { document.body.style.background = '#f00'; \
             document.getElementById('x').style.display = 'block'; }, 600);</script></body>",
        ),
    );
    // A white overlay over a red page, removed after 600 ms (or hidden).
    let overlay = |how: &str| {
        Page::html(format!(
            "<!doctype html><body style=\"margin:0;background:#f00\">\
             <div id=\"spinner\" style=\"position:fixed;inset:0;background:#fff\"></div>\
             <script>setTimeout(() => {{ {how} }}, 600);</script></body>"
        ))
    };
    fixtures.page(
        "/removed",
        overlay("document.getElementById('spinner').remove();"),
    );
    fixtures.page(
        "/hidden",
        overlay("document.getElementById('spinner').style.visibility = 'hidden';"),
    );
    fixtures.page(
        "/flag",
        Page::html(
            "<!doctype html><body style=\"margin:0;background:#fff\">\
             <script>setTimeout(() => { document.body.style.background = '#f00'; \
             window.app = { ready: true }; }, 600);</script></body>",
        ),
    );
    // One request, 700 ms of quiet, then a second (800 ms long) after which
    // the page turns red.
    fixtures.page(
        "/gap",
        Page::html(
            "<!doctype html><body style=\"margin:0;background:#fff\"><script>\
             fetch('/slow-xhr?delay_ms=50').then((r) => r.text()).then(() => setTimeout(() => \
             fetch('/slow-xhr?delay_ms=800').then((r) => r.text()).then(() => { \
             document.body.style.background = '#f00'; }), 700));</script></body>",
        ),
    );

    let job =
        |path: &str, options: RenderOptions| JobMessage::new(fixtures.url(path), small(options));
    let selector = |path: &str, selector: &str, state: SelectorState| {
        job(
            path,
            RenderOptions {
                wait_for_selector: Some(selector.into()),
                wait_for_selector_state: state,
                ..RenderOptions::default()
            },
        )
    };
    let visible = selector("/appears", "#x", SelectorState::Visible);
    let attached = selector("/appears", "#x", SelectorState::Attached);
    let detached = selector("/removed", "#spinner", SelectorState::Detached);
    let hidden = selector("/hidden", "#spinner", SelectorState::Hidden);
    let never = job(
        "/appears",
        RenderOptions {
            wait_for_selector: Some("#never".into()),
            timeout_ms: 2_000,
            ..RenderOptions::default()
        },
    );
    let expression = job(
        "/flag",
        RenderOptions {
            // Throws until `app` exists: that counts as "not yet".
            wait_for_expression: Some("window.app.ready === true".into()),
            ..RenderOptions::default()
        },
    );
    let bad_expression = job(
        "/flag",
        RenderOptions {
            wait_for_expression: Some("window.app.ready ===".into()),
            ..RenderOptions::default()
        },
    );
    let quiet = |ms: u32| {
        job(
            "/gap",
            RenderOptions {
                wait_for: WaitFor::NetworkIdle,
                network_idle_ms: ms,
                ..RenderOptions::default()
            },
        )
    };
    let (short_quiet, long_quiet) = (quiet(300), quiet(1500));
    let all = [
        &visible,
        &attached,
        &detached,
        &hidden,
        &never,
        &expression,
        &bad_expression,
        &short_quiet,
        &long_quiet,
    ];
    send_jobs(&aws, &all.map(Clone::clone)).await;
    let results = Results::wait(&aws, &all).await;

    let corner = |img: image::RgbaImage| px(&img, 5, 5);
    assert_eq!(
        corner(results.image(&visible).await),
        RED,
        "waited until shown"
    );
    assert_eq!(
        corner(results.image(&attached).await),
        WHITE,
        "attached holds at once"
    );
    assert_eq!(
        corner(results.image(&detached).await),
        RED,
        "waited until removed"
    );
    assert_eq!(
        corner(results.image(&hidden).await),
        RED,
        "waited until hidden"
    );
    let record = results.failure(&never).await;
    assert_eq!(record.reason, FailureReason::WaitFailed);
    assert!(record.message.contains("#never"), "{}", record.message);
    assert_eq!(corner(results.image(&expression).await), RED);
    let record = results.failure(&bad_expression).await;
    assert_eq!(record.reason, FailureReason::ScriptError);
    assert!(
        record
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("SyntaxError"),
        "{record:?}"
    );
    assert_eq!(
        corner(results.image(&short_quiet).await),
        WHITE,
        "300 ms of quiet came before the second request"
    );
    assert_eq!(
        corner(results.image(&long_quiet).await),
        RED,
        "1500 ms of quiet came only after it"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hides_styles_blocks_and_runs_scripts_as_the_job_asks_within_the_egress_policy() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    // Refused by the policy (only 127.0.0.1 is allowed): must see nothing.
    let refused = Fixtures::start_on("127.0.0.2".parse().unwrap()).await;
    let worker = start_worker(
        &aws,
        &[
            "--browsers",
            "1",
            "--pages-per-browser",
            "4",
            "--allow-scripts",
            "true",
        ],
    )
    .await;
    fixtures.page(
        "/banner",
        Page::html(
            "<!doctype html><body style=\"margin:0;background:#f00\">\
             <div class=\"cookie-banner\" style=\"position:fixed;inset:0;background:#fff\"></div>\
             </body>",
        ),
    );
    fixtures.page(
        "/plain-white",
        Page::html("<!doctype html><body style=\"margin:0;background:#fff\"></body>"),
    );
    let subresources = |tag: &str| {
        Page::html(format!(
            "<!doctype html><body style=\"margin:0\">\
             <img src=\"/{tag}/picture.png\"><script src=\"/{tag}/tracker.js\"></script>\
             <script src=\"/{tag}/app.js\"></script></body>"
        ))
    };
    for tag in ["blocked", "loaded"] {
        fixtures.page(format!("/{tag}"), subresources(tag));
        fixtures.page(
            format!("/{tag}/picture.png"),
            Page::bytes("image/png", Vec::new()),
        );
        fixtures.page(
            format!("/{tag}/tracker.js"),
            Page::bytes("text/javascript", "//"),
        );
        fixtures.page(
            format!("/{tag}/app.js"),
            Page::bytes("text/javascript", "//"),
        );
    }

    let job =
        |path: &str, options: RenderOptions| JobMessage::new(fixtures.url(path), small(options));
    let hide = job(
        "/banner",
        RenderOptions {
            hide_selectors: vec!["div.cookie-banner".into()],
            ..RenderOptions::default()
        },
    );
    let bad_hide = job(
        "/banner",
        RenderOptions {
            hide_selectors: vec!["div[".into()],
            ..RenderOptions::default()
        },
    );
    let css = job(
        "/plain-white",
        RenderOptions {
            css: Some(format!(
                "@import url(\"{}\");\nbody {{ background: #00f !important; }}",
                refused.url("/import.css")
            )),
            ..RenderOptions::default()
        },
    );
    let blocked = job(
        "/blocked",
        RenderOptions {
            block_resources: vec![ResourceKind::Image],
            block_urls: vec!["*/tracker.js".into()],
            ..RenderOptions::default()
        },
    );
    let loaded = job("/loaded", RenderOptions::default());
    let script = job(
        "/plain-white",
        RenderOptions {
            script: Some(
                "await new Promise((r) => setTimeout(r, 100));\n\
                 document.body.style.background = '#f00';"
                    .into(),
            ),
            ..RenderOptions::default()
        },
    );
    let throwing = job(
        "/plain-white",
        RenderOptions {
            script: Some("throw new Error('the job script broke')".into()),
            ..RenderOptions::default()
        },
    );
    let all = [
        &hide, &bad_hide, &css, &blocked, &loaded, &script, &throwing,
    ];
    send_jobs(&aws, &all.map(Clone::clone)).await;
    let results = Results::wait(&aws, &all).await;

    assert_eq!(
        px(&results.image(&hide).await, 50, 50),
        RED,
        "banner hidden"
    );
    let record = results.failure(&bad_hide).await;
    assert_eq!(record.reason, FailureReason::InvalidMessage);
    assert!(record.message.contains("div["), "{}", record.message);
    assert_eq!(
        px(&results.image(&css).await, 50, 50),
        BLUE,
        "stylesheet applied"
    );
    assert!(
        refused.hits().is_empty(),
        "the stylesheet's @import to a refused address never arrived: {:?}",
        refused.hits()
    );
    let egress_refusals = counter(&worker.metrics.egress_requests, &["job", "blocked"])
        + counter(
            &worker.metrics.egress_requests,
            &["job", "blocked_in_browser"],
        );
    assert!(egress_refusals >= 1, "the @import was refused by the guard");

    assert_eq!(fixtures.hits_on("/blocked/picture.png"), 0);
    assert_eq!(fixtures.hits_on("/blocked/tracker.js"), 0);
    assert_eq!(
        fixtures.hits_on("/blocked/app.js"),
        1,
        "only what was named"
    );
    assert_eq!(
        results
            .metadata(&blocked)
            .await
            .get("blocked-requests")
            .map(String::as_str),
        Some("2")
    );
    for path in [
        "/loaded/picture.png",
        "/loaded/tracker.js",
        "/loaded/app.js",
    ] {
        assert_eq!(fixtures.hits_on(path), 1, "{path} loads without the rules");
    }
    assert_eq!(px(&results.image(&script).await, 50, 50), RED, "script ran");
    let record = results.failure(&throwing).await;
    assert_eq!(record.reason, FailureReason::ScriptError);
    assert!(
        record
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("the job script broke"),
        "{record:?}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_scripts_allowed_fails_a_job_with_one_for_good() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let worker = start_worker(&aws, &[]).await;
    fixtures.page("/p", Page::html("<p>x</p>"));
    let job = JobMessage::new(
        fixtures.url("/p"),
        RenderOptions {
            script: Some("document.title = 'x'".into()),
            ..RenderOptions::default()
        },
    );
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    let results = Results::wait(&aws, &[&job]).await;
    let record = results.failure(&job).await;
    assert_eq!(record.reason, FailureReason::InvalidMessage);
    assert!(
        record.message.contains("URL2PNG_ALLOW_SCRIPTS"),
        "{}",
        record.message
    );
    assert_eq!(fixtures.hits_on("/p"), 0, "the page was never loaded");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulates_devices_agents_languages_zones_places_media_and_sends_headers_and_cookies_only_where_asked()
 {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    // A second allowed host, for what must not leak to other sites.
    let other = Fixtures::start_on("127.0.0.3".parse().unwrap()).await;
    let mut cfg = config(&aws, &["--browsers", "1", "--pages-per-browser", "4"]);
    cfg.policy.allow = "127.0.0.1/32,127.0.0.3/32".into();
    let worker = start_worker_with(cfg, &aws).await;

    fixtures.page(
        "/touch",
        probe(
            "null",
            "navigator.maxTouchPoints > 0 && /iPhone/.test(navigator.userAgent)",
        ),
    );
    fixtures.page(
        "/languages",
        probe("null", "navigator.languages[0] === 'de-CH'"),
    );
    fixtures.page(
        "/zone",
        probe(
            "null",
            "Intl.DateTimeFormat().resolvedOptions().timeZone === 'Asia/Tokyo' \
             && new Date(0).getHours() === 9",
        ),
    );
    fixtures.page(
        "/locale",
        probe(
            "null",
            "Intl.DateTimeFormat().resolvedOptions().locale === 'fr-CA'",
        ),
    );
    fixtures.page(
        "/place",
        probe(
            "new Promise((ok) => navigator.geolocation.getCurrentPosition((p) => { window.p = p.coords; ok(); }, () => ok()))",
            "window.p && Math.abs(window.p.latitude - 35.68) < 0.001 && Math.abs(window.p.longitude - 139.76) < 0.001",
        ),
    );
    let media = |query: &str| {
        Page::html(format!(
            "<!doctype html><style>body {{ margin: 0; background: #fff }} \
             @media {query} {{ body {{ background: #f00 }} }}</style><body></body>"
        ))
    };
    fixtures.page("/dark", media("(prefers-color-scheme: dark)"));
    fixtures.page("/still", media("(prefers-reduced-motion: reduce)"));
    fixtures.page("/print", media("print"));
    fixtures.page(
        "/mixed",
        Page::html(format!(
            "<!doctype html><body><img src=\"{}\"><img src=\"/own.png\"><img src=\"/hop\"></body>",
            other.url("/other.png")
        )),
    );
    fixtures.page("/own.png", Page::bytes("image/png", Vec::new()));
    fixtures.page(
        "/named",
        Page::html(format!(
            "<!doctype html><body><img src=\"{}\"></body>",
            other.url("/named.png")
        )),
    );
    other.page("/named.png", Page::bytes("image/png", Vec::new()));
    fixtures.page("/hop", Page::redirect(other.url("/hopped.png")));
    other.page("/other.png", Page::bytes("image/png", Vec::new()));
    other.page("/hopped.png", Page::bytes("image/png", Vec::new()));
    fixtures.page("/agent", Page::html("<p>agent</p>"));
    fixtures.page("/turned", Page::html("<p>turned</p>"));

    let job = |path: &str, options: RenderOptions| JobMessage::new(fixtures.url(path), options);
    let phone = job(
        "/touch",
        RenderOptions {
            device: Some("iphone_15".into()),
            wait_for_selector: Some("#done".into()),
            wait_for_selector_state: SelectorState::Attached,
            ..RenderOptions::default()
        },
    );
    let languages = job(
        "/languages",
        waits_for_done(RenderOptions {
            accept_language: Some("de-CH,de;q=0.9".into()),
            ..RenderOptions::default()
        }),
    );
    let zone = job(
        "/zone",
        waits_for_done(RenderOptions {
            timezone: Some("Asia/Tokyo".into()),
            ..RenderOptions::default()
        }),
    );
    let bad_zone = job(
        "/zone",
        small(RenderOptions {
            timezone: Some("Mars/Olympus_Mons".into()),
            ..RenderOptions::default()
        }),
    );
    let locale = job(
        "/locale",
        waits_for_done(RenderOptions {
            locale: Some("fr-CA".into()),
            ..RenderOptions::default()
        }),
    );
    let place = job(
        "/place",
        waits_for_done(RenderOptions {
            geolocation: Some(Geolocation {
                latitude: 35.68,
                longitude: 139.76,
                accuracy: 50.0,
            }),
            ..RenderOptions::default()
        }),
    );
    let dark = job(
        "/dark",
        small(RenderOptions {
            color_scheme: Some(ColorScheme::Dark),
            ..RenderOptions::default()
        }),
    );
    let light = job("/dark", small(RenderOptions::default()));
    let still = job(
        "/still",
        small(RenderOptions {
            reduced_motion: true,
            ..RenderOptions::default()
        }),
    );
    let print = job(
        "/print",
        small(RenderOptions {
            media: Some(MediaType::Print),
            ..RenderOptions::default()
        }),
    );
    let mixed = job(
        "/mixed",
        small(RenderOptions {
            headers: BTreeMap::from([("X-Tenant".into(), "acme".into())]),
            cookies: vec![Cookie {
                name: "session".into(),
                value: "s3cret".into(),
                domain: None,
                path: None,
                secure: false,
                http_only: true,
                same_site: None,
            }],
            ..RenderOptions::default()
        }),
    );
    let named = job(
        "/named",
        small(RenderOptions {
            headers: BTreeMap::from([("X-Tenant".into(), "acme".into())]),
            header_hosts: vec!["127.0.0.3".into()],
            ..RenderOptions::default()
        }),
    );
    let turned = job(
        "/turned",
        RenderOptions {
            device: Some("pixel_8".into()),
            landscape: true,
            ..RenderOptions::default()
        },
    );
    let agent = job(
        "/agent",
        small(RenderOptions {
            user_agent: Some("desktop".into()),
            accept_language: Some("fr-CA".into()),
            ..RenderOptions::default()
        }),
    );
    let all = [
        &phone, &languages, &zone, &bad_zone, &locale, &place, &dark, &light, &still, &print,
        &mixed, &agent, &named, &turned,
    ];
    send_jobs(&aws, &all.map(Clone::clone)).await;
    let results = Results::wait(&aws, &all).await;

    let img = results.image(&phone).await;
    assert_eq!(
        img.dimensions(),
        (393 * 3, 852 * 3),
        "the device's viewport and scale"
    );
    assert_eq!(px(&img, 10, 10), RED, "touch and the iPhone user agent");
    for (job, what) in [
        (&languages, "navigator.languages"),
        (&zone, "the time zone"),
        (&locale, "the locale"),
        (&place, "the position"),
        (&dark, "prefers-color-scheme"),
        (&still, "prefers-reduced-motion"),
        (&print, "the print media type"),
    ] {
        assert_eq!(px(&results.image(job).await, 10, 10), RED, "{what}");
    }
    assert_eq!(px(&results.image(&light).await, 10, 10), WHITE);
    let record = results.failure(&bad_zone).await;
    assert_eq!(record.reason, FailureReason::InvalidMessage);
    assert!(record.message.contains("timezone"), "{}", record.message);

    let header = |hits: Vec<url2png_testkit::fixtures::Hit>, path: &str, name: &str| {
        hits.iter()
            .find(|h| h.path == path)
            .unwrap_or_else(|| panic!("{path} was requested"))
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    for path in ["/mixed", "/own.png", "/hop"] {
        assert_eq!(
            header(fixtures.hits(), path, "x-tenant").as_deref(),
            Some("acme"),
            "{path}: the page's own host gets the header"
        );
        assert_eq!(
            header(fixtures.hits(), path, "cookie").as_deref(),
            Some("session=s3cret"),
            "{path}: and the cookie"
        );
    }
    for path in ["/other.png", "/hopped.png"] {
        assert_eq!(
            header(other.hits(), path, "x-tenant"),
            None,
            "{path}: no header"
        );
        assert_eq!(
            header(other.hits(), path, "cookie"),
            None,
            "{path}: no cookie"
        );
    }
    assert_eq!(
        header(other.hits(), "/named.png", "x-tenant").as_deref(),
        Some("acme"),
        "a host the job named gets the header"
    );
    let (w, h) = results.image(&turned).await.dimensions();
    assert!(
        w.abs_diff(2402) <= 1 && h.abs_diff(1082) <= 1,
        "pixel_8 turned: 915×412 at 2.625, got {w}×{h}"
    );
    let ua = header(fixtures.hits(), "/agent", "user-agent").unwrap();
    assert!(
        ua.contains("Windows NT") && ua.contains("Chrome/") && !ua.contains("Headless"),
        "{ua}"
    );
    assert_eq!(
        header(fixtures.hits(), "/agent", "accept-language").as_deref(),
        Some("fr-CA")
    );
    worker.stop().await;
}

/// The pages of a PDF Chromium printed, by their `/MediaBox` (width and
/// height in points).
fn pdf_pages(bytes: &[u8]) -> Vec<(f64, f64)> {
    assert!(bytes.starts_with(b"%PDF-"), "not a PDF");
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("/MediaBox [")
        .map(|(at, _)| {
            let rest = &text[at + "/MediaBox [".len()..];
            let numbers: Vec<f64> = rest[..rest.find(']').unwrap()]
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect();
            (numbers[2] - numbers[0], numbers[3] - numbers[1])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_pdfs_on_the_paper_pages_and_orientation_asked() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let worker = start_worker(&aws, &["--browsers", "1", "--pages-per-browser", "4"]).await;
    fixtures.page(
        "/report",
        Page::html(
            "<!doctype html><body><h1>Report</h1>\
             <div style=\"break-after:page\">one</div><div style=\"break-after:page\">two</div>\
             <div>three</div></body>",
        ),
    );
    let job = |pdf: PdfOptions| {
        JobMessage::new(
            fixtures.url("/report"),
            RenderOptions {
                format: ImageFormat::Pdf,
                pdf: Some(pdf),
                ..RenderOptions::default()
            },
        )
    };
    let whole = job(PdfOptions::default());
    let second = job(PdfOptions {
        paper: Paper::Letter,
        landscape: true,
        page_ranges: Some("2".into()),
        ..PdfOptions::default()
    });
    let past_the_end = job(PdfOptions {
        page_ranges: Some("99".into()),
        ..PdfOptions::default()
    });
    let all = [&whole, &second, &past_the_end];
    send_jobs(&aws, &all.map(Clone::clone)).await;
    let results = Results::wait(&aws, &all).await;

    let key = |j: &JobMessage| results.layout.image(j.id, ImageFormat::Pdf);
    let pages = pdf_pages(&get(&aws, &key(&whole)).await);
    assert_eq!(pages.len(), 3, "{pages:?}");
    let (w, h) = pages[0];
    assert!(
        (w - 595.0).abs() < 2.0 && (h - 842.0).abs() < 2.0,
        "A4 portrait: {w}x{h}"
    );
    let pages = pdf_pages(&get(&aws, &key(&second)).await);
    assert_eq!(pages.len(), 1, "only page 2");
    assert_eq!(pages[0], (792.0, 612.0), "letter, landscape");
    let head = aws
        .clients
        .s3
        .head_object()
        .bucket(&aws.bucket)
        .key(key(&whole))
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/pdf"));
    let record = results.failure(&past_the_end).await;
    assert_eq!(record.reason, FailureReason::InvalidMessage);
    assert!(record.message.contains("page_ranges"), "{}", record.message);
    worker.stop().await;
}

/// A grey page under a white, full-screen consent banner of one kind; a
/// choice removes the banner and paints the page by what was chosen, so
/// the capture itself says it: red for one "reject", green for "accept",
/// black for a second choice of either. (A report sent over the network
/// would race the capture: the page is closed once it is stored.)
fn consent_page(kind: &str) -> Page {
    let (banner, script) = match kind {
        // A OneTrust banner: found by its DOM, declined with its button.
        "onetrust" => (
            "<div id=\"onetrust-banner-sdk\" style=\"position:fixed;inset:0;background:#fff\">\
             <p>We use cookies.</p><button id=\"onetrust-accept-btn-handler\">Accept</button>\
             <button id=\"onetrust-reject-all-handler\" onclick=\"choose('reject')\">Reject all</button></div>",
            "window.OnetrustActiveGroups = ',C0001,';",
        ),
        // A Cookiebot dialog: found and declined through its JavaScript API.
        "cookiebot" => (
            "<div id=\"CybotCookiebotDialog\" style=\"position:fixed;inset:0;background:#fff\">\
             <p>This website uses cookies.</p></div>",
            "window.Cookiebot = { hasResponse: false, dialog: { visible: true }, \
             withdraw() { choose('reject'); }, hide() { this.dialog.visible = false; } };",
        ),
        // No known platform: a banner the heuristics must recognise.
        _ => (
            "<div id=\"cookie-notice\" role=\"dialog\" style=\"position:fixed;left:0;right:0;bottom:0;height:100%;background:#fff\">\
             <p>We use cookies to improve your experience. You can accept or reject cookies.</p>\
             <button onclick=\"choose('accept')\">Accept all cookies</button>\
             <button onclick=\"choose('reject')\">Reject all cookies</button></div>",
            "",
        ),
    };
    Page::html(format!(
        "<!doctype html><html><body style=\"margin:0;background:#888\"><main>content</main>{banner}\
         <script>let chosen = 0; function choose(c) {{ chosen++; \
         document.body.style.background = chosen > 1 ? '#000' : c === 'reject' ? '#f00' : '#0f0'; \
         for (const id of ['onetrust-banner-sdk', 'CybotCookiebotDialog', 'cookie-notice']) \
         {{ const e = document.getElementById(id); if (e) e.remove(); }} }} {script}</script></body></html>"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_ads_and_trackers_by_the_packaged_lists_and_declines_consent_banners_of_each_kind() {
    let aws = TestAws::start().await;
    // Not 127.0.0.1: EasyList turns its generic element rules off there
    // (`@@://127.0.0.1$generichide`), for developers' own pages.
    let fixtures = Fixtures::start_on("127.0.0.3".parse().unwrap()).await;
    let mut cfg = config(&aws, &["--browsers", "1", "--pages-per-browser", "4"]);
    cfg.policy.allow = "127.0.0.3/32".into();
    let worker = start_worker_with(cfg, &aws).await;
    for tag in ["listed", "unlisted"] {
        fixtures.page(
            format!("/{tag}"),
            Page::html(format!(
                "<!doctype html><body style=\"margin:0;background:#fff\">\
                 <img src=\"/{tag}/banner_ads/top.png\"><script src=\"/{tag}/gtag.js\"></script>\
                 <script src=\"/{tag}/app.js\"></script>\
                 <div class=\"ad-banner-300\" style=\"position:fixed;inset:0;background:#00f\"></div></body>"
            )),
        );
        for path in ["banner_ads/top.png", "gtag.js", "app.js"] {
            fixtures.page(format!("/{tag}/{path}"), Page::bytes("text/plain", "//"));
        }
    }
    for kind in ["onetrust", "cookiebot", "generic"] {
        fixtures.page(format!("/consent/{kind}"), consent_page(kind));
    }

    let job =
        |path: &str, options: RenderOptions| JobMessage::new(fixtures.url(path), small(options));
    let listed = job(
        "/listed",
        RenderOptions {
            block_ads: true,
            block_trackers: true,
            ..RenderOptions::default()
        },
    );
    let unlisted = job("/unlisted", RenderOptions::default());
    let consent: Vec<JobMessage> = ["onetrust", "cookiebot", "generic"]
        .iter()
        .map(|kind| {
            job(
                &format!("/consent/{kind}"),
                RenderOptions {
                    block_cookie_banners: true,
                    ..RenderOptions::default()
                },
            )
        })
        .collect();
    let kept = job("/consent/onetrust", RenderOptions::default());
    let mut all = vec![&listed, &unlisted, &kept];
    all.extend(consent.iter());
    send_jobs(&aws, &all.iter().map(|j| (*j).clone()).collect::<Vec<_>>()).await;
    let results = Results::wait(&aws, &all).await;

    assert_eq!(
        fixtures.hits_on("/listed/banner_ads/top.png"),
        0,
        "EasyList's rule"
    );
    assert_eq!(fixtures.hits_on("/listed/gtag.js"), 0, "EasyPrivacy's rule");
    assert_eq!(
        fixtures.hits_on("/listed/app.js"),
        1,
        "the page's own script"
    );
    assert_eq!(
        px(&results.image(&listed).await, 50, 50),
        WHITE,
        "the ad slot is hidden by the list's element rule"
    );
    for path in [
        "/unlisted/banner_ads/top.png",
        "/unlisted/gtag.js",
        "/unlisted/app.js",
    ] {
        assert_eq!(fixtures.hits_on(path), 1, "{path} loads without blocking");
    }
    assert_eq!(px(&results.image(&unlisted).await, 50, 50), BLUE);

    for (job, kind) in consent.iter().zip(["onetrust", "cookiebot", "generic"]) {
        assert_eq!(
            px(&results.image(job).await, 50, 50),
            RED,
            "{kind}: the banner is gone and was declined once (red), \
             not accepted (green), answered twice (black) or left unanswered (grey)"
        );
    }
    assert_eq!(
        px(&results.image(&kept).await, 50, 50),
        WHITE,
        "without the option the banner stays"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_at_the_height_cap_is_captured_whole_without_repeated_or_blank_bands() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let worker = start_worker(&aws, &["--browsers", "1", "--pages-per-browser", "2"]).await;
    // 32 bands of 1024 px, each its own colour, then more page below the
    // cap: a repeated tile or an unpainted one shows as a band of the
    // wrong colour.
    let colour = |i: u32| {
        [
            (i * 37 % 256) as u8,
            (i * 91 % 256) as u8,
            ((200 + i * 7) % 256) as u8,
        ]
    };
    let bands: String = (0..40)
        .map(|i| {
            let [r, g, b] = colour(i);
            format!("<div style=\"height:1024px;background:rgb({r},{g},{b})\"></div>")
        })
        .collect();
    fixtures.page(
        "/tall",
        Page::html(format!(
            "<!doctype html><body style=\"margin:0\">{bands}</body>"
        )),
    );
    let job = JobMessage::new(
        fixtures.url("/tall"),
        RenderOptions {
            width: 400,
            height: 800,
            full_page: true,
            full_page_max_height: 32_768,
            timeout_ms: 60_000,
            ..RenderOptions::default()
        },
    );
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    let results = Results::wait(&aws, &[&job]).await;
    let img = results.image(&job).await;
    assert_eq!(img.dimensions(), (400, 32_768), "cut at the cap");
    for i in 0..32 {
        let [r, g, b] = colour(i);
        for y in [i * 1024 + 10, i * 1024 + 1013] {
            assert_eq!(px(&img, 200, y), [r, g, b, 255], "band {i} at y {y}");
        }
    }
    assert_eq!(results.metadata(&job).await["truncated"], "true");
    worker.stop().await;
}
