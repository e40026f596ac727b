//! A test fixture for the IM layer: the plugin over a real store, router and mailbox
//! writer in a temporary directory.

use std::sync::Arc;

use natter_shared::codec::{Protocol, QoS, SubscriptionOptions};
use tokio::sync::oneshot;

use crate::accounts;
use crate::accounts::guard::LoginGuard;
use crate::accounts::password;
use crate::accounts::tokens::TokenIndex;
use crate::admin::Admin;
use crate::config::Config;
use crate::im::presence::PresenceBook;
use crate::im::writer::Writer;
use crate::im::{mailbox, ImPlugin, ImState};
use crate::model::{ClientInfo, Session, SessionKey, Subscription};
use crate::router::Router;
use crate::store::Store;

pub struct Harness {
    _dir: tempfile::TempDir,
    pub plugin: ImPlugin,
}

impl Harness {
    pub fn state(&self) -> &ImState {
        &self.plugin.state
    }

    /// A clean session of `user` on `device`, subscribed to `filter` at `qos` when
    /// one is given, as a connection's handshake and SUBSCRIBE would leave it.
    pub fn session(&self, user: &str, device: &str, filter: Option<&str>, qos: QoS) -> Arc<Session> {
        let key = SessionKey {
            username: Some(user.into()),
            client_id: device.into(),
        };
        let router = &self.state().router;
        let session = router.open_session(key, true, oneshot::channel().0).session;
        if let Some(f) = filter {
            let sub = Subscription {
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
                id: None,
            };
            router.subscribe(&session, f, sub);
        }
        session
    }
}

/// A broker's IM state with users alice, bob, carol and dave (password `pw-NAME`)
/// and the admin root. Needs a runtime: the mailbox writer is a task.
pub fn harness(tune: impl FnOnce(&mut Config)) -> Harness {
    let mut cfg = Config::default_config();
    cfg.auth.argon2_memory_kib = 64;
    cfg.auth.argon2_iterations = 1;
    cfg.auth.argon2_parallelism = 1;
    tune(&mut cfg);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let router = Router::new(cfg.limits.clone());
    let presence = Arc::new(PresenceBook::new(router.clone()));
    let writer = Writer::start(
        store.clone(),
        router.clone(),
        presence.clone(),
        mailbox::limits(&cfg.im),
    )
    .unwrap();
    let hasher = password::PasswordHasherConfig::new(&cfg.auth).unwrap();
    let guard = Arc::new(LoginGuard::new(&cfg.auth, cfg.im.registrations_per_hour.get()));
    for u in ["alice", "bob", "carol", "dave"] {
        accounts::add(&store, &hasher, u, format!("pw-{u}").as_bytes(), false).unwrap();
    }
    accounts::add(&store, &hasher, "root", b"pw-root", true).unwrap();
    let admin = Admin {
        store,
        hasher,
        tokens: TokenIndex::default(),
        reset_ttl_secs: 60,
        connections: Arc::new(router.clone()),
    };
    Harness {
        _dir: dir,
        plugin: ImPlugin::new(admin, router, &cfg, writer, presence, guard),
    }
}

/// A logged-in (or, with `None`, anonymous) client on device `{name}-dev`; root is
/// an admin.
pub fn client(name: Option<&str>) -> ClientInfo {
    ClientInfo {
        username: name.map(Into::into),
        client_id: format!("{}-dev", name.unwrap_or("anon")).into(),
        addr: "10.0.0.1:5000".parse().unwrap(),
        protocol: Protocol::V5,
        admin: name == Some("root"),
        restriction: None,
        persistent: false,
    }
}
