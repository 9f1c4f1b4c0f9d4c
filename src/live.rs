//! Live state every instance follows: the policy version in force and the channels an
//! operator paused. A follower polls the store and swaps the state atomically, so readers on
//! the hot path never lock and every instance switches within one poll interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::model::Channel;
use crate::policy::Policy;
use crate::store::{PolicyRecord, Store, StoreError};

/// What an instance knows of the shared control state.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The policy in force as applied (None: none applied yet).
    pub policy: Option<Arc<PolicyRecord>>,
    /// The same, parsed; the defaults when none was applied.
    pub parsed: Arc<Policy>,
    /// Channels paused by an operator, with the reason.
    pub paused: BTreeMap<Channel, String>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            policy: None,
            parsed: Arc::new(Policy::default()),
            paused: BTreeMap::new(),
        }
    }
}

pub struct Live {
    store: Arc<dyn Store>,
    state: ArcSwap<Snapshot>,
    /// This process, in the instance heartbeats.
    id: String,
    /// Instances alive (heartbeats within a few poll intervals), this one included.
    instances: std::sync::atomic::AtomicU32,
    /// What this instance's dispatch reports per channel, for GetChannelStatus.
    local: std::sync::Mutex<BTreeMap<Channel, LocalStatus>>,
}

/// This instance's view of a channel's flow control.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalStatus {
    /// closed | open | half_open
    pub circuit: &'static str,
    /// This instance's share of the channel's rate (0: no rate set).
    pub rate_per_second: f64,
    /// Holding after a throttling answer or refused credentials.
    pub held: bool,
}

impl Live {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            state: ArcSwap::from_pointee(Snapshot::default()),
            id: ulid::Ulid::new().to_string(),
            instances: std::sync::atomic::AtomicU32::new(1),
            local: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The current snapshot (cheap: an atomic load).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.load_full()
    }

    /// Dispatch reports a channel's flow control here.
    pub fn report(&self, channel: Channel, f: impl FnOnce(&mut LocalStatus)) {
        if let Ok(mut m) = self.local.lock() {
            let s = m.entry(channel).or_insert_with(|| LocalStatus {
                circuit: "closed",
                ..Default::default()
            });
            f(s);
        }
    }

    pub fn local_status(&self, channel: Channel) -> LocalStatus {
        self.local
            .lock()
            .ok()
            .and_then(|m| m.get(&channel).cloned())
            .unwrap_or(LocalStatus {
                circuit: "closed",
                ..Default::default()
            })
    }

    /// How many instances share the platforms' rates now.
    pub fn instances(&self) -> u32 {
        self.instances.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_paused(&self, channel: Channel) -> bool {
        self.state.load().paused.contains_key(&channel)
    }

    /// Reads the store now and swaps in what changed.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let cur = self.state.load_full();
        let version = self.store.policy_version().await?;
        let (policy, parsed) = if cur.policy.as_ref().map_or(0, |p| p.version) == version {
            (cur.policy.clone(), cur.parsed.clone())
        } else {
            match self.store.policy().await? {
                Some(rec) => match Policy::parse(&rec.document) {
                    Ok(mut p) => {
                        p.version = rec.version;
                        info!(version = rec.version, author = %rec.author, "policy version now in force");
                        (Some(Arc::new(rec)), Arc::new(p))
                    }
                    Err(e) => {
                        // Documents are validated before they are applied; one that no longer
                        // parses (a newer instance wrote it) must not stop this one.
                        warn!(version = rec.version, error = %e, "cannot read the policy in force; keeping the last one");
                        (cur.policy.clone(), cur.parsed.clone())
                    }
                },
                None => (None, Arc::new(Policy::default())),
            }
        };
        let paused = self.store.paused().await?;
        // Heartbeat: an instance missing for 3 s no longer holds a share of the rates.
        let n = self
            .store
            .heartbeat(&self.id, crate::model::now_ms(), 3_000)
            .await?;
        self.instances
            .store(n, std::sync::atomic::Ordering::Relaxed);
        if paused != cur.paused {
            info!(paused = ?paused.keys().collect::<Vec<_>>(), "paused channels changed");
        }
        self.state.store(Arc::new(Snapshot {
            policy,
            parsed,
            paused,
        }));
        Ok(())
    }

    /// Follows the store every `every` until `stop`.
    pub fn follow(self: Arc<Self>, every: Duration, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut failing = false;
            while !stop.is_cancelled() {
                match self.refresh().await {
                    Ok(()) => failing = false,
                    Err(e) => {
                        if !failing {
                            warn!(error = %e, "cannot read the policy and pauses; keeping the last known");
                        }
                        failing = true;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    }
}

/// Applies `policy.file` to the store when it changes (checked every `every`) and on SIGHUP,
/// as author `file:<path>`. An invalid file is logged with the key it breaks and left out;
/// the version in force stays.
pub fn watch_file(
    live: Arc<Live>,
    path: std::path::PathBuf,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<(std::time::SystemTime, u64)> = None;
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let stamp = std::fs::metadata(&path)
                .ok()
                .and_then(|m| m.modified().ok().map(|t| (t, m.len())));
            if stamp.is_some() && stamp != last {
                // A file being written (truncated, then filled) must not be read half-way:
                // apply only once it has stayed the same for a moment.
                tokio::time::sleep(SETTLE).await;
                let again = std::fs::metadata(&path)
                    .ok()
                    .and_then(|m| m.modified().ok().map(|t| (t, m.len())));
                if again != stamp {
                    // Still being written: look again once it has settled.
                    continue;
                }
                last = stamp;
                apply_file(&live, &path).await;
                // The next look is a check interval (or a SIGHUP) away, not at once.
            }
            #[cfg(unix)]
            let hup_fired = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hup_fired = std::future::pending::<()>();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = hup_fired => {
                    info!(path = %path.display(), "SIGHUP: re-reading the policy file");
                    apply_file(&live, &path).await;
                }
            }
        }
    })
}

/// How long a changed policy file must stay unchanged before it is read.
pub(crate) const SETTLE: Duration = Duration::from_millis(200);

/// Applies the file's text unless it is what is in force already. An empty file is taken
/// for one caught while being written, never for "all defaults" (say that with a comment).
pub async fn apply_file(live: &Live, path: &std::path::Path) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read policy.file");
            return;
        }
    };
    if text.trim().is_empty() {
        warn!(path = %path.display(), "policy.file is empty; the version in force stays");
        return;
    }
    let new = match Policy::parse(&text) {
        Ok(p) => p,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "policy.file is invalid; the version in force stays");
            return;
        }
    };
    let snap = live.snapshot();
    if snap.policy.as_ref().is_some_and(|p| p.document == text) {
        return;
    }
    let diff = crate::policy::diff(&snap.parsed, &new).join("\n");
    let expected = snap.policy.as_ref().map_or(0, |p| p.version);
    let author = format!("file:{}", path.display());
    match live
        .store
        .apply_policy(Some(expected), text, author, diff, crate::model::now_ms())
        .await
    {
        Ok(crate::store::PolicyApplied::Applied { version }) => {
            info!(version, path = %path.display(), "policy.file applied");
            if let Err(e) = live.refresh().await {
                warn!(error = %e, "policy applied but not yet read back");
            }
        }
        Ok(crate::store::PolicyApplied::Stale { current }) => {
            // Another instance (or an operator) applied meanwhile: follow, then retry once.
            warn!(
                current,
                "policy changed while applying policy.file; will retry on the next change"
            );
            let _ = live.refresh().await;
        }
        Err(e) => warn!(error = %e, "cannot apply policy.file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn applies_the_policy_file_once_and_refuses_an_invalid_one() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let live = Live::new(store.clone());
        live.refresh().await.expect("refresh");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[routing]\nstrategy = \"cheapest_eligible\"\n").expect("write");
        apply_file(&live, &path).await;
        apply_file(&live, &path).await;
        assert_eq!(
            store.policy_version().await.expect("version"),
            1,
            "unchanged text applies once"
        );
        let rec = store.policy().await.expect("policy").expect("some");
        assert!(rec.author.starts_with("file:"));
        assert_eq!(rec.diff, "routing.strategy: preference → cheapest_eligible");
        std::fs::write(&path, "[channels.sms]\nrate = { per_second = 0 }\n").expect("write");
        apply_file(&live, &path).await;
        assert_eq!(
            store.policy_version().await.expect("version"),
            1,
            "an invalid file is left out"
        );
    }

    #[tokio::test]
    async fn follows_pauses_and_policy_versions() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let live = Live::new(store.clone());
        live.refresh().await.expect("refresh");
        assert!(!live.is_paused(Channel::Sms));
        assert!(live.snapshot().policy.is_none());
        store
            .set_paused(Channel::Sms, Some("incident".into()))
            .await
            .expect("pause");
        store
            .apply_policy(
                None,
                "[routing]\nstrategy = \"cheapest_eligible\"\n".into(),
                "ops".into(),
                String::new(),
                1,
            )
            .await
            .expect("apply");
        live.refresh().await.expect("refresh");
        assert!(live.is_paused(Channel::Sms));
        let snap = live.snapshot();
        assert_eq!(snap.policy.as_ref().map(|p| p.version), Some(1));
        assert_eq!(snap.parsed.version, 1);
        assert_eq!(
            snap.parsed.routing.strategy,
            crate::policy::Strategy::CheapestEligible
        );
    }
}
