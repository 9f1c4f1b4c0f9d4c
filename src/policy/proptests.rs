//! Property tests of the decision: random policies, notifications and contexts, checked
//! against an oracle written apart from `decide.rs` for the invariants issue 4 names (never a
//! disabled, paused, closed-window, opted-out, dead or over-budget channel; never a price above
//! the budget left; the price is the policy's; waits end after now; cheapest is cheapest).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::{select, subsequence};

// The routing strategy is renamed: proptest's prelude has a `Strategy` of its own.
use super::Strategy as RouteStrategy;
use super::{
    next_utc_midnight, route, Budget, BudgetKey, BudgetScope, ChannelPolicy, ClockTime, Decision,
    FrequencyCap, Micros, Policy, Price, PriceTable, QuietHours, RouteContext, Routing,
    SuppressReason, WaitReason, Window,
};
use crate::model::{Category, Channel, ContactState, Content, Millis, Notification, Priority};
use crate::model::{Recipient, Template};

const HOUR: Millis = 3_600_000;
/// 2025-03-14T00:00:00Z.
const BASE: Millis = 1_741_910_400_000;

/// The channels the generators play with (sandbox and webhook add nothing new).
const CHANNELS: [Channel; 7] = [
    Channel::Messenger,
    Channel::Whatsapp,
    Channel::Sms,
    Channel::Email,
    Channel::Fcm,
    Channel::Apns,
    Channel::Webpush,
];
const TAGS: [&str; 3] = ["ACCOUNT_UPDATE", "POST_PURCHASE_UPDATE", "HUMAN_AGENT"];
const ZONES: [&str; 6] = [
    "",
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Asia/Kolkata",
    "Nowhere/Atlantis",
];
const WINDOWS: [Duration; 2] = [Duration::from_secs(3600), Duration::from_secs(86_400)];

fn category() -> impl Strategy<Value = Category> {
    select(Category::ALL.to_vec())
}

fn amount() -> impl Strategy<Value = Micros> {
    prop_oneof![1 => Just(0), 3 => 1..50_000i64]
}

fn table() -> impl Strategy<Value = PriceTable> {
    (
        proptest::collection::btree_map(category(), amount(), 0..3),
        proptest::option::weighted(0.6, amount()),
    )
        .prop_map(|(categories, default)| PriceTable {
            categories,
            default,
        })
}

fn window() -> impl Strategy<Value = Window> {
    (1..48u32, subsequence(TAGS.to_vec(), 0..=2), any::<bool>()).prop_map(
        |(hours, tags, outside_templates)| Window {
            hours,
            outside_tags: tags.into_iter().map(String::from).collect(),
            outside_templates,
        },
    )
}

fn channel_policy(currencies: Vec<&'static str>) -> impl Strategy<Value = ChannelPolicy> {
    (
        prop_oneof![4 => Just(true), 1 => Just(false)],
        proptest::option::weighted(0.3, proptest::collection::btree_set(category(), 0..4)),
        proptest::option::weighted(0.4, window()),
        proptest::option::weighted(0.8, (select(currencies), table(), table(), table())),
    )
        .prop_map(|(enabled, categories, window, price)| {
            let price = price.map(|(currency, per_message, per_segment, outside)| Price {
                currency: currency.to_string(),
                per_message,
                per_segment,
                // The document refuses outside-window prices on a channel without a window.
                outside_window: if window.is_some() {
                    outside
                } else {
                    PriceTable::default()
                },
            });
            ChannelPolicy {
                enabled,
                categories,
                rate: None,
                window,
                price,
                retry: None,
            }
        })
}

fn budget() -> impl Strategy<Value = Budget> {
    (
        select(vec![BudgetScope::Tenant, BudgetScope::Campaign]),
        // Mostly budgets that cover the generated notifications, mostly in their currency.
        select(vec!["acme", "acme", "spring-sale", "other"]),
        0..120_000i64,
        select(vec!["USD", "USD", "USD", "EUR"]),
    )
        .prop_map(|(scope, id, daily_micros, currency)| Budget {
            scope,
            id: id.to_string(),
            daily_micros,
            currency: currency.to_string(),
        })
}

fn clock() -> impl Strategy<Value = ClockTime> {
    (0..24u8, select(vec![0u8, 30])).prop_map(|(hour, minute)| ClockTime { hour, minute })
}

fn quiet_hours() -> impl Strategy<Value = QuietHours> {
    (
        proptest::collection::btree_set(category(), 0..4),
        clock(),
        clock(),
    )
        .prop_filter("start and end differ", |(_, s, e)| s != e)
        .prop_map(|(categories, start, end)| QuietHours {
            categories,
            start,
            end,
        })
}

fn cap() -> impl Strategy<Value = FrequencyCap> {
    (category(), 1..4u32, select(WINDOWS.to_vec())).prop_map(|(category, max, per)| FrequencyCap {
        category,
        max,
        per,
    })
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(RouteStrategy::Preference),
        Just(RouteStrategy::CheapestEligible)
    ]
    .prop_flat_map(|strategy| {
        // One currency under cheapest_eligible, as the document demands.
        let currencies = match strategy {
            RouteStrategy::Preference => vec!["USD", "EUR"],
            RouteStrategy::CheapestEligible => vec!["USD"],
        };
        (
            // Most channels have a section, a few keep the defaults.
            proptest::collection::vec(
                proptest::option::weighted(0.85, channel_policy(currencies)),
                CHANNELS.len(),
            )
            .prop_map(|v| {
                CHANNELS
                    .iter()
                    .zip(v)
                    .filter_map(|(c, p)| p.map(|p| (*c, p)))
                    .collect::<BTreeMap<_, _>>()
            }),
            subsequence(CHANNELS.to_vec(), 0..=4),
            proptest::collection::vec(budget(), 0..4),
            proptest::option::of(quiet_hours()),
            proptest::collection::vec(cap(), 0..3),
        )
            .prop_map(
                move |(channels, default_route, budgets, quiet_hours, caps)| {
                    let mut seen = BTreeSet::new();
                    let budgets = budgets
                        .into_iter()
                        .filter(|b| seen.insert((b.scope, b.id.clone())))
                        .collect();
                    Policy {
                        version: 0,
                        routing: Routing {
                            strategy,
                            default_route,
                        },
                        channels,
                        budgets,
                        quiet_hours,
                        frequency_caps: caps,
                    }
                },
            )
    })
}

fn notification() -> impl Strategy<Value = Notification> {
    (
        prop_oneof![
            1 => Just(vec![]),
            6 => subsequence(CHANNELS.to_vec(), 1..=5).prop_shuffle(),
        ],
        proptest::collection::vec(proptest::bool::weighted(0.75), 7),
        select(ZONES.to_vec()),
        category(),
        select(vec![
            "",
            "ACCOUNT_UPDATE",
            "HUMAN_AGENT",
            "CONFIRMED_EVENT_UPDATE",
        ]),
        any::<bool>(),
        select(vec!["acme", "other"]),
        select(vec!["", "spring-sale"]),
        prop_oneof![6 => Just(0), 1 => (0..96 * HOUR).prop_map(|d| BASE + d)],
    )
        .prop_map(
            |(route, has, tz, category, tag, template, tenant, campaign, expire_at)| {
                let addr = |i: usize, s: &str| if has[i] { s.to_string() } else { String::new() };
                let tokens = |i: usize| {
                    if has[i] {
                        vec!["t".to_string()]
                    } else {
                        vec![]
                    }
                };
                Notification {
                    id: "n".into(),
                    tenant: tenant.into(),
                    idempotency_key: String::new(),
                    campaign_id: campaign.into(),
                    labels: BTreeMap::new(),
                    recipient: Recipient {
                        contact_id: "c".into(),
                        messenger_psid: addr(0, "psid"),
                        whatsapp_number: addr(1, "+15550001"),
                        phone: addr(2, "+15550001"),
                        email: addr(3, "a@example.com"),
                        fcm_tokens: tokens(4),
                        apns_tokens: tokens(5),
                        webpush_subscriptions: if has[6] {
                            vec![crate::model::WebPushSubscription {
                                endpoint: "https://push.example/x".into(),
                                ..Default::default()
                            }]
                        } else {
                            vec![]
                        },
                        timezone: tz.into(),
                        ..Default::default()
                    },
                    route,
                    content: Content {
                        body: "hi".into(),
                        messenger_tag: tag.into(),
                        template: template.then(|| Template {
                            name: "t".into(),
                            language: "en".into(),
                            params: vec![],
                        }),
                        ..Default::default()
                    },
                    category,
                    priority: Priority::Normal,
                    send_at: 0,
                    expire_at,
                    created_at: BASE,
                }
            },
        )
}

fn contact(now: Millis) -> impl Strategy<Value = ContactState> {
    (
        prop_oneof![5 => Just(false), 1 => Just(true)],
        prop_oneof![5 => Just(false), 1 => Just(true)],
        prop_oneof![1 => Just(0), 3 => (0..72 * HOUR).prop_map(move |ago| now - ago)],
    )
        .prop_map(|(dead, opted_out, last_inbound)| ContactState {
            dead,
            opted_out,
            last_inbound,
        })
}

fn context(now: Millis) -> impl Strategy<Value = RouteContext> {
    (
        prop_oneof![3 => Just(0usize), 1 => 0..3usize],
        proptest::collection::btree_map(select(CHANNELS.to_vec()), contact(now), 0..7),
        proptest::collection::btree_set(select(CHANNELS.to_vec()), 0..3),
        0..5u32,
        proptest::collection::btree_map(
            (
                select(vec![BudgetScope::Tenant, BudgetScope::Campaign]),
                select(vec!["acme", "spring-sale", "other"]),
            )
                .prop_map(|(s, id)| BudgetKey::new(s, id)),
            0..150_000i64,
            0..4,
        ),
        proptest::collection::btree_map(select(WINDOWS.to_vec()), 0..5u32, 0..3),
    )
        .prop_map(
            |(start_index, contacts, paused, sms_segments, budget_spent, frequency)| RouteContext {
                start_index,
                contacts,
                paused,
                sms_segments,
                budget_spent,
                frequency,
            },
        )
}

fn case() -> impl Strategy<Value = (Notification, RouteContext, Policy, Millis)> {
    (0..72 * HOUR)
        .prop_map(|d| BASE + d)
        .prop_flat_map(|now| (notification(), context(now), policy(), Just(now)))
}

// ---------------------------------------------------------------------------------------------
// The oracle: the rules restated plainly, apart from decide.rs.
// ---------------------------------------------------------------------------------------------

/// The route followed.
fn oracle_route(n: &Notification, p: &Policy) -> Vec<Channel> {
    if n.route.is_empty() {
        p.routing.default_route.clone()
    } else {
        n.route.clone()
    }
}

/// How a channel may carry `n`, if it may: (price, currency, tag, template).
fn oracle_eligible(
    n: &Notification,
    ctx: &RouteContext,
    p: &Policy,
    now: Millis,
    ch: Channel,
) -> Option<(Micros, String, Option<String>, bool)> {
    let rules = p.channels.get(&ch).cloned().unwrap_or_default();
    let state = ctx.contacts.get(&ch).copied().unwrap_or_default();
    let carries = rules
        .categories
        .as_ref()
        .is_none_or(|c| c.contains(&n.category));
    if !rules.enabled
        || ctx.paused.contains(&ch)
        || !carries
        || !n.recipient.has_address(ch)
        || state.dead
        || state.opted_out
    {
        return None;
    }
    let mut outside = false;
    let (mut tag, mut template) = (None, false);
    if let Some(w) = &rules.window {
        let open = state.last_inbound > 0 && now - state.last_inbound < i64::from(w.hours) * HOUR;
        if !open {
            outside = true;
            if w.outside_tags.contains(&n.content.messenger_tag) {
                tag = Some(n.content.messenger_tag.clone());
            } else if w.outside_templates && n.content.template.is_some() {
                template = true;
            } else {
                return None;
            }
        }
    }
    let (price, currency) = match &rules.price {
        None => (0, String::new()),
        Some(pr) => {
            let pick = |t: &PriceTable| t.categories.get(&n.category).copied().or(t.default);
            let in_window = pick(&pr.per_message).unwrap_or(0)
                + pick(&pr.per_segment).unwrap_or(0) * i64::from(ctx.sms_segments.max(1));
            let price = match (outside, pick(&pr.outside_window)) {
                (true, Some(o)) => o,
                _ => in_window,
            };
            (price, pr.currency.clone())
        }
    };
    Some((price, currency, tag, template))
}

/// Whether `price` in `currency` fits every budget in that currency covering `n`.
fn oracle_fits(
    n: &Notification,
    ctx: &RouteContext,
    p: &Policy,
    price: Micros,
    currency: &str,
) -> bool {
    p.budgets.iter().all(|b| {
        let covers = match b.scope {
            BudgetScope::Tenant => !n.tenant.is_empty() && n.tenant == b.id,
            BudgetScope::Campaign => !n.campaign_id.is_empty() && n.campaign_id == b.id,
        };
        if !covers || b.currency != currency {
            return true;
        }
        let spent = ctx
            .budget_spent
            .get(&BudgetKey::new(b.scope, b.id.clone()))
            .copied()
            .unwrap_or(0);
        price <= (b.daily_micros - spent).max(0)
    })
}

fn oracle_capped(n: &Notification, ctx: &RouteContext, p: &Policy) -> bool {
    p.frequency_caps
        .iter()
        .filter(|c| c.category == n.category)
        .any(|c| ctx.frequency.get(&c.per).copied().unwrap_or(0) >= c.max)
}

/// The recipient's local minute of the day, by jiff directly.
fn local_minute(tz: &str, at: Millis) -> u16 {
    let zone = jiff::tz::TimeZoneDatabase::bundled()
        .get(tz)
        .unwrap_or(jiff::tz::TimeZone::UTC);
    let dt = zone.to_datetime(jiff::Timestamp::from_millisecond(at).expect("in range"));
    (dt.hour() as u16) * 60 + dt.minute() as u16
}

fn oracle_quiet(n: &Notification, p: &Policy, now: Millis) -> bool {
    let Some(q) = &p.quiet_hours else {
        return false;
    };
    if !q.categories.contains(&n.category) {
        return false;
    }
    let m = local_minute(&n.recipient.timezone, now);
    let (s, e) = (q.start.minute_of_day(), q.end.minute_of_day());
    if s < e {
        (s..e).contains(&m)
    } else {
        m >= s || m < e
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decisions_keep_the_invariants((n, ctx, p, now) in case()) {
        let d = route(&n, &ctx, &p, now);
        prop_assert_eq!(&d, &route(&n, &ctx, &p, now), "the decision is a pure function");
        let r = oracle_route(&n, &p);
        let candidates: Vec<(usize, Channel, Micros, String, bool)> = r
            .iter()
            .enumerate()
            .skip(ctx.start_index)
            .filter_map(|(i, ch)| {
                oracle_eligible(&n, &ctx, &p, now, *ch).map(|(price, cur, _, _)| {
                    let fits = oracle_fits(&n, &ctx, &p, price, &cur);
                    (i, *ch, price, cur, fits)
                })
            })
            .collect();

        if n.is_expired(now) {
            prop_assert_eq!(&d, &Decision::Suppress { reason: SuppressReason::Expired });
        }
        match &d {
            Decision::Send { route_index, channel, price_micros, currency, tag, template, skipped } => {
                prop_assert!(!n.is_expired(now));
                prop_assert!(!oracle_capped(&n, &ctx, &p));
                prop_assert!(!oracle_quiet(&n, &p, now), "sent during quiet hours");
                prop_assert!(*route_index >= ctx.start_index);
                prop_assert_eq!(r.get(*route_index), Some(channel));
                // Never disabled, paused, without address, dead, opted out, closed window.
                let how = oracle_eligible(&n, &ctx, &p, now, *channel);
                prop_assert!(how.is_some(), "ineligible channel {} chosen", channel);
                let (price, cur, want_tag, want_template) = how.expect("checked");
                // The price is what the policy says for that channel.
                prop_assert_eq!(*price_micros, price);
                prop_assert_eq!(currency, &cur);
                prop_assert_eq!(tag, &want_tag);
                prop_assert_eq!(*template, want_template);
                // Never above the budget left.
                prop_assert!(oracle_fits(&n, &ctx, &p, *price_micros, currency));
                for s in skipped {
                    prop_assert!(s.route_index != *route_index);
                    prop_assert_eq!(r.get(s.route_index), Some(&s.channel));
                }
                for (i, ch, pr, _, fits) in &candidates {
                    if !fits {
                        continue;
                    }
                    match p.routing.strategy {
                        RouteStrategy::Preference => prop_assert!(
                            i >= route_index,
                            "{} at {} was eligible and within budget before {}", ch, i, channel
                        ),
                        RouteStrategy::CheapestEligible => {
                            prop_assert!(
                                pr >= price_micros,
                                "{} costs {} < {} of {}", ch, pr, price_micros, channel
                            );
                            if pr == price_micros {
                                prop_assert!(i >= route_index, "ties go to route order");
                            }
                        }
                    }
                }
            }
            Decision::Wait { until, reason } => {
                prop_assert!(*until > now);
                prop_assert!(n.expire_at == 0 || *until < n.expire_at);
                prop_assert!(!oracle_capped(&n, &ctx, &p));
                prop_assert!(!candidates.is_empty());
                match reason {
                    WaitReason::QuietHours => {
                        prop_assert!(oracle_quiet(&n, &p, now));
                        prop_assert!(!oracle_quiet(&n, &p, *until), "quiet hours end at until");
                    }
                    WaitReason::BudgetReset => {
                        prop_assert!(!oracle_quiet(&n, &p, now));
                        prop_assert!(candidates.iter().all(|c| !c.4), "a channel fitted the budget");
                        prop_assert_eq!(*until, next_utc_midnight(now));
                        prop_assert_eq!(until.rem_euclid(86_400_000), 0);
                    }
                }
            }
            Decision::Suppress { reason } => match reason {
                SuppressReason::Expired => {
                    prop_assert!(n.expire_at > 0);
                }
                SuppressReason::FrequencyCap => {
                    prop_assert!(oracle_capped(&n, &ctx, &p));
                }
                SuppressReason::OptedOut
                | SuppressReason::DeadAddress
                | SuppressReason::CategoryNotAllowed => {
                    prop_assert!(candidates.is_empty());
                    // Suppressed only for lasting reasons: no channel is disabled or paused,
                    // none is closed by its window alone.
                    for ch in r.iter().skip(ctx.start_index) {
                        prop_assert!(p.channel(*ch).enabled);
                        prop_assert!(!ctx.paused.contains(ch));
                    }
                }
            },
            Decision::NoEligibleChannel { skipped } => {
                prop_assert!(candidates.is_empty());
                let want: Vec<usize> = (ctx.start_index..r.len()).collect();
                let got: Vec<usize> = skipped.iter().map(|s| s.route_index).collect();
                prop_assert_eq!(got, want, "one skip per channel from the start index");
            }
        }
    }

    /// Any text at all: an error or a policy, never a panic.
    #[test]
    fn parsing_never_panics(text in "\\PC{0,200}") {
        let _ = Policy::parse(&text);
    }

    /// DESIGN.md's example with one line dropped or duplicated: still no panic, and every
    /// refusal names a key unless the TOML itself broke.
    #[test]
    fn damaged_documents_are_refused_by_key(line in 0..40usize, dup in any::<bool>()) {
        let lines: Vec<&str> = super::document::tests::DESIGN_EXAMPLE.lines().collect();
        let mut v = lines.clone();
        if line < v.len() {
            if dup { v.insert(line, lines[line]); } else { v.remove(line); }
        }
        let text = v.join("\n");
        if let Err(e) = Policy::parse(&text) {
            prop_assert!(!e.message.is_empty());
            // No key only when the TOML itself broke, and then the message says where.
            prop_assert!(!e.key.is_empty() || e.message.contains("line"), "{}", e);
        }
    }
}
