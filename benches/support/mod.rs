//! What the footprint and soak benchmarks share: the bare baseline server and small helpers.

use std::net::{SocketAddr, TcpListener};

/// The baseline: a bare axum server on two tokio workers answering 202 to every request.
pub fn bare_server(listen: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .expect("the bare server binds");
        let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::ACCEPTED });
        axum::serve(listener, app)
            .await
            .expect("the bare server runs");
    });
}

pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}
