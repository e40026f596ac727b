//! Smoke test of the load generator against a real natterd, so the benches never rot:
//! every scenario runs briefly (well under a second each) and its summary is checked
//! for correctness (nothing lost, nothing duplicated), never for speed.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_natter-load");

fn load(addr: &str, creds: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(LOAD)
        .args(["--addr", addr, "--credentials"])
        .arg(creds)
        .args(["--duration", "0.5", "--threads", "2"])
        .args(args)
        .output()
        .expect("run natter-load");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_natterd() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[auth]\nargon2_memory_kib = 8\nargon2_iterations = 1\n[[acl.rules]]\nfilter = \"bench/#\"\n",
    )
    .unwrap();
    let creds = dir.path().join("creds.txt");
    let data = dir.path().join("data");
    let setup = Command::new(LOAD)
        .args(["setup", "--users", "40", "--tokens", "--group-members", "10", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&creds)
        .output()
        .unwrap();
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));

    let mut cfg = natterd::config::Config::load(&config).unwrap();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.data_dir = data;
    let broker = natterd::start(cfg).await.unwrap();
    let addr = broker.local_addr().to_string();
    let pid = std::process::id().to_string();

    let connections = ["--broker-pid", pid.as_str(), "connections", "--count", "40"];
    let runs: Vec<(&[&str], &str)> = vec![
        (&["--qos", "1", "pairs", "--pairs", "4"], "pairs"),
        (&["--qos", "2", "--rate", "400", "pairs", "--pairs", "2"], "pairs"),
        (&["--qos", "0", "--rate", "400", "pairs", "--pairs", "2"], "pairs"),
        (
            &[
                "--qos",
                "1",
                "--protocol",
                "5",
                "group",
                "--members",
                "10",
                "--publishers",
                "2",
            ],
            "group",
        ),
        (&["--qos", "1", "--window", "8", "fanin", "--publishers", "5"], "fanin"),
        (&["--im", "--qos", "1", "pairs", "--pairs", "4"], "pairs"),
        (
            &["--im", "--qos", "1", "group", "--members", "10", "--publishers", "2"],
            "group",
        ),
        (
            &["--im", "--qos", "1", "--window", "8", "fanin", "--publishers", "5"],
            "fanin",
        ),
        (&connections, "connections"),
        (&["storm", "--count", "40", "--deadline", "20"], "storm"),
    ];
    let router = broker.router().clone();
    let counter = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for (args, scenario) in runs {
        let stats = router.stats();
        let (delivered, dropped, connections) = (
            counter(&stats.delivered),
            counter(&stats.dropped),
            counter(&stats.connections),
        );
        // What the broker held at its peak while the tool ran, sampled beside it.
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = tokio::spawn({
            let (router, peak) = (router.clone(), peak.clone());
            async move {
                loop {
                    peak.fetch_max(router.session_count() as u64, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        let v = tokio::task::spawn_blocking({
            let (addr, creds) = (addr.clone(), creds.clone());
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            move || load(&addr, &creds, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        sampler.abort();
        assert_eq!(v["scenario"], scenario, "{v}");
        if v.get("sent").is_some() {
            assert!(v["sent"].as_u64().unwrap() > 0, "{v}");
            assert_eq!(v["lost"], 0, "{v}");
            assert_eq!(v["dup"], 0, "{v}");
            assert_eq!(v["delivered"], v["expected"], "{v}");
            assert!(v["p99_us"].as_u64().unwrap() > 0, "{v}");
            // The broker itself delivered at least what the tool counted, dropped none.
            let broker_delivered = counter(&stats.delivered) - delivered;
            assert!(
                broker_delivered >= v["delivered"].as_u64().unwrap(),
                "broker delivered {broker_delivered}: {v}"
            );
            assert_eq!(counter(&stats.dropped) - dropped, 0, "broker dropped: {v}");
        } else {
            // The broker itself accepted all 40 connections (a storm holds them too
            // briefly to sample; the idle connections scenario holds them at once).
            let accepted = counter(&stats.connections) - connections;
            assert!(accepted >= 40, "broker accepted {accepted}: {v}");
            if scenario == "connections" {
                let peak = peak.load(Ordering::Relaxed);
                assert!(peak >= 40, "broker's peak sessions {peak}: {v}");
            }
        }
    }
    broker.shutdown().await;
}
