//! A real `moto_server` on a free loopback port, and the queue, dead-letter
//! queue and bucket a test needs in it.
//!
//! The server binary is looked up in this order: `$MOTO_SERVER`, the
//! project's `.venv/bin/moto_server` (made by `script/bootstrap`), then
//! `moto_server` on `PATH`. Setting `URL2PNG_TEST_AWS_ENDPOINT` makes tests
//! use an emulator that is already running instead of starting one; pointed
//! at a wrong address, every test that needs AWS fails.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use url2png_core::aws::{AwsOptions, Clients};

/// Variable naming an emulator that is already running.
pub const ENDPOINT_ENV: &str = "URL2PNG_TEST_AWS_ENDPOINT";
/// How long the server may take to answer its first request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running emulator. Dropping it kills the server it started.
#[derive(Debug)]
pub struct Moto {
    child: Option<Child>,
    endpoint: String,
    log: Option<PathBuf>,
}

impl Moto {
    /// Start a server on a free port (or use `$URL2PNG_TEST_AWS_ENDPOINT`)
    /// and wait until it answers. Panics with the server's log if it never
    /// does: a test cannot go on without it.
    pub async fn start() -> Self {
        if let Ok(endpoint) = std::env::var(ENDPOINT_ENV) {
            return Self {
                child: None,
                endpoint,
                log: None,
            };
        }
        // A port picked by binding to port 0 can be taken again before the
        // server binds it; a server that exits at once is retried on another.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::spawn().await {
                Ok(moto) => return moto,
                Err(e) => last_error = e,
            }
        }
        panic!("moto_server did not start: {last_error}");
    }

    async fn spawn() -> Result<Self, String> {
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("url2png-moto-{port}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
        let binary = moto_binary();
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {}: {e} (run script/bootstrap, or set MOTO_SERVER)",
                    binary.display()
                )
            })?;
        let mut moto = Self {
            child: Some(child),
            endpoint,
            log: Some(log),
        };
        moto.wait_ready().await?;
        Ok(moto)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let sqs = Clients::load(&self.aws_options()).await.sqs;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "moto_server exited with {status}: {}",
                    self.log_tail()
                ));
            }
            let probe =
                tokio::time::timeout(Duration::from_secs(2), sqs.list_queues().send()).await;
            if let Ok(Ok(_)) = probe {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer within {STARTUP_TIMEOUT:?}: {}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The endpoint URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's request log (werkzeug's access log), when this process
    /// started the server.
    pub fn log_path(&self) -> Option<&std::path::Path> {
        self.log.as_deref()
    }

    /// The environment that points a child process (a binary under test)
    /// at this emulator, with throwaway credentials.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ]
    }

    /// Client options for this emulator.
    pub fn aws_options(&self) -> AwsOptions {
        AwsOptions::emulator(&self.endpoint)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(log) = &self.log {
            let _ = std::fs::remove_file(log);
        }
    }
}

fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return path.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// A loopback port that refuses connections for as long as the returned
/// socket lives: bound, never listening, so no other server of the
/// machine can take it meanwhile (as one could a port merely closed).
pub fn refusing_port() -> (u16, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind an ephemeral loopback port");
    let port = socket.local_addr().expect("its address").port();
    (port, socket)
}

/// Settings of the resources [`TestAws::start_with`] creates.
#[derive(Debug, Clone)]
pub struct TestAwsOptions {
    /// Receives after which SQS moves a message to the dead-letter queue.
    pub max_receive_count: u32,
    /// The main queue's default visibility timeout, in seconds.
    pub visibility_timeout_secs: u32,
}

impl Default for TestAwsOptions {
    fn default() -> Self {
        Self {
            max_receive_count: 3,
            visibility_timeout_secs: 30,
        }
    }
}

/// A queue with its dead-letter queue.
#[derive(Debug, Clone)]
pub struct TestQueue {
    pub url: String,
    pub arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
}

/// An emulator with a fresh queue, dead-letter queue and bucket, and
/// clients for it. Names are unique, so tests may share an emulator.
#[derive(Debug)]
pub struct TestAws {
    pub moto: Moto,
    pub clients: Clients,
    pub queue: TestQueue,
    pub bucket: String,
}

impl TestAws {
    /// Start an emulator with default resources.
    pub async fn start() -> Self {
        Self::start_with(TestAwsOptions::default()).await
    }

    /// Start an emulator with resources configured by `options`.
    pub async fn start_with(options: TestAwsOptions) -> Self {
        let moto = Moto::start().await;
        let clients = Clients::load(&moto.aws_options()).await;
        let name = format!(
            "url2png-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let queue = create_queue_with_dlq(&clients.sqs, &name, &options).await;
        clients
            .s3
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .expect("create bucket");
        Self {
            moto,
            clients,
            queue,
            bucket: name,
        }
    }
}

/// Create `<name>-dlq` and `<name>`, the latter redriving to the former.
pub async fn create_queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    options: &TestAwsOptions,
) -> TestQueue {
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("create dead-letter queue")
        .queue_url
        .expect("dead-letter queue URL");
    let dlq_arn = queue_arn(sqs, &dlq_url).await;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": options.max_receive_count.to_string(),
    });
    let url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            options.visibility_timeout_secs.to_string(),
        )
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue URL");
    let arn = queue_arn(sqs, &url).await;
    TestQueue {
        url,
        arn,
        dlq_url,
        dlq_arn,
    }
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("get queue attributes")
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .expect("queue ARN")
}

impl TestAws {
    /// Send raw bodies to the queue, in batches of 10.
    pub async fn send_bodies(&self, bodies: &[String]) {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .expect("entry has an id and a body")
                })
                .collect();
            let out = self
                .clients
                .sqs
                .send_message_batch()
                .queue_url(&self.queue.url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("send batch");
            assert!(out.failed.is_empty(), "{:?}", out.failed);
        }
    }

    /// (visible, in flight) counts of the queue at `url`.
    pub async fn queue_counts(&self, url: &str) -> (u64, u64) {
        let attrs = self
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("get queue attributes")
            .attributes
            .unwrap_or_default();
        let n = |k| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        (
            n(QueueAttributeName::ApproximateNumberOfMessages),
            n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Receive every message of the queue at `url` and return the bodies,
    /// leaving them invisible for ten minutes (so each is read once).
    pub async fn drain(&self, url: &str) -> Vec<String> {
        let mut bodies = Vec::new();
        let mut empty = 0;
        // Two empty answers in a row: one may be a momentary miss.
        while empty < 2 {
            let out = self
                .clients
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(600)
                .wait_time_seconds(0)
                .send()
                .await
                .expect("receive");
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                empty += 1;
            } else {
                empty = 0;
            }
            bodies.extend(messages.into_iter().filter_map(|m| m.body));
        }
        bodies
    }

    /// Every key in the bucket.
    pub async fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .clients
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .set_continuation_token(token)
                .send()
                .await
                .expect("list objects");
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match out.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => return keys,
            }
        }
    }

    /// The jobs' results in the bucket: images and failure records, not
    /// the render reports beside them or the producer's cache and
    /// idempotency records.
    pub async fn results(&self) -> Vec<String> {
        self.keys()
            .await
            .into_iter()
            .filter(|k| {
                !k.ends_with(".report.json")
                    && !k.starts_with("cache/")
                    && !k.starts_with("idempotency/")
            })
            .collect()
    }

    /// The bytes of an object in the bucket.
    pub async fn object(&self, key: &str) -> Vec<u8> {
        self.clients
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
            .body
            .collect()
            .await
            .expect("read object")
            .into_bytes()
            .to_vec()
    }
}
