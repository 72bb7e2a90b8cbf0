//! The CloudEvents HTTP protocol binding (1.0, also used for 0.3 events): binary, structured
//! and batched content modes.
//!
//! Binary-mode header values are percent-encoded on the way out and decoded on the way in,
//! as the 1.0 binding requires. A 0.3 binary-mode body that `ce-datacontentencoding: base64`
//! says is base64 is decoded, and the attribute dropped with it: the event holds the data
//! itself, and the 0.3 JSON format adds the encoding again where it needs it.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};

use super::json_format::{BASE64_LENIENT, parse_batch, parse_structured, to_json};
use super::{
    AttributeOrigin, Event, EventError, ExtensionValue, SpecVersion, event_from_string_attributes,
    limits,
};

/// How an event travelled over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpMode {
    /// Attributes in `ce-` headers, data in the body.
    Binary,
    /// One event as `application/cloudevents+json`.
    Structured,
    /// A JSON array of events as `application/cloudevents-batch+json`.
    Batch,
}

const STRUCTURED_JSON: &str = "application/cloudevents+json";
const BATCH_JSON: &str = "application/cloudevents-batch+json";
/// Prefix of every structured and batched content type, whatever the format.
const CLOUDEVENTS_MEDIA_PREFIX: &str = "application/cloudevents";
const HEADER_PREFIX: &str = "ce-";

/// Characters the binding requires to be percent-encoded in header values: space, `"`, `%`
/// and everything outside printable ASCII (non-ASCII is always encoded by
/// `utf8_percent_encode`).
const HEADER_VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Reads the CloudEvent(s) of an HTTP request or response, within the bounds of
/// [`super::limits`].
pub fn from_http(headers: &HeaderMap, body: Bytes) -> Result<(HttpMode, Vec<Event>), EventError> {
    let (mode, events) = from_http_unbounded(headers, body)?;
    for (index, event) in events.iter().enumerate() {
        limits::check_event_limits(event).map_err(|EventError(why)| match mode {
            HttpMode::Batch => EventError(format!("batch event {index}: {why}")),
            _ => EventError(why),
        })?;
    }
    Ok((mode, events))
}

fn from_http_unbounded(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(HttpMode, Vec<Event>), EventError> {
    let content_type = match headers.get(CONTENT_TYPE) {
        Some(value) => Some(value.to_str().map_err(|_| {
            EventError("header Content-Type holds characters that are not text".into())
        })?),
        None => None,
    };
    if let Some(content_type) = content_type {
        // Compared without case: the lower-cased copy only an error needs.
        let essence = super::media_type_essence_as_written(content_type);
        if essence.eq_ignore_ascii_case(STRUCTURED_JSON) {
            check_utf8_charset(content_type)?;
            return Ok((HttpMode::Structured, vec![parse_structured(&body)?]));
        }
        if essence.eq_ignore_ascii_case(BATCH_JSON) {
            check_utf8_charset(content_type)?;
            return Ok((HttpMode::Batch, parse_batch(&body)?));
        }
        if essence
            .get(..CLOUDEVENTS_MEDIA_PREFIX.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(CLOUDEVENTS_MEDIA_PREFIX))
        {
            let essence = super::media_type_essence(content_type);
            return Err(EventError(format!(
                "the event format {essence:?} is not supported: structured events must be \
                 {STRUCTURED_JSON} and batches {BATCH_JSON}"
            )));
        }
    }
    let event = from_binary(headers, content_type, body)?;
    Ok((HttpMode::Binary, vec![event]))
}

/// JSON is UTF-8; a `charset` parameter naming anything else is refused rather than misread.
fn check_utf8_charset(content_type: &str) -> Result<(), EventError> {
    for parameter in content_type.split(';').skip(1) {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = value.trim().trim_matches('"');
            if !(charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")) {
                return Err(EventError(format!(
                    "header Content-Type names charset {charset:?}; CloudEvents JSON must be \
                     UTF-8"
                )));
            }
        }
    }
    Ok(())
}

fn from_binary(
    headers: &HeaderMap,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<Event, EventError> {
    if !headers.contains_key("ce-specversion") {
        return Err(EventError(
            "not a CloudEvent: missing header ce-specversion (binary mode), and the \
             Content-Type is not application/cloudevents+json (structured mode)"
                .to_string(),
        ));
    }
    // Values borrow from the headers unless unquoting or percent-decoding changed them.
    let mut attributes: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(headers.keys_len() + 1);
    // The values of one header name come one after another, so a repeated header is the
    // next entry having the same name.
    let mut entries = headers.iter().peekable();
    while let Some((name, value)) = entries.next() {
        let Some(attribute) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if entries.peek().is_some_and(|(next, _)| *next == name) {
            return Err(EventError(format!("header {name} appears more than once")));
        }
        let unquoted =
            unquote(value.as_bytes()).map_err(|why| EventError(format!("header {name}: {why}")))?;
        let decoded = match unquoted {
            Cow::Borrowed(bytes) => percent_decode(bytes).decode_utf8(),
            Cow::Owned(bytes) => percent_decode(&bytes)
                .decode_utf8()
                .map(|text| Cow::Owned(text.into_owned())),
        }
        .map_err(|_| {
            EventError(format!(
                "header {name} is not valid UTF-8 once percent-decoded"
            ))
        })?;
        // The binding maps `datacontenttype` to Content-Type, which wins when both are sent.
        if attribute == "datacontenttype" && content_type.is_some() {
            continue;
        }
        attributes.push((attribute, decoded));
    }
    if let Some(content_type) = content_type {
        attributes.push(("datacontenttype", Cow::Borrowed(content_type)));
    }
    let base64_body = attributes.iter().any(|(name, value)| {
        *name == "datacontentencoding" && value.eq_ignore_ascii_case("base64")
    }) && attributes
        .iter()
        .any(|(name, value)| *name == "specversion" && value == SpecVersion::V03.as_str());
    let data = if body.is_empty() {
        None
    } else if base64_body {
        let decoded = BASE64_LENIENT.decode(&body).map_err(|e| {
            EventError(format!(
                "the body is not valid base64 although header ce-datacontentencoding says \
                 base64: {e}"
            ))
        })?;
        // Decoded, the data no longer has that encoding (as in the JSON format).
        attributes.retain(|(name, _)| *name != "datacontentencoding");
        Some(Bytes::from(decoded))
    } else {
        Some(body)
    };
    event_from_string_attributes(
        attributes
            .iter()
            .map(|(name, value)| (*name, value.as_ref())),
        AttributeOrigin::HttpHeaders,
        data,
    )
}

/// A header value with RFC 7230 quoted-string escaping undone: `"a \"b\""` is `a "b"`. The
/// binding requires it before percent-decoding, for senders of older spec versions that quoted
/// values instead of percent-encoding spaces and quotes. An unquoted value is returned as is.
fn unquote(value: &[u8]) -> Result<Cow<'_, [u8]>, &'static str> {
    let Some(inner) = value
        .strip_prefix(b"\"")
        .and_then(|rest| rest.strip_suffix(b"\""))
        .filter(|_| value.len() >= 2)
    else {
        if value.first() == Some(&b'"') {
            return Err("a quoted value has no closing double quote");
        }
        return Ok(Cow::Borrowed(value));
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped) => out.push(escaped),
                None => return Err("a quoted value ends with a lone backslash"),
            },
            b'"' => return Err("a quoted value holds an unescaped double quote"),
            other => out.push(other),
        }
    }
    Ok(Cow::Owned(out))
}

/// Writes an event in binary mode: attributes as percent-encoded `ce-` headers,
/// `datacontenttype` as Content-Type, data as the body.
pub fn to_http_binary(event: &Event) -> (HeaderMap, Bytes) {
    // Headers go in the order of `Event::string_attributes`: specversion, the other core
    // attributes in spec order, then extensions by name.
    let mut headers = HeaderMap::with_capacity(9 + event.extensions.len());
    headers.insert(
        const { HeaderName::from_static("ce-specversion") },
        HeaderValue::from_static(event.specversion.as_str()),
    );
    insert_encoded(
        &mut headers,
        const { HeaderName::from_static("ce-id") },
        &event.id,
    );
    insert_encoded(
        &mut headers,
        const { HeaderName::from_static("ce-source") },
        &event.source,
    );
    insert_encoded(
        &mut headers,
        const { HeaderName::from_static("ce-type") },
        &event.ty,
    );
    if let Some(content_type) = &event.datacontenttype {
        // A validated content type is plain ASCII; anything else is left out rather than
        // sent as a broken header.
        if let Ok(header_value) = HeaderValue::from_str(content_type) {
            headers.insert(CONTENT_TYPE, header_value);
        }
    }
    if let Some(schema) = &event.dataschema {
        let name = match event.specversion {
            SpecVersion::V10 => const { HeaderName::from_static("ce-dataschema") },
            SpecVersion::V03 => const { HeaderName::from_static("ce-schemaurl") },
        };
        insert_encoded(&mut headers, name, schema);
    }
    if let Some(subject) = &event.subject {
        insert_encoded(
            &mut headers,
            const { HeaderName::from_static("ce-subject") },
            subject,
        );
    }
    if let Some(time) = &event.time {
        insert_encoded(
            &mut headers,
            const { HeaderName::from_static("ce-time") },
            time,
        );
    }
    if event.specversion == SpecVersion::V03
        && let Some(encoding) = &event.datacontentencoding
    {
        insert_encoded(
            &mut headers,
            const { HeaderName::from_static("ce-datacontentencoding") },
            encoding,
        );
    }
    let mut name_buffer = String::new();
    for (name, value) in &event.extensions {
        // An extension named like a core attribute stands for that attribute, already
        // written above.
        if event.specversion.is_core_attribute(name) {
            continue;
        }
        name_buffer.clear();
        name_buffer.push_str(HEADER_PREFIX);
        name_buffer.push_str(name);
        let Ok(header_name) = HeaderName::from_bytes(name_buffer.as_bytes()) else {
            continue;
        };
        match value {
            ExtensionValue::String(text) => insert_encoded(&mut headers, header_name, text),
            // Digits, '-' and the two literals need no encoding.
            ExtensionValue::Integer(number) => {
                headers.insert(header_name, HeaderValue::from(*number));
            }
            ExtensionValue::Boolean(flag) => {
                let text = if *flag { "true" } else { "false" };
                headers.insert(header_name, HeaderValue::from_static(text));
            }
        }
    }
    let body = match &event.data {
        None => Bytes::new(),
        Some(data)
            if event.specversion == SpecVersion::V03 && event.datacontentencoding.is_some() =>
        {
            Bytes::from(base64::engine::general_purpose::STANDARD.encode(data))
        }
        Some(data) => data.clone(),
    };
    (headers, body)
}

/// Inserts `value` percent-encoded; most values need no escape and are copied once, as is.
fn insert_encoded(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let header_value = match Cow::from(utf8_percent_encode(value, HEADER_VALUE_ESCAPES)) {
        Cow::Borrowed(plain) => HeaderValue::from_str(plain),
        // The encoded text becomes the header's buffer without a copy.
        Cow::Owned(encoded) => HeaderValue::from_maybe_shared(Bytes::from(encoded)),
    };
    if let Ok(header_value) = header_value {
        headers.insert(name, header_value);
    }
}

/// Writes an event in structured mode as `application/cloudevents+json`.
pub fn to_http_structured(event: &Event) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
    );
    (headers, Bytes::from(to_json(event)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        map
    }

    fn error_of(pairs: &[(&str, &str)], body: &'static [u8]) -> String {
        from_http(&headers(pairs), Bytes::from_static(body))
            .expect_err("should be refused")
            .0
    }

    const BINARY: &[(&str, &str)] = &[
        ("ce-specversion", "1.0"),
        ("ce-id", "42"),
        ("ce-source", "/my%2Fsource"),
        ("ce-type", "com.example"),
    ];

    #[test]
    fn quoted_header_values_are_unquoted_then_percent_decoded() {
        let (_, events) = from_http(
            &headers(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "\"quoted id\""),
                ("ce-subject", "\"a \\\"b\\\"\""),
                ("ce-source", "\"/s\""),
                ("ce-type", "\"t%20x\""),
            ]),
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(events[0].id, "quoted id");
        assert_eq!(events[0].source, "/s");
        assert_eq!(events[0].subject.as_deref(), Some("a \"b\""));
        assert_eq!(events[0].ty, "t x");
        let error = error_of(
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "\"open"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
            ],
            b"",
        );
        assert!(
            error.contains("ce-id") && error.contains("closing"),
            "{error}"
        );
    }

    #[test]
    fn binary_mode_reads_and_percent_decodes_headers() {
        let mut pairs = BINARY.to_vec();
        pairs.push(("Content-Type", "text/plain; charset=utf-8"));
        pairs.push(("ce-greeting", "Hello%20%22W%C3%B6rld%22%25"));
        pairs.push(("CE-Upper", "x"));
        pairs.push(("ce-time", "2020-01-01T00:00:00+02:00"));
        let (mode, events) =
            from_http(&headers(&pairs), Bytes::from_static(b"body")).expect("valid");
        assert_eq!(mode, HttpMode::Binary);
        let event = &events[0];
        assert_eq!(event.id, "42");
        assert_eq!(event.source, "/my/source");
        assert_eq!(
            event.datacontenttype.as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(event.time.as_deref(), Some("2020-01-01T00:00:00+02:00"));
        assert_eq!(
            event.extensions.get("greeting"),
            Some(&ExtensionValue::String("Hello \"Wörld\"%".to_string()))
        );
        assert!(
            event.extensions.contains_key("upper"),
            "header names are case-insensitive"
        );
        assert_eq!(event.data.as_deref(), Some(&b"body"[..]));

        let (_, no_body) = from_http(&headers(BINARY), Bytes::new()).expect("valid");
        assert_eq!(no_body[0].data, None);
    }

    #[test]
    fn binary_mode_without_specversion_is_not_a_cloudevent() {
        let message = error_of(
            &[("ce-id", "1"), ("Content-Type", "application/json")],
            b"{}",
        );
        assert!(message.contains("not a CloudEvent") && message.contains("ce-specversion"));
        let message = error_of(&[("ce-specversion", "0.9"), ("ce-id", "1")], b"");
        assert!(
            message.contains("\"0.9\"") && message.contains("not supported"),
            "{message}"
        );
    }

    #[test]
    fn binary_mode_errors_name_the_header() {
        let missing_id: Vec<_> = BINARY
            .iter()
            .filter(|(n, _)| *n != "ce-id")
            .copied()
            .collect();
        assert!(error_of(&missing_id, b"").contains("header ce-id"));
        let mut bad_name = BINARY.to_vec();
        bad_name.push(("ce-my_ext", "v"));
        assert!(error_of(&bad_name, b"").contains("ce-my_ext"));
        let mut reserved = BINARY.to_vec();
        reserved.push(("ce-data", "v"));
        let message = error_of(&reserved, b"");
        assert!(
            message.contains("ce-data") && message.contains("reserved"),
            "{message}"
        );
        let mut twice = BINARY.to_vec();
        twice.push(("ce-id", "43"));
        assert!(error_of(&twice, b"").contains("ce-id appears more than once"));
        let mut bad_utf8 = BINARY.to_vec();
        bad_utf8.push(("ce-ext", "%FF"));
        assert!(error_of(&bad_utf8, b"").contains("ce-ext"));
        let mut bad_type = BINARY.to_vec();
        bad_type.push(("Content-Type", "json"));
        assert!(error_of(&bad_type, b"{}").contains("datacontenttype"));
    }

    #[test]
    fn structured_and_batched_modes() {
        let json = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1}}"#;
        let structured = headers(&[(
            "Content-Type",
            "application/cloudevents+json; charset=UTF-8",
        )]);
        let (mode, events) = from_http(&structured, Bytes::from_static(json)).expect("valid");
        assert_eq!(mode, HttpMode::Structured);
        assert_eq!(events[0].data.as_deref(), Some(&br#"{"a":1}"#[..]));

        let batch = headers(&[("Content-Type", "application/cloudevents-batch+json")]);
        let (mode, events) = from_http(&batch, Bytes::from_static(b"[]")).expect("valid");
        assert_eq!((mode, events.len()), (HttpMode::Batch, 0));

        let message = error_of(&[("Content-Type", "application/cloudevents+xml")], b"<x/>");
        assert!(message.contains("not supported"), "{message}");
        let message = error_of(
            &[(
                "Content-Type",
                "application/cloudevents+json; charset=latin1",
            )],
            b"{}",
        );
        assert!(message.contains("charset"), "{message}");
        let message = error_of(&[("Content-Type", "application/cloudevents+json")], b"{");
        assert!(message.contains("not valid JSON"), "{message}");
    }

    fn sample_event() -> Event {
        let (_, mut events) = from_http(&headers(BINARY), Bytes::new()).expect("valid");
        let mut event = events.remove(0);
        event.subject = Some("sübject with \"quotes\" and 100%".to_string());
        event.datacontenttype = Some("application/json".to_string());
        event.set_extension(
            "ext",
            ExtensionValue::String(" lead and trail ".to_string()),
        );
        event.data = Some(Bytes::from_static(b"[1, 2]"));
        event
    }

    #[test]
    fn binary_output_percent_encodes_and_reads_back() {
        let event = sample_event();
        let (out_headers, body) = to_http_binary(&event);
        assert_eq!(
            out_headers["ce-subject"],
            "s%C3%BCbject%20with%20%22quotes%22%20and%20100%25"
        );
        assert_eq!(out_headers["ce-source"], "/my/source");
        assert_eq!(out_headers[CONTENT_TYPE], "application/json");
        assert!(!out_headers.contains_key("ce-datacontenttype"));
        assert_eq!(body, Bytes::from_static(b"[1, 2]"));
        let (_, events) = from_http(&out_headers, body).expect("reads back");
        assert_eq!(events, vec![event]);
    }

    #[test]
    fn binary_output_keeps_attribute_order_and_writes_typed_extensions_as_text() {
        let mut event = sample_event();
        event.set_extension("count", ExtensionValue::Integer(-7));
        event.set_extension("flag", ExtensionValue::Boolean(false));
        let (out_headers, _) = to_http_binary(&event);
        let names: Vec<&str> = out_headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "ce-specversion",
                "ce-id",
                "ce-source",
                "ce-type",
                "content-type",
                "ce-subject",
                "ce-count",
                "ce-ext",
                "ce-flag",
            ]
        );
        assert_eq!(out_headers["ce-count"], "-7");
        assert_eq!(out_headers["ce-flag"], "false");
        assert_eq!(out_headers["ce-ext"], "%20lead%20and%20trail%20");
    }

    #[test]
    fn structured_output_reads_back() {
        let mut event = sample_event();
        event.set_extension("n", ExtensionValue::Integer(7));
        let (out_headers, body) = to_http_structured(&event);
        assert_eq!(
            out_headers[CONTENT_TYPE],
            "application/cloudevents+json; charset=utf-8"
        );
        let (mode, events) = from_http(&out_headers, body).expect("reads back");
        assert_eq!((mode, events), (HttpMode::Structured, vec![event]));
    }

    #[test]
    fn spec_0_3_stays_0_3_in_binary_mode() {
        let json = br#"{"specversion":"0.3","id":"1","source":"/s","type":"t","schemaurl":"/x","datacontentencoding":"base64","data":"AAH/"}"#;
        let event = crate::event::parse_structured(json).expect("valid");
        let (out_headers, body) = to_http_binary(&event);
        assert_eq!(out_headers["ce-specversion"], "0.3");
        assert_eq!(out_headers["ce-schemaurl"], "/x");
        // The data was decoded from base64: it goes out as the bytes themselves.
        assert!(out_headers.get("ce-datacontentencoding").is_none());
        assert_eq!(body, Bytes::from_static(&[0, 1, 255]));
        let (_, events) = from_http(&out_headers, body).expect("reads back");
        assert_eq!(events, vec![event.clone()]);

        // A base64 body that says so is decoded.
        let mut encoded = out_headers.clone();
        encoded.insert("ce-datacontentencoding", HeaderValue::from_static("base64"));
        let (_, events) = from_http(&encoded, Bytes::from_static(b"AAH/")).expect("decodes");
        assert_eq!(events, vec![event]);

        let mut broken = encoded.clone();
        broken.insert("ce-id", HeaderValue::from_static("2"));
        let message = from_http(&broken, Bytes::from_static(b"!!"))
            .expect_err("bad")
            .0;
        assert!(message.contains("base64"), "{message}");
    }
}
