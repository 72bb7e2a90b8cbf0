//! Deterministic pseudo-random inputs for the parser and evaluator: nothing may panic,
//! parse errors must point inside the input, and `matches` must agree with `evaluate`.
//! Runs on stable in every test run; the cargo-fuzz target explores further.

use std::collections::HashMap;

use super::{Expression, Value};

/// xorshift64*: small, deterministic, good enough to pick tokens.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % bound as u64).unwrap_or(0)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    ",",
    "+",
    "-",
    "*",
    "/",
    "%",
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "AND",
    "or",
    "XoR",
    "NOT",
    "LIKE",
    "IN",
    "EXISTS",
    "TRUE",
    "false",
    "0",
    "1",
    "-1",
    "2147483647",
    "2147483648",
    "-2147483648",
    "'abc'",
    "'a%b_c'",
    "'\\%'",
    "\"x\\\"y\"",
    "''",
    "'é'",
    "id",
    "type",
    "flag",
    "number",
    "count",
    "missing",
    "LENGTH",
    "CONCAT",
    "CONCAT_WS",
    "LOWER",
    "UPPER",
    "TRIM",
    "LEFT",
    "RIGHT",
    "SUBSTRING",
    "ABS",
    "INT",
    "BOOL",
    "STRING",
    "IS_BOOL",
    "IS_INT",
    "IS_STRING",
    "DATA",
    "NOPE",
    "'",
    "\"",
    "\\",
    "_",
    "é",
    "#",
    " ",
];

const SEEDS: &[&str] = &[
    "type LIKE 'com.example.%' AND count > 10",
    "SUBSTRING('Sakila', -5, 3) = 'aki' OR NOT EXISTS missing",
    "number IN (1, '7', TRUE) XOR LEFT(id, -1) <> RIGHT(type, 3)",
    "ABS(-2147483648) + 1 / 0 % missing",
    "CONCAT_WS(',', 'a', BOOL('x'), INT('y'), -TRUE) LIKE '%a\\_b%'",
];

fn event() -> HashMap<String, Value<'static>> {
    let mut event = HashMap::new();
    event.insert("id".to_owned(), Value::from("abc".to_owned()));
    event.insert("type".to_owned(), Value::from("com.example.x".to_owned()));
    event.insert("count".to_owned(), Value::from("12".to_owned()));
    event.insert("flag".to_owned(), Value::Boolean(true));
    event.insert("number".to_owned(), Value::Integer(7));
    event
}

fn check(text: &str, event: &HashMap<String, Value<'static>>) -> bool {
    match Expression::parse(text) {
        Ok(expression) => {
            let evaluation = expression.evaluate(event);
            let passes = evaluation.error.is_none() && evaluation.value == Value::Boolean(true);
            assert_eq!(expression.matches(event), passes, "{text:?}");
            true
        }
        Err(error) => {
            assert!(
                error.position() <= text.chars().count(),
                "{text:?}: position {} past the end",
                error.position()
            );
            assert!(!error.message().is_empty());
            false
        }
    }
}

#[test]
fn random_token_sequences_never_panic() {
    let event = event();
    let mut rng = Rng(0x5EED_CE5A_1234_5678);
    let mut parsed = 0;
    for _ in 0..3000 {
        let length = 1 + rng.below(16);
        let text: Vec<&str> = (0..length).map(|_| rng.pick(TOKENS)).collect();
        if check(&text.join(" "), &event) {
            parsed += 1;
        }
    }
    // The vocabulary is rich enough that some sequences must be valid expressions.
    assert!(parsed > 50, "only {parsed} random inputs parsed");
}

#[test]
fn mutated_expressions_never_panic() {
    let event = event();
    let mut rng = Rng(0xC0FF_EE00_DEAD_BEEF);
    let mut parsed = 0;
    for _ in 0..3000 {
        let mut chars: Vec<char> = rng.pick(SEEDS).chars().collect();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(chars.len() + 1);
            match rng.below(3) {
                0 if at < chars.len() => {
                    chars.remove(at);
                }
                1 => {
                    let token: Vec<char> = rng.pick(TOKENS).chars().collect();
                    chars.splice(at..at, token);
                }
                _ => {
                    let byte = u8::try_from(rng.below(128)).unwrap_or(b' ');
                    chars.insert(at, char::from(byte));
                }
            }
        }
        let text: String = chars.into_iter().collect();
        if check(&text, &event) {
            parsed += 1;
        }
    }
    assert!(parsed > 100, "only {parsed} mutated inputs parsed");
}

#[test]
fn pathological_inputs_are_rejected_or_fast() {
    let event = event();
    for text in [
        "(".repeat(100_000),
        "NOT ".repeat(100_000),
        "-".repeat(100_000),
        "1 + ".repeat(50_000) + "1",
        vec!["TRUE"; 50_000].join(" AND "),
        format!("'{}' LIKE '{}b'", "a".repeat(5_000), "%a".repeat(200)),
        format!("CONCAT({})", vec!["'x'"; 10_000].join(",")),
    ] {
        check(&text, &event);
    }
    assert!(Expression::parse(&vec!["TRUE"; 50_000].join(" AND ")).is_ok());
}
