//! `fcm`: Firebase Cloud Messaging HTTP v1 — one `messages:send` per device token, with an
//! OAuth2 access token minted from a service account (RS256 JWT assertion), cached and shared
//! by every concurrent send, and refreshed before it expires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::RwLock;

use super::SendContext;
use super::{combine, http_client, retry_after, transport_error, Channel, Delivery, Deps};
use crate::config::fcm::{FcmConfig, ServiceAccount};
use crate::model::{self, Detail, Millis, Notification, Outcome, Priority};

/// The OAuth2 scope FCM's send API requires.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The `grant_type` of a service-account JWT bearer assertion (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime of the assertion we sign; Google takes at most one hour.
const ASSERTION_LIFETIME_SECS: i64 = 3600;
/// An access token is renewed once less than this remains of its life…
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// FCM's limit on the notification and data payload.
pub const MAX_PAYLOAD: usize = 4096;
/// FCM keeps a message for at most 28 days.
const MAX_TTL_SECS: i64 = 28 * 24 * 3600;
/// FCM documents QUOTA_EXCEEDED as "back off at least a minute".
const QUOTA_BACKOFF: Duration = Duration::from_secs(60);

pub fn build(cfg: &FcmConfig, deps: &Deps) -> Result<Arc<dyn Channel>, String> {
    let sa = ServiceAccount::load(&cfg.service_account_file).map_err(|e| e.to_string())?;
    Ok(Arc::new(Fcm::new(cfg, sa, deps.request_timeout)?))
}

/// The claims of the assertion exchanged for an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// The assertion's claims for a service account at `now_secs`.
pub fn assertion_claims(client_email: &str, token_uri: &str, now_secs: i64) -> AssertionClaims {
    AssertionClaims {
        iss: client_email.to_string(),
        scope: SCOPE.to_string(),
        aud: token_uri.to_string(),
        iat: now_secs,
        exp: now_secs + ASSERTION_LIFETIME_SECS,
    }
}

/// How long before its end a token of `lifetime` is renewed: five minutes, or half its life
/// for short-lived tokens (so a token is always used for a while before it is replaced).
pub fn refresh_margin(lifetime: Duration) -> Duration {
    REFRESH_MARGIN.min(lifetime / 2)
}

#[derive(Clone)]
struct AccessToken {
    value: String,
    /// Renew from this instant on.
    renew_at: Instant,
}

impl AccessToken {
    fn fresh(&self) -> bool {
        Instant::now() < self.renew_at
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct OauthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The cached token, and the last failed mint (shared with the senders that waited for it).
#[derive(Default)]
struct Slot {
    token: Option<AccessToken>,
    failed: Option<(Instant, Outcome)>,
}

impl Slot {
    /// A mint that failed after `since` (while the caller waited for the lock): its answer
    /// stands for the caller too, so a token endpoint that is down or refusing gets one
    /// request per wave of senders, not one per sender.
    fn failed_since(&self, since: Instant) -> Option<Outcome> {
        self.failed
            .as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, o)| o.clone())
    }
}

/// Mints OAuth2 access tokens from the service account and caches one for every sender.
struct TokenSource {
    http: reqwest::Client,
    client_email: String,
    token_uri: String,
    key: EncodingKey,
    current: RwLock<Slot>,
}

impl TokenSource {
    /// A fresh cached token, or one minted now. Concurrent callers that find none wait for the
    /// one mint under the write lock instead of each minting their own.
    async fn token(&self) -> Result<String, Outcome> {
        let arrived = Instant::now();
        if let Some(t) = self
            .current
            .read()
            .await
            .token
            .as_ref()
            .filter(|t| t.fresh())
        {
            return Ok(t.value.clone());
        }
        let mut slot = self.current.write().await;
        if let Some(t) = slot.token.as_ref().filter(|t| t.fresh()) {
            return Ok(t.value.clone());
        }
        if let Some(o) = slot.failed_since(arrived) {
            return Err(o);
        }
        self.mint_into(&mut slot).await
    }

    /// FCM refused `rejected`: mint a new token unless another send already replaced it.
    async fn renew(&self, rejected: &str) -> Result<String, Outcome> {
        let arrived = Instant::now();
        let mut slot = self.current.write().await;
        if let Some(t) = slot
            .token
            .as_ref()
            .filter(|t| t.value != rejected && t.fresh())
        {
            return Ok(t.value.clone());
        }
        if let Some(o) = slot.failed_since(arrived) {
            return Err(o);
        }
        slot.token = None;
        self.mint_into(&mut slot).await
    }

    async fn mint_into(&self, slot: &mut Slot) -> Result<String, Outcome> {
        match self.mint().await {
            Ok(t) => {
                let value = t.value.clone();
                *slot = Slot {
                    token: Some(t),
                    failed: None,
                };
                Ok(value)
            }
            Err(o) => {
                slot.failed = Some((Instant::now(), o.clone()));
                Err(o)
            }
        }
    }

    fn assertion(&self) -> Result<String, Outcome> {
        let claims = assertion_claims(
            &self.client_email,
            &self.token_uri,
            model::now_ms().div_euclid(1000),
        );
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key).map_err(|e| {
            Outcome::Misconfigured {
                detail: Detail::new("oauth_assertion", format!("signing the assertion: {e}")),
            }
        })
    }

    async fn mint(&self) -> Result<AccessToken, Outcome> {
        let assertion = self.assertion()?;
        let started = Instant::now();
        let res = self
            .http
            .post(&self.token_uri)
            .form(&[
                ("grant_type", GRANT_TYPE),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = res.status().as_u16();
        let after = retry_after(res.headers());
        let body = res.bytes().await.map_err(|e| transport_error(&e))?;
        if (200..300).contains(&status) {
            let a: TokenAnswer = serde_json::from_slice(&body).map_err(|e| Outcome::Retry {
                after: None,
                detail: Detail::new("oauth_answer", format!("token endpoint answer: {e}")),
            })?;
            if a.access_token.is_empty() {
                return Err(Outcome::Retry {
                    after: None,
                    detail: Detail::new("oauth_answer", "token endpoint gave no access_token"),
                });
            }
            // Google's tokens live an hour; count from when we asked, to stay on the safe side.
            let lifetime = Duration::from_secs(a.expires_in.unwrap_or(3600));
            return Ok(AccessToken {
                value: a.access_token,
                renew_at: started + lifetime - refresh_margin(lifetime),
            });
        }
        Err(classify_oauth(status, &body, after))
    }
}

/// The token endpoint's refusal: a bad key, account or scope stops the channel; the endpoint
/// being busy or down is retried.
pub fn classify_oauth(status: u16, body: &[u8], after: Option<Duration>) -> Outcome {
    let e: OauthError = serde_json::from_slice(body).unwrap_or_default();
    let code = if e.error.is_empty() {
        format!("oauth_http_{status}")
    } else {
        format!("oauth_{}", e.error)
    };
    let detail = Detail::new(
        code,
        format!("token endpoint answered {status}: {}", e.error_description),
    );
    match status {
        429 => Outcome::Throttled { after, detail },
        408 | 500..=599 => Outcome::Retry { after, detail },
        _ => Outcome::Misconfigured { detail },
    }
}

pub struct Fcm {
    http: reqwest::Client,
    send_url: String,
    auth: TokenSource,
}

impl Fcm {
    pub fn new(cfg: &FcmConfig, sa: ServiceAccount, timeout: Duration) -> Result<Self, String> {
        let project = cfg
            .project()
            .map(str::to_string)
            .unwrap_or_else(|| sa.project_id.clone());
        if project.is_empty() {
            return Err("no project_id in the config or the service account".into());
        }
        let key = EncodingKey::from_rsa_pem(sa.private_key.as_bytes())
            .map_err(|e| format!("service account private_key: {e}"))?;
        let http = http_client(timeout)?;
        Ok(Self {
            send_url: format!(
                "{}/v1/projects/{project}/messages:send",
                cfg.base_url.trim_end_matches('/')
            ),
            auth: TokenSource {
                http: http.clone(),
                client_email: sa.client_email,
                token_uri: sa.token_uri,
                key,
                current: RwLock::new(Slot::default()),
            },
            http,
        })
    }
}

/// FCM's `"<seconds>s"` duration form.
fn seconds(s: i64) -> String {
    format!("{s}s")
}

/// The `messages:send` body for one device token. `now` decides the TTL left until
/// `expire_at`.
pub fn message(n: &Notification, token: &str, now: Millis) -> Value {
    let c = &n.content;
    let mut msg = Map::new();
    msg.insert("token".into(), json!(token));
    let mut notification = Map::new();
    for (k, v) in [
        ("title", &c.title),
        ("body", &c.body),
        ("image", &c.image_url),
    ] {
        if !v.is_empty() {
            notification.insert(k.into(), json!(v));
        }
    }
    let has_notification = !notification.is_empty();
    if has_notification {
        msg.insert("notification".into(), Value::Object(notification));
    }
    if !c.data.is_empty() {
        msg.insert("data".into(), json!(c.data));
    }
    let ttl = (n.expire_at > 0).then(|| ((n.expire_at - now).max(0) / 1000).min(MAX_TTL_SECS));
    let high = n.priority == Priority::High;

    let mut android = Map::new();
    android.insert(
        "priority".into(),
        json!(if high { "HIGH" } else { "NORMAL" }),
    );
    if let Some(t) = ttl {
        android.insert("ttl".into(), json!(seconds(t)));
    }
    if !c.collapse_id.is_empty() {
        android.insert("collapse_key".into(), json!(c.collapse_id));
    }
    msg.insert("android".into(), Value::Object(android));

    // iOS devices reached through FCM: the same rules as the apns channel (a background
    // message must go at priority 5; bulk waits for the device's convenience).
    let mut apns = Map::new();
    let apns_priority = if has_notification && n.priority != Priority::Bulk {
        "10"
    } else {
        "5"
    };
    apns.insert("apns-priority".into(), json!(apns_priority));
    if n.expire_at > 0 {
        apns.insert(
            "apns-expiration".into(),
            json!(n.expire_at.div_euclid(1000).to_string()),
        );
    }
    if !c.collapse_id.is_empty() {
        apns.insert("apns-collapse-id".into(), json!(c.collapse_id));
    }
    msg.insert("apns".into(), json!({ "headers": apns }));

    let mut webpush = Map::new();
    let urgency = match n.priority {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Bulk => "low",
    };
    webpush.insert("Urgency".into(), json!(urgency));
    if let Some(t) = ttl {
        webpush.insert("TTL".into(), json!(t.to_string()));
    }
    msg.insert("webpush".into(), json!({ "headers": webpush }));
    json!({ "message": msg })
}

/// Bytes of the part of a message FCM counts against its 4,096-byte limit (notification and
/// data).
pub fn payload_size(body: &Value) -> usize {
    let m = &body["message"];
    ["notification", "data"]
        .iter()
        .filter(|k| !m[**k].is_null())
        .map(|k| m[*k].to_string().len())
        .sum()
}

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: RpcError,
}

#[derive(Deserialize, Default)]
struct RpcError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl RpcError {
    /// `errorCode` of the `FcmError` detail, if the answer has one.
    fn fcm_code(&self) -> Option<&str> {
        self.details
            .iter()
            .find(|d| {
                d["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("google.firebase.fcm.v1.FcmError"))
            })
            .and_then(|d| d["errorCode"].as_str())
    }

    /// Whether the fault is the registration token: a `BadRequest` field violation on
    /// `message.token`, or a message saying so.
    fn blames_token(&self) -> bool {
        let field = self.details.iter().any(|d| {
            d["fieldViolations"].as_array().is_some_and(|v| {
                v.iter()
                    .any(|f| f["field"].as_str() == Some("message.token"))
            })
        });
        field
            || self
                .message
                .to_ascii_lowercase()
                .contains("registration token")
    }
}

/// Whether an answer refused our OAuth access token itself (401/403 without an `FcmError`
/// detail), which a fresh token may cure.
pub fn rejects_access_token(status: u16, body: &[u8]) -> bool {
    if status != 401 && status != 403 {
        return false;
    }
    let e: ErrorEnvelope = serde_json::from_slice(body).unwrap_or_default();
    e.error.fcm_code().is_none()
}

/// Classifies FCM's answer to one `messages:send` (platforms.md §3).
pub fn classify(status: u16, body: &[u8], after: Option<Duration>) -> Outcome {
    if (200..300).contains(&status) {
        let name = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_default();
        return Outcome::Sent { provider_id: name };
    }
    let e = serde_json::from_slice::<ErrorEnvelope>(body)
        .unwrap_or_default()
        .error;
    let fcm = e.fcm_code().map(str::to_string);
    let code = fcm.clone().unwrap_or_else(|| {
        if e.status.is_empty() {
            format!("http_{status}")
        } else {
            e.status.clone()
        }
    });
    let detail = Detail::new(code.clone(), format!("{status} {}", e.message));
    match fcm.as_deref() {
        Some("UNREGISTERED") => Outcome::DeadAddress { detail },
        Some("INVALID_ARGUMENT") if e.blames_token() => Outcome::DeadAddress { detail },
        Some("INVALID_ARGUMENT") => Outcome::BadPayload { detail },
        // The token belongs to another sender. Per token that is a dead address; if every
        // token says so, the project is wrong, which the operator sees in the error codes.
        Some("SENDER_ID_MISMATCH") => Outcome::DeadAddress { detail },
        Some("QUOTA_EXCEEDED") => Outcome::Throttled {
            after: Some(after.unwrap_or(QUOTA_BACKOFF).max(QUOTA_BACKOFF)),
            detail,
        },
        Some("UNAVAILABLE") | Some("INTERNAL") | Some("UNSPECIFIED_ERROR") => {
            Outcome::Retry { after, detail }
        }
        // FCM could not authenticate to APNs or the Web Push service with the credentials
        // uploaded to the Firebase project: nothing Herald can fix by retrying.
        Some("THIRD_PARTY_AUTH_ERROR") | Some("APNS_AUTH_ERROR") => {
            Outcome::Misconfigured { detail }
        }
        _ => match status {
            // Our access token or the project's permissions (the caller has already renewed
            // the token once), or a wrong project id / base URL.
            401 | 403 | 404 => Outcome::Misconfigured { detail },
            429 => Outcome::Throttled {
                after: Some(after.unwrap_or(QUOTA_BACKOFF).max(QUOTA_BACKOFF)),
                detail,
            },
            408 | 500..=599 => Outcome::Retry { after, detail },
            _ => Outcome::BadPayload { detail },
        },
    }
}

/// One answer: HTTP status, body, `Retry-After`.
struct Answer {
    status: u16,
    body: Vec<u8>,
    after: Option<Duration>,
}

impl Fcm {
    async fn post(&self, access: &str, body: &Value) -> Result<Answer, Outcome> {
        let res = self
            .http
            .post(&self.send_url)
            .bearer_auth(access)
            .json(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = res.status().as_u16();
        let after = retry_after(res.headers());
        let body = res.bytes().await.map_err(|e| transport_error(&e))?;
        Ok(Answer {
            status,
            body: body.to_vec(),
            after,
        })
    }

    /// Sends to one token. Returns the outcome and whether the access token was renewed.
    async fn send_one(&self, n: &Notification, token: &str, now: Millis) -> (Outcome, bool) {
        let body = message(n, token, now);
        let size = payload_size(&body);
        if size > MAX_PAYLOAD {
            return (
                Outcome::BadPayload {
                    detail: Detail::new(
                        "payload_too_large",
                        format!("notification and data are {size} bytes; FCM takes {MAX_PAYLOAD}"),
                    ),
                },
                false,
            );
        }
        let access = match self.auth.token().await {
            Ok(a) => a,
            Err(o) => return (o, false),
        };
        let first = match self.post(&access, &body).await {
            Ok(a) => a,
            Err(o) => return (o, false),
        };
        if !rejects_access_token(first.status, &first.body) {
            return (classify(first.status, &first.body, first.after), false);
        }
        // Our token was refused (expired early, revoked): one new token, one more try; a
        // second refusal is a configuration problem (classify says Misconfigured).
        let access = match self.auth.renew(&access).await {
            Ok(a) => a,
            Err(o) => return (o, true),
        };
        match self.post(&access, &body).await {
            Ok(a) => (classify(a.status, &a.body, a.after), true),
            Err(o) => (o, true),
        }
    }
}

#[async_trait]
impl Channel for Fcm {
    fn kind(&self) -> model::Channel {
        model::Channel::Fcm
    }

    async fn send(&self, n: &Notification, ctx: &SendContext<'_>) -> Delivery {
        let sends = ctx
            .addresses
            .iter()
            .map(|t| async move { (t.clone(), self.send_one(n, t, ctx.now).await) });
        let results = futures::future::join_all(sends).await;
        let renewed = results.iter().any(|(_, (_, r))| *r);
        let accepted = results
            .iter()
            .filter(|(_, (o, _))| matches!(o, Outcome::Sent { .. }))
            .count();
        let mut d = combine(results.into_iter().map(|(t, (o, _))| (t, o)).collect())
            .meta("tokens", ctx.addresses.len())
            .meta("accepted", accepted);
        if renewed {
            d = d.meta("oauth_renewed", "true");
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Content, Recipient};

    fn note() -> Notification {
        Notification {
            id: "01HZY3M5R6T7V8W9X0Y1Z2A3B4-3".into(),
            recipient: Recipient::default(),
            route: vec![model::Channel::Fcm],
            content: Content {
                title: "Hi".into(),
                body: "Shipped".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn message_has_token_notification_data_and_android_block() {
        let mut n = note();
        n.priority = Priority::High;
        n.content.image_url = "https://img.example/x.png".into();
        n.content.data.insert("order".into(), "42".into());
        n.content.collapse_id = "order-42".into();
        n.expire_at = 1_000_000 + 3_600_000;
        let m = message(&n, "tok-1", 1_000_000);
        let msg = &m["message"];
        assert_eq!(msg["token"], "tok-1");
        assert_eq!(
            msg["notification"],
            json!({"title": "Hi", "body": "Shipped", "image": "https://img.example/x.png"})
        );
        assert_eq!(msg["data"], json!({"order": "42"}));
        assert_eq!(msg["android"]["priority"], "HIGH");
        assert_eq!(msg["android"]["ttl"], "3600s");
        assert_eq!(msg["android"]["collapse_key"], "order-42");
        assert_eq!(msg["apns"]["headers"]["apns-priority"], "10");
        assert_eq!(msg["apns"]["headers"]["apns-expiration"], "4600");
        assert_eq!(msg["apns"]["headers"]["apns-collapse-id"], "order-42");
        assert_eq!(msg["webpush"]["headers"]["Urgency"], "high");
        assert_eq!(msg["webpush"]["headers"]["TTL"], "3600");
    }

    #[test]
    fn message_defaults_and_data_only() {
        let mut n = note();
        n.content.title.clear();
        n.content.body.clear();
        n.content.data.insert("k".into(), "v".into());
        let m = message(&n, "t", 0);
        let msg = &m["message"];
        assert!(msg.get("notification").is_none());
        assert_eq!(msg["android"]["priority"], "NORMAL");
        assert!(msg["android"].get("ttl").is_none());
        assert!(msg["android"].get("collapse_key").is_none());
        // A data-only message reaches iOS as a background push: priority 5.
        assert_eq!(msg["apns"]["headers"]["apns-priority"], "5");
        assert!(msg["apns"]["headers"].get("apns-expiration").is_none());
        n.priority = Priority::Bulk;
        assert_eq!(
            message(&n, "t", 0)["message"]["webpush"]["headers"]["Urgency"],
            "low"
        );
    }

    #[test]
    fn ttl_is_capped_and_never_negative() {
        let mut n = note();
        n.expire_at = 100 * 24 * 3_600_000;
        assert_eq!(message(&n, "t", 0)["message"]["android"]["ttl"], "2419200s");
        n.expire_at = 5_000;
        assert_eq!(message(&n, "t", 9_000)["message"]["android"]["ttl"], "0s");
    }

    #[test]
    fn payload_size_counts_notification_and_data() {
        let mut n = note();
        n.content.data.insert("k".into(), "x".repeat(5000));
        assert!(payload_size(&message(&n, "t", 0)) > MAX_PAYLOAD);
        assert!(payload_size(&message(&note(), "t", 0)) < 100);
    }

    #[test]
    fn assertion_claims_follow_google() {
        let c = assertion_claims("sa@p.iam.gserviceaccount.com", "https://o/token", 1000);
        assert_eq!(c.iss, "sa@p.iam.gserviceaccount.com");
        assert_eq!(c.scope, SCOPE);
        assert_eq!(c.aud, "https://o/token");
        assert_eq!(c.exp - c.iat, 3600);
    }

    #[test]
    fn refresh_margin_is_five_minutes_or_half_life() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
    }

    fn err(code: u16, status: &str, fcm: Option<&str>, message: &str) -> Vec<u8> {
        let mut details = vec![];
        if let Some(c) = fcm {
            details.push(json!({
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": c
            }));
        }
        json!({"error": {"code": code, "message": message, "status": status, "details": details}})
            .to_string()
            .into_bytes()
    }

    fn code_of(o: &Outcome) -> &str {
        o.detail().map(|d| d.code.as_str()).unwrap_or("")
    }

    #[test]
    fn success_gives_the_message_name() {
        let o = classify(200, br#"{"name":"projects/p/messages/0:1%ab"}"#, None);
        assert_eq!(
            o,
            Outcome::Sent {
                provider_id: "projects/p/messages/0:1%ab".into()
            }
        );
    }

    #[test]
    fn every_documented_error_is_classified() {
        let ra = Some(Duration::from_secs(7));
        let o = classify(
            404,
            &err(
                404,
                "NOT_FOUND",
                Some("UNREGISTERED"),
                "Requested entity was not found.",
            ),
            None,
        );
        assert!(matches!(o, Outcome::DeadAddress { .. }));
        assert_eq!(code_of(&o), "UNREGISTERED");

        let o = classify(
            403,
            &err(
                403,
                "PERMISSION_DENIED",
                Some("SENDER_ID_MISMATCH"),
                "SenderId mismatch",
            ),
            None,
        );
        assert!(matches!(o, Outcome::DeadAddress { .. }));
        assert_eq!(code_of(&o), "SENDER_ID_MISMATCH");

        let o = classify(
            429,
            &err(
                429,
                "RESOURCE_EXHAUSTED",
                Some("QUOTA_EXCEEDED"),
                "Quota exceeded",
            ),
            None,
        );
        assert!(
            matches!(o, Outcome::Throttled { after: Some(d), .. } if d == Duration::from_secs(60))
        );
        let o = classify(
            429,
            &err(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), "q"),
            Some(Duration::from_secs(120)),
        );
        assert!(
            matches!(o, Outcome::Throttled { after: Some(d), .. } if d == Duration::from_secs(120))
        );
        assert_eq!(code_of(&o), "QUOTA_EXCEEDED");

        let o = classify(
            503,
            &err(
                503,
                "UNAVAILABLE",
                Some("UNAVAILABLE"),
                "The service is currently unavailable.",
            ),
            ra,
        );
        assert!(matches!(o, Outcome::Retry { after, .. } if after == ra));
        assert_eq!(code_of(&o), "UNAVAILABLE");

        let o = classify(
            500,
            &err(
                500,
                "INTERNAL",
                Some("INTERNAL"),
                "Internal error encountered.",
            ),
            None,
        );
        assert!(matches!(o, Outcome::Retry { after: None, .. }));
        assert_eq!(code_of(&o), "INTERNAL");

        let o = classify(
            401,
            &err(
                401,
                "UNAUTHENTICATED",
                Some("THIRD_PARTY_AUTH_ERROR"),
                "Auth error from APNS or Web Push Service",
            ),
            None,
        );
        assert!(matches!(o, Outcome::Misconfigured { .. }));
        assert_eq!(code_of(&o), "THIRD_PARTY_AUTH_ERROR");
        assert!(!rejects_access_token(
            401,
            &err(401, "UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR"), "x")
        ));
    }

    #[test]
    fn invalid_argument_is_dead_only_when_the_token_is_blamed() {
        let mut v: Value = serde_json::from_slice(&err(
            400,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "The registration token is not a valid FCM registration token",
        ))
        .expect("json");
        let o = classify(400, v.to_string().as_bytes(), None);
        assert!(matches!(o, Outcome::DeadAddress { .. }));
        // The field violation alone is enough.
        v["error"]["message"] = json!("Request contains an invalid argument.");
        v["error"]["details"]
            .as_array_mut()
            .expect("details")
            .push(json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "message.token", "description": "bad"}]
            }));
        assert!(matches!(
            classify(400, v.to_string().as_bytes(), None),
            Outcome::DeadAddress { .. }
        ));
        let o = classify(
            400,
            &err(
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                "Request contains an invalid argument.",
            ),
            None,
        );
        assert!(matches!(o, Outcome::BadPayload { .. }));
        assert_eq!(code_of(&o), "INVALID_ARGUMENT");
    }

    #[test]
    fn our_token_refused_is_recognised_and_ends_as_auth() {
        let body = err(
            401,
            "UNAUTHENTICATED",
            None,
            "Request had invalid authentication credentials.",
        );
        assert!(rejects_access_token(401, &body));
        let o = classify(401, &body, None);
        assert!(matches!(o, Outcome::Misconfigured { .. }));
        assert_eq!(code_of(&o), "UNAUTHENTICATED");
        let body = err(403, "PERMISSION_DENIED", None, "Permission denied");
        assert!(rejects_access_token(403, &body));
        assert!(matches!(
            classify(403, &body, None),
            Outcome::Misconfigured { .. }
        ));
        assert!(!rejects_access_token(404, &body));
    }

    #[test]
    fn answers_without_an_fcm_code_fall_back_on_the_status() {
        assert!(matches!(
            classify(502, b"<html>", None),
            Outcome::Retry { .. }
        ));
        assert_eq!(code_of(&classify(502, b"<html>", None)), "http_502");
        assert!(matches!(
            classify(400, b"{}", None),
            Outcome::BadPayload { .. }
        ));
        assert!(matches!(
            classify(429, b"", None),
            Outcome::Throttled { after: Some(_), .. }
        ));
        assert!(matches!(
            classify(404, &err(404, "NOT_FOUND", None, "x"), None),
            Outcome::Misconfigured { .. }
        ));
    }

    #[test]
    fn token_endpoint_refusals() {
        let o = classify_oauth(
            400,
            br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
            None,
        );
        assert!(matches!(o, Outcome::Misconfigured { .. }));
        assert_eq!(code_of(&o), "oauth_invalid_grant");
        assert!(matches!(
            classify_oauth(503, b"", None),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify_oauth(429, b"", None),
            Outcome::Throttled { .. }
        ));
    }
}
