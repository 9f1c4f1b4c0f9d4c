//! The Messenger Send API mock: `POST /{version}/me/messages?access_token=…` (and the
//! `/{page_id}/messages` form, routed here by the WhatsApp module, whose path has the same
//! shape), with the page token checked, the request checked as Messenger does (recipient,
//! `messaging_type`, tags, text and button template limits), the 24 h window enforced per
//! PSID from the last time that person wrote, Graph's real success and error bodies, and
//! signed webhooks to Herald: delivery and read watermarks, and inbound messages.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{header_pairs, url_decode_pairs, Gate, LedgerEntry, Mock};

pub const PLATFORM: &str = "messenger";
/// The page the mock speaks for (the `recipient` of inbound events, the `entry[].id`).
pub const PAGE_ID: &str = "102030405060708";
/// The standard messaging window.
pub const WINDOW_MS: i64 = 24 * 3600 * 1000;
/// `HUMAN_AGENT` replies may come up to 7 days after the person wrote.
pub const HUMAN_AGENT_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;
pub const MAX_TEXT: usize = 2000;
pub const MAX_BUTTON_TEXT: usize = 640;
pub const MAX_BUTTON_TITLE: usize = 20;
/// Tags still allowed outside the window (since 2020-03-04).
pub const ALLOWED_TAGS: &[&str] = &[
    "CONFIRMED_EVENT_UPDATE",
    "POST_PURCHASE_UPDATE",
    "ACCOUNT_UPDATE",
    "HUMAN_AGENT",
];

pub fn routes() -> Router<Arc<Mock>> {
    Router::new().route("/{version}/me/messages", post(send_me))
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`: Meta's `X-Hub-Signature-256`.
pub fn hub_signature(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// A Graph `fbtrace_id`-like string.
pub(crate) fn fbtrace_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut rng = rand::rng();
    (0..11)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn inbound_key(psid: &str) -> String {
    format!("messenger:inbound:{psid}")
}

/// Sets when `psid` last wrote to the page (ms since the epoch): opens (or, in the past,
/// closes) the window.
pub fn set_last_inbound(mock: &Mock, psid: &str, at_ms: i64) {
    mock.kv_set(&inbound_key(psid), at_ms.to_string());
}

/// When `psid` last wrote to the page, if ever.
pub fn last_inbound(mock: &Mock, psid: &str) -> Option<i64> {
    mock.kv_get(&inbound_key(psid))?.parse().ok()
}

/// Splits `"10/2018278"` into code and subcode.
fn parse_code(code: &str) -> (i64, Option<i64>) {
    let (c, s) = match code.split_once('/') {
        Some((c, s)) => (c, Some(s)),
        None => (code, None),
    };
    (
        c.trim().parse().unwrap_or(100),
        s.and_then(|s| s.trim().parse().ok()),
    )
}

/// The documented error `code` ("613", "10/2018278", …) as Messenger answers it: HTTP status
/// and `{"error":{"message","type","code","error_subcode","fbtrace_id"}}`.
pub fn error_response(code: &str) -> (StatusCode, Value) {
    let (c, sub) = parse_code(code);
    let (status, message) = match (c, sub) {
        (1, _) => (500, "An unknown error has occurred.".to_string()),
        (2, _) => (
            500,
            "An unexpected error has occurred. Please retry your request later.".to_string(),
        ),
        (1200, _) => (
            500,
            "Temporary send message failure. Please try again later".to_string(),
        ),
        (4, Some(2018354)) => (
            400,
            "(#4) This message wasn't sent because the person has chosen to receive fewer marketing messages from this business.".to_string(),
        ),
        (4, _) => (400, "(#4) Application request limit reached".to_string()),
        (17, _) => (400, "(#17) User request limit reached".to_string()),
        (32, _) => (400, "(#32) Page request limit reached".to_string()),
        (613, _) => (
            400,
            "(#613) Calls to this api have exceeded the rate limit.".to_string(),
        ),
        (10, Some(2018278)) => (
            400,
            "(#10) This message is sent outside of allowed window. Learn more about the new policy here: https://developers.facebook.com/docs/messenger-platform/policy-overview".to_string(),
        ),
        (10, Some(2018065)) => (
            400,
            "(#10) This message is sent outside of allowed window. You need page_messaging_subscriptions permission to be able to do it.".to_string(),
        ),
        (10, Some(2018108)) => (
            400,
            "(#10) This person isn't receiving messages from you right now.".to_string(),
        ),
        (10, _) => (
            403,
            "(#10) Application does not have permission for this action".to_string(),
        ),
        (551, _) | (200..=299, Some(1545041)) => {
            (400, "This person isn't available right now.".to_string())
        }
        (200..=299, _) => (403, format!("(#{c}) Permissions error")),
        (100, Some(2018001)) => (400, "(#100) No matching user found".to_string()),
        (100, Some(2018109)) => (
            400,
            "(#100) Attachment size exceeds allowable limit".to_string(),
        ),
        (100, _) => (400, "(#100) Invalid parameter".to_string()),
        (190, _) => (
            400,
            "Invalid OAuth access token - Cannot parse access token".to_string(),
        ),
        (368, _) => (
            400,
            "(#368) The action attempted has been deemed abusive or is otherwise disallowed"
                .to_string(),
        ),
        _ => (400, format!("(#{c}) An error occurred")),
    };
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        error_body(c, sub, &message),
    )
}

fn error_body(code: i64, sub: Option<i64>, message: &str) -> Value {
    let mut e = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": fbtrace_id(),
    });
    if let Some(s) = sub {
        e["error_subcode"] = json!(s);
    }
    json!({ "error": e })
}

/// Error 100 with Messenger's own message for a malformed request.
fn invalid(message: &str) -> (StatusCode, Value, String) {
    (
        StatusCode::BAD_REQUEST,
        error_body(100, None, message),
        "100".to_string(),
    )
}

async fn send_me(
    State(mock): State<Arc<Mock>>,
    Path(_version): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle_send(mock, uri, headers, body).await
}

/// Handles one Send API request (both URL forms).
pub(crate) async fn handle_send(
    mock: Arc<Mock>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let psid = json
        .pointer("/recipient/id")
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_default();
    let (status, answer, error) = answer(
        &mock,
        uri.query().unwrap_or_default(),
        &headers,
        &json,
        &psid,
    )
    .await;
    mock.record(LedgerEntry {
        platform: PLATFORM.into(),
        method: "POST".into(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers: header_pairs(&headers),
        body: body.to_vec(),
        address: psid,
        status: status.as_u16(),
        error,
        at: SystemTime::now(),
    });
    let mut res = (status, Json(answer)).into_response();
    // Graph reports on every answer how much of the app's budget is used.
    let used = mock.app_usage_percent(PLATFORM).unwrap_or(1);
    let usage = format!(r#"{{"call_count":{used},"total_cputime":1,"total_time":1}}"#);
    if let Ok(v) = usage.parse() {
        res.headers_mut().insert("x-app-usage", v);
    }
    res
}

async fn answer(
    mock: &Arc<Mock>,
    query: &str,
    headers: &HeaderMap,
    json: &Value,
    psid: &str,
) -> (StatusCode, Value, Option<String>) {
    let token = url_decode_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v)
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(String::from)
        });
    if token.as_deref() != Some(mock.config.messenger_page_token.as_str()) {
        let (s, b) = error_response("190");
        return (s, b, Some("190".into()));
    }
    match mock.gate(PLATFORM, psid).await {
        Gate::Pass => {}
        Gate::Error(code) => {
            let (s, b) = error_response(&code);
            return (s, b, Some(code));
        }
        Gate::Throttle => {
            let (s, b) = error_response("613");
            return (s, b, Some("613".into()));
        }
        Gate::Outage => {
            let (s, b) = error_response("2");
            return (s, b, Some("2".into()));
        }
    }
    if let Err((s, b, code)) = check(mock, json, psid) {
        return (s, b, Some(code));
    }
    let mid = message_id();
    let accepted = now_ms();
    if mock.config.receipts {
        let deliver = mock.config.deliver_after_ms;
        let read = mock.config.read_after_ms.max(deliver);
        // The watermarks are the times the events happen: everything sent before then.
        let body = delivery_body(psid, accepted + deliver as i64, std::slice::from_ref(&mid));
        mock.callback(
            Duration::from_millis(deliver),
            "/webhooks/messenger".into(),
            signed_headers(mock, &body),
            body,
        );
        let body = read_body(psid, accepted + read as i64);
        mock.callback(
            Duration::from_millis(read),
            "/webhooks/messenger".into(),
            signed_headers(mock, &body),
            body,
        );
    }
    (
        StatusCode::OK,
        json!({ "recipient_id": psid, "message_id": mid }),
        None,
    )
}

/// The request checks Messenger makes, in its order: recipient, `messaging_type`, tag,
/// message content, then the window.
fn check(mock: &Mock, json: &Value, psid: &str) -> Result<(), (StatusCode, Value, String)> {
    if psid.is_empty() {
        return Err(invalid("(#100) The parameter recipient is required"));
    }
    let messaging_type = json
        .get("messaging_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if messaging_type.is_empty() {
        return Err(invalid("(#100) The parameter messaging_type is required"));
    }
    if !matches!(messaging_type, "RESPONSE" | "UPDATE" | "MESSAGE_TAG") {
        return Err(invalid(
            "(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}",
        ));
    }
    let tag = json.get("tag").and_then(Value::as_str).unwrap_or_default();
    if messaging_type == "MESSAGE_TAG" && !ALLOWED_TAGS.contains(&tag) {
        return Err(invalid(&format!(
            "(#100) Param tag must be one of {{{}}}",
            ALLOWED_TAGS.join(", ")
        )));
    }
    let Some(message) = json.get("message") else {
        return Err(invalid("(#100) The parameter message is required"));
    };
    if let Some(text) = message.get("text") {
        let text = text.as_str().unwrap_or_default();
        if text.is_empty() {
            return Err(invalid(
                "(#100) Param message[text] must be a non-empty UTF-8 encoded string",
            ));
        }
        if text.chars().count() > MAX_TEXT {
            return Err(invalid(&format!(
                "(#100) Length of param message[text] must be less than or equal to {MAX_TEXT}"
            )));
        }
    } else if let Some(payload) = message.pointer("/attachment/payload") {
        if payload.get("template_type").and_then(Value::as_str) == Some("button") {
            let text = payload
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if text.is_empty() || text.chars().count() > MAX_BUTTON_TEXT {
                return Err(invalid(&format!(
                    "(#100) Param message[attachment][payload][text] must be a non-empty UTF-8 encoded string of at most {MAX_BUTTON_TEXT} characters"
                )));
            }
            let buttons = payload
                .get("buttons")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if buttons.is_empty() || buttons.len() > 3 {
                return Err(invalid(
                    "(#100) Param message[attachment][payload][buttons] must be an array of 1 to 3 buttons",
                ));
            }
            for b in buttons {
                let title = b.get("title").and_then(Value::as_str).unwrap_or_default();
                if title.is_empty() || title.chars().count() > MAX_BUTTON_TITLE {
                    return Err(invalid(&format!(
                        "(#100) Param message[attachment][payload][buttons][title] must be at most {MAX_BUTTON_TITLE} characters"
                    )));
                }
                if b.get("type").and_then(Value::as_str) == Some("web_url")
                    && b.get("url")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .is_empty()
                {
                    return Err(invalid(
                        "(#100) Param message[attachment][payload][buttons][url] is required",
                    ));
                }
            }
        }
    } else {
        return Err(invalid("(#100) Must send either message or sender action"));
    }
    // The window: RESPONSE and UPDATE only within 24 h of the person's last message; the
    // HUMAN_AGENT tag within 7 days; the other tags any time.
    let since = last_inbound(mock, psid).map(|t| now_ms() - t);
    let allowed = match (messaging_type, tag) {
        ("MESSAGE_TAG", "HUMAN_AGENT") => since.is_some_and(|d| d < HUMAN_AGENT_WINDOW_MS),
        ("MESSAGE_TAG", _) => true,
        _ => since.is_some_and(|d| d < WINDOW_MS),
    };
    if !allowed {
        let (s, b) = error_response("10/2018278");
        return Err((s, b, "10/2018278".into()));
    }
    Ok(())
}

/// An `m_…` message id.
fn message_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut rng = rand::rng();
    let tail: String = (0..80)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("m_{tail}")
}

fn signed_headers(mock: &Mock, body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        (
            "x-hub-signature-256".into(),
            hub_signature(&mock.config.messenger_app_secret, body),
        ),
    ]
}

fn page_event(psid: &str, at: i64, event: (&str, Value)) -> Vec<u8> {
    let mut m = json!({
        "sender": { "id": psid },
        "recipient": { "id": PAGE_ID },
        "timestamp": at,
    });
    m[event.0] = event.1;
    json!({
        "object": "page",
        "entry": [{ "id": PAGE_ID, "time": at, "messaging": [m] }],
    })
    .to_string()
    .into_bytes()
}

/// A `message_deliveries` event: everything sent to `psid` up to `watermark` is delivered.
pub fn delivery_body(psid: &str, watermark: i64, mids: &[String]) -> Vec<u8> {
    let mut d = json!({ "watermark": watermark });
    if !mids.is_empty() {
        d["mids"] = json!(mids);
    }
    page_event(psid, watermark, ("delivery", d))
}

/// A `message_reads` event: everything sent to `psid` up to `watermark` is read.
pub fn read_body(psid: &str, watermark: i64) -> Vec<u8> {
    page_event(psid, watermark, ("read", json!({ "watermark": watermark })))
}

/// A `messages` event: `psid` wrote `text` at `at`.
pub fn inbound_body(psid: &str, at: i64, text: &str) -> Vec<u8> {
    page_event(
        psid,
        at,
        ("message", json!({ "mid": message_id(), "text": text })),
    )
}

/// Posts `body`, signed with the app secret, to Herald's `/webhooks/messenger` now; returns
/// Herald's HTTP status.
pub async fn post_to_herald(mock: &Mock, body: Vec<u8>) -> Result<u16, String> {
    let headers = signed_headers(mock, &body);
    mock.post_now("/webhooks/messenger", headers, body).await
}

/// The person behind `psid` writes to the page: the mock opens its window and tells Herald
/// (a signed `messages` webhook), which opens Herald's window too. Returns Herald's status.
pub async fn user_writes(mock: &Mock, psid: &str, text: &str) -> Result<u16, String> {
    let at = now_ms();
    set_last_inbound(mock, psid, at);
    post_to_herald(mock, inbound_body(psid, at, text)).await
}

/// Sends Herald a delivery watermark for `psid` now (what `receipts` does on its own).
pub async fn post_delivery(mock: &Mock, psid: &str, watermark: i64) -> Result<u16, String> {
    post_to_herald(mock, delivery_body(psid, watermark, &[])).await
}

/// Sends Herald a read watermark for `psid` now.
pub async fn post_read(mock: &Mock, psid: &str, watermark: i64) -> Result<u16, String> {
    post_to_herald(mock, read_body(psid, watermark)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockConfig;

    fn code_of(v: &Value) -> (i64, Option<i64>) {
        (
            v["error"]["code"].as_i64().expect("code"),
            v["error"]["error_subcode"].as_i64(),
        )
    }

    #[test]
    fn documented_errors_render_with_code_and_subcode() {
        for code in [
            "1",
            "2",
            "1200",
            "4",
            "4/2018022",
            "17",
            "32",
            "613",
            "4/2018354",
            "10/2018278",
            "10/2018065",
            "10/2018108",
            "10",
            "200",
            "299",
            "551/1545041",
            "200/1545041",
            "100/2018001",
            "100/2018109",
            "100",
            "190",
            "368",
        ] {
            let (status, body) = error_response(code);
            let (c, s) = parse_code(code);
            assert_eq!(code_of(&body), (c, s), "{code}");
            assert_eq!(body["error"]["type"], "OAuthException");
            assert!(body["error"]["fbtrace_id"]
                .as_str()
                .is_some_and(|t| t.len() == 11));
            assert!(!body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty());
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{code}"
            );
        }
        assert_eq!(error_response("2").0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(error_response("10/2018278").1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("outside of allowed window")));
    }

    #[tokio::test]
    async fn app_usage_counts_the_hour_and_the_wall_answers_error_4() {
        let mut config = MockConfig::default();
        config.knobs.insert(
            PLATFORM.into(),
            crate::Knobs {
                app_calls_per_hour: Some(4),
                ..Default::default()
            },
        );
        let mock = crate::Mock::new(config);
        assert_eq!(mock.app_usage_percent(PLATFORM), Some(0));
        for used in [25, 50, 75, 100] {
            assert!(matches!(mock.gate(PLATFORM, "42").await, crate::Gate::Pass));
            assert_eq!(mock.app_usage_percent(PLATFORM), Some(used));
        }
        match mock.gate(PLATFORM, "42").await {
            crate::Gate::Error(code) => assert_eq!(code, "4"),
            _ => panic!("past the budget"),
        }
        assert_eq!(mock.app_usage_percent(PLATFORM), Some(100));
        assert_eq!(
            crate::Mock::new(MockConfig::default()).app_usage_percent(PLATFORM),
            None
        );
    }

    fn valid(messaging_type: &str) -> Value {
        json!({
            "recipient": {"id": "42"},
            "messaging_type": messaging_type,
            "message": {"text": "hi"},
        })
    }

    fn code(r: Result<(), (StatusCode, Value, String)>) -> Option<String> {
        r.err().map(|(_, _, c)| c)
    }

    #[test]
    fn the_window_is_enforced_per_psid() {
        let m = Mock::new(MockConfig::default());
        assert_eq!(
            code(check(&m, &valid("RESPONSE"), "42")).as_deref(),
            Some("10/2018278")
        );
        set_last_inbound(&m, "42", now_ms() - WINDOW_MS - 1000);
        assert_eq!(
            code(check(&m, &valid("UPDATE"), "42")).as_deref(),
            Some("10/2018278")
        );
        let mut tagged = valid("MESSAGE_TAG");
        tagged["tag"] = json!("ACCOUNT_UPDATE");
        assert_eq!(code(check(&m, &tagged, "42")), None);
        tagged["tag"] = json!("HUMAN_AGENT");
        assert_eq!(code(check(&m, &tagged, "42")), None);
        tagged["tag"] = json!("SHIPPING_UPDATE");
        assert_eq!(code(check(&m, &tagged, "42")).as_deref(), Some("100"));
        set_last_inbound(&m, "42", now_ms() - 1000);
        assert_eq!(code(check(&m, &valid("RESPONSE"), "42")), None);
        // Another PSID's window is its own.
        assert_eq!(
            code(check(&m, &valid("RESPONSE"), "43")).as_deref(),
            Some("10/2018278")
        );
    }

    #[test]
    fn malformed_requests_get_error_100() {
        let m = Mock::new(MockConfig::default());
        set_last_inbound(&m, "42", now_ms());
        let mut no_type = valid("RESPONSE");
        no_type.as_object_mut().map(|o| o.remove("messaging_type"));
        assert_eq!(code(check(&m, &no_type, "42")).as_deref(), Some("100"));
        let mut long = valid("RESPONSE");
        long["message"]["text"] = json!("x".repeat(MAX_TEXT + 1));
        assert_eq!(code(check(&m, &long, "42")).as_deref(), Some("100"));
        let mut buttons = valid("RESPONSE");
        buttons["message"] = json!({"attachment": {"type": "template", "payload": {
            "template_type": "button", "text": "Track",
            "buttons": [{"type": "web_url", "url": "https://e.com", "title": "Open"}]}}});
        assert_eq!(code(check(&m, &buttons, "42")), None);
        buttons["message"]["attachment"]["payload"]["buttons"][0]["title"] =
            json!("x".repeat(MAX_BUTTON_TITLE + 1));
        assert_eq!(code(check(&m, &buttons, "42")).as_deref(), Some("100"));
        assert_eq!(
            code(check(&m, &valid("RESPONSE"), "")).as_deref(),
            Some("100")
        );
    }

    #[test]
    fn webhook_bodies_have_meta_shape() {
        let v: Value =
            serde_json::from_slice(&delivery_body("42", 1000, &["m_1".into()])).expect("json");
        assert_eq!(v["object"], "page");
        let m = &v["entry"][0]["messaging"][0];
        assert_eq!(m["sender"]["id"], "42");
        assert_eq!(m["delivery"]["watermark"], 1000);
        assert_eq!(m["delivery"]["mids"][0], "m_1");
        let v: Value = serde_json::from_slice(&read_body("42", 7)).expect("json");
        assert_eq!(v["entry"][0]["messaging"][0]["read"]["watermark"], 7);
        let v: Value = serde_json::from_slice(&inbound_body("42", 9, "hi")).expect("json");
        assert_eq!(v["entry"][0]["messaging"][0]["message"]["text"], "hi");
        assert!(hub_signature("s", b"x").starts_with("sha256="));
    }
}
