//! A connection to RabbitMQ that is made again when it breaks. lapin does not reconnect by
//! itself: every user asks the [`Link`] for the current connection, and a broken one is
//! replaced on demand. Failed attempts back off (100 ms doubling up to 5 s) so that callers
//! during an outage fail fast instead of each waiting for a connect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::ChannelError;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A self-healing connection to one RabbitMQ URI.
pub struct Link {
    uri: String,
    /// Shown by RabbitMQ as the connection's name.
    name: String,
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    connection: Option<Arc<Connection>>,
    failures: u32,
    /// No new attempt before this instant.
    retry_at: Option<Instant>,
    last_error: String,
}

/// Any lapin failure as a channel error: RabbitMQ cannot do it now.
pub fn unavailable(what: &str, error: impl std::fmt::Display) -> ChannelError {
    ChannelError::Unavailable(format!("RabbitMQ {what}: {error}"))
}

/// Sets how many unacknowledged deliveries `channel` may hold, then starts consuming
/// `queue`. An error names the step that failed: `basic.qos` or `basic.consume`.
pub async fn consume(
    channel: &lapin::Channel,
    queue: &str,
    prefetch: u16,
) -> Result<lapin::Consumer, (&'static str, lapin::Error)> {
    channel
        .basic_qos(prefetch, lapin::options::BasicQosOptions::default())
        .await
        .map_err(|e| ("basic.qos", e))?;
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .map_err(|e| ("basic.consume", e))
}

/// Whether a lapin error is RabbitMQ saying that the named queue or exchange does not exist.
pub fn is_not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

/// Whether a lapin error is RabbitMQ refusing a declaration that contradicts an existing one.
pub fn is_precondition_failed(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// Checks that `uri` is an AMQP URI lapin can use.
pub fn check_uri(uri: &str) -> Result<(), ChannelError> {
    uri.parse::<lapin::uri::AMQPUri>()
        .map(|_| ())
        .map_err(|e| ChannelError::Config(format!("uri {:?} is not an AMQP URI: {e}", redact(uri))))
}

/// The AMQP URI a connection Secret describes. A `uri` key holding an `amqp://` or
/// `amqps://` URI is taken as is; otherwise (Knative's connection Secrets) the URI is built from
/// the host of `uri`, `port` (default 5672), `username`, `password` and `vhost` (default `/`).
pub fn uri_from_secret(
    data: &std::collections::BTreeMap<String, String>,
) -> Result<String, String> {
    let given = data.get("uri").map(|u| u.trim()).unwrap_or("");
    if given.starts_with("amqp://") || given.starts_with("amqps://") {
        return Ok(given.to_owned());
    }
    if given.is_empty() {
        return Err("the connection Secret has no key \"uri\"".into());
    }
    let without_scheme = given.split_once("://").map_or(given, |(_, rest)| rest);
    let authority = without_scheme.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => host_port,
    };
    if host.is_empty() {
        return Err(format!(
            "the connection Secret's uri {given:?} names no host"
        ));
    }
    let port = data.get("port").map(|p| p.trim()).unwrap_or("5672");
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "the connection Secret's port {port:?} is not a port number"
        ));
    }
    let user_info = match (data.get("username"), data.get("password")) {
        (Some(user), Some(password)) => format!("{}:{}@", encode(user), encode(password)),
        (Some(user), None) => format!("{}@", encode(user)),
        _ => String::new(),
    };
    let vhost = data.get("vhost").map(String::as_str).unwrap_or("/");
    Ok(format!("amqp://{user_info}{host}:{port}/{}", encode(vhost)))
}

/// Percent-encodes everything but unreserved URI characters.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// `uri` with its password hidden, for messages and logs.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => uri.to_owned(),
    }
}

impl Link {
    pub fn new(uri: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            name: name.into(),
            state: Mutex::new(LinkState::default()),
        }
    }

    /// The current connection, connecting first when there is none or it broke. Fails at
    /// once while the back-off after a failed attempt lasts.
    pub async fn connection(&self) -> Result<Arc<Connection>, ChannelError> {
        let mut state = self.state.lock().await;
        if let Some(connection) = &state.connection {
            if connection.status().connected() {
                return Ok(connection.clone());
            }
            tracing::warn!(connection = %self.name, "RabbitMQ connection lost; reconnecting");
            state.connection = None;
        }
        if let Some(retry_at) = state.retry_at {
            let now = Instant::now();
            if now < retry_at {
                return Err(ChannelError::Unavailable(format!(
                    "RabbitMQ at {} is unreachable ({}); next attempt in {:?}",
                    redact(&self.uri),
                    state.last_error,
                    retry_at - now
                )));
            }
        }
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.as_str().into());
        let attempt =
            tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.uri, properties));
        let error = match attempt.await {
            Ok(Ok(connection)) => {
                let connection = Arc::new(connection);
                if state.failures > 0 {
                    tracing::info!(connection = %self.name, "RabbitMQ connection restored");
                }
                state.failures = 0;
                state.retry_at = None;
                state.connection = Some(connection.clone());
                return Ok(connection);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no connection within {CONNECT_TIMEOUT:?}"),
        };
        if state.failures == 0 {
            tracing::warn!(connection = %self.name, uri = %redact(&self.uri), %error, "cannot connect to RabbitMQ; retrying with back-off");
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << state.failures.min(10))
            .min(MAX_BACKOFF);
        state.failures = state.failures.saturating_add(1);
        state.retry_at = Some(Instant::now() + backoff);
        state.last_error = error.clone();
        Err(ChannelError::Unavailable(format!(
            "cannot connect to RabbitMQ at {}: {error}",
            redact(&self.uri)
        )))
    }

    /// Like [`Link::connection`], but waits through back-offs until a connection is made.
    pub async fn wait_for_connection(&self) -> Arc<Connection> {
        loop {
            match self.connection().await {
                Ok(connection) => return connection,
                Err(_) => tokio::time::sleep(self.time_to_retry().await).await,
            }
        }
    }

    /// How long until the next connection attempt is allowed.
    async fn time_to_retry(&self) -> Duration {
        let state = self.state.lock().await;
        state
            .retry_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(FIRST_BACKOFF)
            .max(Duration::from_millis(10))
    }

    /// A fresh AMQP channel on the current connection.
    pub async fn channel(&self) -> Result<lapin::Channel, ChannelError> {
        self.connection()
            .await?
            .create_channel()
            .await
            .map_err(|e| unavailable("channel", e))
    }

    /// Closes the connection (the next use connects again).
    pub async fn close(&self) {
        let connection = self.state.lock().await.connection.take();
        if let Some(connection) = connection
            && connection.status().connected()
        {
            let _ = connection.close(200, "closed".into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host/vh"), "amqp://host/vh");
        assert!(check_uri("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(matches!(
            check_uri("http://x"),
            Err(ChannelError::Config(_))
        ));
    }

    #[test]
    fn secrets_give_uris() {
        let data = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            uri_from_secret(&data(&[("uri", "amqp://u:p@h:1/v")])).unwrap(),
            "amqp://u:p@h:1/v"
        );
        assert_eq!(
            uri_from_secret(&data(&[
                ("uri", "http://rabbit.ns.svc:15672"),
                ("port", "5672"),
                ("username", "guest"),
                ("password", "p@ss/word"),
            ]))
            .unwrap(),
            "amqp://guest:p%40ss%2Fword@rabbit.ns.svc:5672/%2F"
        );
        assert!(uri_from_secret(&data(&[])).is_err());
        assert!(uri_from_secret(&data(&[("uri", "rabbit"), ("port", "x")])).is_err());
        assert!(check_uri("amqp://guest:guest@rabbit.ns.svc:5672/%2F").is_ok());
    }

    #[tokio::test]
    async fn failed_attempts_back_off() {
        // Nothing listens on port 1.
        let link = Link::new("amqp://guest:guest@127.0.0.1:1/%2f", "test");
        let first = link.connection().await.unwrap_err().to_string();
        assert!(first.contains("cannot connect"), "{first}");
        let second = link.connection().await.unwrap_err().to_string();
        assert!(second.contains("next attempt in"), "{second}");
    }
}
