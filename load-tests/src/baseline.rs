//! Baselines measured in the same run as the scenarios they bound: a bare tonic server that
//! answers Herald's request shape with no work (`baseline-grpc`, its own process), and raw
//! pipelined `XADD` of the same payload size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use herald::proto::dispatch_server::{Dispatch, DispatchServer};
use herald::proto::{
    Campaign, CancelRequest, CancelResponse, GetCampaignRequest, GetNotificationRequest,
    Notification, Receipt, SendBatchRequest, SendBatchResponse, SendBatchResult, SendRequest,
    SendResponse, Status as PStatus, WatchReceiptsRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::stats::Latency;

/// Answers like Herald (a 26-character id, QUEUED) without storing anything.
#[derive(Default)]
pub struct Bare {
    seq: AtomicU64,
}

impl Bare {
    fn answer(&self) -> SendResponse {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        SendResponse {
            notification_id: format!("01BARE{n:020}"),
            status: PStatus::Queued as i32,
            duplicate: false,
            error: None,
        }
    }
}

type BoxStream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatch for Bare {
    async fn send(&self, _r: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        Ok(Response::new(self.answer()))
    }

    async fn send_batch(
        &self,
        r: Request<SendBatchRequest>,
    ) -> Result<Response<SendBatchResponse>, Status> {
        let results = r
            .into_inner()
            .items
            .iter()
            .map(|_| SendBatchResult {
                result: Some(herald::proto::send_batch_result::Result::Ok(self.answer())),
            })
            .collect();
        Ok(Response::new(SendBatchResponse { results }))
    }

    type SendStreamStream = BoxStream<SendResponse>;

    async fn send_stream(
        &self,
        r: Request<Streaming<SendRequest>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        let mut inbound = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let first = self.seq.fetch_add(1 << 40, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut n = first;
            while let Some(Ok(_)) = inbound.next().await {
                n += 1;
                let resp = SendResponse {
                    notification_id: format!("01BARE{n:020}"),
                    status: PStatus::Queued as i32,
                    duplicate: false,
                    error: None,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel(&self, _r: Request<CancelRequest>) -> Result<Response<CancelResponse>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }

    async fn get_notification(
        &self,
        _r: Request<GetNotificationRequest>,
    ) -> Result<Response<Notification>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }

    type WatchReceiptsStream = BoxStream<Receipt>;

    async fn watch_receipts(
        &self,
        _r: Request<WatchReceiptsRequest>,
    ) -> Result<Response<Self::WatchReceiptsStream>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }

    async fn get_campaign(
        &self,
        _r: Request<GetCampaignRequest>,
    ) -> Result<Response<Campaign>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }
}

/// `herald-load baseline-grpc --listen ADDR`: serves until killed.
pub async fn serve_bare(listen: &str) -> Result<()> {
    let addr = listen.parse().context("--listen")?;
    tonic::transport::Server::builder()
        .add_service(DispatchServer::new(Bare::default()))
        .serve(addr)
        .await
        .context("bare gRPC server")?;
    Ok(())
}

/// Raw pipelined `XADD` of `count` entries with a `payload_len`-byte field, `pipeline` per
/// round trip, `conc` round trips in flight, spread over 16 streams like Herald's shards.
/// Returns (entries, elapsed, latency per pipeline).
pub async fn raw_xadd(
    redis_port: u16,
    count: u64,
    payload_len: usize,
    pipeline: usize,
    conc: usize,
) -> Result<(u64, Duration, Latency)> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/"))?;
    let con = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to redis for the XADD baseline")?;
    let payload = Arc::new(vec![b'x'; payload_len]);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Latency::new());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (mut con, payload, next, done, lat) = (
            con.clone(),
            payload.clone(),
            next.clone(),
            done.clone(),
            lat.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(pipeline as u64, Ordering::Relaxed);
                if from >= count {
                    break;
                }
                let to = (from + pipeline as u64).min(count);
                let mut p = redis::pipe();
                for i in from..to {
                    p.cmd("XADD")
                        .arg(format!("baseline:{{{}}}:ready", i % 16))
                        .arg("*")
                        .arg("p")
                        .arg(payload.as_slice())
                        .ignore();
                }
                let t = Instant::now();
                p.query_async::<()>(&mut con).await?;
                lat.record(t.elapsed());
                done.fetch_add(to - from, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let lat = Arc::try_unwrap(lat).unwrap_or_default();
    Ok((done.load(Ordering::Relaxed), elapsed, lat))
}
