//! The control surface: the resource API and its authentication, limits, the CLI, reconcilers, policies, TLS, egress and loops.

mod api_auth;
mod at_rest;
mod cli;
mod console_endpoints;
mod controller;
mod controller_flows;
mod deletion;
mod delivery_health;
mod egress;
mod eventpolicy;
mod eventtypes;
mod graph;
mod input_limits;
mod journal;
mod kubernetes_store;
mod limits;
mod loops;
mod oidc;
mod reconcilers;
mod resource_api;
mod store_contract;
mod tls;
mod xregistry;
