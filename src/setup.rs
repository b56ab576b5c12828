//! The first run: `tradehook init` writes a commented config file with an admin token, the
//! public URL, a choice of HTTPS, a TradingView source and a Freqtrade source, and prints
//! what to paste into TradingView and into Freqtrade; `tradehook doctor` checks a running
//! setup and says what to fix.

pub mod doctor;

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;

/// How the hub is reached over HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsChoice {
    /// The hub serves HTTPS on 443 with a certificate it obtains and renews itself from
    /// Let's Encrypt (ACME, TLS-ALPN-01 on port 443: nothing else to install)
    Acme,
    /// The hub serves HTTPS itself from certificate files (certbot's, by default), on 443
    Files,
    /// A reverse proxy on this machine (Caddy, nginx) serves HTTPS and forwards to the hub
    /// on 127.0.0.1:8787
    Proxy,
    /// Plain HTTP on 127.0.0.1:8787, for trying it out: TradingView cannot reach it
    None,
}

/// `tradehook init` options.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The file to write
    #[arg(long, default_value = "tradehook.toml")]
    pub config: PathBuf,
    /// The domain senders reach the hub at (hooks.example.com); its DNS must point here
    #[arg(long)]
    pub domain: Option<String>,
    /// How HTTPS is served [default: acme with --domain, none without]
    #[arg(long, value_enum)]
    pub tls: Option<TlsChoice>,
    /// Let's Encrypt's contact address for the certificate (expiry notices), with --tls acme
    #[arg(long)]
    pub email: Option<String>,
    /// The database [default: sqlite://tradehook.db]
    #[arg(long)]
    pub database: Option<String>,
    /// Where the hub listens [default: 0.0.0.0:443 with acme or files, 127.0.0.1:8787
    /// otherwise]
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Replace the file if it exists
    #[arg(long)]
    pub force: bool,
}

/// What `init` decided, for the file and for what it prints.
struct Plan {
    tls: TlsChoice,
    public_url: String,
    listen: String,
    database: String,
    domain: Option<String>,
    email: Option<String>,
    token: String,
    tradingview_secret: String,
    freqtrade_secret: String,
}

/// Writes the config file and prints what to paste where.
pub fn run_init(args: InitArgs) -> anyhow::Result<()> {
    let tls = args.tls.unwrap_or(if args.domain.is_some() {
        TlsChoice::Acme
    } else {
        TlsChoice::None
    });
    let domain = args
        .domain
        .map(|d| d.trim().trim_end_matches('.').to_lowercase());
    if let Some(d) = &domain
        && (d.is_empty()
            || d.contains(['/', ':', ' '])
            || d.parse::<http::uri::Authority>().is_err())
    {
        bail!("--domain {d:?}: a host name such as hooks.example.com, without scheme or port");
    }
    let public_url = match (&domain, tls) {
        (Some(d), TlsChoice::Acme | TlsChoice::Files | TlsChoice::Proxy) => format!("https://{d}"),
        (None, TlsChoice::Acme | TlsChoice::Files | TlsChoice::Proxy) => {
            bail!("--tls acme, files and proxy need --domain: the name senders reach the hub at")
        }
        (_, TlsChoice::None) => match args.listen {
            Some(address) => format!("http://{address}"),
            None => "http://127.0.0.1:8787".to_owned(),
        },
    };
    let plan = Plan {
        tls,
        public_url,
        listen: match (args.listen, tls) {
            (Some(address), _) => address.to_string(),
            (None, TlsChoice::Acme | TlsChoice::Files) => "0.0.0.0:443".to_owned(),
            (None, TlsChoice::Proxy | TlsChoice::None) => "127.0.0.1:8787".to_owned(),
        },
        database: args
            .database
            .unwrap_or_else(|| crate::config::DEFAULT_DATABASE.to_owned()),
        domain,
        email: args.email,
        token: crate::domain::new_token("thk_"),
        tradingview_secret: crate::domain::new_token(""),
        freqtrade_secret: crate::domain::new_token(""),
    };
    let text = config_text(&plan);
    // Checked by the hub's own reading of it, so init never writes a file serve refuses.
    toml::from_str::<toml::Table>(&text).context("the written configuration must be TOML")?;
    write_private(&args.config, &text, args.force)?;
    print!("{}", instructions(&plan, &args.config));
    Ok(())
}

/// Creates `path` readable by its owner only (it holds the admin token and the sources'
/// secrets); an existing file is kept unless `force`.
fn write_private(path: &std::path::Path, text: &str, force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists: init does not overwrite a configuration (its token and secrets \
                 would be lost); give --force to replace it, or --config to write another file",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("writing {}", path.display()))
        }
    })?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn config_text(plan: &Plan) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut out = format!(
        "# tradehook configuration, written by `tradehook init`.\n\
         # Start the hub:   tradehook serve --config {{this file}}\n\
         # Check it:        tradehook doctor --config {{this file}}\n\
         # Every key is also a flag (public_url: --public-url) and an environment variable\n\
         # (TRADEHOOK_PUBLIC_URL); a flag wins over the environment, which wins over this file.\n\
         # This file holds the admin token and the sources' secrets: keep it private (0600).\n\
         \n\
         # The admin API token (stored hashed by the hub). Send it as `Authorization: Bearer …`.\n\
         api_token = {token}\n\
         \n\
         # Where the hub listens, and the URL senders reach it at (shown in each source's\n\
         # ingest_url).\n\
         listen = {listen}\n\
         public_url = {public_url}\n\
         \n\
         # SQLite by default, created on first start with its key file beside it\n\
         # (tradehook.db.key: back both up). postgres://user@host/db for several nodes.\n\
         database = {database}\n\
         \n",
        token = quoted(&plan.token),
        listen = quoted(&plan.listen),
        public_url = quoted(&plan.public_url),
        database = quoted(&plan.database),
    );
    match plan.tls {
        TlsChoice::Acme => {
            let domain = plan.domain.as_deref().unwrap_or_default();
            let email = match &plan.email {
                Some(e) => format!("acme_email = {}\n", quoted(e)),
                None => "# acme_email = \"you@example.com\"   # Let's Encrypt's expiry notices\n"
                    .to_owned(),
            };
            out += &format!(
                "# HTTPS on 443 with a certificate the hub obtains and renews itself from Let's\n\
                 # Encrypt (TLS-ALPN-01 on this port: {domain}'s DNS must point here, and port\n\
                 # 443 be open). The account and certificate are kept in acme/ beside the\n\
                 # database. acme_production = false uses Let's Encrypt's staging directory,\n\
                 # for trying a setup out: its certificates are not trusted by TradingView.\n\
                 acme_domain = [{d}]\n\
                 {email}\
                 acme_production = true\n\
                 \n",
                d = quoted(domain),
            );
        }
        TlsChoice::Files => {
            let domain = plan.domain.as_deref().unwrap_or_default();
            out += &format!(
                "# HTTPS, served by the hub from certificate files, read again when they change.\n\
                 # With certbot: certbot certonly --standalone -d {domain}\n\
                 # (then let the hub's user read /etc/letsencrypt/live and /archive).\n\
                 tls_cert = {cert}\n\
                 tls_key = {key}\n\
                 # Plain HTTP on port 80 answered with a redirect to HTTPS. Not with certbot\n\
                 # --standalone, whose renewals need port 80 themselves.\n\
                 # http_redirect = \"0.0.0.0:80\"\n\
                 \n",
                cert = quoted(&format!("/etc/letsencrypt/live/{domain}/fullchain.pem")),
                key = quoted(&format!("/etc/letsencrypt/live/{domain}/privkey.pem")),
            );
        }
        TlsChoice::Proxy => {
            out += "# HTTPS is served by a reverse proxy on this machine, which forwards to\n\
                    # 127.0.0.1:8787 (Caddy: `reverse_proxy 127.0.0.1:8787`). The client's\n\
                    # address is read from the proxy's X-Forwarded-For, and only from it.\n\
                    trusted_proxy = [\"127.0.0.1\", \"::1\"]\n\
                    \n";
        }
        TlsChoice::None => {
            out += "# Plain HTTP on loopback, for trying tradehook out. TradingView sends only\n\
                    # to HTTPS on ports 80 and 443: run `tradehook init --domain …` for that.\n\
                    \n";
        }
    }
    let allowlist = if plan.tls == TlsChoice::None {
        "# ip_allowlist = [\"tradingview\"]   # TradingView's own addresses only\n"
    } else {
        "ip_allowlist = [\"tradingview\"]   # TradingView's published addresses only\n"
    };
    out += &format!(
        "# TradingView alerts: the alert message carries the secret as \"passphrase\".\n\
         [[sources]]\n\
         name = \"tradingview\"\n\
         format = \"tradingview\"\n\
         {allowlist}\
         secret = {tv}\n\
         \n\
         # Freqtrade's webhook: the secret is the last part of the URL.\n\
         [[sources]]\n\
         name = \"freqtrade\"\n\
         format = \"freqtrade\"\n\
         # ip_allowlist = [\"203.0.113.7\"]   # your bot's address\n\
         secret = {ft}\n\
         \n\
         # Where events go: endpoints declared here are created on start. For example:\n\
         # [[endpoints]]\n\
         # name = \"discord\"\n\
         # url = \"https://discord.com/api/webhooks/…\"\n\
         # preset = \"discord\"\n\
         # event_types = [\"entry*\", \"exit*\"]\n",
        tv = quoted(&plan.tradingview_secret),
        ft = quoted(&plan.freqtrade_secret),
    );
    out
}

/// The TradingView alert message for a source with this secret.
pub fn tradingview_message(secret: &str) -> String {
    let message = json!({
        "passphrase": secret,
        "ticker": "{{exchange}}:{{ticker}}",
        "action": "{{strategy.order.action}}",
        "market_position": "{{strategy.market_position}}",
        "price": "{{close}}",
        "contracts": "{{strategy.order.contracts}}",
        "strategy": "my-strategy",
        "client_ref": "{{timenow}}-{{strategy.order.id}}",
    });
    serde_json::to_string_pretty(&message).expect("a JSON value")
}

/// Freqtrade's `webhook` section for an ingest URL.
pub fn freqtrade_section(url: &str) -> String {
    let common = |fields: &[&str]| {
        let mut map = serde_json::Map::new();
        map.insert("type".into(), json!("{type}"));
        for f in fields {
            map.insert((*f).into(), json!(format!("{{{f}}}")));
        }
        serde_json::Value::Object(map)
    };
    let entry = common(&[
        "trade_id",
        "pair",
        "direction",
        "open_rate",
        "amount",
        "stake_amount",
        "stake_currency",
        "enter_tag",
        "open_date",
    ]);
    let exit = common(&[
        "trade_id",
        "pair",
        "direction",
        "close_rate",
        "amount",
        "profit_ratio",
        "profit_amount",
        "exit_reason",
        "close_date",
    ]);
    let section = json!({
        "webhook": {
            "enabled": true,
            "url": url,
            "format": "json",
            "retries": 3,
            "retry_delay": 0.2,
            "entry": entry,
            "entry_fill": entry,
            "entry_cancel": entry,
            "exit": exit,
            "exit_fill": exit,
            "exit_cancel": exit,
            "status": {"type": "{type}", "status": "{status}"},
        }
    });
    let text = serde_json::to_string_pretty(&section).expect("a JSON value");
    // A section to paste into a JSON object, without the braces around it.
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(&text);
    inner.trim_matches('\n').to_owned()
}

fn instructions(plan: &Plan, path: &std::path::Path) -> String {
    let base = plan.public_url.trim_end_matches('/');
    let mut out = format!(
        "Wrote {path} (mode 0600: it holds the admin token and the sources' secrets).\n\
         \n\
         Admin API token: {token}\n\
         \n\
         == TradingView: in the alert's Notifications tab, tick Webhook URL and paste\n\
         \n\
         {base}/in/tradingview\n\
         \n\
         == and this as the alert's Message (TradingView fills in the {{{{…}}}} parts):\n\
         \n\
         {message}\n\
         \n\
         == Freqtrade: add this to your bot's config.json, beside \"telegram\":\n\
         \n\
         {freqtrade}\n\
         \n",
        path = path.display(),
        token = plan.token,
        message = tradingview_message(&plan.tradingview_secret),
        freqtrade = freqtrade_section(&format!("{base}/in/freqtrade/{}", plan.freqtrade_secret)),
    );
    let next = match plan.tls {
        TlsChoice::Acme => format!(
            "Next: point {domain}'s DNS to this machine, open port 443, let the hub bind it \
             (the systemd unit in contrib/ does), then\n  \
             tradehook serve --config {path}      # the certificate comes within seconds\n  \
             tradehook doctor --config {path}\n",
            domain = plan.domain.as_deref().unwrap_or_default(),
            path = path.display()
        ),
        TlsChoice::Files => format!(
            "Next: get the certificate (certbot certonly --standalone -d {domain}), let the \
             hub bind port 443 (the systemd unit in contrib/ does), then\n  \
             tradehook serve --config {path}\n  \
             tradehook doctor --config {path}\n",
            domain = plan.domain.as_deref().unwrap_or_default(),
            path = path.display()
        ),
        TlsChoice::Proxy => format!(
            "Next: point your proxy's HTTPS site for {domain} at 127.0.0.1:8787 (Caddy: \
             `{domain} {{ reverse_proxy 127.0.0.1:8787 }}`), then\n  \
             tradehook serve --config {path}\n  \
             tradehook doctor --config {path}\n",
            domain = plan.domain.as_deref().unwrap_or_default(),
            path = path.display()
        ),
        TlsChoice::None => format!(
            "Next: tradehook serve --config {path}\n\
             This setup listens on loopback over plain HTTP: TradingView cannot reach it. Run \
             `tradehook init --domain <your domain>` for one it can.\n",
            path = path.display()
        ),
    };
    out += &next;
    out
}
