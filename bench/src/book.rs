//! The book-style design, as the books and tutorials write it: receive one
//! message, launch a browser for it, open a page, set the viewport,
//! navigate and wait for `load`, screenshot, store, delete, close the
//! browser, sleep a second, poll again.

use std::time::{Duration, Instant};

use url2png_core::JobMessage;
use url2png_testkit::TestAws;
use url2png_worker::cdp;

const CALL: Duration = Duration::from_secs(30);

async fn render(chromium: &str, url: &str) -> anyhow::Result<Vec<u8>> {
    let profile = cdp::profile_dir("bench-book");
    std::fs::create_dir_all(&profile)?;
    let args = url2png_worker::pool::chromium_args(false, None, &[]);
    let launched = cdp::launch(chromium.as_ref(), &args, &profile, CALL)
        .await
        .map_err(anyhow::Error::msg)?;
    let (mut child, cdp) = (launched.child, launched.cdp);
    let shot = async {
        let (session, mut events) = crate::bare::open(&cdp, None).await?;
        crate::bare::shoot(&cdp, &session, &mut events, url).await
    }
    .await;
    let _ = child.kill().await;
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&profile);
    shot
}

/// Render `jobs` messages from the queue one at a time; the seconds taken.
pub async fn run(aws: &TestAws, chromium: &str, jobs: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut done = 0;
    while done < jobs {
        let received = aws
            .clients
            .sqs
            .receive_message()
            .queue_url(&aws.queue.url)
            .max_number_of_messages(1)
            .send()
            .await?;
        for message in received.messages() {
            let job = JobMessage::parse(message.body().unwrap_or_default().as_bytes())?;
            let png = render(chromium, &job.url).await?;
            aws.clients
                .s3
                .put_object()
                .bucket(&aws.bucket)
                .key(format!("{}.png", job.id))
                .body(png.into())
                .send()
                .await?;
            aws.clients
                .sqs
                .delete_message()
                .queue_url(&aws.queue.url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await?;
            done += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}
