//! CloudEvents over AMQP 0-9-1, after the CloudEvents AMQP protocol binding, binary mode:
//! every context attribute except `datacontenttype` travels as a message header named
//! `cloudEvents_{attribute}` (the binding's application-properties; the older `cloudEvents:`
//! prefix is read too), `datacontenttype` as the message's `content-type`, and the data as the
//! body untouched.
//!
//! Two headers of Rivulet's own make the round trip exact: `x-rivulet-attribute-order` lists
//! the attribute names in their original order (AMQP header tables are unordered), and
//! `x-rivulet-empty-data` tells empty data from no data. Readers that do not know them lose
//! nothing but that order and that distinction. Messages are persistent (delivery mode 2) and
//! carry the event id as `message-id`.

use std::fmt::Write as _;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::Envelope;

/// The prefix of attribute headers Rivulet writes.
pub const ATTRIBUTE_PREFIX: &str = "cloudEvents_";
/// The binding's earlier prefix, accepted when reading.
pub const ALTERNATIVE_PREFIX: &str = "cloudEvents:";
/// Attribute names in their original order (a field array of strings).
pub const ORDER_HEADER: &str = "x-rivulet-attribute-order";
/// Present (true) when the event has data of zero bytes, as opposed to no data.
pub const EMPTY_DATA_HEADER: &str = "x-rivulet-empty-data";
/// The content type of structured-mode messages (the whole event as JSON in the body).
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// AMQP's delivery mode for messages written to disk.
pub const PERSISTENT: u8 = 2;

/// An event that cannot be written as an AMQP message, or a message that is not a readable
/// CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(pub String);

fn short(text: &str, what: &str) -> Result<ShortString, MappingError> {
    ShortString::try_new(text).map_err(|_| {
        MappingError(format!(
            "{what} {text:?} is longer than the 255 bytes an AMQP short string holds"
        ))
    })
}

/// The header an attribute travels in.
pub fn attribute_header(name: &str) -> Result<ShortString, MappingError> {
    short(&format!("{ATTRIBUTE_PREFIX}{name}"), "attribute name")
}

/// The AMQP message (properties and body) of an event, in binary mode.
pub fn to_message(envelope: &Envelope) -> Result<(BasicProperties, Vec<u8>), MappingError> {
    let mut headers = FieldTable::default();
    let mut order = FieldArray::default();
    let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    for (name, value) in &envelope.attributes {
        order.push(AMQPValue::LongString(name.as_str().into()));
        // A content type too long for the property goes to a header instead.
        if name == "datacontenttype"
            && let Ok(content_type) = ShortString::try_new(value.as_str())
        {
            properties = properties.with_content_type(content_type);
            continue;
        }
        if name == "id"
            && let Ok(id) = ShortString::try_new(value.as_str())
        {
            properties = properties.with_message_id(id);
        }
        headers.insert(
            attribute_header(name)?,
            AMQPValue::LongString(value.as_str().into()),
        );
    }
    headers.insert(ORDER_HEADER.into(), AMQPValue::FieldArray(order));
    if envelope.data.as_ref().is_some_and(|d| d.is_empty()) {
        headers.insert(EMPTY_DATA_HEADER.into(), AMQPValue::Boolean(true));
    }
    if let Some(types) = envelope.types_header() {
        headers.insert(
            crate::TYPES_HEADER.into(),
            AMQPValue::LongString(types.as_str().into()),
        );
    }
    let body = envelope
        .data
        .as_ref()
        .map(|d| d.to_vec())
        .unwrap_or_default();
    Ok((properties.with_headers(headers), body))
}

/// Whether a message is a structured-mode CloudEvent (its body is the JSON event).
pub fn is_structured(properties: &BasicProperties) -> bool {
    properties.content_type().as_ref().is_some_and(|c| {
        c.as_str()
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE)
    })
}

/// The event of a binary-mode message, or `None` when the message carries no CloudEvent
/// attributes (no `specversion` header).
pub fn from_message(
    properties: &BasicProperties,
    body: &[u8],
) -> Result<Option<Envelope>, MappingError> {
    let Some(headers) = properties.headers() else {
        return Ok(None);
    };
    let mut found: Vec<(String, String)> = Vec::new();
    for (key, value) in headers.inner() {
        let key = key.as_str();
        let Some(name) = key
            .strip_prefix(ATTRIBUTE_PREFIX)
            .or_else(|| key.strip_prefix(ALTERNATIVE_PREFIX))
        else {
            continue;
        };
        let text = value_text(value)
            .ok_or_else(|| MappingError(format!("header {key} holds a value of no text form")))?;
        match found.iter_mut().find(|(n, _)| n == name) {
            // Both prefixes for one attribute: the current prefix wins.
            Some(slot) if key.starts_with(ATTRIBUTE_PREFIX) => slot.1 = text,
            Some(_) => {}
            None => found.push((name.to_owned(), text)),
        }
    }
    if !found.iter().any(|(name, _)| name == "specversion") {
        return Ok(None);
    }
    if let Some(content_type) = properties.content_type()
        && !found.iter().any(|(name, _)| name == "datacontenttype")
    {
        found.push(("datacontenttype".into(), content_type.as_str().to_owned()));
    }
    let order: Vec<String> = match headers.inner().get(ORDER_HEADER) {
        Some(AMQPValue::FieldArray(names)) => {
            names.as_slice().iter().filter_map(value_text).collect()
        }
        _ => Vec::new(),
    };
    // Listed names in their order; the rest after them, specversion first, then by name.
    found.sort_by(|(a, _), (b, _)| {
        let rank = |name: &str| match order.iter().position(|n| n == name) {
            Some(at) => (0, at),
            None if name == "specversion" => (1, 0),
            None => (2, 0),
        };
        rank(a).cmp(&rank(b)).then_with(|| a.cmp(b))
    });
    let empty_data = matches!(
        headers.inner().get(EMPTY_DATA_HEADER),
        Some(AMQPValue::Boolean(true))
    );
    let data = if body.is_empty() && !empty_data {
        None
    } else {
        Some(bytes::Bytes::copy_from_slice(body))
    };
    let typed = headers
        .inner()
        .get(crate::TYPES_HEADER)
        .and_then(value_text)
        .map(|text| Envelope::parse_types_header(&text))
        .unwrap_or_default();
    Ok(Some(Envelope {
        attributes: found,
        data,
        typed,
    }))
}

/// The canonical string form of a header value, for the types a CloudEvents attribute can
/// take (strings, numbers, booleans, timestamps).
pub fn value_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(text) => String::from_utf8(text.as_bytes().to_vec()).ok()?,
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(seconds) => rfc3339(*seconds),
        AMQPValue::ByteArray(bytes) => String::from_utf8(bytes.as_slice().to_vec()).ok()?,
        _ => return None,
    })
}

/// Seconds since the Unix epoch as an RFC 3339 UTC timestamp.
fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Days to civil date (proleptic Gregorian), after H. Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let mut text = String::with_capacity(20);
    let _ = write!(
        text,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    );
    text
}

/// The headers-exchange binding arguments that let through only events with every
/// `(attribute, value)` pair: `x-match: all` and one header per pair. `datacontenttype` is
/// left out (it travels as the content type, which a headers exchange does not see), which
/// only widens the binding.
pub fn binding_arguments(pairs: &[(String, String)]) -> Result<FieldTable, MappingError> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-match".into(), AMQPValue::LongString("all".into()));
    for (name, value) in pairs {
        if name == "datacontenttype" {
            continue;
        }
        arguments.insert(
            attribute_header(name)?,
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    Ok(arguments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::envelope;

    #[test]
    fn binary_mode_round_trips_order_and_data() {
        let sent = envelope(
            &[
                ("specversion", "1.0"),
                ("id", "1"),
                ("zed", "last?"),
                ("datacontenttype", "application/json"),
                ("aardvark", ""),
            ],
            Some(b"{}"),
        );
        let (properties, body) = to_message(&sent).unwrap();
        assert_eq!(
            properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(*properties.delivery_mode(), Some(PERSISTENT));
        let headers = properties.headers().as_ref().unwrap();
        assert!(headers.contains_key("cloudEvents_specversion"));
        assert!(!headers.contains_key("cloudEvents_datacontenttype"));
        assert_eq!(from_message(&properties, &body).unwrap(), Some(sent));

        for data in [None, Some(&b""[..])] {
            let sent = envelope(&[("specversion", "1.0"), ("id", "2")], data);
            let (properties, body) = to_message(&sent).unwrap();
            assert_eq!(from_message(&properties, &body).unwrap(), Some(sent));
        }
    }

    #[test]
    fn foreign_messages_are_read_with_either_prefix() {
        let mut headers = FieldTable::default();
        headers.insert(
            "cloudEvents:specversion".into(),
            AMQPValue::LongString("1.0".into()),
        );
        headers.insert("cloudEvents:id".into(), AMQPValue::ShortString("x".into()));
        headers.insert(
            "cloudEvents_time".into(),
            AMQPValue::Timestamp(86_400 * 366),
        );
        headers.insert("cloudEvents_count".into(), AMQPValue::LongInt(7));
        headers.insert("unrelated".into(), AMQPValue::Boolean(true));
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_content_type("text/plain".into());
        let got = from_message(&properties, b"hi").unwrap().unwrap();
        assert_eq!(got.attribute("specversion"), Some("1.0"));
        assert_eq!(got.attributes[0].0, "specversion");
        assert_eq!(got.attribute("id"), Some("x"));
        assert_eq!(got.attribute("time"), Some("1971-01-02T00:00:00Z"));
        assert_eq!(got.attribute("count"), Some("7"));
        assert_eq!(got.attribute("datacontenttype"), Some("text/plain"));
        assert_eq!(got.attribute("unrelated"), None);
        assert_eq!(got.data.as_deref(), Some(&b"hi"[..]));
    }

    #[test]
    fn messages_without_specversion_are_not_events() {
        let properties = BasicProperties::default();
        assert_eq!(from_message(&properties, b"plain").unwrap(), None);
        let structured = BasicProperties::default()
            .with_content_type("application/cloudevents+json; charset=utf-8".into());
        assert!(is_structured(&structured));
        assert!(!is_structured(&properties));
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_323_045), "2026-01-02T03:04:05Z");
    }

    #[test]
    fn bindings_match_all_pairs_but_content_type() {
        let arguments = binding_arguments(&[
            ("type".into(), "a".into()),
            ("datacontenttype".into(), "text/plain".into()),
        ])
        .unwrap();
        assert_eq!(arguments.inner().len(), 2);
        assert!(arguments.contains_key("x-match"));
        assert!(arguments.contains_key("cloudEvents_type"));
        let too_long = "n".repeat(250);
        assert!(binding_arguments(&[(too_long, "v".into())]).is_err());
    }
}
