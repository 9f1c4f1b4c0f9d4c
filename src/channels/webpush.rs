//! `webpush`: Web Push (RFC 8030) to every live subscription of the recipient, the payload
//! encrypted per RFC 8291 (`aes128gcm`, RFC 8188) and each request signed with VAPID
//! (RFC 8292).
//!
//! Encryption comes from `web-push-native` (pure Rust on the RustCrypto crates, checked
//! against RFC 8291's worked example): per message a fresh ephemeral P-256 key and a fresh
//! 16-byte salt, ECDH with the subscription's `p256dh`, HKDF with its `auth` secret,
//! AES-128-GCM in one record. VAPID tokens are ES256 JWTs signed with `jsonwebtoken`, one per
//! push service origin, cached until an hour before they expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde_json::json;

use super::{
    combine, http_client, retry_after, transport_error, Channel, Delivery, Deps, SendContext,
};
use crate::config::webpush::{WebpushConfig, MAX_TTL_SECS};
use crate::model::{self, Detail, Millis, Notification, Outcome, Priority, WebPushSubscription};

/// The most a push service must accept: the whole encrypted body (RFC 8291 §4).
pub const MAX_BODY_BYTES: usize = 4096;
/// What aes128gcm adds to the plaintext in one record: salt (16), rs (4), idlen (1), the
/// sender's public key (65), the padding delimiter (1) and the GCM tag (16).
pub const OVERHEAD_BYTES: usize = 16 + 4 + 1 + 65 + 1 + 16;
/// VAPID tokens live 12 h (RFC 8292 allows at most 24 h) ...
const VAPID_LIFETIME_SECS: i64 = 12 * 3600;
/// ... and are renewed once less than an hour is left, so a token never reaches a push
/// service close to its expiry.
const VAPID_RENEW_BEFORE_SECS: i64 = 3600;
/// Push service origins a process talks to are few (FCM, Mozilla, Apple, Microsoft); the
/// cache is bounded anyway because endpoints come from callers.
const VAPID_CACHE_MAX: usize = 1024;

pub fn build(cfg: &WebpushConfig, deps: &Deps) -> Result<Arc<dyn Channel>, String> {
    let pem = std::fs::read_to_string(&cfg.vapid_private_key_file).map_err(|e| {
        format!(
            "vapid_private_key_file: cannot read {}: {e}",
            cfg.vapid_private_key_file.display()
        )
    })?;
    let vapid =
        Vapid::from_pem(&pem, &cfg.subject).map_err(|e| format!("vapid_private_key_file: {e}"))?;
    Ok(Arc::new(WebPush {
        client: http_client(deps.request_timeout)?,
        vapid,
        default_ttl_secs: cfg.default_ttl_secs,
        allow_http: cfg.allow_http,
    }))
}

// ------------------------------------------------------------------------------------ VAPID

/// The application server's VAPID identity: its key pair and contact, and the tokens minted
/// per audience.
pub struct Vapid {
    key: EncodingKey,
    /// `k=`: the public key as an uncompressed point, base64url without padding.
    public_key: String,
    subject: String,
    /// audience → (`Authorization` value, expiry in seconds since the epoch).
    cache: Mutex<HashMap<String, (String, i64)>>,
}

#[derive(serde::Serialize)]
struct VapidClaims<'a> {
    aud: &'a str,
    exp: i64,
    sub: &'a str,
}

impl Vapid {
    /// From a PEM P-256 private key: SEC1 (`EC PRIVATE KEY`, what `openssl ecparam` and most
    /// VAPID tools write, possibly after an `EC PARAMETERS` block) or PKCS#8 (`PRIVATE KEY`).
    pub fn from_pem(pem: &str, subject: &str) -> Result<Self, String> {
        let secret = pem_block(pem, "EC PRIVATE KEY")
            .and_then(|b| p256::SecretKey::from_sec1_pem(b).ok())
            .or_else(|| {
                pem_block(pem, "PRIVATE KEY").and_then(|b| p256::SecretKey::from_pkcs8_pem(b).ok())
            })
            .ok_or("not a P-256 private key in PEM (SEC1 `EC PRIVATE KEY` or PKCS#8)")?;
        // jsonwebtoken's ES256 signer takes PKCS#8 DER.
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| format!("cannot re-encode the key as PKCS#8: {e}"))?;
        let point = secret.public_key().to_encoded_point(false);
        Ok(Self {
            key: EncodingKey::from_ec_der(der.as_bytes()),
            public_key: URL_SAFE_NO_PAD.encode(point.as_bytes()),
            subject: subject.to_string(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The public key as `k=` carries it (and as browsers take it for
    /// `applicationServerKey`).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// `vapid t=<JWT>, k=<public key>` for `audience` (the push service's origin), reusing a
    /// cached token while it has more than an hour left.
    pub fn authorization(&self, audience: &str, now_secs: i64) -> Result<String, String> {
        // A poisoned lock only means another send panicked mid-insert; the map is still valid.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((value, exp)) = cache.get(audience) {
            if exp - now_secs > VAPID_RENEW_BEFORE_SECS {
                return Ok(value.clone());
            }
        }
        let exp = now_secs + VAPID_LIFETIME_SECS;
        let claims = VapidClaims {
            aud: audience,
            exp,
            sub: &self.subject,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
            .map_err(|e| format!("signing the VAPID token failed: {e}"))?;
        let value = format!("vapid t={token}, k={}", self.public_key);
        if cache.len() >= VAPID_CACHE_MAX {
            cache.retain(|_, (_, e)| *e - now_secs > VAPID_RENEW_BEFORE_SECS);
            if cache.len() >= VAPID_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(audience.to_string(), (value.clone(), exp));
        Ok(value)
    }
}

/// The `-----BEGIN <label>-----` … `-----END <label>-----` block of a PEM file, if present.
fn pem_block<'a>(pem: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)?;
    let stop = pem[start..].find(&end)? + start + end.len();
    Some(&pem[start..stop])
}

/// `scheme://host[:port]` of an endpoint: the VAPID audience (RFC 8292 §2).
pub fn origin(endpoint: &url::Url) -> String {
    endpoint.origin().ascii_serialization()
}

// --------------------------------------------------------------------------------- request

/// The JSON the service worker receives in its `push` event (after the browser decrypts it).
pub fn payload(n: &Notification) -> serde_json::Value {
    let c = &n.content;
    json!({
        "notification_id": n.id,
        "title": c.title,
        "body": c.body,
        "image": (!c.image_url.is_empty()).then_some(&c.image_url),
        // `action` is the id `notificationclick` reports; `title` is what
        // `showNotification`'s actions display.
        "actions": c.actions.iter().enumerate().map(|(i, a)| json!({
            "action": format!("action-{i}"),
            "title": a.label,
            "url": a.url,
        })).collect::<Vec<_>>(),
        "data": c.data,
    })
}

/// `TTL`: the seconds left until `expire_at` (a message kept past it would arrive expired),
/// else the configured default; never more than push services keep a message.
pub fn ttl_secs(expire_at: Millis, now: Millis, default: u32) -> u32 {
    let secs = if expire_at > 0 {
        u64::try_from((expire_at - now) / 1000).unwrap_or(0)
    } else {
        u64::from(default)
    };
    secs.min(u64::from(MAX_TTL_SECS)) as u32
}

/// `Urgency` (RFC 8030 §5.3): devices on battery may hold back anything below `normal`.
pub fn urgency(p: Priority) -> &'static str {
    match p {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Bulk => "low",
    }
}

/// `Topic` (RFC 8030 §5.4): the collapse id when it fits (at most 32 characters of the
/// base64url alphabet); otherwise none, since push services refuse malformed topics.
pub fn topic(collapse_id: &str) -> Option<&str> {
    let ok = !collapse_id.is_empty()
        && collapse_id.len() <= 32
        && collapse_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(collapse_id)
}

/// The headers of every push of `n` except `Authorization` (which depends on the endpoint's
/// origin).
pub fn headers(n: &Notification, now: Millis, default_ttl: u32) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("ttl", ttl_secs(n.expire_at, now, default_ttl).to_string()),
        ("urgency", urgency(n.priority).to_string()),
        ("content-encoding", "aes128gcm".to_string()),
        ("content-type", "application/octet-stream".to_string()),
    ];
    if let Some(t) = topic(&n.content.collapse_id) {
        h.push(("topic", t.to_string()));
    }
    h
}

/// Base64url as browsers give `p256dh` and `auth`, tolerating padding and the standard
/// alphabet (some stores re-encode subscriptions).
fn decode_key(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    if s.contains(['+', '/']) {
        STANDARD_NO_PAD.decode(s).ok()
    } else {
        URL_SAFE_NO_PAD.decode(s).ok()
    }
}

/// The aes128gcm body of `plaintext` for one subscription (RFC 8291): salt(16) | rs(4) |
/// idlen(1) = 65 | the ephemeral public key(65) | ciphertext. An `Err` means the
/// subscription's keys are unusable.
pub fn encrypt(plaintext: &[u8], sub: &WebPushSubscription) -> Result<Vec<u8>, String> {
    let p256dh = decode_key(&sub.p256dh).ok_or("p256dh is not base64url")?;
    let ua_public = p256::PublicKey::from_sec1_bytes(&p256dh)
        .map_err(|_| "p256dh is not a P-256 public key")?;
    let auth = decode_key(&sub.auth).ok_or("auth is not base64url")?;
    if auth.len() != 16 {
        return Err(format!("auth is {} bytes, not 16", auth.len()));
    }
    let auth = web_push_native::Auth::clone_from_slice(&auth);
    web_push_native::encrypt(plaintext.to_vec(), &ua_public, &auth)
        .map_err(|e| format!("encryption failed: {e}"))
}

/// The endpoint as a URL Herald may post to: https, or http when `allow_http` is on.
pub fn endpoint_url(endpoint: &str, allow_http: bool) -> Result<url::Url, Outcome> {
    const INSECURE: &str = "subscription endpoint is http:// (channels.webpush.allow_http is off)";
    match url::Url::parse(endpoint) {
        Ok(u) if u.scheme() == "https" || (allow_http && u.scheme() == "http") => Ok(u),
        // Our rule, not the subscription's fault: refuse it on this channel (X) rather than
        // mark it dead, so turning `allow_http` on later finds it intact.
        Ok(u) if u.scheme() == "http" => Err(Outcome::PolicyRejected {
            detail: Detail::new("insecure_endpoint", INSECURE),
        }),
        _ => Err(Outcome::DeadAddress {
            detail: Detail::new("bad_endpoint", "subscription endpoint is not an https URL"),
        }),
    }
}

// ------------------------------------------------------------------------------- classify

/// Classifies a push service's answer (platforms.md §5). `location` is the message URL a
/// 201 carries; `fallback_id` (the notification id) stands in when a service sends none.
pub fn classify(
    status: u16,
    retry_after: Option<Duration>,
    location: Option<&str>,
    body: &str,
    fallback_id: &str,
) -> Outcome {
    let detail = || Detail::new(status.to_string(), describe(status, body));
    match status {
        200..=299 => Outcome::Sent {
            provider_id: location
                .filter(|l| !l.is_empty())
                .unwrap_or(fallback_id)
                .to_string(),
        },
        // Our VAPID token or key was refused. platforms.md: "P if one subscription" — a
        // subscription created under another application server key answers 403 alone —
        // but a broken key fails every subscription at once, and pausing the channel costs
        // less than marking live subscriptions dead: A.
        401 | 403 => Outcome::Misconfigured { detail: detail() },
        // The subscription expired or was revoked: delete it.
        404 | 410 => Outcome::DeadAddress { detail: detail() },
        429 => Outcome::Throttled {
            after: retry_after,
            detail: detail(),
        },
        500..=599 => Outcome::Retry {
            after: retry_after,
            detail: detail(),
        },
        // 400 (a header or the encoding is wrong), 413 (too large) and any other refusal of
        // the request itself: resending the same bytes will not help.
        400..=499 => Outcome::BadPayload { detail: detail() },
        // 1xx/3xx: not a Web Push answer (redirects are not followed); maybe a proxy.
        _ => Outcome::Retry {
            after: retry_after,
            detail: detail(),
        },
    }
}

/// A short description of an error answer: Mozilla's `{"errno","message"}` when present,
/// else the start of the body.
fn describe(status: u16, body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return match v.get("errno").and_then(|e| e.as_i64()) {
                Some(errno) => format!("push service answered {status}: errno {errno}: {m}"),
                None => format!("push service answered {status}: {m}"),
            };
        }
    }
    let text: String = body.trim().chars().take(200).collect();
    if text.is_empty() {
        format!("push service answered {status}")
    } else {
        format!("push service answered {status}: {text}")
    }
}

// ------------------------------------------------------------------------------------ send

pub struct WebPush {
    client: reqwest::Client,
    vapid: Vapid,
    default_ttl_secs: u32,
    allow_http: bool,
}

#[async_trait]
impl Channel for WebPush {
    fn kind(&self) -> model::Channel {
        model::Channel::Webpush
    }

    async fn send(&self, n: &Notification, ctx: &SendContext<'_>) -> Delivery {
        // The plaintext is the same for every subscription; only the encryption differs.
        let plaintext = payload(n).to_string().into_bytes();
        let size = plaintext.len() + OVERHEAD_BYTES;
        if size > MAX_BODY_BYTES {
            return Delivery::of(Outcome::BadPayload {
                detail: Detail::new(
                    "payload_too_large",
                    format!(
                        "the encrypted payload would be {size} bytes; Web Push takes at most \
                         {MAX_BODY_BYTES}"
                    ),
                ),
            })
            .meta("payload_bytes", plaintext.len());
        }
        let headers = headers(n, ctx.now, self.default_ttl_secs);
        let pushes = ctx.addresses.iter().map(|endpoint| {
            let sub = n
                .recipient
                .webpush_subscriptions
                .iter()
                .find(|s| &s.endpoint == endpoint);
            let headers = &headers;
            let plaintext = &plaintext;
            async move {
                let outcome = match sub {
                    Some(sub) => self.push(n, sub, plaintext, headers, ctx.now).await,
                    None => Outcome::DeadAddress {
                        detail: Detail::new("no_subscription", "no subscription has this endpoint"),
                    },
                };
                (endpoint.clone(), outcome)
            }
        });
        let results = futures::future::join_all(pushes).await;
        let accepted = results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Sent { .. }))
            .count();
        let ttl = headers
            .iter()
            .find(|(k, _)| *k == "ttl")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        combine(results)
            .meta("subscriptions", ctx.addresses.len())
            .meta("accepted", accepted)
            .meta("ttl", ttl)
            .meta("urgency", urgency(n.priority))
            .meta("payload_bytes", plaintext.len())
    }
}

impl WebPush {
    /// One push to one subscription.
    async fn push(
        &self,
        n: &Notification,
        sub: &WebPushSubscription,
        plaintext: &[u8],
        headers: &[(&'static str, String)],
        now: Millis,
    ) -> Outcome {
        let endpoint = match endpoint_url(&sub.endpoint, self.allow_http) {
            Ok(u) => u,
            Err(o) => return o,
        };
        let body = match encrypt(plaintext, sub) {
            Ok(b) => b,
            // Keys that do not decode will never work for this subscription.
            Err(e) => {
                return Outcome::DeadAddress {
                    detail: Detail::new("bad_subscription_keys", e),
                }
            }
        };
        if body.len() > MAX_BODY_BYTES {
            return Outcome::BadPayload {
                detail: Detail::new(
                    "payload_too_large",
                    format!("encrypted body is {} bytes", body.len()),
                ),
            };
        }
        let authorization = match self.vapid.authorization(&origin(&endpoint), now / 1000) {
            Ok(a) => a,
            Err(e) => {
                return Outcome::Misconfigured {
                    detail: Detail::new("vapid", e),
                }
            }
        };
        let mut req = self
            .client
            .post(endpoint)
            .header("authorization", authorization);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        match req.body(body).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let after = retry_after(r.headers());
                let location = r
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                // The body only matters for errors; a failure to read it loses the detail,
                // not the outcome.
                let text = if (200..300).contains(&status) {
                    String::new()
                } else {
                    r.text().await.unwrap_or_default()
                };
                classify(status, after, location.as_deref(), &text, &n.id)
            }
            Err(e) => transport_error(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Content, Recipient};
    use jsonwebtoken::{DecodingKey, Validation};

    const FIXTURE: &str = include_str!("../../tests/fixtures/webpush/vapid_test_key.pem");
    const FIXTURE_PKCS8: &str =
        include_str!("../../tests/fixtures/webpush/vapid_test_key_pkcs8.pem");
    /// The fixture's public key as `openssl ec -pubout` gives it.
    const FIXTURE_PUBLIC: &str =
        "BDzhLFuFNMg2d9aPyQ6U3Rrk6VTEvqINp4CN6geA2Dge0x3VFBcvvrJcdiPoCdWw5JmAC5DNCa5BEqIBFry71LQ";

    fn notification() -> Notification {
        Notification {
            id: model::make_id(3),
            recipient: Recipient::default(),
            route: vec![model::Channel::Webpush],
            content: Content {
                title: "Order shipped".into(),
                body: "It is on its way".into(),
                image_url: "https://example.com/parcel.png".into(),
                actions: vec![Action {
                    label: "Track".into(),
                    url: "https://example.com/track/1".into(),
                }],
                data: [("order".to_string(), "1".to_string())].into(),
                collapse_id: "order-1".into(),
                ..Default::default()
            },
            priority: Priority::High,
            ..Default::default()
        }
    }

    #[test]
    fn keys_load_from_sec1_and_pkcs8_pem() {
        let a = Vapid::from_pem(FIXTURE, "mailto:ops@example.com").expect("sec1");
        let b = Vapid::from_pem(FIXTURE_PKCS8, "mailto:ops@example.com").expect("pkcs8");
        assert_eq!(a.public_key(), FIXTURE_PUBLIC);
        assert_eq!(b.public_key(), FIXTURE_PUBLIC);
        // openssl without -noout writes an EC PARAMETERS block first.
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{FIXTURE}"
        );
        let c = Vapid::from_pem(&with_params, "mailto:ops@example.com").expect("with params");
        assert_eq!(c.public_key(), FIXTURE_PUBLIC);
        assert!(Vapid::from_pem("not a key", "mailto:x@y.z").is_err());
        assert!(Vapid::from_pem(&FIXTURE.replace('M', "N"), "mailto:x@y.z").is_err());
    }

    #[test]
    fn vapid_token_verifies_and_is_cached_per_audience() {
        let v = Vapid::from_pem(FIXTURE, "mailto:ops@example.com").expect("key");
        let now = model::now_ms() / 1000;
        let auth = v
            .authorization("https://push.example.net", now)
            .expect("token");
        let rest = auth.strip_prefix("vapid t=").expect("vapid scheme");
        let (token, k) = rest.split_once(", k=").expect("t and k");
        assert_eq!(k, FIXTURE_PUBLIC);
        let point = URL_SAFE_NO_PAD.decode(k).expect("k is base64url");
        assert_eq!(point.len(), 65);
        let mut val = Validation::new(Algorithm::ES256);
        val.set_audience(&["https://push.example.net"]);
        val.set_required_spec_claims(&["exp", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            token,
            &DecodingKey::from_ec_der(&point),
            &val,
        )
        .expect("signature verifies with k");
        assert_eq!(data.claims["sub"], "mailto:ops@example.com");
        assert_eq!(data.claims["exp"], now + 12 * 3600);
        // Same audience soon after: the same token. Another audience: another token.
        assert_eq!(
            v.authorization("https://push.example.net", now + 600)
                .expect("token"),
            auth
        );
        assert_ne!(
            v.authorization("https://other.example.net", now)
                .expect("token"),
            auth
        );
        // Less than an hour left: renewed.
        let later = now + 11 * 3600 + 1;
        let renewed = v
            .authorization("https://push.example.net", later)
            .expect("token");
        assert_ne!(renewed, auth);
        // A token for one audience does not verify for another.
        let other =
            jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_ec_der(&point), &{
                let mut v = Validation::new(Algorithm::ES256);
                v.set_audience(&["https://evil.example"]);
                v
            });
        assert!(other.is_err());
    }

    #[test]
    fn origins_are_scheme_host_port() {
        let u = |s: &str| url::Url::parse(s).expect("url");
        assert_eq!(
            origin(&u("https://fcm.googleapis.com/fcm/send/abc:def")),
            "https://fcm.googleapis.com"
        );
        assert_eq!(
            origin(&u("http://127.0.0.1:4000/push/x")),
            "http://127.0.0.1:4000"
        );
        assert_eq!(
            origin(&u("https://push.example.com:443/x")),
            "https://push.example.com"
        );
    }

    #[test]
    fn payload_fields() {
        let n = notification();
        let p = payload(&n);
        assert_eq!(p["notification_id"], n.id.as_str());
        assert_eq!(p["title"], "Order shipped");
        assert_eq!(p["body"], "It is on its way");
        assert_eq!(p["image"], "https://example.com/parcel.png");
        assert_eq!(
            p["actions"],
            json!([{"action": "action-0", "title": "Track", "url": "https://example.com/track/1"}])
        );
        assert_eq!(p["data"], json!({"order": "1"}));
        let mut bare = n.clone();
        bare.content.image_url.clear();
        bare.content.actions.clear();
        bare.content.data.clear();
        let p = payload(&bare);
        assert!(p["image"].is_null());
        assert_eq!(p["actions"], json!([]));
        assert_eq!(p["data"], json!({}));
    }

    #[test]
    fn headers_follow_priority_expiry_and_collapse_id() {
        let mut n = notification();
        let now = 1_700_000_000_000;
        let h = headers(&n, now, 3600);
        let get =
            |h: &[(&str, String)], k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get(&h, "ttl").as_deref(), Some("3600"));
        assert_eq!(get(&h, "urgency").as_deref(), Some("high"));
        assert_eq!(get(&h, "topic").as_deref(), Some("order-1"));
        assert_eq!(get(&h, "content-encoding").as_deref(), Some("aes128gcm"));
        n.expire_at = now + 90_500;
        n.priority = Priority::Bulk;
        n.content.collapse_id = "x".repeat(33);
        let h = headers(&n, now, 3600);
        assert_eq!(get(&h, "ttl").as_deref(), Some("90"));
        assert_eq!(get(&h, "urgency").as_deref(), Some("low"));
        assert_eq!(get(&h, "topic"), None);
        n.priority = Priority::Normal;
        n.content.collapse_id = "has space".into();
        let h = headers(&n, now, 3600);
        assert_eq!(get(&h, "urgency").as_deref(), Some("normal"));
        assert_eq!(get(&h, "topic"), None);
        // Expired already, far ahead, no expiry.
        assert_eq!(ttl_secs(now - 5, now, 60), 0);
        assert_eq!(ttl_secs(now + 365 * 86_400_000, now, 60), MAX_TTL_SECS);
        assert_eq!(ttl_secs(0, now, 60), 60);
        assert_eq!(topic(&"a".repeat(32)), Some("a".repeat(32).as_str()));
        assert_eq!(topic(""), None);
    }

    fn subscription() -> (p256::SecretKey, [u8; 16], WebPushSubscription) {
        let ua = loop {
            if let Ok(k) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                break k;
            }
        };
        let auth: [u8; 16] = rand::random();
        let sub = WebPushSubscription {
            endpoint: "https://push.example.net/x".into(),
            p256dh: URL_SAFE_NO_PAD.encode(ua.public_key().to_encoded_point(false).as_bytes()),
            auth: URL_SAFE_NO_PAD.encode(auth),
        };
        (ua, auth, sub)
    }

    #[test]
    fn encryption_round_trips_with_fresh_salt_and_key() {
        let (ua, auth, sub) = subscription();
        let a = encrypt(b"hello", &sub).expect("encrypts");
        let b = encrypt(b"hello", &sub).expect("encrypts");
        assert_eq!(a.len(), 5 + OVERHEAD_BYTES);
        assert_ne!(a[..16], b[..16], "fresh salt per message");
        assert_ne!(a[21..86], b[21..86], "fresh ephemeral key per message");
        assert_eq!(a[20], 65);
        let auth = web_push_native::Auth::clone_from_slice(&auth);
        assert_eq!(
            web_push_native::decrypt(a, &ua, &auth).expect("decrypts"),
            b"hello"
        );
        // Padded or standard-alphabet keys decode too.
        let mut padded = sub.clone();
        padded.auth = base64::engine::general_purpose::STANDARD
            .encode(URL_SAFE_NO_PAD.decode(&sub.auth).expect("b64"));
        assert!(encrypt(b"x", &padded).is_ok());
    }

    #[test]
    fn the_rfc_8291_example_decrypts() {
        // RFC 8291 §5: the receiver's key, auth secret and the message it gets.
        let ua = p256::SecretKey::from_slice(
            &URL_SAFE_NO_PAD
                .decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")
                .expect("b64"),
        )
        .expect("key");
        let auth = URL_SAFE_NO_PAD
            .decode("BTBZMqHH6r4Tts7J_aSIgg")
            .expect("b64");
        let body = URL_SAFE_NO_PAD
            .decode(
                "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3v\
                 CYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPX\
                 LWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
            )
            .expect("b64");
        let plain =
            web_push_native::decrypt(body, &ua, &web_push_native::Auth::clone_from_slice(&auth))
                .expect("decrypts");
        assert_eq!(plain, b"When I grow up, I want to be a watermelon");
    }

    #[test]
    fn bad_subscription_keys_are_refused() {
        let (_, _, sub) = subscription();
        let mut s = sub.clone();
        s.p256dh = "not base64!".into();
        assert!(encrypt(b"x", &s).is_err());
        let mut s = sub.clone();
        s.p256dh = URL_SAFE_NO_PAD.encode([4u8; 65]);
        assert!(encrypt(b"x", &s).unwrap_err().contains("P-256"));
        let mut s = sub.clone();
        s.auth = URL_SAFE_NO_PAD.encode([1u8; 12]);
        assert!(encrypt(b"x", &s).unwrap_err().contains("12 bytes"));
    }

    #[test]
    fn every_documented_answer_is_classified() {
        let ra = Some(Duration::from_secs(7));
        let id = "n-1";
        match classify(201, None, Some("https://push.example.net/m/abc"), "", id) {
            Outcome::Sent { provider_id } => {
                assert_eq!(provider_id, "https://push.example.net/m/abc")
            }
            o => panic!("{o:?}"),
        }
        match classify(201, None, None, "", id) {
            Outcome::Sent { provider_id } => assert_eq!(provider_id, id),
            o => panic!("{o:?}"),
        }
        let autopush = r#"{"code":410,"errno":106,"error":"Gone","message":"Request did not validate invalid subscription","more_info":"http://autopush.readthedocs.io/en/latest/http.html#error-codes"}"#;
        match classify(410, None, None, autopush, id) {
            Outcome::DeadAddress { detail } => {
                assert_eq!(detail.code, "410");
                assert!(detail.message.contains("errno 106"), "{}", detail.message);
            }
            o => panic!("{o:?}"),
        }
        assert!(
            matches!(classify(404, None, None, "", id), Outcome::DeadAddress { detail } if detail.code == "404")
        );
        assert!(
            matches!(classify(400, None, None, "UnauthorizedRegistration", id), Outcome::BadPayload { detail } if detail.code == "400" && detail.message.contains("UnauthorizedRegistration"))
        );
        assert!(
            matches!(classify(413, None, None, "", id), Outcome::BadPayload { detail } if detail.code == "413")
        );
        assert!(
            matches!(classify(401, None, None, "", id), Outcome::Misconfigured { detail } if detail.code == "401")
        );
        assert!(
            matches!(classify(403, None, None, "", id), Outcome::Misconfigured { detail } if detail.code == "403")
        );
        assert!(
            matches!(classify(429, ra, None, "", id), Outcome::Throttled { after, .. } if after == ra)
        );
        for s in [500, 502, 503, 504] {
            assert!(
                matches!(classify(s, ra, None, "", id), Outcome::Retry { after, detail } if after == ra && detail.code == s.to_string())
            );
        }
        assert!(matches!(
            classify(301, None, None, "", id),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(415, None, None, "", id),
            Outcome::BadPayload { .. }
        ));
    }

    #[tokio::test]
    async fn oversize_payload_is_refused_before_sending() {
        let (_, _, mut sub) = subscription();
        // Nothing listens here: a request would fail as a transport error, not a payload one.
        sub.endpoint = "https://127.0.0.1:9/push/x".into();
        let ch = WebPush {
            client: http_client(Duration::from_secs(1)).expect("client"),
            vapid: Vapid::from_pem(FIXTURE, "mailto:ops@example.com").expect("key"),
            default_ttl_secs: 60,
            allow_http: false,
        };
        let mut n = notification();
        n.recipient.webpush_subscriptions = vec![sub.clone()];
        n.content.body = "x".repeat(MAX_BODY_BYTES);
        let addrs = vec![sub.endpoint.clone()];
        let ctx = SendContext {
            attempt: 1,
            addresses: &addrs,
            last_inbound: 0,
            now: model::now_ms(),
        };
        let d = ch.send(&n, &ctx).await;
        assert!(
            matches!(&d.outcome, Outcome::BadPayload { detail } if detail.code == "payload_too_large"),
            "{d:?}"
        );
        // A plain-HTTP endpoint is refused when allow_http is off, without a request.
        n.content.body = "small".into();
        n.recipient.webpush_subscriptions[0].endpoint = "http://127.0.0.1:9/push/x".into();
        let addrs = vec!["http://127.0.0.1:9/push/x".to_string()];
        let ctx = SendContext {
            addresses: &addrs,
            ..ctx
        };
        let d = ch.send(&n, &ctx).await;
        assert!(
            matches!(&d.outcome, Outcome::PolicyRejected { detail } if detail.code == "insecure_endpoint"),
            "{d:?}"
        );
        assert!(d.dead.is_empty());
        assert!(endpoint_url("http://127.0.0.1:9/x", true).is_ok());
        assert!(matches!(
            endpoint_url("ftp://example.com/x", true),
            Err(Outcome::DeadAddress { .. })
        ));
    }
}
