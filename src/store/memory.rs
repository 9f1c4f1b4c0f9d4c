//! `MemoryStore`: the embedded default for `herald serve` with no Redis. Same semantics as
//! `RedisStore` (one conformance suite runs against both), held in one process: not durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    receipt_for, CampaignStats, CancelOutcome, CancelTarget, Claimed, Completion, DeadLetter,
    DeadLetterPage, Disposition, Enqueued, EntryRef, NewNotification, NotificationView, QueueDepth,
    QueueSignal, ReceiptPage, Redriven, Store, StoreError,
};
use crate::model::{
    AttemptRecord, Channel, ContactChange, ContactKey, ContactState, Millis, Notification,
    Priority, ProviderReceipt, Receipt, Status,
};

struct Record {
    n: Notification,
    status: Status,
    route_index: usize,
    attempts: u32,
    channel_attempts: u32,
    cost_micros: i64,
    currency: String,
    attempts_log: Vec<AttemptRecord>,
    receipts_log: Vec<Receipt>,
}

impl Record {
    fn channel(&self) -> Option<Channel> {
        self.n.route.get(self.route_index).copied()
    }
}

#[derive(Default)]
struct Lane {
    ready: BTreeMap<u64, String>,
    /// seq → (id, consumer, claimed at)
    pending: BTreeMap<u64, (String, String, Millis)>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, Record>,
    lanes: HashMap<(Channel, Priority), Lane>,
    delayed: BTreeSet<(Millis, String)>,
    delayed_at: HashMap<String, Millis>,
    idem: HashMap<String, (String, String, Millis)>,
    receipts: VecDeque<(u64, Receipt)>,
    receipt_seq: u64,
    campaigns: HashMap<String, CampaignStats>,
    canceled_campaigns: HashSet<String>,
    /// Oldest first, each with its number in `dead_seq` (page tokens name it).
    dead: HashMap<Channel, VecDeque<(u64, DeadLetter)>>,
    dead_seq: u64,
    provider_ids: HashMap<(Channel, String), String>,
    /// Receipts that arrived before their send was finished.
    pending_receipts: HashMap<(Channel, String), Vec<ProviderReceipt>>,
    contacts: HashMap<ContactKey, ContactState>,
    /// address → (sent at, id)
    watermarks: HashMap<ContactKey, BTreeSet<(Millis, String)>>,
    /// Newest first.
    policies: VecDeque<super::PolicyRecord>,
    paused: BTreeMap<Channel, String>,
    budgets: HashMap<String, i64>,
    recent: HashMap<String, BTreeSet<(Millis, String)>>,
    next_seq: u64,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    signal: QueueSignal,
    idem_ttl: Duration,
    max_receipts: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(Duration::from_secs(24 * 3600), 100_000)
    }
}

impl MemoryStore {
    pub fn new(idem_ttl: Duration, max_receipts: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            signal: QueueSignal::new(),
            idem_ttl,
            max_receipts,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Internal("memory store lock poisoned".into()))
    }
}

impl Inner {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn push_ready(&mut self, channel: Channel, priority: Priority, id: String) {
        let seq = self.seq();
        self.lanes
            .entry((channel, priority))
            .or_default()
            .ready
            .insert(seq, id);
    }

    /// Moves a record to `status`, keeping campaign counters right.
    fn set_status(&mut self, id: &str, status: Status, new_channel: Option<Channel>) {
        let Some(rec) = self.records.get_mut(id) else {
            return;
        };
        let old = rec.status;
        let old_ch = rec.channel();
        rec.status = status;
        let ch = new_channel.or(old_ch);
        let campaign = rec.n.campaign_id.clone();
        if campaign.is_empty() {
            return;
        }
        let stats = self.campaigns.entry(campaign).or_default();
        dec(stats.by_status.entry(old).or_default());
        *stats.by_status.entry(status).or_default() += 1;
        if let Some(c) = old_ch {
            dec(stats
                .by_channel
                .entry(c)
                .or_default()
                .entry(old)
                .or_default());
        }
        if let Some(c) = ch {
            *stats
                .by_channel
                .entry(c)
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
    }

    /// Records a receipt on the notification and on the receipt log.
    fn emit(&mut self, mut r: Receipt, max: usize) {
        self.receipt_seq += 1;
        r.cursor = format!("m{}", self.receipt_seq);
        if let Some(rec) = self.records.get_mut(&r.notification_id) {
            rec.receipts_log.push(r.clone());
        }
        self.receipts.push_back((self.receipt_seq, r));
        while self.receipts.len() > max {
            self.receipts.pop_front();
        }
    }

    fn receipt(&self, id: &str, status: Status) -> Option<Receipt> {
        let rec = self.records.get(id)?;
        Some(receipt_for(&rec.n, rec.channel(), status, 0))
    }

    /// A status change that ends with a receipt (cancel, expiry, …).
    fn finalize(&mut self, id: &str, status: Status, at: Millis, max: usize) {
        self.set_status(id, status, None);
        if let Some(mut r) = self.receipt(id, status) {
            r.at = at;
            self.emit(r, max);
        }
    }

    /// A platform's later report, through the status machine.
    fn apply_receipt(&mut self, id: &str, pr: ProviderReceipt, max: usize) {
        let Some(rec) = self.records.get(id) else {
            return;
        };
        if !rec.status.receipt_may_move_to(pr.status) {
            return;
        }
        self.set_status(id, pr.status, None);
        if let Some(mut r) = self.receipt(id, pr.status) {
            r.channel = Some(pr.channel);
            r.at = pr.at;
            r.provider_id = pr.provider_id;
            r.error_class = pr.error_class;
            r.error_code = pr.error_code;
            self.emit(r, max);
        }
    }

    fn remove_delayed(&mut self, id: &str) {
        if let Some(due) = self.delayed_at.remove(id) {
            self.delayed.remove(&(due, id.to_string()));
        }
    }
}

fn dec(v: &mut u64) {
    *v = v.saturating_sub(1);
}

#[async_trait]
impl Store for MemoryStore {
    fn shards(&self) -> u16 {
        1
    }

    fn signal(&self) -> &QueueSignal {
        &self.signal
    }

    async fn enqueue(&self, batch: Vec<NewNotification>) -> Result<Vec<Enqueued>, StoreError> {
        let now = crate::model::now_ms();
        let mut out = Vec::with_capacity(batch.len());
        let mut woken = HashSet::new();
        {
            let mut g = self.lock()?;
            g.idem.retain(|_, (_, _, exp)| *exp > now);
            for item in batch {
                if let Some(idem) = &item.idem {
                    if let Some((id, fp, _)) = g.idem.get(&idem.key) {
                        if *fp != idem.fingerprint {
                            out.push(Enqueued::Conflict { id: id.clone() });
                        } else {
                            let status = g
                                .records
                                .get(id)
                                .map(|r| r.status)
                                .unwrap_or(Status::Accepted);
                            out.push(Enqueued::Duplicate {
                                id: id.clone(),
                                status,
                            });
                        }
                        continue;
                    }
                    let exp = now + self.idem_ttl.as_millis() as Millis;
                    g.idem.insert(
                        idem.key.clone(),
                        (item.notification.id.clone(), idem.fingerprint.clone(), exp),
                    );
                }
                let n = item.notification;
                let id = n.id.clone();
                let Some(first) = n.route.first().copied() else {
                    return Err(StoreError::Internal(format!(
                        "notification {id} has no route"
                    )));
                };
                let scheduled = n.send_at > now;
                let status = if scheduled {
                    Status::Scheduled
                } else {
                    Status::Queued
                };
                let priority = n.priority;
                let send_at = n.send_at;
                let campaign = n.campaign_id.clone();
                g.records.insert(
                    id.clone(),
                    Record {
                        n,
                        status,
                        route_index: 0,
                        attempts: 0,
                        channel_attempts: 0,
                        cost_micros: 0,
                        currency: String::new(),
                        attempts_log: Vec::new(),
                        receipts_log: Vec::new(),
                    },
                );
                if !campaign.is_empty() {
                    let s = g.campaigns.entry(campaign).or_default();
                    s.total += 1;
                    *s.by_status.entry(status).or_default() += 1;
                    *s.by_channel
                        .entry(first)
                        .or_default()
                        .entry(status)
                        .or_default() += 1;
                }
                if scheduled {
                    g.delayed.insert((send_at, id.clone()));
                    g.delayed_at.insert(id.clone(), send_at);
                } else {
                    g.push_ready(first, priority, id.clone());
                    woken.insert(first);
                }
                out.push(Enqueued::Created { id, status });
            }
        }
        for c in woken {
            self.signal.notify(c);
        }
        Ok(out)
    }

    async fn claim(
        &self,
        channel: Channel,
        _shard: u16,
        consumer: &str,
        count: usize,
        last: Priority,
        reclaim_idle: Option<Duration>,
        now: Millis,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut g = self.lock()?;
        let g = &mut *g;
        let mut taken: Vec<(Priority, u64, String)> = Vec::new();
        for p in Priority::ALL.iter().filter(|p| p.number() <= last.number()) {
            let Some(lane) = g.lanes.get_mut(&(channel, *p)) else {
                continue;
            };
            if let Some(idle) = reclaim_idle {
                let idle = idle.as_millis() as Millis;
                for (seq, (id, owner, at)) in lane.pending.iter_mut() {
                    if taken.len() >= count {
                        break;
                    }
                    if owner != consumer && now - *at >= idle {
                        *owner = consumer.to_string();
                        *at = now;
                        taken.push((*p, *seq, id.clone()));
                    }
                }
            }
            while taken.len() < count {
                let Some((seq, id)) = lane.ready.pop_first() else {
                    break;
                };
                lane.pending
                    .insert(seq, (id.clone(), consumer.to_string(), now));
                taken.push((*p, seq, id));
            }
        }
        let mut out = Vec::new();
        for (p, seq, id) in taken {
            let ack = |g: &mut Inner| {
                if let Some(l) = g.lanes.get_mut(&(channel, p)) {
                    l.pending.remove(&seq);
                }
            };
            let Some(rec) = g.records.get(&id) else {
                ack(g);
                continue;
            };
            if !matches!(
                rec.status,
                Status::Queued | Status::Retrying | Status::Sending
            ) {
                ack(g);
                continue;
            }
            if !rec.n.campaign_id.is_empty() && g.canceled_campaigns.contains(&rec.n.campaign_id) {
                ack(g);
                g.finalize(&id, Status::Canceled, now, self.max_receipts);
                continue;
            }
            if rec.n.is_expired(now) {
                ack(g);
                g.finalize(&id, Status::Expired, now, self.max_receipts);
                continue;
            }
            let claimed = Claimed {
                entry: EntryRef {
                    priority: p,
                    entry_id: seq.to_string(),
                },
                notification: rec.n.clone(),
                route_index: rec.route_index,
                attempts: rec.attempts,
                channel_attempts: rec.channel_attempts,
            };
            if rec.status != Status::Sending {
                g.set_status(&id, Status::Sending, None);
            }
            out.push(claimed);
        }
        Ok(out)
    }

    async fn finish(
        &self,
        channel: Channel,
        _shard: u16,
        consumer: &str,
        done: &[Completion],
        now: Millis,
    ) -> Result<usize, StoreError> {
        let mut woken = HashSet::new();
        let mut applied = 0;
        {
            let mut g = self.lock()?;
            let g = &mut *g;
            // The memory store keeps what it is given (attempts, counters): its own copies.
            for c in done.iter().cloned() {
                let Ok(seq) = c.entry.entry_id.parse::<u64>() else {
                    continue;
                };
                let lane = g.lanes.entry((channel, c.entry.priority)).or_default();
                match lane.pending.get(&seq) {
                    Some((_, owner, _)) if owner == consumer => {
                        lane.pending.remove(&seq);
                    }
                    _ => continue,
                }
                applied += 1;
                let Some(rec) = g.records.get_mut(&c.id) else {
                    continue;
                };
                if let Some(a) = &c.attempt {
                    rec.attempts += 1;
                    rec.channel_attempts += 1;
                    rec.attempts_log.push(a.clone());
                }
                let attempt_no = rec.attempts;
                let max = self.max_receipts;
                match c.disposition {
                    Disposition::Sent {
                        status,
                        provider_id,
                        cost_micros,
                        currency,
                        watermark,
                        counters,
                    } => {
                        for counter in counters {
                            match counter {
                                super::Counter::Budget(k) => {
                                    *g.budgets.entry(k).or_default() += cost_micros;
                                }
                                super::Counter::Recent(k) => {
                                    let set = g.recent.entry(k).or_default();
                                    set.insert((now, c.id.clone()));
                                    while set
                                        .first()
                                        .is_some_and(|(t, _)| *t < now - super::RECENT_KEEP_MS)
                                    {
                                        set.pop_first();
                                    }
                                }
                            }
                        }
                        if let Some(key) = watermark {
                            // The platform's watermark is its own time for the message; the
                            // request's start is the closest we know.
                            let at = c.attempt.as_ref().map_or(now, |a| a.started_at);
                            let set = g.watermarks.entry(key).or_default();
                            set.insert((at, c.id.clone()));
                            while set
                                .first()
                                .is_some_and(|(t, _)| *t < now - super::WATERMARK_KEEP_MS)
                            {
                                set.pop_first();
                            }
                        }
                        let Some(rec) = g.records.get_mut(&c.id) else {
                            continue;
                        };
                        rec.cost_micros += cost_micros;
                        if !currency.is_empty() {
                            rec.currency = currency.clone();
                        }
                        let cur = rec.status;
                        let campaign = rec.n.campaign_id.clone();
                        if !provider_id.is_empty() {
                            g.provider_ids
                                .insert((c.channel, provider_id.clone()), c.id.clone());
                        }
                        if !campaign.is_empty() {
                            g.campaigns.entry(campaign).or_default().cost_micros += cost_micros;
                        }
                        if cur.receipt_may_move_to(status) {
                            g.set_status(&c.id, status, None);
                            if let Some(mut r) = g.receipt(&c.id, status) {
                                r.at = now;
                                r.provider_id = provider_id.clone();
                                r.attempt = attempt_no;
                                r.cost_micros = cost_micros;
                                r.currency = currency;
                                g.emit(r, max);
                            }
                        }
                        let early = g.pending_receipts.remove(&(c.channel, provider_id));
                        for pr in early.unwrap_or_default() {
                            g.apply_receipt(&c.id, pr, max);
                        }
                    }
                    Disposition::Retry { due, class, code } => {
                        g.set_status(&c.id, Status::Retrying, None);
                        g.delayed.insert((due, c.id.clone()));
                        g.delayed_at.insert(c.id.clone(), due);
                        if let Some(mut r) = g.receipt(&c.id, Status::Retrying) {
                            r.at = now;
                            r.error_class = Some(class);
                            r.error_code = code;
                            r.attempt = attempt_no;
                            g.emit(r, max);
                        }
                    }
                    Disposition::Fallback {
                        route_index,
                        channel: next,
                    } => {
                        rec.channel_attempts = 0;
                        let p = rec.n.priority;
                        // Counters move from the old channel to the new one.
                        g.set_status(&c.id, Status::Queued, Some(next));
                        if let Some(rec) = g.records.get_mut(&c.id) {
                            rec.route_index = route_index;
                        }
                        g.push_ready(next, p, c.id.clone());
                        woken.insert(next);
                    }
                    Disposition::Failed {
                        class,
                        code,
                        message,
                        dead_letter,
                    } => {
                        g.set_status(&c.id, Status::Failed, None);
                        if dead_letter {
                            g.dead_seq += 1;
                            let seq = g.dead_seq;
                            g.dead.entry(c.channel).or_default().push_back((
                                seq,
                                DeadLetter {
                                    id: c.id.clone(),
                                    channel: c.channel,
                                    class: Some(class),
                                    code: code.clone(),
                                    message,
                                    at: now,
                                },
                            ));
                        }
                        if let Some(mut r) = g.receipt(&c.id, Status::Failed) {
                            r.at = now;
                            r.error_class = Some(class);
                            r.error_code = code;
                            r.attempt = attempt_no;
                            g.emit(r, max);
                        }
                    }
                    Disposition::Final(status) => {
                        g.finalize(&c.id, status, now, max);
                    }
                    Disposition::Requeue => {
                        let p = rec.n.priority;
                        g.set_status(&c.id, Status::Queued, None);
                        g.push_ready(channel, p, c.id.clone());
                        woken.insert(channel);
                    }
                }
            }
        }
        for c in woken {
            self.signal.notify(c);
        }
        Ok(applied)
    }

    async fn promote_due(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let mut woken = HashSet::new();
        let mut moved = 0;
        {
            let mut g = self.lock()?;
            while moved < limit {
                let Some((due, id)) = g.delayed.first().cloned() else {
                    break;
                };
                if due > now {
                    break;
                }
                g.delayed.pop_first();
                g.delayed_at.remove(&id);
                let Some(rec) = g.records.get(&id) else {
                    continue;
                };
                if !matches!(rec.status, Status::Scheduled | Status::Retrying) {
                    continue;
                }
                if !rec.n.campaign_id.is_empty()
                    && g.canceled_campaigns.contains(&rec.n.campaign_id)
                {
                    g.finalize(&id, Status::Canceled, now, self.max_receipts);
                    continue;
                }
                let (Some(ch), p) = (rec.channel(), rec.n.priority) else {
                    continue;
                };
                g.set_status(&id, Status::Queued, None);
                g.push_ready(ch, p, id);
                woken.insert(ch);
                moved += 1;
            }
        }
        for c in woken {
            self.signal.notify(c);
        }
        Ok(moved)
    }

    async fn record_receipts(&self, receipts: Vec<ProviderReceipt>) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        for pr in receipts {
            let id = if pr.notification_id.is_empty() {
                match g.provider_ids.get(&(pr.channel, pr.provider_id.clone())) {
                    Some(id) => id.clone(),
                    None => {
                        // The platform was faster than our own record of the send: keep it
                        // until the send is finished (bounded).
                        if g.pending_receipts.len() < 100_000 {
                            g.pending_receipts
                                .entry((pr.channel, pr.provider_id.clone()))
                                .or_default()
                                .push(pr);
                        }
                        continue;
                    }
                }
            } else {
                pr.notification_id.clone()
            };
            g.apply_receipt(&id, pr, self.max_receipts);
        }
        Ok(())
    }

    async fn cancel(&self, target: CancelTarget, now: Millis) -> Result<CancelOutcome, StoreError> {
        let mut g = self.lock()?;
        match target {
            CancelTarget::Notification(id) => {
                let Some(rec) = g.records.get(&id) else {
                    return Ok(CancelOutcome {
                        canceled: 0,
                        status: None,
                    });
                };
                if !rec.status.is_pending() {
                    return Ok(CancelOutcome {
                        canceled: 0,
                        status: Some(rec.status),
                    });
                }
                g.remove_delayed(&id);
                g.finalize(&id, Status::Canceled, now, self.max_receipts);
                Ok(CancelOutcome {
                    canceled: 1,
                    status: Some(Status::Canceled),
                })
            }
            CancelTarget::Campaign(c) => {
                g.canceled_campaigns.insert(c.clone());
                let ids: Vec<String> = g
                    .records
                    .iter()
                    .filter(|(_, r)| r.n.campaign_id == c && r.status.is_pending())
                    .map(|(id, _)| id.clone())
                    .collect();
                let n = ids.len() as u64;
                for id in ids {
                    g.remove_delayed(&id);
                    g.finalize(&id, Status::Canceled, now, self.max_receipts);
                }
                g.campaigns.entry(c).or_default().canceled = true;
                Ok(CancelOutcome {
                    canceled: n,
                    status: None,
                })
            }
        }
    }

    async fn get(&self, id: &str) -> Result<Option<NotificationView>, StoreError> {
        let g = self.lock()?;
        Ok(g.records.get(id).map(|r| NotificationView {
            notification: r.n.clone(),
            status: r.status,
            channel: r.channel(),
            attempts: r.attempts_log.clone(),
            receipts: r.receipts_log.clone(),
            cost_micros: r.cost_micros,
            currency: r.currency.clone(),
        }))
    }

    async fn read_receipts(
        &self,
        cursor: Option<&str>,
        from_start: bool,
        limit: usize,
    ) -> Result<ReceiptPage, StoreError> {
        let g = self.lock()?;
        let after = match cursor {
            Some(c) => c
                .strip_prefix('m')
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Internal(format!("invalid cursor {c:?}")))?,
            None if from_start => 0,
            None => g.receipt_seq,
        };
        let receipts: Vec<Receipt> = g
            .receipts
            .iter()
            .filter(|(s, _)| *s > after)
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect();
        let cursor = receipts
            .last()
            .map(|r| r.cursor.clone())
            .unwrap_or_else(|| format!("m{after}"));
        Ok(ReceiptPage { receipts, cursor })
    }

    async fn campaign(&self, campaign_id: &str) -> Result<CampaignStats, StoreError> {
        let g = self.lock()?;
        let mut s = g.campaigns.get(campaign_id).cloned().unwrap_or_default();
        s.by_status.retain(|_, v| *v > 0);
        for m in s.by_channel.values_mut() {
            m.retain(|_, v| *v > 0);
        }
        s.by_channel.retain(|_, m| !m.is_empty());
        s.canceled = g.canceled_campaigns.contains(campaign_id);
        Ok(s)
    }

    async fn dead_letters(
        &self,
        channel: Channel,
        limit: usize,
        page: Option<&str>,
    ) -> Result<DeadLetterPage, StoreError> {
        let before = match page {
            None => u64::MAX,
            Some(t) => t
                .strip_prefix("m")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| StoreError::BadCursor(t.to_string()))?,
        };
        let g = self.lock()?;
        let letters: Vec<(u64, DeadLetter)> = g
            .dead
            .get(&channel)
            .map(|d| {
                d.iter()
                    .rev()
                    .filter(|(seq, _)| *seq < before)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let next = (letters.len() == limit)
            .then(|| letters.last().map(|(seq, _)| format!("m{seq}")))
            .flatten();
        Ok(DeadLetterPage {
            letters: letters.into_iter().map(|(_, d)| d).collect(),
            next,
        })
    }

    async fn redrive_dead_letters(
        &self,
        channel: Channel,
        ids: &[String],
        now: Millis,
    ) -> Result<Redriven, StoreError> {
        let mut out = Redriven::default();
        {
            let mut g = self.lock()?;
            let max = self.max_receipts;
            let list = g.dead.remove(&channel).unwrap_or_default();
            let mut keep = VecDeque::with_capacity(list.len());
            for (seq, d) in list {
                if !ids.is_empty() && !ids.contains(&d.id) {
                    keep.push_back((seq, d));
                    continue;
                }
                let Some(rec) = g.records.get_mut(&d.id) else {
                    out.gone += 1;
                    keep.push_back((seq, d));
                    continue;
                };
                if rec.status != Status::Failed || rec.channel() != Some(channel) {
                    continue;
                }
                rec.channel_attempts = 0;
                let priority = rec.n.priority;
                g.set_status(&d.id, Status::Queued, None);
                if let Some(mut r) = g.receipt(&d.id, Status::Queued) {
                    r.at = now;
                    g.emit(r, max);
                }
                g.push_ready(channel, priority, d.id);
                out.redriven += 1;
            }
            g.dead.insert(channel, keep);
        }
        if out.redriven > 0 {
            self.signal.notify(channel);
        }
        Ok(out)
    }

    async fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        let g = self.lock()?;
        let mut d = QueueDepth {
            delayed: g.delayed.len() as u64,
            ..Default::default()
        };
        for (k, lane) in &g.lanes {
            d.ready
                .insert(*k, (lane.ready.len() + lane.pending.len()) as u64);
        }
        Ok(d)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(|_| ())
    }

    async fn contacts(&self, keys: &[ContactKey]) -> Result<Vec<ContactState>, StoreError> {
        let g = self.lock()?;
        Ok(keys
            .iter()
            .map(|k| g.contacts.get(k).copied().unwrap_or_default())
            .collect())
    }

    async fn update_contacts(
        &self,
        changes: Vec<(ContactKey, ContactChange)>,
    ) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        for (k, c) in changes {
            let s = g.contacts.entry(k).or_default();
            match c {
                ContactChange::Dead => s.dead = true,
                ContactChange::Alive => s.dead = false,
                ContactChange::OptOut => s.opted_out = true,
                ContactChange::OptIn => s.opted_out = false,
                ContactChange::Inbound(at) => s.last_inbound = s.last_inbound.max(at),
            }
        }
        Ok(())
    }

    async fn waiting(&self, limit: usize) -> Result<Vec<(Notification, usize)>, StoreError> {
        let g = self.lock()?;
        let ready = g.lanes.values().flat_map(|l| l.ready.values());
        let delayed = g.delayed.iter().map(|(_, id)| id);
        Ok(ready
            .chain(delayed)
            .filter_map(|id| g.records.get(id))
            .take(limit)
            .map(|r| (r.n.clone(), r.route_index))
            .collect())
    }

    async fn heartbeat(
        &self,
        _instance: &str,
        _now: Millis,
        _window: Millis,
    ) -> Result<u32, StoreError> {
        // One process holds the memory store.
        Ok(1)
    }

    async fn budget_spent(&self, keys: &[String]) -> Result<Vec<i64>, StoreError> {
        let g = self.lock()?;
        Ok(keys
            .iter()
            .map(|k| g.budgets.get(k).copied().unwrap_or(0))
            .collect())
    }

    async fn recent_sends(&self, keys: &[(String, Millis)]) -> Result<Vec<u64>, StoreError> {
        let g = self.lock()?;
        Ok(keys
            .iter()
            .map(|(k, since)| {
                g.recent
                    .get(k)
                    .map_or(0, |s| s.range((*since, String::new())..).count() as u64)
            })
            .collect())
    }

    async fn policy(&self) -> Result<Option<super::PolicyRecord>, StoreError> {
        Ok(self.lock()?.policies.front().cloned())
    }

    async fn policy_version(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.policies.front().map_or(0, |p| p.version))
    }

    async fn apply_policy(
        &self,
        expected_version: Option<u64>,
        document: String,
        author: String,
        diff: String,
        now: Millis,
    ) -> Result<super::PolicyApplied, StoreError> {
        let mut g = self.lock()?;
        let current = g.policies.front().map_or(0, |p| p.version);
        if expected_version.is_some_and(|v| v != current) {
            return Ok(super::PolicyApplied::Stale { current });
        }
        let version = current + 1;
        g.policies.push_front(super::PolicyRecord {
            version,
            document,
            author,
            applied_at: now,
            diff,
        });
        g.policies.truncate(super::POLICY_HISTORY);
        Ok(super::PolicyApplied::Applied { version })
    }

    async fn paused(&self) -> Result<BTreeMap<Channel, String>, StoreError> {
        Ok(self.lock()?.paused.clone())
    }

    async fn set_paused(&self, channel: Channel, reason: Option<String>) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        match reason {
            Some(r) => {
                g.paused.insert(channel, r);
            }
            None => {
                g.paused.remove(&channel);
            }
        }
        Ok(())
    }

    async fn policy_history(&self, limit: usize) -> Result<Vec<super::PolicyRecord>, StoreError> {
        Ok(self.lock()?.policies.iter().take(limit).cloned().collect())
    }

    async fn sent_before(
        &self,
        key: &ContactKey,
        watermark: Millis,
    ) -> Result<Vec<String>, StoreError> {
        let g = self.lock()?;
        Ok(g.watermarks
            .get(key)
            .map(|s| {
                s.iter()
                    .take_while(|(t, _)| *t <= watermark)
                    .map(|(_, id)| id.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
}
