//! The event journal over the resource API, behind its tokens (viewers may read):
//!
//! - `GET /journal/events?broker=NS/NAME&outcome=O&since=D&type=T&source=S&limit=N`: the
//!   newest events that match, newest first;
//! - `GET /journal/events/{id}`: every recorded path of events with that id;
//! - `GET /journal/tap/{namespace}/{broker}?filter=CESQL`: server-sent events, one `event`
//!   per event the broker answers (with its status) and one `step` per trigger's verdict
//!   and delivery of those events, as they happen.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::status_error;
use crate::runtime::Context;
use crate::runtime::routes::{HttpRoutes, Listener};
use rivulet_broker::journal::{EventPath, Journal, ListQuery, Summary, TapItem};
use rivulet_channels::Envelope;
use rivulet_core::event::Event;
use rivulet_core::filter::Filter;

inventory::submit! {
    HttpRoutes { listener: Listener::Api, build: routes }
}

/// Live taps open at once at most.
pub const MAX_TAPS: usize = 32;
/// The most events a list returns.
pub const LIST_LIMIT: usize = 1000;
/// Events a tap remembers having shown, to follow with their steps.
const TAP_REMEMBERED: usize = 4096;

#[derive(Clone)]
struct JournalApi {
    ctx: Arc<Context>,
    taps: Arc<AtomicUsize>,
}

fn routes(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/journal/events", get(list))
        .route("/journal/events/{id}", get(trace))
        .route("/journal/tap/{namespace}/{broker}", get(tap))
        .with_state(JournalApi {
            ctx,
            taps: Arc::default(),
        })
}

impl JournalApi {
    fn journal(&self) -> Option<&Journal> {
        let journal = &self.ctx.dispatch.journal;
        journal.enabled().then_some(journal)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    namespace: Option<String>,
    /// `NAME` (in `namespace`, default `default`) or `NAMESPACE/NAME`.
    broker: Option<String>,
    outcome: Option<String>,
    /// A duration back from now (`10m`, `2h`) or an RFC 3339 time.
    since: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    source: Option<String>,
    limit: Option<usize>,
}

fn journal_off() -> Response {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the event journal is off on this server (started with --no-journal)",
    )
}

fn bad_request(message: impl Into<String>) -> Response {
    status_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// Milliseconds since the epoch of a `since` parameter.
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return Ok(now_ms.saturating_sub(duration.as_millis() as u64));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis().max(0) as u64)
        .map_err(|_| format!("since {text:?} is neither a duration (10m, 2h) nor an RFC 3339 time"))
}

async fn list(
    State(api): State<JournalApi>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(journal) = api.journal() else {
        return journal_off();
    };
    let Query(params) = match params {
        Ok(params) => params,
        Err(error) => {
            return bad_request(format!(
                "{error}; known parameters: namespace, broker, outcome, since, type, source, limit"
            ));
        }
    };
    let (namespace, broker) = match params.broker.as_deref().map(|b| b.split_once('/')) {
        Some(Some((namespace, broker))) => (Some(namespace.to_string()), Some(broker.to_string())),
        Some(None) => (
            Some(params.namespace.clone().unwrap_or_else(|| "default".into())),
            params.broker.clone(),
        ),
        None => (params.namespace.clone(), None),
    };
    let outcome = match params.outcome.as_deref().map(|o| (o, Summary::parse(o))) {
        None => None,
        Some((_, Some(outcome))) => Some(outcome),
        Some((text, None)) => {
            return bad_request(format!(
                "unknown outcome {text:?}; one of: {}",
                Summary::names()
            ));
        }
    };
    let now = rivulet_broker::journal::record::now_millis();
    let since = match params.since.as_deref().map(|s| parse_since(s, now)) {
        None => None,
        Some(Ok(since)) => Some(since),
        Some(Err(message)) => return bad_request(message),
    };
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > LIST_LIMIT {
        return bad_request(format!("limit must be between 1 and {LIST_LIMIT}"));
    }
    journal.flush().await;
    let mut events = journal.list(&ListQuery {
        namespace,
        broker,
        outcome,
        since,
        event_type: params.ty,
        source: params.source,
        limit,
    });
    work_out_verdicts(&api.ctx, &mut events).await;
    axum::Json(json!({ "events": events })).into_response()
}

async fn trace(State(api): State<JournalApi>, Path(id): Path<String>) -> Response {
    let Some(journal) = api.journal() else {
        return journal_off();
    };
    journal.flush().await;
    let mut paths = journal.trace(&id);
    work_out_verdicts(&api.ctx, &mut paths).await;
    if paths.is_empty() {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "no event with id {id:?} in the journal: it never reached a broker here, or it is older than the journal keeps (--journal-retention, --journal-max-bytes)"
            ),
        );
    }
    axum::Json(json!({ "events": paths })).into_response()
}

/// Adds the verdicts of running triggers that have no step of an event: channels that
/// route by filter never hand an event to a trigger whose filter refuses it, and a trigger
/// that accepts it may not be done yet.
async fn work_out_verdicts(ctx: &Context, paths: &mut [EventPath]) {
    let mut triggers: HashMap<(String, String), Vec<_>> = HashMap::new();
    for path in paths.iter_mut() {
        let key = (path.namespace.clone(), path.broker.clone());
        if !triggers.contains_key(&key) {
            let running = ctx.running_triggers(&key.0, &key.1).await;
            triggers.insert(key.clone(), running);
        }
        let Some(attributes) = path.attributes() else {
            continue;
        };
        // Refused at ingress, never stored; or refusals recorded past the listed few, which
        // only consumers that see every event record: nothing to work out.
        if path.outcome == Summary::Refused
            || path.outcome == Summary::NotStored
            || path.refused.count as usize > path.refused.triggers.len()
        {
            continue;
        }
        let envelope = Envelope {
            attributes: attributes.to_vec(),
            data: None,
            typed: Vec::new(),
        };
        let seen = path.triggers_seen();
        let mut verdicts = Vec::new();
        for dispatch in &triggers[&key] {
            if seen.contains(dispatch.trigger.as_str())
                || path.refused.triggers.contains(&dispatch.trigger)
            {
                continue;
            }
            let refused_by = (!dispatch.filter.evaluate(&envelope).is_match())
                .then(|| dispatch.filter.refused_by(&envelope));
            verdicts.push((dispatch.trigger.clone(), refused_by));
        }
        verdicts.sort();
        for (trigger, refused_by) in verdicts {
            path.add_worked_out(&trigger, refused_by);
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TapParams {
    /// A CESQL expression; only events it is true for are shown.
    filter: Option<String>,
}

/// Releases a tap's slot when its stream ends.
struct TapSlot(Arc<AtomicUsize>);

impl Drop for TapSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct TapState {
    receiver: broadcast::Receiver<TapItem>,
    journal: Journal,
    namespace: String,
    broker: String,
    filter: Option<Filter>,
    shown: HashSet<(String, String)>,
    shown_order: VecDeque<(String, String)>,
    pending: VecDeque<SseEvent>,
    _slot: TapSlot,
}

impl TapState {
    fn remember(&mut self, event: &Event) {
        let key = (event.source.clone(), event.id.clone());
        if self.shown.insert(key.clone()) {
            self.shown_order.push_back(key);
            if self.shown_order.len() > TAP_REMEMBERED
                && let Some(old) = self.shown_order.pop_front()
            {
                self.shown.remove(&old);
            }
        }
    }

    fn take(&mut self, item: TapItem) {
        match item {
            TapItem::Arrived {
                namespace,
                broker,
                status,
                events,
            } if *namespace == *self.namespace && *broker == *self.broker => {
                for event in events.iter() {
                    if let Some(filter) = &self.filter
                        && !filter.evaluate(event).is_match()
                    {
                        continue;
                    }
                    self.remember(event);
                    let (_, body) = rivulet_core::event::to_http_structured(event);
                    let payload = match serde_json::from_slice::<serde_json::Value>(&body) {
                        Ok(value) => json!({"status": status, "event": value}),
                        Err(_) => json!({"status": status, "id": event.id, "source": event.source}),
                    };
                    self.pending
                        .push_back(SseEvent::default().event("event").data(payload.to_string()));
                }
            }
            TapItem::Step { event, step }
                if event.namespace == self.namespace
                    && event.broker == self.broker
                    && self
                        .shown
                        .contains(&(event.source.clone(), event.id.clone())) =>
            {
                let payload = json!({"id": event.id, "source": event.source, "step": step});
                self.pending
                    .push_back(SseEvent::default().event("step").data(payload.to_string()));
            }
            _ => {}
        }
    }
}

async fn tap(
    State(api): State<JournalApi>,
    Path((namespace, broker)): Path<(String, String)>,
    params: Result<Query<TapParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(journal) = api.journal().cloned() else {
        return journal_off();
    };
    let Query(params) = match params {
        Ok(params) => params,
        Err(error) => return bad_request(format!("{error}; the one parameter is filter (CESQL)")),
    };
    if api.ctx.brokers.get(&namespace, &broker).is_none() {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("broker {namespace}/{broker} not found (or not ready)"),
        );
    }
    let filter = match params
        .filter
        .as_deref()
        .map(rivulet_core::filter::compile_cesql)
    {
        None => None,
        Some(Ok(expression)) => Some(Filter::Cesql(Arc::new(expression))),
        Some(Err(message)) => return bad_request(format!("filter is not valid CESQL: {message}")),
    };
    if api.taps.fetch_add(1, Ordering::SeqCst) >= MAX_TAPS {
        api.taps.fetch_sub(1, Ordering::SeqCst);
        return status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("{MAX_TAPS} taps are open already; close one and try again"),
        );
    }
    let slot = TapSlot(api.taps.clone());
    let Some(receiver) = journal.tap() else {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the event journal is off",
        );
    };
    let state = TapState {
        receiver,
        journal,
        namespace,
        broker,
        filter,
        shown: HashSet::new(),
        shown_order: VecDeque::new(),
        pending: VecDeque::new(),
        _slot: slot,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), state));
            }
            match state.receiver.recv().await {
                Ok(item) => state.take(item),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    state.journal.tap_missed(missed);
                    let payload = json!({"missed": missed}).to_string();
                    return Some((Ok(SseEvent::default().event("missed").data(payload)), state));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        assert_eq!(parse_since("10s", 100_000), Ok(90_000));
        assert_eq!(parse_since("1970-01-01T00:00:01Z", 0), Ok(1_000));
        assert!(parse_since("yesterday", 0).unwrap_err().contains("neither"));
    }
}
