//! Clients pointed at an address where no emulator listens fail: the
//! emulator tests pass because they reach the emulator, not by accident.

use std::time::Duration;

use url2png_core::aws::{AwsOptions, Clients};
use url2png_testkit::moto::free_port;

#[tokio::test]
async fn sqs_and_s3_calls_fail_without_an_emulator() {
    let options = AwsOptions::emulator(format!("http://127.0.0.1:{}", free_port()));
    let clients = Clients::load(&options).await;
    let sqs = tokio::time::timeout(Duration::from_secs(60), clients.sqs.list_queues().send())
        .await
        .expect("the SDK gives up on a refused connection");
    assert!(sqs.is_err());
    let s3 = tokio::time::timeout(Duration::from_secs(60), clients.s3.list_buckets().send())
        .await
        .expect("the SDK gives up on a refused connection");
    assert!(s3.is_err());
}
