//! The routing decision taken for every notification at dispatch time:
//! `herald::policy::route(notification, context, policy, now)`, pure and I/O-free.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::model::{Category, Channel, ContactState, Content, Millis, Notification, Recipient};
use herald::policy::{route, BudgetKey, BudgetScope, Decision, Policy, RouteContext, SkipReason};

/// 2025-03-14T12:00:00Z (13:00 in Paris: outside the quiet hours below).
const NOON: Millis = 1_741_953_600_000;
const HOUR: Millis = 3_600_000;

/// Every rule the decision knows, parsed the way `src/policy/` tests do it: windows, prices
/// (per message, per segment, outside the window), a tenant and a campaign budget, quiet
/// hours for marketing, two frequency caps, and `cheapest_eligible`.
const FULL_POLICY: &str = r#"
[routing]
strategy = "cheapest_eligible"
default_route = ["messenger", "whatsapp", "fcm", "apns", "webpush", "sms", "email"]

[channels.messenger]
categories = ["transactional", "utility", "marketing"]
rate = { per_second = 300, burst = 50, scope = "page" }
window = { hours = 24, outside_tags = ["CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "ACCOUNT_UPDATE"] }
price = { currency = "USD", per_message = { marketing = 0.012, default = 0.0 } }

[channels.whatsapp]
window = { hours = 24, outside_templates = true }
price = { currency = "USD", per_message = { marketing = 0.025, authentication = 0.0035 }, outside_window = { utility = 0.004 } }

[channels.sms]
rate = { per_second = 1, scope = "sender" }
price = { currency = "USD", per_segment = { default = 0.0079 } }

[[budgets]]
scope = "tenant"
id = "acme"
daily = 1000.0
currency = "USD"

[[budgets]]
scope = "campaign"
id = "spring-sale"
daily = 500.0
currency = "USD"

[quiet_hours]
categories = ["marketing"]
start = "21:00"
end = "08:00"

[[frequency_caps]]
category = "marketing"
max = 3
per = "24h"

[[frequency_caps]]
category = "marketing"
max = 10
per = "7d"
"#;

/// A marketing notification routed Messenger → WhatsApp → SMS, to a recipient in Paris with
/// an address on each.
fn notification() -> Notification {
    Notification {
        id: "01JPBX3K9W5T7R2M4N6P8Q0S1V-3".into(),
        tenant: "acme".into(),
        campaign_id: "spring-sale".into(),
        recipient: Recipient {
            contact_id: "c-42".into(),
            messenger_psid: "6543210987654321".into(),
            whatsapp_number: "+33612345678".into(),
            phone: "+33612345678".into(),
            timezone: "Europe/Paris".into(),
            ..Default::default()
        },
        route: vec![Channel::Messenger, Channel::Whatsapp, Channel::Sms],
        content: Content {
            title: "Spring sale".into(),
            body: "20% off everything until Sunday.".into(),
            ..Default::default()
        },
        category: Category::Marketing,
        created_at: NOON - HOUR,
        ..Default::default()
    }
}

/// What dispatch loads in one batch: both windows open, two SMS segments, budgets partly
/// spent (the campaign's leaves 0.02 USD, so WhatsApp's 0.025 does not fit), frequency
/// counts under both caps.
fn context() -> RouteContext {
    let recent = ContactState {
        last_inbound: NOON - 2 * HOUR,
        ..Default::default()
    };
    RouteContext {
        start_index: 0,
        contacts: BTreeMap::from([(Channel::Messenger, recent), (Channel::Whatsapp, recent)]),
        paused: Default::default(),
        sms_segments: 2,
        budget_spent: BTreeMap::from([
            (BudgetKey::new(BudgetScope::Tenant, "acme"), 250_000_000),
            (
                BudgetKey::new(BudgetScope::Campaign, "spring-sale"),
                499_980_000,
            ),
        ]),
        frequency: BTreeMap::from([
            (Duration::from_secs(24 * 3600), 1),
            (Duration::from_secs(7 * 24 * 3600), 4),
        ]),
    }
}

fn bench(c: &mut Criterion) {
    let n = notification();
    let ctx = context();
    let default = Policy::default();
    let full = Policy::parse(FULL_POLICY).expect("the benchmark policy is valid");

    // The fixtures take the paths they are meant to: the default sends on the first channel;
    // the full policy passes every rule, skips WhatsApp as over budget and picks the cheapest
    // of the two left (Messenger 0.012 < SMS 2 × 0.0079).
    assert!(matches!(
        route(&n, &ctx, &default, NOON),
        Decision::Send { channel: Channel::Messenger, ref skipped, .. } if skipped.is_empty()
    ));
    match route(&n, &ctx, &full, NOON) {
        Decision::Send {
            channel: Channel::Messenger,
            price_micros: 12_000,
            skipped,
            ..
        } => assert!(matches!(
            skipped.as_slice(),
            [s] if s.channel == Channel::Whatsapp
                && matches!(s.reason, SkipReason::OverBudget { .. })
        )),
        other => panic!("unexpected decision {other:?}"),
    }

    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(1));
    g.bench_function("route_default_policy", |b| {
        b.iter(|| {
            route(
                black_box(&n),
                black_box(&ctx),
                black_box(&default),
                black_box(NOON),
            )
        })
    });
    g.bench_function("route_full_policy", |b| {
        b.iter(|| {
            route(
                black_box(&n),
                black_box(&ctx),
                black_box(&full),
                black_box(NOON),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
