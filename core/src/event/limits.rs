//! Bounds on the shape of events taken from the network, so a hostile sender cannot make
//! parsing or storage cost what it likes: attribute name length, extension count and JSON
//! nesting depth. Each refusal says which bound was crossed.

use super::{Event, EventError};

/// The longest attribute name accepted. CloudEvents says names SHOULD NOT exceed 20
/// characters; this leaves room for descriptive names while refusing absurd ones.
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 64;
/// The most extension attributes one event may carry.
pub const MAX_EXTENSIONS: usize = 64;
/// The deepest nesting of JSON arrays and objects accepted in an event (its `data`
/// included) and in a resource manifest.
pub const MAX_JSON_DEPTH: usize = 64;

/// Refuses an event whose extension names are too long or too many.
pub fn check_event_limits(event: &Event) -> Result<(), EventError> {
    if let Some(name) = event
        .extensions
        .keys()
        .find(|name| name.len() > MAX_ATTRIBUTE_NAME_LEN)
    {
        let shown: String = name.chars().take(24).collect();
        return Err(EventError(format!(
            "attribute name `{shown}...` is {} characters long; at most \
             {MAX_ATTRIBUTE_NAME_LEN} are accepted",
            name.len()
        )));
    }
    if event.extensions.len() > MAX_EXTENSIONS {
        return Err(EventError(format!(
            "the event has {} extension attributes; at most {MAX_EXTENSIONS} are accepted",
            event.extensions.len()
        )));
    }
    Ok(())
}

/// How deeply the arrays and objects of a JSON text nest, counted without parsing (and so
/// without recursion); stops counting once past `limit`. Invalid JSON is left for the
/// parser to describe.
pub fn json_depth_exceeds(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Refuses a JSON document nested deeper than `limit`, naming `what` it is.
pub fn check_json_depth(what: &str, json: &[u8], limit: usize) -> Result<(), EventError> {
    if json_depth_exceeds(json, limit) {
        return Err(EventError(format!(
            "{what} nests arrays and objects more than {limit} levels deep"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert!(!json_depth_exceeds(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(json_depth_exceeds(br#"{"a":[1,{"b":[2]}]}"#, 3));
        assert!(!json_depth_exceeds(br#"{"a":"[[[[[[\"[[[["}"#, 1));
        assert!(!json_depth_exceeds(br#"[[]][[]][[]]"#, 2));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(json_depth_exceeds(deep.as_bytes(), MAX_JSON_DEPTH));
        let fine = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(!json_depth_exceeds(fine.as_bytes(), MAX_JSON_DEPTH));
    }

    #[test]
    fn long_and_many_extension_names_are_refused() {
        let mut event = Event::empty(crate::event::SpecVersion::V10);
        event.set_extension(
            &"x".repeat(MAX_ATTRIBUTE_NAME_LEN),
            crate::event::ExtensionValue::Integer(1),
        );
        assert!(check_event_limits(&event).is_ok());
        event.set_extension(
            &"y".repeat(MAX_ATTRIBUTE_NAME_LEN + 1),
            crate::event::ExtensionValue::Integer(1),
        );
        let error = check_event_limits(&event).unwrap_err().0;
        assert!(error.contains("65 characters"), "{error}");

        let mut event = Event::empty(crate::event::SpecVersion::V10);
        for i in 0..=MAX_EXTENSIONS {
            event.set_extension(&format!("ext{i}"), crate::event::ExtensionValue::Integer(1));
        }
        let error = check_event_limits(&event).unwrap_err().0;
        assert!(error.contains("65 extension attributes"), "{error}");
    }
}
