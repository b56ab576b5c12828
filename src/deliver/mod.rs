//! Deliver: one HTTP attempt of one delivery, and what its result means.
//!
//! [`attempt`] signs the event body for the endpoint, sends it with the endpoint's timeout (no
//! redirects followed) and returns an [`AttemptResult`]; [`classify`] decides from a status
//! code whether the delivery is done, should be retried, or the endpoint is gone. The caller
//! (the dispatcher) records the result; nothing here touches the store.

pub mod guard;
pub mod retry;

pub use crate::domain::Verdict;
use crate::security::sign;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::domain::{self, Signing, prefix};
use crate::model::{DeliveryJob, Endpoint};
use crate::render::preset;

/// How deliveries go out: the HTTP client (whose resolver is the address guard) and the
/// operator's rules on where they may go.
///
/// Plain-http deliveries (a bot on the same machine or network) go straight through hyper's
/// pooled client: reqwest's layers (redirect and retry policies, parsing the URL twice more)
/// were about a third of such a delivery's CPU. https deliveries go through reqwest, with its
/// TLS and certificate verification. Both resolve through the guard and send the same request.
#[derive(Clone)]
pub struct Outbound {
    pub client: reqwest::Client,
    plain: PlainClient,
    pub guard: guard::Guard,
    pub https_only: bool,
    /// URLs already parsed and allowed: parsing one for every attempt was a measurable part
    /// of a delivery's cost. Neither the guard's rules nor https-only change while the hub
    /// runs, so an allowed URL stays allowed.
    allowed_targets: std::sync::Arc<std::sync::Mutex<HashMap<Box<str>, Target>>>,
}

type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector<guard::Guard>,
    http_body_util::Full<bytes::Bytes>,
>;

/// Where a delivery goes, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub url: reqwest::Url,
    /// For a plain-http URL: the URI hyper sends to.
    plain: Option<http::Uri>,
}

/// How long a connection may take to open, and how long an idle one is kept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP keepalive, as reqwest sets it: probes after 15 s idle, every 15 s, 3 of them.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// At most this many URLs are remembered as allowed (a rendered URL may differ per event).
const ALLOWED_TARGETS_KEPT: usize = 4096;

impl Outbound {
    /// The client deliveries use: no redirects, no proxies (a proxy would resolve the target
    /// itself, past the guard), the guard as its resolver.
    pub fn new(allowed: Vec<ipnet::IpNet>, https_only: bool) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let guard = guard::Guard::new(allowed);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(guard.clone()))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the delivery HTTP client")?;
        let mut connector =
            hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(guard.clone());
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_keepalive(Some(TCP_KEEPALIVE));
        connector.set_keepalive_interval(Some(TCP_KEEPALIVE));
        connector.set_keepalive_retries(Some(3));
        let plain =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .build(connector);
        Ok(Self {
            client,
            plain,
            guard,
            https_only,
            allowed_targets: Default::default(),
        })
    }

    /// The URL deliveries go to, or why they may not go there: a scheme other than http(s),
    /// plain http in https-only mode, or an internal IP literal.
    pub fn target(&self, url: &str) -> Result<Target, String> {
        if let Some(known) = self.known_target(url) {
            return Ok(known);
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
        let plain = match parsed.scheme() {
            "https" => None,
            "http" if self.https_only => {
                return Err("the hub only delivers over https (--https-only)".into());
            }
            "http" => Some(
                parsed
                    .as_str()
                    .parse::<http::Uri>()
                    .map_err(|e| format!("not a valid URL: {e}"))?,
            ),
            _ => return Err("must be an http or https URL".into()),
        };
        self.guard.check_url(&parsed).map_err(|b| b.0)?;
        let target = Target { url: parsed, plain };
        let mut known = self.allowed_targets.lock().expect("targets lock");
        if known.len() >= ALLOWED_TARGETS_KEPT {
            known.clear();
        }
        known.insert(url.into(), target.clone());
        Ok(target)
    }

    fn known_target(&self, url: &str) -> Option<Target> {
        self.allowed_targets
            .lock()
            .expect("targets lock")
            .get(url)
            .cloned()
    }
}

/// How much of a response body is kept in the attempt log.
pub const RESPONSE_SNIPPET_BYTES: usize = 4096;

/// Classifies an HTTP status: 2xx succeeds, 410 disables the endpoint, anything else
/// (3xx as well: redirects are not followed) is retried.
pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        410 => Verdict::Gone,
        _ => Verdict::Retry,
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub attempt_id: String,
    pub attempted_at: domain::Millis,
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    pub verdict: Verdict,
    /// `timeout`, `connection`, `http_status`, `request`, `service_error` (a preset's service
    /// refused the message), `render` (the template failed) or `blocked` (the address guard)
    /// when the attempt did not succeed.
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub response_body: String,
    /// The receiver asked to wait this long before the next attempt.
    pub retry_after_ms: Option<u64>,
}

impl AttemptResult {
    /// An attempt starting now, with nothing known of it yet: to be retried unless it says
    /// otherwise.
    pub fn starting() -> Self {
        Self {
            attempt_id: domain::new_id(prefix::MESSAGE),
            attempted_at: domain::now_ms(),
            status_code: None,
            duration_ms: 0,
            verdict: Verdict::Retry,
            error_kind: None,
            error: None,
            response_body: String::new(),
            retry_after_ms: None,
        }
    }
}

/// The headers of an attempt, in order, or why the endpoint's own headers cannot be sent.
///
/// `webhook-id` is the event id: the same for every retry and every endpoint, so a receiver
/// can use it as its idempotency key. `X-Delivery-ID` is unique per attempt.
pub fn headers(
    endpoint: &Endpoint,
    job: &DeliveryJob,
    body: &[u8],
    content_type: &str,
    attempt_id: &str,
    now_secs: i64,
) -> Result<http::HeaderMap, String> {
    use http::header::{self, HeaderName, HeaderValue};
    fn value(text: String) -> Result<HeaderValue, String> {
        HeaderValue::try_from(text).map_err(|_| "a header value is not valid in HTTP".into())
    }
    let mut out = http::HeaderMap::with_capacity(endpoint.headers.len() + 8);
    for (name, text) in &endpoint.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("the endpoint's header name {name:?} is not valid in HTTP"))?;
        let text = HeaderValue::from_str(text)
            .map_err(|_| format!("the endpoint's header {name} has a value not valid in HTTP"))?;
        out.append(name, text);
    }
    out.append(header::CONTENT_TYPE, value(content_type.to_owned())?);
    out.append(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("tradehook/", env!("CARGO_PKG_VERSION"))),
    );
    out.append(
        HeaderName::from_static("x-event-type"),
        value(job.event_type.clone())?,
    );
    out.append(
        HeaderName::from_static("x-webhook-id"),
        value(endpoint.id.clone())?,
    );
    out.append(
        HeaderName::from_static("x-delivery-id"),
        value(attempt_id.to_owned())?,
    );
    let webhook_id = HeaderName::from_static("webhook-id");
    match endpoint.signing {
        Signing::Standard => {
            let mut signature =
                sign::standard_signature(&endpoint.secret, &job.event_id, now_secs, body);
            // During a rotation's overlap, the previous secret signs too: a receiver still on
            // it keeps verifying (Standard Webhooks lists signatures separated by spaces).
            if let Some((previous, until)) = &endpoint.previous_secret
                && now_secs * 1000 < *until
            {
                signature.push(' ');
                signature.push_str(&sign::standard_signature(
                    previous,
                    &job.event_id,
                    now_secs,
                    body,
                ));
            }
            out.append(webhook_id, value(job.event_id.clone())?);
            out.append(
                HeaderName::from_static("webhook-timestamp"),
                HeaderValue::from(now_secs),
            );
            out.append(
                HeaderName::from_static("webhook-signature"),
                value(signature)?,
            );
        }
        Signing::HmacHex => {
            let signature = sign::hmac_hex(endpoint.secret.as_bytes(), body);
            out.append(webhook_id, value(job.event_id.clone())?);
            out.append(
                HeaderName::from_static("x-webhook-signature"),
                value(signature)?,
            );
        }
        Signing::None => {
            out.append(webhook_id, value(job.event_id.clone())?);
        }
    }
    Ok(out)
}

/// How a delivery reaches its destination: the seam between the scheduler, which decides
/// when, and whatever carries the delivery. Today a webhook over HTTP ([`Outbound`]); a
/// destination that is not a URL (an exchange account) implements it too, and the dispatcher
/// does not change.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// Makes one attempt of `job` for `endpoint` and says what happened; never panics on the
    /// destination's behalf, and returns within the endpoint's timeout.
    async fn attempt(&self, endpoint: &Endpoint, job: &DeliveryJob) -> AttemptResult;
}

#[async_trait::async_trait]
impl Transport for Outbound {
    async fn attempt(&self, endpoint: &Endpoint, job: &DeliveryJob) -> AttemptResult {
        attempt(self, endpoint, job).await
    }
}

/// Renders and sends one attempt of `job` to `endpoint`.
pub async fn attempt(out: &Outbound, endpoint: &Endpoint, job: &DeliveryJob) -> AttemptResult {
    let mut result = attempt_unmasked(out, endpoint, job).await;
    // The error is stored, shown to read-only tokens and sent in hub events: no secret of the
    // endpoint's URL (nor of a signed URL rendering made) may stay in it.
    result.error = result
        .error
        .map(|e| crate::security::redact::text(&e, &endpoint.url));
    result
}

async fn attempt_unmasked(out: &Outbound, endpoint: &Endpoint, job: &DeliveryJob) -> AttemptResult {
    let mut result = AttemptResult::starting();
    let attempted_at = result.attempted_at;
    let started = Instant::now();
    let rendered =
        match endpoint
            .render
            .render(&endpoint.url, &job.event_type, &job.body, attempted_at)
        {
            Ok(r) => r,
            Err(e) => {
                // Nothing was sent: the template cannot make this event's body.
                result.verdict = Verdict::Fail;
                result.error_kind = Some("render");
                result.error = Some(e.to_string());
                return result;
            }
        };
    let url = rendered.url.as_deref().unwrap_or(&endpoint.url);
    let target = match out.target(url) {
        Ok(target) => target,
        Err(reason) => {
            // Nothing was sent: where it would go is not allowed.
            result.verdict = Verdict::Fail;
            result.error_kind = Some("blocked");
            result.error = Some(reason);
            return result;
        }
    };
    let headers = match headers(
        endpoint,
        job,
        &rendered.body,
        rendered.content_type,
        &result.attempt_id,
        attempted_at / 1000,
    ) {
        Ok(headers) => headers,
        Err(reason) => {
            // Nothing was sent: the request cannot be written.
            result.error_kind = Some("request");
            result.error = Some(reason);
            return result;
        }
    };
    let deadline =
        tokio::time::Instant::from_std(started) + Duration::from_millis(endpoint.timeout_ms);
    let sent = match &target.plain {
        Some(uri) => send_plain(out, uri, headers, rendered.body, deadline).await,
        None => send_reqwest(out, &target.url, headers, rendered.body, deadline).await,
    };
    match sent {
        Ok(reply) => {
            let status = reply.status;
            result.status_code = Some(status);
            result.verdict = classify(status);
            if matches!(status, 429 | 503) {
                result.retry_after_ms = reply
                    .retry_after
                    .as_deref()
                    .and_then(|v| retry::parse_retry_after(v, attempted_at));
            }
            result.response_body = reply.body;
            if result.verdict != Verdict::Success {
                result.error_kind = Some("http_status");
                result.error = Some(match status {
                    300..=399 => format!("HTTP {status} (redirects are not followed)"),
                    _ => format!("HTTP {status}"),
                });
            }
            let judged = endpoint
                .render
                .preset
                .and_then(|p| preset::judge(p, status, &result.response_body));
            if let Some(j) = judged {
                result.verdict = j.verdict;
                result.retry_after_ms = j.retry_after_ms.or(result.retry_after_ms);
                result.error = j.error;
                result.error_kind = match j.verdict {
                    Verdict::Success => None,
                    _ if (200..300).contains(&status) => Some("service_error"),
                    _ => Some("http_status"),
                };
            }
        }
        Err(failure) => {
            if failure.kind == "blocked" {
                result.verdict = Verdict::Fail;
            }
            result.error_kind = Some(failure.kind);
            result.error = Some(failure.error);
        }
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    result
}

/// What a receiver answered, whichever client carried the request.
struct Reply {
    status: u16,
    retry_after: Option<String>,
    /// The start of the response body ([`RESPONSE_SNIPPET_BYTES`] at most).
    body: String,
}

/// Why no answer came: `kind` is `blocked`, `timeout`, `connection` or `request`.
struct Failure {
    kind: &'static str,
    error: String,
}

impl Reply {
    async fn read<B>(response: http::Response<B>, deadline: tokio::time::Instant) -> Self
    where
        B: http_body::Body<Data = bytes::Bytes> + Unpin,
    {
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status.as_u16(),
            retry_after: parts
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: read_snippet(body, deadline).await,
        }
    }
}

/// Sends over plain http with hyper's pooled client.
async fn send_plain(
    out: &Outbound,
    uri: &http::Uri,
    mut headers: http::HeaderMap,
    body: Vec<u8>,
    deadline: tokio::time::Instant,
) -> Result<Reply, Failure> {
    // reqwest's default, which it adds unless the endpoint sets its own.
    headers
        .entry(http::header::ACCEPT)
        .or_insert(http::HeaderValue::from_static("*/*"));
    let mut request = http::Request::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers;
    match tokio::time::timeout_at(deadline, out.plain.request(request)).await {
        Ok(Ok(response)) => Ok(Reply::read(response, deadline).await),
        Ok(Err(e)) => Err(Failure {
            kind: if guard::is_blocked(&e) {
                "blocked"
            } else if e.is_connect() {
                "connection"
            } else {
                "request"
            },
            error: format!(
                "error sending request for url ({uri}): {}",
                crate::domain::error_chain(&e)
            ),
        }),
        Err(_) => Err(Failure {
            kind: "timeout",
            error: format!("error sending request for url ({uri}): operation timed out"),
        }),
    }
}

/// Sends over https with reqwest.
async fn send_reqwest(
    out: &Outbound,
    url: &reqwest::Url,
    headers: http::HeaderMap,
    body: Vec<u8>,
    deadline: tokio::time::Instant,
) -> Result<Reply, Failure> {
    let request = out
        .client
        .post(url.clone())
        .timeout(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .headers(headers)
        .body(body);
    match request.send().await {
        Ok(response) => Ok(Reply::read(http::Response::from(response), deadline).await),
        Err(e) => Err(Failure {
            kind: if guard::is_blocked(&e) {
                "blocked"
            } else if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connection"
            } else {
                "request"
            },
            error: crate::domain::error_chain(&e),
        }),
    }
}

/// Reads at most [`RESPONSE_SNIPPET_BYTES`] of a body, never the whole of a large one, and
/// nothing past the attempt's deadline.
async fn read_snippet<B>(mut body: B, deadline: tokio::time::Instant) -> String
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    use http_body_util::BodyExt as _;
    let mut buf = Vec::new();
    while buf.len() < RESPONSE_SNIPPET_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    buf.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    buf.truncate(RESPONSE_SNIPPET_BYTES);
    // A cut may leave half a character; lossy decoding replaces it.
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_target_is_remembered_only_once_allowed() {
        let out = Outbound::new(vec![], true).unwrap();
        let plain = out.target("http://example.com/hook").unwrap_err();
        assert!(plain.contains("https"), "{plain}");
        let target = out.target("https://example.com/hook").unwrap();
        assert_eq!(target.url.as_str(), "https://example.com/hook");
        assert_eq!(target.plain, None, "https goes through reqwest");
        assert_eq!(out.target("https://example.com/hook").unwrap(), target);
        for _ in 0..2 {
            let internal = out.target("https://127.0.0.1/hook").unwrap_err();
            assert!(internal.contains("internal"), "{internal}");
        }
        assert!(out.target("ftp://example.com/").is_err());
        assert_eq!(out.allowed_targets.lock().unwrap().len(), 1);

        let out = Outbound::new(vec![], false).unwrap();
        let target = out.target("http://example.com:8080/hook?a=1").unwrap();
        assert_eq!(
            target.plain,
            Some("http://example.com:8080/hook?a=1".parse().unwrap()),
            "plain http goes through hyper"
        );
    }

    #[test]
    fn status_codes_are_classified() {
        assert_eq!(classify(200), Verdict::Success);
        assert_eq!(classify(204), Verdict::Success);
        assert_eq!(classify(301), Verdict::Retry);
        assert_eq!(classify(410), Verdict::Gone);
        assert_eq!(classify(429), Verdict::Retry);
        assert_eq!(classify(500), Verdict::Retry);
    }

    fn endpoint(signing: Signing) -> Endpoint {
        Endpoint {
            url: "http://127.0.0.1:9/".into(),
            headers: [("Authorization".to_owned(), "Bot x".to_owned())].into(),
            signing,
            retry_schedule_ms: vec![],
            ..Endpoint::example("ep_1")
        }
    }

    fn job() -> DeliveryJob {
        DeliveryJob {
            delivery_id: "dlv_1".into(),
            event_id: "evt_1".into(),
            endpoint_id: "ep_1".into(),
            event_type: "entry".into(),
            body: Arc::from(r#"{"test": 2432232314}"#),
            tries: 0,
            event_created_at: 0,
        }
    }

    fn get<'a>(h: &'a Result<http::HeaderMap, String>, name: &str) -> Option<&'a str> {
        let h = h.as_ref().unwrap();
        h.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn standard_signing_sends_the_three_standard_headers() {
        let h = headers(
            &endpoint(Signing::Standard),
            &job(),
            job().body.as_bytes(),
            "application/json",
            "msg_a",
            1614265330,
        );
        assert_eq!(get(&h, "webhook-id"), Some("evt_1"));
        assert_eq!(get(&h, "webhook-timestamp"), Some("1614265330"));
        let expected = sign::standard_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "evt_1",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(get(&h, "webhook-signature"), Some(expected.as_str()));
        assert_eq!(get(&h, "x-event-type"), Some("entry"));
        assert_eq!(get(&h, "x-webhook-id"), Some("ep_1"));
        assert_eq!(get(&h, "x-delivery-id"), Some("msg_a"));
        assert_eq!(get(&h, "Authorization"), Some("Bot x"));
        assert_eq!(get(&h, "x-webhook-signature"), None);
    }

    #[test]
    fn hmac_hex_signing_sends_a_hex_signature_of_the_body() {
        let h = headers(
            &endpoint(Signing::HmacHex),
            &job(),
            job().body.as_bytes(),
            "application/json",
            "msg_a",
            0,
        );
        assert_eq!(
            get(&h, "x-webhook-signature"),
            Some(
                sign::hmac_hex(
                    b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                    br#"{"test": 2432232314}"#
                )
                .as_str()
            )
        );
        assert_eq!(get(&h, "webhook-signature"), None);
    }

    #[test]
    fn a_header_http_cannot_carry_is_named_instead_of_sent() {
        let mut endpoint = endpoint(Signing::None);
        endpoint.headers = [("x-note".into(), "line\nbreak".into())].into();
        let error = headers(&endpoint, &job(), b"{}", "application/json", "msg_a", 0).unwrap_err();
        assert!(error.contains("x-note"), "{error}");
    }

    /// Answers one request with a 429, a Retry-After and a body longer than the snippet, and
    /// returns the request's head as the receiver read it.
    async fn answer_once(listener: &tokio::net::TcpListener) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        // The head, then the body its content-length announces.
        let head_end = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before sending a whole request");
            request.extend_from_slice(&chunk[..n]);
            if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8(request[..head_end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .expect("a content-length")
            .trim()
            .parse()
            .unwrap();
        while request.len() < head_end + length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            request.extend_from_slice(&chunk[..n]);
        }
        let body = "x".repeat(RESPONSE_SNIPPET_BYTES + 1000);
        let answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        head
    }

    /// The head's header lines, lowercased and sorted (the order may differ between clients).
    fn header_lines(head: &str) -> Vec<String> {
        let mut lines: Vec<String> = head
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        lines.sort();
        lines
    }

    #[tokio::test]
    async fn both_clients_send_the_same_request_and_read_the_same_reply() {
        let out = Outbound::new(vec!["127.0.0.0/8".parse().unwrap()], false).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook?x=1", listener.local_addr().unwrap());
        let target = out.target(&url).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.append("content-type", "application/json".parse().unwrap());
        headers.append("webhook-id", "evt_1".parse().unwrap());
        // An endpoint that sets its own Accept sends that one only.
        let mut own_accept = headers.clone();
        own_accept.append("accept", "application/json".parse().unwrap());
        let body = br#"{"id":"evt_1"}"#.to_vec();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);

        for (headers, accept) in [(headers, "*/*"), (own_accept, "application/json")] {
            let plain = send_plain(
                &out,
                target.plain.as_ref().unwrap(),
                headers.clone(),
                body.clone(),
                deadline,
            );
            let (plain, plain_head) = tokio::join!(plain, answer_once(&listener));
            let reqwest = send_reqwest(&out, &target.url, headers, body.clone(), deadline);
            let (reqwest, reqwest_head) = tokio::join!(reqwest, answer_once(&listener));

            assert!(
                plain_head.starts_with("POST /hook?x=1 HTTP/1.1\r\n"),
                "{plain_head}"
            );
            assert_eq!(plain_head.lines().next(), reqwest_head.lines().next());
            assert_eq!(header_lines(&plain_head), header_lines(&reqwest_head));
            let accepts: Vec<String> = header_lines(&plain_head)
                .into_iter()
                .filter(|l| l.starts_with("accept:"))
                .collect();
            assert_eq!(accepts, [format!("accept: {accept}")]);
            for reply in [plain.ok().unwrap(), reqwest.ok().unwrap()] {
                assert_eq!(reply.status, 429);
                assert_eq!(reply.retry_after.as_deref(), Some("7"));
                assert_eq!(reply.body.len(), RESPONSE_SNIPPET_BYTES);
            }
        }
    }

    #[tokio::test]
    async fn both_clients_name_a_refused_connection_and_a_silent_receiver_alike() {
        let out = Outbound::new(vec!["127.0.0.0/8".parse().unwrap()], false).unwrap();
        // Nothing listens on a port just released.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        // This one accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_url = format!("http://{}/", silent.local_addr().unwrap());

        for (url, kind) in [(closed_url, "connection"), (silent_url, "timeout")] {
            let target = out.target(&url).unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            let plain = send_plain(
                &out,
                target.plain.as_ref().unwrap(),
                http::HeaderMap::new(),
                vec![],
                deadline,
            )
            .await;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            let reqwest =
                send_reqwest(&out, &target.url, http::HeaderMap::new(), vec![], deadline).await;
            for failure in [plain.err().unwrap(), reqwest.err().unwrap()] {
                assert_eq!(failure.kind, kind, "{url}: {}", failure.error);
                assert!(failure.error.contains(&url), "{}", failure.error);
            }
        }
    }
}
