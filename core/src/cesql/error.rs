//! Parse and evaluation errors (spec section 3.3).

use std::fmt;
use std::sync::Arc;

use super::value::CastFailure;

/// An expression that is not valid CESQL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cesql parse error at position {position}: {message}")]
pub struct ParseError {
    position: usize,
    message: String,
}

impl ParseError {
    pub(crate) fn new(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }

    /// 0-based character (not byte) offset in the expression text.
    pub fn position(&self) -> usize {
        self.position
    }

    /// What was expected or what is wrong, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The error kinds of the spec, named as in the TCK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Parse,
    Math,
    Cast,
    MissingFunction,
    FunctionEvaluation,
    MissingAttribute,
    Generic,
}

impl ErrorKind {
    /// The TCK name of the kind (`missingAttribute`, `math`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingFunction => "missingFunction",
            ErrorKind::FunctionEvaluation => "functionEvaluation",
            ErrorKind::MissingAttribute => "missingAttribute",
            ErrorKind::Generic => "generic",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error raised while evaluating an expression against an event.
///
/// The message is built only when displayed, so raising the common "missing attribute"
/// error while filtering does not allocate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cesql {} error: {detail}", self.kind())]
pub struct EvalError {
    detail: Detail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Detail {
    MissingAttribute(Arc<str>),
    MissingFunction {
        name: Arc<str>,
        arity: usize,
    },
    DivisionByZero(&'static str),
    Overflow(&'static str),
    Cast(Box<CastFailure>),
    Function {
        name: &'static str,
        reason: &'static str,
    },
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::MissingAttribute(name) => {
                write!(f, "the event has no attribute '{name}'")
            }
            Detail::MissingFunction { name, arity } => {
                write!(f, "no function {name} taking {arity} argument(s)")
            }
            Detail::DivisionByZero(operator) => write!(f, "{operator} by zero"),
            Detail::Overflow(operation) => {
                write!(f, "{operation} overflows a 32-bit integer")
            }
            Detail::Cast(failure) => write!(f, "{failure}"),
            Detail::Function { name, reason } => write!(f, "{name}: {reason}"),
        }
    }
}

impl EvalError {
    pub(crate) fn new(detail: Detail) -> Self {
        Self { detail }
    }

    pub(crate) fn cast(failure: CastFailure) -> Self {
        Self::new(Detail::Cast(Box::new(failure)))
    }

    /// The TCK name of the error's kind: `parse`, `math`, `cast`, `missingFunction`,
    /// `functionEvaluation` or `missingAttribute`.
    pub fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }

    pub fn error_kind(&self) -> ErrorKind {
        match self.detail {
            Detail::MissingAttribute(_) => ErrorKind::MissingAttribute,
            Detail::MissingFunction { .. } => ErrorKind::MissingFunction,
            Detail::DivisionByZero(_) | Detail::Overflow(_) => ErrorKind::Math,
            Detail::Cast(_) => ErrorKind::Cast,
            Detail::Function { .. } => ErrorKind::FunctionEvaluation,
        }
    }

    /// What went wrong, without the kind.
    pub fn message(&self) -> String {
        self.detail.to_string()
    }
}
