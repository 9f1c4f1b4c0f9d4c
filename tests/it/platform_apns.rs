//! APNs against the mock platform over HTTP/2 (h2c): the exact request and provider token,
//! every documented reason through the real channel and the real mock, provider-token reuse
//! and its single renewal after a 403, and a dead token among several.

use std::sync::Arc;
use std::time::Duration;

use herald::channels::{apns, Channel, Deps, SendContext};
use herald::config::apns::ApnsConfig;
use herald::model::{self, Content, Notification, Outcome, Priority};
use herald::proto;
use herald_mock::apns as mock_apns;
use herald_mock::{Knobs, LedgerEntry, MockConfig, MockPlatform};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

use crate::platform_fcm::wait_dead;
use crate::support::*;

const PUBLIC_KEY: &[u8] = include_bytes!("../fixtures/apns-key.pub.pem");
const SENT: i32 = proto::Status::Sent as i32;

/// A 64-hex-digit device token.
fn device(n: usize) -> String {
    format!("{n:08x}{}", "5e1ec7ed".repeat(7))
}

fn config(mock: &MockPlatform) -> ApnsConfig {
    ApnsConfig {
        enabled: true,
        base_url: mock.base_url(),
        team_id: mock_apns::TEST_TEAM_ID.into(),
        key_id: mock_apns::TEST_KEY_ID.into(),
        private_key_file: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/apns-key.p8"),
        topic: mock_apns::TEST_TOPIC.into(),
        push_type: "alert".into(),
    }
}

fn channel(mock: &MockPlatform) -> Arc<dyn Channel> {
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let deps = Deps {
        receipts: tx,
        public_url: "http://127.0.0.1:1".into(),
        request_timeout: Duration::from_secs(5),
    };
    let cfg = config(mock);
    cfg.validate().expect("config is valid");
    apns::build(&cfg, &deps).expect("channel builds")
}

fn note() -> Notification {
    Notification {
        id: model::make_id(2),
        recipient: model::Recipient::default(),
        route: vec![model::Channel::Apns],
        content: Content {
            title: "Hi".into(),
            body: "Shipped".into(),
            ..Default::default()
        },
        created_at: model::now_ms(),
        ..Default::default()
    }
}

async fn send_note(
    ch: &Arc<dyn Channel>,
    n: &Notification,
    tokens: &[String],
) -> herald::channels::Delivery {
    let ctx = SendContext {
        attempt: 1,
        addresses: tokens,
        last_inbound: 0,
        now: model::now_ms(),
    };
    ch.send(n, &ctx).await
}

async fn send(ch: &Arc<dyn Channel>, tokens: &[String]) -> herald::channels::Delivery {
    send_note(ch, &note(), tokens).await
}

fn bearer(e: &LedgerEntry) -> String {
    e.header("authorization")
        .and_then(|v| v.strip_prefix("bearer "))
        .unwrap_or("")
        .to_string()
}

/// The notification id's ULID as a UUID, computed here independently of the channel.
fn uuid_of(notification_id: &str) -> String {
    let (u, _) = notification_id.rsplit_once('-').expect("id has a shard");
    let hex = format!("{:032x}", ulid::Ulid::from_string(u).expect("ulid").0);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
}

#[tokio::test]
async fn apns_sends_the_exact_http2_request_with_a_valid_provider_token() {
    let s = stack(MockConfig::default(), |cfg, mock| {
        cfg.channels.apns = Some(config(mock));
    })
    .await;
    let expire = ts_in(3_600_000);
    let r = s
        .herald
        .client()
        .send(proto::SendRequest {
            recipient: Some(proto::Recipient {
                apns_tokens: vec![device(1)],
                ..Default::default()
            }),
            channels: vec![proto::Channel::Apns as i32],
            content: Some(proto::Content {
                title: "Order shipped".into(),
                body: "Your parcel is on its way".into(),
                data: [("order".to_string(), "42".to_string())].into(),
                collapse_id: "order-42".into(),
                ..Default::default()
            }),
            expire_at: Some(expire),
            ..Default::default()
        })
        .await
        .expect("send")
        .into_inner();
    let n = s
        .herald
        .wait_status(&r.notification_id, SENT, Duration::from_secs(10))
        .await;
    let ledger = s.mock.mock.ledger("apns");
    assert_eq!(ledger.len(), 1);
    let e = &ledger[0];
    // The mock answers 505 to anything but HTTP/2: 200 means the request came over h2c.
    assert_eq!(e.status, 200);
    assert_eq!(e.method, "POST");
    assert_eq!(e.path, format!("/3/device/{}", device(1)));
    let apns_id = uuid_of(&r.notification_id);
    assert_eq!(e.header("apns-id"), Some(apns_id.as_str()));
    assert_eq!(e.header("apns-topic"), Some(mock_apns::TEST_TOPIC));
    assert_eq!(e.header("apns-push-type"), Some("alert"));
    assert_eq!(e.header("apns-priority"), Some("10"));
    assert_eq!(
        e.header("apns-expiration"),
        Some(expire.seconds.to_string().as_str())
    );
    assert_eq!(e.header("apns-collapse-id"), Some("order-42"));
    assert_eq!(
        e.json(),
        json!({
            "aps": {"alert": {"title": "Order shipped", "body": "Your parcel is on its way"}, "sound": "default"},
            "order": "42"
        })
    );
    // The provider token: ES256, kid = key id, iss = team id, iat now, signed by the key.
    let jwt = bearer(e);
    let header = jsonwebtoken::decode_header(&jwt).expect("jwt header");
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some(mock_apns::TEST_KEY_ID));
    let mut v = Validation::new(Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<Claims>(
        &jwt,
        &DecodingKey::from_ec_pem(PUBLIC_KEY).expect("public key"),
        &v,
    )
    .expect("the provider token verifies with the team's key")
    .claims;
    assert_eq!(claims.iss, mock_apns::TEST_TEAM_ID);
    assert!((claims.iat - model::now_ms() / 1000).abs() < 30);
    // The provider id is the apns-id APNs echoed: the notification's own id.
    assert_eq!(n.attempts.len(), 1);
    assert_eq!(n.attempts[0].provider_message_id, apns_id);
}

#[tokio::test]
async fn apns_data_only_goes_as_a_background_push() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let ch = channel(&mock);
    let mut n = note();
    n.content.title.clear();
    n.content.body.clear();
    n.content.data.insert("sync".into(), "inbox".into());
    n.priority = Priority::High;
    let d = send_note(&ch, &n, &[device(1)]).await;
    assert!(matches!(d.outcome, Outcome::Sent { .. }), "{:?}", d.outcome);
    let e = mock.mock.ledger("apns").pop().expect("request");
    assert_eq!(e.header("apns-push-type"), Some("background"));
    assert_eq!(e.header("apns-priority"), Some("5"));
    assert_eq!(e.header("apns-expiration"), Some("0"));
    assert_eq!(e.header("apns-collapse-id"), None);
    assert_eq!(
        e.json(),
        json!({"aps": {"content-available": 1}, "sync": "inbox"})
    );
    // Bulk alerts go at priority 5 too.
    let mut n = note();
    n.priority = Priority::Bulk;
    send_note(&ch, &n, &[device(2)]).await;
    let e = mock.mock.ledger("apns").pop().expect("request");
    assert_eq!(
        (e.header("apns-push-type"), e.header("apns-priority")),
        (Some("alert"), Some("5"))
    );
}

/// Every documented reason, forced on its own token: outcome class and code, and the status
/// the mock answered (one request each).
#[tokio::test]
async fn apns_every_documented_reason_is_classified() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let ch = channel(&mock);
    let cases: &[(&str, u16, &str)] = &[
        ("BadDeviceToken", 400, "dead_address"),
        ("DeviceTokenNotForTopic", 400, "dead_address"),
        ("BadCollapseId", 400, "payload"),
        ("BadExpirationDate", 400, "payload"),
        ("BadMessageId", 400, "payload"),
        ("BadPriority", 400, "payload"),
        ("DuplicateHeaders", 400, "payload"),
        ("InvalidPushType", 400, "payload"),
        ("MissingDeviceToken", 400, "payload"),
        ("PayloadEmpty", 400, "payload"),
        ("BadTopic", 400, "misconfigured"),
        ("MissingTopic", 400, "misconfigured"),
        ("TopicDisallowed", 400, "misconfigured"),
        ("IdleTimeout", 400, "retry"),
        ("BadCertificate", 403, "misconfigured"),
        ("BadCertificateEnvironment", 403, "misconfigured"),
        ("Forbidden", 403, "misconfigured"),
        ("BadPath", 404, "misconfigured"),
        ("MethodNotAllowed", 405, "misconfigured"),
        ("Unregistered", 410, "dead_address"),
        ("ExpiredToken", 410, "dead_address"),
        ("PayloadTooLarge", 413, "payload"),
        ("TooManyRequests", 429, "throttled"),
        ("TooManyProviderTokenUpdates", 429, "misconfigured"),
        ("InternalServerError", 500, "retry"),
        ("ServiceUnavailable", 503, "retry"),
        ("Shutdown", 503, "retry"),
    ];
    for (i, (reason, status, label)) in cases.iter().enumerate() {
        let t = device(100 + i);
        mock.mock.fail_address("apns", &t, Some(reason));
        let d = send(&ch, std::slice::from_ref(&t)).await;
        assert_eq!(d.outcome.label(), *label, "{reason}: {:?}", d.outcome);
        assert_eq!(
            d.outcome.detail().map(|x| x.code.as_str()),
            Some(*reason),
            "{reason}"
        );
        let answered: Vec<(u16, Option<String>)> = mock
            .mock
            .ledger("apns")
            .into_iter()
            .filter(|e| e.address == t)
            .map(|e| (e.status, e.error))
            .collect();
        assert_eq!(
            answered,
            vec![(*status, Some(reason.to_string()))],
            "{reason}"
        );
        assert_eq!(
            d.dead,
            if *label == "dead_address" {
                vec![t.clone()]
            } else {
                vec![]
            },
            "{reason}"
        );
    }

    // The platform's own throttle and outage.
    mock.mock.set_knobs(
        "apns",
        Knobs {
            rate_limit_per_sec: Some(1),
            ..Default::default()
        },
    );
    assert!(matches!(
        send(&ch, &[device(300)]).await.outcome,
        Outcome::Sent { .. }
    ));
    let d = send(&ch, &[device(301)]).await;
    assert!(
        matches!(&d.outcome, Outcome::Throttled { detail, .. } if detail.code == "TooManyRequests"),
        "{:?}",
        d.outcome
    );
    mock.mock.set_knobs(
        "apns",
        Knobs {
            outage: true,
            ..Default::default()
        },
    );
    let d = send(&ch, &[device(302)]).await;
    assert!(
        matches!(&d.outcome, Outcome::Retry { detail, .. } if detail.code == "ServiceUnavailable"),
        "{:?}",
        d.outcome
    );
    assert_eq!(mock.mock.ledger("apns").pop().map(|e| e.status), Some(503));
}

#[tokio::test]
async fn apns_expired_provider_token_gets_one_new_jwt_and_one_retry() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let ch = channel(&mock);
    assert!(matches!(
        send(&ch, &[device(1)]).await.outcome,
        Outcome::Sent { .. }
    ));
    mock_apns::expire_provider_tokens(&mock.mock);
    let d = send(&ch, &[device(2)]).await;
    assert!(matches!(d.outcome, Outcome::Sent { .. }), "{:?}", d.outcome);
    assert_eq!(
        d.meta.get("provider_token_renewed").map(String::as_str),
        Some("true")
    );
    let l = mock.mock.ledger("apns");
    assert_eq!(
        l.len(),
        3,
        "the first send, the refused one and its one retry"
    );
    let (a, b) = (bearer(&l[1]), bearer(&l[2]));
    assert_eq!(bearer(&l[0]), a);
    assert_eq!(
        (l[1].status, l[1].error.as_deref()),
        (403, Some("ExpiredProviderToken"))
    );
    assert_eq!(l[2].status, 200);
    assert_ne!(a, b, "the retry carries a new provider token");
    assert_eq!(l[1].address, l[2].address);
    assert_eq!(l[1].header("apns-id"), l[2].header("apns-id"));
    assert_eq!(mock_apns::seen_tokens(&mock.mock), vec![a, b.clone()]);
    // The new token is then used for later sends without further renewals.
    assert!(matches!(
        send(&ch, &[device(3)]).await.outcome,
        Outcome::Sent { .. }
    ));
    assert_eq!(bearer(&mock.mock.ledger("apns")[3]), b);
}

#[tokio::test]
async fn apns_provider_token_refused_twice_stops_the_channel() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let ch = channel(&mock);
    mock.mock.fail_next("apns", "InvalidProviderToken", 2);
    let d = send(&ch, &[device(1)]).await;
    assert!(
        matches!(&d.outcome, Outcome::Misconfigured { detail } if detail.code == "InvalidProviderToken"),
        "{:?}",
        d.outcome
    );
    let l = mock.mock.ledger("apns");
    assert_eq!(l.len(), 2, "exactly one retry");
    assert!(l.iter().all(|e| e.status == 403));
    assert_ne!(bearer(&l[0]), bearer(&l[1]));
}

#[tokio::test]
async fn apns_provider_token_is_shared_by_concurrent_sends() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let ch = channel(&mock);
    let tokens: Vec<String> = (0..5).map(device).collect();
    let all = futures::future::join_all((0..20).map(|_| {
        let ch = ch.clone();
        let tokens = tokens.clone();
        async move { send(&ch, &tokens).await }
    }))
    .await;
    for d in &all {
        assert!(matches!(d.outcome, Outcome::Sent { .. }), "{:?}", d.outcome);
        assert_eq!(d.meta.get("accepted").map(String::as_str), Some("5"));
    }
    let l = mock.mock.ledger("apns");
    assert_eq!(l.len(), 100);
    assert_eq!(mock_apns::seen_tokens(&mock.mock).len(), 1);
    assert!(l.iter().all(|e| e.status == 200));
}

#[tokio::test]
async fn apns_oversize_payload_is_refused_before_sending() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let ch = channel(&mock);
    let mut n = note();
    n.content.body = "x".repeat(4100);
    let d = send_note(&ch, &n, &[device(1)]).await;
    assert!(
        matches!(&d.outcome, Outcome::BadPayload { detail } if detail.code == "PayloadTooLarge"),
        "{:?}",
        d.outcome
    );
    assert!(mock.mock.ledger("apns").is_empty());
}

#[tokio::test]
async fn apns_dead_token_among_several_is_not_sent_to_again() {
    let s = stack(MockConfig::default(), |cfg, mock| {
        cfg.channels.apns = Some(config(mock));
    })
    .await;
    let (live, dead) = (device(1), device(2));
    s.mock
        .mock
        .fail_address("apns", &dead, Some("Unregistered"));
    let request = || proto::SendRequest {
        recipient: Some(proto::Recipient {
            apns_tokens: vec![live.clone(), dead.clone()],
            ..Default::default()
        }),
        channels: vec![proto::Channel::Apns as i32],
        content: Some(proto::Content {
            title: "Hi".into(),
            body: "Shipped".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let first = s
        .herald
        .client()
        .send(request())
        .await
        .expect("send")
        .into_inner();
    s.herald
        .wait_status(&first.notification_id, SENT, Duration::from_secs(10))
        .await;
    let l = s.mock.mock.ledger("apns");
    assert_eq!(l.len(), 2);
    let gone = l.iter().find(|e| e.address == dead).expect("sent to dead");
    assert_eq!(gone.status, 410);
    assert!(l.iter().any(|e| e.address == live && e.status == 200));
    wait_dead(&s, model::Channel::Apns, &dead).await;

    let second = s
        .herald
        .client()
        .send(request())
        .await
        .expect("send")
        .into_inner();
    s.herald
        .wait_status(&second.notification_id, SENT, Duration::from_secs(10))
        .await;
    let l = s.mock.mock.ledger("apns");
    assert_eq!(l.len(), 3, "the dead token got no second request");
    assert_eq!((l[2].address.as_str(), l[2].status), (live.as_str(), 200));
    assert_eq!(
        l[2].header("apns-id"),
        Some(uuid_of(&second.notification_id).as_str())
    );
}

/// The mock speaks for APNs, which takes HTTP/2 only: an HTTP/1.1 request is refused, so the
/// 200s above prove the channel spoke HTTP/2.
#[tokio::test]
async fn apns_mock_refuses_http1() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let r = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client")
        .post(format!("{}/3/device/{}", mock.base_url(), device(1)))
        .body("{}")
        .send()
        .await
        .expect("http/1.1 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status().as_u16(), 505);
}
