//! The command line: global options and every command, with examples.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes: 0 done; 1 other error; 2 bad usage; 3 broker unreachable or connection lost;
4 not logged in or wrong password; 5 timed out; 6 refused (unknown user or group,
not a member, not allowed); 7 too many attempts, try later.

Environment: NATTER_SERVER, NATTER_USER, NATTER_TOKEN (a device token) or
NATTER_PASSWORD override the profile, for scripts.";

#[derive(Parser)]
#[command(
    name = "natter",
    version,
    about = "Natter's terminal client: chat, messages, contacts, groups and presence",
    after_help = EXIT_CODES,
    after_long_help = EXIT_CODES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// Profile to use (see `natter login`); default: the last one logged in.
    #[arg(long, global = true, env = "NATTER_PROFILE")]
    pub profile: Option<String>,
    /// Broker address, HOST:PORT (overrides the profile).
    #[arg(long, global = true, env = "NATTER_SERVER")]
    pub server: Option<String>,
    /// User name (overrides the profile).
    #[arg(long, global = true, env = "NATTER_USER")]
    pub user: Option<String>,
    /// Machine-readable output: one JSON value per line.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the broker before giving up.
    #[arg(long, global = true, default_value = "10", value_parser = seconds)]
    pub timeout: Duration,
}

fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number of seconds: {s}"))?;
    if !(v > 0.0 && v <= 86_400.0) {
        return Err("between 0 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(v))
}

#[derive(Subcommand)]
pub enum Command {
    /// Create an account (when the broker allows it) and log in.
    #[command(after_help = "Example: natter register --server 127.0.0.1:1883 --user alice")]
    Register,
    /// Log in and keep a device token in the profile (the password is not kept).
    #[command(
        after_help = "Examples:\n  natter login --server 127.0.0.1:1883 --user alice\n  echo \"$PW\" | natter login --server chat.example:1883 --user alice --profile work"
    )]
    Login,
    /// Revoke this profile's device token and forget it.
    Logout,
    /// Change your password (or set one with a reset token from an admin).
    #[command(
        after_help = "Examples:\n  natter passwd\n  natter passwd --token nr_...   # after `natterd user reset alice`"
    )]
    Passwd {
        /// A one-time reset token instead of the current password.
        #[arg(long)]
        token: Option<String>,
    },
    /// Who you are logged in as, and where.
    Whoami,
    /// Send a message to a user or a group ("-" reads it from stdin).
    #[command(
        after_help = "Examples:\n  natter send bob 'lunch?'\n  natter send --group team 'build is green'\n  uptime | natter send bob -"
    )]
    Send {
        /// The recipient, then the text (with --group: only the text); "-" reads
        /// the text from stdin.
        #[arg(required = true, num_args = 1.., value_name = "USER TEXT")]
        words: Vec<String>,
        /// Send to this group.
        #[arg(long, short = 'g')]
        group: Option<String>,
    },
    /// What arrived since you last looked (then it counts as read); -f follows.
    #[command(after_help = "Examples:\n  natter inbox\n  natter inbox -f --json | jq .text")]
    Inbox {
        /// Keep running and print messages as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// Do not download incoming files (they stay on the broker: natter files get ID).
        #[arg(long)]
        no_download: bool,
    },
    /// Send a file to a user or a group (checked by size and SHA-256 on the broker).
    #[command(after_help = "Examples:\n  natter send-file bob report.pdf\n  natter send-file --group team build.log")]
    SendFile {
        /// The recipient, then the file (with --group: only the file).
        #[arg(required = true, num_args = 1..=2, value_name = "USER PATH")]
        words: Vec<String>,
        #[arg(long, short = 'g')]
        group: Option<String>,
    },
    /// Files sent to you: fetch one (resuming a cut-off download), see one, the limits.
    #[command(
        after_help = "Examples:\n  natter files get 3f2a...e1\n  natter files get 3f2a...e1 --out /tmp\n  natter files limits"
    )]
    Files {
        #[command(subcommand)]
        action: FilesCmd,
    },
    /// A conversation's history, oldest first.
    #[command(after_help = "Examples:\n  natter history bob --limit 20\n  natter history --group team --before 1200")]
    History {
        #[arg(required_unless_present = "group")]
        with: Option<String>,
        #[arg(long, short = 'g', conflicts_with = "with")]
        group: Option<String>,
        /// How many messages (default 50).
        #[arg(long, short = 'n')]
        limit: Option<u32>,
        /// Only messages older than this id.
        #[arg(long)]
        before: Option<u64>,
    },
    /// Friends and friend requests.
    #[command(after_help = "Examples:\n  natter friends\n  natter friends add bob\n  natter friends accept alice")]
    Friends {
        #[command(subcommand)]
        action: Option<Friends>,
    },
    /// Refuse a user's messages and requests (ends a friendship).
    Block {
        #[arg(value_name = "USER")]
        peer: String,
    },
    /// Accept a blocked user's messages again.
    Unblock {
        #[arg(value_name = "USER")]
        peer: String,
    },
    /// Groups: create, invite, join, leave, kick, promote, members, delete.
    #[command(
        after_help = "Examples:\n  natter groups create team\n  natter groups invite team bob\n  natter groups members team"
    )]
    Groups {
        #[command(subcommand)]
        action: Option<Groups>,
    },
    /// Your friends with their status and when they were last seen.
    Who,
    /// Set your status, shown to your friends while you are connected.
    #[command(after_help = "Examples:\n  natter status away 'lunch'\n  natter status online")]
    Status {
        #[arg(value_parser = ["online", "away", "busy"])]
        status: String,
        text: Vec<String>,
    },
    /// The full-screen chat, opened on a conversation if given.
    #[command(
        after_help = "Keys: Enter sends, Alt+Enter adds a line, Tab completes /commands and names,\n\
Ctrl+N/Ctrl+P (or Alt+Down/Up) switch conversations, PgUp/PgDn and the mouse wheel scroll,\n\
Up recalls what you sent, Ctrl+A/Ctrl+D accept/decline the first friend request,\n\
Ctrl+C quits. /help lists the commands.\n\n\
Examples:\n  natter chat\n  natter chat bob\n  natter chat --group team"
    )]
    Chat {
        with: Option<String>,
        #[arg(long, short = 'g', conflicts_with = "with")]
        group: Option<String>,
        /// No terminal bell for messages in conversations not on screen.
        #[arg(long)]
        no_bell: bool,
        /// Do not download incoming files.
        #[arg(long)]
        no_download: bool,
    },
    /// Your device tokens (one per logged-in machine or browser).
    Tokens {
        #[command(subcommand)]
        action: Option<Tokens>,
    },
}

#[derive(Subcommand)]
pub enum Friends {
    /// Friends, requests you got and requests you sent.
    List,
    /// Ask someone to be friends.
    Add {
        #[arg(value_name = "USER")]
        peer: String,
    },
    /// Accept a request.
    Accept {
        #[arg(value_name = "USER")]
        peer: String,
    },
    /// Decline a request.
    Decline {
        #[arg(value_name = "USER")]
        peer: String,
    },
    /// End a friendship (or withdraw a request).
    Remove {
        #[arg(value_name = "USER")]
        peer: String,
    },
}

#[derive(Subcommand)]
pub enum Groups {
    /// Your groups and your role in each.
    List,
    /// Create a group (you own it).
    Create {
        group: String,
        /// Anyone may join without an invitation.
        #[arg(long)]
        open: bool,
    },
    /// Invite a user (owner and admins).
    Invite {
        group: String,
        #[arg(value_name = "USER")]
        peer: String,
    },
    /// Join a group you were invited to, or an open one.
    Join { group: String },
    /// Leave a group.
    Leave { group: String },
    /// Remove a member (owner and admins).
    Kick {
        group: String,
        #[arg(value_name = "USER")]
        peer: String,
    },
    /// Make a member an admin.
    Promote {
        group: String,
        #[arg(value_name = "USER")]
        peer: String,
    },
    /// Members and their roles.
    Members { group: String },
    /// Delete a group you own.
    Delete { group: String },
}

#[derive(Subcommand)]
pub enum FilesCmd {
    /// Download a file into the downloads dir (or --out), checking its SHA-256.
    Get {
        id: String,
        /// The directory to put it in.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// A file's name, size, type and hash.
    Info { id: String },
    /// The broker's limits and what your files take.
    Limits,
}

#[derive(Subcommand)]
pub enum Tokens {
    /// Your tokens (names and dates, never the secrets).
    List,
    /// Revoke one: it logs in no more.
    Revoke { name: String },
}
