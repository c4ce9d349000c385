//! The ledger's vocabulary: accounts, changes, balances and the event on the ledger topic.
//! Amounts are `i128` minor units everywhere inside; they cross every boundary (gRPC, SQL
//! text columns, the topic) as decimal strings, so no float ever touches money.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount in an asset's minor units.
pub type Amount = i128;

/// Parses a signed decimal integer: optional sign, ASCII digits, no spaces, no leading `+`
/// duplicates. `None` for anything else or for a value outside `i128`.
pub fn parse_amount(text: &str) -> Option<Amount> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// What an account accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountState {
    Open,
    /// No new change; holds already taken may still be posted or voided.
    Frozen,
    /// No change at all; open holds lapse by their timeout.
    Closed,
}

impl AccountState {
    pub fn code(self) -> i64 {
        match self {
            Self::Open => 1,
            Self::Frozen => 2,
            Self::Closed => 3,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Open),
            2 => Some(Self::Frozen),
            3 => Some(Self::Closed),
            _ => None,
        }
    }
}

/// An account: the assets it holds, each with its overdraft limit, and the shard that fixes
/// which ledger partition (and so which single consumer) applies its changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    /// Asset -> how far below zero the available balance may go (0 = never negative).
    pub assets: BTreeMap<String, Amount>,
    pub shard: u32,
    pub state: AccountState,
    pub created_at_ms: i64,
}

impl Account {
    /// The ledger partition of this account among `partitions`.
    pub fn partition(&self, partitions: i32) -> i32 {
        partition_of(self.shard, partitions)
    }
}

/// `shard mod partitions`: the mapping from shard to ledger partition.
pub fn partition_of(shard: u32, partitions: i32) -> i32 {
    let partitions = u32::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(shard % partitions).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    Immediate,
    Pending,
    PostPending,
    VoidPending,
}

impl ChangeKind {
    pub fn code(self) -> i64 {
        match self {
            Self::Immediate => 1,
            Self::Pending => 2,
            Self::PostPending => 3,
            Self::VoidPending => 4,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Immediate),
            2 => Some(Self::Pending),
            3 => Some(Self::PostPending),
            4 => Some(Self::VoidPending),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeStatus {
    Init,
    Published,
    Applied,
    Rejected,
}

impl ChangeStatus {
    pub fn code(self) -> i64 {
        match self {
            Self::Init => 1,
            Self::Published => 2,
            Self::Applied => 3,
            Self::Rejected => 4,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Init),
            2 => Some(Self::Published),
            3 => Some(Self::Applied),
            4 => Some(Self::Rejected),
            _ => None,
        }
    }

    /// Applied or rejected: the consumer is done with it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Applied | Self::Rejected)
    }
}

/// A validated change as submitted. Its fields are what idempotency compares: the same key
/// with any field different is a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRequest {
    pub key: String,
    pub account: String,
    pub asset: String,
    /// Zero only for a full post or a void (the amount comes from the hold).
    #[serde(with = "amount_text")]
    pub amount: Amount,
    pub kind: ChangeKind,
    /// The PENDING change a post or void refers to; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pending_key: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout_ms: u64,
    /// A JSON object (validated), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl ChangeRequest {
    /// The first field in which `other` differs from `self`, for ALREADY_EXISTS.
    pub fn first_difference(&self, other: &ChangeRequest) -> Option<&'static str> {
        if self.account != other.account {
            Some("account")
        } else if self.asset != other.asset {
            Some("asset")
        } else if self.amount != other.amount {
            Some("amount")
        } else if self.kind != other.kind {
            Some("kind")
        } else if self.pending_key != other.pending_key {
            Some("pending_key")
        } else if self.timeout_ms != other.timeout_ms {
            Some("timeout_ms")
        } else if self.metadata != other.metadata {
            Some("metadata")
        } else {
            None
        }
    }
}

/// A change as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub request: ChangeRequest,
    pub shard: u32,
    pub status: ChangeStatus,
    /// Why it was rejected; empty otherwise.
    pub reason: String,
    /// Where it sits on the ledger topic, once published (or applied).
    pub position: Option<(i32, i64)>,
    pub created_at_ms: i64,
    pub applied_at_ms: Option<i64>,
}

/// The message on the ledger topic (JSON). Consumers read nothing else: the event carries
/// the whole request, so the apply side needs no lookup of the outbox row's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEvent {
    #[serde(flatten)]
    pub request: ChangeRequest,
    pub shard: u32,
    pub created_at_ms: i64,
}

/// One balance row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BalanceState {
    pub balance: Amount,
    pub pending_debit: Amount,
    pub pending_credit: Amount,
    /// Counts applied changes to this (account, asset).
    pub version: u64,
}

impl BalanceState {
    /// What a debit may use: the balance less what holds reserve.
    pub fn available(&self) -> Option<Amount> {
        self.balance.checked_sub(self.pending_debit)
    }
}

/// A balance with its owner, as reads return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub account: String,
    pub asset: String,
    pub state: BalanceState,
}

/// One applied change in an account's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub account: String,
    pub asset: String,
    pub version: u64,
    pub key: String,
    pub kind: ChangeKind,
    pub balance_delta: Amount,
    pub pending_debit_delta: Amount,
    pub pending_credit_delta: Amount,
    pub balance_after: Amount,
    pub applied_at_ms: i64,
}

/// A hold taken by an applied PENDING change and not yet posted, voided or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub key: String,
    pub account: String,
    pub asset: String,
    /// Signed like the PENDING change: negative reserves a debit, positive an incoming credit.
    pub amount: Amount,
    /// When the consumer voids it by itself; `None` = never.
    pub expires_at_ms: Option<i64>,
}

/// Why the consumer refused a change. The text is stored with the change and used as the
/// `reason` label of `axs_rejected_changes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    InsufficientFunds,
    AccountFrozen,
    AccountClosed,
    UnknownAccount,
    HoldNotActive,
    PostExceedsHold,
    Overflow,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "insufficient_funds",
            Self::AccountFrozen => "account_frozen",
            Self::AccountClosed => "account_closed",
            Self::UnknownAccount => "unknown_account",
            Self::HoldNotActive => "hold_not_active",
            Self::PostExceedsHold => "post_exceeds_hold",
            Self::Overflow => "overflow",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serializes an [`Amount`] as a decimal string.
pub(crate) mod amount_text {
    use serde::{de, Deserialize, Deserializer, Serializer};

    use super::{parse_amount, Amount};

    pub fn serialize<S: Serializer>(amount: &Amount, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(amount)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_amount(&text).ok_or_else(|| de::Error::custom(format!("bad amount {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly_or_not_at_all() {
        assert_eq!(parse_amount("0"), Some(0));
        assert_eq!(parse_amount("-42"), Some(-42));
        assert_eq!(
            parse_amount("170141183460469231731687303715884105727"),
            Some(i128::MAX)
        );
        for bad in [
            "",
            "-",
            "+1",
            " 1",
            "1.0",
            "1e3",
            "--1",
            "170141183460469231731687303715884105728",
        ] {
            assert_eq!(parse_amount(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn shards_map_onto_partitions() {
        assert_eq!(partition_of(0, 8), 0);
        assert_eq!(partition_of(13, 8), 5);
        assert_eq!(partition_of(u32::MAX, 1), 0);
        assert_eq!(partition_of(7, 0), 0);
    }

    #[test]
    fn events_round_trip_as_json() {
        let event = LedgerEvent {
            request: ChangeRequest {
                key: "k1".into(),
                account: "alice".into(),
                asset: "USD".into(),
                amount: -170141183460469231731687303715884105728,
                kind: ChangeKind::Pending,
                pending_key: String::new(),
                timeout_ms: 5,
                metadata: r#"{"a":1}"#.into(),
            },
            shard: 3,
            created_at_ms: 7,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""amount":"-170141183460469231731687303715884105728""#));
        assert_eq!(serde_json::from_str::<LedgerEvent>(&json).unwrap(), event);
    }
}
