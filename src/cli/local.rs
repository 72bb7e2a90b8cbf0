//! CLI commands that work offline: filter and cesql evaluation, CRD generation.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::event::Event;
use crate::filter::Filter;
use crate::resources::Trigger;
use crate::resources::validation::{typed, validate_trigger};

fn read_event(path: &Path) -> anyhow::Result<Event> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    crate::event::parse_structured(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid structured CloudEvent: {e}",
            path.display()
        )
    })
}

pub fn filter_eval(trigger_path: &Path, event_path: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(trigger_path)
        .with_context(|| format!("cannot read {}", trigger_path.display()))?;
    let manifests = crate::resources::parse_manifests(&text, &trigger_path.display().to_string())
        .map_err(anyhow::Error::msg)?;
    let manifest = manifests
        .into_iter()
        .find(|m| m.kind.kind == "Trigger")
        .ok_or_else(|| anyhow::anyhow!("{} holds no Trigger", trigger_path.display()))?;
    let trigger: Trigger =
        typed(&manifest.object).map_err(|e| anyhow::anyhow!("{}: {e}", manifest.origin))?;
    validate_trigger(&trigger).map_err(|e| anyhow::anyhow!("{}: {e}", manifest.origin))?;
    let filter = Filter::for_trigger(&trigger.spec).map_err(anyhow::Error::msg)?;
    let event = read_event(event_path)?;
    Ok(match filter.evaluate(&event) {
        crate::filter::Outcome::Match => {
            println!("match");
            ExitCode::SUCCESS
        }
        crate::filter::Outcome::NoMatch => {
            println!("no match");
            ExitCode::from(1)
        }
        crate::filter::Outcome::EvaluationError(kind) => {
            println!("no match (cesql {kind} error)");
            ExitCode::from(1)
        }
    })
}

pub fn cesql_eval(
    expression: &str,
    event: Option<&Path>,
    output: &str,
) -> anyhow::Result<ExitCode> {
    let compiled =
        crate::cesql::Expression::parse(expression).map_err(|e| anyhow::anyhow!("{e}"))?;
    let event = match event {
        Some(path) => read_event(path)?,
        // Without --event only an expression that reads no attribute has a meaning.
        None => {
            let read = attributes_read(&compiled);
            if !read.is_empty() {
                anyhow::bail!(
                    "the expression reads {}; give the event to evaluate it against with --event FILE (structured JSON)",
                    read.join(", ")
                );
            }
            crate::event::parse_structured(
                br#"{"specversion":"1.0","id":"cli","source":"rivulet-cli","type":"rivulet.cli"}"#,
            )
            .expect("the built-in event is valid")
        }
    };
    let evaluation = compiled.evaluate(&event);
    let error_kind = evaluation.error.as_ref().map(|e| e.kind());
    match output {
        "json" => {
            let value = match &evaluation.value {
                crate::cesql::Value::Boolean(b) => serde_json::json!(b),
                crate::cesql::Value::Integer(i) => serde_json::json!(i),
                crate::cesql::Value::String(s) => serde_json::json!(s),
            };
            let report = serde_json::json!({
                "value": value,
                "type": evaluation.value.value_type().to_string(),
                "error": evaluation.error.as_ref().map(|e| serde_json::json!({
                    "kind": e.kind(),
                    "message": e.message(),
                })),
            });
            println!("{report}");
        }
        "text" => {
            println!("{}", evaluation.value);
            if let Some(error) = &evaluation.error {
                println!("error: {} ({})", error.kind(), error.message());
            }
        }
        other => anyhow::bail!("unknown output {other:?}; use text or json"),
    }
    Ok(if error_kind.is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `rivulet crds`: the CRDs as YAML, to stdout or to `output`.
pub fn crds(format: super::OutputFormat, to: Option<&Path>) -> anyhow::Result<ExitCode> {
    let text = match format {
        super::OutputFormat::Yaml => crate::resources::crds_yaml()?,
        // A Kubernetes List, which `kubectl apply -f` takes as it takes the YAML documents.
        super::OutputFormat::Json => {
            let list = serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "items": crate::resources::crds()?,
            });
            format!("{}\n", serde_json::to_string_pretty(&list)?)
        }
        other => anyhow::bail!(
            "crds prints yaml or json, not {}",
            format!("{other:?}").to_lowercase()
        ),
    };
    match to {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to stdout")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The attributes an expression reads when evaluated (against an event that has none).
fn attributes_read(expression: &crate::cesql::Expression) -> Vec<String> {
    struct Probe(std::cell::RefCell<Vec<String>>);
    impl crate::cesql::EventAttributes for Probe {
        fn attribute(&self, name: &str) -> Option<crate::cesql::Value<'_>> {
            let mut read = self.0.borrow_mut();
            if !read.iter().any(|n| n == name) {
                read.push(name.to_string());
            }
            None
        }
    }
    let probe = Probe(std::cell::RefCell::default());
    let _ = expression.evaluate(&probe);
    probe.0.into_inner()
}
