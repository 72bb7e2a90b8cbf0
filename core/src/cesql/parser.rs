//! Recursive-descent parser for the CESQL grammar (spec section 2), with the operator
//! precedence of section 3.6: function calls, then unary `NOT` and `-`, then postfix
//! `LIKE` / `IN`, then `* / %`, `+ -`, comparisons, and finally AND / OR / XOR, all
//! left-associative. Keywords, function names and attribute names are case-insensitive.

use std::borrow::Cow;
use std::sync::Arc;

use super::error::ParseError;
use super::eval::{ArithmeticOp, ComparisonOp, LogicalOp, Node};
use super::functions::Builtin;
use super::lexer::{Token, TokenKind, tokenize};
use super::like::LikePattern;
use super::value::Value;

/// How deeply expressions may nest (parentheses, unary operators, and chained binary
/// operators all count). Parsing, evaluating and dropping the tree recurse once per
/// level, so this bound keeps hostile input from exhausting the stack.
pub const MAX_NESTING_DEPTH: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    And,
    Or,
    Xor,
    Not,
    Like,
    In,
    Exists,
    True,
    False,
}

fn keyword(kind: &TokenKind) -> Option<Keyword> {
    let TokenKind::Word(word) = kind else {
        return None;
    };
    const KEYWORDS: [(&str, Keyword); 9] = [
        ("AND", Keyword::And),
        ("OR", Keyword::Or),
        ("XOR", Keyword::Xor),
        ("NOT", Keyword::Not),
        ("LIKE", Keyword::Like),
        ("IN", Keyword::In),
        ("EXISTS", Keyword::Exists),
        ("TRUE", Keyword::True),
        ("FALSE", Keyword::False),
    ];
    KEYWORDS
        .iter()
        .find(|(text, _)| word.eq_ignore_ascii_case(text))
        .map(|(_, keyword)| *keyword)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinaryOp {
    Arithmetic(ArithmeticOp),
    Comparison(ComparisonOp),
    Logical(LogicalOp),
}

impl BinaryOp {
    fn precedence(self) -> u8 {
        match self {
            BinaryOp::Arithmetic(
                ArithmeticOp::Multiply | ArithmeticOp::Divide | ArithmeticOp::Modulo,
            ) => 4,
            BinaryOp::Arithmetic(_) => 3,
            BinaryOp::Comparison(_) => 2,
            BinaryOp::Logical(_) => 1,
        }
    }
}

pub(crate) fn parse(text: &str) -> Result<Node, ParseError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens,
        index: 0,
        depth: 0,
    };
    if parser.peek().kind == TokenKind::End {
        return Err(ParseError::new(0, "expected an expression, found nothing"));
    }
    let node = parser.parse_binary(0)?;
    let token = parser.peek();
    if token.kind != TokenKind::End {
        return Err(ParseError::new(
            token.position,
            format!(
                "expected an operator or the end of the expression, found {}",
                token.kind.describe()
            ),
        ));
    }
    Ok(node)
}

struct Parser {
    tokens: Vec<Token>,
    index: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        // The token list always ends with `End`, which is never consumed.
        &self.tokens[self.index.min(self.tokens.len() - 1)]
    }

    fn peek_second(&self) -> &TokenKind {
        &self.tokens[(self.index + 1).min(self.tokens.len() - 1)].kind
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != TokenKind::End {
            self.index += 1;
        }
        token
    }

    fn error_here(&self, expected: &str) -> ParseError {
        let token = self.peek();
        ParseError::new(
            token.position,
            format!("expected {expected}, found {}", token.kind.describe()),
        )
    }

    /// Counts one more level of nesting; callers restore `depth` when they return.
    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING_DEPTH {
            return Err(ParseError::new(
                self.peek().position,
                format!("expression nested more than {MAX_NESTING_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn starts_expression(kind: &TokenKind) -> bool {
        match kind {
            TokenKind::Word(_) => !matches!(
                keyword(kind),
                Some(Keyword::And | Keyword::Or | Keyword::Xor | Keyword::Like | Keyword::In)
            ),
            TokenKind::Number(_)
            | TokenKind::StringLiteral(_)
            | TokenKind::LeftParen
            | TokenKind::Minus
            | TokenKind::Plus => true,
            _ => false,
        }
    }

    fn expect_operand(&self, after: &str) -> Result<(), ParseError> {
        if Self::starts_expression(&self.peek().kind) {
            Ok(())
        } else {
            Err(self.error_here(&format!("an expression after {after}")))
        }
    }

    fn binary_op(&self) -> Option<(BinaryOp, &'static str)> {
        let kind = &self.peek().kind;
        let op = match kind {
            TokenKind::Plus => (BinaryOp::Arithmetic(ArithmeticOp::Add), "'+'"),
            TokenKind::Minus => (BinaryOp::Arithmetic(ArithmeticOp::Subtract), "'-'"),
            TokenKind::Star => (BinaryOp::Arithmetic(ArithmeticOp::Multiply), "'*'"),
            TokenKind::Slash => (BinaryOp::Arithmetic(ArithmeticOp::Divide), "'/'"),
            TokenKind::Percent => (BinaryOp::Arithmetic(ArithmeticOp::Modulo), "'%'"),
            TokenKind::Equal => (BinaryOp::Comparison(ComparisonOp::Equal), "'='"),
            TokenKind::NotEqual => (BinaryOp::Comparison(ComparisonOp::NotEqual), "'!='"),
            TokenKind::Less => (BinaryOp::Comparison(ComparisonOp::Less), "'<'"),
            TokenKind::LessOrEqual => (BinaryOp::Comparison(ComparisonOp::LessOrEqual), "'<='"),
            TokenKind::Greater => (BinaryOp::Comparison(ComparisonOp::Greater), "'>'"),
            TokenKind::GreaterOrEqual => {
                (BinaryOp::Comparison(ComparisonOp::GreaterOrEqual), "'>='")
            }
            _ => match keyword(kind)? {
                Keyword::And => (BinaryOp::Logical(LogicalOp::And), "AND"),
                Keyword::Or => (BinaryOp::Logical(LogicalOp::Or), "OR"),
                Keyword::Xor => (BinaryOp::Logical(LogicalOp::Xor), "XOR"),
                _ => return None,
            },
        };
        Some(op)
    }

    /// Precedence climbing over the binary operators of at least `min_precedence`.
    fn parse_binary(&mut self, min_precedence: u8) -> Result<Node, ParseError> {
        let saved_depth = self.depth;
        let mut left = self.parse_postfix()?;
        while let Some((op, spelling)) = self.binary_op() {
            let precedence = op.precedence();
            if precedence < min_precedence {
                break;
            }
            self.advance();
            self.expect_operand(spelling)?;
            let right = self.parse_binary(precedence + 1)?;
            left = match (op, left) {
                (
                    BinaryOp::Logical(op),
                    Node::Logical {
                        op: chained,
                        mut operands,
                    },
                ) if chained == op => {
                    // Same operator again: extend the flat chain, no deeper tree.
                    operands.push(right);
                    Node::Logical { op, operands }
                }
                (op, left) => {
                    self.enter()?;
                    let (left, right) = (Box::new(left), Box::new(right));
                    match op {
                        BinaryOp::Arithmetic(op) => Node::Arithmetic { op, left, right },
                        BinaryOp::Comparison(op) => Node::Comparison { op, left, right },
                        BinaryOp::Logical(op) => Node::Logical {
                            op,
                            operands: vec![*left, *right],
                        },
                    }
                }
            };
        }
        self.depth = saved_depth;
        Ok(left)
    }

    /// A unary expression followed by any number of `[NOT] LIKE 'pattern'` and
    /// `[NOT] IN (...)`.
    fn parse_postfix(&mut self) -> Result<Node, ParseError> {
        let saved_depth = self.depth;
        let mut operand = self.parse_unary()?;
        loop {
            let first = keyword(&self.peek().kind);
            let second = keyword(self.peek_second());
            let (negated, operator) = match (first, second) {
                (Some(Keyword::Not), Some(op @ (Keyword::Like | Keyword::In))) => (true, op),
                (Some(op @ (Keyword::Like | Keyword::In)), _) => (false, op),
                _ => break,
            };
            if negated {
                self.advance();
            }
            self.advance();
            self.enter()?;
            operand = if operator == Keyword::Like {
                let TokenKind::StringLiteral(pattern) = &self.peek().kind else {
                    return Err(self.error_here("a string literal pattern after LIKE"));
                };
                let pattern = LikePattern::compile(pattern);
                self.advance();
                Node::Like {
                    operand: Box::new(operand),
                    pattern,
                    negated,
                }
            } else {
                let set = self.parse_set()?;
                Node::In {
                    operand: Box::new(operand),
                    set,
                    negated,
                }
            };
        }
        self.depth = saved_depth;
        Ok(operand)
    }

    /// `( expression [, expression]* )` after IN.
    fn parse_set(&mut self) -> Result<Vec<Node>, ParseError> {
        if self.peek().kind != TokenKind::LeftParen {
            return Err(self.error_here("'(' and a list of values after IN"));
        }
        let open = self.advance().position;
        let mut set = Vec::new();
        loop {
            self.expect_operand(if set.is_empty() { "'('" } else { "','" })?;
            set.push(self.parse_binary(0)?);
            match self.advance().kind {
                TokenKind::Comma => continue,
                TokenKind::RightParen => return Ok(set),
                _ => {
                    self.index -= 1;
                    return Err(self.error_here(&format!(
                        "',' or the ')' closing the IN list opened at position {open}"
                    )));
                }
            }
        }
    }

    fn parse_unary(&mut self) -> Result<Node, ParseError> {
        let saved_depth = self.depth;
        self.enter()?;
        let token = self.peek().clone();
        let node = match (&token.kind, keyword(&token.kind)) {
            (_, Some(Keyword::Not)) => {
                self.advance();
                self.expect_operand("NOT")?;
                Node::Not(Box::new(self.parse_unary()?))
            }
            (TokenKind::Minus | TokenKind::Plus, _) => {
                self.advance();
                let negative = token.kind == TokenKind::Minus;
                if let TokenKind::Number(digits) = &self.peek().kind {
                    // A signed integer literal, so that -2147483648 is representable.
                    let literal = integer_literal(digits, negative, token.position)?;
                    self.advance();
                    Node::Literal(Value::Integer(literal))
                } else if negative {
                    self.expect_operand("'-'")?;
                    Node::Negate(Box::new(self.parse_unary()?))
                } else {
                    return Err(self.error_here("digits after '+'"));
                }
            }
            _ => self.parse_primary()?,
        };
        self.depth = saved_depth;
        Ok(node)
    }

    fn parse_primary(&mut self) -> Result<Node, ParseError> {
        let token = self.advance();
        match &token.kind {
            TokenKind::Number(digits) => Ok(Node::Literal(Value::Integer(integer_literal(
                digits,
                false,
                token.position,
            )?))),
            TokenKind::StringLiteral(text) => {
                Ok(Node::Literal(Value::String(Cow::Owned(text.clone()))))
            }
            TokenKind::LeftParen => {
                self.expect_operand("'('")?;
                let inner = self.parse_binary(0)?;
                if self.peek().kind != TokenKind::RightParen {
                    return Err(self.error_here(&format!(
                        "')' to close the '(' at position {}",
                        token.position
                    )));
                }
                self.advance();
                Ok(inner)
            }
            TokenKind::Word(word) => match keyword(&token.kind) {
                Some(Keyword::True) => Ok(Node::Literal(Value::Boolean(true))),
                Some(Keyword::False) => Ok(Node::Literal(Value::Boolean(false))),
                Some(Keyword::Exists) => {
                    let name_token = self.peek().clone();
                    match &name_token.kind {
                        TokenKind::Word(name) if keyword(&name_token.kind).is_none() => {
                            let name = attribute_name(name, name_token.position)?;
                            self.advance();
                            Ok(Node::Exists(name))
                        }
                        _ => Err(self.error_here("an attribute name after EXISTS")),
                    }
                }
                Some(_) => Err(ParseError::new(
                    token.position,
                    format!(
                        "expected an expression, found the keyword {}",
                        word.to_ascii_uppercase()
                    ),
                )),
                None if self.peek().kind == TokenKind::LeftParen => {
                    self.parse_call(word, token.position)
                }
                None => Ok(Node::Attribute(attribute_name(word, token.position)?)),
            },
            other => Err(ParseError::new(
                token.position,
                format!("expected an expression, found {}", other.describe()),
            )),
        }
    }

    /// `NAME ( [expression [, expression]*] )`, with the name token already consumed.
    fn parse_call(&mut self, name: &str, position: usize) -> Result<Node, ParseError> {
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphabetic() || c == '_');
        if !valid_name {
            return Err(ParseError::new(
                position,
                format!("'{name}' is not a valid function name (letters and '_' only)"),
            ));
        }
        let open = self.advance().position;
        let mut args = Vec::new();
        if self.peek().kind == TokenKind::RightParen {
            self.advance();
        } else {
            loop {
                self.expect_operand(if args.is_empty() { "'('" } else { "','" })?;
                args.push(self.parse_binary(0)?);
                match self.advance().kind {
                    TokenKind::Comma => continue,
                    TokenKind::RightParen => break,
                    _ => {
                        self.index -= 1;
                        return Err(self.error_here(&format!(
                            "',' or the ')' closing the arguments of {name} opened at position {open}"
                        )));
                    }
                }
            }
        }
        let upper = name.to_ascii_uppercase();
        Ok(match Builtin::lookup(&upper, args.len()) {
            Some(function) => Node::Call { function, args },
            None => Node::MissingFunction {
                name: Arc::from(upper),
                arity: args.len(),
            },
        })
    }
}

fn integer_literal(digits: &str, negative: bool, position: usize) -> Result<i32, ParseError> {
    let magnitude: i64 = digits.parse().unwrap_or(i64::MAX);
    let value = if negative { -magnitude } else { magnitude };
    i32::try_from(value).map_err(|_| {
        ParseError::new(
            position,
            format!(
                "the integer literal {}{digits} is outside the 32-bit range",
                if negative { "-" } else { "" }
            ),
        )
    })
}

/// Attribute names are lower-case letters and digits (CloudEvents naming convention);
/// the expression may spell them in any case.
fn attribute_name(word: &str, position: usize) -> Result<Arc<str>, ParseError> {
    if let Some(offset) = word.find(|c: char| !c.is_ascii_alphanumeric()) {
        return Err(ParseError::new(
            position + offset,
            format!(
                "'{word}' is not a valid attribute name (letters and digits only); \
                 a function call needs '(' after the name"
            ),
        ));
    }
    Ok(Arc::from(word.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> ParseError {
        parse(text).expect_err("should not parse")
    }

    #[test]
    fn precedence_is_left_to_right_within_a_level() {
        // AND, OR and XOR share one level: (TRUE OR TRUE) AND FALSE.
        let node = parse("TRUE OR TRUE AND FALSE").expect("parses");
        let Node::Logical { op, operands } = node else {
            panic!("expected a logical node");
        };
        assert_eq!(op, LogicalOp::And);
        assert!(matches!(
            operands[0],
            Node::Logical {
                op: LogicalOp::Or,
                ..
            }
        ));
    }

    #[test]
    fn logical_chains_are_flat() {
        let text = (0..1000)
            .map(|i| format!("x = {i}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let Node::Logical { operands, .. } = parse(&text).expect("parses") else {
            panic!("expected a logical node");
        };
        assert_eq!(operands.len(), 1000);
    }

    #[test]
    fn messages_say_what_was_expected() {
        let e = error("a = 1 AND");
        assert_eq!(e.position(), 9);
        assert_eq!(
            e.message(),
            "expected an expression after AND, found the end of the expression"
        );
        let e = error("x LIKE 123");
        assert_eq!(e.position(), 7);
        assert!(e.message().contains("string literal"), "{e}");
        let e = error("ABC(");
        assert_eq!(e.position(), 4);
        let e = error("(1 + 2");
        assert!(e.message().contains("')'"), "{e}");
        let e = error("1 2");
        assert_eq!(e.position(), 2);
        assert!(error("2147483648").message().contains("32-bit"));
        assert!(parse("-2147483648").is_ok());
        assert!(error("").message().contains("expected an expression"));
        assert!(error("my_ext = 1").message().contains("attribute name"));
        assert!(error("EXISTS 1").message().contains("attribute name"));
        assert!(error("x IN ()").message().contains("expression"));
        assert!(error("x IN 1").message().contains("'('"));
        assert_eq!(
            error("é").to_string(),
            "cesql parse error at position 0: unexpected character 'é'"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(error(&deep).message().contains("nested"));
        assert!(error(&"NOT ".repeat(10_000)).message().contains("nested"));
        assert!(error(&"-".repeat(10_000)).message().contains("nested"));
        let chain = vec!["1"; 10_000].join(" + ");
        assert!(error(&chain).message().contains("nested"));
        let likes = format!("'a'{}", " LIKE 'a'".repeat(10_000));
        assert!(error(&likes).message().contains("nested"));
        let ok = format!("{}1{}", "(".repeat(50), ")".repeat(50));
        assert!(parse(&ok).is_ok());
    }
}
