//! Where spans go, read from the standard OpenTelemetry variables. No endpoint, no tracing.

use std::time::Duration;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`), usually port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`), usually port 4318; the OpenTelemetry
    /// specification's default.
    #[default]
    HttpProtobuf,
}

impl Protocol {
    /// The protocol named as `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
    pub fn parse(text: &str) -> Result<Protocol, TelemetryError> {
        match text.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(TelemetryError::Protocol(other.to_string())),
        }
    }
}

/// Why tracing could not be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "OTLP protocol {0:?} is not supported: use \"grpc\" or \"http/protobuf\" \
         (OTEL_EXPORTER_OTLP_PROTOCOL)"
    )]
    Protocol(String),
    #[error("OTLP endpoint {endpoint:?} is not an http or https URL: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("{variable} must be a positive whole number, not {value:?}")]
    Number { variable: String, value: String },
    #[error("tracing needs a Tokio runtime to export from")]
    NoRuntime,
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
}

/// The spans kept waiting for export at most, unless `OTEL_BSP_MAX_QUEUE_SIZE` says
/// otherwise (the OpenTelemetry default).
pub const DEFAULT_QUEUE_SIZE: usize = 2048;

/// How long one export may take before it is given up (the OTLP default timeout).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The full URL spans are sent to: for HTTP the traces path included
    /// (`http://collector:4318/v1/traces`), for gRPC the server (`http://collector:4317`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Ended spans waiting for export at most; more are dropped (and counted).
    pub queue_size: usize,
    /// How long one export may take.
    pub export_timeout: Duration,
}

impl TelemetryConfig {
    /// Spans to `endpoint` (used as given) over `protocol`, with the defaults otherwise.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        TelemetryConfig {
            endpoint: endpoint.into(),
            protocol,
            service_name: "rivulet".to_string(),
            queue_size: DEFAULT_QUEUE_SIZE,
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
        }
    }

    /// The configuration the process environment asks for; `None` when no endpoint is set
    /// (or the SDK is disabled), which leaves tracing off.
    pub fn from_env() -> Result<Option<Self>, TelemetryError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`TelemetryConfig::from_env`], with the variables from `lookup`.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TelemetryError> {
        // An empty value counts as unset, as the specification asks.
        let var = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
        {
            return Ok(None);
        }
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(text) => Protocol::parse(&text)?,
            None => Protocol::default(),
        };
        // The per-signal endpoint is used as it is; the general one gets the signal's path
        // under HTTP (gRPC has no path).
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(traces), _) => traces.trim().to_string(),
            (None, Some(base)) => match protocol {
                Protocol::HttpProtobuf => {
                    format!("{}/v1/traces", base.trim().trim_end_matches('/'))
                }
                Protocol::Grpc => base.trim().to_string(),
            },
            (None, None) => return Ok(None),
        };
        check_endpoint(&endpoint)?;
        let mut config = TelemetryConfig::new(endpoint, protocol);
        if let Some(name) = var("OTEL_SERVICE_NAME") {
            config.service_name = name.trim().to_string();
        }
        if let Some(size) = var("OTEL_BSP_MAX_QUEUE_SIZE") {
            config.queue_size = positive("OTEL_BSP_MAX_QUEUE_SIZE", &size)?;
        }
        if let Some(millis) = var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", v))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_TIMEOUT").map(|v| ("OTEL_EXPORTER_OTLP_TIMEOUT", v))
            })
        {
            config.export_timeout = Duration::from_millis(positive(millis.0, &millis.1)? as u64);
        }
        Ok(Some(config))
    }
}

fn positive(variable: &str, value: &str) -> Result<usize, TelemetryError> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| TelemetryError::Number {
            variable: variable.to_string(),
            value: value.to_string(),
        })
}

/// Refuses what the exporters would only fail on later, at the first export.
pub(crate) fn check_endpoint(endpoint: &str) -> Result<(), TelemetryError> {
    let refuse = |reason: &str| TelemetryError::Endpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(endpoint).map_err(|error| refuse(&error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse("the scheme must be http or https"));
    }
    if url.host().is_none() {
        return Err(refuse("it has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Option<TelemetryConfig>, TelemetryError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetryConfig::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn no_endpoint_means_no_tracing() {
        assert_eq!(config(&[]).unwrap(), None);
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap(),
            None
        );
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap(),
            None
        );
    }

    #[test]
    fn http_protobuf_is_the_default_and_gets_the_traces_path() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(c.service_name, "rivulet");
    }

    #[test]
    fn grpc_endpoints_are_used_as_given() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "edge-broker"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint, "http://collector:4317");
        assert_eq!(c.service_name, "edge-broker");
    }

    #[test]
    fn the_traces_variables_win() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://traces:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "https://traces:9999/custom");
    }

    #[test]
    fn disabled_sdk_or_no_exporter_leaves_tracing_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(
            config(&[endpoint, ("OTEL_SDK_DISABLED", "true")]).unwrap(),
            None
        );
        assert_eq!(
            config(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let error = config(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
        assert!(error.to_string().contains("http/json"), "{error}");
        let error = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).unwrap_err();
        assert!(matches!(error, TelemetryError::Endpoint { .. }), "{error}");
        let error = config(&[endpoint, ("OTEL_BSP_MAX_QUEUE_SIZE", "lots")]).unwrap_err();
        assert!(
            error.to_string().contains("OTEL_BSP_MAX_QUEUE_SIZE"),
            "{error}"
        );
    }

    #[test]
    fn queue_size_and_timeout_come_from_the_standard_variables() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.queue_size, 64);
        assert_eq!(c.export_timeout, Duration::from_millis(2500));
    }
}
