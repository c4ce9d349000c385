//! The [`NonceStore`] boundary: signer nonces, managed transactions and their attempts in
//! SQL, every write fenced by the signer's lease.
//!
//! Three tables, the same in both backends:
//!
//! - `signer_nonce(signer, next_nonce, fencing_token, updated_at_ms)`: the next nonce the
//!   store would hand out for a signer (the "db" source of `max(chain, cache, db)`);
//! - `managed_tx(request_id UNIQUE, signer, nonce, payload, status, fencing_token,
//!   created_at_ms, updated_at_ms, receipt_block_number, receipt_block_hash,
//!   receipt_tx_hash, receipt_success)`, with `UNIQUE (signer, nonce)` so a nonce can never
//!   be given to two requests, whatever the code above does; the receipt columns (added to
//!   an existing database at start-up) hold the receipt a `Confirmed`/`Failed` status
//!   rests on, so a restarted node still watches it for reorgs;
//! - `tx_attempt(request_id, hash UNIQUE, max_fee, priority_fee, raw, sent_at_ms)`: every
//!   signed version, stored before it is broadcast.
//!
//! Every write runs in one transaction that first calls ledger-lease's `fence` for resource
//! `signer:<address>` with the caller's token, so a stale token's write is refused with
//! [`StoreError::Fenced`] and nothing of it lands. The SQL text is shared by both backends
//! (`$N` placeholders work in sqlx's SQLite driver too) through the `sql_nonce_store!` macro.

pub mod postgres;
pub mod sqlite;

use std::fmt;

use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use ledger_lease::{FencingToken, UnixMillis};

use crate::chain::ReceiptSummary;
use crate::error::StoreError;
use crate::types::{ManagedTransaction, RequestId, TxAttempt, TxPayload, TxStatus};

/// One request for a nonce, as the batch writer hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAllocation {
    /// The idempotency key.
    pub request_id: RequestId,
    /// What will be signed with the nonce.
    pub payload: TxPayload,
}

/// The answer to one [`NewAllocation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The request.
    pub request_id: RequestId,
    /// The signer the stored record belongs to; differs from the asked signer only when a
    /// request id was reused across signers (the caller refuses that).
    pub signer: Address,
    /// The nonce: fresh, or the one stored for this request id before.
    pub nonce: u64,
    /// True when the request id was already stored (a retry): no nonce was consumed.
    pub existing: bool,
}

/// What one fenced allocation transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationBatch {
    /// One answer per request, in request order.
    pub allocations: Vec<Allocation>,
    /// The signer's next nonce after the batch.
    pub next_nonce: u64,
}

/// Aggregates of one signer's records, for the per-signer view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignerSummary {
    /// Records `Pending` or `Tracking`.
    pub in_flight: u64,
    /// When the oldest of those was allocated.
    pub oldest_in_flight: Option<UnixMillis>,
    /// Highest nonce among `Confirmed` records.
    pub last_confirmed_nonce: Option<u64>,
    /// Records `Reconciling`.
    pub reconciling: u64,
}

/// Nonces and managed transactions in SQL. One implementation per database; all pass the
/// conformance suite in `tests/store_conformance.rs`.
#[async_trait]
pub trait NonceStore: Send + Sync + fmt::Debug {
    /// For reports: "sqlite", "postgres".
    fn name(&self) -> &'static str;

    /// The signer's stored next nonce, `None` before its first allocation.
    async fn next_nonce(&self, signer: Address) -> Result<Option<u64>, StoreError>;

    /// The record of `request_id` with its attempts.
    async fn transaction(
        &self,
        request_id: &RequestId,
    ) -> Result<Option<ManagedTransaction>, StoreError>;

    /// Every `(request id, nonce)` of `signer`, by nonce.
    async fn nonces(&self, signer: Address) -> Result<Vec<(RequestId, u64)>, StoreError>;

    /// Up to `limit` records of `signer` in `status`, with their attempts, by nonce.
    async fn transactions_with_status(
        &self,
        signer: Address,
        status: TxStatus,
        limit: usize,
    ) -> Result<Vec<ManagedTransaction>, StoreError>;

    /// In ONE fenced transaction: gives each new request id the next nonce from
    /// `max(floor, stored next nonce)` (gapless, in request order), returns the stored
    /// nonce for request ids already present (also for a repeat inside `requests`), and
    /// stores the signer's new next nonce. Records start `Pending`.
    async fn commit_allocations(
        &self,
        signer: Address,
        token: FencingToken,
        floor: u64,
        requests: &[NewAllocation],
    ) -> Result<AllocationBatch, StoreError>;

    /// The request id and status of the record holding `nonce` of `signer`, if any.
    async fn record_at_nonce(
        &self,
        signer: Address,
        nonce: u64,
    ) -> Result<Option<(RequestId, TxStatus)>, StoreError>;

    /// Counts and bounds of the signer's records (no attempts read).
    async fn signer_summary(&self, signer: Address) -> Result<SignerSummary, StoreError>;

    /// Stores a signed attempt of `request_id` (fenced). Idempotent per hash.
    async fn record_attempt(
        &self,
        signer: Address,
        token: FencingToken,
        request_id: &RequestId,
        attempt: &TxAttempt,
    ) -> Result<(), StoreError>;

    /// Moves `request_id` to `status` (fenced) and returns the status it had. Refuses a
    /// transition [`TxStatus::can_move_to`] forbids.
    async fn set_status(
        &self,
        signer: Address,
        token: FencingToken,
        request_id: &RequestId,
        status: TxStatus,
    ) -> Result<TxStatus, StoreError>;

    /// [`NonceStore::set_status`] that also stores (`Some`) or clears (`None`) the receipt
    /// the status rests on, in the same fenced transaction, so reorg watching survives a
    /// restart ([`NonceStore::stored_receipts`]).
    ///
    /// The default keeps no receipt (a store without the columns): it is
    /// [`NonceStore::set_status`].
    async fn set_status_with_receipt(
        &self,
        signer: Address,
        token: FencingToken,
        request_id: &RequestId,
        status: TxStatus,
        receipt: Option<&ReceiptSummary>,
    ) -> Result<TxStatus, StoreError> {
        let _ = receipt;
        self.set_status(signer, token, request_id, status).await
    }

    /// Up to `limit` records of `signer` with a stored receipt in a block at or above
    /// `min_block`, with their status, by block. The default stores none.
    async fn stored_receipts(
        &self,
        signer: Address,
        min_block: u64,
        limit: usize,
    ) -> Result<Vec<(RequestId, TxStatus, ReceiptSummary)>, StoreError> {
        let _ = (signer, min_block, limit);
        Ok(Vec::new())
    }
}

/// A stored receipt as read: request_id, status, block number, block hash, tx hash, success.
pub(crate) type ReceiptRow = (String, String, i64, String, String, bool);

pub(crate) fn receipt_from_row(
    row: ReceiptRow,
) -> Result<(RequestId, TxStatus, ReceiptSummary), StoreError> {
    let (request_id, status, block_number, block_hash, hash, success) = row;
    let corrupt = |what: &str| StoreError::Corrupt(format!("managed_tx {request_id}: {what}"));
    let receipt = ReceiptSummary {
        hash: hash.parse().map_err(|_| corrupt("bad receipt hash"))?,
        block_number: to_u64("receipt block", block_number)?,
        block_hash: block_hash
            .parse()
            .map_err(|_| corrupt("bad receipt block hash"))?,
        success,
    };
    let status = TxStatus::parse(&status).ok_or_else(|| corrupt("bad status"))?;
    let request_id = RequestId::new(request_id.clone()).map_err(|_| corrupt("bad request id"))?;
    Ok((request_id, status, receipt))
}

pub(crate) fn to_i64(what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} exceeds i64")))
}

pub(crate) fn to_u64(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is negative")))
}

/// `managed_tx` as read: request_id, signer, nonce, payload, status, token, created, updated.
pub(crate) type TxRow = (String, String, i64, String, String, i64, i64, i64);
/// `tx_attempt` as read: hash, max fee, priority fee, raw, sent at.
pub(crate) type AttemptRow = (String, String, String, Vec<u8>, i64);

pub(crate) fn transaction_from_rows(
    row: TxRow,
    attempts: Vec<AttemptRow>,
) -> Result<ManagedTransaction, StoreError> {
    let (request_id, signer, nonce, payload, status, token, created_at_ms, updated_at_ms) = row;
    let corrupt = |what: &str| StoreError::Corrupt(format!("managed_tx {request_id}: {what}"));
    let signer: Address = signer.parse().map_err(|_| corrupt("bad signer"))?;
    let payload: TxPayload = serde_json::from_str(&payload).map_err(|_| corrupt("bad payload"))?;
    let status = TxStatus::parse(&status).ok_or_else(|| corrupt("bad status"))?;
    let attempts = attempts
        .into_iter()
        .map(|(hash, max_fee, priority_fee, raw, sent_at_ms)| {
            Ok(TxAttempt {
                hash: hash
                    .parse::<B256>()
                    .map_err(|_| corrupt("bad attempt hash"))?,
                max_fee_per_gas: max_fee.parse().map_err(|_| corrupt("bad max fee"))?,
                max_priority_fee_per_gas: priority_fee
                    .parse()
                    .map_err(|_| corrupt("bad priority fee"))?,
                raw: raw.into(),
                sent_at: UnixMillis(sent_at_ms),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(ManagedTransaction {
        request_id: RequestId::new(request_id.clone()).map_err(|_| corrupt("bad request id"))?,
        signer,
        nonce: to_u64("nonce", nonce)?,
        payload,
        status,
        fencing_token: FencingToken::new(token),
        created_at: UnixMillis(created_at_ms),
        updated_at: UnixMillis(updated_at_ms),
        attempts,
    })
}

/// What a request id already maps to, as read inside an allocation transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredAllocation {
    pub(crate) signer: Address,
    pub(crate) nonce: u64,
}

/// A `managed_tx` row an allocation batch inserts.
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    pub(crate) request_id: String,
    pub(crate) nonce: i64,
    pub(crate) payload: String,
}

/// The pure part of an allocation batch: gives each request id not in `stored` (and not
/// repeated earlier in `requests`) the next nonce from `start`, in request order. Returns
/// the answers, the rows to insert and the next nonce after them.
pub(crate) fn plan_allocations(
    signer: Address,
    start: u64,
    requests: &[NewAllocation],
    stored: &std::collections::HashMap<String, StoredAllocation>,
) -> Result<(Vec<Allocation>, Vec<NewRow>, u64), StoreError> {
    let mut next = start;
    let mut allocations = Vec::with_capacity(requests.len());
    let mut rows: Vec<NewRow> = Vec::with_capacity(requests.len());
    let mut in_batch: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for request in requests {
        let id = request.request_id.as_str();
        if let Some(existing) = stored.get(id) {
            allocations.push(Allocation {
                request_id: request.request_id.clone(),
                signer: existing.signer,
                nonce: existing.nonce,
                existing: true,
            });
            continue;
        }
        if let Some(&nonce) = in_batch.get(id) {
            allocations.push(Allocation {
                request_id: request.request_id.clone(),
                signer,
                nonce,
                existing: true,
            });
            continue;
        }
        let payload = serde_json::to_string(&request.payload)
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        rows.push(NewRow {
            request_id: id.to_owned(),
            nonce: to_i64("nonce", next)?,
            payload,
        });
        in_batch.insert(id, next);
        allocations.push(Allocation {
            request_id: request.request_id.clone(),
            signer,
            nonce: next,
            existing: false,
        });
        next = next
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt(format!("nonce of {signer:#x} overflows")))?;
    }
    debug_assert_eq!(allocations.len(), requests.len());
    debug_assert_eq!(next - start, rows.len() as u64);
    Ok((allocations, rows, next))
}

/// Parses a stored `(signer, nonce)` pair.
pub(crate) fn stored_allocation(
    request_id: &str,
    signer: &str,
    nonce: i64,
) -> Result<StoredAllocation, StoreError> {
    Ok(StoredAllocation {
        signer: signer
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("managed_tx {request_id}: bad signer")))?,
        nonce: to_u64("nonce", nonce)?,
    })
}

/// Implements [`NonceStore`] for a backend struct with fields `pool` and `clock`, given
/// its inherent `begin_fenced` (an `async fn(&Self, Address, FencingToken) ->
/// Result<Transaction>` that has passed the fence), its inherent `try_commit_allocations`
/// (one attempt at an allocation batch in a constant number of statements, `None` when a
/// concurrent insert made it roll back) and `$lock_suffix` (`" FOR UPDATE"` where the database needs
/// an explicit row lock; SQLite's `BEGIN IMMEDIATE` already holds the only write lock).
macro_rules! sql_nonce_store {
    ($store:ty, $name:literal, $lock_suffix:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::NonceStore for $store {
            fn name(&self) -> &'static str {
                $name
            }

            async fn next_nonce(
                &self,
                signer: alloy_primitives::Address,
            ) -> Result<Option<u64>, $crate::error::StoreError> {
                let next: Option<i64> =
                    sqlx::query_scalar("SELECT next_nonce FROM signer_nonce WHERE signer = $1")
                        .bind($crate::types::signer_key(signer))
                        .fetch_optional(&self.pool)
                        .await?;
                next.map(|next| $crate::store::to_u64("next_nonce", next))
                    .transpose()
            }

            async fn transaction(
                &self,
                request_id: &$crate::types::RequestId,
            ) -> Result<Option<$crate::types::ManagedTransaction>, $crate::error::StoreError> {
                let row: Option<$crate::store::TxRow> = sqlx::query_as(
                    "SELECT request_id, signer, nonce, payload, status, fencing_token,
                            created_at_ms, updated_at_ms
                     FROM managed_tx WHERE request_id = $1",
                )
                .bind(request_id.as_str())
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let attempts: Vec<$crate::store::AttemptRow> = sqlx::query_as(
                    "SELECT hash, max_fee, priority_fee, raw, sent_at_ms FROM tx_attempt
                     WHERE request_id = $1 ORDER BY seq",
                )
                .bind(request_id.as_str())
                .fetch_all(&self.pool)
                .await?;
                $crate::store::transaction_from_rows(row, attempts).map(Some)
            }

            async fn nonces(
                &self,
                signer: alloy_primitives::Address,
            ) -> Result<Vec<($crate::types::RequestId, u64)>, $crate::error::StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT request_id, nonce FROM managed_tx WHERE signer = $1 ORDER BY nonce",
                )
                .bind($crate::types::signer_key(signer))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(request_id, nonce)| {
                        let request_id =
                            $crate::types::RequestId::new(request_id).map_err(|error| {
                                $crate::error::StoreError::Corrupt(error.to_string())
                            })?;
                        Ok((request_id, $crate::store::to_u64("nonce", nonce)?))
                    })
                    .collect()
            }

            async fn transactions_with_status(
                &self,
                signer: alloy_primitives::Address,
                status: $crate::types::TxStatus,
                limit: usize,
            ) -> Result<Vec<$crate::types::ManagedTransaction>, $crate::error::StoreError> {
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT request_id FROM managed_tx WHERE signer = $1 AND status = $2
                     ORDER BY nonce LIMIT $3",
                )
                .bind($crate::types::signer_key(signer))
                .bind(status.as_str())
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
                let mut records = Vec::with_capacity(ids.len());
                for id in ids {
                    let request_id = $crate::types::RequestId::new(id)
                        .map_err(|error| $crate::error::StoreError::Corrupt(error.to_string()))?;
                    // A record that changed status in between is skipped, not an error.
                    if let Some(record) =
                        $crate::store::NonceStore::transaction(self, &request_id).await?
                    {
                        if record.status == status {
                            records.push(record);
                        }
                    }
                }
                Ok(records)
            }

            async fn commit_allocations(
                &self,
                signer: alloy_primitives::Address,
                token: ledger_lease::FencingToken,
                floor: u64,
                requests: &[$crate::store::NewAllocation],
            ) -> Result<$crate::store::AllocationBatch, $crate::error::StoreError> {
                // A request id inserted by another signer's writer between our lookup and
                // our insert makes the insert skip a row; the batch then rolls back and is
                // planned again, seeing that row as existing.
                for _ in 0..$crate::limits::ALLOCATION_BATCH_ATTEMPTS {
                    if let Some(batch) = self
                        .try_commit_allocations(signer, token, floor, requests)
                        .await?
                    {
                        return Ok(batch);
                    }
                }
                Err($crate::error::StoreError::Corrupt(format!(
                    "allocation batch for {signer:#x} kept racing other signers' inserts"
                )))
            }

            async fn record_at_nonce(
                &self,
                signer: alloy_primitives::Address,
                nonce: u64,
            ) -> Result<
                Option<($crate::types::RequestId, $crate::types::TxStatus)>,
                $crate::error::StoreError,
            > {
                let row: Option<(String, String)> = sqlx::query_as(
                    "SELECT request_id, status FROM managed_tx WHERE signer = $1 AND nonce = $2",
                )
                .bind($crate::types::signer_key(signer))
                .bind($crate::store::to_i64("nonce", nonce)?)
                .fetch_optional(&self.pool)
                .await?;
                let Some((request_id, status)) = row else {
                    return Ok(None);
                };
                let status = $crate::types::TxStatus::parse(&status).ok_or_else(|| {
                    $crate::error::StoreError::Corrupt(format!(
                        "managed_tx {request_id}: bad status {status}"
                    ))
                })?;
                let request_id = $crate::types::RequestId::new(request_id)
                    .map_err(|error| $crate::error::StoreError::Corrupt(error.to_string()))?;
                Ok(Some((request_id, status)))
            }

            async fn signer_summary(
                &self,
                signer: alloy_primitives::Address,
            ) -> Result<$crate::store::SignerSummary, $crate::error::StoreError> {
                let key = $crate::types::signer_key(signer);
                let (in_flight, oldest): (i64, Option<i64>) = sqlx::query_as(
                    "SELECT COUNT(*), MIN(created_at_ms) FROM managed_tx
                     WHERE signer = $1 AND status IN ('pending', 'tracking')",
                )
                .bind(&key)
                .fetch_one(&self.pool)
                .await?;
                let last_confirmed: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(nonce) FROM managed_tx WHERE signer = $1 AND status = 'confirmed'",
                )
                .bind(&key)
                .fetch_one(&self.pool)
                .await?;
                let reconciling: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM managed_tx WHERE signer = $1 AND status = 'reconciling'",
                )
                .bind(&key)
                .fetch_one(&self.pool)
                .await?;
                Ok($crate::store::SignerSummary {
                    in_flight: $crate::store::to_u64("count", in_flight)?,
                    oldest_in_flight: oldest.map(ledger_lease::UnixMillis),
                    last_confirmed_nonce: last_confirmed
                        .map(|nonce| $crate::store::to_u64("nonce", nonce))
                        .transpose()?,
                    reconciling: $crate::store::to_u64("count", reconciling)?,
                })
            }

            async fn record_attempt(
                &self,
                signer: alloy_primitives::Address,
                token: ledger_lease::FencingToken,
                request_id: &$crate::types::RequestId,
                attempt: &$crate::types::TxAttempt,
            ) -> Result<(), $crate::error::StoreError> {
                let mut tx = self.begin_fenced(signer, token).await?;
                let owner: Option<String> =
                    sqlx::query_scalar("SELECT signer FROM managed_tx WHERE request_id = $1")
                        .bind(request_id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                match owner {
                    None => return Err($crate::error::StoreError::NotFound(request_id.clone())),
                    Some(owner) if owner != $crate::types::signer_key(signer) => {
                        return Err($crate::error::StoreError::Corrupt(format!(
                            "request {request_id} belongs to {owner}, not {signer:#x}"
                        )))
                    }
                    Some(_) => {}
                }
                sqlx::query(
                    "INSERT INTO tx_attempt (request_id, hash, max_fee, priority_fee, raw,
                         sent_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hash) DO NOTHING",
                )
                .bind(request_id.as_str())
                .bind(format!("{:#x}", attempt.hash))
                .bind(attempt.max_fee_per_gas.to_string())
                .bind(attempt.max_priority_fee_per_gas.to_string())
                .bind(attempt.raw.to_vec())
                .bind(attempt.sent_at.0)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE managed_tx SET fencing_token = $1, updated_at_ms = $2
                     WHERE request_id = $3",
                )
                .bind(token.get())
                .bind(self.clock.now().0)
                .bind(request_id.as_str())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn set_status(
                &self,
                signer: alloy_primitives::Address,
                token: ledger_lease::FencingToken,
                request_id: &$crate::types::RequestId,
                status: $crate::types::TxStatus,
            ) -> Result<$crate::types::TxStatus, $crate::error::StoreError> {
                self.write_status(signer, token, request_id, status, None)
                    .await
            }

            async fn set_status_with_receipt(
                &self,
                signer: alloy_primitives::Address,
                token: ledger_lease::FencingToken,
                request_id: &$crate::types::RequestId,
                status: $crate::types::TxStatus,
                receipt: Option<&$crate::chain::ReceiptSummary>,
            ) -> Result<$crate::types::TxStatus, $crate::error::StoreError> {
                self.write_status(signer, token, request_id, status, Some(receipt))
                    .await
            }

            async fn stored_receipts(
                &self,
                signer: alloy_primitives::Address,
                min_block: u64,
                limit: usize,
            ) -> Result<
                Vec<(
                    $crate::types::RequestId,
                    $crate::types::TxStatus,
                    $crate::chain::ReceiptSummary,
                )>,
                $crate::error::StoreError,
            > {
                let rows: Vec<$crate::store::ReceiptRow> = sqlx::query_as(
                    "SELECT request_id, status, receipt_block_number, receipt_block_hash,
                            receipt_tx_hash, receipt_success
                     FROM managed_tx
                     WHERE signer = $1 AND receipt_block_number >= $2
                     ORDER BY receipt_block_number, nonce LIMIT $3",
                )
                .bind($crate::types::signer_key(signer))
                .bind($crate::store::to_i64("block", min_block)?)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map($crate::store::receipt_from_row)
                    .collect()
            }
        }

        impl $store {
            /// A fenced status write; `receipt`: `None` leaves the stored receipt as it is,
            /// `Some(None)` clears it, `Some(Some(r))` stores `r`.
            async fn write_status(
                &self,
                signer: alloy_primitives::Address,
                token: ledger_lease::FencingToken,
                request_id: &$crate::types::RequestId,
                status: $crate::types::TxStatus,
                receipt: Option<Option<&$crate::chain::ReceiptSummary>>,
            ) -> Result<$crate::types::TxStatus, $crate::error::StoreError> {
                let mut tx = self.begin_fenced(signer, token).await?;
                let row: Option<(String, String)> = sqlx::query_as(concat!(
                    "SELECT signer, status FROM managed_tx WHERE request_id = $1",
                    $lock_suffix
                ))
                .bind(request_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let Some((owner, current)) = row else {
                    return Err($crate::error::StoreError::NotFound(request_id.clone()));
                };
                if owner != $crate::types::signer_key(signer) {
                    return Err($crate::error::StoreError::Corrupt(format!(
                        "request {request_id} belongs to {owner}, not {signer:#x}"
                    )));
                }
                let current = $crate::types::TxStatus::parse(&current).ok_or_else(|| {
                    $crate::error::StoreError::Corrupt(format!(
                        "managed_tx {request_id}: bad status {current}"
                    ))
                })?;
                if !current.can_move_to(status) {
                    return Err($crate::error::StoreError::InvalidTransition {
                        request_id: request_id.clone(),
                        from: current,
                        to: status,
                    });
                }
                sqlx::query(
                    "UPDATE managed_tx SET status = $1, fencing_token = $2, updated_at_ms = $3
                     WHERE request_id = $4",
                )
                .bind(status.as_str())
                .bind(token.get())
                .bind(self.clock.now().0)
                .bind(request_id.as_str())
                .execute(&mut *tx)
                .await?;
                if let Some(receipt) = receipt {
                    sqlx::query(
                        "UPDATE managed_tx SET receipt_block_number = $1,
                             receipt_block_hash = $2, receipt_tx_hash = $3,
                             receipt_success = $4
                         WHERE request_id = $5",
                    )
                    .bind(
                        receipt
                            .map(|r| $crate::store::to_i64("block", r.block_number))
                            .transpose()?,
                    )
                    .bind(receipt.map(|r| format!("{:#x}", r.block_hash)))
                    .bind(receipt.map(|r| format!("{:#x}", r.hash)))
                    .bind(receipt.map(|r| r.success))
                    .bind(request_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(current)
            }
        }
    };
}
pub(crate) use sql_nonce_store;
