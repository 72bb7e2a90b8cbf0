//! Knative's PingSource (`sources.knative.dev/v1`): sends a fixed event on a cron schedule.
//!
//! `schedule` takes five-field cron, six fields with seconds first, the `@hourly`-style
//! descriptors and `@every <duration>`; `timezone` is an IANA zone (UTC when unset). The last
//! tick fired is kept in the source's state folder, and no tick at or before it fires again,
//! so a restart never sends a tick twice. Ticks missed while the server was down are not
//! sent later, as in Knative.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rivulet_core::knative_source;
use rivulet_core::resources::apply;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::{
    CloudEventAttributes, Prepared, SourceAdapter, SourceContext, SourceError, SourceKey,
    SourceKind, SourceSpec, SourceStatus,
};
use rivulet_control::runtime::Context;
use rivulet_core::event::{Event, SpecVersion};
use rivulet_core::resources::Condition;
use rivulet_core::resources::validation::{ValidateSpec, ValidationError};

/// The event type of every ping.
pub const PING_EVENT_TYPE: &str = "dev.knative.sources.ping";
/// Deliveries of one source in flight at most; ticks beyond are counted as failed.
const MAX_IN_FLIGHT: usize = 256;

/// Knative `PingSource`.
#[apply(knative_source!)]
#[kube(group = "sources.knative.dev", version = "v1", kind = "PingSource")]
#[kube(printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PingSourceSpec {
    /// Cron schedule; `* * * * *` (every minute) when unset.
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in; UTC when unset.
    pub timezone: Option<String>,
    /// Media type of `data` or `dataBase64` (the event's `datacontenttype`).
    pub content_type: Option<String>,
    /// The event data, as text.
    pub data: Option<String>,
    /// The event data, base64-encoded; not together with `data`.
    pub data_base64: Option<String>,
    /// Where events go and what is added to them, as every source has.
    #[serde(flatten)]
    pub source: SourceSpec,
}

crate::register_source! {
    PingSource {
        group: "sources.knative.dev",
        version: "v1",
        plural: "pingsources",
    }
}

/// Knative's `v1beta2` PingSource has the fields of `v1`; older samples are written in it.
const V1BETA2: &str = "v1beta2";

inventory::submit! {
    rivulet_core::resources::CrdVersion { crd: v1beta2_crd }
}

inventory::submit! {
    rivulet_core::resources::ServedVersion {
        group: "sources.knative.dev",
        version: V1BETA2,
        kind: "PingSource",
        plural: "pingsources",
        stored_version: "v1",
        upgrade: |object| Ok(with_api_version(object, "sources.knative.dev/v1")),
        downgrade: |object| with_api_version(object, "sources.knative.dev/v1beta2"),
    }
}

/// The `v1` schema served as `v1beta2` too; the API server converts between them by setting
/// apiVersion alone, since their fields are the same.
fn v1beta2_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = <PingSource as kube::CustomResourceExt>::crd();
    for version in &mut crd.spec.versions {
        version.name = V1BETA2.into();
        version.storage = false;
    }
    crd
}

fn with_api_version(mut object: Value, api_version: &str) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), Value::from(api_version));
    }
    object
}

/// When a PingSource fires.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<croner::Cron>),
    /// `@every <duration>`: fixed intervals, whole seconds (at least one).
    Every(Duration),
}

impl Schedule {
    /// Parses Knative's schedule syntax. The error says what is wrong.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("@every") {
            let duration = parse_go_duration(rest.trim())?;
            // Sub-second intervals round up to a second, as Knative's cron library does.
            let seconds = duration.as_secs().max(1);
            return Ok(Schedule::Every(Duration::from_secs(seconds)));
        }
        if text.starts_with("CRON_TZ=") || text.starts_with("TZ=") {
            return Err("set the time zone in spec.timezone, not in the schedule".into());
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| {
                format!(
                    "{text:?} is not a cron schedule ({e}); use five fields (minute hour day-of-month month day-of-week), six with seconds first, @hourly/@daily/... or @every 10s"
                )
            })?;
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// The first tick strictly after `after` (read in `zone`), never at or before
    /// `last_fired`. For `@every`, ticks follow the last one fired while it is recent.
    pub fn next_tick(
        &self,
        after: DateTime<Utc>,
        zone: Tz,
        last_fired: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let from = match last_fired {
            Some(last) if last > after => last,
            _ => after,
        };
        match self {
            Schedule::Cron(cron) => cron
                .find_next_occurrence(&from.with_timezone(&zone), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Schedule::Every(interval) => {
                let interval = chrono::Duration::from_std(*interval).ok()?;
                match last_fired {
                    Some(last) if last + interval > from => Some(last + interval),
                    _ => Some(from + interval),
                }
            }
        }
    }
}

/// Parses a Go duration (`1h30m`, `10s`, `1.5m`, `500ms`), the syntax of `@every`.
fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("@every {text:?}: not a duration; write e.g. 10s, 1m, 1h30m");
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let number: f64 = rest[..number_end].parse().map_err(|_| invalid())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("@every {text:?}: the interval must be longer than zero"))
}

/// The IANA zone named by `timezone`, UTC when unset.
pub fn parse_zone(timezone: Option<&str>) -> Result<Tz, String> {
    match timezone {
        None | Some("") => Ok(Tz::UTC),
        Some(name) => name.parse::<Tz>().map_err(|_| {
            format!(
                "{name:?} is not an IANA time zone name (e.g. Europe/Paris, America/New_York, UTC)"
            )
        }),
    }
}

impl ValidateSpec for PingSourceSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if let Some(schedule) = &self.schedule {
            Schedule::parse(schedule).map_err(|m| ValidationError::new("spec.schedule", m))?;
        }
        parse_zone(self.timezone.as_deref())
            .map_err(|m| ValidationError::new("spec.timezone", m))?;
        if self.data.is_some() && self.data_base64.is_some() {
            return Err(ValidationError::new(
                "spec.dataBase64",
                "data and dataBase64 are mutually exclusive; set one of them",
            ));
        }
        if let Some(encoded) = &self.data_base64 {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| {
                    ValidationError::new("spec.dataBase64", format!("is not valid base64: {e}"))
                })?;
        }
        if let Some(content_type) = &self.content_type
            && (content_type.is_empty() || !content_type.contains('/'))
        {
            return Err(ValidationError::new(
                "spec.contentType",
                format!("{content_type:?} is not a media type (e.g. application/json)"),
            ));
        }
        self.source.validate()?;
        Ok(())
    }
}

impl SourceKind for PingSource {
    const KIND: &'static str = "PingSource";
    // Each replica ticking would send every tick several times.
    const RUNS_ONCE: bool = true;

    fn source(&self) -> &SourceSpec {
        &self.spec.source
    }

    async fn prepare(&self, key: &SourceKey, _ctx: &Arc<Context>) -> Result<Prepared, Condition> {
        let spec = &self.spec;
        let invalid = |message: String| Condition::new("Deployed", false, "InvalidSpec", message);
        let schedule_text = spec.schedule.clone().unwrap_or_else(|| "* * * * *".into());
        let schedule = Schedule::parse(&schedule_text).map_err(invalid)?;
        let zone = parse_zone(spec.timezone.as_deref()).map_err(invalid)?;
        let data = match (&spec.data, &spec.data_base64) {
            (Some(text), _) => Some(Bytes::from(text.clone())),
            (None, Some(encoded)) => Some(Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| invalid(format!("spec.dataBase64 is not valid base64: {e}")))?,
            )),
            (None, None) => None,
        };
        let source = event_source(&key.namespace, &key.name);
        let fingerprint = format!("{:?}", spec_without_sink(spec));
        Ok(Prepared {
            adapter: Arc::new(PingAdapter {
                schedule,
                zone,
                source: source.clone(),
                content_type: spec.content_type.clone(),
                data,
            }),
            fingerprint,
            ce_attributes: vec![CloudEventAttributes {
                type_: PING_EVENT_TYPE.into(),
                source,
            }],
            address: None,
            conditions: Vec::new(),
        })
    }
}

fn spec_without_sink(spec: &PingSourceSpec) -> PingSourceSpec {
    PingSourceSpec {
        source: SourceSpec::default(),
        ..spec.clone()
    }
}

/// The `source` attribute of a PingSource's events, as Knative writes it.
pub fn event_source(namespace: &str, name: &str) -> String {
    format!("/apis/v1/namespaces/{namespace}/pingsources/{name}")
}

/// The running schedule of one PingSource.
pub struct PingAdapter {
    schedule: Schedule,
    zone: Tz,
    source: String,
    content_type: Option<String>,
    data: Option<Bytes>,
}

impl PingAdapter {
    fn event(&self, tick: DateTime<Utc>) -> Event {
        Event {
            specversion: SpecVersion::V10,
            id: uuid::Uuid::new_v4().to_string(),
            source: self.source.clone(),
            ty: PING_EVENT_TYPE.into(),
            datacontenttype: self.content_type.clone(),
            dataschema: None,
            subject: None,
            time: Some(tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            datacontentencoding: None,
            extensions: Default::default(),
            data: self.data.clone(),
        }
    }
}

#[async_trait]
impl SourceAdapter for PingAdapter {
    async fn run(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let state = TickState::new(&ctx.state_dir);
        let mut last_fired = state.load()?;
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let deliveries = TaskTracker::new();
        loop {
            let Some(tick) = self.schedule.next_tick(Utc::now(), self.zone, last_fired) else {
                return Err(SourceError::Config(
                    "the schedule has no future tick".into(),
                ));
            };
            let wait = (tick - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = ctx.cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            // Recorded before sending: a tick is fired at most once, even across restarts.
            state.store(tick)?;
            last_fired = Some(tick);
            let event = self.event(tick);
            match in_flight.clone().try_acquire_owned() {
                Ok(permit) => {
                    let sink = ctx.sink.clone();
                    deliveries.spawn(async move {
                        // Failures are logged and counted by the sink client.
                        let _ = sink.send(event).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tracing::warn!(namespace = %ctx.key.namespace, source = %ctx.key.name, %tick,
                        "tick not sent: {MAX_IN_FLIGHT} deliveries to the sink are still in flight");
                    ctx.metrics
                        .source_events
                        .get_or_create(&ctx.key.labels().with_outcome("failed"))
                        .inc();
                }
            }
        }
        deliveries.close();
        if tokio::time::timeout(ctx.stop_grace, deliveries.wait())
            .await
            .is_err()
        {
            tracing::info!(namespace = %ctx.key.namespace, source = %ctx.key.name,
                "ping deliveries still retrying at stop; they go on in the background");
        }
        Ok(())
    }
}

/// The last tick fired, kept in a file so a restart does not fire it again.
struct TickState {
    file: PathBuf,
}

impl TickState {
    fn new(dir: &Path) -> Self {
        Self {
            file: dir.join("last-tick"),
        }
    }

    fn load(&self) -> Result<Option<DateTime<Utc>>, SourceError> {
        match std::fs::read_to_string(&self.file) {
            Ok(text) => Ok(DateTime::parse_from_rfc3339(text.trim())
                .ok()
                .map(|t| t.with_timezone(&Utc))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    fn store(&self, tick: DateTime<Utc>) -> Result<(), SourceError> {
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Written aside and renamed, so a crash leaves the old or the new time, never half.
        let temporary = self.file.with_extension("tmp");
        std::fs::write(
            &temporary,
            tick.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        )?;
        std::fs::rename(&temporary, &self.file)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rivulet_core::resources::validation::validate_resource;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_field_schedules_and_descriptors_parse() {
        for ok in [
            "* * * * *",
            "*/5 * * * * *",
            "0 9 * * MON-FRI",
            "@hourly",
            "@daily",
            "@every 10s",
            "@every 1h30m",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "@every",
            "@every 10x",
            "CRON_TZ=UTC * * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn five_fields_tick_on_the_minute_six_fields_on_the_second() {
        let minute = Schedule::parse("* * * * *").unwrap();
        let after = utc("2026-01-01T10:00:05.300Z");
        assert_eq!(
            minute.next_tick(after, Tz::UTC, None),
            Some(utc("2026-01-01T10:01:00Z"))
        );
        let second = Schedule::parse("* * * * * *").unwrap();
        assert_eq!(
            second.next_tick(after, Tz::UTC, None),
            Some(utc("2026-01-01T10:00:06Z"))
        );
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next_tick(after, Tz::UTC, None),
            Some(utc("2026-01-01T11:00:00Z"))
        );
    }

    #[test]
    fn the_schedule_is_read_in_the_time_zone() {
        let nine = Schedule::parse("0 9 * * *").unwrap();
        let zone = parse_zone(Some("Europe/Paris")).unwrap();
        // 09:00 in Paris in January is 08:00 UTC.
        assert_eq!(
            nine.next_tick(utc("2026-01-01T00:00:00Z"), zone, None),
            Some(utc("2026-01-01T08:00:00Z"))
        );
        assert!(parse_zone(Some("Mars/Olympus")).is_err());
        assert_eq!(parse_zone(None).unwrap(), Tz::UTC);
    }

    #[test]
    fn no_tick_at_or_before_the_last_fired_one() {
        let second = Schedule::parse("* * * * * *").unwrap();
        // The clock reads a little before the tick already fired (a restart within the
        // same second, or a clock step back): the next tick is after the fired one.
        let last = utc("2026-01-01T10:00:06Z");
        let now = utc("2026-01-01T10:00:05.999Z");
        assert_eq!(
            second.next_tick(now, Tz::UTC, Some(last)),
            Some(utc("2026-01-01T10:00:07Z"))
        );
        let every = Schedule::parse("@every 10s").unwrap();
        assert_eq!(
            every.next_tick(
                utc("2026-01-01T10:00:03Z"),
                Tz::UTC,
                Some(utc("2026-01-01T10:00:00Z"))
            ),
            Some(utc("2026-01-01T10:00:10Z")),
            "@every follows the last tick"
        );
        assert_eq!(
            every.next_tick(
                utc("2026-01-01T11:00:00Z"),
                Tz::UTC,
                Some(utc("2026-01-01T10:00:00Z"))
            ),
            Some(utc("2026-01-01T11:00:10Z")),
            "missed ticks are not caught up"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_go_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert!(parse_go_duration("0s").is_err());
        assert!(parse_go_duration("5").is_err());
        // Below a second rounds up to one.
        match Schedule::parse("@every 100ms").unwrap() {
            Schedule::Every(d) => assert_eq!(d, Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field_and_rule() {
        let spec = |extra: Value| -> Result<(), ValidationError> {
            let mut object = serde_json::json!({
                "apiVersion": "sources.knative.dev/v1",
                "kind": "PingSource",
                "metadata": {"name": "p", "namespace": "default"},
                "spec": {"schedule": "* * * * *", "sink": {"uri": "http://127.0.0.1:1/"}}
            });
            for (k, v) in extra.as_object().unwrap() {
                object["spec"][k] = v.clone();
            }
            validate_resource::<PingSource>(&object, None)
        };
        assert!(spec(serde_json::json!({"data": "x", "contentType": "text/plain"})).is_ok());
        let error = spec(serde_json::json!({"data": "x", "dataBase64": "eA=="})).unwrap_err();
        assert_eq!(error.field, "spec.dataBase64");
        assert!(error.message.contains("mutually exclusive"));
        assert_eq!(
            spec(serde_json::json!({"dataBase64": "%%%"}))
                .unwrap_err()
                .field,
            "spec.dataBase64"
        );
        assert_eq!(
            spec(serde_json::json!({"schedule": "nope"}))
                .unwrap_err()
                .field,
            "spec.schedule"
        );
        assert_eq!(
            spec(serde_json::json!({"timezone": "Nowhere/Else"}))
                .unwrap_err()
                .field,
            "spec.timezone"
        );
        assert_eq!(
            spec(serde_json::json!({"ceOverrides": {"extensions": {"Upper": "x"}}}))
                .unwrap_err()
                .field,
            "spec.ceOverrides.extensions[Upper]"
        );
        assert_eq!(
            spec(serde_json::json!({"jsonData": "{}"}))
                .unwrap_err()
                .field,
            "spec.jsonData"
        );
    }

    #[test]
    fn tick_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = TickState::new(&dir.path().join("a/b"));
        assert_eq!(state.load().unwrap(), None);
        let tick = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 6).unwrap();
        state.store(tick).unwrap();
        assert_eq!(state.load().unwrap(), Some(tick));
    }
}
