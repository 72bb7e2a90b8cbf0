//! The CloudEvents Kafka protocol binding, binary content mode.
//!
//! Every context attribute travels as a record header `ce_{name}` with its canonical string
//! value; `datacontenttype` travels as the `content-type` header; the data is the record value
//! (a null value when the event has no data). The record key is the `partitionkey` extension
//! when the event has one, so events of one key share a partition and keep their order.
//! Headers keep the attributes' order, so an event read back equals the one written.

use bytes::Bytes;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::Envelope;

/// Prefix of the headers that carry context attributes.
pub const ATTRIBUTE_HEADER_PREFIX: &str = "ce_";
/// The header that carries `datacontenttype`.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// The extension whose value becomes the record key.
pub const PARTITION_KEY: &str = "partitionkey";

/// Why a record is not a binary-mode CloudEvent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindingError {
    #[error("the record has no ce_specversion header, so it is not a binary-mode CloudEvent")]
    NotBinaryMode,
    #[error("header {0:?} is not UTF-8")]
    NotUtf8(String),
}

/// A binary-mode record for one event: key, headers and value.
pub struct BinaryRecord<'a> {
    pub key: Option<&'a str>,
    pub headers: OwnedHeaders,
    pub value: Option<&'a [u8]>,
}

/// Writes `envelope` as a binary-mode record.
pub fn to_binary(envelope: &Envelope) -> BinaryRecord<'_> {
    let mut headers = OwnedHeaders::new_with_capacity(envelope.attributes.len());
    for (name, value) in &envelope.attributes {
        let key = if name == "datacontenttype" {
            CONTENT_TYPE_HEADER.to_owned()
        } else {
            format!("{ATTRIBUTE_HEADER_PREFIX}{name}")
        };
        headers = headers.insert(Header {
            key: &key,
            value: Some(value.as_bytes()),
        });
    }
    if let Some(types) = envelope.types_header() {
        headers = headers.insert(Header {
            key: crate::TYPES_HEADER,
            value: Some(types.as_bytes()),
        });
    }
    BinaryRecord {
        key: envelope.attribute(PARTITION_KEY),
        headers,
        value: envelope.data.as_deref(),
    }
}

/// Whether a record is a binary-mode CloudEvent (it carries `ce_specversion`).
pub fn is_binary(message: &impl Message) -> bool {
    message.headers().is_some_and(|headers| {
        headers
            .iter()
            .any(|h| h.key == "ce_specversion" && h.value.is_some())
    })
}

/// The value of the `content-type` header, if the record has one.
pub fn content_type(message: &impl Message) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(CONTENT_TYPE_HEADER))
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

/// Reads a binary-mode record back into the event it carries.
pub fn from_binary(message: &impl Message) -> Result<Envelope, BindingError> {
    let Some(headers) = message.headers() else {
        return Err(BindingError::NotBinaryMode);
    };
    let mut attributes = Vec::with_capacity(headers.count());
    let mut typed = Vec::new();
    for header in headers.iter() {
        if header.key == crate::TYPES_HEADER {
            if let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok()) {
                typed = Envelope::parse_types_header(value);
            }
            continue;
        }
        let name = if let Some(attribute) = header.key.strip_prefix(ATTRIBUTE_HEADER_PREFIX) {
            attribute.to_owned()
        } else if header.key.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) {
            "datacontenttype".to_owned()
        } else {
            continue;
        };
        let value = std::str::from_utf8(header.value.unwrap_or_default())
            .map_err(|_| BindingError::NotUtf8(header.key.to_owned()))?;
        attributes.push((name, value.to_owned()));
    }
    if !attributes.iter().any(|(name, _)| name == "specversion") {
        return Err(BindingError::NotBinaryMode);
    }
    Ok(Envelope {
        attributes,
        data: message.payload().map(Bytes::copy_from_slice),
        typed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    fn record_of(envelope: &Envelope) -> OwnedMessage {
        let record = to_binary(envelope);
        OwnedMessage::new(
            record.value.map(<[u8]>::to_vec),
            record.key.map(|k| k.as_bytes().to_vec()),
            "topic".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(record.headers),
        )
    }

    fn envelope(extra: &[(&str, &str)], data: Option<&'static [u8]>) -> Envelope {
        let mut attributes: Vec<(String, String)> = vec![
            ("specversion".into(), "1.0".into()),
            ("id".into(), "1".into()),
            ("source".into(), "/s".into()),
            ("type".into(), "t".into()),
        ];
        attributes.extend(extra.iter().map(|(n, v)| ((*n).into(), (*v).into())));
        Envelope {
            attributes,
            data: data.map(Bytes::from_static),
            typed: Vec::new(),
        }
    }

    #[test]
    fn attributes_become_ce_headers_and_content_type() {
        let event = envelope(&[("datacontenttype", "text/plain")], Some(b"hi"));
        let record = record_of(&event);
        let headers = record.headers().expect("headers");
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        assert_eq!(
            names,
            [
                "ce_specversion",
                "ce_id",
                "ce_source",
                "ce_type",
                "content-type"
            ]
        );
        assert_eq!(record.payload(), Some(&b"hi"[..]));
        assert_eq!(record.key(), None);
        assert_eq!(from_binary(&record), Ok(event));
    }

    #[test]
    fn partitionkey_is_the_record_key() {
        let event = envelope(&[("partitionkey", "customer-7")], None);
        let record = record_of(&event);
        assert_eq!(record.key(), Some(&b"customer-7"[..]));
        assert_eq!(record.payload(), None);
        assert_eq!(from_binary(&record), Ok(event));
    }

    #[test]
    fn empty_data_differs_from_no_data() {
        let empty = envelope(&[], Some(b""));
        assert_eq!(from_binary(&record_of(&empty)), Ok(empty));
        let none = envelope(&[], None);
        assert_eq!(from_binary(&record_of(&none)), Ok(none));
    }

    #[test]
    fn records_without_specversion_are_not_events() {
        let plain = OwnedMessage::new(
            Some(b"x".to_vec()),
            None,
            "topic".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(OwnedHeaders::new().insert(Header {
                key: "ce_id",
                value: Some("1"),
            })),
        );
        assert!(!is_binary(&plain));
        assert_eq!(from_binary(&plain), Err(BindingError::NotBinaryMode));
    }
}
