//! Defaults set on admission, as Knative's webhook sets them, so that `get -o yaml` after
//! `apply` shows what Knative would show:
//!
//! - a Broker without `eventing.knative.dev/broker.class` gets the default class of its
//!   namespace from `config-br-defaults` (namespace `knative-eventing`), else
//!   `MTChannelBasedBroker`; without `spec.config` (and `spec.delivery`) it gets those of the
//!   default entry when the entry is for its class;
//! - a Trigger without `spec.filter` gets `{}` (everything), and the label
//!   `eventing.knative.dev/broker` naming its broker;
//! - a reference without a namespace (`spec.subscriber.ref`, `spec.sink.ref`, `spec.reply.ref`,
//!   `spec.delivery.deadLetterSink.ref`, a Broker's `spec.config`) gets the object's namespace.
//!
//! On an update, a Broker that leaves out its class or `spec.config` keeps the stored ones
//! (both are immutable), so re-applying a manifest written without them still works.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

use super::{BROKER_CLASS_ANNOTATION, KindInfo};

/// Knative's system namespace, where `config-br-defaults` lives.
pub const BROKER_DEFAULTS_NAMESPACE: &str = "knative-eventing";
/// The ConfigMap holding the default broker class and configuration.
pub const BROKER_DEFAULTS_NAME: &str = "config-br-defaults";
/// Its key, in Knative's format.
const BROKER_DEFAULTS_KEY: &str = "default-br-config";
/// The class of a broker when nothing says otherwise (Knative's shipped default).
pub const DEFAULT_BROKER_CLASS: &str = "MTChannelBasedBroker";
/// The label Knative puts on a Trigger naming its broker.
pub const TRIGGER_BROKER_LABEL: &str = "eventing.knative.dev/broker";

/// The `default-br-config` document of `config-br-defaults`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerDefaults {
    #[serde(default)]
    cluster_default: Option<BrokerDefault>,
    #[serde(default)]
    namespace_defaults: BTreeMap<String, BrokerDefault>,
}

/// One default: a class, and the `spec.config` and `spec.delivery` that go with it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BrokerDefault {
    #[serde(default)]
    broker_class: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    delivery: Option<Value>,
}

impl BrokerDefaults {
    /// Reads the `config-br-defaults` ConfigMap object; a missing key means no defaults.
    pub fn from_config_map(config_map: &Value) -> Result<Self, String> {
        match config_map
            .pointer(&format!("/data/{BROKER_DEFAULTS_KEY}"))
            .and_then(Value::as_str)
        {
            None => Ok(Self::default()),
            Some(text) => serde_saphyr::from_str(text).map_err(|e| {
                format!("{BROKER_DEFAULTS_NAME}: {BROKER_DEFAULTS_KEY} is not valid: {e}")
            }),
        }
    }

    fn for_namespace(&self, namespace: &str) -> Option<&BrokerDefault> {
        self.namespace_defaults
            .get(namespace)
            .or(self.cluster_default.as_ref())
    }

    /// The default class of brokers in `namespace`.
    pub fn class(&self, namespace: &str) -> &str {
        self.for_namespace(namespace)
            .and_then(|d| d.broker_class.as_deref())
            .filter(|class| !class.is_empty())
            .unwrap_or(DEFAULT_BROKER_CLASS)
    }
}

/// Sets the defaults of `kind` on `object` (already normalised); `old` is the stored object on
/// an update. `brokers` reads the broker defaults, only when a Broker is applied.
pub fn set_defaults(
    kind: &KindInfo,
    object: &mut Value,
    old: Option<&Value>,
    brokers: impl FnOnce() -> BrokerDefaults,
) {
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    match (kind.group, kind.kind) {
        ("eventing.knative.dev", "Broker") => {
            broker_defaults(object, old, &brokers(), &namespace);
        }
        ("eventing.knative.dev", "Trigger") => trigger_defaults(object),
        _ => {}
    }
    if !kind.group.is_empty() {
        for path in [
            "/spec/subscriber/ref",
            "/spec/sink/ref",
            "/spec/reply/ref",
            "/spec/delivery/deadLetterSink/ref",
        ] {
            default_namespace(object.pointer_mut(path), &namespace);
        }
    }
}

fn broker_defaults(
    object: &mut Value,
    old: Option<&Value>,
    brokers: &BrokerDefaults,
    namespace: &str,
) {
    let old_class = old.and_then(|old| {
        old.pointer("/metadata/annotations")
            .and_then(|a| a.get(BROKER_CLASS_ANNOTATION))
            .and_then(Value::as_str)
    });
    let annotations = metadata_map(object, "annotations");
    if !annotations.contains_key(BROKER_CLASS_ANNOTATION) {
        let class = old_class.unwrap_or_else(|| brokers.class(namespace));
        annotations.insert(BROKER_CLASS_ANNOTATION.into(), json!(class));
    }
    let class = annotations[BROKER_CLASS_ANNOTATION]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let spec = spec_map(object);
    if let Some(old) = old {
        // Immutable: an update that leaves it out keeps what is stored.
        if !spec.contains_key("config")
            && let Some(config) = old.pointer("/spec/config")
        {
            spec.insert("config".into(), config.clone());
        }
    } else if let Some(default) = brokers
        .for_namespace(namespace)
        .filter(|d| d.broker_class.as_deref().unwrap_or(DEFAULT_BROKER_CLASS) == class)
    {
        if !spec.contains_key("config")
            && let (Some(kind), Some(name)) = (&default.kind, &default.name)
        {
            let mut config = Map::new();
            if let Some(api_version) = &default.api_version {
                config.insert("apiVersion".into(), json!(api_version));
            }
            config.insert("kind".into(), json!(kind));
            config.insert("name".into(), json!(name));
            if let Some(config_namespace) = &default.namespace {
                config.insert("namespace".into(), json!(config_namespace));
            }
            spec.insert("config".into(), Value::Object(config));
        }
        if !spec.contains_key("delivery")
            && let Some(delivery) = &default.delivery
        {
            spec.insert("delivery".into(), delivery.clone());
        }
    }
    default_namespace(object.pointer_mut("/spec/config"), namespace);
}

fn trigger_defaults(object: &mut Value) {
    let spec = spec_map(object);
    if spec.get("filter").is_none_or(Value::is_null) {
        spec.insert("filter".into(), json!({}));
    }
    let broker = spec
        .get("broker")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty())
        .map(str::to_string);
    if let Some(broker) = broker {
        metadata_map(object, "labels").insert(TRIGGER_BROKER_LABEL.into(), json!(broker));
    }
}

/// `metadata.{field}` as a map, made when missing or null.
fn metadata_map<'a>(object: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    let metadata = &mut object["metadata"];
    if !metadata[field].is_object() {
        metadata[field] = json!({});
    }
    metadata[field]
        .as_object_mut()
        .expect("made an object above")
}

fn spec_map(object: &mut Value) -> &mut Map<String, Value> {
    if !object["spec"].is_object() {
        object["spec"] = json!({});
    }
    object["spec"]
        .as_object_mut()
        .expect("made an object above")
}

fn default_namespace(reference: Option<&mut Value>, namespace: &str) {
    if let Some(Value::Object(reference)) = reference
        && reference
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        reference.insert("namespace".into(), json!(namespace));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find_kind_by_name;

    fn defaulted(kind: &str, mut object: Value, old: Option<&Value>, br: &BrokerDefaults) -> Value {
        set_defaults(
            find_kind_by_name(None, kind).unwrap(),
            &mut object,
            old,
            || br.clone(),
        );
        object
    }

    #[test]
    fn a_trigger_gets_an_empty_filter_its_broker_label_and_reference_namespaces() {
        let trigger = json!({
            "metadata": {"name": "t", "namespace": "team"},
            "spec": {
                "broker": "default",
                "subscriber": {"ref": {"apiVersion": "v1", "kind": "Service", "name": "s"}},
                "delivery": {"deadLetterSink": {"ref": {"apiVersion": "v1", "kind": "Service", "name": "dls", "namespace": "other"}}}
            }
        });
        let out = defaulted("Trigger", trigger, None, &BrokerDefaults::default());
        assert_eq!(out["spec"]["filter"], json!({}));
        assert_eq!(out["metadata"]["labels"][TRIGGER_BROKER_LABEL], "default");
        assert_eq!(out["spec"]["subscriber"]["ref"]["namespace"], "team");
        assert_eq!(
            out["spec"]["delivery"]["deadLetterSink"]["ref"]["namespace"], "other",
            "a namespace given is kept"
        );
    }

    #[test]
    fn a_broker_gets_the_default_class_and_config_of_its_namespace() {
        let config_map = json!({"data": {BROKER_DEFAULTS_KEY: "
clusterDefault:
  brokerClass: MTChannelBasedBroker
namespaceDefaults:
  orders:
    brokerClass: Kafka
    apiVersion: v1
    kind: ConfigMap
    name: kafka-broker-config
    namespace: knative-eventing
    delivery:
      retry: 3
"}});
        let defaults = BrokerDefaults::from_config_map(&config_map).unwrap();
        let broker = |ns: &str| json!({"metadata": {"name": "b", "namespace": ns}, "spec": {}});
        let out = defaulted("Broker", broker("orders"), None, &defaults);
        assert_eq!(
            out["metadata"]["annotations"][BROKER_CLASS_ANNOTATION],
            "Kafka"
        );
        assert_eq!(
            out["spec"]["config"],
            json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "kafka-broker-config", "namespace": "knative-eventing"})
        );
        assert_eq!(out["spec"]["delivery"]["retry"], 3);

        let out = defaulted("Broker", broker("web"), None, &defaults);
        assert_eq!(
            out["metadata"]["annotations"][BROKER_CLASS_ANNOTATION],
            DEFAULT_BROKER_CLASS
        );
        assert!(out["spec"].get("config").is_none(), "{out}");

        // A broker naming another class gets no config meant for the default class.
        let mut rabbit = broker("orders");
        rabbit["metadata"]["annotations"] = json!({BROKER_CLASS_ANNOTATION: "RabbitMQBroker"});
        let out = defaulted("Broker", rabbit, None, &defaults);
        assert!(out["spec"].get("config").is_none(), "{out}");
    }

    #[test]
    fn without_config_br_defaults_the_class_is_mt_channel_based_broker() {
        let out = defaulted(
            "Broker",
            json!({"metadata": {"name": "b", "namespace": "default"}, "spec": {"config": {"kind": "ConfigMap", "name": "c"}}}),
            None,
            &BrokerDefaults::default(),
        );
        assert_eq!(
            out["metadata"]["annotations"][BROKER_CLASS_ANNOTATION],
            DEFAULT_BROKER_CLASS
        );
        assert_eq!(out["spec"]["config"]["namespace"], "default");
    }

    #[test]
    fn an_update_that_leaves_out_class_and_config_keeps_the_stored_ones() {
        let old = json!({
            "metadata": {"name": "b", "namespace": "default", "annotations": {BROKER_CLASS_ANNOTATION: "Kafka"}},
            "spec": {"config": {"kind": "ConfigMap", "name": "k", "namespace": "default"}}
        });
        let out = defaulted(
            "Broker",
            json!({"metadata": {"name": "b", "namespace": "default"}, "spec": {}}),
            Some(&old),
            &BrokerDefaults::default(),
        );
        assert_eq!(
            out["metadata"]["annotations"][BROKER_CLASS_ANNOTATION],
            "Kafka"
        );
        assert_eq!(out["spec"]["config"], old["spec"]["config"]);
    }
}
