//! Secrets read by kinds that connect with credentials (RabbitMQ sources and sinks).

use std::collections::BTreeMap;

use rivulet_core::resources::Condition;

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
        let values = rivulet_core::resources::secret::secret_values(&secret)
            .map_err(|e| format!("Secret {namespace}/{name}: {e}"))?;
        let mut data = BTreeMap::new();
        for (key, value) in values {
            let text = String::from_utf8(value)
                .map_err(|_| format!("Secret {namespace}/{name}: data.{key} is not UTF-8 text"))?;
            data.insert(key, text);
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

/// The AMQP URI a RabbitMQ source or sink connects to: `uri` as given, else the one the
/// connection Secret `secret` (namespace, name) holds, which adds a true `SecretResolved` to
/// `conditions`. A Secret that cannot be read, or neither being given (`neither` says which
/// fields), is a false `SecretResolved`.
pub async fn amqp_connection_uri(
    ctx: &Context,
    uri: Option<&str>,
    secret: Option<(&str, &str)>,
    neither: &str,
    conditions: &mut Vec<Condition>,
) -> Result<String, Condition> {
    match (uri, secret) {
        (Some(uri), _) => Ok(uri.to_owned()),
        (None, Some((namespace, name))) => {
            let uri = amqp_uri_of_secret(ctx, namespace, name)
                .await
                .map_err(|reason| {
                    Condition::new("SecretResolved", false, "SecretNotFound", reason)
                })?;
            conditions.push(Condition::new("SecretResolved", true, "", ""));
            Ok(uri)
        }
        (None, None) => Err(Condition::new(
            "SecretResolved",
            false,
            "NoConnection",
            format!("neither {neither} is given"),
        )),
    }
}
