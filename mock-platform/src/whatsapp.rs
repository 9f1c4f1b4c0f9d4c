//! The WhatsApp Cloud API mock: `POST /{version}/{phone_number_id}/messages` with the Bearer
//! token checked, the message checked as the Cloud API does (`messaging_product`, `to`,
//! text ≤ 4,096, template name and language), the customer service window enforced per
//! number (free text more than 24 h after the person's last message → 131047), the real
//! success and error bodies, and signed status webhooks to Herald (sent, delivered, read,
//! with the `pricing` block) plus inbound messages. The same path shape serves Messenger's
//! `/{page_id}/messages` form, which is handed to the Messenger module.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};

use crate::messenger::{fbtrace_id, hub_signature, now_ms};
use crate::{header_pairs, Gate, LedgerEntry, Mock};

pub const PLATFORM: &str = "whatsapp";
/// The business account the mock speaks for (`entry[].id`).
pub const WABA_ID: &str = "102290129340398";
pub const DISPLAY_PHONE_NUMBER: &str = "15550783881";
/// The phone number id used in webhooks before any send named one.
pub const DEFAULT_PHONE_NUMBER_ID: &str = "106540352242922";
pub const WINDOW_MS: i64 = 24 * 3600 * 1000;
pub const MAX_TEXT: usize = 4096;
const ERROR_CODES_URL: &str =
    "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/";

pub fn routes() -> Router<Arc<Mock>> {
    Router::new().route("/{version}/{id}/messages", post(send))
}

/// `+` and the digits: the form the mock keys numbers by (the ledger address too).
pub fn normalize(number: &str) -> String {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    format!("+{digits}")
}

fn wa_id(number: &str) -> String {
    number.chars().filter(char::is_ascii_digit).collect()
}

fn inbound_key(number: &str) -> String {
    format!("whatsapp:inbound:{}", normalize(number))
}

/// Sets when `number` last wrote to the business (ms since the epoch).
pub fn set_last_inbound(mock: &Mock, number: &str, at_ms: i64) {
    mock.kv_set(&inbound_key(number), at_ms.to_string());
}

/// When `number` last wrote to the business, if ever.
pub fn last_inbound(mock: &Mock, number: &str) -> Option<i64> {
    mock.kv_get(&inbound_key(number))?.parse().ok()
}

fn phone_number_id(mock: &Mock) -> String {
    mock.kv_get("whatsapp:phone_number_id")
        .unwrap_or_else(|| DEFAULT_PHONE_NUMBER_ID.to_string())
}

/// Title, details and HTTP status of each documented error code.
fn describe(code: i64) -> (u16, &'static str, &'static str) {
    match code {
        0 => (401, "AuthException", "We were unable to authenticate the app user."),
        1 => (400, "API Unknown", "Invalid request or possible server error."),
        2 => (500, "API Service", "Temporary due to downtime or due to being overloaded."),
        3 => (500, "API Method", "Capability or permissions issue."),
        4 => (429, "API Too Many Calls", "The app has reached its API call rate limit."),
        10 => (403, "Permission Denied", "Permission is either not granted or has been removed."),
        100 => (400, "Invalid parameter", "The request included one or more unsupported or misspelled parameters."),
        190 => (401, "Access token has expired", "Your access token has expired."),
        200..=299 => (403, "API Permission", "Permission is either not granted or has been removed."),
        368 => (403, "Temporarily blocked for policies violations", "The WhatsApp Business Account associated with the app has been restricted or disabled for violating a platform policy."),
        80007 => (400, "Rate limit issues", "The WhatsApp Business Account has reached its rate limit."),
        130429 => (400, "Rate limit hit", "Cloud API message throughput has been reached."),
        131000 => (500, "Something went wrong", "Message failed to send due to an unknown error."),
        131005 => (403, "Access denied", "Permission is either not granted or has been removed."),
        131008 => (400, "Required parameter is missing", "The request is missing a required parameter."),
        131009 => (400, "Parameter value is not valid", "One or more parameter values are invalid."),
        131016 => (503, "Service unavailable", "A service is temporarily unavailable."),
        131026 => (400, "Message undeliverable", "Unable to deliver message. Reasons can include: the recipient phone number is not a WhatsApp phone number."),
        131030 => (400, "Recipient phone number not in allowed list", "Add recipient phone number to recipient list and try again."),
        131031 => (403, "Account has been locked", "The WhatsApp Business Account is restricted or disabled."),
        131042 => (400, "Business eligibility payment issue", "There was an error related to your payment method."),
        131045 => (400, "Incorrect certificate", "Message failed to send due to a phone number registration error."),
        131047 => (400, "Re-engagement message", "Message failed to send because more than 24 hours have passed since the customer last replied to this number."),
        131048 => (400, "Spam rate limit hit", "Message failed to send because there are restrictions on how many messages can be sent from this phone number."),
        131049 => (400, "This message was not delivered to maintain healthy ecosystem engagement.", "In order to maintain a healthy ecosystem engagement, the message failed to be delivered."),
        131050 => (400, "User has stopped marketing messages", "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business."),
        131051 => (400, "Unsupported message type", "Unsupported message type."),
        131052 => (400, "Media download error", "Unable to download the media sent by the user."),
        131053 => (400, "Media upload error", "Unable to upload the media used in the message."),
        131056 => (400, "(Business Account, Consumer Account) pair rate limit hit", "Too many messages sent from the sender phone number to the same recipient phone number in a short period of time."),
        131057 => (500, "Account in maintenance mode", "Business Account is in maintenance mode."),
        132000 => (400, "Template Param Count Mismatch", "The number of variable parameter values included in the request did not match the number of variable parameters defined in the template."),
        132001 => (404, "Template does not exist", "The template does not exist in the specified language or the template has not been approved."),
        132005 => (400, "Template Hydrated Text Too Long", "Translated text is too long."),
        132007 => (400, "Template Format Character Policy Violated", "Template content violates a WhatsApp policy."),
        132012 => (400, "Template Parameter Format Mismatch", "Variable parameter values formatted incorrectly."),
        132015 => (400, "Template is Paused", "Template is paused due to low quality so it cannot be sent in a template message."),
        132016 => (400, "Template is Disabled", "Template has been paused too many times due to low quality and is now permanently disabled."),
        132002..=132014 => (400, "Template error", "The template could not be sent as requested."),
        _ => (400, "Unknown error", "An error occurred."),
    }
}

/// The documented error `code` ("131047", "130429", …) as the Cloud API answers it: HTTP
/// status and `{"error":{"message","type","code","error_data":{"messaging_product",
/// "details"},"fbtrace_id"}}`.
pub fn error_response(code: &str) -> (StatusCode, Value) {
    let c: i64 = code.trim().parse().unwrap_or(100);
    let (status, title, details) = describe(c);
    error_with(c, status, title, details)
}

fn error_with(code: i64, status: u16, title: &str, details: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        json!({ "error": {
            "message": format!("(#{code}) {title}"),
            "type": "OAuthException",
            "code": code,
            "error_data": { "messaging_product": "whatsapp", "details": details },
            "fbtrace_id": fbtrace_id(),
        }}),
    )
}

type Refusal = (StatusCode, Value, String);

fn refuse(code: &str) -> Refusal {
    let (s, b) = error_response(code);
    (s, b, code.to_string())
}

/// Error 100 with the Cloud API's own details for a malformed request.
fn invalid(details: &str) -> Refusal {
    let (s, b) = error_with(100, 400, "Invalid parameter", details);
    (s, b, "100".to_string())
}

async fn send(
    State(mock): State<Arc<Mock>>,
    Path((_version, id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // Messenger's `/{page_id}/messages` has this path's shape: a page token in the query, a
    // `recipient` and no `messaging_product`.
    let messenger_like = uri.query().is_some_and(|q| q.contains("access_token="))
        || (json.get("messaging_product").is_none() && json.get("recipient").is_some());
    if messenger_like {
        return crate::messenger::handle_send(mock, uri, headers, body).await;
    }
    let to = json
        .get("to")
        .and_then(Value::as_str)
        .map(normalize)
        .unwrap_or_default();
    let (status, answer, error) = match answer(&mock, &id, &headers, &json, &to).await {
        Ok(v) => (StatusCode::OK, v, None),
        Err((s, b, code)) => (s, b, Some(code)),
    };
    mock.record(LedgerEntry {
        platform: PLATFORM.into(),
        method: "POST".into(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers: header_pairs(&headers),
        body: body.to_vec(),
        address: to,
        status: status.as_u16(),
        error,
        at: SystemTime::now(),
    });
    (status, Json(answer)).into_response()
}

async fn answer(
    mock: &Arc<Mock>,
    phone_number_id: &str,
    headers: &HeaderMap,
    json: &Value,
    to: &str,
) -> Result<Value, Refusal> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token != Some(mock.config.whatsapp_token.as_str()) {
        let (s, b) = error_with(
            190,
            401,
            "Invalid OAuth access token - Cannot parse access token",
            "Invalid OAuth access token - Cannot parse access token",
        );
        return Err((s, b, "190".into()));
    }
    mock.kv_set("whatsapp:phone_number_id", phone_number_id);
    match mock.gate(PLATFORM, to).await {
        Gate::Pass => {}
        Gate::Error(code) => return Err(refuse(&code)),
        Gate::Throttle => return Err(refuse("130429")),
        Gate::Outage => return Err(refuse("2")),
    }
    let kind = check(mock, json, to)?;
    let wamid = wamid(to);
    if mock.config.receipts {
        let deliver = mock.config.deliver_after_ms;
        let read = mock.config.read_after_ms.max(deliver);
        let pricing = match kind {
            // Templates outside the window are charged; free-form replies are service.
            "template" => json!({"billable": true, "pricing_model": "PMP", "category": "utility"}),
            _ => json!({"billable": false, "pricing_model": "PMP", "category": "service"}),
        };
        let accepted = now_ms();
        for (status, after) in [
            ("sent", deliver / 2),
            ("delivered", deliver),
            ("read", read),
        ] {
            let body = status_body(
                phone_number_id,
                &wamid,
                to,
                status,
                (accepted + after as i64) / 1000,
                Some(&pricing),
                None,
            );
            mock.callback(
                Duration::from_millis(after),
                "/webhooks/whatsapp".into(),
                signed_headers(mock, &body),
                body,
            );
        }
    }
    let mut answer = json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": json.get("to").cloned().unwrap_or(Value::Null), "wa_id": wa_id(to) }],
        "messages": [{ "id": wamid }],
    });
    if kind == "template" {
        answer["messages"][0]["message_status"] = json!("accepted");
    }
    Ok(answer)
}

/// The checks the Cloud API makes; returns the message type.
fn check(mock: &Mock, json: &Value, to: &str) -> Result<&'static str, Refusal> {
    if json.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return Err(invalid("The parameter messaging_product is required."));
    }
    if to.len() < 2 {
        return Err(invalid("The parameter to is required."));
    }
    let kind = json.get("type").and_then(Value::as_str).unwrap_or("text");
    match kind {
        "template" => {
            let t = json.get("template").unwrap_or(&Value::Null);
            if t.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
            {
                return Err(invalid("The parameter template['name'] is required."));
            }
            if t.pointer("/language/code")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
            {
                return Err(invalid(
                    "The parameter template['language']['code'] is required.",
                ));
            }
            // Templates may start a conversation: no window.
            Ok("template")
        }
        "text" => {
            let text = json
                .pointer("/text/body")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if text.is_empty() {
                return Err(invalid("The parameter text['body'] is required."));
            }
            if text.chars().count() > MAX_TEXT {
                return Err(invalid(&format!(
                    "Param text['body'] must be at most {MAX_TEXT} characters long."
                )));
            }
            window(mock, to)?;
            Ok("text")
        }
        "image" | "audio" | "video" | "document" | "sticker" | "location" | "contacts"
        | "interactive" | "reaction" => {
            window(mock, to)?;
            Ok("other")
        }
        _ => Err(refuse("131051")),
    }
}

/// Free-form messages only within 24 h of the person's last message.
fn window(mock: &Mock, to: &str) -> Result<(), Refusal> {
    match last_inbound(mock, to) {
        Some(t) if now_ms() - t < WINDOW_MS => Ok(()),
        _ => Err(refuse("131047")),
    }
}

/// A `wamid.…` message id.
fn wamid(to: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("wamid.HBgL{}FQIAERgS{tail}", wa_id(to))
}

fn signed_headers(mock: &Mock, body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        (
            "x-hub-signature-256".into(),
            hub_signature(&mock.config.whatsapp_app_secret, body),
        ),
    ]
}

fn envelope(
    phone_number_id: &str,
    value_key: &str,
    items: Value,
    extra: Option<(&str, Value)>,
) -> Vec<u8> {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": DISPLAY_PHONE_NUMBER,
            "phone_number_id": phone_number_id,
        },
    });
    value[value_key] = items;
    if let Some((k, v)) = extra {
        value[k] = v;
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": WABA_ID, "changes": [{ "field": "messages", "value": value }] }],
    })
    .to_string()
    .into_bytes()
}

/// A `statuses[]` webhook body: `status` is sent / delivered / read / failed; a failed one
/// carries `error_code` in `errors[]`.
pub fn status_body(
    phone_number_id: &str,
    wamid: &str,
    to: &str,
    status: &str,
    timestamp_secs: i64,
    pricing: Option<&Value>,
    error_code: Option<i64>,
) -> Vec<u8> {
    let mut st = json!({
        "id": wamid,
        "status": status,
        "timestamp": timestamp_secs.to_string(),
        "recipient_id": wa_id(to),
    });
    if let Some(p) = pricing {
        st["pricing"] = p.clone();
    }
    if let Some(c) = error_code {
        let (_, title, details) = describe(c);
        st["errors"] = json!([{
            "code": c,
            "title": title,
            "message": title,
            "error_data": { "details": details },
            "href": ERROR_CODES_URL,
        }]);
    }
    envelope(phone_number_id, "statuses", json!([st]), None)
}

/// A `messages[]` webhook body: `from` wrote `text` at `timestamp_secs`.
pub fn inbound_body(phone_number_id: &str, from: &str, timestamp_secs: i64, text: &str) -> Vec<u8> {
    let msg = json!({
        "from": wa_id(from),
        "id": wamid(from),
        "timestamp": timestamp_secs.to_string(),
        "type": "text",
        "text": { "body": text },
    });
    envelope(
        phone_number_id,
        "messages",
        json!([msg]),
        Some((
            "contacts",
            json!([{ "profile": { "name": "Mock User" }, "wa_id": wa_id(from) }]),
        )),
    )
}

/// Posts `body`, signed with the app secret, to Herald's `/webhooks/whatsapp` now; returns
/// Herald's HTTP status.
pub async fn post_to_herald(mock: &Mock, body: Vec<u8>) -> Result<u16, String> {
    let headers = signed_headers(mock, &body);
    mock.post_now("/webhooks/whatsapp", headers, body).await
}

/// The person behind `number` writes to the business: the mock opens its window and tells
/// Herald (a signed `messages` webhook). Returns Herald's status.
pub async fn user_writes(mock: &Mock, number: &str, text: &str) -> Result<u16, String> {
    let at = now_ms();
    set_last_inbound(mock, number, at);
    post_to_herald(
        mock,
        inbound_body(&phone_number_id(mock), number, at / 1000, text),
    )
    .await
}

/// Sends Herald one status for `wamid` now (what `receipts` does on its own, in order).
pub async fn post_status(
    mock: &Mock,
    wamid: &str,
    to: &str,
    status: &str,
    error_code: Option<i64>,
) -> Result<u16, String> {
    let pricing = json!({"billable": false, "pricing_model": "PMP", "category": "service"});
    let body = status_body(
        &phone_number_id(mock),
        wamid,
        to,
        status,
        now_ms() / 1000,
        (status != "failed").then_some(&pricing),
        error_code,
    );
    post_to_herald(mock, body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockConfig;

    #[test]
    fn documented_errors_render_with_details() {
        let mut codes: Vec<i64> = vec![
            0, 1, 2, 3, 4, 10, 100, 190, 200, 299, 368, 80007, 130429, 131000, 131005, 131008,
            131009, 131016, 131026, 131030, 131031, 131042, 131045, 131047, 131048, 131049, 131050,
            131051, 131052, 131053, 131056, 131057,
        ];
        codes.extend(132000..=132016);
        for c in codes {
            let (status, body) = error_response(&c.to_string());
            let e = &body["error"];
            assert_eq!(e["code"], c);
            assert_eq!(e["type"], "OAuthException");
            assert_eq!(e["error_data"]["messaging_product"], "whatsapp");
            assert!(e["error_data"]["details"]
                .as_str()
                .is_some_and(|d| !d.is_empty()));
            assert!(e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("(#{c}) "))));
            assert!(e["fbtrace_id"].as_str().is_some());
            assert!(status.is_client_error() || status.is_server_error());
        }
        assert_eq!(error_response("2").0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error_response("190").0, StatusCode::UNAUTHORIZED);
    }

    fn text(to: &str, body: &str) -> Value {
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
               "type": "text", "text": {"body": body}})
    }

    fn code(r: Result<&'static str, Refusal>) -> Option<String> {
        r.err().map(|(_, _, c)| c)
    }

    #[test]
    fn free_text_needs_the_window_templates_do_not() {
        let m = Mock::new(MockConfig::default());
        let to = "+16505551234";
        assert_eq!(
            code(check(&m, &text(to, "hi"), to)).as_deref(),
            Some("131047")
        );
        let template = json!({"messaging_product": "whatsapp", "to": to, "type": "template",
            "template": {"name": "order_update", "language": {"code": "en_US"}}});
        assert_eq!(check(&m, &template, to).ok(), Some("template"));
        set_last_inbound(&m, "16505551234", now_ms() - 1000);
        assert_eq!(check(&m, &text(to, "hi"), to).ok(), Some("text"));
        set_last_inbound(&m, to, now_ms() - WINDOW_MS - 1);
        assert_eq!(
            code(check(&m, &text(to, "hi"), to)).as_deref(),
            Some("131047")
        );
    }

    #[test]
    fn malformed_messages_get_error_100() {
        let m = Mock::new(MockConfig::default());
        let to = "+16505551234";
        set_last_inbound(&m, to, now_ms());
        let long = text(to, &"x".repeat(MAX_TEXT + 1));
        assert_eq!(code(check(&m, &long, to)).as_deref(), Some("100"));
        let mut no_product = text(to, "hi");
        no_product
            .as_object_mut()
            .map(|o| o.remove("messaging_product"));
        assert_eq!(code(check(&m, &no_product, to)).as_deref(), Some("100"));
        let no_name = json!({"messaging_product": "whatsapp", "to": to, "type": "template",
            "template": {"language": {"code": "en_US"}}});
        assert_eq!(code(check(&m, &no_name, to)).as_deref(), Some("100"));
        assert_eq!(code(check(&m, &text("", "hi"), "")).as_deref(), Some("100"));
    }

    #[test]
    fn webhook_bodies_have_cloud_api_shape() {
        let v: Value = serde_json::from_slice(&status_body(
            "1055",
            "wamid.X",
            "+16505551234",
            "failed",
            1_700_000_000,
            None,
            Some(131026),
        ))
        .expect("json");
        assert_eq!(v["object"], "whatsapp_business_account");
        let value = &v["entry"][0]["changes"][0]["value"];
        assert_eq!(value["metadata"]["phone_number_id"], "1055");
        let st = &value["statuses"][0];
        assert_eq!(st["status"], "failed");
        assert_eq!(st["timestamp"], "1700000000");
        assert_eq!(st["recipient_id"], "16505551234");
        assert_eq!(st["errors"][0]["code"], 131026);
        let v: Value =
            serde_json::from_slice(&inbound_body("1055", "+16505551234", 5, "hi")).expect("json");
        let value = &v["entry"][0]["changes"][0]["value"];
        assert_eq!(value["messages"][0]["from"], "16505551234");
        assert_eq!(value["messages"][0]["timestamp"], "5");
        assert_eq!(value["contacts"][0]["wa_id"], "16505551234");
    }

    #[tokio::test]
    async fn both_graph_platforms_share_the_path_shape() {
        let p = crate::MockPlatform::start(MockConfig::default())
            .await
            .expect("mock starts");
        let http = reqwest::Client::new();
        let base = p.base_url();
        // Messenger, `me` form, no window yet.
        let r = http
            .post(format!(
                "{base}/v21.0/me/messages?access_token=mock-page-token"
            ))
            .json(
                &json!({"recipient": {"id": "42"}, "messaging_type": "UPDATE",
                          "message": {"text": "hi"}}),
            )
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 400);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["error_subcode"], 2018278);
        // Messenger, page id form.
        crate::messenger::set_last_inbound(&p.mock, "42", now_ms());
        let r = http
            .post(format!(
                "{base}/v21.0/102030405060708/messages?access_token=mock-page-token"
            ))
            .json(
                &json!({"recipient": {"id": "42"}, "messaging_type": "RESPONSE",
                          "message": {"text": "hi"}}),
            )
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.expect("json");
        assert!(v["message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("m_")));
        assert_eq!(p.mock.ledger("messenger").len(), 2);
        // WhatsApp with a wrong token, then a template.
        let template = json!({"messaging_product": "whatsapp", "to": "+16505551234",
            "type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}});
        let r = http
            .post(format!("{base}/v21.0/1055/messages"))
            .bearer_auth("wrong")
            .json(&template)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 401);
        let r = http
            .post(format!("{base}/v21.0/1055/messages"))
            .bearer_auth("mock-whatsapp-token")
            .json(&template)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.expect("json");
        assert!(v["messages"][0]["id"]
            .as_str()
            .is_some_and(|m| m.starts_with("wamid.")));
        assert_eq!(v["contacts"][0]["wa_id"], "16505551234");
        let ledger = p.mock.ledger("whatsapp");
        assert_eq!(ledger.len(), 2);
        assert_eq!(ledger[0].error.as_deref(), Some("190"));
        assert_eq!(ledger[1].address, "+16505551234");
    }
}
