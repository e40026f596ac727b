//! The full-screen chat for real: the `natter` binary in a pseudo-terminal against
//! a real broker; the test reads the screen through a terminal emulator and types.

mod common;

use std::time::Duration;

use common::pty::Pty;
use common::Person;
use natter_e2e::TestBroker;

const SEE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn chat_opens_sends_receives_shows_presence_switches_and_quits() {
    let b = TestBroker::start().await;
    let (alice, bob) = common::friends(b.addr).await;
    alice.run(&["send", "bob", "hello from the shell"], "").await.ok();

    // A desktop to notify: a stand-in notify-send that writes down what it is told.
    let bin = bob.home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let told = bob.home.path().join("notified.txt");
    let script = bin.join("notify-send");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$@\" >> {}\n", told.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut env = bob.env();
    for (k, v) in env.iter_mut() {
        if k == "PATH" {
            *v = format!("{}:{v}", bin.display());
        }
    }
    env.push(("DISPLAY".into(), ":99".into()));
    let mut chat = Pty::spawn(&["chat", "alice"], &env, 30, 100);
    // Opened on alice, with the history loaded.
    chat.wait_for("connected", SEE).await;
    chat.wait_for("alice: hello from the shell", SEE).await;

    // Send: marked stored once the broker has it; alice gets it.
    chat.keys("hi alice, from the chat\r");
    chat.wait_for("you: hi alice, from the chat ✓", SEE).await;
    let r = alice.run(&["inbox"], "").await.ok();
    assert!(r.stdout.contains("bob: hi alice, from the chat"), "{r:?}");

    // Receive, live.
    alice.run(&["send", "bob", "a live one"], "").await.ok();
    chat.wait_for("alice: a live one", SEE).await;

    // Presence: alice comes online (a following inbox) and goes.
    let follow = alice.spawn(&["inbox", "-f"]).await;
    chat.wait_for("● alice  online", SEE).await;
    common::cut_off(follow).await;
    chat.wait_for("○ alice  offline", SEE).await;

    // A friend request, accepted from the list.
    let carol = Person::new(b.addr);
    carol.login("carol", "carol-pw").await.ok();
    carol.run(&["friends", "add", "bob"], "").await.ok();
    chat.wait_for("? carol asks", SEE).await;
    chat.keys("\x01");
    chat.wait_for_any(&["friends.accept: done", "carol and you are friends now"], SEE)
        .await;
    chat.wait_for("○ carol", SEE).await;

    // A multi-line message.
    chat.keys("first line\x1b\rsecond line\r");
    chat.wait_for("second line ✓", SEE).await;

    // A group: invited from the shell, joined and opened with /commands.
    alice.run(&["groups", "create", "crew"], "").await.ok();
    alice.run(&["groups", "invite", "crew", "bob"], "").await.ok();
    chat.wait_for("alice invited you to crew", SEE).await;
    chat.keys("/join crew\r");
    // Its answer and the members' event race for the status line: either says so.
    chat.wait_for_any(&["groups.join: done", "bob joined crew"], SEE).await;
    chat.keys("/open #crew\r");
    chat.wait_for(" to #crew ", SEE).await;
    chat.keys("hello crew\r");
    chat.wait_for("you: hello crew ✓", SEE).await;
    // The list by last activity: #crew, alice, carol. Ctrl+N goes down to alice,
    // Ctrl+P back up to the group.
    chat.keys("\x0e");
    chat.wait_for(" to alice ", SEE).await;
    chat.keys("\x10");
    chat.wait_for(" to #crew ", SEE).await;

    // A file from alice comes down by itself; one goes up with /send-file.
    let notes = alice.home.path().join("notes.txt");
    std::fs::write(&notes, "the notes, in full\n").unwrap();
    alice
        .run(&["send-file", "bob", &notes.display().to_string()], "")
        .await
        .ok();
    let saved = bob.home.path().join("Downloads/natter/notes.txt");
    chat.wait_for("saved ", SEE).await;
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), "the notes, in full\n");
    let plan = bob.home.path().join("plan.txt");
    std::fs::write(&plan, "step one").unwrap();
    chat.keys(&format!("/send-file {}\r", plan.display()));
    chat.wait_for("sent plan.txt (8 B) to #crew", SEE).await;
    chat.wait_for("you: 📎 plan.txt (8 B)", SEE).await;

    // A message in a conversation not on screen: a bell and a desktop notification.
    alice.run(&["send", "bob", "ping while you are in crew"], "").await.ok();
    chat.wait_for("○ alice (2)", SEE).await; // the file before, and this
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&told)
        .unwrap_or_default()
        .contains("natter: alice ping while you are in crew")
    {
        assert!(start.elapsed() < SEE, "no desktop notification");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An unknown command says so.
    chat.keys("/frobnicate\r");
    chat.wait_for("unknown command /frobnicate", SEE).await;

    // Quit: the terminal is given back and natter ends well.
    chat.keys("\x03");
    assert_eq!(chat.exit_code(SEE).await, Some(0));
    b.stop().await;
}

#[tokio::test]
async fn chat_reconnects_after_a_broker_restart_and_catches_up_without_duplicates() {
    let b = TestBroker::start().await;
    let (alice, bob) = common::friends(b.addr).await;
    alice.run(&["send", "bob", "before the restart"], "").await.ok();
    let mut chat = Pty::spawn(&["chat", "alice"], &bob.env(), 24, 80);
    chat.wait_for("alice: before the restart", SEE).await;
    let b = b.restart_same_port().await;
    alice.run(&["send", "bob", "after the restart"], "").await.ok();
    let s = chat.wait_for("alice: after the restart", Duration::from_secs(20)).await;
    assert_eq!(s.matches("before the restart").count(), 1, "shown once:\n{s}");
    chat.wait_for("connected", SEE).await;
    chat.keys("\x03");
    assert_eq!(chat.exit_code(SEE).await, Some(0));
    b.stop().await;
}
