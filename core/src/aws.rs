//! AWS client construction.
//!
//! Everything comes from aws-config's default chain (environment, shared
//! profile, ECS task role, instance profile), so the same binary runs on
//! ECS and on a laptop. Endpoint overrides follow the SDK's own rules:
//! `AWS_ENDPOINT_URL` for every service and `AWS_ENDPOINT_URL_<SERVICE>`
//! (for example `AWS_ENDPOINT_URL_SQS`) for one, which is how the fleet is
//! pointed at a local emulator. When S3 has an override, requests use
//! path-style addressing: an emulator host such as `moto:5000` cannot take
//! the bucket as a sub-domain.
//!
//! Every call has a time limit per attempt ([`AwsOptions::attempt_timeout`],
//! default [`DEFAULT_ATTEMPT_TIMEOUT`]) on top of the SDK's connect timeout.
//! Without it, a connection that goes silent (a NAT entry or a load
//! balancer dropped on the way, a black-holed route) would hold its call
//! for ever; with it, the attempt fails as a timeout and the SDK retries on
//! a fresh connection. A long poll adds its wait time to the limit
//! ([`long_poll_timeouts`]).

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;
use aws_types::region::Region;
use aws_types::service_config::ServiceConfigKey;

/// Explicit settings that take precedence over the default chain. Binaries
/// use [`AwsOptions::default`] and let the environment decide; tests pass
/// the emulator's endpoint and throwaway credentials without touching the
/// process environment.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// Endpoint for every service, like `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// Region, like `AWS_REGION`.
    pub region: Option<String>,
    /// Static access key id and secret, instead of the credential chain.
    pub static_credentials: Option<(String, String)>,
    /// Limit on one attempt of a call; [`DEFAULT_ATTEMPT_TIMEOUT`] if unset.
    pub attempt_timeout: Option<Duration>,
}

/// How long one attempt of an AWS call may take before it is abandoned
/// and retried, unless configured otherwise. SQS and S3 answer small calls
/// in milliseconds; ten seconds leaves room for a slow moment while
/// keeping a silent connection from holding a call for long.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time to open a connection (the SDK's own default is 3.1 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Timeouts with `attempt` as the limit on one attempt.
pub fn timeouts(attempt: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(attempt)
        .build()
}

/// Timeouts whose attempt limit is `config`'s (or the default) plus
/// `extra`, for a call that may rightly take longer than a small one.
fn extended(config: Option<&TimeoutConfig>, extra: Duration) -> TimeoutConfig {
    let attempt = config
        .and_then(TimeoutConfig::operation_attempt_timeout)
        .unwrap_or(DEFAULT_ATTEMPT_TIMEOUT);
    timeouts(attempt + extra)
}

/// Timeouts for a long poll of `wait` made with `config`'s clients: the
/// configured attempt limit on top of the time the service may wait.
pub fn long_poll_timeouts(config: Option<&TimeoutConfig>, wait: Duration) -> TimeoutConfig {
    extended(config, wait)
}

/// Timeouts for uploading `bytes` with `config`'s clients: the configured
/// attempt limit plus a second per MiB, so a large image on a slow link is
/// not cut off while a silent connection still is.
pub fn upload_timeouts(config: Option<&TimeoutConfig>, bytes: usize) -> TimeoutConfig {
    extended(config, Duration::from_secs((bytes >> 20) as u64))
}

impl AwsOptions {
    /// Options for a local emulator at `endpoint_url`, with dummy
    /// credentials in `us-east-1`.
    pub fn emulator(endpoint_url: impl Into<String>) -> Self {
        Self {
            endpoint_url: Some(endpoint_url.into()),
            region: Some("us-east-1".into()),
            static_credentials: Some(("testing".into(), "testing".into())),
            attempt_timeout: None,
        }
    }
}

/// Load the shared SDK configuration: the default chain, with `options`
/// on top.
pub async fn load_config(options: &AwsOptions) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts(
        options.attempt_timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT),
    ));
    if let Some(url) = &options.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some((id, secret)) = &options.static_credentials {
        loader = loader.credentials_provider(Credentials::from_keys(id, secret, None));
    }
    loader.load().await
}

/// The endpoint override that applies to one service, if any: the
/// service-specific variable or profile setting, else the global one.
/// `service_id` is the SDK's service id in upper snake case, e.g. `S3`.
pub fn endpoint_override(config: &SdkConfig, service_id: &str) -> Option<String> {
    let specific = config.service_config().and_then(|service| {
        let key = ServiceConfigKey::builder()
            .service_id(service_id)
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .ok()?;
        service.load_config(key)
    });
    specific.or_else(|| config.endpoint_url().map(str::to_owned))
}

/// An SQS client.
pub fn sqs(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}

/// An S3 client, with path-style addressing whenever an endpoint override
/// applies to S3.
pub fn s3(config: &SdkConfig) -> aws_sdk_s3::Client {
    let path_style = endpoint_override(config, "S3").is_some();
    let s3_config = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(s3_config)
}

/// The two clients every binary with a queue and a bucket needs.
#[derive(Debug, Clone)]
pub struct Clients {
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
}

impl Clients {
    /// Build both from the default chain with `options` on top.
    pub async fn load(options: &AwsOptions) -> Self {
        Self::from_config(&load_config(options).await)
    }

    /// Build both from a loaded configuration.
    pub fn from_config(config: &SdkConfig) -> Self {
        Self {
            sqs: sqs(config),
            s3: s3(config),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn explicit_endpoint_applies_to_every_service() {
        let config = load_config(&AwsOptions::emulator("http://moto:5000")).await;
        assert_eq!(
            endpoint_override(&config, "S3").as_deref(),
            Some("http://moto:5000")
        );
        assert_eq!(
            endpoint_override(&config, "SQS").as_deref(),
            Some("http://moto:5000")
        );
        assert_eq!(config.region().map(|r| r.as_ref()), Some("us-east-1"));
    }

    #[tokio::test]
    async fn every_call_has_an_attempt_limit() {
        let config = load_config(&AwsOptions::emulator("http://moto:5000")).await;
        let timeouts = config.timeout_config().expect("timeouts are set");
        assert_eq!(
            timeouts.operation_attempt_timeout(),
            Some(DEFAULT_ATTEMPT_TIMEOUT)
        );
        assert_eq!(timeouts.connect_timeout(), Some(CONNECT_TIMEOUT));
        let options = AwsOptions {
            attempt_timeout: Some(Duration::from_secs(4)),
            ..AwsOptions::emulator("http://moto:5000")
        };
        let config = load_config(&options).await;
        let sqs = sqs(&config);
        let timeouts = sqs.config().timeout_config();
        assert_eq!(
            timeouts.and_then(TimeoutConfig::operation_attempt_timeout),
            Some(Duration::from_secs(4)),
            "clients inherit the limit"
        );
        assert_eq!(
            long_poll_timeouts(timeouts, Duration::from_secs(20)).operation_attempt_timeout(),
            Some(Duration::from_secs(24))
        );
        assert_eq!(
            upload_timeouts(timeouts, 5 << 20).operation_attempt_timeout(),
            Some(Duration::from_secs(9))
        );
        assert_eq!(
            upload_timeouts(None, 1000).operation_attempt_timeout(),
            Some(DEFAULT_ATTEMPT_TIMEOUT)
        );
    }
}
