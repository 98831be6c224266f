//! The `LISTEN lockstep_ready` connection that wakes idle workers.
//!
//! One background task per store holds a dedicated connection (outside the
//! pool) and turns every notification into a wake-up on a shared
//! [`Notify`]: all current waiters are woken and one permit is stored, so a
//! worker that was between "claimed nothing" and "wait" does not miss it.
//! Notifications are a latency optimisation only: when the connection drops
//! it reconnects with exponential backoff (100 ms … 10 s, with jitter) and
//! wakes everyone after reconnecting, because notifications sent meanwhile
//! are lost; workers keep polling as the fallback.

use super::READY_CHANNEL;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub(super) struct ReadyListener {
    notify: Arc<Notify>,
    reconnects: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl ReadyListener {
    pub(super) fn start(runtime: &tokio::runtime::Handle, url: String) -> ReadyListener {
        let notify = Arc::new(Notify::new());
        let reconnects = Arc::new(AtomicU64::new(0));
        let task = runtime.spawn(listen_forever(url, notify.clone(), reconnects.clone()));
        ReadyListener {
            notify,
            reconnects,
            task,
        }
    }

    pub(super) fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    pub(super) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn wake(notify: &Notify) {
    notify.notify_waiters();
    notify.notify_one();
}

async fn listen_forever(url: String, notify: Arc<Notify>, reconnects: Arc<AtomicU64>) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(10);
    let mut backoff = FIRST_BACKOFF;
    let mut connected_before = false;
    loop {
        match listen_once(&url, &notify, &mut connected_before, &reconnects).await {
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64,
                    "LISTEN {READY_CHANNEL} connection lost; workers fall back to polling");
            }
        }
        // Anything notified while we were away is lost: let workers look.
        wake(&notify);
        let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 4));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connect, listen and forward notifications until the connection drops.
/// `Ok(())` when it had been up (the backoff starts over), `Err` when it
/// could not even connect.
async fn listen_once(
    url: &str,
    notify: &Notify,
    connected_before: &mut bool,
    reconnects: &AtomicU64,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    // Reconnection is ours (with backoff), not the listener's.
    listener.eager_reconnect(false);
    listener.listen(READY_CHANNEL).await?;
    if *connected_before {
        reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!("LISTEN {READY_CHANNEL} connection re-established");
    }
    *connected_before = true;
    wake(notify);
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => wake(notify),
            Ok(None) => return Ok(()),
            Err(error) => {
                tracing::warn!(%error, "LISTEN {READY_CHANNEL} connection failed");
                return Ok(());
            }
        }
    }
}
