//! Profiles: where `natter login` keeps a server, a user and that user's device
//! token, in `$XDG_CONFIG_HOME/natter/config.toml` (else `~/.config/natter/`), mode
//! 0600 in a 0700 directory. Several profiles side by side; `--profile` picks one,
//! else the one `default` names. The password is never kept: a login creates a
//! device token (`tokens.create`) and `logout` revokes it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Failure;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The profile used without `--profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub server: String,
    pub user: String,
    /// The device token this login created (a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Its name on the broker (`tokens.list`), for `logout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_name: Option<String>,
    /// This machine's client id: the persistent session whose cursor says what
    /// `natter inbox` and `natter chat` have shown.
    pub device: String,
    /// Where incoming files go (default: the downloads dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloads: Option<PathBuf>,
    /// Ring the terminal bell for a message in a conversation not on screen.
    #[serde(default = "yes")]
    pub bell: bool,
    /// And show a desktop notification, where there is a desktop (`notify-send`).
    #[serde(default = "yes")]
    pub notify: bool,
}

fn yes() -> bool {
    true
}

/// The config directory: `$XDG_CONFIG_HOME/natter`, else `$HOME/.config/natter`.
pub fn config_dir() -> Result<PathBuf, Failure> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("natter"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("natter")),
        None => Err(Failure::Local("neither XDG_CONFIG_HOME nor HOME is set".into())),
    }
}

pub fn config_path() -> Result<PathBuf, Failure> {
    Ok(config_dir()?.join("config.toml"))
}

impl File {
    /// Reads the profiles (none yet: an empty file).
    ///
    /// # Errors
    /// An unreadable or malformed file, named.
    pub fn load(path: &Path) -> Result<File, Failure> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(File::default()),
            Err(e) => return Err(Failure::Local(format!("cannot read {}: {e}", path.display()))),
        };
        toml::from_str(&text)
            .map_err(|e| Failure::Local(format!("{} is not a valid natter config: {e}", path.display())))
    }

    /// Writes the profiles: a new file, mode 0600, renamed over the old one.
    ///
    /// # Errors
    /// I/O errors, named.
    pub fn save(&self, path: &Path) -> Result<(), Failure> {
        let fail = |what: &str, e: std::io::Error| Failure::Local(format!("cannot {what} {}: {e}", path.display()));
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("create the directory of", e))?;
        let text = toml::to_string_pretty(self).map_err(|e| Failure::Local(e.to_string()))?;
        let tmp = path.with_extension("toml.new");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail("write", e))?;
        f.write_all(text.as_bytes()).map_err(|e| fail("write", e))?;
        f.sync_all().map_err(|e| fail("write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| fail("replace", e))?;
        // An older file made by hand may have been readable by others.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| fail("protect", e))?;
        Ok(())
    }

    /// The profile to use: `name`, else the default one, else the only one.
    pub fn pick(&self, name: Option<&str>) -> Option<(&str, &Profile)> {
        let name = name.map(str::to_owned).or_else(|| self.default.clone()).or_else(|| {
            (self.profiles.len() == 1)
                .then(|| self.profiles.keys().next().cloned())
                .flatten()
        })?;
        self.profiles.get_key_value(&name).map(|(k, v)| (k.as_str(), v))
    }
}

/// A fresh client id for this machine and user: `natter-{user}-{host}-{random}`,
/// within MQTT's 23 characters where it can be.
pub fn new_device(user: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("natter-{user}-{host}-{}", random_hex(3))
}

/// `n` random bytes in hex.
pub fn random_hex(n: usize) -> String {
    use rand_core::RngCore;
    let mut b = vec![0u8; n];
    rand_core::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter").join("config.toml");
        let mut f = File::default();
        f.profiles.insert(
            "work".into(),
            Profile {
                server: "127.0.0.1:1883".into(),
                user: "alice".into(),
                token: Some("nt_x".into()),
                token_name: Some("cli".into()),
                device: new_device("alice"),
                downloads: None,
                bell: true,
                notify: true,
            },
        );
        f.default = Some("work".into());
        f.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let back = File::load(&path).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.pick(None).unwrap().0, "work");
        assert!(back.pick(Some("home")).is_none());
    }

    #[test]
    fn a_malformed_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "profiles = 3").unwrap();
        let e = File::load(&path).unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("not a valid"), "{e}");
    }

    #[test]
    fn device_ids_are_valid_client_ids() {
        let d = new_device("bob");
        assert!(d.starts_with("natter-bob-"));
        assert!(d.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_ne!(new_device("bob"), d);
    }
}
