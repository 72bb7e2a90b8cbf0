//! Rivulet's data path: [`ingress`] takes events into the channel of a broker in the
//! [`brokers`] table, the [`dispatcher`] reads them for each trigger and [`delivery`] sends
//! them, under the [`egress`] policy, over TLS ([`tls`]) with OIDC tokens ([`auth`]).
//! [`listener`] serves HTTP with bounds on connections; [`telemetry`] traces the path over
//! OTLP when configured.
#![forbid(unsafe_code)]

pub mod auth;
pub mod brokers;
pub mod delivery;
pub mod dispatcher;
pub mod egress;
pub mod health;
pub mod ingress;
pub mod journal;
pub mod listener;
pub mod telemetry;
pub mod tls;
