//! Secrets read by kinds that connect with credentials (RabbitMQ sources and sinks).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

use super::Context;

impl Context {
    /// The data of Secret `namespace/name`: `data` base64-decoded, `stringData` as written.
    pub async fn secret_data(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        let secret = self
            .store
            .get(Context::kind("Secret"), namespace, name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("Secret {namespace}/{name} does not exist"))?;
        let mut data = BTreeMap::new();
        if let Some(map) = secret.get("data").and_then(Value::as_object) {
            for (key, value) in map {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str().unwrap_or_default())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| {
                        format!("Secret {namespace}/{name}: data.{key} is not base64 of UTF-8 text")
                    })?;
                data.insert(key.clone(), decoded);
            }
        }
        if let Some(map) = secret.get("stringData").and_then(Value::as_object) {
            for (key, value) in map {
                data.insert(key.clone(), value.as_str().unwrap_or_default().to_owned());
            }
        }
        Ok(data)
    }
}

/// The AMQP URI a RabbitMQ connection Secret holds (`uri`, or its parts as the RabbitMQ
/// cluster operator writes them).
pub async fn amqp_uri_of_secret(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<String, String> {
    let data = ctx.secret_data(namespace, name).await?;
    rivulet_channels::rabbitmq::link::uri_from_secret(&data)
        .map_err(|e| format!("Secret {namespace}/{name}: {e}"))
}
