//! Built-in functions (spec section 3.5), dispatched by name and arity at parse time.

use std::borrow::Cow;

use super::error::{Detail, EvalError};
use super::eval::{Node, Outcome, Raised, Raising, operand, string_of};
use super::value::{CastMode, EventAttributes, Type, Value, parse_boolean, parse_integer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    SubstringWithLength,
    Abs,
    Int,
    Bool,
    String,
    IsBool,
    IsInt,
    IsString,
    /// Rivulet's extension: a value in the event's JSON data, by path.
    Data,
}

impl Builtin {
    /// Finds the built-in for an upper-cased name and an argument count.
    pub(crate) fn lookup(name: &str, arity: usize) -> Option<Builtin> {
        let function = match (name, arity) {
            ("LENGTH", 1) => Builtin::Length,
            ("CONCAT", _) => Builtin::Concat,
            ("CONCAT_WS", 1..) => Builtin::ConcatWs,
            ("LOWER", 1) => Builtin::Lower,
            ("UPPER", 1) => Builtin::Upper,
            ("TRIM", 1) => Builtin::Trim,
            ("LEFT", 2) => Builtin::Left,
            ("RIGHT", 2) => Builtin::Right,
            ("SUBSTRING", 2) => Builtin::Substring,
            ("SUBSTRING", 3) => Builtin::SubstringWithLength,
            ("ABS", 1) => Builtin::Abs,
            ("INT", 1) => Builtin::Int,
            ("BOOL", 1) => Builtin::Bool,
            ("STRING", 1) => Builtin::String,
            ("IS_BOOL", 1) => Builtin::IsBool,
            ("IS_INT", 1) => Builtin::IsInt,
            ("IS_STRING", 1) => Builtin::IsString,
            ("DATA", 1) => Builtin::Data,
            _ => return None,
        };
        Some(function)
    }

    pub(crate) fn return_type(self) -> Type {
        match self {
            Builtin::Length | Builtin::Abs | Builtin::Int => Type::Integer,
            Builtin::Bool | Builtin::IsBool | Builtin::IsInt | Builtin::IsString => Type::Boolean,
            Builtin::Concat
            | Builtin::ConcatWs
            | Builtin::Lower
            | Builtin::Upper
            | Builtin::Trim
            | Builtin::Left
            | Builtin::Right
            | Builtin::Substring
            | Builtin::SubstringWithLength
            | Builtin::String
            | Builtin::Data => Type::String,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Builtin::Length => "LENGTH",
            Builtin::Concat => "CONCAT",
            Builtin::ConcatWs => "CONCAT_WS",
            Builtin::Lower => "LOWER",
            Builtin::Upper => "UPPER",
            Builtin::Trim => "TRIM",
            Builtin::Left => "LEFT",
            Builtin::Right => "RIGHT",
            Builtin::Substring | Builtin::SubstringWithLength => "SUBSTRING",
            Builtin::Abs => "ABS",
            Builtin::Int => "INT",
            Builtin::Bool => "BOOL",
            Builtin::String => "STRING",
            Builtin::IsBool => "IS_BOOL",
            Builtin::IsInt => "IS_INT",
            Builtin::IsString => "IS_STRING",
            Builtin::Data => "DATA",
        }
    }

    /// Evaluates the call. `args` has an arity accepted by [`Builtin::lookup`].
    pub(crate) fn call<'e, E: EventAttributes + ?Sized>(
        self,
        args: &'e [Node],
        event: &'e E,
    ) -> Outcome<'e> {
        let zero = self.return_type().zero_value();
        let mut raising = Raising::default();
        // Evaluates argument `$index`; an argument's error ends the call with the zero
        // value of the function's return type.
        macro_rules! arg {
            ($index:expr) => {
                match args.get($index) {
                    Some(node) => operand!(node.eval(event), zero),
                    None => return Ok(zero),
                }
            };
        }
        let failure = |reason| {
            EvalError::new(Detail::Function {
                name: self.name(),
                reason,
            })
        };
        let result = match self {
            Builtin::Length => {
                let text = string_of(arg!(0));
                Value::Integer(i32::try_from(text.chars().count()).unwrap_or(i32::MAX))
            }
            Builtin::Concat => {
                let mut joined = String::new();
                for index in 0..args.len() {
                    joined.push_str(&string_of(arg!(index)));
                }
                Value::String(Cow::Owned(joined))
            }
            Builtin::ConcatWs => {
                let separator = string_of(arg!(0));
                let mut joined = String::new();
                for index in 1..args.len() {
                    if index > 1 {
                        joined.push_str(&separator);
                    }
                    joined.push_str(&string_of(arg!(index)));
                }
                Value::String(Cow::Owned(joined))
            }
            Builtin::Lower => {
                let text = string_of(arg!(0));
                Value::String(Cow::Owned(text.to_lowercase()))
            }
            Builtin::Upper => {
                let text = string_of(arg!(0));
                Value::String(Cow::Owned(text.to_uppercase()))
            }
            Builtin::Trim => {
                let text = string_of(arg!(0));
                Value::String(map_slice(text, str::trim))
            }
            Builtin::Left | Builtin::Right => {
                let text = string_of(arg!(0));
                let count = raising.integer_of(arg!(1));
                match usize::try_from(count) {
                    Err(_) => {
                        raising.raise(failure("the length must not be negative"));
                        Value::String(text)
                    }
                    Ok(count) if self == Builtin::Left => {
                        Value::String(map_slice(text, |s| &s[..byte_offset(s, count)]))
                    }
                    Ok(count) => {
                        let length = text.chars().count();
                        let skip = length.saturating_sub(count);
                        Value::String(map_slice(text, |s| &s[byte_offset(s, skip)..]))
                    }
                }
            }
            Builtin::Substring | Builtin::SubstringWithLength => {
                let text = string_of(arg!(0));
                let position = raising.integer_of(arg!(1));
                let length = if self == Builtin::SubstringWithLength {
                    Some(raising.integer_of(arg!(2)))
                } else {
                    None
                };
                match substring_range(&text, position, length) {
                    Ok(Some((start, end))) => Value::String(map_slice(text, |s| &s[start..end])),
                    Ok(None) => Type::String.zero_value(),
                    Err(reason) => {
                        raising.raise(failure(reason));
                        Type::String.zero_value()
                    }
                }
            }
            Builtin::Abs => {
                let value = raising.integer_of(arg!(0));
                Value::Integer(value.checked_abs().unwrap_or_else(|| {
                    // The spec returns the largest integer beside the error.
                    raising.raise(EvalError::new(Detail::Overflow("ABS")));
                    i32::MAX
                }))
            }
            Builtin::Int => raising.cast(arg!(0), Type::Integer, CastMode::Explicit),
            Builtin::Bool => raising.cast(arg!(0), Type::Boolean, CastMode::Explicit),
            Builtin::String => raising.cast(arg!(0), Type::String, CastMode::Explicit),
            Builtin::IsBool => Value::Boolean(match arg!(0) {
                Value::Boolean(_) => true,
                Value::String(s) => parse_boolean(&s).is_some(),
                Value::Integer(_) => false,
            }),
            Builtin::IsInt => Value::Boolean(match arg!(0) {
                Value::Integer(_) => true,
                Value::String(s) => parse_integer(&s).is_some(),
                Value::Boolean(_) => false,
            }),
            Builtin::IsString => Value::Boolean(matches!(arg!(0), Value::String(_))),
            Builtin::Data => {
                let path = string_of(arg!(0));
                match data_at(event.data(), &path) {
                    Ok(found) => Value::String(Cow::Owned(found)),
                    Err(reason) => {
                        raising.raise(failure(reason));
                        zero
                    }
                }
            }
        };
        raising.finish(result)
    }
}

/// The value at `path` in JSON `data`, as text: a string as it is, a number or boolean as
/// JSON writes it, an object or array as compact JSON. `path` is dotted (`order.items.0.sku`)
/// or a JSON Pointer (`/order/items/0/sku`).
fn data_at(data: Option<&[u8]>, path: &str) -> Result<String, &'static str> {
    let data = data.ok_or("the event has no data")?;
    let document: serde_json::Value =
        serde_json::from_slice(data).map_err(|_| "the event's data is not JSON")?;
    let pointer = if path.is_empty() || path.starts_with('/') {
        path.to_string()
    } else {
        path.split('.')
            .map(|part| format!("/{}", part.replace('~', "~0").replace('/', "~1")))
            .collect()
    };
    match document.pointer(&pointer) {
        None | Some(serde_json::Value::Null) => Err("the data has no value at that path"),
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(other) => Ok(other.to_string()),
    }
}

/// Applies a slicing function, keeping the result borrowed when the input is.
fn map_slice<'e>(text: Cow<'e, str>, slice: impl FnOnce(&str) -> &str) -> Cow<'e, str> {
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(slice(s)),
        Cow::Owned(s) => Cow::Owned(slice(&s).to_owned()),
    }
}

/// Byte offset of the character at `char_index`, or the length if past the end.
fn byte_offset(text: &str, char_index: usize) -> usize {
    text.char_indices()
        .nth(char_index)
        .map_or(text.len(), |(offset, _)| offset)
}

/// Byte range selected by `SUBSTRING(text, position[, length])`; `None` for the empty
/// result of position 0.
fn substring_range(
    text: &str,
    position: i32,
    length: Option<i32>,
) -> Result<Option<(usize, usize)>, &'static str> {
    let char_count = i64::try_from(text.chars().count()).unwrap_or(i64::MAX);
    let position = i64::from(position);
    if position > char_count || position < -char_count {
        return Err("the position is outside the string");
    }
    if length.is_some_and(|length| length < 0) {
        return Err("the length must not be negative");
    }
    if position == 0 {
        return Ok(None);
    }
    // 0-based index of the first character.
    let first = if position > 0 {
        position - 1
    } else {
        char_count + position
    };
    let end = match length {
        Some(length) => (first + i64::from(length)).min(char_count),
        None => char_count,
    };
    let to_usize = |index: i64| usize::try_from(index).unwrap_or(0);
    Ok(Some((
        byte_offset(text, to_usize(first)),
        byte_offset(text, to_usize(end)),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_by_arity() {
        assert_eq!(Builtin::lookup("SUBSTRING", 2), Some(Builtin::Substring));
        assert_eq!(
            Builtin::lookup("SUBSTRING", 3),
            Some(Builtin::SubstringWithLength)
        );
        assert_eq!(Builtin::lookup("SUBSTRING", 1), None);
        assert_eq!(Builtin::lookup("CONCAT", 0), Some(Builtin::Concat));
        assert_eq!(Builtin::lookup("CONCAT_WS", 0), None);
        assert_eq!(Builtin::lookup("NOPE", 1), None);
    }

    #[test]
    fn substring_ranges() {
        assert_eq!(substring_range("Sakila", -3, None), Ok(Some((3, 6))));
        assert_eq!(substring_range("Sakila", -5, Some(3)), Ok(Some((1, 4))));
        assert_eq!(substring_range("abc", 3, Some(100)), Ok(Some((2, 3))));
        assert_eq!(substring_range("abc", 0, Some(1)), Ok(None));
        assert!(substring_range("abc", 4, None).is_err());
        assert!(substring_range("abc", 1, Some(-1)).is_err());
        assert_eq!(substring_range("éàü", 2, Some(1)), Ok(Some((2, 4))));
    }
}
