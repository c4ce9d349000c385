//! Checks a submitted batch before anything is written. Every problem is reported, each with
//! the change's index, key and field, so a caller can fix a whole batch in one round trip.

use std::collections::{HashMap, HashSet};

use crate::model::{parse_amount, Account, AccountState, ChangeKind, ChangeRecord, ChangeRequest};
use crate::pb;

/// Limits on what one submit may carry.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_batch: usize,
    pub max_key_bytes: usize,
    pub max_metadata_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            max_key_bytes: 128,
            max_metadata_bytes: 4096,
        }
    }
}

/// One problem with one change (`index` is its place in the batch; `usize::MAX` for the
/// batch itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub index: usize,
    pub key: String,
    pub field: &'static str,
    pub reason: String,
}

impl Violation {
    fn new(index: usize, key: &str, field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            index,
            key: key.to_owned(),
            field,
            reason: reason.into(),
        }
    }

    /// `changes[3].amount`, as gRPC field violations name it.
    pub fn path(&self) -> String {
        if self.index == usize::MAX {
            self.field.to_owned()
        } else {
            format!("changes[{}].{}", self.index, self.field)
        }
    }
}

fn name_ok(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// Shape checks that need no database: amounts, kinds, keys, metadata, duplicates.
pub fn parse_batch(
    changes: Vec<pb::BalanceChange>,
    limits: &Limits,
) -> Result<Vec<ChangeRequest>, Vec<Violation>> {
    if changes.is_empty() {
        return Err(vec![Violation::new(
            usize::MAX,
            "",
            "changes",
            "the batch is empty",
        )]);
    }
    if changes.len() > limits.max_batch {
        return Err(vec![Violation::new(
            usize::MAX,
            "",
            "changes",
            format!(
                "{} changes; at most {} per batch",
                changes.len(),
                limits.max_batch
            ),
        )]);
    }
    let mut violations = Vec::new();
    let mut parsed = Vec::with_capacity(changes.len());
    let mut seen = HashSet::new();
    for (index, change) in changes.into_iter().enumerate() {
        let key = change.idempotency_key.clone();
        let mut bad =
            |field, reason: String| violations.push(Violation::new(index, &key, field, reason));
        if !name_ok(&key, limits.max_key_bytes) {
            bad(
                "idempotency_key",
                format!(
                    "must be 1-{} printable ASCII characters",
                    limits.max_key_bytes
                ),
            );
        } else if !seen.insert(key.clone()) {
            bad("idempotency_key", "appears twice in this batch".into());
        }
        if !name_ok(&change.account, 128) {
            bad("account", "must be 1-128 printable ASCII characters".into());
        }
        if !name_ok(&change.asset, 32) {
            bad("asset", "must be 1-32 printable ASCII characters".into());
        }
        let kind = match pb::ChangeKind::try_from(change.kind) {
            Ok(pb::ChangeKind::Immediate) => Some(ChangeKind::Immediate),
            Ok(pb::ChangeKind::Pending) => Some(ChangeKind::Pending),
            Ok(pb::ChangeKind::PostPending) => Some(ChangeKind::PostPending),
            Ok(pb::ChangeKind::VoidPending) => Some(ChangeKind::VoidPending),
            Ok(pb::ChangeKind::Unspecified) | Err(_) => {
                bad("kind", format!("unknown change kind {}", change.kind));
                None
            }
        };
        let amount = if change.amount.is_empty() {
            Some(0)
        } else {
            let parsed = parse_amount(&change.amount);
            if parsed.is_none() {
                bad(
                    "amount",
                    format!(
                        "{:?} is not a signed integer of minor units within 128 bits",
                        change.amount
                    ),
                );
            }
            parsed
        };
        match kind {
            Some(ChangeKind::Immediate | ChangeKind::Pending) => {
                if amount == Some(0) {
                    bad("amount", "must not be zero".into());
                }
                if amount == Some(i128::MIN) {
                    bad("amount", "out of range".into());
                }
                if !change.pending_key.is_empty() {
                    bad(
                        "pending_key",
                        "only POST_PENDING and VOID_PENDING refer to a hold".into(),
                    );
                }
            }
            Some(ChangeKind::PostPending | ChangeKind::VoidPending) => {
                if change.pending_key.is_empty() {
                    bad("pending_key", "names the PENDING change to settle".into());
                }
                if kind == Some(ChangeKind::VoidPending) && amount.is_some_and(|a| a != 0) {
                    bad("amount", "a void takes no amount".into());
                }
            }
            None => {}
        }
        if kind != Some(ChangeKind::Pending) && change.timeout_ms != 0 {
            bad("timeout_ms", "only a PENDING change has a timeout".into());
        }
        if change.timeout_ms > i64::MAX as u64 {
            bad("timeout_ms", "out of range".into());
        }
        if !change.metadata.is_empty() {
            if change.metadata.len() > limits.max_metadata_bytes {
                bad(
                    "metadata",
                    format!("larger than {} bytes", limits.max_metadata_bytes),
                );
            } else if !matches!(
                serde_json::from_str::<serde_json::Value>(&change.metadata),
                Ok(serde_json::Value::Object(_))
            ) {
                bad("metadata", "must be a JSON object".into());
            }
        }
        if let (Some(kind), Some(amount)) = (kind, amount) {
            parsed.push(ChangeRequest {
                key,
                account: change.account,
                asset: change.asset,
                amount,
                kind,
                pending_key: change.pending_key,
                timeout_ms: change.timeout_ms,
                metadata: change.metadata,
            });
        }
    }
    if violations.is_empty() {
        Ok(parsed)
    } else {
        Err(violations)
    }
}

/// What the database says about a parsed batch: unknown accounts and assets
/// (`invalid`), and changes the account's state or a hold forbids (`precondition`).
#[derive(Debug, Default)]
pub struct Checked {
    pub invalid: Vec<Violation>,
    pub precondition: Vec<Violation>,
}

/// Checks each change against its account and, for posts and voids, the PENDING change it
/// names (stored, or earlier in the same batch).
pub fn check_against(
    changes: &[ChangeRequest],
    accounts: &HashMap<String, Account>,
    stored: &HashMap<String, ChangeRecord>,
) -> Checked {
    let mut checked = Checked::default();
    let in_batch: HashMap<&str, (usize, &ChangeRequest)> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.key.as_str(), (i, c)))
        .collect();
    for (index, change) in changes.iter().enumerate() {
        let fail = |field, reason: String| Violation::new(index, &change.key, field, reason);
        let Some(account) = accounts.get(&change.account) else {
            checked
                .invalid
                .push(fail("account", format!("no account {}", change.account)));
            continue;
        };
        if !account.assets.contains_key(&change.asset) {
            checked.invalid.push(fail(
                "asset",
                format!("account {} does not hold {}", change.account, change.asset),
            ));
            continue;
        }
        let settles = matches!(
            change.kind,
            ChangeKind::PostPending | ChangeKind::VoidPending
        );
        match account.state {
            AccountState::Open => {}
            AccountState::Frozen if settles => {}
            AccountState::Frozen => checked.precondition.push(fail(
                "account",
                format!("account {} is frozen", account.name),
            )),
            AccountState::Closed => checked.precondition.push(fail(
                "account",
                format!("account {} is closed", account.name),
            )),
        }
        if settles {
            let target = match in_batch.get(change.pending_key.as_str()) {
                Some((i, c)) if *i < index => Some((*c).clone()),
                _ => stored.get(&change.pending_key).map(|r| r.request.clone()),
            };
            match target {
                Some(pending)
                    if pending.kind == ChangeKind::Pending
                        && pending.account == change.account
                        && pending.asset == change.asset =>
                {
                    if change.amount != 0
                        && (change.amount.signum() != pending.amount.signum()
                            || change.amount.unsigned_abs() > pending.amount.unsigned_abs())
                    {
                        checked.invalid.push(fail(
                            "amount",
                            format!(
                                "posts {} of a hold of {}: same sign and at most the held amount",
                                change.amount, pending.amount
                            ),
                        ));
                    }
                }
                Some(_) => checked.precondition.push(fail(
                    "pending_key",
                    format!(
                        "{} is not a PENDING change of {}/{}",
                        change.pending_key, change.account, change.asset
                    ),
                )),
                None => checked.precondition.push(fail(
                    "pending_key",
                    format!("no change {}", change.pending_key),
                )),
            }
        }
    }
    checked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, amount: &str) -> pb::BalanceChange {
        pb::BalanceChange {
            idempotency_key: key.into(),
            account: "alice".into(),
            asset: "USD".into(),
            amount: amount.into(),
            kind: pb::ChangeKind::Immediate as i32,
            ..Default::default()
        }
    }

    fn fields(violations: &[Violation]) -> Vec<String> {
        violations.iter().map(Violation::path).collect()
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let mut meta = change("m", "1");
        meta.metadata = "[1]".into();
        let mut void = change("v", "5");
        void.kind = pb::ChangeKind::VoidPending as i32;
        let violations = parse_batch(
            vec![
                change("a", "0"),
                change("b", "1.5"),
                change("c", "99999999999999999999999999999999999999999"),
                change("a", "2"),
                meta,
                void,
            ],
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(
            fields(&violations),
            [
                "changes[0].amount",
                "changes[1].amount",
                "changes[2].amount",
                "changes[3].idempotency_key",
                "changes[4].metadata",
                "changes[5].pending_key",
                "changes[5].amount",
            ]
        );
    }

    #[test]
    fn batch_size_is_bounded() {
        let limits = Limits {
            max_batch: 2,
            ..Limits::default()
        };
        assert_eq!(
            fields(&parse_batch(vec![], &limits).unwrap_err()),
            ["changes"]
        );
        let three = vec![change("a", "1"), change("b", "1"), change("c", "1")];
        assert_eq!(
            fields(&parse_batch(three, &limits).unwrap_err()),
            ["changes"]
        );
    }
}
