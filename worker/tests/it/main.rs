//! Integration tests of the worker against a real `moto_server`, real
//! Chromium and loopback fixture pages.

mod support;

mod egress;
mod endings;
mod fonts;
mod hostile_pages;
mod isolation;
mod lifecycle;
mod options;
mod protection;
mod rendering;
mod report;
mod resilience;
mod webhook;
