//! Test support for the url2png crates: real parts on loopback, no mocks.
//!
//! - [`moto`]: a `moto_server` on a free port with a queue, its dead-letter
//!   queue and a bucket ([`TestAws`]);
//! - [`chromium`]: a headless Chromium to drive directly ([`TestBrowser`]);
//! - [`fonts`]: the page that shows which scripts have a font
//!   ([`FontSamples`]);
//! - [`fixtures`]: a web server for fixture pages that can delay, redirect,
//!   fail and record what it was asked ([`Fixtures`]);
//! - [`proxy`]: a loopback TCP proxy to break on demand ([`FaultProxy`]);
//! - [`aws_proxy`]: an HTTP proxy that delays, swallows or spoils chosen
//!   SQS calls and fails chosen S3 writes ([`AwsProxy`]);
//! - [`ledger`]: what became of a fault scenario's jobs ([`Ledger`]);
//! - [`load`]: a loopback HTTP load generator, bounded in time;
//! - [`metrics`]: a process's Prometheus metrics, scraped over HTTP or read
//!   from its registry;
//! - [`http`]: a minimal HTTP/1.1 client that shows exactly what came back;
//! - [`process`]: the binaries under test started against the emulator;
//! - [`wait`]: waiting for a condition ([`wait_for`]).

pub mod aws_proxy;
pub mod chromium;
pub mod fixtures;
pub mod fonts;
pub mod http;
pub mod ledger;
pub mod load;
pub mod metrics;
pub mod moto;
pub mod process;
pub mod proxy;
pub mod wait;

pub use aws_proxy::AwsProxy;
pub use chromium::TestBrowser;
pub use fixtures::{Fixtures, Hit, Page};
pub use fonts::FontSamples;
pub use ledger::{Ledger, Tracked};
pub use moto::{Moto, TestAws, TestAwsOptions, TestQueue};
pub use proxy::FaultProxy;
pub use wait::wait_for;
