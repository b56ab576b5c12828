//! `tradehook doctor`: checks a running setup from the outside, as a sender sees it, and
//! says what to fix: the public URL answers over HTTPS with a valid certificate, on a port
//! TradingView sends to, the hub is ready (its database writable), and the clock is right.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// `tradehook doctor` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The config file (`tradehook init` wrote one): its public_url and api_token are used
    #[arg(long, env = "TRADEHOOK_CONFIG")]
    pub config: Option<PathBuf>,
    /// The URL senders reach the hub at [default: the config file's public_url]
    #[arg(long)]
    pub url: Option<String>,
    /// An API token, to look at the sources [default: the config file's api_token]
    #[arg(long, env = "TRADEHOOK_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Also trust this PEM certificate authority (a private one)
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, but needs attention.
    Warn,
    /// Broken: senders will fail.
    Fail,
}

/// One check's outcome, and what to do about it.
#[derive(Debug, Clone)]
pub struct Finding {
    pub verdict: Verdict,
    pub what: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Ok,
            what: what.into(),
            fix: None,
        }
    }

    fn warn(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Warn,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Signed senders (Standard Webhooks, timestamped HMAC) refuse a timestamp this far off.
const SKEW_REFUSED_SECONDS: i64 = 300;
/// A certificate this close to its end is worth a warning.
const CERTIFICATE_WARN_DAYS: i64 = 14;

/// Runs every check, prints the findings, and fails if any check failed.
pub async fn run_doctor(args: DoctorArgs) -> anyhow::Result<()> {
    let (url, token) = target(&args)?;
    println!("tradehook doctor: {url}");
    let findings = check(&url, token.as_deref(), args.ca_file.as_deref()).await?;
    for f in &findings {
        let mark = match f.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        println!("  {mark}  {}", f.what);
        if let Some(fix) = &f.fix {
            println!("        fix: {fix}");
        }
    }
    let failed = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    if failed > 0 {
        bail!("{failed} problem(s) to fix before senders can rely on this hub");
    }
    println!("Nothing stops senders from reaching this hub.");
    Ok(())
}

/// The URL to check and the token to use: from the flags, else from the config file.
fn target(args: &DoctorArgs) -> anyhow::Result<(String, Option<String>)> {
    let file: toml::Table = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))?
        }
        None => toml::Table::new(),
    };
    let text = |key: &str| file.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let url = match args.url.clone().or_else(|| text("public_url")) {
        Some(url) => url,
        None => match text("listen") {
            Some(listen) => format!("http://{listen}"),
            None => bail!(
                "which hub? give --url https://hooks.example.com, or --config with the file \
                 `tradehook init` wrote"
            ),
        },
    };
    let url = url.trim_end_matches('/').to_owned();
    reqwest::Url::parse(&url).with_context(|| format!("--url {url:?}"))?;
    Ok((url, args.token.clone().or_else(|| text("api_token"))))
}

/// Every check against the hub at `url`.
pub async fn check(
    url: &str,
    token: Option<&str>,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<Vec<Finding>> {
    let parsed = reqwest::Url::parse(url)?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let port = parsed.port_or_known_default().unwrap_or(0);
    let https = parsed.scheme() == "https";
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let client = client(ca_file)?;
    let mut findings = Vec::new();

    // 1. Reachable, over HTTPS, with a certificate a sender accepts.
    let health =
        match client.get(format!("{url}/healthz")).send().await {
            Ok(r) => r,
            Err(e) => {
                let text = crate::domain::error_chain(&e);
                findings.push(if text.contains("certificate") || text.contains("Certificate") {
                Finding::fail(
                    format!("{host} answers with a certificate senders refuse: {text}"),
                    format!(
                        "serve a certificate for {host} from a public authority: acme_domain \
                         with acme_production = true (Let's Encrypt's staging certificates are \
                         not trusted), or certbot's files as tls_cert/tls_key; or give doctor \
                         --ca-file for a private authority"
                    ),
                )
            } else {
                Finding::fail(
                    format!("nothing answers at {url}: {text}"),
                    "start `tradehook serve`; check that the port is open in the firewall and \
                     that the name's DNS points to this machine",
                )
            });
                return Ok(findings);
            }
        };
    let hub_date = health
        .headers()
        .get(http::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(httpdate);
    if https {
        let expiry = health
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .and_then(|der| crate::tls::not_after(&der.to_vec().into()).ok());
        findings.push(certificate_finding(
            &host,
            expiry,
            crate::domain::now_ms() / 1000,
        ));
    } else {
        findings.push(plain_http_finding(url, loopback));
    }

    // 2. Ready: the database answers and is writable, deliveries run.
    match client.get(format!("{url}/readyz")).send().await {
        Ok(r) if r.status().is_success() => {
            let body: serde_json::Value = json_of(r).await;
            findings.push(Finding::ok(
                "ready: the database answers and deliveries are running",
            ));
            for warning in body["warnings"].as_array().into_iter().flatten() {
                if let Some(w) = warning.as_str() {
                    findings.push(Finding::warn(w, "see above"));
                }
            }
        }
        Ok(r) => {
            let status = r.status();
            let body: serde_json::Value = json_of(r).await;
            let detail = body["detail"].as_str().unwrap_or("no detail").to_owned();
            findings.push(Finding::fail(
                format!("not ready ({status}): {detail}"),
                "read the hub's log; check the database's disk (space, permissions) and that \
                 the hub's user can write there",
            ));
        }
        Err(e) => findings.push(Finding::fail(
            format!("/readyz did not answer: {}", crate::domain::error_chain(&e)),
            "read the hub's log",
        )),
    }

    // 3. TradingView's ports, when a TradingView source exists.
    match token {
        None => findings.push(Finding::warn(
            "no API token: the sources were not looked at",
            "give --token, or --config with the file that holds api_token",
        )),
        Some(token) => {
            let reply = client
                .get(format!("{url}/api/v1/sources"))
                .bearer_auth(token)
                .send()
                .await;
            match reply {
                Ok(r) if r.status().is_success() => {
                    let body: serde_json::Value = json_of(r).await;
                    let tradingview: Vec<&str> = body["data"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|s| s["format"] == "tradingview")
                        .filter_map(|s| s["name"].as_str())
                        .collect();
                    findings.extend(port_finding(&tradingview, https, port));
                }
                Ok(r) => findings.push(Finding::fail(
                    format!("the API refused the token ({})", r.status()),
                    "give the admin token (api_token in the config file)",
                )),
                Err(e) => findings.push(Finding::fail(
                    format!("the API did not answer: {}", crate::domain::error_chain(&e)),
                    "read the hub's log",
                )),
            }
        }
    }

    // 4. The clock, against the hub's and the kernel's word on it.
    let now = crate::domain::now_ms() / 1000;
    findings.push(clock_finding(hub_date.map(|d| d - now), kernel_synced()));
    Ok(findings)
}

/// A client that checks certificates as senders do (the system's authorities), plus
/// `ca_file`'s, and reports the certificate it was served.
fn client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .tls_info(true);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{}: not a PEM certificate", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("building the HTTP client")
}

/// An answer's JSON body; `null` when it has none.
async fn json_of(reply: reqwest::Response) -> serde_json::Value {
    let text = reply.text().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

/// An HTTP `Date` header as unix seconds.
fn httpdate(text: &str) -> Option<i64> {
    let at = httpdate::parse_http_date(text).ok()?;
    let seconds = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(seconds).ok()
}

/// The served certificate's expiry, `now` in unix seconds.
fn certificate_finding(host: &str, expiry: Option<i64>, now: i64) -> Finding {
    let Some(expiry) = expiry else {
        return Finding::ok(format!(
            "{host} answers over HTTPS with a certificate this machine accepts"
        ));
    };
    let days = (expiry - now) / 86_400;
    let at = crate::domain::rfc3339(expiry * 1000);
    if days < CERTIFICATE_WARN_DAYS {
        Finding::warn(
            format!("{host}'s certificate expires in {days} day(s), at {at}"),
            "renew it (certbot renew); the hub picks the new files up without a restart",
        )
    } else {
        Finding::ok(format!(
            "{host} answers over HTTPS with a valid certificate, expiring {at} (in {days} days)"
        ))
    }
}

/// A hub reached over plain HTTP: fine on this machine, not across the internet.
fn plain_http_finding(url: &str, loopback: bool) -> Finding {
    if loopback {
        Finding::warn(
            format!("{url} is plain HTTP on this machine only"),
            "fine for trying it out; senders on the internet need HTTPS (tradehook init \
             --domain …)",
        )
    } else {
        Finding::fail(
            format!(
                "{url} is plain HTTP: signals and their passphrases cross the internet in clear"
            ),
            "serve HTTPS: acme_domain, or tls_cert/tls_key, in the config (or a proxy in \
             front), and a public_url starting with https://",
        )
    }
}

/// TradingView posts only to ports 80 and 443.
fn port_finding(tradingview: &[&str], https: bool, port: u16) -> Option<Finding> {
    let names = tradingview.join(", ");
    if tradingview.is_empty() {
        return None;
    }
    Some(match (https, port) {
        (true, 443) => Finding::ok(format!(
            "TradingView source(s) {names}: HTTPS on port 443, where TradingView sends"
        )),
        (false, 80) => Finding::warn(
            format!("TradingView source(s) {names}: plain HTTP on port 80, passphrase in clear"),
            "serve HTTPS on 443",
        ),
        (_, port) => Finding::fail(
            format!(
                "TradingView source(s) {names}: TradingView sends webhooks only to ports 80 and \
                 443, and this URL uses port {port}"
            ),
            "listen on 443 (listen = \"0.0.0.0:443\"; the systemd unit in contrib/ lets the hub \
             bind it), or put a proxy on 443 in front and set public_url to it",
        ),
    })
}

/// The clock: `skew` is the hub's clock minus this machine's, in seconds (whole seconds:
/// the `Date` header's); `synced` what the kernel says of time synchronisation.
fn clock_finding(skew: Option<i64>, synced: Option<bool>) -> Finding {
    if let Some(skew) = skew
        && skew.abs() > 2
    {
        let what = format!("the hub's clock and this machine's differ by {skew} s");
        let fix = "keep both clocks in sync with NTP (systemd-timesyncd or chrony)";
        return if skew.abs() >= SKEW_REFUSED_SECONDS {
            Finding::fail(
                format!("{what}: signed senders' timestamps will be refused"),
                fix,
            )
        } else {
            Finding::warn(what, fix)
        };
    }
    match synced {
        Some(false) => Finding::warn(
            "this machine's clock is not kept in sync by NTP: signed senders (Standard \
             Webhooks, timestamped signatures) refuse requests more than 5 minutes off",
            "enable time synchronisation: timedatectl set-ntp true, or install chrony",
        ),
        _ => Finding::ok("the clock agrees with the hub's, and is kept in sync"),
    }
}

/// Whether the kernel's clock is synchronised (NTP), where the kernel says.
fn kernel_synced() -> Option<bool> {
    // SAFETY: adjtimex with modes 0 only reads the kernel's clock state into `timex`.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut timex) };
    match state {
        -1 => None,
        libc::TIME_ERROR => Some(false),
        _ => Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_clock_warns_and_past_five_minutes_fails() {
        assert_eq!(clock_finding(Some(0), Some(true)).verdict, Verdict::Ok);
        assert_eq!(clock_finding(Some(-2), None).verdict, Verdict::Ok);
        let off = clock_finding(Some(40), Some(true));
        assert_eq!(off.verdict, Verdict::Warn);
        assert!(off.what.contains("40 s"), "{}", off.what);
        let refused = clock_finding(Some(-301), Some(true));
        assert_eq!(refused.verdict, Verdict::Fail);
        assert!(refused.what.contains("refused"));
        let unsynced = clock_finding(Some(0), Some(false));
        assert_eq!(unsynced.verdict, Verdict::Warn);
        assert!(unsynced.fix.unwrap().contains("set-ntp"));
    }

    #[test]
    fn tradingview_needs_port_443_or_80() {
        assert!(port_finding(&[], true, 8443).is_none());
        assert_eq!(
            port_finding(&["tv"], true, 443).unwrap().verdict,
            Verdict::Ok
        );
        assert_eq!(
            port_finding(&["tv"], false, 80).unwrap().verdict,
            Verdict::Warn
        );
        let wrong = port_finding(&["tv", "tv2"], true, 8443).unwrap();
        assert_eq!(wrong.verdict, Verdict::Fail);
        assert!(wrong.what.contains("tv, tv2") && wrong.what.contains("8443"));
    }

    #[test]
    fn a_certificate_in_its_last_two_weeks_warns() {
        let now = 1_800_000_000;
        let ok = certificate_finding("h.example", Some(now + 60 * 86_400), now);
        assert_eq!(ok.verdict, Verdict::Ok);
        assert!(ok.what.contains("in 60 days"));
        let soon = certificate_finding("h.example", Some(now + 3 * 86_400 + 5), now);
        assert_eq!(soon.verdict, Verdict::Warn);
        assert!(soon.what.contains("3 day(s)"));
    }

    #[test]
    fn plain_http_beyond_this_machine_fails() {
        assert_eq!(
            plain_http_finding("http://127.0.0.1:8787", true).verdict,
            Verdict::Warn
        );
        let open = plain_http_finding("http://203.0.113.5:8787", false);
        assert_eq!(open.verdict, Verdict::Fail);
        assert!(open.what.contains("in clear") && open.fix.unwrap().contains("https://"));
    }

    #[test]
    fn the_hubs_date_header_is_read() {
        assert_eq!(
            httpdate("Thu, 03 Dec 2026 00:00:00 GMT"),
            Some(1_796_256_000)
        );
        assert_eq!(httpdate("yesterday"), None);
    }
}
