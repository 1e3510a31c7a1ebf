//! Signed render links (`GET /v1/render`), made by `url2png-producer
//! sign-link`, against a real worker and Chromium.

use super::*;
use url2png_testkit::Fixtures;
use url2png_testkit::http::{Reply, request};

const SECRET: &str = "a-link-secret-of-some-length";

/// `url2png-producer sign-link` with these arguments.
async fn sign(aws: &TestAws, args: &[&str]) -> String {
    let out = url2png_testkit::process::command(env!("CARGO_BIN_EXE_url2png-producer"), aws)
        .arg("sign-link")
        .args(["--base-url", "", "--key", "site", "--secret", SECRET])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn get(addr: SocketAddr, path: &str) -> (Reply, Value) {
    let reply = request(addr, "GET", path, None, b"").await;
    let json = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply, json)
}

/// The bytes behind a presigned URL of the emulator.
async fn download(location: &str) -> Vec<u8> {
    let url = url::Url::parse(location).unwrap();
    let addr: SocketAddr = format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    )
    .parse()
    .unwrap();
    let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    let reply = request(addr, "GET", &path, None, b"").await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_link_renders_once_and_redirects_to_the_image() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let secrets = format!("site:{SECRET}");
    let producer = start(
        &aws,
        &[
            "--egress-allow",
            "127.0.0.1/32",
            "--api-keys",
            "not-in-the-link",
            "--link-secrets",
            &secrets,
            "--link-wait-seconds",
            "60",
        ],
    )
    .await;
    let (stop, worker) = start_worker(&aws).await;
    let link = sign(
        &aws,
        &[
            &fixtures.url("/page"),
            "--set",
            "width=400",
            "--set",
            "height=300",
        ],
    )
    .await;
    let (reply, body) = get(producer.addr, &link).await;
    assert_eq!(reply.status, 303, "{body}");
    let location = reply.header("location").unwrap().to_owned();
    let image = image::load_from_memory(&download(&location).await).unwrap();
    assert_eq!((image.width(), image.height()), (400, 300));
    assert!(reply.header("cache-control").unwrap().contains("max-age"));

    // The second view is answered from the cache: no new job.
    let sent = metric(
        &producer.registry,
        "url2png_producer_sqs_requests_total",
        &[("operation", "SendMessageBatch"), ("result", "ok")],
    );
    let (again, _) = get(producer.addr, &link).await;
    assert_eq!(again.status, 303);
    assert_eq!(
        metric(
            &producer.registry,
            "url2png_producer_sqs_requests_total",
            &[("operation", "SendMessageBatch"), ("result", "ok")],
        ),
        sent
    );
    let pngs = aws
        .keys()
        .await
        .iter()
        .filter(|k| k.ends_with(".png"))
        .count();
    assert_eq!(pngs, 1, "rendered once");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn tampered_expired_and_unknown_links_are_refused_and_queue_nothing() {
    let aws = TestAws::start().await;
    let secrets = format!("site:{SECRET}");
    let producer = start(
        &aws,
        &["--link-secrets", &secrets, "--link-wait-seconds", "0"],
    )
    .await;
    let addr = producer.addr;
    let good = sign(&aws, &["https://example.com/", "--set", "width=800"]).await;
    for (tampered, why) in [
        (good.replace("width=800", "width=801"), "an option changed"),
        (
            good.replace("example.com", "example.org"),
            "the URL changed",
        ),
        (format!("{good}&full_page=true"), "an option added"),
        (good.replace("key=site", "key=other"), "another key"),
        (
            good.split("&signature=").next().unwrap().to_owned(),
            "no signature",
        ),
    ] {
        let (reply, body) = get(addr, &tampered).await;
        assert_eq!(
            (reply.status, body["error"]["code"].as_str()),
            (403, Some("invalid_signature")),
            "{why}: {body}"
        );
    }
    let expired = sign(&aws, &["https://example.com/", "--expires-in", "0"]).await;
    let (reply, body) = get(addr, &expired).await;
    assert_eq!(
        (reply.status, body["error"]["code"].as_str()),
        (403, Some("link_expired")),
        "{body}"
    );
    // Signed, but what it asks for is refused like any request.
    for (args, status, code) in [
        (vec!["http://169.254.169.254/"], 422, "blocked_by_policy"),
        (
            vec!["https://example.com/", "--set", "width=0"],
            422,
            "out_of_range",
        ),
        (
            vec!["https://example.com/", "--set", "script=document.title"],
            403,
            "scripts_not_allowed",
        ),
        (
            vec!["https://example.com/", "--set", "force=true"],
            422,
            "invalid",
        ),
    ] {
        let link = sign(&aws, &args).await;
        let (reply, body) = get(addr, &link).await;
        assert_eq!(
            (reply.status, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{args:?}: {body}"
        );
    }
    assert_eq!(queued(&aws).await, 0, "nothing refused was queued");

    // A good link whose render is not ready within the wait: 503, and the
    // job is queued once for every view to share.
    for _ in 0..2 {
        let (reply, body) = get(addr, &good).await;
        assert_eq!(
            (reply.status, body["error"]["code"].as_str()),
            (503, Some("pending")),
            "{body}"
        );
        assert!(reply.header("retry-after").is_some());
    }
    assert_eq!(drain(&aws).await.len(), 1);
}

#[tokio::test]
async fn render_links_are_off_without_link_secrets() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &[]).await;
    let link = sign(&aws, &["https://example.com/"]).await;
    let (reply, body) = get(producer.addr, &link).await;
    assert_eq!(
        (reply.status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let mut args = vec![
        "url2png-producer",
        "--queue-url",
        &aws.queue.url,
        "--bucket",
        &aws.bucket,
    ];
    args.extend(["--link-secrets", "site:short"]);
    let config = Config::try_parse_from(args).unwrap();
    assert!(config.validate().unwrap_err().contains("16 characters"));
}

/// The README's Python snippet, as written there.
fn readme_snippet() -> String {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("### Render links").unwrap()..];
    let start = section.find("```python\n").unwrap() + "```python\n".len();
    let end = start + section[start..].find("```").unwrap();
    section[start..end].to_owned()
}

#[tokio::test]
async fn the_readmes_python_signer_makes_links_the_api_accepts() {
    let aws = TestAws::start().await;
    let secrets = format!("site:{SECRET}");
    let producer = start(
        &aws,
        &["--link-secrets", &secrets, "--link-wait-seconds", "0"],
    )
    .await;
    let script = format!(
        "{}\nprint(render_link('', 'site', '{SECRET}', 'https://example.com/a b?q=~x*y&z=ü', width=640, full_page=True, format='jpeg'))\n",
        readme_snippet()
    );
    let out = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (reply, body) = get(producer.addr, &link).await;
    // Accepted (queued, not rendered within a zero wait), not refused.
    assert_eq!(
        (reply.status, body["error"]["code"].as_str()),
        (503, Some("pending")),
        "{link}: {body}"
    );
    let jobs = drain(&aws).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].options.width, 640);
    assert!(jobs[0].options.full_page);
    assert_eq!(jobs[0].options.format, ImageFormat::Jpeg);
    let (reply, body) = get(producer.addr, &link.replace("640", "641")).await;
    assert_eq!(reply.status, 403, "{body}");
}
