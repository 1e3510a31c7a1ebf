//! The fixture server's own behaviour, which later tests rely on.

use std::time::Duration;

use url2png_testkit::{Fixtures, Page};

async fn get(url: &str) -> (u16, Option<String>, String) {
    // A minimal HTTP/1.0 client keeps the test free of an HTTP client crate.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = url::Url::parse(url).unwrap();
    let mut stream = tokio::net::TcpStream::connect((url.host_str().unwrap(), url.port().unwrap()))
        .await
        .unwrap();
    let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
    stream
        .write_all(format!("GET {target} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .map(str::to_owned);
    (status, location, body.to_owned())
}

#[tokio::test]
async fn serves_registered_and_default_pages_and_records_hits() {
    let fixtures = Fixtures::start().await;
    fixtures.page("/hello", Page::html("<p>hi</p>"));
    fixtures.page("/gone", Page::html("nope").status(410));

    assert_eq!(
        get(&fixtures.url("/hello")).await,
        (200, None, "<p>hi</p>".into())
    );
    assert_eq!(get(&fixtures.url("/gone")).await.0, 410);
    assert_eq!(get(&fixtures.url("/x?status=503")).await.0, 503);
    let (status, location, _) = get(&fixtures.url("/x?redirect=/hello")).await;
    assert_eq!((status, location.as_deref()), (302, Some("/hello")));
    let (status, _, body) = get(&fixtures.url("/any/path")).await;
    assert_eq!(status, 200);
    assert!(body.contains("fixture /any/path"));

    assert_eq!(fixtures.hits_on("/hello"), 1);
    assert_eq!(fixtures.hits_on("/x"), 2);
    let hits = fixtures.hits();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[2].query.as_deref(), Some("status=503"));
}

#[tokio::test]
async fn delays_and_hit_waiting() {
    let fixtures = Fixtures::start().await;
    let url = fixtures.url("/slow?delay_ms=2000");
    // The hit is recorded when the request arrives, before the delayed answer.
    let request = tokio::spawn(async move { get(&url).await });
    assert!(
        fixtures
            .wait_for_hits("/slow", 1, Duration::from_secs(10))
            .await
    );
    assert!(
        !request.is_finished(),
        "the answer is held back by the delay"
    );
    assert_eq!(request.await.unwrap().0, 200);
    assert!(
        !fixtures
            .wait_for_hits("/never", 1, Duration::from_millis(100))
            .await
    );
}
