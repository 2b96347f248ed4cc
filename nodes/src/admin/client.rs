//! The CLI's side of the admin endpoint: the local socket of a node on this machine, or the
//! HTTP API of any node (`--api http://host:9090 --token ...`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use super::protocol::{AdminRequest, AdminResponse};

const TIMEOUT: Duration = Duration::from_secs(30);

pub enum AdminTarget {
    Socket(PathBuf),
    Http { url: String, token: Option<String> },
}

impl AdminTarget {
    /// Send one request. `Ok(None)`: no node answers on the local socket.
    pub fn request(&self, req: &AdminRequest) -> anyhow::Result<Option<AdminResponse>> {
        match self {
            AdminTarget::Socket(path) => super::request(path, req),
            AdminTarget::Http { url, token } => http_post(url, token.as_deref(), req).map(Some),
        }
    }
}

/// POST the request to `<url>/api` (plain HTTP/1.1; the API is meant for a private network).
fn http_post(url: &str, token: Option<&str>, req: &AdminRequest) -> anyhow::Result<AdminResponse> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--api must be an http:// URL, got {url:?}");
    };
    let host = rest.trim_end_matches('/');
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let body = serde_json::to_vec(req)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST /api HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{auth}Connection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {status:?}"))?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let mut text = String::new();
    reader.read_to_string(&mut text)?;
    match serde_json::from_str::<AdminResponse>(&text) {
        Ok(r) => Ok(r),
        Err(_) => bail!("HTTP {code} from {host}: {}", text.trim()),
    }
}
