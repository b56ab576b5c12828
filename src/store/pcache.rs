//! A thin layer over SQLite's own page cache that spares each commit a walk of the whole cache.
//!
//! When SQLite rebalances a b-tree it may swap two pages' numbers, passing one of them through
//! a temporary number: the lock page's, at 1 GiB, never a real page. Its page cache remembers
//! the largest number it ever held, and at the end of every transaction drops the pages past
//! the database's end; while that remembered number lies past the end (in any database under
//! 1 GiB, after such a swap), the drop walks every page in the cache, several thousand of them
//! with the writer's 16 MB cache. Inserts at random keys (the dedupe index) make such swaps
//! frequent: under W1 the walks were 4.4 % of the hub's samples, the largest single function.
//!
//! This layer passes every call on to SQLite's cache, and keeps two facts of its own: the
//! largest page number in use apart from the lock page's, and how many pages sit at the lock
//! page's number right now. A truncation is only passed on when a page may lie at or past its
//! limit; when none can, there is nothing to drop and no walk.
//!
//! It is installed once per process, before SQLite starts ([`install`]); if SQLite has
//! already started, SQLite's own cache stays in place, unchanged.

use std::ffi::{c_int, c_uint};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::ffi;

/// SQLite's own page cache, which every call goes on to.
static SQLITE_CACHE: OnceLock<Methods> = OnceLock::new();

/// SQLite's cache methods: function pointers, and an argument SQLite itself passes to them
/// from any thread.
struct Methods(ffi::sqlite3_pcache_methods2);
// SAFETY: see above; nothing here is written after it is set.
unsafe impl Send for Methods {}
unsafe impl Sync for Methods {}

/// Whether the layer is in place (decided once, at the first [`install`]).
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Truncations passed on to SQLite's cache, and those that had nothing to drop.
static PASSED: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// The byte offset of SQLite's lock page (`PENDING_BYTE`).
const PENDING_BYTE: c_uint = 0x4000_0000;

/// One connection's cache: SQLite's, and what this layer knows of it.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    /// The lock page's number at this cache's page size.
    lock_page: c_uint,
    /// No page but those at the lock page's number has a larger number than this.
    max_key: c_uint,
    /// Pages at the lock page's number now: during a swap, or fetched from a corrupt file
    /// (then this never falls back by itself, and every truncation is passed on).
    at_lock_page: c_uint,
}

/// Puts the layer in place unless SQLite has started already; says whether it is in place.
/// Called before the hub opens its first database.
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        // SAFETY: the configuration calls take a pointer to a methods struct, which SQLite
        // copies; they fail (SQLITE_MISUSE) without effect once SQLite has started.
        unsafe {
            let mut sqlite_cache: ffi::sqlite3_pcache_methods2 = std::mem::zeroed();
            if ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_GETPCACHE2,
                &mut sqlite_cache as *mut ffi::sqlite3_pcache_methods2,
            ) != ffi::SQLITE_OK
                || sqlite_cache.xCreate.is_none()
            {
                return false;
            }
            let layer = ffi::sqlite3_pcache_methods2 {
                iVersion: 1,
                pArg: sqlite_cache.pArg,
                xInit: sqlite_cache.xInit,
                xShutdown: sqlite_cache.xShutdown,
                xCreate: Some(create),
                xCachesize: Some(cachesize),
                xPagecount: Some(pagecount),
                xFetch: Some(fetch),
                xUnpin: Some(unpin),
                xRekey: Some(rekey),
                xTruncate: Some(truncate),
                xDestroy: Some(destroy),
                xShrink: Some(shrink),
            };
            if SQLITE_CACHE.set(Methods(sqlite_cache)).is_err() {
                return false;
            }
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PCACHE2,
                &layer as *const ffi::sqlite3_pcache_methods2,
            ) == ffi::SQLITE_OK
        }
    })
}

/// Truncations passed on to SQLite's cache and truncations skipped, since the process began.
pub fn truncations() -> (u64, u64) {
    (
        PASSED.load(Ordering::Relaxed),
        SKIPPED.load(Ordering::Relaxed),
    )
}

fn sqlite_cache() -> &'static ffi::sqlite3_pcache_methods2 {
    &SQLITE_CACHE
        .get()
        .expect("the layer is only called once installed")
        .0
}

/// # Safety
/// `p` is a cache this layer created and has not destroyed; SQLite calls a cache's methods
/// from one thread at a time.
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a mut Cache {
    unsafe { &mut *(p as *mut Cache) }
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra_size: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let create = sqlite_cache().xCreate.expect("xCreate");
    let inner = unsafe { create(page_size, extra_size, purgeable) };
    if inner.is_null() {
        return std::ptr::null_mut();
    }
    let cache = Cache {
        inner,
        lock_page: PENDING_BYTE / page_size.max(1) as c_uint + 1,
        max_key: 0,
        at_lock_page: 0,
    };
    Box::into_raw(Box::new(cache)) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn cachesize(p: *mut ffi::sqlite3_pcache, pages: c_int) {
    let cache = unsafe { cache(p) };
    if let Some(f) = sqlite_cache().xCachesize {
        unsafe { f(cache.inner, pages) }
    }
}

unsafe extern "C" fn pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    let cache = unsafe { cache(p) };
    let f = sqlite_cache().xPagecount.expect("xPagecount");
    unsafe { f(cache.inner) }
}

unsafe extern "C" fn fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let cache = unsafe { cache(p) };
    let f = sqlite_cache().xFetch.expect("xFetch");
    let page = unsafe { f(cache.inner, key, create) };
    if !page.is_null() {
        if key == cache.lock_page {
            cache.at_lock_page = cache.at_lock_page.saturating_add(1);
        } else if key > cache.max_key {
            cache.max_key = key;
        }
    }
    page
}

unsafe extern "C" fn unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    let cache = unsafe { cache(p) };
    let f = sqlite_cache().xUnpin.expect("xUnpin");
    unsafe { f(cache.inner, page, discard) }
}

unsafe extern "C" fn rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old_key: c_uint,
    new_key: c_uint,
) {
    let cache = unsafe { cache(p) };
    let f = sqlite_cache().xRekey.expect("xRekey");
    unsafe { f(cache.inner, page, old_key, new_key) };
    if old_key == cache.lock_page {
        cache.at_lock_page = cache.at_lock_page.saturating_sub(1);
    }
    if new_key == cache.lock_page {
        cache.at_lock_page = cache.at_lock_page.saturating_add(1);
    } else if new_key > cache.max_key {
        cache.max_key = new_key;
    }
}

unsafe extern "C" fn truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let cache = unsafe { cache(p) };
    if cache.at_lock_page == 0 && limit > cache.max_key {
        // No page has a number at or past the limit: nothing to drop.
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    PASSED.fetch_add(1, Ordering::Relaxed);
    let f = sqlite_cache().xTruncate.expect("xTruncate");
    unsafe { f(cache.inner, limit) };
    // Every page numbered `limit` or more is gone.
    cache.max_key = cache.max_key.min(limit.saturating_sub(1));
    if limit <= cache.lock_page {
        cache.at_lock_page = 0;
    }
}

unsafe extern "C" fn destroy(p: *mut ffi::sqlite3_pcache) {
    // SAFETY: SQLite destroys a cache once, after its last use.
    let cache = unsafe { Box::from_raw(p as *mut Cache) };
    let f = sqlite_cache().xDestroy.expect("xDestroy");
    unsafe { f(cache.inner) }
}

unsafe extern "C" fn shrink(p: *mut ffi::sqlite3_pcache) {
    let cache = unsafe { cache(p) };
    if let Some(f) = sqlite_cache().xShrink {
        unsafe { f(cache.inner) }
    }
}
