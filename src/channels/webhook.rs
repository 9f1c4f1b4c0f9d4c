//! `webhook`: a JSON POST to the recipient's `webhook_url`, signed per the Standard Webhooks
//! specification (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>` with a
//! `whsec_` secret), so receivers verify it with that specification's libraries.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::{parse_retry_after, Channel, Delivery, SendContext};
use crate::model::{self, Detail, Notification, Outcome};

pub use crate::config::decode_whsec as decode_secret;

/// A fresh random secret in `whsec_` form.
pub fn generate_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("whsec_{}", B64.encode(key))
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// The JSON body a receiver gets (Standard Webhooks' `type`, `timestamp`, `data` shape),
/// serialized straight from the notification. Keys are in sorted order, as a `serde_json::Value`
/// would write them, so the bytes are the same as building a `Value` first (and about a third
/// of the CPU: no copies, no map of maps).
pub fn payload(n: &Notification, attempt: u32, now_secs: i64) -> Vec<u8> {
    let c = &n.content;
    let body = Body {
        data: Data {
            actions: &c.actions,
            attempt,
            body: &c.body,
            campaign_id: &n.campaign_id,
            category: n.category.name(),
            contact_id: &n.recipient.contact_id,
            data: &c.data,
            image_url: &c.image_url,
            labels: &n.labels,
            notification_id: &n.id,
            priority: n.priority.name(),
            title: &c.title,
        },
        timestamp: httpdate_rfc3339(now_secs),
        kind: "notification.send",
    };
    // Plain strings and string maps: serializing them to a Vec cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The payload's top level; fields in sorted key order.
#[derive(Serialize)]
struct Body<'a> {
    data: Data<'a>,
    timestamp: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The payload's `data`; fields in sorted key order.
#[derive(Serialize)]
struct Data<'a> {
    actions: &'a [model::Action],
    attempt: u32,
    body: &'a str,
    campaign_id: &'a str,
    category: &'static str,
    contact_id: &'a str,
    data: &'a BTreeMap<String, String>,
    image_url: &'a str,
    labels: &'a BTreeMap<String, String>,
    notification_id: &'a str,
    priority: &'static str,
    title: &'a str,
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
fn httpdate_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

thread_local! {
    /// The last webhook URL this thread parsed. A batch or a campaign names the same URL over
    /// and over; parsing each (with IDNA) was a tenth of SendBatch's CPU at ingest and about 1%
    /// of e2e's at send.
    static LAST_TARGET: std::cell::RefCell<Option<(String, reqwest::Url)>> =
        const { std::cell::RefCell::new(None) };
}

/// `raw` parsed, from the thread's last one when it is the same string. Ingest checks webhook
/// URLs with it and the channel posts to what it gives.
pub(crate) fn target(raw: &str) -> Option<reqwest::Url> {
    let known = LAST_TARGET.with(|last| match &*last.borrow() {
        Some((s, u)) if s == raw => Some(u.clone()),
        _ => None,
    });
    if known.is_some() {
        return known;
    }
    let url = reqwest::Url::parse(raw).ok()?;
    LAST_TARGET.with(|last| *last.borrow_mut() = Some((raw.to_string(), url.clone())));
    Some(url)
}

pub struct Webhook {
    client: reqwest::Client,
    key: Vec<u8>,
}

impl Webhook {
    /// `secret` in `whsec_` form.
    pub fn new(secret: &str, timeout: Duration) -> Result<Self, String> {
        let key = decode_secret(secret)?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(super::MAX_IDLE_PER_HOST)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Self { client, key })
    }
}

/// Classifies a receiver's answer.
pub fn classify(status: u16, retry_after: Option<Duration>, provider_id: String) -> Outcome {
    let detail = || {
        Detail::new(
            format!("http_{status}"),
            format!("receiver answered {status}"),
        )
    };
    match status {
        200..=299 => Outcome::Sent { provider_id },
        429 => Outcome::Throttled {
            after: retry_after,
            detail: detail(),
        },
        408 | 425 | 500..=599 => Outcome::Retry {
            after: retry_after,
            detail: detail(),
        },
        404 | 410 => Outcome::DeadAddress { detail: detail() },
        401 | 403 => Outcome::Misconfigured { detail: detail() },
        _ => Outcome::BadPayload { detail: detail() },
    }
}

#[async_trait]
impl Channel for Webhook {
    fn kind(&self) -> model::Channel {
        model::Channel::Webhook
    }

    fn accept_is_delivery(&self) -> bool {
        true
    }

    async fn send(&self, n: &Notification, ctx: &SendContext<'_>) -> Delivery {
        Delivery::of(self.post(n, ctx.attempt).await)
    }
}

impl Webhook {
    async fn post(&self, n: &Notification, attempt: u32) -> Outcome {
        let url = &n.recipient.webhook_url;
        if url.is_empty() {
            return Outcome::DeadAddress {
                detail: Detail::new("no_address", "recipient has no webhook_url"),
            };
        }
        let now = model::now_ms() / 1000;
        let body = payload(n, attempt, now);
        let sig = sign(&self.key, &n.id, now, &body);
        let req = match target(url) {
            Some(u) => self.client.post(u),
            // Not a URL: reqwest refuses it the same way, and the refusal is classified below.
            None => self.client.post(url.as_str()),
        };
        let res = req
            .header("content-type", "application/json")
            .header("webhook-id", &n.id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) => {
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                classify(r.status().as_u16(), retry_after, n.id.clone())
            }
            Err(e) if e.is_builder() => Outcome::BadPayload {
                detail: Detail::new("bad_url", e.to_string()),
            },
            Err(e) => Outcome::Retry {
                after: None,
                detail: Detail::new(
                    if e.is_timeout() { "timeout" } else { "connect" },
                    e.to_string(),
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked() {
        assert!(decode_secret("nope").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
        let s = generate_secret();
        assert_eq!(decode_secret(&s).expect("valid").len(), 32);
    }

    #[test]
    fn signature_verifies_with_the_standard_webhooks_library() {
        let secret = generate_secret();
        let key = decode_secret(&secret).expect("valid");
        let ts = model::now_ms() / 1000;
        let body = br#"{"hello":"world"}"#;
        let sig = sign(&key, "msg_1", ts, body);
        let wh = standardwebhooks::Webhook::new(&secret).expect("library accepts the secret");
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().expect("header"));
        headers.insert("webhook-timestamp", ts.to_string().parse().expect("header"));
        headers.insert("webhook-signature", sig.parse().expect("header"));
        wh.verify(body, &headers).expect("signature verifies");
        // A changed body no longer verifies.
        assert!(wh.verify(br#"{"hello":"there"}"#, &headers).is_err());
    }

    #[test]
    fn answers_are_classified() {
        let ra = Some(Duration::from_secs(2));
        assert!(matches!(
            classify(204, None, "x".into()),
            Outcome::Sent { .. }
        ));
        assert!(matches!(
            classify(503, ra, String::new()),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(2)
        ));
        assert!(matches!(
            classify(429, ra, String::new()),
            Outcome::Throttled { .. }
        ));
        assert!(matches!(
            classify(410, None, String::new()),
            Outcome::DeadAddress { .. }
        ));
        assert!(matches!(
            classify(401, None, String::new()),
            Outcome::Misconfigured { .. }
        ));
        assert!(matches!(
            classify(400, None, String::new()),
            Outcome::BadPayload { .. }
        ));
    }

    #[test]
    fn the_payload_is_what_a_json_value_of_it_writes() {
        let mut n = Notification {
            id: "01J0000000000000000000000W".into(),
            campaign_id: "spring \"sale\"".into(),
            labels: [("k".into(), "v\n".into()), ("a".into(), "é".into())].into(),
            ..Default::default()
        };
        n.recipient.contact_id = "c-1".into();
        n.content.title = "Hi".into();
        n.content.body = "<b>50%</b> off \u{1F600}".into();
        n.content.image_url = "https://img.example/x.png".into();
        n.content.actions = vec![model::Action {
            label: "Open".into(),
            url: "https://a.example/o".into(),
        }];
        n.content.data = [("deep".into(), "link".into())].into();
        let c = &n.content;
        let by_value = serde_json::json!({
            "type": "notification.send",
            "timestamp": httpdate_rfc3339(1_700_000_000),
            "data": {
                "notification_id": n.id,
                "campaign_id": n.campaign_id,
                "category": n.category.name(),
                "priority": n.priority.name(),
                "labels": n.labels,
                "contact_id": n.recipient.contact_id,
                "title": c.title,
                "body": c.body,
                "image_url": c.image_url,
                "actions": c.actions.iter().map(|a| serde_json::json!({"label": a.label, "url": a.url})).collect::<Vec<_>>(),
                "data": c.data,
                "attempt": 3,
            }
        });
        let bytes = payload(&n, 3, 1_700_000_000);
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            by_value.to_string()
        );
    }

    #[test]
    fn a_remembered_target_is_the_url_asked_for() {
        let a = target("http://a.example/h?x=1").expect("a");
        let b = target("https://b.example/other").expect("b");
        assert_eq!(a.as_str(), "http://a.example/h?x=1");
        assert_eq!(b.as_str(), "https://b.example/other");
        assert_eq!(target("https://b.example/other").expect("b again"), b);
        assert!(target("not a url").is_none());
        assert_eq!(target("http://a.example/h?x=1").expect("a again"), a);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(httpdate_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(httpdate_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
