//! Micro-benchmarks of the hot paths: codec decode/encode, topic matching through
//! the router, authorization checks, a DM through the mailbox, the device-token check.
//!
//! `cargo bench -p natter-bench --bench micro`; under `cargo test` each runs once.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use natter_shared::codec::{self, Packet, Properties, Protocol, Publish, QoS, SubscriptionOptions};
use natterd::accounts::password::PasswordHasherConfig;
use natterd::accounts::tokens::{self, TokenIndex};
use natterd::acl::rules::{Access, Effect, Rule, Who};
use natterd::admin::Admin;
use natterd::config::AclConfig;
use natterd::config::Config;
use natterd::hooks::{Hook, PublishDecision};
use natterd::im::writer::Writer;
use natterd::im::{mailbox, ImPlugin, PresenceBook};
use natterd::model::{ClientInfo, Message};
use natterd::model::{SessionKey, Subscription};
use natterd::router::Router;
use natterd::store::Store;
use natterd::store::TokenRecord;

fn publish(protocol: Protocol) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "inbox/bob/dm/alice".into(),
        pkid: 42,
        properties: if protocol == Protocol::V5 {
            Properties {
                user_properties: vec![("id".into(), "12345".into()), ("from".into(), "alice".into())],
                ..Default::default()
            }
        } else {
            Properties::default()
        },
        payload: Bytes::from(vec![b'x'; 64]),
    })
}

fn codec_benches(c: &mut Criterion) {
    for protocol in [Protocol::V311, Protocol::V5] {
        let p = publish(protocol);
        let mut encoded = BytesMut::new();
        p.encode(&mut encoded, protocol);
        let mut g = c.benchmark_group(format!("codec/{protocol:?}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("encode publish", |b| {
            let mut buf = BytesMut::with_capacity(4096);
            b.iter(|| {
                buf.clear();
                black_box(&p).encode(&mut buf, protocol);
            })
        });
        g.bench_function("decode publish", |b| {
            b.iter(|| {
                let mut buf = encoded.clone();
                black_box(codec::decode(&mut buf, protocol, 1 << 20).ok())
            })
        });
        g.finish();
    }
}

fn router_benches(c: &mut Criterion) {
    let router = Router::new(Config::default_config().limits);
    // 10,000 users, each with a mailbox subscription, plus a few wildcard watchers.
    let mut sessions = Vec::new();
    for i in 0..10_000 {
        let key = SessionKey {
            username: Some(format!("u{i}").into()),
            client_id: "phone".into(),
        };
        let s = router
            .open_session(key, true, tokio::sync::oneshot::channel().0)
            .session;
        // Offline sessions drop QoS 0 at once, so the queues never fill during the run.
        s.set_online(false);
        let sub = Subscription {
            options: SubscriptionOptions::default(),
            id: None,
        };
        router.subscribe(&s, &format!("inbox/u{i}/#"), sub);
        sessions.push(s);
    }
    for i in 0..10 {
        let s = router.open_session(
            SessionKey {
                username: Some("ops".into()),
                client_id: format!("w{i}").into(),
            },
            true,
            tokio::sync::oneshot::channel().0,
        );
        s.session.set_online(false);
        router.subscribe(
            &s.session,
            "+/u5/+/+",
            Subscription {
                options: SubscriptionOptions::default(),
                id: None,
            },
        );
    }
    let msg = |topic: &str| {
        Arc::new(Message::broker(
            topic,
            Bytes::from_static(b"hi"),
            QoS::AtMostOnce,
            false,
        ))
    };
    let direct = msg("inbox/u42/dm/alice");
    let watched = msg("inbox/u5/dm/alice");
    let mut g = c.benchmark_group("router (10k mailboxes)");
    g.throughput(Throughput::Elements(1));
    g.bench_function("publish to one mailbox", |b| {
        b.iter(|| router.publish(black_box(direct.clone())))
    });
    g.bench_function("publish matching 11 filters", |b| {
        b.iter(|| router.publish(black_box(watched.clone())))
    });
    g.finish();
}

fn auth_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = Config::default_config();
    config.auth.argon2_memory_kib = 8;
    config.auth.argon2_iterations = 1;
    let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let hasher = PasswordHasherConfig::new(&config.auth).unwrap_or_else(|e| panic!("{e}"));
    for u in ["alice", "bob"] {
        natterd::accounts::add(&store, &hasher, u, b"pw", false).unwrap_or_else(|e| panic!("{e}"));
    }
    let router = Router::new(config.limits.clone());
    let admin = Admin {
        store: store.clone(),
        hasher,
        tokens: TokenIndex::default(),
        reset_ttl_secs: 60,
        connections: Arc::new(router.clone()),
    };
    let acl = AclConfig {
        rules: vec![Rule {
            filter: "devices/%u/#".into(),
            access: Access::ReadWrite,
            effect: Effect::Allow,
            who: Who::All,
            users: vec![],
        }],
    };
    // The writer is a task: a runtime in the background runs it.
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let _in_runtime = rt.enter();
    let presence = Arc::new(PresenceBook::new(router.clone()));
    let writer = Writer::start(
        store.clone(),
        router.clone(),
        presence.clone(),
        mailbox::limits(&config.im),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let guard = Arc::new(natterd::accounts::guard::LoginGuard::new(
        &config.auth,
        config.im.registrations_per_hour.get(),
    ));
    let with_rules = Config { acl, ..config.clone() };
    let im = ImPlugin::new(admin, router, &with_rules, writer.clone(), presence, guard);
    let client = ClientInfo {
        username: Some("alice".into()),
        client_id: "phone".into(),
        addr: "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}")),
        protocol: Protocol::V5,
        admin: false,
        restriction: None,
        persistent: true,
    };
    let msg = |topic: &str| Message::broker(topic, Bytes::from_static(b"hello bob"), QoS::AtLeastOnce, false);
    let dm = msg("dm/bob");
    let device = msg("devices/alice/temp");
    let index = TokenIndex::default();
    let mut last = String::new();
    for i in 0..10_000 {
        last = tokens::generate();
        index.insert(
            tokens::digest(last.as_bytes()),
            TokenRecord {
                user: format!("u{i}"),
                name: "t".into(),
                created_at: 0,
            },
        );
    }
    let mut g = c.benchmark_group("authorization and mailbox");
    g.bench_function("authorize subscribe inbox/alice/#", |b| {
        b.iter(|| im.authorize_subscribe(black_box(&client), "inbox/alice/#"))
    });
    g.bench_function("authorize publish by operator rule", |b| {
        b.iter(|| im.on_publish(black_box(&client), black_box(&device)))
    });
    // Until stored: the receipt the PUBACK waits for.
    let stored = |d: PublishDecision| match d {
        PublishDecision::TakenOver(r) => assert_eq!(r.blocking_recv(), Ok(Ok(())), "not stored"),
        other => panic!("DM not accepted: {other:?}"),
    };
    g.bench_function("DM alone: authorize, store, append to 2 mailboxes, route", |b| {
        b.iter(|| stored(im.on_publish(black_box(&client), black_box(&dm))))
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("DM burst of 64 (one group commit), per DM", |b| {
        b.iter(|| {
            let receipts: Vec<_> = (0..64)
                .map(|_| im.on_publish(black_box(&client), black_box(&dm)))
                .collect();
            receipts.into_iter().for_each(stored);
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("device token check (10k tokens)", |b| {
        b.iter(|| index.check(black_box(last.as_bytes())))
    });
    g.finish();
    rt.block_on(writer.stop());
}

criterion_group!(benches, codec_benches, router_benches, auth_benches);
criterion_main!(benches);
