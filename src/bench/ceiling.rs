//! The machine's ceiling, measured in the same invocation just before a workload.
//!
//! This machine's speed varies two- to threefold from day to day, so a throughput alone says
//! little. Each report therefore also gives it as a fraction of what the machine could do at
//! that moment for what the workload needs:
//!
//! - **HTTP**: the benchmark's own load generator (the same [`Publisher`] and bodies, the same
//!   number of connections) posting straight into a receiver of its own that answers `202`
//!   with an id, with no hub between them. A hub can accept no more events than this.
//! - **fdatasync**: 4 KiB appended and flushed to a file in the database's directory, one after
//!   another. A hub that acknowledges an event only once it is flushed commits at most this
//!   often (it groups many events into one commit).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Publisher, payload};

/// What the machine could do just before the workload.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Ceiling {
    /// Loopback requests per second from the load generator into its own receiver.
    pub http_requests_per_second: f64,
    /// The connections the HTTP probe used (the workload's).
    pub http_connections: usize,
    /// Flushed 4 KiB appends per second in the database's directory.
    pub fdatasync_per_second: f64,
    pub fdatasync_p50_ms: f64,
    pub fdatasync_p99_ms: f64,
}

/// Measures both ceilings, `seconds` each: HTTP over `connections` connections, and
/// fdatasync in `dir`.
pub async fn measure(connections: usize, seconds: f64, dir: &Path) -> anyhow::Result<Ceiling> {
    let duration = Duration::from_secs_f64(seconds);
    let http_requests_per_second = http(connections, duration).await?;
    let dir = dir.to_owned();
    let (fdatasync_per_second, p50, p99) =
        tokio::task::spawn_blocking(move || fdatasync(&dir, duration)).await??;
    Ok(Ceiling {
        http_requests_per_second,
        http_connections: connections,
        fdatasync_per_second,
        fdatasync_p50_ms: p50,
        fdatasync_p99_ms: p99,
    })
}

/// Requests per second from `connections` publishers into a receiver that accepts each.
async fn http(connections: usize, duration: Duration) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(accept_everything(listener));
    let client = crate::app::http_client()?;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut publisher = Publisher::new(
            client.clone(),
            format!("http://{address}/api/v1/events"),
            "",
        )?;
        let done = done.clone();
        senders.push(tokio::spawn(async move {
            let mut seq = 0;
            while start.elapsed() < duration {
                if publisher.publish(payload("ceiling", seq)).await.is_some() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
            }
        }));
    }
    for sender in senders {
        sender.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    server.abort();
    let done = done.load(Ordering::Relaxed);
    anyhow::ensure!(done > 0, "the HTTP ceiling probe got no answer");
    Ok(done as f64 / elapsed)
}

/// Answers every request `202 {"id": …}` once its body is read, as a hub accepting an event.
async fn accept_everything(listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(|request: http::Request<_>| async move {
                let _ = http_body_util::BodyExt::collect(request.into_body()).await;
                let mut response = http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(br#"{"id":"evt_ceiling","duplicate":false}"#),
                ));
                *response.status_mut() = http::StatusCode::ACCEPTED;
                Ok::<_, std::convert::Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), answer)
                .await;
        });
    }
}

/// Flushed 4 KiB appends per second in `dir` for `duration`, with their p50 and p99 in ms.
fn fdatasync(dir: &Path, duration: Duration) -> anyhow::Result<(f64, f64, f64)> {
    use std::io::Write;
    let mut file = tempfile::tempfile_in(dir)?;
    let block = [0x5a_u8; 4096];
    let mut micros = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let began = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        micros.push(began.elapsed().as_micros() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let per_second = micros.len() as f64 / elapsed;
    micros.sort_unstable();
    let ms = |q| super::stats::percentile(&micros, q) as f64 / 1000.0;
    Ok((per_second, ms(0.5), ms(0.99)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_probe_measures_both_ceilings() {
        let dir = tempfile::tempdir().unwrap();
        let ceiling = measure(2, 0.2, dir.path()).await.unwrap();
        assert!(ceiling.http_requests_per_second > 0.0, "{ceiling:?}");
        assert!(ceiling.fdatasync_per_second > 0.0, "{ceiling:?}");
        assert!(ceiling.fdatasync_p50_ms <= ceiling.fdatasync_p99_ms);
        // The flushes were to a file of the directory that is gone with the probe.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
