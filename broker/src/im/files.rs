//! File transfer, the broker's side: chunks published to `files/{id}/{index}` are
//! checked against the upload's manifest and stored (sealed), never fanned out; who
//! may fetch a file; what a user's files take; and the sweep that removes
//! unfinished uploads and expired files. The API commands are in `api::files`.

use std::sync::Arc;
use std::time::Duration;

use natter_shared::im::refusal;

use super::ImState;
use crate::hooks::{self, NotStored, PublishDecision};
use crate::model::{ClientInfo, Message};
use crate::store::{Audience, FileRecord, Store, StoreError};

/// A chunk of an upload. Checked here (the uploader's own unfinished upload, an index
/// in range, the exact length), stored on the blocking pool, acknowledged once stored.
pub fn chunk(state: &Arc<ImState>, client: &ClientInfo, id: &str, index: u32, msg: &Message) -> PublishDecision {
    let Some(me) = client.username.as_deref() else {
        return PublishDecision::Refuse(Some(refusal::LOG_IN));
    };
    let rec = match state.store.file(id) {
        Ok(Some(r)) => r,
        Ok(None) => return PublishDecision::Refuse(Some("no such upload")),
        Err(e) => {
            tracing::error!(file = id, error = %e, "file record unreadable");
            return PublishDecision::TakenOver(hooks::receipt(Err(NotStored::Failed)));
        }
    };
    if rec.owner != me {
        tracing::info!(user = me, file = id, "chunk refused: not the uploader");
        return PublishDecision::Refuse(Some("not your upload"));
    }
    if rec.finished_at.is_some() {
        return PublishDecision::Refuse(Some("this upload is finished"));
    }
    match rec.chunk_len(index) {
        None => return PublishDecision::Refuse(Some("no such chunk in this file")),
        Some(len) if len != msg.payload.len() as u64 => {
            tracing::info!(
                user = me,
                file = id,
                index,
                got = msg.payload.len(),
                want = len,
                "chunk refused: wrong length"
            );
            return PublishDecision::Refuse(Some("wrong chunk length"));
        }
        Some(_) => {}
    }
    let (store, id, data) = (state.store.clone(), id.to_owned(), msg.payload.clone());
    let (done, receipt) = tokio::sync::oneshot::channel();
    let write = move || {
        let stored = store
            .put_chunk(&id, index, &data)
            .and_then(|()| store.commit())
            .map_err(|e| {
                tracing::error!(file = %id, index, error = %e, "chunk not stored");
                NotStored::Failed
            });
        let _ = done.send(stored);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(write)),
        Err(_) => write(),
    }
    PublishDecision::TakenOver(receipt)
}

/// Whether `user` may fetch the file: its uploader, its DM's recipient, or a member
/// of its group now.
pub fn may_fetch(store: &Store, rec: &FileRecord, user: &str) -> Result<bool, StoreError> {
    if rec.owner == user {
        return Ok(true);
    }
    if rec.finished_at.is_none() {
        return Ok(false);
    }
    match &rec.to {
        Audience::User(u) => Ok(u == user),
        Audience::Group(g) => Ok(store.role(g, user)?.is_some()),
    }
}

/// Bytes of files (finished or under way) `user` keeps.
pub fn used_bytes(store: &Store, user: &str) -> Result<u64, StoreError> {
    Ok(store
        .all_files()?
        .iter()
        .filter(|(_, r)| r.owner == user)
        .map(|(_, r)| r.size)
        .sum())
}

/// Removes unfinished uploads older than `upload_ttl` and files older than
/// `file_ttl`. Blocking. Returns how many went.
pub fn sweep(store: &Store, now_secs: u64, upload_ttl: Duration, file_ttl: Duration) -> Result<usize, StoreError> {
    let mut n = 0;
    for (id, r) in store.all_files()? {
        let expired = match r.finished_at {
            None => now_secs.saturating_sub(r.created_at) > upload_ttl.as_secs(),
            Some(at) => now_secs.saturating_sub(at) > file_ttl.as_secs(),
        };
        if expired {
            store.delete_file(&id)?;
            n += 1;
        }
    }
    if n > 0 {
        store.commit()?;
    }
    Ok(n)
}

/// Runs [`sweep`] every minute on the blocking pool while the plugin lives (it
/// holds the state weakly: a stopped broker's store closes).
pub fn start_sweeper(state: &Arc<ImState>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let state = Arc::downgrade(state);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(s) = state.upgrade() else {
                return;
            };
            let swept = tokio::task::spawn_blocking(move || {
                let upload_ttl = Duration::from_secs(u64::from(s.files.upload_ttl_secs.get()));
                sweep(&s.store, crate::clock::unix_secs(), upload_ttl, s.files.file_ttl)
            })
            .await;
            match swept {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(files = n, "expired files and unfinished uploads removed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "file sweep failed; next minute again"),
                Err(e) => tracing::warn!(error = %e, "file sweep task failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: &str, to: Audience, created_at: u64, finished_at: Option<u64>) -> FileRecord {
        FileRecord {
            owner: owner.into(),
            to,
            name: "f".into(),
            size: 5,
            mime: "text/plain".into(),
            sha256: String::new(),
            chunk_size: 4,
            chunks: 2,
            created_at,
            finished_at,
        }
    }

    #[test]
    fn the_sweep_removes_stale_uploads_and_expired_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let day = Duration::from_secs(86_400);
        s.put_file("old-upload", &rec("a", Audience::User("b".into()), 0, None))
            .unwrap();
        s.put_file("new-upload", &rec("a", Audience::User("b".into()), 9_000, None))
            .unwrap();
        s.put_file("old-file", &rec("a", Audience::User("b".into()), 0, Some(0)))
            .unwrap();
        s.put_file("new-file", &rec("a", Audience::User("b".into()), 0, Some(9_000)))
            .unwrap();
        s.put_chunk("old-upload", 0, b"abcd").unwrap();
        let n = sweep(&s, 10_000, Duration::from_secs(3600), day).unwrap();
        assert_eq!(n, 1, "only the stale upload: the old file is within a day");
        assert!(s.chunk_indexes("old-upload").unwrap().is_empty());
        let n = sweep(&s, 2 * 86_400, Duration::from_secs(3600), day).unwrap();
        assert_eq!(n, 3);
        assert!(s.all_files().unwrap().is_empty());
    }

    #[test]
    fn who_may_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let dm = rec("alice", Audience::User("bob".into()), 0, Some(1));
        assert!(may_fetch(&s, &dm, "alice").unwrap());
        assert!(may_fetch(&s, &dm, "bob").unwrap());
        assert!(!may_fetch(&s, &dm, "carol").unwrap());
        let unfinished = rec("alice", Audience::User("bob".into()), 0, None);
        assert!(!may_fetch(&s, &unfinished, "bob").unwrap(), "not before it is checked");
        let group = rec("alice", Audience::Group("nogroup".into()), 0, Some(1));
        assert!(!may_fetch(&s, &group, "bob").unwrap());
    }
}
