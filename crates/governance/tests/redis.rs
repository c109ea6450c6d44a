//! The governance scripts against a real Redis (`SLUICE_TEST_REDIS_URL`), each test under its
//! own key prefix. Two `Governor`s with separate pools stand in for two replicas.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

use sluice_config::{Budget, BudgetPeriod, GovernanceConfig, Limit, RedisConfig, TenantPolicy};
use sluice_governance::{
    Admission, Governor, Refusal, estimate::Usage, idempotency::Claim, inflight::Slot,
    settle::Settlement,
};
use uuid::Uuid;

fn redis_cfg() -> RedisConfig {
    RedisConfig {
        url: std::env::var("SLUICE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        prefix: format!("g{}:", Uuid::now_v7().simple()),
        ..RedisConfig::default()
    }
}

fn replicas(cfg: &GovernanceConfig) -> (Governor, Governor) {
    let r = redis_cfg();
    let a = Governor::new(sluice_store::Store::new(&r).unwrap(), cfg.clone());
    let b = Governor::new(sluice_store::Store::new(&r).unwrap(), cfg.clone());
    (a, b)
}

fn req(job: Uuid, tokens: u64) -> Admission<'static> {
    Admission {
        job,
        tenant: "acme",
        key_id: "k1",
        model: "m",
        agent: None,
        chain: None,
        prompt_hash: "h",
        estimate: Usage {
            prompt_tokens: tokens / 2,
            completion_tokens: tokens - tokens / 2,
        },
    }
}

/// A tenant policy with a daily token budget.
fn day_budget(tokens: u64) -> TenantPolicy {
    TenantPolicy {
        budget: Budget {
            period: BudgetPeriod::Day,
            tokens,
            cost_usd: 0.0,
        },
        ..Default::default()
    }
}

const NOW: u64 = 1_795_309_200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limit_holds_exactly_across_two_replicas() {
    let mut cfg = GovernanceConfig::default();
    cfg.tenant = Limit {
        requests: 25,
        tokens: 0,
        burst: 1.0,
    };
    let (a, b) = replicas(&cfg);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let g = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { g.admit(&req(Uuid::now_v7(), 10), NOW).await.unwrap() });
    }
    let mut admitted = 0;
    let mut retry = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => admitted += 1,
            Err(Refusal::RateLimited {
                policy,
                retry_after_ms,
            }) => {
                assert_eq!(policy.name(), "tenant-requests");
                retry.push(retry_after_ms);
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 25);
    // One request's worth of credit returns every 60 s / 25 = 2.4 s.
    assert!(retry.iter().all(|&ms| ms > 0 && ms <= 2400), "{retry:?}");
    // Time passing refills: 2.4 s later exactly one more fits.
    assert!(
        a.admit(&req(Uuid::now_v7(), 10), NOW + 2400)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        b.admit(&req(Uuid::now_v7(), 10), NOW + 2400)
            .await
            .unwrap()
            .is_err()
    );
}

/// Replicas stamp `now` before their call, so calls reach Redis out of the order of their
/// stamps; the limit still admits exactly its number (on the old script the late call with
/// the earlier stamp was refused: 19 of 20 in a CI run against the cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_arriving_out_of_order_still_get_every_slot() {
    let mut cfg = GovernanceConfig::default();
    cfg.tenant = Limit {
        requests: 2,
        tokens: 0,
        burst: 1.0,
    };
    let (a, b) = replicas(&cfg);
    assert!(
        a.admit(&req(Uuid::now_v7(), 10), NOW + 5)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        b.admit(&req(Uuid::now_v7(), 10), NOW)
            .await
            .unwrap()
            .is_ok(),
        "the second slot, asked with an earlier stamp"
    );
    assert!(matches!(
        a.admit(&req(Uuid::now_v7(), 10), NOW + 10).await.unwrap(),
        Err(Refusal::RateLimited { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_cannot_overrun_a_budget_and_settlement_is_exact() {
    let mut cfg = GovernanceConfig::default();
    cfg.tenants.insert("acme".into(), day_budget(1000));
    let (a, b) = replicas(&cfg);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let g = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let job = Uuid::now_v7();
            (job, g.admit(&req(job, 100), NOW).await.unwrap())
        });
    }
    let mut admitted = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (job, d) = r.unwrap();
        match d {
            Ok(d) => admitted.push((job, d.reservation)),
            Err(Refusal::BudgetExhausted {
                cost: false,
                retry_after_ms,
            }) => assert_eq!(retry_after_ms, 23 * 3_600_000),
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted.len(), 10, "1000 tokens / 100 reserved each");
    // Each job actually used 40 tokens: settling frees 60 each, exactly once.
    for (job, reservation) in &admitted {
        assert!(
            a.settle(
                "acme",
                *job,
                "m",
                Usage {
                    prompt_tokens: 30,
                    completion_tokens: 10
                },
                NOW,
                reservation.as_ref(),
            )
            .await
            .unwrap()
        );
        assert!(
            !b.settle(
                "acme",
                *job,
                "m",
                Usage {
                    prompt_tokens: 30,
                    completion_tokens: 10
                },
                NOW,
                reservation.as_ref(),
            )
            .await
            .unwrap()
        );
    }
    // 400 used: six more 100-token reservations fit, the seventh does not.
    for _ in 0..6 {
        assert!(
            a.admit(&req(Uuid::now_v7(), 100), NOW)
                .await
                .unwrap()
                .is_ok()
        );
    }
    assert!(matches!(
        a.admit(&req(Uuid::now_v7(), 100), NOW).await.unwrap(),
        Err(Refusal::BudgetExhausted { .. })
    ));
}

/// Settles `job`, admitted with an estimate of 900 tokens, at 100 used; then, under a token
/// limit that the 900 had filled, 800 more tokens fit and 200 beyond them do not.
async fn settle_100_of_900(
    a: &Governor,
    job: Uuid,
    reservation: Option<&sluice_protocol::Reservation>,
) {
    let used = Usage {
        prompt_tokens: 50,
        completion_tokens: 50,
    };
    assert!(
        a.settle("acme", job, "m", used, NOW, reservation)
            .await
            .unwrap()
    );
    assert!(
        a.admit(&req(Uuid::now_v7(), 800), NOW)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        a.admit(&req(Uuid::now_v7(), 200), NOW)
            .await
            .unwrap()
            .is_err()
    );
}

#[tokio::test]
async fn token_limits_settle_to_actual_usage() {
    let mut cfg = GovernanceConfig::default();
    cfg.key = Limit {
        requests: 0,
        tokens: 1000,
        burst: 1.0,
    };
    let (a, _) = replicas(&cfg);
    let first = Uuid::now_v7();
    let reservation = a
        .admit(&req(first, 900), NOW)
        .await
        .unwrap()
        .unwrap()
        .reservation;
    match a.admit(&req(Uuid::now_v7(), 200), NOW).await.unwrap() {
        Err(Refusal::RateLimited { policy, .. }) => assert_eq!(policy.name(), "key-tokens"),
        other => panic!("{other:?}"),
    }
    // It used 100 of the 900 reserved: 800 more tokens of room come back at once.
    settle_100_of_900(&a, first, reservation.as_ref()).await;
}

#[tokio::test]
async fn loops_kill_switch_and_idempotency() {
    let mut cfg = GovernanceConfig::default();
    cfg.loop_max_per_minute = 3;
    let (a, _) = replicas(&cfg);
    let mut chained = req(Uuid::now_v7(), 10);
    chained.chain = Some("c1");
    for _ in 0..3 {
        assert!(a.admit(&chained, NOW).await.unwrap().is_ok());
    }
    assert!(
        matches!(a.admit(&chained, NOW).await.unwrap(), Err(Refusal::Loop { retry_after_ms }) if retry_after_ms <= 60_000)
    );
    // Another chain, or another prompt, is not the loop.
    chained.chain = Some("c2");
    assert!(a.admit(&chained, NOW).await.unwrap().is_ok());

    a.put_tenant("acme", true, NOW).await.unwrap();
    assert_eq!(
        a.admit(&req(Uuid::now_v7(), 10), NOW).await.unwrap(),
        Err(Refusal::Disabled)
    );
    a.put_tenant("acme", false, NOW).await.unwrap();
    assert!(
        a.admit(&req(Uuid::now_v7(), 10), NOW)
            .await
            .unwrap()
            .is_ok()
    );

    let (j1, j2) = (Uuid::now_v7(), Uuid::now_v7());
    let claim = |tenant: &'static str, body: &'static str, job: Uuid| {
        let a = &a;
        async move {
            a.claim_idempotency(tenant, "k", body, job, 60)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim("acme", "body1", j1).await, Claim::New);
    assert_eq!(
        claim("acme", "body1", j2).await,
        Claim::Replay {
            job: j1,
            accepted: false
        },
        "pending until the broker took the job"
    );
    assert_eq!(claim("acme", "body2", j2).await, Claim::Conflict);
    assert_eq!(claim("other", "body1", j2).await, Claim::New, "per tenant");
    a.release_idempotency("acme", "k", "body1", j1)
        .await
        .unwrap();
    assert_eq!(claim("acme", "body1", j2).await, Claim::New);
    a.accept_idempotency("acme", "k", j2).await.unwrap();
    assert_eq!(
        claim("acme", "body1", j1).await,
        Claim::Replay {
            job: j2,
            accepted: true
        }
    );
}

#[tokio::test]
async fn keys_rotate_revoke_and_in_flight_caps() {
    let mut cfg = GovernanceConfig::default();
    cfg.max_in_flight_per_tenant = 2;
    let (a, _) = replicas(&cfg);
    let k = a.create_key("acme", NOW).await.unwrap();
    let digest = sluice_config::hash_api_key(&k.secret);
    assert_eq!(
        a.lookup_key(&digest, NOW).await.unwrap().map(|i| i.tenant),
        Some("acme".into())
    );
    let k2 = a
        .rotate_key("acme", &k.key_id, 60, NOW)
        .await
        .unwrap()
        .unwrap();
    assert!(
        a.lookup_key(&digest, NOW + 59_000).await.unwrap().is_some(),
        "overlap window"
    );
    assert!(a.lookup_key(&digest, NOW + 61_000).await.unwrap().is_none());
    assert_eq!(a.list_keys("acme").await.unwrap().len(), 2);
    assert!(a.revoke_key("acme", &k2.key_id).await.unwrap());
    assert!(
        a.lookup_key(&sluice_config::hash_api_key(&k2.secret), NOW)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!a.revoke_key("acme", "key_nope").await.unwrap());

    let jobs: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let acq = |tenant: &'static str, job: Uuid, now: u64| {
        let a = a.clone();
        async move { a.acquire_in_flight(tenant, job, 10_000, now).await.unwrap() }
    };
    let ok = |d| Slot::Acquired { deferrals: d };
    let full = |d| Slot::Full {
        deferrals: d,
        waiting: 1,
        cap: 2,
    };
    assert_eq!(acq("acme", jobs[0], NOW).await, ok(0));
    assert_eq!(acq("acme", jobs[1], NOW).await, ok(0));
    assert_eq!(acq("acme", jobs[2], NOW).await, full(1));
    assert_eq!(acq("acme", jobs[2], NOW).await, full(2));
    assert_eq!(
        acq("acme", jobs[1], NOW).await,
        ok(0),
        "a redelivery renews"
    );
    assert_eq!(acq("other", jobs[2], NOW).await, ok(0), "per tenant");
    assert_eq!(
        a.release_in_flight("acme", jobs[0]).await.unwrap(),
        1,
        "one job waits for the freed slot"
    );
    assert_eq!(
        acq("acme", jobs[2], NOW).await,
        ok(2),
        "deferrals are remembered"
    );
    assert_eq!(
        a.release_in_flight("acme", jobs[2]).await.unwrap(),
        0,
        "the deferred job ran and ended: none waits"
    );
    // A dead worker's lease expires.
    assert_eq!(acq("acme", Uuid::now_v7(), NOW + 10_001).await, ok(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_budget_bounds_one_key_and_settles_like_the_tenants() {
    let mut cfg = GovernanceConfig::default();
    let mut policy = TenantPolicy::default();
    policy.key_budgets.insert(
        "k1".into(),
        Budget {
            period: BudgetPeriod::Day,
            tokens: 300,
            cost_usd: 0.0,
        },
    );
    cfg.tenants.insert("acme".into(), policy);
    let r = redis_cfg();
    let store = sluice_store::Store::new(&r).unwrap();
    let a = Governor::new(store.clone(), cfg.clone());
    let b = Governor::new(sluice_store::Store::new(&r).unwrap(), cfg.clone());
    let mut k1_jobs = Vec::new();
    for i in 0..3 {
        let job = Uuid::now_v7();
        let g = if i % 2 == 0 { &a } else { &b };
        assert!(g.admit(&req(job, 100), NOW).await.unwrap().is_ok());
        k1_jobs.push(job);
    }
    match a.admit(&req(Uuid::now_v7(), 100), NOW).await.unwrap() {
        Err(Refusal::BudgetExhausted {
            cost: false,
            retry_after_ms,
        }) => assert_eq!(retry_after_ms, 23 * 3_600_000),
        other => panic!("the key's budget is spent: {other:?}"),
    }
    // Another key of the same tenant is not bound by it.
    let mut other_key = req(Uuid::now_v7(), 100);
    other_key.key_id = "k2";
    assert!(a.admit(&other_key, NOW).await.unwrap().is_ok());
    // A job that used nothing gives its 100 tokens back, once; settled as a job published
    // before its envelope named the counters, whose reservation (written by the admission
    // script of then) names them.
    let period = sluice_governance::period::current(BudgetPeriod::Day, NOW).0;
    let old_reservation = format!(
        r#"[100,0,"","{}"]"#,
        a.keys().key_budget("acme", "k1", &period)
    );
    store
        .query_each::<()>(vec![
            redis::cmd("SET")
                .arg(a.keys().reservation("acme", k1_jobs[0]))
                .arg(old_reservation)
                .to_owned(),
        ])
        .await
        .unwrap();
    assert!(
        a.settle("acme", k1_jobs[0], "m", Usage::default(), NOW, None)
            .await
            .unwrap()
    );
    assert!(
        !b.settle("acme", k1_jobs[0], "m", Usage::default(), NOW, None)
            .await
            .unwrap()
    );
    assert!(
        a.admit(&req(Uuid::now_v7(), 100), NOW)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        a.admit(&req(Uuid::now_v7(), 100), NOW)
            .await
            .unwrap()
            .is_err()
    );
}

/// Without limits, budgets or loop checks nothing is reserved (so a worker may skip the
/// settlement), and the kill switch still holds.
#[tokio::test]
async fn an_unlimited_tenant_reserves_nothing_and_its_kill_switch_holds() {
    let mut cfg = GovernanceConfig::default();
    let (a, _) = replicas(&cfg);
    let job = Uuid::now_v7();
    let d = a.admit(&req(job, 10), NOW).await.unwrap().unwrap();
    assert!(!d.reserved);
    assert_eq!(d.quota, None);
    assert!(
        !a.settle("acme", job, "m", Usage::default(), NOW, None)
            .await
            .unwrap(),
        "there is no reservation to settle"
    );
    a.put_tenant("acme", true, NOW).await.unwrap();
    assert_eq!(
        a.admit(&req(Uuid::now_v7(), 10), NOW).await.unwrap(),
        Err(Refusal::Disabled)
    );

    // The same tenant with a budget: the job's reservation waits for its settlement.
    cfg.tenants.insert("acme".into(), day_budget(1000));
    let (b, _) = replicas(&cfg);
    let job = Uuid::now_v7();
    let d = b.admit(&req(job, 10), NOW).await.unwrap().unwrap();
    assert!(d.reserved);
    assert!(
        b.settle(
            "acme",
            job,
            "m",
            Usage::default(),
            NOW,
            d.reservation.as_ref()
        )
        .await
        .unwrap()
    );
}

/// Whether a request's token estimate matters: only budgets and token limits reserve it.
#[tokio::test]
async fn only_budgets_and_token_limits_need_the_estimate() {
    let r = redis_cfg();
    let gov =
        |cfg: &GovernanceConfig| Governor::new(sluice_store::Store::new(&r).unwrap(), cfg.clone());
    let mut cfg = GovernanceConfig::default();
    cfg.tenant = Limit {
        requests: 10,
        tokens: 0,
        burst: 1.0,
    };
    assert!(
        !gov(&cfg).reserves(&req(Uuid::now_v7(), 10)),
        "a request limit"
    );
    cfg.model = Limit {
        requests: 0,
        tokens: 1000,
        burst: 1.0,
    };
    assert!(
        gov(&cfg).reserves(&req(Uuid::now_v7(), 10)),
        "a token limit"
    );
    let mut cfg = GovernanceConfig::default();
    cfg.tenants.insert("acme".into(), day_budget(1000));
    assert!(gov(&cfg).reserves(&req(Uuid::now_v7(), 10)), "a budget");
    assert!(
        !gov(&cfg).reserves(&Admission {
            tenant: "other",
            ..req(Uuid::now_v7(), 10)
        }),
        "another tenant's budget"
    );
}

/// A decision names the counters its reservation is in, the ones the settlement script is
/// passed as keys (a Redis Cluster refuses a script touching keys it was not given), and
/// what is computed again for an admission call that did not answer is the same.
#[tokio::test]
async fn a_reservation_names_the_budgets_and_token_limits_it_is_in() {
    let mut cfg = GovernanceConfig::default();
    cfg.model = Limit {
        requests: 10,
        tokens: 1000,
        burst: 1.0,
    };
    cfg.tenant = Limit {
        requests: 10,
        tokens: 0,
        burst: 1.0,
    };
    let mut policy = day_budget(1000);
    policy.key_budgets.insert(
        "k1".into(),
        Budget {
            period: BudgetPeriod::Day,
            tokens: 500,
            cost_usd: 0.0,
        },
    );
    cfg.tenants.insert("acme".into(), policy);
    let (a, _) = replicas(&cfg);
    let job = Uuid::now_v7();
    let d = a.admit(&req(job, 400), NOW).await.unwrap().unwrap();
    let day = sluice_governance::period::current(BudgetPeriod::Day, NOW).0;
    let expected = sluice_protocol::Reservation {
        budgets: vec![
            a.keys().budget("acme", &day),
            a.keys().key_budget("acme", "k1", &day),
        ],
        // 60 s / 1000 tokens; the tenant's request limit reserves no tokens.
        token_limits: vec![(a.keys().gcra("acme", "model", Some("m")), 60.0)],
    };
    assert_eq!(d.reservation.as_ref(), Some(&expected));
    assert_eq!(a.reservation(&req(job, 400), NOW), expected);
    // Settled through those keys: the 400 reserved become the 100 used, so 400 more fit
    // the key's budget of 500, and not one token more.
    let used = Usage {
        prompt_tokens: 60,
        completion_tokens: 40,
    };
    assert!(
        a.settle("acme", job, "m", used, NOW, d.reservation.as_ref())
            .await
            .unwrap()
    );
    assert!(
        a.admit(&req(Uuid::now_v7(), 400), NOW)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(matches!(
        a.admit(&req(Uuid::now_v7(), 2), NOW).await.unwrap(),
        Err(Refusal::BudgetExhausted { cost: false, .. })
    ));
}

#[tokio::test]
async fn every_script_states_its_contract_and_compiles() {
    let store = sluice_store::Store::new(&redis_cfg()).unwrap();
    sluice_store::scripts::check(&store, sluice_governance::SCRIPTS)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_workers_settlement_frees_the_slot_once_and_settles_once() {
    let mut cfg = GovernanceConfig::default();
    cfg.max_in_flight_per_tenant = 1;
    cfg.tenants.insert(
        "acme".into(),
        TenantPolicy {
            max_in_flight: 1,
            ..day_budget(300)
        },
    );
    let (a, b) = replicas(&cfg);
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let reservation = a
        .admit(&req(first, 200), NOW)
        .await
        .unwrap()
        .unwrap()
        .reservation;
    assert_eq!(
        a.acquire_in_flight("acme", first, 60_000, NOW)
            .await
            .unwrap(),
        Slot::Acquired { deferrals: 0 }
    );
    assert!(matches!(
        b.acquire_in_flight("acme", second, 60_000, NOW)
            .await
            .unwrap(),
        Slot::Full { .. }
    ));
    let used = Usage {
        prompt_tokens: 50,
        completion_tokens: 50,
    };
    // One call settles the job and frees its slot, saying the deferred job waits for it; a
    // redelivery's settles nothing again.
    assert_eq!(
        a.settle_and_release("acme", first, "m", used, NOW, reservation.as_ref())
            .await
            .unwrap(),
        Settlement {
            settled: true,
            freed: Some(1)
        }
    );
    assert_eq!(
        b.settle_and_release("acme", first, "m", used, NOW, reservation.as_ref())
            .await
            .unwrap(),
        Settlement {
            settled: false,
            freed: Some(1)
        }
    );
    assert_eq!(
        b.acquire_in_flight("acme", second, 60_000, NOW)
            .await
            .unwrap(),
        Slot::Acquired { deferrals: 1 }
    );
    // 100 of 300 used: exactly 200 more fit.
    assert!(
        a.admit(&req(Uuid::now_v7(), 200), NOW)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(matches!(
        a.admit(&req(Uuid::now_v7(), 1), NOW).await.unwrap(),
        Err(Refusal::BudgetExhausted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_leases_count_exactly_and_expire() {
    const CAP: u64 = 1_000;
    let mut cfg = GovernanceConfig::default();
    cfg.max_in_flight_per_tenant = CAP;
    let (a, b) = replicas(&cfg);
    let acquire_all = |now: u64| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..CAP + 10 {
                let g = if i % 2 == 0 { a.clone() } else { b.clone() };
                tasks.spawn(async move {
                    g.acquire_in_flight("acme", Uuid::now_v7(), 10_000, now)
                        .await
                        .unwrap()
                });
            }
            let mut acquired = 0;
            while let Some(slot) = tasks.join_next().await {
                if matches!(slot.unwrap(), Slot::Acquired { .. }) {
                    acquired += 1;
                }
            }
            acquired
        }
    };
    assert_eq!(acquire_all(NOW).await, CAP, "two replicas, one cap");
    // Every lease expired (their workers died): the cap is whole again.
    assert_eq!(acquire_all(NOW + 10_001).await, CAP);
}

/// The tenant limit's state lives in the tenant hash, read with the kill switch: its token
/// limit settles there, the hash keeps its other fields and never expires, and the kill
/// switch still refuses first.
#[tokio::test]
async fn the_tenant_limit_lives_in_the_tenant_hash_beside_the_kill_switch() {
    let mut cfg = GovernanceConfig::default();
    cfg.tenant = Limit {
        requests: 10,
        tokens: 1000,
        burst: 1.0,
    };
    let r = redis_cfg();
    let store = sluice_store::Store::new(&r).unwrap();
    let a = Governor::new(store.clone(), cfg.clone());
    a.put_tenant("acme", false, NOW).await.unwrap();
    let first = Uuid::now_v7();
    let d = a.admit(&req(first, 900), NOW).await.unwrap().unwrap();
    let reservation = d.reservation.unwrap();
    assert_eq!(
        reservation.token_limits,
        vec![(a.keys().tenant("acme"), 60.0)]
    );
    match a.admit(&req(Uuid::now_v7(), 200), NOW).await.unwrap() {
        Err(Refusal::RateLimited { policy, .. }) => assert_eq!(policy.name(), "tenant-tokens"),
        other => panic!("{other:?}"),
    }
    // 100 of the 900 used: 800 more fit, not 900.
    settle_100_of_900(&a, first, Some(&reservation)).await;
    let replies: Vec<redis::Value> = store
        .query_each(vec![
            redis::cmd("PTTL").arg(a.keys().tenant("acme")).to_owned(),
            redis::cmd("HGET")
                .arg(a.keys().tenant("acme"))
                .arg("created_at")
                .to_owned(),
        ])
        .await
        .unwrap();
    assert_eq!(
        replies[0],
        redis::Value::Int(-1),
        "the tenant hash never expires"
    );
    assert!(matches!(replies[1], redis::Value::BulkString(_)));
    a.put_tenant("acme", true, NOW).await.unwrap();
    assert_eq!(
        a.admit(&req(Uuid::now_v7(), 1), NOW + 60_000)
            .await
            .unwrap(),
        Err(Refusal::Disabled)
    );
}
