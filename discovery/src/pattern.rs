//! Bounding the EventTypes a source can create: id-bearing parts of a `source` collapse into
//! `*`, and auto-created EventTypes get deterministic, DNS-safe names.

use sha2::{Digest, Sha256};

/// The segment that stands for an id in a source pattern.
pub const WILDCARD: &str = "*";

/// `source` with query, fragment and id-like path segments (numbers, UUIDs, long hex or
/// mixed letter-digit tokens) replaced by `*`, so `/orders/123` and `/orders/456` share one
/// pattern `/orders/*`. The scheme and authority of an absolute URI are kept as they are.
pub fn source_pattern(source: &str) -> String {
    let source = source.split(['?', '#']).next().unwrap_or_default();
    let (prefix, path) = match source.find("://") {
        Some(at) => {
            let after = at + 3;
            let end = source[after..]
                .find('/')
                .map(|i| after + i)
                .unwrap_or(source.len());
            (&source[..end], &source[end..])
        }
        None => ("", source),
    };
    let mut out = String::with_capacity(source.len());
    out.push_str(prefix);
    let mut segment = String::new();
    for c in path.chars() {
        if c == '/' || c == ':' {
            push_segment(&mut out, &segment);
            segment.clear();
            out.push(c);
        } else {
            segment.push(c);
        }
    }
    push_segment(&mut out, &segment);
    out
}

fn push_segment(out: &mut String, segment: &str) {
    if looks_like_id(segment) {
        out.push_str(WILDCARD);
    } else {
        out.push_str(segment);
    }
}

/// Whether a path segment is an identifier rather than a name.
pub fn looks_like_id(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let digits = segment.chars().filter(char::is_ascii_digit).count();
    if digits == segment.len() {
        return true;
    }
    if uuid::Uuid::try_parse(segment).is_ok() {
        return true;
    }
    let hex = segment.chars().all(|c| c.is_ascii_hexdigit());
    if hex && segment.len() >= 8 && digits > 0 {
        return true;
    }
    let token = segment
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let letters = segment.chars().filter(char::is_ascii_alphabetic).count();
    token && segment.len() >= 16 && digits > 0 && letters > 0
}

/// Whether a concrete source matches a pattern (`*` matches exactly one segment).
pub fn source_matches(pattern: &str, source: &str) -> bool {
    if pattern == source || pattern == WILDCARD {
        return true;
    }
    if !pattern.contains(WILDCARD) {
        return false;
    }
    source_pattern(source) == pattern || segments_match(pattern, source)
}

fn segments_match(pattern: &str, source: &str) -> bool {
    let split = |s: &str| -> Vec<String> { s.split(['/', ':']).map(str::to_string).collect() };
    let (p, s) = (split(pattern), split(source));
    p.len() == s.len() && p.iter().zip(&s).all(|(p, s)| p == WILDCARD || p == s)
}

/// The deterministic name of the EventType auto-created for (broker, type, source pattern):
/// `et-` + the type made DNS-safe (shortened) + `-` + 10 hex digits of a hash of all three.
pub fn eventtype_name(broker: &str, event_type: &str, source_pattern: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [broker, event_type, source_pattern] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let mut slug = String::new();
    for c in event_type.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        format!("et-{hash}")
    } else {
        format!("et-{slug}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_collapse_and_names_stay() {
        for (source, pattern) in [
            ("/orders/123", "/orders/*"),
            ("/orders/123/lines/4", "/orders/*/lines/*"),
            (
                "https://shop.example.com/carts/9b2f3c1e-8d4a-4b6e-9f00-0123456789ab?x=1",
                "https://shop.example.com/carts/*",
            ),
            ("urn:order:77", "urn:order:*"),
            ("/sensors/01HZX3K9Q8V7W6T5R4P3N2M1AB", "/sensors/*"),
            ("/commits/4f2a9c1d", "/commits/*"),
            ("/api/v1/users", "/api/v1/users"),
            ("//github.com/acme/shop", "//github.com/acme/shop"),
            ("rivulet-cli", "rivulet-cli"),
            ("http://127.0.0.1:8080/x/42", "http://127.0.0.1:8080/x/*"),
        ] {
            assert_eq!(source_pattern(source), pattern, "{source}");
        }
    }

    #[test]
    fn patterns_match_the_sources_they_came_from() {
        assert!(source_matches("/orders/*", "/orders/5"));
        assert!(source_matches("/orders/*", "/orders/abc"));
        assert!(!source_matches("/orders/*", "/orders/5/lines"));
        assert!(source_matches("/plain", "/plain"));
        assert!(!source_matches("/plain", "/other"));
        assert!(source_matches("*", "/anything"));
    }

    #[test]
    fn names_are_deterministic_and_dns_safe() {
        let a = eventtype_name("default", "com.example.Order.Created", "/orders/*");
        assert_eq!(
            a,
            eventtype_name("default", "com.example.Order.Created", "/orders/*")
        );
        assert!(a.starts_with("et-com-example-order-created-"), "{a}");
        assert_ne!(
            a,
            eventtype_name("other", "com.example.Order.Created", "/orders/*")
        );
        let long = eventtype_name("b", &"x.".repeat(200), "/");
        assert!(long.len() <= 63, "{long}");
        assert_eq!(eventtype_name("b", "...", "/").len(), "et-".len() + 10);
        let valid = regex::Regex::new("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").unwrap();
        assert!(valid.is_match(&a) && valid.is_match(&long));
    }
}
