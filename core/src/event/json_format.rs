//! The CloudEvents JSON event format (structured mode and batches), versions 1.0 and 0.3.
//!
//! `data` that is JSON is kept as its raw text, so numbers, key order and spacing reach the
//! subscriber exactly as the producer wrote them.

use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{
    Event, EventError, ExtensionValue, SpecVersion, check_extension_name, is_json_media_type,
    media_type_essence,
};

/// Base64 as the JSON format writes it (standard alphabet); padding is optional on input
/// because some producers leave it out.
pub(crate) const BASE64_LENIENT: base64::engine::GeneralPurpose =
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );

/// Parses one event in the structured JSON format and validates it.
pub fn parse_structured(json: &[u8]) -> Result<Event, EventError> {
    let text = std::str::from_utf8(json)
        .map_err(|e| EventError(format!("the event is not valid UTF-8 JSON: {e}")))?;
    // Counted without recursion before parsing: raw `data` is not parsed into values, so
    // nothing else would bound it.
    super::limits::check_json_depth("the event", json, super::limits::MAX_JSON_DEPTH)?;
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| EventError(format!("the event is not valid JSON: {e}")))?;
    event_from_raw(raw)
}

/// Parses a batch (`application/cloudevents-batch+json`): a JSON array of structured events.
/// An empty array is a valid, empty batch.
pub fn parse_batch(json: &[u8]) -> Result<Vec<Event>, EventError> {
    let text = std::str::from_utf8(json)
        .map_err(|e| EventError(format!("the batch is not valid UTF-8 JSON: {e}")))?;
    // One level more for the batch's own array.
    super::limits::check_json_depth("the batch", json, super::limits::MAX_JSON_DEPTH + 1)?;
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| EventError(format!("the batch is not valid JSON: {e}")))?;
    if !raw.get().starts_with('[') {
        return Err(EventError(format!(
            "a batch must be a JSON array of events, found {}",
            raw_kind(raw)
        )));
    }
    let elements: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|e| EventError(format!("the batch is not valid JSON: {e}")))?;
    let events: Vec<Event> = elements
        .into_iter()
        .enumerate()
        .map(|(index, element)| {
            event_from_raw(element)
                .map_err(|EventError(why)| EventError(format!("batch event {index}: {why}")))
        })
        .collect::<Result<_, _>>()?;
    // The HTTP binding: every event of a batch has the same specversion.
    if let Some(first) = events.first()
        && let Some((index, other)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| e.specversion != first.specversion)
    {
        return Err(EventError(format!(
            "batch event {index} has specversion {}, event 0 has {}: all events of a batch must have the same specversion",
            other.specversion.as_str(),
            first.specversion.as_str()
        )));
    }
    Ok(events)
}

/// Writes an event in the structured JSON format.
///
/// `data` is written raw when the content type is JSON (or absent) and the bytes are JSON
/// that reads back to the same bytes; as a string when the content type is textual and the
/// bytes are UTF-8; otherwise base64-encoded (`data_base64` for 1.0, `data` with
/// `datacontentencoding: base64` for 0.3).
pub fn to_json(event: &Event) -> String {
    let mut out = String::with_capacity(256 + event.data.as_ref().map_or(0, |d| d.len() * 4 / 3));
    out.push('{');
    let mut first = true;
    let mut member = |out: &mut String, name: &str, json_value: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&json_string(name));
        out.push(':');
        out.push_str(json_value);
    };
    for (name, value) in event.string_attributes() {
        // 0.3's datacontentencoding is written below, with the data it describes; in 1.0 the
        // name is an ordinary extension.
        if name == "datacontentencoding" && event.specversion == SpecVersion::V03 {
            continue;
        }
        let json_value = match event.extensions.get(name) {
            Some(ExtensionValue::Integer(number)) => number.to_string(),
            Some(ExtensionValue::Boolean(flag)) => flag.to_string(),
            _ => json_string(&value),
        };
        member(&mut out, name, &json_value);
    }
    let data_member = event.data.as_ref().map(|data| encode_data(event, data));
    let encoding = match (&event.datacontentencoding, &data_member) {
        (Some(encoding), _) => Some(encoding.as_str()),
        (None, Some(DataMember::Base64(_))) if event.specversion == SpecVersion::V03 => {
            Some("base64")
        }
        _ => None,
    };
    if let Some(encoding) = encoding {
        member(&mut out, "datacontentencoding", &json_string(encoding));
    }
    match data_member {
        None => {}
        Some(DataMember::Raw(raw)) => member(&mut out, "data", raw),
        Some(DataMember::Text(text)) => member(&mut out, "data", &json_string(text)),
        Some(DataMember::Base64(encoded)) => {
            let name = match event.specversion {
                SpecVersion::V10 => "data_base64",
                SpecVersion::V03 => "data",
            };
            member(&mut out, name, &json_string(&encoded));
        }
    }
    out.push('}');
    out
}

/// How `data` is written in the JSON format.
enum DataMember<'a> {
    /// JSON text, written as is.
    Raw(&'a str),
    /// Text, written as a JSON string.
    Text(&'a str),
    /// Anything else, base64-encoded.
    Base64(String),
}

fn encode_data<'a>(event: &Event, data: &'a Bytes) -> DataMember<'a> {
    let base64 = || DataMember::Base64(base64::engine::general_purpose::STANDARD.encode(data));
    // A 0.3 event that declares an encoding keeps it, so it reads back unchanged.
    if event.specversion == SpecVersion::V03 && event.datacontentencoding.is_some() {
        return base64();
    }
    let json_like = event
        .datacontenttype
        .as_deref()
        .is_none_or(is_json_media_type);
    if json_like {
        return match std::str::from_utf8(data) {
            Ok(text) if reads_back_as_raw_json(text) => DataMember::Raw(text),
            _ => base64(),
        };
    }
    let textual = event
        .datacontenttype
        .as_deref()
        .is_some_and(is_text_media_type);
    match std::str::from_utf8(data) {
        Ok(text) if textual => DataMember::Text(text),
        _ => base64(),
    }
}

/// Whether `text` is one JSON value that [`parse_structured`] would store as these very
/// bytes: no surrounding whitespace (a raw value is trimmed) and not `null` (read as "no
/// data").
fn reads_back_as_raw_json(text: &str) -> bool {
    text.trim() == text
        && text != "null"
        && serde_json::from_str::<&RawValue>(text).is_ok_and(|raw| raw.get() == text)
}

/// Content types whose data is text, written as a JSON string rather than base64.
fn is_text_media_type(content_type: &str) -> bool {
    let essence = media_type_essence(content_type);
    essence.starts_with("text/")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/xml"
                | "application/javascript"
                | "application/ecmascript"
                | "application/x-www-form-urlencoded"
                | "application/yaml"
                | "application/x-yaml"
        )
}

fn json_string(text: &str) -> String {
    // Serialising a &str cannot fail; the fallback keeps this function total anyway.
    serde_json::to_string(text).unwrap_or_else(|_| String::from("\"\""))
}

/// The members of a JSON object in document order, each value as raw text. A custom visitor
/// (rather than a map type) lets duplicate members be refused instead of silently merged.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for MembersVisitor<'a> {
            type Value = Members<'a>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'a RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor(PhantomData))
    }
}

fn raw_kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An optional string attribute: a JSON string, or `null` meaning absent.
fn optional_string(name: &str, raw: &RawValue) -> Result<Option<String>, EventError> {
    let value: Value = serde_json::from_str(raw.get())
        .map_err(|e| EventError(format!("attribute `{name}` is not valid JSON: {e}")))?;
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text)),
        other => Err(EventError(format!(
            "attribute `{name}` must be a JSON string, found {}",
            value_kind(&other)
        ))),
    }
}

/// An extension value: string, 32-bit integer or boolean; `null` means absent.
fn extension_value(name: &str, raw: &RawValue) -> Result<Option<ExtensionValue>, EventError> {
    let value: Value = serde_json::from_str(raw.get())
        .map_err(|e| EventError(format!("attribute `{name}` is not valid JSON: {e}")))?;
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(ExtensionValue::String(text))),
        Value::Bool(flag) => Ok(Some(ExtensionValue::Boolean(flag))),
        Value::Number(number) => {
            let is_integer_text = raw.get().bytes().all(|b| b.is_ascii_digit() || b == b'-');
            match number.as_i64().map(i32::try_from) {
                Some(Ok(integer)) => Ok(Some(ExtensionValue::Integer(integer))),
                _ if is_integer_text || number.is_u64() || number.is_i64() => {
                    Err(EventError(format!(
                        "attribute `{name}` is {}, outside the 32-bit signed integer range of \
                         CloudEvents integers",
                        raw.get()
                    )))
                }
                _ => Err(EventError(format!(
                    "attribute `{name}` is {}, but CloudEvents numbers must be integers",
                    raw.get()
                ))),
            }
        }
        other => Err(EventError(format!(
            "attribute `{name}` must be a string, integer or boolean, found {}",
            value_kind(&other)
        ))),
    }
}

fn event_from_raw(raw: &RawValue) -> Result<Event, EventError> {
    if !raw.get().starts_with('{') {
        return Err(EventError(format!(
            "a structured event must be a JSON object, found {}",
            raw_kind(raw)
        )));
    }
    let Members(members) = serde_json::from_str(raw.get())
        .map_err(|e| EventError(format!("the event is not valid JSON: {e}")))?;
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in &members {
        if !seen.insert(name.as_str()) {
            return Err(EventError(format!(
                "attribute `{name}` appears more than once"
            )));
        }
    }
    let specversion_raw = members
        .iter()
        .find(|(name, _)| name == "specversion")
        .map(|(_, raw)| *raw);
    let specversion = match specversion_raw.map(|raw| optional_string("specversion", raw)) {
        Some(Ok(Some(text))) => SpecVersion::parse(&text)?,
        Some(Err(e)) => return Err(e),
        None | Some(Ok(None)) => {
            return Err(EventError(
                "missing required attribute `specversion`".to_string(),
            ));
        }
    };

    let mut id = None;
    let mut source = None;
    let mut ty = None;
    let mut event = Event::empty(specversion);
    let mut data = None;
    let mut data_base64 = None;
    for (name, raw) in members {
        match (name.as_str(), specversion) {
            ("specversion", _) => {}
            ("id", _) => id = optional_string(&name, raw)?,
            ("source", _) => source = optional_string(&name, raw)?,
            ("type", _) => ty = optional_string(&name, raw)?,
            ("datacontenttype", _) => event.datacontenttype = optional_string(&name, raw)?,
            ("dataschema", SpecVersion::V10) | ("schemaurl", SpecVersion::V03) => {
                event.dataschema = optional_string(&name, raw)?
            }
            ("subject", _) => event.subject = optional_string(&name, raw)?,
            ("time", _) => event.time = optional_string(&name, raw)?,
            ("datacontentencoding", SpecVersion::V03) => {
                event.datacontentencoding = optional_string(&name, raw)?
            }
            ("data", _) => data = (raw.get() != "null").then_some(raw),
            ("data_base64", SpecVersion::V10) => data_base64 = optional_string(&name, raw)?,
            _ => {
                check_extension_name(specversion, &name)?;
                if let Some(value) = extension_value(&name, raw)? {
                    event.extensions.insert(name, value);
                }
            }
        }
    }
    for (name, value, field) in [
        ("id", id, &mut event.id),
        ("source", source, &mut event.source),
        ("type", ty, &mut event.ty),
    ] {
        *field = value.ok_or_else(|| EventError(format!("missing required attribute `{name}`")))?;
    }
    event.data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(EventError(
                "`data` and `data_base64` are both present; an event carries at most one of them"
                    .to_string(),
            ));
        }
        (None, None) => None,
        (None, Some(encoded)) => Some(decode_base64("data_base64", &encoded)?),
        (Some(raw), None) => {
            let data = decode_data(&event, raw)?;
            // The encoding describes how this JSON carries the data, not the data: once
            // decoded it is dropped, and a writer that needs it (0.3 JSON, for bytes that are
            // not text) adds it again, so an event reads back as it was.
            event.datacontentencoding = None;
            Some(data)
        }
    };
    event.validate()?;
    Ok(event)
}

fn decode_base64(name: &str, encoded: &str) -> Result<Bytes, EventError> {
    BASE64_LENIENT
        .decode(encoded)
        .map(Bytes::from)
        .map_err(|e| EventError(format!("attribute `{name}` is not valid base64: {e}")))
}

/// The bytes `data` stands for: base64-decoded when 0.3 says so, the string's text for a
/// non-JSON content type, otherwise the raw JSON text.
fn decode_data(event: &Event, raw: &RawValue) -> Result<Bytes, EventError> {
    let is_string = raw.get().starts_with('"');
    if let Some(encoding) = &event.datacontentencoding {
        if !encoding.eq_ignore_ascii_case("base64") {
            return Err(EventError(format!(
                "attribute `datacontentencoding` is {encoding:?}; the only supported encoding \
                 is \"base64\""
            )));
        }
        let Some(encoded) = optional_string("data", raw)? else {
            return Err(EventError(
                "attribute `data` must be a JSON string when `datacontentencoding` is base64"
                    .to_string(),
            ));
        };
        return decode_base64("data", &encoded);
    }
    let json_like = event
        .datacontenttype
        .as_deref()
        .is_none_or(is_json_media_type);
    if is_string && !json_like {
        let text = optional_string("data", raw)?.unwrap_or_default();
        return Ok(Bytes::from(text.into_bytes()));
    }
    Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Event, String> {
        parse_structured(json.as_bytes()).map_err(|e| e.0)
    }

    fn round_trip(event: &Event) -> Event {
        let written = to_json(event);
        parse(&written).unwrap_or_else(|e| panic!("{written} does not read back: {e}"))
    }

    const HEAD: &str = r#""specversion":"1.0","id":"1","source":"/s","type":"t""#;

    #[test]
    fn a_1_0_extension_named_like_0_3_datacontentencoding_is_kept() {
        let json = format!(r#"{{{HEAD},"datacontentencoding":"%zz%"}}"#);
        let event = parse(&json).expect("valid");
        assert!(to_json(&event).contains(r#""datacontentencoding":"%zz%""#));
        assert_eq!(round_trip(&event), event);
    }

    #[test]
    fn json_data_is_kept_as_raw_text() {
        let json =
            format!(r#"{{{HEAD},"data": {{ "big" : 12345678901234567890123, "f": 1.50 }} }}"#);
        let event = parse(&json).expect("valid");
        let raw = r#"{ "big" : 12345678901234567890123, "f": 1.50 }"#;
        assert_eq!(event.data.as_deref(), Some(raw.as_bytes()));
        assert!(to_json(&event).contains(raw));
        assert_eq!(round_trip(&event), event);

        let json = format!(
            r#"{{{HEAD},"datacontenttype":"application/json","data":12345678901234567890123}}"#
        );
        let event = parse(&json).expect("valid");
        assert_eq!(event.data.as_deref(), Some(&b"12345678901234567890123"[..]));
        assert!(to_json(&event).ends_with(r#""data":12345678901234567890123}"#));
    }

    #[test]
    fn string_data_of_a_text_type_is_stored_decoded_and_written_as_a_string() {
        let json =
            format!(r#"{{{HEAD},"datacontenttype":"text/plain","data":"line\n\"q\" \u00e9"}}"#);
        let event = parse(&json).expect("valid");
        assert_eq!(event.data.as_deref(), Some("line\n\"q\" \u{e9}".as_bytes()));
        assert!(to_json(&event).contains(r#""data":"line\n\"q\" é""#));
        assert_eq!(round_trip(&event), event);
    }

    #[test]
    fn json_string_data_keeps_its_quotes() {
        let json = format!(r#"{{{HEAD},"datacontenttype":"application/vnd.x+json","data":"hi"}}"#);
        let event = parse(&json).expect("valid");
        assert_eq!(event.data.as_deref(), Some(&b"\"hi\""[..]));
        assert_eq!(round_trip(&event), event);
    }

    #[test]
    fn binary_data_goes_through_data_base64() {
        let json = format!(
            r#"{{{HEAD},"datacontenttype":"application/octet-stream","data_base64":"AAH/"}}"#
        );
        let event = parse(&json).expect("valid");
        assert_eq!(event.data.as_deref(), Some(&[0u8, 1, 255][..]));
        assert!(to_json(&event).contains(r#""data_base64":"AAH/""#));
        assert_eq!(round_trip(&event), event);

        let unpadded = format!(r#"{{{HEAD},"data_base64":"TWE"}}"#);
        assert_eq!(
            parse(&unpadded).expect("valid").data.as_deref(),
            Some(&b"Ma"[..])
        );
        let broken = format!(r#"{{{HEAD},"data_base64":"***"}}"#);
        assert!(
            parse(&broken)
                .expect_err("bad base64")
                .contains("`data_base64`")
        );
    }

    #[test]
    fn bytes_that_would_not_read_back_as_raw_json_use_base64() {
        let mut event = parse(&format!("{{{HEAD}}}")).expect("valid");
        for data in [&b"not json"[..], b" 1", b"null", b"\xff"] {
            event.data = Some(Bytes::copy_from_slice(data));
            let written = to_json(&event);
            assert!(written.contains("data_base64"), "{written}");
            assert_eq!(round_trip(&event), event);
        }
    }

    #[test]
    fn spec_0_3_base64_data_round_trips_with_its_encoding() {
        let json = r#"{"specversion":"0.3","id":"1","source":"/s","type":"t","schemaurl":"/schema","datacontentencoding":"base64","data":"AAH/"}"#;
        let event = parse(json).expect("valid");
        assert_eq!(event.specversion, SpecVersion::V03);
        assert_eq!(event.dataschema.as_deref(), Some("/schema"));
        assert_eq!(event.data.as_deref(), Some(&[0u8, 1, 255][..]));
        let written = to_json(&event);
        assert!(
            written.contains(r#""specversion":"0.3""#),
            "never upgraded: {written}"
        );
        assert!(written.contains(r#""schemaurl":"/schema""#), "{written}");
        assert!(!written.contains("data_base64"), "{written}");
        assert_eq!(round_trip(&event), event);

        let not_a_string = r#"{"specversion":"0.3","id":"1","source":"/s","type":"t","datacontentencoding":"base64","data":1}"#;
        assert!(parse(not_a_string).expect_err("number").contains("`data`"));
        let in_1_0 = format!(r#"{{{HEAD},"datacontentencoding":"base64","data":"AAH/"}}"#);
        let event = parse(&in_1_0).expect("a 1.0 extension of that name is allowed");
        assert_eq!(event.data.as_deref(), Some(&b"\"AAH/\""[..]));
    }

    /// Found by the property test: a 0.3 event whose bytes are not text gains the encoding
    /// in JSON and must not keep it when read back.
    #[test]
    fn spec_0_3_bytes_without_an_encoding_read_back_without_one() {
        let json = r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#;
        let mut event = parse(json).expect("valid");
        event.data = Some(Bytes::from_static(b"\0"));
        let written = to_json(&event);
        assert!(
            written.contains(r#""datacontentencoding":"base64""#),
            "{written}"
        );
        assert_eq!(round_trip(&event), event);
    }

    #[test]
    fn spec_0_3_binary_data_is_written_with_base64_encoding() {
        let json = r#"{"specversion":"0.3","id":"1","source":"/s","type":"t","datacontenttype":"image/png"}"#;
        let mut event = parse(json).expect("valid");
        event.data = Some(Bytes::from_static(&[137, 80]));
        let written = to_json(&event);
        assert!(
            written.contains(r#""datacontentencoding":"base64","data":"iVA=""#),
            "{written}"
        );
        let back = parse(&written).expect("reads back");
        assert_eq!(back.data, event.data);
        let spec_0_3_data_base64 =
            r#"{"specversion":"0.3","id":"1","source":"/s","type":"t","data_base64":"iVA="}"#;
        assert!(parse(spec_0_3_data_base64).is_err());
    }

    #[test]
    fn extensions_are_typed() {
        let json = format!(r#"{{{HEAD},"i":-2147483648,"b":false,"s":"x","n":null}}"#);
        let event = parse(&json).expect("valid");
        assert_eq!(
            event.extensions.get("i"),
            Some(&ExtensionValue::Integer(i32::MIN))
        );
        assert_eq!(
            event.extensions.get("b"),
            Some(&ExtensionValue::Boolean(false))
        );
        assert_eq!(
            event.extensions.get("s"),
            Some(&ExtensionValue::String("x".into()))
        );
        assert!(!event.extensions.contains_key("n"), "null means absent");
        assert!(to_json(&event).contains(r#""b":false,"i":-2147483648,"s":"x""#));
        assert_eq!(round_trip(&event), event);

        let too_big = format!(r#"{{{HEAD},"i":2147483648}}"#);
        assert!(
            parse(&too_big)
                .expect_err("out of range")
                .contains("32-bit")
        );
        let huge = format!(r#"{{{HEAD},"i":123456789012345678901234}}"#);
        assert!(parse(&huge).expect_err("out of range").contains("32-bit"));
        let fraction = format!(r#"{{{HEAD},"i":1.5}}"#);
        assert!(
            parse(&fraction)
                .expect_err("not integer")
                .contains("integers")
        );
        let object = format!(r#"{{{HEAD},"o":{{}}}}"#);
        assert!(parse(&object).expect_err("object").contains("`o`"));
    }

    #[test]
    fn attribute_types_and_duplicates_are_checked() {
        let wrong_type = format!(r#"{{{HEAD},"datacontenttype":5}}"#);
        let message = parse(&wrong_type).expect_err("number");
        assert!(
            message.contains("`datacontenttype` must be a JSON string"),
            "{message}"
        );
        let duplicate = format!(r#"{{{HEAD},"id":"2"}}"#);
        assert!(
            parse(&duplicate)
                .expect_err("twice")
                .contains("more than once")
        );
        let null_required = r#"{"specversion":"1.0","id":null,"source":"/s","type":"t"}"#;
        assert!(parse(null_required).expect_err("null id").contains("`id`"));
        let no_data = parse(&format!(r#"{{{HEAD},"data":null}}"#)).expect("valid");
        assert_eq!(no_data.data, None);
        assert!(parse("[]").expect_err("array").contains("JSON object"));
        assert!(
            parse("{")
                .expect_err("truncated")
                .contains("not valid JSON")
        );
        assert!(parse_structured(b"\xff").is_err());
    }

    #[test]
    fn time_keeps_the_producers_text() {
        let json = format!(r#"{{{HEAD},"time":"2018-04-05T17:31:00.5-03:30"}}"#);
        let event = parse(&json).expect("valid");
        assert_eq!(event.time.as_deref(), Some("2018-04-05T17:31:00.5-03:30"));
        assert!(to_json(&event).contains(r#""time":"2018-04-05T17:31:00.5-03:30""#));
    }

    #[test]
    fn batches_are_arrays_of_events() {
        assert_eq!(parse_batch(b" [ ] "), Ok(Vec::new()));
        let batch =
            format!(r#"[{{{HEAD}}},{{"specversion":"1.0","id":"2","source":"/s","type":"t"}}]"#);
        let events = parse_batch(batch.as_bytes()).expect("valid");
        assert_eq!(events.len(), 2);
        let v03 = r#"[{"specversion":"0.3","id":"2","source":"/s","type":"t"}]"#;
        assert_eq!(
            parse_batch(v03.as_bytes()).expect("one spec version")[0].specversion,
            SpecVersion::V03
        );
        let mixed =
            format!(r#"[{{{HEAD}}},{{"specversion":"0.3","id":"2","source":"/s","type":"t"}}]"#);
        let message = parse_batch(mixed.as_bytes()).expect_err("mixed").0;
        assert!(message.contains("same specversion"), "{message}");
        let message = parse_batch(format!("{{{HEAD}}}").as_bytes())
            .expect_err("object")
            .0;
        assert!(message.contains("JSON array"), "{message}");
        let message = parse_batch(format!(r#"[{{{HEAD}}},{{}}]"#).as_bytes())
            .expect_err("bad")
            .0;
        assert!(message.starts_with("batch event 1:"), "{message}");
    }
}
