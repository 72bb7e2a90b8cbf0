//! Trigger filters: Knative's legacy attribute filter and the subscriptions API dialects,
//! compiled once when a trigger is applied and evaluated per event.

use std::sync::Arc;

use rivulet_channels::Prefilter;

use crate::event::Event;
use crate::resources::{SubscriptionsApiFilter, TriggerSpec};

/// A compiled filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Matches every event.
    Everything,
    /// The attribute exists and equals the value.
    Exact {
        attribute: String,
        value: String,
    },
    /// The attribute exists (legacy filter with an empty value).
    Exists {
        attribute: String,
    },
    Prefix {
        attribute: String,
        value: String,
    },
    Suffix {
        attribute: String,
        value: String,
    },
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Cesql(Arc<crate::cesql::Expression>),
}

/// What one evaluation found; cesql evaluation errors count as no match and are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Match,
    NoMatch,
    /// A cesql expression failed to evaluate (the error kind); treated as no match.
    EvaluationError(&'static str),
}

impl Outcome {
    pub fn is_match(self) -> bool {
        self == Outcome::Match
    }
}

/// Compiles a cesql expression, with the error as a person-readable message.
pub fn compile_cesql(expression: &str) -> Result<crate::cesql::Expression, String> {
    crate::cesql::Expression::parse(expression).map_err(|e| e.to_string())
}

impl Filter {
    /// The filter of a trigger: `filters` when set (all must match), otherwise the legacy
    /// `filter.attributes`, otherwise everything. Knative ignores `filter` when `filters` is set.
    pub fn for_trigger(spec: &TriggerSpec) -> Result<Filter, String> {
        if !spec.filters.is_empty() {
            let compiled = spec
                .filters
                .iter()
                .map(Filter::compile)
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(simplify_all(compiled));
        }
        let Some(legacy) = &spec.filter else {
            return Ok(Filter::Everything);
        };
        let parts = legacy
            .attributes
            .iter()
            .map(|(attribute, value)| {
                if value.is_empty() {
                    Filter::Exists {
                        attribute: attribute.clone(),
                    }
                } else {
                    Filter::Exact {
                        attribute: attribute.clone(),
                        value: value.clone(),
                    }
                }
            })
            .collect();
        Ok(simplify_all(parts))
    }

    /// Compiles one subscriptions API filter (assumed validated: exactly one dialect).
    pub fn compile(filter: &SubscriptionsApiFilter) -> Result<Filter, String> {
        fn single(map: &std::collections::BTreeMap<String, String>) -> (String, String) {
            map.iter()
                .next()
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap_or_default()
        }
        if let Some(map) = &filter.exact {
            let parts = map
                .iter()
                .map(|(attribute, value)| Filter::Exact {
                    attribute: attribute.clone(),
                    value: value.clone(),
                })
                .collect();
            return Ok(simplify_all(parts));
        }
        if let Some(map) = &filter.prefix {
            let (attribute, value) = single(map);
            return Ok(Filter::Prefix { attribute, value });
        }
        if let Some(map) = &filter.suffix {
            let (attribute, value) = single(map);
            return Ok(Filter::Suffix { attribute, value });
        }
        if let Some(list) = &filter.all {
            let parts = list.iter().map(Filter::compile).collect::<Result<_, _>>()?;
            return Ok(simplify_all(parts));
        }
        if let Some(list) = &filter.any {
            let parts = list.iter().map(Filter::compile).collect::<Result<_, _>>()?;
            return Ok(Filter::Any(parts));
        }
        if let Some(inner) = &filter.not {
            return Ok(Filter::Not(Box::new(Filter::compile(inner)?)));
        }
        if let Some(expression) = &filter.cesql {
            return Ok(Filter::Cesql(Arc::new(compile_cesql(expression)?)));
        }
        Err("a filter must set exactly one dialect".into())
    }

    /// Evaluates the filter against an event.
    pub fn evaluate(&self, event: &Event) -> Outcome {
        match self {
            Filter::Everything => Outcome::Match,
            Filter::Exact { attribute, value } => bool_outcome(
                event
                    .attribute(attribute)
                    .is_some_and(|v| v == value.as_str()),
            ),
            Filter::Exists { attribute } => bool_outcome(event.attribute(attribute).is_some()),
            Filter::Prefix { attribute, value } => bool_outcome(
                event
                    .attribute(attribute)
                    .is_some_and(|v| v.starts_with(value.as_str())),
            ),
            Filter::Suffix { attribute, value } => bool_outcome(
                event
                    .attribute(attribute)
                    .is_some_and(|v| v.ends_with(value.as_str())),
            ),
            Filter::All(parts) => {
                for part in parts {
                    let outcome = part.evaluate(event);
                    if !outcome.is_match() {
                        return outcome;
                    }
                }
                Outcome::Match
            }
            Filter::Any(parts) => {
                let mut last = Outcome::NoMatch;
                for part in parts {
                    let outcome = part.evaluate(event);
                    if outcome.is_match() {
                        return Outcome::Match;
                    }
                    if matches!(outcome, Outcome::EvaluationError(_)) {
                        last = outcome;
                    }
                }
                last
            }
            Filter::Not(inner) => match inner.evaluate(event) {
                Outcome::Match => Outcome::NoMatch,
                Outcome::NoMatch => Outcome::Match,
                // An expression that could not be evaluated matches neither way.
                error @ Outcome::EvaluationError(_) => error,
            },
            Filter::Cesql(expression) => match expression.test(event) {
                Ok(matched) => bool_outcome(matched),
                Err(kind) => Outcome::EvaluationError(kind),
            },
        }
    }

    /// The exact matches every accepted event must satisfy, for the channel to route on.
    pub fn prefilter(&self) -> Prefilter {
        let mut exact = Vec::new();
        self.collect_required_exact(&mut exact);
        exact.sort();
        exact.dedup();
        Prefilter { exact }
    }

    fn collect_required_exact(&self, out: &mut Vec<(String, String)>) {
        match self {
            Filter::Exact { attribute, value } => out.push((attribute.clone(), value.clone())),
            Filter::All(parts) => parts.iter().for_each(|p| p.collect_required_exact(out)),
            _ => {}
        }
    }
}

fn bool_outcome(matched: bool) -> Outcome {
    if matched {
        Outcome::Match
    } else {
        Outcome::NoMatch
    }
}

fn simplify_all(mut parts: Vec<Filter>) -> Filter {
    match parts.len() {
        0 => Filter::Everything,
        1 => parts.pop().expect("one part"),
        _ => Filter::All(parts),
    }
}

/// CloudEvents SQL reads attributes with their types: extension integers and booleans stay
/// typed, everything else is a string.
impl crate::cesql::EventAttributes for Event {
    fn attribute(&self, name: &str) -> Option<crate::cesql::Value<'_>> {
        use crate::cesql::Value;
        use crate::event::ExtensionValue;
        use std::borrow::Cow;
        if let Some(value) = self.extensions.get(name) {
            return Some(match value {
                ExtensionValue::String(s) => Value::String(Cow::Borrowed(s)),
                ExtensionValue::Integer(i) => Value::Integer(*i),
                ExtensionValue::Boolean(b) => Value::Boolean(*b),
            });
        }
        Event::attribute(self, name).map(Value::String)
    }
}
