//! Routing of published events to subscriptions by their prefilters.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::Envelope;

/// What an event must satisfy to be worth handing to a subscription: a conjunction of exact
/// attribute matches (indexed, and pushed down to brokers that can route on them) and
/// optionally a check of the whole filter, which channels that route in process run once per
/// event so non-matching subscriptions never see it. Empty means every event. It accepts a
/// superset of what the trigger's filter accepts: the consumer still applies the full filter.
#[derive(Debug, Clone, Default)]
pub struct Prefilter {
    /// `(attribute, value)` pairs, all of which must match.
    pub exact: Vec<(String, String)>,
    /// `(attribute, prefix)` pairs: the attribute must start with each prefix.
    pub prefix: Vec<(String, String)>,
    /// The rest of the filter (prefix, suffix, cesql, ...), if there is more than `exact`.
    pub filter: Option<Arc<dyn RouteFilter>>,
}

/// A filter a channel can run while routing. The channel crate knows no filter language, so
/// the broker hands one in.
pub trait RouteFilter: Send + Sync + std::fmt::Debug {
    /// Whether the event may match. When unsure (an expression that fails to evaluate), say
    /// yes: the consumer decides, and reports the failure.
    fn may_match(&self, envelope: &Envelope) -> bool;

    /// A text that is equal for equal filters, so specs can be compared.
    fn identity(&self) -> String;
}

impl PartialEq for Prefilter {
    fn eq(&self, other: &Self) -> bool {
        self.exact == other.exact
            && self.prefix == other.prefix
            && self.filter.as_ref().map(|f| f.identity())
                == other.filter.as_ref().map(|f| f.identity())
    }
}

impl Eq for Prefilter {}

impl std::hash::Hash for Prefilter {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.exact.hash(state);
        self.prefix.hash(state);
        self.filter.as_ref().map(|f| f.identity()).hash(state);
    }
}

impl Prefilter {
    /// A prefilter that lets everything through.
    pub fn all() -> Self {
        Self::default()
    }

    /// A prefilter of exact matches only.
    pub fn exact(exact: Vec<(String, String)>) -> Self {
        Self {
            exact,
            ..Self::default()
        }
    }

    /// Whether `envelope` passes.
    pub fn matches(&self, envelope: &Envelope) -> bool {
        self.exact
            .iter()
            .all(|(name, value)| envelope.attribute(name) == Some(value.as_str()))
            && self.prefix.iter().all(|(name, prefix)| {
                envelope
                    .attribute(name)
                    .is_some_and(|value| value.starts_with(prefix.as_str()))
            })
            && self.filter.as_ref().is_none_or(|f| f.may_match(envelope))
    }
}

/// Subscriptions by name with their prefilters, indexed so that routing an event looks at the
/// few subscriptions that could match instead of all of them.
///
/// Each prefilter is filed under one of its pairs (`type` if it has one, else `source`, else
/// its first pair); prefilters without pairs match everything and are kept apart. Routing an
/// event costs one hash lookup per distinct attribute name used as an index key (usually just
/// `type` and `source`) plus a check of the remaining pairs of each candidate found there.
#[derive(Debug, Clone, Default)]
pub struct RoutingIndex {
    prefilters: HashMap<String, Prefilter>,
    match_everything: BTreeSet<String>,
    /// attribute name -> attribute value -> names of subscriptions filed under that pair.
    by_pair: HashMap<String, HashMap<String, BTreeSet<String>>>,
    /// attribute name -> prefix -> names of subscriptions filed under that prefix.
    by_prefix: HashMap<String, HashMap<String, BTreeSet<String>>>,
}

/// Where a prefilter is filed: under an exact pair, else under a prefix, else with the ones
/// that match everything.
enum Filing<'a> {
    Pair(&'a (String, String)),
    Prefix(&'a (String, String)),
    Everything,
}

fn filing(prefilter: &Prefilter) -> Filing<'_> {
    if let Some(pair) = index_pair(prefilter) {
        return Filing::Pair(pair);
    }
    let prefix = PREFERRED_KEYS
        .iter()
        .find_map(|key| prefilter.prefix.iter().find(|(name, _)| name == key))
        .or_else(|| prefilter.prefix.first());
    match prefix {
        Some(pair) => Filing::Prefix(pair),
        None => Filing::Everything,
    }
}

/// Removes `name` from a two-level index, dropping buckets that become empty.
fn unfile(
    index: &mut HashMap<String, HashMap<String, BTreeSet<String>>>,
    (attribute, value): &(String, String),
    name: &str,
) {
    if let Some(by_value) = index.get_mut(attribute) {
        if let Some(names) = by_value.get_mut(value) {
            names.remove(name);
            if names.is_empty() {
                by_value.remove(value);
            }
        }
        if by_value.is_empty() {
            index.remove(attribute);
        }
    }
}

fn file(
    index: &mut HashMap<String, HashMap<String, BTreeSet<String>>>,
    (attribute, value): &(String, String),
    name: &str,
) {
    index
        .entry(attribute.clone())
        .or_default()
        .entry(value.clone())
        .or_default()
        .insert(name.to_owned());
}

/// Attribute names preferred as index keys, most selective first.
const PREFERRED_KEYS: [&str; 2] = ["type", "source"];

/// The pair a prefilter is filed under, if any.
fn index_pair(prefilter: &Prefilter) -> Option<&(String, String)> {
    PREFERRED_KEYS
        .iter()
        .find_map(|key| prefilter.exact.iter().find(|(name, _)| name == key))
        .or_else(|| prefilter.exact.first())
}

impl RoutingIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscription, or replaces its prefilter if it is already known.
    pub fn insert(&mut self, name: &str, prefilter: Prefilter) {
        self.remove(name);
        match filing(&prefilter) {
            Filing::Everything => {
                self.match_everything.insert(name.to_owned());
            }
            Filing::Pair(pair) => file(&mut self.by_pair, pair, name),
            Filing::Prefix(pair) => file(&mut self.by_prefix, pair, name),
        }
        self.prefilters.insert(name.to_owned(), prefilter);
    }

    /// Removes a subscription; returns its prefilter if it was known.
    pub fn remove(&mut self, name: &str) -> Option<Prefilter> {
        let prefilter = self.prefilters.remove(name)?;
        match filing(&prefilter) {
            Filing::Everything => {
                self.match_everything.remove(name);
            }
            Filing::Pair(pair) => unfile(&mut self.by_pair, pair, name),
            Filing::Prefix(pair) => unfile(&mut self.by_prefix, pair, name),
        }
        Some(prefilter)
    }

    /// The prefilter of a subscription.
    pub fn get(&self, name: &str) -> Option<&Prefilter> {
        self.prefilters.get(name)
    }

    /// Whether a subscription of that name is known.
    pub fn contains(&self, name: &str) -> bool {
        self.prefilters.contains_key(name)
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.prefilters.len()
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.prefilters.is_empty()
    }

    /// Names of all subscriptions, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.prefilters.keys().map(String::as_str)
    }

    /// Names of the subscriptions whose prefilter `envelope` passes, each once, in no
    /// particular order.
    pub fn route(&self, envelope: &Envelope) -> Vec<&str> {
        self.candidates(envelope)
            .filter(|(_, prefilter)| prefilter.matches(envelope))
            .map(|(name, _)| name)
            .collect()
    }

    /// Subscriptions that may match `envelope`: the match-everything ones and those filed under
    /// one of its pairs. Every subscription is filed under exactly one pair, so none appears
    /// twice.
    fn candidates<'a, 'e>(
        &'a self,
        envelope: &'e Envelope,
    ) -> impl Iterator<Item = (&'a str, &'a Prefilter)> + use<'a, 'e> {
        let filed = self
            .by_pair
            .iter()
            .filter_map(move |(attribute, by_value)| by_value.get(envelope.attribute(attribute)?))
            .flatten();
        // Every prefix of the event's value is looked up: the cost follows the value's
        // length, not the number of prefix filters.
        let by_prefix = self
            .by_prefix
            .iter()
            .filter_map(move |(attribute, by_prefix)| {
                let value = envelope.attribute(attribute)?;
                Some(
                    (0..=value.len())
                        .filter(move |end| value.is_char_boundary(*end))
                        .filter_map(move |end| by_prefix.get(&value[..end]))
                        .flatten(),
                )
            })
            .flatten();
        self.match_everything
            .iter()
            .chain(filed)
            .chain(by_prefix)
            .filter_map(move |name| Some((name.as_str(), self.prefilters.get(name)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefilter(pairs: &[(&str, &str)]) -> Prefilter {
        Prefilter {
            filter: None,
            prefix: Vec::new(),
            exact: pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn envelope(pairs: &[(&str, &str)]) -> Envelope {
        Envelope {
            attributes: pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            data: None,
            typed: Vec::new(),
        }
    }

    fn sorted(mut names: Vec<&str>) -> Vec<&str> {
        names.sort_unstable();
        names
    }

    /// Passes events whose type starts with a prefix.
    #[derive(Debug)]
    struct TypePrefix(&'static str);

    impl RouteFilter for TypePrefix {
        fn may_match(&self, envelope: &Envelope) -> bool {
            envelope
                .attribute("type")
                .is_some_and(|t| t.starts_with(self.0))
        }
        fn identity(&self) -> String {
            format!("type prefix {}", self.0)
        }
    }

    #[test]
    fn a_route_filter_is_evaluated_with_the_exact_pairs() {
        let mut index = RoutingIndex::new();
        index.insert(
            "orders",
            Prefilter {
                filter: Some(Arc::new(TypePrefix("order."))),
                ..Prefilter::default()
            },
        );
        index.insert(
            "shop-orders",
            Prefilter {
                exact: vec![("source".into(), "/shop".into())],
                filter: Some(Arc::new(TypePrefix("order."))),
                ..Prefilter::default()
            },
        );
        let from_shop = envelope(&[("type", "order.created"), ("source", "/shop")]);
        assert_eq!(
            sorted(index.route(&from_shop)),
            vec!["orders", "shop-orders"]
        );
        let elsewhere = envelope(&[("type", "order.created"), ("source", "/web")]);
        assert_eq!(index.route(&elsewhere), vec!["orders"]);
        assert!(
            index
                .route(&envelope(&[("type", "user.created")]))
                .is_empty()
        );
        // Specs compare by what their filters are.
        let same = Prefilter {
            filter: Some(Arc::new(TypePrefix("order."))),
            ..Prefilter::default()
        };
        assert_eq!(index.get("orders"), Some(&same));
        assert_ne!(index.get("orders"), Some(&Prefilter::all()));
    }

    #[test]
    fn prefixes_are_indexed_and_checked() {
        let mut index = RoutingIndex::new();
        let prefixed = |pairs: &[(&str, &str)]| Prefilter {
            prefix: pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Prefilter::default()
        };
        index.insert("orders", prefixed(&[("type", "order.")]));
        index.insert("all-types", prefixed(&[("type", "")]));
        index.insert(
            "eu-orders",
            prefixed(&[("type", "order."), ("region", "eu")]),
        );
        index.insert("by-source", prefixed(&[("source", "/shop/")]));
        let event = envelope(&[("type", "order.created"), ("region", "eu-west")]);
        assert_eq!(
            sorted(index.route(&event)),
            vec!["all-types", "eu-orders", "orders"]
        );
        let shop = envelope(&[("type", "ürder"), ("source", "/shop/1")]);
        assert_eq!(sorted(index.route(&shop)), vec!["all-types", "by-source"]);
        assert_eq!(
            index.remove("orders"),
            Some(prefixed(&[("type", "order.")]))
        );
        assert_eq!(sorted(index.route(&event)), vec!["all-types", "eu-orders"]);
        index.remove("all-types");
        index.remove("eu-orders");
        index.remove("by-source");
        assert!(index.by_prefix.is_empty(), "empty buckets are dropped");
    }

    #[test]
    fn empty_prefilter_matches_everything() {
        let mut index = RoutingIndex::new();
        index.insert("all", Prefilter::all());
        assert_eq!(index.route(&envelope(&[("type", "a")])), vec!["all"]);
        assert_eq!(index.route(&envelope(&[])), vec!["all"]);
    }

    #[test]
    fn routes_by_type_source_and_other_pairs() {
        let mut index = RoutingIndex::new();
        index.insert("by-type", prefilter(&[("type", "order.created")]));
        index.insert(
            "by-type-and-source",
            prefilter(&[("source", "/shop"), ("type", "order.created")]),
        );
        index.insert("by-source", prefilter(&[("source", "/shop")]));
        index.insert("by-extension", prefilter(&[("region", "eu")]));
        index.insert("all", Prefilter::all());

        let event = envelope(&[
            ("type", "order.created"),
            ("source", "/shop"),
            ("region", "us"),
        ]);
        assert_eq!(
            sorted(index.route(&event)),
            vec!["all", "by-source", "by-type", "by-type-and-source"]
        );

        let other_source = envelope(&[("type", "order.created"), ("source", "/other")]);
        assert_eq!(sorted(index.route(&other_source)), vec!["all", "by-type"]);

        let european = envelope(&[("type", "x"), ("region", "eu")]);
        assert_eq!(sorted(index.route(&european)), vec!["all", "by-extension"]);
    }

    #[test]
    fn remaining_pairs_must_all_match() {
        let mut index = RoutingIndex::new();
        index.insert("strict", prefilter(&[("type", "t"), ("subject", "s")]));
        assert!(index.route(&envelope(&[("type", "t")])).is_empty());
        assert!(
            index
                .route(&envelope(&[("type", "t"), ("subject", "other")]))
                .is_empty()
        );
        assert_eq!(
            index.route(&envelope(&[("type", "t"), ("subject", "s")])),
            vec!["strict"]
        );
    }

    #[test]
    fn insert_replaces_and_remove_forgets() {
        let mut index = RoutingIndex::new();
        index.insert("s", prefilter(&[("type", "a")]));
        index.insert("s", prefilter(&[("source", "b")]));
        assert_eq!(index.len(), 1);
        assert!(index.route(&envelope(&[("type", "a")])).is_empty());
        assert_eq!(index.route(&envelope(&[("source", "b")])), vec!["s"]);

        assert_eq!(index.remove("s"), Some(prefilter(&[("source", "b")])));
        assert!(index.is_empty());
        assert!(index.route(&envelope(&[("source", "b")])).is_empty());
        assert!(index.by_pair.is_empty(), "empty buckets are dropped");
        assert_eq!(index.remove("s"), None);
    }

    #[test]
    fn unmatched_subscriptions_are_not_examined() {
        let mut index = RoutingIndex::new();
        for i in 0..1_000 {
            index.insert(
                &format!("sub-{i}"),
                prefilter(&[("type", &format!("type-{i}")), ("source", "/s")]),
            );
        }
        let unmatched = envelope(&[("type", "nobody"), ("source", "/s")]);
        assert_eq!(index.candidates(&unmatched).count(), 0);
        assert!(index.route(&unmatched).is_empty());

        let one = envelope(&[("type", "type-7"), ("source", "/s")]);
        assert_eq!(index.candidates(&one).count(), 1);
        assert_eq!(index.route(&one), vec!["sub-7"]);
        // Only `type` is an index key here, so routing costs a single map lookup.
        assert_eq!(index.by_pair.len(), 1);
    }

    #[test]
    fn contradictory_prefilter_never_matches() {
        let mut index = RoutingIndex::new();
        index.insert("never", prefilter(&[("type", "a"), ("type", "b")]));
        assert!(index.route(&envelope(&[("type", "a")])).is_empty());
        assert!(index.route(&envelope(&[("type", "b")])).is_empty());
    }
}
