//! Splits CESQL text into tokens; positions are 0-based character offsets.

use super::error::ParseError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Letters, digits and `_`; keywords, identifiers and function names alike.
    Word(String),
    /// Digits only; the value is checked by the parser, which knows the sign.
    Number(String),
    StringLiteral(String),
    LeftParen,
    RightParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Equal,
    /// `!=` or `<>`.
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    End,
}

impl TokenKind {
    /// How the token is named in error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            TokenKind::Word(word) => format!("'{word}'"),
            TokenKind::Number(digits) => format!("the number {digits}"),
            TokenKind::StringLiteral(_) => "a string literal".to_owned(),
            TokenKind::LeftParen => "'('".to_owned(),
            TokenKind::RightParen => "')'".to_owned(),
            TokenKind::Comma => "','".to_owned(),
            TokenKind::Plus => "'+'".to_owned(),
            TokenKind::Minus => "'-'".to_owned(),
            TokenKind::Star => "'*'".to_owned(),
            TokenKind::Slash => "'/'".to_owned(),
            TokenKind::Percent => "'%'".to_owned(),
            TokenKind::Equal => "'='".to_owned(),
            TokenKind::NotEqual => "'!='".to_owned(),
            TokenKind::Less => "'<'".to_owned(),
            TokenKind::LessOrEqual => "'<='".to_owned(),
            TokenKind::Greater => "'>'".to_owned(),
            TokenKind::GreaterOrEqual => "'>='".to_owned(),
            TokenKind::End => "the end of the expression".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub position: usize,
}

pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let start = index;
        let single = |kind| Some((kind, 1));
        let punctuation = match c {
            '(' => single(TokenKind::LeftParen),
            ')' => single(TokenKind::RightParen),
            ',' => single(TokenKind::Comma),
            '+' => single(TokenKind::Plus),
            '-' => single(TokenKind::Minus),
            '*' => single(TokenKind::Star),
            '/' => single(TokenKind::Slash),
            '%' => single(TokenKind::Percent),
            '=' => single(TokenKind::Equal),
            '!' if chars.get(index + 1) == Some(&'=') => Some((TokenKind::NotEqual, 2)),
            '<' => match chars.get(index + 1) {
                Some('=') => Some((TokenKind::LessOrEqual, 2)),
                Some('>') => Some((TokenKind::NotEqual, 2)),
                _ => single(TokenKind::Less),
            },
            '>' => match chars.get(index + 1) {
                Some('=') => Some((TokenKind::GreaterOrEqual, 2)),
                _ => single(TokenKind::Greater),
            },
            _ => None,
        };
        if let Some((kind, width)) = punctuation {
            tokens.push(Token {
                kind,
                position: start,
            });
            index += width;
            continue;
        }
        if c.is_whitespace() {
            index += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            let (literal, next) = read_string(&chars, index)?;
            tokens.push(Token {
                kind: TokenKind::StringLiteral(literal),
                position: start,
            });
            index = next;
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            while index < chars.len()
                && (chars[index].is_ascii_alphanumeric() || chars[index] == '_')
            {
                index += 1;
            }
            let word: String = chars[start..index].iter().collect();
            let kind = if word.bytes().all(|b| b.is_ascii_digit()) {
                TokenKind::Number(word)
            } else {
                TokenKind::Word(word)
            };
            tokens.push(Token {
                kind,
                position: start,
            });
            continue;
        }
        return Err(ParseError::new(
            start,
            format!("unexpected character '{c}'"),
        ));
    }
    tokens.push(Token {
        kind: TokenKind::End,
        position: chars.len(),
    });
    Ok(tokens)
}

/// Reads a string literal starting at the quote `chars[start]`. Inside it, a backslash
/// before the delimiting quote escapes it; any other backslash is kept as is.
fn read_string(chars: &[char], start: usize) -> Result<(String, usize), ParseError> {
    let quote = chars[start];
    let mut literal = String::new();
    let mut index = start + 1;
    while let Some(&c) = chars.get(index) {
        if c == quote {
            return Ok((literal, index + 1));
        }
        if c == '\\' && chars.get(index + 1) == Some(&quote) {
            literal.push(quote);
            index += 2;
            continue;
        }
        literal.push(c);
        index += 1;
    }
    Err(ParseError::new(
        start,
        format!("expected a closing {quote} for the string literal"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<TokenKind> {
        tokenize(text)
            .expect("valid tokens")
            .into_iter()
            .map(|token| token.kind)
            .collect()
    }

    #[test]
    fn operators_and_words() {
        assert_eq!(
            kinds("a<>b != 1<=2"),
            vec![
                TokenKind::Word("a".into()),
                TokenKind::NotEqual,
                TokenKind::Word("b".into()),
                TokenKind::NotEqual,
                TokenKind::Number("1".into()),
                TokenKind::LessOrEqual,
                TokenKind::Number("2".into()),
                TokenKind::End,
            ]
        );
    }

    #[test]
    fn string_escapes() {
        assert_eq!(
            kinds(r#"'a"b\'c' "a'b\"c" 'ab\c'"#)[..3],
            [
                TokenKind::StringLiteral("a\"b'c".into()),
                TokenKind::StringLiteral("a'b\"c".into()),
                TokenKind::StringLiteral("ab\\c".into()),
            ]
        );
    }

    #[test]
    fn errors_carry_character_positions() {
        let error = tokenize("'é' = 'abc").expect_err("unterminated");
        assert_eq!(error.position(), 6);
        let error = tokenize("a # b").expect_err("bad character");
        assert_eq!(error.position(), 2);
        assert!(error.message().contains('#'));
    }
}
