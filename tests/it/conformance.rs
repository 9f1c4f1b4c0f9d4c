//! One conformance suite for every `Store`: each case runs against `MemoryStore` and against
//! `RedisStore` on a real `redis-server` started for the test.

use std::sync::Arc;
use std::time::Duration;

use herald::config::{HumanDuration, RedisConfig};
use herald::model::{
    make_id, now_ms, AttemptRecord, Channel, ContactChange, ContactKey, Content, ErrorClass,
    Notification, Priority, ProviderReceipt, Recipient, Status,
};
use herald::store::{
    CancelTarget, Claimed, Completion, Disposition, Enqueued, IdemKey, MemoryStore,
    NewNotification, RedisStore, Store,
};

use crate::harness::{RedisCluster, RedisServer};

/// A store under test, with whatever keeps it alive.
pub struct Subject {
    pub store: Arc<dyn Store>,
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
}

pub fn memory() -> Subject {
    Subject {
        store: Arc::new(MemoryStore::default()),
        redis: None,
        cluster: None,
    }
}

pub async fn redis_with(shards: u16) -> Subject {
    let server = RedisServer::start();
    let cfg = RedisConfig {
        url: Some(server.url()),
        shards,
        command_timeout: HumanDuration(Duration::from_secs(2)),
        ..Default::default()
    };
    let store = RedisStore::connect(&cfg)
        .await
        .expect("connect to test redis");
    Subject {
        store: Arc::new(store),
        redis: Some(server),
        cluster: None,
    }
}

/// The Redis store on a three-node Redis Cluster, with 8 shards spread over the nodes.
pub async fn redis_cluster() -> Subject {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let cfg = RedisConfig {
        url: Some(urls[0].clone()),
        cluster: true,
        cluster_nodes: urls[1..].to_vec(),
        shards: 8,
        command_timeout: HumanDuration(Duration::from_secs(2)),
        ..Default::default()
    };
    let store = RedisStore::connect(&cfg)
        .await
        .expect("connect to the test cluster");
    Subject {
        store: Arc::new(store),
        redis: None,
        cluster: Some(cluster),
    }
}

pub async fn redis() -> Subject {
    redis_with(4).await
}

pub fn note(store: &dyn Store, route: Vec<Channel>) -> Notification {
    let shard = rand::random_range(0..store.shards());
    Notification {
        id: make_id(shard),
        tenant: "t".into(),
        labels: [("team".to_string(), "growth".to_string())].into(),
        recipient: Recipient {
            webhook_url: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        },
        route,
        content: Content {
            body: "hello".into(),
            ..Default::default()
        },
        created_at: now_ms(),
        ..Default::default()
    }
}

fn new(n: Notification) -> NewNotification {
    let shard = herald::model::shard_of(&n.id).expect("id has a shard");
    NewNotification {
        notification: n,
        shard,
        idem: None,
    }
}

async fn enqueue(store: &dyn Store, n: Notification) -> String {
    let id = n.id.clone();
    let r = store.enqueue(vec![new(n)]).await.expect("enqueue");
    assert!(
        matches!(&r[0], Enqueued::Created { id: x, .. } if *x == id),
        "{r:?}"
    );
    id
}

/// Claims from every shard of `channel`.
async fn claim_all(store: &dyn Store, channel: Channel, consumer: &str) -> Vec<(u16, Claimed)> {
    let mut out = Vec::new();
    for s in 0..store.shards() {
        for c in store
            .claim(channel, s, consumer, 100, Priority::Bulk, None, now_ms())
            .await
            .expect("claim")
        {
            out.push((s, c));
        }
    }
    out
}

fn attempt(channel: Channel, n: u32) -> AttemptRecord {
    AttemptRecord {
        number: n,
        channel,
        started_at: now_ms(),
        finished_at: now_ms(),
        outcome: "sent".into(),
        error_class: None,
        error_code: String::new(),
        error_message: String::new(),
        provider_id: String::new(),
        meta: Default::default(),
    }
}

fn done(c: &Claimed, channel: Channel, d: Disposition) -> Completion {
    Completion {
        entry: c.entry.clone(),
        id: c.notification.id.clone(),
        channel,
        attempt: Some(attempt(channel, c.attempts + 1)),
        disposition: d,
    }
}

/// Finishes one claimed entry as consumer "w".
async fn finish_one(st: &dyn Store, channel: Channel, shard: u16, c: &Claimed, d: Disposition) {
    let applied = finish_as(st, channel, shard, "w", c, d).await;
    assert_eq!(applied, 1, "consumer w owns the entry");
}

/// Finishes one claimed entry as `consumer`; how many finishes applied (0: not its own).
async fn finish_as(
    st: &dyn Store,
    channel: Channel,
    shard: u16,
    consumer: &str,
    c: &Claimed,
    d: Disposition,
) -> usize {
    st.finish(channel, shard, consumer, &[done(c, channel, d)], now_ms())
        .await
        .expect("finish")
}

fn sent(status: Status) -> Disposition {
    Disposition::Sent {
        status,
        provider_id: "prov-1".into(),
        cost_micros: 0,
        currency: String::new(),
        watermark: None,
        counters: Vec::new(),
    }
}

async fn status(store: &dyn Store, id: &str) -> Status {
    store.get(id).await.expect("get").expect("exists").status
}

// ------------------------------------------------------------------------------------ cases

pub async fn claim_send_finish(s: Subject) {
    let st = &*s.store;
    let id = enqueue(st, note(st, vec![Channel::Webhook])).await;
    assert_eq!(status(st, &id).await, Status::Queued);
    let got = claim_all(st, Channel::Webhook, "w1").await;
    assert_eq!(got.len(), 1);
    let (shard, c) = &got[0];
    assert_eq!(c.notification.id, id);
    assert_eq!(c.notification.content.body, "hello");
    assert_eq!(status(st, &id).await, Status::Sending);
    // Nothing else to claim while it is in flight.
    assert!(claim_all(st, Channel::Webhook, "w2").await.is_empty());
    let applied = st
        .finish(
            Channel::Webhook,
            *shard,
            "w1",
            &[done(c, Channel::Webhook, sent(Status::Sent))],
            now_ms(),
        )
        .await
        .expect("finish");
    assert_eq!(applied, 1);
    let v = st.get(&id).await.expect("get").expect("exists");
    assert_eq!(v.status, Status::Sent);
    assert_eq!(v.attempts.len(), 1);
    assert_eq!(v.receipts.len(), 1);
    assert_eq!(v.receipts[0].status, Status::Sent);
    assert_eq!(v.receipts[0].provider_id, "prov-1");
    assert!(claim_all(st, Channel::Webhook, "w1").await.is_empty());
    let depth = st.queue_depth().await.expect("depth");
    let queued: u64 = depth.ready.values().sum();
    assert_eq!(queued, 0, "finished entries leave the queue: {depth:?}");
}

pub async fn idempotency(s: Subject) {
    let st = &*s.store;
    let n = note(st, vec![Channel::Webhook]);
    let shard = herald::model::shard_of(&n.id).expect("shard");
    let key = IdemKey {
        key: "t:order-1".into(),
        fingerprint: "fp-a".into(),
    };
    let first = NewNotification {
        notification: n.clone(),
        shard,
        idem: Some(key.clone()),
    };
    let mut second = first.clone();
    second.notification.id = make_id(shard);
    let mut third = first.clone();
    third.notification.id = make_id(shard);
    third.idem = Some(IdemKey {
        fingerprint: "fp-b".into(),
        ..key
    });
    // All three in one batch: the key is checked in order inside it too.
    let r = st
        .enqueue(vec![first, second, third])
        .await
        .expect("enqueue");
    assert_eq!(
        r[0],
        Enqueued::Created {
            id: n.id.clone(),
            status: Status::Queued
        }
    );
    assert_eq!(
        r[1],
        Enqueued::Duplicate {
            id: n.id.clone(),
            status: Status::Queued
        }
    );
    assert_eq!(r[2], Enqueued::Conflict { id: n.id.clone() });
    assert_eq!(claim_all(st, Channel::Webhook, "w").await.len(), 1);
}

pub async fn scheduling_and_promotion(s: Subject) {
    let st = &*s.store;
    let mut n = note(st, vec![Channel::Webhook]);
    n.send_at = now_ms() + 60_000;
    let id = enqueue(st, n).await;
    assert_eq!(status(st, &id).await, Status::Scheduled);
    assert!(claim_all(st, Channel::Webhook, "w").await.is_empty());
    assert_eq!(st.promote_due(now_ms(), 100).await.expect("promote"), 0);
    assert_eq!(
        st.promote_due(now_ms() + 61_000, 100)
            .await
            .expect("promote"),
        1
    );
    assert_eq!(status(st, &id).await, Status::Queued);
    assert_eq!(claim_all(st, Channel::Webhook, "w").await.len(), 1);
}

pub async fn retry_then_fallback(s: Subject) {
    let st = &*s.store;
    let id = enqueue(st, note(st, vec![Channel::Webhook, Channel::Sandbox])).await;
    let (shard, c) = claim_all(st, Channel::Webhook, "w").await.remove(0);
    let due = now_ms() + 30_000;
    let retry = Disposition::Retry {
        due,
        class: ErrorClass::Transient,
        code: "http_503".into(),
    };
    finish_one(st, Channel::Webhook, shard, &c, retry).await;
    assert_eq!(status(st, &id).await, Status::Retrying);
    assert_eq!(st.promote_due(now_ms(), 10).await.expect("promote"), 0);
    assert_eq!(st.promote_due(due, 10).await.expect("promote"), 1);
    let (shard, c) = claim_all(st, Channel::Webhook, "w").await.remove(0);
    assert_eq!((c.attempts, c.channel_attempts), (1, 1));
    let fb = Disposition::Fallback {
        route_index: 1,
        channel: Channel::Sandbox,
    };
    finish_one(st, Channel::Webhook, shard, &c, fb).await;
    assert!(claim_all(st, Channel::Webhook, "w").await.is_empty());
    let got = claim_all(st, Channel::Sandbox, "w").await;
    assert_eq!(got.len(), 1);
    let c = &got[0].1;
    assert_eq!((c.route_index, c.attempts, c.channel_attempts), (1, 2, 0));
    let v = st.get(&id).await.expect("get").expect("exists");
    assert_eq!(v.channel, Some(Channel::Sandbox));
    assert_eq!(v.attempts.len(), 2);
    assert!(v.receipts.iter().any(|r| r.status == Status::Retrying
        && r.error_class == Some(ErrorClass::Transient)
        && r.error_code == "http_503"));
}

pub async fn failure_and_dead_letters(s: Subject) {
    let st = &*s.store;
    let id = enqueue(st, note(st, vec![Channel::Webhook])).await;
    let (shard, c) = claim_all(st, Channel::Webhook, "w").await.remove(0);
    let fail = Disposition::Failed {
        class: ErrorClass::Transient,
        code: "http_500".into(),
        message: "receiver answered 500".into(),
        dead_letter: true,
    };
    finish_one(st, Channel::Webhook, shard, &c, fail).await;
    assert_eq!(status(st, &id).await, Status::Failed);
    let dl = st
        .dead_letters(Channel::Webhook, 10, None)
        .await
        .expect("dead letters")
        .letters;
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].id, id);
    assert_eq!(dl[0].code, "http_500");
    assert_eq!(dl[0].class, Some(ErrorClass::Transient));
}

/// The ids of the webhook channel's dead letters, sorted.
async fn dead_ids(st: &dyn Store) -> Vec<String> {
    let mut v: Vec<String> = st
        .dead_letters(Channel::Webhook, 100, None)
        .await
        .expect("dead letters")
        .letters
        .into_iter()
        .map(|d| d.id)
        .collect();
    v.sort();
    v
}

/// Queues `n` webhook notifications of campaign "redrive" and fails them into the dead
/// letters; their ids.
async fn fail_to_dead_letters(st: &dyn Store, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let mut x = note(st, vec![Channel::Webhook]);
        x.campaign_id = "redrive".into();
        ids.push(enqueue(st, x).await);
    }
    for (shard, c) in claim_all(st, Channel::Webhook, "w").await {
        let fail = Disposition::Failed {
            class: ErrorClass::Transient,
            code: "http_500".into(),
            message: "receiver answered 500".into(),
            dead_letter: true,
        };
        finish_one(st, Channel::Webhook, shard, &c, fail).await;
    }
    for id in &ids {
        assert_eq!(status(st, id).await, Status::Failed);
    }
    ids
}

/// Dead letters page newest first across shards: every one once, none skipped, and a token
/// the store did not give is refused.
pub async fn dead_letters_page_newest_first(s: Subject) {
    let st = &*s.store;
    let mut ids = Vec::new();
    for _ in 0..7 {
        // One at a time and milliseconds apart, so they are made in a known order (shards'
        // streams number their entries by the millisecond).
        ids.extend(fail_to_dead_letters(st, 1).await);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut seen = Vec::new();
    let mut page: Option<String> = None;
    let mut pages = 0;
    loop {
        let p = st
            .dead_letters(Channel::Webhook, 3, page.as_deref())
            .await
            .expect("page");
        pages += 1;
        assert!(p.letters.len() <= 3);
        seen.extend(p.letters.into_iter().map(|d| d.id));
        match p.next {
            Some(t) => page = Some(t),
            None => break,
        }
        assert!(pages < 10, "pages do not end");
    }
    assert_eq!(pages, 3);
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let e = st
        .dead_letters(Channel::Webhook, 3, Some("nonsense"))
        .await
        .expect_err("bad token");
    assert!(
        matches!(e, herald::store::StoreError::BadCursor(_)),
        "{e:?}"
    );
}

/// Redriven dead letters are queued on their channel again with its attempts at 0 and a
/// QUEUED receipt, and leave the dead letters; given ids, only those.
pub async fn redrive_dead_letters(s: Subject) {
    let st = &*s.store;
    let ids = fail_to_dead_letters(st, 3).await;
    let mut all = ids.clone();
    all.sort();
    assert_eq!(dead_ids(st).await, all);

    // One by id: only it.
    let out = st
        .redrive_dead_letters(Channel::Webhook, std::slice::from_ref(&ids[0]), now_ms())
        .await
        .expect("redrive one");
    assert_eq!(out.redriven, 1);
    assert_eq!(out.gone, 0);
    assert_eq!(status(st, &ids[0]).await, Status::Queued);
    assert_eq!(status(st, &ids[1]).await, Status::Failed);
    assert!(!dead_ids(st).await.contains(&ids[0]));
    assert_eq!(dead_ids(st).await.len(), 2);
    let c = st.campaign("redrive").await.expect("campaign");
    assert_eq!(c.by_status.get(&Status::Failed), Some(&2), "{c:?}");
    assert_eq!(c.by_status.get(&Status::Queued), Some(&1), "{c:?}");
    let v = st.get(&ids[0]).await.expect("get").expect("exists");
    let last = v.receipts.last().expect("receipts");
    assert_eq!(last.status, Status::Queued, "{:?}", v.receipts);
    assert_eq!(last.channel, Some(Channel::Webhook));
    // Another channel's redrive touches none of them.
    let other = st
        .redrive_dead_letters(Channel::Sms, &[], now_ms())
        .await
        .expect("redrive sms");
    assert_eq!(other.redriven, 0);

    // It is claimed again, with a fresh count of this channel's attempts.
    let got = claim_all(st, Channel::Webhook, "w").await;
    assert_eq!(got.len(), 1);
    let (shard, c) = &got[0];
    assert_eq!(c.notification.id, ids[0]);
    assert_eq!(c.channel_attempts, 0);
    assert_eq!(
        c.attempts, 1,
        "the attempts of all channels still count the first"
    );
    finish_one(st, Channel::Webhook, *shard, c, sent(Status::Sent)).await;
    assert_eq!(status(st, &ids[0]).await, Status::Sent);

    // All of the channel: the other two; then there is nothing left to redrive.
    let out = st
        .redrive_dead_letters(Channel::Webhook, &[], now_ms())
        .await
        .expect("redrive all");
    assert_eq!(out.redriven, 2);
    assert!(dead_ids(st).await.is_empty());
    let got = claim_all(st, Channel::Webhook, "w").await;
    let mut claimed: Vec<String> = got.iter().map(|(_, c)| c.notification.id.clone()).collect();
    claimed.sort();
    let mut rest = ids[1..].to_vec();
    rest.sort();
    assert_eq!(claimed, rest);
    let again = st
        .redrive_dead_letters(Channel::Webhook, &[], now_ms())
        .await
        .expect("redrive nothing");
    assert_eq!(again.redriven, 0);
}

pub async fn cancel_before_and_after_sending(s: Subject) {
    let st = &*s.store;
    let mut n = note(st, vec![Channel::Webhook]);
    n.send_at = now_ms() + 60_000;
    let scheduled = enqueue(st, n).await;
    let queued = enqueue(st, note(st, vec![Channel::Webhook])).await;
    let out = st
        .cancel(CancelTarget::Notification(scheduled.clone()), now_ms())
        .await
        .expect("cancel");
    assert_eq!((out.canceled, out.status), (1, Some(Status::Canceled)));
    // A scheduled one canceled never becomes ready.
    assert_eq!(
        st.promote_due(now_ms() + 120_000, 10)
            .await
            .expect("promote"),
        0
    );
    let out = st
        .cancel(CancelTarget::Notification(queued.clone()), now_ms())
        .await
        .expect("cancel");
    assert_eq!(out.canceled, 1);
    assert!(claim_all(st, Channel::Webhook, "w").await.is_empty());
    // Once a worker holds it, cancel leaves it alone.
    let sending = enqueue(st, note(st, vec![Channel::Webhook])).await;
    assert_eq!(claim_all(st, Channel::Webhook, "w").await.len(), 1);
    let out = st
        .cancel(CancelTarget::Notification(sending.clone()), now_ms())
        .await
        .expect("cancel");
    assert_eq!((out.canceled, out.status), (0, Some(Status::Sending)));
    let unknown = make_id(0);
    let out = st
        .cancel(CancelTarget::Notification(unknown), now_ms())
        .await
        .expect("cancel");
    assert_eq!(out.status, None);
}

pub async fn cancel_campaign(s: Subject) {
    let st = &*s.store;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut n = note(st, vec![Channel::Webhook]);
        n.campaign_id = "spring".into();
        ids.push(enqueue(st, n).await);
    }
    let out = st
        .cancel(CancelTarget::Campaign("spring".into()), now_ms())
        .await
        .expect("cancel");
    assert_eq!(out.canceled, 5);
    assert!(claim_all(st, Channel::Webhook, "w").await.is_empty());
    for id in &ids {
        assert_eq!(status(st, id).await, Status::Canceled);
    }
    let c = st.campaign("spring").await.expect("campaign");
    assert!(c.canceled);
    assert_eq!(c.by_status.get(&Status::Canceled), Some(&5));
}

pub async fn expiry_at_claim(s: Subject) {
    let st = &*s.store;
    let mut n = note(st, vec![Channel::Webhook]);
    n.expire_at = now_ms() + 50;
    let id = enqueue(st, n).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(claim_all(st, Channel::Webhook, "w").await.is_empty());
    assert_eq!(status(st, &id).await, Status::Expired);
}

pub async fn takeover_of_abandoned_entries(s: Subject) {
    let st = &*s.store;
    let id = enqueue(st, note(st, vec![Channel::Webhook])).await;
    let (shard, mine) = claim_all(st, Channel::Webhook, "dead-worker")
        .await
        .remove(0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Another worker takes over entries idle longer than the takeover time.
    let taken = st
        .claim(
            Channel::Webhook,
            shard,
            "live-worker",
            10,
            Priority::Bulk,
            Some(Duration::from_millis(20)),
            now_ms(),
        )
        .await
        .expect("claim");
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].notification.id, id);
    // The slow worker no longer owns it: its finish is skipped.
    let applied = finish_as(
        st,
        Channel::Webhook,
        shard,
        "dead-worker",
        &mine,
        sent(Status::Sent),
    )
    .await;
    assert_eq!(applied, 0);
    assert_eq!(status(st, &id).await, Status::Sending);
    let applied = finish_as(
        st,
        Channel::Webhook,
        shard,
        "live-worker",
        &taken[0],
        sent(Status::Delivered),
    )
    .await;
    assert_eq!(applied, 1);
    assert_eq!(status(st, &id).await, Status::Delivered);
}

pub async fn receipts_move_forward_only(s: Subject) {
    let st = &*s.store;
    let id = enqueue(st, note(st, vec![Channel::Sandbox])).await;
    let (shard, c) = claim_all(st, Channel::Sandbox, "w").await.remove(0);
    st.finish(
        Channel::Sandbox,
        shard,
        "w",
        &[done(&c, Channel::Sandbox, sent(Status::Sent))],
        now_ms(),
    )
    .await
    .expect("finish");
    let pr = |status, by_provider: bool| ProviderReceipt {
        channel: Channel::Sandbox,
        notification_id: if by_provider {
            String::new()
        } else {
            id.clone()
        },
        provider_id: "prov-1".into(),
        status,
        error_class: None,
        error_code: String::new(),
        at: now_ms(),
    };
    // Read arrives first (out of order), then delivered, then read again: only READ applies.
    st.record_receipts(vec![pr(Status::Read, false)])
        .await
        .expect("receipts");
    st.record_receipts(vec![pr(Status::Delivered, true), pr(Status::Read, true)])
        .await
        .expect("receipts");
    let v = st.get(&id).await.expect("get").expect("exists");
    assert_eq!(v.status, Status::Read);
    let statuses: Vec<Status> = v.receipts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Status::Sent, Status::Read]);
}

pub async fn receipt_cursor_resumes_exactly(s: Subject) {
    let st = &*s.store;
    let start = st.read_receipts(None, false, 100).await.expect("read");
    assert!(start.receipts.is_empty());
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(enqueue(st, note(st, vec![Channel::Webhook])).await);
    }
    for (shard, c) in claim_all(st, Channel::Webhook, "w").await {
        st.finish(
            Channel::Webhook,
            shard,
            "w",
            &[done(&c, Channel::Webhook, sent(Status::Delivered))],
            now_ms(),
        )
        .await
        .expect("finish");
    }
    let all = st
        .read_receipts(Some(&start.cursor), false, 100)
        .await
        .expect("read");
    assert_eq!(all.receipts.len(), 12);
    let mut seen: Vec<String> = all
        .receipts
        .iter()
        .map(|r| r.notification_id.clone())
        .collect();
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(
        all.receipts[0].labels.get("team").map(String::as_str),
        Some("growth")
    );
    // Resume from the fifth receipt's cursor: exactly the last seven, in the same order.
    let fifth = all.receipts[4].cursor.clone();
    let rest = st
        .read_receipts(Some(&fifth), false, 100)
        .await
        .expect("read");
    let rest_ids: Vec<&str> = rest
        .receipts
        .iter()
        .map(|r| r.notification_id.as_str())
        .collect();
    let expect: Vec<&str> = all.receipts[5..]
        .iter()
        .map(|r| r.notification_id.as_str())
        .collect();
    assert_eq!(rest_ids, expect);
    // From the end: nothing; from the start: everything.
    let end = st
        .read_receipts(Some(&all.cursor), false, 100)
        .await
        .expect("read");
    assert!(end.receipts.is_empty());
    let from_start = st.read_receipts(None, true, 100).await.expect("read");
    assert_eq!(from_start.receipts.len(), 12);
    assert!(st.read_receipts(Some("garbage"), false, 10).await.is_err());
}

pub async fn campaign_counts(s: Subject) {
    let st = &*s.store;
    for _ in 0..3 {
        let mut n = note(st, vec![Channel::Webhook, Channel::Sandbox]);
        n.campaign_id = "c1".into();
        enqueue(st, n).await;
    }
    let c = st.campaign("c1").await.expect("campaign");
    assert_eq!(c.total, 3);
    assert_eq!(c.by_status.get(&Status::Queued), Some(&3));
    let claimed = claim_all(st, Channel::Webhook, "w").await;
    assert_eq!(claimed.len(), 3);
    let ds = [
        sent(Status::Delivered),
        Disposition::Fallback {
            route_index: 1,
            channel: Channel::Sandbox,
        },
        Disposition::Failed {
            class: ErrorClass::DeadAddress,
            code: "http_410".into(),
            message: "gone".into(),
            dead_letter: false,
        },
    ];
    for ((shard, c), d) in claimed.iter().zip(ds) {
        finish_one(st, Channel::Webhook, *shard, c, d).await;
    }
    let c = st.campaign("c1").await.expect("campaign");
    assert_eq!(c.total, 3);
    assert_eq!(c.by_status.get(&Status::Delivered), Some(&1));
    assert_eq!(c.by_status.get(&Status::Queued), Some(&1));
    assert_eq!(c.by_status.get(&Status::Failed), Some(&1));
    assert_eq!(c.by_status.get(&Status::Sending), None);
    let web = c.by_channel.get(&Channel::Webhook).expect("webhook counts");
    assert_eq!(web.get(&Status::Delivered), Some(&1));
    assert_eq!(web.get(&Status::Failed), Some(&1));
    let sbx = c.by_channel.get(&Channel::Sandbox).expect("sandbox counts");
    assert_eq!(sbx.get(&Status::Queued), Some(&1));
    assert_eq!(st.campaign("nope").await.expect("campaign").total, 0);
}

pub async fn campaign_notifications_read_back_whole(s: Subject) {
    let st = &*s.store;
    // Two of a campaign with the same content (stored once by the Redis store), one with its
    // own content, one outside any campaign: all read back exactly as written.
    let mut written = Vec::new();
    for (i, (campaign, body)) in [
        ("spring", "Spring sale"),
        ("spring", "Spring sale"),
        ("spring", "Last day"),
        ("", "Receipt 42"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut n = note(st, vec![Channel::Webhook]);
        n.campaign_id = campaign.into();
        n.content.body = body.into();
        n.content.data = [("n".to_string(), i.to_string())].into();
        if i % 2 == 0 {
            // Made at the time of its id (what ingest does): the record need not store it.
            let at = now_ms();
            let shard = herald::model::shard_of(&n.id).expect("shard");
            n.id = herald::model::make_id_at(shard, at);
            n.created_at = at;
        } else {
            n.created_at = 1_700_000_000_000;
        }
        enqueue(st, n.clone()).await;
        written.push(n);
    }
    // Records of every size: in one compact part, in several 64-byte parts, and over 256
    // bytes in one value (the Redis store's three encodings).
    for len in [1, 150, 400] {
        let mut n = note(st, vec![Channel::Webhook]);
        n.campaign_id = "spring".into();
        n.content.body = "Spring sale".into();
        n.recipient.contact_id = "c".repeat(len);
        enqueue(st, n.clone()).await;
        written.push(n);
    }
    for n in &written {
        let view = st.get(&n.id).await.expect("get").expect("found");
        assert_eq!(&view.notification, n);
    }
    let mut claimed: Vec<Notification> = claim_all(st, Channel::Webhook, "w")
        .await
        .into_iter()
        .map(|(_, c)| c.notification)
        .collect();
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    written.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(claimed, written);
}

pub async fn a_batch_of_interleaved_contents_reads_back_whole(s: Subject) {
    let st = &*s.store;
    // One call, one shard, two contents taking turns (and a third, then the first again):
    // each notification keeps its own.
    let bodies = [
        "Spring sale",
        "Last day",
        "Spring sale",
        "Last day",
        "Encore",
        "Spring sale",
    ];
    let mut written = Vec::new();
    let mut items = Vec::new();
    for body in bodies {
        let mut n = note(st, vec![Channel::Webhook]);
        n.id = herald::model::make_id(0);
        n.campaign_id = "spring".into();
        n.content.body = body.into();
        written.push(n.clone());
        items.push(new(n));
    }
    let r = st.enqueue(items).await.expect("enqueue");
    assert_eq!(r.len(), written.len());
    for (n, e) in written.iter_mut().zip(&r) {
        match e {
            // A store may give a campaign notification another id (packed records).
            Enqueued::Created { id, .. } => n.id = id.clone(),
            other => panic!("not created: {other:?}"),
        }
    }
    for n in &written {
        let view = st.get(&n.id).await.expect("get").expect("found");
        assert_eq!(view.notification.content, n.content, "{}", n.id);
    }
    let mut claimed: Vec<(String, String)> = claim_all(st, Channel::Webhook, "w")
        .await
        .into_iter()
        .map(|(_, c)| (c.notification.id, c.notification.content.body))
        .collect();
    claimed.sort();
    let mut want: Vec<(String, String)> = written
        .iter()
        .map(|n| (n.id.clone(), n.content.body.clone()))
        .collect();
    want.sort();
    assert_eq!(claimed, want);
}

pub async fn priority_lanes(s: Subject) {
    let st = &*s.store;
    let shard = 0;
    let mk = |p: Priority| {
        let mut n = note(st, vec![Channel::Webhook]);
        n.id = make_id(shard);
        n.priority = p;
        n
    };
    for _ in 0..3 {
        enqueue(st, mk(Priority::Bulk)).await;
    }
    let high = enqueue(st, mk(Priority::High)).await;
    let got = st
        .claim(
            Channel::Webhook,
            shard,
            "w",
            1,
            Priority::Bulk,
            None,
            now_ms(),
        )
        .await
        .expect("claim");
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].notification.id, high,
        "HIGH is claimed before BULK queued earlier"
    );
    // The HIGH-only worker's claim leaves the other lanes alone, even with nothing in HIGH.
    let claim_high = || async {
        st.claim(
            Channel::Webhook,
            shard,
            "h",
            10,
            Priority::High,
            None,
            now_ms(),
        )
        .await
        .expect("claim")
    };
    let none = claim_high().await;
    assert!(
        none.is_empty(),
        "a HIGH-only claim took {} others",
        none.len()
    );
    let high2 = enqueue(st, mk(Priority::High)).await;
    enqueue(st, mk(Priority::Normal)).await;
    let got = claim_high().await;
    let ids: Vec<&str> = got.iter().map(|c| c.notification.id.as_str()).collect();
    assert_eq!(ids, vec![high2.as_str()]);
    let rest = st
        .claim(
            Channel::Webhook,
            shard,
            "w",
            10,
            Priority::Bulk,
            None,
            now_ms(),
        )
        .await
        .expect("claim");
    assert_eq!(rest.len(), 4, "the three BULK and the NORMAL one");
}

pub async fn contact_state(s: Subject) {
    let st = &*s.store;
    let sms = ContactKey::new(Channel::Sms, "+14155550100");
    let other = ContactKey::new(Channel::Sms, "+14155550199");
    let wa = ContactKey::new(Channel::Whatsapp, "+14155550100");
    let got = st
        .contacts(&[sms.clone(), wa.clone()])
        .await
        .expect("contacts");
    assert!(got.iter().all(|c| !c.suppressed() && c.last_inbound == 0));
    st.update_contacts(vec![
        (sms.clone(), ContactChange::OptOut),
        (wa.clone(), ContactChange::Inbound(5_000)),
        (wa.clone(), ContactChange::Inbound(3_000)),
        (other.clone(), ContactChange::Dead),
    ])
    .await
    .expect("update");
    let got = st
        .contacts(&[sms.clone(), wa.clone(), other.clone()])
        .await
        .expect("contacts");
    assert!(got[0].opted_out && !got[0].dead);
    assert_eq!(
        got[1].last_inbound, 5_000,
        "a late, older inbound does not move it back"
    );
    assert!(!got[1].suppressed(), "opt-out is per channel");
    assert!(got[2].dead);
    st.update_contacts(vec![
        (sms.clone(), ContactChange::OptIn),
        (other.clone(), ContactChange::Alive),
    ])
    .await
    .expect("update");
    let got = st.contacts(&[sms, other]).await.expect("contacts");
    assert!(!got[0].suppressed() && !got[1].suppressed());
}

pub async fn watermark_index(s: Subject) {
    let st = &*s.store;
    let psid = ContactKey::new(Channel::Messenger, "psid-1");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = enqueue(st, note(st, vec![Channel::Messenger])).await;
        let (shard, c) = claim_all(st, Channel::Messenger, "w").await.remove(0);
        let d = Disposition::Sent {
            status: Status::Sent,
            provider_id: format!("m_{id}"),
            cost_micros: 0,
            currency: String::new(),
            watermark: Some(psid.clone()),
            counters: Vec::new(),
        };
        finish_one(st, Channel::Messenger, shard, &c, d).await;
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = st.sent_before(&psid, now_ms()).await.expect("index");
    assert_eq!(all, ids);
    assert!(st.sent_before(&psid, 0).await.expect("index").is_empty());
    let other = ContactKey::new(Channel::Messenger, "psid-2");
    assert!(st
        .sent_before(&other, now_ms())
        .await
        .expect("index")
        .is_empty());
}

pub async fn receipts_before_the_send_is_recorded(s: Subject) {
    let st = &*s.store;
    let id = enqueue(st, note(st, vec![Channel::Sms])).await;
    let (shard, c) = claim_all(st, Channel::Sms, "w").await.remove(0);
    // The platform reports delivery before our finish has linked its message id.
    st.record_receipts(vec![ProviderReceipt {
        channel: Channel::Sms,
        notification_id: String::new(),
        provider_id: "SM-early".into(),
        status: Status::Delivered,
        error_class: None,
        error_code: String::new(),
        at: now_ms(),
    }])
    .await
    .expect("receipts");
    assert_eq!(status(st, &id).await, Status::Sending);
    let d = Disposition::Sent {
        status: Status::Sent,
        provider_id: "SM-early".into(),
        cost_micros: 0,
        currency: String::new(),
        watermark: None,
        counters: Vec::new(),
    };
    finish_one(st, Channel::Sms, shard, &c, d).await;
    assert_eq!(status(st, &id).await, Status::Delivered);
}

pub async fn operator_pauses(s: Subject) {
    let st = &*s.store;
    assert!(st.paused().await.expect("paused").is_empty());
    st.set_paused(Channel::Sms, Some("carrier incident".into()))
        .await
        .expect("pause");
    st.set_paused(Channel::Email, Some("warm-up".into()))
        .await
        .expect("pause");
    st.set_paused(Channel::Email, None).await.expect("resume");
    let p = st.paused().await.expect("paused");
    assert_eq!(p.len(), 1);
    assert_eq!(
        p.get(&Channel::Sms).map(String::as_str),
        Some("carrier incident")
    );
}

pub async fn budgets_and_recent_sends(s: Subject) {
    use herald::store::Counter;
    let st = &*s.store;
    let t0 = now_ms();
    for cost in [1_500, 2_500] {
        let id = enqueue(st, note(st, vec![Channel::Sms])).await;
        let (shard, c) = claim_all(st, Channel::Sms, "w").await.remove(0);
        let d = Disposition::Sent {
            status: Status::Sent,
            provider_id: format!("SM{id}"),
            cost_micros: cost,
            currency: "USD".into(),
            watermark: None,
            counters: vec![
                Counter::Budget("campaign:spring:20261123".into()),
                Counter::Recent("contact-1:marketing".into()),
            ],
        };
        finish_one(st, Channel::Sms, shard, &c, d).await;
    }
    let spent = st
        .budget_spent(&[
            "campaign:spring:20261123".to_string(),
            "campaign:other:20261123".to_string(),
        ])
        .await
        .expect("spent");
    assert_eq!(spent, vec![4_000, 0]);
    let counts = st
        .recent_sends(&[
            ("contact-1:marketing".to_string(), t0 - 1),
            ("contact-1:marketing".to_string(), now_ms() + 60_000),
            ("contact-2:marketing".to_string(), 0),
        ])
        .await
        .expect("recent");
    assert_eq!(counts, vec![2, 0, 0]);
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            $(#[tokio::test] async fn $name() { super::$name(super::memory()).await })*
        }
        mod redis_store {
            $(#[tokio::test] async fn $name() { super::$name(super::redis().await).await })*
        }
        mod redis_cluster_store {
            $(#[tokio::test] async fn $name() { super::$name(super::redis_cluster().await).await })*
        }
    };
}

/// Queues `n` webhook notifications on shard 0, all created.
async fn queue_on_shard0(st: &dyn Store, n: usize) {
    let batch: Vec<NewNotification> = (0..n)
        .map(|_| {
            let mut x = note(st, vec![Channel::Webhook]);
            x.id = make_id(0);
            new(x)
        })
        .collect();
    let made = st.enqueue(batch).await.expect("enqueue");
    assert!(made.iter().all(|e| matches!(e, Enqueued::Created { .. })));
}

/// Claims up to `n` webhook entries of shard 0, every lane, as consumer "w".
async fn claim_w(st: &dyn Store, n: usize) -> Vec<Claimed> {
    st.claim(Channel::Webhook, 0, "w", n, Priority::Bulk, None, now_ms())
        .await
        .expect("claim")
}

/// Finishes webhook entries of shard 0 claimed by "w" as sent; how many applied.
async fn finish_sent<'a>(st: &dyn Store, entries: impl IntoIterator<Item = &'a Claimed>) -> usize {
    let batch: Vec<Completion> = entries
        .into_iter()
        .map(|c| done(c, Channel::Webhook, sent(Status::Sent)))
        .collect();
    st.finish(Channel::Webhook, 0, "w", &batch, now_ms())
        .await
        .expect("finish")
}

/// What the queue depth counts in the ready lanes.
async fn in_lanes(st: &dyn Store) -> u64 {
    let d = st.queue_depth().await.expect("depth");
    d.ready.values().sum()
}

/// The queue depth counts what waits in a lane and what is being sent from it, not what is
/// done; what a policy dry run sees waiting is only what no platform has been handed yet.
pub async fn depth_counts_waiting_and_sending(s: Subject) {
    let st = &*s.store;
    queue_on_shard0(st, 250).await;
    assert_eq!(in_lanes(st).await, 250);
    let got = claim_w(st, 150).await;
    assert_eq!(got.len(), 150);
    assert_eq!(finish_sent(st, &got[..100]).await, 100);
    // 50 being sent, 100 not read yet.
    assert_eq!(in_lanes(st).await, 150);
    let waiting = st.waiting(10_000).await.expect("waiting");
    assert_eq!(waiting.len(), 100, "only the unread wait");
    let claimed: std::collections::HashSet<&str> =
        got.iter().map(|c| c.notification.id.as_str()).collect();
    assert!(waiting
        .iter()
        .all(|(n, _)| !claimed.contains(n.id.as_str())));
    // The rest is claimed and everything finished: nothing waits, nothing is counted.
    let rest = claim_w(st, 150).await;
    assert_eq!(rest.len(), 100);
    assert_eq!(finish_sent(st, got[100..].iter().chain(&rest)).await, 150);
    assert_eq!(in_lanes(st).await, 0);
    assert!(st.waiting(10_000).await.expect("waiting").is_empty());
}

both!(
    depth_counts_waiting_and_sending,
    claim_send_finish,
    idempotency,
    scheduling_and_promotion,
    retry_then_fallback,
    failure_and_dead_letters,
    dead_letters_page_newest_first,
    redrive_dead_letters,
    cancel_before_and_after_sending,
    cancel_campaign,
    expiry_at_claim,
    takeover_of_abandoned_entries,
    receipts_move_forward_only,
    receipt_cursor_resumes_exactly,
    campaign_counts,
    campaign_notifications_read_back_whole,
    a_batch_of_interleaved_contents_reads_back_whole,
    priority_lanes,
    contact_state,
    watermark_index,
    receipts_before_the_send_is_recorded,
    policy_versions,
    operator_pauses,
    budgets_and_recent_sends,
);

/// Redis only: a redriven record loses its expiry (a finished record's retention), and a
/// dead letter whose record is gone is left for inspection.
#[tokio::test]
async fn redis_redrive_persists_the_record_and_keeps_dead_letters_of_gone_ones() {
    let s = redis().await;
    let st = &*s.store;
    let server = s.redis.as_ref().expect("redis");
    let ids = fail_to_dead_letters(st, 2).await;
    let key = |id: &str| {
        let shard = herald::model::shard_of(id).expect("shard");
        format!("herald:{{{shard}}}:n:{id}")
    };
    assert!(
        server
            .cmd(&["PTTL", &key(&ids[0])])
            .trim()
            .parse::<i64>()
            .expect("ttl")
            > 0
    );
    server.cmd(&["DEL", &key(&ids[1])]);
    let out = st
        .redrive_dead_letters(Channel::Webhook, &[], now_ms())
        .await
        .expect("redrive");
    assert_eq!(out.redriven, 1);
    assert_eq!(out.gone, 1);
    assert_eq!(server.cmd(&["PTTL", &key(&ids[0])]).trim(), "-1");
    let left: Vec<String> = st
        .dead_letters(Channel::Webhook, 10, None)
        .await
        .expect("dead letters")
        .letters
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(left, vec![ids[1].clone()]);
}

/// Redis Cluster: the shards' keys live on every node (each shard wholly on one), and a call
/// over every shard (campaign counts, queue depth) adds them up across the nodes.
#[tokio::test]
async fn redis_cluster_spreads_shards_over_the_nodes() {
    let s = redis_cluster().await;
    let st = &*s.store;
    let cluster = s.cluster.as_ref().expect("cluster");
    let batch: Vec<NewNotification> = (0..st.shards())
        .flat_map(|shard| (0..5).map(move |_| shard))
        .map(|shard| {
            let mut x = note(st, vec![Channel::Webhook]);
            x.id = make_id(shard);
            x.campaign_id = "spread".into();
            new(x)
        })
        .collect();
    let made = st.enqueue(batch).await.expect("enqueue");
    assert_eq!(made.len(), 40);
    for shard in 0..st.shards() {
        let keys = format!("herald:{{{shard}}}:*");
        let holder = cluster.node_for(&format!("herald:{{{shard}}}:x"));
        for node in &cluster.nodes {
            let here = node.cmd(&["KEYS", &keys]);
            if std::ptr::eq(node, holder) {
                assert_ne!(here, "", "shard {shard} is on its slot's node");
            } else {
                assert_eq!(here, "", "shard {shard} is on one node only");
            }
        }
    }
    for node in &cluster.nodes {
        assert_ne!(
            node.cmd(&["KEYS", "herald:{*}:*"]),
            "",
            "every node holds a shard"
        );
    }
    let c = st.campaign("spread").await.expect("campaign");
    assert_eq!(c.total, 40);
    assert_eq!(in_lanes(st).await, 40);
}

/// Redis Cluster: a shard's slot moved to another node (a resharding, done with Herald idle
/// between calls) is found there. The first calls after it are answered MOVED and sent
/// again to the new node; what was queued and what was being sent (the consumer group's
/// pending entries) moved with the keys, and every notification is finished and counted once.
#[tokio::test]
async fn redis_cluster_a_resharded_shard_is_served_by_its_new_node() {
    let s = redis_cluster().await;
    let st = &*s.store;
    let cluster = s.cluster.as_ref().expect("cluster");
    queue_on_shard0(st, 50).await;
    let first = claim_w(st, 20).await;
    assert_eq!(first.len(), 20);
    let key = "herald:{0}:x";
    let to = (cluster.holder_of(key) + 1) % cluster.nodes.len();
    let from = cluster.move_slot(key, to);
    assert_eq!(
        cluster.nodes[from].cmd(&["KEYS", "herald:{0}:*"]),
        "",
        "nothing of shard 0 is left on its old node"
    );
    assert_ne!(cluster.nodes[to].cmd(&["KEYS", "herald:{0}:*"]), "");
    shard0_carries_on(st, &first, 30).await;
    // The new work went to the new node.
    assert_eq!(cluster.nodes[from].cmd(&["KEYS", "herald:{0}:*"]), "");
}

/// After shard 0 moved to another node (resharding, failover), with `first` claimed by "w"
/// before the move and `waiting` not yet claimed: `first` finishes, the rest is claimed and
/// finished, each notification once and all of them Sent, and new work queues on the shard.
async fn shard0_carries_on(st: &dyn Store, first: &[Claimed], waiting: usize) {
    assert_eq!(finish_sent(st, first).await, first.len());
    let rest = claim_w(st, waiting + 100).await;
    assert_eq!(
        rest.len(),
        waiting,
        "what was not yet claimed moved with the stream"
    );
    assert_eq!(finish_sent(st, &rest).await, waiting);
    let mut ids: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|c| c.notification.id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        first.len() + waiting,
        "each notification claimed once"
    );
    for id in ids {
        let v = st.get(id).await.expect("get").expect("record");
        assert_eq!(v.status, Status::Sent, "{id}");
    }
    queue_on_shard0(st, 5).await;
    assert_eq!(in_lanes(st).await, 5);
}

/// Redis Cluster: after a failover (a replica of shard 0's primary promoted by a manual
/// `CLUSTER FAILOVER`, the way a primary is taken out for maintenance), Herald follows the
/// shard to the promoted node: its queue, the entries being sent and the function library
/// came with the replication, and nothing is lost or done twice.
#[tokio::test]
async fn redis_cluster_a_failover_is_followed_to_the_promoted_replica() {
    let mut s = redis_cluster().await;
    let st = s.store.clone();
    let st = &*st;
    queue_on_shard0(st, 30).await;
    let first = claim_w(st, 10).await;
    assert_eq!(first.len(), 10);
    let cluster = s.cluster.as_mut().expect("cluster");
    let key = "herald:{0}:x";
    let primary = cluster.holder_of(key);
    let replica = cluster.add_replica(primary);
    cluster.fail_over_to(replica, key);
    assert_eq!(
        cluster.holder_of(key),
        replica,
        "the replica serves the slot"
    );
    assert!(cluster.nodes[primary].cmd(&["ROLE"]).starts_with("slave"));
    shard0_carries_on(st, &first, 20).await;
}

/// Redis only: a small write over several shards is one function call (its items follow
/// their shard's marker), and each item still lands in its own shard: record, queue entry,
/// idempotency key and campaign counters.
#[tokio::test]
async fn redis_small_writes_over_several_shards_are_one_call() {
    let s = redis().await;
    let st = &*s.store;
    let server = s.redis.as_ref().expect("redis");
    let mut batch = Vec::new();
    for i in 0..12u16 {
        let mut x = note(st, vec![Channel::Webhook]);
        let shard = i % 4;
        x.id = make_id(shard);
        x.campaign_id = "merged".into();
        // Contents of their own: no run of like ones to pack into a bucket.
        x.content.body = format!("hello {i}");
        let mut item = new(x);
        if i < 4 {
            item.idem = Some(IdemKey {
                key: format!("t:k{i}"),
                fingerprint: "fp".into(),
            });
        }
        batch.push(item);
    }
    // A repeat of item 1's key, on its shard, later in the same call.
    let mut again = batch[1].clone();
    again.notification.id = make_id(1);
    batch.push(again);
    server.cmd(&["CONFIG", "RESETSTAT"]);
    let made = st.enqueue(batch.clone()).await.expect("enqueue");
    let stats = server.cmd(&["INFO", "commandstats"]);
    let fcalls = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_fcall:"))
        .and_then(|l| l.split(['=', ',']).nth(1))
        .and_then(|n| n.parse::<u32>().ok());
    assert_eq!(fcalls, Some(1), "{stats}");
    for (i, e) in made.iter().take(12).enumerate() {
        assert_eq!(
            *e,
            Enqueued::Created {
                id: batch[i].notification.id.clone(),
                status: Status::Queued
            }
        );
    }
    assert_eq!(
        made[12],
        Enqueued::Duplicate {
            id: batch[1].notification.id.clone(),
            status: Status::Queued
        }
    );
    for shard in 0..4u16 {
        let p = format!("herald:{{{shard}}}:");
        assert_eq!(server.cmd(&["KEYS", &format!("{p}n:*")]).lines().count(), 3);
        let lanes = server.cmd(&["KEYS", &format!("{p}ready:webhook:*")]);
        let queued: u64 = lanes
            .lines()
            .map(|k| {
                server
                    .cmd(&["XLEN", k])
                    .trim()
                    .parse::<u64>()
                    .expect("xlen")
            })
            .sum();
        assert_eq!(queued, 3, "shard {shard}'s queue");
        assert_eq!(
            server
                .cmd(&["HGET", &format!("{p}camp:merged"), "s3"])
                .trim(),
            "3"
        );
        assert_eq!(
            server
                .cmd(&["EXISTS", &format!("{p}idem:t:k{shard}")])
                .trim(),
            "1",
            "shard {shard}'s key"
        );
        // Claimed with its expiry (24 h by default) and holding the first id, not the repeat's.
        let idem = format!("{p}idem:t:k{shard}");
        let ttl: i64 = server.cmd(&["PTTL", &idem]).trim().parse().expect("pttl");
        assert!(
            ttl > 23 * 3600 * 1000 && ttl <= 24 * 3600 * 1000,
            "ttl {ttl}"
        );
        assert_eq!(
            server.cmd(&["GET", &idem]).trim(),
            format!("{}|fp", batch[shard as usize].notification.id)
        );
    }
    let c = st.campaign("merged").await.expect("campaign");
    assert_eq!(c.total, 12);
    assert_eq!(c.by_status.get(&Status::Queued), Some(&12));
}

/// Redis only: dead letters of different shards with the same entry id (the same
/// millisecond) page in a fixed order, each exactly once, whatever the page size.
#[tokio::test]
async fn redis_dead_letter_pages_break_ties_between_shards() {
    let s = redis().await;
    let st = &*s.store;
    let server = s.redis.as_ref().expect("redis");
    let add = |shard: u16, eid: &str, id: &str| {
        let key = format!("herald:{{{shard}}}:dead:webhook");
        let r = server.cmd(&["XADD", &key, eid, "id", id, "code", "x", "at", "1"]);
        assert_eq!(r, eid);
    };
    add(0, "1000-0", "a");
    add(1, "1000-0", "b");
    add(2, "1000-0", "c");
    add(3, "999-5", "d");
    add(1, "1000-1", "e");
    for size in 1..=5 {
        let mut seen = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let p = st
                .dead_letters(Channel::Webhook, size, page.as_deref())
                .await
                .expect("page");
            seen.extend(p.letters.into_iter().map(|d| d.id));
            match p.next {
                Some(t) => page = Some(t),
                None => break,
            }
            assert!(seen.len() <= 10, "pages do not end");
        }
        assert_eq!(seen, ["e", "c", "b", "a", "d"], "pages of {size}");
    }
}

/// Redis only: instances heartbeat into one set; the count every instance divides the
/// platforms' rates by follows instances coming and going. (The memory store is one process:
/// always 1.)
#[tokio::test]
async fn redis_instance_heartbeats_come_and_go() {
    let s = redis().await;
    let st = &*s.store;
    let window = 3_000;
    assert_eq!(st.heartbeat("a", 10_000, window).await.expect("hb"), 1);
    assert_eq!(st.heartbeat("b", 10_500, window).await.expect("hb"), 2);
    assert_eq!(st.heartbeat("c", 11_000, window).await.expect("hb"), 3);
    // A beating again is still one instance.
    assert_eq!(st.heartbeat("a", 12_000, window).await.expect("hb"), 3);
    // b stopped beating at 10.5 s: past the window it no longer counts, c neither at 14.1 s.
    assert_eq!(st.heartbeat("a", 13_600, window).await.expect("hb"), 2);
    assert_eq!(st.heartbeat("a", 14_100, window).await.expect("hb"), 1);
    // One comes back.
    assert_eq!(st.heartbeat("b", 14_200, window).await.expect("hb"), 2);
}

/// Redis only: the consumer group vanishes (a restart without persistence, or someone
/// deleting it); workers recreate it and carry on without losing what is in the stream.
#[tokio::test]
async fn redis_group_vanishes() {
    let s = redis_with(1).await;
    let st = &*s.store;
    let server = s.redis.as_ref().expect("redis");
    let first = enqueue(st, note(st, vec![Channel::Webhook])).await;
    assert_eq!(claim_all(st, Channel::Webhook, "w").await.len(), 1);
    let second = enqueue(st, note(st, vec![Channel::Webhook])).await;
    let reply = server.cmd(&["XGROUP", "DESTROY", "herald:{0}:ready:webhook:2", "herald"]);
    assert_eq!(reply, "1");
    let got = claim_all(st, Channel::Webhook, "w").await;
    let ids: Vec<&str> = got
        .iter()
        .map(|(_, c)| c.notification.id.as_str())
        .collect();
    // The group is recreated from the start of the stream: both entries are claimable again
    // (the first one was in flight, so at-least-once allows it to go out twice).
    assert!(ids.contains(&second.as_str()), "{ids:?}");
    assert!(ids.contains(&first.as_str()), "{ids:?}");
}

/// Redis only: a restart that loses everything (scripts included) does not wedge the store.
#[tokio::test]
async fn redis_restart_reloads_scripts() {
    let mut s = redis_with(2).await;
    enqueue(&*s.store, note(&*s.store, vec![Channel::Webhook])).await;
    s.redis.as_mut().expect("redis").restart();
    // The connection manager reconnects; the first call may fail while it does.
    let mut ok = false;
    for _ in 0..50 {
        if s.store.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "store answers again after the restart");
    let id = enqueue(&*s.store, note(&*s.store, vec![Channel::Webhook])).await;
    let got = claim_all(&*s.store, Channel::Webhook, "w").await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.notification.id, id);
}

/// Redis only: the queue's Lua runs as functions of one library (`FCALL`), and a library
/// that Redis lost while it stayed up (`FUNCTION FLUSH`, a node that joined empty) is loaded
/// again by the next call, which then succeeds.
#[tokio::test]
async fn redis_function_library_is_reloaded_when_lost() {
    let s = redis_with(1).await;
    let redis = s.redis.as_ref().expect("redis");
    let first = enqueue(&*s.store, note(&*s.store, vec![Channel::Webhook])).await;
    let libs = redis.cmd(&["FUNCTION", "LIST"]);
    assert!(libs.contains("herald_enqueue_"), "{libs}");
    let stats = redis.cmd(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_fcall:"), "{stats}");
    assert!(!stats.contains("cmdstat_evalsha:"), "{stats}");

    assert_eq!(redis.cmd(&["FUNCTION", "FLUSH"]), "OK");
    assert_eq!(redis.cmd(&["FUNCTION", "LIST"]), "");
    let second = enqueue(&*s.store, note(&*s.store, vec![Channel::Webhook])).await;
    let libs = redis.cmd(&["FUNCTION", "LIST"]);
    assert!(libs.contains("herald_claim_"), "{libs}");
    let got = claim_all(&*s.store, Channel::Webhook, "w").await;
    let ids: Vec<&str> = got
        .iter()
        .map(|(_, c)| c.notification.id.as_str())
        .collect();
    assert_eq!(ids, vec![first.as_str(), second.as_str()]);
}

pub async fn policy_versions(s: Subject) {
    use herald::store::PolicyApplied;
    let st = &*s.store;
    assert_eq!(st.policy_version().await.expect("version"), 0);
    assert!(st.policy().await.expect("policy").is_none());
    let a = st
        .apply_policy(
            None,
            "[routing]\n".into(),
            "ops".into(),
            String::new(),
            1_000,
        )
        .await
        .expect("apply");
    assert_eq!(a, PolicyApplied::Applied { version: 1 });
    // A stale expected version is refused and changes nothing.
    let b = st
        .apply_policy(Some(0), "x".into(), "ops".into(), String::new(), 2_000)
        .await
        .expect("apply");
    assert_eq!(b, PolicyApplied::Stale { current: 1 });
    let c = st
        .apply_policy(
            Some(1),
            "[routing]\nstrategy = \"cheapest_eligible\"\n".into(),
            "ann".into(),
            "routing.strategy: preference → cheapest_eligible".into(),
            3_000,
        )
        .await
        .expect("apply");
    assert_eq!(c, PolicyApplied::Applied { version: 2 });
    let cur = st.policy().await.expect("policy").expect("some");
    assert_eq!((cur.version, cur.author.as_str()), (2, "ann"));
    assert!(cur.document.contains("cheapest_eligible"));
    assert_eq!(st.policy_version().await.expect("version"), 2);
    let h = st.policy_history(10).await.expect("history");
    let versions: Vec<u64> = h.iter().map(|r| r.version).collect();
    assert_eq!(versions, vec![2, 1]);
    assert_eq!(
        h[0].diff,
        "routing.strategy: preference → cheapest_eligible"
    );
    assert_eq!(h[1].applied_at, 1_000);
}

/// Redis only: work done on the HIGH lane goes over a connection of its own, so it never waits
/// behind the BULK drain's scripts queued on the shared one.
#[tokio::test]
async fn redis_high_lane_has_its_own_connection() {
    let s = redis_with(1).await;
    let st = &*s.store;
    let server = s.redis.as_ref().expect("redis");
    // The ids of the clients whose last command was `cmd`.
    let last = |cmd: &str| -> Vec<String> {
        let list = server.cmd(&["CLIENT", "LIST"]);
        list.lines()
            .filter(|l| l.split(' ').any(|f| f == format!("cmd={cmd}")))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_string)
            .collect()
    };
    // A HIGH enqueue, then an ordinary ping: two clients.
    herald::store::high_lane(enqueue(st, note(st, vec![Channel::Webhook]))).await;
    st.ping().await.expect("ping");
    let (high, shared) = (last("fcall"), last("ping"));
    assert_eq!((high.len(), shared.len()), (1, 1), "{high:?} {shared:?}");
    assert_ne!(high, shared);
    // The other way round: each lane keeps its connection.
    enqueue(st, note(st, vec![Channel::Webhook])).await;
    herald::store::high_lane(st.ping()).await.expect("ping");
    assert_eq!(last("fcall"), shared);
    assert_eq!(last("ping"), high);
}

/// Redis only: a takeover pass forgets the consumers that have been quiet for ten takeover
/// times and own nothing (a dead process's), after moving what they owned; the live one stays.
#[tokio::test]
async fn redis_quiet_consumers_are_forgotten() {
    let s = redis_with(1).await;
    let st = &*s.store;
    let server = s.redis.as_ref().expect("redis");
    let consumers = || -> Vec<String> {
        let mut names: Vec<String> = server
            .cmd(&["KEYS", "herald:{0}:ready:*"])
            .lines()
            .flat_map(|key| {
                let info = server.cmd(&["XINFO", "CONSUMERS", key, "herald"]);
                let lines: Vec<String> = info.lines().map(str::to_string).collect();
                lines
                    .windows(2)
                    .filter(|w| w[0] == "name")
                    .map(|w| w[1].clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names.dedup();
        names
    };
    // One worker finished its entry and went away; another died holding one.
    let done_id = enqueue(st, note(st, vec![Channel::Webhook])).await;
    let (shard, gone) = claim_all(st, Channel::Webhook, "gone-worker")
        .await
        .remove(0);
    assert_eq!(gone.notification.id, done_id);
    let applied = finish_as(
        st,
        Channel::Webhook,
        shard,
        "gone-worker",
        &gone,
        sent(Status::Sent),
    )
    .await;
    assert_eq!(applied, 1);
    let held_id = enqueue(st, note(st, vec![Channel::Webhook])).await;
    assert_eq!(
        claim_all(st, Channel::Webhook, "dead-worker").await.len(),
        1
    );
    assert_eq!(consumers(), ["dead-worker", "gone-worker"]);

    // A takeover pass before they have been quiet for long forgets nobody.
    let takeover = Some(Duration::from_millis(250));
    let claim = |who: &'static str| {
        st.claim(
            Channel::Webhook,
            shard,
            who,
            10,
            Priority::Bulk,
            takeover,
            now_ms(),
        )
    };
    // (A read that finds nothing does not make a consumer.)
    assert!(claim("live-worker").await.expect("claim").is_empty());
    assert_eq!(consumers(), ["dead-worker", "gone-worker"]);

    // Past ten takeover times: the held entry moves to the live worker, then both quiet
    // consumers, owning nothing now, are forgotten.
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    let taken = claim("live-worker").await.expect("claim");
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].notification.id, held_id);
    assert_eq!(consumers(), ["live-worker"]);
    assert_eq!(status(st, &held_id).await, Status::Sending);
}

/// Redis only: a dispatch batch's reads of contact state, budgets and recent sends go around
/// the work gate; other work on the shared connection waits in it.
#[tokio::test]
async fn redis_usage_reads_go_around_the_work_gate() {
    let server = RedisServer::start();
    let cfg = RedisConfig {
        url: Some(server.url()),
        shards: 1,
        command_timeout: HumanDuration(Duration::from_secs(5)),
        ..Default::default()
    };
    let st = RedisStore::connect(&cfg).await.expect("connect");
    let dead = ContactKey::new(Channel::Webhook, "http://127.0.0.1:9/dead");
    st.update_contacts(vec![(dead.clone(), ContactChange::Dead)])
        .await
        .expect("update");
    let full = st.fill_work_gate().await.expect("gate");
    let quick = Duration::from_secs(2);
    let states = tokio::time::timeout(quick, st.contacts(std::slice::from_ref(&dead)))
        .await
        .expect("contact reads waited behind the gate")
        .expect("contacts");
    assert!(states[0].dead, "{states:?}");
    tokio::time::timeout(quick, st.budget_spent(&["b:2026-12-01".into()]))
        .await
        .expect("budget reads waited behind the gate")
        .expect("budgets");
    tokio::time::timeout(quick, st.recent_sends(&[("r".into(), 0)]))
        .await
        .expect("recent-send reads waited behind the gate")
        .expect("recent");
    // Anything else on the shared connection waits for room.
    let held = tokio::time::timeout(Duration::from_millis(300), st.ping()).await;
    assert!(held.is_err(), "a full gate let other work through");
    drop(full);
    tokio::time::timeout(quick, st.ping())
        .await
        .expect("room freed is taken")
        .expect("ping");
}

/// Redis only: acknowledged entries leave a ready stream by trimming its head (whole nodes),
/// never the unread or pending ones, and a stream with nothing unread or pending is emptied.
#[tokio::test]
async fn redis_acknowledged_entries_are_trimmed() {
    let s = redis_with(1).await;
    let st = &*s.store;
    let server = s.redis.as_ref().expect("redis");
    let stream = "herald:{0}:ready:webhook:2";
    queue_on_shard0(st, 250).await;
    let xlen = || -> u64 { server.cmd(&["XLEN", stream]).parse().expect("xlen") };
    assert_eq!(xlen(), 250);
    let got = claim_w(st, 150).await;
    assert_eq!(got.len(), 150);
    assert_eq!(finish_sent(st, &got[..100]).await, 100);
    // The first node (up to 100 entries) held only acknowledged ones: gone. The 50 pending
    // and the 100 unread are all still there.
    let left = xlen();
    assert!((150..250).contains(&left), "{left} entries left");
    let pending = server.cmd(&["XPENDING", stream, "herald"]);
    assert!(pending.starts_with("50\n"), "{pending}");
    // Everything claimed and finished: the stream is empty.
    let rest = claim_w(st, 150).await;
    assert_eq!(rest.len(), 100);
    assert_eq!(finish_sent(st, got[100..].iter().chain(&rest)).await, 150);
    assert_eq!(xlen(), 0);
    assert_eq!(in_lanes(st).await, 0);
}

/// Redis only: streams written by a Herald that deleted each acknowledged entry (`XDEL`)
/// have tombstones; the depth is still exact and the stream still ends empty.
#[tokio::test]
async fn redis_streams_with_deleted_entries_are_counted_and_trimmed() {
    let s = redis_with(1).await;
    let st = &*s.store;
    let server = s.redis.as_ref().expect("redis");
    let stream = "herald:{0}:ready:webhook:2";
    queue_on_shard0(st, 10).await;
    let got = claim_w(st, 6).await;
    assert_eq!(got.len(), 6);
    // The older Herald acknowledged and deleted the first three.
    assert_eq!(finish_sent(st, &got[..3]).await, 3);
    for c in &got[..3] {
        server.cmd(&["XDEL", stream, &c.entry.entry_id]);
    }
    // 3 being sent, 4 not read.
    assert_eq!(in_lanes(st).await, 7);
    let rest = claim_w(st, 10).await;
    assert_eq!(rest.len(), 4);
    assert_eq!(in_lanes(st).await, 7);
    assert_eq!(finish_sent(st, got[3..].iter().chain(&rest)).await, 7);
    assert_eq!(in_lanes(st).await, 0);
    assert_eq!(server.cmd(&["XLEN", stream]), "0");
}

/// Redis only: a notification's history (attempts, receipts) lives in its record, in 64-byte
/// parts that keep the hash in Redis's compact encoding; a batch's entries leave the ready
/// stream in one go; and a record written when history had a list of its own (`ev:`) reads
/// back whole and has that list expire with it.
#[tokio::test]
async fn redis_history_lives_in_the_record() {
    let s = redis_with(1).await;
    let st = &*s.store;
    let server = s.redis.as_ref().expect("redis");
    let ids = [
        enqueue(st, note(st, vec![Channel::Webhook])).await,
        enqueue(st, note(st, vec![Channel::Webhook])).await,
    ];
    let got = claim_all(st, Channel::Webhook, "w").await;
    assert_eq!(got.len(), 2);
    // The first retries with a long error message (an attempt entry of several parts).
    let message = "the platform said no, at length: ".repeat(6);
    let mut retry = done(
        &got[0].1,
        Channel::Webhook,
        Disposition::Retry {
            due: now_ms(),
            class: ErrorClass::Transient,
            code: "http_503".into(),
        },
    );
    if let Some(a) = retry.attempt.as_mut() {
        a.error_message = message.clone();
    }
    let batch = vec![retry, done(&got[1].1, Channel::Webhook, sent(Status::Sent))];
    let applied = st
        .finish(Channel::Webhook, 0, "w", &batch, now_ms())
        .await
        .expect("finish");
    assert_eq!(applied, 2);
    let stream = "herald:{0}:ready:webhook:2";
    assert_eq!(server.cmd(&["XLEN", stream]), "0");
    assert!(server
        .cmd(&["XPENDING", stream, "herald"])
        .starts_with("0\n"));
    // The retried one goes again and is sent.
    assert_eq!(st.promote_due(now_ms(), 10).await.expect("promote"), 1);
    let again = claim_all(st, Channel::Webhook, "w").await;
    assert_eq!(again.len(), 1);
    finish_one(st, Channel::Webhook, 0, &again[0].1, sent(Status::Sent)).await;
    let v = st.get(&ids[0]).await.expect("get").expect("exists");
    assert_eq!(v.attempts.len(), 2);
    assert_eq!(v.attempts[0].error_message, message);
    let statuses: Vec<Status> = v.receipts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Status::Retrying, Status::Sent]);
    let key = format!("herald:{{0}}:n:{}", ids[0]);
    assert_eq!(server.cmd(&["OBJECT", "ENCODING", &key]), "listpack");
    assert_eq!(
        server.cmd(&["EXISTS", &format!("herald:{{0}}:ev:{}", ids[0])]),
        "0"
    );
    let ttl: i64 = server.cmd(&["PTTL", &key]).parse().expect("pttl");
    assert!(
        ttl > 0,
        "a finished record is kept for a while, then goes: {ttl}"
    );

    // A record whose history began in an `ev:` list (one attempt and its retry receipt).
    let id = enqueue(st, note(st, vec![Channel::Webhook])).await;
    let key = format!("herald:{{0}}:n:{id}");
    let ev = format!("herald:{{0}}:ev:{id}");
    server.cmd(&["HSET", &key, "a", "1", "ca", "1"]);
    let old = "r5\x1fwebhook\x1f1000\x1f\x1f1\x1fhttp_500\x1f1\x1f0\x1f";
    server.cmd(&["RPUSH", &ev, old]);
    let got = claim_all(st, Channel::Webhook, "w").await;
    finish_one(st, Channel::Webhook, 0, &got[0].1, sent(Status::Sent)).await;
    let v = st.get(&id).await.expect("get").expect("exists");
    let codes: Vec<(Status, &str)> = v
        .receipts
        .iter()
        .map(|r| (r.status, r.error_code.as_str()))
        .collect();
    assert_eq!(codes, [(Status::Retrying, "http_500"), (Status::Sent, "")]);
    let ttl: i64 = server.cmd(&["PTTL", &ev]).parse().expect("pttl");
    assert!(
        ttl > 0,
        "the old history list expires with its record: {ttl}"
    );
}

/// Claims from `channel` on every shard until nothing is left.
/// Every webhook notification there is to claim, whole, in id order.
async fn claimed_in_id_order(store: &dyn Store) -> Vec<Notification> {
    let mut got: Vec<Notification> = claim_until_empty(store, Channel::Webhook)
        .await
        .into_iter()
        .map(|(_, c)| c.notification)
        .collect();
    got.sort_by(|a, b| a.id.cmp(&b.id));
    got
}

async fn claim_until_empty(store: &dyn Store, channel: Channel) -> Vec<(u16, Claimed)> {
    let mut out = Vec::new();
    loop {
        let got = claim_all(store, channel, "w").await;
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

/// The ids the store gave what it created, written into `ns`, with their statuses.
fn created_ids(ns: &mut [Notification], replies: &[Enqueued]) -> Vec<Status> {
    assert_eq!(ns.len(), replies.len());
    ns.iter_mut()
        .zip(replies)
        .map(|(n, r)| match r {
            Enqueued::Created { id, status } => {
                n.id = id.clone();
                *status
            }
            other => panic!("not created: {other:?}"),
        })
        .collect()
}

/// Redis only: a run of like campaign notifications enqueued together is packed into bucket
/// hashes (a field each, not a key each), reads back whole by id and in `waiting`, and is
/// unpacked into a key of its own the first time it changes; an emptied bucket goes. Also
/// scheduled, canceled (one, and the campaign), and a repeated idempotency key in one call.
#[tokio::test]
async fn redis_campaign_runs_are_packed() {
    let s = redis_with(1).await;
    let st = &*s.store;
    let server = s.redis.as_ref().expect("redis");
    let at = now_ms();
    let alike = |campaign: &str, i: usize| {
        let mut n = note(st, vec![Channel::Webhook, Channel::Sandbox]);
        n.id = herald::model::make_id_at(0, at);
        n.created_at = at;
        n.campaign_id = campaign.into();
        n.content.body = "Autumn sale".into();
        n.recipient.contact_id = format!("c{i}");
        n
    };
    // 250 alike, then one with labels of its own, then one outside any campaign.
    let mut written: Vec<Notification> = (0..250).map(|i| alike("autumn", i)).collect();
    let mut own_labels = alike("autumn", 250);
    own_labels.labels.insert("vip".into(), "yes".into());
    written.push(own_labels);
    let mut plain = note(st, vec![Channel::Webhook]);
    plain.id = herald::model::make_id_at(0, at);
    plain.created_at = at;
    written.push(plain);
    let given: Vec<String> = written.iter().map(|n| n.id.clone()).collect();
    let replies = st
        .enqueue(written.iter().cloned().map(new).collect())
        .await
        .expect("enqueue");
    let statuses = created_ids(&mut written, &replies);
    assert!(
        statuses.iter().all(|s| *s == Status::Queued),
        "{statuses:?}"
    );
    // The packed ones got ids of their buckets; the two that are not alike kept theirs.
    assert!(written[..250].iter().zip(&given).all(|(n, g)| n.id != *g));
    assert_eq!(written[250].id, given[250]);
    assert_eq!(written[251].id, given[251]);
    let buckets = server.cmd(&["KEYS", "herald:{0}:b:*"]);
    let buckets: Vec<&str> = buckets.lines().collect();
    assert_eq!(
        buckets.len(),
        3,
        "250 in buckets of at most 120: {buckets:?}"
    );
    let mut fields = 0;
    for b in &buckets {
        assert_eq!(server.cmd(&["OBJECT", "ENCODING", b]), "listpack", "{b}");
        let n: usize = server.cmd(&["HLEN", b]).parse().expect("hlen");
        fields += n;
    }
    // Each bucket: c, p, m, n and l (the shared labels) and its records.
    assert_eq!(fields, 250 + 3 * 5);
    assert_eq!(server.cmd(&["KEYS", "herald:{0}:n:*"]).lines().count(), 2);
    for n in &written {
        let v = st.get(&n.id).await.expect("get").expect("found");
        assert_eq!(&v.notification, n);
        assert_eq!(v.status, Status::Queued);
        assert_eq!(v.channel, Some(Channel::Webhook));
    }
    let waiting = st.waiting(1000).await.expect("waiting");
    assert_eq!(waiting.len(), written.len());
    for (n, route_index) in &waiting {
        assert_eq!(*route_index, 0);
        let w = written.iter().find(|w| w.id == n.id).expect("one of ours");
        assert_eq!(n, w);
    }

    // Canceled while packed: unpacked into its own key, kept for a while, then gone.
    let gone = written.remove(7);
    let out = st
        .cancel(CancelTarget::Notification(gone.id.clone()), now_ms())
        .await
        .expect("cancel");
    assert_eq!((out.canceled, out.status), (1, Some(Status::Canceled)));
    let key = format!("herald:{{0}}:n:{}", gone.id);
    let ttl: i64 = server.cmd(&["PTTL", &key]).parse().expect("pttl");
    assert!(ttl > 0, "{ttl}");
    assert_eq!(status(st, &gone.id).await, Status::Canceled);

    // Claimed: every one whole, each now in a key of its own, and the buckets are gone.
    written.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(claimed_in_id_order(st).await, written);
    assert_eq!(server.cmd(&["KEYS", "herald:{0}:b:*"]), "");
    for n in &written {
        assert_eq!(status(st, &n.id).await, Status::Sending);
    }
    let c = st.campaign("autumn").await.expect("campaign");
    assert_eq!(c.total, 251);
    assert_eq!(c.by_status.get(&Status::Sending), Some(&250));
    assert_eq!(c.by_status.get(&Status::Canceled), Some(&1));
    assert_eq!(c.by_status.get(&Status::Queued), None);

    // Scheduled and packed: promoted when due, then claimed whole.
    let mut later: Vec<Notification> = (0..3)
        .map(|i| {
            let mut n = alike("later", i);
            n.send_at = now_ms() + 50;
            n
        })
        .collect();
    let replies = st
        .enqueue(later.iter().cloned().map(new).collect())
        .await
        .expect("enqueue");
    let statuses = created_ids(&mut later, &replies);
    assert_eq!(statuses, [Status::Scheduled; 3]);
    assert_eq!(server.cmd(&["KEYS", "herald:{0}:b:*"]).lines().count(), 1);
    assert_eq!(status(st, &later[1].id).await, Status::Scheduled);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(st.promote_due(now_ms(), 10).await.expect("promote"), 3);
    later.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(claimed_in_id_order(st).await, later);

    // A campaign canceled while packed: its records are canceled as workers meet them.
    let mut doomed: Vec<Notification> = (0..4).map(|i| alike("doomed", i)).collect();
    let replies = st
        .enqueue(doomed.iter().cloned().map(new).collect())
        .await
        .expect("enqueue");
    created_ids(&mut doomed, &replies);
    let out = st
        .cancel(CancelTarget::Campaign("doomed".into()), now_ms())
        .await
        .expect("cancel");
    assert_eq!(out.canceled, 4);
    assert!(claim_until_empty(st, Channel::Webhook).await.is_empty());
    for n in &doomed {
        assert_eq!(status(st, &n.id).await, Status::Canceled);
    }
    assert_eq!(server.cmd(&["KEYS", "herald:{0}:b:*"]), "");

    // One idempotency key twice in one call: the second names the first, still packed.
    let items: Vec<NewNotification> = (0..3)
        .map(|i| {
            let mut item = new(alike("again", i));
            item.idem = Some(IdemKey {
                key: format!("t:again-{}", i.min(1)),
                fingerprint: "same".into(),
            });
            item
        })
        .collect();
    let replies = st.enqueue(items).await.expect("enqueue");
    let (first, second) = match (&replies[1], &replies[2]) {
        (Enqueued::Created { id, .. }, Enqueued::Duplicate { id: dup, status }) => {
            assert_eq!(*status, Status::Queued);
            (id.clone(), dup.clone())
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(first, second);
    assert_eq!(server.cmd(&["KEYS", "herald:{0}:b:*"]).lines().count(), 1);
    let replies = st
        .enqueue(vec![{
            let mut item = new(alike("again", 1));
            item.idem = Some(IdemKey {
                key: "t:again-1".into(),
                fingerprint: "same".into(),
            });
            item
        }])
        .await
        .expect("enqueue");
    assert_eq!(
        replies,
        [Enqueued::Duplicate {
            id: first,
            status: Status::Queued
        }]
    );
}
