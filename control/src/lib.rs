//! Rivulet's control loop: the [`runtime`] runs one reconciler per kind against the store
//! (brokers, triggers, event types, policies; sources and sinks register theirs), resolves
//! destinations and writes status; [`api`] serves the resources over HTTP.
#![forbid(unsafe_code)]

pub mod api;
pub mod runtime;
