//! Event rates for the graph's edges, read from the counters the data path already keeps.
//!
//! prometheus-client's families cannot be iterated, so the table knows which series to read
//! from the live objects: it follows the store's changes (an object's series come when it is
//! applied and go when it is deleted) and reads each series every [`TICK`] with the family's
//! lookup, which never creates a series. Nothing is added to the data path.
//!
//! Each series keeps only the readings where its total changed, plus the last one before the
//! window, so an idle series costs one reading and a busy one at most a window's worth.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;

use rivulet_core::metrics::{
    AdapterOutcomeLabels, DeliveryLabels, IngressLabels, Metrics, TriggerLabels,
};
use rivulet_core::resources::{KindInfo, kinds};
use rivulet_store::{StoreEvent, object_key};

use super::build::{Role, role_of};
use crate::runtime::Context;

/// Rates are averaged over this span (or since the series appeared, when that is later).
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// How often each series is read.
const TICK: Duration = Duration::from_secs(5);

/// The most series measured; beyond it, new series go without a rate (and are counted).
const MAX_SERIES: usize = 100_000;

/// A rate shorter than this is mostly noise; it is reported once the series is older.
const MIN_SPAN: Duration = Duration::from_secs(1);

/// One counter series of one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Series {
    pub counter: Counter,
    /// The object's kind, for the source and sink counters' `kind` label.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// Which counter a series is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// `rivulet_ingress_events{outcome="accepted"}` of a broker.
    BrokerAccepted,
    /// `rivulet_trigger_filter_matched_events` of a trigger.
    TriggerMatched,
    /// `rivulet_trigger_deliveries{outcome="delivered"}`.
    TriggerDelivered,
    /// `rivulet_trigger_deliveries{outcome="dead_lettered"}`.
    TriggerDeadLettered,
    /// `rivulet_source_events{outcome="sent"}`.
    SourceSent,
    /// `rivulet_source_events{outcome="dead_lettered"}`.
    SourceDeadLettered,
    /// `rivulet_sink_events{outcome="accepted"}`.
    SinkAccepted,
}

impl Series {
    pub fn new(counter: Counter, kind: &'static str, namespace: &str, name: &str) -> Self {
        Series {
            counter,
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The counter's total now; a series that does not exist yet has seen nothing.
    fn total(&self, metrics: &Metrics) -> u64 {
        let trigger = || TriggerLabels {
            namespace: self.namespace.clone(),
            trigger: self.name.clone(),
        };
        let delivery = |outcome| DeliveryLabels {
            namespace: self.namespace.clone(),
            trigger: self.name.clone(),
            outcome,
        };
        let adapter = |outcome| AdapterOutcomeLabels {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            outcome,
        };
        let value = match self.counter {
            Counter::BrokerAccepted => metrics
                .ingress_events
                .get(&IngressLabels {
                    namespace: self.namespace.clone(),
                    broker: self.name.clone(),
                    outcome: "accepted",
                })
                .map(|c| c.get()),
            Counter::TriggerMatched => metrics.filter_matched.get(&trigger()).map(|c| c.get()),
            Counter::TriggerDelivered => metrics
                .deliveries
                .get(&delivery("delivered"))
                .map(|c| c.get()),
            Counter::TriggerDeadLettered => metrics
                .deliveries
                .get(&delivery("dead_lettered"))
                .map(|c| c.get()),
            Counter::SourceSent => metrics.source_events.get(&adapter("sent")).map(|c| c.get()),
            Counter::SourceDeadLettered => metrics
                .source_events
                .get(&adapter("dead_lettered"))
                .map(|c| c.get()),
            Counter::SinkAccepted => metrics
                .sink_events
                .get(&adapter("accepted"))
                .map(|c| c.get()),
        };
        value.unwrap_or(0)
    }
}

/// The series an object of `kind` has counters in.
pub fn series_of(kind: &'static KindInfo, namespace: &str, name: &str) -> Vec<Series> {
    let counters: &[Counter] = match role_of(kind) {
        Some(Role::Broker) => &[Counter::BrokerAccepted],
        Some(Role::Trigger) => &[
            Counter::TriggerMatched,
            Counter::TriggerDelivered,
            Counter::TriggerDeadLettered,
        ],
        Some(Role::Source) => &[Counter::SourceSent, Counter::SourceDeadLettered],
        Some(Role::Sink) => &[Counter::SinkAccepted],
        // A channel kind's ingress counts under its key (the generic Channel has none).
        Some(Role::Channel) if kind.kind != "Channel" => &[Counter::BrokerAccepted],
        _ => &[],
    };
    // Subscriptions and channels count under the names the runtime gives them.
    let name = match role_of(kind) {
        Some(Role::Trigger) if kind.kind == "Subscription" => format!("subscription:{name}"),
        Some(Role::Channel) => {
            format!("{name}{}", rivulet_core::resources::CHANNEL_NAME_SUFFIX)
        }
        _ => name.to_string(),
    };
    counters
        .iter()
        .map(|counter| Series::new(*counter, kind.kind, namespace, &name))
        .collect()
}

/// The readings of one series: oldest first, each where the total changed, the first one
/// the total when the series was first seen.
#[derive(Debug)]
struct History {
    readings: VecDeque<(Instant, u64)>,
}

impl History {
    fn new(at: Instant, total: u64) -> Self {
        History {
            readings: VecDeque::from([(at, total)]),
        }
    }

    fn record(&mut self, at: Instant, total: u64) {
        if self.readings.back().is_none_or(|(_, last)| *last != total) {
            self.readings.push_back((at, total));
        }
        // The last reading at or before the window's start stands for the total there.
        if let Some(start) = at.checked_sub(RATE_WINDOW) {
            while self.readings.len() > 1 && self.readings[1].0 <= start {
                self.readings.pop_front();
            }
        }
    }

    /// Events per second from the window's start (or the first reading, if later) to `now`,
    /// when the total is `total`.
    fn rate(&self, now: Instant, total: u64) -> Option<f64> {
        let start = now.checked_sub(RATE_WINDOW);
        let anchor = start
            .and_then(|start| self.readings.iter().rev().find(|(at, _)| *at <= start))
            .or_else(|| self.readings.front())?;
        let span = match start {
            Some(start) if anchor.0 <= start => RATE_WINDOW,
            _ => now.saturating_duration_since(anchor.0),
        };
        if span < MIN_SPAN {
            return None;
        }
        Some(total.saturating_sub(anchor.1) as f64 / span.as_secs_f64())
    }
}

#[derive(Default)]
struct Table {
    series: HashMap<Series, History>,
    /// Series refused because the table was full.
    untracked: u64,
}

/// Readings of the series of every live object, for rates.
pub struct RateTable {
    metrics: Arc<Metrics>,
    table: Mutex<Table>,
}

impl RateTable {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RateTable {
            metrics,
            table: Mutex::default(),
        }
    }

    /// Starts measuring `series` (from its total now) unless it is measured already.
    pub fn track(&self, series: Series) {
        let total = series.total(&self.metrics);
        let mut table = self.table.lock().expect("lock poisoned");
        if table.series.contains_key(&series) {
            return;
        }
        if table.series.len() >= MAX_SERIES {
            table.untracked += 1;
            return;
        }
        table
            .series
            .insert(series, History::new(Instant::now(), total));
    }

    /// Stops measuring an object's series.
    pub fn forget(&self, series: &[Series]) {
        let mut table = self.table.lock().expect("lock poisoned");
        for series in series {
            table.series.remove(series);
        }
    }

    /// Measures exactly `live`: new series start, series of deleted objects go.
    fn replace_all(&self, live: Vec<Series>) {
        let live: std::collections::HashSet<Series> = live.into_iter().collect();
        {
            let mut table = self.table.lock().expect("lock poisoned");
            table.series.retain(|series, _| live.contains(series));
            table.untracked = 0;
        }
        for series in live {
            self.track(series);
        }
    }

    /// Reads every series once.
    fn sample(&self) {
        let now = Instant::now();
        let mut table = self.table.lock().expect("lock poisoned");
        for (series, history) in table.series.iter_mut() {
            history.record(now, series.total(&self.metrics));
        }
    }

    /// The rate (when measured long enough) and total of a series.
    pub fn rate(&self, series: &Series) -> (Option<f64>, u64) {
        let total = series.total(&self.metrics);
        let table = self.table.lock().expect("lock poisoned");
        let rate = table
            .series
            .get(series)
            .and_then(|history| history.rate(Instant::now(), total));
        (rate, total)
    }

    /// Series refused because the table was full.
    pub fn untracked(&self) -> u64 {
        self.table.lock().expect("lock poisoned").untracked
    }
}

/// Reads the table's series every [`TICK`] and follows the store's changes, until the
/// runtime is dropped or the store stops announcing.
pub fn spawn_sampler(ctx: &Arc<Context>, table: Arc<RateTable>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Subscribed before the first listing, so nothing applied in between is missed.
    let changes = ctx.store.watch();
    let ctx = Arc::downgrade(ctx);
    runtime.spawn(sample(ctx, table, changes));
}

async fn sample(
    ctx: Weak<Context>,
    table: Arc<RateTable>,
    mut changes: tokio::sync::broadcast::Receiver<StoreEvent>,
) {
    let mut relist = true;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if relist {
            let Some(ctx) = ctx.upgrade() else { return };
            match live_series(&ctx).await {
                Ok(live) => {
                    table.replace_all(live);
                    relist = false;
                }
                Err(error) => {
                    tracing::debug!(%error, "graph rates: listing objects failed; trying again")
                }
            }
        }
        tokio::select! {
            _ = tick.tick() => {
                if ctx.strong_count() == 0 {
                    return;
                }
                table.sample();
            }
            change = changes.recv() => match change {
                Ok(StoreEvent::Applied { kind, object }) => {
                    let (namespace, name) = object_key(&object);
                    for series in series_of(kind, &namespace, &name) {
                        table.track(series);
                    }
                }
                Ok(StoreEvent::Deleted { kind, object }) => {
                    let (namespace, name) = object_key(&object);
                    table.forget(&series_of(kind, &namespace, &name));
                }
                Err(RecvError::Lagged(_)) => relist = true,
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// The series of every object in the store.
async fn live_series(ctx: &Context) -> Result<Vec<Series>, rivulet_store::StoreError> {
    let mut live = Vec::new();
    for kind in kinds() {
        if series_of(kind, "", "").is_empty() {
            continue;
        }
        // A store that keeps objects in memory gives their keys without parsing them.
        let keys = match ctx.store.list_local_keys(kind).await? {
            Some(keys) => keys,
            None => ctx
                .store
                .list(kind, None)
                .await?
                .iter()
                .map(object_key)
                .collect(),
        };
        for (namespace, name) in keys {
            live.extend(series_of(kind, &namespace, &name));
        }
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_covers_the_window_or_the_time_since_the_series_appeared() {
        let t0 = Instant::now();
        let mut history = History::new(t0, 0);
        // Too soon to tell.
        assert_eq!(history.rate(t0 + Duration::from_millis(500), 3), None);
        // 20 events in the first 10 s.
        history.record(t0 + Duration::from_secs(5), 20);
        history.record(t0 + Duration::from_secs(10), 20);
        assert_eq!(history.rate(t0 + Duration::from_secs(10), 20), Some(2.0));
        // Nothing more for a long while: the window slides past the burst.
        for s in (15..=200).step_by(5) {
            history.record(t0 + Duration::from_secs(s), 20);
        }
        assert_eq!(history.rate(t0 + Duration::from_secs(200), 20), Some(0.0));
        // Only readings where the total changed are kept, and one before the window.
        assert!(history.readings.len() <= 2, "{:?}", history.readings);
        // 60 more events within the last minute.
        history.record(t0 + Duration::from_secs(230), 80);
        assert_eq!(history.rate(t0 + Duration::from_secs(260), 80), Some(1.0));
    }

    #[test]
    fn series_come_from_the_counters_and_vanish_with_their_object() {
        let metrics = Arc::new(Metrics::new());
        let table = RateTable::new(metrics.clone());
        let series = Series::new(Counter::TriggerMatched, "Trigger", "default", "t");
        // Reading a series never creates it.
        assert_eq!(table.rate(&series), (None, 0));
        assert!(
            metrics
                .filter_matched
                .get(&TriggerLabels {
                    namespace: "default".into(),
                    trigger: "t".into()
                })
                .is_none()
        );
        table.track(series.clone());
        metrics
            .filter_matched
            .get_or_create(&TriggerLabels {
                namespace: "default".into(),
                trigger: "t".into(),
            })
            .inc_by(7);
        assert_eq!(table.rate(&series).1, 7);
        table.forget(std::slice::from_ref(&series));
        assert!(table.table.lock().unwrap().series.is_empty());
    }
}
