//! A kind's top-level `Ready` condition, derived from the conditions it depends on by
//! Knative's rule (knative.dev/pkg `apis.ConditionSet`): each kind declares its dependents
//! once, beside its status type, and every reconciler summarises through that declaration.

use super::Condition;

/// The type of the condition every kind summarises into.
pub const READY: &str = "Ready";

/// The condition types a kind's `Ready` depends on.
///
/// `Ready` is False when a dependent is False (its reason and message carried up), Unknown
/// when none is False but one is Unknown or has not been reported yet, and True when all are
/// True. Conditions a reconciler reports beyond the declared ones (a dead-letter sink when one
/// is set, a backend's own checks) count as dependents too; those with a `severity` (Warning,
/// Info) are informational and never change `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConditionSet {
    dependents: &'static [&'static str],
}

impl ConditionSet {
    pub const fn new(dependents: &'static [&'static str]) -> Self {
        ConditionSet { dependents }
    }

    pub fn dependents(&self) -> &'static [&'static str] {
        self.dependents
    }

    /// `parts` with `Ready` first, derived from them; `parts` keep their order.
    pub fn summarize(&self, mut parts: Vec<Condition>) -> Vec<Condition> {
        parts.retain(|c| c.type_ != READY);
        let ready = self.ready(&parts);
        parts.insert(0, ready);
        parts
    }

    fn ready(&self, parts: &[Condition]) -> Condition {
        let counted: Vec<&Condition> = parts.iter().filter(|c| c.severity.is_none()).collect();
        let carry = |c: &Condition, ok| {
            Condition::new(
                READY,
                ok,
                c.reason.as_deref().unwrap_or(&c.type_),
                c.message.clone().unwrap_or_default(),
            )
        };
        if let Some(failing) = counted.iter().find(|c| c.status == "False") {
            return carry(failing, false);
        }
        if let Some(pending) = counted.iter().find(|c| !c.is_true()) {
            return Condition {
                status: "Unknown".into(),
                ..carry(pending, false)
            };
        }
        if let Some(missing) = self
            .dependents
            .iter()
            .find(|wanted| !counted.iter().any(|c| c.type_ == **wanted))
        {
            return Condition::unknown(
                READY,
                &format!("{missing}NotReported"),
                format!("condition {missing} has not been reported yet"),
            );
        }
        Condition::new(READY, true, "", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: ConditionSet = ConditionSet::new(&["A", "B"]);

    fn ready(parts: Vec<Condition>) -> Condition {
        let all = SET.summarize(parts);
        assert_eq!(all[0].type_, READY);
        all[0].clone()
    }

    #[test]
    fn ready_is_true_when_every_dependent_is_true() {
        let all = SET.summarize(vec![
            Condition::new("A", true, "", ""),
            Condition::new("B", true, "", ""),
        ]);
        assert!(all[0].is_true(), "{all:?}");
        let types: Vec<&str> = all.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "A", "B"]);
    }

    #[test]
    fn a_false_dependent_makes_ready_false_with_its_reason() {
        let ready = ready(vec![
            Condition::unknown("A", "Waiting", "not yet"),
            Condition::new("B", false, "Broken", "it broke"),
        ]);
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("Broken"));
        assert_eq!(ready.message.as_deref(), Some("it broke"));
    }

    #[test]
    fn an_unknown_dependent_makes_ready_unknown() {
        let ready = ready(vec![
            Condition::new("A", true, "", ""),
            Condition::unknown("B", "Waiting", "not yet"),
        ]);
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("Waiting"));
    }

    #[test]
    fn a_dependent_not_reported_makes_ready_unknown() {
        let ready = ready(vec![Condition::new("A", true, "", "")]);
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("BNotReported"));
    }

    #[test]
    fn undeclared_conditions_count_unless_informational() {
        let failing_extra = ready(vec![
            Condition::new("A", true, "", ""),
            Condition::new("B", true, "", ""),
            Condition::new("DeadLetterSinkResolved", false, "Unresolved", "no address"),
        ]);
        assert_eq!(failing_extra.status, "False");
        assert_eq!(failing_extra.reason.as_deref(), Some("Unresolved"));

        let informational = SET.summarize(vec![
            Condition::new("A", true, "", ""),
            Condition::new("B", true, "", ""),
            Condition {
                severity: Some("Info".into()),
                ..Condition::new("Capped", false, "CapReached", "")
            },
        ]);
        assert!(informational[0].is_true(), "{informational:?}");
        assert_eq!(informational.len(), 4);
    }

    #[test]
    fn a_stale_ready_in_the_parts_is_replaced() {
        let all = SET.summarize(vec![
            Condition::new(READY, false, "Old", ""),
            Condition::new("A", true, "", ""),
            Condition::new("B", true, "", ""),
        ]);
        assert_eq!(all.iter().filter(|c| c.type_ == READY).count(), 1);
        assert!(all[0].is_true());
    }
}
