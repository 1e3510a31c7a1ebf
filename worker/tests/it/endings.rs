//! Every job ends `done` or `failed`, and a failure says what happened:
//! the last attempt of a retryable failure writes its record, and each
//! kind of trouble gets its own reason.

use std::net::IpAddr;
use std::time::Duration;

use url2png_core::job::{ImageFormat, RenderOptions, WaitFor};
use url2png_core::keys::Phase;
use url2png_core::{FailureReason, FailureRecord, JobMessage, KeyLayout};
use url2png_testkit::{Fixtures, Page, TestAws, TestAwsOptions};

use crate::support::*;

/// The failure record of `job`, once it is written.
async fn record_of(aws: &TestAws, job: &JobMessage) -> FailureRecord {
    let key = KeyLayout::default().failure(job.id);
    wait_for(
        &format!("the failure record of {}", job.url),
        Duration::from_secs(90),
        || async { keys(aws).await.contains(&key).then_some(()) },
    )
    .await;
    FailureRecord::from_json(&get(aws, &key).await).expect("a failure record")
}

fn with_timeout(timeout_ms: u32) -> RenderOptions {
    RenderOptions {
        timeout_ms,
        ..RenderOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_slower_than_its_timeout_fails_with_a_navigation_timeout_and_lands_in_the_dead_letter_queue()
 {
    let aws = TestAws::start_with(TestAwsOptions {
        max_receive_count: 2,
        ..TestAwsOptions::default()
    })
    .await;
    let site = Fixtures::start().await;
    site.page(
        "/never",
        Page::html("<p>too late</p>").delay(Duration::from_secs(60)),
    );
    let worker = start_worker(&aws, &["--retry-base-seconds", "1"]).await;
    let job = JobMessage::new(site.url("/never"), with_timeout(1000));
    send_jobs(&aws, std::slice::from_ref(&job)).await;

    let record = record_of(&aws, &job).await;
    assert_eq!(record.reason, FailureReason::Timeout, "{record:?}");
    assert_eq!(record.phase, Some(Phase::Navigation));
    assert_eq!(record.attempts, 2, "written on the last attempt");
    assert!(site.hits_on("/never") >= 2, "both attempts loaded the page");
    // The queue's redrive policy moves the message on: it is kept for the
    // operator, and nothing is left in flight.
    wait_for(
        "the message in the DLQ",
        Duration::from_secs(30),
        || async {
            (queue_counts(&aws, &aws.queue.dlq_url).await.0 == 1
                && queue_counts(&aws, &aws.queue.url).await == (0, 0))
                .then_some(())
        },
    )
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_that_never_matches_fails_the_wait_on_the_last_attempt() {
    let aws = one_attempt().await;
    let site = Fixtures::start().await;
    let worker = start_worker(&aws, &[]).await;
    let job = JobMessage::new(
        site.url("/plain"),
        RenderOptions {
            wait_for: WaitFor::Selector("#never-there".into()),
            timeout_ms: 1500,
            ..RenderOptions::default()
        },
    );
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    let record = record_of(&aws, &job).await;
    assert_eq!(record.reason, FailureReason::WaitFailed, "{record:?}");
    assert_eq!(record.phase, Some(Phase::Wait));
    assert!(
        record.message.contains("#never-there"),
        "{}",
        record.message
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_troubles_get_their_own_classes() {
    let aws = one_attempt().await;
    let site = Fixtures::start().await;
    // A port nothing listens on, and nothing else can take meanwhile.
    let (closed, _reserved) = url2png_testkit::moto::refusing_port();
    // Something that answers a TLS handshake with plain text (it waits
    // for the client's hello, as a server does: data before it would be
    // a broken tunnel to Chromium, not a TLS error).
    let not_tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let not_tls_port = not_tls.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = not_tls.accept().await {
            tokio::spawn(async move {
                let mut hello = [0u8; 512];
                if stream.read(&mut hello).await.unwrap_or(0) > 0 {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    site.page("/missing", Page::html("<p>gone</p>").status(404));
    let worker = start_worker(&aws, &[]).await;

    let cases = [
        // `.invalid` never exists (RFC 6761), plain and through a tunnel.
        ("http://no-such-host.invalid/", FailureReason::DnsError),
        ("https://no-such-host.invalid/", FailureReason::DnsError),
        (
            &format!("http://127.0.0.1:{closed}/") as &str,
            FailureReason::ConnectionFailed,
        ),
        (
            &format!("https://127.0.0.1:{closed}/"),
            FailureReason::ConnectionFailed,
        ),
        (
            &format!("https://127.0.0.1:{not_tls_port}/"),
            FailureReason::TlsError,
        ),
    ];
    let mut jobs: Vec<(JobMessage, FailureReason)> = cases
        .iter()
        .map(|(url, reason)| (JobMessage::new(*url, with_timeout(10_000)), *reason))
        .collect();
    let http_error = JobMessage::new(
        site.url("/missing"),
        RenderOptions {
            fail_on_http_error: true,
            ..RenderOptions::default()
        },
    );
    jobs.push((http_error.clone(), FailureReason::HttpError));
    let messages: Vec<JobMessage> = jobs.iter().map(|(j, _)| j.clone()).collect();
    send_jobs(&aws, &messages).await;

    for (job, reason) in &jobs {
        let record = record_of(&aws, job).await;
        assert_eq!(record.reason, *reason, "{}: {record:?}", job.url);
        assert!(
            record.message.ends_with('.') && !record.message.contains('\n'),
            "one sentence: {:?}",
            record.message
        );
        // The browser's or the proxy's own words, where there are any.
        assert_eq!(
            record.detail.is_some(),
            *reason != FailureReason::HttpError,
            "{}: {record:?}",
            job.url
        );
        if *reason == FailureReason::DnsError {
            assert!(
                record.message.contains("no-such-host.invalid"),
                "{}",
                record.message
            );
        }
    }
    let record = record_of(&aws, &http_error).await;
    assert_eq!(record.http_status, Some(404));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_frames_and_resources_are_all_refused_still_renders() {
    let aws = TestAws::start().await;
    let site = Fixtures::start().await;
    let refused = Fixtures::start_on(IpAddr::from([127, 0, 0, 2])).await;
    let port = refused.addr().port();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let frames = [
        // Refused address literals, plain and TLS (the in-browser check).
        format!("http://127.0.0.2:{port}/f1"),
        format!("https://127.0.0.2:{port}/f2"),
        // A name that resolves to an allowed and a refused address
        // (`localhost`: 127.0.0.1 and ::1), plain and TLS (the proxy).
        format!("http://localhost:{port}/f3"),
        format!("https://localhost:{port}/f4"),
        // Other schemes, a name that does not exist, a closed port.
        "file:///etc/passwd".to_owned(),
        "ftp://127.0.0.1/".to_owned(),
        "http://no-such-host.invalid/f5".to_owned(),
        "https://no-such-host.invalid/f6".to_owned(),
        format!("http://127.0.0.1:{closed}/f7"),
    ];
    let body: String = frames
        .iter()
        .map(|src| format!(r#"<iframe src="{src}"></iframe>"#))
        .chain([
            format!(r#"<img src="http://127.0.0.2:{port}/i">"#),
            format!(r#"<script src="https://localhost:{port}/s.js"></script>"#),
            format!(r#"<link rel="stylesheet" href="http://127.0.0.2:{port}/c.css">"#),
            format!(
                r#"<style>@font-face {{ font-family: x; src: url(http://127.0.0.2:{port}/f.woff2); }} body {{ font-family: x; }}</style>"#
            ),
            format!(
                r#"<script>fetch("http://127.0.0.2:{port}/x").catch(() => {{}});
                   try {{ new WebSocket("ws://localhost:{port}/ws"); }} catch (e) {{}}
                   navigator.serviceWorker && navigator.serviceWorker
                     .register("http://127.0.0.2:{port}/sw.js").catch(() => {{}});</script>"#
            ),
        ])
        .collect();
    site.page(
        "/refused-everything",
        Page::html(format!(
            "<!doctype html><body><p>still here</p>{body}</body>"
        )),
    );
    let worker = start_worker(&aws, &[]).await;
    let job = JobMessage::new(site.url("/refused-everything"), with_timeout(20_000));
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    let image = KeyLayout::default().image(job.id, ImageFormat::Png);
    wait_for("the image", Duration::from_secs(60), || async {
        keys(&aws).await.contains(&image).then_some(())
    })
    .await;
    assert_eq!(refused.hits().len(), 0, "{:?}", refused.hits());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_dies_on_the_last_attempt_records_browser_crashed() {
    let aws = one_attempt().await;
    let site = Fixtures::start().await;
    site.page(
        "/held",
        Page::html("<h1>held</h1>").delay(Duration::from_secs(5)),
    );
    let worker = start_worker(&aws, &[]).await;
    let job = JobMessage::new(site.url("/held"), with_timeout(20_000));
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    assert!(
        site.wait_for_hits("/held", 1, Duration::from_secs(30))
            .await,
        "render started"
    );
    for pid in worker.pool.browser_pids().await {
        assert!(signal("KILL", &pid.to_string()));
    }
    let record = record_of(&aws, &job).await;
    assert_eq!(record.reason, FailureReason::BrowserCrashed, "{record:?}");
    assert_eq!(record.attempts, 1);
    worker.stop().await;
}

/// An HTTPS site on 127.0.0.1 with a self-signed certificate, answering
/// every request with a small page; its port.
pub(crate) async fn self_signed_site() -> u16 {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "<!doctype html><body style=\"background:#0a0\">self-signed</body>";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_is_a_tls_error_unless_the_operator_accepts_it() {
    let aws = one_attempt().await;
    let port = self_signed_site().await;
    let url = format!("https://127.0.0.1:{port}/");

    let strict = start_worker(&aws, &[]).await;
    let refused = JobMessage::new(url.clone(), with_timeout(10_000));
    send_jobs(&aws, std::slice::from_ref(&refused)).await;
    let record = record_of(&aws, &refused).await;
    assert_eq!(record.reason, FailureReason::TlsError, "{record:?}");
    assert!(
        record
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("ERR_CERT_"),
        "{record:?}"
    );
    strict.stop().await;

    // A queue of its own: a long poll the stopped worker left open at the
    // emulator could still take the next message.
    let aws = TestAws::start().await;
    let lenient = start_worker(&aws, &["--accept-invalid-certs", "true"]).await;
    let accepted = JobMessage::new(url, with_timeout(10_000));
    send_jobs(&aws, std::slice::from_ref(&accepted)).await;
    let image = KeyLayout::default().image(accepted.id, ImageFormat::Png);
    wait_for("the image", Duration::from_secs(60), || async {
        keys(&aws).await.contains(&image).then_some(())
    })
    .await;
    assert_eq!(top_left_pixel(&get(&aws, &image).await), [0, 170, 0]);
    lenient.stop().await;
}

/// A queue whose messages get one attempt, then the dead-letter queue.
async fn one_attempt() -> TestAws {
    TestAws::start_with(TestAwsOptions {
        max_receive_count: 1,
        ..TestAwsOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_the_browser_never_answers_on_the_last_attempt_records_render_failed() {
    let aws = one_attempt().await;
    let site = Fixtures::start().await;
    site.page(
        "/still",
        Page::html(
            "<h1>still</h1><script>addEventListener('load', () => fetch('/loaded'))</script>",
        ),
    );
    site.page("/loaded", Page::html(""));
    let worker = start_worker(&aws, &["--cdp-timeout-seconds", "1"]).await;
    let job = JobMessage::new(
        site.url("/still"),
        RenderOptions {
            delay_ms: 8_000,
            timeout_ms: 60_000,
            ..RenderOptions::default()
        },
    );
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    assert!(
        site.wait_for_hits("/loaded", 1, Duration::from_secs(30))
            .await,
        "the page loaded"
    );
    // Freeze the page's renderers during the delay: the capture after it
    // never gets a frame.
    let mut renderers = Vec::new();
    for browser in worker.pool.browser_pids().await {
        renderers.extend(
            url2png_testkit::process::descendants(browser)
                .into_iter()
                .filter(|pid| url2png_testkit::process::cmdline(*pid).contains("--type=renderer")),
        );
    }
    assert!(!renderers.is_empty(), "the page has a renderer");
    for pid in &renderers {
        signal("STOP", &pid.to_string());
    }
    let record = record_of(&aws, &job).await;
    for pid in &renderers {
        signal("CONT", &pid.to_string());
    }
    assert_eq!(record.reason, FailureReason::RenderFailed, "{record:?}");
    assert_eq!(record.attempts, 1);
    assert!(
        record
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("Page.captureScreenshot")),
        "{record:?}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_every_image_write_records_attempts_exhausted() {
    use url2png_core::aws::{AwsOptions, Clients};
    let aws = one_attempt().await;
    let site = Fixtures::start().await;
    site.page("/fine", Page::html("<h1>fine</h1>"));
    // Image writes fail with S3's 503 SlowDown; the record's write passes.
    let proxy = url2png_testkit::AwsProxy::start(aws.moto.endpoint()).await;
    proxy.refuse("PUT", ".png", 503);
    let clients = Clients::load(&AwsOptions::emulator(proxy.endpoint())).await;
    let worker = url2png_worker::Worker::start(config(&aws, &[]), clients)
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    let job = JobMessage::new(site.url("/fine"), RenderOptions::default());
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    let record = record_of(&aws, &job).await;
    assert_eq!(
        record.reason,
        FailureReason::AttemptsExhausted,
        "{record:?}"
    );
    assert_eq!(record.attempts, 1);
    assert!(proxy.refused() >= 1, "the image write was tried");
    let image = KeyLayout::default().image(job.id, ImageFormat::Png);
    assert!(!keys(&aws).await.contains(&image));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
