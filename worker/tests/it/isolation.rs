//! Every job gets a browser context of its own: what one job's page leaves
//! behind (cookies, localStorage, the HTTP cache) is not visible to the
//! next job, even on the same origin, the same browser and the same slot.

use std::time::Duration;

use url2png_core::job::{ImageFormat, RenderOptions};
use url2png_core::{JobMessage, KeyLayout};
use url2png_testkit::{Fixtures, Page, TestAws};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_storage_and_cache_of_one_job_are_not_visible_to_the_next() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    // One slot in one browser: the second job runs where the first ran.
    let worker = start_worker(
        &aws,
        &[
            "--browsers",
            "1",
            "--pages-per-browser",
            "1",
            "--concurrency",
            "1",
        ],
    )
    .await;
    // A cacheable script, loaded twice by the first page (the second time
    // from that job's own cache) and once by the second page.
    fixtures.page(
        "/cached.js",
        Page::bytes("application/javascript", "window.cachedLoaded = true;")
            .header("cache-control", "public, max-age=3600"),
    );
    fixtures.page("/probe.png", Page::bytes("image/png", Vec::<u8>::new()));
    // The first page gets a cookie, stores a value, and shows blue when it
    // can read the value back (state works within a job).
    fixtures.page(
        "/first",
        Page::html(
            "<!doctype html><body style='margin:0;background:#fff'>\
             <script src='/cached.js'></script>\
             <script>localStorage.setItem('job', 'first'); sessionStorage.setItem('job', 'first');\
             if (localStorage.getItem('job') === 'first') document.body.style.background = '#00f';\
             </script>\
             <img src='/probe.png' style='position:absolute;left:90px;top:90px;width:2px;height:2px'>\
             <script>const s = document.createElement('script'); s.src = '/cached.js'; document.head.appendChild(s);</script>\
             </body>",
        )
        .header("set-cookie", "job=first; Max-Age=3600; Path=/"),
    );
    // The second page shows red if anything of the first is visible.
    fixtures.page(
        "/second",
        Page::html(
            "<!doctype html><body style='margin:0;background:#fff'>\
             <script src='/cached.js'></script>\
             <script>const leaked = document.cookie.includes('job=') || localStorage.getItem('job') !== null\
             || sessionStorage.getItem('job') !== null;\
             document.body.style.background = leaked ? '#f00' : '#0f0';</script></body>",
        ),
    );
    let options = RenderOptions {
        width: 100,
        height: 100,
        format: ImageFormat::Png,
        ..RenderOptions::default()
    };
    let layout = KeyLayout::default();
    let first = JobMessage::new(fixtures.url("/first"), options.clone());
    send_jobs(&aws, std::slice::from_ref(&first)).await;
    wait_for("the first image", Duration::from_secs(60), || async {
        let key = layout.image(first.id, first.options.format);
        keys(&aws).await.contains(&key).then_some(())
    })
    .await;
    let second = JobMessage::new(fixtures.url("/second"), options);
    send_jobs(&aws, std::slice::from_ref(&second)).await;
    wait_for("the second image", Duration::from_secs(60), || async {
        let key = layout.image(second.id, second.options.format);
        keys(&aws).await.contains(&key).then_some(())
    })
    .await;

    let first_pixel =
        top_left_pixel(&get(&aws, &layout.image(first.id, first.options.format)).await);
    assert_eq!(first_pixel, [0, 0, 255], "storage works within a job");
    let probe = fixtures
        .hits()
        .into_iter()
        .find(|h| h.path == "/probe.png")
        .expect("the first page loaded its image");
    let cookie = probe
        .headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        cookie.contains("job=first"),
        "cookies work within a job: {cookie:?}"
    );

    let second_hit = fixtures
        .hits()
        .into_iter()
        .find(|h| h.path == "/second")
        .expect("the second page was requested");
    assert!(
        second_hit.headers.get("cookie").is_none(),
        "the second job sent the first job's cookie"
    );
    let second_pixel =
        top_left_pixel(&get(&aws, &layout.image(second.id, second.options.format)).await);
    assert_eq!(
        second_pixel,
        [0, 255, 0],
        "the second page saw the first's cookie or storage"
    );
    // One fetch by the first page (its second load came from its own
    // cache) and one by the second: nothing came from the first job's
    // cache.
    let plain_loads = fixtures
        .hits()
        .iter()
        .filter(|h| h.path == "/cached.js" && h.query.is_none())
        .count();
    assert_eq!(plain_loads, 2, "one fetch per job of a cacheable script");
    worker.stop().await;
}
