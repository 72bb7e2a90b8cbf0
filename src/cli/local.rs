//! CLI commands that work offline: filter and cesql evaluation.

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
    let _ = (expression, event, output);
    anyhow::bail!("cesql evaluation is not available in this build")
}
