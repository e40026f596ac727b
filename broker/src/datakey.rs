//! Where the data key comes from, and opening the store with it.
//!
//! The key is `NATTER_DATA_KEY` (64 hex digits) when set, else the key file
//! (`[store] key_file`, relative to the data dir), created with mode 0600 on the first
//! start. A store sealed once never opens without its key: a missing or wrong key is
//! an error at start, never garbage served. `natterd rekey` seals everything again
//! under a new key, written first as `KEYFILE.new`; an interrupted rekey is finished
//! at the next open (both keys open records meanwhile).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::StoreConfig;
use crate::store::{DataKey, Store, StoreError, StoreOptions};

/// The environment variable that holds the data key (instead of the key file).
pub const KEY_ENV: &str = "NATTER_DATA_KEY";
/// Keys records may still be sealed under, comma-separated (a rekey interrupted while
/// the key came from the environment).
pub const OLD_KEYS_ENV: &str = "NATTER_DATA_KEY_OLD";

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read the data key file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("cannot write the data key file {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("{what}: {source}")]
    Bad { what: String, source: crate::store::BadKey },
    #[error(
        "the store under {data_dir} is encrypted and its data key is missing: no {KEY_ENV} and no key file {path}"
    )]
    Missing { data_dir: String, path: String },
    #[error("the store was sealed with another data key than {source_of_key}: {source}")]
    Wrong { source_of_key: String, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The key file's path.
pub fn key_path(data_dir: &Path, cfg: &StoreConfig) -> PathBuf {
    data_dir.join(&cfg.key_file)
}

fn pending_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

fn read_key(path: &Path) -> Result<DataKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the data key file is readable by others: chmod 600 it");
        }
    }
    DataKey::from_hex(&text).map_err(|source| KeyError::Bad {
        what: format!("the data key file {}", path.display()),
        source,
    })
}

/// Writes a new key file, readable by its owner only; never replaces one.
fn write_key(path: &Path, key: &DataKey) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    writeln!(f, "{}", key.to_hex()).map_err(err)?;
    f.sync_all().map_err(err)?;
    sync_dir(path).map_err(err)
}

/// Puts the new key file `pending` in place of `path`, durably.
fn install_key(pending: &Path, path: &Path) -> Result<(), KeyError> {
    fs::rename(pending, path)
        .and_then(|()| sync_dir(path))
        .map_err(|source| KeyError::Write {
            path: path.display().to_string(),
            source,
        })
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

fn env_keys() -> Result<Option<(DataKey, Vec<DataKey>)>, KeyError> {
    let Ok(text) = std::env::var(KEY_ENV) else {
        return Ok(None);
    };
    let key = DataKey::from_hex(&text).map_err(|source| KeyError::Bad {
        what: KEY_ENV.into(),
        source,
    })?;
    let old = match std::env::var(OLD_KEYS_ENV) {
        Ok(list) => list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|k| {
                DataKey::from_hex(k).map_err(|source| KeyError::Bad {
                    what: OLD_KEYS_ENV.into(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?,
        Err(_) => Vec::new(),
    };
    Ok(Some((key, old)))
}

fn open_with(
    data_dir: &Path,
    mut options: StoreOptions,
    key: DataKey,
    old: Vec<DataKey>,
    source: &str,
) -> Result<Store, KeyError> {
    options.key = Some(key);
    options.old_keys = old;
    Store::open_with(data_dir, options).map_err(|e| match e {
        StoreError::WrongKey => KeyError::Wrong {
            source_of_key: source.to_owned(),
            source: e,
        },
        e => KeyError::Store(e),
    })
}

/// Opens the store under `data_dir` with its data key (see the module), creating the
/// key on a store's first start. `options` says how, but for the key.
///
/// # Errors
/// [`KeyError`] for a missing, unreadable or wrong key, and the store's own errors.
pub fn open_store(data_dir: &Path, cfg: &StoreConfig, options: StoreOptions) -> Result<Store, KeyError> {
    if let Some((key, old)) = env_keys()? {
        return open_with(data_dir, options, key, old, KEY_ENV);
    }
    let path = key_path(data_dir, cfg);
    let pending = pending_path(&path);
    let source = path.display().to_string();
    if pending.exists() {
        // A rekey did not finish: the new key seals, both open; finish it.
        let new = read_key(&pending)?;
        let old = if path.exists() {
            vec![read_key(&path)?]
        } else {
            Vec::new()
        };
        let store = open_with(data_dir, options.clone(), new.clone(), old, &source)?;
        let n = store.rekey(&new)?;
        install_key(&pending, &path)?;
        tracing::info!(records = n, path = %path.display(), "an interrupted rekey was finished");
        return Ok(store);
    }
    if path.exists() {
        return open_with(data_dir, options, read_key(&path)?, Vec::new(), &source);
    }
    if data_dir.join("store").exists() {
        // No key for a store that exists: fine only if it was never sealed (one
        // written before encryption at rest, sealed now under a new key).
        match Store::open_with(data_dir, options.clone()) {
            Err(StoreError::KeyMissing) => {
                return Err(KeyError::Missing {
                    data_dir: data_dir.display().to_string(),
                    path: source,
                })
            }
            Err(e) => return Err(e.into()),
            Ok(plain) => drop(plain),
        }
    }
    let key = DataKey::generate();
    write_key(&path, &key)?;
    tracing::info!(path = %path.display(), "a new data key was created: keep a copy apart from the data (without it the store cannot be read)");
    open_with(data_dir, options, key, Vec::new(), &source)
}

/// `natterd rekey`: seals every record again under a new key (the broker stopped).
/// With the key file, the new key replaces it (after `KEYFILE.new` is written and
/// the store resealed); with [`KEY_ENV`], the new key is returned for the operator to
/// set. Returns the number of records and, for the environment, the new key.
///
/// # Errors
/// As [`open_store`]; an unfinished rekey is finished first (open the store once).
pub fn rekey(data_dir: &Path, cfg: &StoreConfig, options: StoreOptions) -> Result<(usize, Option<DataKey>), KeyError> {
    let new = DataKey::generate();
    if let Some((key, mut old)) = env_keys()? {
        old.insert(0, key);
        let store = open_with(data_dir, options, new.clone(), old, KEY_ENV)?;
        let n = store.rekey(&new)?;
        return Ok((n, Some(new)));
    }
    let path = key_path(data_dir, cfg);
    if pending_path(&path).exists() {
        // Finishes the earlier one, then goes on with a fresh key.
        drop(open_store(data_dir, cfg, options.clone())?);
    }
    let current = read_key(&path)?;
    let pending = pending_path(&path);
    write_key(&pending, &new)?;
    let store = open_with(
        data_dir,
        options,
        new.clone(),
        vec![current],
        &path.display().to_string(),
    )?;
    let n = store.rekey(&new)?;
    drop(store);
    install_key(&pending, &path)?;
    Ok((n, None))
}
