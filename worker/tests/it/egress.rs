//! The egress guard end to end: a page on an allowed address tries every
//! way to reach a refused one, and nothing gets through.

use std::net::IpAddr;
use std::time::Duration;

use url2png_core::job::{ImageFormat, RenderOptions};
use url2png_core::{FailureReason, FailureRecord, JobMessage, KeyLayout};
use url2png_testkit::{Fixtures, Page, TestAws};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_page_does_reaches_a_refused_address() {
    let aws = TestAws::start().await;
    // Allowed: 127.0.0.1 (the test's --egress-allow). Refused: 127.0.0.2.
    let site = Fixtures::start().await;
    let recorder = Fixtures::start_on(IpAddr::from([127, 0, 0, 2])).await;
    let port = recorder.addr().port();
    let at = |path: &str| format!("http://127.0.0.2:{port}{path}");
    site.page(
        "/hostile",
        Page::html(format!(
            r#"<!doctype html><body>
            <img src="{img}"><img src="http://localhost:{port}/by-name">
            <img src="http://[::ffff:127.0.0.2]:{port}/mapped"><img src="http://2130706434:{port}/decimal">
            <iframe src="{frame}"></iframe>
            <link rel="stylesheet" href="https://127.0.0.2:{port}/tls.css">
            <script>
              fetch("{fetch}").catch(() => {{}});
              try {{ new WebSocket("ws://127.0.0.2:{port}/ws"); }} catch (e) {{}}
              navigator.sendBeacon && navigator.sendBeacon("{beacon}", "x");
              setTimeout(() => {{ location.href = "{nav}"; }}, 300);
            </script></body>"#,
            img = at("/img"),
            frame = at("/frame"),
            fetch = at("/fetch"),
            beacon = at("/beacon"),
            nav = at("/nav"),
        )),
    );
    site.page("/redirect", Page::redirect(at("/redirected")));
    site.page(
        "/redirect-by-name",
        Page::redirect(format!("http://localhost:{port}/by-name-redirect")),
    );

    let worker = start_worker(&aws, &["--chromium-args", "--disable-notifications"]).await;
    // The browser really runs behind the guard: flags that Chromium ignores
    // (a doubled `----` prefix, say) would leave background traffic free.
    for pid in worker.pool.browser_pids().await {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(
            args.iter()
                .any(|a| a.starts_with("--proxy-server=http://127.0.0.1:")),
            "{args:?}"
        );
        assert!(
            args.iter().any(|a| a == "--proxy-bypass-list=<-loopback>"),
            "{args:?}"
        );
        assert!(
            args.iter()
                .any(|a| a == "--webrtc-ip-handling-policy=disable_non_proxied_udp"),
            "{args:?}"
        );
        assert!(
            args.iter().any(|a| a == "--disable-notifications"),
            "extra arguments pass: {args:?}"
        );
        assert!(!args.iter().any(|a| a.starts_with("---")), "{args:?}");
    }
    let hostile = JobMessage::new(
        site.url("/hostile"),
        RenderOptions {
            delay_ms: 1500,
            ..RenderOptions::default()
        },
    );
    let redirect = JobMessage::new(site.url("/redirect"), RenderOptions::default());
    let redirect_by_name = JobMessage::new(site.url("/redirect-by-name"), RenderOptions::default());
    let direct = JobMessage::new(at("/direct"), RenderOptions::default());
    let by_name = JobMessage::new(
        format!("http://localhost:{port}/"),
        RenderOptions::default(),
    );
    let jobs = [
        hostile.clone(),
        redirect.clone(),
        redirect_by_name.clone(),
        direct.clone(),
        by_name.clone(),
    ];
    send_jobs(&aws, &jobs).await;

    wait_for("every job finished", Duration::from_secs(90), || async {
        (keys(&aws).await.len() >= jobs.len()).then_some(())
    })
    .await;
    let layout = KeyLayout::default();
    let stored = keys(&aws).await;
    assert!(
        stored.contains(&layout.image(hostile.id, ImageFormat::Png)),
        "the hostile page itself is allowed and renders: {stored:?}"
    );
    for job in [&redirect, &redirect_by_name, &direct, &by_name] {
        let record = FailureRecord::from_json(&get(&aws, &layout.failure(job.id)).await)
            .unwrap_or_else(|e| panic!("{}: no failure record ({e}); stored: {stored:?}", job.url));
        assert_eq!(
            record.reason,
            FailureReason::BlockedByPolicy,
            "{}: {}",
            job.url,
            record.message
        );
        // The record names what was refused, in one sentence; the rule
        // and the proxy's words are in `detail`.
        let refused = record.refused.clone().unwrap_or_default();
        assert!(
            ["127.0.0.2", "localhost"].contains(&refused.as_str()),
            "{}: {record:?}",
            job.url
        );
        assert!(record.message.ends_with('.'), "{record:?}");
        assert!(record.detail.is_some(), "{record:?}");
    }
    assert!(site.hits_on("/hostile") >= 1);
    assert_eq!(
        recorder.hits().len(),
        0,
        "the refused address was reached: {:?}",
        recorder.hits()
    );
    let blocked = counter(&worker.metrics.egress_requests, &["job", "blocked"])
        + counter(
            &worker.metrics.egress_requests,
            &["job", "blocked_in_browser"],
        );
    assert!(blocked >= 6, "refusals counted: {blocked}");
    wait_for("queue drained", Duration::from_secs(30), || async {
        (queue_counts(&aws, &aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    worker.stop().await;
}

/// A raw request to the proxy; returns the status line and the headers.
async fn through_proxy(proxy: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = proxy.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn the_proxy_alone_refuses_every_form_of_a_refused_address() {
    use url2png_worker::egress::{Egress, Scope};
    let policy = url2png_core::policy::UrlPolicy::new("127.0.0.1/32", "", "").unwrap();
    let egress = Egress::new(policy, url2png_worker::metrics::Metrics::unregistered());
    let proxy = egress.proxy(Scope::Job).await.unwrap();
    let allowed = Fixtures::start().await;
    let recorder = Fixtures::start_on(IpAddr::from([127, 0, 0, 2])).await;
    let port = recorder.addr().port();

    let ok = through_proxy(
        &proxy.url(),
        &format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", allowed.url("/ok")),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(allowed.hits_on("/ok"), 1);

    for request in [
        format!("GET http://127.0.0.2:{port}/plain HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n"),
        format!("GET http://2130706434:{port}/decimal HTTP/1.1\r\n\r\n"),
        format!("GET http://[::ffff:127.0.0.2]:{port}/mapped HTTP/1.1\r\n\r\n"),
        format!("GET http://localhost:{port}/name HTTP/1.1\r\n\r\n"),
        format!("CONNECT 127.0.0.2:{port} HTTP/1.1\r\nHost: 127.0.0.2:{port}\r\n\r\n"),
        format!("CONNECT [::ffff:7f00:2]:{port} HTTP/1.1\r\n\r\n"),
        format!("CONNECT localhost.:{port} HTTP/1.1\r\n\r\n"),
        "CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n".to_owned(),
        format!("GET ftp://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n"),
        "GET /relative HTTP/1.1\r\n\r\n".to_owned(),
    ] {
        let reply = through_proxy(&proxy.url(), &request).await;
        assert!(reply.starts_with("HTTP/1.1 403"), "{request:?} -> {reply}");
        assert!(
            reply.to_ascii_lowercase().contains("x-url2png-blocked:"),
            "{reply}"
        );
    }
    assert_eq!(recorder.hits().len(), 0);
    assert_eq!(proxy.blocked().len(), 10);
    // A plain request that is allowed is forwarded once, with the proxy's
    // own headers dropped.
    let hit = &allowed.hits()[0];
    assert!(hit.headers.get("proxy-connection").is_none());
}

#[tokio::test]
async fn a_name_that_resolves_to_an_allowed_and_a_refused_address_is_refused_by_the_proxy() {
    use url2png_worker::egress::{Egress, Scope};
    let allowed = Fixtures::start().await;
    let recorder = Fixtures::start_on(IpAddr::from([127, 0, 0, 2])).await;
    let port = allowed.addr().port();
    let policy = url2png_core::policy::UrlPolicy::new("127.0.0.1/32", "", "")
        .unwrap()
        .with_hosts([
            (
                "mixed.test",
                vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])],
            ),
            ("single.test", vec![IpAddr::from([127, 0, 0, 1])]),
        ]);
    let egress = Egress::new(policy, url2png_worker::metrics::Metrics::unregistered());
    let proxy = egress.proxy(Scope::Job).await.unwrap();

    let ok = through_proxy(
        &proxy.url(),
        &format!("GET http://single.test:{port}/ok HTTP/1.1\r\nHost: single.test\r\n\r\n"),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(allowed.hits_on("/ok"), 1, "the table's address was used");

    let rport = recorder.addr().port();
    for request in [
        format!("GET http://mixed.test:{port}/mixed HTTP/1.1\r\nHost: mixed.test\r\n\r\n"),
        format!("GET http://mixed.test:{rport}/mixed HTTP/1.1\r\nHost: mixed.test\r\n\r\n"),
        format!("CONNECT mixed.test:{port} HTTP/1.1\r\nHost: mixed.test:{port}\r\n\r\n"),
    ] {
        let reply = through_proxy(&proxy.url(), &request).await;
        assert!(reply.starts_with("HTTP/1.1 403"), "{request:?} -> {reply}");
        let blocked = reply
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-url2png-blocked:")
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        assert!(blocked.contains("127.0.0.2"), "{reply}");
    }
    // Neither of the name's addresses was connected to.
    assert_eq!(allowed.hits_on("/mixed"), 0);
    assert_eq!(recorder.hits().len(), 0);
}

/// Read one response (head and a `Content-Length` body) from `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                return String::from_utf8_lossy(&got[..end + 4 + length]).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_kept_alive_proxy_connection_checks_every_request_and_reuses_the_origin_connection() {
    use tokio::io::AsyncWriteExt;
    use url2png_worker::egress::{Egress, Scope};
    let policy = url2png_core::policy::UrlPolicy::new("127.0.0.1/32", "", "").unwrap();
    let egress = Egress::new(policy, url2png_worker::metrics::Metrics::unregistered());
    let proxy = egress.proxy(Scope::Job).await.unwrap();
    let allowed = Fixtures::start().await;
    let refused = Fixtures::start_on(IpAddr::from([127, 0, 0, 2])).await;

    let mut stream = tokio::net::TcpStream::connect(proxy.url().trim_start_matches("http://"))
        .await
        .unwrap();
    let requests = [
        (allowed.url("/first"), "200"),
        (refused.url("/between"), "403"),
        (allowed.url("/second"), "200"),
        (
            format!("http://2130706434:{}/decimal", refused.addr().port()),
            "403",
        ),
        (allowed.url("/third"), "200"),
    ];
    for (url, status) in &requests {
        let host = url::Url::parse(url).unwrap();
        let request = format!(
            "GET {url} HTTP/1.1\r\nHost: {}\r\nProxy-Connection: keep-alive\r\n\r\n",
            host.authority()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let reply = read_response(&mut stream).await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{url} -> {reply}"
        );
    }
    assert_eq!(refused.hits().len(), 0, "a refused host was reached");
    assert_eq!(proxy.blocked().len(), 2);
    let hits = allowed.hits();
    let paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(paths, ["/first", "/second", "/third"]);
    // The three went to the origin on one connection of the proxy's.
    assert!(hits.iter().all(|h| h.peer == hits[0].peer), "{hits:?}");
    assert!(
        hits.iter()
            .all(|h| h.headers.get("proxy-connection").is_none())
    );
}

#[tokio::test]
async fn an_allowed_connect_opens_a_tunnel_that_carries_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use url2png_worker::egress::{Egress, Scope};
    let policy = url2png_core::policy::UrlPolicy::new("127.0.0.1/32", "", "").unwrap();
    let egress = Egress::new(policy, url2png_worker::metrics::Metrics::unregistered());
    let proxy = egress.proxy(Scope::Job).await.unwrap();
    let site = Fixtures::start().await;
    let authority = site.addr().to_string();

    let mut stream = tokio::net::TcpStream::connect(proxy.url().trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head.contains("content-length") && !head.contains("transfer-encoding"),
        "a tunnel's answer has no body framing: {head}"
    );
    // What goes in comes out at the site, and its answer comes back.
    stream
        .write_all(
            format!("GET /through HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(site.hits_on("/through"), 1);
}
