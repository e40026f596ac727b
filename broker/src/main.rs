//! `natterd`: run the broker, or administer its accounts.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use natterd::accounts::password::PasswordHasherConfig;
use natterd::accounts::tokens::TokenIndex;
use natterd::admin::{Admin, NoConnections, Request, Response};
use natterd::config::Config;
use natterd::control::{self, ControlError};
use natterd::datakey::KeyError;
use natterd::store::StoreError;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc malloc: measured 30% less CPU per IM message (sled
/// and the message path allocate and free many short-lived buffers; glibc spent a
/// quarter of the time in malloc/free/consolidation) and 3.5 instead of 5.2 KiB per
/// idle connection. Built without transparent huge pages (`no_thp`): with them the
/// kernel zeroed 2 MiB pages on every fault (5% of the CPU under load) and the idle
/// broker was resident at ~70 MB instead of ~17 MB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "natterd",
    version,
    about = "Natter's MQTT 3.1.1/5.0 instant-messaging broker"
)]
struct Cli {
    /// Config file (default: ./config.toml when present, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory (overrides server.data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    /// MQTT listen address (overrides server.listen); port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default).
    Serve,
    /// Manage accounts; works whether or not a broker is running on the data dir.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage device tokens: random secrets that devices and scripts use as their MQTT
    /// password (checked without argon2, so thousands of logins a second are cheap).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Encrypt the store again under a new data key (stop the broker first). With the
    /// key file, the new key replaces it; with NATTER_DATA_KEY, the new key is printed
    /// for you to set. An interrupted rekey is finished at the next start.
    #[command(after_help = "Example: natterd rekey && natterd")]
    Rekey,
    /// Copy the store into DEST/store (a new directory), while the broker runs
    /// (through its control socket) or not. The copy stays encrypted: it opens with
    /// the same data key, which it does not contain.
    #[command(after_help = "Example: natterd backup /backups/natter-$(date +%F)")]
    Backup { dest: PathBuf },
    /// Put a backup in place of the store (stop the broker first); the current store
    /// is moved aside to store.before-restore-TIME.
    #[command(after_help = "Example: natterd restore /backups/natter-2026-12-01")]
    Restore { src: PathBuf },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; prints it once (only its SHA-256 digest is stored).
    #[command(after_help = "Example: natterd token add alice sensor-1")]
    Add { user: String, name: String },
    /// List tokens (names, never secrets).
    List { user: Option<String> },
    /// Revoke a token; connections using it are closed.
    Revoke { user: String, name: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account. The password is read from stdin when it is not a terminal.
    #[command(after_help = "Example: echo 'secret' | natterd user add alice")]
    Add {
        name: String,
        /// Grant admin rights.
        #[arg(long)]
        admin: bool,
    },
    /// Set an account's password.
    Passwd { name: String },
    /// Delete an account (its open connections are closed).
    Del { name: String },
    /// List accounts.
    List,
    /// Issue a one-time password reset token (printed once) for the user to set a new
    /// password with: they log in with it as their password and call api/account.reset.
    Reset { name: String },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("natterd: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // The broker logs at info by default; admin commands only warnings and errors.
    let default_level = if matches!(cli.command, None | Some(Command::Serve)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut config = load_config(cli.config.as_deref())?;
    if let Some(dir) = cli.data {
        config.server.data_dir = dir;
    }
    if let Some(addr) = cli.listen {
        config.server.listen = addr;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(config)),
        Command::User(cmd) => {
            let request = user_request(cmd)?;
            runtime.block_on(admin(request, &config))
        }
        Command::Token(cmd) => runtime.block_on(admin(token_request(cmd), &config)),
        Command::Rekey => rekey(&config),
        Command::Backup { dest } => {
            // The broker may run elsewhere than here: it gets an absolute path.
            let dest = std::path::absolute(&dest).with_context(|| format!("the path {}", dest.display()))?;
            runtime.block_on(admin(Request::Backup { dest }, &config))
        }
        Command::Restore { src } => restore(&src, &config),
    }
}

fn restore(src: &Path, config: &Config) -> Result<()> {
    let data_dir = &config.server.data_dir;
    match natterd::store::restore(src, data_dir) {
        Ok(aside) => {
            if let Some(aside) = aside {
                eprintln!("the store that was there is now {}", aside.display());
            }
            eprintln!("restored {} into {}", src.display(), data_dir.display());
            Ok(())
        }
        Err(StoreError::Locked { path }) => {
            bail!("the store {path} is in use: stop the broker, then run natterd restore")
        }
        Err(e) => Err(e.into()),
    }
}

fn rekey(config: &Config) -> Result<()> {
    let data_dir = &config.server.data_dir;
    let options = natterd::server::store_options(&config.store);
    match natterd::datakey::rekey(data_dir, &config.store, options) {
        Ok((n, None)) => {
            eprintln!(
                "{n} records encrypted under a new data key, now in {}",
                natterd::datakey::key_path(data_dir, &config.store).display()
            );
            Ok(())
        }
        Ok((n, Some(key))) => {
            eprintln!(
                "{n} records encrypted under a new data key: set {} to the key below before the next start",
                natterd::datakey::KEY_ENV
            );
            println!("{}", key.to_hex());
            Ok(())
        }
        Err(KeyError::Store(StoreError::Locked { path })) => {
            bail!("the store {path} is in use: stop the broker, then run natterd rekey")
        }
        Err(e) => Err(e.into()),
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None if Path::new("config.toml").exists() => Config::load(Path::new("config.toml"))?,
        None => Config::default_config(),
    })
}

async fn serve(config: Config) -> Result<()> {
    let broker = natterd::start(config).await?;
    let failed = tokio::select! {
        r = wait_for_signal() => {
            r?;
            false
        }
        () = broker.failed() => true,
    };
    broker.shutdown().await;
    if failed {
        // Non-zero, so a supervisor (systemd) restarts it: a broker that accepted
        // connections and refused every IM message would look healthy.
        bail!("the IM writer failed (see the log above): stopped");
    }
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn user_request(cmd: UserCommand) -> Result<Request> {
    Ok(match cmd {
        UserCommand::Add { name, admin } => {
            let password = read_password(&name)?;
            Request::UserAdd { name, password, admin }
        }
        UserCommand::Passwd { name } => {
            let password = read_password(&name)?;
            Request::UserPasswd { name, password }
        }
        UserCommand::Del { name } => Request::UserDel { name },
        UserCommand::List => Request::UserList,
        UserCommand::Reset { name } => Request::UserReset { name },
    })
}

fn token_request(cmd: TokenCommand) -> Request {
    match cmd {
        TokenCommand::Add { user, name } => Request::TokenAdd { user, name },
        TokenCommand::List { user } => Request::TokenList { user },
        TokenCommand::Revoke { user, name } => Request::TokenRevoke { user, name },
    }
}

/// Reads a password: prompted without echo on a terminal, else one line of stdin.
fn read_password(name: &str) -> Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {name}: "))?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            bail!("passwords do not match");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

async fn admin(request: Request, config: &Config) -> Result<()> {
    let data_dir = &config.server.data_dir;
    let response = match control::request(data_dir, &request).await {
        Ok(r) => r,
        Err(ControlError::Io { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            let config = config.clone();
            let request = request.clone();
            tokio::task::spawn_blocking(move || offline(&config, request)).await??
        }
        Err(e) => return Err(e.into()),
    };
    if !response.ok {
        bail!(
            "{}",
            response
                .error
                .unwrap_or_else(|| "the broker refused the request".into())
        );
    }
    report(&request, response);
    Ok(())
}

/// No broker answers on the data dir: open the store and apply the request directly.
fn offline(config: &Config, request: Request) -> Result<Response> {
    let data_dir = &config.server.data_dir;
    let options = natterd::server::store_options(&config.store);
    let store = match natterd::datakey::open_store(data_dir, &config.store, options) {
        Ok(s) => s,
        Err(KeyError::Store(StoreError::Locked { path })) => bail!(
            "the store {path} is locked by another process, and no broker answers on {}",
            control::socket_path(data_dir).display()
        ),
        Err(e) => return Err(e.into()),
    };
    let admin = Admin {
        store,
        hasher: PasswordHasherConfig::new(&config.auth)?,
        tokens: TokenIndex::default(),
        reset_ttl_secs: config.im.reset_token_ttl_secs.get(),
        connections: Arc::new(NoConnections),
    };
    Ok(admin.apply(request).unwrap_or_else(Response::error))
}

fn report(request: &Request, response: Response) {
    match request {
        Request::UserAdd { name, admin, .. } => {
            println!("created {}{name}", if *admin { "admin " } else { "" })
        }
        Request::UserPasswd { name, .. } => println!("password changed for {name}"),
        Request::UserDel { name } => println!("deleted {name}"),
        Request::UserList => {
            for u in response.users.unwrap_or_default() {
                println!("{}{}", u.name, if u.admin { " (admin)" } else { "" });
            }
        }
        Request::TokenAdd { user, name } => {
            eprintln!("created token {name} for {user}; it is shown only once:");
            println!("{}", response.token.unwrap_or_default());
        }
        Request::TokenList { .. } => {
            for t in response.tokens.unwrap_or_default() {
                println!("{} {}", t.user, t.name);
            }
        }
        Request::TokenRevoke { user, name } => println!("revoked token {name} of {user}"),
        Request::Backup { dest } => println!(
            "backup of {} records written to {}",
            response.records.unwrap_or(0),
            dest.join("store").display()
        ),
        Request::UserReset { name } => {
            eprintln!(
                "reset token for {name}, valid until {} (Unix time), shown only once:",
                response.expires_at.unwrap_or(0)
            );
            println!("{}", response.token.unwrap_or_default());
        }
    }
}
