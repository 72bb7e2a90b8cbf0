//! CESQL values, their types and the casts between them (spec section 3.7).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// A CESQL value: the result of an expression or the value of an event attribute.
///
/// String values borrow from the event or the compiled expression where they can, so
/// evaluating a filter does not copy attribute values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value<'a> {
    Boolean(bool),
    Integer(i32),
    String(Cow<'a, str>),
}

/// The three primitive CESQL types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    Boolean,
    Integer,
    String,
}

impl Type {
    /// The value an operator or function returns beside an error (spec section 3.1).
    pub fn zero_value(self) -> Value<'static> {
        match self {
            Type::Boolean => Value::Boolean(false),
            Type::Integer => Value::Integer(0),
            Type::String => Value::String(Cow::Borrowed("")),
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Boolean => "Boolean",
            Type::Integer => "Integer",
            Type::String => "String",
        })
    }
}

impl<'a> Value<'a> {
    pub fn value_type(&self) -> Type {
        match self {
            Value::Boolean(_) => Type::Boolean,
            Value::Integer(_) => Type::Integer,
            Value::String(_) => Type::String,
        }
    }

    /// Detaches the value from the event or expression it borrows from.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Boolean(b) => Value::Boolean(b),
            Value::Integer(i) => Value::Integer(i),
            Value::String(s) => Value::String(Cow::Owned(s.into_owned())),
        }
    }

    /// A value borrowing from this one (no copy of string contents).
    pub fn reborrow(&self) -> Value<'_> {
        match self {
            Value::Boolean(b) => Value::Boolean(*b),
            Value::Integer(i) => Value::Integer(*i),
            Value::String(s) => Value::String(Cow::Borrowed(s.as_ref())),
        }
    }

    /// Whether this is the Boolean `true` (the only value that passes a filter).
    pub fn is_true(&self) -> bool {
        matches!(self, Value::Boolean(true))
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i32> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::String(s) => f.write_str(s),
        }
    }
}

impl From<bool> for Value<'static> {
    fn from(value: bool) -> Self {
        Value::Boolean(value)
    }
}

impl From<i32> for Value<'static> {
    fn from(value: i32) -> Self {
        Value::Integer(value)
    }
}

impl From<String> for Value<'static> {
    fn from(value: String) -> Self {
        Value::String(Cow::Owned(value))
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(value: &'a str) -> Self {
        Value::String(Cow::Borrowed(value))
    }
}

/// Read access to the context attributes of one event, as the evaluator sees them.
///
/// `name` is always lower case. Attributes whose CloudEvents type is not Boolean or
/// Integer (URI, timestamp, binary, ...) are returned as `Value::String`.
pub trait EventAttributes {
    fn attribute(&self, name: &str) -> Option<Value<'_>>;

    /// The event's data as received, for Rivulet's `DATA` extension function; `None` when
    /// the event has none (or the caller does not hold it).
    fn data(&self) -> Option<&[u8]> {
        None
    }
}

impl<T: EventAttributes + ?Sized> EventAttributes for &T {
    fn attribute(&self, name: &str) -> Option<Value<'_>> {
        (**self).attribute(name)
    }

    fn data(&self) -> Option<&[u8]> {
        (**self).data()
    }
}

impl EventAttributes for HashMap<String, Value<'static>> {
    fn attribute(&self, name: &str) -> Option<Value<'_>> {
        self.get(name).map(Value::reborrow)
    }
}

/// Why a cast failed; turned into a cast error by the evaluator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CastFailure {
    pub from: Value<'static>,
    pub to: Type,
}

impl fmt::Display for CastFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.from {
            Value::String(s) => write!(f, "cannot cast the String '{s}' to {}", self.to),
            other => write!(
                f,
                "cannot implicitly cast the {} {other} to {}",
                other.value_type(),
                self.to
            ),
        }
    }
}

/// Whether integers may become booleans. The spec's cast table allows it for the explicit
/// `BOOL()` function, while the TCK (`NOT 10`) requires operators to reject it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CastMode {
    Implicit,
    Explicit,
}

/// Casts `value` to `target`; on failure returns the failure, whose caller substitutes
/// the zero value of `target`.
pub(crate) fn cast<'e>(
    value: Value<'e>,
    target: Type,
    mode: CastMode,
) -> Result<Value<'e>, CastFailure> {
    match (value, target) {
        (value @ Value::Boolean(_), Type::Boolean)
        | (value @ Value::Integer(_), Type::Integer)
        | (value @ Value::String(_), Type::String) => Ok(value),
        (value, Type::String) => Ok(Value::String(Cow::Owned(value.to_string()))),
        (Value::Boolean(b), Type::Integer) => Ok(Value::Integer(i32::from(b))),
        (Value::String(s), Type::Integer) => match parse_integer(&s) {
            Some(i) => Ok(Value::Integer(i)),
            None => Err(CastFailure {
                from: Value::String(Cow::Owned(s.into_owned())),
                to: Type::Integer,
            }),
        },
        (Value::String(s), Type::Boolean) => match parse_boolean(&s) {
            Some(b) => Ok(Value::Boolean(b)),
            None => Err(CastFailure {
                from: Value::String(Cow::Owned(s.into_owned())),
                to: Type::Boolean,
            }),
        },
        (Value::Integer(i), Type::Boolean) => match mode {
            CastMode::Explicit => Ok(Value::Boolean(i != 0)),
            CastMode::Implicit => Err(CastFailure {
                from: Value::Integer(i),
                to: Type::Boolean,
            }),
        },
    }
}

/// Base-10 32-bit integer with an optional leading sign, nothing else (no spaces).
pub(crate) fn parse_integer(text: &str) -> Option<i32> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // i32's parser accepts exactly this syntax and reports overflow.
    text.parse::<i32>().ok()
}

/// `true` / `false` in any letter case.
pub(crate) fn parse_boolean(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}
