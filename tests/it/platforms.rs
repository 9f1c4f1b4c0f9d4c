//! Across platform channels: fallback from one platform to another, and every channel at once
//! from the config file that points Herald at `mock-platform`.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald::config::ChannelsConfig;
use herald::proto;
use herald_mock::{messenger as mm, MockConfig, MockPlatform};

use crate::harness::{RedisServer, Sink};
use crate::support::*;

const PHONE: &str = "+14155550123";
const PSID: &str = "7001002003";

/// The mock config file's channels; FCM's service account points at this mock's token
/// endpoint (its file names the standard port).
fn mock_file_channels(mock: &MockPlatform, dir: &tempfile::TempDir) -> ChannelsConfig {
    let mut channels = mock_channels(mock);
    let sa = std::fs::read_to_string("load-tests/fcm-service-account.mock.json")
        .expect("mock service account");
    let mut sa: serde_json::Value = serde_json::from_str(&sa).expect("json");
    sa["token_uri"] = format!("{}/token", mock.base_url()).into();
    let sa_path = dir.path().join("sa.json");
    std::fs::write(&sa_path, sa.to_string()).expect("write service account");
    if let Some(f) = channels.fcm.as_mut() {
        f.service_account_file = sa_path;
    }
    channels
}

#[tokio::test]
async fn messenger_outside_the_window_falls_back_to_sms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = stack(MockConfig::default(), |cfg, mock| {
        let file = mock_file_channels(mock, &dir);
        cfg.channels.messenger = file.messenger;
        cfg.channels.sms = file.sms;
    })
    .await;
    // The person last wrote two days ago: outside Messenger's 24 h window.
    let two_days_ago = herald::model::now_ms() - 48 * 3600 * 1000;
    mm::set_last_inbound(&s.mock.mock, PSID, two_days_ago);
    let req = proto::SendRequest {
        recipient: Some(proto::Recipient {
            messenger_psid: PSID.into(),
            phone: PHONE.into(),
            ..Default::default()
        }),
        channels: vec![proto::Channel::Messenger as i32, proto::Channel::Sms as i32],
        content: Some(proto::Content {
            body: "Your order shipped".into(),
            ..Default::default()
        }),
        category: proto::Category::Marketing as i32,
        ..Default::default()
    };
    let r = s
        .herald
        .client()
        .send(req)
        .await
        .expect("send")
        .into_inner();
    let n = s
        .herald
        .wait_status(&r.notification_id, DELIVERED, Duration::from_secs(15))
        .await;
    assert_eq!(n.channel, proto::Channel::Sms as i32);
    assert_eq!(n.attempts.len(), 2, "{n:?}");
    let (m, t) = (&n.attempts[0], &n.attempts[1]);
    assert_eq!(m.channel, proto::Channel::Messenger as i32);
    assert_eq!(m.error_code, "10/2018278");
    assert_eq!(m.error_class, proto::ErrorClass::Policy as i32);
    assert_eq!(t.channel, proto::Channel::Sms as i32);
    assert_eq!(t.outcome, "sent");
    assert!(t.provider_message_id.starts_with("SM"), "{t:?}");
    // The platform said no, so nothing was delivered on Messenger; SMS carried it once.
    assert_eq!(s.mock.mock.accepted("messenger").len(), 0);
    assert_eq!(s.mock.mock.ledger("messenger").len(), 1);
    assert_eq!(s.mock.mock.accepted("twilio").len(), 1);
}

fn webpush_subscription(mock: &MockPlatform) -> proto::WebPushSubscription {
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let public = secret.public_key();
    let point = p256::EncodedPoint::from(public);
    proto::WebPushSubscription {
        endpoint: herald_mock::webpush::endpoint(&mock.base_url(), "sub-1"),
        p256dh: URL_SAFE_NO_PAD.encode(point.as_bytes()),
        auth: URL_SAFE_NO_PAD.encode([7u8; 16]),
    }
}

#[tokio::test]
async fn every_channel_runs_from_the_mock_config_file() {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let http = crate::harness::free_addr();
    let mock = MockPlatform::start(MockConfig {
        herald_url: Some(format!("http://{http}")),
        ..Default::default()
    })
    .await
    .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let channels = mock_file_channels(&mock, &dir);
    let mut cfg = test_config(Some(redis.url()));
    cfg.server.http_listen = http.clone();
    cfg.server.public_url = format!("http://{http}");
    cfg.channels = channels;
    let h = Herald::start(cfg).await;

    let recipient = proto::Recipient {
        messenger_psid: PSID.into(),
        whatsapp_number: PHONE.into(),
        phone: PHONE.into(),
        email: "ann@example.com".into(),
        apns_tokens: vec!["a1".repeat(32)],
        fcm_tokens: vec!["fcm-token-1:APA91bHPRgkF3JUikC4ENAHEeMrd41Zxv3hVZjC9KtT8OvPVGJ".into()],
        webpush_subscriptions: vec![webpush_subscription(&mock)],
        webhook_url: sink.url("/hook"),
        ..Default::default()
    };
    let content = proto::Content {
        title: "Hello".into(),
        body: "One message through every channel".into(),
        // A tag and a template let Messenger and WhatsApp carry it outside their windows.
        messenger_tag: "ACCOUNT_UPDATE".into(),
        template: Some(proto::Template {
            name: "order_update".into(),
            language: "en_US".into(),
            params: vec!["42".into()],
        }),
        ..Default::default()
    };
    let channels = [
        proto::Channel::Messenger,
        proto::Channel::Whatsapp,
        proto::Channel::Fcm,
        proto::Channel::Apns,
        proto::Channel::Webpush,
        proto::Channel::Sms,
        proto::Channel::Email,
        proto::Channel::Webhook,
    ];
    let mut ids = Vec::new();
    for ch in channels {
        let r = h
            .client()
            .send(proto::SendRequest {
                recipient: Some(recipient.clone()),
                channels: vec![ch as i32],
                content: Some(content.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("send on {ch:?}: {e:?}"))
            .into_inner();
        ids.push((ch, r.notification_id));
    }
    for (ch, id) in &ids {
        let n = crate::harness::eventually(Duration::from_secs(15), || async {
            let n = h.get(id).await;
            (!n.attempts.is_empty()).then_some(n)
        })
        .await
        .unwrap_or_else(|| panic!("{ch:?} was never attempted"));
        assert_eq!(n.attempts[0].outcome, "sent", "{ch:?}: {:?}", n.attempts[0]);
    }
    for platform in [
        "messenger",
        "whatsapp",
        "fcm",
        "apns",
        "webpush",
        "twilio",
        "smtp",
    ] {
        assert_eq!(
            mock.mock.accepted(platform).len(),
            1,
            "{platform} took exactly one request"
        );
    }
    assert_eq!(sink.count(), 1);
}
