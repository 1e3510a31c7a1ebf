//! ECS task scale-in protection against a small fake of the ECS agent's
//! endpoint (it cannot run here) that records every call: set while a job
//! is held, renewed, retried after a refusal, cleared when idle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url2png_core::keys::KeyLayout;
use url2png_core::{ImageFormat, JobMessage, RenderOptions};
use url2png_testkit::fixtures::{Fixtures, Page};
use url2png_testkit::{TestAws, wait_for};
use url2png_worker::metrics::Metrics;
use url2png_worker::protection::{Busy, Protection, ProtectionSettings};

use crate::support::{counter, keys, send_jobs, start_worker};

/// One call the fake agent got.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    body: Value,
}

/// The agent's endpoint: answers its first `refuse_first` calls as ECS
/// does without `ecs:UpdateTaskProtection`, the rest as a success.
#[derive(Clone)]
struct FakeAgent {
    refuse_first: usize,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeAgent {
    /// The agent, and the `ECS_AGENT_URI` to give the worker.
    async fn start(refuse_first: usize) -> (Self, String) {
        let agent = Self {
            refuse_first,
            calls: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(agent.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (agent, format!("http://{addr}/api/task-0001"))
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    async fn wait_for_calls(&self, n: usize) -> Vec<Call> {
        wait_for(
            &format!("{n} calls to the agent"),
            Duration::from_secs(30),
            || async {
                let calls = self.calls();
                (calls.len() >= n).then_some(calls)
            },
        )
        .await
    }

    /// Waits for `n` calls, each answered and its answer counted by the
    /// worker.
    async fn wait_for_counted_calls(&self, n: usize, metrics: &Metrics) -> Vec<Call> {
        self.wait_for_counted(&format!("{n} calls to the agent"), metrics, |calls| {
            calls.len() >= n
        })
        .await
    }

    /// Waits until the calls so far satisfy `until`, and the worker has
    /// counted the answer to each (it counts a call, and sets
    /// `scale_in_protected`, only once the answer is in: after the call is
    /// recorded here).
    async fn wait_for_counted(
        &self,
        what: &str,
        metrics: &Metrics,
        until: impl Fn(&[Call]) -> bool,
    ) -> Vec<Call> {
        wait_for(
            &format!("{what}, each counted"),
            Duration::from_secs(30),
            || async {
                let calls = self.calls();
                let counted: u64 = ["set", "cleared", "failed"]
                    .iter()
                    .map(|label| counter(&metrics.scale_in_protection_calls, &[label]))
                    .sum();
                (counted == calls.len() as u64 && until(&calls)).then_some(calls)
            },
        )
        .await
    }
}

async fn answer(
    State(agent): State<FakeAgent>,
    method: Method,
    uri: Uri,
    body: String,
) -> (StatusCode, String) {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let enabled = body["ProtectionEnabled"].as_bool().unwrap_or(false);
    let mut calls = agent.calls.lock().unwrap();
    calls.push(Call {
        method,
        path: uri.path().to_owned(),
        body,
    });
    if calls.len() <= agent.refuse_first {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"Arn":"arn:aws:ecs:us-east-1:123456789012:task/c/0001","Code":"AccessDeniedException","Message":"not authorized to perform: ecs:UpdateTaskProtection"}}"#.into(),
        );
    }
    (
        StatusCode::OK,
        format!(
            r#"{{"protection":{{"ExpirationDate":"2026-12-07T13:00:00Z","ProtectionEnabled":{enabled},"TaskArn":"arn:aws:ecs:us-east-1:123456789012:task/c/0001"}}}}"#
        ),
    )
}

fn enabled(call: &Call) -> bool {
    call.body["ProtectionEnabled"]
        .as_bool()
        .expect("every call says ProtectionEnabled")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_protected_while_it_renders_and_cleared_once_idle() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    fixtures.page(
        "/slow",
        Page::html("<h1>slow</h1>").delay(Duration::from_secs(2)),
    );
    let (agent, agent_uri) = FakeAgent::start(0).await;
    let worker = start_worker(
        &aws,
        &[
            "--ecs-agent-uri",
            &agent_uri,
            "--scale-in-protection-minutes",
            "7",
            "--scale-in-protection-idle-seconds",
            "3",
        ],
    )
    .await;
    assert!(agent.calls().is_empty(), "an idle worker is not protected");

    let job = JobMessage::new(fixtures.url("/slow"), RenderOptions::default());
    let image = KeyLayout::default().image(job.id, ImageFormat::Png);
    send_jobs(&aws, std::slice::from_ref(&job)).await;

    let calls = agent.wait_for_counted_calls(1, &worker.metrics).await;
    assert_eq!(calls[0].method, Method::PUT);
    assert_eq!(calls[0].path, "/api/task-0001/task-protection/v1/state");
    assert!(enabled(&calls[0]));
    assert_eq!(calls[0].body["ExpiresInMinutes"], 7);
    assert!(
        !keys(&aws).await.contains(&image),
        "protection is set before the job's image is stored"
    );
    assert_eq!(worker.metrics.scale_in_protected.get(), 1);

    wait_for("the job's image", Duration::from_secs(60), || async {
        keys(&aws).await.contains(&image).then_some(())
    })
    .await;
    let calls = agent.wait_for_counted_calls(2, &worker.metrics).await;
    assert!(!enabled(&calls[1]), "cleared once idle: {calls:?}");
    assert!(calls[1].body.get("ExpiresInMinutes").is_none());
    assert_eq!(worker.metrics.scale_in_protected.get(), 0);
    assert_eq!(
        counter(&worker.metrics.scale_in_protection_calls, &["set"]),
        1
    );
    assert_eq!(
        counter(&worker.metrics.scale_in_protection_calls, &["cleared"]),
        1
    );
    worker.stop().await;
    assert_eq!(agent.calls().len(), 2, "nothing more to clear at stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_renders_while_the_agent_cannot_be_reached() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    fixtures.page("/page", Page::html("<h1>page</h1>"));
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let agent_uri = format!("http://{}/api/task-0001", closed.local_addr().unwrap());
    drop(closed);
    let worker = start_worker(&aws, &["--ecs-agent-uri", &agent_uri]).await;
    let job = JobMessage::new(fixtures.url("/page"), RenderOptions::default());
    let image = KeyLayout::default().image(job.id, ImageFormat::Png);
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    wait_for(
        "the job's image, stored without the agent",
        Duration::from_secs(60),
        || async { keys(&aws).await.contains(&image).then_some(()) },
    )
    .await;
    assert!(counter(&worker.metrics.scale_in_protection_calls, &["failed"]) >= 1);
    assert_eq!(worker.metrics.scale_in_protected.get(), 0);
    worker.stop().await;
}

fn settings(agent_uri: &str) -> ProtectionSettings {
    ProtectionSettings {
        agent_uri: url::Url::parse(agent_uri).unwrap(),
        expires_minutes: 1,
        renew: Duration::from_millis(300),
        idle: Duration::from_millis(200),
        retry: Duration::from_millis(200),
    }
}

#[tokio::test]
async fn protection_is_retried_after_a_refusal_renewed_while_held_and_cleared_at_stop() {
    let (agent, agent_uri) = FakeAgent::start(1).await;
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let busy = Busy::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        Protection::new(settings(&agent_uri), busy.clone(), metrics.clone()).run(stop.clone()),
    );

    let held = busy.hold();
    // Refused, set on the retry, then renewed twice.
    let calls = agent.wait_for_counted_calls(4, &metrics).await;
    assert!(calls[..4].iter().all(enabled), "{calls:?}");
    assert_eq!(counter(&metrics.scale_in_protection_calls, &["failed"]), 1);
    assert!(counter(&metrics.scale_in_protection_calls, &["set"]) >= 3);

    // Idle: cleared (a renewal may still be on its way when the message is
    // dropped), and nothing more is sent.
    drop(held);
    let calls = agent
        .wait_for_counted("a clear once idle", &metrics, |calls| {
            calls.last().is_some_and(|call| !enabled(call))
        })
        .await;
    let n = calls.len();
    assert_eq!(metrics.scale_in_protected.get(), 0);
    assert_eq!(counter(&metrics.scale_in_protection_calls, &["cleared"]), 1);

    // Held again, then the worker stops while it is protected: cleared at
    // the stop.
    let _held = busy.hold();
    let calls = agent.wait_for_calls(n + 1).await;
    assert!(
        enabled(&calls[n]),
        "the next call after the clear: {calls:?}"
    );
    stop.cancel();
    task.await.unwrap();
    let calls = agent.calls();
    assert!(!enabled(calls.last().unwrap()), "{calls:?}");
    assert_eq!(metrics.scale_in_protected.get(), 0);
}
