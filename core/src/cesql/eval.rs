//! The compiled expression tree and its evaluation (spec sections 3.2 to 3.7).
//!
//! Error handling follows the spec's "fail fast" mode, refined by the TCK: the operator
//! or function that raises an error still produces its own result (`NOT 10` is `true`
//! beside a cast error, `LEFT('abc', -2)` is `'abc'`), and every enclosing operator
//! stops and returns the zero value of its own return type with that error.

use std::borrow::Cow;
use std::sync::Arc;

use super::error::{Detail, EvalError};
use super::functions::Builtin;
use super::like::LikePattern;
use super::value::{CastMode, EventAttributes, Type, Value, cast};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithmeticOp {
    Add,
    Subtract,
    Multiply,
    Divide,
    Modulo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ComparisonOp {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogicalOp {
    And,
    Or,
    Xor,
}

/// See [`super::Expression::required_equalities`]. `=` casts its left operand to the type of
/// its right one, so with a string literal on either side the comparison is text equality of
/// the attribute's value, which is how channels hold attributes.
pub(crate) fn collect_required_equalities(node: &Node, out: &mut Vec<(String, String)>) {
    match node {
        Node::Logical {
            op: LogicalOp::And,
            operands,
        } => operands
            .iter()
            .for_each(|operand| collect_required_equalities(operand, out)),
        Node::Comparison {
            op: ComparisonOp::Equal,
            left,
            right,
        } => match (&**left, &**right) {
            (Node::Attribute(name), Node::Literal(Value::String(text)))
            | (Node::Literal(Value::String(text)), Node::Attribute(name)) => {
                out.push((name.to_string(), text.to_string()));
            }
            _ => {}
        },
        _ => {}
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Literal(Value<'static>),
    Attribute(Arc<str>),
    Exists(Arc<str>),
    Not(Box<Node>),
    Negate(Box<Node>),
    Like {
        operand: Box<Node>,
        pattern: LikePattern,
        negated: bool,
    },
    In {
        operand: Box<Node>,
        set: Vec<Node>,
        negated: bool,
    },
    Arithmetic {
        op: ArithmeticOp,
        left: Box<Node>,
        right: Box<Node>,
    },
    Comparison {
        op: ComparisonOp,
        left: Box<Node>,
        right: Box<Node>,
    },
    /// A left-to-right chain of the same logical operator, flattened so that long
    /// `a OR b OR c ...` filters do not build deep trees.
    Logical {
        op: LogicalOp,
        operands: Vec<Node>,
    },
    Call {
        function: Builtin,
        args: Vec<Node>,
    },
    /// A call that matches no built-in by name and arity; evaluates to `false` with a
    /// missingFunction error, as the TCK expects.
    MissingFunction {
        name: Arc<str>,
        arity: usize,
    },
}

/// An error together with the value the raising operator produced beside it.
#[derive(Debug)]
pub(crate) struct Raised<'e> {
    pub value: Value<'e>,
    pub error: EvalError,
}

pub(crate) type Outcome<'e> = Result<Value<'e>, Raised<'e>>;

/// Evaluates an operand; on error, returns from the enclosing function with `$zero`
/// (the zero value of the enclosing operator's return type) and the operand's error.
macro_rules! operand {
    ($outcome:expr, $zero:expr) => {
        match $outcome {
            Ok(value) => value,
            Err(raised) => {
                return Err(Raised {
                    value: $zero,
                    error: raised.error,
                })
            }
        }
    };
}
pub(crate) use operand;

/// Collects the first error an operator raises itself (failed casts, overflow, ...) while
/// it goes on computing with the substituted zero values.
#[derive(Default)]
pub(crate) struct Raising {
    first_error: Option<EvalError>,
}

impl Raising {
    pub(crate) fn raise(&mut self, error: EvalError) {
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }

    pub(crate) fn has_error(&self) -> bool {
        self.first_error.is_some()
    }

    pub(crate) fn cast<'e>(&mut self, value: Value<'e>, target: Type, mode: CastMode) -> Value<'e> {
        match cast(value, target, mode) {
            Ok(value) => value,
            Err(failure) => {
                self.raise(EvalError::cast(failure));
                target.zero_value()
            }
        }
    }

    pub(crate) fn boolean_of(&mut self, value: Value<'_>) -> bool {
        match value {
            Value::Boolean(b) => b,
            other => self
                .cast(other, Type::Boolean, CastMode::Implicit)
                .as_bool()
                .unwrap_or(false),
        }
    }

    pub(crate) fn integer_of(&mut self, value: Value<'_>) -> i32 {
        match value {
            Value::Integer(i) => i,
            other => self
                .cast(other, Type::Integer, CastMode::Implicit)
                .as_integer()
                .unwrap_or(0),
        }
    }

    pub(crate) fn finish(self, value: Value<'_>) -> Outcome<'_> {
        match self.first_error {
            None => Ok(value),
            Some(error) => Err(Raised { value, error }),
        }
    }
}

/// The implicit cast to String, which cannot fail.
pub(crate) fn string_of(value: Value<'_>) -> Cow<'_, str> {
    match value {
        Value::String(s) => s,
        other => Cow::Owned(other.to_string()),
    }
}

impl Node {
    pub(crate) fn eval<'e, E: EventAttributes + ?Sized>(&'e self, event: &'e E) -> Outcome<'e> {
        const FALSE: Value<'static> = Value::Boolean(false);
        match self {
            Node::Literal(value) => Ok(value.reborrow()),
            Node::Attribute(name) => event.attribute(name).ok_or_else(|| Raised {
                value: FALSE,
                error: EvalError::new(Detail::MissingAttribute(name.clone())),
            }),
            Node::Exists(name) => Ok(Value::Boolean(event.attribute(name).is_some())),
            Node::Not(operand) => {
                let value = operand!(operand.eval(event), FALSE);
                let mut raising = Raising::default();
                let b = raising.boolean_of(value);
                raising.finish(Value::Boolean(!b))
            }
            Node::Negate(operand) => {
                let value = operand!(operand.eval(event), Value::Integer(0));
                let mut raising = Raising::default();
                let i = raising.integer_of(value);
                let negated = i.checked_neg().unwrap_or_else(|| {
                    raising.raise(EvalError::new(Detail::Overflow("negation")));
                    0
                });
                raising.finish(Value::Integer(negated))
            }
            Node::Like {
                operand,
                pattern,
                negated,
            } => {
                let text = string_of(operand!(operand.eval(event), FALSE));
                Ok(Value::Boolean(pattern.matches(&text) != *negated))
            }
            Node::In {
                operand,
                set,
                negated,
            } => {
                let needle = operand!(operand.eval(event), FALSE);
                let target = needle.value_type();
                let mut raising = Raising::default();
                let mut found = false;
                for element in set {
                    let candidate = operand!(element.eval(event), FALSE);
                    if raising.cast(candidate, target, CastMode::Implicit) == needle {
                        found = true;
                        break;
                    }
                }
                raising.finish(Value::Boolean(found != *negated))
            }
            Node::Arithmetic { op, left, right } => {
                let left = operand!(left.eval(event), Value::Integer(0));
                let right = operand!(right.eval(event), Value::Integer(0));
                let mut raising = Raising::default();
                let x = raising.integer_of(left);
                let y = raising.integer_of(right);
                let result = arithmetic(*op, x, y).unwrap_or_else(|error| {
                    raising.raise(error);
                    0
                });
                raising.finish(Value::Integer(result))
            }
            Node::Comparison { op, left, right } => {
                let left = operand!(left.eval(event), FALSE);
                let right = operand!(right.eval(event), FALSE);
                let mut raising = Raising::default();
                let result = match op {
                    ComparisonOp::Equal | ComparisonOp::NotEqual => {
                        // `=` is overloaded for all three types: the right operand's type
                        // picks the definition and the left operand is cast to it.
                        let left = raising.cast(left, right.value_type(), CastMode::Implicit);
                        (left == right) == (*op == ComparisonOp::Equal)
                    }
                    ordering => {
                        let x = raising.integer_of(left);
                        let y = raising.integer_of(right);
                        match ordering {
                            ComparisonOp::Less => x < y,
                            ComparisonOp::LessOrEqual => x <= y,
                            ComparisonOp::Greater => x > y,
                            _ => x >= y,
                        }
                    }
                };
                raising.finish(Value::Boolean(result))
            }
            Node::Logical { op, operands } => eval_logical(*op, operands, event),
            Node::Call { function, args } => function.call(args, event),
            Node::MissingFunction { name, arity } => Err(Raised {
                value: FALSE,
                error: EvalError::new(Detail::MissingFunction {
                    name: name.clone(),
                    arity: *arity,
                }),
            }),
        }
    }
}

fn arithmetic(op: ArithmeticOp, x: i32, y: i32) -> Result<i32, EvalError> {
    let overflow = |operation| EvalError::new(Detail::Overflow(operation));
    match op {
        ArithmeticOp::Add => x.checked_add(y).ok_or_else(|| overflow("addition")),
        ArithmeticOp::Subtract => x.checked_sub(y).ok_or_else(|| overflow("subtraction")),
        ArithmeticOp::Multiply => x.checked_mul(y).ok_or_else(|| overflow("multiplication")),
        ArithmeticOp::Divide if y == 0 => Err(EvalError::new(Detail::DivisionByZero("division"))),
        ArithmeticOp::Divide => x.checked_div(y).ok_or_else(|| overflow("division")),
        ArithmeticOp::Modulo if y == 0 => Err(EvalError::new(Detail::DivisionByZero("modulo"))),
        // i32::MIN % -1 is mathematically 0; only the machine division overflows.
        ArithmeticOp::Modulo => Ok(x.checked_rem(y).unwrap_or(0)),
    }
}

/// Evaluates `a OP b OP c ...` exactly as the nested left-to-right binary operations
/// would: AND and OR short-circuit, and an error raised by one step makes the following
/// step return `false` with that error.
fn eval_logical<'e, E: EventAttributes + ?Sized>(
    op: LogicalOp,
    operands: &'e [Node],
    event: &'e E,
) -> Outcome<'e> {
    const FALSE: Value<'static> = Value::Boolean(false);
    let mut raising = Raising::default();
    let mut accumulated = false;
    for (index, operand) in operands.iter().enumerate() {
        if index >= 2 && raising.has_error() {
            return raising.finish(FALSE);
        }
        let value = operand!(operand.eval(event), FALSE);
        let b = raising.boolean_of(value);
        if index == 0 {
            accumulated = b;
        } else {
            accumulated = match op {
                LogicalOp::And => accumulated && b,
                LogicalOp::Or => accumulated || b,
                LogicalOp::Xor => accumulated != b,
            };
        }
        let decided = match op {
            LogicalOp::And => !accumulated,
            LogicalOp::Or => accumulated,
            LogicalOp::Xor => false,
        };
        if decided {
            // Every remaining step short-circuits to the same value.
            let value = if index + 1 < operands.len() && raising.has_error() {
                FALSE
            } else {
                Value::Boolean(accumulated)
            };
            return raising.finish(value);
        }
    }
    raising.finish(Value::Boolean(accumulated))
}
