//! Integration tests of `url2png-core` against a real `moto_server` and the
//! fixture server.

mod fixtures;
mod s3;
mod sqs;
mod wrong_endpoint;
