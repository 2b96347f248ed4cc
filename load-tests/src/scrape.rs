//! Reading one counter from Switchboard's Prometheus endpoint (`/metrics` on `http.listen`):
//! a plain HTTP/1.0 GET over loopback TCP (no chunked encoding to undo), summing the samples
//! of a metric whose labels match.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::system;

/// Largest response read from a metrics endpoint.
const MAX_RESPONSE: usize = 4 << 20;
/// One scrape (connect, request, whole response) takes at most this.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `http://HOST:PORT[/PATH]` on a loopback address; the path defaults to `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--metrics {url}: only http:// URLs"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("--metrics {url}: expected http://IP:PORT/PATH"))?;
        system::check_loopback(addr)?;
        ensure!(
            path.bytes().all(|b| b.is_ascii_graphic()),
            "--metrics {url}: the path must be plain ASCII"
        );
        Ok(Endpoint {
            addr,
            path: path.to_string(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }

    /// The endpoint's whole text.
    pub async fn fetch(&self) -> anyhow::Result<String> {
        tokio::time::timeout(TIMEOUT, self.fetch_unbounded())
            .await
            .with_context(|| format!("{}: no answer within {TIMEOUT:?}", self.url()))?
    }

    async fn fetch_unbounded(&self) -> anyhow::Result<String> {
        let mut tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.url()))?;
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
            self.path, self.addr
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            ensure!(
                response.len() + n <= MAX_RESPONSE,
                "{}: response larger than {MAX_RESPONSE} bytes",
                self.url()
            );
            response.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&response);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            bail!("{}: not an HTTP response", self.url());
        };
        let status = head.lines().next().unwrap_or("");
        ensure!(
            status.split_whitespace().nth(1) == Some("200"),
            "{}: {status}",
            self.url()
        );
        Ok(body.to_string())
    }
}

/// The sum of the samples of `metric` whose labels include every `name="value"` in `labels`.
pub fn sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (label_text, value) = if let Some(inner) = rest.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                continue;
            };
            (&inner[..end], inner[end + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue; // another metric with a longer name
        };
        let matches = labels.iter().all(|(name, want)| {
            label_text
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .any(|(n, v)| n.trim() == *name && v.trim().trim_matches('"') == *want)
        });
        if !matches {
            continue;
        }
        // A sample may carry a timestamp after the value.
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            total += v;
        }
    }
    total
}

/// `switchboard_routed_total{destination="offline"}` summed over `endpoints` (the nodes
/// of a cluster each count the messages their router sent to offline storage).
pub async fn offline_routed(endpoints: &[Endpoint]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for e in endpoints {
        let text = e.fetch().await?;
        total += sum(
            &text,
            "switchboard_routed_total",
            &[("destination", "offline")],
        );
    }
    Ok(total)
}

/// `switchboard_mam_not_archived_total` summed over `endpoints`: messages delivered that
/// the archive did not keep (its queue was full, or the account's shard failed the write).
pub async fn not_archived(endpoints: &[Endpoint]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for e in endpoints {
        total += sum(&e.fetch().await?, "switchboard_mam_not_archived_total", &[]);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples() {
        let text = "# HELP switchboard_routed_total Stanzas routed.\n\
            # TYPE switchboard_routed_total counter\n\
            switchboard_routed_total{destination=\"local\"} 12\n\
            switchboard_routed_total{destination=\"offline\"} 7\n\
            switchboard_routed_total_extra{destination=\"offline\"} 100\n\
            switchboard_routed_total{kind=\"x\",destination=\"offline\"} 3 1700000000\n";
        let labels = [("destination", "offline")];
        assert_eq!(sum(text, "switchboard_routed_total", &labels), 10.0);
        assert_eq!(sum(text, "switchboard_routed_total", &[]), 22.0);
        assert_eq!(sum("", "switchboard_routed_total", &labels), 0.0);
        assert_eq!(
            sum(
                "switchboard_x 5\nswitchboard_x{a=\"b\"} 2",
                "switchboard_x",
                &[]
            ),
            7.0
        );
    }

    #[test]
    fn endpoints_are_loopback_http() {
        let e = Endpoint::parse("http://127.0.0.1:9090").unwrap();
        assert_eq!(e.path, "/metrics");
        assert_eq!(e.url(), "http://127.0.0.1:9090/metrics");
        let e = Endpoint::parse("http://127.0.0.2:35241/metrics").unwrap();
        assert_eq!(e.addr.port(), 35241);
        assert!(Endpoint::parse("https://127.0.0.1:9090/metrics").is_err());
        assert!(Endpoint::parse("http://10.0.0.1:9090/metrics").is_err());
        assert!(Endpoint::parse("http://localhost:9090/metrics").is_err());
    }
}
