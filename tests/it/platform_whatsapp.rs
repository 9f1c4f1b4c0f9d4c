//! WhatsApp against the mock platform: the exact Cloud API request (text and template),
//! every documented error code's outcome and status, the customer service window, and the
//! webhook (handshake, signatures, statuses in any order, failed statuses, inbound messages).

use std::time::Duration;

use herald::config::whatsapp::WhatsappConfig;
use herald::proto;
use herald_mock::{whatsapp as wm, MockPlatform};

use crate::platform_messenger::{
    check_end, mock_config, post_webhook, quick_dispatch, send, wait_for, End, SENT, SUPPRESSED,
    VERIFY_TOKEN,
};
use crate::support::*;

const PHONE_NUMBER_ID: &str = "106540352242922";

/// `[channels.whatsapp]` pointed at the mock, with the mock's secrets.
fn whatsapp_config(mock: &MockPlatform) -> WhatsappConfig {
    let c = &mock.mock.config;
    toml::from_str(&format!(
        r#"
        base_url = "{}"
        api_version = "v21.0"
        phone_number_id = "{PHONE_NUMBER_ID}"
        access_token = "{}"
        app_secret = "{}"
        verify_token = "{VERIFY_TOKEN}"
        window_hours = 24
        "#,
        mock.base_url(),
        c.whatsapp_token,
        c.whatsapp_app_secret,
    ))
    .expect("whatsapp config parses")
}

async fn whatsapp_stack(receipts: bool) -> Stack {
    stack(mock_config(receipts), |cfg, mock| {
        cfg.channels.whatsapp = Some(whatsapp_config(mock));
        // WhatsApp takes 4,096 characters; let longer bodies in to see the channel refuse.
        cfg.ingest.max_body_bytes = 16 * 1024;
        quick_dispatch(cfg);
    })
    .await
}

fn request(number: &str, body: &str, route: &[proto::Channel]) -> proto::SendRequest {
    proto::SendRequest {
        recipient: Some(proto::Recipient {
            contact_id: format!("contact-{number}"),
            whatsapp_number: number.to_string(),
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

fn with_template(mut r: proto::SendRequest) -> proto::SendRequest {
    if let Some(c) = r.content.as_mut() {
        c.template = Some(proto::Template {
            name: "order_update".into(),
            language: "en_US".into(),
            params: vec!["Ada".into(), "#4521".into()],
        });
    }
    r
}

fn requests_for(mock: &MockPlatform, number: &str) -> Vec<herald_mock::LedgerEntry> {
    mock.mock
        .ledger("whatsapp")
        .into_iter()
        .filter(|e| e.address == number)
        .collect()
}

#[tokio::test]
async fn whatsapp_request_is_exact_and_statuses_end_read() {
    let s = whatsapp_stack(true).await;
    let (h, mock) = (&s.herald, &s.mock);
    let only = [proto::Channel::Whatsapp];

    // Inside the window: free text.
    let number = "+16505551234";
    assert_eq!(wm::user_writes(&mock.mock, number, "hi").await, Ok(200));
    let id = send(h, request(number, "Your order shipped", &only)).await;
    let n = h.wait_status(&id, READ, Duration::from_secs(10)).await;
    let reqs = requests_for(mock, number);
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, format!("/v21.0/{PHONE_NUMBER_ID}/messages"));
    assert_eq!(req.query, "");
    assert_eq!(
        req.header("authorization"),
        Some("Bearer mock-whatsapp-token")
    );
    assert!(req
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    assert_eq!(
        req.json(),
        serde_json::json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": number,
            "type": "text",
            "text": {"preview_url": false, "body": "Your order shipped"},
        })
    );
    assert!(n.attempts[0].provider_message_id.starts_with("wamid."));
    let statuses: Vec<i32> = n.receipts.iter().map(|r| r.status).collect();
    assert!(statuses.contains(&DELIVERED), "receipts: {statuses:?}");
    assert!(n
        .receipts
        .iter()
        .any(|r| r.provider_message_id == n.attempts[0].provider_message_id));

    // Outside the window with a template: the template goes.
    let number = "+16505551235";
    let id = send(
        h,
        with_template(request(number, "Your order shipped", &only)),
    )
    .await;
    h.wait_status(&id, READ, Duration::from_secs(10)).await;
    let body = requests_for(mock, number)[0].json();
    assert_eq!(body["type"], "template");
    assert_eq!(body["to"], number);
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["template"]["name"], "order_update");
    assert_eq!(body["template"]["language"]["code"], "en_US");
    assert_eq!(
        body["template"]["components"],
        serde_json::json!([{"type": "body", "parameters": [
            {"type": "text", "text": "Ada"}, {"type": "text", "text": "#4521"}]}])
    );
    assert!(body.get("text").is_none());

    // Longer than 4,096 characters: refused before any request.
    let number = "+16505551236";
    assert_eq!(wm::user_writes(&mock.mock, number, "hi").await, Ok(200));
    let id = send(h, request(number, &"x".repeat(4097), &only)).await;
    let n = h.wait_status(&id, FAILED, Duration::from_secs(10)).await;
    assert_eq!(n.attempts[0].error_class, proto::ErrorClass::Payload as i32);
    assert_eq!(n.attempts[0].error_code, "text_too_long");
    assert!(requests_for(mock, number).is_empty());
}

#[tokio::test]
async fn whatsapp_every_documented_error_code() {
    use proto::ErrorClass as C;
    let mut cases: Vec<(String, C, End)> = Vec::new();
    let mut add = |codes: &[i64], class: C, end: End| {
        for c in codes {
            cases.push((c.to_string(), class, end));
        }
    };
    add(&[1, 2, 131000, 131016], C::Transient, End::Retried);
    add(&[131057], C::Transient, End::RetryingLater);
    add(
        &[4, 80007, 130429, 131056, 131048],
        C::Throttled,
        End::Retried,
    );
    add(&[131026], C::DeadAddress, End::Dead);
    add(&[131026], C::DeadAddress, End::Failed);
    add(&[131047, 131049, 131050], C::Policy, End::FellBack);
    add(&[131047], C::Policy, End::Failed);
    add(
        &(132000..=132016).collect::<Vec<_>>(),
        C::Auth,
        End::Retried,
    );
    add(
        &[
            0, 3, 10, 190, 200, 299, 131005, 131030, 131031, 131042, 131045, 368,
        ],
        C::Auth,
        End::Retried,
    );
    add(
        &[131051, 131052, 131053, 131008, 131009, 100],
        C::Payload,
        End::FellBack,
    );
    let s = whatsapp_stack(false).await;
    let (h, mock) = (&s.herald, &s.mock);
    let runs = cases
        .iter()
        .enumerate()
        .map(|(i, (code, class, end))| async move {
            let number = format!("+1650777{i:04}");
            wm::set_last_inbound(&mock.mock, &number, herald::model::now_ms());
            mock.mock.fail_address("whatsapp", &number, Some(code));
            let route: &[proto::Channel] = match end {
                End::Failed => &[proto::Channel::Whatsapp],
                _ => &[proto::Channel::Whatsapp, proto::Channel::Sandbox],
            };
            let id = send(h, request(&number, "Your order shipped", route)).await;
            let n = wait_for(h, &id, "a first attempt", |n| !n.attempts.is_empty()).await;
            let a = &n.attempts[0];
            assert_eq!(a.channel, proto::Channel::Whatsapp as i32, "{code}");
            assert_eq!(a.error_class, *class as i32, "{code}: {a:?}");
            assert_eq!(a.error_code, *code, "{code}");
            check_end(h, &id, code, *end, proto::Channel::Whatsapp).await;
            match end {
                End::Retried => {
                    mock.mock.fail_address("whatsapp", &number, None);
                    let n = h.wait_status(&id, SENT, Duration::from_secs(10)).await;
                    let last = n.attempts.last().expect("attempts");
                    assert_eq!(last.channel, proto::Channel::Whatsapp as i32, "{code}");
                    assert!(last.provider_message_id.starts_with("wamid."), "{code}");
                }
                End::RetryingLater => {
                    // 131057 waits a minute before the next try.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let n = h.get(&id).await;
                    assert_eq!(n.status, proto::Status::Retrying as i32, "{code}");
                    assert_eq!(n.attempts.len(), 1, "{code}");
                }
                End::Dead => {
                    let before = requests_for(mock, &number).len();
                    let again = send(
                        h,
                        request(&number, "Still there?", &[proto::Channel::Whatsapp]),
                    )
                    .await;
                    h.wait_status(&again, SUPPRESSED, Duration::from_secs(10))
                        .await;
                    assert_eq!(requests_for(mock, &number).len(), before, "{code}");
                }
                _ => {}
            }
        });
    futures::future::join_all(runs).await;
}

#[tokio::test]
async fn whatsapp_window_template_or_fall_back_and_inbound_opens_it() {
    let s = whatsapp_stack(false).await;
    let (h, mock) = (&s.herald, &s.mock);
    let number = "+447700900123";
    let route = [proto::Channel::Whatsapp, proto::Channel::Sandbox];
    // Nobody wrote: free text is answered 131047 and the sandbox takes it.
    let id = send(h, request(number, "Flash sale", &route)).await;
    check_end(h, &id, "131047", End::FellBack, proto::Channel::Whatsapp).await;
    let n = h.get(&id).await;
    assert_eq!(n.attempts[0].error_code, "131047");
    assert_eq!(n.attempts[0].error_class, proto::ErrorClass::Policy as i32);
    assert_eq!(requests_for(mock, number)[0].json()["type"], "text");

    // With a template it goes out on WhatsApp.
    let id = send(h, with_template(request(number, "Order update", &route))).await;
    let n = h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    assert_eq!(n.channel, proto::Channel::Whatsapp as i32);
    assert_eq!(requests_for(mock, number)[1].json()["type"], "template");

    // The person writes: the signed inbound webhook opens the window; free text goes.
    assert_eq!(wm::user_writes(&mock.mock, number, "hello").await, Ok(200));
    let id = send(h, with_template(request(number, "Thanks!", &route))).await;
    let n = h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    assert_eq!(n.channel, proto::Channel::Whatsapp as i32);
    let reqs = requests_for(mock, number);
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[2].json()["type"], "text");
    assert_eq!(reqs[2].json()["text"]["body"], "Thanks!");
}

#[tokio::test]
async fn whatsapp_webhook_handshake_and_forged_signatures() {
    let s = whatsapp_stack(false).await;
    let (h, mock) = (&s.herald, &s.mock);
    let url = format!("{}/webhooks/whatsapp", h.http_url);
    let http = reqwest::Client::new();
    let r = http
        .get(&url)
        .query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", VERIFY_TOKEN),
            ("hub.challenge", "987654"),
        ])
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.expect("body"), "987654");
    let r = http
        .get(&url)
        .query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", "nope"),
            ("hub.challenge", "1"),
        ])
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 403);

    let number = "+16505550101";
    wm::set_last_inbound(&mock.mock, number, herald::model::now_ms());
    let id = send(h, request(number, "Hi", &[proto::Channel::Whatsapp])).await;
    let n = h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    let wamid = n.attempts[0].provider_message_id.clone();
    let now = herald::model::now_ms() / 1000;
    for body in [
        wm::status_body(PHONE_NUMBER_ID, &wamid, number, "read", now, None, None),
        wm::status_body(
            PHONE_NUMBER_ID,
            &wamid,
            number,
            "failed",
            now,
            None,
            Some(131026),
        ),
        wm::inbound_body(PHONE_NUMBER_ID, number, now, "hi"),
    ] {
        assert_eq!(post_webhook(&url, &body, None).await.0, 401);
        // Signed with Messenger's secret, not WhatsApp's.
        let sig =
            herald_mock::messenger::hub_signature(&mock.mock.config.messenger_app_secret, &body);
        assert_eq!(post_webhook(&url, &body, Some(&sig)).await.0, 403);
    }
    assert_eq!(h.get(&id).await.status, SENT);
    // No window opened and the number is not dead: the next send is text outside the
    // window (a template would be used if the number had written).
    let id = send(
        h,
        with_template(request(number, "Again", &[proto::Channel::Whatsapp])),
    )
    .await;
    h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    assert_eq!(requests_for(mock, number)[1].json()["type"], "template");
}

#[tokio::test]
async fn whatsapp_statuses_out_of_order_end_read() {
    let s = whatsapp_stack(false).await;
    let (h, mock) = (&s.herald, &s.mock);
    let number = "+16505550202";
    wm::set_last_inbound(&mock.mock, number, herald::model::now_ms());
    let id = send(h, request(number, "Hi", &[proto::Channel::Whatsapp])).await;
    let n = h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    let wamid = n.attempts[0].provider_message_id.clone();
    for (status, error) in [
        ("read", None),
        ("delivered", None),
        ("sent", None),
        ("failed", Some(131000)),
    ] {
        assert_eq!(
            wm::post_status(&mock.mock, &wamid, number, status, error).await,
            Ok(200)
        );
        assert_eq!(h.get(&id).await.status, READ, "after {status}");
    }
    let n = h.get(&id).await;
    let statuses: Vec<i32> = n.receipts.iter().map(|r| r.status).collect();
    assert!(statuses.contains(&READ));
    assert!(!statuses.contains(&FAILED), "{statuses:?}");
}

#[tokio::test]
async fn whatsapp_failed_status_131026_marks_the_number_dead_on_whatsapp_only() {
    let s = whatsapp_stack(false).await;
    let (h, mock) = (&s.herald, &s.mock);
    let number = "+16505550303";
    wm::set_last_inbound(&mock.mock, number, herald::model::now_ms());
    let id = send(h, request(number, "Hi", &[proto::Channel::Whatsapp])).await;
    let n = h.wait_status(&id, SENT, Duration::from_secs(10)).await;
    let wamid = n.attempts[0].provider_message_id.clone();
    assert_eq!(
        wm::post_status(&mock.mock, &wamid, number, "failed", Some(131026)).await,
        Ok(200)
    );
    let n = h.get(&id).await;
    assert_eq!(n.status, FAILED);
    let failed = n
        .receipts
        .iter()
        .find(|r| r.status == FAILED)
        .expect("a failed receipt");
    assert_eq!(failed.error_code, "131026");
    assert_eq!(failed.error_class, proto::ErrorClass::DeadAddress as i32);
    assert_eq!(failed.provider_message_id, wamid);

    // Dead on WhatsApp: no more requests there; the next channel still takes it.
    let before = requests_for(mock, number).len();
    let again = send(h, request(number, "Hi again", &[proto::Channel::Whatsapp])).await;
    h.wait_status(&again, SUPPRESSED, Duration::from_secs(10))
        .await;
    let other = send(
        h,
        request(
            number,
            "Hi again",
            &[proto::Channel::Whatsapp, proto::Channel::Sandbox],
        ),
    )
    .await;
    let n = h.wait_status(&other, READ, Duration::from_secs(10)).await;
    assert_eq!(n.channel, proto::Channel::Sandbox as i32);
    assert_eq!(requests_for(mock, number).len(), before);
}
