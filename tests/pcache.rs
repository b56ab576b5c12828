//! The page-cache layer (src/store/pcache.rs), in a process of its own: it must be installed
//! before SQLite starts, which no other test binary can promise.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rusqlite::{Connection, params};
use tradehook::store::pcache;

fn rows(conn: &Connection) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut stmt = conn.prepare("select k, v from t order by k").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn check(conn: &Connection, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let integrity: String = conn
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    assert!(
        rows(conn) == *model,
        "the table differs from what was committed"
    );
}

#[test]
fn random_key_commits_skip_the_cache_walk_and_rollbacks_still_drop_their_pages() {
    assert!(pcache::install(), "installed before SQLite started");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pcache.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "pragma journal_mode = wal; pragma synchronous = normal; pragma cache_size = -16000;
         create table t (k blob primary key, v blob not null) without rowid;",
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut model = BTreeMap::new();
    let mut insert = conn
        .prepare_cached("insert or replace into t (k, v) values (?1, ?2)")
        .unwrap();

    // Batches of random keys, as the writer commits dedupe rows: one savepoint each.
    for _ in 0..300 {
        conn.execute_batch("begin immediate").unwrap();
        for _ in 0..20 {
            conn.execute_batch("savepoint op").unwrap();
            let key: [u8; 32] = rng.random();
            let value = vec![rng.random::<u8>(); 100];
            insert.execute(params![&key[..], &value]).unwrap();
            conn.execute_batch("release op").unwrap();
            model.insert(key.to_vec(), value);
        }
        conn.execute_batch("commit").unwrap();
    }
    let (passed_before, skipped) = pcache::truncations();
    assert!(
        skipped > 250,
        "most commits had nothing past the end to drop: {skipped} skipped, {passed_before} passed"
    );
    check(&conn, &model);

    // A transaction that grows the file by hundreds of pages, then rolls back: the truncation
    // that drops those pages from the cache must reach SQLite's cache.
    conn.execute_batch("begin immediate").unwrap();
    for _ in 0..3000 {
        let key: [u8; 32] = rng.random();
        insert.execute(params![&key[..], &[1u8; 300][..]]).unwrap();
    }
    conn.execute_batch("rollback").unwrap();
    let (passed_after, _) = pcache::truncations();
    assert!(
        passed_after > passed_before,
        "the rollback's truncation was passed on"
    );
    check(&conn, &model);

    // Writing again reuses the page numbers the rollback gave up.
    conn.execute_batch("begin immediate").unwrap();
    for _ in 0..2000 {
        let key: [u8; 32] = rng.random();
        let value = vec![rng.random::<u8>(); 200];
        insert.execute(params![&key[..], &value]).unwrap();
        model.insert(key.to_vec(), value);
    }
    conn.execute_batch("commit").unwrap();
    check(&conn, &model);
    drop(insert);
    drop(conn);

    let reopened = Connection::open(&path).unwrap();
    check(&reopened, &model);
}
