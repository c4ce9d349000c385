//! The conformance suite every [`ledger_lease::LeaseStore`] must pass, one `async fn` per
//! property, each taking a [`LeaseBackend`]. [`crate::lease_store_conformance!`] turns the
//! list into `#[tokio::test]`s for one backend.
//!
//! Times are [`ManualClock`] milliseconds except in the race, which runs on the system clock
//! so the tasks' timing is real.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use ledger_lease::{
    Clock, FencingToken, HolderId, Lease, LeaseError, LeaseGuard, LeaseManager, LeaseManagerConfig,
    LeaseState, LossReason, ResourceName, SystemClock, UnixMillis,
};
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::oneshot;

use crate::lease_backend::{FaultyLeaseStore, Gate, LeaseBackend};

const TTL: Duration = Duration::from_secs(10);

fn resource(name: &str) -> anyhow::Result<ResourceName> {
    Ok(ResourceName::new(name)?)
}

fn holder(name: &str) -> anyhow::Result<HolderId> {
    Ok(HolderId::new(name)?)
}

fn manual_clock() -> Arc<ledger_lease::ManualClock> {
    Arc::new(ledger_lease::ManualClock::default())
}

fn granted(lease: Option<Lease>, what: &str) -> anyhow::Result<Lease> {
    lease.with_context(|| format!("{what}: expected a lease, was refused"))
}

/// A free resource is granted with a positive token and the clock's expiry.
pub async fn acquire_free(backend: &dyn LeaseBackend) -> anyhow::Result<()> {
    let clock = manual_clock();
    let store = backend.node(clock.clone()).await?;
    let (r, a) = (resource("signer-1")?, holder("node-a")?);
    ensure!(
        store.current(&r).await?.is_none(),
        "fresh resource has a lease"
    );
    let lease = granted(store.try_acquire(&r, &a, TTL).await?, "first acquire")?;
    ensure!(lease.token.get() > 0, "token {} not positive", lease.token);
    ensure!(lease.holder == a && lease.resource == r);
    ensure!(
        lease.expires_at == clock.now().saturating_add(TTL),
        "expiry {lease:?}"
    );
    ensure!(
        store.current(&r).await?.as_ref() == Some(&lease),
        "current != granted"
    );
    store.check_fence(&r, lease.token).await?;
    // Another resource is independent.
    let other = granted(
        store
            .try_acquire(&resource("signer-2")?, &holder("node-b")?, TTL)
            .await?,
        "other resource",
    )?;
    ensure!(other.holder.as_str() == "node-b");
    Ok(())
}

/// While a lease is live no other holder gets it, up to the last millisecond.
pub async fn second_holder_refused_while_live(backend: &dyn LeaseBackend) -> anyhow::Result<()> {
    let clock = manual_clock();
    let node_a = backend.node(clock.clone()).await?;
    let node_b = backend.node(clock.clone()).await?;
    let (r, a, b) = (resource("p-0")?, holder("a")?, holder("b")?);
    let lease = granted(node_a.try_acquire(&r, &a, TTL).await?, "a")?;
    ensure!(
        node_b.try_acquire(&r, &b, TTL).await?.is_none(),
        "b got a live lease"
    );
    clock.advance(TTL - Duration::from_millis(1));
    ensure!(
        node_b.try_acquire(&r, &b, TTL).await?.is_none(),
        "b got it 1ms early"
    );
    ensure!(
        node_b.current(&r).await?.as_ref() == Some(&lease),
        "current moved"
    );
    match node_b
        .check_fence(&r, FencingToken::new(lease.token.get() + 1))
        .await
    {
        Err(LeaseError::Fenced { current, .. }) => ensure!(current == Some(lease.token)),
        other => bail!("a future token passed the fence: {other:?}"),
    }
    Ok(())
}

/// After expiry another holder takes over with a strictly higher token, and so does the old
/// holder itself (a new tenure, not a renewal).
pub async fn takeover_after_expiry_has_higher_token(
    backend: &dyn LeaseBackend,
) -> anyhow::Result<()> {
    let clock = manual_clock();
    let node_a = backend.node(clock.clone()).await?;
    let node_b = backend.node(clock.clone()).await?;
    let (r, a, b) = (resource("p-1")?, holder("a")?, holder("b")?);
    let first = granted(node_a.try_acquire(&r, &a, TTL).await?, "a")?;
    clock.advance(TTL); // Expiry is exclusive: now == expires_at is expired.
    ensure!(
        node_a.current(&r).await?.is_none(),
        "expired lease still current"
    );
    let second = granted(node_b.try_acquire(&r, &b, TTL).await?, "b after expiry")?;
    ensure!(
        second.token > first.token,
        "{} !> {}",
        second.token,
        first.token
    );
    ensure!(
        node_a.try_acquire(&r, &a, TTL).await?.is_none(),
        "a took b's live lease"
    );
    clock.advance(TTL + Duration::from_millis(1));
    let third = granted(
        node_b.try_acquire(&r, &b, TTL).await?,
        "b again after expiry",
    )?;
    ensure!(
        third.token > second.token,
        "same holder after expiry kept the token"
    );
    Ok(())
}

/// Renewing (by `renew` or by `try_acquire` of one's own live lease) keeps the token and
/// moves the expiry; an expired lease nobody took is still renewable.
pub async fn renewal_keeps_token(backend: &dyn LeaseBackend) -> anyhow::Result<()> {
    let clock = manual_clock();
    let node_a = backend.node(clock.clone()).await?;
    let node_b = backend.node(clock.clone()).await?;
    let (r, a, b) = (resource("p-2")?, holder("a")?, holder("b")?);
    let lease = granted(node_a.try_acquire(&r, &a, TTL).await?, "a")?;
    clock.advance(TTL / 2);
    let again = granted(node_a.try_acquire(&r, &a, TTL).await?, "a re-acquires")?;
    ensure!(again.token == lease.token, "re-acquire changed the token");
    ensure!(
        again.expires_at > lease.expires_at,
        "re-acquire did not extend"
    );
    clock.advance(TTL / 2);
    let renewed = node_a.renew(&again, TTL).await?;
    ensure!(renewed.token == lease.token, "renew changed the token");
    ensure!(renewed.expires_at == clock.now().saturating_add(TTL));
    // Past the first two expiries, inside the renewed one: still a's.
    clock.advance(TTL - Duration::from_millis(1));
    ensure!(
        node_b.try_acquire(&r, &b, TTL).await?.is_none(),
        "renewal not honoured"
    );
    // Expired but not taken over: the token is still current, so renew succeeds.
    clock.advance(Duration::from_millis(5));
    let late = node_a.renew(&renewed, TTL).await?;
    ensure!(late.token == lease.token);
    ensure!(
        node_b.try_acquire(&r, &b, TTL).await?.is_none(),
        "late renewal not honoured"
    );
    node_a.check_fence(&r, lease.token).await?;
    Ok(())
}

/// Once taken over, the old holder's renew fails with `Lost` and its release is a no-op.
pub async fn renew_after_takeover_is_lost(backend: &dyn LeaseBackend) -> anyhow::Result<()> {
    let clock = manual_clock();
    let node_a = backend.node(clock.clone()).await?;
    let node_b = backend.node(clock.clone()).await?;
    let (r, a, b) = (resource("p-3")?, holder("a")?, holder("b")?);
    let old = granted(node_a.try_acquire(&r, &a, TTL).await?, "a")?;
    clock.advance(TTL * 2);
    let new = granted(node_b.try_acquire(&r, &b, TTL).await?, "b")?;
    match node_a.renew(&old, TTL).await {
        Err(error @ LeaseError::Lost { .. }) => ensure!(error.is_lost()),
        other => bail!("renew after takeover: {other:?}"),
    }
    ensure!(
        !node_a.release(&old).await?,
        "stale release reported success"
    );
    ensure!(
        node_a.current(&r).await?.as_ref() == Some(&new),
        "stale release removed b"
    );
    match node_a.check_fence(&r, old.token).await {
        Err(LeaseError::Fenced { current, .. }) => ensure!(current == Some(new.token)),
        other => bail!("stale token passed check_fence: {other:?}"),
    }
    Ok(())
}

/// Release frees the resource at once, and tokens are never reused across releases, holders
/// or store instances.
pub async fn release_then_reacquire_never_reuses_token(
    backend: &dyn LeaseBackend,
) -> anyhow::Result<()> {
    let clock = manual_clock();
    let r = resource("p-4")?;
    let mut tokens = Vec::new();
    for round in 0..6 {
        // A fresh pool every round: the counter lives in the database, not in memory.
        let node = backend.node(clock.clone()).await?;
        let h = holder(if round % 2 == 0 { "a" } else { "b" })?;
        let lease = granted(node.try_acquire(&r, &h, TTL).await?, "after release")?;
        tokens.push(lease.token);
        ensure!(
            node.release(&lease).await?,
            "release of a held lease failed"
        );
        ensure!(
            node.current(&r).await?.is_none(),
            "released lease still current"
        );
        match node.check_fence(&r, lease.token).await {
            Err(LeaseError::Fenced { current: None, .. }) => {}
            other => bail!("released token passed the fence: {other:?}"),
        }
    }
    ensure!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens not strictly increasing: {tokens:?}"
    );
    Ok(())
}

/// A write fenced with a stale token is refused inside its transaction; the new holder's
/// fenced write commits.
pub async fn stale_fenced_write_refused(backend: &dyn LeaseBackend) -> anyhow::Result<()> {
    let clock = manual_clock();
    let node_a = backend.node(clock.clone()).await?;
    let node_b = backend.node(clock.clone()).await?;
    let (r, a, b) = (resource("signer-9")?, holder("a")?, holder("b")?);
    let old = granted(node_a.try_acquire(&r, &a, TTL).await?, "a")?;
    backend.fenced_append(&r, old.token, "a-1", None).await?;
    clock.advance(TTL);
    let new = granted(node_b.try_acquire(&r, &b, TTL).await?, "b")?;
    match backend.fenced_append(&r, old.token, "a-2", None).await {
        Err(LeaseError::Fenced { current, .. }) => ensure!(current == Some(new.token)),
        other => bail!("stale fenced write: {other:?}"),
    }
    backend.fenced_append(&r, new.token, "b-1", None).await?;
    node_b.release(&new).await?;
    match backend.fenced_append(&r, new.token, "b-2", None).await {
        Err(LeaseError::Fenced { current: None, .. }) => {}
        other => bail!("write after release: {other:?}"),
    }
    let journal: Vec<(i64, String)> = backend
        .journal()
        .await?
        .into_iter()
        .map(|entry| (entry.token, entry.entry))
        .collect();
    let expect = vec![
        (old.token.get(), "a-1".to_owned()),
        (new.token.get(), "b-1".to_owned()),
    ];
    ensure!(journal == expect, "journal {journal:?} != {expect:?}");
    Ok(())
}

/// A takeover cannot commit while a fenced transaction of the current holder is open: it
/// waits, then wins, and the old holder's next write is refused.
pub async fn fenced_write_blocks_takeover(backend: &dyn LeaseBackend) -> anyhow::Result<()> {
    let clock = manual_clock();
    let node_a = backend.node(clock.clone()).await?;
    let node_b = backend.node(clock.clone()).await?;
    let (r, a, b) = (resource("signer-10")?, holder("a")?, holder("b")?);
    let old = granted(node_a.try_acquire(&r, &a, TTL).await?, "a")?;

    let (locked_tx, locked_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let gate = Gate {
        locked: locked_tx,
        release: release_rx,
    };
    let (write, takeover) = {
        let write = backend.fenced_append(&r, old.token, "a-held", Some(gate));
        let takeover = async {
            locked_rx.await.context("fenced write never locked")?;
            clock.advance(TTL * 2);
            let attempt = node_b.try_acquire(&r, &b, TTL);
            tokio::pin!(attempt);
            // The takeover must still be waiting on the fenced transaction's lock.
            if let Ok(result) = tokio::time::timeout(Duration::from_millis(300), &mut attempt).await
            {
                bail!("takeover finished while a fenced write was open: {result:?}");
            }
            let _ = release_tx.send(());
            Ok(attempt.await?)
        };
        tokio::join!(write, takeover)
    };
    write.context("the holder's fenced write")?;
    let new = granted(takeover?, "b after the write committed")?;
    ensure!(new.token > old.token);
    match backend.fenced_append(&r, old.token, "a-late", None).await {
        Err(LeaseError::Fenced { .. }) => {}
        other => bail!("old holder wrote after takeover: {other:?}"),
    }
    let journal = backend.journal().await?;
    ensure!(
        journal.len() == 1 && journal[0].entry == "a-held",
        "{journal:?}"
    );
    Ok(())
}

#[derive(Debug, Clone)]
enum Event {
    /// A grant or a renewal: `token` held by `holder` from `start` (new tenure only) until
    /// `expires_at`.
    Held {
        holder: usize,
        token: i64,
        start: UnixMillis,
        expires_at: UnixMillis,
    },
    /// `release` was called at `called_at` (its effect is no earlier).
    Released { token: i64, called_at: UnixMillis },
}

/// Separate pools (nodes) hammer `try_acquire`, `renew`, `release` and fenced writes on one
/// resource. Checks: each token belongs to one holder; tenures ordered by token never
/// overlap in time (at most one live holder at any instant), so tokens strictly increase
/// over time; the fenced journal's tokens never decrease in commit order.
pub async fn concurrent_acquire_race(backend: &dyn LeaseBackend) -> anyhow::Result<()> {
    const NODES: usize = 6;
    const RUN: Duration = Duration::from_millis(1500);
    const RACE_TTL: Duration = Duration::from_millis(30);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let r = resource("contended")?;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(backend.node(Arc::clone(&clock)).await?);
    }
    let deadline = tokio::time::Instant::now() + RUN;
    let tasks = nodes.iter().enumerate().map(|(node_idx, store)| {
        let (r, clock) = (r.clone(), Arc::clone(&clock));
        async move {
            let me = holder(&format!("node-{node_idx}"))?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(node_idx as u64);
            let mut events = Vec::new();
            while tokio::time::Instant::now() < deadline {
                if let Some(lease) = store.try_acquire(&r, &me, RACE_TTL).await? {
                    events.push(Event::Held {
                        holder: node_idx,
                        token: lease.token.get(),
                        start: lease.expires_at.saturating_sub(RACE_TTL),
                        expires_at: lease.expires_at,
                    });
                    match backend
                        .fenced_append(&r, lease.token, me.as_str(), None)
                        .await
                    {
                        Ok(()) | Err(LeaseError::Fenced { .. }) => {}
                        Err(error) => return Err(anyhow::Error::from(error)),
                    }
                    match rng.random_range(0..3) {
                        0 => {
                            let called_at = clock.now();
                            store.release(&lease).await?;
                            events.push(Event::Released {
                                token: lease.token.get(),
                                called_at,
                            });
                        }
                        1 => match store.renew(&lease, RACE_TTL).await {
                            Ok(renewed) => events.push(Event::Held {
                                holder: node_idx,
                                token: renewed.token.get(),
                                start: lease.expires_at.saturating_sub(RACE_TTL),
                                expires_at: renewed.expires_at,
                            }),
                            Err(LeaseError::Lost { .. }) => {}
                            Err(error) => return Err(error.into()),
                        },
                        _ => {}
                    }
                }
                let pause = rng.random_range(0..12);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            anyhow::Ok(events)
        }
    });
    let mut events = Vec::new();
    for result in futures_util::future::join_all(tasks).await {
        events.extend(result?);
    }
    check_tenures(&events)?;

    let journal = backend.journal().await?;
    ensure!(
        journal
            .windows(2)
            .all(|pair| pair[0].token <= pair[1].token),
        "a stale fenced write landed after a newer one: {journal:?}"
    );
    Ok(())
}

struct Tenure {
    holder: usize,
    start: UnixMillis,
    end: UnixMillis,
}

fn check_tenures(events: &[Event]) -> anyhow::Result<()> {
    let mut tenures: BTreeMap<i64, Tenure> = BTreeMap::new();
    for event in events {
        if let Event::Held {
            holder,
            token,
            start,
            expires_at,
        } = event
        {
            let tenure = tenures.entry(*token).or_insert(Tenure {
                holder: *holder,
                start: *start,
                end: *expires_at,
            });
            ensure!(
                tenure.holder == *holder,
                "token {token} granted to node-{} and node-{holder}",
                tenure.holder
            );
            tenure.start = tenure.start.min(*start);
            tenure.end = tenure.end.max(*expires_at);
        }
    }
    for event in events {
        if let Event::Released { token, called_at } = event {
            let tenure = tenures
                .get_mut(token)
                .context("release of an unknown token")?;
            tenure.end = tenure.end.min(*called_at);
        }
    }
    ensure!(
        tenures.len() >= 3,
        "only {} tenures: no contention",
        tenures.len()
    );
    let ordered: Vec<(&i64, &Tenure)> = tenures.iter().collect();
    for pair in ordered.windows(2) {
        let ((token_a, a), (token_b, b)) = (pair[0], pair[1]);
        ensure!(
            b.start >= a.end,
            "token {token_b} (node-{}) started at {:?} while token {token_a} (node-{}) was live until {:?}",
            b.holder,
            b.start,
            a.holder,
            a.end
        );
    }
    Ok(())
}

fn manager_config(ttl: Duration) -> LeaseManagerConfig {
    LeaseManagerConfig::new(ttl)
}

async fn lost_within(guard: &LeaseGuard, within: Duration) -> anyhow::Result<LossReason> {
    tokio::time::timeout(within, guard.lost())
        .await
        .context("the manager did not report the loss in time")
}

/// The manager renews in the background, so the lease outlives its TTL and others stay out;
/// release hands it over at once.
pub async fn manager_keeps_lease_alive(backend: &dyn LeaseBackend) -> anyhow::Result<()> {
    let clock = manual_clock();
    let node_a = backend.node(clock.clone()).await?;
    let node_b = backend.node(clock.clone()).await?;
    let (r, a, b) = (resource("partition-7")?, holder("a")?, holder("b")?);
    let ttl = Duration::from_millis(300);
    let guard = LeaseManager::acquire(node_a, &r, &a, manager_config(ttl))
        .await?
        .context("acquire")?;
    let first = guard.lease().context("held")?;
    let states = guard.subscribe();
    // 1.2 s of real time moves the manual clock 480 ms: past the first expiry.
    for _ in 0..48 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        clock.advance(Duration::from_millis(10));
        ensure!(
            node_b.try_acquire(&r, &b, ttl).await?.is_none(),
            "b took a managed lease at {:?}: {:?}",
            clock.now(),
            guard.state()
        );
    }
    ensure!(states.has_changed()?, "no renewal was published");
    let now_held = guard.lease().context("lost while renewing")?;
    ensure!(now_held.token == first.token, "renewal changed the token");
    ensure!(now_held.expires_at > first.expires_at.saturating_add(ttl / 2));
    ensure!(guard.release().await?, "release failed");
    let next = granted(node_b.try_acquire(&r, &b, ttl).await?, "b after release")?;
    ensure!(next.token > first.token);
    Ok(())
}

/// A node whose clock runs ahead takes the lease over; the holder's next renewal finds out
/// and the manager reports `TakenOver` on the watch channel. Fencing still refuses the
/// holder's writes meanwhile.
pub async fn manager_reports_takeover(backend: &dyn LeaseBackend) -> anyhow::Result<()> {
    let clock_a = manual_clock();
    let clock_b = manual_clock();
    clock_b.advance(Duration::from_secs(60));
    let node_a = backend.node(clock_a.clone()).await?;
    let node_b = backend.node(clock_b.clone()).await?;
    let (r, a, b) = (resource("partition-8")?, holder("a")?, holder("b")?);
    let ttl = Duration::from_millis(300);
    let guard = LeaseManager::acquire(node_a, &r, &a, manager_config(ttl))
        .await?
        .context("acquire")?;
    let held = guard.lease().context("held")?;
    let states = guard.subscribe();
    let stolen = granted(node_b.try_acquire(&r, &b, ttl).await?, "thief")?;
    ensure!(stolen.token > held.token);
    match backend.fenced_append(&r, held.token, "a", None).await {
        Err(LeaseError::Fenced { .. }) => {}
        other => bail!("write with the stolen lease's token: {other:?}"),
    }
    let reason = lost_within(&guard, Duration::from_secs(5)).await?;
    ensure!(reason == LossReason::TakenOver, "reason {reason:?}");
    ensure!(matches!(
        &*states.borrow(),
        LeaseState::Lost(LossReason::TakenOver)
    ));
    ensure!(guard.lease().is_none());
    ensure!(!guard.release().await?, "releasing a lost lease succeeded");
    ensure!(node_b.current(&r).await?.as_ref() == Some(&stolen));
    Ok(())
}

/// A renewer that hangs (a paused process): the manager declares the lease lost before its
/// expiry by its clock, while another holder takes it over.
pub async fn manager_reports_expiry_when_renewal_stalls(
    backend: &dyn LeaseBackend,
) -> anyhow::Result<()> {
    let clock = manual_clock();
    let faulty = Arc::new(FaultyLeaseStore::new(backend.node(clock.clone()).await?));
    let node_b = backend.node(clock.clone()).await?;
    let (r, a, b) = (resource("partition-9")?, holder("a")?, holder("b")?);
    let ttl = Duration::from_millis(300);
    let guard = LeaseManager::acquire(faulty.clone(), &r, &a, manager_config(ttl))
        .await?
        .context("acquire")?;
    let held = guard.lease().context("held")?;
    faulty.stall_renewals(true);
    tokio::time::timeout(Duration::from_secs(5), faulty.renewal_stalled())
        .await
        .context("no renewal attempted")?;
    clock.advance(ttl);
    let stolen = granted(node_b.try_acquire(&r, &b, ttl).await?, "b after expiry")?;
    ensure!(stolen.token > held.token);
    let reason = lost_within(&guard, Duration::from_secs(5)).await?;
    ensure!(reason == LossReason::Expired, "reason {reason:?}");
    Ok(())
}

/// Failing renewals are retried a bounded number of times, then reported as lost.
pub async fn manager_reports_loss_when_renewals_fail(
    backend: &dyn LeaseBackend,
) -> anyhow::Result<()> {
    let clock = manual_clock();
    let faulty = Arc::new(FaultyLeaseStore::new(backend.node(clock.clone()).await?));
    let (r, a) = (resource("partition-10")?, holder("a")?);
    let config = manager_config(Duration::from_millis(300));
    let retries = config.renew_retries;
    let guard = LeaseManager::acquire(faulty.clone(), &r, &a, config)
        .await?
        .context("acquire")?;
    faulty.fail_renewals(true);
    let reason = lost_within(&guard, Duration::from_secs(5)).await?;
    ensure!(reason == LossReason::RenewFailed, "reason {reason:?}");
    ensure!(
        faulty.failed_renewals() == retries + 1,
        "{} attempts, expected {}",
        faulty.failed_renewals(),
        retries + 1
    );
    Ok(())
}

/// Generates one `#[tokio::test]` per conformance case for a backend constructor
/// `async fn(&str) -> Option<Box<dyn LeaseBackend>>` (`None` skips the test). The calling
/// crate needs `tokio` as a dependency.
///
/// ```text
/// mod sqlite { test_support::lease_store_conformance!(test_support::lease_backend::sqlite); }
/// ```
#[macro_export]
macro_rules! lease_store_conformance {
    ($backend:path) => {
        $crate::lease_store_conformance!(@cases $backend;
            acquire_free,
            second_holder_refused_while_live,
            takeover_after_expiry_has_higher_token,
            renewal_keeps_token,
            renew_after_takeover_is_lost,
            release_then_reacquire_never_reuses_token,
            stale_fenced_write_refused,
            fenced_write_blocks_takeover,
            concurrent_acquire_race,
            manager_keeps_lease_alive,
            manager_reports_takeover,
            manager_reports_expiry_when_renewal_stalls,
            manager_reports_loss_when_renewals_fail,
        );
    };
    (@cases $backend:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(backend) = $backend(stringify!($case)).await else {
                    return;
                };
                if let Err(error) = $crate::lease_conformance::$case(&*backend).await {
                    panic!("{} on {}: {error:?}", stringify!($case), backend.name());
                }
            }
        )*
    };
}
