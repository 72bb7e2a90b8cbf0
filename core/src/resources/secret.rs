//! The values of a Kubernetes Secret object, read the same way by every kind that reads one:
//! `data` base64-decoded, and `stringData` as written over it, as the API server folds it on
//! write.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

/// A `data` value that is not base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data.{key} is not base64")]
pub struct NotBase64 {
    pub key: String,
}

/// Every value of `secret`.
pub fn secret_values(secret: &Value) -> Result<BTreeMap<String, Vec<u8>>, NotBase64> {
    let mut values = BTreeMap::new();
    if let Some(data) = secret.get("data").and_then(Value::as_object) {
        for key in data.keys() {
            if let Some(value) = decoded(secret, key)? {
                values.insert(key.clone(), value);
            }
        }
    }
    if let Some(plain) = secret.get("stringData").and_then(Value::as_object) {
        for (key, value) in plain {
            let text = value.as_str().unwrap_or_default();
            values.insert(key.clone(), text.as_bytes().to_vec());
        }
    }
    Ok(values)
}

/// The value of `key`; `None` when the Secret has no such key.
pub fn secret_value(secret: &Value, key: &str) -> Result<Option<Vec<u8>>, NotBase64> {
    if let Some(text) = secret
        .get("stringData")
        .and_then(|plain| plain.get(key))
        .and_then(Value::as_str)
    {
        return Ok(Some(text.as_bytes().to_vec()));
    }
    decoded(secret, key)
}

fn decoded(secret: &Value, key: &str) -> Result<Option<Vec<u8>>, NotBase64> {
    let Some(value) = secret.get("data").and_then(|data| data.get(key)) else {
        return Ok(None);
    };
    value
        .as_str()
        .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
        .map(Some)
        .ok_or_else(|| NotBase64 { key: key.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn string_data_is_taken_over_data_and_data_is_decoded() {
        let secret = json!({
            "data": {"user": "YWxpY2U=", "password": "b2xk"},
            "stringData": {"password": "new"}
        });
        let values = secret_values(&secret).unwrap();
        assert_eq!(values["user"], b"alice");
        assert_eq!(values["password"], b"new");
        assert_eq!(secret_value(&secret, "password").unwrap().unwrap(), b"new");
        assert_eq!(secret_value(&secret, "user").unwrap().unwrap(), b"alice");
        assert_eq!(secret_value(&secret, "missing").unwrap(), None);
    }

    #[test]
    fn a_value_that_is_not_base64_is_named() {
        let secret = json!({"data": {"token": "not base64!"}});
        let error = secret_values(&secret).unwrap_err();
        assert_eq!(error.to_string(), "data.token is not base64");
        assert_eq!(secret_value(&secret, "token").unwrap_err().key, "token");
    }
}
