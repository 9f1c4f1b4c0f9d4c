//! FCM against the mock platform: the exact `messages:send` request and OAuth2 assertion, every
//! documented error through the real channel and the real mock, access-token caching, renewal
//! before expiry and after a refusal, and a dead token among several.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald::channels::{fcm, Channel, Deps, SendContext};
use herald::config::fcm::FcmConfig;
use herald::model::{self, ContactKey, Content, Notification, Outcome};
use herald::proto;
use herald::store::{RedisStore, Store};
use herald_mock::fcm as mock_fcm;
use herald_mock::{Knobs, MockConfig, MockPlatform};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::harness::eventually;
use crate::support::*;

const PUBLIC_KEY: &[u8] = include_bytes!("../fixtures/fcm-service-account.pub.pem");
const SENT: i32 = proto::Status::Sent as i32;

fn token(n: usize) -> String {
    format!("fcm-token-{n:04}-dGVzdC1kZXZpY2UtcmVnaXN0cmF0aW9u")
}

/// The fixture service account with `token_uri` pointed at the mock, in `dir`.
fn service_account(dir: &tempfile::TempDir, mock: &MockPlatform) -> PathBuf {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fcm-service-account.json"),
    )
    .expect("fixture service account");
    let mut sa: serde_json::Value = serde_json::from_str(&text).expect("fixture is json");
    sa["token_uri"] = format!("{}/token", mock.base_url()).into();
    let p = dir.path().join("sa.json");
    std::fs::write(&p, sa.to_string()).expect("write service account");
    p
}

fn config(dir: &tempfile::TempDir, mock: &MockPlatform) -> FcmConfig {
    FcmConfig {
        enabled: true,
        base_url: mock.base_url(),
        service_account_file: service_account(dir, mock),
        project_id: None,
    }
}

/// The real channel, built as the app builds it, against the mock.
fn channel(dir: &tempfile::TempDir, mock: &MockPlatform) -> Arc<dyn Channel> {
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let deps = Deps {
        receipts: tx,
        public_url: "http://127.0.0.1:1".into(),
        request_timeout: Duration::from_secs(5),
    };
    let cfg = config(dir, mock);
    cfg.validate().expect("config is valid");
    fcm::build(&cfg, &deps).expect("channel builds")
}

fn note(tokens: &[String]) -> Notification {
    let recipient = model::Recipient {
        fcm_tokens: tokens.to_vec(),
        ..Default::default()
    };
    Notification {
        id: model::make_id(1),
        recipient,
        route: vec![model::Channel::Fcm],
        content: Content {
            title: "Hi".into(),
            body: "Shipped".into(),
            ..Default::default()
        },
        created_at: model::now_ms(),
        ..Default::default()
    }
}

async fn send(ch: &Arc<dyn Channel>, tokens: &[String]) -> herald::channels::Delivery {
    let n = note(tokens);
    let ctx = SendContext {
        attempt: 1,
        addresses: tokens,
        last_inbound: 0,
        now: model::now_ms(),
    };
    ch.send(&n, &ctx).await
}

fn bearer(e: &herald_mock::LedgerEntry) -> String {
    e.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string()
}

fn message_requests(mock: &MockPlatform) -> Vec<herald_mock::LedgerEntry> {
    mock.mock.ledger("fcm")
}

#[derive(serde::Deserialize)]
struct Assertion {
    iss: String,
    scope: String,
    aud: String,
    iat: i64,
    exp: i64,
}

#[tokio::test]
async fn fcm_sends_the_exact_request_with_a_valid_oauth_assertion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = stack(MockConfig::default(), |cfg, mock| {
        cfg.channels.fcm = Some(config(&dir, mock));
    })
    .await;
    let expire = ts_in(3_600_000);
    let r = s
        .herald
        .client()
        .send(proto::SendRequest {
            recipient: Some(proto::Recipient {
                fcm_tokens: vec![token(1)],
                ..Default::default()
            }),
            channels: vec![proto::Channel::Fcm as i32],
            content: Some(proto::Content {
                title: "Order shipped".into(),
                body: "Your parcel is on its way".into(),
                image_url: "https://img.example/parcel.png".into(),
                data: [("order".to_string(), "42".to_string())].into(),
                ..Default::default()
            }),
            priority: proto::Priority::High as i32,
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

    // The OAuth2 exchange: a form POST to token_uri with an RS256 assertion Google accepts.
    let oauth = s.mock.mock.ledger(mock_fcm::OAUTH);
    assert_eq!(oauth.len(), 1, "one access token for one send");
    let t = &oauth[0];
    assert_eq!(
        (t.method.as_str(), t.path.as_str(), t.status),
        ("POST", "/token", 200)
    );
    assert_eq!(
        t.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = t.form();
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .expect("form field")
    };
    assert_eq!(
        field("grant_type"),
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let assertion = field("assertion");
    let header = jsonwebtoken::decode_header(&assertion).expect("jwt header");
    assert_eq!(header.alg, Algorithm::RS256);
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[format!("{}/token", s.mock.base_url())]);
    let claims = jsonwebtoken::decode::<Assertion>(
        &assertion,
        &DecodingKey::from_rsa_pem(PUBLIC_KEY).expect("public key"),
        &v,
    )
    .expect("the assertion verifies with the service account's public key")
    .claims;
    assert_eq!(claims.iss, mock_fcm::TEST_CLIENT_EMAIL);
    assert_eq!(
        claims.scope,
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    assert_eq!(claims.aud, format!("{}/token", s.mock.base_url()));
    assert_eq!(claims.exp - claims.iat, 3600);
    assert!((claims.iat - model::now_ms() / 1000).abs() < 30);

    // The send itself.
    let sends = message_requests(&s.mock);
    assert_eq!(sends.len(), 1);
    let e = &sends[0];
    assert_eq!(e.method, "POST");
    assert_eq!(e.path, "/v1/projects/herald-test/messages:send");
    assert_eq!(e.status, 200);
    assert_eq!(e.header("content-type"), Some("application/json"));
    assert_eq!(bearer(e), mock_fcm::minted_tokens(&s.mock.mock)[0]);
    let body = e.json();
    let m = &body["message"];
    assert_eq!(m["token"], token(1).as_str());
    assert_eq!(m["notification"]["title"], "Order shipped");
    assert_eq!(m["notification"]["body"], "Your parcel is on its way");
    assert_eq!(m["notification"]["image"], "https://img.example/parcel.png");
    assert_eq!(m["data"], serde_json::json!({"order": "42"}));
    assert_eq!(m["android"]["priority"], "HIGH");
    let ttl: i64 = m["android"]["ttl"]
        .as_str()
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse().ok())
        .expect("ttl in seconds");
    assert!((3500..=3600).contains(&ttl), "ttl {ttl}");
    assert_eq!(
        m["apns"]["headers"]["apns-expiration"],
        expire.seconds.to_string()
    );

    // The provider id is the message name FCM returned.
    assert_eq!(n.attempts.len(), 1);
    let name = n.attempts[0].provider_message_id.clone();
    assert!(name.starts_with("projects/herald-test/messages/"), "{name}");
}

/// Every documented FCM error, forced on its own token: the outcome class and code, and the
/// status the mock answered.
#[tokio::test]
async fn fcm_every_documented_error_is_classified() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let ch = channel(&dir, &mock);
    let cases: &[(&str, u16, &str, &str)] = &[
        ("UNREGISTERED", 404, "dead_address", "UNREGISTERED"),
        (
            "INVALID_ARGUMENT:token",
            400,
            "dead_address",
            "INVALID_ARGUMENT",
        ),
        ("INVALID_ARGUMENT", 400, "payload", "INVALID_ARGUMENT"),
        (
            "SENDER_ID_MISMATCH",
            403,
            "dead_address",
            "SENDER_ID_MISMATCH",
        ),
        ("QUOTA_EXCEEDED", 429, "throttled", "QUOTA_EXCEEDED"),
        ("UNAVAILABLE", 503, "retry", "UNAVAILABLE"),
        ("INTERNAL", 500, "retry", "INTERNAL"),
        (
            "THIRD_PARTY_AUTH_ERROR",
            401,
            "misconfigured",
            "THIRD_PARTY_AUTH_ERROR",
        ),
    ];
    for (i, (forced, status, label, code)) in cases.iter().enumerate() {
        let t = token(100 + i);
        mock.mock.fail_address("fcm", &t, Some(forced));
        let d = send(&ch, std::slice::from_ref(&t)).await;
        assert_eq!(d.outcome.label(), *label, "{forced}: {:?}", d.outcome);
        assert_eq!(
            d.outcome.detail().map(|x| x.code.as_str()),
            Some(*code),
            "{forced}"
        );
        let answered: Vec<u16> = message_requests(&mock)
            .iter()
            .filter(|e| e.address == t)
            .map(|e| e.status)
            .collect();
        assert_eq!(
            answered,
            vec![*status],
            "{forced}: one request, answered {status}"
        );
        match (&d.outcome, *forced) {
            (Outcome::Throttled { after, .. }, _) => {
                assert!(
                    after.is_some_and(|a| a >= Duration::from_secs(60)),
                    "{after:?}"
                )
            }
            (Outcome::Retry { after, .. }, "UNAVAILABLE") => {
                assert_eq!(*after, Some(Duration::from_secs(1)), "Retry-After honoured")
            }
            (Outcome::DeadAddress { .. }, _) => assert_eq!(d.dead, vec![t.clone()]),
            _ => assert!(d.dead.is_empty()),
        }
    }

    // The platform's own throttle and outage knobs.
    mock.mock.set_knobs(
        "fcm",
        Knobs {
            rate_limit_per_sec: Some(1),
            ..Default::default()
        },
    );
    let first = send(&ch, &[token(200)]).await;
    assert!(matches!(first.outcome, Outcome::Sent { .. }));
    let second = send(&ch, &[token(201)]).await;
    assert!(
        matches!(&second.outcome, Outcome::Throttled { detail, .. } if detail.code == "QUOTA_EXCEEDED"),
        "{:?}",
        second.outcome
    );
    mock.mock.set_knobs(
        "fcm",
        Knobs {
            outage: true,
            ..Default::default()
        },
    );
    let down = send(&ch, &[token(202)]).await;
    assert!(
        matches!(&down.outcome, Outcome::Retry { after: Some(a), detail } if detail.code == "UNAVAILABLE" && *a == Duration::from_secs(1)),
        "{:?}",
        down.outcome
    );
    let last = message_requests(&mock).pop().expect("ledger");
    assert_eq!(
        (last.status, last.header("authorization").is_some()),
        (503, true)
    );
}

#[tokio::test]
async fn fcm_payload_checks_happen_before_sending() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let ch = channel(&dir, &mock);
    let tokens = vec![token(1)];
    let mut n = note(&tokens);
    n.content.data.insert("blob".into(), "x".repeat(5000));
    let ctx = SendContext {
        attempt: 1,
        addresses: &tokens,
        last_inbound: 0,
        now: model::now_ms(),
    };
    let d = ch.send(&n, &ctx).await;
    assert!(
        matches!(&d.outcome, Outcome::BadPayload { detail } if detail.code == "payload_too_large"),
        "{:?}",
        d.outcome
    );
    assert!(message_requests(&mock).is_empty());
    assert_eq!(mock_fcm::tokens_minted(&mock.mock), 0);
}

#[tokio::test]
async fn fcm_access_token_is_minted_once_for_many_concurrent_sends() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let ch = channel(&dir, &mock);
    let all = futures::future::join_all((0..40).map(|i| {
        let ch = ch.clone();
        async move { send(&ch, &[token(i)]).await }
    }))
    .await;
    assert!(all
        .iter()
        .all(|d| matches!(d.outcome, Outcome::Sent { .. })));
    // And some more, one after another.
    for i in 40..50 {
        assert!(matches!(
            send(&ch, &[token(i)]).await.outcome,
            Outcome::Sent { .. }
        ));
    }
    assert_eq!(mock_fcm::tokens_minted(&mock.mock), 1);
    let minted = mock_fcm::minted_tokens(&mock.mock);
    let sends = message_requests(&mock);
    assert_eq!(sends.len(), 50);
    assert!(sends
        .iter()
        .all(|e| bearer(e) == minted[0] && e.status == 200));
}

#[tokio::test]
async fn fcm_access_token_is_renewed_before_it_expires() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    mock_fcm::set_token_lifetime(&mock.mock, Duration::from_secs(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let ch = channel(&dir, &mock);
    assert!(matches!(
        send(&ch, &[token(1)]).await.outcome,
        Outcome::Sent { .. }
    ));
    assert_eq!(mock_fcm::tokens_minted(&mock.mock), 1);
    // Keep sending; the channel renews on its own once half the 2 s life is gone.
    let renewed = eventually(Duration::from_secs(10), || async {
        let d = send(&ch, &[token(2)]).await;
        assert!(matches!(d.outcome, Outcome::Sent { .. }), "{:?}", d.outcome);
        (mock_fcm::tokens_minted(&mock.mock) >= 2).then_some(())
    })
    .await;
    assert!(renewed.is_some(), "the token was renewed");
    // Renewed ahead of time: FCM never had to refuse a token.
    let sends = message_requests(&mock);
    assert!(sends.iter().all(|e| e.status == 200));
    let minted = mock_fcm::minted_tokens(&mock.mock);
    assert_eq!(bearer(sends.last().expect("sent")), minted[1]);
    assert_ne!(minted[0], minted[1]);
}

#[tokio::test]
async fn fcm_refused_access_token_is_renewed_once_and_the_send_retried() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let ch = channel(&dir, &mock);
    assert!(matches!(
        send(&ch, &[token(1)]).await.outcome,
        Outcome::Sent { .. }
    ));
    mock_fcm::revoke_tokens(&mock.mock);
    let d = send(&ch, &[token(2)]).await;
    assert!(matches!(d.outcome, Outcome::Sent { .. }), "{:?}", d.outcome);
    assert_eq!(
        d.meta.get("oauth_renewed").map(String::as_str),
        Some("true")
    );
    let minted = mock_fcm::minted_tokens(&mock.mock);
    assert_eq!(minted.len(), 2);
    let sends = message_requests(&mock);
    let statuses: Vec<(u16, String)> = sends.iter().map(|e| (e.status, bearer(e))).collect();
    assert_eq!(
        statuses,
        vec![
            (200, minted[0].clone()),
            (401, minted[0].clone()),
            (200, minted[1].clone())
        ]
    );

    // Refused again after the renewal: auth, after exactly one retry.
    mock.mock.fail_next("fcm", "UNAUTHENTICATED", 2);
    let d = send(&ch, &[token(3)]).await;
    assert!(
        matches!(&d.outcome, Outcome::Misconfigured { detail } if detail.code == "UNAUTHENTICATED"),
        "{:?}",
        d.outcome
    );
    assert_eq!(message_requests(&mock).len(), 5);
    assert_eq!(mock_fcm::tokens_minted(&mock.mock), 3);
}

#[tokio::test]
async fn fcm_token_endpoint_refusal_stops_before_sending() {
    let mock = MockPlatform::start(MockConfig::default())
        .await
        .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let ch = channel(&dir, &mock);
    mock.mock.fail_next(mock_fcm::OAUTH, "invalid_grant", 1);
    let d = send(&ch, &[token(1)]).await;
    assert!(
        matches!(&d.outcome, Outcome::Misconfigured { detail } if detail.code == "oauth_invalid_grant"),
        "{:?}",
        d.outcome
    );
    assert!(message_requests(&mock).is_empty());
    // The endpoint being down is transient.
    mock.mock.set_knobs(
        mock_fcm::OAUTH,
        Knobs {
            outage: true,
            ..Default::default()
        },
    );
    assert!(matches!(
        send(&ch, &[token(1)]).await.outcome,
        Outcome::Retry { .. }
    ));
    // Senders waiting for the same mint share its failure: one token request, not twenty.
    let before = mock.mock.ledger(mock_fcm::OAUTH).len();
    let all = futures::future::join_all((0..20).map(|i| {
        let ch = ch.clone();
        async move { send(&ch, &[token(10 + i)]).await }
    }))
    .await;
    assert!(all
        .iter()
        .all(|d| matches!(d.outcome, Outcome::Retry { .. })));
    assert_eq!(mock.mock.ledger(mock_fcm::OAUTH).len(), before + 1);
    mock.mock.set_knobs(mock_fcm::OAUTH, Knobs::default());
    assert!(matches!(
        send(&ch, &[token(1)]).await.outcome,
        Outcome::Sent { .. }
    ));
}

#[tokio::test]
async fn fcm_dead_token_among_several_is_not_sent_to_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = stack(MockConfig::default(), |cfg, mock| {
        cfg.channels.fcm = Some(config(&dir, mock));
    })
    .await;
    let (live, dead) = (token(1), token(2));
    s.mock.mock.fail_address("fcm", &dead, Some("UNREGISTERED"));
    let request = || proto::SendRequest {
        recipient: Some(proto::Recipient {
            fcm_tokens: vec![live.clone(), dead.clone()],
            ..Default::default()
        }),
        channels: vec![proto::Channel::Fcm as i32],
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
    let sends = message_requests(&s.mock);
    assert_eq!(sends.len(), 2);
    assert!(sends.iter().any(|e| e.address == dead && e.status == 404));
    assert!(sends.iter().any(|e| e.address == live && e.status == 200));
    wait_dead(&s, model::Channel::Fcm, &dead).await;

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
    let sends = message_requests(&s.mock);
    assert_eq!(sends.len(), 3, "the dead token got no second request");
    assert_eq!(sends[2].address, live);
    assert_eq!(sends[2].status, 200);
}

/// Waits until the store has `address` marked dead (dispatch records it right after the
/// batch finishes).
pub async fn wait_dead(s: &Stack, channel: model::Channel, address: &str) {
    let store = RedisStore::connect(&test_config(Some(s.redis.url())).redis)
        .await
        .expect("store");
    let key = ContactKey::new(channel, address);
    let dead = eventually(Duration::from_secs(10), || async {
        let st = store
            .contacts(std::slice::from_ref(&key))
            .await
            .expect("contacts");
        st.first().filter(|c| c.dead).map(|_| ())
    })
    .await;
    assert!(dead.is_some(), "{address} was never marked dead");
}
