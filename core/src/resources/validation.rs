//! Validation as Knative's admission webhook does it. Every error names the field and the rule.

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

use super::{
    BROKER_CLASS_ANNOTATION, Broker, DELIVERY_ORDER_ANNOTATION, DeliverySpec, Destination,
    PARALLELISM_ANNOTATION, SubscriptionsApiFilter, Trigger,
};

/// A refused object: which field, and which rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

type Result<T = ()> = std::result::Result<T, ValidationError>;

static ATTRIBUTE_NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new("^[a-z][a-z0-9]*$").unwrap());
static DNS_LABEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap()
});
/// A label name, and the name part of a label key: up to 63 letters, digits, '-', '_', '.',
/// starting and ending with a letter or digit.
static LABEL_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$").unwrap());

/// Whether `text` is a DNS subdomain (lower-case labels joined by dots), length aside.
pub fn is_dns_subdomain(text: &str) -> bool {
    DNS_LABEL.is_match(text)
}

/// Checks a Kubernetes label key: an optional DNS subdomain prefix (at most 253 characters)
/// and '/', then a label name of at most 63 characters.
pub fn check_label_key(field: &str, key: &str) -> Result<()> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && is_dns_subdomain(p));
    if !prefix_ok || name.len() > 63 || !LABEL_NAME.is_match(name) {
        return Err(ValidationError::new(
            field,
            format!(
                "{} is not a label key (an optional DNS subdomain and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
                shorten(key)
            ),
        ));
    }
    Ok(())
}

/// Checks a Kubernetes label value: empty, or a label name of at most 63 characters.
pub fn check_label_value(field: &str, value: &str) -> Result<()> {
    if !value.is_empty() && (value.len() > 63 || !LABEL_NAME.is_match(value)) {
        return Err(ValidationError::new(
            field,
            format!(
                "{} is not a label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
                shorten(value)
            ),
        ));
    }
    Ok(())
}

/// Parses an ISO-8601 duration such as `PT0.5S`, `PT1M30S` or `P1D`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration> {
    let parsed = iso8601::duration(text).map_err(|_| {
        ValidationError::new(
            field,
            format!("{text:?} is not an ISO-8601 duration (e.g. PT1S, PT0.5S, PT2M)"),
        )
    })?;
    Ok(parsed.into())
}

/// Kinds whose name Kubernetes requires to be a DNS label (at most 63 characters) rather
/// than a subdomain: their name becomes a label value of what runs them.
const LABEL_NAMED_KINDS: &[&str] = &["ContainerSource"];

/// The most bytes all annotations of an object may take together, keys included, as in
/// Kubernetes.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

fn check_dns_subdomain(field: &str, text: &str) -> Result {
    if text.is_empty() || text.len() > 253 || !is_dns_subdomain(text) {
        return Err(ValidationError::new(
            field,
            format!(
                "{} is not a DNS subdomain: at most 253 characters ({} given) of lower-case \
                 letters, digits, '-' and '.', starting and ending with a letter or digit",
                shorten(text),
                text.len()
            ),
        ));
    }
    Ok(())
}

fn check_dns_label(field: &str, text: &str) -> Result {
    if text.is_empty() || text.len() > 63 || !is_dns_subdomain(text) || text.contains('.') {
        return Err(ValidationError::new(
            field,
            format!(
                "{} is not a DNS label: at most 63 characters ({} given) of lower-case \
                 letters, digits and '-', starting and ending with a letter or digit",
                shorten(text),
                text.len()
            ),
        ));
    }
    Ok(())
}

/// A value quoted for a message, cut short when long so the message stays readable.
fn shorten(text: &str) -> String {
    if text.chars().count() <= 64 {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(48).collect();
        format!("{head:?}...")
    }
}

/// Checks `metadata.name` and `metadata.namespace` of any object.
pub fn validate_metadata(object: &Value) -> Result {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| ValidationError::new("metadata.name", "is required"))?;
    check_dns_subdomain("metadata.name", name)?;
    if let Some(ns) = object.pointer("/metadata/namespace") {
        let ns = ns
            .as_str()
            .ok_or_else(|| ValidationError::new("metadata.namespace", "must be a string"))?;
        check_dns_label("metadata.namespace", ns)?;
    }
    Ok(())
}

/// Checks an object's metadata as the Kubernetes API server does for `kind`: name and
/// namespace, `generateName`, label keys and values, annotation keys and their total size.
pub fn validate_object_meta(kind: &str, object: &Value) -> Result {
    let meta = object.get("metadata");
    if let Some(prefix) = meta.and_then(|m| m.get("generateName")) {
        let prefix = prefix
            .as_str()
            .ok_or_else(|| ValidationError::new("metadata.generateName", "must be a string"))?;
        // A prefix may end with '-': a generated suffix follows it.
        let masked = match prefix.strip_suffix('-') {
            Some(head) => format!("{head}a"),
            None => prefix.to_string(),
        };
        check_dns_subdomain("metadata.generateName", &masked)?;
    }
    validate_metadata(object)?;
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if LABEL_NAMED_KINDS.contains(&kind) {
        check_dns_label("metadata.name", name).map_err(|e| {
            ValidationError::new(
                e.field,
                format!("{} (a {kind}'s name is used as a label value)", e.message),
            )
        })?;
    }
    if let Some(labels) = meta.and_then(|m| m.get("labels")) {
        let labels = labels
            .as_object()
            .ok_or_else(|| ValidationError::new("metadata.labels", "must be a mapping"))?;
        for (key, value) in labels {
            check_label_key(&format!("metadata.labels[{}]", shorten(key)), key)?;
            let value = value.as_str().ok_or_else(|| {
                ValidationError::new(format!("metadata.labels[{key}]"), "must be a string")
            })?;
            check_label_value(&format!("metadata.labels[{key}]"), value)?;
        }
    }
    if let Some(annotations) = meta.and_then(|m| m.get("annotations")) {
        let annotations = annotations
            .as_object()
            .ok_or_else(|| ValidationError::new("metadata.annotations", "must be a mapping"))?;
        let mut total = 0usize;
        for (key, value) in annotations {
            check_label_key(&format!("metadata.annotations[{}]", shorten(key)), key)?;
            let value = value.as_str().ok_or_else(|| {
                ValidationError::new(format!("metadata.annotations[{key}]"), "must be a string")
            })?;
            total += key.len() + value.len();
        }
        if total > MAX_ANNOTATIONS_BYTES {
            return Err(ValidationError::new(
                "metadata.annotations",
                format!(
                    "take {total} bytes together; at most {MAX_ANNOTATIONS_BYTES} (256 KiB) are allowed"
                ),
            ));
        }
    }
    Ok(())
}

/// The checks of a kind's spec that its schema cannot express.
pub trait ValidateSpec {
    fn validate(&self) -> Result;
}

/// The `validate` of a kind `R` whose checks are those of its metadata and of its spec.
pub fn validate_resource<R>(new: &Value, _old: Option<&Value>) -> Result
where
    R: kube::core::object::HasSpec + serde::de::DeserializeOwned,
    R::Spec: ValidateSpec,
{
    validate_metadata(new)?;
    typed::<R>(new)?.spec().validate()
}

/// Deserialises `object` into `T`, reporting serde's complaint (unknown field, wrong type) as
/// a validation error.
pub fn typed<T: serde::de::DeserializeOwned>(object: &Value) -> Result<T> {
    serde_path_to_error::deserialize(object).map_err(|e| {
        let mut path = e.path().to_string();
        let message = e.inner().to_string();
        // A struct with a flattened part (a source's `sink` and `ceOverrides`) finds unknown
        // fields only once the part took its own, and reports them at the struct's path:
        // name the field itself, as for any other struct.
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            && !path.ends_with(field)
        {
            path = if path == "." {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
        }
        ValidationError::new(if path == "." { "object".into() } else { path }, message)
    })
}

pub fn validate_broker_value(new: &Value, old: Option<&Value>) -> Result {
    validate_metadata(new)?;
    if let Some(name) = new.pointer("/metadata/name").and_then(Value::as_str)
        && name.ends_with(super::CHANNEL_NAME_SUFFIX)
    {
        return Err(ValidationError::new(
            "metadata.name",
            format!(
                "a broker's name may not end with {:?}: channels are served under such names",
                super::CHANNEL_NAME_SUFFIX
            ),
        ));
    }
    let broker: Broker = typed(new)?;
    validate_broker(&broker)?;
    validate_backend_names(&broker)?;
    if let Some(old) = old {
        let old: Broker = typed(old)?;
        validate_broker_update(&old, &broker)?;
    }
    Ok(())
}

pub fn validate_broker(broker: &Broker) -> Result {
    if let Some(config) = &broker.spec.config {
        if config.name.is_empty() {
            return Err(ValidationError::new("spec.config.name", "is required"));
        }
        if config.kind.is_empty() {
            return Err(ValidationError::new("spec.config.kind", "is required"));
        }
    }
    if let Some(delivery) = &broker.spec.delivery {
        validate_delivery("spec.delivery", delivery)?;
    }
    Ok(())
}

/// Refuses names whose backend object (named after namespace and broker, as Knative names
/// them) would be longer than the backend allows: Kafka topics hold 249 characters, NATS
/// stream names 255.
fn validate_backend_names(broker: &Broker) -> Result {
    let namespace = broker.metadata.namespace.as_deref().unwrap_or("default");
    let name = broker.metadata.name.as_deref().unwrap_or_default();
    let (backend, derived, limit) = match annotation(&broker.metadata, BROKER_CLASS_ANNOTATION) {
        Some("Kafka") => (
            "Kafka topic",
            format!("knative-broker-{namespace}-{name}"),
            249,
        ),
        Some("NatsJetStreamBroker") => {
            ("NATS stream", format!("KN_BROKER_{namespace}_{name}"), 255)
        }
        _ => return Ok(()),
    };
    if derived.len() > limit {
        return Err(ValidationError::new(
            "metadata.name",
            format!(
                "is too long for this broker class: its {backend} name would have {} characters, \
                 at most {limit} are allowed; use a shorter name or namespace",
                derived.len()
            ),
        ));
    }
    Ok(())
}

fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

pub fn validate_broker_update(old: &Broker, new: &Broker) -> Result {
    // A broker stored without a class (before classes were defaulted) has the default one.
    let (old_class, new_class) = (
        annotation(&old.metadata, BROKER_CLASS_ANNOTATION)
            .or(Some(super::defaults::DEFAULT_BROKER_CLASS)),
        annotation(&new.metadata, BROKER_CLASS_ANNOTATION)
            .or(Some(super::defaults::DEFAULT_BROKER_CLASS)),
    );
    if old_class != new_class {
        return Err(ValidationError::new(
            format!("metadata.annotations[{BROKER_CLASS_ANNOTATION}]"),
            format!(
                "is immutable: {:?} cannot become {:?}; delete and recreate the broker",
                old_class.unwrap_or(""),
                new_class.unwrap_or("")
            ),
        ));
    }
    if old.spec.config != new.spec.config {
        return Err(ValidationError::new(
            "spec.config",
            "is immutable; delete and recreate the broker",
        ));
    }
    Ok(())
}

pub fn validate_trigger_value(new: &Value, old: Option<&Value>) -> Result {
    validate_metadata(new)?;
    let trigger: Trigger = typed(new)?;
    validate_trigger(&trigger)?;
    if let Some(old) = old {
        let old: Trigger = typed(old)?;
        if old.spec.broker != trigger.spec.broker {
            return Err(ValidationError::new(
                "spec.broker",
                format!(
                    "is immutable: {:?} cannot become {:?}; delete and recreate the trigger",
                    old.spec.broker, trigger.spec.broker
                ),
            ));
        }
    }
    Ok(())
}

pub fn validate_trigger(trigger: &Trigger) -> Result {
    if trigger.spec.broker.is_empty() {
        return Err(ValidationError::new("spec.broker", "is required"));
    }
    validate_destination("spec.subscriber", &trigger.spec.subscriber)?;
    if let Some(filter) = &trigger.spec.filter {
        for name in filter.attributes.keys() {
            validate_attribute_name(&format!("spec.filter.attributes[{name}]"), name)?;
        }
    }
    for (i, filter) in trigger.spec.filters.iter().enumerate() {
        validate_filter(&format!("spec.filters[{i}]"), filter)?;
    }
    if let Some(delivery) = &trigger.spec.delivery {
        validate_delivery("spec.delivery", delivery)?;
    }
    if let Some(dependency) = annotation(&trigger.metadata, super::DEPENDENCY_ANNOTATION) {
        let field = format!("metadata.annotations[{}]", super::DEPENDENCY_ANNOTATION);
        let reference = super::parse_dependency(dependency)
            .map_err(|message| ValidationError::new(&field, message))?;
        let namespace = trigger.metadata.namespace.as_deref().unwrap_or("default");
        if reference
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != namespace)
        {
            return Err(ValidationError::new(
                field,
                "namespace must be the trigger's own (or left out)",
            ));
        }
    }
    if let Some(order) = annotation(&trigger.metadata, DELIVERY_ORDER_ANNOTATION)
        && order != "ordered"
        && order != "unordered"
    {
        return Err(ValidationError::new(
            format!("metadata.annotations[{DELIVERY_ORDER_ANNOTATION}]"),
            format!("{order:?} must be \"ordered\" or \"unordered\""),
        ));
    }
    validate_delivery_annotations(&trigger.metadata)
}

/// The delivery annotations a Trigger or Subscription may carry: parallelism and rate limit.
pub fn validate_delivery_annotations(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result {
    if let Some(parallelism) = annotation(metadata, PARALLELISM_ANNOTATION) {
        match parallelism.parse::<u32>() {
            Ok(n) if (1..=10_000).contains(&n) => {}
            _ => {
                return Err(ValidationError::new(
                    format!("metadata.annotations[{PARALLELISM_ANNOTATION}]"),
                    format!("{parallelism:?} must be a whole number from 1 to 10000"),
                ));
            }
        }
    }
    if let Some(rate) = annotation(metadata, super::RATE_LIMIT_ANNOTATION) {
        super::parse_rate_limit(rate).map_err(|message| {
            ValidationError::new(
                format!("metadata.annotations[{}]", super::RATE_LIMIT_ANNOTATION),
                message,
            )
        })?;
    }
    Ok(())
}

fn validate_attribute_name(field: &str, name: &str) -> Result {
    let limit = crate::event::limits::MAX_ATTRIBUTE_NAME_LEN;
    if name.len() > limit {
        return Err(ValidationError::new(
            field,
            format!(
                "attribute name is {} characters long; at most {limit} are accepted",
                name.len()
            ),
        ));
    }
    if ATTRIBUTE_NAME.is_match(name) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "attribute name {name:?} must start with a lower-case letter and contain only lower-case letters and digits"
            ),
        ))
    }
}

/// Checks one filter of the subscriptions API, recursively.
pub fn validate_filter(field: &str, filter: &SubscriptionsApiFilter) -> Result {
    let dialects: Vec<&str> = [
        ("exact", filter.exact.is_some()),
        ("prefix", filter.prefix.is_some()),
        ("suffix", filter.suffix.is_some()),
        ("all", filter.all.is_some()),
        ("any", filter.any.is_some()),
        ("not", filter.not.is_some()),
        ("cesql", filter.cesql.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match dialects.len() {
        1 => {}
        0 => {
            return Err(ValidationError::new(
                field,
                "a filter must set exactly one dialect (exact, prefix, suffix, all, any, not, cesql); it sets none",
            ));
        }
        _ => {
            return Err(ValidationError::new(
                field,
                format!(
                    "a filter must set exactly one dialect; it sets {}",
                    dialects.join(", ")
                ),
            ));
        }
    }
    for (dialect, map) in [
        ("exact", &filter.exact),
        ("prefix", &filter.prefix),
        ("suffix", &filter.suffix),
    ] {
        if let Some(map) = map {
            if map.len() != 1 {
                return Err(ValidationError::new(
                    format!("{field}.{dialect}"),
                    format!("must hold exactly one attribute, it holds {}", map.len()),
                ));
            }
            for (name, value) in map {
                validate_attribute_name(&format!("{field}.{dialect}[{name}]"), name)?;
                if dialect != "exact" && value.is_empty() {
                    return Err(ValidationError::new(
                        format!("{field}.{dialect}[{name}]"),
                        "the value must not be empty",
                    ));
                }
            }
        }
    }
    for (dialect, list) in [("all", &filter.all), ("any", &filter.any)] {
        if let Some(list) = list {
            if list.is_empty() {
                return Err(ValidationError::new(
                    format!("{field}.{dialect}"),
                    "must hold at least one filter",
                ));
            }
            for (i, inner) in list.iter().enumerate() {
                validate_filter(&format!("{field}.{dialect}[{i}]"), inner)?;
            }
        }
    }
    if let Some(inner) = &filter.not {
        validate_filter(&format!("{field}.not"), inner)?;
    }
    if let Some(expression) = &filter.cesql {
        crate::filter::compile_cesql(expression)
            .map_err(|message| ValidationError::new(format!("{field}.cesql"), message))?;
    }
    Ok(())
}

/// Checks a destination: a `ref`, a `uri`, or both (then the URI is relative to the ref).
pub fn validate_destination(field: &str, destination: &Destination) -> Result {
    match (&destination.reference, &destination.uri) {
        (None, None) => Err(ValidationError::new(
            field,
            "needs a ref or a uri (or both)",
        )),
        // Any absolute URI, as Knative admits: one Rivulet cannot deliver to (another scheme
        // than http and https) fails at delivery, with the reason in the delivery's failure.
        (None, Some(uri)) => match url::Url::parse(uri) {
            Ok(_) => Ok(()),
            Err(e) => Err(ValidationError::new(
                format!("{field}.uri"),
                format!("{uri:?} is not an absolute URL: {e}"),
            )),
        },
        (Some(reference), _) => {
            if reference.name.is_empty() {
                return Err(ValidationError::new(
                    format!("{field}.ref.name"),
                    "is required",
                ));
            }
            if reference.kind.is_empty() {
                return Err(ValidationError::new(
                    format!("{field}.ref.kind"),
                    "is required",
                ));
            }
            Ok(())
        }
    }
}

pub fn validate_delivery(field: &str, delivery: &DeliverySpec) -> Result {
    if let Some(retry) = delivery.retry
        && retry < 0
    {
        return Err(ValidationError::new(
            format!("{field}.retry"),
            format!("{retry} must be zero or more"),
        ));
    }
    for (name, value) in [
        ("backoffDelay", &delivery.backoff_delay),
        ("backoffMax", &delivery.backoff_max),
        ("timeout", &delivery.timeout),
        ("retryAfterMax", &delivery.retry_after_max),
    ] {
        if let Some(text) = value {
            let duration = parse_duration(&format!("{field}.{name}"), text)?;
            if matches!(name, "timeout" | "backoffMax") && duration.is_zero() {
                return Err(ValidationError::new(
                    format!("{field}.{name}"),
                    "must be longer than zero",
                ));
            }
        }
    }
    if let Some(dls) = &delivery.dead_letter_sink {
        validate_destination(&format!("{field}.deadLetterSink"), dls)?;
    }
    Ok(())
}

/// ConfigMaps and Secrets need only valid metadata.
pub fn validate_plain_object(new: &Value, _old: Option<&Value>) -> Result {
    validate_metadata(new)
}

/// Checks a NATS URL as the client will read it.
pub fn validate_nats_url(field: &str, url: &str) -> Result {
    let parsed = url::Url::parse(url)
        .map_err(|e| ValidationError::new(field, format!("{url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "nats" | "tls" | "ws" | "wss") {
        return Err(ValidationError::new(
            field,
            format!(
                "scheme {:?} is not one of nats, tls, ws, wss",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ValidationError::new(field, "names no host"));
    }
    Ok(())
}

/// Checks a subject: dot-separated non-empty tokens without white space; wildcards only when
/// `wildcards` (and `>` only as the last token).
pub fn validate_nats_subject(field: &str, subject: &str, wildcards: bool) -> Result {
    if subject.is_empty() {
        return Err(ValidationError::new(field, "is required"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (at, token) in tokens.iter().enumerate() {
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValidationError::new(
                field,
                format!("{subject:?} is not a NATS subject (empty token or white space)"),
            ));
        }
        let wildcard = *token == "*" || *token == ">";
        if wildcard && !wildcards {
            return Err(ValidationError::new(
                field,
                format!("{subject:?}: wildcards cannot be published to"),
            ));
        }
        if *token == ">" && at + 1 != tokens.len() {
            return Err(ValidationError::new(
                field,
                format!("{subject:?}: `>` must be the last token"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trigger(spec: Value) -> Value {
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": "t", "namespace": "default"}, "spec": spec})
    }

    fn refused(object: Value, old: Option<&Value>) -> ValidationError {
        validate_trigger_value(&object, old).expect_err("should be refused")
    }

    #[test]
    fn a_valid_trigger_passes() {
        let t = trigger(
            json!({"broker": "default", "subscriber": {"uri": "http://x/"},
            "filters": [{"exact": {"type": "a"}}, {"cesql": "source LIKE '/a%'"}],
            "delivery": {"retry": 3, "backoffDelay": "PT0.5S", "timeout": "PT2S"}}),
        );
        validate_trigger_value(&t, None).unwrap();
    }

    #[test]
    fn attribute_names_must_be_lower_case_alphanumeric() {
        let e = refused(
            trigger(json!({"broker": "b", "subscriber": {"uri": "http://x/"},
                "filter": {"attributes": {"Type": "a"}}})),
            None,
        );
        assert!(
            e.field.contains("Type") && e.message.contains("lower-case"),
            "{e}"
        );
    }

    #[test]
    fn exactly_one_dialect_per_filter() {
        let e = refused(
            trigger(json!({"broker": "b", "subscriber": {"uri": "http://x/"},
                "filters": [{"exact": {"type": "a"}, "prefix": {"type": "b"}}]})),
            None,
        );
        assert_eq!(e.field, "spec.filters[0]");
        assert!(e.message.contains("exact, prefix"), "{e}");
        let e = refused(
            trigger(json!({"broker": "b", "subscriber": {"uri": "http://x/"},
                "filters": [{"all": [{}]}]})),
            None,
        );
        assert_eq!(e.field, "spec.filters[0].all[0]");
    }

    #[test]
    fn durations_must_be_iso_8601() {
        let e = refused(
            trigger(json!({"broker": "b", "subscriber": {"uri": "http://x/"},
                "delivery": {"backoffDelay": "5s"}})),
            None,
        );
        assert_eq!(e.field, "spec.delivery.backoffDelay");
        assert!(e.message.contains("ISO-8601"));
    }

    #[test]
    fn a_bad_cesql_expression_names_the_position() {
        let e = refused(
            trigger(json!({"broker": "b", "subscriber": {"uri": "http://x/"},
                "filters": [{"cesql": "type = "}]})),
            None,
        );
        assert_eq!(e.field, "spec.filters[0].cesql");
        assert!(e.message.contains("position"), "{e}");
    }

    #[test]
    fn the_trigger_broker_is_immutable() {
        let old = trigger(json!({"broker": "a", "subscriber": {"uri": "http://x/"}}));
        let new = trigger(json!({"broker": "b", "subscriber": {"uri": "http://x/"}}));
        let e = refused(new, Some(&old));
        assert_eq!(e.field, "spec.broker");
        assert!(e.message.contains("immutable"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = refused(
            trigger(json!({"broker": "b", "subscriber": {"uri": "http://x/"}, "filterz": {}})),
            None,
        );
        assert!(e.message.contains("filterz"), "{e}");
    }

    #[test]
    fn the_broker_class_and_config_are_immutable() {
        let broker = |class: &str, config: Value| {
            json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                "metadata": {"name": "b", "annotations": {BROKER_CLASS_ANNOTATION: class}},
                "spec": {"config": config}})
        };
        let old = broker(
            "MTChannelBasedBroker",
            json!({"kind": "ConfigMap", "name": "a"}),
        );
        let e = validate_broker_value(
            &broker("Kafka", json!({"kind": "ConfigMap", "name": "a"})),
            Some(&old),
        )
        .unwrap_err();
        assert!(e.field.contains(BROKER_CLASS_ANNOTATION), "{e}");
        let e = validate_broker_value(
            &broker(
                "MTChannelBasedBroker",
                json!({"kind": "ConfigMap", "name": "b"}),
            ),
            Some(&old),
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.config");
    }

    #[test]
    fn parses_iso_durations() {
        assert_eq!(
            parse_duration("f", "PT0.5S").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("f", "PT1M30S").unwrap(),
            Duration::from_secs(90)
        );
        assert!(parse_duration("f", "1s").is_err());
    }
}
