//! The policy in force decides every send: applied live through Admin.ApplyPolicy, it reaches
//! notifications already queued (real Redis, in-process Herald, mock platforms).

use std::time::Duration;

use herald::proto;
use herald::proto::admin_client::AdminClient;
use herald_mock::{messenger as mm, MockConfig};
use tonic::transport::Channel as Grpc;

use crate::harness::{RedisServer, Sink};
use crate::support::*;

const SENT: i32 = proto::Status::Sent as i32;

async fn admin(h: &Herald) -> AdminClient<Grpc> {
    AdminClient::connect(h.grpc_url.clone())
        .await
        .expect("admin")
}

async fn apply(a: &mut AdminClient<Grpc>, document: &str) -> u64 {
    let current = a
        .get_policy(proto::GetPolicyRequest {})
        .await
        .expect("get policy")
        .into_inner()
        .version;
    a.apply_policy(proto::ApplyPolicyRequest {
        document: document.into(),
        dry_run: false,
        expected_version: current,
        author: "test".into(),
    })
    .await
    .expect("apply policy")
    .into_inner()
    .version
}

fn sandbox_request(contact: &str, category: proto::Category) -> proto::SendRequest {
    proto::SendRequest {
        recipient: Some(proto::Recipient {
            contact_id: contact.into(),
            timezone: "UTC".into(),
            ..Default::default()
        }),
        channels: vec![proto::Channel::Sandbox as i32],
        content: Some(proto::Content {
            body: "Spring sale".into(),
            ..Default::default()
        }),
        category: category as i32,
        ..Default::default()
    }
}

async fn redis_herald() -> (RedisServer, Herald) {
    let redis = RedisServer::start();
    let h = Herald::start(test_config(Some(redis.url()))).await;
    (redis, h)
}

#[tokio::test]
async fn narrowed_tags_send_queued_notifications_by_the_next_channel() {
    let (_redis, mock, instances) = three_instances(|cfg, mock| {
        let file = mock_channels(mock);
        cfg.channels.messenger = file.messenger;
        cfg.channels.sms = file.sms;
    })
    .await;
    let mut a = admin(&instances[0]).await;
    // Contacts whose last message to the page is two days old: outside the 24 h window.
    let psids: Vec<String> = (0..6).map(|i| format!("555000{i}")).collect();
    for p in &psids {
        mm::set_last_inbound(&mock.mock, p, herald::model::now_ms() - 48 * 3600 * 1000);
    }
    // Messenger is paused while they are queued (one instance pauses it for all), then the
    // tags are cut to ACCOUNT_UPDATE only: the queued POST_PURCHASE_UPDATE ones go by SMS,
    // with no Messenger request at all (no platform rejection); ACCOUNT_UPDATE ones still go
    // by Messenger.
    a.pause_channel(proto::PauseChannelRequest {
        channel: proto::Channel::Messenger as i32,
        account: String::new(),
        reason: "policy change".into(),
    })
    .await
    .expect("pause");
    // Every instance follows the pause within its poll interval (2 s at most).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let req = |i: usize, tag: &str| proto::SendRequest {
        recipient: Some(proto::Recipient {
            messenger_psid: psids[i].clone(),
            phone: format!("+141555502{i:02}"),
            ..Default::default()
        }),
        channels: vec![proto::Channel::Messenger as i32, proto::Channel::Sms as i32],
        content: Some(proto::Content {
            body: "Your parcel has shipped".into(),
            messenger_tag: tag.into(),
            ..Default::default()
        }),
        category: proto::Category::Utility as i32,
        ..Default::default()
    };
    let mut ids = Vec::new();
    for i in 0..6 {
        let tag = if i < 4 {
            "POST_PURCHASE_UPDATE"
        } else {
            "ACCOUNT_UPDATE"
        };
        let r = instances[i % 3]
            .client()
            .send(req(i, tag))
            .await
            .expect("send")
            .into_inner();
        ids.push(r.notification_id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        mock.mock.ledger("messenger").is_empty(),
        "paused on every instance"
    );
    apply(
        &mut a,
        "[channels.messenger]\nwindow = { hours = 24, outside_tags = [\"ACCOUNT_UPDATE\"] }\n",
    )
    .await;
    let mut b = admin(&instances[1]).await;
    b.resume_channel(proto::ResumeChannelRequest {
        channel: proto::Channel::Messenger as i32,
        account: String::new(),
    })
    .await
    .expect("resume");
    for (i, id) in ids.iter().enumerate() {
        let n = crate::harness::eventually(Duration::from_secs(15), || async {
            let n = instances[2].get(id).await;
            (n.status == SENT).then_some(n)
        })
        .await
        .unwrap_or_else(|| panic!("{id} was not sent"));
        let want = if i < 4 {
            proto::Channel::Sms
        } else {
            proto::Channel::Messenger
        };
        assert_eq!(n.channel, want as i32, "{n:?}");
        assert_eq!(n.attempts.len(), 1, "{n:?}");
        assert_eq!(n.attempts[0].channel, want as i32);
    }
    // Messenger saw only the two ACCOUNT_UPDATE ones, and refused nothing.
    let seen = mock.mock.ledger("messenger");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|e| (200..300).contains(&e.status)));
    assert_eq!(mock.mock.accepted("twilio").len(), 4);
}

#[tokio::test]
async fn a_frequency_cap_suppresses_the_fourth_marketing_message_of_a_day() {
    let (_redis, h) = redis_herald().await;
    let mut a = admin(&h).await;
    apply(
        &mut a,
        "[[frequency_caps]]\ncategory = \"marketing\"\nmax = 3\nper = \"24h\"\n",
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = h
            .client()
            .send(sandbox_request("contact-7", proto::Category::Marketing))
            .await
            .expect("send")
            .into_inner();
        // One at a time: each send is counted before the next is decided.
        let n = crate::harness::eventually(Duration::from_secs(10), || async {
            let n = h.get(&r.notification_id).await;
            (n.status == READ || n.status == proto::Status::Suppressed as i32).then_some(n)
        })
        .await
        .expect("settles");
        statuses.push(n.status);
    }
    assert_eq!(
        statuses,
        vec![READ, READ, READ, proto::Status::Suppressed as i32]
    );
    // Another contact, and transactional messages, are not capped.
    let other = h
        .client()
        .send(sandbox_request("contact-8", proto::Category::Marketing))
        .await
        .expect("send")
        .into_inner();
    h.wait_status(&other.notification_id, READ, Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn quiet_hours_defer_marketing_to_the_recipients_morning() {
    let (_redis, h) = redis_herald().await;
    let mut a = admin(&h).await;
    // Quiet hours around now in UTC (the recipient's timezone), an hour each side.
    let now = jiff::Timestamp::now();
    let start = (now - jiff::SignedDuration::from_hours(1))
        .strftime("%H:%M")
        .to_string();
    let end = (now + jiff::SignedDuration::from_hours(1))
        .strftime("%H:%M")
        .to_string();
    apply(
        &mut a,
        &format!(
            "[quiet_hours]\ncategories = [\"marketing\"]\nstart = \"{start}\"\nend = \"{end}\"\n"
        ),
    )
    .await;
    let r = h
        .client()
        .send(sandbox_request("contact-9", proto::Category::Marketing))
        .await
        .expect("send")
        .into_inner();
    let n = h
        .wait_status(
            &r.notification_id,
            proto::Status::Retrying as i32,
            Duration::from_secs(10),
        )
        .await;
    assert!(n.attempts.is_empty(), "nothing was sent");
    let deferred = n
        .receipts
        .iter()
        .find(|r| r.status == proto::Status::Retrying as i32)
        .expect("a deferral receipt");
    assert_eq!(deferred.error_code, "deferred:quiet_hours");
    // A transactional message is not held.
    let t = h
        .client()
        .send(sandbox_request("contact-9", proto::Category::Transactional))
        .await
        .expect("send")
        .into_inner();
    h.wait_status(&t.notification_id, READ, Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn an_exhausted_campaign_budget_stops_that_campaign_only_and_costs_are_recorded() {
    let (_redis, h) = redis_herald().await;
    let mut a = admin(&h).await;
    apply(
        &mut a,
        r#"
[channels.sandbox]
price = { currency = "USD", per_message = { marketing = 0.6 } }

[[budgets]]
scope = "campaign"
id = "spring"
daily = 1.0
currency = "USD"
"#,
    )
    .await;
    let send = |campaign: &str| {
        let mut r = sandbox_request("contact-10", proto::Category::Marketing);
        r.campaign_id = campaign.into();
        let mut c = h.client();
        async move { c.send(r).await.expect("send").into_inner().notification_id }
    };
    let first = send("spring").await;
    let n = h.wait_status(&first, READ, Duration::from_secs(10)).await;
    assert_eq!(
        n.cost.as_ref().map(|c| (c.micros, c.currency.as_str())),
        Some((600_000, "USD"))
    );
    // 0.6 of 1.0 is spent: the next 0.6 would overspend, so it waits for tomorrow.
    let second = send("spring").await;
    let n = h
        .wait_status(
            &second,
            proto::Status::Retrying as i32,
            Duration::from_secs(10),
        )
        .await;
    assert!(n.attempts.is_empty());
    assert!(n
        .receipts
        .iter()
        .any(|r| r.error_code == "deferred:budget_reset"));
    // Another campaign has no budget: it goes.
    let other = send("autumn").await;
    h.wait_status(&other, READ, Duration::from_secs(10)).await;
    let c = h
        .client()
        .get_campaign(proto::GetCampaignRequest {
            campaign_id: "spring".into(),
        })
        .await
        .expect("campaign")
        .into_inner();
    assert_eq!(c.cost.map(|c| c.micros), Some(600_000));
    let metrics = reqwest::get(format!("{}/metrics", h.http_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "herald_cost_micros_total{channel=\"sandbox\",category=\"marketing\",currency=\"USD\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn cheapest_eligible_moves_queued_notifications_to_the_cheaper_channel() {
    let (_redis, h) = redis_herald().await;
    let sink = Sink::start().await;
    let mut a = admin(&h).await;
    // Three utility notifications wait (due in 2 s) with the webhook first in their route.
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut r = webhook_request(&sink.url("/hook"), &format!("utility {i}"));
        r.channels = vec![
            proto::Channel::Webhook as i32,
            proto::Channel::Sandbox as i32,
        ];
        r.category = proto::Category::Utility as i32;
        r.send_at = Some(ts_in(2_000));
        ids.push(
            h.client()
                .send(r)
                .await
                .expect("send")
                .into_inner()
                .notification_id,
        );
    }
    let doc = r#"
[routing]
strategy = "cheapest_eligible"

[channels.webhook]
price = { currency = "USD", per_message = { utility = 0.01 } }

[channels.sandbox]
price = { currency = "USD", per_message = { utility = 0.001 } }
"#;
    let dry = a
        .apply_policy(proto::ApplyPolicyRequest {
            document: doc.into(),
            dry_run: true,
            expected_version: 0,
            author: "test".into(),
        })
        .await
        .expect("dry run")
        .into_inner();
    let impact = dry.impact.expect("impact");
    // Today they would go by the (free, unpriced) webhook; under the new policy by the
    // sandbox at 0.001 each.
    assert_eq!(impact.rerouted, 3, "{impact:?}");
    assert_eq!(impact.cost_delta_micros, 3_000);
    apply(&mut a, doc).await;
    for id in &ids {
        let n = h.wait_status(id, READ, Duration::from_secs(10)).await;
        assert_eq!(n.channel, proto::Channel::Sandbox as i32);
        assert_eq!(n.cost.as_ref().map(|c| c.micros), Some(1_000));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.count(), 0, "the dearer webhook was never used");
}

/// Redis, the mock platforms (sending no receipts) and three Herald instances sharing that
/// Redis; `configure` sets each instance's channel sections.
async fn three_instances(
    configure: impl Fn(&mut herald::config::Config, &herald_mock::MockPlatform),
) -> (RedisServer, herald_mock::MockPlatform, Vec<Herald>) {
    let redis = RedisServer::start();
    let mock = herald_mock::MockPlatform::start(MockConfig {
        receipts: false,
        ..Default::default()
    })
    .await
    .expect("mock");
    let mut instances = Vec::new();
    for _ in 0..3 {
        let mut cfg = test_config(Some(redis.url()));
        configure(&mut cfg, &mock);
        instances.push(Herald::start(cfg).await);
    }
    (redis, mock, instances)
}

/// Three instances sending SMS through the mock, whose Twilio takes at most `twilio_limit`
/// per second, if given.
async fn three_sms_instances(
    twilio_limit: Option<u32>,
) -> (RedisServer, herald_mock::MockPlatform, Vec<Herald>) {
    let (redis, mock, instances) = three_instances(|cfg, mock| {
        cfg.channels.sms = mock_channels(mock).sms;
    })
    .await;
    mock.mock.set_knobs(
        "twilio",
        herald_mock::Knobs {
            rate_limit_per_sec: twilio_limit,
            ..Default::default()
        },
    );
    (redis, mock, instances)
}

/// `n` SMS to distinct numbers `<prefix>0000`, `<prefix>0001`, …
fn sms_batch(prefix: &str, n: usize) -> Vec<proto::SendRequest> {
    (0..n)
        .map(|i| proto::SendRequest {
            recipient: Some(proto::Recipient {
                phone: format!("{prefix}{i:04}"),
                ..Default::default()
            }),
            channels: vec![proto::Channel::Sms as i32],
            content: Some(proto::Content {
                body: format!("code {i}"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Most requests the mock got in any one-second window starting at or after `from`.
fn busiest_second(times: &[std::time::SystemTime], from: std::time::SystemTime) -> usize {
    let mut t: Vec<std::time::SystemTime> = times.iter().copied().filter(|x| *x >= from).collect();
    t.sort();
    let mut best = 0;
    let mut j = 0;
    for i in 0..t.len() {
        while t[i]
            .duration_since(t[j])
            .map(|d| d >= Duration::from_secs(1))
            .unwrap_or(false)
        {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best
}

/// `n` tagged Messenger updates to distinct PSIDs `<prefix>0000`, `<prefix>0001`, …
fn messenger_batch(prefix: &str, n: usize) -> Vec<proto::SendRequest> {
    (0..n)
        .map(|i| proto::SendRequest {
            recipient: Some(proto::Recipient {
                messenger_psid: format!("{prefix}{i:04}"),
                ..Default::default()
            }),
            channels: vec![proto::Channel::Messenger as i32],
            content: Some(proto::Content {
                body: format!("Your order {i} has shipped"),
                messenger_tag: "ACCOUNT_UPDATE".into(),
                ..Default::default()
            }),
            category: proto::Category::Utility as i32,
            ..Default::default()
        })
        .collect()
}

#[tokio::test]
async fn a_rate_cut_holds_across_three_instances_while_a_backlog_drains() {
    // Messenger's page rate goes from 300/s to 50/s in the middle of a drain.
    let (_redis, mock, instances) = three_instances(|cfg, mock| {
        cfg.channels.messenger = mock_channels(mock).messenger;
    })
    .await;
    let mut a = admin(&instances[0]).await;
    apply(
        &mut a,
        "[channels.messenger]\nrate = { per_second = 300, burst = 1, scope = \"page\" }\n",
    )
    .await;
    // Every instance follows the policy and sees the others' heartbeats.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let total = 900;
    let items = messenger_batch("77", total);
    let (first, rest) = items.split_at(total / 2);
    instances[1]
        .client()
        .send_batch(proto::SendBatchRequest {
            items: first.to_vec(),
        })
        .await
        .expect("batch");
    instances[2]
        .client()
        .send_batch(proto::SendBatchRequest {
            items: rest.to_vec(),
        })
        .await
        .expect("batch");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut b = admin(&instances[2]).await;
    apply(
        &mut b,
        "[channels.messenger]\nrate = { per_second = 50, burst = 1, scope = \"page\" }\n",
    )
    .await;
    let cut = std::time::SystemTime::now();
    let sent_at_cut = mock.mock.accepted("messenger").len();
    let done = crate::harness::eventually(Duration::from_secs(60), || async {
        (mock.mock.accepted("messenger").len() >= total).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "only {} arrived",
        mock.mock.accepted("messenger").len()
    );
    let times: Vec<std::time::SystemTime> = mock
        .mock
        .accepted("messenger")
        .iter()
        .map(|e| e.at)
        .collect();
    let before = busiest_second(&times, std::time::UNIX_EPOCH);
    let after = busiest_second(&times, cut + Duration::from_secs(2));
    println!(
        "busiest second: {before} overall (300/s policy; {sent_at_cut} of {total} sent before the cut), {after} from 2 s after the cut to 50/s"
    );
    assert!(
        sent_at_cut >= 100 && sent_at_cut < total - 200,
        "the cut came in the middle of the drain ({sent_at_cut} of {total} sent)"
    );
    assert!(
        before <= 300,
        "{before} requests in one second under a 300/s policy"
    );
    assert!(
        after <= 50,
        "{after} requests in one second after the cut to 50/s"
    );
    // Nothing lost, nothing sent twice, and no throttling or failure answers.
    let mut to: Vec<String> = mock
        .mock
        .accepted("messenger")
        .iter()
        .filter_map(|e| e.json()["recipient"]["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(to.len(), total, "accepted requests");
    to.sort();
    to.dedup();
    assert_eq!(to.len(), total, "distinct recipients");
    assert_eq!(
        mock.mock.ledger("messenger").len(),
        total,
        "no refused request"
    );
}

#[tokio::test]
async fn silent_throttling_is_absorbed_and_nothing_fails() {
    // The platform quietly takes only 10/s and answers the rest with its throttle error.
    let (_redis, mock, instances) = three_sms_instances(Some(10)).await;
    let mut a = admin(&instances[0]).await;
    apply(
        &mut a,
        "[channels.sms]\nrate = { per_second = 40, burst = 1, scope = \"sender\" }\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let items = sms_batch("+1415666", 200);
    let t0 = std::time::SystemTime::now();
    let ids: Vec<String> = instances[1]
        .client()
        .send_batch(proto::SendBatchRequest { items })
        .await
        .expect("batch")
        .into_inner()
        .results
        .into_iter()
        .filter_map(|r| match r.result {
            Some(proto::send_batch_result::Result::Ok(ok)) => Some(ok.notification_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 200);
    // 20 s at the platform's 10/s once converged; about 40 s alone with the probing, and up to
    // 60 s on a loaded machine (a CI run ran out at 60): the bound is on losing, not on speed.
    let done = crate::harness::eventually(Duration::from_secs(150), || async {
        (mock.mock.accepted("twilio").len() >= 200).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "only {} accepted",
        mock.mock.accepted("twilio").len()
    );
    let ledger = mock.mock.ledger("twilio");
    let throttled_at = |from: Duration, to: Duration| {
        ledger
            .iter()
            .filter(|e| e.status == 429)
            .filter(|e| {
                let d = e.at.duration_since(t0).unwrap_or_default();
                d >= from && d < to
            })
            .count()
    };
    let early = throttled_at(Duration::ZERO, Duration::from_secs(10));
    let late = throttled_at(Duration::from_secs(10), Duration::from_secs(3600));
    let late_taken = ledger
        .iter()
        .filter(|e| (200..300).contains(&e.status))
        .filter(|e| e.at.duration_since(t0).unwrap_or_default() >= Duration::from_secs(10))
        .count();
    println!(
        "silent throttling: {early} throttled answers in the first 10 s; after 10 s {late} throttled and {late_taken} taken; {} requests in all",
        ledger.len()
    );
    assert!(early > 0, "the mock did throttle");
    // Converged: after 10 s the platform takes at least three requests for each it refuses
    // (the rare refusals are the slow probes for a higher limit). Under a shared CPU Herald
    // only sends slower, which makes this easier, not harder.
    assert!(
        late * 3 <= late_taken.max(3),
        "still throttled often after 10 s: {late} refused vs {late_taken} taken"
    );
    // Throttled ones were retried, not failed.
    for id in &ids {
        let n = instances[0].get(id).await;
        assert_ne!(n.status, FAILED, "{n:?}");
    }
}

#[tokio::test]
async fn whatsapp_utility_starting_to_cost_moves_queued_notifications_to_the_cheaper_channel() {
    let (_redis, mock, instances) = three_instances(|cfg, mock| {
        let file = mock_channels(mock);
        cfg.channels.whatsapp = file.whatsapp;
        cfg.channels.email = file.email;
    })
    .await;
    let mut a = admin(&instances[0]).await;
    let v1 = r#"
[routing]
strategy = "cheapest_eligible"

[channels.whatsapp]
window = { hours = 24, outside_templates = true }
price = { currency = "USD", per_message = { marketing = 0.025 } }

[channels.email]
price = { currency = "USD", per_message = { default = 0.001 } }
"#;
    apply(&mut a, v1).await;
    // 2025-07-01: utility templates outside the window start to cost money.
    let v2 = v1.replace(
        "per_message = { marketing = 0.025 } }",
        "per_message = { marketing = 0.025 }, outside_window = { utility = 0.004 } }",
    );
    let req = |i: usize, send_at: Option<prost_types::Timestamp>| proto::SendRequest {
        recipient: Some(proto::Recipient {
            whatsapp_number: format!("+1650555{i:04}"),
            email: format!("c{i}@example.com"),
            ..Default::default()
        }),
        channels: vec![
            proto::Channel::Whatsapp as i32,
            proto::Channel::Email as i32,
        ],
        content: Some(proto::Content {
            title: "Your order".into(),
            body: "Order 42 has shipped".into(),
            template: Some(proto::Template {
                name: "order_update".into(),
                language: "en_US".into(),
                params: vec!["42".into()],
            }),
            ..Default::default()
        }),
        category: proto::Category::Utility as i32,
        send_at,
        ..Default::default()
    };
    // Three queued (due in 4 s, one through each instance) under v1, where WhatsApp is the
    // cheaper (free) channel.
    let mut ids = Vec::new();
    for (i, h) in instances.iter().enumerate() {
        let r = h
            .client()
            .send(req(i, Some(ts_in(4_000))))
            .await
            .expect("send")
            .into_inner();
        ids.push(r.notification_id);
    }
    let mut b = admin(&instances[1]).await;
    let dry = b
        .apply_policy(proto::ApplyPolicyRequest {
            document: v2.clone(),
            dry_run: true,
            expected_version: 1,
            author: "test".into(),
        })
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(
        dry.diff,
        "channels.whatsapp.price.outside_window.utility: (unset) → 0.004"
    );
    let impact = dry.impact.expect("impact");
    assert_eq!(impact.rerouted, 3, "{impact:?}");
    assert_eq!(impact.cost_delta_micros, 3 * 1_000);
    apply(&mut a, &v2).await;
    // Every instance follows within 2 s, before the queued ones are due.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A new one, after the change, goes the same way.
    ids.push(
        instances[2]
            .client()
            .send(req(3, None))
            .await
            .expect("send")
            .into_inner()
            .notification_id,
    );
    for id in &ids {
        let n = crate::harness::eventually(Duration::from_secs(15), || async {
            let n = instances[0].get(id).await;
            (!n.attempts.is_empty()).then_some(n)
        })
        .await
        .expect("sent");
        assert_eq!(n.attempts[0].channel, proto::Channel::Email as i32, "{n:?}");
        assert_eq!(n.attempts[0].outcome, "sent");
        assert_eq!(n.cost.as_ref().map(|c| c.micros), Some(1_000));
    }
    assert!(mock.mock.ledger("whatsapp").is_empty());
    assert_eq!(mock.mock.accepted("smtp").len(), 4);
    // The cost counters show the difference: 4 × 0.001 USD by email, nothing by WhatsApp.
    // (The three instances run in this one test process, so they share one recorder.)
    let text = reqwest::get(format!("{}/metrics", instances[0].http_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let cost = |channel: &str| -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with("herald_cost_micros_total{"))
            .filter(|l| l.contains(&format!("channel=\"{channel}\"")))
            .filter(|l| l.contains("category=\"utility\"") && l.contains("currency=\"USD\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .next()
    };
    assert_eq!(cost("email"), Some(4_000.0), "{text}");
    assert_eq!(cost("whatsapp"), None);
}

#[tokio::test]
async fn high_priority_does_not_wait_behind_a_bulk_drain() {
    let (_redis, mock, instances) = three_sms_instances(None).await;
    let mut a = admin(&instances[0]).await;
    apply(
        &mut a,
        "[channels.sms]\nrate = { per_second = 30, burst = 1, scope = \"sender\" }\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut bulk = sms_batch("+1415777", 200);
    for r in &mut bulk {
        r.priority = proto::Priority::Bulk as i32;
    }
    instances[0]
        .client()
        .send_batch(proto::SendBatchRequest { items: bulk })
        .await
        .expect("bulk");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut high = sms_batch("+1415888", 1).remove(0);
    high.priority = proto::Priority::High as i32;
    let before = mock.mock.accepted("twilio").len();
    instances[2].client().send(high).await.expect("high");
    let at = |number: &str| {
        mock.mock
            .accepted("twilio")
            .iter()
            .position(|e| e.form().iter().any(|(k, v)| k == "To" && v == number))
    };
    let pos = crate::harness::eventually(Duration::from_secs(20), || async { at("+14158880000") })
        .await
        .expect("the HIGH one arrived");
    println!(
        "high priority: arrived as request {pos} of a 200-message BULK drain at 30/s; {before} had arrived when it was sent"
    );
    assert!(before < 150, "the drain was still going ({before} sent)");
    // A dedicated HIGH worker claims it at once and it takes the next cell of the limiter,
    // ahead of the BULK entries already waiting there; only sends already holding a cell or
    // in flight (one per instance at most, a few at 30/s) can go first.
    assert!(
        pos <= before + 6,
        "HIGH arrived as request {pos}, {} after the {before} sent before it",
        pos - before.min(pos)
    );
}

#[tokio::test]
async fn a_budget_is_overspent_by_no_more_than_the_notifications_in_flight() {
    // Three instances, one shard, batches of 2: at most 3 instances × their workers × 2
    // notifications of one lane are decided at once against the same spent amount.
    let redis = RedisServer::start();
    let mut instances = Vec::new();
    let mut workers = 0;
    for _ in 0..3 {
        let mut cfg = test_config(Some(redis.url()));
        cfg.redis.shards = 1;
        cfg.dispatch.batch_size = 2;
        workers = cfg.dispatch.workers;
        instances.push(Herald::start(cfg).await);
    }
    let in_flight = 3 * workers * 2;
    let mut a = admin(&instances[0]).await;
    apply(
        &mut a,
        r#"
[channels.sandbox]
price = { currency = "USD", per_message = { marketing = 0.01 } }

[[budgets]]
scope = "campaign"
id = "flash"
daily = 0.10
currency = "USD"
"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let total = 60;
    let mut ids = Vec::new();
    for (chunk, h) in instances.iter().enumerate() {
        let items: Vec<proto::SendRequest> = (0..total / 3)
            .map(|i| {
                let mut r =
                    sandbox_request(&format!("contact-{chunk}-{i}"), proto::Category::Marketing);
                r.campaign_id = "flash".into();
                r
            })
            .collect();
        let res = h
            .client()
            .send_batch(proto::SendBatchRequest { items })
            .await
            .expect("batch")
            .into_inner();
        ids.extend(res.results.into_iter().filter_map(|r| match r.result {
            Some(proto::send_batch_result::Result::Ok(ok)) => Some(ok.notification_id),
            _ => None,
        }));
    }
    assert_eq!(ids.len(), total);
    // Everything settles: sent (and read), or deferred to tomorrow's budget.
    let mut sent = 0;
    let mut deferred = 0;
    for id in &ids {
        let n = crate::harness::eventually(Duration::from_secs(20), || async {
            let n = instances[1].get(id).await;
            (n.status == READ || n.status == proto::Status::Retrying as i32).then_some(n)
        })
        .await
        .unwrap_or_else(|| panic!("{id} did not settle"));
        if n.status == READ {
            sent += 1;
        } else {
            assert!(n.attempts.is_empty(), "{n:?}");
            deferred += 1;
        }
    }
    println!(
        "budget of 10 sends: {sent} sent, {deferred} deferred (in flight at most {in_flight})"
    );
    assert!(sent >= 10, "the budget was used: {sent} sent");
    assert!(
        sent <= 10 + in_flight,
        "{sent} sent: overspent by more than the {in_flight} in flight"
    );
    let spent = instances[2]
        .client()
        .get_campaign(proto::GetCampaignRequest {
            campaign_id: "flash".into(),
        })
        .await
        .expect("campaign")
        .into_inner();
    // The campaign's recorded cost is exactly what was sent.
    assert_eq!(
        spent.cost.map(|c| c.micros),
        Some(sent as i64 * 10_000),
        "campaign cost"
    );
}

#[tokio::test]
async fn a_dry_run_prices_sms_by_its_segments() {
    let s = stack(MockConfig::default(), |cfg, mock| {
        cfg.channels.sms = mock_channels(mock).sms;
    })
    .await;
    let mut a = admin(&s.herald).await;
    // 200 GSM-7 characters: two segments of 153. 100 characters with an emoji (UCS-2): two
    // segments of 67.
    let texts = ["a".repeat(200), format!("{}🙂", "b".repeat(98))];
    for (i, text) in texts.iter().enumerate() {
        let mut r = sms_batch("+1415999", 2).remove(i);
        if let Some(c) = r.content.as_mut() {
            c.body = text.clone();
        }
        // Scheduled a minute out: waiting when the dry run looks.
        r.send_at = Some(ts_in(60_000));
        s.herald.client().send(r).await.expect("send");
    }
    let dry = a
        .apply_policy(proto::ApplyPolicyRequest {
            document: "[channels.sms]\nprice = { currency = \"USD\", per_segment = { default = 0.0079 } }\n".into(),
            dry_run: true,
            expected_version: 0,
            author: "test".into(),
        })
        .await
        .expect("dry run")
        .into_inner();
    let impact = dry.impact.expect("impact");
    assert_eq!(impact.cost_delta_micros, 4 * 7_900, "{impact:?}");
    assert!(
        s.mock.mock.ledger("twilio").is_empty(),
        "nothing sent while paused"
    );
}

#[tokio::test]
async fn a_dry_run_predicts_what_a_budget_and_a_cap_would_hold_back() {
    let (_redis, h) = redis_herald().await;
    let mut a = admin(&h).await;
    let v1 =
        "[channels.sandbox]\nprice = { currency = \"USD\", per_message = { marketing = 0.01 } }\n";
    apply(&mut a, v1).await;
    let later = |mut r: proto::SendRequest, campaign: &str| {
        r.campaign_id = campaign.into();
        // Scheduled a minute out: waiting when the dry run looks.
        r.send_at = Some(ts_in(60_000));
        r
    };
    // Eight of campaign "fall" to eight contacts, four outside any campaign to one contact.
    for i in 0..8 {
        let r = sandbox_request(&format!("fall-{i}"), proto::Category::Marketing);
        h.client().send(later(r, "fall")).await.expect("send");
    }
    for _ in 0..4 {
        let r = sandbox_request("same", proto::Category::Marketing);
        h.client().send(later(r, "")).await.expect("send");
    }
    let v2 = format!(
        "{v1}\n[[budgets]]\nscope = \"campaign\"\nid = \"fall\"\ndaily = 0.05\ncurrency = \"USD\"\n\n[[frequency_caps]]\ncategory = \"marketing\"\nmax = 3\nper = \"24h\"\n"
    );
    let dry = a
        .apply_policy(proto::ApplyPolicyRequest {
            document: v2,
            dry_run: true,
            expected_version: 1,
            author: "test".into(),
        })
        .await
        .expect("dry run")
        .into_inner();
    let impact = dry.impact.expect("impact");
    // The budget pays for five of "fall" (three wait for tomorrow); the cap lets three reach
    // "same" (the fourth is suppressed).
    assert_eq!(impact.deferred, 3, "{impact:?}");
    assert_eq!(impact.suppressed, 1, "{impact:?}");
    assert_eq!(impact.rerouted, 0, "{impact:?}");
    assert_eq!(impact.cost_delta_micros, -4 * 10_000, "{impact:?}");
}

/// Graph reports how much of the app's hourly call budget is used (`X-App-Usage`): from 75%
/// on, Messenger's rate comes down in step, before the platform's wall (error 4) rather than
/// at it.
#[tokio::test]
async fn graph_usage_headers_slow_messenger_before_the_wall() {
    let mut mc = MockConfig::default();
    mc.knobs.insert(
        "messenger".into(),
        herald_mock::Knobs {
            app_calls_per_hour: Some(200),
            ..Default::default()
        },
    );
    let s = stack(mc, |cfg, mock| {
        cfg.channels.messenger = mock_channels(mock).messenger;
    })
    .await;
    let mut a = admin(&s.herald).await;
    apply(
        &mut a,
        "[channels.messenger]\nrate = { per_second = 100, burst = 1, scope = \"page\" }\n",
    )
    .await;
    let status = |a: &mut AdminClient<Grpc>| {
        let mut a = a.clone();
        async move {
            a.get_channel_status(proto::GetChannelStatusRequest {
                channel: proto::Channel::Messenger as i32,
            })
            .await
            .expect("channel status")
            .into_inner()
            .channels
            .remove(0)
            .rate_per_second
        }
    };
    // Well under the budget: the policy's rate.
    s.herald
        .client()
        .send_batch(proto::SendBatchRequest {
            items: messenger_batch("u1", 20),
        })
        .await
        .expect("batch");
    let first = crate::harness::eventually(Duration::from_secs(10), || async {
        (s.mock.mock.accepted("messenger").len() >= 20).then_some(())
    })
    .await;
    assert!(first.is_some());
    let before = status(&mut a).await;
    assert!(before > 90.0, "rate at 10% usage: {before}");
    // To 95% of the budget: the rate is a fifth of the ceiling or less.
    s.herald
        .client()
        .send_batch(proto::SendBatchRequest {
            items: messenger_batch("u2", 170),
        })
        .await
        .expect("batch");
    let near = crate::harness::eventually(Duration::from_secs(30), || async {
        (s.mock.mock.accepted("messenger").len() >= 190).then_some(())
    })
    .await;
    assert!(
        near.is_some(),
        "only {} sent",
        s.mock.mock.accepted("messenger").len()
    );
    let after = status(&mut a).await;
    assert!(after < 40.0, "rate at 95% usage: {after} (was {before})");
    // No request met the wall on the way.
    assert_eq!(
        s.mock.mock.ledger("messenger").len(),
        190,
        "no refused request"
    );
    let metrics = reqwest::get(format!("{}/metrics", s.herald.http_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let usage = metrics
        .lines()
        .find(|l| l.starts_with("herald_platform_usage_percent{channel=\"messenger\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(usage.is_some_and(|u| u >= 90.0), "{usage:?}");
}
