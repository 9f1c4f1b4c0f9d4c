//! gRPC services `herald.v1.Dispatch` and `herald.v1.Admin`: proto ↔ domain conversion and
//! domain error → `tonic::Status` (with `google.rpc.BadRequest` field violations). Knows
//! nothing of Redis.

pub mod auth;
pub mod convert;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::error;

use self::auth::{authorize, Scope};
use self::convert::{
    campaign_to_proto, channel_from_proto, channel_to_proto, draft_from_proto,
    notification_to_proto, receipt_to_proto, status_from_proto, status_to_proto,
};
use crate::dispatch::route_context_for;
use crate::ingest::{Accepted, FieldViolation, Ingest, IngestError};
use crate::live::Live;
use crate::model::Channel;
use crate::model::{now_ms, shard_of};
use crate::policy::{Decision, Policy};
use crate::proto;
use crate::store::PolicyApplied;
use crate::store::{CancelTarget, Store, StoreError};

/// The one table from domain errors to gRPC status codes.
pub fn ingest_status(e: IngestError) -> Status {
    match e {
        IngestError::Invalid(v) => {
            let msg = v
                .iter()
                .map(|f| format!("{}: {}", f.field, f.description))
                .collect::<Vec<_>>()
                .join("; ");
            let violations: Vec<tonic_types::FieldViolation> = v
                .into_iter()
                .map(|f| tonic_types::FieldViolation::new(f.field, f.description))
                .collect();
            Status::with_error_details(
                Code::InvalidArgument,
                msg,
                ErrorDetails::with_bad_request(violations),
            )
        }
        IngestError::Conflict { id } => Status::failed_precondition(format!(
            "idempotency key already used with a different request (notification {id})"
        )),
        IngestError::Unavailable(m) => Status::unavailable(format!("store unavailable: {m}")),
        IngestError::Internal(m) => {
            error!(error = %m, "internal error");
            Status::internal("internal error")
        }
    }
}

pub fn store_status(e: StoreError) -> Status {
    ingest_status(e.into())
}

fn invalid(field: &str, description: &str) -> Status {
    ingest_status(IngestError::Invalid(vec![FieldViolation::new(
        field,
        description,
    )]))
}

fn item_error(e: IngestError) -> proto::ItemError {
    let st = ingest_status(e.clone());
    let field = match &e {
        IngestError::Invalid(v) => v.first().map(|f| f.field.clone()).unwrap_or_default(),
        _ => String::new(),
    };
    proto::ItemError {
        code: st.code() as i32,
        message: st.message().to_string(),
        field,
    }
}

fn send_response(a: Accepted) -> proto::SendResponse {
    proto::SendResponse {
        notification_id: a.id,
        status: status_to_proto(a.status),
        duplicate: a.duplicate,
        error: None,
    }
}

pub struct DispatchService {
    ingest: Arc<Ingest>,
    store: Arc<dyn Store>,
    /// How often a WatchReceipts stream looks for new receipts when it has none.
    receipts_poll: Duration,
}

impl DispatchService {
    pub fn new(ingest: Arc<Ingest>, store: Arc<dyn Store>) -> Self {
        Self {
            ingest,
            store,
            receipts_poll: Duration::from_millis(100),
        }
    }
}

impl DispatchService {
    /// The notification `id` if it exists and belongs to `tenant`.
    async fn owned(
        &self,
        id: &str,
        tenant: &str,
    ) -> Result<Option<crate::store::NotificationView>, Status> {
        Ok(self
            .store
            .get(id)
            .await
            .map_err(store_status)?
            .filter(|v| v.notification.tenant == tenant))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl proto::dispatch_server::Dispatch for DispatchService {
    async fn send(
        &self,
        req: Request<proto::SendRequest>,
    ) -> Result<Response<proto::SendResponse>, Status> {
        let caller = authorize(&req, Scope::Send)?;
        let draft = draft_from_proto(req.into_inner(), "").map_err(ingest_status)?;
        let a = self
            .ingest
            .send(&caller.tenant, draft)
            .await
            .map_err(ingest_status)?;
        Ok(Response::new(send_response(a)))
    }

    async fn send_batch(
        &self,
        req: Request<proto::SendBatchRequest>,
    ) -> Result<Response<proto::SendBatchResponse>, Status> {
        let caller = authorize(&req, Scope::Send)?;
        let items = req.into_inner().items;
        if items.len() > self.ingest.max_batch() {
            return Err(invalid(
                "items",
                &format!(
                    "{} items is over the limit of {} per batch",
                    items.len(),
                    self.ingest.max_batch()
                ),
            ));
        }
        let drafts = items
            .into_iter()
            // Fields are named `items[i].…` below, for the items that fail: formatting the
            // prefix for every item was most of this conversion's own time.
            .map(|r| draft_from_proto(r, ""))
            .collect::<Vec<_>>();
        let results = self
            .ingest
            .send_batch(&caller.tenant, drafts)
            .await
            .map_err(ingest_status)?;
        let results = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| proto::SendBatchResult {
                result: Some(match r {
                    Ok(a) => proto::send_batch_result::Result::Ok(send_response(a)),
                    Err(e) => proto::send_batch_result::Result::Error(item_error(
                        prefix_fields_once(e, &format!("items[{i}].")),
                    )),
                }),
            })
            .collect();
        Ok(Response::new(proto::SendBatchResponse { results }))
    }

    type SendStreamStream = BoxStream<proto::SendResponse>;

    async fn send_stream(
        &self,
        req: Request<tonic::Streaming<proto::SendRequest>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        let caller = authorize(&req, Scope::Send)?;
        let inbound = req.into_inner();
        let ingest = self.ingest.clone();
        let (tx, rx) = mpsc::channel::<Result<proto::SendResponse, Status>>(2048);
        tokio::spawn(async move {
            // Whatever has arrived is written together (one round trip per shard).
            let mut chunks = inbound.ready_chunks(1000);
            let mut seen = 0usize;
            while let Some(chunk) = chunks.next().await {
                let mut drafts = Vec::with_capacity(chunk.len());
                for item in chunk {
                    match item {
                        Ok(r) => drafts.push(draft_from_proto(r, "")),
                        Err(st) => {
                            let _ = tx.send(Err(st)).await;
                            return;
                        }
                    }
                }
                let n = drafts.len();
                match ingest.send_batch(&caller.tenant, drafts).await {
                    Ok(results) => {
                        for r in results {
                            let resp = match r {
                                Ok(a) => send_response(a),
                                Err(e) => proto::SendResponse {
                                    error: Some(item_error(e)),
                                    ..Default::default()
                                },
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let mut st = ingest_status(e);
                        if st.code() == Code::Unavailable {
                            st = Status::unavailable(format!(
                                "{} ({} items acknowledged before this)",
                                st.message(),
                                seen
                            ));
                        }
                        let _ = tx.send(Err(st)).await;
                        return;
                    }
                }
                seen += n;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel(
        &self,
        req: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::CancelResponse>, Status> {
        use proto::cancel_request::Target;
        let caller = authorize(&req, Scope::Send)?;
        let target = match req.into_inner().target {
            Some(Target::NotificationId(id)) if !id.is_empty() => {
                if shard_of(&id).is_none() {
                    return Err(invalid(
                        "notification_id",
                        "is not a Herald notification id",
                    ));
                }
                CancelTarget::Notification(id)
            }
            Some(Target::CampaignId(c)) if !c.is_empty() => CancelTarget::Campaign(c),
            _ => return Err(invalid("target", "give notification_id or campaign_id")),
        };
        let single = matches!(target, CancelTarget::Notification(_));
        if let CancelTarget::Notification(id) = &target {
            // Another tenant's notification is as unknown as one that does not exist.
            if self.owned(id, &caller.tenant).await?.is_none() {
                return Err(Status::not_found("no such notification"));
            }
        }
        let out = self
            .store
            .cancel(target, now_ms())
            .await
            .map_err(store_status)?;
        if single && out.status.is_none() {
            return Err(Status::not_found("no such notification"));
        }
        Ok(Response::new(proto::CancelResponse {
            canceled: out.canceled,
            status: out.status.map(status_to_proto).unwrap_or(0),
        }))
    }

    async fn get_notification(
        &self,
        req: Request<proto::GetNotificationRequest>,
    ) -> Result<Response<proto::Notification>, Status> {
        let caller = authorize(&req, Scope::Read)?;
        let id = req.into_inner().notification_id;
        if id.is_empty() {
            return Err(invalid("notification_id", "is required"));
        }
        if shard_of(&id).is_none() {
            return Err(invalid(
                "notification_id",
                "is not a Herald notification id",
            ));
        }
        match self.owned(&id, &caller.tenant).await? {
            Some(v) => Ok(Response::new(notification_to_proto(v))),
            None => Err(Status::not_found("no such notification")),
        }
    }

    type WatchReceiptsStream = BoxStream<proto::Receipt>;

    async fn watch_receipts(
        &self,
        req: Request<proto::WatchReceiptsRequest>,
    ) -> Result<Response<Self::WatchReceiptsStream>, Status> {
        authorize(&req, Scope::Read)?;
        let r = req.into_inner();
        let mut statuses = Vec::new();
        for (i, s) in r.statuses.iter().enumerate() {
            statuses.push(
                status_from_proto(*s, &format!("statuses[{i}]"))
                    .map_err(|v| ingest_status(v.into()))?,
            );
        }
        // The first read checks the cursor, so a bad one fails the call, not the stream.
        let cursor = (!r.cursor.is_empty()).then_some(r.cursor.clone());
        let first = self
            .store
            .read_receipts(cursor.as_deref(), r.from_start, 1000)
            .await
            .map_err(|e| match e {
                StoreError::Internal(m) if m.contains("cursor") => {
                    invalid("cursor", "is not a cursor this server gave out")
                }
                other => store_status(other),
            })?;
        let store = self.store.clone();
        let poll = self.receipts_poll;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let matches = |rc: &crate::model::Receipt| {
                (r.campaign_id.is_empty() || rc.campaign_id == r.campaign_id)
                    && (statuses.is_empty() || statuses.contains(&rc.status))
                    && r.labels.iter().all(|(k, v)| rc.labels.get(k) == Some(v))
            };
            let mut page = first;
            loop {
                let empty = page.receipts.is_empty();
                for rc in page.receipts.iter().filter(|rc| matches(rc)) {
                    if tx.send(Ok(receipt_to_proto(rc))).await.is_err() {
                        return;
                    }
                }
                if empty {
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                let cursor = page.cursor.clone();
                page = loop {
                    match store.read_receipts(Some(&cursor), false, 1000).await {
                        Ok(p) => break p,
                        Err(StoreError::Unavailable(_)) => {
                            // Keep the stream; the client's cursor stays valid.
                            tokio::select! {
                                _ = tx.closed() => return,
                                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(store_status(e))).await;
                            return;
                        }
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_campaign(
        &self,
        req: Request<proto::GetCampaignRequest>,
    ) -> Result<Response<proto::Campaign>, Status> {
        authorize(&req, Scope::Read)?;
        let id = req.into_inner().campaign_id;
        if id.is_empty() {
            return Err(invalid("campaign_id", "is required"));
        }
        let s = self.store.campaign(&id).await.map_err(store_status)?;
        if s.total == 0 {
            return Err(Status::not_found("no such campaign"));
        }
        Ok(Response::new(campaign_to_proto(&id, s)))
    }
}

/// Adds the item prefix to fields that do not carry it yet.
fn prefix_fields_once(e: IngestError, prefix: &str) -> IngestError {
    match e {
        IngestError::Invalid(v) if v.iter().all(|f| f.field.starts_with(prefix)) => {
            IngestError::Invalid(v)
        }
        IngestError::Invalid(v) => IngestError::Invalid(
            v.into_iter()
                .map(|f| {
                    if f.field.starts_with(prefix) {
                        f
                    } else {
                        FieldViolation::new(format!("{prefix}{}", f.field), f.description)
                    }
                })
                .collect(),
        ),
        other => other,
    }
}

pub struct AdminService {
    store: Arc<dyn Store>,
    live: Arc<Live>,
    /// Channels this deployment sends with.
    enabled: Vec<Channel>,
}

impl AdminService {
    pub fn new(store: Arc<dyn Store>, live: Arc<Live>, enabled: Vec<Channel>) -> Self {
        Self {
            store,
            live,
            enabled,
        }
    }

    fn channel_arg(&self, n: i32) -> Result<Channel, Status> {
        if n == 0 {
            return Err(invalid("channel", "is required"));
        }
        channel_from_proto(n, "channel").map_err(|v| ingest_status(v.into()))
    }
}

impl AdminService {
    /// What applying `new` instead of `old` would do to what is waiting now: each waiting
    /// notification (up to 10,000, in queue order) is decided under both as dispatch would,
    /// with its contact state, the budgets spent and the frequency counts, each charged with
    /// the decisions before it; SMS is priced by its segments.
    async fn impact(&self, old: &Policy, new: &Policy) -> Result<proto::PolicyImpact, Status> {
        let waiting = self.store.waiting(10_000).await.map_err(store_status)?;
        let items: Vec<(&crate::model::Notification, usize)> =
            waiting.iter().map(|(n, ri)| (n, *ri)).collect();
        let store = &*self.store;
        let mut before_usage = crate::dispatch::load_usage(store, &items, old)
            .await
            .map_err(store_status)?;
        let mut after_usage = crate::dispatch::load_usage(store, &items, new)
            .await
            .map_err(store_status)?;
        let paused: std::collections::BTreeSet<Channel> =
            self.live.snapshot().paused.keys().copied().collect();
        let now = crate::model::now_ms();
        let mut impact = proto::PolicyImpact::default();
        for (n, ri) in &waiting {
            // Each is decided as dispatch would, after those before it were charged to the
            // budgets and caps they use.
            let ctx = route_context_for(n, *ri, &before_usage, paused.clone(), old);
            let before = crate::policy::route(n, &ctx, old, now);
            let ctx = route_context_for(n, *ri, &after_usage, paused.clone(), new);
            let after = crate::policy::route(n, &ctx, new, now);
            before_usage.charge(n, &before, old);
            after_usage.charge(n, &after, new);
            let price = |d: &Decision| match d {
                Decision::Send { price_micros, .. } => *price_micros,
                _ => 0,
            };
            impact.cost_delta_micros += price(&after) - price(&before);
            match (&before, &after) {
                (Decision::Send { channel: a, .. }, Decision::Send { channel: b, .. })
                    if a != b =>
                {
                    impact.rerouted += 1
                }
                (Decision::Suppress { .. } | Decision::NoEligibleChannel { .. }, _) => {}
                (_, Decision::Suppress { .. } | Decision::NoEligibleChannel { .. }) => {
                    impact.suppressed += 1
                }
                (Decision::Wait { .. }, _) => {}
                (_, Decision::Wait { .. }) => impact.deferred += 1,
                _ => {}
            }
        }
        Ok(impact)
    }
}

fn policy_version_to_proto(r: &crate::store::PolicyRecord) -> proto::PolicyVersion {
    proto::PolicyVersion {
        version: r.version,
        author: r.author.clone(),
        applied_at: convert::ms_to_ts(r.applied_at),
        diff: r.diff.clone(),
    }
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn get_policy(
        &self,
        req: Request<proto::GetPolicyRequest>,
    ) -> Result<Response<proto::Policy>, Status> {
        authorize(&req, Scope::Admin)?;
        let current = self.store.policy().await.map_err(store_status)?;
        let history = self
            .store
            .policy_history(crate::store::POLICY_HISTORY)
            .await
            .map_err(store_status)?;
        Ok(Response::new(proto::Policy {
            version: current.as_ref().map_or(0, |p| p.version),
            document: current.map(|p| p.document).unwrap_or_default(),
            history: history.iter().map(policy_version_to_proto).collect(),
        }))
    }

    async fn apply_policy(
        &self,
        req: Request<proto::ApplyPolicyRequest>,
    ) -> Result<Response<proto::ApplyPolicyResponse>, Status> {
        authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let new = Policy::parse(&r.document).map_err(|e| {
            ingest_status(IngestError::Invalid(vec![FieldViolation::new(
                format!("document.{}", e.key),
                e.message,
            )]))
        })?;
        let current = self.store.policy().await.map_err(store_status)?;
        let current_version = current.as_ref().map_or(0, |p| p.version);
        let old = match &current {
            Some(rec) => Policy::parse(&rec.document).unwrap_or_default(),
            None => Policy::default(),
        };
        let diff = crate::policy::diff(&old, &new).join("\n");
        if r.dry_run {
            let impact = self.impact(&old, &new).await?;
            return Ok(Response::new(proto::ApplyPolicyResponse {
                version: current_version,
                diff,
                impact: Some(impact),
            }));
        }
        let author = if r.author.is_empty() {
            "unknown".to_string()
        } else {
            r.author
        };
        let applied = self
            .store
            .apply_policy(
                Some(r.expected_version),
                r.document,
                author,
                diff.clone(),
                crate::model::now_ms(),
            )
            .await
            .map_err(store_status)?;
        match applied {
            PolicyApplied::Applied { version } => {
                // This instance switches now; the others within one poll interval.
                self.live.refresh().await.map_err(store_status)?;
                Ok(Response::new(proto::ApplyPolicyResponse {
                    version,
                    diff,
                    impact: None,
                }))
            }
            PolicyApplied::Stale { current } => Err(Status::failed_precondition(format!(
                "expected_version {} is stale: version {current} is in force",
                r.expected_version
            ))),
        }
    }

    async fn pause_channel(
        &self,
        req: Request<proto::PauseChannelRequest>,
    ) -> Result<Response<proto::ChannelAck>, Status> {
        authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let channel = self.channel_arg(r.channel)?;
        if !r.account.is_empty() {
            return Err(invalid(
                "account",
                "pausing one account of a channel is not supported yet; leave it empty",
            ));
        }
        let reason = if r.reason.is_empty() {
            "paused by an operator".to_string()
        } else {
            r.reason
        };
        self.store
            .set_paused(channel, Some(reason))
            .await
            .map_err(store_status)?;
        // This instance applies it at once; the others within one poll interval.
        self.live.refresh().await.map_err(store_status)?;
        Ok(Response::new(proto::ChannelAck {}))
    }

    async fn resume_channel(
        &self,
        req: Request<proto::ResumeChannelRequest>,
    ) -> Result<Response<proto::ChannelAck>, Status> {
        authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let channel = self.channel_arg(r.channel)?;
        if !r.account.is_empty() {
            return Err(invalid(
                "account",
                "resuming one account of a channel is not supported yet; leave it empty",
            ));
        }
        self.store
            .set_paused(channel, None)
            .await
            .map_err(store_status)?;
        self.live.refresh().await.map_err(store_status)?;
        Ok(Response::new(proto::ChannelAck {}))
    }

    async fn get_channel_status(
        &self,
        req: Request<proto::GetChannelStatusRequest>,
    ) -> Result<Response<proto::ChannelStatusResponse>, Status> {
        authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let only = match r.channel {
            0 => None,
            n => Some(self.channel_arg(n)?),
        };
        let depth = self.store.queue_depth().await.map_err(store_status)?;
        let snap = self.live.snapshot();
        let channels = self
            .enabled
            .iter()
            .filter(|c| only.is_none_or(|o| o == **c))
            .map(|c| (c, self.live.local_status(*c)))
            .map(|(c, local)| proto::ChannelStatus {
                channel: channel_to_proto(*c),
                paused: snap.paused.contains_key(c),
                circuit: local.circuit.to_string(),
                rate_per_second: local.rate_per_second,
                throttled: local.held,
                queue_depth: depth
                    .ready
                    .iter()
                    .filter(|((ch, _), _)| ch == c)
                    .map(|(_, n)| *n)
                    .sum(),
            })
            .collect();
        Ok(Response::new(proto::ChannelStatusResponse { channels }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let channel =
            channel_from_proto(r.channel, "channel").map_err(|v| ingest_status(v.into()))?;
        let limit = match r.limit {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let page = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let list = self
            .store
            .dead_letters(channel, limit, page)
            .await
            .map_err(|e| match e {
                StoreError::BadCursor(_) => {
                    invalid("page_token", "is not a page token this server gave out")
                }
                other => store_status(other),
            })?;
        Ok(Response::new(proto::ListDeadLettersResponse {
            dead_letters: list
                .letters
                .into_iter()
                .map(|d| proto::DeadLetter {
                    notification_id: d.id,
                    channel: channel_to_proto(d.channel),
                    error_class: d.class.map(|c| i32::from(c.number())).unwrap_or(0),
                    error_code: d.code,
                    error_message: d.message,
                    at: convert::ms_to_ts(d.at),
                })
                .collect(),
            next_page_token: list.next.unwrap_or_default(),
        }))
    }

    async fn redrive_dead_letters(
        &self,
        req: Request<proto::RedriveDeadLettersRequest>,
    ) -> Result<Response<proto::RedriveDeadLettersResponse>, Status> {
        authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let channel = self.channel_arg(r.channel)?;
        const MAX_IDS: usize = 10_000;
        if r.notification_ids.len() > MAX_IDS {
            return Err(invalid(
                "notification_ids",
                &format!(
                    "{} ids is over the limit of {MAX_IDS}; leave it empty for all",
                    r.notification_ids.len()
                ),
            ));
        }
        for (i, id) in r.notification_ids.iter().enumerate() {
            if shard_of(id).is_none() {
                return Err(invalid(
                    &format!("notification_ids[{i}]"),
                    "is not a Herald notification id",
                ));
            }
        }
        let out = self
            .store
            .redrive_dead_letters(channel, &r.notification_ids, now_ms())
            .await
            .map_err(store_status)?;
        metrics::counter!("herald_redriven_total", "channel" => channel.name())
            .increment(out.redriven);
        tracing::info!(
            channel = channel.name(),
            redriven = out.redriven,
            records_gone = out.gone,
            "dead letters redriven"
        );
        Ok(Response::new(proto::RedriveDeadLettersResponse {
            redriven: out.redriven,
        }))
    }
}
