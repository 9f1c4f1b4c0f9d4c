//! `/webhooks/twilio`: Twilio's status callbacks (`/status`: sent, delivered, read,
//! undelivered, failed → receipts) and inbound messages (`/inbound`: STOP / START keywords →
//! opt-out / opt-in, and every message → last inbound time). Both are form posts signed with
//! `X-Twilio-Signature` over `server.public_url` + the path (+ query) and the sorted params;
//! a missing or wrong signature answers 403 and records nothing.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tracing::{debug, warn};

use super::{store_failed, WebhookState};
use crate::channels::sms::{self, INBOUND_PATH, STATUS_PATH};
use crate::model::{
    now_ms, shard_of, Channel, ContactChange, ContactKey, ErrorClass, ProviderReceipt, Status,
};

pub fn routes() -> Router<WebhookState> {
    Router::new()
        .route("/status", post(status))
        .route("/inbound", post(inbound))
}

/// The empty TwiML document: "received, reply nothing".
pub const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

fn twiml() -> Response {
    ([(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response()
}

/// Keywords Twilio treats as an opt-out (since 2025-04-29 REVOKE and OPTOUT too).
pub const STOP_KEYWORDS: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];

/// Keywords that opt back in.
pub const START_KEYWORDS: &[&str] = &["START", "YES", "UNSTOP"];

/// The opt-out or opt-in an inbound message asks for: Twilio's `OptOutType` (STOP / START,
/// sent when Advanced Opt-Out is on) wins; else the body, trimmed, matched case-insensitively
/// as a whole against the keywords (as Twilio does: "stop it please" is no opt-out).
pub fn keyword_change(body: &str, opt_out_type: &str) -> Option<ContactChange> {
    let t = opt_out_type.trim();
    if t.eq_ignore_ascii_case("STOP") {
        return Some(ContactChange::OptOut);
    }
    if t.eq_ignore_ascii_case("START") {
        return Some(ContactChange::OptIn);
    }
    let word = body.trim();
    if STOP_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word)) {
        Some(ContactChange::OptOut)
    } else if START_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word)) {
        Some(ContactChange::OptIn)
    } else {
        None
    }
}

/// What a status callback means for the notification: its status, the error's class and code.
/// None: nothing to record (queued, accepted, sending, scheduled, or unknown).
pub fn receipt_status(
    message_status: &str,
    error_code: &str,
) -> Option<(Status, Option<ErrorClass>, String)> {
    let code = error_code.trim();
    let code = if code == "0" { "" } else { code };
    let class = code.parse::<u32>().ok().and_then(sms::code_class);
    match message_status.trim().to_ascii_lowercase().as_str() {
        "sent" => Some((Status::Sent, None, String::new())),
        "delivered" => Some((Status::Delivered, None, String::new())),
        "read" => Some((Status::Read, None, String::new())),
        // Twilio held it past its ValidityPeriod (Herald's expire_at): it expired.
        "undelivered" | "failed" if code == "30036" => {
            Some((Status::Expired, class, code.to_string()))
        }
        "undelivered" | "failed" => Some((Status::Failed, class, code.to_string())),
        "canceled" => Some((Status::Canceled, None, code.to_string())),
        _ => None,
    }
}

/// The URL Twilio requested, as it signed it: the public URL, the path, the query.
fn signed_url(public_url: &str, path: &str, query: Option<&str>) -> String {
    let base = public_url.trim_end_matches('/');
    match query {
        Some(q) if !q.is_empty() => format!("{base}{path}?{q}"),
        _ => format!("{base}{path}"),
    }
}

/// The form params of a request whose signature holds, or the answer to give.
fn verified(
    state: &WebhookState,
    path: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, (StatusCode, &'static str)> {
    let Some(cfg) = state.config.channels.sms.as_ref().filter(|c| c.enabled) else {
        return Err((StatusCode::NOT_FOUND, "the sms channel is not configured\n"));
    };
    let token = cfg.auth_token().map_err(|e| {
        warn!(error = %e, "twilio webhook: auth token unavailable; asking Twilio to retry");
        (StatusCode::SERVICE_UNAVAILABLE, "try again later\n")
    })?;
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let url = signed_url(&state.config.server.public_url, path, uri.query());
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok());
    if !sms::verify_signature(&token, &url, &params, sig) {
        warn!(
            path,
            present = sig.is_some(),
            "twilio webhook refused: X-Twilio-Signature missing or wrong"
        );
        return Err((StatusCode::FORBIDDEN, "invalid signature\n"));
    }
    Ok(params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

async fn status(
    State(state): State<WebhookState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match verified(&state, STATUS_PATH, &uri, &headers, &body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let first = |a: &str, b: &str| {
        let v = param(&params, a);
        if v.is_empty() {
            param(&params, b).to_string()
        } else {
            v.to_string()
        }
    };
    let sid = first("MessageSid", "SmsSid");
    let message_status = first("MessageStatus", "SmsStatus");
    let Some((status, error_class, error_code)) =
        receipt_status(&message_status, param(&params, "ErrorCode"))
    else {
        debug!(status = %message_status, "twilio status callback with nothing to record");
        return twiml();
    };
    // The notification id Herald put in the StatusCallback URL (signed with it); without it
    // the store finds the notification by the message sid.
    let notification_id = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "n")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .filter(|id| shard_of(id).is_some())
        .unwrap_or_default();
    if sid.is_empty() && notification_id.is_empty() {
        return (StatusCode::BAD_REQUEST, "MessageSid is required\n").into_response();
    }
    let receipt = ProviderReceipt {
        channel: Channel::Sms,
        notification_id,
        provider_id: sid,
        status,
        error_class,
        error_code: error_code.clone(),
        at: now_ms(),
    };
    // What the failure says about the number: dead (P), or the person opted out meanwhile.
    // Recorded before the receipt, as dispatch does: once the notification shows FAILED, the
    // number is already suppressed.
    let to = param(&params, "To");
    let change = match (status, error_class) {
        _ if error_code == "21610" => Some(ContactChange::OptOut),
        (Status::Failed, Some(ErrorClass::DeadAddress)) => Some(ContactChange::Dead),
        _ => None,
    };
    if let (Some(change), false) = (change, to.is_empty()) {
        let key = ContactKey::new(Channel::Sms, to);
        if let Err(e) = state.store.update_contacts(vec![(key, change)]).await {
            return store_failed(e).into_response();
        }
    }
    if let Err(e) = state.store.record_receipts(vec![receipt]).await {
        return store_failed(e).into_response();
    }
    twiml()
}

async fn inbound(
    State(state): State<WebhookState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match verified(&state, INBOUND_PATH, &uri, &headers, &body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let from = param(&params, "From");
    if from.is_empty() {
        return (StatusCode::BAD_REQUEST, "From is required\n").into_response();
    }
    let key = ContactKey::new(Channel::Sms, from);
    let mut changes = vec![(key.clone(), ContactChange::Inbound(now_ms()))];
    let keyword = keyword_change(param(&params, "Body"), param(&params, "OptOutType"));
    if let Some(k) = keyword {
        changes.push((key, k));
    }
    if let Err(e) = state.store.update_contacts(changes).await {
        return store_failed(e).into_response();
    }
    debug!(keyword = ?keyword, "twilio inbound message recorded");
    twiml()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_and_start_keywords() {
        for w in [
            "STOP",
            "stop",
            " Stop \n",
            "STOPALL",
            "unsubscribe",
            "Cancel",
            "END",
            "quit",
            "REVOKE",
            "optout",
        ] {
            assert_eq!(keyword_change(w, ""), Some(ContactChange::OptOut), "{w:?}");
        }
        for w in ["START", "yes", " Unstop "] {
            assert_eq!(keyword_change(w, ""), Some(ContactChange::OptIn), "{w:?}");
        }
        for w in ["stop it", "hello", "", "HELP", "STOPP"] {
            assert_eq!(keyword_change(w, ""), None, "{w:?}");
        }
        // Twilio's own verdict wins.
        assert_eq!(keyword_change("arrêt", "STOP"), Some(ContactChange::OptOut));
        assert_eq!(keyword_change("go", "START"), Some(ContactChange::OptIn));
        assert_eq!(keyword_change("stop", "HELP"), Some(ContactChange::OptOut));
    }

    #[test]
    fn statuses_map_to_receipts() {
        assert_eq!(
            receipt_status("delivered", ""),
            Some((Status::Delivered, None, String::new()))
        );
        assert_eq!(
            receipt_status("sent", ""),
            Some((Status::Sent, None, String::new()))
        );
        assert_eq!(
            receipt_status("read", ""),
            Some((Status::Read, None, String::new()))
        );
        assert_eq!(
            receipt_status("undelivered", "30006"),
            Some((
                Status::Failed,
                Some(ErrorClass::DeadAddress),
                "30006".into()
            ))
        );
        assert_eq!(
            receipt_status("failed", "30003"),
            Some((Status::Failed, Some(ErrorClass::Transient), "30003".into()))
        );
        assert_eq!(
            receipt_status("failed", "30007"),
            Some((Status::Failed, Some(ErrorClass::Policy), "30007".into()))
        );
        assert_eq!(
            receipt_status("failed", "30036"),
            Some((Status::Expired, Some(ErrorClass::Policy), "30036".into()))
        );
        assert_eq!(
            receipt_status("failed", "30032"),
            Some((Status::Failed, Some(ErrorClass::Auth), "30032".into()))
        );
        assert_eq!(
            receipt_status("canceled", ""),
            Some((Status::Canceled, None, String::new()))
        );
        for s in [
            "queued",
            "accepted",
            "sending",
            "scheduled",
            "receiving",
            "",
        ] {
            assert_eq!(receipt_status(s, ""), None, "{s}");
        }
    }

    #[test]
    fn the_signed_url_is_the_public_one() {
        assert_eq!(
            signed_url("https://h.example/", STATUS_PATH, Some("n=1-0")),
            "https://h.example/webhooks/twilio/status?n=1-0"
        );
        assert_eq!(
            signed_url("https://h.example", INBOUND_PATH, None),
            "https://h.example/webhooks/twilio/inbound"
        );
    }
}
