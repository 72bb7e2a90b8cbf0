//! CloudEvents SQL (CESQL v1.0): parsing and evaluation of filter expressions.
//!
//! ```
//! use std::collections::HashMap;
//! use rivulet_core::cesql::{Expression, Value};
//!
//! let filter = Expression::parse("type LIKE 'com.example.%' AND INT(count) > 10").unwrap();
//! let mut event: HashMap<String, Value<'static>> = HashMap::new();
//! event.insert("type".into(), Value::from("com.example.created".to_owned()));
//! event.insert("count".into(), Value::from("42".to_owned()));
//! assert!(filter.matches(&event));
//! ```
//!
//! The module depends on nothing else in Rivulet: events are read through the
//! [`EventAttributes`] trait.

mod error;
mod eval;
mod functions;
mod lexer;
mod like;
mod parser;
mod value;

#[cfg(test)]
mod robustness_tests;

use std::fmt;
use std::sync::Arc;

pub use error::{ErrorKind, EvalError, ParseError};
pub use parser::MAX_NESTING_DEPTH;
pub use value::{EventAttributes, Type, Value};

/// A compiled CESQL expression. Cheap to clone and to share between threads.
#[derive(Debug, Clone)]
pub struct Expression {
    root: Arc<eval::Node>,
    text: Arc<str>,
}

/// The result of evaluating an expression: a value, and the error raised on the way if
/// any (the value is then the one the spec prescribes beside that error, usually the
/// zero value of the expression's type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub value: Value<'static>,
    pub error: Option<EvalError>,
}

impl Expression {
    /// Parses and compiles `text`. Unknown functions are not a parse error: calling one
    /// evaluates to `false` with a missingFunction error, as the spec requires.
    pub fn parse(text: &str) -> Result<Expression, ParseError> {
        let root = parser::parse(text)?;
        Ok(Expression {
            root: Arc::new(root),
            text: Arc::from(text),
        })
    }

    /// The text the expression was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Evaluates the expression against an event.
    pub fn evaluate<E: EventAttributes + ?Sized>(&self, event: &E) -> Evaluation {
        match self.root.eval(event) {
            Ok(value) => Evaluation {
                value: value.into_owned(),
                error: None,
            },
            Err(raised) => Evaluation {
                value: raised.value.into_owned(),
                error: Some(raised.error),
            },
        }
    }

    /// Whether the event passes the expression used as a filter: the result must be the
    /// Boolean `true` and no error may have been raised (spec section 1.2). Does not
    /// allocate for the usual attribute comparisons.
    pub fn matches<E: EventAttributes + ?Sized>(&self, event: &E) -> bool {
        matches!(self.root.eval(event), Ok(Value::Boolean(true)))
    }
}

impl Expression {
    /// Like [`Expression::matches`], but says which kind of error made an event fail, for
    /// metrics. Allocates nothing for the usual attribute comparisons.
    /// The `attribute = 'text'` comparisons every match needs: the top-level conjuncts that
    /// compare an attribute with a string literal (in either order). An event lacking one
    /// of them cannot match, so a channel may route on them as exact pairs.
    pub fn required_equalities(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        eval::collect_required_equalities(&self.root, &mut pairs);
        pairs
    }

    pub fn test<E: EventAttributes + ?Sized>(&self, event: &E) -> Result<bool, &'static str> {
        match self.root.eval(event) {
            Ok(value) => Ok(matches!(value, Value::Boolean(true))),
            Err(raised) => Err(raised.error.kind()),
        }
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Expression {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Expression::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn event() -> HashMap<String, Value<'static>> {
        let mut event = HashMap::new();
        for (name, value) in [
            ("id", "1"),
            ("source", "/src"),
            ("type", "com.example.created"),
            ("specversion", "1.0"),
            ("count", "42"),
        ] {
            event.insert(name.to_owned(), Value::from(value.to_owned()));
        }
        event.insert("flag".to_owned(), Value::Boolean(true));
        event.insert("number".to_owned(), Value::Integer(7));
        event
    }

    fn eval(text: &str) -> Evaluation {
        Expression::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .evaluate(&event())
    }

    fn value(text: &str) -> Value<'static> {
        let evaluation = eval(text);
        assert_eq!(evaluation.error, None, "{text}");
        evaluation.value
    }

    fn error_kind(text: &str) -> ErrorKind {
        eval(text).error.expect("an error").error_kind()
    }

    #[test]
    fn filters_match_only_boolean_true_without_error() {
        let event = event();
        let matches = |text: &str| Expression::parse(text).expect("parses").matches(&event);
        assert!(matches("type LIKE 'com.example.%' AND count > 10"));
        assert!(!matches("type LIKE 'org.%'"));
        assert!(!matches("'true'"), "a string is not a Boolean");
        assert!(!matches("1"));
        assert!(!matches("NOT 10"), "true beside a cast error");
        assert!(!matches("missing = 1 OR TRUE"));
        assert!(matches("TRUE OR missing = 1"), "short-circuit");
        assert!(matches("flag AND number = 7"));
    }

    #[test]
    fn typed_attributes_and_casts() {
        assert_eq!(value("number + 1"), Value::Integer(8));
        assert_eq!(value("count * 2"), Value::Integer(84));
        assert_eq!(value("flag = 'TRUE'"), Value::Boolean(false));
        assert_eq!(value("'TRUE' = flag"), Value::Boolean(true));
        assert_eq!(value("STRING(number)"), Value::from("7"));
        assert_eq!(value("number IN ('7', 8)"), Value::Boolean(true));
        assert_eq!(
            value("EXISTS ID AND NOT EXISTS nothing"),
            Value::Boolean(true)
        );
        assert_eq!(value("Type = 'com.example.created'"), Value::Boolean(true));
    }

    #[test]
    fn errors_have_kinds_and_zero_values() {
        assert_eq!(error_kind("2147483647 + 1"), ErrorKind::Math);
        assert_eq!(error_kind("-2147483648 * -1"), ErrorKind::Math);
        assert_eq!(error_kind("-2147483648 / -1"), ErrorKind::Math);
        assert_eq!(value("-2147483648 % -1"), Value::Integer(0));
        assert_eq!(error_kind("-(-2147483648)"), ErrorKind::Math);
        assert_eq!(error_kind("'abc' + 1"), ErrorKind::Cast);
        assert_eq!(error_kind("NOPE(1)"), ErrorKind::MissingFunction);
        assert_eq!(error_kind("LENGTH(1, 2)"), ErrorKind::MissingFunction);
        let nested = eval("LEFT('abc', -1) = 'abc'");
        assert_eq!(nested.value, Value::Boolean(false));
        assert_eq!(
            nested.error.as_ref().map(EvalError::error_kind),
            Some(ErrorKind::FunctionEvaluation)
        );
        let missing = eval("missing + 1");
        assert_eq!(missing.value, Value::Integer(0));
        let error = missing.error.expect("missing attribute");
        assert_eq!(error.kind(), "missingAttribute");
        assert_eq!(error.error_kind(), ErrorKind::MissingAttribute);
        assert!(error.to_string().contains("'missing'"), "{error}");
    }

    #[test]
    fn functions() {
        assert_eq!(
            value("CONCAT_WS('-', 1, TRUE, 'x')"),
            Value::from("1-true-x")
        );
        assert_eq!(value("UPPER(type)"), Value::from("COM.EXAMPLE.CREATED"));
        assert_eq!(value("LOWER('ÀB')"), Value::from("àb"));
        assert_eq!(value("TRIM('\u{2003} a ')"), Value::from("a"));
        assert_eq!(value("RIGHT('héllo', 4)"), Value::from("éllo"));
        assert_eq!(value("LEFT('héllo', 2)"), Value::from("hé"));
        assert_eq!(value("SUBSTRING('héllo', 2, 2)"), Value::from("él"));
        assert_eq!(value("LENGTH('héllo')"), Value::Integer(5));
        assert_eq!(
            value("IS_INT('-12') AND NOT IS_INT('x')"),
            Value::Boolean(true)
        );
        assert_eq!(
            value("IS_BOOL('False') AND NOT IS_BOOL(1)"),
            Value::Boolean(true)
        );
        assert_eq!(
            value("IS_STRING(type) AND NOT IS_STRING(number)"),
            Value::Boolean(true)
        );
        assert_eq!(value("abs(-5)"), Value::Integer(5));
    }

    #[test]
    fn expression_is_send_sync_and_displays_its_text() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Expression>();
        let expression: Expression = "a = 1".parse().expect("parses");
        assert_eq!(expression.to_string(), "a = 1");
    }
}
