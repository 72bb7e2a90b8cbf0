//! The journal's memory: each event's path, found by id, evicted oldest first when past the
//! retention or the size bound.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::record::{EventRef, Millis, Outcome, Step, Summary};

/// Trigger names listed per refusing filter kind; the rest are only counted.
const REFUSING_TRIGGERS_LISTED: usize = 8;

/// Filters that refused an event, counted by kind, with the first triggers named.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Refusals {
    pub count: u32,
    pub by_filter: BTreeMap<String, u32>,
    /// The first few refusing triggers (all of them when few).
    pub triggers: Vec<String>,
    /// How many of `count` were worked out when asked, from the trigger's filter as it is
    /// now: channels that route by filter never hand an event to a trigger that refuses it.
    #[serde(skip_serializing_if = "is_zero")]
    pub worked_out: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Everything the journal holds about one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventPath {
    pub namespace: String,
    pub broker: String,
    pub id: String,
    pub source: String,
    /// When the first step was recorded.
    pub first_at: Millis,
    pub outcome: Summary,
    /// In the order they were recorded, refusals left out (see `refused`).
    pub steps: Vec<Step>,
    #[serde(skip_serializing_if = "refusals_empty")]
    pub refused: Refusals,
    /// Triggers whose filter accepts the event and that have not finished with it yet
    /// (worked out when asked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

fn refusals_empty(refusals: &Refusals) -> bool {
    refusals.count == 0
}

impl EventPath {
    fn new(event: EventRef, at: Millis) -> Self {
        EventPath {
            namespace: event.namespace,
            broker: event.broker,
            id: event.id,
            source: event.source,
            first_at: at,
            outcome: Summary::Accepted,
            steps: Vec::new(),
            refused: Refusals::default(),
            pending: Vec::new(),
        }
    }

    /// The triggers that have a step of this event.
    pub fn triggers_seen(&self) -> std::collections::HashSet<&str> {
        self.steps
            .iter()
            .filter_map(|step| match step {
                Step::Delivery { trigger, .. } | Step::Dropped { trigger, .. } => {
                    Some(trigger.as_str())
                }
                _ => None,
            })
            .collect()
    }

    /// The event's context attributes as recorded at arrival.
    pub fn attributes(&self) -> Option<&[(String, String)]> {
        self.steps.iter().find_map(|step| match step {
            Step::Arrived { attributes, .. } if !attributes.is_empty() => {
                Some(attributes.as_slice())
            }
            _ => None,
        })
    }

    /// Adds the verdict of a trigger that has no step of this event, worked out now: a
    /// refusal by its `filter` kind, or (`None`) that it accepts the event and is not done.
    pub fn add_worked_out(&mut self, trigger: &str, refused_by: Option<&str>) {
        match refused_by {
            Some(filter) => {
                self.add(Step::Refused {
                    at: self.first_at,
                    trigger: trigger.to_string(),
                    filter: filter.to_string(),
                });
                self.refused.worked_out += 1;
            }
            None => {
                self.pending.push(trigger.to_string());
                self.outcome = self.summarise();
            }
        }
    }

    fn add(&mut self, step: Step) {
        match step {
            Step::Refused {
                trigger, filter, ..
            } => {
                self.refused.count += 1;
                *self.refused.by_filter.entry(filter).or_default() += 1;
                if self.refused.triggers.len() < REFUSING_TRIGGERS_LISTED {
                    self.refused.triggers.push(trigger);
                }
            }
            // In time order: a trigger may record its delivery before ingress has recorded
            // the arrival it began before.
            step => {
                let at = step.at();
                let position = self.steps.partition_point(|s| s.at() <= at);
                self.steps.insert(position, step);
            }
        }
        self.outcome = self.summarise();
    }

    /// The worst that happened to the event anywhere; an event some trigger still has to
    /// deliver is `accepted` until then.
    fn summarise(&self) -> Summary {
        let mut worst: Option<Summary> = None;
        for step in &self.steps {
            let this = match step {
                Step::Arrived { status, .. } if *status >= 500 => Summary::NotStored,
                Step::Arrived { status, .. } if *status >= 400 => Summary::Refused,
                Step::Arrived { .. } | Step::Refused { .. } => continue,
                Step::Delivery { outcome, .. } => match outcome {
                    Outcome::Delivered => Summary::Delivered,
                    Outcome::DeadLettered => Summary::DeadLettered,
                    Outcome::Failed => Summary::Failed,
                },
                Step::Dropped { .. } => Summary::DroppedTtl,
            };
            worst = worst.max(Some(this));
        }
        match worst {
            Some(Summary::Delivered) if !self.pending.is_empty() => Summary::Accepted,
            Some(summary) => summary,
            None if self.refused.count > 0 && self.pending.is_empty() => Summary::Unmatched,
            None => Summary::Accepted,
        }
    }

    /// Whether any step reached `outcome` (an event delivered to one trigger and
    /// dead-lettered at another is found under both).
    pub fn reached(&self, outcome: Summary) -> bool {
        if self.outcome == outcome {
            return true;
        }
        self.steps.iter().any(|step| match (step, outcome) {
            (Step::Delivery { outcome: o, .. }, Summary::Delivered) => *o == Outcome::Delivered,
            (Step::Delivery { outcome: o, .. }, Summary::DeadLettered) => {
                *o == Outcome::DeadLettered
            }
            (Step::Delivery { outcome: o, .. }, Summary::Failed) => *o == Outcome::Failed,
            (Step::Dropped { .. }, Summary::DroppedTtl) => true,
            _ => false,
        })
    }

    /// The event's type, once its arrival is recorded.
    pub fn event_type(&self) -> Option<&str> {
        self.steps.iter().find_map(|step| match step {
            Step::Arrived { ty, .. } => Some(ty.as_str()),
            _ => None,
        })
    }

    /// A rough count of the bytes it takes, for the size bound.
    fn weight(&self) -> usize {
        let strings = self.namespace.len() + self.broker.len() + self.id.len() + self.source.len();
        let steps: usize = self.steps.iter().map(step_weight).sum();
        192 + strings
            + steps
            + self
                .refused
                .triggers
                .iter()
                .map(|t| 32 + t.len())
                .sum::<usize>()
    }
}

fn step_weight(step: &Step) -> usize {
    match step {
        Step::Arrived {
            ty,
            subject,
            sender,
            error,
            attributes,
            ..
        } => {
            96 + ty.len()
                + attributes
                    .iter()
                    .map(|(name, value)| 48 + name.len() + value.len())
                    .sum::<usize>()
                + sender.len()
                + subject.as_ref().map_or(0, String::len)
                + error.as_ref().map_or(0, String::len)
        }
        Step::Refused { trigger, .. } | Step::Dropped { trigger, .. } => 64 + trigger.len(),
        Step::Delivery {
            trigger,
            subscriber,
            attempts,
            reply,
            dead_letter,
            ..
        } => {
            160 + trigger.len()
                + subscriber.len()
                + dead_letter.as_ref().map_or(0, String::len)
                + reply.as_ref().map_or(0, |r| 48 + r.id.len() + r.ty.len())
                + attempts
                    .iter()
                    .map(|a| 80 + a.error.as_ref().map_or(0, String::len))
                    .sum::<usize>()
        }
    }
}

/// What to look for in [`Index::list`].
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub namespace: Option<String>,
    pub broker: Option<String>,
    pub outcome: Option<Summary>,
    /// Only events first seen at or after this time.
    pub since: Option<Millis>,
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub limit: usize,
}

/// Bounds of the journal's memory.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_bytes: usize,
    pub retention_ms: Millis,
}

/// Event paths by arrival order and by id.
pub struct Index {
    bounds: Bounds,
    next: u64,
    paths: BTreeMap<u64, EventPath>,
    by_id: HashMap<String, Vec<u64>>,
    bytes: usize,
    /// Paths evicted for the size bound (not the retention) since start.
    pub evicted_for_size: u64,
}

impl Index {
    pub fn new(bounds: Bounds) -> Self {
        Index {
            bounds,
            next: 0,
            paths: BTreeMap::new(),
            by_id: HashMap::new(),
            bytes: 0,
            evicted_for_size: 0,
        }
    }

    /// Adds a step to its event's path (made when this is the first step seen).
    pub fn add(&mut self, event: EventRef, step: Step) {
        let at = step.at();
        let seq = match self.find(&event) {
            Some(seq) => seq,
            None => {
                let seq = self.next;
                self.next += 1;
                match self.by_id.get_mut(&event.id) {
                    Some(seqs) => seqs.push(seq),
                    None => {
                        self.by_id.insert(event.id.clone(), vec![seq]);
                    }
                }
                let path = EventPath::new(event, at);
                self.bytes += path.weight();
                self.paths.insert(seq, path);
                seq
            }
        };
        if let Some(path) = self.paths.get_mut(&seq) {
            // What the step adds, without weighing the whole path again.
            let added = match &step {
                Step::Refused { trigger, .. }
                    if path.refused.triggers.len() < REFUSING_TRIGGERS_LISTED =>
                {
                    32 + trigger.len()
                }
                Step::Refused { .. } => 0,
                step => step_weight(step),
            };
            path.add(step);
            self.bytes += added;
        }
    }

    fn find(&self, event: &EventRef) -> Option<u64> {
        self.by_id.get(&event.id)?.iter().copied().find(|seq| {
            self.paths.get(seq).is_some_and(|p| {
                p.source == event.source
                    && p.broker == event.broker
                    && p.namespace == event.namespace
            })
        })
    }

    /// Drops the oldest paths past the retention, then past the size bound.
    pub fn evict(&mut self, now: Millis) {
        let oldest_kept = now.saturating_sub(self.bounds.retention_ms);
        while let Some((&seq, path)) = self.paths.first_key_value() {
            let expired = path.first_at < oldest_kept;
            let too_big = self.bytes > self.bounds.max_bytes;
            if !expired && !too_big {
                break;
            }
            if !expired {
                self.evicted_for_size += 1;
            }
            self.remove(seq);
        }
    }

    fn remove(&mut self, seq: u64) {
        let Some(path) = self.paths.remove(&seq) else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(path.weight());
        if let Some(seqs) = self.by_id.get_mut(&path.id) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.by_id.remove(&path.id);
            }
        }
    }

    /// Every path of events with this id (one per source and broker that used it).
    pub fn trace(&self, id: &str) -> Vec<EventPath> {
        self.by_id
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|seq| self.paths.get(seq).cloned())
            .collect()
    }

    /// The newest paths that match, newest first.
    pub fn list(&self, query: &ListQuery) -> Vec<EventPath> {
        self.paths
            .values()
            .rev()
            .take_while(|p| query.since.is_none_or(|since| p.first_at >= since))
            .filter(|p| query.namespace.as_ref().is_none_or(|ns| &p.namespace == ns))
            .filter(|p| query.broker.as_ref().is_none_or(|b| &p.broker == b))
            .filter(|p| query.outcome.is_none_or(|o| p.reached(o)))
            .filter(|p| query.source.as_ref().is_none_or(|s| &p.source == s))
            .filter(|p| {
                query
                    .event_type
                    .as_ref()
                    .is_none_or(|t| p.event_type() == Some(t.as_str()))
            })
            .take(query.limit.max(1))
            .cloned()
            .collect()
    }

    /// How many events it holds, and about how many bytes.
    pub fn size(&self) -> (usize, usize) {
        (self.paths.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::Attempt;

    fn event(id: &str) -> EventRef {
        EventRef {
            namespace: "default".into(),
            broker: "default".into(),
            id: id.into(),
            source: "/s".into(),
        }
    }

    fn arrived(at: Millis) -> Step {
        Step::Arrived {
            at,
            ty: "t".into(),
            subject: None,
            sender: "127.0.0.1:1".into(),
            size: 3,
            status: 202,
            error: None,
            attributes: Vec::new(),
        }
    }

    fn delivery(at: Millis, trigger: &str, outcome: Outcome) -> Step {
        Step::Delivery {
            at,
            trigger: trigger.into(),
            subscriber: "http://s/".into(),
            attempt_count: 1,
            attempts: vec![Attempt {
                attempt: 1,
                at,
                status: Some(200),
                latency_ms: 1.0,
                retry_after_s: None,
                error: None,
                dead_letter: false,
            }],
            outcome,
            dead_letter: None,
            latency_ms: None,
            reply: None,
        }
    }

    fn bounds() -> Bounds {
        Bounds {
            max_bytes: 1 << 20,
            retention_ms: 60_000,
        }
    }

    #[test]
    fn a_path_collects_its_steps_and_summarises_the_worst() {
        let mut index = Index::new(bounds());
        index.add(event("1"), arrived(10));
        index.add(event("1"), delivery(11, "a", Outcome::Delivered));
        index.add(event("1"), delivery(12, "b", Outcome::DeadLettered));
        let paths = index.trace("1");
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].steps.len(), 3);
        assert_eq!(paths[0].outcome, Summary::DeadLettered);
        assert!(paths[0].reached(Summary::Delivered));
        assert!(!paths[0].reached(Summary::Failed));
    }

    #[test]
    fn refusals_are_counted_by_filter_not_kept_as_rows() {
        let mut index = Index::new(bounds());
        index.add(event("1"), arrived(10));
        for n in 0..20 {
            index.add(
                event("1"),
                Step::Refused {
                    at: 11,
                    trigger: format!("t{n}"),
                    filter: if n % 2 == 0 { "exact" } else { "cesql" }.into(),
                },
            );
        }
        let path = &index.trace("1")[0];
        assert_eq!(path.steps.len(), 1, "only the arrival is a row");
        assert_eq!(path.refused.count, 20);
        assert_eq!(path.refused.by_filter["exact"], 10);
        assert_eq!(path.refused.triggers.len(), REFUSING_TRIGGERS_LISTED);
        assert_eq!(path.outcome, Summary::Unmatched);
    }

    #[test]
    fn the_same_id_from_two_sources_is_two_paths() {
        let mut index = Index::new(bounds());
        index.add(event("1"), arrived(10));
        let other = EventRef {
            source: "/other".into(),
            ..event("1")
        };
        index.add(other, arrived(10));
        assert_eq!(index.trace("1").len(), 2);
    }

    #[test]
    fn old_paths_go_after_the_retention_and_oldest_first_past_the_size() {
        let mut index = Index::new(Bounds {
            max_bytes: 2_000,
            retention_ms: 100,
        });
        for n in 0..50 {
            index.add(event(&n.to_string()), arrived(1_000 + n));
        }
        index.evict(1_000);
        let (count, bytes) = index.size();
        assert!(bytes <= 2_000, "{bytes}");
        assert!(count < 50 && count > 0);
        assert!(index.trace("0").is_empty(), "the oldest went first");
        assert!(!index.trace("49").is_empty());
        assert!(index.evicted_for_size > 0);
        index.evict(1_000 + 49 + 101);
        assert_eq!(index.size().0, 0, "all past the retention");
    }

    #[test]
    fn lists_newest_first_with_filters() {
        let mut index = Index::new(bounds());
        for n in 0..10u64 {
            index.add(event(&n.to_string()), arrived(100 + n));
        }
        index.add(event("3"), delivery(200, "a", Outcome::DeadLettered));
        let all = index.list(&ListQuery {
            limit: 100,
            ..ListQuery::default()
        });
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].id, "9");
        let dead = index.list(&ListQuery {
            outcome: Some(Summary::DeadLettered),
            limit: 100,
            ..ListQuery::default()
        });
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, "3");
        let recent = index.list(&ListQuery {
            since: Some(107),
            limit: 100,
            ..ListQuery::default()
        });
        assert_eq!(recent.len(), 3);
        let limited = index.list(&ListQuery {
            limit: 2,
            ..ListQuery::default()
        });
        assert_eq!(limited.len(), 2);
    }
}
