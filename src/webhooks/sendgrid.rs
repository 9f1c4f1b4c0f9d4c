//! `/webhooks/sendgrid`: SendGrid's signed Event Webhook. Delivery, engagement (open, click),
//! bounces, drops, spam reports and unsubscribes become receipts and contact state. The
//! signature (`X-Twilio-Email-Event-Webhook-Signature`, ECDSA P-256 / SHA-256 over the
//! `X-Twilio-Email-Event-Webhook-Timestamp` value followed by the raw body) is checked with
//! `channels.email.sendgrid_webhook_public_key` before a byte is believed.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde_json::Value;

use super::{store_failed, WebhookState};
use crate::model::{
    now_ms, Channel, ContactChange, ContactKey, ErrorClass, Millis, ProviderReceipt, Status,
};

pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// How old (or how far ahead) a signed timestamp may be: older ones are replays.
pub const MAX_SKEW_SECS: i64 = 600;

pub fn routes() -> Router<WebhookState> {
    Router::new().route("/", post(events))
}

/// Checks the signature and the timestamp's age (`now_secs`).
pub fn verify(
    key: &VerifyingKey,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), &'static str> {
    let ts = timestamp.ok_or("missing timestamp")?;
    let secs: i64 = ts.trim().parse().map_err(|_| "malformed timestamp")?;
    if (now_secs - secs).abs() > MAX_SKEW_SECS {
        return Err("stale timestamp");
    }
    let der = B64
        .decode(signature.ok_or("missing signature")?.trim())
        .map_err(|_| "malformed signature")?;
    let sig = Signature::from_der(&der).map_err(|_| "malformed signature")?;
    let mut signed = Vec::with_capacity(ts.len() + body.len());
    signed.extend_from_slice(ts.as_bytes());
    signed.extend_from_slice(body);
    key.verify(&signed, &sig).map_err(|_| "bad signature")
}

/// What one batch of events asks of the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub receipts: Vec<ProviderReceipt>,
    pub contacts: Vec<(ContactKey, ContactChange)>,
}

/// Reads SendGrid's event array. Events it cannot tie to a notification still change contact
/// state (an unsubscribe is an unsubscribe); unknown events are ignored.
pub fn effects(events: &[Value], now: Millis) -> Effects {
    let mut out = Effects::default();
    for e in events {
        let email = e["email"].as_str().unwrap_or("").trim();
        let event = e["event"].as_str().unwrap_or("");
        let at = e["timestamp"]
            .as_i64()
            .filter(|t| *t > 0)
            .map(|t| t * 1000)
            .unwrap_or(now);
        // `sg_message_id` is `<X-Message-Id>.<filter and recipient suffix>`.
        let provider_id = e["sg_message_id"]
            .as_str()
            .and_then(|s| s.split('.').next())
            .unwrap_or("")
            .to_string();
        let notification_id = e["notification_id"].as_str().unwrap_or("").to_string();
        let mut contact = |change| {
            if !email.is_empty() {
                out.contacts
                    .push((ContactKey::new(Channel::Email, email), change));
            }
        };
        let status = match event {
            "delivered" => Some((Status::Delivered, None, String::new())),
            "open" => Some((Status::Read, None, String::new())),
            "click" => Some((Status::Clicked, None, String::new())),
            "bounce" => {
                let code = e["status"].as_str().unwrap_or("bounce").to_string();
                if e["type"].as_str() == Some("blocked") {
                    // Refused by the receiving server's policy, not a dead mailbox.
                    Some((Status::Failed, Some(ErrorClass::Policy), code))
                } else {
                    contact(ContactChange::Dead);
                    Some((Status::Failed, Some(ErrorClass::DeadAddress), code))
                }
            }
            "dropped" => {
                // SendGrid's own suppression: its reason says which list the address is on.
                let reason = e["reason"].as_str().unwrap_or("").to_ascii_lowercase();
                let class = if reason.contains("bounced") || reason.contains("invalid") {
                    contact(ContactChange::Dead);
                    ErrorClass::DeadAddress
                } else if reason.contains("unsubscribed") || reason.contains("spam reporting") {
                    contact(ContactChange::OptOut);
                    ErrorClass::Policy
                } else {
                    ErrorClass::Policy
                };
                Some((Status::Failed, Some(class), "dropped".to_string()))
            }
            "spamreport" | "unsubscribe" | "group_unsubscribe" => {
                contact(ContactChange::OptOut);
                None
            }
            "group_resubscribe" => {
                contact(ContactChange::OptIn);
                None
            }
            // processed, deferred and anything newer: nothing to record.
            _ => None,
        };
        if let Some((status, error_class, error_code)) = status {
            if provider_id.is_empty() && notification_id.is_empty() {
                continue;
            }
            out.receipts.push(ProviderReceipt {
                channel: Channel::Email,
                notification_id: notification_id.clone(),
                provider_id,
                status,
                error_class,
                error_code,
                at,
            });
        }
    }
    out
}

async fn events(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let key = match state
        .config
        .channels
        .email
        .as_ref()
        .map(|c| c.webhook_key())
    {
        Some(Ok(Some(k))) => k,
        // Validated at start; without a key nothing can be believed.
        _ => {
            return (
                StatusCode::NOT_FOUND,
                "sendgrid event webhook not configured\n".into(),
            )
        }
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(why) = verify(
        &key,
        h(TIMESTAMP_HEADER),
        h(SIGNATURE_HEADER),
        &body,
        now_ms() / 1000,
    ) {
        tracing::warn!(reason = why, "sendgrid event webhook rejected");
        return (StatusCode::FORBIDDEN, format!("{why}\n"));
    }
    let events: Vec<Value> = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an event array: {e}\n"),
            )
        }
    };
    let fx = effects(&events, now_ms());
    if !fx.contacts.is_empty() {
        if let Err(e) = state.store.update_contacts(fx.contacts).await {
            return store_failed(e);
        }
    }
    if let Err(e) = state.store.record_receipts(fx.receipts).await {
        return store_failed(e);
    }
    (StatusCode::OK, "ok\n".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_slice(&[9u8; 32]).expect("scalar")
    }

    fn sign(k: &SigningKey, ts: &str, body: &[u8]) -> String {
        let mut m = ts.as_bytes().to_vec();
        m.extend_from_slice(body);
        let sig: Signature = k.sign(&m);
        B64.encode(sig.to_der().as_bytes())
    }

    #[test]
    fn signatures_verify_and_reject() {
        let k = key();
        let vk = *k.verifying_key();
        let body = br#"[{"event":"delivered"}]"#;
        let sig = sign(&k, "1700000000", body);
        assert_eq!(
            verify(&vk, Some("1700000000"), Some(&sig), body, 1_700_000_100),
            Ok(())
        );
        // Another body, another timestamp, another key, stale, missing parts.
        assert_eq!(
            verify(&vk, Some("1700000000"), Some(&sig), b"[]", 1_700_000_100),
            Err("bad signature")
        );
        assert_eq!(
            verify(&vk, Some("1700000001"), Some(&sig), body, 1_700_000_100),
            Err("bad signature")
        );
        let other = SigningKey::from_slice(&[3u8; 32]).expect("scalar");
        let forged = sign(&other, "1700000000", body);
        assert_eq!(
            verify(&vk, Some("1700000000"), Some(&forged), body, 1_700_000_100),
            Err("bad signature")
        );
        assert_eq!(
            verify(&vk, Some("1700000000"), Some(&sig), body, 1_700_000_601),
            Err("stale timestamp")
        );
        assert_eq!(
            verify(&vk, None, Some(&sig), body, 1_700_000_000),
            Err("missing timestamp")
        );
        assert_eq!(
            verify(&vk, Some("1700000000"), None, body, 1_700_000_000),
            Err("missing signature")
        );
        assert_eq!(
            verify(&vk, Some("1700000000"), Some("!!"), body, 1_700_000_000),
            Err("malformed signature")
        );
    }

    #[test]
    fn events_become_receipts_and_contact_changes() {
        let events = json!([
            {"email":"a@x.com","event":"processed","sg_message_id":"AAA.f1.0"},
            {"email":"a@x.com","event":"delivered","timestamp":1700000000,"sg_message_id":"AAA.filterdrecv-1.0","notification_id":"N1"},
            {"email":"a@x.com","event":"open","sg_message_id":"AAA.f1.0"},
            {"email":"a@x.com","event":"click","sg_message_id":"AAA.f1.0","url":"https://x"},
            {"email":"b@x.com","event":"bounce","type":"bounce","status":"5.1.1","sg_message_id":"BBB.f.0"},
            {"email":"c@x.com","event":"bounce","type":"blocked","status":"5.7.1","sg_message_id":"CCC.f.0"},
            {"email":"d@x.com","event":"dropped","reason":"Bounced Address","sg_message_id":"DDD.f.0"},
            {"email":"e@x.com","event":"spamreport","sg_message_id":"EEE.f.0"},
            {"email":"f@x.com","event":"unsubscribe"},
            {"email":"g@x.com","event":"deferred","sg_message_id":"GGG.f.0"}
        ]);
        let fx = effects(events.as_array().expect("array"), 5);
        let got: Vec<_> = fx
            .receipts
            .iter()
            .map(|r| {
                (
                    r.notification_id.as_str(),
                    r.provider_id.as_str(),
                    r.status,
                    r.error_class,
                    r.error_code.as_str(),
                    r.at,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("N1", "AAA", Status::Delivered, None, "", 1_700_000_000_000),
                ("", "AAA", Status::Read, None, "", 5),
                ("", "AAA", Status::Clicked, None, "", 5),
                (
                    "",
                    "BBB",
                    Status::Failed,
                    Some(ErrorClass::DeadAddress),
                    "5.1.1",
                    5
                ),
                (
                    "",
                    "CCC",
                    Status::Failed,
                    Some(ErrorClass::Policy),
                    "5.7.1",
                    5
                ),
                (
                    "",
                    "DDD",
                    Status::Failed,
                    Some(ErrorClass::DeadAddress),
                    "dropped",
                    5
                ),
            ]
        );
        let key = |a: &str| ContactKey::new(Channel::Email, a);
        assert_eq!(
            fx.contacts,
            vec![
                (key("b@x.com"), ContactChange::Dead),
                (key("d@x.com"), ContactChange::Dead),
                (key("e@x.com"), ContactChange::OptOut),
                (key("f@x.com"), ContactChange::OptOut),
            ]
        );
    }
}
