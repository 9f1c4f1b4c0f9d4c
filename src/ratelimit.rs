//! Rate limits that hold across instances: per channel (its one configured platform account:
//! the page, the sender number, the project, the topic), a local `governor` limiter holding
//! this instance's share of the policy's rate. A throttling answer halves the rate at once and
//! remembers 90% of the rate it happened at as the platform's real limit: the rate climbs back
//! quickly (5% of the ceiling per second) to that limit, then only slowly (0.5% per second)
//! above it, so a platform that lowered its limit without saying so is met just below it with
//! a rare probe. A platform that reports its quota used (Graph's usage headers) holds the
//! rate down in step from 75% used. The rate now is a gauge.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::model::Channel;

/// Lowest rate adaptation goes to, as a share of the ceiling.
const FLOOR_SHARE: f64 = 0.02;
/// From this share of its quota used (as the platform reports it) a channel slows down.
pub const USAGE_SLOW_FROM: u8 = 75;
/// Two decreases are at least this far apart: one storm of 429s is one signal.
const DECREASE_GAP: Duration = Duration::from_millis(500);

struct Bucket {
    /// The policy's rate (all instances together).
    ceiling: f64,
    burst: u32,
    /// The adapted global rate, ≤ ceiling.
    current: f64,
    /// Where throttling last began (90% of it): climbed to quickly, passed slowly.
    safe: f64,
    /// This instance's share the limiter was built for.
    built_for: f64,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// When the limiter was last rebuilt.
    built_at: Instant,
    last_decrease: Option<Instant>,
    last_update: Instant,
}

/// All limits of this instance.
pub struct Limits {
    buckets: Mutex<HashMap<Channel, Bucket>>,
    instances: AtomicU32,
    gates: Mutex<HashMap<Channel, Arc<Gate>>>,
}

/// The order in which one channel's sends take their turn at its limiter. A bare governor
/// limiter is not fair: every waiter sleeps until the next cell and one wins, so with a dozen
/// waiters one of them can lose for seconds — past the takeover time, after which another
/// instance sends the same entry again. Here waiters queue first-come first-served on an async
/// mutex (tokio's is FIFO), one lane per priority, and the waiter at the head of the normal
/// lane takes a cell only while no HIGH send is waiting: HIGH never waits behind BULK.
#[derive(Default)]
pub struct Gate {
    high: tokio::sync::Mutex<()>,
    rest: tokio::sync::Mutex<()>,
    high_waiting: AtomicU32,
}

/// Counts a HIGH waiter for as long as it lives.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// Waits for this send's turn and a cell of the limiter `current` returns at that moment
    /// (so a rate cut applies to sends already waiting). Returns at once when it returns None.
    pub async fn pass<F>(&self, high: bool, current: F)
    where
        F: Fn() -> Option<Arc<DefaultDirectRateLimiter>>,
    {
        if high {
            self.high_waiting.fetch_add(1, Ordering::AcqRel);
            let _counted = Waiting(&self.high_waiting);
            let _turn = self.high.lock().await;
            if let Some(l) = current() {
                l.until_ready().await;
            }
            return;
        }
        let _turn = self.rest.lock().await;
        loop {
            if self.high_waiting.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            let Some(l) = current() else { return };
            match l.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(l.clock().now());
                    // Short naps: a HIGH send arriving meanwhile goes first.
                    let nap = wait.clamp(Duration::from_micros(200), Duration::from_millis(20));
                    tokio::time::sleep(nap).await;
                }
            }
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

fn build(share: f64, burst: u32) -> Arc<DefaultDirectRateLimiter> {
    // governor takes whole cells per period: a rate below 1/s is one cell per 1/rate seconds.
    let period = Duration::from_secs_f64(1.0 / share.max(0.001));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    Arc::new(RateLimiter::direct(quota))
}

impl Limits {
    pub fn new() -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            instances: AtomicU32::new(1),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// The queue `channel`'s sends wait in for their cells.
    pub fn gate(&self, channel: Channel) -> Arc<Gate> {
        match self.gates.lock() {
            Ok(mut g) => g.entry(channel).or_default().clone(),
            Err(_) => Arc::new(Gate::default()),
        }
    }

    /// How many instances share each rate (from their heartbeats).
    pub fn set_instances(&self, n: u32) {
        self.instances.store(n.max(1), Ordering::Relaxed);
    }

    pub fn instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed)
    }

    /// The limiter to wait on for one send on `channel` under the policy's `per_second` (and
    /// burst); None when the policy sets no rate. Recomputes the share when the policy, the
    /// number of instances or the adaptation changed it.
    pub fn limiter(
        &self,
        channel: Channel,
        per_second: Option<f64>,
        burst: Option<u32>,
    ) -> Option<Arc<DefaultDirectRateLimiter>> {
        let ceiling = per_second.filter(|r| *r > 0.0)?;
        let instances = f64::from(self.instances());
        let mut all = self.buckets.lock().ok()?;
        let now = Instant::now();
        let b = burst.unwrap_or(1);
        let bucket = all.entry(channel).or_insert_with(|| Bucket {
            ceiling,
            burst: b,
            current: ceiling,
            safe: ceiling,
            built_for: 0.0,
            limiter: build(ceiling / instances, b),
            built_at: now,
            last_decrease: None,
            last_update: now,
        });
        if bucket.ceiling != ceiling {
            // A policy edit: a lower ceiling applies at once, a higher one is climbed to.
            bucket.current = bucket.current.min(ceiling);
            bucket.safe = bucket.safe.min(ceiling);
            bucket.ceiling = ceiling;
        }
        // Recovery: fast up to the last known safe rate, slowly beyond it (a probe), and the
        // safe rate itself creeps back up so a platform that lifted its limit is found again.
        let dt = now.duration_since(bucket.last_update).as_secs_f64();
        bucket.last_update = now;
        let (fast, slow) = (bucket.ceiling * 0.05 * dt, bucket.ceiling * 0.005 * dt);
        bucket.safe = (bucket.safe + slow).min(bucket.ceiling);
        if bucket.current < bucket.safe {
            bucket.current = (bucket.current + fast).min(bucket.safe);
        } else if bucket.current < bucket.ceiling {
            bucket.current = (bucket.current + slow).min(bucket.ceiling);
        }
        // In any one-second window a limiter lets through its rate plus its burst: keep the
        // burst inside this instance's part, and 20% more for the jitter between our clock and
        // the platform's, so all instances together stay under the rate as the platform
        // counts it (at very low rates, where that leaves too little, half the part is kept).
        let fair = bucket.current / instances;
        let share = ((fair - f64::from(b)) * 0.8).max(fair * 0.5);
        // governor's quota is fixed per limiter, so a new rate is a new limiter. A cut is
        // rebuilt at once; a rise (recovery climbs continuously) at most once a second, since
        // each rebuild restarts the cell clock. The new limiter starts as empty as the old one
        // is now, so a rebuild is neither a free burst nor a lost cell.
        let first = bucket.built_for == 0.0;
        let lower = share < bucket.built_for * 0.98;
        let higher = share > bucket.built_for * 1.02
            && now.duration_since(bucket.built_at) >= Duration::from_secs(1);
        if first || lower || higher || bucket.burst != b {
            let fresh = build(share, b);
            if !first {
                let mut free = 0;
                while free < b && bucket.limiter.check().is_ok() {
                    free += 1;
                }
                for _ in free..b {
                    if fresh.check().is_err() {
                        break;
                    }
                }
            }
            bucket.limiter = fresh;
            bucket.built_at = now;
            bucket.built_for = share;
            bucket.burst = b;
        }
        crate::telemetry::rate(channel, share);
        Some(bucket.limiter.clone())
    }

    /// The platform throttled us on `channel`: halve the rate now.
    pub fn throttled(&self, channel: Channel) {
        let Ok(mut all) = self.buckets.lock() else {
            return;
        };
        let Some(b) = all.get_mut(&channel) else {
            return;
        };
        let now = Instant::now();
        if b.last_decrease
            .is_some_and(|t| now.duration_since(t) < DECREASE_GAP)
        {
            return;
        }
        b.last_decrease = Some(now);
        b.safe = (b.current * 0.9).max(b.ceiling * FLOOR_SHARE);
        b.current = (b.current / 2.0).max(b.ceiling * FLOOR_SHARE);
        b.last_update = now;
    }

    /// The platform says `percent` of its quota is used (Graph's usage headers, over its own
    /// window): from [`USAGE_SLOW_FROM`] on, the rate is held at most to a share of the
    /// ceiling that falls linearly to the floor at 100%, so sends slow down before the wall
    /// instead of at it; where the rate was (90% of it) is remembered as throttling's is, and
    /// climbed back to as usage falls.
    pub fn usage(&self, channel: Channel, percent: u8) {
        if percent < USAGE_SLOW_FROM {
            return;
        }
        let Ok(mut all) = self.buckets.lock() else {
            return;
        };
        let Some(b) = all.get_mut(&channel) else {
            return;
        };
        let left = f64::from(100 - percent.min(100)) / f64::from(100 - USAGE_SLOW_FROM);
        let cap = b.ceiling * left.max(FLOOR_SHARE);
        if b.current > cap {
            b.safe = b.safe.min((b.current * 0.9).max(cap));
            b.current = cap;
            b.last_update = Instant::now();
        }
    }

    /// The global rate `channel` runs at now (None: no rate set).
    pub fn current(&self, channel: Channel) -> Option<f64> {
        self.buckets.lock().ok()?.get(&channel).map(|b| b.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rate_no_limiter() {
        let l = Limits::new();
        assert!(l.limiter(Channel::Sms, None, None).is_none());
        assert!(l.limiter(Channel::Sms, Some(0.0), None).is_none());
    }

    #[test]
    fn throttling_halves_then_recovers_to_the_ceiling() {
        let l = Limits::new();
        l.limiter(Channel::Messenger, Some(300.0), None)
            .expect("limiter");
        l.throttled(Channel::Messenger);
        assert_eq!(l.current(Channel::Messenger), Some(150.0));
        // A second 429 in the same storm is the same signal.
        l.throttled(Channel::Messenger);
        assert_eq!(l.current(Channel::Messenger), Some(150.0));
        // A policy cut applies at once, below the adapted rate.
        l.limiter(Channel::Messenger, Some(50.0), None)
            .expect("limiter");
        assert!(l.current(Channel::Messenger).expect("rate") <= 50.0);
        // Never below the floor.
        for _ in 0..20 {
            if let Ok(mut all) = l.buckets.lock() {
                if let Some(b) = all.get_mut(&Channel::Messenger) {
                    b.last_decrease = None;
                }
            }
            l.throttled(Channel::Messenger);
        }
        assert!(l.current(Channel::Messenger).expect("rate") >= 50.0 * FLOOR_SHARE);
    }

    #[test]
    fn reported_usage_holds_the_rate_down_in_step_from_75_percent() {
        let l = Limits::new();
        let ch = Channel::Messenger;
        l.limiter(ch, Some(200.0), None).expect("limiter");
        let now = |l: &Limits| l.current(ch).expect("rate");
        l.usage(ch, 50);
        l.usage(ch, 75);
        assert_eq!(now(&l), 200.0, "below the threshold nothing changes");
        l.usage(ch, 90);
        assert!((now(&l) - 80.0).abs() < 1e-9, "{}", now(&l));
        // A lower reading later does not raise it (recovery does, with time).
        l.usage(ch, 80);
        assert!((now(&l) - 80.0).abs() < 1e-9, "{}", now(&l));
        l.usage(ch, 100);
        assert_eq!(now(&l), 200.0 * FLOOR_SHARE);
        l.usage(ch, 250);
        assert_eq!(now(&l), 200.0 * FLOOR_SHARE, "past 100 is 100");
        // No rate set: nothing to slow.
        l.usage(Channel::Sms, 99);
        assert_eq!(l.current(Channel::Sms), None);
    }

    #[tokio::test]
    async fn the_gate_serves_in_order_and_high_first() {
        let gate = Arc::new(Gate::default());
        let lim = build(200.0, 1);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let mut go = |label: usize, high: bool| {
            let (gate, lim, order) = (gate.clone(), lim.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                gate.pass(high, || Some(lim.clone())).await;
                if let Ok(mut o) = order.lock() {
                    o.push(label);
                }
            }));
        };
        for i in 0..8 {
            go(i, false);
            tokio::task::yield_now().await;
        }
        go(100, true);
        for t in tasks {
            t.await.expect("task");
        }
        let order = order.lock().expect("order").clone();
        let high_at = order.iter().position(|l| *l == 100).expect("high passed");
        assert!(
            high_at <= 2,
            "HIGH waited behind {high_at} others: {order:?}"
        );
        let rest: Vec<usize> = order.into_iter().filter(|l| *l != 100).collect();
        assert_eq!(rest, (0..8).collect::<Vec<_>>(), "first come, first served");
    }

    #[tokio::test]
    async fn the_gate_takes_the_limiter_in_force_when_the_turn_comes() {
        // Waiting sends see a policy cut: the limiter is asked for at their turn.
        let gate = Gate::default();
        let calls = AtomicU32::new(0);
        let lim = build(1000.0, 1);
        for _ in 0..3 {
            gate.pass(false, || {
                calls.fetch_add(1, Ordering::Relaxed);
                Some(lim.clone())
            })
            .await;
        }
        assert!(calls.load(Ordering::Relaxed) >= 3);
        // No rate in force: passes at once without a cell.
        gate.pass(false, || None).await;
        gate.pass(true, || None).await;
    }

    #[test]
    fn the_share_is_split_between_instances() {
        let l = Limits::new();
        l.set_instances(3);
        let lim = l
            .limiter(Channel::Sms, Some(3.0), Some(1))
            .expect("limiter");
        // One cell per second for this instance: the first passes, the second must wait.
        assert!(lim.check().is_ok());
        assert!(lim.check().is_err());
    }
}

/// A channel's circuit breaker: a storm of transient or auth failures (R, A) opens it; while
/// open nothing is sent; then a single probe is let through, and its answer closes or reopens
/// it. Any meaningful platform answer (sent, dead address, policy, throttled, payload) resets
/// the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; the next answer decides.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
pub struct Circuit {
    pub state: CircuitState,
    /// Consecutive R/A answers that open it.
    pub threshold: u32,
    /// How long it stays open.
    pub open_for: Duration,
}

impl Circuit {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            state: CircuitState::Closed { failures: 0 },
            threshold: threshold.max(1),
            open_for,
        }
    }

    /// How many entries may be claimed now: None while open, Some(1) for the probe,
    /// Some(usize::MAX) when closed (the caller's own limits apply).
    pub fn allowance(&mut self, now: Instant) -> Option<usize> {
        match self.state {
            CircuitState::Closed { .. } => Some(usize::MAX),
            CircuitState::Open { until } if now < until => None,
            CircuitState::Open { .. } => {
                self.state = CircuitState::HalfOpen;
                Some(1)
            }
            CircuitState::HalfOpen => Some(1),
        }
    }

    /// Records one answer; `failure` is an R or A outcome. Returns true when this opened it.
    pub fn record(&mut self, failure: bool, now: Instant) -> bool {
        match (self.state, failure) {
            (CircuitState::Closed { failures }, true) => {
                if failures + 1 >= self.threshold {
                    self.state = CircuitState::Open {
                        until: now + self.open_for,
                    };
                    return true;
                }
                self.state = CircuitState::Closed {
                    failures: failures + 1,
                };
                false
            }
            (CircuitState::HalfOpen, true) => {
                self.state = CircuitState::Open {
                    until: now + self.open_for,
                };
                true
            }
            (CircuitState::Open { .. }, _) => false,
            (_, false) => {
                self.state = CircuitState::Closed { failures: 0 };
                false
            }
        }
    }

    pub fn label(&self) -> &'static str {
        match self.state {
            CircuitState::Closed { .. } => "closed",
            CircuitState::Open { .. } => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

#[cfg(test)]
mod circuit_tests {
    use super::*;

    #[test]
    fn opens_on_a_storm_probes_then_closes_or_reopens() {
        let t0 = Instant::now();
        let mut c = Circuit::new(3, Duration::from_secs(10));
        assert!(!c.record(true, t0));
        assert!(!c.record(true, t0));
        // A meaningful answer in between resets the count.
        assert!(!c.record(false, t0));
        assert!(!c.record(true, t0));
        assert!(!c.record(true, t0));
        assert!(c.record(true, t0), "the third failure in a row opens it");
        assert_eq!(c.allowance(t0 + Duration::from_secs(5)), None);
        assert_eq!(c.allowance(t0 + Duration::from_secs(11)), Some(1));
        assert_eq!(c.label(), "half_open");
        assert!(
            c.record(true, t0 + Duration::from_secs(11)),
            "a failed probe reopens it"
        );
        assert_eq!(c.allowance(t0 + Duration::from_secs(12)), None);
        assert_eq!(c.allowance(t0 + Duration::from_secs(22)), Some(1));
        assert!(!c.record(false, t0 + Duration::from_secs(22)));
        assert_eq!(c.label(), "closed");
        assert_eq!(c.allowance(t0 + Duration::from_secs(22)), Some(usize::MAX));
    }
}
