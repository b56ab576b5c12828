//! Masking the secrets that endpoint URLs and headers carry, wherever they leave the hub: API
//! answers, hub events, logs and the error text of attempts.
//!
//! Chat services and exchanges keep their credentials in the URL (a Telegram bot token, the
//! token of a Discord or Slack webhook, DingTalk's `access_token` and `sign`, a password in
//! `user:pass@`) or in headers (`Authorization`, `OK-ACCESS-SIGN`, `KC-API-PASSPHRASE`). Once
//! stored they are shown as `***`.
//!
//! ```
//! use tradehook::security::redact;
//! assert_eq!(
//!     redact::url("https://bot:pw@api.telegram.org/bot123:ABC/sendMessage?chat_id=42"),
//!     "https://bot:***@api.telegram.org/bot***/sendMessage?chat_id=42"
//! );
//! assert_eq!(
//!     redact::text("error sending request for url (https://x.test/h?token=s3cr3t-value)", "https://x.test/h?token=s3cr3t-value"),
//!     "error sending request for url (https://x.test/h?token=***)"
//! );
//! assert!(redact::is_secret_name("OK-ACCESS-SIGN") && !redact::is_secret_name("chat_id"));
//! ```

/// What a masked secret is shown as.
pub const MASK: &str = "***";

/// Whether a header or query parameter of this name holds a secret: any name that speaks of a
/// token, key, secret, password or passphrase, signature, code, session or authorization.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "auth",
        "token",
        "key",
        "secret",
        "cookie",
        "sig",
        "pass",
        "code",
        "credential",
        "session",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// A path segment that is itself a credential: Telegram's `bot<id>:<token>` (its `:` may
/// come percent-encoded), or the token after a Discord webhook's id and a Slack webhook's
/// three ids.
fn is_secret_segment(segments: &[&str], i: usize) -> bool {
    let seg = segments[i];
    let before = |n: usize| i.checked_sub(n).map(|j| segments[j]);
    (seg.starts_with("bot") && (seg.contains(':') || seg.to_ascii_lowercase().contains("%3a")))
        || before(2) == Some("webhooks")
        || before(3) == Some("services")
}

/// The secret parts of a URL, as they appear in it and decoded.
fn secrets_of(parsed: &url::Url) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(password) = parsed.password() {
        found.push(password.to_owned());
    }
    if let Some(segments) = parsed.path_segments() {
        let segments: Vec<&str> = segments.collect();
        for i in 0..segments.len() {
            if is_secret_segment(&segments, i) {
                // Telegram's "bot" prefix names the API, not the token.
                let seg = segments[i];
                found.push(seg.strip_prefix("bot").unwrap_or(seg).to_owned());
            }
        }
    }
    if let Some(query) = parsed.query() {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && is_secret_name(&percent_decode(k))
            {
                found.push(v.to_owned());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty() && s != MASK);
    // The longest first, so that a secret containing another is masked whole.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

fn percent_decode(text: &str) -> String {
    let plus_as_space = text.replace('+', " ");
    form_urlencoded::parse(format!("x={plus_as_space}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| text.to_owned())
}

/// The URL with its secrets masked; text that is not a URL is returned as it is.
pub fn url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(MASK));
    }
    if let Some(segments) = parsed.path_segments() {
        let segments: Vec<&str> = segments.collect();
        let masked: Vec<String> = (0..segments.len())
            .map(|i| match is_secret_segment(&segments, i) {
                true if segments[i].starts_with("bot") => format!("bot{MASK}"),
                true => MASK.to_owned(),
                false => segments[i].to_owned(),
            })
            .collect();
        if masked.iter().zip(&segments).any(|(m, s)| m != s) {
            parsed.set_path(&masked.join("/"));
        }
    }
    if let Some(query) = parsed.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_name(&percent_decode(k)) => format!("{k}={MASK}"),
                _ => pair.to_owned(),
            })
            .collect();
        parsed.set_query(Some(&masked.join("&")));
    }
    parsed.to_string().replace("%2A%2A%2A", MASK)
}

/// `text` (an error message, say) with every secret of `target` masked, however the URL was
/// written into it: whole, normalised, or in pieces; and any other URL in it masked as
/// [`url`] masks it.
pub fn text(text: &str, target: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("http://").or_else(|| rest.find("https://")) {
        out.push_str(&rest[..start]);
        let len = rest[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(rest.len() - start);
        out.push_str(&url(&rest[start..start + len]));
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    let Ok(parsed) = url::Url::parse(target) else {
        return out;
    };
    for secret in secrets_of(&parsed) {
        // A one- or two-character value would mask unrelated text, and says nothing anyway.
        if secret.len() >= 3 {
            out = out.replace(&secret, MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_bearing_part_of_a_url_is_masked() {
        for (given, shown) in [
            (
                "https://discord.com/api/webhooks/123/abcDEF_tok",
                "https://discord.com/api/webhooks/123/***",
            ),
            (
                "https://hooks.slack.com/services/T1/B2/xyzSECRET",
                "https://hooks.slack.com/services/T1/B2/***",
            ),
            (
                "https://api.telegram.org/bot123%3AABCdef/sendMessage",
                "https://api.telegram.org/bot***/sendMessage",
            ),
            (
                "https://oapi.dingtalk.com/robot/send?access_token=at1&timestamp=1&sign=s%2Bg",
                "https://oapi.dingtalk.com/robot/send?access_token=***&timestamp=1&sign=***",
            ),
            (
                "http://user:pa55@bot.example/hook?code=c1&sig=s1&x=1",
                "http://user:***@bot.example/hook?code=***&sig=***&x=1",
            ),
            (
                "https://bot.example/hook?token=t&chat_id=7",
                "https://bot.example/hook?token=***&chat_id=7",
            ),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn secrets_are_masked_in_text_whole_or_decoded() {
        let target = "http://user:pa55word@bot.example/bot123%3AABCdef/x?key=k%2Fey1";
        let said = "error for url (http://user:pa55word@bot.example/bot123%3AABCdef/x?key=k%2Fey1): \
                    token 123:ABCdef, key k/ey1";
        let masked = text(said, target);
        for secret in ["pa55word", "123%3AABCdef", "123:ABCdef", "k%2Fey1", "k/ey1"] {
            assert!(!masked.contains(secret), "{secret} in {masked}");
        }
        assert!(masked.contains("bot.example"), "{masked}");
        // Another URL in the text (a signed one the renderer made) is masked too.
        let signed = text(
            "error for url (https://oapi.dingtalk.com/robot/send?access_token=a1&sign=zz%2B9)",
            "https://oapi.dingtalk.com/robot/send?access_token=a1",
        );
        assert_eq!(
            signed,
            "error for url (https://oapi.dingtalk.com/robot/send?access_token=***&sign=***)"
        );
    }
}
