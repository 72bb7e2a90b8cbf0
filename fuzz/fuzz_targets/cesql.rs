//! Parses arbitrary text as CESQL and evaluates what parses against a fixed event:
//! nothing may panic, and `matches` must agree with `evaluate`.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rivulet::cesql::{Expression, Value};

fn event() -> &'static HashMap<String, Value<'static>> {
    static EVENT: OnceLock<HashMap<String, Value<'static>>> = OnceLock::new();
    EVENT.get_or_init(|| {
        let mut event = HashMap::new();
        for (name, value) in [
            ("specversion", "1.0"),
            ("id", "fuzz-1"),
            ("source", "/fuzz"),
            ("type", "com.example.fuzz"),
            ("subject", "Kitchen"),
            ("time", "2018-04-26T14:48:09+02:00"),
            ("count", "42"),
        ] {
            event.insert(name.to_owned(), Value::from(value.to_owned()));
        }
        event.insert("flag".to_owned(), Value::Boolean(true));
        event.insert("number".to_owned(), Value::Integer(-7));
        event
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Expression::parse(text) {
        Ok(expression) => {
            let event = event();
            let evaluation = expression.evaluate(event);
            let passes = evaluation.error.is_none() && evaluation.value.is_true();
            assert_eq!(expression.matches(event), passes);
        }
        Err(error) => assert!(error.position() <= text.chars().count()),
    }
});
