//! Wires the broker together: store, plugins, router, listener, control socket; and
//! shuts it down gracefully (stop accepting, close connections with their wills,
//! wait for them within the grace period, flush the store).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::accounts::guard::LoginGuard;
use crate::accounts::kept;
use crate::accounts::password::{PasswordError, PasswordHasherConfig};
use crate::accounts::tokens::TokenIndex;
use crate::acl::plain::PlainAcl;
use crate::admin::Admin;
use crate::auth::PasswordAuth;
use crate::config::{Config, Durability, Registration, StoreConfig};
use crate::control;
use crate::hooks::{Hook, Hooks};
use crate::im::writer::Writer;
use crate::im::{mailbox, ImPlugin, PresenceBook};
use crate::listener::Listener;
use crate::model::Kick;
use crate::router::Router;
use crate::session::persist::{self, Persister};
use crate::session::Context;
use crate::store::{self, Store, StoreError, StoreOptions};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] crate::datakey::KeyError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot create the control socket in {dir}: {source}")]
    Control { dir: PathBuf, source: std::io::Error },
    #[error("startup task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot start the index thread: {0}")]
    Thread(std::io::Error),
}

/// A running broker.
pub struct RunningBroker {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    /// Ends when the listener stopped and every connection ended (or the grace passed).
    accept_task: JoinHandle<()>,
    control_task: JoinHandle<()>,
    connections_done: mpsc::Receiver<()>,
    grace: Duration,
    store: Store,
    /// Where persistent sessions are written.
    persist: Persister,
    /// The IM writer, when the IM layer is on.
    writer: Option<Writer>,
    router: Router,
    socket_path: PathBuf,
    /// The login guard, whose state is written behind by `guard_task` and once more
    /// at shutdown.
    guard: Arc<LoginGuard>,
    guard_task: JoinHandle<()>,
}

/// Opens the store, binds the listener and starts serving with the default plugins
/// (password authentication, then the foundation ACL).
///
/// # Errors
/// A locked or corrupt store, a port in use, a data dir that cannot hold the socket.
pub async fn start(config: Config) -> Result<RunningBroker, ServerError> {
    start_with(config, |_, _| Vec::new()).await
}

/// How `[store]` opens the store.
pub fn store_options(c: &StoreConfig) -> StoreOptions {
    StoreOptions {
        key: None,
        old_keys: Vec::new(),
        sync: c.durability == Durability::Sync,
        cache_bytes: u64::from(c.cache_mib.get()) << 20,
        flush_every_ms: u64::from(c.flush_every_ms.get()),
    }
}

/// Like [`start`], with extra plugins asked before the default ones. `plugins` gets
/// the router and the store, for plugins that route or store messages themselves.
///
/// # Errors
/// As [`start`].
pub async fn start_with(
    config: Config,
    plugins: impl FnOnce(&Router, &Store) -> Vec<Arc<dyn Hook>>,
) -> Result<RunningBroker, ServerError> {
    let data_dir = config.server.data_dir.clone();
    let store = {
        let dir = data_dir.clone();
        let (options, cfg) = (store_options(&config.store), config.store.clone());
        tokio::task::spawn_blocking(move || crate::datakey::open_store(&dir, &cfg, options)).await??
    };
    let auth_cfg = config.auth.clone();
    // Registration is an IM API command: without the IM layer nobody registers.
    let registration_open = config.im.enabled && config.im.registration == Registration::Open;
    let store2 = store.clone();
    let guard = Arc::new(LoginGuard::new(&config.auth, config.im.registrations_per_hour.get()));
    let guard2 = guard.clone();
    let guard_kept = guard.clone();
    let (auth, tokens) = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        let tokens = TokenIndex::load(&store2)?;
        // Throttled addresses stay throttled across a restart.
        let throttled = guard2.restore(&store2)?;
        if throttled > 0 {
            tracing::info!(records = throttled, "login throttle state restored");
        }
        Ok((
            PasswordAuth::new(store2, tokens.clone(), &auth_cfg, guard2, registration_open)?,
            tokens,
        ))
    })
    .await??;
    let router = Router::new(config.limits.clone());

    let listen = config.server.listen;
    let tcp = TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Bind { addr: listen, source })?;
    let local_addr = tcp
        .local_addr()
        .map_err(|source| ServerError::Bind { addr: listen, source })?;
    let (unix, socket_path, owner_uid) = control::bind(&data_dir).map_err(|source| ServerError::Control {
        dir: data_dir.clone(),
        source,
    })?;
    let admin = Admin {
        store: store.clone(),
        hasher: PasswordHasherConfig::new(&config.auth)?,
        tokens,
        reset_ttl_secs: config.im.reset_token_ttl_secs.get(),
        connections: Arc::new(router.clone()),
    };

    // Plugins in order: the caller's, then authentication, then the IM layer or,
    // with it off, the operator's rules alone (either answers every authorization
    // question, so nothing after it is asked).
    let mut list = plugins(&router, &store);
    list.push(Arc::new(auth));
    let writer = if config.im.enabled {
        let presence = Arc::new(PresenceBook::with_store(router.clone(), store.clone()));
        let writer = Writer::start(
            store.clone(),
            router.clone(),
            presence.clone(),
            mailbox::limits(&config.im),
        )
        .map_err(ServerError::Thread)?;
        list.push(Arc::new(ImPlugin::new(
            admin.clone(),
            router.clone(),
            &config,
            writer.clone(),
            presence,
            guard,
        )));
        Some(writer)
    } else {
        tracing::info!("IM layer off: a plain MQTT broker, the operator rules govern every topic");
        list.push(Arc::new(PlainAcl::new(config.acl.rules.clone())));
        None
    };
    let hooks = Hooks::new(list);

    let persist = Persister::start(store.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (tracker, connections_done) = mpsc::channel(1);
    let ctx = Context::new(
        router.clone(),
        hooks,
        Arc::new(config.limits.clone()),
        shutdown_rx.clone(),
        persist.clone(),
    );
    // Persistent sessions come back before anyone connects (and before anything is
    // routed): a message for one is queued for it, or waits in its mailbox.
    let (records, outgoing, queued, incoming, retained) = {
        let (store, persist) = (store.clone(), persist.clone());
        store::blocking(move || {
            let records = persist::load(&store)?;
            let sessions = records.iter().map(persist::Record::key).collect();
            Ok((
                records,
                persist::load_outgoing(&store)?,
                persist::load_queued(&store, &persist, &sessions)?,
                persist::load_incoming(&store, &sessions)?,
                persist::load_retained(&store)?,
            ))
        })
        .await?
    };
    let kept = retained.len();
    for msg in retained {
        if router.restore_retained(Arc::new(msg)).is_err() {
            tracing::warn!(
                "more retained messages on disk than [limits] max_retained_messages: the rest are not restored"
            );
            break;
        }
    }
    if kept > 0 {
        tracing::info!(retained = kept, "retained messages restored");
    }
    let restored = crate::session::restore(&ctx, records, outgoing, queued, incoming);
    if restored > 0 {
        tracing::info!(sessions = restored, "persistent sessions restored");
    }
    let listener = Listener {
        listener: tcp,
        permits: Arc::new(Semaphore::new(config.limits.max_connections.get())),
        ctx,
        tracker,
    };
    let guard_task = tokio::spawn(kept::keep(guard_kept.clone(), store.clone()));
    let accept_task = tokio::spawn(listener.run(shutdown_rx.clone()));
    let control_task = tokio::spawn(control::serve(unix, admin, owner_uid, shutdown_rx));
    tracing::info!(addr = %local_addr, data_dir = %data_dir.display(), "natterd listening");
    Ok(RunningBroker {
        local_addr,
        shutdown,
        accept_task,
        control_task,
        connections_done,
        grace: Duration::from_millis(config.server.shutdown_grace_ms),
        store,
        persist,
        writer,
        router,
        socket_path,
        guard: guard_kept,
        guard_task,
    })
}

impl RunningBroker {
    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The routing state (for stats and tests).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Resolves if a task the broker cannot serve without fails (the IM writer): the
    /// caller then shuts down and exits non-zero.
    pub async fn failed(&self) {
        match &self.writer {
            Some(w) => w.failed().await,
            None => std::future::pending().await,
        }
    }

    /// The store the broker runs on (tests inject write failures through it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Graceful shutdown: stop accepting, tell every connection (v5: DISCONNECT 0x8B),
    /// publish wills, wait up to the grace period, flush the store.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        let _ = self.shutdown.send(true);
        let _ = self.accept_task.await;
        // Every connection waits on its kick channel, not on the shutdown signal
        // (one future fewer per idle connection); one attaching now sees the signal.
        let kicked = self.router.kick_all(Kick::Shutdown);
        tracing::debug!(kicked, "connections told to close");
        let _ = self.control_task.await;
        if tokio::time::timeout(self.grace, self.connections_done.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "connections still open after the grace period"
            );
        }
        // What connections handed over is written before the store is flushed.
        if let Some(writer) = &self.writer {
            writer.stop().await;
        }
        self.persist.sync().await;
        self.guard_task.abort();
        let (guard, store) = (self.guard.clone(), self.store.clone());
        match tokio::task::spawn_blocking(move || guard.save(&store)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "login throttle state not written at shutdown"),
            Err(e) => tracing::error!(error = %e, "login throttle writer failed at shutdown"),
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "store flush failed at shutdown"),
            Err(e) => tracing::error!(error = %e, "store flush task failed"),
        }
        let _ = std::fs::remove_file(&self.socket_path);
        tracing::info!("stopped");
    }
}
