//! `tradehook bench` as an operator runs it: a short smoke run that checks nothing was lost or
//! duplicated. It asserts no speed: benchmarks are not timed tests.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tradehook"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env_remove("TRADEHOOK_URL")
        .env_remove("TRADEHOOK_API_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn a_closed_loop_fan_out_run_delivers_every_event_to_every_endpoint_once() {
    let report = bench(&[
        "--events",
        "300",
        "--endpoints",
        "3",
        "--connections",
        "4",
        "--ceiling-seconds",
        "0.3",
    ]);
    assert_eq!(report["events_accepted"], 300);
    assert_eq!(report["deliveries_expected"], 900);
    assert_eq!(report["deliveries_received"], 900);
    assert_eq!(report["missing"], 0);
    assert_eq!(report["duplicates"], 0);
    assert!(report["hub_peak_rss_mb"].as_f64().unwrap() > 0.0);
    let e2e = &report["end_to_end_latency"];
    assert!(e2e["p99_ms"].as_f64().unwrap() > 0.0);
    // The slowest delivery of all is the last of its event.
    assert_eq!(report["last_delivery_latency"]["max_ms"], e2e["max_ms"]);
    assert!(
        report["last_delivery_latency"]["p50_ms"].as_f64().unwrap()
            >= e2e["p50_ms"].as_f64().unwrap()
    );

    // The machine's ceiling, measured in the same run with the run's connections, and the
    // throughputs as fractions of it.
    let ceiling = &report["ceiling"];
    assert_eq!(ceiling["http_connections"], 4);
    let http = ceiling["http_requests_per_second"].as_f64().unwrap();
    assert!(http > 0.0, "{report}");
    assert!(ceiling["fdatasync_per_second"].as_f64().unwrap() > 0.0);
    for (throughput, fraction) in [
        ("accepted_per_second", "accepted_fraction_of_ceiling"),
        ("deliveries_per_second", "deliveries_fraction_of_ceiling"),
    ] {
        let expected = report[throughput].as_f64().unwrap() / http;
        let got = report[fraction].as_f64().unwrap();
        assert!(
            (got - expected).abs() < 1e-9,
            "{fraction}: {got} vs {expected}"
        );
    }
}

#[test]
fn without_a_ceiling_probe_the_report_has_no_fractions() {
    let report = bench(&["--events", "20", "--ceiling-seconds", "0"]);
    assert_eq!(report["deliveries_received"], 20);
    assert!(report.get("ceiling").is_none(), "{report}");
    assert!(report.get("accepted_fraction_of_ceiling").is_none());
    // One endpoint: an event's last delivery is its only one.
    assert!(report.get("last_delivery_latency").is_none());
}

/// Order mode: every entry and every exit fills, once, on each follower account; a symbol's
/// exit is sent once its entry is answered, so none is stored before it (and finds no
/// position), however the connections interleave.
#[test]
fn an_order_run_fills_every_signal_on_every_account_once() {
    let report = bench(&[
        "--followers",
        "2",
        "--events",
        "120",
        "--connections",
        "16",
        "--ceiling-seconds",
        "0",
    ]);
    assert_eq!(report["events_accepted"], 120);
    assert_eq!(report["deliveries_expected"], 240, "{report}");
    assert_eq!(report["deliveries_received"], 240, "{report}");
    assert_eq!(report["missing"], 0);
    assert_eq!(report["duplicates"], 0);
    assert!(report["fill_latency"]["max_ms"].is_number(), "{report}");
}

#[test]
fn an_open_loop_run_through_a_receiver_outage_loses_nothing() {
    let report = bench(&[
        "--rate",
        "200",
        "--duration",
        "1.5",
        "--fail-for",
        "0.5",
        "--ceiling-seconds",
        "0",
    ]);
    let accepted = report["events_accepted"].as_u64().unwrap();
    assert!(accepted >= 250, "{report}");
    assert_eq!(report["deliveries_received"].as_u64().unwrap(), accepted);
    assert_eq!(report["missing"], 0);
    assert_eq!(report["duplicates"], 0);
    assert!(report["drained_after_recovery_seconds"].is_number());
}

#[test]
fn a_provider_run_reaches_exactly_the_applications_following_each_events_wallet() {
    let report = bench(&[
        "--applications",
        "40",
        "--reach",
        "8",
        "--events",
        "50",
        "--connections",
        "4",
        "--ceiling-seconds",
        "0",
    ]);
    assert_eq!(report["applications"], 40);
    assert_eq!(report["events_accepted"], 50);
    // Each event reaches the 8 applications following its wallet, and no other.
    assert_eq!(report["deliveries_expected"], 400);
    assert_eq!(report["deliveries_received"], 400);
    assert_eq!(report["missing"], 0);
    assert_eq!(report["duplicates"], 0);
}

#[tokio::test]
async fn a_run_over_https_with_a_new_connection_per_event_loses_nothing() {
    use crate::helpers::{TOKEN, spawn_app_with};
    let dir = tempfile::tempdir().unwrap();
    let authority = crate::https::Authority::new();
    authority.issue(dir.path(), 30);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &authority.pem).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let app = spawn_app_with(|c| {
        c.tls = Some(tradehook::config::TlsSource::Files { cert, key });
        c.inbound_rate = None;
    })
    .await;
    let url = format!("https://localhost:{}", app.addr.port());
    let ca = ca.display().to_string();
    let report = tokio::task::spawn_blocking(move || {
        bench(&[
            "--url",
            &url,
            "--token",
            TOKEN,
            "--ca-file",
            &ca,
            "--new-connections",
            "--events",
            "60",
            "--connections",
            "4",
            "--ceiling-seconds",
            "0",
        ])
    })
    .await
    .unwrap();
    assert_eq!(report["events_accepted"], 60);
    assert_eq!(report["deliveries_received"], 60);
    assert_eq!(report["missing"], 0);
    assert_eq!(report["duplicates"], 0);
}
