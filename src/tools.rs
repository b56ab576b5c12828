//! `tradehook sign` and `tradehook verify`: what a sender adds to a request, and whether a
//! captured request's signature holds, for wiring a bot or a receiver up by hand.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::security::sign::{self, SignatureEncoding};

/// How a request is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheme {
    /// Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature (v1,…)
    Standard,
    /// HMAC-SHA256 of the body in one header
    Hmac,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SignArgs {
    /// The secret (whsec_… for Standard Webhooks)
    #[arg(long, env = "TRADEHOOK_SECRET", hide_env_values = true)]
    pub secret: String,
    #[arg(long, value_enum, default_value_t = Scheme::Standard)]
    pub scheme: Scheme,
    /// The message id (Standard Webhooks) [default: a new one]
    #[arg(long)]
    pub id: Option<String>,
    /// Unix seconds (Standard Webhooks) [default: now]
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// The header that carries an HMAC signature
    #[arg(long, default_value = "X-Signature")]
    pub header: String,
    /// hex or base64, for an HMAC signature
    #[arg(long, value_enum, default_value_t = Encoding::Hex)]
    pub encoding: Encoding,
    /// The body: a file, or - (the default) for standard input
    #[arg(default_value = "-")]
    pub body: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    Hex,
    Base64,
}

impl From<Encoding> for SignatureEncoding {
    fn from(e: Encoding) -> Self {
        match e {
            Encoding::Hex => SignatureEncoding::Hex,
            Encoding::Base64 => SignatureEncoding::Base64,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The secret the sender signs with
    #[arg(long, env = "TRADEHOOK_SECRET", hide_env_values = true)]
    pub secret: String,
    #[arg(long, value_enum, default_value_t = Scheme::Standard)]
    pub scheme: Scheme,
    /// A header of the captured request, as `Name: value` (repeatable)
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// The header that carries an HMAC signature
    #[arg(long, default_value = "X-Signature")]
    pub signature_header: String,
    #[arg(long, value_enum, default_value_t = Encoding::Hex)]
    pub encoding: Encoding,
    /// Seconds a Standard Webhooks timestamp may be off (0: do not check the time)
    #[arg(long, default_value_t = 300)]
    pub tolerance: i64,
    /// The body exactly as received: a file, or - (the default) for standard input
    #[arg(default_value = "-")]
    pub body: PathBuf,
}

fn read_body(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        Ok(body)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// The header lines a sender adds for `body`.
pub fn sign(args: &SignArgs, body: &[u8], now_secs: i64) -> Vec<(String, String)> {
    match args.scheme {
        Scheme::Standard => {
            let id = args
                .id
                .clone()
                .unwrap_or_else(|| crate::domain::new_id(crate::domain::prefix::MESSAGE));
            let ts = args.timestamp.unwrap_or(now_secs);
            let signature = sign::standard_signature(&args.secret, &id, ts, body);
            vec![
                ("webhook-id".into(), id),
                ("webhook-timestamp".into(), ts.to_string()),
                ("webhook-signature".into(), signature),
            ]
        }
        Scheme::Hmac => {
            let mac = sign::hmac_sha256(args.secret.as_bytes(), body);
            let value = match args.encoding {
                Encoding::Hex => hex::encode(mac),
                Encoding::Base64 => {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.encode(mac)
                }
            };
            vec![(args.header.clone(), value)]
        }
    }
}

/// Whether the captured request's signature holds; the error says why not.
pub fn verify(args: &VerifyArgs, body: &[u8], now_secs: i64) -> Result<(), String> {
    let header = |name: &str| {
        args.headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let missing = |name: &str| format!("the {name} header was not given (-H '{name}: …')");
    match args.scheme {
        Scheme::Standard => {
            let id = header("webhook-id").ok_or_else(|| missing("webhook-id"))?;
            let ts = header("webhook-timestamp").ok_or_else(|| missing("webhook-timestamp"))?;
            let sig = header("webhook-signature").ok_or_else(|| missing("webhook-signature"))?;
            let (now, tolerance) = if args.tolerance > 0 {
                (now_secs, args.tolerance)
            } else {
                (ts.parse().unwrap_or(now_secs), i64::MAX / 2)
            };
            sign::verify_standard(&args.secret, &id, &ts, &sig, body, now, tolerance)
                .map_err(|e| e.to_string())
        }
        Scheme::Hmac => {
            let sig =
                header(&args.signature_header).ok_or_else(|| missing(&args.signature_header))?;
            sign::verify_hmac(args.secret.as_bytes(), body, &sig, args.encoding.into())
                .map_err(|e| e.to_string())
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The hub
    #[arg(long, env = "TRADEHOOK_URL", default_value = "http://127.0.0.1:8787")]
    pub url: String,
    /// The source's name (its ingest URL is /in/NAME)
    #[arg(long)]
    pub source: String,
    /// The source's secret
    #[arg(long, env = "TRADEHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// How the source checks senders: standard, hmac, token (in the URL) or none
    #[arg(long, value_enum, default_value_t = SendAuth::Token)]
    pub auth: SendAuth,
    /// The header that carries an HMAC signature
    #[arg(long, default_value = "X-Signature")]
    pub header: String,
    #[arg(long, value_enum, default_value_t = Encoding::Hex)]
    pub encoding: Encoding,
    /// The Content-Type to send
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// The payload: a file, or - (the default) for standard input
    #[arg(default_value = "-")]
    pub body: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendAuth {
    Standard,
    Hmac,
    Token,
    None,
}

/// `tradehook send`: posts a payload to a source, signed as it expects; prints the answer.
pub async fn run_send(args: SendArgs) -> anyhow::Result<()> {
    let body = read_body(&args.body)?;
    let needs_secret = args.auth != SendAuth::None;
    let secret = match (&args.secret, needs_secret) {
        (Some(s), _) => s.clone(),
        (None, true) => anyhow::bail!("--secret is needed for --auth {:?}", args.auth),
        (None, false) => String::new(),
    };
    let base = args.url.trim_end_matches('/');
    let url = match args.auth {
        SendAuth::Token => format!("{base}/in/{}/{secret}", args.source),
        _ => format!("{base}/in/{}", args.source),
    };
    let scheme = match args.auth {
        SendAuth::Standard => Some(Scheme::Standard),
        SendAuth::Hmac => Some(Scheme::Hmac),
        _ => None,
    };
    let client = crate::app::http_client()?;
    let mut request = client
        .post(&url)
        .header("content-type", &args.content_type)
        .body(body.clone());
    if let Some(scheme) = scheme {
        let sign_args = SignArgs {
            secret,
            scheme,
            id: None,
            timestamp: None,
            header: args.header.clone(),
            encoding: args.encoding,
            body: args.body.clone(),
        };
        for (name, value) in sign(&sign_args, &body, crate::domain::now_ms() / 1000) {
            request = request.header(name, value);
        }
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("sending to {base}/in/{}", args.source))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{} {text}", status.as_u16());
    anyhow::ensure!(status.is_success(), "the hub refused the payload");
    Ok(())
}

/// `tradehook sign`: prints the headers, one per line.
pub fn run_sign(args: SignArgs) -> anyhow::Result<()> {
    let body = read_body(&args.body)?;
    for (name, value) in sign(&args, &body, crate::domain::now_ms() / 1000) {
        println!("{name}: {value}");
    }
    Ok(())
}

/// `tradehook verify`: says `valid`, or why not (and exits non-zero).
pub fn run_verify(args: VerifyArgs) -> anyhow::Result<()> {
    let body = read_body(&args.body)?;
    match verify(&args, &body, crate::domain::now_ms() / 1000) {
        Ok(()) => {
            println!("valid");
            Ok(())
        }
        Err(why) => anyhow::bail!("invalid: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_args(scheme: Scheme) -> SignArgs {
        SignArgs {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            scheme,
            id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
            timestamp: Some(1614265330),
            header: "X-Signature".into(),
            encoding: Encoding::Hex,
            body: "-".into(),
        }
    }

    fn verify_args(scheme: Scheme, headers: Vec<(String, String)>) -> VerifyArgs {
        VerifyArgs {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            scheme,
            headers: headers.iter().map(|(k, v)| format!("{k}: {v}")).collect(),
            signature_header: "X-Signature".into(),
            encoding: Encoding::Hex,
            tolerance: 300,
            body: "-".into(),
        }
    }

    #[test]
    fn what_sign_prints_verify_accepts_and_a_changed_body_is_caught() {
        let body = br#"{"test": 2432232314}"#;
        let headers = sign(&sign_args(Scheme::Standard), body, 1614265330);
        // The Standard Webhooks specification's own example.
        assert_eq!(
            headers[2].1,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let args = verify_args(Scheme::Standard, headers);
        assert_eq!(verify(&args, body, 1614265330), Ok(()));
        let err = verify(&args, b"{}", 1614265330).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        let err = verify(&args, body, 1614265330 + 3600).unwrap_err();
        assert!(err.contains("tolerance"), "{err}");

        let headers = sign(&sign_args(Scheme::Hmac), body, 0);
        assert_eq!(headers[0].0, "X-Signature");
        assert_eq!(verify(&verify_args(Scheme::Hmac, headers), body, 0), Ok(()));
        let err = verify(&verify_args(Scheme::Hmac, vec![]), body, 0).unwrap_err();
        assert!(err.contains("X-Signature header was not given"), "{err}");
    }
}
