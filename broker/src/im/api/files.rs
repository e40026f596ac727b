//! files.limits, files.start, files.finish, files.info, files.fetch: the file
//! protocol's requests (docs/protocol.md, Files). An upload is announced with its
//! manifest, its chunks are published to `files/{id}/{index}` (see `im::files`), and
//! `files.finish` checks size and hash before a file message goes to the mailboxes.

use bytes::Bytes;
use natter_shared::api::{ErrorCode, FileMessage};
use natter_shared::im;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{ApiResult, Call, Fail};
use crate::im::files::{may_fetch, used_bytes};
use crate::model::Message;
use crate::store::{Audience, FileRecord, Route, StoredMessage};

pub fn limits(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let f = &c.state.files;
    Ok(json!({
        "max_file_bytes": f.max_file_bytes.get(),
        "chunk_bytes": f.chunk_bytes.get(),
        "quota_bytes": f.quota_bytes.get(),
        "used_bytes": used_bytes(&c.state.store, me)?,
        "upload_ttl_secs": f.upload_ttl_secs.get(),
        "file_ttl_days": f.file_ttl.as_secs() / 86_400,
        "fetch_window": f.fetch_window.get(),
    }))
}

fn file_id(c: &Call<'_>) -> Result<String, Fail> {
    let id = c.field(&c.req.file, "file")?;
    if !im::is_file_id(id) {
        return Err(Fail::new(ErrorCode::BadRequest, "a file id is 32 hex digits"));
    }
    Ok(id.to_owned())
}

fn load(c: &Call<'_>, id: &str) -> Result<FileRecord, Fail> {
    c.state
        .store
        .file(id)?
        .ok_or_else(|| Fail::new(ErrorCode::NotFound, format!("no such file: {id}")))
}

pub fn start(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let f = &c.state.files;
    let name = c.field(&c.req.name, "name")?;
    if name.is_empty() || name.chars().count() > 255 || name.contains(['/', '\\', '\0']) || name == "." || name == ".."
    {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            "a file name is 1 to 255 characters without / or \\",
        ));
    }
    let size = c
        .req
        .size
        .ok_or_else(|| Fail::new(ErrorCode::BadRequest, "missing field `size`"))?;
    if size > f.max_file_bytes.get() {
        return Err(Fail::new(
            ErrorCode::Forbidden,
            format!("too large: files may be {} bytes at most", f.max_file_bytes.get()),
        ));
    }
    let sha = c.field(&c.req.sha256, "sha256")?.to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Fail::new(ErrorCode::BadRequest, "sha256 is 64 hex digits"));
    }
    let mime = c.req.mime.clone().unwrap_or_else(|| "application/octet-stream".into());
    if mime.len() > 100 || !mime.contains('/') {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            "mime is a MIME type such as text/plain",
        ));
    }
    let to = match (&c.req.user, &c.req.group) {
        (Some(_), None) => {
            let u = c.user()?;
            if c.state.store.blocked(u, me)? {
                return Err(Fail::new(ErrorCode::Forbidden, refused_to(u)));
            }
            if c.state.config.dm_policy == crate::config::DmPolicy::Friends
                && u != me
                && !c.state.store.are_friends(me, u)?
            {
                return Err(Fail::new(ErrorCode::Forbidden, refused_to(u)));
            }
            Audience::User(u.to_owned())
        }
        (None, Some(_)) => {
            let g = c.group_name()?;
            if c.state.store.role(g, me)?.is_none() {
                return Err(Fail::new(ErrorCode::NotMember, format!("not a member of {g}")));
            }
            Audience::Group(g.to_owned())
        }
        _ => {
            return Err(Fail::new(
                ErrorCode::BadRequest,
                "give `user` or `group`: who the file is for",
            ))
        }
    };
    let used = used_bytes(&c.state.store, me)?;
    if used.saturating_add(size) > f.quota_bytes.get() {
        return Err(Fail::new(
            ErrorCode::Forbidden,
            format!(
                "over your quota: {used} of {} bytes used; this file needs {size}",
                f.quota_bytes.get()
            ),
        ));
    }
    let chunk_size = f.chunk_bytes.get();
    let chunks = u32::try_from(size.div_ceil(u64::from(chunk_size)))
        .map_err(|_| Fail::new(ErrorCode::BadRequest, "too many chunks"))?;
    let id = crate::accounts::tokens::random_hex(16);
    let rec = FileRecord {
        owner: me.to_owned(),
        to,
        name: name.to_owned(),
        size,
        mime,
        sha256: sha,
        chunk_size,
        chunks,
        created_at: crate::clock::unix_secs(),
        finished_at: None,
    };
    c.state.store.put_file(&id, &rec)?;
    tracing::info!(user = me, file = %id, size, chunks, "upload started");
    Ok(json!({
        "file": id,
        "chunk_size": chunk_size,
        "chunks": chunks,
        "topic": format!("{}/{id}/", im::FILES),
        "expires_in_secs": f.upload_ttl_secs.get(),
    }))
}

fn refused_to(u: &str) -> String {
    format!("{u} does not accept your messages")
}

/// The chunks still missing, as the uploader (and `finish`) sees them.
fn missing(c: &Call<'_>, id: &str, rec: &FileRecord) -> Result<Vec<u32>, Fail> {
    let have = c.state.store.chunk_indexes(id)?;
    Ok((0..rec.chunks).filter(|i| have.binary_search(i).is_err()).collect())
}

pub fn finish(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let id = file_id(c)?;
    let mut rec = load(c, &id)?;
    if rec.owner != me {
        return Err(Fail::new(ErrorCode::Forbidden, "not your upload"));
    }
    if rec.finished_at.is_some() {
        return Err(Fail::new(ErrorCode::Conflict, "already finished"));
    }
    let missing = missing(c, &id, &rec)?;
    if !missing.is_empty() {
        return Err(Fail::new(
            ErrorCode::Conflict,
            format!("{} chunks missing, the first {}", missing.len(), missing[0]),
        ));
    }
    let mut hash = Sha256::new();
    let mut size = 0u64;
    for i in 0..rec.chunks {
        let chunk = c
            .state
            .store
            .chunk(&id, i)?
            .ok_or_else(|| Fail::new(ErrorCode::Conflict, format!("chunk {i} missing")))?;
        size += chunk.len() as u64;
        hash.update(&chunk);
    }
    let got: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if size != rec.size || got != rec.sha256 {
        // Start over: the chunks go, the manifest stays for a new try.
        c.state.store.delete_chunks(&id)?;
        tracing::info!(user = me, file = %id, "upload refused: size or hash differs");
        return Err(Fail::new(
            ErrorCode::BadRequest,
            format!("the file does not match its manifest (size {size}, sha256 {got}); send the chunks again"),
        ));
    }
    rec.finished_at = Some(crate::clock::unix_secs());
    c.state.store.put_file(&id, &rec)?;
    let body = FileMessage {
        kind: "file".into(),
        file: id.clone(),
        name: rec.name.clone(),
        size: rec.size,
        mime: rec.mime.clone(),
        sha256: rec.sha256.clone(),
        chunk_size: rec.chunk_size,
        chunks: rec.chunks,
    };
    let payload = serde_json::to_vec(&body).map_err(|e| Fail::new(ErrorCode::Internal, e.to_string()))?;
    let message = StoredMessage {
        from: me.to_owned(),
        ts: crate::clock::unix_ms(),
        payload: Bytes::from(payload),
        user_properties: Vec::new(),
        content_type: Some(im::FILE_CONTENT_TYPE.into()),
    };
    let route = match &rec.to {
        Audience::User(u) => Route::Direct { to: u.clone(), qos: 1 },
        Audience::Group(g) => Route::Group {
            group: g.clone(),
            members: c.state.store.members_shared(g)?,
            qos: 1,
        },
    };
    // Delivered and stored like any message; answered once stored.
    let receipt = c
        .state
        .mailboxes
        .post(message, route, None, None, true)
        .map_err(|_| Fail::new(ErrorCode::Internal, "the message writer has stopped"))?;
    if let Some(r) = receipt {
        if !matches!(r.blocking_recv(), Ok(Ok(()))) {
            return Err(Fail::new(ErrorCode::Internal, "the file message could not be stored"));
        }
    }
    tracing::info!(user = me, file = %id, size = rec.size, "file sent");
    Ok(serde_json::to_value(&body).unwrap_or_default())
}

pub fn info(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let id = file_id(c)?;
    let rec = load(c, &id)?;
    if !may_fetch(&c.state.store, &rec, me)? {
        return Err(Fail::new(ErrorCode::NotFound, format!("no such file: {id}")));
    }
    let missing = if rec.owner == me && rec.finished_at.is_none() {
        Some(missing(c, &id, &rec)?)
    } else {
        None
    };
    Ok(json!({
        "file": id,
        "from": rec.owner,
        "name": rec.name,
        "size": rec.size,
        "mime": rec.mime,
        "sha256": rec.sha256,
        "chunk_size": rec.chunk_size,
        "chunks": rec.chunks,
        "finished": rec.finished_at.is_some(),
        "missing": missing,
    }))
}

/// Publishes the chunks asked for (at most `fetch_window`) to
/// `inbox/{me}/file/{id}/{index}`, before this request's answer.
pub fn fetch(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let id = file_id(c)?;
    let rec = load(c, &id)?;
    if !may_fetch(&c.state.store, &rec, me)? || rec.finished_at.is_none() {
        return Err(Fail::new(ErrorCode::NotFound, format!("no such file: {id}")));
    }
    let window = c.state.files.fetch_window.get() as usize;
    let wanted: Vec<u32> = match &c.req.chunks {
        Some(list) => list.iter().copied().filter(|i| *i < rec.chunks).take(window).collect(),
        None => (0..rec.chunks).take(window).collect(),
    };
    for &i in &wanted {
        let data = c
            .state
            .store
            .chunk(&id, i)?
            .ok_or_else(|| Fail::new(ErrorCode::Internal, format!("chunk {i} is gone")))?;
        let topic = im::inbox_file_chunk(me, &id, i);
        let msg = Message::broker(topic, Bytes::from(data), natter_shared::codec::QoS::AtLeastOnce, false);
        let _ = c.state.router.publish(std::sync::Arc::new(msg));
    }
    Ok(json!({ "file": id, "sent": wanted, "chunks": rec.chunks }))
}
