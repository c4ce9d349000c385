//! A tonic client against the server on 127.0.0.1:0: a generated chain submitted block by
//! block, then every query compared with an in-memory `UtxoState` replay of the same
//! blocks; bad blocks refused with the right code and the store unchanged; an open breaker
//! answered UNAVAILABLE; `/metrics` serving the pipeline's and the server's series.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{block_with, pay, spendable_coin, submit, wait_synced, Chain};
use tonic::Code;
use wes_server::{pb, Client};
use wes_utxo::model::{Address, AssetId, OutPointKey, TxId};
use wes_utxo::pb as model_pb;

const CATEGORIES: [model_pb::UtxoCategory; 3] = [
    model_pb::UtxoCategory::Asset,
    model_pb::UtxoCategory::Resource,
    model_pb::UtxoCategory::State,
];

async fn utxos(
    client: &mut Client,
    owner: &Address,
    category: model_pb::UtxoCategory,
) -> Vec<model_pb::Utxo> {
    client
        .get_utxos_by_address(pb::GetUtxosByAddressRequest {
            address: owner.0.to_vec(),
            category: category as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .utxos
}

/// Everything the queries say about the chain's owners (to compare before and after).
async fn fingerprint(client: &mut Client, chain: &Chain) -> Vec<String> {
    let mut out = Vec::new();
    let status = client
        .get_sync_status(pb::GetSyncStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    out.push(format!("{:?} {:?}", status.repository_tip, status.utxo_tip));
    for owner in chain.generator.owners() {
        let all = utxos(client, &owner.address, model_pb::UtxoCategory::Unspecified).await;
        let balance = client
            .get_balance(pb::GetBalanceRequest {
                address: owner.address.0.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        let nonce = client
            .compute_account_nonce(pb::ComputeAccountNonceRequest {
                address: owner.address.0.to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .nonce;
        out.push(format!("{all:?} {balance:?} {nonce}"));
    }
    out
}

fn code_of<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
) -> (Code, String) {
    let status = result.expect_err("expected an error status");
    (status.code(), status.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_chain_answers_like_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (running, mut client) = common::start(dir.path(), false).await;
    let mut chain = Chain::new(5, 12);
    let n_blocks = 40;
    for index in 0..n_blocks {
        let block = chain.next(4);
        let response = submit(&mut client, &block, index + 1 == n_blocks).await;
        assert!(!response.already_present);
        assert_eq!(response.position.unwrap().height, index as u64);
    }
    let tip = chain.reference.tip().unwrap();
    let status = wait_synced(&mut client, tip.height).await;
    assert_eq!(status.utxo_tip.unwrap().hash, tip.hash.0.to_vec());
    assert_eq!(status.lag_blocks, 0);
    assert_eq!(status.health, pb::SyncHealth::Healthy as i32);
    assert_eq!(status.breaker, pb::BreakerState::Closed as i32);
    assert_eq!(
        running.n_applied(),
        n_blocks as u64,
        "each block applied once"
    );

    let reference = &chain.reference;
    let (mut n_state, mut n_resources, mut n_tokens) = (0, 0, 0);
    for owner in chain.generator.owners() {
        let address = owner.address.0.to_vec();
        let all = utxos(
            &mut client,
            &owner.address,
            model_pb::UtxoCategory::Unspecified,
        )
        .await;
        assert_eq!(
            all,
            reference.utxos_by_owner(&owner.address),
            "utxos of {}",
            owner.address
        );
        for category in CATEGORIES {
            assert_eq!(
                utxos(&mut client, &owner.address, category).await,
                reference.utxos_by_owner_and_category(&owner.address, category),
                "{category:?} utxos of {}",
                owner.address
            );
        }

        let balance = client
            .get_balance(pb::GetBalanceRequest {
                address: address.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let expected = reference.balances(&owner.address);
        assert_eq!(
            balance.native_coin_balance,
            expected
                .get(&AssetId::Native)
                .copied()
                .unwrap_or(0)
                .to_string()
        );
        let tokens: Vec<(Vec<u8>, String)> = expected
            .iter()
            .filter_map(|(asset, amount)| match asset {
                AssetId::Token(token) => Some((token.0.to_vec(), amount.to_string())),
                AssetId::Native => None,
            })
            .collect();
        let got: Vec<(Vec<u8>, String)> = balance
            .token_balances
            .into_iter()
            .map(|token| (token.token_id, token.amount))
            .collect();
        assert_eq!(got, tokens);
        n_tokens += got.len();

        let nonce = client
            .compute_account_nonce(pb::ComputeAccountNonceRequest {
                address: address.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .nonce;
        assert_eq!(nonce, reference.compute_account_nonce(&owner.address));

        let resources = client
            .get_resources(pb::GetResourcesRequest {
                address: address.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .resources;
        let expected =
            reference.utxos_by_owner_and_category(&owner.address, model_pb::UtxoCategory::Resource);
        assert_eq!(resources.len(), expected.len());
        for (info, utxo) in resources.iter().zip(&expected) {
            let constraints = utxo.resource_constraints().unwrap();
            let Some(model_pb::tx_output::OutputContent::Resource(resource)) =
                &utxo.output().unwrap().output_content
            else {
                panic!("not a resource: {utxo:?}");
            };
            assert_eq!(info.outpoint, utxo.outpoint);
            assert_eq!(info.resource_hash, resource.content_hash);
            assert_eq!(info.resource_name, resource.name);
            assert_eq!(info.status, utxo.status);
            assert_eq!(info.reference_count, constraints.reference_count);
            assert_eq!(
                info.total_reference_count,
                constraints.total_reference_count
            );
            assert_eq!(
                info.max_concurrent_references,
                constraints.max_concurrent_references
            );
            assert_eq!(info.can_upgrade, constraints.reference_count == 0);
        }
        n_resources += resources.len();

        for utxo in &all {
            let outpoint = utxo.outpoint.clone();
            let got = client
                .get_utxo(pb::GetUtxoRequest {
                    outpoint: outpoint.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .utxo
                .unwrap();
            assert_eq!(&got, utxo);
            let expiry = client
                .get_state_expiry(pb::GetStateExpiryRequest {
                    outpoint,
                    at_timestamp: 0,
                })
                .await;
            if utxo.category == model_pb::UtxoCategory::State as i32 {
                n_state += 1;
                let expiry = expiry.unwrap().into_inner();
                let expires_at = utxo.state_constraints().unwrap().expires_at_timestamp;
                assert_eq!(expiry.reference_timestamp, tip.timestamp);
                assert_eq!(expiry.never_expires, expires_at == 0);
                assert_eq!(
                    expiry.is_expired,
                    expires_at != 0 && tip.timestamp > expires_at
                );
                assert_eq!(expiry.is_expired, utxo.is_expired_at(tip.timestamp));
                if !expiry.is_expired && expires_at != 0 {
                    assert_eq!(expiry.time_to_expiry, expires_at - tip.timestamp);
                }
            } else {
                assert_eq!(code_of(expiry).0, Code::FailedPrecondition);
            }
        }
    }
    assert!(
        n_state > 0 && n_resources > 0 && n_tokens > 0,
        "chain too small: {n_state} {n_resources} {n_tokens}"
    );

    // A retried submission changes nothing; NotifyBlockAdded knows only repository blocks.
    let again = submit(&mut client, &chain.blocks[3], false).await;
    assert!(again.already_present && again.applied);
    let notified = client
        .notify_block_added(pb::NotifyBlockAddedRequest {
            block: Some(chain.blocks[5].clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(notified.position.unwrap().height, 5);
    let next = chain.next(2);
    let (code, _) = code_of(
        client
            .notify_block_added(pb::NotifyBlockAddedRequest { block: Some(next) })
            .await,
    );
    assert_eq!(code, Code::NotFound);
    assert_eq!(
        running.n_applied(),
        n_blocks as u64,
        "nothing applied twice"
    );

    // Malformed requests.
    let unknown = OutPointKey::new(TxId([7; 32]), 0).to_proto();
    let (code, _) = code_of(
        client
            .get_utxo(pb::GetUtxoRequest {
                outpoint: Some(unknown),
            })
            .await,
    );
    assert_eq!(code, Code::NotFound);
    let (code, message) = code_of(
        client
            .get_balance(pb::GetBalanceRequest {
                address: vec![1; 3],
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let (code, _) = code_of(
        client
            .get_utxos_by_address(pb::GetUtxosByAddressRequest {
                address: vec![0; 20],
                category: 99,
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = code_of(client.submit_block(pb::SubmitBlockRequest::default()).await);
    assert_eq!(code, Code::InvalidArgument);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_blocks_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (running, mut client) = common::start(dir.path(), false).await;
    let mut chain = Chain::new(9, 6);
    for _ in 0..4 {
        let block = chain.next(3);
        submit(&mut client, &block, true).await;
    }
    let tip = chain.reference.tip().unwrap();
    wait_synced(&mut client, tip.height).await;
    let before = fingerprint(&mut client, &chain).await;

    let (_, coin) = spendable_coin(&chain, 0);
    let amount = common::native_amount(&coin).unwrap();
    let mut cases: Vec<(&str, model_pb::Block, Code, &str)> = Vec::new();

    let mut forged = pay(&chain, &coin, 1, amount);
    if let Some(model_pb::proof::Proof::SingleKeyProof(proof)) = forged.inputs[0]
        .unlocking_proof
        .as_mut()
        .and_then(|unlock| unlock.proof.as_mut())
        .and_then(|proof| proof.proof.as_mut())
    {
        proof.signature[0] ^= 1;
    } else {
        panic!("expected a single-key proof");
    }
    cases.push((
        "invalid proof",
        block_with(&chain, vec![forged]),
        Code::InvalidArgument,
        "invalid signature",
    ));

    let first = pay(&chain, &coin, 1, amount);
    let second = pay(&chain, &coin, 2, amount);
    cases.push((
        "double spend",
        block_with(&chain, vec![first, second]),
        Code::InvalidArgument,
        "double spend",
    ));

    let inflated = pay(&chain, &coin, 1, amount + 1);
    cases.push((
        "value not conserved",
        block_with(&chain, vec![inflated]),
        Code::InvalidArgument,
        "value not conserved",
    ));

    let valid = block_with(&chain, vec![pay(&chain, &coin, 1, amount)]);
    let mut orphan = valid.clone();
    orphan.header.as_mut().unwrap().parent_hash = vec![0xab; 32];
    cases.push((
        "unknown parent",
        orphan,
        Code::FailedPrecondition,
        "unknown parent",
    ));
    let mut stale = valid.clone();
    stale.header.as_mut().unwrap().parent_hash = chain.blocks[1]
        .header
        .as_ref()
        .map(wes_utxo::model::block_hash)
        .unwrap()
        .0
        .to_vec();
    cases.push((
        "fork",
        stale,
        Code::FailedPrecondition,
        "not the repository tip",
    ));
    let mut high = valid.clone();
    high.header.as_mut().unwrap().height += 1;
    cases.push((
        "wrong height",
        high,
        Code::FailedPrecondition,
        "wrong height",
    ));
    let mut rooted = valid.clone();
    rooted.header.as_mut().unwrap().transactions_root = vec![0; 32];
    cases.push((
        "transactions root",
        rooted,
        Code::InvalidArgument,
        "transactions root",
    ));

    for (name, block, expected_code, expected_text) in cases {
        let (code, message) = code_of(
            client
                .submit_block(pb::SubmitBlockRequest {
                    block: Some(block),
                    wait_applied: false,
                })
                .await,
        );
        assert_eq!(code, expected_code, "{name}: {message}");
        assert!(
            message.contains(expected_text),
            "{name}: {message:?} lacks {expected_text:?}"
        );
        assert_eq!(
            fingerprint(&mut client, &chain).await,
            before,
            "{name} changed the state"
        );
    }
    assert_eq!(running.n_applied(), 4);

    // The valid block still goes in afterwards.
    chain.reference.apply_block(&valid).unwrap();
    let response = submit(&mut client, &valid, true).await;
    assert!(response.applied);
    assert_ne!(fingerprint(&mut client, &chain).await, before);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_breaker_answers_unavailable_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (running, mut client) = common::start(dir.path(), false).await;
    let mut chain = Chain::new(3, 4);
    submit(&mut client, &chain.next(2), true).await;
    let owner = chain.generator.owners()[0].address.0.to_vec();

    running.faults().set_down(true);
    // The coordinator's periodic tip reads fail: three in a row open the breaker.
    let started = Instant::now();
    while client
        .get_sync_status(pb::GetSyncStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .breaker
        != pb::BreakerState::Open as i32
    {
        assert!(
            started.elapsed() < common::WAIT,
            "timed out waiting for the breaker to open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, message) = code_of(
        client
            .get_balance(pb::GetBalanceRequest {
                address: owner.clone(),
            })
            .await,
    );
    assert_eq!(code, Code::Unavailable, "{message}");
    let (code, _) = code_of(
        client
            .compute_account_nonce(pb::ComputeAccountNonceRequest {
                address: owner.clone(),
            })
            .await,
    );
    assert_eq!(code, Code::Unavailable);
    let (code, _) = code_of(
        client
            .submit_block(pb::SubmitBlockRequest {
                block: Some(chain.next(2)),
                wait_applied: false,
            })
            .await,
    );
    assert_eq!(code, Code::Unavailable);

    running.faults().set_down(false);
    let started = Instant::now();
    loop {
        let status = client
            .get_sync_status(pb::GetSyncStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if status.breaker == pb::BreakerState::Closed as i32 {
            break;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "timed out waiting for the breaker to close: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .get_balance(pb::GetBalanceRequest { address: owner })
        .await
        .unwrap();
    let last = chain.blocks.last().unwrap().clone();
    let response = submit(&mut client, &last, true).await;
    assert!(!response.already_present, "the refused block was not kept");
    assert!(response.applied);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_pipeline_and_request_series() {
    let dir = tempfile::tempdir().unwrap();
    let (running, mut client) = common::start(dir.path(), true).await;
    let mut chain = Chain::new(4, 4);
    for _ in 0..3 {
        submit(&mut client, &chain.next(2), true).await;
    }
    let owner = chain.generator.owners()[0].address.0.to_vec();
    client
        .get_balance(pb::GetBalanceRequest { address: owner })
        .await
        .unwrap();
    let _ = client.get_utxo(pb::GetUtxoRequest { outpoint: None }).await;
    let body = common::http_get(running.metrics_addr.unwrap(), "/metrics").await;
    for name in [
        "wes_utxo_client_queue_depth",
        "wes_utxo_client_batches_total",
        "wes_utxo_client_blocks_applied_total",
        "wes_utxo_client_retries_total",
        "wes_utxo_client_breaker_state",
        "wes_utxo_client_lag_blocks",
        "wes_utxo_client_notifications_total",
        "wes_server_requests_total{method=\"GetBalance\",code=\"ok\"}",
        "wes_server_requests_total{method=\"GetUtxo\",code=\"invalid_argument\"}",
        "wes_server_request_duration_seconds_bucket{method=\"SubmitBlock\"",
        "wes_server_blocks_submitted_total",
        "wes_server_utxo_blocks_applied",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
    running.shutdown().await.unwrap();
}

/// RollbackTo: a reorg over the API. Blocks above the target leave the repository and the
/// UTXO state answers every query exactly as it did at the target; a fork block then
/// extends the new branch. A height deeper than the undo data, an unknown height or a hash
/// guard that does not match is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_restores_the_state_and_takes_a_fork() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), false);
    config.params.max_undo_depth = 3;
    let running = wes_server::serve(config).await.unwrap();
    let mut client = wes_server::connect(running.grpc_addr).await.unwrap();
    // Two generators with one seed make the same blocks until they are asked differently.
    let (mut main, mut fork) = (Chain::new(23, 8), Chain::new(23, 8));
    for _ in 0..4 {
        let block = main.next(3);
        assert_eq!(block, fork.next(3));
        submit(&mut client, &block, true).await;
    }
    let at_3 = fingerprint(&mut client, &main).await;
    let hash_3 = wes_utxo::model::block_hash(main.blocks[3].header.as_ref().unwrap());
    for _ in 0..3 {
        let block = main.next(3);
        submit(&mut client, &block, true).await;
    }
    wait_synced(&mut client, 6).await;
    let at_6 = fingerprint(&mut client, &main).await;
    let rollback = |height: u64, hash: Vec<u8>| pb::RollbackToRequest { height, hash };

    for (request, expected) in [
        (rollback(2, Vec::new()), "deeper than the undo data"),
        (rollback(9, Vec::new()), "no block at height 9"),
        (rollback(3, vec![7; 32]), "not 0707"),
    ] {
        let (code, message) = code_of(client.rollback_to(request).await);
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        assert!(message.contains(expected), "{expected}: {message}");
    }
    assert_eq!(
        fingerprint(&mut client, &main).await,
        at_6,
        "a refusal changed state"
    );

    let answer = client
        .rollback_to(rollback(3, hash_3.0.to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.removed, 3);
    assert_eq!(answer.position.unwrap().height, 3);
    wait_synced(&mut client, 3).await;
    assert_eq!(fingerprint(&mut client, &main).await, at_3);
    // Again: already the tip, nothing removed.
    let again = client
        .rollback_to(rollback(3, Vec::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.removed, 0);

    // The fork: a different block 4 on block 3.
    let fork_4 = fork.next(1);
    assert_ne!(fork_4, main.blocks[4]);
    let response = submit(&mut client, &fork_4, true).await;
    assert!(response.applied && !response.already_present);
    wait_synced(&mut client, 4).await;
    assert_ne!(fingerprint(&mut client, &fork).await, at_3);
    // Every owner's balance agrees with a replay of the fork.
    for owner in fork.generator.owners() {
        let served = client
            .get_balance(pb::GetBalanceRequest {
                address: owner.address.0.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        let replayed = fork
            .reference
            .balance(&owner.address, &AssetId::Native)
            .to_string();
        assert_eq!(served.native_coin_balance, replayed);
    }
    running.shutdown().await.unwrap();
}

fn page_request(
    owner: &Address,
    category: model_pb::UtxoCategory,
    page_size: u32,
    page_token: Vec<u8>,
) -> pb::GetUtxosByAddressRequest {
    pb::GetUtxosByAddressRequest {
        address: owner.0.to_vec(),
        category: category as i32,
        page_size,
        page_token,
    }
}

/// Pages every owner's records (every category, several page sizes) and compares the
/// concatenation with the replay's answer; returns the longest answer.
async fn check_paging(client: &mut Client, chain: &Chain, max_results: usize) -> usize {
    let mut longest = 0;
    for owner in chain.generator.owners() {
        for category in [model_pb::UtxoCategory::Unspecified]
            .into_iter()
            .chain(CATEGORIES)
        {
            let mut expected = chain.reference.utxos_by_owner(&owner.address);
            if category != model_pb::UtxoCategory::Unspecified {
                expected.retain(|utxo| utxo.category == category as i32);
            }
            longest = longest.max(expected.len());
            for size in [1, 2, 3, 100] {
                let (mut pages, mut token, mut all) = (0, Vec::new(), Vec::new());
                loop {
                    let page = client
                        .get_utxos_by_address(page_request(&owner.address, category, size, token))
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(page.utxos.len() <= (size as usize).min(max_results));
                    all.extend(page.utxos);
                    pages += 1;
                    assert!(pages <= expected.len() + 1, "paging does not end");
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    token = page.next_page_token;
                }
                let ids = |utxos: &[model_pb::Utxo]| -> Vec<OutPointKey> {
                    utxos.iter().map(common::outpoint).collect()
                };
                assert_eq!(ids(&all), ids(&expected), "{category:?} in pages of {size}");
            }
        }
    }
    longest
}

/// Paged GetUtxosByAddress: pages of any size concatenate to the whole answer, with
/// unflushed records in the answers and again after a restart (everything flushed), for
/// every category; page sizes are capped at max_results, an unpaged answer above it is
/// RESOURCE_EXHAUSTED, and a bad token is INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_utxos_concatenate_to_the_whole_answer() {
    const MAX_RESULTS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut config = common::config(dir.path(), false);
        config.max_results = MAX_RESULTS;
        wes_server::serve(config)
    };
    let running = start().await.unwrap();
    let mut client = wes_server::connect(running.grpc_addr).await.unwrap();
    let mut chain = Chain::new(31, 3);
    // The test config flushes every 8 blocks: the answers mix flushed and dirty records.
    for _ in 0..12 {
        let block = chain.next(4);
        submit(&mut client, &block, true).await;
    }
    let longest = check_paging(&mut client, &chain, MAX_RESULTS).await;
    assert!(
        longest > MAX_RESULTS,
        "the chain gives no owner more than max_results records"
    );
    let owner = &chain.generator.owners()[0].address;
    let bad_tokens: [Vec<u8>; 3] = [vec![9; 37], vec![1; 5], vec![0; 37]];
    for token in bad_tokens {
        let (code, message) = code_of(
            client
                .get_utxos_by_address(page_request(
                    owner,
                    model_pb::UtxoCategory::Unspecified,
                    2,
                    token,
                ))
                .await,
        );
        assert_eq!(code, Code::InvalidArgument, "{message}");
    }
    if chain.reference.utxos_by_owner(owner).len() > MAX_RESULTS {
        let (code, _) = code_of(
            client
                .get_utxos_by_address(page_request(
                    owner,
                    model_pb::UtxoCategory::Unspecified,
                    0,
                    Vec::new(),
                ))
                .await,
        );
        assert_eq!(code, Code::ResourceExhausted);
    }
    // Shutdown flushes; after the restart every answer comes from the store alone.
    running.shutdown().await.unwrap();
    let running = start().await.unwrap();
    let mut client = wes_server::connect(running.grpc_addr).await.unwrap();
    wait_synced(&mut client, 11).await;
    check_paging(&mut client, &chain, MAX_RESULTS).await;
    running.shutdown().await.unwrap();
}
