//! `sandbox`: an in-process platform with configurable latency and failure rates that reports
//! DELIVERED and READ receipts, like a real platform's webhooks would. The embedded default
//! sends here, so Herald can be tried with nothing else running.

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;

use super::{Channel, Delivery, ReceiptSink, SendContext};
use crate::config::SandboxConfig;
use crate::model::{self, now_ms, Detail, Notification, Outcome, ProviderReceipt, Status};

pub struct Sandbox {
    cfg: SandboxConfig,
    receipts: ReceiptSink,
}

impl Sandbox {
    pub fn new(cfg: SandboxConfig, receipts: ReceiptSink) -> Self {
        Self { cfg, receipts }
    }

    fn later(&self, n: &Notification, provider_id: String, status: Status, after: Duration) {
        let tx = self.receipts.clone();
        let id = n.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx
                .send(ProviderReceipt {
                    channel: model::Channel::Sandbox,
                    notification_id: id,
                    provider_id,
                    status,
                    error_class: None,
                    error_code: String::new(),
                    at: now_ms(),
                })
                .await;
        });
    }
}

#[async_trait]
impl Channel for Sandbox {
    fn kind(&self) -> model::Channel {
        model::Channel::Sandbox
    }

    async fn send(&self, n: &Notification, _ctx: &SendContext<'_>) -> Delivery {
        if !self.cfg.latency.0.is_zero() {
            tokio::time::sleep(self.cfg.latency.0).await;
        }
        let (fail, dead, read) = {
            let mut rng = rand::rng();
            (
                rng.random_bool(self.cfg.failure_rate),
                rng.random_bool(self.cfg.dead_rate),
                rng.random_bool(self.cfg.read_rate),
            )
        };
        if fail {
            return Delivery::of(Outcome::Retry {
                after: None,
                detail: Detail::new("sandbox_unavailable", "simulated transient failure"),
            });
        }
        if dead {
            return Delivery::of(Outcome::DeadAddress {
                detail: Detail::new("sandbox_dead", "simulated dead address"),
            });
        }
        let provider_id = format!("sbx_{}", n.id);
        self.later(
            n,
            provider_id.clone(),
            Status::Delivered,
            self.cfg.deliver_after.0,
        );
        if read {
            let at = self.cfg.deliver_after.0 + self.cfg.read_after.0;
            self.later(n, provider_id.clone(), Status::Read, at);
        }
        Delivery::of(Outcome::Sent { provider_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use crate::model::{Content, Recipient};
    use tokio::sync::mpsc;

    fn note() -> Notification {
        Notification {
            id: model::make_id(0),
            recipient: Recipient::default(),
            route: vec![model::Channel::Sandbox],
            content: Content::default(),
            ..Default::default()
        }
    }

    fn ctx() -> SendContext<'static> {
        SendContext {
            attempt: 1,
            addresses: &[],
            last_inbound: 0,
            now: 0,
        }
    }

    #[tokio::test]
    async fn sends_then_reports_delivered_and_read() {
        let (tx, mut rx) = mpsc::channel(4);
        let cfg = SandboxConfig {
            deliver_after: HumanDuration(Duration::from_millis(1)),
            read_after: HumanDuration(Duration::from_millis(1)),
            ..Default::default()
        };
        let sb = Sandbox::new(cfg, tx);
        let n = note();
        let out = sb.send(&n, &ctx()).await.outcome;
        assert!(matches!(out, Outcome::Sent { .. }), "{out:?}");
        let a = rx.recv().await.expect("delivered receipt");
        let b = rx.recv().await.expect("read receipt");
        assert_eq!((a.status, b.status), (Status::Delivered, Status::Read));
        assert_eq!(a.notification_id, n.id);
    }

    #[tokio::test]
    async fn failure_rates_apply() {
        let (tx, _rx) = mpsc::channel(4);
        let sb = Sandbox::new(
            SandboxConfig {
                failure_rate: 1.0,
                ..Default::default()
            },
            tx.clone(),
        );
        assert!(matches!(
            sb.send(&note(), &ctx()).await.outcome,
            Outcome::Retry { .. }
        ));
        let sb = Sandbox::new(
            SandboxConfig {
                dead_rate: 1.0,
                ..Default::default()
            },
            tx,
        );
        assert!(matches!(
            sb.send(&note(), &ctx()).await.outcome,
            Outcome::DeadAddress { .. }
        ));
    }
}
