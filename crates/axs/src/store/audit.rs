//! The invariant auditor: reads a whole ledger ([`LedgerStore::dump`]) and checks what must
//! hold whatever crashed, raced or was delivered twice. Engine-independent, so the same
//! checks judge SQLite and PostgreSQL.

use std::collections::HashMap;

use super::{LedgerStore, StoreError};
use crate::model::{Account, Amount, Balance, ChangeKind, ChangeStatus, HistoryEntry};

/// Every row the auditor needs, as the store holds them.
#[derive(Debug, Default)]
pub struct Dump {
    pub accounts: Vec<Account>,
    /// (key, status, kind) of every change row.
    pub changes: Vec<(String, ChangeStatus, ChangeKind)>,
    /// Every history entry, ordered by account, asset and version.
    pub history: Vec<HistoryEntry>,
    pub balances: Vec<Balance>,
}

/// What [`audit`] found.
#[derive(Debug, Default)]
pub struct Audit {
    pub balances: usize,
    pub applied: usize,
    pub rejected: usize,
    pub undecided: usize,
    /// Each broken invariant, described; empty when the ledger is sound.
    pub violations: Vec<String>,
}

/// Checks the ledger's invariants straight from its tables:
/// - every balance equals the sum of its history's deltas, its version their count, and
///   each entry's `balance_after` the running sum;
/// - replaying each history never takes the available balance below the overdraft limit
///   on a debit;
/// - every applied change appears exactly once in history (a hold's expiry is a second
///   entry under the hold's key), a rejected or undecided one never.
pub async fn audit(store: &dyn LedgerStore) -> Result<Audit, StoreError> {
    Ok(check(store.dump().await?))
}

fn check(dump: Dump) -> Audit {
    let mut audit = Audit::default();
    let limits: HashMap<(String, String), Amount> = dump
        .accounts
        .iter()
        .flat_map(|account| {
            account
                .assets
                .iter()
                .map(|(asset, limit)| ((account.name.clone(), asset.clone()), *limit))
        })
        .collect();
    let kinds: HashMap<&str, (ChangeStatus, ChangeKind)> = dump
        .changes
        .iter()
        .map(|(key, status, kind)| (key.as_str(), (*status, *kind)))
        .collect();
    // (balance, pending_debit, entries) per (account, asset), replayed in version order.
    let mut sums: HashMap<(String, String), (Amount, Amount, u64)> = HashMap::new();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for entry in &dump.history {
        let key = (entry.account.clone(), entry.asset.clone());
        let sum = sums.entry(key.clone()).or_default();
        let before = sum.0 - sum.1;
        sum.0 += entry.balance_delta;
        sum.1 += entry.pending_debit_delta;
        sum.2 += 1;
        if sum.0 != entry.balance_after {
            audit.violations.push(format!(
                "{key:?} v{}: balance_after {} but the deltas sum to {}",
                entry.version, entry.balance_after, sum.0
            ));
        }
        if sum.2 != entry.version {
            audit.violations.push(format!(
                "{key:?}: entry {} has version {}",
                sum.2, entry.version
            ));
        }
        let available = sum.0 - sum.1;
        let limit = limits.get(&key).copied().unwrap_or(0);
        if available < before && available < -limit {
            audit.violations.push(format!(
                "{key:?} v{}: available {available} is below the overdraft limit -{limit}",
                entry.version
            ));
        }
        let expiry = entry.kind == ChangeKind::VoidPending
            && kinds.get(entry.key.as_str()).map(|k| k.1) == Some(ChangeKind::Pending);
        if !expiry {
            *per_key.entry(&entry.key).or_default() += 1;
        }
    }
    audit.balances = dump.balances.len();
    for balance in &dump.balances {
        let key = (balance.account.clone(), balance.asset.clone());
        let state = balance.state;
        let (sum, pending, count) = sums.get(&key).copied().unwrap_or_default();
        if state.balance != sum || state.version != count || state.pending_debit != pending {
            audit.violations.push(format!(
                "{key:?}: row {state:?} but history gives balance {sum}, pending debit {pending}, {count} entries"
            ));
        }
    }
    for (key, (status, _)) in &kinds {
        let seen = per_key.get(key).copied().unwrap_or(0);
        let expected = match status {
            ChangeStatus::Applied => {
                audit.applied += 1;
                1
            }
            ChangeStatus::Rejected => {
                audit.rejected += 1;
                0
            }
            ChangeStatus::Init | ChangeStatus::Published => {
                audit.undecided += 1;
                0
            }
        };
        if seen != expected {
            audit.violations.push(format!(
                "change {key} ({status:?}) is in history {seen} times"
            ));
        }
    }
    audit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BalanceState;

    fn entry(version: u64, key: &str, delta: Amount, after: Amount) -> HistoryEntry {
        HistoryEntry {
            account: "a".into(),
            asset: "USD".into(),
            version,
            key: key.into(),
            kind: ChangeKind::Immediate,
            balance_delta: delta,
            pending_debit_delta: 0,
            pending_credit_delta: 0,
            balance_after: after,
            applied_at_ms: 0,
        }
    }

    fn dump(balance: Amount, version: u64) -> Dump {
        Dump {
            accounts: Vec::new(),
            changes: vec![
                ("k1".into(), ChangeStatus::Applied, ChangeKind::Immediate),
                ("k2".into(), ChangeStatus::Applied, ChangeKind::Immediate),
            ],
            history: vec![entry(1, "k1", 10, 10), entry(2, "k2", -4, 6)],
            balances: vec![Balance {
                account: "a".into(),
                asset: "USD".into(),
                state: BalanceState {
                    balance,
                    version,
                    ..BalanceState::default()
                },
            }],
        }
    }

    #[test]
    fn a_sound_ledger_passes_and_each_broken_invariant_is_named() {
        let sound = check(dump(6, 2));
        assert!(sound.violations.is_empty(), "{:?}", sound.violations);
        assert_eq!(sound.applied, 2);

        let drifted = check(dump(7, 2));
        assert_eq!(drifted.violations.len(), 1, "{:?}", drifted.violations);

        let mut twice = dump(6, 2);
        twice.history.push(entry(3, "k1", 0, 6));
        twice.balances[0].state.version = 3;
        let twice = check(twice);
        assert!(
            twice.violations.iter().any(|v| v.contains("2 times")),
            "{:?}",
            twice.violations
        );

        let mut overdrawn = dump(-4, 2);
        overdrawn.history = vec![entry(1, "k1", 0, 0), entry(2, "k2", -4, -4)];
        let overdrawn = check(overdrawn);
        assert!(
            overdrawn.violations.iter().any(|v| v.contains("overdraft")),
            "{:?}",
            overdrawn.violations
        );
    }
}
