//! `/webhooks/whatsapp`: the Cloud API's subscription handshake (GET) and `messages` events
//! (POST, signed with `X-Hub-Signature-256`): `statuses[]` (sent, delivered, read, failed)
//! become receipts found by `wamid`; `messages[]` from a person open the customer service
//! window for that number.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use tracing::{debug, warn};

use super::messenger::{answer_handshake, check_signature, Handshake};
use super::{store_failed, WebhookState};
use crate::channels::whatsapp::class_of;
use crate::config::whatsapp::WhatsappConfig;
use crate::model::{
    now_ms, Channel, ContactChange, ContactKey, ErrorClass, Millis, ProviderReceipt, Status,
};
use crate::telemetry;

pub fn routes() -> Router<WebhookState> {
    Router::new().route("/", get(verify).post(event))
}

fn config(s: &WebhookState) -> Option<&WhatsappConfig> {
    s.config.channels.whatsapp.as_ref().filter(|c| c.enabled)
}

fn not_configured() -> Response {
    (StatusCode::NOT_FOUND, "whatsapp is not configured\n").into_response()
}

async fn verify(State(s): State<WebhookState>, Query(h): Query<Handshake>) -> Response {
    let Some(cfg) = config(&s) else {
        return not_configured();
    };
    answer_handshake(cfg.verify_token().ok().flatten(), &h)
}

/// One entry of `value.statuses[]`, read.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusEvent {
    pub wamid: String,
    pub status: Status,
    /// The number in E.164 (`+` and digits).
    pub number: String,
    pub at: Millis,
    pub error_code: String,
    pub error_class: Option<ErrorClass>,
}

/// What one webhook body asks of the store.
#[derive(Debug, Default, PartialEq)]
pub struct Events {
    pub statuses: Vec<StatusEvent>,
    /// (number in E.164, time ms) a person wrote.
    pub inbound: Vec<(String, Millis)>,
}

/// `wa_id` / `recipient_id` (digits) as the E.164 number Herald is given (`+` and digits).
pub fn e164(wa_id: &str) -> String {
    let digits: String = wa_id.chars().filter(char::is_ascii_digit).collect();
    format!("+{digits}")
}

/// Cloud API timestamps are Unix seconds, as strings.
fn secs_to_ms(v: Option<&Value>) -> Option<Millis> {
    let v = v?;
    let secs = v.as_i64().or_else(|| v.as_str()?.trim().parse().ok())?;
    Some(secs.saturating_mul(1000))
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Reads `entry[].changes[].value` of a WhatsApp Business Account webhook body.
pub fn parse(body: &Value, now: Millis) -> Events {
    let mut ev = Events::default();
    for entry in array(body, "entry") {
        for change in array(entry, "changes") {
            let Some(value) = change.get("value") else {
                continue;
            };
            for st in array(value, "statuses") {
                let wamid = st
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let status = match st.get("status").and_then(Value::as_str) {
                    Some("sent") => Status::Sent,
                    Some("delivered") => Status::Delivered,
                    Some("read") => Status::Read,
                    Some("failed") => Status::Failed,
                    // `deleted`, `warning`, … change nothing Herald tracks.
                    _ => continue,
                };
                if wamid.is_empty() {
                    continue;
                }
                let number = st
                    .get("recipient_id")
                    .and_then(Value::as_str)
                    .map(e164)
                    .unwrap_or_default();
                let code = st.pointer("/errors/0/code").and_then(Value::as_i64);
                if let Some(p) = st.get("pricing") {
                    // Per-message pricing facts; Herald's receipts carry a cost, not a
                    // category, so they are only traced.
                    let billable = p.get("billable").and_then(Value::as_bool);
                    let category = p.get("category").and_then(Value::as_str);
                    let model = p.get("pricing_model").and_then(Value::as_str);
                    debug!(
                        status = %status,
                        billable = ?billable,
                        category = ?category,
                        pricing_model = ?model,
                        "whatsapp pricing"
                    );
                }
                ev.statuses.push(StatusEvent {
                    wamid,
                    status,
                    number,
                    at: secs_to_ms(st.get("timestamp")).unwrap_or(now),
                    error_code: code.map(|c| c.to_string()).unwrap_or_default(),
                    error_class: match status {
                        Status::Failed => {
                            Some(code.and_then(class_of).unwrap_or(ErrorClass::Transient))
                        }
                        _ => None,
                    },
                });
            }
            for m in array(value, "messages") {
                let Some(from) = m.get("from").and_then(Value::as_str) else {
                    continue;
                };
                ev.inbound
                    .push((e164(from), secs_to_ms(m.get("timestamp")).unwrap_or(now)));
            }
            for e in array(value, "errors") {
                let code = e.get("code").and_then(Value::as_i64);
                let title = e.get("title").and_then(Value::as_str);
                warn!(
                    code = ?code,
                    title = ?title,
                    "whatsapp reported an error for the business account"
                );
            }
        }
    }
    ev
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
    match apply(&s, parse(&v, now_ms())).await {
        Ok(()) => (StatusCode::OK, "EVENT_RECEIVED").into_response(),
        Err(e) => store_failed(e).into_response(),
    }
}

async fn apply(s: &WebhookState, ev: Events) -> Result<(), crate::store::StoreError> {
    let mut changes = Vec::new();
    let mut receipts = Vec::with_capacity(ev.statuses.len());
    for st in ev.statuses {
        // Undeliverable: the number is not on WhatsApp. Dead here only; contact state is per
        // channel, so the same number still takes SMS.
        if st.status == Status::Failed && st.error_code == "131026" && st.number.len() > 1 {
            changes.push((
                ContactKey::new(Channel::Whatsapp, st.number.clone()),
                ContactChange::Dead,
            ));
        }
        telemetry::receipt(Channel::Whatsapp, st.status);
        receipts.push(ProviderReceipt {
            channel: Channel::Whatsapp,
            notification_id: String::new(),
            provider_id: st.wamid,
            status: st.status,
            error_class: st.error_class,
            error_code: st.error_code,
            at: st.at,
        });
    }
    for (number, at) in ev.inbound {
        let key = ContactKey::new(Channel::Whatsapp, number);
        changes.push((key.clone(), ContactChange::Alive));
        changes.push((key, ContactChange::Inbound(at)));
    }
    // Addresses before receipts, as dispatch does: once a notification shows FAILED, its dead
    // number is already suppressed.
    if !changes.is_empty() {
        s.store.update_contacts(changes).await?;
    }
    if !receipts.is_empty() {
        // Out of order (read before delivered) is fine: the status machine only moves up.
        s.store.record_receipts(receipts).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_statuses_and_inbound_messages() {
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "1055"},
                "contacts": [{"profile": {"name": "Ada"}, "wa_id": "16505551234"}],
                "messages": [{"from": "16505551234", "id": "wamid.in", "timestamp": "1700000000",
                              "type": "text", "text": {"body": "hi"}}],
                "statuses": [
                    {"id": "wamid.1", "status": "read", "timestamp": "1700000005",
                     "recipient_id": "16505551234"},
                    {"id": "wamid.1", "status": "delivered", "timestamp": "1700000003",
                     "recipient_id": "16505551234",
                     "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility"}},
                    {"id": "wamid.2", "status": "failed", "timestamp": "1700000004",
                     "recipient_id": "16505550000",
                     "errors": [{"code": 131026, "title": "Message undeliverable"}]},
                    {"id": "wamid.3", "status": "deleted", "timestamp": "1"},
                    {"status": "sent", "timestamp": "1"}
                ]
            }}]}]
        });
        let ev = parse(&body, 7);
        assert_eq!(ev.inbound, vec![("+16505551234".into(), 1_700_000_000_000)]);
        assert_eq!(ev.statuses.len(), 3);
        assert_eq!(ev.statuses[0].status, Status::Read);
        assert_eq!(ev.statuses[0].at, 1_700_000_005_000);
        assert_eq!(ev.statuses[1].status, Status::Delivered);
        assert_eq!(ev.statuses[1].error_class, None);
        let failed = &ev.statuses[2];
        assert_eq!(failed.status, Status::Failed);
        assert_eq!(failed.error_code, "131026");
        assert_eq!(failed.error_class, Some(ErrorClass::DeadAddress));
        assert_eq!(failed.number, "+16505550000");
    }

    #[test]
    fn failed_statuses_take_the_class_of_their_code() {
        let body = json!({"entry": [{"changes": [{"value": {"statuses": [
            {"id": "w", "status": "failed", "timestamp": "1", "recipient_id": "1",
             "errors": [{"code": 131047}]},
            {"id": "w2", "status": "failed", "timestamp": "1", "recipient_id": "1"}
        ]}}]}]});
        let ev = parse(&body, 0);
        assert_eq!(ev.statuses[0].error_class, Some(ErrorClass::Policy));
        assert_eq!(ev.statuses[1].error_class, Some(ErrorClass::Transient));
        assert_eq!(ev.statuses[1].error_code, "");
    }

    #[test]
    fn numbers_are_e164() {
        assert_eq!(e164("16505551234"), "+16505551234");
        assert_eq!(e164("+44 7700 900123"), "+447700900123");
        assert_eq!(parse(&json!({"entry": null}), 0), Events::default());
    }
}
