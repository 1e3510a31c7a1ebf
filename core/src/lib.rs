//! `url2png-core`: what the producer, the worker and the scaler share.
//!
//! - [`job`]: the job message contract, the only type put on the queue;
//! - [`keys`]: where a job's image and failure record live in S3;
//! - [`aws`]: AWS clients from the default chain, emulator-aware;
//! - [`telemetry`]: tracing and the Prometheus registry;
//! - [`shutdown`]: the process-wide cancellation token;
//! - [`config`]: settings every binary shares;
//! - [`ops`]: the `/healthz` and `/metrics` endpoint;
//! - [`policy`]: which URLs may be loaded and which addresses reached.

pub mod aws;
pub mod config;
pub mod job;
pub mod keys;
pub mod ops;
pub mod policy;
pub mod shutdown;
pub mod telemetry;

pub use job::{ContractError, ErrorCode, ImageFormat, JobMessage, RenderOptions, WaitFor};
pub use keys::{FailureReason, FailureRecord, KeyLayout};
