//! The CloudEvent model of Rivulet and its HTTP protocol binding.
//!
//! Rivulet keeps an event's data as the exact bytes it received (structured-mode JSON `data`
//! is kept as its raw JSON text), so a subscriber gets what the producer sent, byte for byte.
//! Spec versions 1.0 and 0.3 are both kept as they are: never upgraded.

use std::collections::BTreeMap;

use bytes::Bytes;
use rivulet_channels::{V03_CONTEXT_ATTRIBUTES, V10_CONTEXT_ATTRIBUTES};

mod http_binding;
mod json_format;
pub mod limits;

pub use http_binding::{HttpMode, from_http, to_http_binary, to_http_structured};
pub use json_format::{parse_batch, parse_structured, to_json};

/// A CloudEvents spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecVersion {
    V03,
    V10,
}

impl SpecVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V03 => "0.3",
            SpecVersion::V10 => "1.0",
        }
    }
}

/// An extension attribute value, typed as the JSON format carries it. The HTTP binary mode
/// carries every value as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionValue {
    String(String),
    /// CloudEvents integers are 32-bit signed.
    Integer(i32),
    Boolean(bool),
}

/// A validated CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub specversion: SpecVersion,
    pub id: String,
    pub source: String,
    pub ty: String,
    pub datacontenttype: Option<String>,
    /// `dataschema` (1.0) or `schemaurl` (0.3).
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    /// RFC 3339 timestamp, kept as the producer wrote it (its offset preserved).
    pub time: Option<String>,
    /// `datacontentencoding` of spec 0.3 (`base64`), kept so 0.3 events round-trip.
    pub datacontentencoding: Option<String>,
    /// Extension attributes by lower-case name.
    pub extensions: BTreeMap<String, ExtensionValue>,
    /// The data bytes as received; for structured JSON `data` the raw JSON text.
    pub data: Option<Bytes>,
}

/// Why a request or document is not a valid CloudEvent. The message names the attribute or
/// header and the rule it breaks, and is returned to the client with a `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EventError(pub String);

impl Event {
    /// An event of `specversion` with every attribute empty, for parsers to fill in.
    pub(crate) fn empty(specversion: SpecVersion) -> Event {
        Event {
            specversion,
            id: String::new(),
            source: String::new(),
            ty: String::new(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            datacontentencoding: None,
            extensions: BTreeMap::new(),
            data: None,
        }
    }

    /// The value of any context attribute (core or extension) in its canonical string form,
    /// the form filters compare against. `specversion`, `id`, `source`, `type`,
    /// `datacontenttype`, `dataschema` (and `schemaurl` for 0.3), `subject`, `time`, and
    /// extensions.
    pub fn attribute(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match name {
            "specversion" => Some(Cow::Borrowed(self.specversion.as_str())),
            "id" => Some(Cow::Borrowed(&self.id)),
            "source" => Some(Cow::Borrowed(&self.source)),
            "type" => Some(Cow::Borrowed(&self.ty)),
            "datacontenttype" => self.datacontenttype.as_deref().map(Cow::Borrowed),
            "dataschema" if self.specversion == SpecVersion::V10 => {
                self.dataschema.as_deref().map(Cow::Borrowed)
            }
            "schemaurl" if self.specversion == SpecVersion::V03 => {
                self.dataschema.as_deref().map(Cow::Borrowed)
            }
            "subject" => self.subject.as_deref().map(Cow::Borrowed),
            "time" => self.time.as_deref().map(Cow::Borrowed),
            "datacontentencoding" if self.specversion == SpecVersion::V03 => {
                self.datacontentencoding.as_deref().map(Cow::Borrowed)
            }
            _ => self.extensions.get(name).map(|v| match v {
                ExtensionValue::String(s) => Cow::Borrowed(s.as_str()),
                ExtensionValue::Integer(i) => Cow::Owned(i.to_string()),
                ExtensionValue::Boolean(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            }),
        }
    }

    /// Sets or replaces an extension attribute.
    pub fn set_extension(&mut self, name: &str, value: ExtensionValue) {
        self.extensions.insert(name.to_string(), value);
    }

    /// The attributes as a channel envelope carries them, with the data bytes.
    ///
    /// Every attribute becomes a `(name, canonical string)` pair, `specversion` first. The
    /// envelope does not record extension types: an integer or boolean extension comes back
    /// from [`Event::from_envelope`] as a string of the same text, which is also how the HTTP
    /// binary mode carries it.
    pub fn to_envelope(&self) -> rivulet_channels::Envelope {
        rivulet_channels::Envelope {
            attributes: self
                .string_attributes()
                .into_iter()
                .map(|(name, value)| (name.to_string(), value.into_owned()))
                .collect(),
            data: self.data.clone(),
            typed: self
                .extensions
                .iter()
                .filter_map(|(name, value)| match value {
                    ExtensionValue::Integer(_) => {
                        Some((name.clone(), rivulet_channels::AttributeType::Integer))
                    }
                    ExtensionValue::Boolean(_) => {
                        Some((name.clone(), rivulet_channels::AttributeType::Boolean))
                    }
                    ExtensionValue::String(_) => None,
                })
                .collect(),
        }
    }

    /// Rebuilds an event from a channel envelope and validates it, with the types of its
    /// extensions as the envelope recorded them.
    pub fn from_envelope(envelope: &rivulet_channels::Envelope) -> Result<Event, EventError> {
        let attributes = envelope
            .attributes
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()));
        let mut event = event_from_string_attributes(
            attributes,
            AttributeOrigin::Envelope,
            envelope.data.clone(),
        )?;
        for (name, ty) in &envelope.typed {
            let Some(slot) = event.extensions.get_mut(name) else {
                continue;
            };
            let ExtensionValue::String(text) = slot else {
                continue;
            };
            // A value that does not read as its recorded type stays the string it is.
            let typed = match ty {
                rivulet_channels::AttributeType::Integer => {
                    text.parse().ok().map(ExtensionValue::Integer)
                }
                rivulet_channels::AttributeType::Boolean => {
                    text.parse().ok().map(ExtensionValue::Boolean)
                }
            };
            if let Some(typed) = typed {
                *slot = typed;
            }
        }
        Ok(event)
    }

    /// Checks every attribute against the CloudEvents rules for its spec version.
    pub fn validate(&self) -> Result<(), EventError> {
        self.validate_attributes(true)
    }

    /// [`Event::validate`], leaving out the extension names when the caller has checked them.
    fn validate_attributes(&self, check_extension_names: bool) -> Result<(), EventError> {
        check_required("id", &self.id)?;
        check_required("source", &self.source)?;
        check_required("type", &self.ty)?;
        check_uri_reference("source", &self.source)?;
        if let Some(content_type) = &self.datacontenttype {
            check_media_type("datacontenttype", content_type)?;
        }
        if let Some(schema) = &self.dataschema {
            match self.specversion {
                SpecVersion::V10 => check_absolute_uri("dataschema", schema)?,
                SpecVersion::V03 => {
                    check_required("schemaurl", schema)?;
                    check_uri_reference("schemaurl", schema)?;
                }
            }
        }
        if let Some(subject) = &self.subject {
            check_required("subject", subject)?;
        }
        if let Some(time) = &self.time {
            check_timestamp("time", time)?;
        }
        match (self.specversion, &self.datacontentencoding) {
            (_, None) => {}
            (SpecVersion::V10, Some(_)) => {
                return Err(EventError(
                    "attribute `datacontentencoding` belongs to spec 0.3; a 1.0 event carries \
                     binary data in `data_base64`"
                        .to_string(),
                ));
            }
            (SpecVersion::V03, Some(encoding)) => check_content_encoding(encoding)?,
        }
        for (name, value) in &self.extensions {
            if check_extension_names {
                check_extension_name(self.specversion, name)?;
            }
            if let ExtensionValue::String(text) = value {
                check_string_characters(name, text)?;
            }
        }
        Ok(())
    }

    /// Every set attribute as `(name, canonical string)`, `specversion` first, then the other
    /// core attributes in spec order, then extensions by name.
    pub(crate) fn string_attributes(&self) -> Vec<(&str, std::borrow::Cow<'_, str>)> {
        let mut names: Vec<&str> = vec![
            "specversion",
            "id",
            "source",
            "type",
            "datacontenttype",
            self.dataschema_name(),
            "subject",
            "time",
        ];
        if self.specversion == SpecVersion::V03 {
            names.push("datacontentencoding");
        }
        names.extend(self.extensions.keys().map(String::as_str));
        names
            .into_iter()
            .filter_map(|name| self.attribute(name).map(|value| (name, value)))
            .collect()
    }

    /// The name `dataschema` has in this event's spec version.
    pub(crate) fn dataschema_name(&self) -> &'static str {
        match self.specversion {
            SpecVersion::V10 => "dataschema",
            SpecVersion::V03 => "schemaurl",
        }
    }
}

impl SpecVersion {
    /// Reads a `specversion` value; only the versions Rivulet speaks are accepted.
    pub(crate) fn parse(value: &str) -> Result<SpecVersion, EventError> {
        match value {
            "1.0" => Ok(SpecVersion::V10),
            "0.3" => Ok(SpecVersion::V03),
            "" => Err(EventError(
                "attribute `specversion` must be a non-empty string".to_string(),
            )),
            other => Err(EventError(format!(
                "attribute `specversion` is {other:?}, which is not supported (expected \"1.0\" \
                 or \"0.3\")"
            ))),
        }
    }

    /// Whether [`Event::attribute`] reads `name` from a core attribute field of an event of
    /// this version rather than from its extensions.
    pub(crate) fn is_core_attribute(self, name: &str) -> bool {
        match name {
            "specversion" | "id" | "source" | "type" | "datacontenttype" | "subject" | "time" => {
                true
            }
            "dataschema" => self == SpecVersion::V10,
            "schemaurl" | "datacontentencoding" => self == SpecVersion::V03,
            _ => false,
        }
    }

    /// Whether `name` is a context attribute of this version, or `data`, which no extension
    /// may take.
    fn reserves(self, name: &str) -> bool {
        let context: &[&str] = match self {
            SpecVersion::V10 => &V10_CONTEXT_ATTRIBUTES,
            SpecVersion::V03 => &V03_CONTEXT_ATTRIBUTES,
        };
        name == "data" || context.contains(&name)
    }
}

/// Where string-typed attributes come from, so messages name what the sender wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttributeOrigin {
    /// HTTP binary mode: `ce-` headers (and `Content-Type`).
    HttpHeaders,
    /// A channel envelope.
    Envelope,
}

impl AttributeOrigin {
    fn describe(self, name: &str) -> String {
        match self {
            AttributeOrigin::HttpHeaders if name == "datacontenttype" => {
                "attribute `datacontenttype` (header Content-Type)".to_string()
            }
            AttributeOrigin::HttpHeaders => format!("attribute `{name}` (header ce-{name})"),
            AttributeOrigin::Envelope => format!("attribute `{name}`"),
        }
    }
}

/// Builds and validates an event from attributes that all arrive as strings: HTTP binary-mode
/// headers and channel envelopes. Extensions become string extensions. The attributes are read
/// in more than one pass, so the iterator is cloned; only what the event keeps is copied.
pub(crate) fn event_from_string_attributes<'a>(
    attributes: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    origin: AttributeOrigin,
    data: Option<Bytes>,
) -> Result<Event, EventError> {
    if let Some(name) = first_repeated_name(attributes.clone().map(|(name, _)| name)) {
        return Err(EventError(format!(
            "{} appears more than once",
            origin.describe(name)
        )));
    }
    let specversion = match attributes.clone().find(|(name, _)| *name == "specversion") {
        Some((_, value)) => SpecVersion::parse(value)?,
        None => {
            return Err(EventError(format!(
                "not a CloudEvent: missing {}",
                origin.describe("specversion")
            )));
        }
    };
    let mut event = Event::empty(specversion);
    event.data = data;
    let (mut has_id, mut has_source, mut has_type) = (false, false, false);
    for (name, value) in attributes {
        match (name, specversion) {
            ("specversion", _) => {}
            ("id", _) => {
                event.id = value.to_owned();
                has_id = true;
            }
            ("source", _) => {
                event.source = value.to_owned();
                has_source = true;
            }
            ("type", _) => {
                event.ty = value.to_owned();
                has_type = true;
            }
            ("datacontenttype", _) => event.datacontenttype = Some(value.to_owned()),
            ("dataschema", SpecVersion::V10) | ("schemaurl", SpecVersion::V03) => {
                event.dataschema = Some(value.to_owned())
            }
            ("subject", _) => event.subject = Some(value.to_owned()),
            ("time", _) => event.time = Some(value.to_owned()),
            ("datacontentencoding", SpecVersion::V03) => {
                event.datacontentencoding = Some(value.to_owned())
            }
            _ => {
                check_extension_name(specversion, name).map_err(|EventError(why)| {
                    EventError(format!("{}: {why}", origin.describe(name)))
                })?;
                event
                    .extensions
                    .insert(name.to_owned(), ExtensionValue::String(value.to_owned()));
            }
        }
    }
    let missing_required = [("id", has_id), ("source", has_source), ("type", has_type)]
        .into_iter()
        .find_map(|(name, present)| (!present).then_some(name));
    if let Some(required) = missing_required {
        return Err(EventError(format!(
            "missing required {}",
            origin.describe(required)
        )));
    }
    // Every extension name passed `check_extension_name` above.
    event.validate_attributes(false)?;
    Ok(event)
}

/// The first name that repeats an earlier one. An event has a handful of attributes, for
/// which comparing each with those before it costs less than building a set.
fn first_repeated_name<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    const PAIRWISE_UP_TO: usize = 32;
    if names.clone().nth(PAIRWISE_UP_TO).is_none() {
        return names
            .clone()
            .enumerate()
            .find(|(index, name)| names.clone().take(*index).any(|earlier| earlier == *name))
            .map(|(_, name)| name);
    }
    let mut seen = std::collections::BTreeSet::new();
    names.into_iter().find(|name| !seen.insert(*name))
}

fn invalid_extension_name(described: &str) -> EventError {
    EventError(format!(
        "{described} has an invalid name: attribute names consist of lower-case letters a-z \
         and digits 0-9 only"
    ))
}

/// Checks an extension attribute name: `[a-z0-9]+` and not a name the spec reserves.
pub(crate) fn check_extension_name(specversion: SpecVersion, name: &str) -> Result<(), EventError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(invalid_extension_name(&format!("attribute {name:?}")));
    }
    if specversion.reserves(name) {
        return Err(EventError(format!(
            "attribute `{name}` cannot be an extension: the name is reserved by CloudEvents {}",
            specversion.as_str()
        )));
    }
    Ok(())
}

/// A required or optional string attribute that, when present, must be non-empty.
fn check_required(name: &str, value: &str) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError(format!(
            "attribute `{name}` must be a non-empty string"
        )));
    }
    check_string_characters(name, value)
}

/// The CloudEvents String type excludes control characters and Unicode noncharacters.
fn check_string_characters(name: &str, value: &str) -> Result<(), EventError> {
    // Printable ASCII holds neither, and is what nearly every value is.
    if value.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Ok(());
    }
    let is_noncharacter =
        |c: char| matches!(c as u32, 0xFDD0..=0xFDEF) || (c as u32 & 0xFFFE) == 0xFFFE;
    match value
        .chars()
        .find(|c| c.is_control() || is_noncharacter(*c))
    {
        Some(bad) => Err(EventError(format!(
            "attribute `{name}` contains the character U+{:04X}, which a CloudEvents string \
             may not contain (control characters and noncharacters are disallowed)",
            bad as u32
        ))),
        None => Ok(()),
    }
}

/// RFC 3339 `date-time`; the text itself is kept, this only checks it.
fn check_timestamp(name: &str, value: &str) -> Result<(), EventError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|_| ())
        .map_err(|e| {
            EventError(format!(
                "attribute `{name}` is {value:?}, which is not an RFC 3339 timestamp ({e})"
            ))
        })
}

fn check_content_encoding(encoding: &str) -> Result<(), EventError> {
    if encoding.eq_ignore_ascii_case("base64") {
        Ok(())
    } else {
        Err(EventError(format!(
            "attribute `datacontentencoding` is {encoding:?}; the only supported encoding is \
             \"base64\""
        )))
    }
}

/// RFC 7230 `tchar`, the characters of a media type's type, subtype and parameter names.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A media type as RFC 2046 writes it: `type "/" subtype *(";" parameter)`, with
/// `parameter = token "=" (token / quoted-string)`.
fn check_media_type(name: &str, value: &str) -> Result<(), EventError> {
    let bad = |why: &str| {
        EventError(format!(
            "attribute `{name}` is {value:?}, which is not an RFC 2046 media type: {why}"
        ))
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let Some((media_type, subtype)) = essence.split_once('/') else {
        return Err(bad("expected type/subtype"));
    };
    if media_type.is_empty() || !media_type.bytes().all(is_token_char) {
        return Err(bad("the type is not a token"));
    }
    if subtype.is_empty() || !subtype.bytes().all(is_token_char) {
        return Err(bad("the subtype is not a token"));
    }
    // Quoted parameter values may hold ';', so parameters are scanned rather than split.
    let rest = &value[value.find(';').unwrap_or(value.len())..];
    check_media_type_parameters(rest).map_err(bad)
}

fn check_media_type_parameters(mut rest: &str) -> Result<(), &'static str> {
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return Ok(());
        }
        let Some(after_separator) = rest.strip_prefix(';') else {
            return Err("parameters must be separated by ';'");
        };
        rest = after_separator.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return Ok(());
        }
        let name_len = rest.bytes().take_while(|b| is_token_char(*b)).count();
        if name_len == 0 {
            return Err("a parameter name is not a token");
        }
        rest = rest[name_len..]
            .strip_prefix('=')
            .ok_or("a parameter has no '=' value")?;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut escaped = false;
            let mut end = None;
            for (index, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = Some(index);
                        break;
                    }
                    c if c.is_control() && c != '\t' => {
                        return Err("a quoted parameter value holds a control character");
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("a quoted parameter value is not closed")?;
            rest = &quoted[end + 1..];
        } else {
            let value_len = rest.bytes().take_while(|b| is_token_char(*b)).count();
            if value_len == 0 {
                return Err("a parameter value is neither a token nor a quoted string");
            }
            rest = &rest[value_len..];
        }
    }
}

/// The media type without parameters, lower-cased: `application/json; charset=utf-8` gives
/// `application/json`.
pub(crate) fn media_type_essence(content_type: &str) -> String {
    media_type_essence_as_written(content_type).to_ascii_lowercase()
}

/// [`media_type_essence`] in its original case, for comparisons that ignore case without
/// a lower-cased copy.
pub(crate) fn media_type_essence_as_written(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// Whether data of this content type is JSON (`application/json`, `text/json`, `*/*+json`).
pub(crate) fn is_json_media_type(content_type: &str) -> bool {
    let essence = media_type_essence_as_written(content_type);
    let suffix = essence
        .len()
        .checked_sub(5)
        .map(|start| &essence.as_bytes()[start..]);
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || suffix.is_some_and(|suffix| suffix.eq_ignore_ascii_case(b"+json"))
}

fn check_absolute_uri(name: &str, value: &str) -> Result<(), EventError> {
    check_required(name, value)?;
    match uri_reference_problem(value) {
        Some(why) => Err(not_a_uri(name, value, "URI", why)),
        None if !has_scheme(value) => Err(not_a_uri(
            name,
            value,
            "URI",
            "an absolute URI needs a scheme such as https:",
        )),
        None => Ok(()),
    }
}

fn check_uri_reference(name: &str, value: &str) -> Result<(), EventError> {
    match uri_reference_problem(value) {
        Some(why) => Err(not_a_uri(name, value, "URI-reference", why)),
        None => Ok(()),
    }
}

fn not_a_uri(name: &str, value: &str, kind: &str, why: &str) -> EventError {
    EventError(format!(
        "attribute `{name}` is {value:?}, which is not an RFC 3986 {kind}: {why}"
    ))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn is_sub_delim(b: u8) -> bool {
    b"!$&'()*+,;=".contains(&b)
}

fn is_scheme(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

fn has_scheme(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| is_scheme(scheme))
}

/// Checks that every byte is allowed by `allowed` or is part of a `%XX` escape.
fn check_chars(
    text: &str,
    allowed: impl Fn(u8) -> bool,
    what: &'static str,
) -> Option<&'static str> {
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let b = bytes[index];
        if b == b'%' {
            let escape_ok = bytes.get(index + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(index + 2).is_some_and(u8::is_ascii_hexdigit);
            if !escape_ok {
                return Some("'%' must start a %XX escape");
            }
            index += 3;
        } else if allowed(b) {
            index += 1;
        } else {
            return Some(what);
        }
    }
    None
}

/// `text` before the first `separator`, and what follows it if there is one.
fn split_at_first(text: &str, separator: char) -> (&str, Option<&str>) {
    match text.split_once(separator) {
        Some((before, after)) => (before, Some(after)),
        None => (text, None),
    }
}

/// Why `value` is not an RFC 3986 URI-reference, or `None` when it is one.
fn uri_reference_problem(value: &str) -> Option<&'static str> {
    let is_pchar = |b: u8| is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@';
    let (before_fragment, fragment) = split_at_first(value, '#');
    let (hier, query) = split_at_first(before_fragment, '?');
    // A query and a fragment allow the same characters.
    let query_or_fragment_char = |b: u8| is_pchar(b) || b == b'/' || b == b'?';
    for (part, problem) in [
        (
            fragment,
            "the fragment holds a character that must be percent-encoded",
        ),
        (
            query,
            "the query holds a character that must be percent-encoded",
        ),
    ] {
        if let Some(problem) = part.and_then(|p| check_chars(p, query_or_fragment_char, problem)) {
            return Some(problem);
        }
    }
    let first_segment_end = hier.find('/').unwrap_or(hier.len());
    let after_scheme = match hier[..first_segment_end].split_once(':') {
        Some((scheme, _)) => {
            if !is_scheme(scheme) {
                return Some("the part before ':' is not a valid scheme");
            }
            &hier[scheme.len() + 1..]
        }
        None => hier,
    };
    if let Some(after_slashes) = after_scheme.strip_prefix("//") {
        let authority_end = after_slashes.find('/').unwrap_or(after_slashes.len());
        if let Some(why) = authority_problem(&after_slashes[..authority_end]) {
            return Some(why);
        }
        check_chars(
            &after_slashes[authority_end..],
            |b| is_pchar(b) || b == b'/',
            "the path holds a character that must be percent-encoded",
        )
    } else {
        check_chars(
            after_scheme,
            |b| is_pchar(b) || b == b'/',
            "the path holds a character that must be percent-encoded",
        )
    }
}

fn authority_problem(authority: &str) -> Option<&'static str> {
    let host_and_port = match authority.rsplit_once('@') {
        Some((userinfo, host_and_port)) => {
            if let Some(why) = check_chars(
                userinfo,
                |b| is_unreserved(b) || is_sub_delim(b) || b == b':',
                "the user information holds a character that must be percent-encoded",
            ) {
                return Some(why);
            }
            host_and_port
        }
        None => authority,
    };
    let (host, port) = if let Some(literal) = host_and_port.strip_prefix('[') {
        let Some((inside, after)) = literal.split_once(']') else {
            return Some("an IP literal host is missing its closing ']'");
        };
        if inside.is_empty()
            || !inside.bytes().all(|b| {
                b.is_ascii_hexdigit()
                    || b == b':'
                    || b == b'.'
                    || is_unreserved(b)
                    || is_sub_delim(b)
            })
        {
            return Some("the IP literal host is malformed");
        }
        match after.strip_prefix(':') {
            Some(port) => ("", Some(port)),
            None if after.is_empty() => ("", None),
            None => return Some("unexpected text after the IP literal host"),
        }
    } else {
        match host_and_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_and_port, None),
        }
    };
    if port.is_some_and(|port| !port.bytes().all(|b| b.is_ascii_digit())) {
        return Some("the port is not a number");
    }
    check_chars(
        host,
        |b| is_unreserved(b) || is_sub_delim(b),
        "the host holds a character that must be percent-encoded",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(specversion: SpecVersion) -> Event {
        Event {
            specversion,
            id: "1".to_string(),
            source: "https://example.com/source".to_string(),
            ty: "com.example.test".to_string(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            datacontentencoding: None,
            extensions: BTreeMap::new(),
            data: None,
        }
    }

    fn error_of(event: &Event) -> String {
        event.validate().expect_err("event should be invalid").0
    }

    #[test]
    fn source_accepts_uri_references() {
        for source in [
            "https://example.com/a/b?x=1#frag",
            "#fragment",
            "/relative/path",
            "relative/path",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "//authority/path",
            "http://user:pw@[::1]:8080/p%20q",
            "mailto:someone@example.com",
        ] {
            let mut event = minimal(SpecVersion::V10);
            event.source = source.to_string();
            assert_eq!(event.validate(), Ok(()), "source {source:?}");
        }
    }

    #[test]
    fn source_refuses_what_is_not_a_uri_reference() {
        for source in [
            "has space",
            "1abc:path",
            "http://exa mple.com",
            "bad%zzescape",
            "http://host:port/",
            "caf\u{e9}",
            "a#b#c",
        ] {
            let mut event = minimal(SpecVersion::V10);
            event.source = source.to_string();
            let message = error_of(&event);
            assert!(message.contains("`source`"), "{source:?}: {message}");
            assert!(message.contains("URI-reference"), "{source:?}: {message}");
        }
    }

    #[test]
    fn dataschema_must_be_absolute_but_schemaurl_may_be_relative() {
        let mut event = minimal(SpecVersion::V10);
        event.dataschema = Some("https://example.com/schema.json".to_string());
        assert_eq!(event.validate(), Ok(()));
        event.dataschema = Some("/schema.json".to_string());
        let message = error_of(&event);
        assert!(
            message.contains("`dataschema`") && message.contains("scheme"),
            "{message}"
        );

        let mut event = minimal(SpecVersion::V03);
        event.dataschema = Some("/schema.json".to_string());
        assert_eq!(event.validate(), Ok(()));
        event.dataschema = Some(String::new());
        assert!(error_of(&event).contains("`schemaurl`"));
    }

    #[test]
    fn datacontenttype_follows_rfc_2046() {
        for good in [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain;charset=\"utf-8\"",
            "application/vnd.example+json;v=2;q=\"a;b\"",
        ] {
            let mut event = minimal(SpecVersion::V10);
            event.datacontenttype = Some(good.to_string());
            assert_eq!(event.validate(), Ok(()), "{good:?}");
        }
        for bad in [
            "text/",
            "/json",
            "text plain",
            "a/b; x",
            "a/b; x=\"open",
            "a b/c",
        ] {
            let mut event = minimal(SpecVersion::V10);
            event.datacontenttype = Some(bad.to_string());
            let message = error_of(&event);
            assert!(message.contains("RFC 2046"), "{bad:?}: {message}");
        }
    }

    #[test]
    fn extension_names_are_lower_case_alphanumeric_and_not_reserved() {
        let mut event = minimal(SpecVersion::V10);
        event.set_extension(
            "averyveryverylongextensionname1",
            ExtensionValue::Integer(1),
        );
        assert_eq!(event.validate(), Ok(()), "length is not limited");
        for bad in ["my-ext", "MyExt", "my_ext", ""] {
            let mut event = minimal(SpecVersion::V10);
            event.set_extension(bad, ExtensionValue::Boolean(true));
            assert!(error_of(&event).contains("invalid name"), "{bad:?}");
        }
        for reserved in ["data", "id", "dataschema"] {
            let mut event = minimal(SpecVersion::V10);
            event.set_extension(reserved, ExtensionValue::String("x".to_string()));
            assert!(error_of(&event).contains("reserved"), "{reserved:?}");
        }
        // `schemaurl` is core only in 0.3, so a 1.0 event may use the name.
        let mut event = minimal(SpecVersion::V10);
        event.set_extension("schemaurl", ExtensionValue::String("x".to_string()));
        assert_eq!(event.validate(), Ok(()));
    }

    #[test]
    fn strings_may_not_hold_control_characters() {
        let mut event = minimal(SpecVersion::V10);
        event.id = "a\nb".to_string();
        assert!(error_of(&event).contains("U+000A"));
        let mut event = minimal(SpecVersion::V10);
        event.set_extension("ext", ExtensionValue::String("\u{7f}".to_string()));
        assert!(error_of(&event).contains("`ext`"));
    }

    #[test]
    fn time_must_be_rfc_3339() {
        let mut event = minimal(SpecVersion::V10);
        event.time = Some("2018-04-05T18:31:00.123+05:30".to_string());
        assert_eq!(event.validate(), Ok(()));
        event.time = Some("2018-04-05".to_string());
        assert!(error_of(&event).contains("RFC 3339"));
    }

    #[test]
    fn datacontentencoding_is_a_base64_only_0_3_attribute() {
        let mut event = minimal(SpecVersion::V10);
        event.datacontentencoding = Some("base64".to_string());
        assert!(error_of(&event).contains("0.3"));
        let mut event = minimal(SpecVersion::V03);
        event.datacontentencoding = Some("gzip".to_string());
        assert!(error_of(&event).contains("base64"));
        event.datacontentencoding = Some("Base64".to_string());
        assert_eq!(event.validate(), Ok(()));
    }

    #[test]
    fn envelope_keeps_attributes_and_data_with_specversion_first() {
        let mut event = minimal(SpecVersion::V03);
        event.datacontenttype = Some("application/json".to_string());
        event.dataschema = Some("https://example.com/schema".to_string());
        event.subject = Some("subject".to_string());
        event.time = Some("2020-01-01T00:00:00+01:00".to_string());
        event.set_extension("count", ExtensionValue::Integer(-7));
        event.set_extension("flag", ExtensionValue::Boolean(true));
        event.set_extension("text", ExtensionValue::String("hi".to_string()));
        event.data = Some(Bytes::from_static(b"{\"n\": 1}"));

        let envelope = event.to_envelope();
        assert_eq!(envelope.attributes[0], ("specversion".into(), "0.3".into()));
        assert_eq!(
            envelope.attribute("schemaurl"),
            Some("https://example.com/schema")
        );
        assert_eq!(envelope.attribute("count"), Some("-7"));
        assert_eq!(
            envelope.attribute("datacontenttype"),
            Some("application/json")
        );
        assert_eq!(envelope.data, event.data);

        let back = Event::from_envelope(&envelope).expect("envelope reads back");
        // Extensions keep their types; everything else is unchanged.
        assert_eq!(back, event);

        // An envelope that does not record the types gives strings back.
        let mut untyped = envelope.clone();
        untyped.typed.clear();
        let back = Event::from_envelope(&untyped).expect("envelope reads back");
        let mut expected = event.clone();
        expected.set_extension("count", ExtensionValue::String("-7".to_string()));
        expected.set_extension("flag", ExtensionValue::String("true".to_string()));
        assert_eq!(back, expected);
    }

    #[test]
    fn repeated_attribute_is_the_first_that_repeats_an_earlier_one() {
        assert_eq!(first_repeated_name(["a", "b", "c"].into_iter()), None);
        assert_eq!(
            first_repeated_name(["a", "b", "c", "b", "a"].into_iter()),
            Some("b")
        );
        // Past the pairwise bound the answer is the same.
        let many: Vec<String> = (0..100).map(|i| format!("x{i}")).collect();
        let mut names: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(first_repeated_name(names.iter().copied()), None);
        names.extend(["x7", "x3"]);
        assert_eq!(first_repeated_name(names.iter().copied()), Some("x7"));

        let mut envelope = minimal(SpecVersion::V10).to_envelope();
        envelope.attributes.push(("id".into(), "2".into()));
        let message = Event::from_envelope(&envelope).expect_err("id twice").0;
        assert_eq!(message, "attribute `id` appears more than once");
    }

    #[test]
    fn json_media_types_are_recognised_whatever_their_case() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " text/json ",
            "application/vnd.x+JSON",
        ] {
            assert!(is_json_media_type(json), "{json:?}");
        }
        for other in ["text/plain", "json", "application/jsonx", "+jso"] {
            assert!(!is_json_media_type(other), "{other:?}");
        }
    }

    #[test]
    fn envelope_without_required_attributes_is_refused() {
        let mut envelope = minimal(SpecVersion::V10).to_envelope();
        envelope.attributes.retain(|(name, _)| name != "source");
        let message = Event::from_envelope(&envelope).expect_err("no source").0;
        assert!(
            message.contains("missing required attribute `source`"),
            "{message}"
        );
        envelope
            .attributes
            .retain(|(name, _)| name != "specversion");
        let message = Event::from_envelope(&envelope)
            .expect_err("no specversion")
            .0;
        assert!(message.contains("specversion"), "{message}");
    }
}
