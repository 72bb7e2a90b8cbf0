//! Discovery queries on EventType lists:
//! `GET /apis/eventing.knative.dev/v1beta3/namespaces/{ns}/eventtypes?broker=&type=&typePrefix=&source=&q=`.
//! Every given parameter must match.

use std::collections::BTreeMap;

use serde_json::Value;

use super::pattern;
use rivulet_core::resources::eventtype::{GROUP, attribute_of, broker_of};

/// The query parameters of an EventType list.
pub const PARAMS: &[&str] = &["broker", "type", "typePrefix", "source", "q"];

inventory::submit! {
    rivulet_control::api::ListFilter {
        group: GROUP,
        plural: "eventtypes",
        params: PARAMS,
        matches,
    }
}

/// Whether a stored EventType matches the query:
/// - `broker`: the broker it refers to;
/// - `type`: its `type` exactly; `typePrefix`: the start of its `type`;
/// - `source`: its `source` exactly, or a concrete source its pattern covers (`/orders/42`
///   finds the EventType of `/orders/*`);
/// - `q`: case-insensitive text in its name, type, source, broker or description.
pub fn matches(object: &Value, params: &BTreeMap<String, String>) -> bool {
    let event_type = attribute_of(object, "type").unwrap_or_default();
    let source = attribute_of(object, "source");
    params.iter().all(|(name, wanted)| match name.as_str() {
        "broker" => broker_of(object) == Some(wanted.as_str()),
        "type" => event_type == wanted,
        "typePrefix" => event_type.starts_with(wanted.as_str()),
        "source" => source.is_some_and(|s| pattern::source_matches(s, wanted)),
        "q" => free_text(object, wanted),
        _ => false,
    })
}

fn free_text(object: &Value, wanted: &str) -> bool {
    let wanted = wanted.to_lowercase();
    let fields = [
        object.pointer("/metadata/name").and_then(Value::as_str),
        attribute_of(object, "type"),
        attribute_of(object, "source"),
        broker_of(object),
        object.pointer("/spec/description").and_then(Value::as_str),
    ];
    fields
        .into_iter()
        .flatten()
        .any(|text| text.to_lowercase().contains(&wanted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_parameter_must_match() {
        let object = json!({"metadata": {"name": "et-orders"},
            "spec": {"reference": {"kind": "Broker", "name": "shop"}, "description": "Order events",
                     "attributes": [{"name": "type", "value": "com.example.order.created"},
                                    {"name": "source", "value": "/orders/*"}]}});
        assert!(matches(&object, &params(&[("broker", "shop")])));
        assert!(!matches(&object, &params(&[("broker", "other")])));
        assert!(matches(
            &object,
            &params(&[("type", "com.example.order.created")])
        ));
        assert!(!matches(&object, &params(&[("type", "com.example.order")])));
        assert!(matches(
            &object,
            &params(&[("typePrefix", "com.example.order")])
        ));
        assert!(matches(&object, &params(&[("source", "/orders/42")])));
        assert!(matches(&object, &params(&[("source", "/orders/*")])));
        assert!(!matches(&object, &params(&[("source", "/carts/1")])));
        assert!(matches(&object, &params(&[("q", "ORDER EV")])));
        assert!(!matches(
            &object,
            &params(&[("q", "order"), ("broker", "other")])
        ));
    }
}
