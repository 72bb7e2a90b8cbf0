//! The event display sink: prints every CloudEvent it receives in a readable form, like
//! Knative's event display service. `rivulet display` runs it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::event::{self, Event, ExtensionValue};

/// Renders an event for people: attributes, extensions, then data.
pub fn render(event: &Event) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "CloudEvent {}", event.specversion.as_str());
    let _ = writeln!(out, "  attributes:");
    for name in [
        "type",
        "source",
        "id",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "schemaurl",
    ] {
        if let Some(value) = event.attribute(name) {
            let _ = writeln!(out, "    {name}: {value}");
        }
    }
    if !event.extensions.is_empty() {
        let _ = writeln!(out, "  extensions:");
        for (name, value) in &event.extensions {
            let shown = match value {
                ExtensionValue::String(s) => s.clone(),
                ExtensionValue::Integer(i) => i.to_string(),
                ExtensionValue::Boolean(b) => b.to_string(),
            };
            let _ = writeln!(out, "    {name}: {shown}");
        }
    }
    if let Some(data) = &event.data {
        let _ = writeln!(out, "  data:");
        // Shown as sent: re-formatting JSON could change numbers the sender chose.
        let text = match std::str::from_utf8(data) {
            Ok(text) => text.to_string(),
            Err(_) => format!("({} bytes of binary data)", data.len()),
        };
        for line in text.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

/// Where rendered events go.
pub type Output = Arc<dyn Fn(String) + Send + Sync>;

/// The display sink's HTTP routes: any path, POST.
pub fn router(output: Output) -> axum::Router {
    axum::Router::new().fallback(receive).with_state(output)
}

async fn receive(State(output): State<Output>, request: Request) -> Response {
    if request.method() != axum::http::Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST CloudEvents here\n").into_response();
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "body over 16 MiB\n").into_response(),
    };
    match event::from_http(&parts.headers, body) {
        Ok((_, events)) => {
            for event in &events {
                output(render(event));
            }
            StatusCode::ACCEPTED.into_response()
        }
        Err(error) => (
            StatusCode::BAD_REQUEST,
            format!("not a valid CloudEvent: {error}\n"),
        )
            .into_response(),
    }
}

/// Serves the display sink on `listen`, printing to stdout, until the process ends.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "event display listening on http://{}",
        listener.local_addr()?
    );
    let output: Output = Arc::new(|text| println!("{text}"));
    axum::serve(listener, router(output)).await?;
    Ok(())
}
