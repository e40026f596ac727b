//! End to end: the `natter` binary against a real natterd (in this process, on
//! 127.0.0.1 port 0), each user with a HOME and XDG dirs of their own.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::Person;
use natter_e2e::TestBroker;
use natterd::config::Registration;
#[tokio::test]
async fn two_people_register_befriend_chat_and_read_their_history() {
    let b = TestBroker::start_config(|c| c.im.registration = Registration::Open).await;
    let (dave, erin) = (Person::new(b.addr), Person::new(b.addr));
    let server = dave.server.clone();
    let r = dave
        .run(&["register", "--server", &server, "--user", "dave"], "dave-secret-1\n")
        .await
        .ok();
    assert!(
        r.stdout.contains("registered dave") && r.stdout.contains("logged in as dave"),
        "{r:?}"
    );
    erin.run(&["register", "--server", &server, "--user", "erin"], "erin-secret-1\n")
        .await
        .ok();
    // The profile holds a device token, never the password, and is private.
    let text = std::fs::read_to_string(dave.config()).unwrap();
    assert!(text.contains("nt_") && !text.contains("dave-secret-1"), "{text}");
    let mode = std::fs::metadata(dave.config()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let r = dave.run(&["whoami", "--json"], "").await.ok();
    assert_eq!(r.json_lines()[0]["user"], "dave");

    dave.run(&["friends", "add", "erin"], "").await.ok();
    let r = erin.run(&["friends"], "").await.ok();
    assert!(r.stdout.contains("dave asked to be friends"), "{r:?}");
    erin.run(&["friends", "accept", "dave"], "").await.ok();
    let r = dave.run(&["friends", "list", "--json"], "").await.ok();
    assert_eq!(r.json_lines()[0]["friends"], serde_json::json!(["erin"]));

    dave.run(&["send", "erin", "hello", "erin"], "").await.ok();
    dave.run(&["send", "erin", "-"], "second line\nand a third\n")
        .await
        .ok();

    // erin reads what arrived: the friend request, the answer, both messages.
    let r = erin.run(&["inbox"], "").await.ok();
    assert!(r.stdout.contains("dave: hello erin"), "{r:?}");
    assert!(r.stdout.contains("dave wants to be friends"), "{r:?}");
    assert!(r.stdout.contains("dave: second line\nand a third"), "{r:?}");
    // ...and it is read: nothing again.
    let r = erin.run(&["inbox"], "").await.ok();
    assert!(r.stdout.is_empty() && r.stderr.contains("nothing new"), "{r:?}");

    dave.run(&["send", "erin", "third"], "").await.ok();
    let r = erin.run(&["inbox", "--json"], "").await.ok();
    let lines = r.json_lines();
    assert_eq!(lines.len(), 1, "{r:?}");
    assert_eq!(
        (
            lines[0]["type"].as_str(),
            lines[0]["from"].as_str(),
            lines[0]["text"].as_str()
        ),
        (Some("dm"), Some("dave"), Some("third"))
    );
    assert!(lines[0]["id"].as_u64().is_some());

    let r = erin.run(&["history", "dave", "--json"], "").await.ok();
    let texts: Vec<String> = r
        .json_lines()
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(texts, ["hello erin", "second line\nand a third", "third"]);
    let r = erin.run(&["history", "dave", "--limit", "1"], "").await.ok();
    assert!(
        r.stdout.trim_end().ends_with("dave: third") && r.stdout.lines().count() == 1,
        "{r:?}"
    );

    let r = dave.run(&["who"], "").await.ok();
    assert!(r.stdout.contains("erin") && r.stdout.contains("offline"), "{r:?}");
    b.stop().await;
}

#[tokio::test]
async fn groups_from_the_command_line() {
    let b = TestBroker::start().await;
    let (alice, bob) = common::alice_and_bob(b.addr).await;
    alice.run(&["groups", "create", "team"], "").await.ok();
    alice.run(&["groups", "invite", "team", "bob"], "").await.ok();
    let r = bob.run(&["inbox"], "").await.ok();
    assert!(r.stdout.contains("alice invited you to team"), "{r:?}");
    bob.run(&["groups", "join", "team"], "").await.ok();
    alice.run(&["send", "--group", "team", "welcome"], "").await.ok();
    let r = bob.run(&["inbox"], "").await.ok();
    assert!(r.stdout.contains("[team] alice: welcome"), "{r:?}");
    let r = bob.run(&["groups", "members", "team"], "").await.ok();
    assert!(
        r.stdout.contains("alice  owner") && r.stdout.contains("bob  member"),
        "{r:?}"
    );
    let r = bob.run(&["groups", "list"], "").await.ok();
    assert!(r.stdout.contains("team  (member)"), "{r:?}");
    alice.run(&["groups", "promote", "team", "bob"], "").await.ok();
    alice.run(&["groups", "kick", "team", "bob"], "").await.ok();
    let r = bob.run(&["send", "-g", "team", "still here?"], "").await;
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("not a member"), "{r:?}");
    let r = bob.run(&["history", "--group", "team"], "").await;
    assert_eq!(r.code, 6, "{r:?}");
    let r = alice.run(&["history", "--group", "team"], "").await.ok();
    assert!(r.stdout.contains("you: welcome"), "{r:?}");
    alice.run(&["groups", "delete", "team"], "").await.ok();
    b.stop().await;
}

#[tokio::test]
async fn every_error_has_its_exit_code_and_a_line_naming_the_cause() {
    let b = TestBroker::start().await;
    let alice = Person::new(b.addr);
    // Not logged in.
    let r = alice.run(&["send", "bob", "hi"], "").await;
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("not logged in"), "{r:?}");
    // A wrong password.
    let r = alice.login("alice", "wrong").await;
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("login refused"), "{r:?}");
    alice.login("alice", "alice-pw").await.ok();
    // An unknown user, as the broker's reason.
    let r = alice.run(&["send", "nobody", "hi"], "").await;
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("nobody: no such user"), "{r:?}");
    let r = alice.run(&["friends", "add", "nobody"], "").await;
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("no such user"), "{r:?}");
    // --json errors are JSON too.
    let r = alice.run(&["groups", "members", "nogroup", "--json"], "").await;
    assert_eq!(r.code, 6, "{r:?}");
    assert_eq!(r.json_lines()[0]["ok"], false);
    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    let pw = [("NATTER_PASSWORD", "alice-pw")];
    let r = alice.run_env(&["whoami", "--server", &dead], "", &pw).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("cannot reach"), "{r:?}");
    // A listener that never answers: the timeout.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap().to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    let r = alice
        .run_env(&["whoami", "--server", &mute_addr, "--timeout", "0.5"], "", &pw)
        .await;
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("timed out"), "{r:?}");
    holder.abort();
    // Bad usage is clap's 2.
    let r = alice.run(&["send"], "").await;
    assert_eq!(r.code, 2, "{r:?}");
    b.stop().await;
}

#[tokio::test]
async fn logout_revokes_the_token_and_a_new_login_replaces_it() {
    let b = TestBroker::start().await;
    let alice = Person::new(b.addr);
    alice.login("alice", "alice-pw").await.ok();
    let first = std::fs::read_to_string(alice.config()).unwrap();
    alice.login("alice", "alice-pw").await.ok();
    let r = alice.run(&["tokens", "--json"], "").await.ok();
    assert_eq!(
        r.json_lines()[0]["tokens"].as_array().map(Vec::len),
        Some(1),
        "the first login's token went with the second login: {r:?} {first}"
    );
    let token = std::fs::read_to_string(alice.config())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("token = ").map(|t| t.trim_matches('"').to_owned()))
        .expect("a token");
    let r = alice.run(&["logout"], "").await.ok();
    assert!(r.stdout.contains("logged out of alice"), "{r:?}");
    assert!(!std::fs::read_to_string(alice.config()).unwrap().contains("nt_"));
    // The old token is dead on the broker too.
    let server = alice.server.clone();
    let home = alice.home.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_natter"))
            .args(["whoami", "--server", &server, "--user", "alice"])
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("NATTER_TOKEN", &token)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    b.stop().await;
}

#[tokio::test]
async fn what_arrived_while_the_broker_restarted_is_read_after_it() {
    let b = TestBroker::start().await;
    let (alice, bob) = common::alice_and_bob(b.addr).await;
    // bob's device is known (its cursor stored) before he goes away.
    bob.run(&["inbox"], "").await.ok();
    alice.run(&["send", "bob", "before the restart"], "").await.ok();
    let b = b.restart().await;
    let (alice, bob) = (alice.moved(b.addr), bob.moved(b.addr));
    alice.run(&["send", "bob", "after the restart"], "").await.ok();
    let r = bob.run(&["inbox"], "").await.ok();
    let first = r.stdout.find("alice: before the restart");
    let second = r.stdout.find("alice: after the restart");
    assert!(first.is_some() && second.is_some() && first < second, "{r:?}");
    b.stop().await;
}

/// Bytes that do not repeat in any short stretch.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn files_of_a_few_mib_go_through_and_a_cut_download_resumes() {
    let b = TestBroker::start_config(|c| {
        c.files.chunk_bytes = 16_384.try_into().unwrap();
        c.files.fetch_window = 1.try_into().unwrap();
    })
    .await;
    let (alice, bob) = common::alice_and_bob(b.addr).await;
    let data = noise(3 * 1024 * 1024 + 123, 7);
    let path = alice.home.path().join("report.bin");
    std::fs::write(&path, &data).unwrap();
    let p = path.display().to_string();
    let r = alice.run(&["send-file", "bob", &p, "--json"], "").await.ok();
    let sent = &r.json_lines()[0];
    assert_eq!(sent["size"], data.len());
    assert_eq!(sent["name"], "report.bin");

    // bob's inbox shows it and downloads it into ~/Downloads/natter.
    let r = bob.run(&["inbox"], "").await.ok();
    assert!(r.stdout.contains("alice sent a file: report.bin (3.0 MiB)"), "{r:?}");
    let got = bob.home.path().join("Downloads/natter/report.bin");
    assert!(r.stdout.contains(&format!("saved {}", got.display())), "{r:?}");
    assert_eq!(std::fs::read(&got).unwrap(), data);
    let r = bob.run(&["history", "alice"], "").await.ok();
    assert!(
        r.stdout.contains("alice: 📎 report.bin (3.0 MiB), file "),
        "a file message in the history: {r:?}"
    );

    // A second file, its download cut off half way, then resumed.
    let data2 = noise(4 * 1024 * 1024, 11);
    let path2 = alice.home.path().join("second.bin");
    std::fs::write(&path2, &data2).unwrap();
    let p2 = path2.display().to_string();
    let r = alice.run(&["send-file", "bob", &p2, "--json"], "").await.ok();
    let id = r.json_lines()[0]["file"].as_str().unwrap().to_owned();
    let out = bob.home.path().join("got");
    let o = out.display().to_string();
    let child = bob.spawn(&["files", "get", &id, "--out", &o]).await;
    let have = out.join(format!(".second.bin.{id}.have"));
    common::poll("the download never got going", || {
        std::fs::read_to_string(&have).map(|t| t.lines().count()).unwrap_or(0) >= 20
    })
    .await;
    common::cut_off(child).await;
    assert!(!out.join("second.bin").exists(), "cut off before the end");
    let r = bob.run(&["files", "get", &id, "--out", &o, "--json"], "").await.ok();
    let done = &r.json_lines()[0];
    assert!(done["resumed_chunks"].as_u64().unwrap() >= 20, "{done}");
    assert_eq!(std::fs::read(out.join("second.bin")).unwrap(), data2);
    assert!(!have.exists(), "no leftovers");

    // Someone else may not have it.
    let carol = Person::new(b.addr);
    carol.login("carol", "carol-pw").await.ok();
    let r = carol.run(&["files", "get", &id], "").await;
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("no such file"), "{r:?}");
    b.stop().await;
}

#[tokio::test]
async fn passwords_change_with_the_old_one_or_a_reset_token() {
    use natterd::admin::Request;
    let b = TestBroker::start().await;
    let bob = Person::new(b.addr);
    bob.login("bob", "bob-pw").await.ok();
    let r = bob.run(&["passwd"], "wrong\nnew-pw-1\n").await;
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("wrong password"), "{r:?}");
    bob.run(&["passwd"], "bob-pw\nnew-pw-1\n").await.ok();
    let other = Person::new(b.addr);
    assert_eq!(other.login("bob", "bob-pw").await.code, 4, "the old one is gone");
    other.login("bob", "new-pw-1").await.ok();
    // A reset token from an admin sets a new one without the old.
    let issued = natterd::control::request(b.dir.path(), &Request::UserReset { name: "bob".into() })
        .await
        .unwrap();
    let token = issued.token.expect("a reset token");
    let fresh = Person::new(b.addr);
    let server = fresh.server.clone();
    let r = fresh
        .run(
            &["passwd", "--token", &token, "--server", &server, "--user", "bob"],
            "new-pw-2\n",
        )
        .await
        .ok();
    assert!(r.stdout.contains("password changed for bob"), "{r:?}");
    fresh.login("bob", "new-pw-2").await.ok();
    b.stop().await;
}

#[tokio::test]
async fn inbox_follows_as_messages_arrive_and_blocking_refuses_them() {
    let b = TestBroker::start().await;
    let (alice, bob) = common::alice_and_bob(b.addr).await;
    let env = bob.env();
    let mut follow = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_natter"))
            .args(["inbox", "-f", "--json"])
            .env_clear()
            .envs(env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("while you follow"))
    });
    // Live, or from the mailbox if the follower connects after it: either way it shows.
    alice.run(&["send", "bob", "while you follow"], "").await.ok();
    let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines)
        .await
        .expect("followed in time")
        .unwrap()
        .expect("a line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (v["from"].as_str(), v["text"].as_str()),
        (Some("alice"), Some("while you follow"))
    );
    let _ = follow.kill();
    let _ = tokio::task::spawn_blocking(move || follow.wait()).await;

    bob.run(&["block", "alice"], "").await.ok();
    let r = alice.run(&["send", "bob", "hello?"], "").await;
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("does not accept your messages"), "{r:?}");
    bob.run(&["unblock", "alice"], "").await.ok();
    alice.run(&["send", "bob", "hello again"], "").await.ok();
    b.stop().await;
}

#[tokio::test]
async fn a_cut_off_upload_sends_only_what_the_broker_lacks() {
    let b = TestBroker::start_config(|c| c.files.chunk_bytes = 16_384.try_into().unwrap()).await;
    let (alice, bob) = common::alice_and_bob(b.addr).await;
    let data = noise(4 * 1024 * 1024, 5);
    let path = alice.home.path().join("big.bin");
    std::fs::write(&path, &data).unwrap();
    let p = path.display().to_string();
    let child = alice.spawn(&["send-file", "bob", &p]).await;
    // Cut off once the broker has some of it.
    let uploads = alice.home.path().join("config/natter/uploads.json");
    common::poll("the upload never got going", || {
        let id = std::fs::read_to_string(&uploads)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.as_object().and_then(|o| o.values().next().cloned()))
            .and_then(|v| v.as_str().map(str::to_owned));
        id.is_some_and(|id| b.store().chunk_indexes(&id).map(|c| c.len()).unwrap_or(0) >= 20)
    })
    .await;
    common::cut_off(child).await;
    let r = alice.run(&["send-file", "bob", &p, "--json"], "").await.ok();
    let sent = &r.json_lines()[0];
    assert!(sent["resumed_chunks"].as_u64().unwrap() >= 20, "{sent}");
    let id = sent["file"].as_str().unwrap().to_owned();
    let out = bob.home.path().join("got").display().to_string();
    bob.run(&["files", "get", &id, "--out", &out], "").await.ok();
    assert_eq!(std::fs::read(bob.home.path().join("got/big.bin")).unwrap(), data);
    // Done: the next send of the same file is a new one, from the start.
    let r = alice.run(&["send-file", "bob", &p, "--json"], "").await.ok();
    assert_eq!(r.json_lines()[0]["resumed_chunks"], 0);
    b.stop().await;
}
