//! The decision, taken at dispatch time for one notification: which channel and at what price,
//! or wait until when, or suppress. A pure function of the notification, the state the caller
//! loaded for it in one batch ([`RouteContext`]), the policy and the clock.
//!
//! The rules, in the order they are applied (a notification that will be suppressed is never
//! made to wait first):
//! 1. expired (`expire_at` passed) → `Suppress(Expired)`;
//! 2. a frequency cap on its category reached (count ≥ max) → `Suppress(FrequencyCap)`;
//! 3. each channel of the route from `ctx.start_index` on is checked: disabled, paused,
//!    category not carried, no address, opted out, dead, outside its window without an
//!    allowed tag or template make it ineligible;
//! 4. no eligible channel: when every channel was refused for a reason that lies with this
//!    recipient and this notification (opted out, dead, category not carried, no address) and
//!    at least one was opted out, dead or refused the category → `Suppress` with that reason
//!    (opted out first, then dead, then category); otherwise `NoEligibleChannel` with why
//!    each was skipped (a pause or a closed window may pass; the caller decides);
//! 5. quiet hours for its category at the recipient's local time → `Wait` until they end;
//! 6. the strategy picks among the eligible channels whose price fits every budget that
//!    covers the notification; when none fits → `Wait` until the next UTC midnight, when
//!    daily budgets reset.
//!
//! A wait that would end at or after `expire_at` is `Suppress(Expired)` at once, as dispatch
//! does with a retry that would land after expiry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::Timestamp;

use super::document::{BudgetScope, Micros, Policy, QuietHours, Strategy};
use crate::model::{Channel, ContactState, Millis, Notification};

const DAY_MS: Millis = 86_400_000;

/// What the caller loaded for one notification, in one batch, before asking [`route`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteContext {
    /// Index in the route to start from: the channels before it were already tried.
    pub start_index: usize,
    /// The recipient's state on each channel (see [`combine_contact_states`] for channels with
    /// several addresses). A channel missing here has the default state: alive, not opted
    /// out, no inbound message ever (so outside any window).
    pub contacts: BTreeMap<Channel, ContactState>,
    /// Channels an operator or an alert has paused.
    pub paused: BTreeSet<Channel>,
    /// SMS segments of this notification's text (`channels::sms::count_segments`), for
    /// per-segment prices; 0 counts as 1.
    pub sms_segments: u32,
    /// What each budget has spent today (UTC), in micros of the budget's currency. A budget
    /// missing here has spent nothing.
    pub budget_spent: BTreeMap<BudgetKey, Micros>,
    /// Notifications of this notification's category already sent to this contact within
    /// each window of [`Policy::frequency_windows`], keyed by the window. Missing: none.
    pub frequency: BTreeMap<Duration, u32>,
}

/// Names one budget: a tenant's or a campaign's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetKey {
    pub scope: BudgetScope,
    pub id: String,
}

impl BudgetKey {
    pub fn new(scope: BudgetScope, id: impl Into<String>) -> Self {
        Self {
            scope,
            id: id.into(),
        }
    }
}

/// What to do with the notification now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send on `channel` (= the route's entry at `route_index`).
    Send {
        route_index: usize,
        channel: Channel,
        /// What this send costs under the policy; 0 when the channel is free.
        price_micros: Micros,
        /// The price's currency; empty when the channel has no price.
        currency: String,
        /// Outside the channel's window, the (Messenger) tag that lets it pass.
        tag: Option<String>,
        /// Outside the channel's window, only its template may be sent (WhatsApp).
        template: bool,
        /// Channels of the route passed over, and why, for the attempt record. Under
        /// `cheapest_eligible`, eligible channels that were merely dearer are not listed.
        skipped: Vec<Skip>,
    },
    /// Nothing may be sent before `until` (always later than `now`).
    Wait { until: Millis, reason: WaitReason },
    /// Never to be sent.
    Suppress { reason: SuppressReason },
    /// No channel from the start index on may carry it now, for the reasons listed (one per
    /// channel, in route order).
    NoEligibleChannel { skipped: Vec<Skip> },
}

/// One channel passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub route_index: usize,
    pub channel: Channel,
    pub reason: SkipReason,
}

/// Why a channel could not carry the notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Disabled,
    Paused,
    CategoryNotAllowed,
    /// The recipient has no address for the channel.
    NoAddress,
    OptedOut,
    DeadAddress,
    /// Outside the messaging window, with no allowed tag or template.
    OutsideWindow,
    /// The price exceeds what a budget covering the notification has left today.
    OverBudget {
        price_micros: Micros,
        left_micros: Micros,
    },
}

impl SkipReason {
    /// Bounded label for metrics and attempt records.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::Disabled => "disabled",
            SkipReason::Paused => "paused",
            SkipReason::CategoryNotAllowed => "category_not_allowed",
            SkipReason::NoAddress => "no_address",
            SkipReason::OptedOut => "opted_out",
            SkipReason::DeadAddress => "dead_address",
            SkipReason::OutsideWindow => "outside_window",
            SkipReason::OverBudget { .. } => "over_budget",
        }
    }

    /// A reason that lies with this recipient and notification, which time alone will not
    /// change (a pause ends, a window reopens when the contact writes, a budget resets).
    fn is_lasting(self) -> bool {
        matches!(
            self,
            SkipReason::NoAddress
                | SkipReason::OptedOut
                | SkipReason::DeadAddress
                | SkipReason::CategoryNotAllowed
        )
    }
}

/// Why a notification waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// The recipient's quiet hours; `until` is when they end.
    QuietHours,
    /// Every eligible channel is over a daily budget; `until` is the next UTC midnight.
    BudgetReset,
}

impl WaitReason {
    pub fn label(self) -> &'static str {
        match self {
            WaitReason::QuietHours => "quiet_hours",
            WaitReason::BudgetReset => "budget_reset",
        }
    }
}

/// Why a notification will never be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressReason {
    Expired,
    FrequencyCap,
    OptedOut,
    DeadAddress,
    CategoryNotAllowed,
}

impl SuppressReason {
    pub fn label(self) -> &'static str {
        match self {
            SuppressReason::Expired => "expired",
            SuppressReason::FrequencyCap => "frequency_cap",
            SuppressReason::OptedOut => "opted_out",
            SuppressReason::DeadAddress => "dead_address",
            SuppressReason::CategoryNotAllowed => "category_not_allowed",
        }
    }

    /// The status the notification ends in: `Expired` for expiry, `Suppressed` otherwise.
    pub fn status(self) -> crate::model::Status {
        match self {
            SuppressReason::Expired => crate::model::Status::Expired,
            _ => crate::model::Status::Suppressed,
        }
    }
}

/// One state for a channel from the states of its addresses (APNs, FCM and Web Push may have
/// several): the channel is dead or opted out only when every address is suppressed — one live
/// device token still reaches the person — and its last inbound message is the latest of any.
pub fn combine_contact_states(states: impl IntoIterator<Item = ContactState>) -> ContactState {
    let mut out = ContactState::default();
    let mut all_suppressed = true;
    let mut any = false;
    let (mut dead, mut opted_out) = (false, false);
    for s in states {
        any = true;
        all_suppressed &= s.suppressed();
        dead |= s.dead;
        opted_out |= s.opted_out;
        out.last_inbound = out.last_inbound.max(s.last_inbound);
    }
    if any && all_suppressed {
        out.dead = dead;
        out.opted_out = opted_out;
    }
    out
}

/// The first millisecond of the next UTC day: when daily budgets reset.
pub fn next_utc_midnight(now: Millis) -> Millis {
    (now.div_euclid(DAY_MS) + 1).saturating_mul(DAY_MS)
}

/// The tz database compiled into the binary: looking a zone up reads no file, so the decision
/// stays free of I/O and gives the same answer on every host.
static TZDB: LazyLock<TimeZoneDatabase> = LazyLock::new(TimeZoneDatabase::bundled);

/// The recipient's zone; UTC when the name is empty or unknown (a bad zone must not block
/// delivery, and UTC is the least surprising guess).
fn zone(name: &str) -> TimeZone {
    if name.is_empty() {
        return TimeZone::UTC;
    }
    TZDB.get(name).unwrap_or(TimeZone::UTC)
}

/// When `now` falls in the quiet hours at the recipient's local time (`timezone`, an IANA
/// name), the end of those quiet hours as a UTC instant (always later than `now`); `None`
/// when `now` is not quiet.
pub fn quiet_hours_end(q: &QuietHours, timezone: &str, now: Millis) -> Option<Millis> {
    let tz = zone(timezone);
    let ts = Timestamp::from_millisecond(now).ok()?;
    let local = tz.to_datetime(ts);
    let minute = u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).ok()?;
    if !q.contains(minute) {
        return None;
    }
    // The next time the wall clock shows `end`: today, or tomorrow for a window across
    // midnight. A DST jump can put today's `end` behind us or skip it (the gap resolves to
    // the later side), so look a few days on and take the first instant after now.
    let mut day = local.date();
    for _ in 0..3 {
        let end = day.at(q.end.hour as i8, q.end.minute as i8, 0, 0);
        if let Ok(t) = tz.to_timestamp(end) {
            let ms = t.as_millisecond();
            if ms > now {
                return Some(ms);
            }
        }
        day = day.tomorrow().ok()?;
    }
    None
}

/// The route the notification follows: its own, or the policy's default when it has none
/// (so a change of `routing.default_route` reaches what is already queued).
fn route_of<'a>(n: &'a Notification, policy: &'a Policy) -> &'a [Channel] {
    if n.route.is_empty() {
        &policy.routing.default_route
    } else {
        &n.route
    }
}

/// A channel that may carry the notification, before budgets.
struct Candidate {
    route_index: usize,
    channel: Channel,
    price_micros: Micros,
    currency: String,
    tag: Option<String>,
    template: bool,
}

/// Whether `channel` may carry `n` now, and how (tag or template outside its window).
fn check_channel(
    n: &Notification,
    ctx: &RouteContext,
    policy: &Policy,
    now: Millis,
    route_index: usize,
    channel: Channel,
) -> Result<Candidate, SkipReason> {
    let rules = policy.channel(channel);
    if !rules.enabled {
        return Err(SkipReason::Disabled);
    }
    if ctx.paused.contains(&channel) {
        return Err(SkipReason::Paused);
    }
    if !rules.carries(n.category) {
        return Err(SkipReason::CategoryNotAllowed);
    }
    if n.recipient.addresses(channel).is_empty() {
        return Err(SkipReason::NoAddress);
    }
    let state = ctx.contacts.get(&channel).copied().unwrap_or_default();
    // Consent first: an opted-out address that is also dead is reported as opted out.
    if state.opted_out {
        return Err(SkipReason::OptedOut);
    }
    if state.dead {
        return Err(SkipReason::DeadAddress);
    }
    let (mut tag, mut template, mut outside) = (None, false, false);
    if let Some(w) = &rules.window {
        // Never written to us, or longer ago than the window: outside. A last inbound in the
        // future (clock skew between instances) counts as inside.
        outside = state.last_inbound <= 0 || now.saturating_sub(state.last_inbound) >= w.millis();
        if outside {
            let t = &n.content.messenger_tag;
            if !t.is_empty() && w.outside_tags.iter().any(|x| x == t) {
                tag = Some(t.clone());
            } else if w.outside_templates && n.content.template.is_some() {
                template = true;
            } else {
                return Err(SkipReason::OutsideWindow);
            }
        }
    }
    Ok(Candidate {
        route_index,
        channel,
        price_micros: rules.price_micros(n.category, outside, ctx.sms_segments),
        currency: rules.currency().to_string(),
        tag,
        template,
    })
}

/// What the budgets covering `n` leave today for a price in `currency`: the least any of them
/// has left (never below 0). `None` when no budget in that currency covers it. Budgets in
/// another currency are ignored: Herald converts no currency, and an operator who budgets in
/// EUR for a channel priced in USD has no limit on that channel.
fn budget_left(
    n: &Notification,
    ctx: &RouteContext,
    policy: &Policy,
    currency: &str,
) -> Option<Micros> {
    policy
        .budgets_for(n)
        .filter(|b| b.currency == currency)
        .map(|b| {
            let spent = ctx
                .budget_spent
                .get(&BudgetKey::new(b.scope, b.id.clone()))
                .copied()
                .unwrap_or(0)
                .max(0);
            b.daily_micros.saturating_sub(spent).max(0)
        })
        .min()
}

/// Decides, for one notification at `now`, which channel and at what price, or wait until
/// when, or suppress. Pure: the same arguments give the same decision.
///
/// It never returns a channel that is disabled, paused, not allowed the category, without an
/// address, opted out or dead, outside its window without an allowed tag or template, or whose
/// price exceeds what a covering budget has left. See the module documentation for the order
/// of the rules.
pub fn route(n: &Notification, ctx: &RouteContext, policy: &Policy, now: Millis) -> Decision {
    if n.is_expired(now) {
        return suppress(SuppressReason::Expired);
    }
    let capped = policy.frequency_caps.iter().any(|c| {
        c.category == n.category && ctx.frequency.get(&c.per).copied().unwrap_or(0) >= c.max
    });
    if capped {
        return suppress(SuppressReason::FrequencyCap);
    }

    let mut skipped = Vec::new();
    let mut eligible = Vec::new();
    for (i, channel) in route_of(n, policy).iter().enumerate().skip(ctx.start_index) {
        match check_channel(n, ctx, policy, now, i, *channel) {
            Ok(c) => eligible.push(c),
            Err(reason) => skipped.push(Skip {
                route_index: i,
                channel: *channel,
                reason,
            }),
        }
    }
    if eligible.is_empty() {
        return nothing_eligible(skipped);
    }

    if let Some(q) = &policy.quiet_hours {
        if q.categories.contains(&n.category) {
            if let Some(until) = quiet_hours_end(q, &n.recipient.timezone, now) {
                return wait(n, until, WaitReason::QuietHours);
            }
        }
    }

    // Budgets: a channel whose price does not fit is passed over for the next eligible one.
    let mut fitting = Vec::new();
    for c in eligible {
        match budget_left(n, ctx, policy, &c.currency) {
            Some(left) if c.price_micros > left => skipped.push(Skip {
                route_index: c.route_index,
                channel: c.channel,
                reason: SkipReason::OverBudget {
                    price_micros: c.price_micros,
                    left_micros: left,
                },
            }),
            _ => fitting.push(c),
        }
    }
    let chosen = match policy.routing.strategy {
        Strategy::Preference => fitting.into_iter().next(),
        // `min_by_key` keeps the first of equals, and candidates are in route order: ties go
        // to the preferred channel.
        Strategy::CheapestEligible => fitting.into_iter().min_by_key(|c| c.price_micros),
    };
    let Some(c) = chosen else {
        return wait(n, next_utc_midnight(now), WaitReason::BudgetReset);
    };
    // Under `preference` the channels after the chosen one were never in question.
    if policy.routing.strategy == Strategy::Preference {
        skipped.retain(|s| s.route_index < c.route_index);
    }
    skipped.sort_by_key(|s| s.route_index);
    Decision::Send {
        route_index: c.route_index,
        channel: c.channel,
        price_micros: c.price_micros,
        currency: c.currency,
        tag: c.tag,
        template: c.template,
        skipped,
    }
}

fn suppress(reason: SuppressReason) -> Decision {
    Decision::Suppress { reason }
}

/// Wait until `until`, unless the notification expires first.
fn wait(n: &Notification, until: Millis, reason: WaitReason) -> Decision {
    if n.expire_at > 0 && until >= n.expire_at {
        suppress(SuppressReason::Expired)
    } else {
        Decision::Wait { until, reason }
    }
}

/// No channel may carry it: suppress when every reason lasts, else say why each was skipped.
fn nothing_eligible(skipped: Vec<Skip>) -> Decision {
    if !skipped.is_empty() && skipped.iter().all(|s| s.reason.is_lasting()) {
        let has = |r: SkipReason| skipped.iter().any(|s| s.reason == r);
        let reason = if has(SkipReason::OptedOut) {
            Some(SuppressReason::OptedOut)
        } else if has(SkipReason::DeadAddress) {
            Some(SuppressReason::DeadAddress)
        } else if has(SkipReason::CategoryNotAllowed) {
            Some(SuppressReason::CategoryNotAllowed)
        } else {
            // No address anywhere: nothing to suppress, the notification simply cannot go.
            None
        };
        if let Some(reason) = reason {
            return suppress(reason);
        }
    }
    Decision::NoEligibleChannel { skipped }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Category, Content, Priority, Recipient, Template};
    use crate::policy::document::{Budget, FrequencyCap};

    /// 2025-03-14T12:00:00Z, a Friday.
    pub(crate) const NOON: Millis = 1_741_953_600_000;
    const HOUR: Millis = 3_600_000;

    /// A utility notification for a recipient reachable on every channel, routed through
    /// Messenger, WhatsApp, SMS, email.
    pub(crate) fn notification() -> Notification {
        Notification {
            id: "n1".into(),
            tenant: "acme".into(),
            idempotency_key: String::new(),
            campaign_id: "spring-sale".into(),
            labels: BTreeMap::new(),
            recipient: Recipient {
                contact_id: "c1".into(),
                messenger_psid: "psid".into(),
                whatsapp_number: "+15550001".into(),
                phone: "+15550001".into(),
                email: "a@example.com".into(),
                apns_tokens: vec!["tok".into()],
                fcm_tokens: vec!["fcm".into()],
                webhook_url: "https://example.com/h".into(),
                ..Default::default()
            },
            route: vec![
                Channel::Messenger,
                Channel::Whatsapp,
                Channel::Sms,
                Channel::Email,
            ],
            content: Content {
                body: "Your order shipped".into(),
                ..Default::default()
            },
            category: Category::Utility,
            priority: Priority::Normal,
            send_at: 0,
            expire_at: 0,
            created_at: NOON - HOUR,
        }
    }

    fn policy(text: &str) -> Policy {
        Policy::parse(text).expect("test policy is valid")
    }

    fn design() -> Policy {
        policy(crate::policy::document::tests::DESIGN_EXAMPLE)
    }

    /// Every windowed channel has a recent inbound message.
    fn inside_windows() -> RouteContext {
        let recent = ContactState {
            last_inbound: NOON - HOUR,
            ..Default::default()
        };
        RouteContext {
            contacts: BTreeMap::from([(Channel::Messenger, recent), (Channel::Whatsapp, recent)]),
            sms_segments: 1,
            ..Default::default()
        }
    }

    fn sent_on(d: &Decision) -> Option<Channel> {
        match d {
            Decision::Send { channel, .. } => Some(*channel),
            _ => None,
        }
    }

    #[test]
    fn the_first_eligible_channel_is_taken() {
        let d = route(&notification(), &inside_windows(), &design(), NOON);
        assert_eq!(
            d,
            Decision::Send {
                route_index: 0,
                channel: Channel::Messenger,
                price_micros: 0,
                currency: "USD".into(),
                tag: None,
                template: false,
                skipped: vec![],
            }
        );
    }

    #[test]
    fn expired_notifications_are_suppressed() {
        let mut n = notification();
        n.expire_at = NOON;
        assert_eq!(
            route(&n, &inside_windows(), &design(), NOON),
            Decision::Suppress {
                reason: SuppressReason::Expired
            }
        );
        n.expire_at = NOON + 1;
        assert!(sent_on(&route(&n, &inside_windows(), &design(), NOON)).is_some());
    }

    #[test]
    fn the_start_index_skips_channels_already_tried() {
        let ctx = RouteContext {
            start_index: 2,
            ..inside_windows()
        };
        let d = route(&notification(), &ctx, &design(), NOON);
        assert_eq!(sent_on(&d), Some(Channel::Sms));
        let ctx = RouteContext {
            start_index: 9,
            ..inside_windows()
        };
        assert_eq!(
            route(&notification(), &ctx, &design(), NOON),
            Decision::NoEligibleChannel { skipped: vec![] }
        );
    }

    #[test]
    fn disabled_and_paused_channels_are_skipped() {
        let p = policy("[channels.messenger]\nenabled = false\n");
        let mut ctx = inside_windows();
        ctx.paused.insert(Channel::Whatsapp);
        let d = route(&notification(), &ctx, &p, NOON);
        match d {
            Decision::Send {
                channel, skipped, ..
            } => {
                assert_eq!(channel, Channel::Sms);
                assert_eq!(
                    skipped,
                    vec![
                        Skip {
                            route_index: 0,
                            channel: Channel::Messenger,
                            reason: SkipReason::Disabled
                        },
                        Skip {
                            route_index: 1,
                            channel: Channel::Whatsapp,
                            reason: SkipReason::Paused
                        },
                    ]
                );
            }
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn categories_not_carried_are_skipped_or_suppressed() {
        let mut n = notification();
        n.category = Category::Authentication;
        n.route = vec![Channel::Messenger, Channel::Email];
        // Messenger does not carry authentication in the design example; email does.
        assert_eq!(
            sent_on(&route(&n, &inside_windows(), &design(), NOON)),
            Some(Channel::Email)
        );
        n.route = vec![Channel::Messenger];
        assert_eq!(
            route(&n, &inside_windows(), &design(), NOON),
            Decision::Suppress {
                reason: SuppressReason::CategoryNotAllowed
            }
        );
    }

    #[test]
    fn channels_without_an_address_are_skipped() {
        let mut n = notification();
        n.recipient.messenger_psid.clear();
        let d = route(&n, &inside_windows(), &design(), NOON);
        assert_eq!(sent_on(&d), Some(Channel::Whatsapp));
        n.route = vec![Channel::Messenger, Channel::Webpush];
        assert_eq!(
            route(&n, &inside_windows(), &design(), NOON),
            Decision::NoEligibleChannel {
                skipped: vec![
                    Skip {
                        route_index: 0,
                        channel: Channel::Messenger,
                        reason: SkipReason::NoAddress
                    },
                    Skip {
                        route_index: 1,
                        channel: Channel::Webpush,
                        reason: SkipReason::NoAddress
                    },
                ]
            }
        );
    }

    #[test]
    fn opted_out_and_dead_addresses_are_skipped_then_suppressed() {
        let mut ctx = inside_windows();
        ctx.contacts.insert(
            Channel::Messenger,
            ContactState {
                opted_out: true,
                ..Default::default()
            },
        );
        ctx.contacts.insert(
            Channel::Whatsapp,
            ContactState {
                dead: true,
                last_inbound: NOON - HOUR,
                ..Default::default()
            },
        );
        let mut n = notification();
        assert_eq!(
            sent_on(&route(&n, &ctx, &design(), NOON)),
            Some(Channel::Sms)
        );
        n.route = vec![Channel::Messenger, Channel::Whatsapp];
        assert_eq!(
            route(&n, &ctx, &design(), NOON),
            Decision::Suppress {
                reason: SuppressReason::OptedOut
            }
        );
        n.route = vec![Channel::Whatsapp, Channel::Webpush];
        assert_eq!(
            route(&n, &ctx, &design(), NOON),
            Decision::Suppress {
                reason: SuppressReason::DeadAddress
            }
        );
        // A pause may end: not a reason to suppress.
        ctx.paused.insert(Channel::Messenger);
        n.route = vec![Channel::Messenger, Channel::Whatsapp];
        assert!(matches!(
            route(&n, &ctx, &design(), NOON),
            Decision::NoEligibleChannel { .. }
        ));
    }

    #[test]
    fn one_live_token_keeps_a_channel_open() {
        let dead = ContactState {
            dead: true,
            ..Default::default()
        };
        let out = ContactState {
            opted_out: true,
            last_inbound: 5,
            ..Default::default()
        };
        let live = ContactState {
            last_inbound: 9,
            ..Default::default()
        };
        assert_eq!(
            combine_contact_states([dead, live, out]),
            ContactState {
                dead: false,
                opted_out: false,
                last_inbound: 9
            }
        );
        assert_eq!(
            combine_contact_states([dead, out]),
            ContactState {
                dead: true,
                opted_out: true,
                last_inbound: 5
            }
        );
        assert_eq!(combine_contact_states([]), ContactState::default());
    }

    #[test]
    fn outside_the_window_a_tag_may_pass() {
        let mut n = notification();
        n.route = vec![Channel::Messenger, Channel::Sms];
        let mut ctx = inside_windows();
        // Last wrote 25 hours ago: outside Messenger's 24 h window.
        ctx.contacts.insert(
            Channel::Messenger,
            ContactState {
                last_inbound: NOON - 25 * HOUR,
                ..Default::default()
            },
        );
        let d = route(&n, &ctx, &design(), NOON);
        assert_eq!(sent_on(&d), Some(Channel::Sms));
        match &d {
            Decision::Send { skipped, .. } => {
                assert_eq!(skipped[0].reason, SkipReason::OutsideWindow)
            }
            other => panic!("{other:?}"),
        }
        n.content.messenger_tag = "NOT_A_TAG".into();
        assert_eq!(
            sent_on(&route(&n, &ctx, &design(), NOON)),
            Some(Channel::Sms)
        );
        n.content.messenger_tag = "ACCOUNT_UPDATE".into();
        match route(&n, &ctx, &design(), NOON) {
            Decision::Send {
                channel,
                tag,
                template,
                ..
            } => {
                assert_eq!(channel, Channel::Messenger);
                assert_eq!(tag.as_deref(), Some("ACCOUNT_UPDATE"));
                assert!(!template);
            }
            other => panic!("{other:?}"),
        }
        // Inside the window the tag is not needed.
        match route(&n, &inside_windows(), &design(), NOON) {
            Decision::Send { tag, .. } => assert_eq!(tag, None),
            other => panic!("{other:?}"),
        }
        // Exactly 24 h ago is outside; a contact who never wrote is outside.
        ctx.contacts.insert(
            Channel::Messenger,
            ContactState {
                last_inbound: NOON - 24 * HOUR,
                ..Default::default()
            },
        );
        n.content.messenger_tag.clear();
        assert_eq!(
            sent_on(&route(&n, &ctx, &design(), NOON)),
            Some(Channel::Sms)
        );
        ctx.contacts.remove(&Channel::Messenger);
        assert_eq!(
            sent_on(&route(&n, &ctx, &design(), NOON)),
            Some(Channel::Sms)
        );
    }

    #[test]
    fn outside_the_window_whatsapp_sends_its_template_at_its_price() {
        let mut n = notification();
        n.route = vec![Channel::Whatsapp, Channel::Email];
        let ctx = RouteContext::default();
        // No template: WhatsApp is out.
        assert_eq!(
            sent_on(&route(&n, &ctx, &design(), NOON)),
            Some(Channel::Email)
        );
        n.content.template = Some(Template {
            name: "order_update".into(),
            language: "en_US".into(),
            params: vec![],
        });
        assert_eq!(
            route(&n, &ctx, &design(), NOON),
            Decision::Send {
                route_index: 0,
                channel: Channel::Whatsapp,
                price_micros: 4_000,
                currency: "USD".into(),
                tag: None,
                template: true,
                skipped: vec![],
            }
        );
        // Inside the window utility is free and needs no template.
        match route(&n, &inside_windows(), &design(), NOON) {
            Decision::Send {
                price_micros,
                template,
                ..
            } => {
                assert_eq!(price_micros, 0);
                assert!(!template);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sms_is_priced_per_segment() {
        let mut n = notification();
        n.route = vec![Channel::Sms];
        let ctx = RouteContext {
            sms_segments: 3,
            ..Default::default()
        };
        match route(&n, &ctx, &design(), NOON) {
            Decision::Send {
                price_micros,
                currency,
                ..
            } => {
                assert_eq!(price_micros, 3 * 7_900);
                assert_eq!(currency, "USD");
            }
            other => panic!("{other:?}"),
        }
    }

    fn cheapest() -> Policy {
        policy(
            r#"
[routing]
strategy = "cheapest_eligible"
[channels.whatsapp]
price = { currency = "USD", per_message = { default = 0.004 } }
[channels.sms]
price = { currency = "USD", per_segment = { default = 0.0079 } }
[channels.email]
price = { currency = "USD", per_message = { default = 0.0001 } }
[channels.messenger]
price = { currency = "USD", per_message = { default = 0.0001 } }
"#,
        )
    }

    #[test]
    fn cheapest_eligible_takes_the_cheapest_and_ties_go_to_route_order() {
        let mut n = notification();
        n.route = vec![
            Channel::Whatsapp,
            Channel::Sms,
            Channel::Email,
            Channel::Messenger,
        ];
        let d = route(&n, &inside_windows(), &cheapest(), NOON);
        match d {
            Decision::Send {
                channel,
                route_index,
                price_micros,
                ..
            } => {
                // Email and Messenger cost the same; email comes first in the route.
                assert_eq!(channel, Channel::Email);
                assert_eq!(route_index, 2);
                assert_eq!(price_micros, 100);
            }
            other => panic!("{other:?}"),
        }
        // Without email, Messenger (the other cheapest) wins.
        n.recipient.email.clear();
        assert_eq!(
            sent_on(&route(&n, &inside_windows(), &cheapest(), NOON)),
            Some(Channel::Messenger)
        );
        // Free channels (no price) beat priced ones.
        n.route.push(Channel::Fcm);
        assert_eq!(
            sent_on(&route(&n, &inside_windows(), &cheapest(), NOON)),
            Some(Channel::Fcm)
        );
    }

    fn budgeted(daily: &str, currency: &str) -> Policy {
        policy(&format!(
            r#"
[channels.whatsapp]
price = {{ currency = "USD", per_message = {{ default = 0.05 }} }}
[channels.sms]
price = {{ currency = "USD", per_segment = {{ default = 0.01 }} }}
[channels.email]
price = {{ currency = "USD", per_message = {{ default = 0.001 }} }}
[[budgets]]
scope = "tenant"
id = "acme"
daily = {daily}
currency = "{currency}"
"#
        ))
    }

    #[test]
    fn a_channel_over_budget_gives_way_to_a_cheaper_one() {
        let mut n = notification();
        n.route = vec![Channel::Whatsapp, Channel::Sms, Channel::Email];
        let mut ctx = inside_windows();
        ctx.budget_spent
            .insert(BudgetKey::new(BudgetScope::Tenant, "acme"), 995_000);
        // 1.00 a day, 0.995 spent: 0.005 left. WhatsApp (0.05) and SMS (0.01) do not fit.
        match route(&n, &ctx, &budgeted("1.0", "USD"), NOON) {
            Decision::Send {
                channel,
                price_micros,
                skipped,
                ..
            } => {
                assert_eq!(channel, Channel::Email);
                assert_eq!(price_micros, 1_000);
                assert_eq!(
                    skipped[0].reason,
                    SkipReason::OverBudget {
                        price_micros: 50_000,
                        left_micros: 5_000
                    }
                );
                assert_eq!(skipped.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        // Spent past the budget: nothing fits until the next UTC midnight.
        ctx.budget_spent
            .insert(BudgetKey::new(BudgetScope::Tenant, "acme"), 1_200_000);
        let midnight = NOON + 12 * HOUR;
        assert_eq!(
            route(&n, &ctx, &budgeted("1.0", "USD"), NOON),
            Decision::Wait {
                until: midnight,
                reason: WaitReason::BudgetReset
            }
        );
        // ... unless it expires first.
        n.expire_at = midnight;
        assert_eq!(
            route(&n, &ctx, &budgeted("1.0", "USD"), NOON),
            Decision::Suppress {
                reason: SuppressReason::Expired
            }
        );
        n.expire_at = 0;
        // A free channel always fits.
        n.route.push(Channel::Apns);
        assert_eq!(
            sent_on(&route(&n, &ctx, &budgeted("1.0", "USD"), NOON)),
            Some(Channel::Apns)
        );
        // A budget in another currency does not apply.
        n.route.pop();
        assert_eq!(
            sent_on(&route(&n, &ctx, &budgeted("1.0", "EUR"), NOON)),
            Some(Channel::Whatsapp)
        );
        // Nor does another tenant's.
        n.tenant = "other".into();
        assert_eq!(
            sent_on(&route(&n, &ctx, &budgeted("1.0", "USD"), NOON)),
            Some(Channel::Whatsapp)
        );
    }

    #[test]
    fn the_tightest_of_several_budgets_binds() {
        let mut p = budgeted("10.0", "USD");
        p.budgets.push(Budget {
            scope: BudgetScope::Campaign,
            id: "spring-sale".into(),
            daily_micros: 20_000,
            currency: "USD".into(),
        });
        let mut n = notification();
        n.route = vec![Channel::Whatsapp, Channel::Sms];
        match route(&n, &inside_windows(), &p, NOON) {
            Decision::Send {
                channel, skipped, ..
            } => {
                assert_eq!(channel, Channel::Sms);
                assert_eq!(
                    skipped[0].reason,
                    SkipReason::OverBudget {
                        price_micros: 50_000,
                        left_micros: 20_000
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frequency_caps_suppress() {
        let mut n = notification();
        n.category = Category::Marketing;
        let mut ctx = inside_windows();
        let day = Duration::from_secs(86_400);
        ctx.frequency.insert(day, 2);
        // 10:00 UTC, outside quiet hours.
        let morning = NOON - 2 * HOUR;
        assert!(sent_on(&route(&n, &ctx, &design(), morning)).is_some());
        ctx.frequency.insert(day, 3);
        assert_eq!(
            route(&n, &ctx, &design(), morning),
            Decision::Suppress {
                reason: SuppressReason::FrequencyCap
            }
        );
        // The cap is on marketing only.
        n.category = Category::Utility;
        assert!(sent_on(&route(&n, &ctx, &design(), morning)).is_some());
        // A count for another window does not count against this cap.
        let mut p = design();
        p.frequency_caps.push(FrequencyCap {
            category: Category::Utility,
            max: 1,
            per: Duration::from_secs(3600),
        });
        assert!(sent_on(&route(&n, &ctx, &p, morning)).is_some());
        ctx.frequency.insert(Duration::from_secs(3600), 1);
        assert_eq!(
            route(&n, &ctx, &p, morning),
            Decision::Suppress {
                reason: SuppressReason::FrequencyCap
            }
        );
    }

    #[test]
    fn quiet_hours_wait_in_the_recipients_time_zone() {
        let mut n = notification();
        n.category = Category::Marketing;
        let ctx = inside_windows();
        // 22:00 UTC: quiet in UTC (21:00–08:00), so wait until 08:00 UTC tomorrow.
        let ten_pm = NOON + 10 * HOUR;
        assert_eq!(
            route(&n, &ctx, &design(), ten_pm),
            Decision::Wait {
                until: NOON + 20 * HOUR,
                reason: WaitReason::QuietHours
            }
        );
        // 03:00 UTC: quiet; the end is today at 08:00.
        let three_am = NOON - 9 * HOUR;
        assert_eq!(
            route(&n, &ctx, &design(), three_am),
            Decision::Wait {
                until: NOON - 4 * HOUR,
                reason: WaitReason::QuietHours
            }
        );
        // 08:00 sharp is no longer quiet.
        assert!(sent_on(&route(&n, &ctx, &design(), NOON - 4 * HOUR)).is_some());
        // In New York (UTC-4 in March after the DST switch on the 9th) 22:00 UTC is 18:00.
        n.recipient.timezone = "America/New_York".into();
        assert!(sent_on(&route(&n, &ctx, &design(), ten_pm)).is_some());
        // ... and 02:00 UTC is 22:00 there: wait until 08:00 New York = 12:00 UTC.
        let two_am = NOON - 10 * HOUR;
        assert_eq!(
            route(&n, &ctx, &design(), two_am),
            Decision::Wait {
                until: NOON,
                reason: WaitReason::QuietHours
            }
        );
        // An unknown zone falls back to UTC.
        n.recipient.timezone = "Mars/Olympus_Mons".into();
        assert!(matches!(
            route(&n, &ctx, &design(), ten_pm),
            Decision::Wait {
                reason: WaitReason::QuietHours,
                ..
            }
        ));
        // Utility is not held by quiet hours.
        n.category = Category::Utility;
        assert!(sent_on(&route(&n, &ctx, &design(), ten_pm)).is_some());
        // A wait past expiry is expiry.
        n.category = Category::Marketing;
        n.recipient.timezone.clear();
        n.expire_at = NOON + 19 * HOUR;
        assert_eq!(
            route(&n, &ctx, &design(), ten_pm),
            Decision::Suppress {
                reason: SuppressReason::Expired
            }
        );
    }

    #[test]
    fn quiet_hours_end_across_a_dst_change() {
        let q = QuietHours {
            categories: BTreeSet::new(),
            start: crate::policy::ClockTime { hour: 1, minute: 0 },
            end: crate::policy::ClockTime {
                hour: 2,
                minute: 30,
            },
        };
        // 2025-03-30 in Paris: clocks jump 02:00 → 03:00, so 02:30 never happens that day.
        // 01:30 CET = 00:30 UTC. The end resolves past the gap, at 03:30 CEST = 01:30 UTC.
        let t = 1_743_294_600_000; // 2025-03-30T00:30:00Z
        let end = quiet_hours_end(&q, "Europe/Paris", t).expect("quiet");
        assert!(end > t);
        assert_eq!(end, 1_743_298_200_000); // 2025-03-30T01:30:00Z
        assert_eq!(quiet_hours_end(&q, "Europe/Paris", end), None);
    }

    #[test]
    fn the_default_route_stands_in_for_an_empty_one() {
        let mut n = notification();
        n.route.clear();
        let d = route(&n, &inside_windows(), &design(), NOON);
        assert_eq!(sent_on(&d), Some(Channel::Messenger));
        // With no default route either, there is nothing to choose from.
        assert_eq!(
            route(&n, &inside_windows(), &Policy::default(), NOON),
            Decision::NoEligibleChannel { skipped: vec![] }
        );
    }

    #[test]
    fn next_midnight_is_utc() {
        assert_eq!(next_utc_midnight(0), DAY_MS);
        assert_eq!(next_utc_midnight(DAY_MS - 1), DAY_MS);
        assert_eq!(next_utc_midnight(DAY_MS), 2 * DAY_MS);
        assert_eq!(next_utc_midnight(NOON), NOON + 12 * HOUR);
    }
}
