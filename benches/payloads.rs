//! Building each platform's request body from a notification, as the channel's `send` does
//! before its one HTTP call (or SMTP transaction): the pure builder, then the bytes that go on
//! the wire (JSON serialised, the form encoded, the MIME message formatted).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::channels::{apns, email, fcm, messenger, sms, webhook, webpush, whatsapp};
use herald::model::{
    Action, Category, Channel, Content, Millis, Notification, Priority, Recipient,
};
use herald::model::{Template, WebPushSubscription};
use lettre::message::Mailbox;

/// 2025-03-14T12:00:00Z.
const NOW: Millis = 1_741_953_600_000;
const HOUR: Millis = 3_600_000;
const DEVICE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

/// A transactional notification with everything a channel may use: title, body, image, two
/// actions, data, a collapse id, a template, an expiry.
fn notification() -> Notification {
    Notification {
        id: "01JPBX3K9W5T7R2M4N6P8Q0S1V-3".into(),
        tenant: "acme".into(),
        campaign_id: "orders".into(),
        labels: [("team".to_string(), "logistics".to_string())].into(),
        recipient: Recipient {
            contact_id: "c-42".into(),
            messenger_psid: "6543210987654321".into(),
            whatsapp_number: "+14155550123".into(),
            phone: "+14155550123".into(),
            email: "ann@example.org".into(),
            apns_tokens: vec![DEVICE.into()],
            fcm_tokens: vec!["fcm-token-0123456789abcdef".into()],
            webpush_subscriptions: vec![WebPushSubscription {
                endpoint: "https://push.example.net/send/abc".into(),
                p256dh: String::new(),
                auth: String::new(),
            }],
            webhook_url: "https://example.com/hooks/herald".into(),
            timezone: "America/Los_Angeles".into(),
            ..Default::default()
        },
        route: vec![Channel::Messenger, Channel::Whatsapp, Channel::Sms],
        content: Content {
            title: "Your parcel is on its way".into(),
            body: "Order 42 left our warehouse this morning and arrives on Tuesday.".into(),
            image_url: "https://shop.example/img/parcel.png".into(),
            actions: vec![
                Action {
                    label: "Track".into(),
                    url: "https://shop.example/track/42".into(),
                },
                Action {
                    label: "Change delivery".into(),
                    url: "https://shop.example/orders/42/delivery".into(),
                },
            ],
            template: Some(Template {
                name: "order_shipped".into(),
                language: "en-US".into(),
                params: vec!["Ann".into(), "42".into(), "Tuesday".into()],
            }),
            data: [
                ("order".to_string(), "42".to_string()),
                ("carrier".to_string(), "ups".to_string()),
            ]
            .into(),
            collapse_id: "order-42".into(),
            ..Default::default()
        },
        category: Category::Transactional,
        priority: Priority::High,
        expire_at: NOW + 6 * HOUR,
        created_at: NOW - HOUR,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let n = notification();
    let from: Mailbox = "Shop <shop@mail.example.com>"
        .parse()
        .expect("a valid mailbox");
    let unsubscribe = Some("https://shop.example/unsubscribe");
    let sender = sms::Sender {
        from: Some("+15005550006".into()),
        messaging_service_sid: None,
        status_callback: "https://herald.example.com/webhooks/twilio/status".into(),
    };
    let webhook_key = webhook::decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .expect("a valid whsec_ secret");

    let mut g = c.benchmark_group("payloads");
    g.throughput(Throughput::Elements(1));

    g.bench_function("messenger", |b| {
        b.iter(|| {
            let r = messenger::request(black_box(&n), "6543210987654321", NOW - HOUR, NOW)
                .expect("a valid messenger request");
            serde_json::to_vec(&r.body).expect("json")
        })
    });
    g.bench_function("whatsapp_text", |b| {
        b.iter(|| {
            let r = whatsapp::request(black_box(&n), "+14155550123", true)
                .expect("a valid whatsapp request");
            serde_json::to_vec(&r.body).expect("json")
        })
    });
    g.bench_function("whatsapp_template", |b| {
        b.iter(|| {
            let r = whatsapp::request(black_box(&n), "+14155550123", false)
                .expect("a valid whatsapp request");
            serde_json::to_vec(&r.body).expect("json")
        })
    });
    g.bench_function("fcm", |b| {
        b.iter(|| {
            let body = fcm::message(black_box(&n), "fcm-token-0123456789abcdef", NOW);
            serde_json::to_vec(&body).expect("json")
        })
    });
    g.bench_function("apns", |b| {
        b.iter(|| {
            apns::request(black_box(&n), DEVICE, "com.example.shop", "alert")
                .expect("a valid apns request")
        })
    });
    // The plaintext and headers; the encryption per subscription is `webpush_encrypt`.
    g.bench_function("webpush_plaintext", |b| {
        b.iter(|| {
            let n = black_box(&n);
            let plaintext = webpush::payload(n).to_string().into_bytes();
            (plaintext, webpush::headers(n, NOW, 86_400))
        })
    });
    // The body and its Standard Webhooks signature, as `Webhook::post` does.
    g.bench_function("webhook_signed", |b| {
        b.iter(|| {
            let n = black_box(&n);
            let body = webhook::payload(n, 1, NOW / 1000);
            let signature = webhook::sign(&webhook_key, &n.id, NOW / 1000, &body);
            (body, signature)
        })
    });
    g.bench_function("sms_form", |b| {
        b.iter(|| {
            let fields =
                sms::form(black_box(&n), "+14155550123", &sender, NOW).expect("a valid sms form");
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish()
        })
    });
    g.bench_function("email_smtp_message", |b| {
        b.iter(|| {
            email::message(black_box(&n), "ann@example.org", &from, unsubscribe)
                .expect("a valid message")
                .formatted()
        })
    });
    g.bench_function("email_sendgrid", |b| {
        b.iter(|| {
            let body = email::sendgrid_body(black_box(&n), "ann@example.org", &from, unsubscribe)
                .expect("a valid sendgrid body");
            serde_json::to_vec(&body).expect("json")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
