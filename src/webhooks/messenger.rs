//! `/webhooks/messenger`: Messenger's subscription handshake (GET) and events (POST, signed
//! with `X-Hub-Signature-256`): delivery and read watermarks move every message sent to that
//! PSID at or before the watermark to DELIVERED / READ; an inbound message opens the 24 h
//! window (and shows the person is reachable again).

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::Value;
use tracing::debug;

use super::{store_failed, verify_hub_signature, WebhookState};
use crate::config::messenger::MessengerConfig;
use crate::model::{now_ms, Channel, ContactChange, ContactKey, Millis, ProviderReceipt, Status};
use crate::telemetry;

pub fn routes() -> Router<WebhookState> {
    Router::new().route("/", get(verify).post(event))
}

/// The `hub.*` parameters of Meta's subscription handshake.
#[derive(Debug, Deserialize)]
pub struct Handshake {
    #[serde(rename = "hub.mode", default)]
    pub mode: String,
    #[serde(rename = "hub.verify_token", default)]
    pub verify_token: String,
    #[serde(rename = "hub.challenge", default)]
    pub challenge: String,
}

/// Answers the handshake: the challenge when the mode is `subscribe` and the token is ours,
/// else 403. Shared with the WhatsApp webhook.
pub fn answer_handshake(expected: Option<String>, h: &Handshake) -> Response {
    let ok = match expected {
        Some(t) if !t.is_empty() => {
            h.mode == "subscribe" && constant_time_eq(t.as_bytes(), h.verify_token.as_bytes())
        }
        _ => false,
    };
    if ok {
        (StatusCode::OK, h.challenge.clone()).into_response()
    } else {
        (StatusCode::FORBIDDEN, "verification failed\n").into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `X-Hub-Signature-256` with `secret`: None when it verifies, else the answer
/// (401 without a signature, 403 with a wrong one). Shared with the WhatsApp webhook.
pub fn check_signature(secret: &str, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
    let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
    else {
        return Some((StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256\n").into_response());
    };
    if verify_hub_signature(secret.as_bytes(), body, Some(sig)) {
        None
    } else {
        Some((StatusCode::FORBIDDEN, "bad signature\n").into_response())
    }
}

fn config(s: &WebhookState) -> Option<&MessengerConfig> {
    s.config.channels.messenger.as_ref().filter(|c| c.enabled)
}

fn not_configured() -> Response {
    (StatusCode::NOT_FOUND, "messenger is not configured\n").into_response()
}

async fn verify(State(s): State<WebhookState>, Query(h): Query<Handshake>) -> Response {
    let Some(cfg) = config(&s) else {
        return not_configured();
    };
    answer_handshake(cfg.verify_token().ok().flatten(), &h)
}

/// What one webhook body asks of the store.
#[derive(Debug, Default, PartialEq)]
pub struct Events {
    /// (PSID, watermark ms, event time ms) for delivery watermarks.
    pub delivered: Vec<(String, Millis, Millis)>,
    /// Message ids a delivery event lists (`delivery.mids`).
    pub delivered_mids: Vec<(String, Millis)>,
    /// (PSID, watermark ms, event time ms) for read watermarks.
    pub read: Vec<(String, Millis, Millis)>,
    /// (PSID, time ms) the person wrote (or pressed a button).
    pub inbound: Vec<(String, Millis)>,
}

/// Reads the `entry[].messaging[]` events of a page webhook body.
pub fn parse(body: &Value, now: Millis) -> Events {
    let mut ev = Events::default();
    let entries = body
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for entry in entries {
        let items = entry
            .get("messaging")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for m in items {
            let sender = m
                .pointer("/sender/id")
                .and_then(as_text)
                .unwrap_or_default();
            if sender.is_empty() {
                continue;
            }
            let at = m.get("timestamp").and_then(as_ms).unwrap_or(now);
            if let Some(d) = m.get("delivery") {
                if let Some(w) = d.get("watermark").and_then(as_ms) {
                    ev.delivered.push((sender.clone(), w, at));
                }
                for mid in d
                    .get("mids")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    if let Some(mid) = mid.as_str() {
                        ev.delivered_mids.push((mid.to_string(), at));
                    }
                }
            }
            if let Some(w) = m.pointer("/read/watermark").and_then(as_ms) {
                ev.read.push((sender.clone(), w, at));
            }
            let is_echo = m
                .pointer("/message/is_echo")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            // Echoes are our own page's messages, with the page as sender.
            if (m.get("message").is_some() && !is_echo) || m.get("postback").is_some() {
                ev.inbound.push((sender, at));
            }
        }
    }
    ev
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn as_ms(v: &Value) -> Option<Millis> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

async fn event(State(s): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(cfg) = config(&s) else {
        return not_configured();
    };
    let Ok(secret) = cfg.app_secret() else {
        return not_configured();
    };
    if let Some(refused) = check_signature(&secret, &headers, &body) {
        return refused;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON\n").into_response();
    };
    let ev = parse(&v, now_ms());
    match apply(&s, ev).await {
        Ok(()) => (StatusCode::OK, "EVENT_RECEIVED").into_response(),
        Err(e) => store_failed(e).into_response(),
    }
}

async fn apply(s: &WebhookState, ev: Events) -> Result<(), crate::store::StoreError> {
    let mut receipts = Vec::new();
    for (status, marks) in [(Status::Delivered, &ev.delivered), (Status::Read, &ev.read)] {
        for (psid, watermark, at) in marks {
            let key = ContactKey::new(Channel::Messenger, psid.clone());
            let ids = s.store.sent_before(&key, *watermark).await?;
            debug!(status = %status, count = ids.len(), "messenger watermark");
            receipts.extend(ids.into_iter().map(|id| ProviderReceipt {
                channel: Channel::Messenger,
                notification_id: id,
                provider_id: String::new(),
                status,
                error_class: None,
                error_code: String::new(),
                at: *at,
            }));
        }
    }
    // Where a delivery lists its message ids, those are exact (the watermark index only
    // knows when Herald finished the send).
    receipts.extend(
        ev.delivered_mids
            .into_iter()
            .map(|(mid, at)| ProviderReceipt {
                channel: Channel::Messenger,
                notification_id: String::new(),
                provider_id: mid,
                status: Status::Delivered,
                error_class: None,
                error_code: String::new(),
                at,
            }),
    );
    if !receipts.is_empty() {
        for r in &receipts {
            telemetry::receipt(r.channel, r.status);
        }
        s.store.record_receipts(receipts).await?;
    }
    if !ev.inbound.is_empty() {
        let mut changes = Vec::new();
        for (psid, at) in ev.inbound {
            let key = ContactKey::new(Channel::Messenger, psid);
            // Writing to the page proves the person can be reached again (551/1545041 is
            // "P until they message in again").
            changes.push((key.clone(), ContactChange::Alive));
            changes.push((key, ContactChange::Inbound(at)));
        }
        s.store.update_contacts(changes).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_watermarks_mids_and_inbound() {
        let body = json!({
            "object": "page",
            "entry": [{
                "id": "PAGE", "time": 1_700_000_000_500i64,
                "messaging": [
                    {"sender": {"id": "111"}, "recipient": {"id": "PAGE"},
                     "timestamp": 1_700_000_000_100i64,
                     "delivery": {"mids": ["m_1", "m_2"], "watermark": 1_700_000_000_000i64}},
                    {"sender": {"id": "111"}, "recipient": {"id": "PAGE"},
                     "timestamp": 1_700_000_000_200i64,
                     "read": {"watermark": 1_700_000_000_050i64}},
                    {"sender": {"id": "222"}, "recipient": {"id": "PAGE"},
                     "timestamp": 1_700_000_000_300i64,
                     "message": {"mid": "m_in", "text": "hi"}},
                    {"sender": {"id": "PAGE"}, "recipient": {"id": "222"},
                     "timestamp": 1_700_000_000_400i64,
                     "message": {"mid": "m_echo", "is_echo": true, "text": "hello"}},
                    {"sender": {"id": "333"}, "recipient": {"id": "PAGE"},
                     "postback": {"payload": "GET_STARTED"}},
                    {"recipient": {"id": "PAGE"}, "read": {"watermark": 1}}
                ]
            }]
        });
        let ev = parse(&body, 42);
        assert_eq!(
            ev.delivered,
            vec![("111".into(), 1_700_000_000_000, 1_700_000_000_100)]
        );
        assert_eq!(
            ev.delivered_mids,
            vec![
                ("m_1".into(), 1_700_000_000_100),
                ("m_2".into(), 1_700_000_000_100)
            ]
        );
        assert_eq!(
            ev.read,
            vec![("111".into(), 1_700_000_000_050, 1_700_000_000_200)]
        );
        assert_eq!(
            ev.inbound,
            vec![("222".into(), 1_700_000_000_300), ("333".into(), 42)]
        );
    }

    #[test]
    fn odd_bodies_parse_to_nothing() {
        assert_eq!(parse(&json!({}), 0), Events::default());
        assert_eq!(parse(&json!({"entry": "x"}), 0), Events::default());
        assert_eq!(
            parse(&json!({"entry": [{"messaging": [1, "x", null]}]}), 0),
            Events::default()
        );
    }

    #[test]
    fn handshake_needs_the_token_and_subscribe() {
        let h = |mode: &str, token: &str| Handshake {
            mode: mode.into(),
            verify_token: token.into(),
            challenge: "1158201444".into(),
        };
        let ok = answer_handshake(Some("vt".into()), &h("subscribe", "vt"));
        assert_eq!(ok.status(), StatusCode::OK);
        for (expected, hs) in [
            (Some("vt".to_string()), h("subscribe", "nope")),
            (Some("vt".to_string()), h("unsubscribe", "vt")),
            (None, h("subscribe", "")),
            (Some(String::new()), h("subscribe", "")),
        ] {
            assert_eq!(
                answer_handshake(expected, &hs).status(),
                StatusCode::FORBIDDEN
            );
        }
    }

    #[test]
    fn signatures_are_required_and_checked() {
        let body = br#"{"object":"page"}"#;
        let mut h = HeaderMap::new();
        let missing = check_signature("s3cret", &h, body).expect("refused");
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        h.insert(
            "x-hub-signature-256",
            super::super::hub_signature(b"other", body)
                .parse()
                .expect("header"),
        );
        let wrong = check_signature("s3cret", &h, body).expect("refused");
        assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
        h.insert(
            "x-hub-signature-256",
            super::super::hub_signature(b"s3cret", body)
                .parse()
                .expect("header"),
        );
        assert!(check_signature("s3cret", &h, body).is_none());
    }
}
