//! Settings every binary shares, as clap arguments that are also
//! environment variables. Each binary flattens [`CommonArgs`] into its own
//! `Config`.

use std::net::SocketAddr;

use clap::Args;

use crate::telemetry::LogFormat;

/// Logging and how AWS is called.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Log line format: `json` (one object per line, for CloudWatch Logs)
    /// or `text`. Filter with `RUST_LOG`.
    #[arg(long, env = "URL2PNG_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,

    /// Limit on one attempt of an AWS call, in seconds (1..=300): a call
    /// whose connection goes silent is abandoned and retried on a fresh
    /// one. Long polls add their wait, uploads a second per MiB.
    #[arg(long, env = "URL2PNG_AWS_TIMEOUT_SECONDS", default_value_t = 10)]
    pub aws_timeout_seconds: u64,

    /// Check the settings and exit, without calling AWS or starting
    /// anything: 0 when the binary would start with them, 2 and the reason
    /// otherwise (deploy/task_definitions.py runs it on every task
    /// definition the template can make).
    #[arg(long)]
    pub check_config: bool,
}

/// The end of `--check-config`: the verdict on stdout or stderr, and the
/// exit code.
pub fn exit_after_check(verdict: Result<(), String>) -> ! {
    match verdict {
        Ok(()) => {
            println!("configuration ok");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("configuration refused: {e}");
            std::process::exit(2)
        }
    }
}

impl CommonArgs {
    /// AWS settings from the default chain, with this attempt limit, or
    /// what is wrong with it.
    pub fn aws_options(&self) -> Result<crate::aws::AwsOptions, String> {
        if !(1..=300).contains(&self.aws_timeout_seconds) {
            return Err(format!(
                "URL2PNG_AWS_TIMEOUT_SECONDS must be 1..=300, not {}",
                self.aws_timeout_seconds
            ));
        }
        Ok(crate::aws::AwsOptions {
            attempt_timeout: Some(std::time::Duration::from_secs(self.aws_timeout_seconds)),
            ..Default::default()
        })
    }
}

/// Where jobs and their results live: the queue, the bucket and the key
/// prefix, the same for the producer and the worker.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// URL of the job queue.
    #[arg(long, env = "URL2PNG_QUEUE_URL")]
    pub queue_url: String,

    /// Bucket the images and failure records go to.
    #[arg(long, env = "URL2PNG_BUCKET")]
    pub bucket: String,

    /// Prefix of every key in the bucket (e.g. `shots/`).
    #[arg(long, env = "URL2PNG_KEY_PREFIX", default_value = "")]
    pub key_prefix: String,
}

/// How job ids are minted and checked (`crate::id`): the producer and
/// `submit` alike.
#[derive(Debug, Clone, Args)]
pub struct IdArgs {
    /// Key of the HMAC tag in every job id, so that the status API answers
    /// `404` for an id it never accepted. The same on every producer and
    /// `submit`; empty, the tag still catches made-up and mistyped ids but
    /// anyone can compute it.
    #[arg(
        long,
        env = "URL2PNG_ID_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub id_secret: String,
}

/// How the links in a status document are made: the API's base URL and
/// the presigned image URL. The producer answers status documents and the
/// worker sends them to webhooks; both make them alike from these.
#[derive(Debug, Clone, Args)]
pub struct LinkArgs {
    /// Base URL clients reach the API at, for the URLs in responses
    /// (empty: relative URLs).
    #[arg(long, env = "URL2PNG_PUBLIC_URL", default_value = "")]
    pub public_url: String,

    /// S3 endpoint that image URLs are signed for, when clients reach S3 at
    /// another address than the service does (for example a local
    /// emulator: `moto:5000` inside compose, `localhost:5000` in the
    /// browser); empty: the service's own.
    #[arg(long, env = "URL2PNG_PRESIGN_ENDPOINT_URL", default_value = "")]
    pub presign_endpoint_url: String,

    /// Lifetime of presigned image URLs, in seconds (1..=604800).
    #[arg(long, env = "URL2PNG_PRESIGN_SECONDS", default_value_t = 900)]
    pub presign_seconds: u64,
}

impl LinkArgs {
    /// What is wrong with the settings, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=604_800).contains(&self.presign_seconds) {
            return Err(format!(
                "URL2PNG_PRESIGN_SECONDS={} is outside 1..=604800",
                self.presign_seconds
            ));
        }
        Ok(())
    }

    /// How long a presigned image URL is valid.
    pub fn presign_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.presign_seconds)
    }

    /// The client that presigns image URLs: `s3` itself, or a copy aimed
    /// at [`presign_endpoint_url`](Self::presign_endpoint_url).
    pub fn presigner(&self, s3: &aws_sdk_s3::Client) -> aws_sdk_s3::Client {
        if self.presign_endpoint_url.is_empty() {
            return s3.clone();
        }
        aws_sdk_s3::Client::from_conf(
            s3.config()
                .to_builder()
                .endpoint_url(&self.presign_endpoint_url)
                .force_path_style(true)
                .build(),
        )
    }
}

impl StoreArgs {
    /// The key layout, or what is wrong with the settings.
    pub fn layout(&self) -> Result<crate::keys::KeyLayout, String> {
        if self.queue_url.trim().is_empty() {
            return Err("URL2PNG_QUEUE_URL is empty".into());
        }
        if self.bucket.trim().is_empty() {
            return Err("URL2PNG_BUCKET is empty".into());
        }
        crate::keys::KeyLayout::new(self.key_prefix.clone()).map_err(|e| e.to_string())
    }
}

/// The outbound URL policy's operator rules (see [`crate::policy`]).
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// CIDRs, addresses and host names (`*.example.com` for a domain) that
    /// may be reached although the built-in rules refuse them, e.g.
    /// `127.0.0.1/32` for local development. Comma-separated.
    #[arg(
        long = "egress-allow",
        env = "URL2PNG_EGRESS_ALLOW",
        default_value = ""
    )]
    pub allow: String,

    /// CIDRs, addresses and host names that may never be reached; they win
    /// over the allow list. Comma-separated.
    #[arg(long = "egress-deny", env = "URL2PNG_EGRESS_DENY", default_value = "")]
    pub deny: String,

    /// The only ports that may be reached (empty: any). Comma-separated.
    #[arg(
        long = "egress-ports",
        env = "URL2PNG_EGRESS_PORTS",
        default_value = ""
    )]
    pub ports: String,
}

impl PolicyArgs {
    /// The policy these rules make, or what is wrong with them.
    pub fn policy(&self) -> Result<crate::policy::UrlPolicy, String> {
        crate::policy::UrlPolicy::new(&self.allow, &self.deny, &self.ports)
    }
}

/// Parse a socket address such as `0.0.0.0:9090` or `127.0.0.1:0`.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|e| format!("`{s}` is not an address like 127.0.0.1:9090: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn log_format_flag() {
        let cli = Cli::try_parse_from(["x", "--log-format", "text"]).unwrap();
        assert_eq!(cli.common.log_format, LogFormat::Text);
        assert!(Cli::try_parse_from(["x", "--log-format", "yaml"]).is_err());
        assert!(parse_addr("127.0.0.1:0").is_ok());
        assert!(parse_addr("localhost").is_err());
        let options = cli.common.aws_options().unwrap();
        assert_eq!(
            options.attempt_timeout,
            Some(std::time::Duration::from_secs(10))
        );
        let cli = Cli::try_parse_from(["x", "--aws-timeout-seconds", "0"]).unwrap();
        assert!(cli.common.aws_options().unwrap_err().contains("1..=300"));
    }
}
