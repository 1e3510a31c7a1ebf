//! `url2png-core`: what the producer, the worker and the scaler share.
//!
//! - [`job`]: the job message contract, the only type put on the queue;
//! - [`keys`]: where a job's image and failure record live in S3;
//! - [`report`]: the render report the worker stores with every job;
//! - [`status`]: the status document, and webhook deliveries;
//! - [`aws`]: AWS clients from the default chain, emulator-aware;
//! - [`telemetry`]: tracing and the Prometheus registry;
//! - [`shutdown`]: the process-wide cancellation token;
//! - [`config`]: settings every binary shares;
//! - [`ops`]: the `/healthz` and `/metrics` endpoint;
//! - [`policy`]: which URLs may be loaded and which addresses reached.

#[cfg(feature = "runtime")]
pub mod aws;
#[cfg(feature = "runtime")]
pub mod config;
pub mod id;
pub mod job;
pub mod keys;
#[cfg(feature = "runtime")]
pub mod ops;
pub mod options;
pub mod policy;
pub mod report;
#[cfg(feature = "runtime")]
pub mod shutdown;
pub mod status;
#[cfg(feature = "runtime")]
pub mod telemetry;

pub use job::{ContractError, ErrorCode, ImageFormat, JobMessage, RenderOptions, WaitFor};
pub use keys::{FailureReason, FailureRecord, KeyLayout};
