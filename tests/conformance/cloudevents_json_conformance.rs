//! Runs the CloudEvents JSON-format conformance vectors (valid and invalid single events and
//! batches) against the structured-mode parser, and checks that every valid event survives a
//! round trip through `to_json`.
//!
//! The vectors are read from the folder named by `RIVULET_CONFORMANCE_DIR`, else from
//! `../shared/conformance` next to the workspace; when neither exists the test is skipped.

use rivulet::event::{Event, parse_batch, parse_structured, to_json};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VectorFile {
    test_type: String,
    tests: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    /// Kept as raw text so numbers and spacing reach the parser exactly as written.
    event: Option<Box<RawValue>>,
    batch: Option<Box<RawValue>>,
}

/// Every attribute written in the vector must read back with the same canonical string.
fn attributes_match(json: &str, event: &Event) -> Result<(), String> {
    let object: serde_json::Map<String, Value> =
        serde_json::from_str(json).map_err(|e| format!("vector is not an object: {e}"))?;
    for (name, value) in object {
        let expected = match value {
            Value::Null => continue,
            _ if name == "data" || name == "data_base64" => continue,
            Value::String(text) => text,
            other => other.to_string(),
        };
        match event.attribute(&name) {
            Some(actual) if actual == expected => {}
            actual => {
                return Err(format!(
                    "attribute {name}: expected {expected:?}, read {actual:?}"
                ));
            }
        }
    }
    Ok(())
}

fn round_trips(event: &Event) -> Result<(), String> {
    let written = to_json(event);
    match parse_structured(written.as_bytes()) {
        Ok(again) if &again == event => Ok(()),
        Ok(again) => Err(format!(
            "round trip changed the event: {event:?} -> {again:?}"
        )),
        Err(e) => Err(format!(
            "to_json wrote {written}, which does not parse: {e}"
        )),
    }
}

fn check_valid_event(json: &str) -> Result<(), String> {
    let event = parse_structured(json.as_bytes()).map_err(|e| format!("refused: {e}"))?;
    attributes_match(json, &event)?;
    round_trips(&event)
}

fn check_valid_batch(json: &str) -> Result<(), String> {
    let events = parse_batch(json.as_bytes()).map_err(|e| format!("refused: {e}"))?;
    let elements: Vec<&RawValue> =
        serde_json::from_str(json).map_err(|e| format!("vector is not an array: {e}"))?;
    if events.len() != elements.len() {
        return Err(format!(
            "read {} events from a batch of {}",
            events.len(),
            elements.len()
        ));
    }
    for (element, event) in elements.iter().zip(&events) {
        attributes_match(element.get(), event)?;
        round_trips(event)?;
    }
    Ok(())
}

fn expect_refused<T: std::fmt::Debug>(
    result: Result<T, rivulet::event::EventError>,
) -> Result<(), String> {
    match result {
        Ok(accepted) => Err(format!("accepted an invalid case: {accepted:?}")),
        Err(e) if e.0.is_empty() => Err("refused without saying why".to_string()),
        Err(_) => Ok(()),
    }
}

#[test]
fn cloudevents_json_conformance_vectors() {
    let Some(files) = crate::conformance_suite("cloudevents-json", "json", |text| {
        serde_json::from_str::<VectorFile>(text)
    }) else {
        return;
    };

    let mut checked = 0;
    let mut failures = Vec::new();
    for (_, file) in &files {
        for case in &file.tests {
            let outcome = match (file.test_type.as_str(), &case.event, &case.batch) {
                ("ValidSingleEvent", Some(event), _) => check_valid_event(event.get()),
                ("InvalidSingleEvent", Some(event), _) => {
                    expect_refused(parse_structured(event.get().as_bytes()))
                }
                ("ValidBatch", _, Some(batch)) => check_valid_batch(batch.get()),
                ("InvalidBatch", _, Some(batch)) => {
                    expect_refused(parse_batch(batch.get().as_bytes()))
                }
                (kind, _, _) => Err(format!("unknown test type {kind} or missing input")),
            };
            checked += 1;
            if let Err(why) = outcome {
                failures.push(format!("{} ({}): {why}", case.id, file.test_type));
            }
        }
    }
    assert!(
        checked > 0,
        "no cases in the cloudevents-json conformance suite"
    );
    rivulet_testkit::assert_no_failures(&failures, checked);
    eprintln!("{checked} CloudEvents JSON conformance cases passed");
}
