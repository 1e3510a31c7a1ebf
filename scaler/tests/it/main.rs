//! The scaler against a real `moto_server`: SQS, ECS, CloudWatch and
//! Application Auto Scaling.
//!
//! moto's CreateService reports no running task (pending = desired) and its
//! UpdateService sets running = desired; the helpers use that to put 0, 1
//! or 3 tasks in the running state.

use std::time::Duration;

use aws_sdk_applicationautoscaling::types::{ScalableDimension, ServiceNamespace};
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use aws_sdk_ecs::types::ContainerDefinition;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use url2png_core::aws::load_config;
use url2png_scaler::publish::{Clients, Metrics, Publisher, Settings};
use url2png_scaler::{Cli, Config};
use url2png_testkit::TestAws;

const CLUSTER: &str = "fleet";

struct Fleet {
    aws: TestAws,
    clients: Clients,
}

impl Fleet {
    async fn start() -> Self {
        let aws = TestAws::start().await;
        let clients = Clients::from_config(&load_config(&aws.moto.aws_options()).await);
        clients
            .ecs
            .create_cluster()
            .cluster_name(CLUSTER)
            .send()
            .await
            .unwrap();
        clients
            .ecs
            .register_task_definition()
            .family("worker")
            .container_definitions(
                ContainerDefinition::builder()
                    .name("worker")
                    .image("url2png-worker")
                    .memory(2048)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        Self { aws, clients }
    }

    /// A service with `running` tasks running.
    async fn service(&self, name: &str, running: i32) {
        self.clients
            .ecs
            .create_service()
            .cluster(CLUSTER)
            .service_name(name)
            .task_definition("worker")
            .desired_count(running)
            .send()
            .await
            .unwrap();
        self.set_desired(name, running).await;
    }

    async fn set_desired(&self, name: &str, count: i32) {
        self.clients
            .ecs
            .update_service()
            .cluster(CLUSTER)
            .service(name)
            .desired_count(count)
            .send()
            .await
            .unwrap();
    }

    async fn desired(&self, name: &str) -> i32 {
        let out = self
            .clients
            .ecs
            .describe_services()
            .cluster(CLUSTER)
            .services(name)
            .send()
            .await
            .unwrap();
        out.services()[0].desired_count()
    }

    /// `visible` messages waiting and `in_flight` received.
    async fn backlog(&self, visible: usize, in_flight: usize) {
        let bodies: Vec<String> = (0..visible + in_flight)
            .map(|i| format!("{{\"n\": {i}}}"))
            .collect();
        self.aws.send_bodies(&bodies).await;
        let mut received = 0;
        while received < in_flight {
            let out = self
                .clients
                .sqs
                .receive_message()
                .queue_url(&self.aws.queue.url)
                .max_number_of_messages(i32::try_from((in_flight - received).min(10)).unwrap())
                .visibility_timeout(600)
                .send()
                .await
                .unwrap();
            received += out.messages().len();
        }
        assert_eq!(
            self.aws.queue_counts(&self.aws.queue.url).await,
            (visible as u64, in_flight as u64)
        );
    }

    fn settings(&self, service: &str, extra: &[&str]) -> Settings {
        let mut args = vec![
            "url2png-scaler",
            "--queue-url",
            &self.aws.queue.url,
            "--cluster",
            CLUSTER,
            "--service",
            service,
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
            .unwrap()
            .config
            .settings()
            .unwrap()
    }

    fn publisher(&self, settings: Settings) -> (Publisher, prometheus::Registry) {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        (
            Publisher::new(settings, self.clients.clone(), metrics),
            registry,
        )
    }

    /// The datapoints of one metric with the publisher's dimensions.
    async fn datapoints(&self, namespace: &str, service: &str, metric: &str) -> Vec<f64> {
        let now = std::time::SystemTime::now();
        let out = self
            .clients
            .cloudwatch
            .get_metric_statistics()
            .namespace(namespace)
            .metric_name(metric)
            .dimensions(Dimension::builder().name("cluster").value(CLUSTER).build())
            .dimensions(Dimension::builder().name("service").value(service).build())
            .dimensions(
                Dimension::builder()
                    .name("queue")
                    .value(self.aws.queue.url.rsplit('/').next().unwrap())
                    .build(),
            )
            .start_time((now - Duration::from_secs(600)).into())
            .end_time((now + Duration::from_secs(600)).into())
            .period(60)
            .statistics(Statistic::Maximum)
            .send()
            .await
            .unwrap();
        out.datapoints()
            .iter()
            .filter_map(|d| d.maximum())
            .collect()
    }

    async fn metric_names(&self, namespace: &str) -> Vec<String> {
        let out = self
            .clients
            .cloudwatch
            .list_metrics()
            .namespace(namespace)
            .send()
            .await
            .unwrap();
        out.metrics()
            .iter()
            .filter_map(|m| m.metric_name().map(str::to_owned))
            .collect()
    }
}

use url2png_testkit::metrics::registered;

#[tokio::test]
async fn backlog_per_task_is_published_for_0_1_and_3_running_tasks() {
    let fleet = Fleet::start().await;
    fleet.backlog(9, 3).await;
    for (running, with_in_flight, without) in [(0, 12.0, 9.0), (1, 12.0, 9.0), (3, 4.0, 3.0)] {
        let service = format!("workers-{running}");
        fleet.service(&service, running).await;
        let (mut publisher, _) = fleet.publisher(fleet.settings(&service, &[]));
        let tick = publisher.tick().await.unwrap();
        assert_eq!(tick.reading.running, u32::try_from(running).unwrap());
        assert_eq!(tick.backlog_per_task, with_in_flight);
        assert_eq!(
            fleet
                .datapoints("url2png", &service, "BacklogPerTask")
                .await,
            [with_in_flight],
            "{running} running"
        );
        for (metric, value) in [
            ("ApproximateNumberOfMessagesVisible", 9.0),
            ("ApproximateNumberOfMessagesNotVisible", 3.0),
            ("ApproximateNumberOfMessagesDelayed", 0.0),
            ("RunningTaskCount", f64::from(running)),
            ("DesiredTaskCount", f64::from(running)),
        ] {
            assert_eq!(
                fleet.datapoints("url2png", &service, metric).await,
                [value],
                "{metric}"
            );
        }

        let (mut visible_only, _) = fleet.publisher(fleet.settings(
            &service,
            &[
                "--include-in-flight",
                "false",
                "--namespace",
                "url2png-visible",
            ],
        ));
        visible_only.tick().await.unwrap();
        assert_eq!(
            fleet
                .datapoints("url2png-visible", &service, "BacklogPerTask")
                .await,
            [without]
        );
    }
}

#[tokio::test]
async fn one_message_wakes_a_service_at_zero() {
    let fleet = Fleet::start().await;
    fleet.service("plain", 0).await;
    fleet.service("tracked", 0).await;
    fleet.service("threshold", 0).await;
    fleet
        .clients
        .autoscaling
        .register_scalable_target()
        .service_namespace(ServiceNamespace::Ecs)
        .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
        .resource_id(format!("service/{CLUSTER}/tracked"))
        .min_capacity(0)
        .max_capacity(5)
        .send()
        .await
        .unwrap();

    // Nothing waiting: nothing to do.
    let (mut idle, _) = fleet.publisher(fleet.settings("plain", &["--wake-tasks", "2"]));
    assert_eq!(idle.tick().await.unwrap().woke, None);
    assert_eq!(fleet.desired("plain").await, 0);

    fleet.backlog(1, 0).await;
    let (mut plain, registry) = fleet.publisher(fleet.settings("plain", &["--wake-tasks", "2"]));
    assert_eq!(plain.tick().await.unwrap().woke, Some(2));
    assert_eq!(fleet.desired("plain").await, 2, "UpdateService");
    assert_eq!(
        registered(
            &registry,
            "url2png_scaler_actions_total",
            &[("action", "wake")]
        ),
        1.0
    );

    let (mut tracked, _) = fleet.publisher(fleet.settings("tracked", &["--wake-tasks", "2"]));
    assert_eq!(tracked.tick().await.unwrap().woke, Some(2));
    assert_eq!(fleet.desired("tracked").await, 2);
    let target = fleet
        .clients
        .autoscaling
        .describe_scalable_targets()
        .service_namespace(ServiceNamespace::Ecs)
        .resource_ids(format!("service/{CLUSTER}/tracked"))
        .send()
        .await
        .unwrap();
    let target = &target.scalable_targets()[0];
    assert_eq!(
        (target.min_capacity(), target.max_capacity()),
        (2, 5),
        "the scalable target's minimum holds the woken tasks"
    );

    let (mut above, _) = fleet.publisher(fleet.settings(
        "threshold",
        &["--activation-threshold", "1", "--wake-tasks", "2"],
    ));
    assert_eq!(above.tick().await.unwrap().woke, None, "1 is not above 1");
    assert_eq!(fleet.desired("threshold").await, 0);
}

#[tokio::test]
async fn a_failing_read_publishes_nothing() {
    let fleet = Fleet::start().await;
    fleet.backlog(5, 0).await;
    let (mut missing, registry) = fleet.publisher(fleet.settings("no-such-service", &[]));
    let e = missing.tick().await.unwrap_err();
    assert!(format!("{e:#}").contains("no-such-service"), "{e:#}");
    assert_eq!(
        registered(
            &registry,
            "url2png_scaler_errors_total",
            &[("stage", "service")]
        ),
        1.0
    );
    assert_eq!(
        registered(
            &registry,
            "url2png_scaler_ticks_total",
            &[("result", "skipped")]
        ),
        1.0
    );

    let mut gone = fleet.settings("no-such-service", &[]);
    gone.queue_url = format!("{}-deleted", fleet.aws.queue.url);
    let (mut no_queue, registry) = fleet.publisher(gone);
    assert!(no_queue.tick().await.is_err());
    assert_eq!(
        registered(
            &registry,
            "url2png_scaler_errors_total",
            &[("stage", "queue")]
        ),
        1.0
    );
    assert!(
        fleet.metric_names("url2png").await.is_empty(),
        "no guessed datapoint"
    );
}

#[tokio::test]
async fn an_idle_queue_scales_the_service_to_zero_after_the_cool_down() {
    let fleet = Fleet::start().await;
    fleet.service("workers", 3).await;
    let mut settings = fleet.settings("workers", &[]);
    settings.scale_to_zero_after = Some(Duration::from_millis(1));
    let (mut publisher, _) = fleet.publisher(settings);
    // The first idle reading starts the clock.
    assert!(!publisher.tick().await.unwrap().scaled_to_zero);
    assert_eq!(fleet.desired("workers").await, 3);
    let idle = async {
        loop {
            if publisher.tick().await.unwrap().scaled_to_zero {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), idle)
        .await
        .expect("scaled to zero");
    assert_eq!(fleet.desired("workers").await, 0);

    // Work resets the clock: a busy queue is never scaled to zero.
    fleet.set_desired("workers", 3).await;
    fleet.backlog(0, 1).await;
    for _ in 0..3 {
        assert!(!publisher.tick().await.unwrap().scaled_to_zero);
    }
    assert_eq!(fleet.desired("workers").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaler_publishes_every_interval_and_stops_on_shutdown() {
    let fleet = Fleet::start().await;
    fleet.service("workers", 1).await;
    fleet.backlog(4, 0).await;
    let config: Config = Cli::try_parse_from([
        "url2png-scaler",
        "--queue-url",
        &fleet.aws.queue.url,
        "--cluster",
        CLUSTER,
        "--service",
        "workers",
        "--interval-seconds",
        "10",
        "--listen",
        "127.0.0.1:0",
    ])
    .unwrap()
    .config;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(url2png_scaler::run_with(
        config,
        fleet.clients.clone(),
        shutdown.clone(),
    ));
    let published = async {
        loop {
            let points = fleet
                .datapoints("url2png", "workers", "BacklogPerTask")
                .await;
            if !points.is_empty() {
                return points;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let points = tokio::time::timeout(Duration::from_secs(20), published)
        .await
        .expect("the first tick publishes at once");
    assert_eq!(points, [4.0]);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn webhook_deliveries_wake_a_service_at_zero_keep_it_up_and_are_published() {
    let fleet = Fleet::start().await;
    fleet.service("delivering", 0).await;
    let hooks = fleet
        .clients
        .sqs
        .create_queue()
        .queue_name(format!("{}-hooks", fleet.aws.bucket))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    // One delivery in backoff (received, hidden), no job at all.
    fleet
        .clients
        .sqs
        .send_message()
        .queue_url(&hooks)
        .message_body("{}")
        .send()
        .await
        .unwrap();
    fleet
        .clients
        .sqs
        .receive_message()
        .queue_url(&hooks)
        .visibility_timeout(600)
        .send()
        .await
        .unwrap();
    let mut settings = fleet.settings(
        "delivering",
        &["--webhook-queue-url", &hooks, "--activation-threshold", "5"],
    );
    settings.scale_to_zero_after = Some(Duration::from_millis(1));
    let (mut publisher, _) = fleet.publisher(settings);
    let tick = publisher.tick().await.unwrap();
    assert_eq!(tick.reading.deliveries, 1);
    assert_eq!(tick.backlog_per_task, 0.0, "deliveries are not render work");
    assert_eq!(tick.woke, Some(1), "under the threshold, a delivery wakes");
    assert_eq!(fleet.desired("delivering").await, 1);
    for _ in 0..3 {
        assert!(!publisher.tick().await.unwrap().scaled_to_zero);
    }
    assert_eq!(fleet.desired("delivering").await, 1);
    assert_eq!(
        fleet
            .datapoints("url2png", "delivering", "WebhookDeliveries")
            .await
            .first(),
        Some(&1.0)
    );
}
