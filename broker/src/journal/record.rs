//! What the journal keeps about an event: one [`Step`] per thing that happened to it, in the
//! form it is written to disk and served over the API.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The most characters of an error text or target answer kept per attempt.
pub const ERROR_TEXT_LIMIT: usize = 256;

/// The most delivery attempts kept per delivery: the first ones and the last one; the count
/// says how many there were.
pub const ATTEMPTS_KEPT: usize = 8;

/// Which event a step belongs to: the broker it went through and its (source, id), which
/// CloudEvents makes unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventRef {
    pub namespace: String,
    pub broker: String,
    pub id: String,
    pub source: String,
}

/// One thing that happened to an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Ingress answered a request that carried the event.
    Arrived {
        at: Millis,
        #[serde(rename = "type")]
        ty: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// The authenticated subject, else the peer address, else `unknown`.
        sender: String,
        /// Bytes of data the event carried.
        size: u64,
        /// The status ingress answered: 202 stored; 4xx refused; 5xx not stored.
        status: u16,
        /// Why it was refused or not stored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Its context attributes as text (extensions included), so the verdict of a trigger
        /// that never saw it (a channel that routes by filter) can be worked out later.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attributes: Vec<(String, String)>,
    },
    /// A trigger's filter refused the event.
    Refused {
        at: Millis,
        trigger: String,
        /// The kind of filter that said no (`exact`, `prefix`, `cesql`, ...).
        filter: String,
    },
    /// A trigger's filter let the event through and its delivery ended.
    Delivery {
        at: Millis,
        trigger: String,
        subscriber: String,
        /// How many attempts were made (some may be left out of `attempts`).
        attempt_count: u32,
        attempts: Vec<Attempt>,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dead_letter: Option<String>,
        /// Milliseconds from arrival at ingress to the final outcome.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply: Option<Reply>,
    },
    /// A trigger dropped the event without delivering it.
    Dropped {
        at: Millis,
        trigger: String,
        reason: String,
    },
}

impl Step {
    pub fn at(&self) -> Millis {
        match self {
            Step::Arrived { at, .. }
            | Step::Refused { at, .. }
            | Step::Delivery { at, .. }
            | Step::Dropped { at, .. } => *at,
        }
    }
}

/// One attempt to send the event to a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: Millis,
    /// The answer's status, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub latency_ms: f64,
    /// The `Retry-After` the target asked for, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// Why the attempt failed (at most [`ERROR_TEXT_LIMIT`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether this attempt went to the dead-letter sink (the step's `dead_letter`), not to
    /// the subscriber.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_letter: bool,
}

/// How an event's delivery to one trigger's subscriber ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Delivered,
    DeadLettered,
    /// Not delivered, and no dead-letter sink took it.
    Failed,
}

/// What became of the reply a subscriber answered with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// `published`, `refused`, `invalid`, `ttl-exhausted` or `unavailable`.
    pub outcome: String,
}

/// An event's outcome as a whole, for listing and searching: the worst of what happened to
/// it at any trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Summary {
    /// Stored, and no trigger has finished with it (or the broker has none).
    Accepted,
    /// Every trigger that looked at it refused it.
    Unmatched,
    Delivered,
    /// A trigger dropped it: its broker TTL ran out (an event loop).
    DroppedTtl,
    DeadLettered,
    /// A trigger could not deliver it and no dead-letter sink took it.
    Failed,
    /// Ingress refused it (authentication, EventPolicy, TTL, validity).
    Refused,
    /// Ingress could not store it (5xx); the sender was told to try again.
    NotStored,
}

impl Summary {
    pub const ALL: [Summary; 8] = [
        Summary::Accepted,
        Summary::Unmatched,
        Summary::Delivered,
        Summary::DroppedTtl,
        Summary::DeadLettered,
        Summary::Failed,
        Summary::Refused,
        Summary::NotStored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Summary::Accepted => "accepted",
            Summary::Unmatched => "unmatched",
            Summary::Delivered => "delivered",
            Summary::DroppedTtl => "dropped-ttl",
            Summary::DeadLettered => "dead-lettered",
            Summary::Failed => "failed",
            Summary::Refused => "refused",
            Summary::NotStored => "not-stored",
        }
    }

    pub fn parse(text: &str) -> Option<Summary> {
        let wanted = text.replace('_', "-").to_ascii_lowercase();
        Summary::ALL.into_iter().find(|s| s.as_str() == wanted)
    }

    /// Every outcome's name, for error messages and help texts.
    pub fn names() -> String {
        Summary::ALL.map(Summary::as_str).join(", ")
    }
}

/// Cuts `text` to at most [`ERROR_TEXT_LIMIT`] characters.
pub fn bounded_text(text: &str) -> String {
    match text.char_indices().nth(ERROR_TEXT_LIMIT) {
        None => text.to_string(),
        Some((end, _)) => format!("{}...", &text[..end]),
    }
}

/// Now, in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_round_trip_and_accept_underscores() {
        for summary in Summary::ALL {
            assert_eq!(Summary::parse(summary.as_str()), Some(summary));
        }
        assert_eq!(Summary::parse("dead_lettered"), Some(Summary::DeadLettered));
        assert_eq!(Summary::parse("Delivered"), Some(Summary::Delivered));
        assert_eq!(Summary::parse("lost"), None);
    }

    #[test]
    fn error_texts_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(ERROR_TEXT_LIMIT + 10);
        let cut = bounded_text(&long);
        assert_eq!(cut.chars().count(), ERROR_TEXT_LIMIT + 3);
        assert!(cut.ends_with("..."));
        assert_eq!(bounded_text("short"), "short");
    }

    #[test]
    fn steps_serialise_with_a_tag_and_read_back() {
        let step = Step::Delivery {
            at: 5,
            trigger: "t".into(),
            subscriber: "http://s/".into(),
            attempt_count: 1,
            attempts: vec![Attempt {
                attempt: 1,
                at: 5,
                status: Some(503),
                latency_ms: 1.5,
                retry_after_s: Some(2),
                error: Some("503".into()),
                dead_letter: false,
            }],
            outcome: Outcome::DeadLettered,
            dead_letter: Some("http://dls/".into()),
            latency_ms: Some(7),
            reply: None,
        };
        let text = serde_json::to_string(&step).unwrap();
        assert!(text.contains(r#""step":"delivery""#), "{text}");
        assert!(text.contains(r#""outcome":"dead-lettered""#), "{text}");
        assert_eq!(serde_json::from_str::<Step>(&text).unwrap(), step);
    }
}
