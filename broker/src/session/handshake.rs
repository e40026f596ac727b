//! CONNECT to CONNACK: client identifier rules, authentication through the hooks,
//! session open or takeover, keepalive and session-expiry negotiation.

use super::persist::Record;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_shared::codec::{reason, ConnAck, Connect, Packet, Properties, Protocol};
use rand_core::RngCore;
use tokio::sync::oneshot;

use super::connected::Handler;
use super::Context;
use crate::connection::Connection;
use crate::hooks::{AuthDecision, AuthFailure, Credentials};
use crate::model::ClientInfo;
use crate::model::SessionKey;

/// Answers a CONNECT with an unsupported protocol level, then closes.
pub(super) async fn refuse_protocol_level(conn: Connection, level: u8) {
    // A client above 3.1.1 gets the MQTT 5 code in an MQTT 5 CONNACK, others the 3.1.1 one.
    let protocol = if level >= 5 { Protocol::V5 } else { Protocol::V311 };
    refuse(
        conn,
        protocol,
        reason::v3::UNACCEPTABLE_PROTOCOL_VERSION,
        reason::UNSUPPORTED_PROTOCOL_VERSION,
    )
    .await;
}

async fn close_soon(conn: &mut Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
}

async fn refuse(mut conn: Connection, protocol: Protocol, v3: u8, v5: u8) {
    let code = if protocol == Protocol::V5 { v5 } else { v3 };
    conn.queue(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        }),
        protocol,
    );
    close_soon(&mut conn).await;
}

/// The session expiry a CONNECT asks for and the one granted, in seconds: 3.1.1 clean
/// session 0 asks for as long as the broker allows; the grant is capped at `max`.
fn session_expiry(connect: &Connect, max: u32) -> (u32, u32) {
    let requested = match connect.protocol {
        Protocol::V311 if connect.clean_start => 0,
        Protocol::V311 => u32::MAX,
        Protocol::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
    };
    (requested, requested.min(max))
}

/// The keepalive used and the Server Keep Alive to announce: 0 means none; on MQTT 5
/// a value above the cap is lowered and announced (3.1.1 cannot be told).
fn keep_alive(protocol: Protocol, asked: u16, max: u16) -> (u16, Option<u16>) {
    if protocol == Protocol::V5 && asked > max {
        (max, Some(max))
    } else {
        (asked, None)
    }
}

fn random_client_id() -> String {
    let mut bytes = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("natter-{hex}")
}

/// Runs the handshake; returns the connected handler, or `None` when the client was
/// refused (CONNACK with the reason already sent and the socket closed).
pub(super) async fn accept(conn: Connection, addr: SocketAddr, connect: Connect, ctx: Arc<Context>) -> Option<Handler> {
    let protocol = connect.protocol;
    let limits = ctx.limits.clone();

    let refusal = if connect.client_id.is_empty() && protocol == Protocol::V311 && !connect.clean_start {
        Some("empty client id without clean session (MQTT-3.1.3-8)")
    } else if connect.client_id.len() > usize::from(limits.max_client_id_len.get()) {
        Some("client id too long")
    } else {
        None
    };
    if let Some(why) = refusal {
        tracing::info!(%addr, len = connect.client_id.len(), "refused: {why}");
        refuse(
            conn,
            protocol,
            reason::v3::IDENTIFIER_REJECTED,
            reason::CLIENT_IDENTIFIER_NOT_VALID,
        )
        .await;
        return None;
    }
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        let id = random_client_id();
        if protocol == Protocol::V5 {
            assigned = Some(id.clone());
        }
        id.into()
    } else {
        connect.client_id.as_str().into()
    };

    if connect.properties.authentication_method.is_some() {
        tracing::info!(%addr, %client_id, "refused: extended authentication is not supported");
        refuse(
            conn,
            protocol,
            reason::v3::NOT_AUTHORIZED,
            reason::BAD_AUTHENTICATION_METHOD,
        )
        .await;
        return None;
    }

    let creds = Credentials {
        username: connect.username.clone(),
        password: connect.password.clone(),
        client_id: client_id.to_string(),
        addr,
    };
    let identity = match ctx.hooks.authenticate(&creds).await {
        AuthDecision::Allow(identity) => identity,
        AuthDecision::Deny(failure) => {
            let (v3, v5) = match failure {
                AuthFailure::BadCredentials => (reason::v3::NOT_AUTHORIZED, reason::BAD_USERNAME_OR_PASSWORD),
                AuthFailure::NotAuthorized => (reason::v3::NOT_AUTHORIZED, reason::NOT_AUTHORIZED),
                AuthFailure::Throttled => (reason::v3::NOT_AUTHORIZED, reason::CONNECTION_RATE_EXCEEDED),
                AuthFailure::Unavailable => (reason::v3::SERVER_UNAVAILABLE, reason::SERVER_UNAVAILABLE),
            };
            tracing::info!(%addr, %client_id, user = creds.username.as_deref().unwrap_or(""), ?failure, "connection refused");
            refuse(conn, protocol, v3, v5).await;
            return None;
        }
        AuthDecision::Abstain => {
            refuse(conn, protocol, reason::v3::NOT_AUTHORIZED, reason::NOT_AUTHORIZED).await;
            return None;
        }
    };

    let info = ClientInfo {
        username: connect.username.as_deref().map(Arc::from),
        client_id: client_id.clone(),
        addr,
        protocol,
        admin: identity.admin,
        restriction: identity.restriction,
        persistent: false,
    };

    let (requested_expiry, expiry) = session_expiry(&connect, limits.max_session_expiry_secs);
    let mut info = info;
    info.persistent = expiry > 0;
    let (keep_alive, server_keep_alive) = keep_alive(protocol, connect.keep_alive, limits.max_keepalive_secs.get());

    let (kick_tx, kick_rx) = oneshot::channel();
    let key = SessionKey {
        username: info.username.clone(),
        client_id: client_id.clone(),
    };
    let opened = ctx.router.open_session(key.clone(), connect.clean_start, kick_tx);
    opened.session.lock().credential = identity.token;
    // A persistent session's plain QoS 1/2 deliveries are written before they are
    // queued (see [`persist::queued`]).
    opened.session.set_kept(info.persistent);
    // On disk from now on (its will included: a broker that crashes ends the
    // connection without DISCONNECT), or no longer, for a clean one.
    // A clean start discards what an earlier session left on disk (its queued
    // messages and QoS 2 flows) before a persistent one is written.
    if connect.clean_start || !info.persistent {
        ctx.persist.delete(&key);
    }
    if info.persistent {
        let record = Record::of(&opened.session, &info, expiry, connect.will.as_ref(), false);
        ctx.persist.save(&record);
    }

    let mut properties = Properties::default();
    if protocol == Protocol::V5 {
        properties.receive_maximum = Some(limits.receive_maximum.get());
        properties.maximum_packet_size = Some(limits.max_packet_size.get());
        if limits.max_topic_aliases > 0 {
            properties.topic_alias_maximum = Some(limits.max_topic_aliases);
        }
        properties.server_keep_alive = server_keep_alive;
        properties.assigned_client_identifier = assigned;
        if expiry != requested_expiry {
            properties.session_expiry_interval = Some(expiry);
        }
    }
    let connack = Packet::ConnAck(ConnAck {
        session_present: opened.present,
        code: reason::SUCCESS,
        properties,
    });

    tracing::info!(
        %addr,
        %client_id,
        user = info.username.as_deref().unwrap_or(""),
        protocol = protocol.level(),
        session_present = opened.present,
        "client connected"
    );
    let present = opened.present;
    let handler = Handler::new(conn, ctx, info, opened, kick_rx, &connect, keep_alive, expiry);
    Some(handler.with_connack(connack, present))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(protocol: Protocol, clean_start: bool, expiry: Option<u32>) -> Connect {
        Connect {
            protocol,
            clean_start,
            keep_alive: 30,
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
            properties: Properties {
                session_expiry_interval: expiry,
                ..Default::default()
            },
        }
    }

    #[test]
    fn session_expiry_is_asked_per_version_and_capped() {
        assert_eq!(session_expiry(&connect(Protocol::V311, true, None), 600), (0, 0));
        assert_eq!(
            session_expiry(&connect(Protocol::V311, false, None), 600),
            (u32::MAX, 600),
            "3.1.1 persistent: as long as allowed"
        );
        assert_eq!(session_expiry(&connect(Protocol::V5, false, None), 600), (0, 0));
        assert_eq!(session_expiry(&connect(Protocol::V5, true, Some(60)), 600), (60, 60));
        assert_eq!(
            session_expiry(&connect(Protocol::V5, false, Some(601)), 600),
            (601, 600)
        );
        assert_eq!(
            session_expiry(&connect(Protocol::V5, false, Some(600)), 600),
            (600, 600)
        );
    }

    #[test]
    fn keepalive_above_the_cap_is_lowered_and_announced_on_v5_only() {
        assert_eq!(keep_alive(Protocol::V5, 0, 60), (0, None), "0 is no keepalive");
        assert_eq!(keep_alive(Protocol::V5, 60, 60), (60, None));
        assert_eq!(keep_alive(Protocol::V5, 61, 60), (60, Some(60)));
        assert_eq!(keep_alive(Protocol::V311, 61, 60), (61, None), "3.1.1 cannot be told");
    }

    #[test]
    fn assigned_client_ids_are_random_and_well_formed() {
        let a = random_client_id();
        let b = random_client_id();
        assert_ne!(a, b);
        let hex = a.strip_prefix("natter-").expect("prefix");
        assert_eq!(hex.len(), 24);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    // ---- the handshake over a real loopback socket ----

    use bytes::BytesMut;
    use natter_shared::codec::{decode, ConnAck};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use crate::config::{Config, Limits};
    use crate::hooks::{HookFuture, Hooks, Identity};
    use crate::router::Router;

    /// Authenticates by user name: `ok`, `admin`; `bad`, `nope`, `slow`, `down` are
    /// refused for each reason; anyone else gets no answer from it.
    struct ByName;

    impl crate::hooks::Hook for ByName {
        fn name(&self) -> &'static str {
            "by-name"
        }

        fn authenticate<'a>(&'a self, creds: &'a Credentials) -> HookFuture<'a, AuthDecision> {
            let d = match creds.username.as_deref() {
                None | Some("ok") => AuthDecision::Allow(Identity::default()),
                Some("admin") => AuthDecision::Allow(Identity {
                    admin: true,
                    ..Identity::default()
                }),
                Some("bad") => AuthDecision::Deny(AuthFailure::BadCredentials),
                Some("nope") => AuthDecision::Deny(AuthFailure::NotAuthorized),
                Some("slow") => AuthDecision::Deny(AuthFailure::Throttled),
                Some("down") => AuthDecision::Deny(AuthFailure::Unavailable),
                Some(_) => AuthDecision::Abstain,
            };
            Box::pin(async move { d })
        }
    }

    fn context(tune: impl FnOnce(&mut Limits)) -> Arc<Context> {
        let mut limits = Config::default_config().limits;
        tune(&mut limits);
        Context::new(
            Router::new(limits.clone()),
            Hooks::new(vec![Arc::new(ByName)]),
            Arc::new(limits),
            tokio::sync::watch::channel(false).1,
            crate::session::persist::Persister::off(),
        )
    }

    /// The broker's end of a fresh loopback connection, and the client's.
    async fn socket() -> (Connection, SocketAddr, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, addr) = listener.accept().await.unwrap();
        (Connection::new(server, 1 << 20), addr, client)
    }

    /// The packets the client receives until the broker closes (or 5 s pass).
    async fn answer(client: &mut TcpStream, protocol: Protocol) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        let read_all = async {
            loop {
                while let Ok(Some(p)) = decode(&mut buf, protocol, 1 << 20) {
                    seen.push(p);
                }
                let mut chunk = [0u8; 4096];
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let closed = tokio::time::timeout(Duration::from_secs(5), read_all).await.is_ok();
        assert!(closed, "the broker did not close: {seen:?}");
        seen
    }

    fn connack(seen: &[Packet]) -> &ConnAck {
        match seen {
            [Packet::ConnAck(c)] => c,
            other => panic!("expected one CONNACK then the close, got {other:?}"),
        }
    }

    /// The client's CONNECT, as `user` with `client_id`.
    fn hello(protocol: Protocol, user: Option<&str>, client_id: &str) -> Connect {
        let mut c = connect(protocol, true, None);
        c.username = user.map(str::to_owned);
        c.client_id = client_id.into();
        c
    }

    /// Runs the handshake for `c`; a refusal's CONNACK, or for an accepted client the
    /// CONNACK its handler sends first.
    async fn handshake(ctx: &Arc<Context>, c: Connect) -> ConnAck {
        let protocol = c.protocol;
        let (conn, addr, mut client) = socket().await;
        let mut accepting = tokio::spawn(accept(conn, addr, c, ctx.clone()));
        // A refusal is answered and half-closed at once, then lingers until the client
        // closes too; an accepted client's CONNACK comes from its handler.
        let accepted = tokio::select! {
            accepted = &mut accepting => accepted.unwrap(),
            seen = answer(&mut client, protocol) => {
                drop(client);
                assert!(accepting.await.unwrap().is_none(), "answered, then accepted: {seen:?}");
                return connack(&seen).clone();
            }
        };
        match accepted {
            None => panic!("refused without an answer"),
            Some(handler) => {
                let task = tokio::spawn(handler.run(()));
                let mut buf = BytesMut::new();
                let first = loop {
                    if let Ok(Some(p)) = decode(&mut buf, protocol, 1 << 20) {
                        break p;
                    }
                    let mut chunk = [0u8; 4096];
                    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
                        .await
                        .expect("a CONNACK")
                        .unwrap();
                    assert!(n > 0, "closed before the CONNACK");
                    buf.extend_from_slice(&chunk[..n]);
                };
                drop(client);
                let _ = task.await;
                match first {
                    Packet::ConnAck(c) => c,
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn unsupported_levels_get_the_code_of_the_nearest_version_and_a_close() {
        for (level, protocol, code) in [
            (3, Protocol::V311, reason::v3::UNACCEPTABLE_PROTOCOL_VERSION),
            (4, Protocol::V311, reason::v3::UNACCEPTABLE_PROTOCOL_VERSION),
            (5, Protocol::V5, reason::UNSUPPORTED_PROTOCOL_VERSION),
            (6, Protocol::V5, reason::UNSUPPORTED_PROTOCOL_VERSION),
        ] {
            let (conn, _, mut client) = socket().await;
            let refusing = tokio::spawn(refuse_protocol_level(conn, level));
            let seen = answer(&mut client, protocol).await;
            drop(client);
            refusing.await.unwrap();
            assert_eq!(connack(&seen).code, code, "level {level}");
            assert!(!connack(&seen).session_present);
        }
    }

    #[tokio::test]
    async fn client_ids_are_checked_before_authentication() {
        let ctx = context(|l| l.max_client_id_len = 8.try_into().unwrap());
        let mut persistent_anonymous = hello(Protocol::V311, Some("ok"), "");
        persistent_anonymous.clean_start = false;
        assert_eq!(
            handshake(&ctx, persistent_anonymous).await.code,
            reason::v3::IDENTIFIER_REJECTED
        );
        for protocol in [Protocol::V311, Protocol::V5] {
            let too_long = hello(protocol, Some("bad"), "123456789");
            let code = handshake(&ctx, too_long).await.code;
            let want = match protocol {
                Protocol::V5 => reason::CLIENT_IDENTIFIER_NOT_VALID,
                Protocol::V311 => reason::v3::IDENTIFIER_REJECTED,
            };
            assert_eq!(code, want, "{protocol:?}: refused for its id, not its password");
        }
        assert_eq!(
            handshake(&ctx, hello(Protocol::V5, Some("ok"), "12345678")).await.code,
            reason::SUCCESS
        );
    }

    #[tokio::test]
    async fn each_authentication_failure_has_its_reason_code() {
        let ctx = context(|_| ());
        for (user, v3, v5) in [
            ("bad", reason::v3::NOT_AUTHORIZED, reason::BAD_USERNAME_OR_PASSWORD),
            ("nope", reason::v3::NOT_AUTHORIZED, reason::NOT_AUTHORIZED),
            ("slow", reason::v3::NOT_AUTHORIZED, reason::CONNECTION_RATE_EXCEEDED),
            ("down", reason::v3::SERVER_UNAVAILABLE, reason::SERVER_UNAVAILABLE),
            ("unknown", reason::v3::NOT_AUTHORIZED, reason::NOT_AUTHORIZED),
        ] {
            assert_eq!(
                handshake(&ctx, hello(Protocol::V311, Some(user), "c")).await.code,
                v3,
                "{user} 3.1.1"
            );
            assert_eq!(
                handshake(&ctx, hello(Protocol::V5, Some(user), "c")).await.code,
                v5,
                "{user} 5"
            );
        }
        let mut extended = hello(Protocol::V5, Some("ok"), "c");
        extended.properties.authentication_method = Some("SCRAM-SHA-1".into());
        assert_eq!(handshake(&ctx, extended).await.code, reason::BAD_AUTHENTICATION_METHOD);
    }

    #[tokio::test]
    async fn a_v5_connack_announces_the_brokers_limits() {
        let ctx = context(|l| {
            l.receive_maximum = 9.try_into().unwrap();
            l.max_packet_size = 5000.try_into().unwrap();
            l.max_topic_aliases = 7;
            l.max_keepalive_secs = 20.try_into().unwrap();
            l.max_session_expiry_secs = 100;
        });
        let mut c = hello(Protocol::V5, Some("ok"), "");
        c.keep_alive = 30;
        c.properties.session_expiry_interval = Some(500);
        let ack = handshake(&ctx, c).await;
        assert_eq!(ack.code, reason::SUCCESS);
        let p = &ack.properties;
        assert_eq!(p.receive_maximum, Some(9));
        assert_eq!(p.maximum_packet_size, Some(5000));
        assert_eq!(p.topic_alias_maximum, Some(7));
        assert_eq!(p.server_keep_alive, Some(20), "lowered and told");
        assert_eq!(p.session_expiry_interval, Some(100), "capped and told");
        let id = p.assigned_client_identifier.as_deref().expect("an id for an empty one");
        assert!(id.starts_with("natter-"));

        // Asked within the limits: nothing to tell; no aliases: no alias maximum.
        let ctx = context(|l| l.max_topic_aliases = 0);
        let mut c = hello(Protocol::V5, Some("ok"), "mine");
        c.keep_alive = 10;
        c.properties.session_expiry_interval = Some(60);
        let p = handshake(&ctx, c).await.properties;
        assert_eq!(
            (p.server_keep_alive, p.session_expiry_interval, p.topic_alias_maximum),
            (None, None, None)
        );
        assert_eq!(p.assigned_client_identifier, None, "the client chose its id");

        // 3.1.1 gets no properties at all, even with an empty id.
        let ack = handshake(&context(|_| ()), hello(Protocol::V311, Some("ok"), "")).await;
        assert_eq!((ack.code, ack.properties), (reason::SUCCESS, Properties::default()));
    }

    #[tokio::test]
    async fn a_persistent_session_is_present_when_resumed() {
        let ctx = context(|_| ());
        let mut c = hello(Protocol::V5, Some("ok"), "dev");
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
        assert!(!handshake(&ctx, c.clone()).await.session_present, "new");
        assert!(handshake(&ctx, c.clone()).await.session_present, "resumed");
        c.clean_start = true;
        assert!(!handshake(&ctx, c).await.session_present, "clean start discards it");
    }
}
