//! email against the mock platform: SMTP through the mock's SMTP sink (exact message, every
//! reply class), SendGrid's Mail Send (exact request, every documented status) and its signed
//! Event Webhook (forged and stale signatures refused, delivery, bounce and unsubscribe).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use herald::config::email::EmailConfig;
use herald::proto;
use herald_mock::{sendgrid, smtp, MockConfig, MockPlatform};
use p256::ecdsa::signature::Signer;
use serde_json::json;

use crate::support::*;

const FROM: &str = "Shop <shop@mail.example.com>";
const UNSUBSCRIBE: &str = "https://shop.example.com/unsubscribe";
const WAIT: Duration = Duration::from_secs(15);

const SENT: i32 = proto::Status::Sent as i32;
const RETRYING: i32 = proto::Status::Retrying as i32;
const SUPPRESSED: i32 = proto::Status::Suppressed as i32;
const CLASS_TRANSIENT: i32 = proto::ErrorClass::Transient as i32;
const CLASS_THROTTLED: i32 = proto::ErrorClass::Throttled as i32;
const CLASS_DEAD: i32 = proto::ErrorClass::DeadAddress as i32;
const CLASS_POLICY: i32 = proto::ErrorClass::Policy as i32;
const CLASS_AUTH: i32 = proto::ErrorClass::Auth as i32;
const CLASS_PAYLOAD: i32 = proto::ErrorClass::Payload as i32;

fn email_config(provider: &str) -> EmailConfig {
    EmailConfig {
        enabled: true,
        provider: provider.into(),
        smtp_url: None,
        smtp_tls: "none".into(),
        smtp_username: None,
        smtp_password: None,
        smtp_password_file: None,
        smtp_pool_size: 4,
        sendgrid_base_url: "https://api.sendgrid.com".into(),
        api_key: None,
        api_key_file: None,
        sendgrid_webhook_public_key: None,
        from: FROM.into(),
        unsubscribe_url: Some(UNSUBSCRIBE.into()),
    }
}

/// Herald with the email channel on the mock's SMTP sink; `tweak` adjusts the section.
async fn smtp_stack(tweak: impl FnOnce(&mut EmailConfig, &MockPlatform)) -> Stack {
    stack(MockConfig::default(), |cfg, mock| {
        let mut e = email_config("smtp");
        e.smtp_url = Some(mock.smtp_url());
        tweak(&mut e, mock);
        cfg.channels.email = Some(e);
    })
    .await
}

/// Herald with the email channel on the mock's SendGrid and its event webhook key.
async fn sendgrid_stack(mc: MockConfig, tweak: impl FnOnce(&mut EmailConfig)) -> Stack {
    let key = mc.sendgrid_api_key.clone();
    stack(mc, |cfg, mock| {
        let mut e = email_config("sendgrid");
        e.sendgrid_base_url = mock.base_url();
        e.api_key = Some(key);
        e.sendgrid_webhook_public_key = Some(sendgrid::webhook_public_key());
        tweak(&mut e);
        cfg.channels.email = Some(e);
    })
    .await
}

fn no_receipts() -> MockConfig {
    MockConfig {
        receipts: false,
        ..MockConfig::default()
    }
}

fn email_request(to: &str, category: proto::Category) -> proto::SendRequest {
    proto::SendRequest {
        recipient: Some(proto::Recipient {
            email: to.to_string(),
            ..Default::default()
        }),
        channels: vec![proto::Channel::Email as i32],
        content: Some(proto::Content {
            title: "Spring sale".into(),
            body: "Everything is 20% off until Sunday.".into(),
            ..Default::default()
        }),
        category: category as i32,
        ..Default::default()
    }
}

async fn send(h: &Herald, req: proto::SendRequest) -> String {
    h.client()
        .send(req)
        .await
        .expect("send accepted")
        .into_inner()
        .notification_id
}

/// Polls until the notification has `n` attempts.
async fn wait_attempts(h: &Herald, id: &str, n: usize) -> proto::Notification {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = h.get(id).await;
        if got.attempts.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id}: fewer than {n} attempts: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(outcome, error class, error code)` of attempt `i`.
fn attempt(n: &proto::Notification, i: usize) -> (String, i32, String) {
    let a = &n.attempts[i];
    (a.outcome.clone(), a.error_class, a.error_code.clone())
}

// ------------------------------------------------------------------ SMTP

#[tokio::test]
async fn smtp_message_is_exact_with_one_click_unsubscribe_for_marketing() {
    let s = smtp_stack(|_, _| {}).await;
    let h = &s.herald;
    let promo = send(
        h,
        email_request("ann@example.org", proto::Category::Marketing),
    )
    .await;
    let receipt = send(
        h,
        email_request("bob@example.org", proto::Category::Transactional),
    )
    .await;
    let n = h.wait_status(&promo, SENT, WAIT).await;
    h.wait_status(&receipt, SENT, WAIT).await;
    let message_id = format!("<{promo}@mail.example.com>");
    assert_eq!(n.attempts[0].provider_message_id, message_id);

    let ledger = s.mock.mock.accepted("smtp");
    assert_eq!(ledger.len(), 2, "{ledger:?}");
    let m = ledger
        .iter()
        .find(|e| e.address == "ann@example.org")
        .expect("marketing message recorded");
    assert_eq!(m.method, "SMTP");
    assert_eq!(m.path, "DATA");
    assert_eq!(m.status, 250);
    assert_eq!(m.query, "mail_from=shop@mail.example.com");
    assert_eq!(m.header("from"), Some(FROM));
    assert_eq!(m.header("to"), Some("ann@example.org"));
    assert_eq!(m.header("subject"), Some("Spring sale"));
    assert_eq!(m.header("message-id"), Some(message_id.as_str()));
    assert_eq!(
        m.header("list-unsubscribe"),
        Some(format!("<{UNSUBSCRIBE}?token={promo}>").as_str())
    );
    assert_eq!(
        m.header("list-unsubscribe-post"),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(m
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    assert!(String::from_utf8_lossy(&m.body).contains("Everything is 20% off until Sunday."));

    let t = ledger
        .iter()
        .find(|e| e.address == "bob@example.org")
        .expect("transactional message recorded");
    assert_eq!(
        t.header("message-id"),
        Some(format!("<{receipt}@mail.example.com>").as_str())
    );
    assert_eq!(t.header("list-unsubscribe"), None);
    assert_eq!(t.header("list-unsubscribe-post"), None);
}

#[tokio::test]
async fn smtp_421_is_throttled_then_sent() {
    let s = smtp_stack(|_, _| {}).await;
    s.mock.mock.fail_next("smtp", "421", 1);
    let id = send(
        &s.herald,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    let n = s.herald.wait_status(&id, SENT, WAIT).await;
    assert_eq!(
        attempt(&n, 0),
        ("throttled".into(), CLASS_THROTTLED, "421 4.7.0".into())
    );
    assert_eq!(n.attempts.len(), 2);
    let statuses: Vec<(String, u16)> = s
        .mock
        .mock
        .ledger("smtp")
        .into_iter()
        .map(|e| (e.path, e.status))
        .collect();
    assert_eq!(statuses, vec![("RCPT".into(), 421), ("DATA".into(), 250)]);
}

#[tokio::test]
async fn smtp_4xx_is_retried_then_sent() {
    let s = smtp_stack(|_, _| {}).await;
    for (i, code) in ["450", "451", "452", "552 5.2.2"].iter().enumerate() {
        s.mock.mock.fail_next("smtp", code, 1);
        let to = format!("r{i}@example.org");
        let id = send(&s.herald, email_request(&to, proto::Category::Utility)).await;
        let n = s.herald.wait_status(&id, SENT, WAIT).await;
        let (outcome, class, got) = attempt(&n, 0);
        assert_eq!(
            (outcome.as_str(), class),
            ("retry", CLASS_TRANSIENT),
            "{code}"
        );
        assert!(got.starts_with(&code[..3]), "{code}: {got}");
        assert_eq!(n.attempts.len(), 2, "{code}");
    }
}

#[tokio::test]
async fn smtp_unknown_mailbox_is_dead_and_later_mail_suppressed() {
    let s = smtp_stack(|_, _| {}).await;
    for (to, code) in [
        ("gone@example.org", "550 5.1.1"),
        ("moved@example.org", "551"),
        ("bad@example.org", "553"),
    ] {
        s.mock.mock.fail_address("smtp", to, Some(code));
        let id = send(&s.herald, email_request(to, proto::Category::Utility)).await;
        let n = s.herald.wait_status(&id, FAILED, WAIT).await;
        let (outcome, class, got) = attempt(&n, 0);
        assert_eq!(
            (outcome.as_str(), class),
            ("dead_address", CLASS_DEAD),
            "{code}"
        );
        assert!(got.starts_with(code), "{code}: {got}");
        // The address is dead now: the next mail never reaches the relay.
        let again = send(&s.herald, email_request(to, proto::Category::Utility)).await;
        let n = s.herald.wait_status(&again, SUPPRESSED, WAIT).await;
        assert!(n.attempts.is_empty(), "{n:?}");
        assert_eq!(
            s.mock
                .mock
                .ledger("smtp")
                .iter()
                .filter(|e| e.address == to)
                .count(),
            1,
            "{code}"
        );
    }
}

#[tokio::test]
async fn smtp_policy_rejection_falls_back_and_keeps_the_address() {
    let s = smtp_stack(|_, _| {}).await;
    for (to, code, stage) in [
        ("p1@example.org", "554 5.7.1", "DATA"),
        ("p2@example.org", "550 5.7.1", "RCPT"),
    ] {
        s.mock.mock.fail_address("smtp", to, Some(code));
        let mut req = email_request(to, proto::Category::Marketing);
        req.channels.push(proto::Channel::Sandbox as i32);
        let id = send(&s.herald, req).await;
        // The sandbox delivers, then reads.
        let n = s.herald.wait_status(&id, READ, WAIT).await;
        assert_eq!(
            attempt(&n, 0),
            ("policy_rejected".into(), CLASS_POLICY, code.into())
        );
        assert_eq!(n.attempts[1].channel, proto::Channel::Sandbox as i32);
        let l = s.mock.mock.ledger("smtp");
        let e = l.iter().find(|e| e.address == to).expect("recorded");
        assert_eq!((e.path.as_str(), e.error.as_deref()), (stage, Some(code)));
        // Not a dead address: once the relay takes it again, mail flows.
        s.mock.mock.fail_address("smtp", to, None);
        let id = send(&s.herald, email_request(to, proto::Category::Utility)).await;
        s.herald.wait_status(&id, SENT, WAIT).await;
    }
}

#[tokio::test]
async fn smtp_oversize_message_is_a_payload_error() {
    let s = smtp_stack(|_, _| {}).await;
    s.mock
        .mock
        .fail_address("smtp", "big@example.org", Some("552 5.3.4"));
    let id = send(
        &s.herald,
        email_request("big@example.org", proto::Category::Utility),
    )
    .await;
    let n = s.herald.wait_status(&id, FAILED, WAIT).await;
    assert_eq!(
        attempt(&n, 0),
        ("payload".into(), CLASS_PAYLOAD, "552 5.3.4".into())
    );
    assert_eq!(n.attempts.len(), 1);
}

#[tokio::test]
async fn smtp_535_bad_credentials_is_an_auth_error() {
    let s = smtp_stack(|e, mock| {
        smtp::require_auth(&mock.mock, "herald", "right");
        e.smtp_username = Some("herald".into());
        e.smtp_password = Some("wrong".into());
    })
    .await;
    let id = send(
        &s.herald,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    let n = wait_attempts(&s.herald, &id, 1).await;
    assert_eq!(
        attempt(&n, 0),
        ("misconfigured".into(), CLASS_AUTH, "535 5.7.8".into())
    );
    assert_eq!(n.status, RETRYING);
    assert!(s.mock.mock.accepted("smtp").is_empty());
    assert_eq!(s.mock.mock.ledger("smtp")[0].path, "AUTH");
}

#[tokio::test]
async fn smtp_530_auth_required_is_an_auth_error_and_right_credentials_send() {
    let s = smtp_stack(|_, mock| smtp::require_auth(&mock.mock, "herald", "right")).await;
    let id = send(
        &s.herald,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    let n = wait_attempts(&s.herald, &id, 1).await;
    assert_eq!(
        attempt(&n, 0),
        ("misconfigured".into(), CLASS_AUTH, "530 5.7.0".into())
    );
    drop(s);
    // With the right credentials the same relay takes the mail.
    let s = smtp_stack(|e, mock| {
        smtp::require_auth(&mock.mock, "herald", "right");
        e.smtp_username = Some("herald".into());
        e.smtp_password = Some("right".into());
    })
    .await;
    let id = send(
        &s.herald,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    s.herald.wait_status(&id, SENT, WAIT).await;
    assert_eq!(s.mock.mock.accepted("smtp").len(), 1);
}

#[tokio::test]
async fn smtp_starttls_required_but_not_offered_is_a_configuration_error() {
    // The sink offers no STARTTLS: sending in the clear instead would leak mail.
    let s = smtp_stack(|e, _| e.smtp_tls = "starttls".into()).await;
    let id = send(
        &s.herald,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    let n = wait_attempts(&s.herald, &id, 1).await;
    assert_eq!(
        attempt(&n, 0),
        ("misconfigured".into(), CLASS_AUTH, "smtp_client".into())
    );
    assert!(s.mock.mock.ledger("smtp").is_empty());
}

#[tokio::test]
async fn smtp_connection_failure_is_retried() {
    let closed = crate::harness::free_addr();
    let s = smtp_stack(|e, _| e.smtp_url = Some(format!("smtp://{closed}"))).await;
    let id = send(
        &s.herald,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    // Retried, not given up: every try is a transient connect failure.
    let n = wait_attempts(&s.herald, &id, 2).await;
    for i in 0..2 {
        assert_eq!(
            attempt(&n, i),
            ("retry".into(), CLASS_TRANSIENT, "connect".into())
        );
    }
    assert!(
        ![FAILED, SENT, SUPPRESSED].contains(&n.status),
        "{:?}",
        n.status
    );
}

// ------------------------------------------------------------------ SendGrid

#[tokio::test]
async fn sendgrid_request_is_exact_and_events_come_back() {
    let s = sendgrid_stack(MockConfig::default(), |_| {}).await;
    let h = &s.herald;
    let id = send(
        h,
        email_request("ann@example.org", proto::Category::Marketing),
    )
    .await;
    // Delivered, then opened (the open moves it on to READ).
    let n = h.wait_status(&id, READ, WAIT).await;
    assert!(n.receipts.iter().any(|r| r.status == DELIVERED), "{n:?}");

    let l = s.mock.mock.ledger("sendgrid");
    assert_eq!(l.len(), 1);
    let r = &l[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v3/mail/send")
    );
    assert_eq!(r.status, 202);
    assert_eq!(r.header("authorization"), Some("Bearer SG.mock-key"));
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let b = r.json();
    assert_eq!(
        b["personalizations"],
        json!([{ "to": [{ "email": "ann@example.org" }] }])
    );
    assert_eq!(
        b["from"],
        json!({ "email": "shop@mail.example.com", "name": "Shop" })
    );
    assert_eq!(b["subject"], "Spring sale");
    assert_eq!(
        b["content"],
        json!([{ "type": "text/plain", "value": "Everything is 20% off until Sunday." }])
    );
    assert_eq!(b["custom_args"], json!({ "notification_id": id }));
    assert_eq!(
        b["headers"],
        json!({
            "List-Unsubscribe": format!("<{UNSUBSCRIBE}?token={id}>"),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        })
    );
    // The provider id is SendGrid's X-Message-Id, which the events carry.
    let xmid = n.attempts[0].provider_message_id.clone();
    assert_eq!(xmid.len(), 22, "{xmid}");
    let ev = sendgrid::event_for(&s.mock.mock, "ann@example.org", "delivered", json!({}))
        .expect("mock sent to ann");
    assert!(ev["sg_message_id"]
        .as_str()
        .is_some_and(|m| m.starts_with(&format!("{xmid}."))));

    // Transactional mail carries no unsubscribe headers.
    let id = send(
        h,
        email_request("bob@example.org", proto::Category::Transactional),
    )
    .await;
    h.wait_status(&id, READ, WAIT).await;
    let l = s.mock.mock.ledger("sendgrid");
    assert!(l[1].json().get("headers").is_none());
}

/// Forces `code` on the next Mail Send and returns the notification once it has an attempt.
async fn sendgrid_forced(code: &str, count: usize) -> (Stack, String) {
    let s = sendgrid_stack(no_receipts(), |_| {}).await;
    s.mock.mock.fail_next("sendgrid", code, count);
    let id = send(
        &s.herald,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    (s, id)
}

#[tokio::test]
async fn sendgrid_400_is_a_payload_error() {
    let (s, id) = sendgrid_forced("400", 1).await;
    let n = s.herald.wait_status(&id, FAILED, WAIT).await;
    assert_eq!(
        attempt(&n, 0),
        ("payload".into(), CLASS_PAYLOAD, "400".into())
    );
    assert_eq!(n.attempts[0].error_message, "Bad Request");
}

#[tokio::test]
async fn sendgrid_413_is_a_payload_error() {
    let (s, id) = sendgrid_forced("413", 1).await;
    let n = s.herald.wait_status(&id, FAILED, WAIT).await;
    assert_eq!(
        attempt(&n, 0),
        ("payload".into(), CLASS_PAYLOAD, "413".into())
    );
}

#[tokio::test]
async fn sendgrid_401_wrong_key_is_an_auth_error() {
    let s = sendgrid_stack(no_receipts(), |e| e.api_key = Some("SG.revoked".into())).await;
    let id = send(
        &s.herald,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    let n = wait_attempts(&s.herald, &id, 1).await;
    assert_eq!(
        attempt(&n, 0),
        ("misconfigured".into(), CLASS_AUTH, "401".into())
    );
    assert_eq!(
        n.attempts[0].error_message,
        "The provided authorization grant is invalid, expired, or revoked"
    );
    assert_eq!(n.status, RETRYING);
    let l = s.mock.mock.ledger("sendgrid");
    assert_eq!(l[0].status, 401);
    assert_eq!(l[0].header("authorization"), Some("Bearer SG.revoked"));
}

#[tokio::test]
async fn sendgrid_403_is_an_auth_error() {
    let (s, id) = sendgrid_forced("403", 1).await;
    let n = wait_attempts(&s.herald, &id, 1).await;
    assert_eq!(
        attempt(&n, 0),
        ("misconfigured".into(), CLASS_AUTH, "403".into())
    );
}

#[tokio::test]
async fn sendgrid_429_is_throttled_then_sent() {
    let (s, id) = sendgrid_forced("429", 1).await;
    let n = s.herald.wait_status(&id, SENT, WAIT).await;
    assert_eq!(
        attempt(&n, 0),
        ("throttled".into(), CLASS_THROTTLED, "429".into())
    );
    assert_eq!(n.attempts.len(), 2);
}

#[tokio::test]
async fn sendgrid_5xx_is_retried_then_sent() {
    let (s, id) = sendgrid_forced("500", 1).await;
    let n = s.herald.wait_status(&id, SENT, WAIT).await;
    assert_eq!(
        attempt(&n, 0),
        ("retry".into(), CLASS_TRANSIENT, "500".into())
    );
    // An outage (503) holds mail until it ends.
    s.mock.mock.set_knobs(
        "sendgrid",
        herald_mock::Knobs {
            outage: true,
            ..Default::default()
        },
    );
    let id = send(
        &s.herald,
        email_request("bob@example.org", proto::Category::Utility),
    )
    .await;
    let n = wait_attempts(&s.herald, &id, 1).await;
    assert_eq!(
        attempt(&n, 0),
        ("retry".into(), CLASS_TRANSIENT, "503".into())
    );
    s.mock
        .mock
        .set_knobs("sendgrid", herald_mock::Knobs::default());
    s.herald.wait_status(&id, SENT, WAIT).await;
}

// ------------------------------------------------------------------ event webhook

async fn post_webhook(h: &Herald, headers: &[(String, String)], body: &[u8]) -> u16 {
    let mut req = reqwest::Client::new()
        .post(format!("{}/webhooks/sendgrid", h.http_url))
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.send().await.expect("post webhook").status().as_u16()
}

fn now_secs() -> i64 {
    herald::model::now_ms() / 1000
}

#[tokio::test]
async fn forged_or_stale_event_signatures_are_refused_and_change_nothing() {
    let s = sendgrid_stack(no_receipts(), |_| {}).await;
    let h = &s.herald;
    let id = send(
        h,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    h.wait_status(&id, SENT, WAIT).await;
    let delivered = sendgrid::event_for(&s.mock.mock, "ann@example.org", "delivered", json!({}))
        .expect("mock sent to ann");
    let unsubscribe =
        sendgrid::event_for(&s.mock.mock, "ann@example.org", "unsubscribe", json!({}))
            .expect("mock sent to ann");
    let events = vec![delivered.clone(), unsubscribe];

    // Signed by another key.
    let (mut headers, body) = sendgrid::signed_events(&events, now_secs());
    let other = p256::ecdsa::SigningKey::from_slice(&[42u8; 32]).expect("scalar");
    let mut msg = headers[2].1.clone().into_bytes();
    msg.extend_from_slice(&body);
    let sig: p256::ecdsa::Signature = other.sign(&msg);
    headers[1].1 = B64.encode(sig.to_der().as_bytes());
    assert_eq!(post_webhook(h, &headers, &body).await, 403);
    // Correctly signed, but 11 minutes old.
    let (headers, body) = sendgrid::signed_events(&events, now_secs() - 660);
    assert_eq!(post_webhook(h, &headers, &body).await, 403);
    // A valid signature over another body.
    let (headers, _) = sendgrid::signed_events(&events, now_secs());
    let tampered = serde_json::to_vec(&vec![delivered.clone()]).expect("json");
    assert_eq!(post_webhook(h, &headers, &tampered).await, 403);
    // No signature at all.
    assert_eq!(post_webhook(h, &headers[..1], &body).await, 403);

    // Nothing was recorded: still SENT, and ann is not opted out.
    let n = h.get(&id).await;
    assert_eq!(n.status, SENT);
    assert!(n.receipts.iter().all(|r| r.status != DELIVERED), "{n:?}");
    let again = send(
        h,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    h.wait_status(&again, SENT, WAIT).await;

    // The same events, properly signed, are taken.
    let (headers, body) = sendgrid::signed_events(&[delivered], now_secs());
    assert_eq!(post_webhook(h, &headers, &body).await, 200);
    h.wait_status(&id, DELIVERED, WAIT).await;
}

#[tokio::test]
async fn delivered_event_marks_delivered() {
    let s = sendgrid_stack(no_receipts(), |_| {}).await;
    let h = &s.herald;
    let id = send(
        h,
        email_request("ann@example.org", proto::Category::Utility),
    )
    .await;
    h.wait_status(&id, SENT, WAIT).await;
    // Found by sg_message_id alone (no custom args).
    let mut e = sendgrid::event_for(&s.mock.mock, "ann@example.org", "delivered", json!({}))
        .expect("mock sent to ann");
    e.as_object_mut().expect("object").remove("notification_id");
    assert_eq!(
        sendgrid::post_events_now(&s.mock.mock, vec![e]).await,
        Ok(200)
    );
    let n = h.wait_status(&id, DELIVERED, WAIT).await;
    assert!(n
        .receipts
        .iter()
        .any(|r| r.status == DELIVERED && r.channel == proto::Channel::Email as i32));
    let click = sendgrid::event_for(
        &s.mock.mock,
        "ann@example.org",
        "click",
        json!({"url": "https://shop.example.com/sale"}),
    )
    .expect("mock sent to ann");
    assert_eq!(
        sendgrid::post_events_now(&s.mock.mock, vec![click]).await,
        Ok(200)
    );
    h.wait_status(&id, proto::Status::Clicked as i32, WAIT)
        .await;
}

#[tokio::test]
async fn bounce_fails_the_mail_and_suppresses_the_next() {
    let s = sendgrid_stack(no_receipts(), |_| {}).await;
    let h = &s.herald;
    let id = send(
        h,
        email_request("gone@example.org", proto::Category::Utility),
    )
    .await;
    h.wait_status(&id, SENT, WAIT).await;
    assert_eq!(
        sendgrid::bounce(&s.mock.mock, "gone@example.org").await,
        Ok(200)
    );
    let n = h.wait_status(&id, FAILED, WAIT).await;
    let r = n
        .receipts
        .iter()
        .find(|r| r.status == FAILED)
        .expect("failed receipt");
    assert_eq!(
        (r.error_class, r.error_code.as_str()),
        (CLASS_DEAD, "5.1.1")
    );
    let again = send(
        h,
        email_request("gone@example.org", proto::Category::Utility),
    )
    .await;
    let n = h.wait_status(&again, SUPPRESSED, WAIT).await;
    assert!(n.attempts.is_empty());
    assert_eq!(s.mock.mock.ledger("sendgrid").len(), 1);
}

#[tokio::test]
async fn unsubscribe_suppresses_the_next_mail() {
    let s = sendgrid_stack(no_receipts(), |_| {}).await;
    let h = &s.herald;
    let id = send(
        h,
        email_request("ann@example.org", proto::Category::Marketing),
    )
    .await;
    h.wait_status(&id, SENT, WAIT).await;
    assert_eq!(
        sendgrid::unsubscribe(&s.mock.mock, "ann@example.org").await,
        Ok(200)
    );
    let again = send(
        h,
        email_request("ann@example.org", proto::Category::Marketing),
    )
    .await;
    let n = h.wait_status(&again, SUPPRESSED, WAIT).await;
    assert!(n.attempts.is_empty());
    assert_eq!(s.mock.mock.ledger("sendgrid").len(), 1);
    // The unsubscribe itself does not fail the mail that was sent.
    assert_eq!(h.get(&id).await.status, SENT);
}
