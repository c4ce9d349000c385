//! The nonce manager's value types: request ids, the transaction payload, the
//! [`ManagedTransaction`] record and its status machine. Validated once at the edge so the
//! store and the allocator can trust them.

use std::fmt;

use alloy_primitives::{Address, Bytes, B256, U256};
use ledger_lease::{FencingToken, ResourceName, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::error::InvalidArgument;
use crate::limits;

/// The caller's idempotency key: a retried request with the same id gets the same nonce and
/// the same transaction, never a second nonce.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(String);

impl RequestId {
    /// Validates a request id: non-empty, at most [`limits::REQUEST_ID_BYTES_MAX`] bytes.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidArgument> {
        let id = id.into();
        if id.is_empty() || id.len() > limits::REQUEST_ID_BYTES_MAX {
            return Err(InvalidArgument(format!(
                "request id must be 1..={} bytes, got {}",
                limits::REQUEST_ID_BYTES_MAX,
                id.len()
            )));
        }
        Ok(Self(id))
    }

    /// The id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The lease resource that guards `signer`'s nonces: `signer:0x<lowercase hex>`.
pub fn signer_resource(signer: Address) -> ResourceName {
    ResourceName::new(format!("signer:{signer:#x}"))
        .expect("an address renders to 50 bytes, inside the resource name limit")
}

/// How a signer's address is stored: `0x` and lowercase hex.
pub(crate) fn signer_key(signer: Address) -> String {
    format!("{signer:#x}")
}

/// What the caller asked to send, stored with the allocation so a retry can be checked
/// against it and the transaction re-signed identically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxPayload {
    /// The recipient.
    pub to: Address,
    /// Wei sent.
    pub value: U256,
    /// Calldata.
    pub data: Bytes,
    /// Gas limit.
    pub gas_limit: u64,
    /// EIP-1559 fee cap, wei per gas.
    pub max_fee_per_gas: u128,
    /// EIP-1559 tip cap, wei per gas.
    pub max_priority_fee_per_gas: u128,
}

impl TxPayload {
    /// The payload of an allocation for a caller who signs elsewhere (AllocateNonce):
    /// nothing of the transaction is known. Zero gas marks it ([`TxPayload::validate`]
    /// refuses zero gas, so SubmitTransaction never stores one).
    pub fn external() -> Self {
        Self {
            to: Address::ZERO,
            value: U256::ZERO,
            data: Bytes::new(),
            gas_limit: 0,
            max_fee_per_gas: 0,
            max_priority_fee_per_gas: 0,
        }
    }

    /// True for [`TxPayload::external`]: the manager holds no transaction it could sign
    /// for this nonce; only attempts the caller reports are sent, never re-signed.
    pub fn is_external(&self) -> bool {
        self.gas_limit == 0
    }

    /// Checks what the chain would reject anyway, before a nonce is spent on it.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        if self.data.len() > limits::CALLDATA_BYTES_MAX {
            return Err(InvalidArgument(format!(
                "calldata is {} bytes, more than {}",
                self.data.len(),
                limits::CALLDATA_BYTES_MAX
            )));
        }
        if self.gas_limit == 0 {
            return Err(InvalidArgument("gas limit is zero".to_owned()));
        }
        if self.max_priority_fee_per_gas > self.max_fee_per_gas {
            return Err(InvalidArgument(format!(
                "priority fee {} is above the fee cap {}",
                self.max_priority_fee_per_gas, self.max_fee_per_gas
            )));
        }
        Ok(())
    }
}

/// Where a managed transaction is in its life.
///
/// `Pending` (nonce allocated, maybe signed and sent, not yet accepted by a node) ->
/// `Tracking` (a node accepted it, or it was found mined) -> `Confirmed` or `Failed`.
/// `Reconciling` marks a nonce another transaction took ("nonce too low" without our
/// receipt, or an underpriced replacement): reconciliation decides what it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxStatus {
    /// Allocated; not yet accepted by a node.
    Pending,
    /// Accepted by a node or mined; waiting for confirmations.
    Tracking,
    /// Final with enough confirmations.
    Confirmed,
    /// Final without effect (dropped for good, reverted, replaced).
    Failed,
    /// The nonce was used by another transaction; needs reconciliation.
    Reconciling,
}

impl TxStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TxStatus::Pending => "pending",
            TxStatus::Tracking => "tracking",
            TxStatus::Confirmed => "confirmed",
            TxStatus::Failed => "failed",
            TxStatus::Reconciling => "reconciling",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => TxStatus::Pending,
            "tracking" => TxStatus::Tracking,
            "confirmed" => TxStatus::Confirmed,
            "failed" => TxStatus::Failed,
            "reconciling" => TxStatus::Reconciling,
            _ => return None,
        })
    }

    /// Whether a status write may move `self` to `next`. Staying put is allowed (a retried
    /// write is idempotent). `Confirmed -> Tracking` is a reorg; `Failed` is final.
    pub fn can_move_to(self, next: TxStatus) -> bool {
        use TxStatus::*;
        self == next
            || matches!(
                (self, next),
                (Pending, Tracking | Failed | Reconciling)
                    | (Tracking, Confirmed | Failed | Reconciling)
                    | (Reconciling, Tracking | Confirmed | Failed)
                    | (Confirmed, Tracking)
            )
    }
}

impl fmt::Display for TxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One signed version of a managed transaction, stored before it is broadcast so a send
/// that times out can still be matched by hash (and re-broadcast byte for byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxAttempt {
    /// The transaction hash, computed when signing.
    pub hash: B256,
    /// The fee cap this attempt was signed with.
    pub max_fee_per_gas: u128,
    /// The tip cap this attempt was signed with.
    pub max_priority_fee_per_gas: u128,
    /// The EIP-2718 encoded signed transaction.
    pub raw: Bytes,
    /// When it was stored, just before the first broadcast.
    pub sent_at: UnixMillis,
}

/// The record of one request: the fact behind each nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedTransaction {
    /// The caller's idempotency key.
    pub request_id: RequestId,
    /// Who signs.
    pub signer: Address,
    /// The allocated nonce.
    pub nonce: u64,
    /// What to send.
    pub payload: TxPayload,
    /// Where it is in its life.
    pub status: TxStatus,
    /// The token of the last write.
    pub fencing_token: FencingToken,
    /// When the nonce was allocated.
    pub created_at: UnixMillis,
    /// When the record last changed.
    pub updated_at: UnixMillis,
    /// Every signed attempt, oldest first.
    pub attempts: Vec<TxAttempt>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        use TxStatus::*;
        for status in [Pending, Tracking, Confirmed, Failed, Reconciling] {
            assert_eq!(TxStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(TxStatus::parse("mined"), None);
    }

    fn check(from: TxStatus, to: TxStatus, allowed: bool) {
        assert_eq!(from.can_move_to(to), allowed, "{from} -> {to}");
    }

    #[test]
    fn status_transitions() {
        use TxStatus::*;
        check(Pending, Pending, true);
        check(Pending, Tracking, true);
        check(Pending, Confirmed, false);
        check(Tracking, Confirmed, true);
        check(Tracking, Pending, false);
        check(Confirmed, Tracking, true);
        check(Confirmed, Failed, false);
        check(Failed, Tracking, false);
        check(Reconciling, Confirmed, true);
    }

    #[test]
    fn request_ids_are_bounded() {
        assert!(RequestId::new("").is_err());
        assert!(RequestId::new("x".repeat(limits::REQUEST_ID_BYTES_MAX + 1)).is_err());
        assert!(RequestId::new("order-1").is_ok());
    }

    #[test]
    fn signer_resource_is_lowercase_hex() {
        let resource = signer_resource(Address::repeat_byte(0xAB));
        assert_eq!(
            resource.as_str(),
            "signer:0xabababababababababababababababababababab"
        );
    }

    #[test]
    fn payload_validation() {
        let payload = TxPayload {
            to: Address::ZERO,
            value: U256::from(1),
            data: Bytes::new(),
            gas_limit: 21_000,
            max_fee_per_gas: 10,
            max_priority_fee_per_gas: 1,
        };
        assert!(payload.validate().is_ok());
        assert!(TxPayload {
            gas_limit: 0,
            ..payload.clone()
        }
        .validate()
        .is_err());
        assert!(TxPayload {
            max_priority_fee_per_gas: 11,
            ..payload.clone()
        }
        .validate()
        .is_err());
        let json = serde_json::to_string(&payload).expect("serialize");
        let back: TxPayload = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, payload);
    }
}
