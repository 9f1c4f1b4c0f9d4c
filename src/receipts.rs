//! Receipts: the writer that batches what platforms report later (delivery, reads) into the
//! store, where the status machine (statuses only move forward) decides what applies.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::channels::ReceiptSink;
use crate::model::ProviderReceipt;
use crate::store::Store;
use crate::telemetry;

/// Starts the writer; channels get the returned sink. It stops when every sink is dropped.
pub fn spawn_writer(store: Arc<dyn Store>, capacity: usize) -> (ReceiptSink, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<ProviderReceipt>(capacity);
    let handle = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(512);
        while rx.recv_many(&mut buf, 512).await > 0 {
            let batch = std::mem::take(&mut buf);
            for r in &batch {
                telemetry::receipt(r.channel, r.status);
            }
            let mut tries = 0u32;
            loop {
                match store.record_receipts(batch.clone()).await {
                    Ok(()) => break,
                    Err(e) => {
                        telemetry::store_error("record_receipts");
                        tries += 1;
                        if tries >= 20 {
                            warn!(error = %e, dropped = batch.len(), "could not record receipts");
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(tries))).await;
                    }
                }
            }
        }
    });
    (tx, handle)
}
