//! Runs the CloudEvents SQL v1.0 TCK (the `cesql-tck/*.yaml` files of the conformance
//! folder) against `rivulet::cesql`.
//!
//! The folder is `$RIVULET_CONFORMANCE_DIR`, else `../shared/conformance` beside the
//! workspace root; without it the test says so and skips.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use rivulet::cesql::{Expression, Value};
use serde::Deserialize;

const EXPECTED_CASES: usize = 275;

#[derive(Debug, Deserialize)]
struct Suite {
    name: String,
    tests: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    /// Kept as raw text: unquoted scalars such as `TRUE` or `-10` are expressions too.
    expression: String,
    result: Option<Scalar>,
    error: Option<String>,
    event: Option<BTreeMap<String, Scalar>>,
    event_overrides: Option<BTreeMap<String, Scalar>>,
}

/// A YAML scalar with its YAML type, which becomes the CESQL type of the value.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Boolean(bool),
    Integer(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl serde::de::Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean, an integer or a string")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Boolean(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Integer)
                    .map_err(|_| E::custom(format!("integer {v} out of range")))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                // Timestamps and URIs stay text exactly as written (offsets included).
                Ok(Scalar::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

impl Scalar {
    fn to_value(&self) -> Result<Value<'static>, String> {
        Ok(match self {
            Scalar::Boolean(b) => Value::Boolean(*b),
            Scalar::Integer(i) => Value::Integer(
                i32::try_from(*i).map_err(|_| format!("{i} is not a 32-bit integer"))?,
            ),
            Scalar::Text(s) => Value::String(Cow::Owned(s.clone())),
        })
    }
}

/// A complete valid event; carries none of the attributes the TCK treats as missing.
fn base_event() -> HashMap<String, Value<'static>> {
    [
        ("specversion", "1.0"),
        ("id", "tck-base-id"),
        ("source", "http://localhost/tck"),
        ("type", "io.cloudevents.tck"),
        ("subject", "tck-subject"),
        ("time", "2018-04-26T14:48:09+02:00"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), Value::String(Cow::Owned(value.to_owned()))))
    .collect()
}

fn event_for(case: &Case) -> Result<HashMap<String, Value<'static>>, String> {
    let mut event = match &case.event {
        Some(_) => HashMap::new(),
        None => base_event(),
    };
    for (name, scalar) in case.event.iter().chain(&case.event_overrides).flatten() {
        event.insert(name.to_ascii_lowercase(), scalar.to_value()?);
    }
    Ok(event)
}

/// Runs one case; `Err` says how it failed.
fn parse_suite(text: &str) -> Result<Suite, String> {
    serde_saphyr::from_str(text).map_err(|e| e.to_string())
}

fn run_case(case: &Case) -> Result<(), String> {
    let expected_value = case.result.as_ref().map(Scalar::to_value).transpose()?;
    let expected_error = case.error.as_deref();
    let event = event_for(case)?;
    let expression = match Expression::parse(&case.expression) {
        Ok(expression) => expression,
        Err(parse_error) => {
            // A parse error has no evaluation; the TCK gives `false` where it names a result.
            return match (expected_error, &expected_value) {
                (Some("parse"), None | Some(Value::Boolean(false))) => Ok(()),
                _ => Err(format!("unexpected {parse_error}")),
            };
        }
    };
    if expected_error == Some("parse") {
        return Err("expected a parse error, but the expression parsed".to_owned());
    }
    let evaluation = expression.evaluate(&event);
    let actual_error = evaluation.error.as_ref().map(|e| e.kind());
    if actual_error != expected_error {
        return Err(format!(
            "expected error {expected_error:?}, got {actual_error:?} ({})",
            evaluation
                .error
                .as_ref()
                .map_or_else(String::new, ToString::to_string)
        ));
    }
    if let Some(expected) = expected_value
        && evaluation.value != expected
    {
        return Err(format!("expected {expected:?}, got {:?}", evaluation.value));
    }
    Ok(())
}

#[test]
fn cesql_tck() {
    let Some(suites) = crate::conformance_suite("cesql-tck", "yaml", parse_suite) else {
        return;
    };
    let cases: Vec<(&String, &Suite, &Case)> = suites
        .iter()
        .flat_map(|(file_name, suite)| suite.tests.iter().map(move |case| (file_name, suite, case)))
        .collect();
    let total = cases.len();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(file_name, suite, case)| {
            let reason = run_case(case).err()?;
            Some(format!(
                "{file_name} [{}] {:?}: `{}`: {reason}",
                suite.name, case.name, case.expression
            ))
        })
        .collect();
    for failure in &failures {
        eprintln!("FAIL {failure}");
    }
    println!(
        "CESQL TCK: {} of {total} cases passed",
        total - failures.len()
    );
    assert!(failures.is_empty(), "{} TCK case(s) failed", failures.len());
    assert_eq!(total, EXPECTED_CASES, "TCK case count changed");
}
