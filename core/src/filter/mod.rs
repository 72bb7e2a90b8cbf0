//! Trigger filters: Knative's legacy attribute filter and the subscriptions API dialects,
//! compiled once when a trigger is applied and evaluated per event.

use std::borrow::Cow;
use std::sync::Arc;

use rivulet_channels::{Envelope, Prefilter, RouteFilter};

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

    /// Evaluates the filter against an event (or a channel envelope of one: both give the
    /// same answer, as the consumer rebuilds its event from that envelope).
    pub fn evaluate<E: Attributes + ?Sized>(&self, event: &E) -> Outcome {
        match self {
            Filter::Everything => Outcome::Match,
            Filter::Exact { attribute, value } => {
                bool_outcome(event.text(attribute).is_some_and(|v| v == value.as_str()))
            }
            Filter::Exists { attribute } => bool_outcome(event.text(attribute).is_some()),
            Filter::Prefix { attribute, value } => bool_outcome(
                event
                    .text(attribute)
                    .is_some_and(|v| v.starts_with(value.as_str())),
            ),
            Filter::Suffix { attribute, value } => bool_outcome(
                event
                    .text(attribute)
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

    /// The kind of the part of this filter that refused `event` (which did not match): the
    /// first refusing part of an `all`, the whole of anything else. For the event journal.
    pub fn refused_by<E: Attributes + ?Sized>(&self, event: &E) -> &'static str {
        match self {
            Filter::Everything => "none",
            Filter::Exact { .. } => "exact",
            Filter::Exists { .. } => "exists",
            Filter::Prefix { .. } => "prefix",
            Filter::Suffix { .. } => "suffix",
            Filter::All(parts) => parts
                .iter()
                .find(|part| !part.evaluate(event).is_match())
                .map_or("all", |part| part.refused_by(event)),
            Filter::Any(_) => "any",
            Filter::Not(_) => "not",
            Filter::Cesql(_) => "cesql",
        }
    }

    /// The value an exact filter on `attribute` requires, when the filter requires one (by
    /// itself or as part of an `all`).
    pub fn exact_value(&self, attribute: &str) -> Option<&str> {
        match self {
            Filter::Exact {
                attribute: name,
                value,
            } if name == attribute => Some(value),
            Filter::All(parts) => parts.iter().find_map(|part| part.exact_value(attribute)),
            _ => None,
        }
    }

    /// What the channel routes on: the exact matches every accepted event must satisfy, and
    /// the whole filter when it says more than those, so in-process channels evaluate it
    /// once per event instead of handing every event to every trigger's consumer.
    pub fn prefilter(&self) -> Prefilter {
        let mut exact = Vec::new();
        self.collect_required_exact(&mut exact);
        exact.sort();
        exact.dedup();
        let mut prefix = Vec::new();
        self.collect_required_prefixes(&mut prefix);
        prefix.sort();
        prefix.dedup();
        let filter = (!self.is_said_by_pairs())
            .then(|| Arc::new(RoutedFilter(self.clone())) as Arc<dyn RouteFilter>);
        Prefilter {
            exact,
            prefix,
            filter,
        }
    }

    /// Whether the exact and prefix pairs say all there is to say.
    fn is_said_by_pairs(&self) -> bool {
        match self {
            Filter::Everything | Filter::Exact { .. } | Filter::Prefix { .. } => true,
            Filter::All(parts) => parts.iter().all(Filter::is_said_by_pairs),
            _ => false,
        }
    }

    fn collect_required_prefixes(&self, out: &mut Vec<(String, String)>) {
        match self {
            Filter::Prefix { attribute, value } => out.push((attribute.clone(), value.clone())),
            Filter::All(parts) => parts.iter().for_each(|p| p.collect_required_prefixes(out)),
            _ => {}
        }
    }

    fn collect_required_exact(&self, out: &mut Vec<(String, String)>) {
        match self {
            Filter::Exact { attribute, value } => out.push((attribute.clone(), value.clone())),
            Filter::All(parts) => parts.iter().for_each(|p| p.collect_required_exact(out)),
            Filter::Cesql(expression) => out.extend(expression.required_equalities()),
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

/// What a filter reads: attributes as text, and typed for CloudEvents SQL.
pub trait Attributes: crate::cesql::EventAttributes {
    fn text(&self, name: &str) -> Option<Cow<'_, str>>;
}

impl Attributes for Event {
    fn text(&self, name: &str) -> Option<Cow<'_, str>> {
        Event::attribute(self, name)
    }
}

/// A channel envelope holds every attribute as its canonical text, extensions included, which
/// is exactly what the consumer's event holds after `Event::from_envelope`.
impl Attributes for Envelope {
    fn text(&self, name: &str) -> Option<Cow<'_, str>> {
        Envelope::attribute(self, name).map(Cow::Borrowed)
    }
}

impl crate::cesql::EventAttributes for Envelope {
    fn attribute(&self, name: &str) -> Option<crate::cesql::Value<'_>> {
        Envelope::attribute(self, name).map(|v| crate::cesql::Value::String(Cow::Borrowed(v)))
    }

    fn data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }
}

/// A trigger's filter as the channel runs it while routing.
#[derive(Debug)]
struct RoutedFilter(Filter);

impl RouteFilter for RoutedFilter {
    fn may_match(&self, envelope: &Envelope) -> bool {
        // An evaluation error is the consumer's to report, so the event goes on to it.
        self.0.evaluate(envelope) != Outcome::NoMatch
    }

    fn identity(&self) -> String {
        format!("{:?}", self.0)
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

    fn data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{SubscriptionsApiFilter, TriggerFilter};
    use std::collections::BTreeMap;

    fn event(extra: &str) -> Event {
        let json = format!(
            r#"{{"specversion":"1.0","id":"1","source":"/sensors/kitchen","type":"com.example.reading"{extra}}}"#
        );
        crate::event::parse_structured(json.as_bytes()).unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn spec_with(filters: Vec<SubscriptionsApiFilter>) -> TriggerSpec {
        TriggerSpec {
            broker: "default".into(),
            filters,
            ..TriggerSpec::default()
        }
    }

    fn exact(k: &str, v: &str) -> SubscriptionsApiFilter {
        SubscriptionsApiFilter {
            exact: Some(map(&[(k, v)])),
            ..Default::default()
        }
    }

    #[test]
    fn the_refusing_part_of_an_all_is_named_and_the_type_value_found() {
        let filter = Filter::All(vec![
            Filter::Exact {
                attribute: "type".into(),
                value: "com.example.reading".into(),
            },
            Filter::Prefix {
                attribute: "source".into(),
                value: "/sensors/garden".into(),
            },
        ]);
        let event = event("");
        assert_eq!(filter.evaluate(&event), Outcome::NoMatch);
        assert_eq!(filter.refused_by(&event), "prefix");
        assert_eq!(filter.exact_value("type"), Some("com.example.reading"));
        assert_eq!(filter.exact_value("subject"), None);
        assert_eq!(Filter::Everything.exact_value("type"), None);
    }

    #[test]
    fn legacy_filter_matches_exact_values_and_empty_means_present() {
        let mut spec = spec_with(vec![]);
        spec.filter = Some(TriggerFilter {
            attributes: map(&[("type", "com.example.reading"), ("room", "")]),
        });
        let filter = Filter::for_trigger(&spec).unwrap();
        assert!(filter.evaluate(&event(r#","room":"kitchen""#)).is_match());
        assert!(!filter.evaluate(&event("")).is_match(), "room must exist");
        assert_eq!(
            filter.prefilter().exact,
            vec![("type".to_string(), "com.example.reading".to_string())]
        );
    }

    #[test]
    fn filters_replace_the_legacy_filter() {
        let mut spec = spec_with(vec![exact("type", "other")]);
        spec.filter = Some(TriggerFilter {
            attributes: map(&[("type", "com.example.reading")]),
        });
        let filter = Filter::for_trigger(&spec).unwrap();
        assert!(!filter.evaluate(&event("")).is_match());
    }

    #[test]
    fn prefix_suffix_any_not_nest() {
        let prefix = SubscriptionsApiFilter {
            prefix: Some(map(&[("type", "com.example.")])),
            ..Default::default()
        };
        let suffix = SubscriptionsApiFilter {
            suffix: Some(map(&[("source", "/garage")])),
            ..Default::default()
        };
        let not_garage = SubscriptionsApiFilter {
            not: Some(Box::new(suffix.clone())),
            ..Default::default()
        };
        let any = SubscriptionsApiFilter {
            any: Some(vec![suffix, exact("source", "/sensors/kitchen")]),
            ..Default::default()
        };
        let filter = Filter::for_trigger(&spec_with(vec![prefix, not_garage, any])).unwrap();
        assert!(filter.evaluate(&event("")).is_match());
        let garage = crate::event::parse_structured(
            br#"{"specversion":"1.0","id":"1","source":"/sensors/garage","type":"com.example.reading"}"#,
        )
        .unwrap();
        assert!(!filter.evaluate(&garage).is_match());
        assert!(
            filter.prefilter().exact.is_empty(),
            "nothing exact is required"
        );
    }

    #[test]
    fn cesql_errors_are_reported_and_do_not_match() {
        let cesql = |e: &str| SubscriptionsApiFilter {
            cesql: Some(e.to_string()),
            ..Default::default()
        };
        let filter = Filter::for_trigger(&spec_with(vec![cesql("exint > 10")])).unwrap();
        assert!(filter.evaluate(&event(r#","exint":11"#)).is_match());
        assert_eq!(
            filter.evaluate(&event("")),
            Outcome::EvaluationError("missingAttribute")
        );
        let negated = SubscriptionsApiFilter {
            not: Some(Box::new(cesql("exint > 10"))),
            ..Default::default()
        };
        let filter = Filter::for_trigger(&spec_with(vec![negated])).unwrap();
        assert!(
            !filter.evaluate(&event("")).is_match(),
            "an error matches neither way"
        );
        assert!(compile_cesql("type = ").unwrap_err().contains("position"));
    }

    #[test]
    fn the_data_extension_filters_on_the_payload_by_path() {
        let cesql = |e: &str| {
            Filter::for_trigger(&spec_with(vec![SubscriptionsApiFilter {
                cesql: Some(e.to_string()),
                ..Default::default()
            }]))
            .unwrap()
        };
        let order = event(
            r#","datacontenttype":"application/json","data":{"order":{"total":129,"price":12.5,"express":true,"items":[{"sku":"A-1"}],"note":null}}"#,
        );
        for matching in [
            "DATA('order.total') > 100",
            "DATA('order.items.0.sku') = 'A-1'",
            "DATA('/order/items/0/sku') = 'A-1'",
            "BOOL(DATA('order.express'))",
            // CESQL has no decimals: they compare as the text JSON writes.
            "DATA('order.price') = '12.5'",
            r#"DATA('order.items') LIKE '%"sku":"A-1"%'"#,
            "type = 'com.example.reading' AND DATA('order.total') >= 129",
        ] {
            assert!(cesql(matching).evaluate(&order).is_match(), "{matching}");
        }
        assert!(
            !cesql("DATA('order.total') > 200")
                .evaluate(&order)
                .is_match()
        );
        // What is not there is an evaluation error, which no filter matches (NOT neither).
        for (expression, on) in [
            ("DATA('order.missing') = 'x'", &order),
            ("DATA('order.note') = 'x'", &order),
            ("DATA('a') = 'x'", &event("")),
            (
                "DATA('a') = 'x'",
                &event(r#","datacontenttype":"text/plain","data":"a=x""#),
            ),
        ] {
            assert_eq!(
                cesql(expression).evaluate(on),
                Outcome::EvaluationError("functionEvaluation"),
                "{expression}"
            );
        }
        // A channel's envelope holds the data too, so routing sees the same.
        assert!(
            cesql("DATA('order.total') > 100")
                .evaluate(&order.to_envelope())
                .is_match()
        );
    }

    #[test]
    fn exact_filters_in_all_become_the_prefilter() {
        let all = SubscriptionsApiFilter {
            all: Some(vec![exact("type", "t"), exact("source", "s")]),
            ..Default::default()
        };
        let filter = Filter::for_trigger(&spec_with(vec![all])).unwrap();
        assert_eq!(filter.prefilter().exact.len(), 2);
    }

    #[test]
    fn the_channel_evaluates_the_same_filter_on_the_envelope() {
        let cesql = |expression: &str| SubscriptionsApiFilter {
            cesql: Some(expression.into()),
            ..Default::default()
        };
        let prefix = SubscriptionsApiFilter {
            prefix: Some(map(&[("type", "com.example.")])),
            ..Default::default()
        };
        let suffix = SubscriptionsApiFilter {
            suffix: Some(map(&[("source", "/kitchen")])),
            ..Default::default()
        };
        let filters = [
            vec![prefix.clone()],
            vec![suffix.clone()],
            vec![cesql("exint > 10 AND type LIKE 'com.%'")],
            vec![cesql("flag = TRUE")],
            vec![exact("type", "com.example.reading"), suffix],
            vec![SubscriptionsApiFilter {
                not: Some(Box::new(prefix)),
                ..Default::default()
            }],
        ];
        let events = [
            event(""),
            event(r#","exint":11"#),
            event(r#","exint":"3","flag":true"#),
            crate::event::parse_structured(
                br#"{"specversion":"1.0","id":"2","source":"/garage","type":"org.other"}"#,
            )
            .unwrap(),
        ];
        for filters in filters {
            let filter = Filter::for_trigger(&spec_with(filters.clone())).unwrap();
            let prefilter = filter.prefilter();
            let said_by_pairs = filters
                .iter()
                .all(|f| f.prefix.is_some() || f.exact.is_some());
            assert_eq!(prefilter.filter.is_none(), said_by_pairs, "{filters:?}");
            for event in &events {
                let envelope = event.to_envelope();
                // What the consumer decides, on the event it rebuilds from the envelope.
                let consumer = filter.evaluate(&Event::from_envelope(&envelope).unwrap());
                assert_eq!(
                    filter.evaluate(&envelope),
                    consumer,
                    "{filters:?} on {event:?}"
                );
                assert_eq!(
                    prefilter.matches(&envelope),
                    consumer != Outcome::NoMatch,
                    "{filters:?} on {event:?}"
                );
            }
        }
    }

    #[test]
    fn exact_only_filters_need_no_routing_filter() {
        let filter = Filter::for_trigger(&spec_with(vec![exact("type", "t")])).unwrap();
        assert!(filter.prefilter().filter.is_none());
        assert!(Filter::Everything.prefilter().filter.is_none());
    }

    #[test]
    fn cesql_equalities_with_text_become_exact_pairs() {
        let cesql = |expression: &str| {
            Filter::for_trigger(&spec_with(vec![SubscriptionsApiFilter {
                cesql: Some(expression.into()),
                ..Default::default()
            }]))
            .unwrap()
            .prefilter()
            .exact
        };
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            cesql("type = 'order.created' AND source LIKE '/shop/%' AND 'eu' = region"),
            vec![pair("region", "eu"), pair("type", "order.created")]
        );
        // Not required by every match, or not text equality: nothing to route on.
        assert!(cesql("type = 'a' OR type = 'b'").is_empty());
        assert!(cesql("NOT (type = 'a')").is_empty());
        assert!(cesql("exint = 5").is_empty());
        assert!(cesql("type != 'a'").is_empty());
    }
}
