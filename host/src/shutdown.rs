//! Graceful shutdown as sessions see it: first *draining* (stop accepting; idle sessions close,
//! sessions inside a transaction may finish it), then *expired* (the grace period is over:
//! every session answers `421` and closes).

use tokio::sync::watch;

/// The sending half, owned by the server loop.
#[derive(Debug)]
pub struct ShutdownController {
    draining: watch::Sender<bool>,
    expired: watch::Sender<bool>,
}

/// The receiving half, one clone per session.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    draining: watch::Receiver<bool>,
    expired: watch::Receiver<bool>,
}

pub fn channel() -> (ShutdownController, ShutdownSignal) {
    let (draining_tx, draining) = watch::channel(false);
    let (expired_tx, expired) = watch::channel(false);
    (ShutdownController { draining: draining_tx, expired: expired_tx }, ShutdownSignal { draining, expired })
}

impl ShutdownController {
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    pub fn expire(&self) {
        self.draining.send_replace(true);
        self.expired.send_replace(true);
    }
}

impl ShutdownSignal {
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once draining has begun.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        wait_until_set(self.draining.clone())
    }

    /// Resolves once the grace period is over.
    pub fn expired(&self) -> impl Future<Output = ()> + Send + 'static {
        wait_until_set(self.expired.clone())
    }
}

async fn wait_until_set(mut rx: watch::Receiver<bool>) {
    // An error means the controller is gone, which only happens once the server has stopped;
    // then there is nothing left to wait for.
    if rx.wait_for(|&v| v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
