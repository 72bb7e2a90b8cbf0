//! Sink adapters: HTTP endpoints that take CloudEvents and hand them to something outside.

pub mod display;
