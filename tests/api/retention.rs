//! Retention: finished events are pruned in the background; pending work never is.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// The database's size in pages (as a reader sees it, WAL included), and the WAL file's
/// size in bytes.
fn db_size(app: &TestApp) -> (i64, u64) {
    let conn = rusqlite::Connection::open(&app.db_path).unwrap();
    let pages: i64 = conn
        .query_row("pragma page_count", [], |r| r.get(0))
        .unwrap();
    let wal = app.db_path.with_extension("db-wal");
    (pages, std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0))
}

fn rows(app: &TestApp, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(&app.db_path).unwrap();
    conn.query_row(&format!("select count(*) from {table}"), [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn finished_events_are_pruned_and_the_database_stops_growing_under_repeated_load() {
    let app = spawn_app_with(|c| {
        c.dedupe_window = Duration::from_secs(1);
        c.retention = Duration::from_secs(1);
        c.prune_interval = Duration::from_millis(100);
    })
    .await;
    let receiver = TestReceiver::start().await;
    let stuck = TestReceiver::start().await;
    app.create_endpoint(json!({"url": receiver.url, "event_types": ["entry"]}))
        .await;
    // One delivery that stays pending for an hour: its event must be kept.
    app.create_endpoint(
        json!({"url": stuck.url, "event_types": ["held"], "retry_schedule": [3600]}),
    )
    .await;
    stuck.script([Answer::Status(500)]);
    let held = app.publish("held", json!({"n": -1})).await;
    stuck.wait_for(1).await;

    let mut sizes = Vec::new();
    let mut peak_events = 0;
    for round in 0..8 {
        for n in 0..150 {
            app.publish(
                "entry",
                json!({"round": round, "n": n, "pad": "x".repeat(300)}),
            )
            .await;
        }
        receiver.wait_for((round + 1) * 150).await;
        peak_events = peak_events.max(rows(&app, "events"));
        // The round's events age past the retention and are pruned before the next round
        // starts. Every round then holds the same rows at its peak, however fast this
        // machine runs the rounds, so the file can only grow if freed pages are not reused.
        eventually(|| async { (rows(&app, "events") == 1).then_some(()) }).await;
        sizes.push(db_size(&app));
    }
    eprintln!("(pages, WAL bytes) per round: {sizes:?}; peak events stored: {peak_events}");
    // 1,200 events went through; never more than one round of them was kept.
    assert!(peak_events < 1000, "peak {peak_events} events stored");
    // Freed pages are reused: the file stops growing once pruning keeps up. The WAL is
    // reused from its start after each checkpoint, so it stays at its high-water mark.
    let (early, late) = (sizes[3].0, sizes[7].0);
    assert!(
        late <= early + early / 4,
        "database grew from {early} to {late} pages: {sizes:?}"
    );
    assert!(sizes.iter().all(|(_, wal)| *wal < 32 << 20), "{sizes:?}");

    // Once the load stops, only the event with pending work is left.
    eventually(|| async { (rows(&app, "events") == 1).then_some(()) }).await;
    assert_eq!(app.events().await[0]["id"], held.as_str());
    assert_eq!(rows(&app, "deliveries"), 1);
    assert_eq!(rows(&app, "attempts"), 1);
}
