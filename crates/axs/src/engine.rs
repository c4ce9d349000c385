//! The apply engine: a pure function from a batch of ledger events and a snapshot of the
//! rows they touch to the rows to write. No I/O, so every rule is tested without a database,
//! and a batch of ten thousand changes to one hot account becomes one balance row write.
//!
//! Rules, checked per change in offset order:
//! - an account must exist and be open (frozen accounts still post and void their holds);
//! - after a debit or a debit hold, `balance - pending_debit >= -overdraft_limit`;
//! - a post or void needs an active hold; a post moves at most the held amount, same sign;
//! - all arithmetic is checked; an overflow rejects the change, it never wraps.
//!
//! A rejected change is recorded with its reason and the batch goes on.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::model::{
    Account, AccountState, Amount, BalanceState, ChangeKind, ChangeStatus, HistoryEntry, Hold,
    LedgerEvent, RejectReason,
};

/// (account, asset)
pub type BalanceKey = (String, String);

/// What the store read for one batch: the rows its events may touch.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub accounts: HashMap<String, Account>,
    /// Missing keys are balances never written yet (all zero, version 0).
    pub balances: HashMap<BalanceKey, BalanceState>,
    /// Active holds by the key of their PENDING change.
    pub holds: HashMap<String, Hold>,
    /// Keys already applied or rejected: a redelivered event is skipped.
    pub done: HashSet<String>,
}

/// An event with its position on the ledger topic.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub event: LedgerEvent,
    pub partition: i32,
    pub offset: i64,
}

/// The final state of one change the batch decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub key: String,
    pub status: ChangeStatus,
    pub reason: Option<RejectReason>,
    pub partition: i32,
    pub offset: i64,
}

/// What to write, all in one transaction.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// The events decided, for change rows the outbox may not hold (upserted by the store).
    pub events: Vec<Positioned>,
    pub history: Vec<HistoryEntry>,
    /// Every balance the batch changed, in its final state.
    pub balances: BTreeMap<BalanceKey, BalanceState>,
    pub holds_opened: Vec<Hold>,
    /// Keys of holds posted, voided or expired.
    pub holds_closed: Vec<String>,
    /// Events skipped as already decided (redelivery, or the relay's second copy).
    pub duplicates: usize,
    /// When the batch was decided: the applied time of its changes.
    pub now_ms: i64,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.decisions.is_empty() && self.holds_closed.is_empty()
    }

    pub fn applied(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.status == ChangeStatus::Applied)
            .count()
    }
}

/// Decides `events` (in offset order) against `snapshot`, voiding `expired` holds first.
/// `snapshot` is updated in place, so a caller may carry it into the next batch.
pub fn plan(
    snapshot: &mut Snapshot,
    events: Vec<Positioned>,
    expired: &[String],
    now_ms: i64,
) -> Plan {
    let mut engine = Engine {
        snapshot,
        plan: Plan {
            now_ms,
            ..Plan::default()
        },
        now_ms,
    };
    for key in expired {
        engine.expire(key);
    }
    let mut seen = HashSet::new();
    for positioned in events {
        let key = &positioned.event.request.key;
        if engine.snapshot.done.contains(key) || !seen.insert(key.clone()) {
            engine.plan.duplicates += 1;
            continue;
        }
        let verdict = engine.decide(&positioned.event);
        let decision = Decision {
            key: key.clone(),
            status: if verdict.is_ok() {
                ChangeStatus::Applied
            } else {
                ChangeStatus::Rejected
            },
            reason: verdict.err(),
            partition: positioned.partition,
            offset: positioned.offset,
        };
        engine.snapshot.done.insert(key.clone());
        engine.plan.decisions.push(decision);
        engine.plan.events.push(positioned);
    }
    engine.plan
}

struct Engine<'a> {
    snapshot: &'a mut Snapshot,
    plan: Plan,
    now_ms: i64,
}

/// A change to one balance row, before it is checked.
#[derive(Default)]
struct Delta {
    balance: Amount,
    pending_debit: Amount,
    pending_credit: Amount,
}

impl Engine<'_> {
    fn decide(&mut self, event: &LedgerEvent) -> Result<(), RejectReason> {
        let request = &event.request;
        let account = self
            .snapshot
            .accounts
            .get(&request.account)
            .ok_or(RejectReason::UnknownAccount)?;
        let limit = *account
            .assets
            .get(&request.asset)
            .ok_or(RejectReason::UnknownAccount)?;
        let state = account.state;
        match request.kind {
            ChangeKind::Immediate | ChangeKind::Pending => match state {
                AccountState::Open => {}
                AccountState::Frozen => return Err(RejectReason::AccountFrozen),
                AccountState::Closed => return Err(RejectReason::AccountClosed),
            },
            ChangeKind::PostPending | ChangeKind::VoidPending => {
                if state == AccountState::Closed {
                    return Err(RejectReason::AccountClosed);
                }
            }
        }
        let key = (request.account.clone(), request.asset.clone());
        match request.kind {
            ChangeKind::Immediate => {
                let delta = Delta {
                    balance: request.amount,
                    ..Delta::default()
                };
                self.commit(&key, &request.key, request.kind, delta, limit)
            }
            ChangeKind::Pending => {
                let delta = if request.amount < 0 {
                    Delta {
                        pending_debit: request
                            .amount
                            .checked_neg()
                            .ok_or(RejectReason::Overflow)?,
                        ..Delta::default()
                    }
                } else {
                    Delta {
                        pending_credit: request.amount,
                        ..Delta::default()
                    }
                };
                self.commit(&key, &request.key, request.kind, delta, limit)?;
                let expires_at_ms = (request.timeout_ms > 0).then(|| {
                    self.now_ms
                        .saturating_add(i64::try_from(request.timeout_ms).unwrap_or(i64::MAX))
                });
                let hold = Hold {
                    key: request.key.clone(),
                    account: request.account.clone(),
                    asset: request.asset.clone(),
                    amount: request.amount,
                    expires_at_ms,
                };
                self.snapshot.holds.insert(hold.key.clone(), hold.clone());
                self.plan.holds_opened.push(hold);
                Ok(())
            }
            ChangeKind::PostPending | ChangeKind::VoidPending => {
                let hold = match self.snapshot.holds.get(&request.pending_key) {
                    Some(hold)
                        if hold.account == request.account && hold.asset == request.asset =>
                    {
                        hold.clone()
                    }
                    _ => return Err(RejectReason::HoldNotActive),
                };
                let mut delta = release(&hold).ok_or(RejectReason::Overflow)?;
                if request.kind == ChangeKind::PostPending {
                    let posted = if request.amount == 0 {
                        hold.amount
                    } else {
                        request.amount
                    };
                    if posted.signum() != hold.amount.signum()
                        || posted.unsigned_abs() > hold.amount.unsigned_abs()
                    {
                        return Err(RejectReason::PostExceedsHold);
                    }
                    delta.balance = posted;
                }
                // Releasing a hold and posting at most its amount never lowers the available
                // balance, so only overflow can refuse it: the limit check is skipped.
                self.commit(&key, &request.key, request.kind, delta, Amount::MAX)?;
                self.close_hold(&hold.key);
                Ok(())
            }
        }
    }

    /// A hold's timeout passed: release it, recorded as a void under the hold's own key.
    fn expire(&mut self, hold_key: &str) {
        let Some(hold) = self.snapshot.holds.get(hold_key).cloned() else {
            return;
        };
        let Some(delta) = release(&hold) else {
            return;
        };
        let key = (hold.account.clone(), hold.asset.clone());
        if self
            .commit(&key, &hold.key, ChangeKind::VoidPending, delta, Amount::MAX)
            .is_ok()
        {
            self.close_hold(hold_key);
        }
    }

    fn close_hold(&mut self, key: &str) {
        self.snapshot.holds.remove(key);
        self.plan.holds_closed.push(key.to_owned());
    }

    /// Applies `delta` to one balance if the result is in range and, when the available
    /// balance falls, still within the overdraft `limit`.
    fn commit(
        &mut self,
        key: &(String, String),
        change_key: &str,
        kind: ChangeKind,
        delta: Delta,
        limit: Amount,
    ) -> Result<(), RejectReason> {
        let before = self.snapshot.balances.get(key).copied().unwrap_or_default();
        let after = BalanceState {
            balance: before
                .balance
                .checked_add(delta.balance)
                .ok_or(RejectReason::Overflow)?,
            pending_debit: before
                .pending_debit
                .checked_add(delta.pending_debit)
                .ok_or(RejectReason::Overflow)?,
            pending_credit: before
                .pending_credit
                .checked_add(delta.pending_credit)
                .ok_or(RejectReason::Overflow)?,
            version: before.version + 1,
        };
        let available_before = before.available().ok_or(RejectReason::Overflow)?;
        let available_after = after.available().ok_or(RejectReason::Overflow)?;
        let floor = limit.checked_neg().unwrap_or(Amount::MIN);
        if available_after < available_before && available_after < floor {
            return Err(RejectReason::InsufficientFunds);
        }
        self.snapshot.balances.insert(key.clone(), after);
        self.plan.balances.insert(key.clone(), after);
        self.plan.history.push(HistoryEntry {
            account: key.0.clone(),
            asset: key.1.clone(),
            version: after.version,
            key: change_key.to_owned(),
            kind,
            balance_delta: delta.balance,
            pending_debit_delta: delta.pending_debit,
            pending_credit_delta: delta.pending_credit,
            balance_after: after.balance,
            applied_at_ms: self.now_ms,
        });
        Ok(())
    }
}

/// The delta that gives a hold's reservation back.
fn release(hold: &Hold) -> Option<Delta> {
    Some(if hold.amount < 0 {
        Delta {
            pending_debit: hold.amount,
            ..Delta::default()
        }
    } else {
        Delta {
            pending_credit: hold.amount.checked_neg()?,
            ..Delta::default()
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::model::ChangeRequest;

    fn account(name: &str, limit: Amount) -> Account {
        Account {
            name: name.into(),
            assets: BTreeMap::from([("USD".to_owned(), limit)]),
            shard: 0,
            state: AccountState::Open,
            created_at_ms: 0,
        }
    }

    fn snapshot(accounts: &[Account]) -> Snapshot {
        Snapshot {
            accounts: accounts
                .iter()
                .map(|a| (a.name.clone(), a.clone()))
                .collect(),
            ..Snapshot::default()
        }
    }

    fn event(
        key: &str,
        account: &str,
        amount: Amount,
        kind: ChangeKind,
        pending: &str,
    ) -> Positioned {
        Positioned {
            event: LedgerEvent {
                request: ChangeRequest {
                    key: key.into(),
                    account: account.into(),
                    asset: "USD".into(),
                    amount,
                    kind,
                    pending_key: pending.into(),
                    timeout_ms: 0,
                    metadata: String::new(),
                },
                shard: 0,
                created_at_ms: 0,
            },
            partition: 0,
            offset: 0,
        }
    }

    fn imm(key: &str, account: &str, amount: Amount) -> Positioned {
        event(key, account, amount, ChangeKind::Immediate, "")
    }

    fn usd(snapshot: &Snapshot, account: &str) -> BalanceState {
        snapshot
            .balances
            .get(&(account.to_owned(), "USD".to_owned()))
            .copied()
            .unwrap_or_default()
    }

    fn reasons(plan: &Plan) -> Vec<Option<RejectReason>> {
        plan.decisions.iter().map(|d| d.reason).collect()
    }

    #[test]
    fn many_changes_to_one_account_are_one_row_write() {
        let mut snap = snapshot(&[account("hot", 0)]);
        let events = (0..1000).map(|i| imm(&format!("k{i}"), "hot", 2)).collect();
        let plan = plan(&mut snap, events, &[], 1);
        assert_eq!(plan.applied(), 1000);
        assert_eq!(plan.balances.len(), 1);
        assert_eq!(usd(&snap, "hot").balance, 2000);
        assert_eq!(usd(&snap, "hot").version, 1000);
        assert_eq!(plan.history.len(), 1000);
    }

    #[test]
    fn overdraft_limit_and_account_states() {
        let mut frozen = account("frozen", 0);
        frozen.state = AccountState::Frozen;
        let mut snap = snapshot(&[account("a", 50), frozen]);
        let events = vec![
            imm("1", "a", -50),
            imm("2", "a", -1),
            imm("3", "a", 10),
            imm("4", "a", -11),
            imm("5", "frozen", 1),
            imm("6", "ghost", 1),
        ];
        let plan = plan(&mut snap, events, &[], 1);
        assert_eq!(
            reasons(&plan),
            vec![
                None,
                Some(RejectReason::InsufficientFunds),
                None,
                Some(RejectReason::InsufficientFunds),
                Some(RejectReason::AccountFrozen),
                Some(RejectReason::UnknownAccount),
            ]
        );
        assert_eq!(usd(&snap, "a").balance, -40);
    }

    #[test]
    fn redelivered_and_repeated_keys_are_skipped() {
        let mut snap = snapshot(&[account("a", 0)]);
        snap.done.insert("old".into());
        let events = vec![imm("old", "a", 5), imm("n", "a", 5), imm("n", "a", 5)];
        let plan = plan(&mut snap, events, &[], 1);
        assert_eq!(plan.duplicates, 2);
        assert_eq!(usd(&snap, "a").balance, 5);
    }

    #[test]
    fn holds_reserve_then_post_partly_void_or_expire() {
        let mut snap = snapshot(&[account("a", 0)]);
        let setup = vec![
            imm("fund", "a", 100),
            event("h1", "a", -60, ChangeKind::Pending, ""),
            // 40 available: a 41 debit and a 41 hold both fail.
            imm("spend", "a", -41),
            event("h2", "a", -41, ChangeKind::Pending, ""),
            event("h3", "a", -40, ChangeKind::Pending, ""),
        ];
        let first = plan(&mut snap, setup, &[], 1);
        assert_eq!(
            reasons(&first),
            vec![
                None,
                None,
                Some(RejectReason::InsufficientFunds),
                Some(RejectReason::InsufficientFunds),
                None
            ]
        );
        assert_eq!(usd(&snap, "a").available(), Some(0));

        let second = plan(
            &mut snap,
            vec![
                event("p1", "a", -70, ChangeKind::PostPending, "h1"),
                event("p2", "a", -25, ChangeKind::PostPending, "h1"),
                event("p3", "a", -1, ChangeKind::PostPending, "h1"),
                event("v3", "a", 0, ChangeKind::VoidPending, "h3"),
            ],
            &[],
            2,
        );
        assert_eq!(
            reasons(&second),
            vec![
                Some(RejectReason::PostExceedsHold),
                None,
                Some(RejectReason::HoldNotActive),
                None
            ]
        );
        let state = usd(&snap, "a");
        assert_eq!((state.balance, state.pending_debit), (75, 0));

        let mut timed = event("h4", "a", -75, ChangeKind::Pending, "");
        timed.event.request.timeout_ms = 10;
        let third = plan(&mut snap, vec![timed], &[], 3);
        assert_eq!(third.holds_opened[0].expires_at_ms, Some(13));
        assert_eq!(usd(&snap, "a").available(), Some(0));
        let fourth = plan(&mut snap, vec![], &["h4".to_owned()], 13);
        assert_eq!(fourth.holds_closed, vec!["h4".to_owned()]);
        assert_eq!(usd(&snap, "a").available(), Some(75));
    }

    #[test]
    fn overflow_rejects_instead_of_wrapping() {
        let mut snap = snapshot(&[account("a", 0)]);
        let plan = plan(
            &mut snap,
            vec![imm("1", "a", Amount::MAX), imm("2", "a", 1)],
            &[],
            1,
        );
        assert_eq!(reasons(&plan), vec![None, Some(RejectReason::Overflow)]);
    }

    proptest! {
        /// Whatever the batch, each balance is the sum of its applied deltas, and no debit
        /// pushes the available balance below the limit.
        #[test]
        fn balance_is_the_sum_of_applied_deltas(
            amounts in prop::collection::vec(-100i128..100, 1..200),
            limit in 0i128..50,
            split in 1usize..20,
        ) {
            let mut snap = snapshot(&[account("a", limit)]);
            let events: Vec<_> = amounts
                .iter()
                .enumerate()
                .map(|(i, amount)| imm(&i.to_string(), "a", *amount))
                .collect();
            let mut history = Vec::new();
            for chunk in events.chunks(split) {
                let plan = plan(&mut snap, chunk.to_vec(), &[], 1);
                history.extend(plan.history);
            }
            let state = usd(&snap, "a");
            let sum: Amount = history.iter().map(|h| h.balance_delta).sum();
            prop_assert_eq!(state.balance, sum);
            prop_assert_eq!(state.version as usize, history.len());
            let mut running = 0;
            for entry in &history {
                running += entry.balance_delta;
                prop_assert_eq!(running, entry.balance_after);
                if entry.balance_delta < 0 {
                    prop_assert!(running >= -limit);
                }
            }
        }
    }
}
