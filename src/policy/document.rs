//! The policy document: its TOML shape (DESIGN.md, "The policy document"), validation whose
//! every error names the key, and the typed [`Policy`] the decision reads.
//!
//! Parsing goes in two steps. serde reads the text into `Raw*` structs that mirror the
//! document one to one (`deny_unknown_fields`, strings where the document has names), so a
//! wrong type or an unknown key is reported with its full path; validation then turns names
//! into enums, amounts into integer micros and durations into `Duration`, naming the key of
//! the first value it refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::config::DispatchConfig;
use crate::model::{Category, Channel, Notification};

/// Money in millionths of the currency unit: 0.0079 USD is 7 900. Integers, so budgets add
/// up exactly.
pub type Micros = i64;

/// Largest amount a price or a daily budget may state, in currency units. Far above any real
/// price, and small enough that sums of micros cannot overflow.
const MAX_AMOUNT: f64 = 1e9;

/// A document that cannot apply, and the key that is wrong (`channels.sms.rate.per_second`,
/// `routing.default_route[2]`, `budgets[0].currency`). `key` is empty only for a TOML syntax
/// error, whose message carries the line and column instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

impl PolicyError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for PolicyError {}

// ---------------------------------------------------------------------------------------------
// The typed policy
// ---------------------------------------------------------------------------------------------

/// A validated policy document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    /// Assigned when the document is applied (0 = never applied); never read from the text,
    /// so a document cannot claim a version. [`crate::policy::diff`] ignores it.
    pub version: u64,
    pub routing: Routing,
    /// Only the channels the document names; [`Policy::channel`] gives the defaults for the
    /// others.
    pub channels: BTreeMap<Channel, ChannelPolicy>,
    pub budgets: Vec<Budget>,
    pub quiet_hours: Option<QuietHours>,
    pub frequency_caps: Vec<FrequencyCap>,
}

/// `[routing]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    pub strategy: Strategy,
    /// Empty: the caller's own default route.
    pub default_route: Vec<Channel>,
}

/// `routing.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The first eligible channel in route order.
    #[default]
    Preference,
    /// The cheapest eligible channel; ties go to route order.
    CheapestEligible,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Preference => "preference",
            Strategy::CheapestEligible => "cheapest_eligible",
        }
    }
}

/// `[channels.<name>]`. A channel the document leaves out has [`ChannelPolicy::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelPolicy {
    pub enabled: bool,
    /// Categories the channel may carry; `None`: all of them.
    pub categories: Option<BTreeSet<Category>>,
    /// `None`: the channel's configured limit stands.
    pub rate: Option<Rate>,
    /// `None`: no messaging window; the channel is never "outside" it.
    pub window: Option<Window>,
    /// `None`: free.
    pub price: Option<Price>,
    /// `None`: the config's `dispatch` retry settings.
    pub retry: Option<RetryPolicy>,
}

/// What a channel is when the document does not mention it: enabled, any category, no
/// window, no price, the config's retry.
static DEFAULT_CHANNEL: ChannelPolicy = ChannelPolicy {
    enabled: true,
    categories: None,
    rate: None,
    window: None,
    price: None,
    retry: None,
};

impl Default for ChannelPolicy {
    fn default() -> Self {
        DEFAULT_CHANNEL.clone()
    }
}

impl ChannelPolicy {
    /// Whether the channel may carry `category`.
    pub fn carries(&self, category: Category) -> bool {
        self.categories
            .as_ref()
            .is_none_or(|set| set.contains(&category))
    }

    /// What one message of `category` costs on this channel, and in which currency (empty when
    /// the channel has no price, i.e. is free).
    ///
    /// The rule, chosen to fit DESIGN.md's WhatsApp example (utility free inside the window,
    /// `outside_window.utility` outside it; marketing charged everywhere):
    /// - outside the messaging window, if `outside_window` has the category (or `default`),
    ///   that amount per message is the whole price: it replaces the in-window price;
    /// - otherwise `per_message[category|default]` plus `per_segment[category|default]` times
    ///   the segment count (a table without the category nor `default` adds nothing). A count
    ///   of 0 counts as one segment: every message is at least one.
    pub fn price_micros(&self, category: Category, outside_window: bool, segments: u32) -> Micros {
        let Some(p) = &self.price else {
            return 0;
        };
        if outside_window {
            if let Some(m) = p.outside_window.get(category) {
                return m;
            }
        }
        let per_message = p.per_message.get(category).unwrap_or(0);
        let per_segment = p.per_segment.get(category).unwrap_or(0);
        per_message.saturating_add(per_segment.saturating_mul(i64::from(segments.max(1))))
    }

    /// The currency prices on this channel are in; empty when it has no price.
    pub fn currency(&self) -> &str {
        self.price.as_ref().map_or("", |p| p.currency.as_str())
    }

    /// The retry settings in force: the document's where it sets them, the config's otherwise.
    pub fn retry_settings(&self, cfg: &DispatchConfig) -> RetrySettings {
        let r = self.retry.clone().unwrap_or_default();
        let base = r.base.unwrap_or(cfg.backoff_base.0);
        RetrySettings {
            max_attempts: r.max_attempts.unwrap_or(cfg.max_attempts),
            max_age: r.max_age.unwrap_or(cfg.max_age.0),
            base,
            // One side may come from the config: never let the cap undercut the base.
            cap: r.cap.unwrap_or(cfg.backoff_cap.0).max(base),
        }
    }
}

/// `rate = { per_second, burst, scope }`: the ceiling the rate limiter climbs back to.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    /// `None`: the limiter's own default burst.
    pub burst: Option<u32>,
    pub scope: RateScope,
}

/// The platform account a rate applies to (platforms.md: Messenger limits per page, Twilio per
/// sender number, FCM per project, APNs per topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateScope {
    Page,
    Sender,
    Project,
    Topic,
    /// The whole app (Messenger's app-wide budget).
    App,
    /// The channel as a whole on this deployment: the scope when none is given.
    #[default]
    Channel,
}

impl RateScope {
    const ALL: [RateScope; 6] = [
        RateScope::Page,
        RateScope::Sender,
        RateScope::Project,
        RateScope::Topic,
        RateScope::App,
        RateScope::Channel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RateScope::Page => "page",
            RateScope::Sender => "sender",
            RateScope::Project => "project",
            RateScope::Topic => "topic",
            RateScope::App => "app",
            RateScope::Channel => "channel",
        }
    }
}

/// `window = { hours, outside_tags, outside_templates }`: a channel that may only message a
/// contact within `hours` of the contact's last inbound message on it, and what may pass
/// outside: a Messenger tag from `outside_tags`, or (when `outside_templates`) a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub hours: u32,
    pub outside_tags: Vec<String>,
    pub outside_templates: bool,
}

impl Window {
    pub fn millis(&self) -> i64 {
        i64::from(self.hours) * 3_600_000
    }
}

/// `price = { currency, per_message, per_segment, outside_window }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Price {
    /// ISO 4217, three capital letters.
    pub currency: String,
    pub per_message: PriceTable,
    pub per_segment: PriceTable,
    pub outside_window: PriceTable,
}

/// Amounts by category, with an optional `default` for the categories not listed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PriceTable {
    pub categories: BTreeMap<Category, Micros>,
    pub default: Option<Micros>,
}

impl PriceTable {
    /// The amount for `category`, else `default`, else nothing.
    pub fn get(&self, category: Category) -> Option<Micros> {
        self.categories.get(&category).copied().or(self.default)
    }
}

/// `retry = { max_attempts, max_age, base, cap }`; each key left out falls back to the
/// config's `dispatch` setting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryPolicy {
    pub max_attempts: Option<u32>,
    pub max_age: Option<Duration>,
    pub base: Option<Duration>,
    pub cap: Option<Duration>,
}

/// Retry settings with every value resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub max_age: Duration,
    pub base: Duration,
    pub cap: Duration,
}

/// `[[budgets]]`: at most `daily_micros` spent per UTC day by a tenant or a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub scope: BudgetScope,
    pub id: String,
    pub daily_micros: Micros,
    /// Only prices in this currency count against the budget: Herald converts no currency.
    pub currency: String,
}

impl Budget {
    /// Whether this budget covers `n` (its tenant or its campaign).
    pub fn applies_to(&self, n: &Notification) -> bool {
        let of = match self.scope {
            BudgetScope::Tenant => &n.tenant,
            BudgetScope::Campaign => &n.campaign_id,
        };
        !of.is_empty() && *of == self.id
    }
}

/// `budgets[].scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BudgetScope {
    Tenant,
    Campaign,
}

impl BudgetScope {
    pub fn name(self) -> &'static str {
        match self {
            BudgetScope::Tenant => "tenant",
            BudgetScope::Campaign => "campaign",
        }
    }
}

/// `[quiet_hours]`: notifications of `categories` wait while the recipient's local time is
/// in `[start, end)`; `start` after `end` spans midnight (21:00–08:00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietHours {
    pub categories: BTreeSet<Category>,
    pub start: ClockTime,
    pub end: ClockTime,
}

impl QuietHours {
    /// Whether a local wall-clock minute of the day (0..1440) is quiet.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        let (s, e) = (self.start.minute_of_day(), self.end.minute_of_day());
        if s < e {
            s <= minute_of_day && minute_of_day < e
        } else {
            minute_of_day >= s || minute_of_day < e
        }
    }
}

/// A wall-clock time, `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime {
    pub hour: u8,
    pub minute: u8,
}

impl ClockTime {
    pub fn minute_of_day(self) -> u16 {
        u16::from(self.hour) * 60 + u16::from(self.minute)
    }

    /// Strictly `HH:MM`, 00:00 to 23:59.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 5 || b[2] != b':' {
            return None;
        }
        let two = |x: u8, y: u8| -> Option<u8> {
            (x.is_ascii_digit() && y.is_ascii_digit()).then(|| (x - b'0') * 10 + (y - b'0'))
        };
        let hour = two(b[0], b[1])?;
        let minute = two(b[3], b[4])?;
        (hour < 24 && minute < 60).then_some(Self { hour, minute })
    }
}

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

/// `[[frequency_caps]]`: at most `max` notifications of `category` per contact per `per`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrequencyCap {
    pub category: Category,
    pub max: u32,
    pub per: Duration,
}

impl Policy {
    /// Parses and validates a policy document. The error names the first wrong key.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| PolicyError::new("", e.to_string()))?;
        let raw: RawDocument = serde_path_to_error::deserialize(de).map_err(serde_error)?;
        raw.validate()
    }

    /// The rules for `channel`: the document's section, or the defaults when it has none.
    pub fn channel(&self, channel: Channel) -> &ChannelPolicy {
        self.channels.get(&channel).unwrap_or(&DEFAULT_CHANNEL)
    }

    /// The budgets that cover `n` (its tenant's, its campaign's): the caller loads what each
    /// has spent today before calling [`crate::policy::route`].
    pub fn budgets_for<'a>(&'a self, n: &'a Notification) -> impl Iterator<Item = &'a Budget> {
        self.budgets.iter().filter(move |b| b.applies_to(n))
    }

    /// The windows over which the caller counts what a contact already got of `category`
    /// (one per frequency cap on it), for [`crate::policy::RouteContext::frequency`].
    pub fn frequency_windows(&self, category: Category) -> Vec<Duration> {
        let set: BTreeSet<Duration> = self
            .frequency_caps
            .iter()
            .filter(|c| c.category == category)
            .map(|c| c.per)
            .collect();
        set.into_iter().collect()
    }
}

/// A serde error with its path, so the key named is the wrong one itself (its type, or that it
/// is unknown), with the message serde gave.
fn serde_error(e: serde_path_to_error::Error<toml::de::Error>) -> PolicyError {
    let path = e.path().to_string();
    let message = e.inner().message().to_string();
    let parent = if path == "." { String::new() } else { path };
    // The path already ends with an unknown field's name (serde_path_to_error records the key
    // before it is refused); a missing field's is not in it.
    let with = |name: &str| {
        if parent == name || parent.ends_with(&format!(".{name}")) {
            parent.clone()
        } else if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}.{name}")
        }
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, tail)) = rest.split_once('`') {
            let key = with(name);
            let expected = tail.trim_start_matches([',', ' ']);
            let message = if expected.is_empty() {
                "unknown key".to_string()
            } else {
                format!("unknown key ({expected})")
            };
            return PolicyError::new(key, message);
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((name, _)) = rest.split_once('`') {
            return PolicyError::new(with(name), "required");
        }
    }
    PolicyError::new(parent, message)
}

// ---------------------------------------------------------------------------------------------
// The document as written
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    #[serde(default)]
    routing: Option<RawRouting>,
    #[serde(default)]
    channels: BTreeMap<String, RawChannel>,
    #[serde(default)]
    budgets: Vec<RawBudget>,
    #[serde(default)]
    quiet_hours: Option<RawQuietHours>,
    #[serde(default)]
    frequency_caps: Vec<RawFrequencyCap>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    strategy: Option<String>,
    default_route: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    enabled: Option<bool>,
    categories: Option<Vec<String>>,
    rate: Option<RawRate>,
    window: Option<RawWindow>,
    price: Option<RawPrice>,
    retry: Option<RawRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    per_second: Option<f64>,
    burst: Option<i64>,
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    hours: Option<i64>,
    outside_tags: Option<Vec<String>>,
    outside_templates: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    currency: Option<String>,
    per_message: Option<BTreeMap<String, f64>>,
    per_segment: Option<BTreeMap<String, f64>>,
    outside_window: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<i64>,
    max_age: Option<String>,
    base: Option<String>,
    cap: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    scope: Option<String>,
    id: Option<String>,
    daily: Option<f64>,
    currency: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuietHours {
    categories: Option<Vec<String>>,
    start: Option<String>,
    end: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrequencyCap {
    category: Option<String>,
    max: Option<i64>,
    per: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

type Checked<T> = Result<T, PolicyError>;

fn required<'a, T>(v: &'a Option<T>, key: &str) -> Checked<&'a T> {
    v.as_ref().ok_or_else(|| PolicyError::new(key, "required"))
}

fn category_names() -> String {
    Category::ALL
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_category(s: &str, key: &str) -> Checked<Category> {
    // Exact lowercase names only: the document is compared and diffed as written.
    Category::ALL
        .iter()
        .copied()
        .find(|c| c.name() == s)
        .ok_or_else(|| {
            PolicyError::new(
                key,
                format!("unknown category {s:?} ({})", category_names()),
            )
        })
}

fn parse_channel(s: &str, key: &str) -> Checked<Channel> {
    Channel::ALL
        .iter()
        .copied()
        .find(|c| c.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Channel::ALL.iter().map(|c| c.name()).collect();
            PolicyError::new(key, format!("unknown channel {s:?} ({})", names.join(", ")))
        })
}

fn parse_currency(s: &str, key: &str) -> Checked<String> {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(s.to_string())
    } else {
        Err(PolicyError::new(
            key,
            format!("{s:?} is not a 3-letter ISO 4217 code such as \"USD\""),
        ))
    }
}

/// An amount in currency units → micros, refusing what micros cannot hold exactly.
fn parse_amount(v: f64, key: &str) -> Checked<Micros> {
    if !v.is_finite() || v < 0.0 {
        return Err(PolicyError::new(key, format!("{v} must be >= 0")));
    }
    if v > MAX_AMOUNT {
        return Err(PolicyError::new(
            key,
            format!("{v} is more than {MAX_AMOUNT}"),
        ));
    }
    let scaled = v * 1e6;
    let micros = scaled.round();
    // f64 noise (0.0079 * 1e6 = 7900.000000000001) is fine; a real fraction of a micro is a
    // typo the operator should see rather than a price silently rounded.
    if (scaled - micros).abs() > 1e-3 {
        return Err(PolicyError::new(
            key,
            format!("{v} is finer than a millionth of the currency unit"),
        ));
    }
    Ok(micros as Micros)
}

fn parse_duration(s: &str, key: &str) -> Checked<Duration> {
    let d = humantime::parse_duration(s)
        .map_err(|e| PolicyError::new(key, format!("{s:?} is not a duration like \"24h\": {e}")))?;
    if d.is_zero() {
        return Err(PolicyError::new(key, "must be > 0"));
    }
    Ok(d)
}

fn parse_table(t: &Option<BTreeMap<String, f64>>, key: &str) -> Checked<PriceTable> {
    let mut out = PriceTable::default();
    for (name, v) in t.iter().flatten() {
        let k = format!("{key}.{name}");
        let micros = parse_amount(*v, &k)?;
        if name == "default" {
            out.default = Some(micros);
        } else {
            let c = parse_category(name, &k).map_err(|e| {
                PolicyError::new(
                    e.key,
                    format!("unknown category {name:?} ({}, default)", category_names()),
                )
            })?;
            out.categories.insert(c, micros);
        }
    }
    Ok(out)
}

impl RawDocument {
    fn validate(&self) -> Checked<Policy> {
        let mut channels = BTreeMap::new();
        for (name, raw) in &self.channels {
            let key = format!("channels.{name}");
            let channel = parse_channel(name, &key)?;
            channels.insert(channel, raw.validate(&key)?);
        }
        let routing = match &self.routing {
            Some(r) => r.validate()?,
            None => Routing::default(),
        };
        if routing.strategy == Strategy::CheapestEligible {
            check_one_currency(&channels)?;
        }
        let mut budgets: Vec<Budget> = Vec::new();
        for (i, raw) in self.budgets.iter().enumerate() {
            let key = format!("budgets[{i}]");
            let b = raw.validate(&key)?;
            if budgets.iter().any(|o| o.scope == b.scope && o.id == b.id) {
                return Err(PolicyError::new(
                    format!("{key}.id"),
                    format!("a budget for {} {:?} is already set", b.scope.name(), b.id),
                ));
            }
            budgets.push(b);
        }
        let quiet_hours = match &self.quiet_hours {
            Some(q) => Some(q.validate()?),
            None => None,
        };
        let mut frequency_caps: Vec<FrequencyCap> = Vec::new();
        for (i, raw) in self.frequency_caps.iter().enumerate() {
            let key = format!("frequency_caps[{i}]");
            let c = raw.validate(&key)?;
            if frequency_caps
                .iter()
                .any(|o| o.category == c.category && o.per == c.per)
            {
                return Err(PolicyError::new(
                    format!("{key}.per"),
                    format!(
                        "a cap for {} per {} is already set",
                        c.category,
                        humantime::format_duration(c.per)
                    ),
                ));
            }
            frequency_caps.push(c);
        }
        Ok(Policy {
            version: 0,
            routing,
            channels,
            budgets,
            quiet_hours,
            frequency_caps,
        })
    }
}

/// `cheapest_eligible` compares prices across channels; Herald converts no currency, so such
/// a comparison only means something when every priced channel uses the same one.
fn check_one_currency(channels: &BTreeMap<Channel, ChannelPolicy>) -> Checked<()> {
    let mut first: Option<(Channel, &str)> = None;
    for (c, p) in channels {
        let Some(price) = &p.price else { continue };
        match first {
            None => first = Some((*c, &price.currency)),
            Some((fc, cur)) if cur != price.currency => {
                return Err(PolicyError::new(
                    format!("channels.{c}.price.currency"),
                    format!(
                        "{:?} differs from {cur:?} (channels.{fc}.price.currency); \
                         routing.strategy \"cheapest_eligible\" compares prices, so every \
                         channel must be priced in one currency",
                        price.currency
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl RawRouting {
    fn validate(&self) -> Checked<Routing> {
        let strategy = match self.strategy.as_deref() {
            None | Some("preference") => Strategy::Preference,
            Some("cheapest_eligible") => Strategy::CheapestEligible,
            Some(s) => {
                return Err(PolicyError::new(
                    "routing.strategy",
                    format!("unknown strategy {s:?} (preference, cheapest_eligible)"),
                ))
            }
        };
        let mut default_route = Vec::new();
        for (i, name) in self.default_route.iter().flatten().enumerate() {
            let key = format!("routing.default_route[{i}]");
            let c = parse_channel(name, &key)?;
            if default_route.contains(&c) {
                return Err(PolicyError::new(key, format!("{name:?} is listed twice")));
            }
            default_route.push(c);
        }
        Ok(Routing {
            strategy,
            default_route,
        })
    }
}

impl RawChannel {
    fn validate(&self, key: &str) -> Checked<ChannelPolicy> {
        let categories = match &self.categories {
            None => None,
            Some(list) => {
                let mut set = BTreeSet::new();
                for (i, name) in list.iter().enumerate() {
                    set.insert(parse_category(name, &format!("{key}.categories[{i}]"))?);
                }
                Some(set)
            }
        };
        let rate = match &self.rate {
            None => None,
            Some(r) => Some(r.validate(&format!("{key}.rate"))?),
        };
        let window = match &self.window {
            None => None,
            Some(w) => Some(w.validate(&format!("{key}.window"))?),
        };
        let price = match &self.price {
            None => None,
            Some(p) => Some(p.validate(&format!("{key}.price"))?),
        };
        if let (Some(p), None) = (&price, &window) {
            if !p.outside_window.categories.is_empty() || p.outside_window.default.is_some() {
                return Err(PolicyError::new(
                    format!("{key}.price.outside_window"),
                    format!("the channel has no window ({key}.window), so it is never outside one"),
                ));
            }
        }
        let retry = match &self.retry {
            None => None,
            Some(r) => Some(r.validate(&format!("{key}.retry"))?),
        };
        Ok(ChannelPolicy {
            enabled: self.enabled.unwrap_or(true),
            categories,
            rate,
            window,
            price,
            retry,
        })
    }
}

impl RawRate {
    fn validate(&self, key: &str) -> Checked<Rate> {
        let k = format!("{key}.per_second");
        let per_second = *required(&self.per_second, &k)?;
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(PolicyError::new(k, "must be > 0"));
        }
        let burst = match self.burst {
            None => None,
            Some(b) if b <= 0 => {
                return Err(PolicyError::new(format!("{key}.burst"), "must be > 0"))
            }
            Some(b) => Some(u32::try_from(b).map_err(|_| {
                PolicyError::new(format!("{key}.burst"), format!("{b} is too large"))
            })?),
        };
        let scope = match self.scope.as_deref() {
            None => RateScope::default(),
            Some(s) => RateScope::ALL
                .iter()
                .copied()
                .find(|x| x.name() == s)
                .ok_or_else(|| {
                    let names: Vec<&str> = RateScope::ALL.iter().map(|x| x.name()).collect();
                    PolicyError::new(
                        format!("{key}.scope"),
                        format!("unknown scope {s:?} ({})", names.join(", ")),
                    )
                })?,
        };
        Ok(Rate {
            per_second,
            burst,
            scope,
        })
    }
}

impl RawWindow {
    fn validate(&self, key: &str) -> Checked<Window> {
        let k = format!("{key}.hours");
        let hours = *required(&self.hours, &k)?;
        if hours <= 0 {
            return Err(PolicyError::new(k, "must be > 0"));
        }
        // A year: longer is no window at all, and the product in millis stays small.
        if hours > 8760 {
            return Err(PolicyError::new(k, "must be at most 8760 (a year)"));
        }
        let mut outside_tags = Vec::new();
        for (i, t) in self.outside_tags.iter().flatten().enumerate() {
            if t.trim().is_empty() {
                return Err(PolicyError::new(
                    format!("{key}.outside_tags[{i}]"),
                    "must not be empty",
                ));
            }
            outside_tags.push(t.clone());
        }
        Ok(Window {
            hours: hours as u32,
            outside_tags,
            outside_templates: self.outside_templates.unwrap_or(false),
        })
    }
}

impl RawPrice {
    fn validate(&self, key: &str) -> Checked<Price> {
        let k = format!("{key}.currency");
        let currency = parse_currency(required(&self.currency, &k)?, &k)?;
        Ok(Price {
            currency,
            per_message: parse_table(&self.per_message, &format!("{key}.per_message"))?,
            per_segment: parse_table(&self.per_segment, &format!("{key}.per_segment"))?,
            outside_window: parse_table(&self.outside_window, &format!("{key}.outside_window"))?,
        })
    }
}

impl RawRetry {
    fn validate(&self, key: &str) -> Checked<RetryPolicy> {
        let max_attempts = match self.max_attempts {
            None => None,
            Some(n) if n <= 0 => {
                return Err(PolicyError::new(
                    format!("{key}.max_attempts"),
                    "must be > 0",
                ))
            }
            Some(n) => Some(u32::try_from(n).map_err(|_| {
                PolicyError::new(format!("{key}.max_attempts"), format!("{n} is too large"))
            })?),
        };
        let dur = |v: &Option<String>, name: &str| -> Checked<Option<Duration>> {
            v.as_deref()
                .map(|s| parse_duration(s, &format!("{key}.{name}")))
                .transpose()
        };
        let max_age = dur(&self.max_age, "max_age")?;
        let base = dur(&self.base, "base")?;
        let cap = dur(&self.cap, "cap")?;
        if let (Some(b), Some(c)) = (base, cap) {
            if c < b {
                return Err(PolicyError::new(
                    format!("{key}.cap"),
                    format!("must be >= {key}.base"),
                ));
            }
        }
        Ok(RetryPolicy {
            max_attempts,
            max_age,
            base,
            cap,
        })
    }
}

impl RawBudget {
    fn validate(&self, key: &str) -> Checked<Budget> {
        let k = format!("{key}.scope");
        let scope = match required(&self.scope, &k)?.as_str() {
            "tenant" => BudgetScope::Tenant,
            "campaign" => BudgetScope::Campaign,
            s => {
                return Err(PolicyError::new(
                    k,
                    format!("unknown scope {s:?} (tenant, campaign)"),
                ))
            }
        };
        let k = format!("{key}.id");
        let id = required(&self.id, &k)?;
        if id.trim().is_empty() {
            return Err(PolicyError::new(k, "must not be empty"));
        }
        let k = format!("{key}.daily");
        let daily_micros = parse_amount(*required(&self.daily, &k)?, &k)?;
        let k = format!("{key}.currency");
        let currency = parse_currency(required(&self.currency, &k)?, &k)?;
        Ok(Budget {
            scope,
            id: id.clone(),
            daily_micros,
            currency,
        })
    }
}

impl RawQuietHours {
    fn validate(&self) -> Checked<QuietHours> {
        // Required rather than "all": holding back one-time codes all night by accident is
        // worse than asking the operator to say which categories wait.
        let list = required(&self.categories, "quiet_hours.categories")?;
        let mut categories = BTreeSet::new();
        for (i, name) in list.iter().enumerate() {
            categories.insert(parse_category(
                name,
                &format!("quiet_hours.categories[{i}]"),
            )?);
        }
        let clock = |v: &Option<String>, key: &str| -> Checked<ClockTime> {
            let s = required(v, key)?;
            ClockTime::parse(s).ok_or_else(|| PolicyError::new(key, format!("{s:?} is not HH:MM")))
        };
        let start = clock(&self.start, "quiet_hours.start")?;
        let end = clock(&self.end, "quiet_hours.end")?;
        if start == end {
            return Err(PolicyError::new(
                "quiet_hours.end",
                "must differ from quiet_hours.start",
            ));
        }
        Ok(QuietHours {
            categories,
            start,
            end,
        })
    }
}

impl RawFrequencyCap {
    fn validate(&self, key: &str) -> Checked<FrequencyCap> {
        let k = format!("{key}.category");
        let category = parse_category(required(&self.category, &k)?, &k)?;
        let k = format!("{key}.max");
        let max = *required(&self.max, &k)?;
        // 0 would suppress the whole category; that is what a channel's `categories` is for.
        if max <= 0 {
            return Err(PolicyError::new(k, "must be > 0"));
        }
        let max =
            u32::try_from(max).map_err(|_| PolicyError::new(&k, format!("{max} is too large")))?;
        let k = format!("{key}.per");
        let per = parse_duration(required(&self.per, &k)?, &k)?;
        Ok(FrequencyCap { category, max, per })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// DESIGN.md's example document, verbatim.
    pub(crate) const DESIGN_EXAMPLE: &str = r#"
[routing]
strategy = "preference"            # or "cheapest_eligible"
default_route = ["messenger", "whatsapp", "fcm", "apns", "webpush", "sms", "email"]

[channels.messenger]
enabled = true
categories = ["transactional", "utility", "marketing"]     # categories it may carry
rate = { per_second = 300, burst = 50, scope = "page" }    # scope: the platform account
window = { hours = 24, outside_tags = ["CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "ACCOUNT_UPDATE"] }
price = { currency = "USD", per_message = { marketing = 0.0, utility = 0.0 } }
retry = { max_attempts = 8, max_age = "24h", base = "1s", cap = "10m" }

[channels.whatsapp]
window = { hours = 24, outside_templates = true }          # outside the window: templates only
price = { currency = "USD", per_message = { marketing = 0.025, authentication = 0.0035 }, outside_window = { utility = 0.004 } }

[channels.sms]
rate = { per_second = 1, scope = "sender" }
price = { currency = "USD", per_segment = { default = 0.0079 } }

[[budgets]]
scope = "campaign"                 # "tenant" | "campaign"
id = "spring-sale"
daily = 500.0
currency = "USD"

[quiet_hours]                      # the recipient's local time (recipient.timezone)
categories = ["marketing"]
start = "21:00"
end = "08:00"

[[frequency_caps]]
category = "marketing"
max = 3
per = "24h"                        # per contact
"#;

    fn err(text: &str) -> PolicyError {
        Policy::parse(text).expect_err("the document must be refused")
    }

    #[test]
    fn the_design_example_parses() {
        let p = Policy::parse(DESIGN_EXAMPLE).expect("DESIGN.md's example is valid");
        assert_eq!(p.version, 0);
        assert_eq!(p.routing.strategy, Strategy::Preference);
        assert_eq!(p.routing.default_route.len(), 7);
        assert_eq!(p.routing.default_route[0], Channel::Messenger);
        let m = p.channel(Channel::Messenger);
        assert!(m.enabled);
        assert!(m.carries(Category::Marketing));
        assert!(!m.carries(Category::Authentication));
        let rate = m.rate.as_ref().expect("rate");
        assert_eq!(rate.per_second, 300.0);
        assert_eq!(rate.burst, Some(50));
        assert_eq!(rate.scope, RateScope::Page);
        let w = m.window.as_ref().expect("window");
        assert_eq!(w.hours, 24);
        assert_eq!(w.outside_tags.len(), 3);
        assert!(!w.outside_templates);
        let retry = m.retry.as_ref().expect("retry");
        assert_eq!(retry.max_attempts, Some(8));
        assert_eq!(retry.cap, Some(Duration::from_secs(600)));

        let wa = p.channel(Channel::Whatsapp);
        assert!(wa.enabled, "enabled defaults to true");
        let price = wa.price.as_ref().expect("price");
        assert_eq!(price.currency, "USD");
        assert_eq!(price.per_message.get(Category::Marketing), Some(25_000));
        assert_eq!(price.per_message.get(Category::Authentication), Some(3_500));
        assert_eq!(price.outside_window.get(Category::Utility), Some(4_000));
        assert!(wa.window.as_ref().expect("window").outside_templates);

        let sms = p.channel(Channel::Sms);
        assert_eq!(sms.price_micros(Category::Marketing, false, 3), 3 * 7_900);
        assert_eq!(sms.rate.as_ref().expect("rate").scope, RateScope::Sender);

        assert_eq!(
            p.budgets,
            vec![Budget {
                scope: BudgetScope::Campaign,
                id: "spring-sale".into(),
                daily_micros: 500_000_000,
                currency: "USD".into(),
            }]
        );
        let q = p.quiet_hours.as_ref().expect("quiet hours");
        assert_eq!(
            q.start,
            ClockTime {
                hour: 21,
                minute: 0
            }
        );
        assert_eq!(q.end.to_string(), "08:00");
        assert_eq!(
            p.frequency_caps,
            vec![FrequencyCap {
                category: Category::Marketing,
                max: 3,
                per: Duration::from_secs(24 * 3600),
            }]
        );
        assert_eq!(
            p.frequency_windows(Category::Marketing),
            vec![Duration::from_secs(86_400)]
        );
        assert!(p.frequency_windows(Category::Utility).is_empty());
    }

    #[test]
    fn whatsapp_prices_follow_the_window() {
        let p = Policy::parse(DESIGN_EXAMPLE).expect("valid");
        let wa = p.channel(Channel::Whatsapp);
        // Utility: free inside the window, outside_window.utility outside it.
        assert_eq!(wa.price_micros(Category::Utility, false, 1), 0);
        assert_eq!(wa.price_micros(Category::Utility, true, 1), 4_000);
        // Marketing: charged everywhere; outside_window has no entry, the in-window price holds.
        assert_eq!(wa.price_micros(Category::Marketing, false, 1), 25_000);
        assert_eq!(wa.price_micros(Category::Marketing, true, 1), 25_000);
        assert_eq!(wa.currency(), "USD");
    }

    #[test]
    fn missing_channels_keep_their_defaults() {
        let p = Policy::parse(DESIGN_EXAMPLE).expect("valid");
        let email = p.channel(Channel::Email);
        assert_eq!(*email, ChannelPolicy::default());
        assert!(email.enabled);
        assert!(email.window.is_none());
        assert_eq!(email.price_micros(Category::Marketing, true, 9), 0);
        assert_eq!(email.currency(), "");
        let cfg = DispatchConfig::default();
        let r = email.retry_settings(&cfg);
        assert_eq!(r.max_attempts, cfg.max_attempts);
        assert_eq!(r.base, cfg.backoff_base.0);
        assert_eq!(r.cap, cfg.backoff_cap.0);
        assert_eq!(r.max_age, cfg.max_age.0);
    }

    #[test]
    fn partial_retry_falls_back_to_the_config() {
        let p = Policy::parse("[channels.sms]\nretry = { max_attempts = 3, base = \"20m\" }\n")
            .expect("valid");
        let cfg = DispatchConfig::default();
        let r = p.channel(Channel::Sms).retry_settings(&cfg);
        assert_eq!(r.max_attempts, 3);
        assert_eq!(r.base, Duration::from_secs(1200));
        // The config's cap (10 min) is below this base: the cap rises to it.
        assert_eq!(r.cap, Duration::from_secs(1200));
        assert_eq!(r.max_age, cfg.max_age.0);
    }

    #[test]
    fn an_empty_document_is_the_default_policy() {
        assert_eq!(Policy::parse("").expect("valid"), Policy::default());
        let d = Policy::default();
        assert_eq!(d.routing.strategy, Strategy::Preference);
        assert!(d.routing.default_route.is_empty());
    }

    #[test]
    fn prices_are_micros() {
        let p = Policy::parse(
            "[channels.sms]\nprice = { currency = \"EUR\", per_message = { default = 0.1 }, per_segment = { marketing = 0.0079, default = 0.005 } }\n",
        )
        .expect("valid");
        let sms = p.channel(Channel::Sms);
        let price = sms.price.as_ref().expect("price");
        assert_eq!(price.per_message.default, Some(100_000));
        assert_eq!(price.per_segment.get(Category::Marketing), Some(7_900));
        assert_eq!(price.per_segment.get(Category::Utility), Some(5_000));
        // per_message + per_segment × segments; 0 segments count as one.
        assert_eq!(
            sms.price_micros(Category::Marketing, false, 2),
            100_000 + 15_800
        );
        assert_eq!(sms.price_micros(Category::Utility, false, 0), 105_000);
        assert_eq!(sms.currency(), "EUR");
    }

    #[test]
    fn every_error_names_its_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[channels.sms]\nrate = { per_second = 0 }\n",
                "channels.sms.rate.per_second",
                "must be > 0",
            ),
            (
                "[channels.sms]\nrate = { per_second = -3 }\n",
                "channels.sms.rate.per_second",
                "must be > 0",
            ),
            (
                "[channels.sms]\nrate = { burst = 3 }\n",
                "channels.sms.rate.per_second",
                "required",
            ),
            (
                "[channels.sms]\nrate = { per_second = 1, burst = 0 }\n",
                "channels.sms.rate.burst",
                "must be > 0",
            ),
            (
                "[channels.sms]\nrate = { per_second = 1, scope = \"galaxy\" }\n",
                "channels.sms.rate.scope",
                "unknown scope \"galaxy\"",
            ),
            (
                "[routing]\ndefault_route = [\"sms\", \"email\", \"fax\"]\n",
                "routing.default_route[2]",
                "unknown channel \"fax\"",
            ),
            (
                "[routing]\ndefault_route = [\"sms\", \"sms\"]\n",
                "routing.default_route[1]",
                "listed twice",
            ),
            (
                "[routing]\nstrategy = \"random\"\n",
                "routing.strategy",
                "unknown strategy \"random\"",
            ),
            (
                "[quiet_hours]\ncategories = [\"marketing\"]\nstart = \"25:00\"\nend = \"08:00\"\n",
                "quiet_hours.start",
                "\"25:00\" is not HH:MM",
            ),
            (
                "[quiet_hours]\ncategories = [\"marketing\"]\nstart = \"21:00\"\nend = \"8:00\"\n",
                "quiet_hours.end",
                "is not HH:MM",
            ),
            (
                "[quiet_hours]\ncategories = [\"marketing\"]\nstart = \"21:00\"\nend = \"21:00\"\n",
                "quiet_hours.end",
                "must differ",
            ),
            (
                "[quiet_hours]\nstart = \"21:00\"\nend = \"08:00\"\n",
                "quiet_hours.categories",
                "required",
            ),
            (
                "[quiet_hours]\ncategories = [\"promo\"]\nstart = \"21:00\"\nend = \"08:00\"\n",
                "quiet_hours.categories[0]",
                "unknown category \"promo\"",
            ),
            (
                "[channels.fax]\nenabled = true\n",
                "channels.fax",
                "unknown channel \"fax\"",
            ),
            (
                "[channels.sms]\nbogus = 1\n",
                "channels.sms.bogus",
                "unknown key",
            ),
            (
                "[channels.sms]\nrate = { per_second = 1, bogus = 2 }\n",
                "channels.sms.rate.bogus",
                "unknown key",
            ),
            ("version = 3\n", "version", "unknown key"),
            (
                "[[budgets]]\nscope = \"campaign\"\nid = \"x\"\ndaily = 1.0\ncurrency = \"USD\"\nextra = true\n",
                "budgets[0].extra",
                "unknown key",
            ),
            (
                "[channels.sms]\nenabled = \"yes\"\n",
                "channels.sms.enabled",
                "invalid type",
            ),
            (
                "[channels.messenger]\ncategories = [\"utility\", \"promo\"]\n",
                "channels.messenger.categories[1]",
                "unknown category \"promo\"",
            ),
            (
                "[channels.whatsapp]\nwindow = { hours = 0 }\n",
                "channels.whatsapp.window.hours",
                "must be > 0",
            ),
            (
                "[channels.whatsapp]\nwindow = { outside_templates = true }\n",
                "channels.whatsapp.window.hours",
                "required",
            ),
            (
                "[channels.messenger]\nwindow = { hours = 24, outside_tags = [\"\"] }\n",
                "channels.messenger.window.outside_tags[0]",
                "must not be empty",
            ),
            (
                "[channels.sms]\nprice = { per_segment = { default = 0.0079 } }\n",
                "channels.sms.price.currency",
                "required",
            ),
            (
                "[channels.sms]\nprice = { currency = \"usd\" }\n",
                "channels.sms.price.currency",
                "3-letter",
            ),
            (
                "[channels.sms]\nprice = { currency = \"USD\", per_segment = { promo = 0.1 } }\n",
                "channels.sms.price.per_segment.promo",
                "unknown category \"promo\"",
            ),
            (
                "[channels.sms]\nprice = { currency = \"USD\", per_message = { marketing = -0.1 } }\n",
                "channels.sms.price.per_message.marketing",
                "must be >= 0",
            ),
            (
                "[channels.sms]\nprice = { currency = \"USD\", per_message = { marketing = 0.0000001 } }\n",
                "channels.sms.price.per_message.marketing",
                "finer than a millionth",
            ),
            (
                "[channels.sms]\nprice = { currency = \"USD\", outside_window = { utility = 0.1 } }\n",
                "channels.sms.price.outside_window",
                "no window",
            ),
            (
                "[channels.sms]\nretry = { max_attempts = 0 }\n",
                "channels.sms.retry.max_attempts",
                "must be > 0",
            ),
            (
                "[channels.sms]\nretry = { max_age = \"soon\" }\n",
                "channels.sms.retry.max_age",
                "not a duration",
            ),
            (
                "[channels.sms]\nretry = { base = \"0s\" }\n",
                "channels.sms.retry.base",
                "must be > 0",
            ),
            (
                "[channels.sms]\nretry = { base = \"10m\", cap = \"1m\" }\n",
                "channels.sms.retry.cap",
                "must be >=",
            ),
            (
                "[[budgets]]\nscope = \"galaxy\"\nid = \"x\"\ndaily = 1.0\ncurrency = \"USD\"\n",
                "budgets[0].scope",
                "unknown scope",
            ),
            (
                "[[budgets]]\nscope = \"tenant\"\ndaily = 1.0\ncurrency = \"USD\"\n",
                "budgets[0].id",
                "required",
            ),
            (
                "[[budgets]]\nscope = \"tenant\"\nid = \"a\"\ndaily = -1\ncurrency = \"USD\"\n",
                "budgets[0].daily",
                "must be >= 0",
            ),
            (
                "[[budgets]]\nscope = \"tenant\"\nid = \"a\"\ndaily = 1\n",
                "budgets[0].currency",
                "required",
            ),
            (
                "[[budgets]]\nscope = \"tenant\"\nid = \"a\"\ndaily = 1\ncurrency = \"USD\"\n\
                 [[budgets]]\nscope = \"tenant\"\nid = \"a\"\ndaily = 2\ncurrency = \"USD\"\n",
                "budgets[1].id",
                "already set",
            ),
            (
                "[[frequency_caps]]\ncategory = \"marketing\"\nmax = 0\nper = \"24h\"\n",
                "frequency_caps[0].max",
                "must be > 0",
            ),
            (
                "[[frequency_caps]]\ncategory = \"marketing\"\nmax = 1\nper = \"often\"\n",
                "frequency_caps[0].per",
                "not a duration",
            ),
            (
                "[[frequency_caps]]\ncategory = \"ads\"\nmax = 1\nper = \"1h\"\n",
                "frequency_caps[0].category",
                "unknown category",
            ),
            (
                "[[frequency_caps]]\ncategory = \"marketing\"\nmax = 1\nper = \"1h\"\n\
                 [[frequency_caps]]\ncategory = \"marketing\"\nmax = 2\nper = \"60m\"\n",
                "frequency_caps[1].per",
                "already set",
            ),
            (
                "[routing]\nstrategy = \"cheapest_eligible\"\n\
                 [channels.sms]\nprice = { currency = \"USD\" }\n\
                 [channels.email]\nprice = { currency = \"EUR\" }\n",
                // Channels are checked in their enum order: SMS, then email.
                "channels.email.price.currency",
                "one currency",
            ),
        ];
        for (text, key, message) in cases {
            let e = err(text);
            assert_eq!(e.key, *key, "document:\n{text}\nerror: {e}");
            assert!(
                e.message.contains(message),
                "document:\n{text}\nerror {e:?} should say {message:?}"
            );
            assert!(e.to_string().starts_with(&format!("{key}: ")), "{e}");
        }
    }

    #[test]
    fn mixed_currencies_are_fine_under_preference() {
        Policy::parse(
            "[channels.sms]\nprice = { currency = \"USD\" }\n[channels.email]\nprice = { currency = \"EUR\" }\n",
        )
        .expect("preference does not compare prices");
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = err("[channels.sms\n");
        assert!(e.key.is_empty());
        assert!(e.message.contains("line 1"), "{e}");
    }

    #[test]
    fn clock_times_are_strict() {
        assert_eq!(
            ClockTime::parse("00:00"),
            Some(ClockTime { hour: 0, minute: 0 })
        );
        assert_eq!(
            ClockTime::parse("23:59"),
            Some(ClockTime {
                hour: 23,
                minute: 59
            })
        );
        for bad in [
            "24:00", "12:60", "1:00", "12:0", "12-00", "ab:cd", "", "12:000", "+1:00",
        ] {
            assert_eq!(ClockTime::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn quiet_hours_may_span_midnight() {
        let q = |s: &str, e: &str| QuietHours {
            categories: BTreeSet::new(),
            start: ClockTime::parse(s).expect("start"),
            end: ClockTime::parse(e).expect("end"),
        };
        let night = q("21:00", "08:00");
        assert!(night.contains(21 * 60));
        assert!(night.contains(23 * 60 + 59));
        assert!(night.contains(0));
        assert!(night.contains(7 * 60 + 59));
        assert!(!night.contains(8 * 60));
        assert!(!night.contains(20 * 60 + 59));
        let lunch = q("12:00", "13:30");
        assert!(lunch.contains(12 * 60));
        assert!(!lunch.contains(13 * 60 + 30));
        assert!(!lunch.contains(11 * 60 + 59));
    }

    #[test]
    fn budgets_apply_by_tenant_and_campaign() {
        let b = |scope, id: &str| Budget {
            scope,
            id: id.into(),
            daily_micros: 1,
            currency: "USD".into(),
        };
        let n = crate::policy::decide::tests::notification();
        assert!(b(BudgetScope::Tenant, &n.tenant).applies_to(&n));
        assert!(b(BudgetScope::Campaign, &n.campaign_id).applies_to(&n));
        assert!(!b(BudgetScope::Campaign, &n.tenant).applies_to(&n));
        let mut anonymous = n.clone();
        anonymous.campaign_id.clear();
        assert!(!b(BudgetScope::Campaign, "").applies_to(&anonymous));
    }
}
