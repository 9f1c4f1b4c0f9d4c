//! `apns`: Apple Push Notification service over HTTP/2 — one `POST /3/device/<token>` per
//! device token on one long-lived connection, authenticated with an ES256 provider token
//! (JWT) that is reused for 40 minutes and renewed once when APNs refuses it.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{combine, retry_after, transport_error, Channel, Delivery, Deps, SendContext};
use crate::config::apns::ApnsConfig;
use crate::model::{self, Detail, Notification, Outcome, Priority};

/// Apple wants provider tokens renewed no sooner than 20 and no later than 60 minutes.
pub const JWT_MAX_AGE: Duration = Duration::from_secs(40 * 60);
/// APNs' payload limit for every push type but VoIP.
pub const MAX_PAYLOAD: usize = 4096;
/// `apns-collapse-id` limit.
pub const MAX_COLLAPSE_ID: usize = 64;

pub fn build(cfg: &ApnsConfig, deps: &Deps) -> Result<Arc<dyn Channel>, String> {
    Ok(Arc::new(Apns::new(cfg, deps.request_timeout)?))
}

/// The claims of a provider token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderClaims {
    pub iss: String,
    pub iat: i64,
}

struct Jwt {
    value: String,
    iat: i64,
    minted: Instant,
}

/// Signs provider tokens and keeps the current one for every sender.
struct ProviderToken {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    current: RwLock<Option<Jwt>>,
}

impl ProviderToken {
    fn mint(&self, iat: i64) -> Result<Jwt, Outcome> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = ProviderClaims {
            iss: self.team_id.clone(),
            iat,
        };
        let value = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            Outcome::Misconfigured {
                detail: Detail::new("provider_token", format!("signing the provider token: {e}")),
            }
        })?;
        Ok(Jwt {
            value,
            iat,
            minted: Instant::now(),
        })
    }

    /// The current token, or a new one when it is 40 minutes old. Signing is quick and
    /// local, so it happens under the lock: concurrent sends never sign twice.
    fn token(&self) -> Result<String, Outcome> {
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            if let Some(j) = cur.as_ref().filter(|j| j.minted.elapsed() < JWT_MAX_AGE) {
                return Ok(j.value.clone());
            }
        }
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = cur.as_ref().filter(|j| j.minted.elapsed() < JWT_MAX_AGE) {
            return Ok(j.value.clone());
        }
        let j = self.mint(now_secs())?;
        let v = j.value.clone();
        *cur = Some(j);
        Ok(v)
    }

    /// APNs refused `rejected`: sign a new token unless another send already did.
    fn renew(&self, rejected: &str) -> Result<String, Outcome> {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = cur.as_ref().filter(|j| j.value != rejected) {
            return Ok(j.value.clone());
        }
        // ES256 signing here is deterministic (RFC 6979): the same iat would give the very
        // token APNs just refused, so the new one is at least a second younger.
        let iat = cur
            .as_ref()
            .map(|j| (j.iat + 1).max(now_secs()))
            .unwrap_or_else(now_secs);
        let j = self.mint(iat)?;
        let v = j.value.clone();
        *cur = Some(j);
        Ok(v)
    }
}

fn now_secs() -> i64 {
    model::now_ms().div_euclid(1000)
}

/// The `apns-id` for a notification: its ULID's 128 bits written as a UUID, so the id Apple
/// echoes names the notification (and retries of it). Ids that are not ULID-based get a
/// stable UUID from their SHA-256.
pub fn apns_id(notification_id: &str) -> String {
    let ulid_part = notification_id
        .rsplit_once('-')
        .map(|(u, _)| u)
        .unwrap_or(notification_id);
    let bits = match ulid::Ulid::from_string(ulid_part) {
        Ok(u) => u.0,
        Err(_) => {
            let h = Sha256::digest(notification_id.as_bytes());
            let mut b = [0u8; 16];
            b.copy_from_slice(&h[..16]);
            u128::from_be_bytes(b)
        }
    };
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// One request to APNs, before the provider token is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsRequest {
    /// `/3/device/<token>`.
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub push_type: String,
}

impl ApnsRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn bad(code: &str, message: String) -> Outcome {
    Outcome::BadPayload {
        detail: Detail::new(code, message),
    }
}

/// Builds the request for one device token (pure): headers, the JSON payload, and the
/// checks APNs would make on them, done before a request is spent.
pub fn request(
    n: &Notification,
    device: &str,
    topic: &str,
    alert_push_type: &str,
) -> Result<ApnsRequest, Outcome> {
    // The token goes into the path: only hex may pass (APNs would say BadDeviceToken).
    if device.is_empty() || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Outcome::DeadAddress {
            detail: Detail::new(
                "BadDeviceToken",
                "the device token is not hexadecimal (checked before sending)",
            ),
        });
    }
    let c = &n.content;
    let background = c.title.is_empty() && c.body.is_empty();
    let mut aps = Map::new();
    if background {
        aps.insert("content-available".into(), json!(1));
    } else {
        let mut alert = Map::new();
        if !c.title.is_empty() {
            alert.insert("title".into(), json!(c.title));
        }
        if !c.body.is_empty() {
            alert.insert("body".into(), json!(c.body));
        }
        aps.insert("alert".into(), Value::Object(alert));
        aps.insert("sound".into(), json!("default"));
        if !c.image_url.is_empty() {
            // Images need the app's notification service extension, which only runs for
            // mutable notifications; it finds the picture under `image_url`.
            aps.insert("mutable-content".into(), json!(1));
        }
    }
    let mut payload = Map::new();
    payload.insert("aps".into(), Value::Object(aps));
    if !background && !c.image_url.is_empty() {
        payload.insert("image_url".into(), json!(c.image_url));
    }
    for (k, v) in &c.data {
        if k == "aps" {
            return Err(bad(
                "reserved_key",
                "content.data may not hold the key \"aps\": APNs reserves it".into(),
            ));
        }
        payload.insert(k.clone(), json!(v));
    }
    let body = Value::Object(payload).to_string().into_bytes();
    if body.len() > MAX_PAYLOAD {
        return Err(bad(
            "PayloadTooLarge",
            format!(
                "the payload is {} bytes; APNs takes {MAX_PAYLOAD} (checked before sending)",
                body.len()
            ),
        ));
    }
    if c.collapse_id.len() > MAX_COLLAPSE_ID {
        return Err(bad(
            "BadCollapseId",
            format!(
                "content.collapse_id is {} bytes; APNs takes {MAX_COLLAPSE_ID}",
                c.collapse_id.len()
            ),
        ));
    }
    let push_type = if background {
        "background"
    } else {
        alert_push_type
    };
    // Background pushes must go at 5; bulk ones may wait for the device's convenience.
    let priority = if background || n.priority == Priority::Bulk {
        "5"
    } else {
        "10"
    };
    let expiration = if n.expire_at > 0 {
        n.expire_at.div_euclid(1000).to_string()
    } else {
        "0".to_string()
    };
    let mut headers = vec![
        ("apns-topic", topic.to_string()),
        ("apns-push-type", push_type.to_string()),
        ("apns-priority", priority.to_string()),
        ("apns-expiration", expiration),
        ("apns-id", apns_id(&n.id)),
    ];
    if !c.collapse_id.is_empty() {
        headers.push(("apns-collapse-id", c.collapse_id.clone()));
    }
    Ok(ApnsRequest {
        path: format!("/3/device/{device}"),
        headers,
        body,
        push_type: push_type.to_string(),
    })
}

#[derive(Deserialize, Default)]
struct Reason {
    #[serde(default)]
    reason: String,
}

/// The 403 reasons a new provider token may cure.
pub fn provider_token_refused(status: u16, reason: &str) -> bool {
    status == 403
        && matches!(
            reason,
            "ExpiredProviderToken" | "InvalidProviderToken" | "MissingProviderToken"
        )
}

fn reason_of(body: &[u8]) -> String {
    serde_json::from_slice::<Reason>(body)
        .unwrap_or_default()
        .reason
}

/// Classifies APNs' answer to one request (platforms.md §4). `apns_id` is the `apns-id`
/// header APNs echoed.
pub fn classify(status: u16, body: &[u8], apns_id: &str, after: Option<Duration>) -> Outcome {
    if status == 200 {
        return Outcome::Sent {
            provider_id: apns_id.to_string(),
        };
    }
    let reason = reason_of(body);
    let code = if reason.is_empty() {
        format!("http_{status}")
    } else {
        reason.clone()
    };
    let detail = Detail::new(code, format!("APNs answered {status} {reason}"));
    match (status, reason.as_str()) {
        // Check sandbox vs production first: a sandbox token sent to production (or the
        // other way round) is BadDeviceToken too. The base URL is the operator's choice.
        (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => {
            Outcome::DeadAddress { detail }
        }
        // The connection sat idle too long; a new request on a fresh one will do.
        (400, "IdleTimeout") => Outcome::Retry { after, detail },
        // The topic is configuration: every send would fail the same way.
        (400, "BadTopic") | (400, "MissingTopic") | (400, "TopicDisallowed") => {
            Outcome::Misconfigured { detail }
        }
        (400, _) => Outcome::BadPayload { detail },
        // Provider token (after the one renewal), certificate, or a key not allowed.
        (403, _) => Outcome::Misconfigured { detail },
        // Wrong base URL or method: configuration.
        (404, _) | (405, _) => Outcome::Misconfigured { detail },
        (410, _) => Outcome::DeadAddress { detail },
        (413, _) => Outcome::BadPayload { detail },
        // Renewing provider tokens too often locks the key out for a while: stop the
        // channel instead of renewing again.
        (429, "TooManyProviderTokenUpdates") => Outcome::Misconfigured { detail },
        // Too many pushes to one device token.
        (429, _) => Outcome::Throttled { after, detail },
        (500..=599, _) => Outcome::Retry { after, detail },
        _ => Outcome::BadPayload { detail },
    }
}

pub struct Apns {
    http: reqwest::Client,
    base_url: String,
    topic: String,
    push_type: String,
    auth: ProviderToken,
}

impl Apns {
    pub fn new(cfg: &ApnsConfig, timeout: Duration) -> Result<Self, String> {
        let key = cfg.signing_key().map_err(|e| e.to_string())?;
        // HTTP/2 only: over TLS this offers just "h2" by ALPN (APNs speaks nothing else);
        // over plain http:// (a local mock) it speaks h2c with prior knowledge. One client,
        // so one long-lived connection that keep-alive pings hold open.
        let http = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(None)
            .http2_keep_alive_interval(Some(Duration::from_secs(30)))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http/2 client: {e}"))?;
        Ok(Self {
            http,
            base_url: cfg.base_url.trim_end_matches('/').to_string(),
            topic: cfg.topic.clone(),
            push_type: cfg.push_type.clone(),
            auth: ProviderToken {
                key,
                key_id: cfg.key_id.clone(),
                team_id: cfg.team_id.clone(),
                current: RwLock::new(None),
            },
        })
    }

    async fn post(
        &self,
        r: &ApnsRequest,
        jwt: &str,
    ) -> Result<(u16, Vec<u8>, String, Option<Duration>), Outcome> {
        let mut req = self
            .http
            .post(format!("{}{}", self.base_url, r.path))
            .header("authorization", format!("bearer {jwt}"))
            .header("content-type", "application/json");
        for (k, v) in &r.headers {
            req = req.header(*k, v);
        }
        let res = req
            .body(r.body.clone())
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = res.status().as_u16();
        let after = retry_after(res.headers());
        let echoed = res
            .headers()
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| r.header("apns-id").map(str::to_string))
            .unwrap_or_default();
        let body = res.bytes().await.map_err(|e| transport_error(&e))?;
        Ok((status, body.to_vec(), echoed, after))
    }

    /// Sends to one device. Returns the outcome and whether the provider token was renewed.
    async fn send_one(&self, n: &Notification, device: &str) -> (Outcome, bool) {
        let r = match request(n, device, &self.topic, &self.push_type) {
            Ok(r) => r,
            Err(o) => return (o, false),
        };
        let jwt = match self.auth.token() {
            Ok(j) => j,
            Err(o) => return (o, false),
        };
        let (status, body, id, after) = match self.post(&r, &jwt).await {
            Ok(a) => a,
            Err(o) => return (o, false),
        };
        if !provider_token_refused(status, &reason_of(&body)) {
            return (classify(status, &body, &id, after), false);
        }
        // One new provider token, one more try; a second refusal stops the channel.
        let jwt = match self.auth.renew(&jwt) {
            Ok(j) => j,
            Err(o) => return (o, true),
        };
        match self.post(&r, &jwt).await {
            Ok((status, body, id, after)) => (classify(status, &body, &id, after), true),
            Err(o) => (o, true),
        }
    }
}

#[async_trait]
impl Channel for Apns {
    fn kind(&self) -> model::Channel {
        model::Channel::Apns
    }

    async fn send(&self, n: &Notification, ctx: &SendContext<'_>) -> Delivery {
        let sends = ctx
            .addresses
            .iter()
            .map(|t| async move { (t.clone(), self.send_one(n, t).await) });
        let results = futures::future::join_all(sends).await;
        let renewed = results.iter().any(|(_, (_, r))| *r);
        let accepted = results
            .iter()
            .filter(|(_, (o, _))| matches!(o, Outcome::Sent { .. }))
            .count();
        let background = n.content.title.is_empty() && n.content.body.is_empty();
        let mut d = combine(results.into_iter().map(|(t, (o, _))| (t, o)).collect())
            .meta("tokens", ctx.addresses.len())
            .meta("accepted", accepted)
            .meta(
                "push_type",
                if background {
                    "background"
                } else {
                    self.push_type.as_str()
                },
            );
        if renewed {
            d = d.meta("provider_token_renewed", "true");
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Content, Recipient};

    const DEVICE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    fn note() -> Notification {
        Notification {
            id: "01HZY3M5R6T7V8W9X0Y1Z2A3B4-3".into(),
            recipient: Recipient::default(),
            route: vec![model::Channel::Apns],
            content: Content {
                title: "Hi".into(),
                body: "Shipped".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn apns_id_is_the_ulid_as_a_uuid() {
        let id = "01HZY3M5R6T7V8W9X0Y1Z2A3B4-3";
        let u = ulid::Ulid::from_string("01HZY3M5R6T7V8W9X0Y1Z2A3B4").expect("ulid");
        let want = format!("{:032x}", u.0);
        let got = apns_id(id);
        assert_eq!(got.len(), 36);
        assert_eq!(got.replace('-', ""), want);
        assert_eq!(
            got.split('-').map(str::len).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12]
        );
        // Stable, and distinct for other ids, ULID or not.
        assert_eq!(apns_id(id), got);
        assert_ne!(apns_id("01HZY3M5R6T7V8W9X0Y1Z2A3B5-3"), got);
        let odd = apns_id("not-a-ulid");
        assert_eq!(odd.len(), 36);
        assert_eq!(odd, apns_id("not-a-ulid"));
    }

    #[test]
    fn alert_request_headers_and_body() {
        let mut n = note();
        n.expire_at = 1_700_000_000_500;
        n.content.collapse_id = "order-42".into();
        n.content.data.insert("order".into(), "42".into());
        let r = request(&n, DEVICE, "com.example.app", "alert").expect("request");
        assert_eq!(r.path, format!("/3/device/{DEVICE}"));
        assert_eq!(r.header("apns-topic"), Some("com.example.app"));
        assert_eq!(r.header("apns-push-type"), Some("alert"));
        assert_eq!(r.header("apns-priority"), Some("10"));
        assert_eq!(r.header("apns-expiration"), Some("1700000000"));
        assert_eq!(r.header("apns-id"), Some(apns_id(&n.id).as_str()));
        assert_eq!(r.header("apns-collapse-id"), Some("order-42"));
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(
            body,
            json!({"aps": {"alert": {"title": "Hi", "body": "Shipped"}, "sound": "default"}, "order": "42"})
        );
    }

    #[test]
    fn data_only_is_a_background_push_at_priority_5() {
        let mut n = note();
        n.content.title.clear();
        n.content.body.clear();
        n.content.data.insert("sync".into(), "1".into());
        let r = request(&n, DEVICE, "t", "alert").expect("request");
        assert_eq!(r.header("apns-push-type"), Some("background"));
        assert_eq!(r.header("apns-priority"), Some("5"));
        assert_eq!(r.header("apns-expiration"), Some("0"));
        assert_eq!(r.header("apns-collapse-id"), None);
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(body, json!({"aps": {"content-available": 1}, "sync": "1"}));
    }

    #[test]
    fn bulk_goes_at_priority_5_and_images_make_it_mutable() {
        let mut n = note();
        n.priority = Priority::Bulk;
        n.content.image_url = "https://img.example/x.png".into();
        let r = request(&n, DEVICE, "t", "alert").expect("request");
        assert_eq!(r.header("apns-priority"), Some("5"));
        assert_eq!(r.header("apns-push-type"), Some("alert"));
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(body["aps"]["mutable-content"], 1);
        assert_eq!(body["image_url"], "https://img.example/x.png");
        n.priority = Priority::High;
        let r = request(&n, DEVICE, "t", "alert").expect("request");
        assert_eq!(r.header("apns-priority"), Some("10"));
    }

    #[test]
    fn oversize_and_bad_fields_are_refused_before_sending() {
        let mut n = note();
        n.content.body = "x".repeat(4100);
        let e = request(&n, DEVICE, "t", "alert").expect_err("too large");
        assert!(matches!(&e, Outcome::BadPayload { detail } if detail.code == "PayloadTooLarge"));
        let mut n = note();
        n.content.collapse_id = "c".repeat(65);
        assert!(matches!(
            request(&n, DEVICE, "t", "alert"),
            Err(Outcome::BadPayload { .. })
        ));
        let mut n = note();
        n.content.data.insert("aps".into(), "x".into());
        assert!(matches!(
            request(&n, DEVICE, "t", "alert"),
            Err(Outcome::BadPayload { .. })
        ));
        assert!(matches!(
            request(&note(), "../../etc", "t", "alert"),
            Err(Outcome::DeadAddress { .. })
        ));
        // Just under the limit passes.
        let mut n = note();
        n.content.body = "x".repeat(4000);
        assert!(request(&n, DEVICE, "t", "alert").is_ok());
    }

    fn reason(r: &str) -> Vec<u8> {
        json!({ "reason": r }).to_string().into_bytes()
    }

    #[test]
    fn every_documented_reason_is_classified() {
        let ra = Some(Duration::from_secs(3));
        let dead = |o: Outcome| matches!(o, Outcome::DeadAddress { .. });
        let payload = |o: Outcome| matches!(o, Outcome::BadPayload { .. });
        let auth = |o: Outcome| matches!(o, Outcome::Misconfigured { .. });
        let retry = |o: Outcome| matches!(o, Outcome::Retry { .. });
        assert_eq!(
            classify(200, b"", "id-1", None),
            Outcome::Sent {
                provider_id: "id-1".into()
            }
        );
        assert!(dead(classify(400, &reason("BadDeviceToken"), "", None)));
        assert!(dead(classify(
            400,
            &reason("DeviceTokenNotForTopic"),
            "",
            None
        )));
        for r in [
            "BadCollapseId",
            "BadExpirationDate",
            "BadMessageId",
            "BadPriority",
            "DuplicateHeaders",
            "InvalidPushType",
            "MissingDeviceToken",
            "PayloadEmpty",
        ] {
            assert!(payload(classify(400, &reason(r), "", None)), "{r}");
        }
        for r in ["BadTopic", "MissingTopic", "TopicDisallowed"] {
            assert!(auth(classify(400, &reason(r), "", None)), "{r}");
        }
        assert!(retry(classify(400, &reason("IdleTimeout"), "", None)));
        for r in [
            "ExpiredProviderToken",
            "InvalidProviderToken",
            "MissingProviderToken",
            "BadCertificate",
            "BadCertificateEnvironment",
            "Forbidden",
        ] {
            assert!(auth(classify(403, &reason(r), "", None)), "{r}");
        }
        assert!(auth(classify(404, &reason("BadPath"), "", None)));
        assert!(auth(classify(405, &reason("MethodNotAllowed"), "", None)));
        let gone = json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64}).to_string();
        let o = classify(410, gone.as_bytes(), "", None);
        assert!(matches!(&o, Outcome::DeadAddress { detail } if detail.code == "Unregistered"));
        assert!(dead(classify(410, &reason("ExpiredToken"), "", None)));
        assert!(payload(classify(413, &reason("PayloadTooLarge"), "", None)));
        assert!(matches!(
            classify(429, &reason("TooManyRequests"), "", ra),
            Outcome::Throttled { after, .. } if after == ra
        ));
        assert!(auth(classify(
            429,
            &reason("TooManyProviderTokenUpdates"),
            "",
            None
        )));
        assert!(matches!(
            classify(503, &reason("ServiceUnavailable"), "", ra),
            Outcome::Retry { after, .. } if after == ra
        ));
        assert!(retry(classify(503, &reason("Shutdown"), "", None)));
        assert!(retry(classify(
            500,
            &reason("InternalServerError"),
            "",
            None
        )));
        assert!(retry(classify(502, b"", "", None)));
        let o = classify(502, b"", "", None);
        assert_eq!(o.detail().map(|d| d.code.as_str()), Some("http_502"));
    }

    #[test]
    fn provider_token_refusals_are_recognised() {
        assert!(provider_token_refused(403, "ExpiredProviderToken"));
        assert!(provider_token_refused(403, "InvalidProviderToken"));
        assert!(provider_token_refused(403, "MissingProviderToken"));
        assert!(!provider_token_refused(403, "BadCertificate"));
        assert!(!provider_token_refused(429, "TooManyProviderTokenUpdates"));
    }

    fn signer() -> ProviderToken {
        let pem = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apns-key.p8"),
        )
        .expect("fixture key");
        ProviderToken {
            key: EncodingKey::from_ec_pem(&pem).expect("p8 parses"),
            key_id: "KEYHERALD1".into(),
            team_id: "TEAMHERALD".into(),
            current: RwLock::new(None),
        }
    }

    #[test]
    fn provider_token_is_reused_and_renewed_once() {
        let s = signer();
        let a = s.token().expect("token");
        assert_eq!(s.token().expect("token"), a, "reused while young");
        let h = jsonwebtoken::decode_header(&a).expect("header");
        assert_eq!(h.alg, Algorithm::ES256);
        assert_eq!(h.kid.as_deref(), Some("KEYHERALD1"));
        let pubkey = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/apns-key.pub.pem"),
        )
        .expect("fixture public key");
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        let c = jsonwebtoken::decode::<ProviderClaims>(
            &a,
            &jsonwebtoken::DecodingKey::from_ec_pem(&pubkey).expect("pub key"),
            &v,
        )
        .expect("signature verifies")
        .claims;
        assert_eq!(c.iss, "TEAMHERALD");
        assert!((c.iat - now_secs()).abs() <= 2);
        // A refusal renews once; a second refusal of the old token reuses the new one.
        let b = s.renew(&a).expect("renew");
        assert_ne!(a, b);
        assert_eq!(s.renew(&a).expect("renew"), b);
        assert_eq!(s.token().expect("token"), b);
    }
}
