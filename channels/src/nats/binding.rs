//! The CloudEvents NATS protocol binding, binary content mode: every context attribute is a
//! NATS header `ce-{attribute}`, `datacontenttype` travels as `content-type`, and the payload
//! is the event data, byte for byte.
//!
//! Header values are percent-encoded the way the HTTP binding does it (space, `"`, `%` and
//! everything outside printable ASCII), since NATS headers are ASCII lines.
//!
//! Two details of an [`Envelope`] have no place in the binding, and travel in headers of their
//! own so that a channel gives back exactly what it was given:
//! - [`EMPTY_DATA_HEADER`]: the event has data and it is empty (an empty payload without it
//!   means "no data", which is what other NATS producers mean by it);
//! - [`ATTRIBUTE_ORDER_HEADER`]: the attribute order, only when it differs from the canonical
//!   order (required attributes, optional ones, then extensions by name) that decoding yields.

use std::str::FromStr;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::Envelope;

/// Prefix of the header of every context attribute in binary mode.
pub const ATTRIBUTE_PREFIX: &str = "ce-";
/// The header carrying `datacontenttype`.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// Present (`true`) when the event has data and the data is empty.
pub const EMPTY_DATA_HEADER: &str = "rivulet-empty-data";
/// Comma-separated attribute names, present when their order is not the canonical one.
pub const ATTRIBUTE_ORDER_HEADER: &str = "rivulet-attribute-order";

/// Why a NATS message is not a binary-mode CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("header {name:?} cannot be written to NATS: {reason}")]
    Header { name: String, reason: String },
    #[error("header {0:?} is not valid percent-encoded UTF-8")]
    Encoding(String),
    #[error("the message has no ce-specversion header, so it is not a binary-mode CloudEvent")]
    NotBinary,
}

/// A NATS message as the binding writes it.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Writes `envelope` in binary content mode.
pub fn encode(envelope: &Envelope) -> Result<Encoded, BindingError> {
    let mut headers = HeaderMap::new();
    for (name, value) in &envelope.attributes {
        let header = match attribute_header(name) {
            Some(known) => known,
            None => HeaderName::try_from(format!("{ATTRIBUTE_PREFIX}{name}")).map_err(|e| {
                BindingError::Header {
                    name: format!("{ATTRIBUTE_PREFIX}{name}"),
                    reason: e.to_string(),
                }
            })?,
        };
        // Encoded, the value is printable ASCII: never the CR or LF a header value refuses.
        headers.insert(header, HeaderValue::from(percent_encode(value)));
    }
    if envelope.data.as_ref().is_some_and(Bytes::is_empty) {
        insert(&mut headers, EMPTY_DATA_HEADER, "true")?;
    }
    if !is_canonical(envelope.attributes.iter().map(|(n, _)| n.as_str())) {
        let names: Vec<&str> = envelope
            .attributes
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        insert(&mut headers, ATTRIBUTE_ORDER_HEADER, &names.join(","))?;
    }
    if let Some(types) = envelope.types_header() {
        insert(&mut headers, crate::TYPES_HEADER, &types)?;
    }
    Ok(Encoded {
        headers,
        payload: envelope.data.clone().unwrap_or_default(),
    })
}

/// The header of a context attribute, built at compile time; `None` for extensions.
fn attribute_header(attribute: &str) -> Option<HeaderName> {
    Some(match attribute {
        "datacontenttype" => const { HeaderName::from_static(CONTENT_TYPE_HEADER) },
        "specversion" => const { HeaderName::from_static("ce-specversion") },
        "id" => const { HeaderName::from_static("ce-id") },
        "source" => const { HeaderName::from_static("ce-source") },
        "type" => const { HeaderName::from_static("ce-type") },
        "dataschema" => const { HeaderName::from_static("ce-dataschema") },
        "schemaurl" => const { HeaderName::from_static("ce-schemaurl") },
        "subject" => const { HeaderName::from_static("ce-subject") },
        "time" => const { HeaderName::from_static("ce-time") },
        "datacontentencoding" => const { HeaderName::from_static("ce-datacontentencoding") },
        _ => return None,
    })
}

fn insert(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), BindingError> {
    let problem = |reason: String| BindingError::Header {
        name: name.to_owned(),
        reason,
    };
    let header_name = HeaderName::from_str(name).map_err(|e| problem(e.to_string()))?;
    let header_value = HeaderValue::from_str(value).map_err(|e| problem(e.to_string()))?;
    headers.insert(header_name, header_value);
    Ok(())
}

/// Whether the message carries a binary-mode CloudEvent (a `ce-specversion` header).
pub fn is_binary(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|headers| {
        headers
            .iter()
            .any(|(name, _)| AsRef::<str>::as_ref(name).eq_ignore_ascii_case("ce-specversion"))
    })
}

/// Reads a binary-mode CloudEvent. Header names are matched without regard to case.
pub fn decode(headers: Option<&HeaderMap>, payload: &Bytes) -> Result<Envelope, BindingError> {
    let headers = headers.ok_or(BindingError::NotBinary)?;
    let mut attributes = Vec::new();
    let mut empty_data = false;
    let mut order: Option<Vec<String>> = None;
    let mut typed = Vec::new();
    for (name, values) in headers.iter() {
        let name: &str = AsRef::<str>::as_ref(name);
        // Lower-cased only when it is not already, as the names this binding writes are.
        let lower: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(name.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        let Some(value) = values.first() else {
            continue;
        };
        let value: &str = value.as_str();
        if lower == CONTENT_TYPE_HEADER {
            attributes.push(("datacontenttype".to_owned(), decode_value(name, value)?));
        } else if let Some(attribute) = lower.strip_prefix(ATTRIBUTE_PREFIX) {
            if attribute.is_empty() {
                continue;
            }
            attributes.push((attribute.to_owned(), decode_value(name, value)?));
        } else if lower == EMPTY_DATA_HEADER {
            empty_data = value.trim() == "true";
        } else if lower == ATTRIBUTE_ORDER_HEADER {
            order = Some(value.split(',').map(str::to_owned).collect());
        } else if lower == crate::TYPES_HEADER {
            typed = Envelope::parse_types_header(value);
        }
    }
    if !attributes.iter().any(|(name, _)| name == "specversion") {
        return Err(BindingError::NotBinary);
    }
    attributes.sort_by(|(a, _), (b, _)| canonical_key(a).cmp(&canonical_key(b)));
    if let Some(order) = order {
        // Names the order header lists come first, in its order; anything else keeps its place
        // after them, so a stale or foreign header cannot lose an attribute.
        let position = |name: &str| order.iter().position(|n| n == name).unwrap_or(usize::MAX);
        attributes.sort_by_key(|(name, _)| position(name));
    }
    let data = if payload.is_empty() && !empty_data {
        None
    } else {
        Some(payload.clone())
    };
    Ok(Envelope {
        attributes,
        data,
        typed,
    })
}

/// Where an attribute stands in the order decoding gives: the context attributes as
/// CloudEvents 1.0 lists them, with 0.3's `schemaurl` right after `dataschema` and its
/// `datacontentencoding` right after `time`, then extensions by name.
fn canonical_key(name: &str) -> (usize, &str) {
    let v10_rank = |attribute: &str| {
        crate::V10_CONTEXT_ATTRIBUTES
            .iter()
            .position(|known| *known == attribute)
            .map_or(usize::MAX, |position| 2 * position)
    };
    let rank = match name {
        "schemaurl" => v10_rank("dataschema") + 1,
        "datacontentencoding" => v10_rank("time") + 1,
        _ => v10_rank(name),
    };
    (rank, name)
}

fn is_canonical<'a>(names: impl Iterator<Item = &'a str> + Clone) -> bool {
    names
        .clone()
        .zip(names.skip(1))
        .all(|(first, second)| canonical_key(first) < canonical_key(second))
}

/// What a header line cannot carry as is: control characters, space, `"` and `%`; bytes
/// outside ASCII are always escaped by `utf8_percent_encode`.
const HEADER_VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Percent-encodes what a header line cannot carry as is: control characters, space, `"`,
/// `%` and every byte outside ASCII.
pub fn percent_encode(value: &str) -> String {
    std::borrow::Cow::from(utf8_percent_encode(value, HEADER_VALUE_ESCAPES)).into_owned()
}

fn decode_value(header: &str, value: &str) -> Result<String, BindingError> {
    percent_decode(value).ok_or_else(|| BindingError::Encoding(header.to_owned()))
}

/// Reverses [`percent_encode`]; `None` when an escape is malformed or the result is not UTF-8.
pub fn percent_decode(value: &str) -> Option<String> {
    // Without an escape the text is its own decoding.
    if !value.contains('%') {
        return Some(value.to_owned());
    }
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = bytes.get(at + 1..at + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::envelope;

    fn round_trip(original: &Envelope) -> Envelope {
        let encoded = encode(original).expect("encode");
        decode(Some(&encoded.headers), &encoded.payload).expect("decode")
    }

    #[test]
    fn binary_mode_headers_follow_the_binding() {
        let event = envelope(
            &[
                ("specversion", "1.0"),
                ("id", "1"),
                ("source", "/s"),
                ("type", "t"),
                ("datacontenttype", "application/json"),
                ("subject", "a b"),
            ],
            Some(b"{}"),
        );
        let encoded = encode(&event).unwrap();
        let header = |name: &str| encoded.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(header("ce-id").as_deref(), Some("1"));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        assert_eq!(header("ce-subject").as_deref(), Some("a%20b"));
        assert_eq!(header(ATTRIBUTE_ORDER_HEADER), None, "canonical order");
        assert_eq!(header(EMPTY_DATA_HEADER), None);
        assert_eq!(&encoded.payload[..], b"{}");
    }

    #[test]
    fn unusual_values_order_and_data_survive() {
        let event = envelope(
            &[
                ("specversion", "1.0"),
                ("type", "t"),
                ("id", "ünï ✓ \"%\""),
                ("source", "/s"),
                ("zext", ""),
                ("aext", "x"),
            ],
            None,
        );
        assert_eq!(round_trip(&event), event);
        let mut empty = event.clone();
        empty.data = Some(Bytes::new());
        assert_eq!(round_trip(&empty), empty);
    }

    #[test]
    fn foreign_messages_decode_with_any_header_case() {
        let mut headers = HeaderMap::new();
        headers.insert("Ce-Specversion", "1.0");
        headers.insert("CE-ID", "7");
        headers.insert("Content-Type", "text/plain");
        let decoded = decode(Some(&headers), &Bytes::from_static(b"hi")).unwrap();
        assert_eq!(decoded.attribute("id"), Some("7"));
        assert_eq!(decoded.attribute("datacontenttype"), Some("text/plain"));
        assert!(is_binary(Some(&headers)));
    }

    #[test]
    fn messages_without_specversion_are_not_binary() {
        let mut headers = HeaderMap::new();
        headers.insert("ce-id", "7");
        assert_eq!(
            decode(Some(&headers), &Bytes::new()),
            Err(BindingError::NotBinary)
        );
        assert_eq!(decode(None, &Bytes::new()), Err(BindingError::NotBinary));
        assert!(!is_binary(Some(&headers)));
    }

    #[test]
    fn malformed_escapes_are_errors() {
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
    }
}
