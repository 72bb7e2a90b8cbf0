//! HTTP routes that kinds add to the server (a webhook source, a sink's receiver, the
//! xRegistry view), registered next to their code so the server keeps no list of them.

use std::sync::Arc;

use super::Context;

/// Which listener serves a set of routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `--listen`: where events come in; senders are authenticated per event (OIDC).
    Ingress,
    /// `--api-listen`: behind the API's bearer tokens.
    Api,
}

/// Routes added to one listener, registered with `inventory::submit!`.
pub struct HttpRoutes {
    pub listener: Listener,
    pub build: fn(Arc<Context>) -> axum::Router,
}

inventory::collect!(HttpRoutes);

/// Routes served on the API listener without a token: static files that hold no data (the
/// web console's page, which must load before anyone can log in). Anything that reads or
/// changes state belongs in [`HttpRoutes`] instead.
pub struct PublicRoutes {
    pub build: fn() -> axum::Router,
}

inventory::collect!(PublicRoutes);
