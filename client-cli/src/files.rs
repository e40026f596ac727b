//! Files, the client's side of docs/protocol.md (Files): sending one (manifest,
//! chunks with a few in flight, finish) and fetching one into a directory, resumable:
//! chunks land in `.{name}.{id}.part` at their offsets, their indexes in a sidecar,
//! so a download cut off asks only for what is missing next time. The SHA-256 is
//! checked before the file gets its name.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use natter_shared::api::{command as cmd, FileMessage, Request};
use natter_shared::codec::Properties;
use natter_shared::im;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cli::Global;
use crate::error::Failure;
use crate::link::{Event, Link};
use crate::session::Target;

/// Chunks sent at once, each waiting for its PUBACK.
const IN_FLIGHT: usize = 8;

/// Who a file goes to.
pub enum To {
    User(String),
    Group(String),
}

/// A progress bar on stderr (hidden when stderr is not a terminal, or for `--json`).
pub fn bar(len: u64, what: &str, json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}") {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_owned());
    b
}

fn local(e: std::io::Error, what: &str, path: &Path) -> Failure {
    Failure::Local(format!("{what} {}: {e}", path.display()))
}

/// A MIME type from the file name's extension.
pub fn mime_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "md" => "text/plain",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// Where unfinished uploads are remembered, so sending the same file to the same
/// place again sends only the chunks the broker is missing: `uploads.json` in the
/// config dir, keyed by server, user, recipient and the file's SHA-256.
pub struct Uploads {
    pub path: PathBuf,
    /// `server|user`, the first part of every key.
    pub account: String,
}

impl Uploads {
    pub fn for_target(t: &Target) -> Result<Uploads, Failure> {
        Ok(Uploads {
            path: crate::profile::config_dir()?.join("uploads.json"),
            account: format!("{}|{}", t.server, t.user),
        })
    }

    fn load(&self) -> std::collections::BTreeMap<String, String> {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn set(&self, key: &str, id: Option<&str>) {
        let mut all = self.load();
        match id {
            Some(id) => all.insert(key.to_owned(), id.to_owned()),
            None => all.remove(key),
        };
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Best effort: without it an upload starts over, nothing worse.
        let _ = std::fs::write(&self.path, serde_json::to_vec(&all).unwrap_or_default());
    }
}

/// What sending a file came to.
pub struct Sent {
    pub message: FileMessage,
    /// Chunks the broker had already from an earlier, cut-off try.
    pub resumed: u64,
}

/// Sends `path` to `to`; returns the file message the recipients got.
///
/// # Errors
/// The file cannot be read, the broker refuses it (limits, quota, recipient), the
/// connection fails.
pub async fn send(link: &Link, to: To, path: &Path, bar: &ProgressBar, uploads: &Uploads) -> Result<Sent, Failure> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Failure::Usage(format!("{}: not a file name", path.display())))?
        .to_owned();
    let meta = std::fs::metadata(path).map_err(|e| local(e, "cannot read", path))?;
    if !meta.is_file() {
        return Err(Failure::Usage(format!("{} is not a file", path.display())));
    }
    let size = meta.len();
    let limits = link.call(cmd::FILES_LIMITS, Request::default()).await?;
    let max = limits["max_file_bytes"].as_u64().unwrap_or(u64::MAX);
    if size > max {
        return Err(Failure::Refused(format!(
            "{name} is {size} bytes; this broker takes files of {max} bytes at most"
        )));
    }
    let sha = hash_file(path)?;
    let key = format!(
        "{}|{}|{sha}",
        uploads.account,
        match &to {
            To::User(u) => format!("user:{u}"),
            To::Group(g) => format!("group:{g}"),
        }
    );
    // The same file to the same place, cut off before: only what is missing.
    let earlier = match uploads.load().get(&key) {
        Some(id) => resumable(link, id).await,
        None => None,
    };
    let (id, chunk_size, chunks, missing) = match earlier {
        Some(e) => e,
        None => {
            let mut req = Request {
                name: Some(name.clone()),
                size: Some(size),
                sha256: Some(sha),
                mime: Some(mime_of(path).to_owned()),
                ..Request::default()
            };
            match to {
                To::User(u) => req.user = Some(u),
                To::Group(g) => req.group = Some(g),
            }
            let started = link.call(cmd::FILES_START, req).await?;
            let id = started["file"]
                .as_str()
                .ok_or_else(|| Failure::Local("the broker gave no file id".into()))?
                .to_owned();
            let chunk_size = started["chunk_size"].as_u64().unwrap_or(0).max(1);
            let chunks = started["chunks"].as_u64().unwrap_or(0);
            uploads.set(&key, Some(&id));
            (id, chunk_size, chunks, (0..chunks).collect())
        }
    };
    let resumed = chunks - missing.len() as u64;
    bar.set_length(size);
    bar.set_position((resumed * chunk_size).min(size));
    let mut file = std::fs::File::open(path).map_err(|e| local(e, "cannot read", path))?;
    let mut flying: JoinSet<Result<(u64, usize), Failure>> = JoinSet::new();
    for i in missing {
        let mut buf = vec![0u8; chunk_size.min(size - i * chunk_size) as usize];
        file.seek(SeekFrom::Start(i * chunk_size))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| local(e, "cannot read", path))?;
        while flying.len() >= IN_FLIGHT {
            settle(&mut flying, bar).await?;
        }
        let (l, topic) = (link.clone(), im::file_chunk(&id, i as u32));
        flying.spawn(async move {
            let n = buf.len();
            let acked = l.publish(&topic, Bytes::from(buf), Properties::default()).await?;
            if acked.reason >= 0x80 {
                return Err(Failure::Refused(format!(
                    "chunk {i}: {}",
                    acked
                        .reason_string
                        .unwrap_or_else(|| crate::link::reason_text(acked.reason).into())
                )));
            }
            Ok((i, n))
        });
    }
    while !flying.is_empty() {
        settle(&mut flying, bar).await?;
    }
    let done = link
        .call(
            cmd::FILES_FINISH,
            Request {
                file: Some(id),
                ..Request::default()
            },
        )
        .await;
    // Finished, or refused for good (a hash that does not match): either way a new
    // try starts over.
    if !matches!(
        done,
        Err(Failure::Lost(_) | Failure::Timeout(..) | Failure::Unreachable { .. })
    ) {
        uploads.set(&key, None);
    }
    bar.finish_and_clear();
    let message =
        serde_json::from_value(done?).map_err(|e| Failure::Local(format!("unreadable answer to files.finish: {e}")))?;
    Ok(Sent { message, resumed })
}

/// `files.info` for file `id`.
async fn info(link: &Link, id: &str) -> Result<Value, Failure> {
    link.call(
        cmd::FILES_INFO,
        Request {
            file: Some(id.to_owned()),
            ..Request::default()
        },
    )
    .await
}

/// An earlier upload the broker still has, unfinished: its id, chunk size, chunk
/// count and the chunks it lacks.
async fn resumable(link: &Link, id: &str) -> Option<(String, u64, u64, Vec<u64>)> {
    let info = info(link, id).await.ok()?;
    if info["finished"] != Value::Bool(false) {
        return None;
    }
    let missing = info["missing"].as_array()?.iter().filter_map(Value::as_u64).collect();
    Some((
        id.to_owned(),
        info["chunk_size"].as_u64()?.max(1),
        info["chunks"].as_u64()?,
        missing,
    ))
}

async fn settle(flying: &mut JoinSet<Result<(u64, usize), Failure>>, bar: &ProgressBar) -> Result<(), Failure> {
    match flying.join_next().await {
        Some(Ok(Ok((_, n)))) => {
            bar.inc(n as u64);
            Ok(())
        }
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(Failure::Local(format!("a chunk task failed: {e}"))),
        None => Ok(()),
    }
}

fn hash_file(path: &Path) -> Result<String, Failure> {
    let mut f = std::fs::File::open(path).map_err(|e| local(e, "cannot read", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| local(e, "cannot read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where downloads go: the profile's choice, else `$XDG_DOWNLOAD_DIR/natter`, else
/// `~/Downloads/natter`.
pub fn downloads_dir(t: &Target) -> Result<PathBuf, Failure> {
    if let Some(d) = t.profile.as_ref().and_then(|(_, p)| p.downloads.clone()) {
        return Ok(d);
    }
    if let Some(x) = std::env::var_os("XDG_DOWNLOAD_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("natter"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join("Downloads").join("natter")),
        None => Err(Failure::Local("no downloads dir: set XDG_DOWNLOAD_DIR or HOME".into())),
    }
}

/// What a finished download came to.
pub struct Fetched {
    pub path: PathBuf,
    pub size: u64,
    /// Chunks that were there already from an earlier, cut-off try.
    pub resumed: usize,
}

/// Fetches file `id` into `dir` over `link` (subscribed to `inbox/{me}/file/#`, its
/// events in `events`), resuming a cut-off download.
///
/// # Errors
/// No such file (or not for you), a hash that does not match, local I/O, the link.
pub async fn fetch(
    link: &Link,
    events: &mut mpsc::Receiver<Event>,
    me: &str,
    id: &str,
    dir: &Path,
    bar: &ProgressBar,
) -> Result<Fetched, Failure> {
    let info = info(link, id).await?;
    let name = safe_name(info["name"].as_str().unwrap_or("file"));
    let size = info["size"].as_u64().unwrap_or(0);
    let chunks = info["chunks"].as_u64().unwrap_or(0) as u32;
    let chunk_size = info["chunk_size"].as_u64().unwrap_or(1).max(1);
    let sha = info["sha256"].as_str().unwrap_or("").to_owned();
    std::fs::create_dir_all(dir).map_err(|e| local(e, "cannot create", dir))?;
    let part = dir.join(format!(".{name}.{id}.part"));
    let have_path = dir.join(format!(".{name}.{id}.have"));
    let mut have: BTreeSet<u32> = std::fs::read_to_string(&have_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|i| *i < chunks)
        .collect();
    let resumed = have.len();
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&part)
        .map_err(|e| local(e, "cannot write", &part))?;
    out.set_len(size).map_err(|e| local(e, "cannot write", &part))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&have_path)
        .map_err(|e| local(e, "cannot write", &have_path))?;
    bar.set_length(size);
    bar.set_position((have.len() as u64 * chunk_size).min(size));
    let prefix = im::inbox_file_prefix(me, id);
    while have.len() < chunks as usize {
        let missing: Vec<u32> = (0..chunks).filter(|i| !have.contains(i)).collect();
        let r = link
            .call(
                cmd::FILES_FETCH,
                Request {
                    file: Some(id.to_owned()),
                    chunks: Some(missing),
                    ..Request::default()
                },
            )
            .await?;
        let sent = r["sent"].as_array().map_or(0, Vec::len);
        // The chunks came before the answer: they wait in the channel.
        let mut got = 0;
        while let Ok(e) = events.try_recv() {
            let m = match e {
                Event::Message(m) => m,
                Event::Closed(c) => return Err(Failure::lost(c.to_string())),
            };
            let Some(index) = m.topic.strip_prefix(&prefix).and_then(|i| i.parse::<u32>().ok()) else {
                link.ack(m.pkid).await;
                continue;
            };
            if index < chunks && !have.contains(&index) {
                out.seek(SeekFrom::Start(u64::from(index) * chunk_size))
                    .and_then(|_| out.write_all(&m.payload))
                    .map_err(|e| local(e, "cannot write", &part))?;
                writeln!(log, "{index}").map_err(|e| local(e, "cannot write", &have_path))?;
                have.insert(index);
                bar.inc(m.payload.len() as u64);
                got += 1;
            }
            link.ack(m.pkid).await;
        }
        if sent == 0 || got == 0 {
            return Err(Failure::Local(format!(
                "the broker sent none of the {} chunks missing",
                chunks as usize - have.len()
            )));
        }
    }
    out.sync_all().map_err(|e| local(e, "cannot write", &part))?;
    drop(out);
    let got = hash_file(&part)?;
    if got != sha {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&have_path);
        return Err(Failure::Local(format!(
            "{name}: the download does not match its SHA-256 ({got}, not {sha}); fetch it again"
        )));
    }
    let path = free_name(dir, &name);
    std::fs::rename(&part, &path).map_err(|e| local(e, "cannot rename", &part))?;
    let _ = std::fs::remove_file(&have_path);
    bar.finish_and_clear();
    Ok(Fetched { path, size, resumed })
}

/// A name that cannot leave the downloads dir.
fn safe_name(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    match n.trim_start_matches('.') {
        "" => "file".into(),
        t => t.to_owned(),
    }
}

/// `dir/name`, or `dir/name (1).ext` and so on when taken.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
        _ => (name.to_owned(), String::new()),
    };
    (1..)
        .map(|i| dir.join(format!("{stem} ({i}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// A one-shot connection for file chunks: its API answers and the chunks.
///
/// # Errors
/// Connection and login failures.
pub async fn link_for_files(t: &Target, g: &Global) -> Result<(Link, mpsc::Receiver<Event>), Failure> {
    let (link, events) = crate::session::one_shot(t, g).await?;
    let codes = link
        .subscribe(&[format!("{}file/#", im::inbox_prefix(&t.user))])
        .await?;
    if codes.iter().any(|c| *c >= 0x80) {
        return Err(Failure::Refused("the broker refused the file subscription".into()));
    }
    Ok((link, events))
}

/// A file message from a mailbox delivery, if it is one.
pub fn file_message(m: &crate::link::Incoming) -> Option<FileMessage> {
    if m.properties.content_type.as_deref() != Some(im::FILE_CONTENT_TYPE) {
        return None;
    }
    serde_json::from_slice(&m.payload).ok()
}

/// `1.2 MiB` and the like.
pub fn size_text(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The JSON of a finished download.
pub fn fetched_json(id: &str, f: &Fetched) -> Value {
    serde_json::json!({ "file": id, "path": f.path.display().to_string(), "size": f.size, "resumed_chunks": f.resumed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_in_the_downloads_dir_and_do_not_overwrite() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name(".hidden"), "hidden");
        assert_eq!(safe_name(""), "file");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        assert_eq!(free_name(dir.path(), "a.txt"), dir.path().join("a (1).txt"));
        assert_eq!(free_name(dir.path(), "b.txt"), dir.path().join("b.txt"));
    }

    #[test]
    fn sizes_and_types_read_well() {
        assert_eq!(size_text(512), "512 B");
        assert_eq!(size_text(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(mime_of(Path::new("x.PNG")), "image/png");
        assert_eq!(mime_of(Path::new("x")), "application/octet-stream");
    }
}
