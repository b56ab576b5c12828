//! The SQLite store's dedupe index: which (source, key) pairs were stored lately, kept in
//! memory, with the events table as its only record on disk.
//!
//! A dedupe key is usually random (a hash of the body, a client's UUID), so a b-tree keyed by
//! it takes each new key on a page of its own: every stored event dirtied one more page of the
//! WAL, and later of the database file, which was a third of the disk bytes per event and the
//! writer's largest cost. The events table already holds each event's source and dedupe key in
//! time order, which is all a dedupe check needs, so the index keeps only a 40-bit keyed hash of
//! (source, key) and the millisecond in which the event's id was made: 8 bytes a key (12 to 20
//! with the maps' free room), in 256 small hash maps so that none ever doubles by much at once. A new key costs one probe; a key
//! the index knows is confirmed against the events of that millisecond (a short range of the
//! table's primary key), so a hash collision, or an entry left by a rolled-back write or a
//! pruned event, can never make a new event a duplicate.
//!
//! The index is rebuilt from the events table when the hub starts (or at the first write),
//! reading the events of the dedupe window. Only one process may write the database (the store takes a lock
//! on it), so nothing else adds keys behind the index's back.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use rusqlite::{Connection, params};

use super::Result;
use crate::domain::{Millis, id_floor, id_time, prefix};

/// How far before the dedupe window the index still keeps and loads keys. An event's id is
/// made a moment apart from its `created_at`, so this keeps every event whose `created_at`
/// may still lie in the window.
const MARGIN_MS: Millis = 60_000;

/// How many keys are added between two sweeps of keys older than the window, at least.
const SWEEP_EVERY: usize = 65_536;

/// The longest span of time the index can hold (times are 32-bit milliseconds from a base):
/// about 49 days, more than the longest dedupe window (see `config::MAX_DEDUPE_WINDOW`).
const SPAN_MS: Millis = u32::MAX as Millis;

/// The index. Only the writer thread uses it (behind an uncontended lock).
pub struct DedupeIndex {
    /// Hashes (source, key) with a key secret to this process, so that no sender can choose
    /// keys that collide.
    keys: Hashing,
    /// Chosen by the hash's top 8 bits.
    shards: Vec<Shard>,
    /// Times are held as milliseconds after this one.
    base: Millis,
    /// The window's start the index was loaded for; `None` until loaded.
    loaded_since: Option<Millis>,
    added_since_sweep: usize,
}

#[derive(Default)]
struct Shard {
    /// The hash's low 32 bits → an event with that hash (its id's time, from `base`).
    first: HashMap<u32, u32, BuildHasherDefault<Spread>>,
    /// Further events with a hash already in `first`: another key with the same hash, the
    /// same key stored again after its window, or an entry whose write was rolled back.
    /// Almost always empty.
    more: HashMap<u32, Vec<u32>, BuildHasherDefault<Spread>>,
}

/// A 40-bit hash of (source, key): which shard, and the key within it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash {
    shard: u8,
    key: u32,
}

/// How (source, key) is hashed.
enum Hashing {
    Keyed(RandomState),
    /// Every key the same hash: tests use it to make every lookup a collision.
    #[cfg(test)]
    Constant,
}

/// Spreads a 32-bit hash over the 64 bits the hash map uses (it takes its tags from the top
/// bits).
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// What a lookup found.
pub enum Seen {
    /// An event with this key was stored after the window's start.
    Duplicate { original_id: String },
    /// No such event: the key is free. `hash` and `replaced` go to [`DedupeIndex::add`].
    New {
        hash: KeyHash,
        replaced: Vec<Millis>,
    },
}

impl Default for DedupeIndex {
    fn default() -> Self {
        Self::with_hash(Hashing::Keyed(RandomState::new()))
    }
}

impl DedupeIndex {
    fn with_hash(keys: Hashing) -> Self {
        Self {
            keys,
            shards: (0..256).map(|_| Shard::default()).collect(),
            base: 0,
            loaded_since: None,
            added_since_sweep: 0,
        }
    }

    /// An index in which every key has the same hash.
    #[cfg(test)]
    pub fn colliding() -> Self {
        Self::with_hash(Hashing::Constant)
    }

    fn hash(&self, source: &str, key: &str) -> KeyHash {
        let h = match &self.keys {
            Hashing::Keyed(state) => state.hash_one((source, key)),
            #[cfg(test)]
            Hashing::Constant => 7,
        };
        KeyHash {
            shard: (h >> 56) as u8,
            key: h as u32,
        }
    }

    /// Keys held (one per event the index knows).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.first.len() + s.more.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// The times held under `hash`.
    fn times(&self, hash: KeyHash) -> Vec<Millis> {
        let shard = &self.shards[usize::from(hash.shard)];
        let first = shard.first.get(&hash.key).copied();
        let more = shard.more.get(&hash.key).into_iter().flatten().copied();
        first
            .into_iter()
            .chain(more)
            .map(|t| self.base + Millis::from(t))
            .collect()
    }

    /// Whether an event of `source` with `key` was stored after `since`; loads the index first
    /// if this is its first use.
    pub fn lookup(
        &mut self,
        c: &Connection,
        source: &str,
        key: &str,
        since: Millis,
    ) -> Result<Seen> {
        self.load(c, since)?;
        let hash = self.hash(source, key);
        let mut times = self.times(hash);
        times.sort_unstable();
        let mut replaced = Vec::new();
        for held in times.chunk_by(|a, b| a == b) {
            let at = held[0];
            // The events of that millisecond with this hash: this key's newest (the table is
            // read newest first), and how many belong to other keys.
            let mut stmt = c.prepare_cached(
                "select id, source, dedupe_key, created_at from events
                 where id >= ?1 and id < ?2 order by id desc",
            )?;
            let mut rows = stmt.query(params![
                id_floor(prefix::EVENT, at),
                id_floor(prefix::EVENT, at + 1)
            ])?;
            let mut others = 0;
            while let Some(row) = rows.next()? {
                let (s, k) = (
                    row.get_ref(1)?.as_str().unwrap_or_default(),
                    row.get_ref(2)?.as_str().unwrap_or_default(),
                );
                if (s, k) == (source, key) {
                    if row.get::<_, Millis>(3)? > since {
                        return Ok(Seen::Duplicate {
                            original_id: row.get(0)?,
                        });
                    }
                } else if self.hash(s, k) == hash {
                    others += 1;
                }
            }
            // Other keys' entries stay. This key's older events, and entries whose event is
            // gone (rolled back, or pruned), give way to the new one.
            replaced.extend(std::iter::repeat_n(at, held.len().saturating_sub(others)));
        }
        Ok(Seen::New { hash, replaced })
    }

    /// Records a stored event under the hash [`lookup`](Self::lookup) gave, in place of the
    /// entries it replaced. Sweeps out keys older than the window now and then.
    pub fn add(&mut self, hash: KeyHash, replaced: &[Millis], event_id: &str, since: Millis) {
        let Some(at) = id_time(event_id) else {
            // Every event id is made by `new_id`; one that is not cannot be found by time.
            debug_assert!(false, "an event id that is not time-ordered: {event_id}");
            return;
        };
        for &old in replaced {
            self.remove(hash, old);
        }
        self.insert(hash, at, since);
        self.added_since_sweep += 1;
        if self.added_since_sweep >= SWEEP_EVERY.max(self.len_first() / 2) {
            self.sweep(since - MARGIN_MS);
            // What the sweep dropped is gone for any earlier window too.
            self.loaded_since = self.loaded_since.map(|loaded| loaded.max(since));
        }
    }

    fn len_first(&self) -> usize {
        self.shards.iter().map(|s| s.first.len()).sum()
    }

    fn insert(&mut self, hash: KeyHash, at: Millis, since: Millis) {
        let offset = match u32::try_from(at - self.base) {
            Ok(offset) => offset,
            Err(_) => match self.rebase(at, since - MARGIN_MS) {
                Some(offset) => offset,
                None => return,
            },
        };
        let shard = &mut self.shards[usize::from(hash.shard)];
        match shard.first.entry(hash.key) {
            Entry::Vacant(slot) => {
                slot.insert(offset);
            }
            Entry::Occupied(_) => shard.more.entry(hash.key).or_default().push(offset),
        }
    }

    fn remove(&mut self, hash: KeyHash, at: Millis) {
        let Ok(offset) = u32::try_from(at - self.base) else {
            return;
        };
        let shard = &mut self.shards[usize::from(hash.shard)];
        if let Some(more) = shard.more.get_mut(&hash.key)
            && let Some(i) = more.iter().position(|&t| t == offset)
        {
            more.swap_remove(i);
        } else if shard.first.get(&hash.key) == Some(&offset) {
            // A further entry, if any, takes the first one's place.
            match shard.more.get_mut(&hash.key).and_then(Vec::pop) {
                Some(next) => {
                    shard.first.insert(hash.key, next);
                }
                None => {
                    shard.first.remove(&hash.key);
                }
            }
        }
        if shard.more.get(&hash.key).is_some_and(Vec::is_empty) {
            shard.more.remove(&hash.key);
        }
    }

    /// Drops entries made before `before`.
    fn sweep(&mut self, before: Millis) {
        let base = self.base;
        let keep = |t: u32| base + Millis::from(t) >= before;
        for shard in &mut self.shards {
            shard.more.retain(|_, ts| {
                ts.retain(|&t| keep(t));
                !ts.is_empty()
            });
            let more = &mut shard.more;
            shard.first.retain(|key, t| {
                if keep(*t) {
                    return true;
                }
                // A further entry, if any, takes this one's place.
                match more.get_mut(key).and_then(Vec::pop) {
                    Some(next) => {
                        *t = next;
                        true
                    }
                    None => false,
                }
            });
            shard.more.retain(|_, ts| !ts.is_empty());
            shard.first.shrink_to_fit();
        }
        self.added_since_sweep = 0;
    }

    /// Moves the base so that `at` fits, after dropping entries made before `before`; gives
    /// `at`'s offset. Entries that would still not fit (more than [`SPAN_MS`] apart, which a
    /// dedupe window never is) are dropped, oldest first.
    fn rebase(&mut self, at: Millis, before: Millis) -> Option<u32> {
        self.sweep(before);
        let held = self
            .shards
            .iter()
            .flat_map(|s| s.first.values().chain(s.more.values().flatten()))
            .map(|&t| self.base + Millis::from(t));
        let (lo, hi) = held.fold((at, at), |(lo, hi), t| (lo.min(t), hi.max(t)));
        let base = lo.max(hi - SPAN_MS);
        if base > lo {
            tracing::warn!(
                "the dedupe index spans more than {} days; dropping its oldest keys",
                SPAN_MS / 86_400_000
            );
            self.sweep(base);
        }
        let old_base = self.base;
        let shift = |t: &mut u32| {
            // Every held time lies within [base, base + SPAN_MS] now.
            *t = u32::try_from(old_base + Millis::from(*t) - base).unwrap_or(u32::MAX);
        };
        for shard in &mut self.shards {
            shard.first.values_mut().for_each(shift);
            shard.more.values_mut().flatten().for_each(shift);
        }
        self.base = base;
        u32::try_from(at - base).ok()
    }

    /// Reads the keys of the events made since `since` (less the margin), once.
    pub fn load(&mut self, c: &Connection, since: Millis) -> Result<()> {
        match self.loaded_since {
            Some(loaded) if loaded <= since => return Ok(()),
            // A window reaching further back than the one loaded (a test's, or a changed
            // setting): read again from its start.
            Some(_) => {
                for shard in &mut self.shards {
                    *shard = Shard::default();
                }
            }
            None => {}
        }
        let from = since.saturating_sub(MARGIN_MS);
        let mut stmt =
            c.prepare("select id, source, dedupe_key from events where id >= ?1 order by id")?;
        let mut rows = stmt.query([id_floor(prefix::EVENT, from)])?;
        let mut first = true;
        while let Some(row) = rows.next()? {
            let Some(at) = id_time(row.get_ref(0)?.as_str().unwrap_or_default()) else {
                continue;
            };
            if first {
                self.base = at;
                first = false;
            }
            let source = row.get_ref(1)?.as_str().unwrap_or_default();
            let hash = self.hash(source, row.get_ref(2)?.as_str().unwrap_or_default());
            // Several events with one hash are kept alike: a lookup checks each.
            self.insert(hash, at, since);
        }
        self.loaded_since = Some(since);
        self.added_since_sweep = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Millis = 86_400_000;

    fn events() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "create table events (id text primary key, source text not null,
                 dedupe_key text not null, created_at integer not null) without rowid",
        )
        .unwrap();
        c
    }

    /// Stores an event made at `at` with `key` if the index finds no duplicate since `since`;
    /// gives whether it was stored.
    fn put(index: &mut DedupeIndex, c: &Connection, key: &str, at: Millis, since: Millis) -> bool {
        match index.lookup(c, "api", key, since).unwrap() {
            Seen::Duplicate { .. } => false,
            Seen::New { hash, replaced } => {
                let id = format!(
                    "evt_{}",
                    ulid::Ulid::from_parts(at as u64, rand::random::<u128>())
                );
                c.execute(
                    "insert into events values (?1, 'api', ?2, ?3)",
                    params![id, key, at],
                )
                .unwrap();
                index.add(hash, &replaced, &id, since);
                true
            }
        }
    }

    #[test]
    fn keys_older_than_the_window_are_swept_out() {
        let c = events();
        let mut index = DedupeIndex::default();
        let t0 = 1_800_000_000_000;
        assert!(put(&mut index, &c, "old", t0, t0 - DAY));
        // A day later, enough new keys to start a sweep.
        let later = t0 + DAY + 2 * MARGIN_MS;
        for i in 0..SWEEP_EVERY {
            assert!(put(&mut index, &c, &format!("k{i}"), later, later - DAY));
        }
        assert_eq!(
            index.len(),
            SWEEP_EVERY,
            "the old key went, the new ones stay"
        );
        assert!(!put(&mut index, &c, "k0", later, later - DAY));
        // Out of the index and out of the window: stored again.
        assert!(put(&mut index, &c, "old", later, later - DAY));
    }

    /// Times are held as 32-bit offsets (49 days): keys made 55 days apart move the base, and
    /// what is still in the window stays findable.
    #[test]
    fn the_base_moves_when_time_outgrows_it() {
        let c = events();
        let mut index = DedupeIndex::default();
        let t0 = 1_800_000_000_000;
        let window = 30 * DAY;
        assert!(put(&mut index, &c, "first", t0, t0 - window));
        assert!(put(&mut index, &c, "second", t0 + 30 * DAY, t0 - window));
        let t1 = t0 + 55 * DAY;
        assert!(put(&mut index, &c, "third", t1, t1 - window));
        assert_eq!(index.len(), 2, "the key older than the window went");
        assert!(!put(&mut index, &c, "second", t1, t1 - window));
        assert!(!put(&mut index, &c, "third", t1, t1 - window));
        assert!(put(&mut index, &c, "first", t1, t1 - window));
    }

    /// A fresh index reads the window's keys from the events table.
    #[test]
    fn the_index_loads_the_windows_keys_from_the_events() {
        let c = events();
        let t0 = 1_800_000_000_000;
        let mut index = DedupeIndex::default();
        assert!(put(&mut index, &c, "before", t0 - 2 * DAY, t0 - 3 * DAY));
        assert!(put(&mut index, &c, "inside", t0, t0 - 3 * DAY));
        let mut fresh = DedupeIndex::default();
        assert!(!put(&mut fresh, &c, "inside", t0, t0 - DAY));
        assert_eq!(
            fresh.len(),
            1,
            "only the window's keys (and its margin) are read"
        );
        assert!(put(&mut fresh, &c, "before", t0, t0 - DAY));
    }
}
