//! Web Push against the mock push service: the exact request, the payload decrypted with the
//! subscription's own key (an RFC 8291 decryption written here, independent of Herald's), the
//! VAPID token, every documented answer, and dead subscriptions.

use std::path::PathBuf;
use std::time::Duration;

use aes_gcm::aead::Aead;
use aes_gcm::{Aes128Gcm, KeyInit};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald::config::webpush::WebpushConfig;
use herald::config::HumanDuration;
use herald::proto;
use herald_mock::{webpush as mockpush, MockConfig};
use hkdf::Hkdf;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use sha2::Sha256;

use crate::harness::eventually;
use crate::support::*;

const SUBJECT: &str = "mailto:ops@example.com";
const SENT: i32 = proto::Status::Sent as i32;
const SUPPRESSED: i32 = proto::Status::Suppressed as i32;

fn key_file() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webpush/vapid_test_key.pem"
    ))
}

/// The fixture's VAPID public key, derived here from the PEM.
fn vapid_public_key() -> String {
    let pem = std::fs::read_to_string(key_file()).expect("fixture");
    let k = p256::SecretKey::from_sec1_pem(&pem).expect("fixture is a SEC1 P-256 key");
    URL_SAFE_NO_PAD.encode(k.public_key().to_encoded_point(false).as_bytes())
}

/// A browser's subscription: its own key pair and auth secret, made by the test.
struct Sub {
    id: String,
    endpoint: String,
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl Sub {
    fn new(s: &Stack, id: &str) -> Sub {
        let secret = loop {
            if let Ok(k) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                break k;
            }
        };
        Sub {
            id: id.to_string(),
            endpoint: mockpush::endpoint(&s.mock.base_url(), id),
            secret,
            auth: rand::random(),
        }
    }

    fn proto(&self) -> proto::WebPushSubscription {
        proto::WebPushSubscription {
            endpoint: self.endpoint.clone(),
            p256dh: URL_SAFE_NO_PAD
                .encode(self.secret.public_key().to_encoded_point(false).as_bytes()),
            auth: URL_SAFE_NO_PAD.encode(self.auth),
        }
    }
}

async fn start() -> Stack {
    stack(MockConfig::default(), |cfg, _| {
        cfg.channels.webpush = Some(WebpushConfig {
            enabled: true,
            vapid_private_key_file: key_file(),
            subject: SUBJECT.into(),
            default_ttl_secs: 3600,
            // The mock speaks plain HTTP on loopback.
            allow_http: true,
        });
        cfg.dispatch.auth_pause = HumanDuration(Duration::from_millis(200));
    })
    .await
}

fn content() -> proto::Content {
    proto::Content {
        title: "Order shipped".into(),
        body: "Your parcel is on its way".into(),
        image_url: "https://example.com/parcel.png".into(),
        actions: vec![proto::Action {
            label: "Track".into(),
            url: "https://example.com/track/42".into(),
        }],
        data: [("order".to_string(), "42".to_string())].into(),
        collapse_id: "order-42".into(),
        ..Default::default()
    }
}

fn request(subs: &[&Sub]) -> proto::SendRequest {
    proto::SendRequest {
        recipient: Some(proto::Recipient {
            webpush_subscriptions: subs.iter().map(|s| s.proto()).collect(),
            ..Default::default()
        }),
        channels: vec![proto::Channel::Webpush as i32],
        content: Some(content()),
        priority: proto::Priority::High as i32,
        ..Default::default()
    }
}

async fn send(s: &Stack, req: proto::SendRequest) -> String {
    s.herald
        .client()
        .send(req)
        .await
        .expect("send accepted")
        .into_inner()
        .notification_id
}

/// Waits until the notification has at least `n` attempts.
async fn attempts(h: &Herald, id: &str, n: usize) -> proto::Notification {
    eventually(Duration::from_secs(10), || async move {
        let x = h.get(id).await;
        (x.attempts.len() >= n).then_some(x)
    })
    .await
    .unwrap_or_else(|| panic!("{id} never reached {n} attempts"))
}

/// RFC 8291 §3.4 and RFC 8188 §2, from the receiving side: what the browser does with the
/// subscription's private key and auth secret.
fn decrypt(body: &[u8], ua: &p256::SecretKey, auth: &[u8; 16]) -> Result<Vec<u8>, String> {
    let salt = &body[..16];
    let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
    assert_eq!(body[20], 65, "idlen");
    let as_public = &body[21..86];
    let sender = p256::PublicKey::from_sec1_bytes(as_public).expect("keyid is a P-256 key");
    let shared = p256::ecdh::diffie_hellman(ua.to_nonzero_scalar(), sender.as_affine());
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(ua.public_key().to_encoded_point(false).as_bytes());
    info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&info, &mut ikm)
        .expect("32 bytes");
    let hk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    hk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .expect("16 bytes");
    let mut nonce = [0u8; 12];
    hk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .expect("12 bytes");
    let record = &body[86..];
    assert!(record.len() <= rs, "one record of at most rs bytes");
    let mut plain = Aes128Gcm::new(aes_gcm::Key::<Aes128Gcm>::from_slice(&cek))
        .decrypt(aes_gcm::Nonce::from_slice(&nonce), record)
        .map_err(|_| "the GCM tag does not verify".to_string())?;
    while plain.last() == Some(&0) {
        plain.pop();
    }
    match plain.pop() {
        Some(2) => Ok(plain),
        other => Err(format!("bad last-record delimiter {other:?}")),
    }
}

#[tokio::test]
async fn webpush_request_is_exact() {
    let s = start().await;
    let sub = Sub::new(&s, "sub-exact");
    let mut req = request(&[&sub]);
    req.expire_at = Some(ts_in(600_000));
    let id = send(&s, req).await;
    let n = s
        .herald
        .wait_status(&id, SENT, Duration::from_secs(10))
        .await;

    let ledger = s.mock.mock.ledger("webpush");
    assert_eq!(ledger.len(), 1);
    let e = &ledger[0];
    assert_eq!(e.method, "POST");
    assert_eq!(e.path, "/push/sub-exact");
    assert_eq!(e.address, "sub-exact");
    assert_eq!(e.status, 201);
    let ttl: u32 = e
        .header("ttl")
        .expect("TTL")
        .parse()
        .expect("TTL is a number");
    assert!(
        (590..=600).contains(&ttl),
        "TTL counts down to expire_at: {ttl}"
    );
    assert_eq!(e.header("urgency"), Some("high"));
    assert_eq!(e.header("topic"), Some("order-42"));
    assert_eq!(e.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(e.header("content-type"), Some("application/octet-stream"));
    let authz = e.header("authorization").expect("Authorization");
    assert!(authz.starts_with("vapid t="), "{authz}");
    assert!(
        authz.ends_with(&format!(", k={}", vapid_public_key())),
        "{authz}"
    );

    // Body: salt(16) | rs(4) | idlen(1) = 65 | keyid(65) | ciphertext, at most 4096 bytes.
    let b = &e.body;
    assert!(b.len() <= 4096);
    assert_eq!(
        e.header("content-length"),
        Some(b.len().to_string().as_str())
    );
    let rs = u32::from_be_bytes([b[16], b[17], b[18], b[19]]) as usize;
    assert_eq!(b[20], 65);
    assert_eq!(b[21], 0x04, "keyid is an uncompressed point");
    assert!(p256::PublicKey::from_sec1_bytes(&b[21..86]).is_ok());
    let ciphertext = b.len() - 86;
    assert!(
        ciphertext >= 17 && ciphertext <= rs,
        "one record: {ciphertext} of rs {rs}"
    );

    // The attempt keeps the push service's message URL.
    assert_eq!(n.attempts.len(), 1);
    let a = &n.attempts[0];
    assert_eq!(a.outcome, "sent");
    assert!(
        a.provider_message_id
            .starts_with(&format!("{}/m/", s.mock.base_url())),
        "{}",
        a.provider_message_id
    );
}

#[tokio::test]
async fn webpush_payload_decrypts_with_the_subscription_key() {
    let s = start().await;
    let a = Sub::new(&s, "sub-a");
    let b = Sub::new(&s, "sub-b");
    let id = send(&s, request(&[&a, &b])).await;
    s.herald
        .wait_status(&id, SENT, Duration::from_secs(10))
        .await;
    let ledger = s.mock.mock.ledger("webpush");
    assert_eq!(ledger.len(), 2);
    let body_for = |sub: &Sub| {
        ledger
            .iter()
            .find(|e| e.address == sub.id)
            .map(|e| e.body.clone())
            .expect("a push per subscription")
    };
    let (ba, bb) = (body_for(&a), body_for(&b));
    // Fresh salt and ephemeral key per message.
    assert_ne!(ba[..16], bb[..16]);
    assert_ne!(ba[21..86], bb[21..86]);
    let expected = serde_json::json!({
        "notification_id": id,
        "title": "Order shipped",
        "body": "Your parcel is on its way",
        "image": "https://example.com/parcel.png",
        "actions": [{"action": "action-0", "title": "Track", "url": "https://example.com/track/42"}],
        "data": {"order": "42"},
    });
    for (sub, body) in [(&a, &ba), (&b, &bb)] {
        let plain = decrypt(body, &sub.secret, &sub.auth).expect("decrypts");
        let got: serde_json::Value = serde_json::from_slice(&plain).expect("JSON payload");
        assert_eq!(got, expected);
    }
    // The other subscription's key does not open it.
    assert!(decrypt(&ba, &b.secret, &b.auth).is_err());
}

#[tokio::test]
async fn webpush_vapid_token_verifies() {
    let s = start().await;
    let a = Sub::new(&s, "sub-1");
    let b = Sub::new(&s, "sub-2");
    let id = send(&s, request(&[&a, &b])).await;
    s.herald
        .wait_status(&id, SENT, Duration::from_secs(10))
        .await;
    let ledger = s.mock.mock.ledger("webpush");
    assert_eq!(ledger.len(), 2);
    let parse = |v: &str| {
        let (t, k) = mockpush::parse_vapid(v).expect("vapid t=…, k=…");
        (t.to_string(), k.to_string())
    };
    let (token, k) = parse(ledger[0].header("authorization").expect("auth"));
    assert_eq!(k, vapid_public_key());
    let header = jsonwebtoken::decode_header(&token).expect("JWT header");
    assert_eq!(header.alg, Algorithm::ES256);
    let point = URL_SAFE_NO_PAD.decode(&k).expect("k is base64url");
    let mut v = Validation::new(Algorithm::ES256);
    let origin = s.mock.base_url();
    v.set_audience(&[origin.as_str()]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims =
        jsonwebtoken::decode::<serde_json::Value>(&token, &DecodingKey::from_ec_der(&point), &v)
            .expect("signed by k, for this origin, not expired")
            .claims;
    assert_eq!(claims["aud"], origin.as_str());
    assert_eq!(claims["sub"], SUBJECT);
    let exp = claims["exp"].as_i64().expect("exp");
    let now = herald::model::now_ms() / 1000;
    assert!(
        exp > now + 11 * 3600 && exp <= now + 24 * 3600,
        "exp {exp} now {now}"
    );
    // One token per audience: both pushes to this origin carried the same one.
    let (token2, _) = parse(ledger[1].header("authorization").expect("auth"));
    assert_eq!(token2, token);
}

/// Forces the push service to answer `code` once; checks Herald's attempt and final status.
async fn answered(code: &str, outcome: &str, class: proto::ErrorClass, final_status: i32) {
    let s = start().await;
    let sub = Sub::new(&s, "sub-1");
    s.mock.mock.fail_next("webpush", code, 1);
    let id = send(&s, request(&[&sub])).await;
    let n = s
        .herald
        .wait_status(&id, final_status, Duration::from_secs(15))
        .await;
    let first = &n.attempts[0];
    assert_eq!(first.outcome, outcome, "{code}: {first:?}");
    assert_eq!(first.error_class, class as i32, "{code}");
    assert_eq!(first.error_code, code);
    let ledger = s.mock.mock.ledger("webpush");
    assert_eq!(ledger[0].status.to_string(), code);
    if final_status == SENT {
        // Retried after the answer, and taken the second time.
        assert_eq!(n.attempts.len(), 2, "{code}");
        assert_eq!(n.attempts[1].outcome, "sent");
        assert_eq!(ledger.len(), 2);
        assert_eq!(ledger[1].status, 201);
    } else {
        assert_eq!(n.attempts.len(), 1, "{code}: never retried");
        assert_eq!(ledger.len(), 1);
    }
}

#[tokio::test]
async fn webpush_400_is_a_payload_bug() {
    answered("400", "payload", proto::ErrorClass::Payload, FAILED).await;
}

#[tokio::test]
async fn webpush_401_pauses_the_channel_then_retries() {
    answered("401", "misconfigured", proto::ErrorClass::Auth, SENT).await;
}

#[tokio::test]
async fn webpush_403_pauses_the_channel_then_retries() {
    answered("403", "misconfigured", proto::ErrorClass::Auth, SENT).await;
}

#[tokio::test]
async fn webpush_404_is_a_dead_subscription() {
    answered(
        "404",
        "dead_address",
        proto::ErrorClass::DeadAddress,
        FAILED,
    )
    .await;
}

#[tokio::test]
async fn webpush_410_is_a_dead_subscription() {
    answered(
        "410",
        "dead_address",
        proto::ErrorClass::DeadAddress,
        FAILED,
    )
    .await;
}

#[tokio::test]
async fn webpush_413_is_a_payload_bug() {
    answered("413", "payload", proto::ErrorClass::Payload, FAILED).await;
}

#[tokio::test]
async fn webpush_429_is_throttled_then_retried() {
    answered("429", "throttled", proto::ErrorClass::Throttled, SENT).await;
}

#[tokio::test]
async fn webpush_500_is_retried() {
    answered("500", "retry", proto::ErrorClass::Transient, SENT).await;
}

#[tokio::test]
async fn webpush_503_is_retried() {
    answered("503", "retry", proto::ErrorClass::Transient, SENT).await;
}

#[tokio::test]
async fn webpush_403_for_a_subscription_made_with_another_key() {
    let s = start().await;
    let sub = Sub::new(&s, "sub-1");
    // The browser subscribed with some other application server key: the mock refuses our
    // VAPID key on its own, as Chrome's push service does.
    let other = p256::SecretKey::from_slice(&[7u8; 32]).expect("key");
    let other = URL_SAFE_NO_PAD.encode(other.public_key().to_encoded_point(false).as_bytes());
    mockpush::bind_key(&s.mock.mock, &sub.id, &other);
    let id = send(&s, request(&[&sub])).await;
    let n = attempts(&s.herald, &id, 1).await;
    assert_eq!(n.attempts[0].outcome, "misconfigured");
    assert_eq!(n.attempts[0].error_code, "403");
    assert_eq!(s.mock.mock.ledger("webpush")[0].status, 403);
    // The operator fixes the key: the held notification goes out.
    mockpush::bind_key(&s.mock.mock, &sub.id, &vapid_public_key());
    let n = s
        .herald
        .wait_status(&id, SENT, Duration::from_secs(15))
        .await;
    assert_eq!(n.attempts.len(), 2);
}

#[tokio::test]
async fn webpush_gone_subscription_is_marked_dead_and_skipped() {
    let s = start().await;
    let gone = Sub::new(&s, "sub-gone");
    let live = Sub::new(&s, "sub-live");
    mockpush::unsubscribe(&s.mock.mock, &gone.id);

    let first = send(&s, request(&[&gone, &live])).await;
    s.herald
        .wait_status(&first, SENT, Duration::from_secs(10))
        .await;
    let ledger = s.mock.mock.ledger("webpush");
    let mut seen: Vec<_> = ledger
        .iter()
        .map(|e| (e.address.clone(), e.status))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![("sub-gone".to_string(), 410), ("sub-live".to_string(), 201)]
    );

    // The next notification to both goes only to the live one.
    let second = send(&s, request(&[&gone, &live])).await;
    s.herald
        .wait_status(&second, SENT, Duration::from_secs(10))
        .await;
    let ledger = s.mock.mock.ledger("webpush");
    assert_eq!(ledger.len(), 3);
    assert_eq!(ledger[2].address, "sub-live");
    assert_eq!(ledger[2].status, 201);

    // And one to the gone subscription alone is suppressed without a request.
    let third = send(&s, request(&[&gone])).await;
    s.herald
        .wait_status(&third, SUPPRESSED, Duration::from_secs(10))
        .await;
    assert_eq!(s.mock.mock.ledger("webpush").len(), 3);
}

#[tokio::test]
async fn webpush_oversize_payload_fails_before_any_request() {
    let s = start().await;
    let sub = Sub::new(&s, "sub-1");
    let mut req = request(&[&sub]);
    if let Some(c) = req.content.as_mut() {
        c.body = "x".repeat(4000);
    }
    let id = send(&s, req).await;
    let n = s
        .herald
        .wait_status(&id, FAILED, Duration::from_secs(10))
        .await;
    assert_eq!(n.attempts[0].outcome, "payload");
    assert_eq!(n.attempts[0].error_code, "payload_too_large");
    assert!(s.mock.mock.ledger("webpush").is_empty());
}
