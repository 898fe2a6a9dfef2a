//! Webhooks: a JSON event POSTed to every `--hook-url` when an upload starts, completes,
//! fails or expires — for upload sessions (the CLI's `push`, the browser page), tus uploads
//! and whole-file `PUT`s alike.
//!
//! The upload path only queues an event; a task delivers it to each URL with a timeout and
//! retries (backoff 0.5 s, 1 s, 2 s, … at most 60 s). When the queue is full (hooks far slower
//! than uploads) the event is dropped with a warning: a slow or dead hook never slows an
//! upload. Deliveries run concurrently, so a receiver may see one upload's events out of
//! order (a quick upload's `complete` before its `start`): order them by `time`.
//!
//! Body: `{"event": "upload.start"|"upload.complete"|"upload.failure"|"upload.expiry",
//! "source": "session"|"tus"|"put", "upload", "name", "file_id", "size", "new_bytes",
//! "bytes_sent", "state", "error", "time"}` (absent facts are `null`); header
//! `Hoard-Event` repeats the event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::hash::Hash;

/// Events queued for delivery at most; more are dropped.
const QUEUE: usize = 1024;
/// Deliveries in flight at once.
const IN_FLIGHT: usize = 16;
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where and how events are delivered.
#[derive(Clone, Debug)]
pub struct HookConfig {
    /// URLs each event is POSTed to.
    pub urls: Vec<reqwest::Url>,
    /// Deadline of one delivery attempt.
    pub timeout: Duration,
    /// Attempts after the first failed one.
    pub retries: u32,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            urls: Vec::new(),
            timeout: Duration::from_secs(5),
            retries: 3,
        }
    }
}

/// One event, as POSTed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Event {
    /// `upload.start`, `upload.complete`, `upload.failure` or `upload.expiry`.
    pub event: &'static str,
    /// `session` (push, the page), `tus` or `put` (`PUT /v1/files/{name}`).
    pub source: &'static str,
    /// Session or tus upload id.
    pub upload: Option<String>,
    /// The name the file gets.
    pub name: Option<String>,
    /// The file's id, once known.
    pub file_id: Option<Hash>,
    /// The file's size, once known.
    pub size: Option<u64>,
    /// Bytes of chunks the store did not have.
    pub new_bytes: Option<u64>,
    /// Request body bytes received for this upload (by this server process).
    pub bytes_sent: Option<u64>,
    /// The upload's state after the event.
    pub state: &'static str,
    /// What went wrong, for failures.
    pub error: Option<String>,
    /// Unix seconds.
    pub time: u64,
}

impl Event {
    /// An event of kind `event` from `source`, stamped now.
    pub fn new(event: &'static str, source: &'static str, state: &'static str) -> Self {
        Event {
            event,
            source,
            state,
            time: crate::unix_now(),
            ..Event::default()
        }
    }
}

/// The queue events go into; cheap to clone.
#[derive(Clone)]
pub struct Hooks {
    tx: Option<mpsc::Sender<Event>>,
    /// The receiving end until [`Hooks::deliver`] takes it.
    rx: Arc<Mutex<Option<mpsc::Receiver<Event>>>>,
    config: Arc<HookConfig>,
}

impl Hooks {
    /// Hooks for `config`; nothing is queued when it has no URL.
    pub fn new(config: HookConfig) -> Self {
        let (tx, rx) = if config.urls.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel(QUEUE);
            (Some(tx), Some(rx))
        };
        Hooks {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            config: Arc::new(config),
        }
    }

    /// Events queued and not yet taken for delivery.
    pub fn pending(&self) -> usize {
        self.tx
            .as_ref()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// Queues `ev` for delivery; never waits.
    pub fn emit(&self, ev: Event) {
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.try_send(ev) {
            tracing::warn!(error = %e, "webhook queue full or closed: event dropped");
        }
    }

    /// Delivers queued events until the queue closes (run once, as a task of the server).
    pub async fn deliver(self) {
        let rx = crate::lock(&self.rx).take();
        let Some(mut rx) = rx else { return };
        let client = match reqwest::Client::builder()
            .timeout(self.config.timeout)
            .user_agent(concat!("hoard/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client; hooks are off");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        while let Some(ev) = rx.recv().await {
            let ev = Arc::new(ev);
            for url in &self.config.urls {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (client, url, ev) = (client.clone(), url.clone(), ev.clone());
                let retries = self.config.retries;
                tokio::spawn(async move {
                    deliver_one(&client, &url, &ev, retries).await;
                    drop(permit);
                });
            }
        }
    }
}

/// POSTs `ev` to `url`, trying again after failures (connection errors, non-2xx answers).
async fn deliver_one(client: &reqwest::Client, url: &reqwest::Url, ev: &Event, retries: u32) {
    let mut wait = Duration::from_millis(500);
    for attempt in 0..=retries {
        let sent = client
            .post(url.clone())
            .header("hoard-event", ev.event)
            .json(ev)
            .send()
            .await;
        let why = match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => e.to_string(),
        };
        if attempt == retries {
            tracing::warn!(%url, event = ev.event, error = why, "webhook failed; giving up");
            return;
        }
        tracing::debug!(%url, event = ev.event, error = why, attempt, "webhook failed; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
}
