//! What a queued notification costs in Redis. Memory is not time: for one Redis version it is
//! the same on any machine, so the budget is asserted here, not only in the load tests.

use tokio_stream::StreamExt;

use herald::proto;

use crate::harness::RedisServer;
use crate::support::*;

fn used_memory(redis: &RedisServer) -> i64 {
    let info = redis.cmd(&["INFO", "memory"]);
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no used_memory in {info}"))
}

/// A campaign of `n` push notifications with the same content, sent by SendStream while the
/// channel is paused (so all of them stay queued).
async fn queue_campaign(h: &Herald, n: usize) -> Vec<String> {
    let items: Vec<proto::SendRequest> = (0..n)
        .map(|i| proto::SendRequest {
            recipient: Some(proto::Recipient {
                contact_id: format!("c{i:07}"),
                phone: format!("+1415{i:07}"),
                ..Default::default()
            }),
            channels: vec![proto::Channel::Sandbox as i32],
            content: Some(proto::Content {
                title: "Spring sale".into(),
                body: "Everything in the spring collection is 30% off until Sunday. Tap to see what is new in your size.".into(),
                ..Default::default()
            }),
            category: proto::Category::Marketing as i32,
            priority: proto::Priority::Bulk as i32,
            campaign_id: "spring-2027".into(),
            ..Default::default()
        })
        .collect();
    let mut answers = h
        .client()
        .send_stream(tokio_stream::iter(items))
        .await
        .expect("stream")
        .into_inner();
    let mut ids = Vec::new();
    while let Some(r) = answers.next().await {
        let r = r.expect("answer");
        assert!(r.error.is_none(), "{r:?}");
        ids.push(r.notification_id);
    }
    assert_eq!(ids.len(), n);
    ids
}

#[tokio::test]
async fn a_queued_campaign_notification_stays_small_in_redis() {
    let redis = RedisServer::start();
    let h = Herald::start(test_config(Some(redis.url()))).await;
    let mut a = proto::admin_client::AdminClient::connect(h.grpc_url.clone())
        .await
        .expect("admin");
    a.pause_channel(proto::PauseChannelRequest {
        channel: proto::Channel::Sandbox as i32,
        account: String::new(),
        reason: "measuring".into(),
    })
    .await
    .expect("pause");
    // A first small campaign creates the streams, groups and counters.
    queue_campaign(&h, 100).await;
    let before = used_memory(&redis);
    let n = 20_000;
    let ids = queue_campaign(&h, n).await;
    let after = used_memory(&redis);
    let per = (after - before) as f64 / n as f64;
    println!("Redis memory per queued campaign notification: {per:.0} bytes");
    // The target. A queued notification of a campaign is packed with others into a
    // bucket hash (about 111 bytes each with its ready-stream entry; a record key of its own
    // was 312), see the README's Architecture section.
    assert!(
        per <= 200.0,
        "{per:.0} bytes per queued campaign notification"
    );
    let buckets = redis.cmd(&["KEYS", "herald:*:b:*"]);
    assert!(
        buckets.lines().count() >= n / 120,
        "packed into buckets: {buckets}"
    );
    // Shared content is stored once per shard, and each notification still reads back whole.
    let keys = redis.cmd(&["KEYS", "herald:*:cn:*"]);
    assert_eq!(keys.lines().count(), 4, "one copy per shard: {keys}");
    for id in [&ids[0], &ids[n / 2], &ids[n - 1]] {
        let got = h.get(id).await;
        assert_eq!(got.campaign_id, "spring-2027");
        let created = got.created_at.map(|t| t.seconds).unwrap_or(0);
        let now = herald::model::now_ms() / 1000;
        assert!((now - 120..=now).contains(&created), "created_at {created}");
    }
}
