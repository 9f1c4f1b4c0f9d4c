//! Webhooks the platforms call back on the HTTP port, under `/webhooks/<platform>`: delivery
//! and read receipts, inbound messages (which open messaging windows), opt-outs, bounces.
//! Each verifies the platform's signature over the raw bytes before it believes a byte; a
//! missing or wrong signature changes nothing. Receipts go through the store's status
//! machine, so a repeated or out-of-order one changes nothing either.

pub mod messenger;
pub mod sendgrid;
pub mod twilio;
pub mod whatsapp;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Config;
use crate::store::{Store, StoreError};

/// What every webhook handler gets.
#[derive(Clone)]
pub struct WebhookState {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
}

/// `/webhooks/<platform>` routes for the platforms configured.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .nest("/webhooks/messenger", messenger::routes())
        .nest("/webhooks/whatsapp", whatsapp::routes())
        .nest("/webhooks/twilio", twilio::routes())
        .nest("/webhooks/sendgrid", sendgrid::routes())
        .with_state(state)
}

/// Checks `sha256=<hex HMAC-SHA256(secret, body)>` (Meta's `X-Hub-Signature-256`) in
/// constant time.
pub fn verify_hub_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Some(sig) = decode_hex(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// `sha256=<hex>` signature of `body` (what Meta sends; used by tests and the mock).
pub fn hub_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A store failure answers 503 so the platform delivers the webhook again later.
pub fn store_failed(e: StoreError) -> (StatusCode, String) {
    tracing::warn!(error = %e, "webhook not recorded; asking the platform to retry");
    (StatusCode::SERVICE_UNAVAILABLE, "try again later\n".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_signatures_verify_and_reject() {
        let sig = hub_signature(b"secret", b"{\"a\":1}");
        assert!(sig.starts_with("sha256="));
        assert!(verify_hub_signature(b"secret", b"{\"a\":1}", Some(&sig)));
        assert!(!verify_hub_signature(b"secret", b"{\"a\":2}", Some(&sig)));
        assert!(!verify_hub_signature(b"other", b"{\"a\":1}", Some(&sig)));
        assert!(!verify_hub_signature(b"secret", b"{\"a\":1}", None));
        assert!(!verify_hub_signature(
            b"secret",
            b"{\"a\":1}",
            Some("sha256=zz")
        ));
    }
}
