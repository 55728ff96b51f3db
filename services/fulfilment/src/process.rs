//! The fulfilment process of one order as a state machine, with no I/O.
//!
//! ```text
//!   OrderAccepted ──> awaiting_billing ──CustomerBilled──> ready
//!   CustomerBilled ─> awaiting_acceptance ─OrderAccepted─> ready
//!   CustomerBillingFailed (before ready) ──────────────> cancelled
//! ```
//!
//! An outcome (publish ready / cancelled) is produced only on the transition into
//! `ready` or `cancelled`, and both are final, so a fact delivered twice, or a fact
//! arriving after the end, produces nothing.

use serde::Serialize;
use uuid::Uuid;

use crate::contracts::Line;

/// Where an order's process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Stage {
    /// Billed; waiting for sales to accept the order.
    AwaitingAcceptance,
    /// Accepted; waiting for billing.
    AwaitingBilling,
    /// Released for shipping (final).
    Ready,
    /// Billing failed (final).
    Cancelled,
}

impl Stage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingAcceptance => "awaiting_acceptance",
            Self::AwaitingBilling => "awaiting_billing",
            Self::Ready => "ready",
            Self::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [
            Self::AwaitingAcceptance,
            Self::AwaitingBilling,
            Self::Ready,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|stage| stage.as_str() == s)
    }
}

/// An order's process: the facts known and the stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Process {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
    pub(crate) stage: Stage,
    pub(crate) accepted: bool,
    pub(crate) billed: bool,
    /// The order lines, once accepted.
    pub(crate) lines: Option<Vec<Line>>,
    /// Why it was cancelled.
    pub(crate) reason: Option<String>,
}

/// Something another service said about the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fact {
    Accepted {
        customer_id: String,
        lines: Vec<Line>,
    },
    Billed {
        customer_id: String,
    },
    BillingFailed {
        customer_id: String,
        reason: String,
    },
}

/// What a transition publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `OrderReadyForShipping`.
    Ready,
    /// `OrderFulfilmentCancelled`.
    Cancelled,
}

/// The process after `fact`, and what to publish. `current` is None for an order not
/// heard of before.
pub(crate) fn decide(
    order_id: Uuid,
    current: Option<&Process>,
    fact: Fact,
) -> (Process, Option<Outcome>) {
    let Some(current) = current else {
        return first(order_id, fact);
    };
    let mut next = current.clone();
    let outcome = match (current.stage, fact) {
        // Final stages: record a late acceptance for the record, nothing else.
        (Stage::Ready | Stage::Cancelled, Fact::Accepted { lines, .. }) => {
            if !next.accepted {
                next.accepted = true;
                next.lines = Some(lines);
            }
            None
        }
        (Stage::Ready | Stage::Cancelled, Fact::Billed { .. } | Fact::BillingFailed { .. }) => None,
        (Stage::AwaitingBilling, Fact::Accepted { .. })
        | (Stage::AwaitingAcceptance, Fact::Billed { .. }) => None,
        (Stage::AwaitingAcceptance, Fact::Accepted { lines, .. }) => {
            next.accepted = true;
            next.lines = Some(lines);
            next.stage = Stage::Ready;
            Some(Outcome::Ready)
        }
        (Stage::AwaitingBilling, Fact::Billed { .. }) => {
            next.billed = true;
            next.stage = Stage::Ready;
            Some(Outcome::Ready)
        }
        (Stage::AwaitingBilling, Fact::BillingFailed { reason, .. }) => {
            next.reason = Some(reason);
            next.stage = Stage::Cancelled;
            Some(Outcome::Cancelled)
        }
        // Billing said both yes and no: the first answer stands.
        (Stage::AwaitingAcceptance, Fact::BillingFailed { .. }) => {
            tracing::warn!(%order_id, "CustomerBillingFailed after CustomerBilled; ignored");
            None
        }
    };
    (next, outcome)
}

fn first(order_id: Uuid, fact: Fact) -> (Process, Option<Outcome>) {
    let blank = |customer_id: String, stage| Process {
        order_id,
        customer_id,
        stage,
        accepted: false,
        billed: false,
        lines: None,
        reason: None,
    };
    match fact {
        Fact::Accepted { customer_id, lines } => (
            Process {
                accepted: true,
                lines: Some(lines),
                ..blank(customer_id, Stage::AwaitingBilling)
            },
            None,
        ),
        Fact::Billed { customer_id } => (
            Process {
                billed: true,
                ..blank(customer_id, Stage::AwaitingAcceptance)
            },
            None,
        ),
        Fact::BillingFailed {
            customer_id,
            reason,
        } => (
            Process {
                reason: Some(reason),
                ..blank(customer_id, Stage::Cancelled)
            },
            Some(Outcome::Cancelled),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: Uuid = Uuid::from_u128(7);
    const CUSTOMER: &str = "ada";

    fn accepted() -> Fact {
        Fact::Accepted {
            customer_id: CUSTOMER.into(),
            lines: vec![Line {
                product_id: Uuid::from_u128(1),
                quantity: 2,
            }],
        }
    }

    fn billed() -> Fact {
        Fact::Billed {
            customer_id: CUSTOMER.into(),
        }
    }

    fn failed() -> Fact {
        Fact::BillingFailed {
            customer_id: CUSTOMER.into(),
            reason: "over the credit limit".into(),
        }
    }

    /// Applies `facts` in order; returns the final process and every outcome.
    fn run(facts: Vec<Fact>) -> (Process, Vec<Outcome>) {
        let mut state: Option<Process> = None;
        let mut outcomes = Vec::new();
        for fact in facts {
            let (next, outcome) = decide(ORDER, state.as_ref(), fact);
            outcomes.extend(outcome);
            state = Some(next);
        }
        (state.expect("at least one fact"), outcomes)
    }

    #[test]
    fn an_order_is_ready_once_whatever_the_order_and_repetition_of_the_facts() {
        let orders = [
            vec![accepted(), billed()],
            vec![billed(), accepted()],
            vec![billed(), billed(), accepted(), accepted(), billed()],
            vec![accepted(), accepted(), billed(), accepted(), billed()],
        ];
        for facts in orders {
            let (process, outcomes) = run(facts.clone());
            assert_eq!(outcomes, vec![Outcome::Ready], "{facts:?}");
            assert_eq!(process.stage, Stage::Ready);
            assert!(process.accepted && process.billed);
            assert_eq!(process.lines.as_ref().map(Vec::len), Some(1));
        }
    }

    #[test]
    fn a_billing_failure_cancels_once_and_nothing_makes_the_order_ready_afterwards() {
        for facts in [
            vec![accepted(), failed(), billed(), failed()],
            vec![failed(), accepted(), billed(), failed(), accepted()],
        ] {
            let (process, outcomes) = run(facts);
            assert_eq!(outcomes, vec![Outcome::Cancelled]);
            assert_eq!(process.stage, Stage::Cancelled);
            assert_eq!(process.reason.as_deref(), Some("over the credit limit"));
        }
    }

    #[test]
    fn a_late_failure_does_not_undo_a_ready_order() {
        let (process, outcomes) = run(vec![accepted(), billed(), failed()]);
        assert_eq!(outcomes, vec![Outcome::Ready]);
        assert_eq!(process.stage, Stage::Ready);
    }

    #[test]
    fn stages_round_trip_through_their_names() {
        for stage in [
            Stage::AwaitingAcceptance,
            Stage::AwaitingBilling,
            Stage::Ready,
            Stage::Cancelled,
        ] {
            assert_eq!(Stage::parse(stage.as_str()), Some(stage));
        }
        assert_eq!(Stage::parse("shipped"), None);
    }
}
