//! SMS through Twilio against the mock platform: the exact Messages request, segments on the
//! attempt, every documented error code, status callbacks (in and out of order), forged
//! signatures, and STOP / START from the person.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use herald::config::sms::SmsConfig;
use herald::config::HumanDuration;
use herald::model::{Channel, ContactKey, ContactState};
use herald::proto;
use herald_mock::{twilio, MockConfig, MockPlatform};

use crate::harness::{eventually, Sink};
use crate::support::*;

const FROM: &str = "+15005550006";
const WAIT: Duration = Duration::from_secs(20);
const SENT: i32 = proto::Status::Sent as i32;
const SUPPRESSED: i32 = proto::Status::Suppressed as i32;

fn sms_config(mock: &MockPlatform) -> SmsConfig {
    let c = &mock.mock.config;
    SmsConfig {
        enabled: true,
        base_url: mock.base_url(),
        account_sid: c.twilio_account_sid.clone(),
        auth_token: Some(c.twilio_auth_token.clone()),
        auth_token_file: None,
        from: Some(FROM.into()),
        messaging_service_sid: None,
    }
}

async fn sms_stack(mc: MockConfig) -> Stack {
    stack(mc, |cfg, mock| {
        cfg.channels.sms = Some(sms_config(mock));
        // Auth errors hold the channel; keep that short so one test covers every code.
        cfg.dispatch.auth_pause = HumanDuration(Duration::from_millis(200));
    })
    .await
}

fn no_receipts() -> MockConfig {
    MockConfig {
        receipts: false,
        ..Default::default()
    }
}

fn sms_request(phone: &str, body: &str) -> proto::SendRequest {
    proto::SendRequest {
        recipient: Some(proto::Recipient {
            phone: phone.to_string(),
            ..Default::default()
        }),
        channels: vec![proto::Channel::Sms as i32],
        content: Some(proto::Content {
            body: body.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn send(s: &Stack, req: proto::SendRequest) -> String {
    s.herald
        .client()
        .send(req)
        .await
        .expect("send accepted")
        .into_inner()
        .notification_id
}

/// Waits until the notification has at least `n` attempts; returns it.
async fn wait_attempts(s: &Stack, id: &str, n: usize) -> proto::Notification {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = s.herald.get(id).await;
        if got.attempts.len() >= n {
            return got;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{id} has {} attempts (wanted {n}): {got:?}",
                got.attempts.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn store(s: &Stack) -> std::sync::Arc<dyn herald::store::Store> {
    s.herald
        .running
        .as_ref()
        .expect("herald running")
        .store
        .clone()
}

async fn contact(s: &Stack, phone: &str) -> ContactState {
    store(s)
        .contacts(&[ContactKey::new(Channel::Sms, phone)])
        .await
        .expect("contact state")
        .pop()
        .expect("one state")
}

/// The meta dispatch kept on the notification's attempts (not in the gRPC view).
async fn attempt_meta(s: &Stack, id: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    store(s)
        .get(id)
        .await
        .expect("store get")
        .expect("notification stored")
        .attempts
        .into_iter()
        .map(|a| a.meta)
        .collect()
}

fn status_url(s: &Stack, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{}/webhooks/twilio/status?n={id}", s.herald.http_url),
        None => format!("{}/webhooks/twilio/status", s.herald.http_url),
    }
}

#[tokio::test]
async fn sms_request_is_exactly_twilios_and_delivery_comes_back() {
    let s = sms_stack(MockConfig::default()).await;
    let mut req = sms_request("+14155550100", "Your parcel is on its way");
    if let Some(c) = req.content.as_mut() {
        c.title = "Order shipped".into();
    }
    req.expire_at = Some(ts_in(600_000));
    let id = send(&s, req).await;
    let n = s.herald.wait_status(&id, DELIVERED, WAIT).await;

    let ledger = s.mock.mock.ledger("twilio");
    assert_eq!(ledger.len(), 1, "one request: {ledger:?}");
    let e = &ledger[0];
    let c = &s.mock.mock.config;
    assert_eq!(e.method, "POST");
    assert_eq!(
        e.path,
        format!(
            "/2010-04-01/Accounts/{}/Messages.json",
            c.twilio_account_sid
        )
    );
    let basic = B64.encode(format!("{}:{}", c.twilio_account_sid, c.twilio_auth_token));
    assert_eq!(
        e.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert!(e
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded")));
    let form = e.form();
    let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["To", "From", "Body", "StatusCallback", "ValidityPeriod"]
    );
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(field("To"), "+14155550100");
    assert_eq!(field("From"), FROM);
    assert_eq!(field("Body"), "Order shipped\nYour parcel is on its way");
    assert_eq!(field("StatusCallback"), status_url(&s, Some(&id)));
    let validity: i64 = field("ValidityPeriod").parse().expect("whole seconds");
    assert!((580..=600).contains(&validity), "ValidityPeriod {validity}");

    // The message sid is the provider id; SENT then DELIVERED came from the callbacks.
    let sid = &n.attempts[0].provider_message_id;
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
    assert_eq!(n.channel, proto::Channel::Sms as i32);
    let delivered = n
        .receipts
        .iter()
        .find(|r| r.status == DELIVERED)
        .expect("a DELIVERED receipt");
    assert_eq!(&delivered.provider_message_id, sid);
    let meta = attempt_meta(&s, &id).await;
    assert_eq!(meta[0].get("segments").map(String::as_str), Some("1"));
    assert_eq!(meta[0].get("encoding").map(String::as_str), Some("GSM-7"));
}

#[tokio::test]
async fn segments_and_encoding_are_recorded_on_the_attempt() {
    let s = sms_stack(no_receipts()).await;
    let cases = [
        ("a".repeat(160), "1", "GSM-7"),
        ("a".repeat(161), "2", "GSM-7"),
        ("{".repeat(80), "1", "GSM-7"),
        ("{".repeat(81), "2", "GSM-7"),
        (format!("{}😀", "a".repeat(68)), "1", "UCS-2"),
        (format!("{}😀", "a".repeat(69)), "2", "UCS-2"),
        ("ж".repeat(135), "3", "UCS-2"),
    ];
    for (i, (body, segments, encoding)) in cases.iter().enumerate() {
        let id = send(&s, sms_request(&format!("+1415555{:04}", 100 + i), body)).await;
        s.herald.wait_status(&id, SENT, WAIT).await;
        let meta = attempt_meta(&s, &id).await;
        assert_eq!(
            meta[0].get("segments").map(String::as_str),
            Some(*segments),
            "case {i}"
        );
        assert_eq!(
            meta[0].get("encoding").map(String::as_str),
            Some(*encoding),
            "case {i}"
        );
    }
}

/// What a documented code should lead to.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Retried (R, T, A): once the platform recovers it is delivered.
    Recovers,
    /// Given up on this channel (P, X): FAILED, the route having no other channel.
    Fails,
}

#[tokio::test]
async fn every_documented_code_gets_its_outcome_and_status() {
    use proto::ErrorClass as E;
    let s = sms_stack(MockConfig::default()).await;
    let cases: &[(&str, &str, E, Then)] = &[
        ("20429", "throttled", E::Throttled, Then::Recovers),
        ("21611", "throttled", E::Throttled, Then::Recovers),
        ("30001", "throttled", E::Throttled, Then::Recovers),
        ("30003", "retry", E::Transient, Then::Recovers),
        ("30008", "retry", E::Transient, Then::Recovers),
        ("20003", "misconfigured", E::Auth, Then::Recovers),
        ("30032", "misconfigured", E::Auth, Then::Recovers),
        ("30034", "misconfigured", E::Auth, Then::Recovers),
        ("21211", "dead_address", E::DeadAddress, Then::Fails),
        ("30004", "dead_address", E::DeadAddress, Then::Fails),
        ("30005", "dead_address", E::DeadAddress, Then::Fails),
        ("30006", "dead_address", E::DeadAddress, Then::Fails),
        ("21610", "policy_rejected", E::Policy, Then::Fails),
        ("30007", "policy_rejected", E::Policy, Then::Fails),
        ("30036", "policy_rejected", E::Policy, Then::Fails),
    ];
    for (i, (code, outcome, class, then)) in cases.iter().enumerate() {
        let phone = format!("+1415555{:04}", 200 + i);
        // One notification in flight at a time: a recoverable code fails the next request
        // only; a final one fails every request to the number.
        match then {
            Then::Recovers => s.mock.mock.fail_next("twilio", code, 1),
            Then::Fails => s.mock.mock.fail_address("twilio", &phone, Some(code)),
        }
        let id = send(&s, sms_request(&phone, "code test")).await;
        let n = wait_attempts(&s, &id, 1).await;
        let a = &n.attempts[0];
        assert_eq!(a.outcome, *outcome, "code {code}");
        assert_eq!(a.error_class, *class as i32, "code {code}");
        assert_eq!(a.error_code, *code, "code {code}");
        match then {
            Then::Recovers => {
                s.herald.wait_status(&id, DELIVERED, WAIT).await;
                assert_eq!(contact(&s, &phone).await, ContactState::default());
            }
            Then::Fails => {
                let n = s.herald.wait_status(&id, FAILED, WAIT).await;
                assert_eq!(n.attempts.len(), 1, "code {code}: no retry");
                let state = contact(&s, &phone).await;
                // P marks the number dead; 21610 records an opt-out, not a dead number.
                assert_eq!(state.dead, *class == E::DeadAddress, "code {code}");
                assert_eq!(state.opted_out, *code == "21610", "code {code}");
            }
        }
    }
    // Every request the mock answered with an error carried that error's HTTP status.
    for e in s.mock.mock.ledger("twilio") {
        if let Some(code) = &e.error {
            assert_eq!(e.status, twilio::error_info(code).0, "{code}");
        }
    }
}

#[tokio::test]
async fn unreachable_handset_is_retried_a_few_times_only() {
    let s = sms_stack(MockConfig::default()).await;
    let phone = "+14155550300";
    s.mock.mock.fail_address("twilio", phone, Some("30003"));
    let id = send(&s, sms_request(phone, "are you there")).await;
    let n = s.herald.wait_status(&id, FAILED, WAIT).await;
    let outcomes: Vec<&str> = n.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "retry", "policy_rejected"]);
    // Unreachable is not dead: the number stays usable.
    assert_eq!(contact(&s, phone).await, ContactState::default());
    assert_eq!(s.mock.mock.ledger("twilio").len(), 3);
}

#[tokio::test]
async fn outage_and_oversize_bodies() {
    let s = sms_stack(MockConfig::default()).await;
    // An outage (503 20503) is retried until it ends.
    s.mock.mock.set_knobs(
        "twilio",
        herald_mock::Knobs {
            outage: true,
            ..Default::default()
        },
    );
    let id = send(&s, sms_request("+14155550400", "after the outage")).await;
    let n = wait_attempts(&s, &id, 1).await;
    assert_eq!(n.attempts[0].outcome, "retry");
    assert_eq!(n.attempts[0].error_code, "20503");
    s.mock
        .mock
        .set_knobs("twilio", herald_mock::Knobs::default());
    s.herald.wait_status(&id, DELIVERED, WAIT).await;
    // Over 1,600 characters: refused before any request.
    let before = s.mock.mock.ledger("twilio").len();
    let id = send(&s, sms_request("+14155550401", &"a".repeat(1601))).await;
    let n = s.herald.wait_status(&id, FAILED, WAIT).await;
    assert_eq!(n.attempts[0].outcome, "payload");
    assert_eq!(n.attempts[0].error_code, "body_too_long");
    assert_eq!(s.mock.mock.ledger("twilio").len(), before);
}

#[tokio::test]
async fn out_of_order_callbacks_end_delivered() {
    let s = sms_stack(no_receipts()).await;
    let phone = "+14155550500";
    let m = &s.mock.mock;
    for with_id in [true, false] {
        let id = send(&s, sms_request(phone, "order")).await;
        let n = s.herald.wait_status(&id, SENT, WAIT).await;
        let sid = n.attempts[0].provider_message_id.clone();
        // With the notification id in the URL, and without (found by message sid).
        let url = status_url(&s, with_id.then_some(id.as_str()));
        // By sid alone, the sid → notification index is written just after SENT shows: post
        // until it is found (the first post does it with the id in the URL).
        let delivered = eventually(WAIT, || async {
            let st = twilio::post_status(m, &url, &sid, FROM, phone, "delivered", None)
                .await
                .expect("callback posted");
            assert_eq!(st, 200);
            (s.herald.get(&id).await.status == DELIVERED).then_some(())
        })
        .await;
        assert!(delivered.is_some(), "with id in the URL: {with_id}");
        // The late "sent" changes nothing, and neither does a repeated "delivered".
        for late in ["sent", "delivered", "sending"] {
            let st = twilio::post_status(m, &url, &sid, FROM, phone, late, None)
                .await
                .expect("callback posted");
            assert_eq!(st, 200);
        }
        let n = s.herald.get(&id).await;
        assert_eq!(n.status, DELIVERED);
        let statuses: Vec<i32> = n.receipts.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == DELIVERED).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(statuses.last(), Some(&DELIVERED), "{statuses:?}");
    }
}

#[tokio::test]
async fn forged_signatures_are_refused_and_change_nothing() {
    let s = sms_stack(no_receipts()).await;
    let phone = "+14155550600";
    let id = send(&s, sms_request(phone, "hello")).await;
    let n = s.herald.wait_status(&id, SENT, WAIT).await;
    let sid = n.attempts[0].provider_message_id.clone();
    let receipts_before = n.receipts.len();
    let url = status_url(&s, Some(&id));
    let params: Vec<(String, String)> = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "delivered"),
        ("To", phone),
        ("From", FROM),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let token = s.mock.mock.config.twilio_auth_token.clone();
    let http = reqwest::Client::new();
    let post = |url: String, sig: Option<String>, params: Vec<(String, String)>| {
        let mut r = http.post(url).form(&params);
        if let Some(sig) = sig {
            r = r.header("x-twilio-signature", sig);
        }
        async move { r.send().await.expect("herald answers").status().as_u16() }
    };
    // Wrong key; no header; signed over another URL (the query dropped); params changed
    // after signing.
    let wrong_key = twilio::signature("not-the-token", &url, &params);
    assert_eq!(
        post(url.clone(), Some(wrong_key), params.clone()).await,
        403
    );
    assert_eq!(post(url.clone(), None, params.clone()).await, 403);
    let other_url = twilio::signature(&token, &status_url(&s, None), &params);
    assert_eq!(
        post(url.clone(), Some(other_url), params.clone()).await,
        403
    );
    let signed = twilio::signature(&token, &url, &params);
    let mut tampered = params.clone();
    tampered[1].1 = "read".into();
    assert_eq!(post(url.clone(), Some(signed.clone()), tampered).await, 403);
    let n = s.herald.get(&id).await;
    assert_eq!(n.status, SENT);
    assert_eq!(n.receipts.len(), receipts_before);
    // A forged STOP opts nobody out.
    let inbound = format!("{}/webhooks/twilio/inbound", s.herald.http_url);
    let stop: Vec<(String, String)> = vec![
        ("Body".into(), "STOP".into()),
        ("From".into(), phone.into()),
        ("To".into(), FROM.into()),
    ];
    let forged = twilio::signature("not-the-token", &inbound, &stop);
    assert_eq!(post(inbound.clone(), Some(forged), stop.clone()).await, 403);
    assert_eq!(contact(&s, phone).await, ContactState::default());
    // The genuine signature is taken (and proves the refusals above were about signatures).
    assert_eq!(post(url, Some(signed), params).await, 200);
    assert_eq!(s.herald.get(&id).await.status, DELIVERED);
}

#[tokio::test]
async fn stop_suppresses_the_next_sms_and_start_re_enables_it() {
    let s = sms_stack(MockConfig::default()).await;
    let phone = "+14155550700";
    let m = &s.mock.mock;
    // The person texts "Stop" (Twilio, and the mock, also block the number themselves).
    let st = twilio::inbound_sms(m, phone, FROM, " Stop ")
        .await
        .expect("inbound posted");
    assert_eq!(st, 200);
    let state = contact(&s, phone).await;
    assert!(state.opted_out && !state.dead, "{state:?}");
    assert!(state.last_inbound > 0);
    let id = send(&s, sms_request(phone, "flash sale")).await;
    s.herald.wait_status(&id, SUPPRESSED, WAIT).await;
    assert!(m.ledger("twilio").is_empty(), "no request reached Twilio");
    // START: sends go out again.
    let st = twilio::inbound_sms(m, phone, FROM, "START")
        .await
        .expect("inbound posted");
    assert_eq!(st, 200);
    assert!(!contact(&s, phone).await.opted_out);
    let id = send(&s, sms_request(phone, "welcome back")).await;
    s.herald.wait_status(&id, DELIVERED, WAIT).await;
    assert_eq!(m.accepted("twilio").len(), 1);
}

#[tokio::test]
async fn inbound_answers_empty_twiml_and_records_the_message() {
    let s = sms_stack(no_receipts()).await;
    let phone = "+14155550800";
    let url = format!("{}/webhooks/twilio/inbound", s.herald.http_url);
    let params: Vec<(String, String)> = vec![
        ("Body".into(), "what time do you open?".into()),
        ("From".into(), phone.into()),
        (
            "MessageSid".into(),
            "SM0123456789abcdef0123456789abcdef".into(),
        ),
        ("To".into(), FROM.into()),
    ];
    let sig = twilio::signature(&s.mock.mock.config.twilio_auth_token, &url, &params);
    let r = reqwest::Client::new()
        .post(&url)
        .header("x-twilio-signature", sig)
        .form(&params)
        .send()
        .await
        .expect("herald answers");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/xml")));
    let body = r.text().await.expect("body");
    assert!(body.ends_with("<Response></Response>"), "{body}");
    let state = contact(&s, phone).await;
    assert!(state.last_inbound > 0 && !state.opted_out, "{state:?}");
}

#[tokio::test]
async fn undelivered_callbacks_fail_and_mark_dead_numbers() {
    let s = sms_stack(MockConfig::default()).await;
    let m = &s.mock.mock;
    // Landline: accepted, then "undelivered" 30006 → FAILED, P, the number is dead.
    let landline = "+14155550900";
    twilio::fail_delivery(m, landline, Some("30006"));
    let id = send(&s, sms_request(landline, "hello landline")).await;
    let n = s.herald.wait_status(&id, FAILED, WAIT).await;
    assert_eq!(n.attempts[0].outcome, "sent");
    let failed = n
        .receipts
        .iter()
        .find(|r| r.status == FAILED)
        .expect("a FAILED receipt");
    assert_eq!(failed.error_code, "30006");
    assert_eq!(failed.error_class, proto::ErrorClass::DeadAddress as i32);
    assert!(contact(&s, landline).await.dead);
    let id = send(&s, sms_request(landline, "again")).await;
    s.herald.wait_status(&id, SUPPRESSED, WAIT).await;
    assert_eq!(
        m.ledger("twilio").len(),
        1,
        "the dead number got no request"
    );
    // Unreachable (R) fails the message but keeps the number.
    let off = "+14155550901";
    twilio::fail_delivery(m, off, Some("30003"));
    let id = send(&s, sms_request(off, "phone off")).await;
    s.herald.wait_status(&id, FAILED, WAIT).await;
    assert!(!contact(&s, off).await.dead);
    // Validity period expired → EXPIRED.
    let slow = "+14155550902";
    twilio::fail_delivery(m, slow, Some("30036"));
    let mut req = sms_request(slow, "too late");
    req.expire_at = Some(ts_in(60_000));
    let id = send(&s, req).await;
    let n = s.herald.wait_status(&id, EXPIRED, WAIT).await;
    assert!(n.receipts.iter().any(|r| r.error_code == "30036"));
}

#[tokio::test]
async fn opted_out_number_falls_back_and_is_suppressed_next_time() {
    let sink = Sink::start().await;
    let s = sms_stack(no_receipts()).await;
    let phone = "+14155551000";
    twilio::set_opted_out(&s.mock.mock, phone, true);
    let mut req = sms_request(phone, "your code is 1234");
    req.channels = vec![proto::Channel::Sms as i32, proto::Channel::Webhook as i32];
    if let Some(r) = req.recipient.as_mut() {
        r.webhook_url = sink.url("/hook");
    }
    let id = send(&s, req).await;
    let n = s.herald.wait_status(&id, DELIVERED, WAIT).await;
    assert_eq!(n.attempts[0].error_code, "21610");
    assert_eq!(n.attempts[0].outcome, "policy_rejected");
    assert_eq!(n.channel, proto::Channel::Webhook as i32);
    assert!(sink.wait_for_count(1, WAIT).await);
    let state = contact(&s, phone).await;
    assert!(state.opted_out && !state.dead, "{state:?}");
    let id = send(&s, sms_request(phone, "again")).await;
    s.herald.wait_status(&id, SUPPRESSED, WAIT).await;
    assert_eq!(s.mock.mock.ledger("twilio").len(), 1);
}
