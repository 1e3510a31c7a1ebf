//! Test support for the url2png crates: real parts on loopback, no mocks.
//!
//! - [`moto`]: a `moto_server` on a free port with a queue, its dead-letter
//!   queue and a bucket ([`TestAws`]);
//! - [`chromium`]: a headless Chromium to drive directly ([`TestBrowser`]);
//! - [`fixtures`]: a web server for fixture pages that can delay, redirect,
//!   fail and record what it was asked ([`Fixtures`]).

pub mod chromium;
pub mod fixtures;
pub mod moto;

pub use chromium::TestBrowser;
pub use fixtures::{Fixtures, Hit, Page};
pub use moto::{Moto, TestAws, TestAwsOptions, TestQueue};
