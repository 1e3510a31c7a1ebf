//! Any bytes as an SQS message body: the parser never panics, and what it
//! accepts is valid, serialises, and parses back to the same job.

#![no_main]

use libfuzzer_sys::fuzz_target;
use url2png_core::JobMessage;
use url2png_core::policy::UrlPolicy;

fuzz_target!(|body: &[u8]| {
    match JobMessage::parse(body) {
        Ok(job) => {
            job.validate().expect("a parsed job is valid");
            let json = job.to_json();
            let again = JobMessage::parse(json.as_bytes()).expect("a parsed job parses again");
            assert_eq!(again.to_json(), json, "the round trip is exact");
            // The worker's next step: the URL policy decides, never panics.
            let _ = UrlPolicy::default().check_url(&job.url);
        }
        Err(error) => {
            // Every refusal can be reported.
            let _ = error.to_string();
        }
    }
});
