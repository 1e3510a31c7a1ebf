//! SIGTERM cancels the shutdown token. A test binary of its own, because
//! it signals the whole process.

use std::time::Duration;

#[tokio::test]
async fn sigterm_cancels_the_token() {
    let token = url2png_core::shutdown::on_signals().unwrap();
    assert!(!token.is_cancelled());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(10), token.cancelled())
        .await
        .expect("token cancelled after SIGTERM");
}
