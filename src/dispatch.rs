//! Dispatch workers: claim a batch from a ready lane, call the channel, classify the answer,
//! then ack / retry later / fall back / dead-letter in one store round trip per batch. Also the
//! promoter (due scheduled sends and retries → ready). The only place that finishes entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};

use crate::channels::{sms, Channels, SendContext};
use crate::config::{DispatchConfig, HumanDuration};
use crate::live::{Live, Snapshot};
use crate::model::{
    now_ms, AttemptRecord, Channel, ContactChange, ContactKey, ContactState, ErrorClass, Millis,
    Notification, Outcome, Priority, Status,
};
use crate::policy::{self, Decision, Policy, RouteContext};
use crate::ratelimit::{Circuit, Limits};
use crate::store::{Claimed, Completion, Counter, Disposition, Store, StoreError};
use crate::telemetry;

pub struct Dispatcher {
    store: Arc<dyn Store>,
    channels: Channels,
    cfg: DispatchConfig,
    /// Unique per process: names this process's consumers in the groups.
    instance: String,
    /// Channels not claiming until then (throttled, or paused after an auth error).
    holds: Mutex<HashMap<Channel, Instant>>,
    /// Operator pauses (and the policy) shared by every instance.
    live: Arc<Live>,
    /// This instance's share of each channel's rate.
    limits: Limits,
    /// Per channel: opens on a storm of R or A answers, probes before closing.
    circuits: Mutex<HashMap<Channel, Circuit>>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        channels: Channels,
        cfg: DispatchConfig,
        live: Arc<Live>,
    ) -> Self {
        Self {
            store,
            channels,
            cfg,
            instance: ulid::Ulid::new().to_string(),
            holds: Mutex::new(HashMap::new()),
            live,
            limits: Limits::new(),
            circuits: Mutex::new(HashMap::new()),
        }
    }

    /// Starts one worker per (channel, shard) and the promoter; they stop when `stop` fires,
    /// after finishing the batch in hand.
    pub fn spawn(self: Arc<Self>, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        for channel in self.channels.kinds() {
            for shard in 0..self.store.shards() {
                // `workers` per queue take every lane (HIGH first), one more only HIGH, so a
                // HIGH notification is claimed at once even while the others hold batches of
                // BULK ones waiting for the rate limiter or the platform.
                let lanes = std::iter::repeat_n(Priority::Bulk, self.cfg.workers.max(1))
                    .chain([Priority::High]);
                for (n, last) in lanes.enumerate() {
                    let me = self.clone();
                    let stop = stop.clone();
                    let work = me.worker(channel, shard, n, last, stop);
                    handles.push(if last == Priority::High {
                        tokio::spawn(crate::store::high_lane(work))
                    } else {
                        tokio::spawn(work)
                    });
                }
            }
        }
        let me = self.clone();
        handles.push(tokio::spawn(async move { me.promoter(stop).await }));
        info!(
            instance = %self.instance,
            channels = ?self.channels.kinds(),
            shards = self.store.shards(),
            "dispatch started"
        );
        handles
    }

    async fn worker(
        self: Arc<Self>,
        channel: Channel,
        shard: u16,
        n: usize,
        last: Priority,
        stop: CancellationToken,
    ) {
        let consumer = format!(
            "{}-{}-{}-{}{}",
            self.instance,
            channel.name(),
            shard,
            last.name(),
            n
        );
        let claim_timeout = self.cfg.claim_timeout.0;
        // Look for abandoned entries (a dead worker's) a few times per takeover period.
        let reclaim_every = claim_timeout / 4;
        let mut last_reclaim: Option<Instant> = None;
        let mut failures: u32 = 0;
        while !stop.is_cancelled() {
            if self.live.is_paused(channel) {
                // An operator paused it: what is queued waits, nothing is claimed.
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(self.cfg.poll_interval.0.max(Duration::from_millis(100))) => {}
                }
                continue;
            }
            let Some(allowed) = self.circuit_allowance(channel) else {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            };
            if let Some(wait) = self.held_for(channel) {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
                }
                continue;
            }
            let reclaim = match last_reclaim {
                Some(t) if t.elapsed() < reclaim_every => None,
                _ => {
                    last_reclaim = Some(Instant::now());
                    Some(claim_timeout)
                }
            };
            let asked = Instant::now();
            let claimed = self
                .store
                .claim(
                    channel,
                    shard,
                    &consumer,
                    self.claim_size(channel).min(allowed),
                    last,
                    reclaim,
                    now_ms(),
                )
                .await;
            match claimed {
                Ok(batch) if batch.is_empty() => {
                    failures = 0;
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = self.store.signal().wait(channel, self.cfg.poll_interval.0) => {}
                    }
                }
                Ok(batch) => {
                    failures = 0;
                    self.run_batch(channel, shard, &consumer, batch, asked, &stop)
                        .await;
                }
                Err(e) => {
                    telemetry::store_error("claim");
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(50) {
                        warn!(channel = %channel, shard, error = %e, "claim failed; retrying");
                    }
                    let pause = backoff_step(failures);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        debug!(channel = %channel, shard, "worker stopped");
    }

    #[instrument(skip_all, fields(channel = %channel, shard, size = batch.len()))]
    async fn run_batch(
        &self,
        channel: Channel,
        shard: u16,
        consumer: &str,
        batch: Vec<Claimed>,
        claimed_at: Instant,
        stop: &CancellationToken,
    ) {
        let snap = self.live.snapshot();
        // Everything the policy needs, loaded for the whole batch: contact state (dead, opted
        // out, last inbound) of every address on every channel still ahead in each route,
        // budgets spent today, and recent sends for frequency caps.
        let items: Vec<(&Notification, usize)> = batch
            .iter()
            .map(|c| (&c.notification, c.route_index))
            .collect();
        let usage = match load_usage(&*self.store, &items, &snap.parsed).await {
            Ok(u) => u,
            Err(e) => {
                // Without it opted-out addresses could be messaged or budgets overspent: send
                // nothing; the entries stay claimed and are taken over once the store is back.
                telemetry::store_error("usage");
                warn!(error = %e, "reading contact state and usage failed; batch left for takeover");
                return;
            }
        };
        let results: Vec<(Completion, Vec<(ContactKey, ContactChange)>)> =
            futures::stream::iter(batch)
                .map(|c| self.attempt(channel, c, claimed_at, &usage, &snap))
                .buffer_unordered(self.cfg.concurrency)
                .collect()
                .await;
        let mut done = Vec::with_capacity(results.len());
        let mut changes = Vec::new();
        for (c, ch) in results {
            done.push(c);
            changes.extend(ch);
        }
        // What platforms said about addresses goes first, so that once a notification shows
        // its end state, a dead or opted-out address is already suppressed.
        if !changes.is_empty() {
            if let Err(e) = self.store.update_contacts(changes).await {
                telemetry::store_error("update_contacts");
                warn!(error = %e, "recording dead or opted-out addresses failed");
            }
        }
        // The sends happened: record them. While the store is away keep trying (the entries
        // stay claimed); past the takeover time another worker owns them, so stop.
        let started = Instant::now();
        let mut failures = 0;
        loop {
            match self
                .store
                .finish(channel, shard, consumer, &done, now_ms())
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    telemetry::store_error("finish");
                    failures += 1;
                    if failures == 1 {
                        warn!(error = %e, "finishing a batch failed; retrying");
                    }
                    if started.elapsed() > self.cfg.claim_timeout.0 {
                        warn!(
                            error = %e,
                            "gave up finishing a batch; its entries will be taken over and sent again"
                        );
                        return;
                    }
                    if stop.is_cancelled() && failures > 3 {
                        return;
                    }
                    tokio::time::sleep(backoff_step(failures)).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        channel: Channel,
        c: Claimed,
        claimed_at: Instant,
        usage: &Usage,
        snap: &Snapshot,
    ) -> (Completion, Vec<(ContactKey, ContactChange)>) {
        let states = &usage.contacts;
        let n = &c.notification;
        let now = now_ms();
        let base = |disposition, attempt| Completion {
            entry: c.entry.clone(),
            id: n.id.clone(),
            channel,
            attempt,
            disposition,
        };
        if n.is_expired(now) {
            return (base(Disposition::Final(Status::Expired), None), Vec::new());
        }
        let Some(sender) = self.channels.get(channel) else {
            // Claimed only for channels this process has; put it back if that ever changes.
            return (base(Disposition::Requeue, None), Vec::new());
        };
        // The policy in force decides, at this moment, with what was loaded for the batch.
        let policy = &snap.parsed;
        let ctx = route_context(&c, usage, snap, policy);
        let (price, currency) = match policy::route(n, &ctx, policy, now) {
            Decision::Send {
                route_index,
                channel: chosen,
                price_micros,
                currency,
                ..
            } if route_index == c.route_index && chosen == channel => (price_micros, currency),
            Decision::Send {
                route_index,
                channel: chosen,
                ..
            } => {
                // Another channel of the route is the one to use now: queue it there.
                telemetry::rerouted(channel);
                let d = Disposition::Fallback {
                    route_index,
                    channel: chosen,
                };
                return (base(d, None), Vec::new());
            }
            Decision::Wait { until, reason } => {
                let d = Disposition::Retry {
                    due: until,
                    class: ErrorClass::Policy,
                    code: format!("deferred:{}", reason.label()),
                };
                return (base(d, None), Vec::new());
            }
            Decision::Suppress { reason } => {
                telemetry::suppressed(channel);
                return (base(Disposition::Final(reason.status()), None), Vec::new());
            }
            Decision::NoEligibleChannel { skipped } => {
                let why: Vec<String> = skipped
                    .iter()
                    .map(|s| format!("{}: {}", s.channel, s.reason.label()))
                    .collect();
                let d = Disposition::Failed {
                    class: ErrorClass::Policy,
                    code: "no_eligible_channel".into(),
                    message: why.join(", "),
                    dead_letter: false,
                };
                return (base(d, None), Vec::new());
            }
        };
        let state = |a: &String| {
            states
                .get(&ContactKey::new(channel, a.clone()))
                .copied()
                .unwrap_or_default()
        };
        let all = n.recipient.addresses(channel);
        // This instance's share of the channel's rate (the policy's, adapted to throttling).
        if policy.channel(channel).rate.is_some() {
            self.limits.set_instances(self.live.instances());
            // Sends take their turn in order, HIGH first, and each takes a cell of the rate
            // in force when its turn comes (a policy cut applies to those already waiting).
            let high = n.priority == Priority::High;
            self.limits
                .gate(channel)
                .pass(high, || {
                    let snap = self.live.snapshot();
                    let rate = snap.parsed.channel(channel).rate.as_ref()?;
                    self.limits
                        .limiter(channel, Some(rate.per_second), rate.burst)
                })
                .await;
            let share =
                self.limits.current(channel).unwrap_or(0.0) / f64::from(self.live.instances());
            self.live.report(channel, |s| s.rate_per_second = share);
            // Past this point another worker may take the entry over before our send could
            // finish: give it back to the queue rather than risk sending it twice.
            let deadline = self
                .cfg
                .claim_timeout
                .0
                .saturating_sub(self.cfg.request_timeout.0);
            if claimed_at.elapsed() >= deadline {
                telemetry::requeued(channel);
                return (base(Disposition::Requeue, None), Vec::new());
            }
        }
        let live: Vec<String> = all
            .iter()
            .filter(|a| !state(a).suppressed())
            .cloned()
            .collect();
        if live.is_empty() {
            // Every address here is dead or opted out: no platform call.
            telemetry::suppressed(channel);
            let d = next_channel(&c).unwrap_or(Disposition::Final(Status::Suppressed));
            return (base(d, None), Vec::new());
        }
        let last_inbound = all.iter().map(|a| state(a).last_inbound).max().unwrap_or(0);
        let number = c.attempts + 1;
        let ctx = SendContext {
            attempt: number,
            addresses: &live,
            last_inbound,
            now,
        };
        let t0 = Instant::now();
        let delivery = sender.send(n, &ctx).await;
        let outcome = &delivery.outcome;
        telemetry::dispatched(channel, outcome.label(), t0.elapsed());
        let finished = now_ms();
        let detail = outcome.detail().cloned().unwrap_or_default();
        let attempt = AttemptRecord {
            number,
            channel,
            started_at: now,
            finished_at: finished,
            outcome: outcome.label().to_string(),
            error_class: outcome.class(),
            error_code: detail.code.clone(),
            error_message: detail.message.clone(),
            provider_id: match outcome {
                Outcome::Sent { provider_id } => provider_id.clone(),
                _ => String::new(),
            },
            meta: delivery.meta.clone(),
        };
        // What the platform taught us about the addresses.
        let mut changes: Vec<(ContactKey, ContactChange)> = Vec::new();
        if channel != Channel::Sandbox {
            let mut dead = delivery.dead.clone();
            if dead.is_empty() && matches!(outcome, Outcome::DeadAddress { .. }) && live.len() == 1
            {
                dead = live.clone();
            }
            changes.extend(
                dead.into_iter()
                    .map(|a| (ContactKey::new(channel, a), ContactChange::Dead)),
            );
            changes.extend(
                delivery
                    .opted_out
                    .iter()
                    .map(|a| (ContactKey::new(channel, a.clone()), ContactChange::OptOut)),
            );
        }
        self.circuit_record(
            channel,
            matches!(
                outcome,
                Outcome::Retry { .. } | Outcome::Misconfigured { .. }
            ),
        );
        if let Some(p) = delivery
            .meta
            .get(crate::channels::USAGE_PERCENT)
            .and_then(|v| v.parse::<u8>().ok())
        {
            telemetry::platform_usage(channel, p);
            self.limits.usage(channel, p);
        }
        match outcome {
            Outcome::Misconfigured { detail } => {
                self.hold(channel, self.cfg.auth_pause.0, "misconfigured");
                error!(
                    channel = %channel,
                    code = %detail.code,
                    pause = ?self.cfg.auth_pause.0,
                    "platform refused our credentials or configuration; channel paused"
                );
            }
            Outcome::Throttled { after, .. } => {
                self.limits.throttled(channel);
                if let Some(d) = after {
                    self.hold(channel, *d, "throttled");
                }
            }
            _ => {}
        }
        let retry = policy.channel(channel).retry_settings(&self.cfg);
        let cfg = DispatchConfig {
            max_attempts: retry.max_attempts,
            max_age: HumanDuration(retry.max_age),
            backoff_base: HumanDuration(retry.base),
            backoff_cap: HumanDuration(retry.cap),
            ..self.cfg.clone()
        };
        let mut disposition = decide(&cfg, &c, outcome, sender.accept_is_delivery(), finished);
        if let Disposition::Sent {
            watermark,
            cost_micros,
            currency: cur,
            counters,
            ..
        } = &mut disposition
        {
            if sender.watermark_receipts() {
                *watermark = live.first().map(|a| ContactKey::new(channel, a.clone()));
            }
            *cost_micros = price;
            *cur = currency.clone();
            if price != 0 {
                telemetry::cost(channel, n.category, &currency, price);
            }
            counters.extend(
                policy
                    .budgets_for(n)
                    .filter(|b| b.currency == currency)
                    .map(|b| Counter::Budget(budget_key(b, &usage.day))),
            );
            if !policy.frequency_windows(n.category).is_empty() {
                counters.push(Counter::Recent(recent_key(n)));
            }
        }
        match &disposition {
            Disposition::Retry { .. } => telemetry::retry(channel),
            Disposition::Fallback { .. } => telemetry::fallback(channel),
            Disposition::Failed {
                dead_letter: true, ..
            } => telemetry::dead_letter(channel),
            _ => {}
        }
        (base(disposition, Some(attempt)), changes)
    }

    /// What the channel's circuit lets a worker claim now (None: open, claim nothing).
    fn circuit_allowance(&self, channel: Channel) -> Option<usize> {
        let mut all = self.circuits.lock().ok()?;
        all.entry(channel)
            .or_insert_with(|| Circuit::new(self.cfg.circuit_failures, self.cfg.circuit_open.0))
            .allowance(Instant::now())
    }

    fn circuit_record(&self, channel: Channel, failure: bool) {
        let Ok(mut all) = self.circuits.lock() else {
            return;
        };
        let c = all
            .entry(channel)
            .or_insert_with(|| Circuit::new(self.cfg.circuit_failures, self.cfg.circuit_open.0));
        let was = c.label();
        if c.record(failure, Instant::now()) {
            warn!(channel = %channel, open_for = ?c.open_for, "circuit opened: a storm of transient or auth failures");
        }
        if c.label() != was {
            telemetry::circuit(channel, c.label());
            let label = c.label();
            self.live.report(channel, |s| s.circuit = label);
        }
    }

    /// How many entries one worker claims: the batch size, or under a rate limit about one
    /// second of this instance's share split over its workers — entries a worker holds while
    /// it waits for the limiter would otherwise outlive the takeover time and be sent twice,
    /// and other instances would sit idle while one holds the backlog.
    fn claim_size(&self, channel: Channel) -> usize {
        let snap = self.live.snapshot();
        let Some(rate) = &snap.parsed.channel(channel).rate else {
            return self.cfg.batch_size;
        };
        let global = self
            .limits
            .current(channel)
            .unwrap_or(rate.per_second)
            .min(rate.per_second);
        let workers = f64::from(self.store.shards().max(1)) * self.cfg.workers.max(1) as f64;
        let per_worker = global / f64::from(self.live.instances()) / workers;
        (per_worker.ceil() as usize).clamp(1, self.cfg.batch_size)
    }

    /// Stops claiming for `channel` for `d` (throttling or a credentials problem): what is
    /// queued waits instead of burning its attempts.
    fn hold(&self, channel: Channel, d: Duration, why: &'static str) {
        let until = Instant::now() + d.min(Duration::from_secs(3600));
        if let Ok(mut h) = self.holds.lock() {
            let e = h.entry(channel).or_insert(until);
            if *e < until {
                *e = until;
            }
        }
        telemetry::channel_held(channel, why, true);
        self.live.report(channel, |s| s.held = true);
    }

    /// How long `channel` is still held, if it is.
    fn held_for(&self, channel: Channel) -> Option<Duration> {
        let mut h = self.holds.lock().ok()?;
        let until = *h.get(&channel)?;
        let now = Instant::now();
        if until <= now {
            h.remove(&channel);
            self.live.report(channel, |s| s.held = false);
            telemetry::channel_held(channel, "misconfigured", false);
            telemetry::channel_held(channel, "throttled", false);
            return None;
        }
        Some(until - now)
    }

    async fn promoter(self: Arc<Self>, stop: CancellationToken) {
        let mut failures = 0;
        while !stop.is_cancelled() {
            let limit = 1000;
            let pause = match self.store.promote_due(now_ms(), limit).await {
                Ok(n) => {
                    failures = 0;
                    if n > 0 {
                        telemetry::promoted(n);
                    }
                    if n >= limit {
                        Duration::ZERO
                    } else {
                        self.cfg.promote_interval.0
                    }
                }
                Err(e) => {
                    telemetry::store_error("promote");
                    failures += 1;
                    if failures == 1 {
                        warn!(error = %e, "promoting due notifications failed; retrying");
                    }
                    backoff_step(failures)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// What the policy needs for a batch, loaded in one go.
pub(crate) struct Usage {
    contacts: HashMap<ContactKey, ContactState>,
    spent: HashMap<String, i64>,
    /// (who and category, cap window) → sends within it.
    recent: HashMap<(String, Duration), u64>,
    /// The UTC day budgets are counted for (`YYYYMMDD`).
    day: String,
}

impl Usage {
    /// Counts a decided send against the budgets and frequency caps it uses, as finishing it
    /// would: for predicting what a run of decisions does.
    pub(crate) fn charge(&mut self, n: &Notification, d: &Decision, policy: &Policy) {
        let Decision::Send {
            price_micros,
            currency,
            ..
        } = d
        else {
            return;
        };
        for b in policy.budgets_for(n).filter(|b| &b.currency == currency) {
            *self.spent.entry(budget_key(b, &self.day)).or_insert(0) += price_micros;
        }
        for w in policy.frequency_windows(n.category) {
            *self.recent.entry((recent_key(n), w)).or_insert(0) += 1;
        }
    }
}

/// `YYYYMMDD` of the UTC day `ms` falls in.
fn utc_day(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    jiff::Timestamp::from_second(secs)
        .map(|t| t.strftime("%Y%m%d").to_string())
        .unwrap_or_else(|_| "19700101".into())
}

/// The store key of a budget's spend on `day`.
fn budget_key(b: &policy::Budget, day: &str) -> String {
    format!("{}:{}:{day}", b.scope.name(), b.id)
}

/// Who a frequency cap counts for: the contact id, else the first address of the route.
fn recent_key(n: &Notification) -> String {
    let who = if n.recipient.contact_id.is_empty() {
        n.route
            .iter()
            .find_map(|ch| n.recipient.addresses(*ch).into_iter().next())
            .unwrap_or_default()
    } else {
        n.recipient.contact_id.clone()
    };
    format!("{who}:{}", n.category.name())
}

/// Loads, in three round trips at most, what the policy decides with for `items`
/// (notification, index in its route of the channel it is queued for).
pub(crate) async fn load_usage(
    store: &dyn Store,
    items: &[(&Notification, usize)],
    policy: &Policy,
) -> Result<Usage, StoreError> {
    let mut keys = Vec::new();
    for (n, route_index) in items {
        for ch in n.route.iter().skip(*route_index) {
            if *ch == Channel::Sandbox {
                continue;
            }
            keys.extend(
                n.recipient
                    .addresses(*ch)
                    .into_iter()
                    .map(|a| ContactKey::new(*ch, a)),
            );
        }
    }
    keys.sort();
    keys.dedup();
    let now = now_ms();
    let day = utc_day(now);
    let mut budget_keys: Vec<String> = items
        .iter()
        .flat_map(|(n, _)| policy.budgets_for(n).map(|b| budget_key(b, &day)))
        .collect();
    budget_keys.sort();
    budget_keys.dedup();
    let mut recent_keys: Vec<(String, Duration)> = Vec::new();
    for (n, _) in items {
        for w in policy.frequency_windows(n.category) {
            recent_keys.push((recent_key(n), w));
        }
    }
    recent_keys.sort();
    recent_keys.dedup();
    let since: Vec<(String, Millis)> = recent_keys
        .iter()
        .map(|(k, w)| (k.clone(), now - w.as_millis() as Millis))
        .collect();
    // The three reads are independent: in flight together, one wait for the store, not three.
    let (states, spent, recent) = futures::try_join!(
        store.contacts(&keys),
        store.budget_spent(&budget_keys),
        store.recent_sends(&since)
    )?;
    Ok(Usage {
        contacts: keys.into_iter().zip(states).collect(),
        spent: budget_keys.into_iter().zip(spent).collect(),
        recent: recent_keys.into_iter().zip(recent).collect(),
        day,
    })
}

/// The policy's view of one claimed notification.
fn route_context(c: &Claimed, usage: &Usage, snap: &Snapshot, policy: &Policy) -> RouteContext {
    let paused = snap.paused.keys().copied().collect();
    route_context_for(&c.notification, c.route_index, usage, paused, policy)
}

/// The policy's view of `n`, queued for the channel at `route_index` of its route.
pub(crate) fn route_context_for(
    n: &Notification,
    route_index: usize,
    usage: &Usage,
    paused: std::collections::BTreeSet<Channel>,
    policy: &Policy,
) -> RouteContext {
    let mut ctx = RouteContext {
        start_index: route_index,
        paused,
        ..Default::default()
    };
    // Only SMS is priced per segment: counted when SMS is still ahead in the route.
    if n.route.iter().skip(route_index).any(|c| *c == Channel::Sms) {
        ctx.sms_segments = sms::count_segments(&sms::message_text(n)).segments as u32;
    }
    for ch in n.route.iter().skip(route_index) {
        let states = n.recipient.addresses(*ch).into_iter().map(|a| {
            usage
                .contacts
                .get(&ContactKey::new(*ch, a))
                .copied()
                .unwrap_or_default()
        });
        ctx.contacts
            .insert(*ch, policy::combine_contact_states(states));
    }
    for b in policy.budgets_for(n) {
        let spent = usage
            .spent
            .get(&budget_key(b, &usage.day))
            .copied()
            .unwrap_or(0);
        ctx.budget_spent
            .insert(policy::BudgetKey::new(b.scope, b.id.clone()), spent);
    }
    let who = recent_key(n);
    for w in policy.frequency_windows(n.category) {
        let count = usage.recent.get(&(who.clone(), w)).copied().unwrap_or(0);
        ctx.frequency
            .insert(w, u32::try_from(count).unwrap_or(u32::MAX));
    }
    ctx
}

/// Pause after `n` consecutive store failures: 50 ms doubling to 2 s.
fn backoff_step(n: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << n.min(6))).min(Duration::from_secs(2))
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base · 2^(attempt-1))].
pub fn backoff(cfg: &DispatchConfig, attempt: u32) -> Duration {
    let base = cfg.backoff_base.0.as_millis() as u64;
    let cap = cfg.backoff_cap.0.as_millis() as u64;
    let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let ceiling = exp.min(cap).max(1);
    Duration::from_millis(rand::rng().random_range(0..=ceiling))
}

/// Queue on the next channel of the route, if there is one.
fn next_channel(c: &Claimed) -> Option<Disposition> {
    let i = c.route_index + 1;
    c.notification.route.get(i).map(|ch| Disposition::Fallback {
        route_index: i,
        channel: *ch,
    })
}

/// What to do with a notification after its channel answered `outcome`.
pub fn decide(
    cfg: &DispatchConfig,
    c: &Claimed,
    outcome: &Outcome,
    accept_is_delivery: bool,
    now: Millis,
) -> Disposition {
    let next = || next_channel(c);
    let give_up = |dead_letter: bool| {
        let d = outcome.detail().cloned().unwrap_or_default();
        next().unwrap_or(Disposition::Failed {
            class: outcome
                .class()
                .unwrap_or(crate::model::ErrorClass::Transient),
            code: d.code,
            message: d.message,
            dead_letter,
        })
    };
    match outcome {
        Outcome::Sent { provider_id } => Disposition::Sent {
            status: if accept_is_delivery {
                Status::Delivered
            } else {
                Status::Sent
            },
            provider_id: provider_id.clone(),
            cost_micros: 0,
            currency: String::new(),
            watermark: None,
            counters: Vec::new(),
        },
        Outcome::Retry { after, .. } | Outcome::Throttled { after, .. } => {
            retry_or_give_up(cfg, c, *after, outcome, now).unwrap_or_else(|| give_up(true))
        }
        // Auth / configuration: retry later without burning through the route quickly.
        Outcome::Misconfigured { .. } => retry_or_give_up(
            cfg,
            c,
            Some(cfg.backoff_cap.0.min(Duration::from_secs(60))),
            outcome,
            now,
        )
        .unwrap_or_else(|| give_up(true)),
        Outcome::DeadAddress { .. } | Outcome::PolicyRejected { .. } => give_up(false),
        Outcome::BadPayload { .. } => give_up(true),
    }
}

fn retry_or_give_up(
    cfg: &DispatchConfig,
    c: &Claimed,
    after: Option<Duration>,
    outcome: &Outcome,
    now: Millis,
) -> Option<Disposition> {
    let n = &c.notification;
    let tries = c.channel_attempts + 1;
    let age = Duration::from_millis((now - n.created_at).max(0) as u64);
    // Being throttled says nothing about the notification: it does not use up its attempts
    // (the rate comes down instead), only its age limits it.
    let throttled = matches!(outcome, Outcome::Throttled { .. });
    if (!throttled && tries >= cfg.max_attempts) || age >= cfg.max_age.0 {
        return None;
    }
    let wait = backoff(cfg, tries.min(cfg.max_attempts)).max(after.unwrap_or(Duration::ZERO));
    let due = now + wait.as_millis() as Millis;
    if n.expire_at > 0 && due >= n.expire_at {
        return Some(Disposition::Final(Status::Expired));
    }
    let d = outcome.detail().cloned().unwrap_or_default();
    Some(Disposition::Retry {
        due,
        class: outcome
            .class()
            .unwrap_or(crate::model::ErrorClass::Transient),
        code: d.code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use crate::model::{Content, Detail, ErrorClass, Notification, Priority, Recipient};
    use crate::store::EntryRef;

    fn claimed(route: Vec<Channel>, route_index: usize, channel_attempts: u32) -> Claimed {
        Claimed {
            entry: EntryRef {
                priority: Priority::Normal,
                entry_id: "1-0".into(),
            },
            notification: Notification {
                id: crate::model::make_id(0),
                recipient: Recipient::default(),
                route,
                content: Content::default(),
                created_at: 1_000,
                ..Default::default()
            },
            route_index,
            attempts: channel_attempts,
            channel_attempts,
        }
    }

    fn retry(after: Option<Duration>) -> Outcome {
        Outcome::Retry {
            after,
            detail: Detail::new("http_503", "busy"),
        }
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let cfg = DispatchConfig {
            backoff_base: HumanDuration(Duration::from_millis(100)),
            backoff_cap: HumanDuration(Duration::from_millis(1000)),
            ..Default::default()
        };
        for attempt in 1..20 {
            let ceiling = (100u64 << (attempt - 1).min(30)).min(1000);
            for _ in 0..50 {
                assert!(backoff(&cfg, attempt) <= Duration::from_millis(ceiling));
            }
        }
    }

    #[test]
    fn retry_after_is_honoured() {
        let cfg = DispatchConfig::default();
        let c = claimed(vec![Channel::Webhook], 0, 0);
        let d = decide(&cfg, &c, &retry(Some(Duration::from_secs(7))), false, 2_000);
        match d {
            Disposition::Retry { due, class, .. } => {
                assert!(due >= 9_000, "due {due}");
                assert_eq!(class, ErrorClass::Transient);
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn exhausted_retries_fall_back_then_dead_letter() {
        let cfg = DispatchConfig {
            max_attempts: 3,
            ..Default::default()
        };
        let c = claimed(vec![Channel::Webhook, Channel::Sandbox], 0, 2);
        assert_eq!(
            decide(&cfg, &c, &retry(None), false, 2_000),
            Disposition::Fallback {
                route_index: 1,
                channel: Channel::Sandbox
            }
        );
        let c = claimed(vec![Channel::Webhook], 0, 2);
        assert!(matches!(
            decide(&cfg, &c, &retry(None), false, 2_000),
            Disposition::Failed {
                dead_letter: true,
                ..
            }
        ));
    }

    #[test]
    fn throttling_does_not_use_up_attempts() {
        let cfg = DispatchConfig {
            max_attempts: 3,
            ..Default::default()
        };
        let c = claimed(vec![Channel::Webhook], 0, 10);
        let t = Outcome::Throttled {
            after: None,
            detail: Detail::new("20429", "too many requests"),
        };
        assert!(matches!(
            decide(&cfg, &c, &t, false, 2_000),
            Disposition::Retry { .. }
        ));
        // Past max_age it gives up all the same.
        let old = DispatchConfig {
            max_age: HumanDuration(Duration::from_millis(500)),
            ..cfg
        };
        assert!(matches!(
            decide(&old, &c, &t, false, 2_000),
            Disposition::Failed { .. }
        ));
    }

    #[test]
    fn dead_address_falls_back_or_fails_without_dead_letter() {
        let cfg = DispatchConfig::default();
        let dead = Outcome::DeadAddress {
            detail: Detail::new("http_410", "gone"),
        };
        let c = claimed(vec![Channel::Webhook, Channel::Sandbox], 0, 0);
        assert!(matches!(
            decide(&cfg, &c, &dead, false, 2_000),
            Disposition::Fallback { .. }
        ));
        let c = claimed(vec![Channel::Webhook, Channel::Sandbox], 1, 0);
        assert!(matches!(
            decide(&cfg, &c, &dead, false, 2_000),
            Disposition::Failed {
                dead_letter: false,
                ..
            }
        ));
    }

    #[test]
    fn a_retry_past_expiry_expires() {
        let cfg = DispatchConfig::default();
        let mut c = claimed(vec![Channel::Webhook], 0, 0);
        c.notification.expire_at = 3_000;
        let d = decide(&cfg, &c, &retry(Some(Duration::from_secs(5))), false, 2_000);
        assert_eq!(d, Disposition::Final(Status::Expired));
    }

    #[test]
    fn acceptance_is_delivery_for_webhooks() {
        let cfg = DispatchConfig::default();
        let c = claimed(vec![Channel::Webhook], 0, 0);
        let sent = Outcome::Sent {
            provider_id: "p".into(),
        };
        assert!(matches!(
            decide(&cfg, &c, &sent, true, 0),
            Disposition::Sent {
                status: Status::Delivered,
                ..
            }
        ));
        assert!(matches!(
            decide(&cfg, &c, &sent, false, 0),
            Disposition::Sent {
                status: Status::Sent,
                ..
            }
        ));
    }
}
