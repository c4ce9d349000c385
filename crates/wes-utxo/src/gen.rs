//! A deterministic synthetic chain generator: valid, signed blocks over N owners, the same
//! blocks for the same seed and state. Tests use it for model-based checks; benchmarks for
//! realistic load.
//!
//! [`ChainGenerator::genesis`] allocates native coin, a token and a resource to the owners;
//! [`ChainGenerator::next_block`] builds a block on whatever tip the given state has (so it
//! follows rollbacks) with a mix of: transfers (with change, fees, sometimes a token mint)
//! whose outputs use all seven locking conditions, resource and state creation, reference-
//! only use of resources, and consumption of resources and states. Every input it spends is
//! unlockable at the new block, and no outpoint is used twice in one block.

use std::collections::{BTreeMap, HashMap, HashSet};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::locking::{build, message::Target, OPERATION_CONSUME, OPERATION_REFERENCE};
use crate::model::{self, asset_amount, Address, AssetId, ContentHash, OutPointKey, TokenId};
use crate::pb;
use crate::pb::locking_condition::Condition;
use crate::state::UtxoState;
use crate::validate::ChainTip;

/// Seconds between generated blocks.
pub const BLOCK_INTERVAL_SECONDS: u64 = 10;
/// Timestamp of the generated genesis block.
pub const GENESIS_TIMESTAMP: u64 = 1_700_000_000;
/// Contract method the generator's execution proofs name.
pub const CONTRACT_METHOD: &str = "call";
const GENESIS_OWNERS_MAX: usize = 60;
const GENESIS_COINS_PER_OWNER: u64 = 1_000_000;

/// One generated key holder.
#[derive(Clone, Debug)]
pub struct Owner {
    /// Its signing key.
    pub signing_key: SigningKey,
    /// Its public key.
    pub public_key: VerifyingKey,
    /// Its address.
    pub address: Address,
}

impl Owner {
    /// The owner derived from `seed` and `index`.
    pub fn derive(seed: u64, index: usize) -> Self {
        let secret = model::sha256(format!("wes-utxo-gen/{seed}/{index}").as_bytes());
        let signing_key = SigningKey::from_bytes(&secret);
        let public_key = signing_key.verifying_key();
        Self {
            signing_key,
            public_key,
            address: Address::from_public_key(&public_key.to_bytes()),
        }
    }
}

/// Builds a block with a correct header on `parent` (None: genesis).
pub fn make_block(
    parent: Option<&ChainTip>,
    timestamp: u64,
    transactions: Vec<pb::Transaction>,
) -> pb::Block {
    let header = pb::BlockHeader {
        height: parent.map_or(0, |tip| tip.height + 1),
        parent_hash: parent.map_or([0u8; 32], |tip| tip.hash.0).to_vec(),
        timestamp,
        transactions_root: model::transactions_root(&transactions).to_vec(),
    };
    pb::Block {
        header: Some(header),
        transactions,
    }
}

/// A coinbase transaction for `height` paying `outputs`.
pub fn coinbase(height: u64, outputs: Vec<pb::TxOutput>) -> pb::Transaction {
    pb::Transaction {
        version: 1,
        inputs: Vec::new(),
        outputs,
        coinbase: Some(pb::Coinbase {
            height,
            extra_data: Vec::new(),
        }),
    }
}

/// An ASSET output of the native coin.
pub fn native_output(owner: &Address, amount: u64, lock: pb::LockingCondition) -> pb::TxOutput {
    asset_output(owner, AssetId::Native, amount, lock)
}

/// An ASSET output.
pub fn asset_output(
    owner: &Address,
    asset: AssetId,
    amount: u64,
    lock: pb::LockingCondition,
) -> pb::TxOutput {
    use pb::asset_output::AssetContent;
    let asset_content = match asset {
        AssetId::Native => AssetContent::NativeCoin(pb::NativeCoinAsset { amount }),
        AssetId::Token(token_id) => AssetContent::ContractToken(pb::ContractTokenAsset {
            token_id: token_id.0.to_vec(),
            amount,
        }),
    };
    pb::TxOutput {
        owner: owner.0.to_vec(),
        locking_conditions: vec![lock],
        output_content: Some(pb::tx_output::OutputContent::Asset(pb::AssetOutput {
            asset_content: Some(asset_content),
        })),
    }
}

/// A RESOURCE output.
pub fn resource_output(
    owner: &Address,
    content_hash: ContentHash,
    max_concurrent_references: u64,
    lock: pb::LockingCondition,
) -> pb::TxOutput {
    pb::TxOutput {
        owner: owner.0.to_vec(),
        locking_conditions: vec![lock],
        output_content: Some(pb::tx_output::OutputContent::Resource(pb::ResourceOutput {
            content_hash: content_hash.0.to_vec(),
            name: "generated".to_string(),
            category: pb::ResourceCategory::Executable as i32,
            max_concurrent_references,
        })),
    }
}

/// A STATE output.
pub fn state_output(
    owner: &Address,
    payload: Vec<u8>,
    ttl_seconds: u64,
    lock: pb::LockingCondition,
) -> pb::TxOutput {
    pb::TxOutput {
        owner: owner.0.to_vec(),
        locking_conditions: vec![lock],
        output_content: Some(pb::tx_output::OutputContent::State(pb::StateOutput {
            state_id: b"generated".to_vec(),
            payload,
            ttl_seconds,
            retention_policy: pb::StateRetentionPolicy::KeepUntilConsumed as i32,
        })),
    }
}

/// An unsigned input.
pub fn input(outpoint: &OutPointKey, is_reference_only: bool) -> pb::TxInput {
    pb::TxInput {
        previous_output: Some(outpoint.to_proto()),
        is_reference_only,
        unlocking_proof: None,
    }
}

/// The facts of the block an input is proven for.
#[derive(Clone, Copy)]
struct ProveAt<'a> {
    height: u64,
    timestamp: u64,
    is_reference_only: bool,
    referenced_contracts: &'a [ContentHash],
}

/// The generator. Deterministic: same seed, same calls, same state => same blocks.
pub struct ChainGenerator {
    rng: StdRng,
    owners: Vec<Owner>,
    key_index: HashMap<[u8; 32], usize>,
    genesis_token: TokenId,
}

impl ChainGenerator {
    /// A generator over `n_owners` (at least 2) owners derived from `seed`.
    pub fn new(seed: u64, n_owners: usize) -> Self {
        let n_owners = n_owners.max(2);
        let owners: Vec<Owner> = (0..n_owners)
            .map(|index| Owner::derive(seed, index))
            .collect();
        let key_index = owners
            .iter()
            .enumerate()
            .map(|(index, owner)| (owner.public_key.to_bytes(), index))
            .collect();
        let genesis_token = TokenId(model::sha256(
            format!("wes-utxo-gen/{seed}/token").as_bytes(),
        ));
        Self {
            rng: StdRng::seed_from_u64(seed),
            owners,
            key_index,
            genesis_token,
        }
    }

    /// The owners.
    pub fn owners(&self) -> &[Owner] {
        &self.owners
    }

    /// The token allocated at genesis.
    pub fn genesis_token(&self) -> TokenId {
        self.genesis_token
    }

    /// The genesis block: native coin, the genesis token and one resource for each of the
    /// first owners.
    pub fn genesis(&mut self) -> pb::Block {
        let mut outputs = Vec::new();
        for (index, owner) in self.owners.iter().take(GENESIS_OWNERS_MAX).enumerate() {
            let lock = build::single_key_lock(&owner.public_key);
            for _ in 0..2 {
                outputs.push(native_output(
                    &owner.address,
                    GENESIS_COINS_PER_OWNER,
                    lock.clone(),
                ));
            }
            outputs.push(asset_output(
                &owner.address,
                AssetId::Token(self.genesis_token),
                10_000,
                lock.clone(),
            ));
            let content_hash = ContentHash(model::sha256(
                format!("genesis-resource-{index}").as_bytes(),
            ));
            outputs.push(resource_output(&owner.address, content_hash, 2, lock));
        }
        make_block(None, GENESIS_TIMESTAMP, vec![coinbase(0, outputs)])
    }

    fn random_owner(&mut self) -> usize {
        self.rng.random_range(0..self.owners.len())
    }

    /// A random locking condition for `owner_index`, using every kind over time.
    fn random_lock(
        &mut self,
        owner_index: usize,
        height: u64,
        timestamp: u64,
        contracts: &[ContentHash],
    ) -> pb::LockingCondition {
        let owner = self.owners[owner_index].public_key;
        let other = self.owners[(owner_index + 1) % self.owners.len()].public_key;
        let third = self.owners[(owner_index + 2) % self.owners.len()].public_key;
        let executor = self.owners[0].public_key;
        match self.rng.random_range(0..20) {
            0..=8 => build::single_key_lock(&owner),
            9 if third != owner && third != other => {
                build::multi_key_lock(2, &[owner, other, third])
            }
            10 if third != owner && third != other => {
                build::threshold_lock(2, &[owner, other, third])
            }
            11 | 12 => {
                let expiry = height + self.rng.random_range(1..6);
                build::delegation_lock(&owner, &[other], &[OPERATION_CONSUME], expiry)
            }
            13 => build::time_lock(
                timestamp + self.rng.random_range(0..40),
                build::single_key_lock(&owner),
            ),
            14 => build::height_lock(
                height + self.rng.random_range(0..4),
                build::single_key_lock(&owner),
            ),
            15 if !contracts.is_empty() => {
                let contract = contracts[self.rng.random_range(0..contracts.len())];
                build::contract_lock(&contract, &[CONTRACT_METHOD], &executor)
            }
            _ => build::single_key_lock(&owner),
        }
    }

    fn can_prove(&self, condition: &pb::LockingCondition, at: ProveAt<'_>) -> bool {
        let known =
            |key: &[u8]| <[u8; 32]>::try_from(key).is_ok_and(|k| self.key_index.contains_key(&k));
        match &condition.condition {
            Some(Condition::SingleKeyLock(lock)) => known(&lock.public_key),
            Some(Condition::MultiKeyLock(lock)) => {
                lock.public_keys.iter().filter(|k| known(k)).count()
                    >= lock.required_signatures as usize
            }
            Some(Condition::ThresholdLock(lock)) => {
                lock.share_public_keys.iter().filter(|k| known(k)).count()
                    >= lock.threshold as usize
            }
            Some(Condition::DelegationLock(lock)) => known(&lock.owner_public_key),
            Some(Condition::ContractLock(lock)) => {
                known(&lock.executor_public_key)
                    && ContentHash::from_slice(&lock.contract_hash)
                        .is_ok_and(|h| at.referenced_contracts.contains(&h))
            }
            Some(Condition::TimeLock(lock)) => {
                at.timestamp >= lock.unlock_timestamp
                    && lock
                        .inner
                        .as_deref()
                        .is_some_and(|inner| self.can_prove(inner, at))
            }
            Some(Condition::HeightLock(lock)) => {
                at.height >= lock.unlock_height
                    && lock
                        .inner
                        .as_deref()
                        .is_some_and(|inner| self.can_prove(inner, at))
            }
            None => false,
        }
    }

    fn key(&self, public_key: &[u8]) -> Option<&SigningKey> {
        let array: [u8; 32] = public_key.try_into().ok()?;
        self.key_index
            .get(&array)
            .map(|index| &self.owners[*index].signing_key)
    }

    /// A proof for `condition`, if the generator holds the keys and the lock is open.
    fn prove(
        &self,
        condition: &pb::LockingCondition,
        target: &Target,
        at: ProveAt<'_>,
    ) -> Option<pb::Proof> {
        if !self.can_prove(condition, at) {
            return None;
        }
        match condition.condition.as_ref()? {
            Condition::SingleKeyLock(lock) => {
                Some(build::single_key_proof(self.key(&lock.public_key)?, target))
            }
            Condition::MultiKeyLock(lock) => {
                let signers = self.known_signers(&lock.public_keys, lock.required_signatures);
                Some(build::multi_key_proof(&signers, target))
            }
            Condition::ThresholdLock(lock) => {
                let signers = self.known_signers(&lock.share_public_keys, lock.threshold);
                Some(build::threshold_proof(&signers, target))
            }
            Condition::DelegationLock(lock) => {
                let operation = if at.is_reference_only {
                    OPERATION_REFERENCE
                } else {
                    OPERATION_CONSUME
                };
                Some(build::delegation_proof(
                    self.key(&lock.owner_public_key)?,
                    operation,
                    target,
                ))
            }
            Condition::ContractLock(lock) => {
                let contract = ContentHash::from_slice(&lock.contract_hash).ok()?;
                let call_input = model::sha256(&target.signing_hash.0);
                let call_result = model::sha256(&call_input);
                Some(build::execution_proof(
                    self.key(&lock.executor_public_key)?,
                    &contract,
                    CONTRACT_METHOD,
                    call_input,
                    call_result,
                    target,
                ))
            }
            Condition::TimeLock(lock) => Some(build::time_proof(self.prove(
                lock.inner.as_deref()?,
                target,
                at,
            )?)),
            Condition::HeightLock(lock) => Some(build::height_proof(self.prove(
                lock.inner.as_deref()?,
                target,
                at,
            )?)),
        }
    }

    fn known_signers(&self, keys: &[Vec<u8>], required: u32) -> Vec<(u32, &SigningKey)> {
        keys.iter()
            .enumerate()
            .filter_map(|(index, key)| self.key(key).map(|signing_key| (index as u32, signing_key)))
            .take(required as usize)
            .collect()
    }

    /// Signs every input of `transaction` (spent records in `spent`, same order) for the
    /// block at `height`/`timestamp`. Returns None if some input cannot be unlocked.
    pub fn sign(
        &self,
        transaction: &mut pb::Transaction,
        spent: &[pb::Utxo],
        height: u64,
        timestamp: u64,
    ) -> Option<()> {
        let signing_hash = model::signing_hash(transaction);
        let referenced_contracts: Vec<ContentHash> = transaction
            .inputs
            .iter()
            .zip(spent)
            .filter(|(input, _)| input.is_reference_only)
            .filter_map(|(_, utxo)| match &utxo.output()?.output_content {
                Some(pb::tx_output::OutputContent::Resource(r)) => {
                    ContentHash::from_slice(&r.content_hash).ok()
                }
                _ => None,
            })
            .collect();
        let mut proofs = Vec::with_capacity(spent.len());
        for (input_index, (input, utxo)) in transaction.inputs.iter().zip(spent).enumerate() {
            let at = ProveAt {
                height,
                timestamp,
                is_reference_only: input.is_reference_only,
                referenced_contracts: &referenced_contracts,
            };
            let conditions = &utxo.output()?.locking_conditions;
            let (condition_index, proof) =
                conditions
                    .iter()
                    .enumerate()
                    .find_map(|(condition_index, condition)| {
                        let target = Target {
                            signing_hash,
                            input_index: input_index as u32,
                            condition_index: condition_index as u32,
                        };
                        self.prove(condition, &target, at)
                            .map(|proof| (condition_index, proof))
                    })?;
            proofs.push(build::unlocking_proof(condition_index as u32, proof));
        }
        for (input, proof) in transaction.inputs.iter_mut().zip(proofs) {
            input.unlocking_proof = Some(proof);
        }
        Some(())
    }

    fn spendable(&self, utxo: &pb::Utxo, at: ProveAt<'_>) -> bool {
        utxo.output().is_some_and(|output| {
            output
                .locking_conditions
                .iter()
                .any(|c| self.can_prove(c, at))
        })
    }

    /// The next block on `state`'s tip with up to `n_transactions` transactions besides the
    /// coinbase. Call [`ChainGenerator::genesis`] first for an empty state.
    pub fn next_block(&mut self, state: &UtxoState, n_transactions: usize) -> pb::Block {
        let Some(tip) = state.tip() else {
            return self.genesis();
        };
        let height = tip.height + 1;
        let timestamp = tip.timestamp + BLOCK_INTERVAL_SECONDS;
        let live_resources: Vec<(OutPointKey, ContentHash)> = self
            .owners
            .iter()
            .flat_map(|owner| {
                state.utxos_by_owner_and_category(&owner.address, pb::UtxoCategory::Resource)
            })
            .filter_map(|utxo| {
                let outpoint = OutPointKey::from_proto(utxo.outpoint.as_ref()?).ok()?;
                match &utxo.output()?.output_content {
                    Some(pb::tx_output::OutputContent::Resource(r)) => {
                        Some((outpoint, ContentHash::from_slice(&r.content_hash).ok()?))
                    }
                    _ => None,
                }
            })
            .collect();
        let contracts: Vec<ContentHash> = live_resources.iter().map(|(_, hash)| *hash).collect();
        let mut used: HashSet<OutPointKey> = HashSet::new();
        let mut transactions = Vec::new();
        let mut fees = 0u64;
        let mut attempts = 0;
        while transactions.len() < n_transactions && attempts < n_transactions * 4 + 8 {
            attempts += 1;
            if let Some((transaction, fee)) = self.random_transaction(
                state,
                height,
                timestamp,
                &mut used,
                &live_resources,
                &contracts,
            ) {
                fees += fee;
                transactions.push(transaction);
            }
        }
        let miner = self.random_owner();
        let miner_address = self.owners[miner].address;
        let lock = build::single_key_lock(&self.owners[miner].public_key);
        let reward = state.params().block_reward.saturating_add(fees);
        transactions.insert(
            0,
            coinbase(height, vec![native_output(&miner_address, reward, lock)]),
        );
        make_block(Some(&tip), timestamp, transactions)
    }

    fn random_transaction(
        &mut self,
        state: &UtxoState,
        height: u64,
        timestamp: u64,
        used: &mut HashSet<OutPointKey>,
        live_resources: &[(OutPointKey, ContentHash)],
        contracts: &[ContentHash],
    ) -> Option<(pb::Transaction, u64)> {
        let owner_index = self.random_owner();
        let owner = self.owners[owner_index].address;
        let consume_at = ProveAt {
            height,
            timestamp,
            is_reference_only: false,
            referenced_contracts: contracts,
        };
        let key_of = |utxo: &pb::Utxo| OutPointKey::from_proto(utxo.outpoint.as_ref()?).ok();
        let candidates: Vec<pb::Utxo> = state
            .utxos_by_owner(&owner)
            .into_iter()
            .filter(|utxo| key_of(utxo).is_some_and(|k| !used.contains(&k)))
            .filter(|utxo| self.spendable(utxo, consume_at))
            .collect();
        let assets: Vec<&pb::Utxo> = candidates
            .iter()
            .filter(|u| u.category == pb::UtxoCategory::Asset as i32)
            .collect();
        let kind = self.rng.random_range(0..10);
        let mut spent: Vec<pb::Utxo> = Vec::new();
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        // Pick 1..=3 asset inputs for value.
        let n_asset_inputs = if assets.is_empty() {
            0
        } else {
            self.rng.random_range(1..=assets.len().min(3))
        };
        for utxo in assets.iter().take(n_asset_inputs) {
            spent.push((*utxo).clone());
            inputs.push(input(&key_of(utxo)?, false));
        }
        match kind {
            // Consume a resource or a state of this owner (if unexpired and unreferenced).
            0 | 1 => {
                let target = candidates.iter().find(|u| {
                    (u.category == pb::UtxoCategory::Resource as i32
                        && u.resource_constraints()
                            .is_some_and(|c| c.reference_count == 0))
                        || (u.category == pb::UtxoCategory::State as i32
                            && !u.is_expired_at(timestamp))
                })?;
                let recipient = self.random_owner();
                let lock = self.random_lock(recipient, height, timestamp, contracts);
                let mut output = target.output()?.clone();
                output.owner = self.owners[recipient].address.0.to_vec();
                output.locking_conditions = vec![lock];
                spent.push(target.clone());
                inputs.push(input(&key_of(target)?, false));
                outputs.push(output);
            }
            // Create a resource or a state.
            2 | 3 => {
                let lock = self.random_lock(owner_index, height, timestamp, contracts);
                let nonce: u64 = self.rng.random();
                if kind == 2 {
                    let content_hash = ContentHash(model::sha256(&nonce.to_be_bytes()));
                    outputs.push(resource_output(
                        &owner,
                        content_hash,
                        self.rng.random_range(0..3),
                        lock,
                    ));
                } else {
                    let ttl = if self.rng.random_bool(0.5) {
                        0
                    } else {
                        self.rng.random_range(5..60)
                    };
                    outputs.push(state_output(
                        &owner,
                        nonce.to_be_bytes().to_vec(),
                        ttl,
                        lock,
                    ));
                }
            }
            // Reference a live resource.
            4 | 5 => {
                if live_resources.is_empty() {
                    return None;
                }
                let (outpoint, _) = live_resources[self.rng.random_range(0..live_resources.len())];
                let resource = state.utxo(&outpoint)?;
                let reference_at = ProveAt {
                    is_reference_only: true,
                    ..consume_at
                };
                let max = resource
                    .resource_constraints()
                    .map_or(0, |c| c.max_concurrent_references);
                let count = resource
                    .resource_constraints()
                    .map_or(0, |c| c.reference_count);
                if used.contains(&outpoint)
                    || !self.spendable(&resource, reference_at)
                    || (max > 0 && count >= max)
                {
                    return None;
                }
                spent.push(resource);
                inputs.push(input(&outpoint, true));
            }
            _ => {}
        }
        if inputs.iter().all(|i| i.is_reference_only) {
            return None;
        }
        // Contract-locked inputs need their contract referenced.
        let referenced: HashSet<OutPointKey> = inputs
            .iter()
            .filter(|i| i.is_reference_only)
            .filter_map(|i| OutPointKey::from_proto(i.previous_output.as_ref()?).ok())
            .collect();
        for utxo in spent.clone() {
            let Some(output) = utxo.output() else {
                continue;
            };
            let needs_contract =
                output
                    .locking_conditions
                    .iter()
                    .find_map(|c| match &c.condition {
                        Some(Condition::ContractLock(lock)) => {
                            ContentHash::from_slice(&lock.contract_hash).ok()
                        }
                        _ => None,
                    });
            if let Some(contract) = needs_contract {
                let (outpoint, _) = live_resources.iter().find(|(_, hash)| *hash == contract)?;
                if used.contains(outpoint) {
                    return None;
                }
                if !referenced.contains(outpoint)
                    && !inputs
                        .iter()
                        .any(|i| i.previous_output.as_ref() == Some(&outpoint.to_proto()))
                {
                    let resource = state.utxo(outpoint)?;
                    let max = resource
                        .resource_constraints()
                        .map_or(0, |c| c.max_concurrent_references);
                    let count = resource
                        .resource_constraints()
                        .map_or(0, |c| c.reference_count);
                    if max > 0 && count >= max {
                        return None;
                    }
                    spent.push(resource);
                    inputs.push(input(outpoint, true));
                }
            }
        }
        // Value: pass every consumed asset on, minus a native fee.
        let mut sums: BTreeMap<AssetId, u64> = BTreeMap::new();
        for (utxo, txin) in spent.iter().zip(&inputs) {
            if txin.is_reference_only {
                continue;
            }
            if let Some((asset, amount)) =
                utxo.output().and_then(|o| asset_amount(o).ok().flatten())
            {
                *sums.entry(asset).or_insert(0) += amount;
            }
        }
        let mut fee = 0;
        for (asset, mut amount) in sums {
            if asset == AssetId::Native {
                fee = self.rng.random_range(0..=amount.min(100));
                amount -= fee;
            }
            if amount == 0 {
                continue;
            }
            let split = if amount > 1 && self.rng.random_bool(0.5) {
                self.rng.random_range(1..amount)
            } else {
                amount
            };
            for part in [split, amount - split] {
                if part > 0 {
                    let recipient = self.random_owner();
                    let lock = self.random_lock(recipient, height, timestamp, contracts);
                    outputs.push(asset_output(
                        &self.owners[recipient].address,
                        asset,
                        part,
                        lock,
                    ));
                }
            }
        }
        // Sometimes mint the token this transaction is entitled to.
        if self.rng.random_range(0..8) == 0 {
            let first = inputs.iter().find(|i| !i.is_reference_only)?;
            let first = OutPointKey::from_proto(first.previous_output.as_ref()?).ok()?;
            let lock = build::single_key_lock(&self.owners[owner_index].public_key);
            outputs.push(asset_output(
                &owner,
                AssetId::Token(TokenId::minted_by(&first)),
                1_000,
                lock,
            ));
        }
        let mut transaction = pb::Transaction {
            version: 1,
            inputs,
            outputs,
            coinbase: None,
        };
        self.sign(&mut transaction, &spent, height, timestamp)?;
        for txin in &transaction.inputs {
            if !txin.is_reference_only {
                used.insert(OutPointKey::from_proto(txin.previous_output.as_ref()?).ok()?);
            }
        }
        Some((transaction, fee))
    }
}
