//! `natterd`: run the broker, or administer its accounts.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use natterd::accounts;
use natterd::auth::password::PasswordHasherConfig;
use natterd::config::Config;
use natterd::control::{self, ControlError, Request};
use natterd::store::{Store, StoreError};
use tracing_subscriber::EnvFilter;

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
}

fn main() {
    if let Err(e) = run() {
        eprintln!("natterd: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
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
        Command::User(cmd) => runtime.block_on(user(cmd, &config)),
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
    wait_for_signal().await?;
    broker.shutdown().await;
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

async fn user(cmd: UserCommand, config: &Config) -> Result<()> {
    let request = match cmd {
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
    };
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
            let data_dir = data_dir.clone();
            let request = request.clone();
            return tokio::task::spawn_blocking(move || offline(&data_dir, &config, request)).await?;
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
    report(&request, response.users.unwrap_or_default());
    Ok(())
}

/// No broker answers on the data dir: open the store directly.
fn offline(data_dir: &Path, config: &Config, request: Request) -> Result<()> {
    let store = match Store::open(data_dir) {
        Ok(s) => s,
        Err(StoreError::Locked { path }) => bail!(
            "the store {path} is locked by another process, and no broker answers on {}",
            control::socket_path(data_dir).display()
        ),
        Err(e) => return Err(e.into()),
    };
    let hasher = PasswordHasherConfig::new(&config.auth)?;
    let users = match &request {
        Request::UserAdd { name, password, admin } => {
            accounts::add(&store, &hasher, name, password.as_bytes(), *admin).map(|()| Vec::new())
        }
        Request::UserPasswd { name, password } => {
            accounts::passwd(&store, &hasher, name, password.as_bytes()).map(|()| Vec::new())
        }
        Request::UserDel { name } => accounts::delete(&store, name).map(|()| Vec::new()),
        Request::UserList => accounts::list(&store),
    }?;
    report(&request, users);
    Ok(())
}

fn report(request: &Request, users: Vec<accounts::AccountInfo>) {
    match request {
        Request::UserAdd { name, admin, .. } => {
            println!("created {}{name}", if *admin { "admin " } else { "" })
        }
        Request::UserPasswd { name, .. } => println!("password changed for {name}"),
        Request::UserDel { name } => println!("deleted {name}"),
        Request::UserList => {
            for u in users {
                println!("{}{}", u.name, if u.admin { " (admin)" } else { "" });
            }
        }
    }
}
