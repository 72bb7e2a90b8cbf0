//! The event display sink: prints every CloudEvent it receives in a readable form, like
//! Knative's event display service. `rivulet display` runs it on its own; the
//! `EventDisplaySink` kind (`sinks.rivulet.dev/v1alpha1`) runs it inside `rivulet serve`,
//! printing to the server's standard output.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use rivulet_core::knative_sink;
use rivulet_core::resources::apply;
use serde_json::Value;

use super::{Built, Outlet, SinkError, SinkKey, SinkKind, SinkStatus};
use rivulet_control::runtime::Context;
use rivulet_core::event::{Event, ExtensionValue};
use rivulet_core::resources::Condition;
use rivulet_core::resources::validation::{ValidateSpec, ValidationError, typed};

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

/// The display sink: renders each event to its output.
pub struct Display {
    output: Output,
}

impl Display {
    pub fn new(output: Output) -> Self {
        Self { output }
    }

    /// A display printing to standard output.
    pub fn stdout() -> Self {
        Self::new(Arc::new(|text| println!("{text}")))
    }
}

#[async_trait]
impl Outlet for Display {
    async fn accept(&self, event: Event) -> Result<(), SinkError> {
        (self.output)(render(&event));
        Ok(())
    }
}

/// The display sink's HTTP routes: any path, POST.
pub fn router(output: Output) -> axum::Router {
    super::router(Arc::new(Display::new(output)))
}

/// Serves the display sink on `listen`, printing to stdout, until the process ends, under
/// the same listener limits `rivulet serve` has by default (timeouts, connections, headers).
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    use rivulet_broker::listener::{ListenerGuard, ListenerLimits, connection_limit};
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "event display listening on http://{}",
        listener.local_addr()?
    );
    let limits = ListenerLimits::default();
    let open_files = rivulet_broker::listener::raise_open_files_limit();
    let guard = ListenerGuard::new(
        "event_display",
        &limits,
        connection_limit(&limits, open_files, 1),
        &rivulet_core::metrics::Metrics::new(),
    );
    rivulet_broker::tls::serve(
        listener,
        super::router(Arc::new(Display::stdout())),
        None,
        rivulet_core::features::FeatureFlags::default(),
        guard,
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// `EventDisplaySink`: an addressable sink inside `rivulet serve` that prints what it gets.
#[apply(knative_sink!)]
#[kube(
    group = "sinks.rivulet.dev",
    version = "v1alpha1",
    kind = "EventDisplaySink"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventDisplaySinkSpec {}

crate::register_sink! {
    EventDisplaySink {
        group: "sinks.rivulet.dev",
        version: "v1alpha1",
    }
}

/// Nothing to check beyond the schema: the sink has nothing to configure.
impl ValidateSpec for EventDisplaySinkSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

impl SinkKind for EventDisplaySink {
    const KIND: &'static str = "EventDisplaySink";
    const PLURAL: &'static str = "eventdisplaysinks";

    fn from_object(object: &Value) -> Result<Self, ValidationError> {
        // `spec` may be left out: the sink has nothing to configure.
        if object.get("spec").is_none_or(Value::is_null) {
            let mut object = object.clone();
            object["spec"] = Value::Object(Default::default());
            return typed(&object);
        }
        typed(object)
    }

    async fn build(&self, _key: &SinkKey, _ctx: &Arc<Context>) -> Result<Built, Condition> {
        Ok(Built {
            outlet: Arc::new(Display::stdout()),
            fingerprint: String::new(),
            conditions: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn the_display_renders_what_it_accepts() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Display::new({
            let seen = seen.clone();
            Arc::new(move |text| seen.lock().unwrap().push(text))
        });
        let event = rivulet_core::event::parse_structured(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"n":12345678901234567890123}}"#,
        )
        .unwrap();
        sink.accept(event).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].contains("type: t"), "{}", seen[0]);
        assert!(seen[0].contains("12345678901234567890123"), "{}", seen[0]);
    }

    #[test]
    fn spec_may_be_left_out_but_unknown_fields_are_refused() {
        let object = serde_json::json!({
            "apiVersion": "sinks.rivulet.dev/v1alpha1",
            "kind": "EventDisplaySink",
            "metadata": {"name": "show", "namespace": "default"}
        });
        assert!(crate::validate_sink::<EventDisplaySink>(&object, None).is_ok());
        let mut wrong = object.clone();
        wrong["spec"] = serde_json::json!({"colour": "red"});
        let error = crate::validate_sink::<EventDisplaySink>(&wrong, None).unwrap_err();
        assert!(error.to_string().contains("colour"), "{error}");
    }
}
