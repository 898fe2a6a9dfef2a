//! The server's upkeep: the periodic sweeps of idle uploads and the periodic gc, and the admin
//! endpoints that run gc and fsck now.

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};

use super::error::ApiError;
use super::{AppState, blocking, tus, uploads};
use crate::error::Error;
use crate::fsck::{FsckOptions, FsckReport};
use crate::gc::GcReport;

/// Expires idle upload sessions and tus uploads now and then.
pub(super) async fn sweep_sessions(state: AppState) {
    let every =
        (state.limits().session_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let st = state.clone();
        match blocking(move || st.0.sessions.sweep()).await {
            Ok(expired) => {
                for p in expired {
                    tracing::info!(session = %p.id, "upload session expired");
                    state.0.hooks.emit(uploads::event("upload.expiry", &p));
                }
            }
            Err(e) => tracing::warn!(error = ?e, "session sweep failed"),
        }
        let st = state.clone();
        match blocking(move || st.0.tus.sweep()).await {
            Ok(gone) => tus::expired(&state, &gone),
            Err(e) => tracing::warn!(error = ?e, "tus sweep failed"),
        }
    }
}

/// Runs gc every `gc_interval` (if not zero).
pub(super) async fn collect_garbage(state: AppState) {
    let every = state.limits().gc_interval;
    if every.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(every).await;
        let store = state.store();
        let opts = state.limits().gc;
        let ran = blocking(move || crate::gc::gc_periodic(&*store, &opts, every)).await;
        if let Ok(r) = &ran {
            state.0.metrics.gc_ran(r.is_some());
        }
        match ran {
            Ok(Some(r)) => tracing::info!(
                chunks_freed = r.chunks_freed,
                bytes_freed = r.bytes_freed,
                packs_rewritten = r.packs_rewritten,
                "gc done"
            ),
            Ok(None) => tracing::info!(
                "gc skipped: another process runs gc or fsck, or finished one within the interval"
            ),
            Err(e) => tracing::warn!(error = ?e, "gc failed"),
        }
    }
}

/// One gc with the server's options, on the blocking pool.
async fn run_gc(state: &AppState) -> Result<GcReport, ApiError> {
    let store = state.store();
    let opts = state.limits().gc;
    let r = blocking(move || crate::gc::gc(&*store, &opts)).await?;
    state.0.metrics.gc_ran(true);
    Ok(r)
}

/// Query of `POST /v1/fsck`.
#[derive(serde::Deserialize)]
pub(super) struct FsckQuery {
    #[serde(default)]
    repair: bool,
}

/// `POST /v1/fsck[?repair=true]`: checks (and repairs) the store now, going on from an
/// interrupted check; answers the report (status 200 whatever it found: see `clean`).
pub(super) async fn fsck_now(
    State(st): State<AppState>,
    q: Result<Query<FsckQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FsckReport>, ApiError> {
    let Query(q) = q.map_err(|e| Error::Malformed {
        what: "query",
        detail: e.body_text(),
    })?;
    let store = st.store();
    let opts = FsckOptions {
        repair: q.repair,
        resume: true,
        reindex: false,
        keep_names: false,
    };
    let mut report = blocking(move || crate::fsck::fsck(&*store, &opts, &|_| {})).await?;
    // Paths on the server are for its log, not for clients.
    if let Some(q) = report
        .repair
        .as_mut()
        .and_then(|r| r.chunks.quarantine.take())
    {
        tracing::warn!(quarantine = %q.display(), "fsck quarantined bad chunks");
    }
    if let Some(old) = report.journal.as_mut().and_then(|j| j.rewritten.take()) {
        tracing::warn!(old_journal = %old.display(), "fsck wrote the journal anew");
    }
    if !report.clean {
        tracing::warn!(
            bad_chunks = report.bad_chunks,
            damaged_files = report.damaged_files,
            "fsck found problems"
        );
    }
    Ok(Json(report))
}

/// `POST /v1/gc`: runs gc now (waits for one already running) and answers its report.
pub(super) async fn gc_now(State(st): State<AppState>) -> Result<Json<GcReport>, ApiError> {
    Ok(Json(run_gc(&st).await?))
}

/// A health check counts as fresh for this long: however many load balancers ask, the
/// engines are asked at most about once a second.
const HEALTH_FRESH: Duration = Duration::from_secs(1);

/// `GET /healthz`: `ok` while every engine the store lives on answers (for a store in a
/// bucket: the object store and the index database, each within a couple of seconds), else
/// `503` like any request the engines could not serve, so a load balancer takes this server
/// out until they answer again. A success is kept for [`HEALTH_FRESH`]; checks that arrive
/// meanwhile wait for the one in flight.
pub(super) async fn healthz(State(st): State<AppState>) -> Result<&'static str, ApiError> {
    let mut last_ok = st.0.healthy_at.lock().await;
    if last_ok.is_some_and(|at| at.elapsed() < HEALTH_FRESH) {
        return Ok("ok\n");
    }
    let store = st.0.store.clone();
    blocking(move || store.ping()).await?;
    *last_ok = Some(std::time::Instant::now());
    Ok("ok\n")
}
