//! Reading requests off a stream: the head (parsed by `httparse`) within its size limit,
//! the body by `Content-Length` within its limit, `Expect: 100-continue`, pipelining, and
//! the per-request deadline; what cannot be read becomes the answer to refuse it with.

use super::{Limits, Response};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A request read off the wire, before it is handed over.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Incoming {
    pub method: String,
    pub target: String,
    /// Header names and values (values trimmed) in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the client keeps the connection open after the answer.
    pub keep_alive: bool,
}

/// Why a request could not be read; `Closed` is the client going away between requests.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection ended (or idled out) before a request began.
    Closed,
    /// An I/O error or a timeout in the middle of a request.
    Io(io::Error),
    /// A request to refuse with this answer; the connection is closed after it.
    Refuse(Response),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// A stream whose read timeout can be set: sockets; in-memory streams ignore it.
pub(crate) trait ReadTimeout {
    /// Makes the next reads give up after `timeout`.
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()>;
}

impl ReadTimeout for TcpStream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        TcpStream::set_read_timeout(self, Some(timeout.max(Duration::from_millis(1))))
    }
}

impl ReadTimeout for io::Cursor<Vec<u8>> {
    fn set_read_timeout(&self, _: Duration) -> io::Result<()> {
        Ok(())
    }
}

/// Reads requests off one stream, keeping bytes that arrive early (pipelining).
pub(crate) struct RequestReader<S> {
    stream: S,
    buf: Vec<u8>,
    limits: Limits,
    /// When the request being read must be complete (set at its first byte).
    deadline: Option<Instant>,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

impl<S: Read + Write + ReadTimeout> RequestReader<S> {
    pub(crate) fn new(stream: S, limits: Limits) -> Self {
        RequestReader {
            stream,
            buf: Vec::new(),
            limits,
            deadline: None,
        }
    }

    pub(crate) fn stream(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Reads what arrives, waiting at most the idle timeout and never past the deadline.
    fn fill(&mut self) -> io::Result<usize> {
        let mut wait = self.limits.idle_timeout;
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            wait = wait.min(left);
        }
        self.stream.set_read_timeout(wait)?;
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        if n > 0 && self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.limits.request_timeout);
        }
        Ok(n)
    }

    /// The refusal for a read that failed with `e`: 408 once the deadline passed.
    fn read_failed(&self, e: io::Error) -> ReadError {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            ReadError::Refuse(Response::error(
                408,
                format!(
                    "the request did not arrive whole within {} ms",
                    self.limits.request_timeout.as_millis()
                ),
            ))
        } else {
            ReadError::Io(e)
        }
    }

    fn head_too_long(&self) -> ReadError {
        ReadError::Refuse(Response::error(
            431,
            format!(
                "request line and headers are longer than {} bytes",
                self.limits.max_head_bytes
            ),
        ))
    }

    /// The next request.
    pub(crate) fn next_request(&mut self) -> Result<Incoming, ReadError> {
        // Pipelined bytes already here: the request began when they arrived, and its
        // deadline runs from now at the latest.
        self.deadline =
            (!self.buf.is_empty()).then(|| Instant::now() + self.limits.request_timeout);
        let head_len = loop {
            if let Some(end) = find_head_end(&self.buf) {
                break end;
            }
            if self.buf.len() > self.limits.max_head_bytes {
                return Err(self.head_too_long());
            }
            let started = !self.buf.is_empty();
            match self.fill() {
                Ok(0) if !started => return Err(ReadError::Closed),
                Ok(0) => {
                    return Err(ReadError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the request head was cut off",
                    )));
                }
                Ok(_) => {}
                Err(e)
                    if !started
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::ConnectionReset
                        ) =>
                {
                    return Err(ReadError::Closed);
                }
                Err(e) => return Err(self.read_failed(e)),
            }
        };
        if head_len > self.limits.max_head_bytes {
            return Err(self.head_too_long());
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&self.buf[..head_len]) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(ReadError::Refuse(Response::error(
                    400,
                    "incomplete request head",
                )));
            }
            Err(e) => {
                return Err(ReadError::Refuse(Response::error(
                    400,
                    format!("malformed request: {e}"),
                )));
            }
        }
        let method = parsed.method.unwrap_or("").to_string();
        let target = parsed.path.unwrap_or("").to_string();
        let http10 = parsed.version == Some(0);
        let mut content_length: Option<u64> = None;
        let mut connection = String::new();
        let mut expect_continue = false;
        let mut chunked = false;
        let mut headers = Vec::with_capacity(parsed.headers.len());
        for h in parsed.headers.iter() {
            let raw = String::from_utf8_lossy(h.value).trim().to_string();
            let value = raw.to_ascii_lowercase();
            headers.push((h.name.to_string(), raw));
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = value.parse::<u64>().map_err(|_| {
                    ReadError::Refuse(Response::error(400, "Content-Length is not a number"))
                })?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(ReadError::Refuse(Response::error(
                        400,
                        "two different Content-Length headers",
                    )));
                }
                content_length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("connection") {
                connection = value;
            } else if h.name.eq_ignore_ascii_case("expect") {
                expect_continue = value == "100-continue";
            }
        }
        if chunked {
            return Err(ReadError::Refuse(Response::error(
                411,
                "chunked request bodies are not supported: send a Content-Length",
            )));
        }
        let keep_alive = if http10 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        };
        let len = content_length.unwrap_or(0);
        if len > self.limits.max_body_bytes {
            return Err(ReadError::Refuse(Response::error(
                413,
                format!(
                    "request body is larger than {} bytes",
                    self.limits.max_body_bytes
                ),
            )));
        }
        self.buf.drain(..head_len);
        // Bounded by max_body_bytes above.
        let len = len as usize;
        if expect_continue && len > self.buf.len() {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            self.stream.flush()?;
        }
        // The body's room at once (bounded by max_body_bytes), not doubling up to twice it.
        self.buf.reserve_exact(len.saturating_sub(self.buf.len()));
        while self.buf.len() < len {
            if self.fill().map_err(|e| self.read_failed(e))? == 0 {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the request body was cut off at {} of {len} bytes",
                        self.buf.len()
                    ),
                )));
            }
        }
        // A body that is all the buffer holds is handed over, not copied.
        let body: Vec<u8> = if self.buf.len() == len {
            std::mem::take(&mut self.buf)
        } else {
            self.buf.drain(..len).collect()
        };
        Ok(Incoming {
            method,
            target,
            headers,
            body,
            keep_alive,
        })
    }
}

/// Bytes in, writes (interim `100 Continue` answers) dropped.
struct Replay<'a>(io::Cursor<&'a [u8]>);

impl Read for Replay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl ReadTimeout for Replay<'_> {
    fn set_read_timeout(&self, _: Duration) -> io::Result<()> {
        Ok(())
    }
}

impl Write for Replay<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads requests from `bytes` as a connection would: how many were read whole, and the
/// status a refused one would be answered with. For the fuzz target (`fuzz/`).
#[doc(hidden)]
pub fn read_all(bytes: &[u8], limits: Limits) -> (usize, Option<u16>) {
    let mut reader = RequestReader::new(Replay(io::Cursor::new(bytes)), limits);
    let mut n = 0;
    loop {
        match reader.next_request() {
            Ok(r) => {
                assert!(r.body.len() as u64 <= limits.max_body_bytes);
                n += 1;
            }
            Err(ReadError::Refuse(r)) => return (n, Some(r.status)),
            Err(ReadError::Closed | ReadError::Io(_)) => return (n, None),
        }
    }
}
