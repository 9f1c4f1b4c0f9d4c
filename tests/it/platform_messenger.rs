//! Messenger against the mock platform: the exact Send API request, every documented error
//! code's outcome and status, the 24 h window (tags, inbound messages), and the webhook
//! (handshake, signatures, watermarks).

use std::time::{Duration, Instant};

use herald::config::messenger::MessengerConfig;
use herald::config::HumanDuration;
use herald::proto;
use herald_mock::{messenger as mm, MockConfig, MockPlatform};

use crate::support::*;

pub(crate) const VERIFY_TOKEN: &str = "graph-verify-token";
pub(crate) const SENT: i32 = proto::Status::Sent as i32;
pub(crate) const RETRYING: i32 = proto::Status::Retrying as i32;
pub(crate) const SUPPRESSED: i32 = proto::Status::Suppressed as i32;

/// Mock settings: receipts (when on) a little after the send, so Herald has recorded it.
pub(crate) fn mock_config(receipts: bool) -> MockConfig {
    MockConfig {
        receipts,
        deliver_after_ms: 150,
        read_after_ms: 300,
        ..Default::default()
    }
}

/// Quick retries and a short pause after auth errors, so every code's path runs in seconds.
pub(crate) fn quick_dispatch(cfg: &mut herald::config::Config) {
    cfg.dispatch.auth_pause = HumanDuration(Duration::from_millis(100));
    cfg.dispatch.backoff_base = HumanDuration(Duration::from_millis(50));
    cfg.dispatch.backoff_cap = HumanDuration(Duration::from_millis(300));
    cfg.dispatch.max_attempts = 50;
}

/// `[channels.messenger]` pointed at the mock, with the mock's secrets.
fn messenger_config(mock: &MockPlatform) -> MessengerConfig {
    let c = &mock.mock.config;
    toml::from_str(&format!(
        r#"
        base_url = "{}"
        api_version = "v21.0"
        page_id = "{}"
        page_access_token = "{}"
        app_secret = "{}"
        verify_token = "{VERIFY_TOKEN}"
        "#,
        mock.base_url(),
        mm::PAGE_ID,
        c.messenger_page_token,
        c.messenger_app_secret,
    ))
    .expect("messenger config parses")
}

async fn messenger_stack(receipts: bool) -> Stack {
    stack(mock_config(receipts), |cfg, mock| {
        cfg.channels.messenger = Some(messenger_config(mock));
        quick_dispatch(cfg);
    })
    .await
}

fn request(psid: &str, body: &str, route: &[proto::Channel]) -> proto::SendRequest {
    proto::SendRequest {
        recipient: Some(proto::Recipient {
            contact_id: format!("contact-{psid}"),
            messenger_psid: psid.to_string(),
            ..Default::default()
        }),
        channels: route.iter().map(|c| *c as i32).collect(),
        content: Some(proto::Content {
            body: body.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) async fn send(h: &Herald, r: proto::SendRequest) -> String {
    h.client()
        .send(r)
        .await
        .expect("send accepted")
        .into_inner()
        .notification_id
}

/// Polls the notification until `f` holds (10 s at most).
pub(crate) async fn wait_for(
    h: &Herald,
    id: &str,
    what: &str,
    f: impl Fn(&proto::Notification) -> bool,
) -> proto::Notification {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = h.get(id).await;
        if f(&n) {
            return n;
        }
        if Instant::now() > deadline {
            panic!("{id}: {what} did not happen: {n:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) async fn post_webhook(url: &str, body: &[u8], signature: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    let r = req.send().await.expect("post webhook");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn requests_for(mock: &MockPlatform, psid: &str) -> Vec<herald_mock::LedgerEntry> {
    mock.mock
        .ledger("messenger")
        .into_iter()
        .filter(|e| e.address == psid)
        .collect()
}

#[tokio::test]
async fn messenger_request_is_exact_and_receipts_end_read() {
    let s = messenger_stack(true).await;
    let (h, mock) = (&s.herald, &s.mock);
    let psid = "4410001";
    assert_eq!(mm::user_writes(&mock.mock, psid, "hello").await, Ok(200));
    let mut r = request(psid, "It arrives Tuesday", &[proto::Channel::Messenger]);
    if let Some(c) = r.content.as_mut() {
        c.title = "Order shipped".into();
        c.actions = vec![proto::Action {
            label: "Track".into(),
            url: "https://example.com/track/42".into(),
        }];
    }
    let id = send(h, r).await;
    let n = h.wait_status(&id, READ, Duration::from_secs(10)).await;
    let reqs = requests_for(mock, psid);
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v21.0/me/messages");
    assert_eq!(req.query, "access_token=mock-page-token");
    assert!(req
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    let body = req.json();
    assert_eq!(body["recipient"]["id"], psid);
    // The person wrote a moment ago: inside the window.
    assert_eq!(body["messaging_type"], "RESPONSE");
    assert!(body.get("tag").is_none());
    let payload = &body["message"]["attachment"]["payload"];
    assert_eq!(body["message"]["attachment"]["type"], "template");
    assert_eq!(payload["template_type"], "button");
    assert_eq!(payload["text"], "Order shipped\n\nIt arrives Tuesday");
    assert_eq!(
        payload["buttons"],
        serde_json::json!([{"type": "web_url", "url": "https://example.com/track/42", "title": "Track"}])
    );
    assert_eq!(n.attempts.len(), 1);
    assert!(n.attempts[0].provider_message_id.starts_with("m_"));
    let statuses: Vec<i32> = n.receipts.iter().map(|r| r.status).collect();
    assert!(statuses.contains(&DELIVERED), "receipts: {statuses:?}");

    // A tag: MESSAGE_TAG with the tag, plain text.
    let mut r = request(
        psid,
        "Your password was changed",
        &[proto::Channel::Messenger],
    );
    if let Some(c) = r.content.as_mut() {
        c.messenger_tag = "ACCOUNT_UPDATE".into();
    }
    let id = send(h, r).await;
    h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    let body = requests_for(mock, psid)[1].json();
    assert_eq!(body["messaging_type"], "MESSAGE_TAG");
    assert_eq!(body["tag"], "ACCOUNT_UPDATE");
    assert_eq!(
        body["message"],
        serde_json::json!({"text": "Your password was changed"})
    );

    // Longer than 2,000 characters: refused before any request.
    let id = send(
        h,
        request(psid, &"x".repeat(2001), &[proto::Channel::Messenger]),
    )
    .await;
    let n = h.wait_status(&id, FAILED, Duration::from_secs(10)).await;
    assert_eq!(n.attempts[0].error_class, proto::ErrorClass::Payload as i32);
    assert_eq!(n.attempts[0].error_code, "text_too_long");
    assert_eq!(requests_for(mock, psid).len(), 2);
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum End {
    /// Retried on the same channel once the platform takes it again: RETRYING, then SENT.
    Retried,
    /// Left for the next channel (sandbox), which delivers it.
    FellBack,
    /// Left for the next channel; later sends to the address are SUPPRESSED with no request.
    Dead,
    /// No other channel: FAILED.
    Failed,
    /// Retried, but not soon (131057 waits a minute): RETRYING is all a test sees.
    RetryingLater,
}

#[tokio::test]
async fn messenger_every_documented_error_code() {
    use proto::ErrorClass as C;
    let cases: &[(&str, C, End)] = &[
        ("1", C::Transient, End::Retried),
        ("2", C::Transient, End::Retried),
        ("1200", C::Transient, End::Retried),
        ("4", C::Throttled, End::Retried),
        ("4/2018022", C::Throttled, End::Retried),
        ("17", C::Throttled, End::Retried),
        ("32", C::Throttled, End::Retried),
        ("613", C::Throttled, End::Retried),
        ("4/2018354", C::Policy, End::FellBack),
        ("10/2018278", C::Policy, End::FellBack),
        ("10/2018065", C::Policy, End::FellBack),
        ("10/2018278", C::Policy, End::Failed),
        ("10/2018108", C::DeadAddress, End::Dead),
        ("551/1545041", C::DeadAddress, End::Dead),
        ("200/1545041", C::DeadAddress, End::Dead),
        ("100/2018001", C::DeadAddress, End::Dead),
        ("100/2018001", C::DeadAddress, End::Failed),
        ("100/2018109", C::Payload, End::FellBack),
        ("10", C::Auth, End::Retried),
        ("200", C::Auth, End::Retried),
        ("299", C::Auth, End::Retried),
        ("100", C::Auth, End::Retried),
        ("190", C::Auth, End::Retried),
        ("368", C::Auth, End::Retried),
    ];
    let s = messenger_stack(false).await;
    let (h, mock) = (&s.herald, &s.mock);
    let runs = cases
        .iter()
        .enumerate()
        .map(|(i, (code, class, end))| async move {
            let psid = format!("77{i:03}");
            mm::set_last_inbound(&mock.mock, &psid, herald::model::now_ms());
            mock.mock.fail_address("messenger", &psid, Some(code));
            let route: &[proto::Channel] = match end {
                End::Failed => &[proto::Channel::Messenger],
                _ => &[proto::Channel::Messenger, proto::Channel::Sandbox],
            };
            let id = send(h, request(&psid, "Your order shipped", route)).await;
            let n = wait_for(h, &id, "a first attempt", |n| !n.attempts.is_empty()).await;
            let a = &n.attempts[0];
            assert_eq!(a.channel, proto::Channel::Messenger as i32, "{code}");
            assert_eq!(a.error_class, *class as i32, "{code}: {a:?}");
            assert_eq!(a.error_code, *code, "{code}");
            check_end(h, &id, code, *end, proto::Channel::Messenger).await;
            let clear = || mock.mock.fail_address("messenger", &psid, None);
            match end {
                End::Retried => {
                    clear();
                    let n = h.wait_status(&id, SENT, Duration::from_secs(10)).await;
                    let last = n.attempts.last().expect("attempts");
                    assert_eq!(last.channel, proto::Channel::Messenger as i32, "{code}");
                    assert!(last.provider_message_id.starts_with("m_"), "{code}");
                }
                End::Dead => {
                    let before = requests_for(mock, &psid).len();
                    let again = send(
                        h,
                        request(&psid, "Still there?", &[proto::Channel::Messenger]),
                    )
                    .await;
                    h.wait_status(&again, SUPPRESSED, Duration::from_secs(10))
                        .await;
                    assert_eq!(requests_for(mock, &psid).len(), before, "{code}");
                    if *code == "551/1545041" {
                        // "P until they message in again": a message in revives the PSID.
                        clear();
                        assert_eq!(mm::user_writes(&mock.mock, &psid, "back").await, Ok(200));
                        let third = send(
                            h,
                            request(&psid, "Welcome back", &[proto::Channel::Messenger]),
                        )
                        .await;
                        h.wait_status(&third, SENT, Duration::from_secs(10)).await;
                    }
                }
                _ => {}
            }
        });
    futures::future::join_all(runs).await;
}

/// Checks where a notification goes after its first channel answered a documented error.
pub(crate) async fn check_end(h: &Herald, id: &str, code: &str, end: End, channel: proto::Channel) {
    match end {
        End::Retried | End::RetryingLater => {
            wait_for(h, id, &format!("{code}: RETRYING"), |n| {
                n.status == RETRYING
            })
            .await;
        }
        End::FellBack | End::Dead => {
            let n = wait_for(h, id, &format!("{code}: delivered by sandbox"), |n| {
                n.status == READ
            })
            .await;
            assert_eq!(n.channel, proto::Channel::Sandbox as i32, "{code}");
            assert_eq!(n.attempts.len(), 2, "{code}");
            assert_eq!(n.attempts[0].channel, channel as i32, "{code}");
        }
        End::Failed => {
            let n = h.wait_status(id, FAILED, Duration::from_secs(10)).await;
            assert_eq!(n.attempts.len(), 1, "{code}");
        }
    }
}

#[tokio::test]
async fn messenger_window_needs_an_inbound_message_or_a_tag() {
    let s = messenger_stack(false).await;
    let (h, mock) = (&s.herald, &s.mock);
    let psid = "5520001";
    // The person wrote 25 h ago: the mock refuses UPDATE; Herald falls back.
    mm::set_last_inbound(&mock.mock, psid, herald::model::now_ms() - 25 * 3600 * 1000);
    let route = [proto::Channel::Messenger, proto::Channel::Sandbox];
    let id = send(h, request(psid, "Sale starts now", &route)).await;
    check_end(
        h,
        &id,
        "10/2018278",
        End::FellBack,
        proto::Channel::Messenger,
    )
    .await;
    let n = h.get(&id).await;
    assert_eq!(n.attempts[0].error_code, "10/2018278");
    assert_eq!(n.attempts[0].error_class, proto::ErrorClass::Policy as i32);
    assert_eq!(
        requests_for(mock, psid)[0].json()["messaging_type"],
        "UPDATE"
    );

    // A tag the platform still takes goes out of the window.
    let mut r = request(psid, "Your order shipped", &[proto::Channel::Messenger]);
    if let Some(c) = r.content.as_mut() {
        c.messenger_tag = "POST_PURCHASE_UPDATE".into();
    }
    let id = send(h, r).await;
    h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    assert_eq!(
        requests_for(mock, psid)[1].json()["tag"],
        "POST_PURCHASE_UPDATE"
    );

    // The person writes: the signed `messages` webhook opens Herald's window.
    assert_eq!(mm::user_writes(&mock.mock, psid, "hi!").await, Ok(200));
    let id = send(h, request(psid, "Thanks for writing", &route)).await;
    let n = h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    assert_eq!(n.channel, proto::Channel::Messenger as i32);
    let reqs = requests_for(mock, psid);
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[2].json()["messaging_type"], "RESPONSE");
    assert_eq!(reqs[2].status, 200);
}

#[tokio::test]
async fn messenger_webhook_handshake() {
    let s = messenger_stack(false).await;
    let url = format!("{}/webhooks/messenger", s.herald.http_url);
    let http = reqwest::Client::new();
    let r = http
        .get(&url)
        .query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", VERIFY_TOKEN),
            ("hub.challenge", "1158201444"),
        ])
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.expect("body"), "1158201444");
    for (mode, token) in [("subscribe", "wrong"), ("unsubscribe", VERIFY_TOKEN)] {
        let r = http
            .get(&url)
            .query(&[
                ("hub.mode", mode),
                ("hub.verify_token", token),
                ("hub.challenge", "1"),
            ])
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 403, "{mode} {token}");
    }
}

#[tokio::test]
async fn messenger_forged_webhooks_change_nothing() {
    let s = messenger_stack(false).await;
    let (h, mock) = (&s.herald, &s.mock);
    let psid = "6630001";
    mm::set_last_inbound(&mock.mock, psid, herald::model::now_ms());
    let id = send(h, request(psid, "Hello", &[proto::Channel::Messenger])).await;
    h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    let url = format!("{}/webhooks/messenger", h.http_url);
    let now = herald::model::now_ms() + 1000;
    let forged = herald_mock::messenger::hub_signature("not-the-app-secret", b"");
    for body in [
        mm::delivery_body(psid, now, &[]),
        mm::read_body(psid, now),
        mm::inbound_body(psid, now, "hi"),
    ] {
        let (status, _) = post_webhook(&url, &body, None).await;
        assert_eq!(status, 401);
        let sig = herald_mock::messenger::hub_signature("not-the-app-secret", &body);
        let (status, _) = post_webhook(&url, &body, Some(&sig)).await;
        assert_eq!(status, 403);
        let (status, _) = post_webhook(&url, &body, Some(&forged)).await;
        assert_eq!(status, 403);
    }
    // Webhooks are applied before they are answered: nothing moved, no window opened.
    assert_eq!(h.get(&id).await.status, SENT);
    let id = send(h, request(psid, "Again", &[proto::Channel::Messenger])).await;
    h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    assert_eq!(
        requests_for(mock, psid)[1].json()["messaging_type"],
        "UPDATE"
    );
}

#[tokio::test]
async fn messenger_watermarks_move_earlier_messages_only() {
    let s = messenger_stack(false).await;
    let (h, mock) = (&s.herald, &s.mock);
    let psid = "8840001";
    mm::set_last_inbound(&mock.mock, psid, herald::model::now_ms());
    let first = send(h, request(psid, "One", &[proto::Channel::Messenger])).await;
    h.wait_status(&first, SENT, Duration::from_secs(10)).await;
    let watermark = herald::model::now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = send(h, request(psid, "Two", &[proto::Channel::Messenger])).await;
    h.wait_status(&second, SENT, Duration::from_secs(10)).await;

    assert_eq!(
        mm::post_delivery(&mock.mock, psid, watermark).await,
        Ok(200)
    );
    let n = h.get(&first).await;
    assert_eq!(n.status, DELIVERED);
    assert!(n
        .receipts
        .iter()
        .any(|r| r.status == DELIVERED && r.channel == proto::Channel::Messenger as i32));
    assert_eq!(h.get(&second).await.status, SENT);

    assert_eq!(mm::post_read(&mock.mock, psid, watermark).await, Ok(200));
    assert_eq!(h.get(&first).await.status, READ);
    assert_eq!(h.get(&second).await.status, SENT);

    // Another PSID's watermark touches nothing here.
    let later = herald::model::now_ms();
    assert_eq!(
        mm::post_read(&mock.mock, "someone-else", later).await,
        Ok(200)
    );
    assert_eq!(h.get(&second).await.status, SENT);
    // A later read watermark covers the second message too (read implies delivered).
    assert_eq!(mm::post_read(&mock.mock, psid, later).await, Ok(200));
    assert_eq!(h.get(&second).await.status, READ);
    // A stale delivery watermark does not move READ back.
    assert_eq!(mm::post_delivery(&mock.mock, psid, later).await, Ok(200));
    assert_eq!(h.get(&first).await.status, READ);
}
