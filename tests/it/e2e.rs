//! End to end against a real Redis: gRPC in, webhook sink out, receipts back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::proto;
use tonic::Code;

use crate::harness::{RedisCluster, RedisServer, Reply, Sink};
use crate::support::*;

async fn setup() -> (RedisServer, Sink, Herald) {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let herald = Herald::start(test_config(Some(redis.url()))).await;
    (redis, sink, herald)
}

#[tokio::test]
async fn webhook_is_signed_and_delivered_receipt_streams() {
    let (_redis, sink, h) = setup().await;
    let mut watch = h
        .client()
        .watch_receipts(proto::WatchReceiptsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let r = h
        .client()
        .send(webhook_request(
            &sink.url("/hook"),
            "Your parcel is on its way",
        ))
        .await
        .expect("send")
        .into_inner();
    assert!(!r.duplicate);
    assert!(sink.wait_for_count(1, Duration::from_secs(10)).await);
    let req = &sink.requests()[0];
    assert_eq!(req.header("webhook-id"), Some(r.notification_id.as_str()));
    // The receiver verifies it with the Standard Webhooks library.
    let wh = standardwebhooks::Webhook::new(SECRET).expect("secret");
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let v = req.header(name).expect("signature header present");
        headers.insert(name, v.parse().expect("header value"));
    }
    wh.verify(&req.body, &headers).expect("signature verifies");
    let body = req.json();
    assert_eq!(body["data"]["notification_id"], r.notification_id.as_str());
    assert_eq!(body["data"]["body"], "Your parcel is on its way");
    // DELIVERED arrives on the receipt stream.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(rc)) = watch.next().await {
            if rc.notification_id == r.notification_id && rc.status == DELIVERED {
                return Some(rc);
            }
        }
        None
    })
    .await
    .expect("receipt in time")
    .expect("stream open");
    assert_eq!(got.channel, proto::Channel::Webhook as i32);
    assert!(!got.cursor.is_empty());
    let n = h.get(&r.notification_id).await;
    assert_eq!(n.status, DELIVERED);
    assert_eq!(n.attempts.len(), 1);
}

#[tokio::test]
async fn batch_of_ten_thousand_arrives_exactly_once() {
    let (_redis, sink, h) = setup().await;
    let url = sink.url("/bulk");
    let items: Vec<_> = (0..10_000)
        .map(|i| {
            let mut r = webhook_request(&url, &format!("message {i}"));
            r.campaign_id = "bulk-1".into();
            r
        })
        .collect();
    let resp = h
        .client()
        .send_batch(proto::SendBatchRequest { items })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(resp.results.len(), 10_000);
    let mut ids = Vec::new();
    for r in &resp.results {
        match &r.result {
            Some(proto::send_batch_result::Result::Ok(ok)) => ids.push(ok.notification_id.clone()),
            other => panic!("item failed: {other:?}"),
        }
    }
    assert!(
        sink.wait_for_count(10_000, Duration::from_secs(120)).await,
        "only {} arrived",
        sink.count()
    );
    // Give stragglers a moment: duplicates would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in sink.requests() {
        *seen
            .entry(r.header("webhook-id").unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(sink.count(), 10_000);
    for id in &ids {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "{id} arrived {:?} times",
            seen.get(id)
        );
    }
    let campaign = h
        .client()
        .get_campaign(proto::GetCampaignRequest {
            campaign_id: "bulk-1".into(),
        })
        .await
        .expect("campaign")
        .into_inner();
    assert_eq!(campaign.total, 10_000);
    // Counters settle right after the last finish.
    let delivered = campaign
        .by_status
        .get("STATUS_DELIVERED")
        .copied()
        .unwrap_or(0);
    assert!(delivered > 9_000, "{campaign:?}");
}

#[tokio::test]
async fn idempotency_keys() {
    let (_redis, sink, h) = setup().await;
    let mut req = webhook_request(&sink.url("/idem"), "once");
    req.idempotency_key = "order-42".into();
    let a = h
        .client()
        .send(req.clone())
        .await
        .expect("send")
        .into_inner();
    let b = h
        .client()
        .send(req.clone())
        .await
        .expect("send")
        .into_inner();
    assert_eq!(a.notification_id, b.notification_id);
    assert!(!a.duplicate && b.duplicate);
    let mut changed = req.clone();
    changed.content = Some(proto::Content {
        body: "something else".into(),
        ..Default::default()
    });
    let err = h.client().send(changed).await.expect_err("conflict");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // 100 concurrent sends with one key: one notification.
    let mut req = webhook_request(&sink.url("/race"), "race");
    req.idempotency_key = "race-1".into();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut c = h.client();
        let r = req.clone();
        tasks.push(tokio::spawn(async move {
            c.send(r).await.map(|x| x.into_inner())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.expect("task").expect("send");
        ids.insert(r.notification_id);
        if !r.duplicate {
            created += 1;
        }
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    assert!(sink.wait_for_count(2, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.requests_for("/idem").len(), 1);
    assert_eq!(sink.requests_for("/race").len(), 1);
}

#[tokio::test]
async fn scheduled_send_goes_out_on_time() {
    let (_redis, sink, h) = setup().await;
    let mut req = webhook_request(&sink.url("/later"), "later");
    req.send_at = Some(ts_in(1500));
    let due = Instant::now() + Duration::from_millis(1500);
    let r = h.client().send(req).await.expect("send").into_inner();
    assert_eq!(r.status, SCHEDULED);
    assert!(sink.wait_for_count(1, Duration::from_secs(10)).await);
    let at = sink.requests()[0].at;
    assert!(
        at + Duration::from_millis(50) >= due,
        "sent before its time"
    );
    assert!(
        at <= due + Duration::from_secs(1),
        "sent {:?} late",
        at - due
    );
}

#[tokio::test]
async fn expired_notifications_are_never_sent_again() {
    let (_redis, sink, h) = setup().await;
    sink.respond("/exp", vec![Reply::status(503).header("retry-after", "2")]);
    let mut req = webhook_request(&sink.url("/exp"), "expires");
    req.expire_at = Some(ts_in(1000));
    let r = h.client().send(req).await.expect("send").into_inner();
    let n = h
        .wait_status(&r.notification_id, EXPIRED, Duration::from_secs(10))
        .await;
    assert_eq!(n.attempts.len(), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sink.count(), 1, "nothing is sent after expiry");
}

#[tokio::test]
async fn cancel_stops_what_no_platform_has_seen() {
    let (_redis, sink, h) = setup().await;
    let mut req = webhook_request(&sink.url("/cancel"), "never");
    req.send_at = Some(ts_in(1500));
    let r = h.client().send(req).await.expect("send").into_inner();
    let c = h
        .client()
        .cancel(proto::CancelRequest {
            target: Some(proto::cancel_request::Target::NotificationId(
                r.notification_id.clone(),
            )),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!((c.canceled, c.status), (1, CANCELED));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sink.count(), 0);
    assert_eq!(h.get(&r.notification_id).await.status, CANCELED);
    let err = h
        .client()
        .cancel(proto::CancelRequest { target: None })
        .await
        .expect_err("no target");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn retry_after_503_honours_retry_after() {
    let (_redis, sink, h) = setup().await;
    sink.respond(
        "/busy",
        vec![Reply::status(503).header("retry-after", "2"), Reply::ok()],
    );
    let r = h
        .client()
        .send(webhook_request(&sink.url("/busy"), "retry me"))
        .await
        .expect("send")
        .into_inner();
    let n = h
        .wait_status(&r.notification_id, DELIVERED, Duration::from_secs(15))
        .await;
    let reqs = sink.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(1950), "retried after {gap:?}");
    assert_eq!(n.attempts.len(), 2);
    assert_eq!(n.attempts[0].error_code, "http_503");
    assert!(n
        .receipts
        .iter()
        .any(|r| r.status == proto::Status::Retrying as i32));
}

#[tokio::test]
async fn falls_back_from_a_failing_channel_to_the_next() {
    let (_redis, sink, h) = setup().await;
    sink.respond("/gone", vec![Reply::status(410)]);
    let mut req = webhook_request(&sink.url("/gone"), "fallback");
    req.channels = vec![
        proto::Channel::Webhook as i32,
        proto::Channel::Sandbox as i32,
    ];
    let r = h.client().send(req).await.expect("send").into_inner();
    let n = h
        .wait_status(&r.notification_id, READ, Duration::from_secs(10))
        .await;
    assert_eq!(n.channel, proto::Channel::Sandbox as i32);
    let chans: Vec<i32> = n.attempts.iter().map(|a| a.channel).collect();
    assert_eq!(
        chans,
        vec![
            proto::Channel::Webhook as i32,
            proto::Channel::Sandbox as i32
        ]
    );
    assert_eq!(n.attempts[0].outcome, "dead_address");
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn dead_letters_after_max_attempts() {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let mut cfg = test_config(Some(redis.url()));
    cfg.dispatch.max_attempts = 3;
    cfg.dispatch.backoff_base = herald::config::HumanDuration(Duration::from_millis(20));
    let h = Herald::start(cfg).await;
    sink.respond("/broken", vec![Reply::status(500)]);
    let r = h
        .client()
        .send(webhook_request(&sink.url("/broken"), "doomed"))
        .await
        .expect("send")
        .into_inner();
    let n = h
        .wait_status(&r.notification_id, FAILED, Duration::from_secs(10))
        .await;
    assert_eq!(n.attempts.len(), 3);
    assert_eq!(sink.count(), 3);
    let mut admin = proto::admin_client::AdminClient::connect(h.grpc_url.clone())
        .await
        .expect("admin");
    let dl = admin
        .list_dead_letters(proto::ListDeadLettersRequest {
            channel: proto::Channel::Webhook as i32,
            limit: 10,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(dl.dead_letters.len(), 1);
    assert_eq!(dl.dead_letters[0].notification_id, r.notification_id);
    assert_eq!(dl.dead_letters[0].error_code, "http_500");

    let e = admin
        .list_dead_letters(proto::ListDeadLettersRequest {
            channel: proto::Channel::Webhook as i32,
            limit: 10,
            page_token: "not-a-token".into(),
        })
        .await
        .expect_err("bad token");
    assert_eq!(violated_fields(&e), ["page_token"]);

    // Bad ids and a missing channel are refused, naming the field; nothing moves.
    let e = admin
        .redrive_dead_letters(proto::RedriveDeadLettersRequest {
            channel: proto::Channel::Webhook as i32,
            notification_ids: vec![r.notification_id.clone(), "nope".into()],
        })
        .await
        .expect_err("bad id");
    assert_eq!(violated_fields(&e), ["notification_ids[1]"]);
    let e = admin
        .redrive_dead_letters(proto::RedriveDeadLettersRequest::default())
        .await
        .expect_err("no channel");
    assert_eq!(violated_fields(&e), ["channel"]);
    assert_eq!(h.get(&r.notification_id).await.status, FAILED);

    // The receiver is fixed: a redrive sends it again, with three fresh attempts.
    sink.respond("/broken", vec![Reply::status(500), Reply::ok()]);
    let out = admin
        .redrive_dead_letters(proto::RedriveDeadLettersRequest {
            channel: proto::Channel::Webhook as i32,
            notification_ids: vec![],
        })
        .await
        .expect("redrive")
        .into_inner();
    assert_eq!(out.redriven, 1);
    let n = h
        .wait_status(&r.notification_id, DELIVERED, Duration::from_secs(10))
        .await;
    assert_eq!(n.attempts.len(), 5, "3 before, then a 500 and the delivery");
    assert_eq!(sink.count(), 5);
    let dl = admin
        .list_dead_letters(proto::ListDeadLettersRequest {
            channel: proto::Channel::Webhook as i32,
            limit: 10,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert!(dl.dead_letters.is_empty(), "{dl:?}");
}

#[tokio::test]
async fn bad_input_names_the_field_and_stores_nothing() {
    let (redis, sink, h) = setup().await;
    // Workers create their (empty) streams; notifications, idempotency keys and queue
    // entries are what a partial write would leave.
    let stored = || {
        let records = redis.cmd(&["KEYS", "herald:*:n:*"]);
        let entries: u64 = redis
            .cmd(&["EVAL", "local n = 0 for _, k in ipairs(redis.call('KEYS', 'herald:*:ready:*')) do n = n + redis.call('XLEN', k) end return n", "0"])
            .parse()
            .unwrap_or(u64::MAX);
        (records, entries)
    };
    assert_eq!(stored(), (String::new(), 0));
    let mut c = h.client();

    let mut no_recipient = webhook_request(&sink.url("/x"), "hi");
    no_recipient.recipient = None;
    let e = c.send(no_recipient).await.expect_err("invalid");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&e), vec!["recipient"]);

    let mut unknown_channel = webhook_request(&sink.url("/x"), "hi");
    unknown_channel.channels = vec![99];
    let e = c.send(unknown_channel).await.expect_err("invalid");
    assert_eq!(violated_fields(&e), vec!["channels[0]"]);

    let big = "x".repeat(5000);
    let e = c
        .send(webhook_request(&sink.url("/x"), &big))
        .await
        .expect_err("invalid");
    assert_eq!(violated_fields(&e), vec!["content.body"]);

    let items = vec![webhook_request(&sink.url("/x"), "hi"); 10_001];
    let e = c
        .send_batch(proto::SendBatchRequest { items })
        .await
        .expect_err("invalid");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&e), vec!["items"]);
    assert_eq!(stored(), (String::new(), 0), "nothing was stored");

    // One bad item in a batch fails alone, with its index in the field name.
    // A field the proto conversion refuses is named the same way.
    let mut bad = webhook_request(&sink.url("/x"), "hi");
    bad.recipient = None;
    let mut bad_channel = webhook_request(&sink.url("/x"), "hi");
    bad_channel.channels = vec![99];
    let resp = c
        .send_batch(proto::SendBatchRequest {
            items: vec![webhook_request(&sink.url("/x"), "ok"), bad, bad_channel],
        })
        .await
        .expect("batch")
        .into_inner();
    assert!(matches!(
        resp.results[0].result,
        Some(proto::send_batch_result::Result::Ok(_))
    ));
    match &resp.results[1].result {
        Some(proto::send_batch_result::Result::Error(e)) => {
            assert_eq!(e.field, "items[1].recipient");
            assert_eq!(e.code, Code::InvalidArgument as i32);
        }
        other => panic!("expected an item error, got {other:?}"),
    }
    match &resp.results[2].result {
        Some(proto::send_batch_result::Result::Error(e)) => {
            assert_eq!(e.field, "items[2].channels[0]");
            assert_eq!(e.code, Code::InvalidArgument as i32);
        }
        other => panic!("expected an item error, got {other:?}"),
    }
    assert!(sink.wait_for_count(1, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn redis_restart_unavailable_then_resumes() {
    let (mut redis, sink, h) = setup().await;
    let first = h
        .client()
        .send(webhook_request(&sink.url("/a"), "before"))
        .await
        .expect("send")
        .into_inner();
    h.wait_status(&first.notification_id, DELIVERED, Duration::from_secs(10))
        .await;
    let http = reqwest::Client::new();
    let ready = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(ready(format!("{}/readyz", h.http_url)).await, 200);

    redis.stop();
    let t0 = Instant::now();
    let err = h
        .client()
        .send(webhook_request(&sink.url("/a"), "while down"))
        .await
        .expect_err("redis is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "answered in {:?}",
        t0.elapsed()
    );
    assert_eq!(ready(format!("{}/readyz", h.http_url)).await, 503);

    redis.restart();
    // Ingress comes back by itself, and dispatch resumes (consumer groups are recreated).
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        match h
            .client()
            .send(webhook_request(&sink.url("/b"), "after"))
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Code::Unavailable);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("still failing after restart: {e:?}"),
        }
    };
    h.wait_status(&after.notification_id, DELIVERED, Duration::from_secs(15))
        .await;
    assert_eq!(sink.requests_for("/b").len(), 1);
    assert_eq!(ready(format!("{}/readyz", h.http_url)).await, 200);
}

#[tokio::test]
async fn metrics_and_health() {
    let (_redis, sink, h) = setup().await;
    let r = h
        .client()
        .send(webhook_request(&sink.url("/m"), "metrics"))
        .await
        .expect("send")
        .into_inner();
    h.wait_status(&r.notification_id, DELIVERED, Duration::from_secs(10))
        .await;
    let http = reqwest::Client::new();
    let text = http
        .get(format!("{}/metrics", h.http_url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    for name in [
        "herald_notifications_accepted_total",
        "herald_dispatched_total{channel=\"webhook\",outcome=\"sent\"}",
        "herald_dispatch_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let health = http
        .get(format!("{}/healthz", h.http_url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn send_stream_campaign_with_progress_and_resumable_receipts() {
    let (_redis, sink, h) = setup().await;
    let url = sink.url("/stream");
    let reqs: Vec<_> = (0..500)
        .map(|i| {
            let mut r = webhook_request(&url, &format!("stream {i}"));
            r.campaign_id = "stream-1".into();
            r
        })
        .collect();
    let mut bad = webhook_request(&url, "bad");
    bad.recipient = None;
    let mut all = reqs.clone();
    all.insert(10, bad);
    let resp = h
        .client()
        .send_stream(futures::stream::iter(all))
        .await
        .expect("stream")
        .into_inner();
    let out: Vec<proto::SendResponse> = resp.map(|r| r.expect("item")).collect::<Vec<_>>().await;
    assert_eq!(out.len(), 501);
    assert_eq!(
        out[10].error.as_ref().map(|e| e.field.as_str()),
        Some("recipient")
    );
    assert!(out
        .iter()
        .enumerate()
        .all(|(i, r)| i == 10 || !r.notification_id.is_empty()));
    assert!(sink.wait_for_count(500, Duration::from_secs(30)).await);

    // Read the campaign's receipts in two sittings: the second resumes from the last cursor
    // of the first and together they hold each delivery exactly once.
    let read = |cursor: String, limit: usize| {
        let mut c = h.client();
        async move {
            let mut s = c
                .watch_receipts(proto::WatchReceiptsRequest {
                    campaign_id: "stream-1".into(),
                    statuses: vec![DELIVERED],
                    from_start: cursor.is_empty(),
                    cursor,
                    ..Default::default()
                })
                .await
                .expect("watch")
                .into_inner();
            let mut got = Vec::new();
            while got.len() < limit {
                match tokio::time::timeout(Duration::from_secs(2), s.next()).await {
                    Ok(Some(Ok(r))) => got.push(r),
                    _ => break,
                }
            }
            got
        }
    };
    let first = read(String::new(), 200).await;
    assert_eq!(first.len(), 200);
    let rest = read(first[199].cursor.clone(), 1000).await;
    assert_eq!(rest.len(), 300);
    let mut ids: Vec<String> = first
        .iter()
        .chain(rest.iter())
        .map(|r| r.notification_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 500);
    let campaign = h
        .client()
        .get_campaign(proto::GetCampaignRequest {
            campaign_id: "stream-1".into(),
        })
        .await
        .expect("campaign")
        .into_inner();
    assert_eq!(campaign.total, 500);
    assert!(
        (campaign.progress - 1.0).abs() < f64::EPSILON,
        "{campaign:?}"
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let h = Herald::start(test_config(None)).await;
    let channel = tonic::transport::Endpoint::from_shared(h.grpc_url.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let st = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "herald.v1.Dispatch".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        st.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let first = resp.next().await.expect("a reply").expect("ok");
    let names: Vec<String> = match first.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply {other:?}"),
    };
    for want in [
        "herald.v1.Dispatch",
        "herald.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}

#[tokio::test]
async fn a_dead_address_is_suppressed_afterwards() {
    let (_redis, sink, h) = setup().await;
    sink.respond("/gone", vec![Reply::status(410)]);
    let first = h
        .client()
        .send(webhook_request(&sink.url("/gone"), "one"))
        .await
        .expect("send")
        .into_inner();
    h.wait_status(&first.notification_id, FAILED, Duration::from_secs(10))
        .await;
    assert_eq!(sink.count(), 1);
    // The receiver said the URL is gone: the next send to it makes no request at all.
    let second = h
        .client()
        .send(webhook_request(&sink.url("/gone"), "two"))
        .await
        .expect("send")
        .into_inner();
    let n = h
        .wait_status(
            &second.notification_id,
            proto::Status::Suppressed as i32,
            Duration::from_secs(10),
        )
        .await;
    assert!(n.attempts.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn an_operator_pause_holds_every_instance_and_resume_drains() {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let a = Herald::start(test_config(Some(redis.url()))).await;
    let b = Herald::start(test_config(Some(redis.url()))).await;
    let mut admin = proto::admin_client::AdminClient::connect(a.grpc_url.clone())
        .await
        .expect("admin");
    let webhook = proto::Channel::Webhook as i32;
    admin
        .pause_channel(proto::PauseChannelRequest {
            channel: webhook,
            account: String::new(),
            reason: "receiver maintenance".into(),
        })
        .await
        .expect("pause");
    // The other instance follows within its poll interval (500 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut ids = Vec::new();
    for (i, h) in [&a, &b, &b].iter().enumerate() {
        let r = h
            .client()
            .send(webhook_request(&sink.url("/paused"), &format!("held {i}")))
            .await
            .expect("send")
            .into_inner();
        ids.push(r.notification_id);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        sink.count(),
        0,
        "a paused channel sends nothing on any instance"
    );
    for id in &ids {
        assert_eq!(a.get(id).await.status, proto::Status::Queued as i32);
    }
    let st = admin
        .get_channel_status(proto::GetChannelStatusRequest { channel: webhook })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.channels.len(), 1);
    assert!(st.channels[0].paused);
    assert_eq!(st.channels[0].queue_depth, 3);
    let e = admin
        .pause_channel(proto::PauseChannelRequest {
            channel: webhook,
            account: "page-1".into(),
            reason: String::new(),
        })
        .await
        .expect_err("per-account pauses are refused");
    assert_eq!(violated_fields(&e), vec!["account"]);

    admin
        .resume_channel(proto::ResumeChannelRequest {
            channel: webhook,
            account: String::new(),
        })
        .await
        .expect("resume");
    for id in &ids {
        a.wait_status(id, DELIVERED, Duration::from_secs(10)).await;
    }
    assert_eq!(sink.count(), 3);
}

#[tokio::test]
async fn policy_apply_validates_versions_and_dry_runs_against_the_queue() {
    let (_redis, sink, h) = setup().await;
    let mut admin = proto::admin_client::AdminClient::connect(h.grpc_url.clone())
        .await
        .expect("admin");
    let apply = |document: &str, expected: u64, dry_run: bool| proto::ApplyPolicyRequest {
        document: document.to_string(),
        dry_run,
        expected_version: expected,
        author: "ann".into(),
    };
    // An invalid document names the key and changes nothing.
    let e = admin
        .apply_policy(apply(
            "[channels.sms]\nrate = { per_second = 0 }\n",
            0,
            false,
        ))
        .await
        .expect_err("invalid");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&e),
        vec!["document.channels.sms.rate.per_second"]
    );

    let v1 = "[channels.webhook]\nenabled = true\n";
    let r = admin
        .apply_policy(apply(v1, 0, false))
        .await
        .expect("apply")
        .into_inner();
    assert_eq!(r.version, 1);
    // Someone else's version 1 is in force: a stale expected version is refused.
    let e = admin
        .apply_policy(apply(v1, 0, false))
        .await
        .expect_err("stale");
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Three notifications wait (scheduled a minute ahead); a dry run of disabling their
    // channel says all three would no longer go, and applies nothing.
    for i in 0..3 {
        let mut req = webhook_request(&sink.url("/dry"), &format!("n{i}"));
        req.send_at = Some(ts_in(60_000));
        h.client().send(req).await.expect("send");
    }
    let v2 = "[channels.webhook]\nenabled = false\n";
    let dry = admin
        .apply_policy(apply(v2, 1, true))
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(dry.version, 1, "a dry run applies nothing");
    assert_eq!(dry.diff, "channels.webhook.enabled: true → false");
    let impact = dry.impact.expect("impact");
    assert_eq!(
        (impact.rerouted, impact.suppressed, impact.deferred),
        (0, 3, 0)
    );
    let p = admin
        .get_policy(proto::GetPolicyRequest {})
        .await
        .expect("get")
        .into_inner();
    assert_eq!(p.version, 1);
    assert_eq!(p.document, v1);
    assert_eq!(p.history.len(), 1);
    assert_eq!(p.history[0].author, "ann");
}

#[tokio::test]
async fn a_storm_of_failures_opens_the_circuit_and_a_probe_closes_it() {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let mut cfg = test_config(Some(redis.url()));
    cfg.dispatch.circuit_failures = 3;
    cfg.dispatch.circuit_open = herald::config::HumanDuration(Duration::from_secs(3));
    cfg.dispatch.max_attempts = 100;
    cfg.dispatch.backoff_cap = herald::config::HumanDuration(Duration::from_millis(200));
    let h = Herald::start(cfg).await;
    sink.respond("/storm", vec![Reply::status(500)]);
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = h
            .client()
            .send(webhook_request(&sink.url("/storm"), &format!("n{i}")))
            .await
            .expect("send")
            .into_inner();
        ids.push(r.notification_id);
    }
    let http = reqwest::Client::new();
    let opened = crate::harness::eventually(Duration::from_secs(10), || {
        let http = http.clone();
        let url = format!("{}/metrics", h.http_url);
        async move {
            let m = http.get(url).send().await.ok()?.text().await.ok()?;
            m.contains("herald_circuit_open{channel=\"webhook\"} 1")
                .then_some(())
        }
    })
    .await;
    assert!(opened.is_some(), "the circuit opened");
    let mut admin = proto::admin_client::AdminClient::connect(h.grpc_url.clone())
        .await
        .expect("admin");
    let st = admin
        .get_channel_status(proto::GetChannelStatusRequest {
            channel: proto::Channel::Webhook as i32,
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.channels[0].circuit, "open");
    // While open, nothing goes out even though retries are due.
    let before = sink.count();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        sink.count(),
        before,
        "no requests while the circuit is open"
    );
    // The receiver recovers: the probe succeeds, the circuit closes, everything is delivered.
    sink.respond("/storm", vec![Reply::ok()]);
    for id in &ids {
        h.wait_status(id, DELIVERED, Duration::from_secs(15)).await;
    }
}

/// The whole path on a three-node Redis Cluster: a batch spread over every shard is
/// delivered once each, its campaign counts add up across the nodes, receipts stream from
/// every shard, and a single send with an idempotency key is answered once.
#[tokio::test]
async fn on_redis_cluster_a_campaign_is_delivered_and_counted() {
    let cluster = RedisCluster::start();
    let sink = Sink::start().await;
    let urls = cluster.urls();
    let mut cfg = test_config(Some(urls[0].clone()));
    cfg.redis.cluster = true;
    cfg.redis.cluster_nodes = urls[1..].to_vec();
    cfg.redis.shards = 8;
    let h = Herald::start(cfg).await;
    let url = sink.url("/cluster");
    let items: Vec<_> = (0..500)
        .map(|i| {
            let mut r = webhook_request(&url, &format!("message {i}"));
            r.campaign_id = "clustered".into();
            r
        })
        .collect();
    let resp = h
        .client()
        .send_batch(proto::SendBatchRequest { items })
        .await
        .expect("batch")
        .into_inner();
    assert!(resp
        .results
        .iter()
        .all(|r| matches!(r.result, Some(proto::send_batch_result::Result::Ok(_)))));
    let mut once = webhook_request(&url, "once");
    once.idempotency_key = "cluster-1".into();
    let a = h
        .client()
        .send(once.clone())
        .await
        .expect("send")
        .into_inner();
    let b = h.client().send(once).await.expect("again").into_inner();
    assert_eq!(a.notification_id, b.notification_id);
    assert!(b.duplicate);
    assert!(
        sink.wait_for_count(501, Duration::from_secs(30)).await,
        "only {} arrived",
        sink.count()
    );
    let mut seen = std::collections::HashSet::new();
    for r in sink.requests() {
        assert!(seen.insert(r.header("webhook-id").unwrap_or_default().to_string()));
    }
    for node in &cluster.nodes {
        assert_ne!(
            node.cmd(&["KEYS", "herald:{*}:*"]),
            "",
            "every node holds a shard"
        );
    }
    let counted = crate::harness::eventually(Duration::from_secs(10), || async {
        let c = h
            .client()
            .get_campaign(proto::GetCampaignRequest {
                campaign_id: "clustered".into(),
            })
            .await
            .ok()?
            .into_inner();
        (c.total == 500 && c.by_status.get("STATUS_DELIVERED") == Some(&500)).then_some(c)
    })
    .await;
    assert!(counted.is_some(), "the campaign's counts did not add up");
    let mut watch = h
        .client()
        .watch_receipts(proto::WatchReceiptsRequest {
            campaign_id: "clustered".into(),
            from_start: true,
            statuses: vec![DELIVERED],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut delivered = std::collections::HashSet::new();
    let all = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(rc)) = watch.next().await {
            delivered.insert(rc.notification_id);
            if delivered.len() == 500 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(all, Ok(true), "{} DELIVERED receipts", delivered.len());
}

/// Unary sends in flight together are written together (ingest's coalescer, one call over
/// several shards): each still gets its own answer, a key sent twice at once is one
/// notification, and every notification is delivered once.
#[tokio::test]
async fn concurrent_unary_sends_each_get_their_own_answer() {
    let (_redis, sink, h) = setup().await;
    let url = sink.url("/together");
    let sends = (0..200).map(|i| {
        let mut c = h.client();
        let mut r = webhook_request(&url, &format!("message {}", i % 100));
        r.idempotency_key = format!("together-{}", i % 100);
        async move { (i % 100, c.send(r).await.expect("send").into_inner()) }
    });
    let answers = futures::future::join_all(sends).await;
    let mut by_key: HashMap<usize, Vec<proto::SendResponse>> = HashMap::new();
    for (k, a) in answers {
        by_key.entry(k).or_default().push(a);
    }
    assert_eq!(by_key.len(), 100);
    for (k, pair) in &by_key {
        assert_eq!(pair.len(), 2);
        assert_eq!(pair[0].notification_id, pair[1].notification_id, "key {k}");
        assert_eq!(
            pair.iter().filter(|a| a.duplicate).count(),
            1,
            "key {k}: one of the two is the duplicate"
        );
    }
    assert!(sink.wait_for_count(100, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count(), 100);
    let mut bodies: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| {
            r.json()["data"]["body"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 100, "each key's own content");
}
