//! `natter`: Natter's terminal client. One-shot commands for people and scripts
//! (`--json`), over the public protocol of `docs/protocol.md`, on the `shared`
//! crate's MQTT 5 codec.
//!
//! | module | job |
//! |---|---|
//! | `cli` | the command line |
//! | `profile` | profiles and their device tokens on disk |
//! | `session` | who and where; the one-shot and the device connections |
//! | `link` | one MQTT 5 connection: publish, subscribe, API calls, events |
//! | `commands` | the one-shot commands |
//! | `inbox` | `natter inbox [-f]` |
//! | `chat` | the full-screen chat: state (`app`), drawing (`view`), the loop |
//! | `files` | sending and fetching files |
//! | `format` | how things look on a terminal |
//! | `error` | failures and exit codes |

mod chat;
mod cli;
mod commands;
mod error;
mod files;
mod format;
mod inbox;
mod link;
mod profile;
mod session;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natter: cannot start: {e}");
            std::process::exit(error::exit::OTHER);
        }
    };
    let result = runtime.block_on(commands::run(cli.command, &cli.global));
    if let Err(e) = result {
        if json {
            println!(
                "{}",
                serde_json::json!({ "ok": false, "error": e.kind(), "message": e.to_string() })
            );
        }
        eprintln!("natter: {e}");
        std::process::exit(e.exit_code());
    }
}
