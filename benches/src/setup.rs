//! `natter-load setup`: many natterd accounts at once, for benchmarks.
//!
//! Benchmark-only shortcut: every account gets the same password, hashed once (argon2id
//! with the configured parameters), so creating thousands of accounts takes seconds.
//! With `--tokens`, each account also gets a device token, and the credentials file
//! lists the tokens instead of the password.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use natterd::accounts::password::PasswordHasherConfig;
use natterd::config::Config;
use natterd::store::{GroupRecord, Role, UserRecord};

#[derive(Args)]
pub struct SetupArgs {
    /// natterd data directory (the broker must be stopped).
    #[arg(long)]
    data: PathBuf,
    /// natterd config (for the argon2 parameters); defaults to the built-in one.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    #[arg(long, default_value = "u")]
    prefix: String,
    #[arg(long, default_value = "bench-password")]
    password: String,
    /// Create a device token per account and list tokens in the credentials file.
    #[arg(long)]
    tokens: bool,
    /// Credentials file to write ("user secret" per line).
    #[arg(long)]
    out: PathBuf,
    /// Also create group "bench" with the first N accounts (u0 owns it).
    #[arg(long, default_value_t = 0)]
    group_members: usize,
}

pub fn run(a: &SetupArgs) -> Result<()> {
    let config = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default_config(),
    };
    // With the data key, as natterd opens it (created here on a new data dir).
    let store = natterd::datakey::open_store(&a.data, &config.store, natterd::server::store_options(&config.store))?;
    let hash = PasswordHasherConfig::new(&config.auth)?.hash(a.password.as_bytes())?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?,
    );
    for i in 0..a.users {
        let name = format!("{}{i}", a.prefix);
        match store.create_user(
            &name,
            &UserRecord {
                password_hash: hash.clone(),
                admin: false,
                created_at: 0,
            },
        ) {
            Ok(()) | Err(natterd::store::StoreError::UserExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let secret = if a.tokens {
            let _ = store.revoke_tokens(&name, Some("load"))?;
            natterd::accounts::token_add(&store, &name, "load")?.token
        } else {
            a.password.clone()
        };
        writeln!(out, "{name} {secret}")?;
    }
    out.flush()?;
    if a.group_members > 0 {
        let owner = format!("{}0", a.prefix);
        match store.create_group(
            "bench",
            &GroupRecord {
                owner,
                open: true,
                created_at: 0,
            },
        ) {
            Ok(()) | Err(natterd::store::StoreError::GroupExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        for i in 1..a.group_members.min(a.users) {
            store.set_member("bench", &format!("{}{i}", a.prefix), Some(Role::Member))?;
        }
    }
    store.flush()?;
    eprintln!("{} accounts in {}", a.users, a.data.display());
    Ok(())
}
