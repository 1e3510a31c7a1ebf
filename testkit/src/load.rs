//! A loopback HTTP load generator, bounded in time: a fixed number of
//! keep-alive connections, each sending requests back to back (closed
//! loop), optionally paced to a total rate.
//!
//! It speaks just enough HTTP/1.1 for a JSON API (`Content-Length` bodies,
//! keep-alive, `Connection: close`) and records every answer, so a test
//! can count statuses and match accepted ids against what was queued. A
//! request that gets no HTTP answer (reset, refused, closed mid-response)
//! is recorded as a transport error, never silently retried.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// One request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub body: Vec<u8>,
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// A header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request, its answer (or why there was none), and when it was sent.
#[derive(Debug)]
pub struct Exchange {
    pub request: Request,
    pub answer: Result<Answer, String>,
    /// When the request was sent, from the start of the run.
    pub at: Duration,
}

impl Exchange {
    /// No answer, or a 5xx one.
    pub fn failed(&self) -> bool {
        self.answer.as_ref().map_or(true, |a| a.status >= 500)
    }
}

/// What a run produced: every request with its answer or error.
#[derive(Debug, Default)]
pub struct Report {
    pub exchanges: Vec<Exchange>,
    pub elapsed: Duration,
}

impl Report {
    /// Requests per status code.
    pub fn statuses(&self) -> BTreeMap<u16, usize> {
        let mut counts = BTreeMap::new();
        for exchange in &self.exchanges {
            if let Ok(a) = &exchange.answer {
                *counts.entry(a.status).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Requests with status `>= 500`.
    pub fn server_errors(&self) -> usize {
        self.statuses().range(500..).map(|(_, n)| n).sum()
    }

    /// Requests that got no HTTP answer.
    pub fn transport_errors(&self) -> Vec<&str> {
        self.exchanges
            .iter()
            .filter_map(|e| e.answer.as_ref().err().map(String::as_str))
            .collect()
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Load {
    pub target: SocketAddr,
    pub connections: usize,
    pub duration: Duration,
    /// Total requests per second across connections; `None` for as fast as
    /// answers come.
    pub rate: Option<f64>,
}

impl Load {
    /// Send requests made by `next(n)` (n counts from 0 across all
    /// connections) until the duration is over, then wait for the answers
    /// in flight.
    pub async fn run<F>(&self, next: F) -> Report
    where
        F: Fn(usize) -> Request + Send + Sync + 'static,
    {
        let next = Arc::new(next);
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let report = Arc::new(Mutex::new(Report::default()));
        let started = Instant::now();
        let deadline = started + self.duration;
        let interval = self
            .rate
            .map(|r| Duration::from_secs_f64(self.connections as f64 / r));
        let mut tasks = Vec::new();
        for c in 0..self.connections {
            let (next, counter, report, target) =
                (next.clone(), counter.clone(), report.clone(), self.target);
            let share = c as f64 / self.connections as f64;
            tasks.push(tokio::spawn(async move {
                // Spread paced connections over one interval.
                let mut due = started + interval.map_or(Duration::ZERO, |i| i.mul_f64(share));
                let mut conn: Option<BufReader<TcpStream>> = None;
                while Instant::now() < deadline {
                    if let Some(i) = interval {
                        tokio::time::sleep_until(due).await;
                        due += i;
                    }
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let request = next(n);
                    let at = started.elapsed();
                    let answer = exchange(&mut conn, target, &request).await;
                    if answer.is_err() {
                        conn = None;
                    }
                    report.lock().await.exchanges.push(Exchange {
                        request,
                        answer,
                        at,
                    });
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        let mut report = std::mem::take(&mut *report.lock().await);
        report.elapsed = started.elapsed();
        report
    }
}

async fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    target: SocketAddr,
    request: &Request,
) -> Result<Answer, String> {
    if conn.is_none() {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        *conn = Some(BufReader::new(stream));
    }
    let stream = conn.as_mut().expect("connected above");
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        request.method,
        request.path,
        request.body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&request.body);
    stream
        .get_mut()
        .write_all(&bytes)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let answer = tokio::time::timeout(Duration::from_secs(30), read_answer(stream))
        .await
        .map_err(|_| "no answer within 30 s".to_owned())??;
    if answer
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        *conn = None;
    }
    Ok(answer)
}

async fn read_answer(stream: &mut BufReader<TcpStream>) -> Result<Answer, String> {
    let mut line = String::new();
    let n = stream
        .read_line(&mut line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed before an answer".into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or("answer without Content-Length")?;
    let mut body = vec![0; length];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("read body: {e}"))?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}
