//! A minimal HTTP/1.1 server for Prometheus' scrapes: `GET /metrics` answers the text
//! exposition ([`crate::metrics::render`]), `GET /` a pointer to it, anything else 404 or 405.
//!
//! One thread accepts and answers one connection at a time (a scrape every few seconds is the
//! whole load); each connection has a read and write timeout and a bounded request head, so a
//! client that stalls or sends garbage costs the next scrape at most [`IO_TIMEOUT`], never the
//! broker. `Connection: close` on every answer: no keep-alive state to manage.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics::{CONTENT_TYPE, render};
use crate::server::BrokerState;

/// How long a client may take to send its request or read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request head read: a scrape's is a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8192;

pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn start(addr: SocketAddr, state: Arc<BrokerState>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => serve(stream, &state),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => {
                            log::warn!("metrics listener: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        log::info!("metrics: serving http://{addr}/metrics");
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address bound (with the port the kernel chose when the config said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The request line's method and target, once the head is complete; `None` for a head that
/// is not HTTP.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut words = line.split(' ');
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    (words.next().is_none() && version.starts_with("HTTP/1.")).then_some((method, target))
}

/// The status line, content type and body for a request.
fn respond(
    method: &str,
    target: &str,
    state: &BrokerState,
) -> (&'static str, &'static str, String) {
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => match render(state) {
            Ok(text) => ("200 OK", CONTENT_TYPE, text),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain",
                format!("cannot encode metrics: {e}\n"),
            ),
        },
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain",
            "weir broker: metrics at /metrics\n".into(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".into(),
        ),
    }
}

fn serve(mut stream: TcpStream, state: &BrokerState) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD_BYTES {
            let _ = stream.write_all(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n",
            );
            close_after_refusal(stream);
            return;
        }
    }
    let Some((method, target)) = parse_request_line(&head) else {
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        close_after_refusal(stream);
        return;
    };
    let (status, content_type, body) = respond(method, target, state);
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(header.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(body.as_bytes());
    }
}

/// Closing a socket with unread input makes the kernel send a reset, which can destroy the
/// answer before the client reads it: stop writing, then swallow (a bounded amount of) what the
/// client still sends.
fn close_after_refusal(mut stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut swallowed = 0;
    while swallowed < 1 << 20 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => swallowed += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_is_parsed_strictly() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"GET / SPDY/3\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"\xff\xfe\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"GET  HTTP/1.1 x\r\n\r\n"), None);
    }
}
