//! Test support for the url2png crates: real parts on loopback, no mocks.
//!
//! - [`moto`]: a `moto_server` on a free port with a queue, its dead-letter
//!   queue and a bucket ([`TestAws`]);
//! - [`chromium`]: a headless Chromium to drive directly ([`TestBrowser`]);
//! - [`fixtures`]: a web server for fixture pages that can delay, redirect,
//!   fail and record what it was asked ([`Fixtures`]);
//! - [`proxy`]: a loopback TCP proxy to break on demand ([`FaultProxy`]);
//! - [`sqs_proxy`]: an HTTP proxy that delays, swallows or spoils chosen
//!   SQS calls ([`SqsProxy`]);
//! - [`ledger`]: what became of a fault scenario's jobs ([`Ledger`]);
//! - [`load`]: a loopback HTTP load generator, bounded in time;
//! - [`metrics`]: a process's Prometheus metrics, scraped over HTTP.

pub mod chromium;
pub mod fixtures;
pub mod ledger;
pub mod load;
pub mod metrics;
pub mod moto;
pub mod proxy;
pub mod sqs_proxy;

pub use chromium::TestBrowser;
pub use fixtures::{Fixtures, Hit, Page};
pub use ledger::{Ledger, Tracked};
pub use moto::{Moto, TestAws, TestAwsOptions, TestQueue};
pub use proxy::FaultProxy;
pub use sqs_proxy::SqsProxy;
