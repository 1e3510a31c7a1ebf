//! S3 through the client `core` builds: put, head and get, with path-style
//! addressing against an emulator host name.

use aws_sdk_s3::primitives::ByteStream;
use url2png_core::aws::{AwsOptions, Clients};
use url2png_core::{FailureReason, FailureRecord, ImageFormat, KeyLayout};
use url2png_testkit::TestAws;
use uuid::Uuid;

#[tokio::test]
async fn put_head_and_get_an_image_and_a_failure_record() {
    let aws = TestAws::start().await;
    // `localhost` rather than 127.0.0.1: with virtual-host addressing the
    // request would go to `<bucket>.localhost`, which does not resolve, so
    // this passes only with path-style addressing.
    let port = aws.moto.endpoint().rsplit(':').next().unwrap();
    let clients = Clients::load(&AwsOptions::emulator(format!("http://localhost:{port}"))).await;
    let layout = KeyLayout::new("shots/").unwrap();
    let id = Uuid::new_v4();
    let key = layout.image(id, ImageFormat::Png);
    let image = b"\x89PNG\r\n\x1a\nnot really".to_vec();

    clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(&key)
        .content_type(ImageFormat::Png.content_type())
        .metadata("width", "1280")
        .body(ByteStream::from(image.clone()))
        .send()
        .await
        .unwrap();

    let head = clients
        .s3
        .head_object()
        .bucket(&aws.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(image.len() as i64));
    assert_eq!(head.content_type(), Some("image/png"));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("width"))
            .map(String::as_str),
        Some("1280")
    );

    let got = clients
        .s3
        .get_object()
        .bucket(&aws.bucket)
        .key(&key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(got.as_ref(), image.as_slice());

    let record = FailureRecord {
        id,
        url: Some("https://example.com/".into()),
        reason: FailureReason::Timeout,
        message: "The job's timeout of 30000 ms ran out during navigation.".into(),
        detail: None,
        phase: Some(url2png_core::keys::Phase::Navigation),
        http_status: None,
        refused: None,
        attempts: 2,
        failed_at: time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap(),
        report: None,
        webhook_url: None,
    };
    clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(layout.failure(id))
        .content_type("application/json")
        .body(ByteStream::from(record.to_json().into_bytes()))
        .send()
        .await
        .unwrap();
    let stored = clients
        .s3
        .get_object()
        .bucket(&aws.bucket)
        .key(layout.failure(id))
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(FailureRecord::from_json(&stored).unwrap(), record);
}

#[tokio::test]
async fn head_of_a_missing_object_is_not_found() {
    let aws = TestAws::start().await;
    let err = aws
        .clients
        .s3
        .head_object()
        .bucket(&aws.bucket)
        .key(KeyLayout::default().image(Uuid::new_v4(), ImageFormat::Png))
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error().is_some_and(|e| e.is_not_found()),
        "{err:?}"
    );
}
