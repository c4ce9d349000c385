//! The reference table: which admitted transactions hold references on which RESOURCE
//! UTXOs, and the per-resource counts derived from it.
//!
//! Seed 001 counts concurrent users of a resource so it cannot be consumed (upgraded,
//! deleted, transferred) while in use. This crate defines when a reference is held:
//!
//! - **taken** when a transaction with reference-only inputs is *admitted for execution*
//!   ([`crate::state::UtxoState::admit`]), after it validated on the current tip and every
//!   referenced resource was below its `max_concurrent_references`;
//! - **released**, deterministically, by the first of:
//!   1. **inclusion**: a block containing the transaction is applied (released before the
//!      transaction's own inputs are checked, so it is never blocked by itself);
//!   2. **drop**: [`crate::state::UtxoState::drop_admission`] (evicted from the pool);
//!   3. **conflict**: a block consumes an input the admitted transaction would consume, so
//!      it can never be included;
//!   4. **expiry**: applying a block of height greater than
//!      `admitted_at_height + ChainParams::admission_ttl_blocks`.
//!
//! So no one can pin a resource for longer than `admission_ttl_blocks` blocks without
//! re-admitting, and re-admission needs a transaction that is still valid. Block-included
//! references of transactions that were never admitted are momentary: they must find room
//! below the limit, and are released at inclusion.
//!
//! Counts are not stored in the UTXO records; [`ReferenceTable::count`] is the truth and
//! the state fills `ResourceUTXOConstraints.reference_count` (and status REFERENCED) when
//! it hands out records. Invariant, checked by [`ReferenceTable::check_invariants`]:
//! every count equals the number of admissions that reference the outpoint.
//!
//! The table is node-local execution state, like a mempool: two nodes with different
//! admissions can disagree about whether a block consuming a resource is valid. Making
//! admissions chain state (recorded in blocks) is a decision for the consensus slice.

use std::collections::BTreeMap;

use crate::model::{OutPointKey, TxId};

/// One admitted transaction and the references it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The admitted transaction.
    pub tx_id: TxId,
    /// RESOURCE outpoints it references (each counted once).
    pub referenced: Vec<OutPointKey>,
    /// Outpoints it would consume (a block consuming one of them drops the admission).
    pub consumed: Vec<OutPointKey>,
    /// Tip height when admitted.
    pub admitted_at_height: u64,
    /// Released when a block above this height is applied.
    pub release_after_height: u64,
}

/// Admissions and the counts derived from them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReferenceTable {
    admissions: BTreeMap<TxId, Admission>,
    counts: BTreeMap<OutPointKey, u64>,
    totals: BTreeMap<OutPointKey, u64>,
}

impl ReferenceTable {
    /// Admissions currently holding references on `outpoint`.
    pub fn count(&self, outpoint: &OutPointKey) -> u64 {
        self.counts.get(outpoint).copied().unwrap_or(0)
    }

    /// References ever admitted on `outpoint` while it was live on this node.
    pub fn total(&self, outpoint: &OutPointKey) -> u64 {
        self.totals.get(outpoint).copied().unwrap_or(0)
    }

    /// The admission of `tx_id`, if any.
    pub fn admission(&self, tx_id: &TxId) -> Option<&Admission> {
        self.admissions.get(tx_id)
    }

    /// All admissions, by txid.
    pub fn admissions(&self) -> impl Iterator<Item = &Admission> {
        self.admissions.values()
    }

    /// Number of admissions.
    pub fn len(&self) -> usize {
        self.admissions.len()
    }

    /// Whether no admission is held.
    pub fn is_empty(&self) -> bool {
        self.admissions.is_empty()
    }

    /// Outpoints with a nonzero count.
    pub fn referenced_outpoints(&self) -> impl Iterator<Item = (&OutPointKey, &u64)> {
        self.counts.iter()
    }

    /// Takes the references of a new admission (counts and totals go up).
    pub fn admit(&mut self, admission: Admission) {
        for outpoint in &admission.referenced {
            *self.totals.entry(*outpoint).or_insert(0) += 1;
        }
        self.restore(admission);
    }

    /// Puts back an admission released by a block that is being rolled back (counts only:
    /// totals already include it).
    pub fn restore(&mut self, admission: Admission) {
        for outpoint in &admission.referenced {
            *self.counts.entry(*outpoint).or_insert(0) += 1;
        }
        self.admissions.insert(admission.tx_id, admission);
    }

    /// Releases an admission's references; returns it if it was held.
    pub fn release(&mut self, tx_id: &TxId) -> Option<Admission> {
        let admission = self.admissions.remove(tx_id)?;
        for outpoint in &admission.referenced {
            if let Some(count) = self.counts.get_mut(outpoint) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.counts.remove(outpoint);
                }
            }
        }
        Some(admission)
    }

    /// Forgets the statistics of an outpoint that left the live set.
    pub fn forget(&mut self, outpoint: &OutPointKey) -> u64 {
        self.totals.remove(outpoint).unwrap_or(0)
    }

    /// Sets the statistics of an outpoint that came back to the live set (rollback).
    pub fn set_total(&mut self, outpoint: OutPointKey, total: u64) {
        if total > 0 {
            self.totals.insert(outpoint, total);
        }
    }

    /// Reference totals of live outpoints (for stores that persist the table).
    pub fn totals(&self) -> impl Iterator<Item = (&OutPointKey, &u64)> {
        self.totals.iter()
    }

    /// Admissions to release by expiry when a block of `block_height` is applied.
    pub fn expiring_at(&self, block_height: u64) -> Vec<TxId> {
        self.admissions
            .values()
            .filter(|admission| admission.release_after_height < block_height)
            .map(|admission| admission.tx_id)
            .collect()
    }

    /// Checks that every count equals the number of admissions referencing the outpoint.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut derived: BTreeMap<OutPointKey, u64> = BTreeMap::new();
        for admission in self.admissions.values() {
            for outpoint in &admission.referenced {
                *derived.entry(*outpoint).or_insert(0) += 1;
            }
        }
        if derived != self.counts {
            return Err(format!(
                "reference counts {:?} differ from admissions {:?}",
                self.counts, derived
            ));
        }
        Ok(())
    }
}
