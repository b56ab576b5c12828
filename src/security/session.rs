//! Dashboard sessions: in memory, each bound to the hash of the API token it was opened with,
//! idle for at most [`IDLE`] and alive for at most [`ABSOLUTE`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long a session may sit unused.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// How long a session lives, used or not.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);

/// The name of the session cookie.
pub const COOKIE: &str = "tradehook_session";
/// The name of the sign-in form's CSRF cookie.
pub const LOGIN_COOKIE: &str = "tradehook_login";

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The hash of the API token it was opened with.
    pub token_hash: String,
    /// Every form of the session carries it.
    pub csrf: String,
    opened: Instant,
    seen: Instant,
}

/// The open sessions, by id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

/// A random value for a cookie or a form: 32 bytes, URL-safe base64.
pub fn random() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::domain::random_bytes::<32>())
}

impl Sessions {
    /// Opens a session for the token with `token_hash`; its id.
    pub fn open(&self, token_hash: String) -> String {
        let id = random();
        let now = Instant::now();
        let mut open = self.open.lock().expect("not poisoned");
        open.retain(|_, s| alive(s, now));
        open.insert(
            id.clone(),
            Session {
                token_hash,
                csrf: random(),
                opened: now,
                seen: now,
            },
        );
        id
    }

    /// The session `id`, if it is open and alive; using it keeps it from going idle.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut open = self.open.lock().expect("not poisoned");
        match open.get_mut(id) {
            Some(s) if alive(s, now) => {
                s.seen = now;
                Some(s.clone())
            }
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) {
        self.open.lock().expect("not poisoned").remove(id);
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.opened) < ABSOLUTE
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    crate::security::sign::secrets_equal(a.as_bytes(), b.as_bytes())
}
