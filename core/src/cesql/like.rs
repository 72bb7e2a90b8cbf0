//! Compiled `LIKE` patterns (spec section 3.4.3).
//!
//! Patterns are compiled once when the expression is parsed. The common shapes used by
//! filters (exact, `prefix%`, `%suffix`, `%infix%`) become plain string comparisons; any
//! other pattern is matched by a backtracking wildcard matcher that never allocates.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    Char(char),
    /// `_`: exactly one character.
    AnyChar,
    /// `%`: zero or more characters.
    AnyString,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    General(Vec<Element>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    matcher: Matcher,
}

impl LikePattern {
    /// Compiles a pattern. `\%` and `\_` stand for the literal characters; a backslash
    /// before any other character is an ordinary character (the TCK matches `'ab\c'`
    /// against the pattern `'ab\c'`).
    pub(crate) fn compile(pattern: &str) -> Self {
        let mut elements = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.peek() {
                    Some(&next @ ('%' | '_')) => {
                        chars.next();
                        elements.push(Element::Char(next));
                    }
                    _ => elements.push(Element::Char('\\')),
                },
                '%' => {
                    // Consecutive `%` match the same as one.
                    if elements.last() != Some(&Element::AnyString) {
                        elements.push(Element::AnyString);
                    }
                }
                '_' => elements.push(Element::AnyChar),
                c => elements.push(Element::Char(c)),
            }
        }
        Self {
            matcher: Self::specialise(elements),
        }
    }

    fn specialise(elements: Vec<Element>) -> Matcher {
        let literal = |slice: &[Element]| -> Option<String> {
            slice
                .iter()
                .map(|element| match element {
                    Element::Char(c) => Some(*c),
                    _ => None,
                })
                .collect()
        };
        let starts_any = elements.first() == Some(&Element::AnyString);
        let ends_any = elements.len() > 1 && elements.last() == Some(&Element::AnyString);
        let inner_start = usize::from(starts_any);
        let inner_end = elements.len() - usize::from(ends_any);
        if let Some(text) = literal(&elements[inner_start..inner_end]) {
            return match (starts_any, ends_any) {
                (false, false) => Matcher::Exact(text),
                (false, true) => Matcher::Prefix(text),
                (true, false) => Matcher::Suffix(text),
                (true, true) => Matcher::Contains(text),
            };
        }
        Matcher::General(elements)
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(literal) => text == literal,
            Matcher::Prefix(literal) => text.starts_with(literal.as_str()),
            Matcher::Suffix(literal) => text.ends_with(literal.as_str()),
            Matcher::Contains(literal) => text.contains(literal.as_str()),
            Matcher::General(elements) => matches_general(elements, text),
        }
    }
}

/// Wildcard matching with single-point backtracking: on a mismatch, retry from the most
/// recent `%` with it absorbing one more character. O(pattern * text) at worst.
fn matches_general(elements: &[Element], text: &str) -> bool {
    let mut element_index = 0;
    let mut text_pos = 0;
    // (element index after the last `%`, text position that `%` resumes from)
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        let next_char = text[text_pos..].chars().next();
        match (elements.get(element_index), next_char) {
            (Some(Element::AnyString), _) => {
                element_index += 1;
                backtrack = Some((element_index, text_pos));
                continue;
            }
            (Some(Element::AnyChar), Some(c)) => {
                element_index += 1;
                text_pos += c.len_utf8();
                continue;
            }
            (Some(Element::Char(expected)), Some(c)) if *expected == c => {
                element_index += 1;
                text_pos += c.len_utf8();
                continue;
            }
            (None, None) => return true,
            _ => {}
        }
        // Mismatch: let the last `%` swallow one more character, if any remain.
        match backtrack {
            Some((resume_element, resume_pos)) => match text[resume_pos..].chars().next() {
                Some(c) => {
                    let next_pos = resume_pos + c.len_utf8();
                    backtrack = Some((resume_element, next_pos));
                    element_index = resume_element;
                    text_pos = next_pos;
                }
                None => return false,
            },
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(text: &str, pattern: &str) -> bool {
        LikePattern::compile(pattern).matches(text)
    }

    #[test]
    fn specialised_shapes() {
        assert!(like("com.example.a", "com.example.%"));
        assert!(!like("org.example.a", "com.example.%"));
        assert!(like("a.error", "%.error"));
        assert!(like("xxabcxx", "%abc%"));
        assert!(!like("xxabxx", "%abc%"));
        assert!(like("abc", "abc"));
        assert!(!like("abcd", "abc"));
        assert!(like("", "%"));
        assert!(like("anything", "%%"));
        assert!(!like("", "_"));
    }

    #[test]
    fn general_patterns() {
        assert!(like("azzzbzzzc", "a%b%c"));
        assert!(!like("abzc", "a_b_c"));
        assert!(like("azbzc", "a_b_c"));
        assert!(like("ab", "_b%"));
        assert!(like("abcd1", "_b%"));
        assert!(!like("b", "_b%"));
        assert!(!like("aBc", "_b%"));
        assert!(like("abc123123%456_dzf", "abc%123\\%456\\_d_f"));
        assert!(like("é-ü", "_-_"));
        assert!(like("aaaaaaaaab", "%a%a%a%b"));
        assert!(!like("aaaaaaaaaa", "%a%a%a%b"));
    }

    #[test]
    fn escapes() {
        assert!(like("a%b", "a\\%b"));
        assert!(!like("axb", "a\\%b"));
        assert!(like("ab\\c", "ab\\c"));
        assert!(like("ab\\", "ab\\"));
    }
}
