//! A small HTTP/1.1 server for perch's two web faces: the agent's local API on the device
//! and the host's dashboard. Request heads are parsed by `httparse`; everything else here
//! is framing, limits and threads.
//!
//! Connections get a thread each, up to [`Limits::max_connections`], and hand each request
//! to the one thread that calls [`Server::recv_timeout`], which answers it with
//! [`Request::respond`]. An idle keep-alive connection is closed after
//! [`Limits::idle_timeout`], and a request must arrive whole within
//! [`Limits::request_timeout`] of its first byte (answered 408 otherwise), however slowly
//! its bytes trickle in: a client cannot hold a thread longer than that by sending one byte
//! per idle timeout (slowloris). When every slot is taken, a new connection takes the slot
//! of the connection that has waited longest without a request being answered (reading a
//! request, or idle between requests) if that has lasted [`EVICT_AFTER`] (a client that
//! sends its request at once has it read by then); only when every
//! connection is newer or has a request in hand is the new one answered 503. So slow
//! clients occupying every slot cannot lock out a client that sends its request at once. (tiny_http, used before, serves connections from a pool whose spawn check can
//! miss: with four browser connections idle in keep-alive, a fifth waited until one of
//! them closed, and the dashboard hung in headless Chromium.)
//!
//! Bodies need a `Content-Length` (chunked request bodies are refused with 411), at most
//! [`Limits::max_body_bytes`] of it (413); `Expect: 100-continue` is honoured; pipelined
//! requests are answered in order.
//!
//! Reading requests is in `read`, the connection slots and eviction in `connections`;
//! this file has the server, its accept loop and the responses.

use std::io::{self, Write};
use std::net::{Shutdown as SocketShutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a connection must have gone without a request in hand before a new
/// connection may take its slot when all are taken.
pub const EVICT_AFTER: Duration = Duration::from_millis(50);

/// What a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// How long a connection may sit between requests (and between reads of a request)
    /// before it is closed.
    pub idle_timeout: Duration,
    /// How long a whole request (head and body) may take from its first byte; a request
    /// still incomplete then is answered 408 and the connection closed.
    pub request_timeout: Duration,
    /// Largest request line and headers.
    pub max_head_bytes: usize,
    /// Largest request body.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            idle_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_head_bytes: 16 << 10,
            max_body_bytes: 16 << 20,
        }
    }
}

/// An HTTP response before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type` header.
    pub content_type: String,
    /// Further headers (`Content-Length` and `Connection` are the server's).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `body` of type `content_type`.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type: content_type.to_string(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A JSON response: `value` and a newline.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = value.to_string().into_bytes();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    /// A JSON error, `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// A 405 for `method` on `path`, with the `Allow` header listing the methods `path`
    /// answers to (`allow`, e.g. `"GET, HEAD"`), as RFC 9110 requires.
    pub fn method_not_allowed(method: &str, path: &str, allow: &str) -> Response {
        Response::error(
            405,
            format!("{method} is not allowed on {path} (allowed: {allow})"),
        )
        .with_header("Allow", allow)
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// One request, to be answered with [`Request::respond`] (a request dropped unanswered is
/// answered 500).
#[derive(Debug)]
pub struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    reply: SyncSender<Response>,
}

impl Request {
    /// The method, as sent (`GET`, `POST`…).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target: path and query.
    pub fn url(&self) -> &str {
        &self.target
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The body (empty without one).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The value of header `name` (any case), trimmed; the first one when repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many times header `name` (any case) was sent.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// Sends `response`. A client that went away is not an error of the server's.
    pub fn respond(self, response: Response) {
        let _ = self.reply.send(response);
    }
}

/// A listening server; stops accepting when dropped.
#[derive(Debug)]
pub struct Server {
    requests: Receiver<Request>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` (`host:port`; port 0 picks one).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn bind(addr: &str, limits: Limits) -> io::Result<Server> {
        Server::from_listener(TcpListener::bind(addr)?, limits)
    }

    /// Serves on `listener`.
    ///
    /// # Errors
    /// The listener's address cannot be read or the accept thread cannot start.
    pub fn from_listener(listener: TcpListener, limits: Limits) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::sync_channel(limits.max_connections.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("http accept".into())
                .spawn(move || accept_loop(&listener, &tx, limits, &stop))?
        };
        Ok(Server {
            requests: rx,
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next request, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Request> {
        self.requests.recv_timeout(timeout).ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

mod connections;
mod read;

use connections::{Connections, Slot};
pub use read::read_all;
pub(crate) use read::{ReadError, RequestReader};

fn accept_loop(
    listener: &TcpListener,
    requests: &SyncSender<Request>,
    limits: Limits,
    stop: &AtomicBool,
) {
    let connections = Arc::new(Connections::default());
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                log::warn!("http: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Some(slot) = connections.admit(&stream, limits.max_connections) else {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let busy = Response::error(503, "too many connections; try again");
            let _ = write_response(&mut stream, &busy, false, false);
            continue;
        };
        let requests = requests.clone();
        let spawned = std::thread::Builder::new()
            .name("http connection".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &requests, limits, &slot) {
                    log::debug!("http: connection ended: {e}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("http: no thread for a connection: {e}");
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        401 => "Unauthorized",
        403 => "Forbidden",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes `response`; `head_only` leaves out the body (answers to HEAD).
pub(crate) fn write_response(
    w: &mut impl Write,
    response: &Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(160 + response.body.len());
    write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )?;
    for (name, value) in &response.headers {
        // A header cannot smuggle a line break into the head.
        if !(name.contains(['\r', '\n']) || value.contains(['\r', '\n'])) {
            write!(out, "{name}: {value}\r\n")?;
        }
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&response.body);
    }
    w.write_all(&out)?;
    w.flush()
}

fn serve_connection(
    stream: TcpStream,
    requests: &SyncSender<Request>,
    limits: Limits,
    slot: &Slot,
) -> io::Result<()> {
    stream.set_write_timeout(Some(limits.idle_timeout.max(Duration::from_secs(5))))?;
    let _ = stream.set_nodelay(true);
    let mut reader = RequestReader::new(stream, limits);
    loop {
        let incoming = match reader.next_request() {
            Ok(r) => r,
            Err(ReadError::Closed) => break,
            Err(ReadError::Io(e)) => return Err(e),
            Err(ReadError::Refuse(response)) => {
                write_response(reader.stream(), &response, false, false)?;
                break;
            }
        };
        slot.set_busy(true);
        let (tx, rx) = mpsc::sync_channel(1);
        let head_only = incoming.method == "HEAD";
        let request = Request {
            method: incoming.method,
            target: incoming.target,
            headers: incoming.headers,
            body: incoming.body,
            reply: tx,
        };
        let response = if requests.send(request).is_err() {
            Response::error(503, "the server is shutting down")
        } else {
            rx.recv()
                .unwrap_or_else(|_| Response::error(500, "the request was not answered"))
        };
        let keep_alive = incoming.keep_alive && response.status < 500;
        write_response(reader.stream(), &response, keep_alive, head_only)?;
        slot.set_busy(false);
        if !keep_alive {
            break;
        }
    }
    let _ = reader.stream().shutdown(SocketShutdown::Both);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::time::Instant;

    /// A server answering every request with its method, path and body length; stopped
    /// when dropped.
    struct Echo {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn echo(limits: Limits) -> Echo {
        let server = Server::bind("127.0.0.1:0", limits).unwrap();
        let addr = server.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(r) = server.recv_timeout(Duration::from_millis(20)) {
                    let text = format!("{} {} {}", r.method(), r.path(), r.body().len());
                    r.respond(Response::new(200, "text/plain", text));
                }
            }
        });
        Echo {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Reads one response: status, body, and whether the server keeps the connection.
    fn read_response(r: &mut BufReader<TcpStream>) -> (u16, String, bool) {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let (mut len, mut keep) = (0usize, true);
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if lower.starts_with("connection: close") {
                keep = false;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap(), keep)
    }

    fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    #[test]
    fn keep_alive_pipelining_and_bodies() {
        let server = echo(Limits::default());
        let addr = server.addr;
        let (mut s, mut r) = connect(addr);
        s.write_all(b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut r), (200, "GET /a 0".into(), true));
        // Two requests in one write, the second with a body.
        s.write_all(b"GET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
        assert_eq!(read_response(&mut r), (200, "GET /b 0".into(), true));
        assert_eq!(read_response(&mut r), (200, "POST /c 5".into(), true));
        // Expect: 100-continue gets its interim answer before the body is sent.
        s.write_all(b"POST /d HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
        r.read_line(&mut line).unwrap();
        s.write_all(b"abc").unwrap();
        assert_eq!(read_response(&mut r), (200, "POST /d 3".into(), true));
        // Connection: close is honoured.
        s.write_all(b"GET /e HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut r), (200, "GET /e 0".into(), false));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn idle_keep_alive_connections_do_not_starve_a_new_one() {
        let server = echo(Limits::default());
        let addr = server.addr;
        // Eight browser-like connections, each used once and left open.
        let mut idle = Vec::new();
        for i in 0..8 {
            let (mut s, mut r) = connect(addr);
            s.write_all(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes())
                .unwrap();
            assert_eq!(read_response(&mut r).0, 200);
            idle.push((s, r));
        }
        let (mut s, mut r) = connect(addr);
        s.write_all(b"GET /new HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut r), (200, "GET /new 0".into(), true));
        // And the idle ones still answer.
        let (s0, r0) = &mut idle[0];
        s0.write_all(b"GET /again HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(r0).1, "GET /again 0");
    }

    #[test]
    fn bad_requests_are_refused_with_a_status_and_closed() {
        let limits = Limits {
            max_body_bytes: 10,
            max_head_bytes: 256,
            ..Limits::default()
        };
        let server = echo(limits);
        let addr = server.addr;
        let cases: [(&[u8], u16); 5] = [
            (b"NOT A REQUEST\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (&[b'a'; 400], 431),
        ];
        for (bytes, status) in cases {
            let (mut s, mut r) = connect(addr);
            s.write_all(bytes).unwrap();
            let (got, body, keep) = read_response(&mut r);
            assert_eq!(got, status, "{body}");
            assert!(!keep);
            assert!(body.contains("error"), "{body}");
        }
    }

    #[test]
    fn idle_connections_are_closed_and_the_limit_is_kept() {
        let limits = Limits {
            max_connections: 2,
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let closed = |r: &BufReader<TcpStream>| {
            r.get_ref()
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            r.get_ref().peek(&mut [0u8; 1]).unwrap_or(0) == 0
        };
        // Connections with a request in hand keep their slots: a third is refused.
        let unanswered = Server::bind("127.0.0.1:0", limits).unwrap();
        let busy: Vec<_> = (0..2)
            .map(|i| {
                let (mut s, r) = connect(unanswered.local_addr());
                s.write_all(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes())
                    .unwrap();
                (s, r)
            })
            .collect();
        std::thread::sleep(EVICT_AFTER * 4);
        let (_c, mut rc) = connect(unanswered.local_addr());
        assert_eq!(read_response(&mut rc).0, 503, "over the limit");
        drop(busy);
        drop(unanswered);

        // Silent connections: a new one takes the slot of the one idle longest, and the
        // idle timeout closes the other.
        let server = echo(limits);
        let (_a, ra) = connect(server.addr);
        let (_b, rb) = connect(server.addr);
        std::thread::sleep(Duration::from_millis(100));
        let (mut c, mut rc) = connect(server.addr);
        c.write_all(b"GET /ok HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut rc).0, 200);
        std::thread::sleep(Duration::from_millis(600));
        assert!(closed(&ra) && closed(&rb), "both closed by the server");
    }

    /// Starts a client that sends `GET /` one byte at a time, every `gap`, for as long as
    /// `stop` is false; returns when the server closes the connection or `stop` is set.
    fn trickle(addr: SocketAddr, gap: Duration, stop: Arc<AtomicBool>) -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect(addr) else {
                return Vec::new();
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
            let request = b"GET /slow HTTP/1.1\r\nX-Padding: ";
            let mut got = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let byte = request.get(i).copied().unwrap_or(b'a');
                if s.write_all(&[byte]).is_err() {
                    break;
                }
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
                std::thread::sleep(gap);
            }
            got
        })
    }

    #[test]
    fn a_request_trickling_in_is_cut_off_at_the_request_deadline() {
        let limits = Limits {
            request_timeout: Duration::from_millis(600),
            ..Limits::default()
        };
        let server = echo(limits);
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        // One byte every 100 ms: never idle for the 5 s idle timeout.
        let got = trickle(server.addr, Duration::from_millis(100), stop.clone());
        let got = got.join().unwrap();
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        assert!(elapsed < Duration::from_secs(4), "held for {elapsed:?}");
    }

    #[test]
    fn slow_clients_in_every_slot_do_not_lock_out_a_prompt_one() {
        let limits = Limits {
            max_connections: 8,
            ..Limits::default()
        };
        let server = echo(limits);
        let stop = Arc::new(AtomicBool::new(false));
        // Twice as many trickling clients as slots, each sending a byte every 200 ms.
        let slow: Vec<_> = (0..16)
            .map(|_| trickle(server.addr, Duration::from_millis(200), stop.clone()))
            .collect();
        std::thread::sleep(EVICT_AFTER * 2);
        for i in 0..3 {
            let (mut s, mut r) = connect(server.addr);
            s.write_all(format!("GET /real{i} HTTP/1.1\r\n\r\n").as_bytes())
                .unwrap();
            assert_eq!(
                read_response(&mut r),
                (200, format!("GET /real{i} 0"), true)
            );
            std::thread::sleep(EVICT_AFTER);
        }
        stop.store(true, Ordering::SeqCst);
        for t in slow {
            let _ = t.join();
        }
    }

    #[test]
    fn http_1_0_closes_and_head_has_no_body() {
        let server = echo(Limits::default());
        let addr = server.addr;
        let (mut s, mut r) = connect(addr);
        s.write_all(b"GET /old HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut r), (200, "GET /old 0".into(), false));
        let (mut s, mut r) = connect(addr);
        s.write_all(b"HEAD /h HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut all = String::new();
        r.read_to_string(&mut all).unwrap();
        assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
        assert!(all.contains("Content-Length: 9\r\n"), "{all}");
        assert!(all.ends_with("\r\n\r\n"), "no body after the head: {all}");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_give_requests_a_refusal_or_the_end(
            head in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            len in 0u64..100,
        ) {
            let limits = Limits { max_head_bytes: 256, max_body_bytes: 50, ..Limits::default() };
            let _ = read_all(&head, limits);
            let mut framed = format!("POST /x HTTP/1.1\r\nContent-Length: {len}\r\n\r\n").into_bytes();
            framed.extend_from_slice(&body);
            framed.extend_from_slice(&head);
            let (n, refused) = read_all(&framed, limits);
            if len > 50 {
                proptest::prop_assert_eq!((n, refused), (0, Some(413)));
            } else if ((body.len() + head.len()) as u64) < len {
                proptest::prop_assert_eq!(n, 0, "a body cut off is not a request");
            } else {
                proptest::prop_assert!(n >= 1);
            }
        }
    }

    #[test]
    fn a_body_cut_off_is_an_error_not_a_request() {
        let mut reader = RequestReader::new(
            io::Cursor::new(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc".to_vec()),
            Limits::default(),
        );
        assert!(matches!(reader.next_request(), Err(ReadError::Io(_))));
        let mut reader = RequestReader::new(io::Cursor::new(Vec::new()), Limits::default());
        assert!(matches!(reader.next_request(), Err(ReadError::Closed)));
    }

    #[test]
    fn an_unanswered_request_gets_a_500_and_dropping_the_server_stops_it() {
        let server = Server::bind("127.0.0.1:0", Limits::default()).unwrap();
        let addr = server.local_addr();
        let (mut s, mut r) = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        drop(
            server
                .recv_timeout(Duration::from_secs(10))
                .expect("a request"),
        );
        assert_eq!(read_response(&mut r).0, 500);
        drop(server);
        assert!(TcpStream::connect(addr).is_err(), "still listening");
    }
}
