//! The load client, a child process (this binary, started again with [`CLIENT_FLAG`]): keep-alive
//! HTTP/1.1 connections sending requests back to back, every answer checked, and the tally it
//! prints for the parent.

use std::fmt::Write as _;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use dbscope_benches::{BoxError, Ids, cpu};
use hyper::body::Body as _;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::{CLIENT_FLAG, TABLE};

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Conn {
    sender: SendRequest<String>,
    /// The last answer's body.
    pub(crate) body: Vec<u8>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> Result<Self, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection); // drives the connection; ends with it
        Ok(Self {
            sender,
            body: Vec::new(),
        })
    }

    /// Sends `GET path` and reads the whole answer: its status, its body in `self.body`.
    pub(crate) async fn get(&mut self, path: &str) -> Result<StatusCode, BoxError> {
        let request = hyper::Request::get(path)
            .header(HOST, HeaderValue::from_static("127.0.0.1"))
            .body(String::new())?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        self.body.clear();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(data) = frame?.into_data() {
                self.body.extend_from_slice(&data);
            }
        }
        Ok(status)
    }
}

/// What the load client counted; it prints it for the parent as one line of JSON.
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct Tally {
    /// 2xx answers with the expected body.
    pub(crate) ok: u64,
    /// Answers of another status.
    pub(crate) non_2xx: u64,
    /// Wrong bodies, transport errors.
    pub(crate) errors: u64,
    pub(crate) first_problem: Option<String>,
    pub(crate) elapsed: Duration,
    /// The client process's CPU time (Linux).
    pub(crate) cpu: Option<Duration>,
}

impl Tally {
    fn problem(&mut self, what: String) {
        self.first_problem.get_or_insert(what);
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        if let Some(what) = other.first_problem {
            self.problem(what);
        }
    }
}

/// The child process: `CLIENT_FLAG <addr> <seconds> <connections>`; prints its tally.
pub(crate) fn client_main(args: Vec<String>) -> ExitCode {
    let parsed = match &args[..] {
        [addr, secs, connections] => addr
            .parse::<SocketAddr>()
            .ok()
            .zip(
                secs.parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok()),
            )
            .zip(connections.parse::<usize>().ok()),
        _ => None,
    };
    let Some(((addr, duration), connections)) = parsed else {
        eprintln!("usage: {CLIENT_FLAG} <addr> <seconds> <connections>, got {args:?}");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("load client: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let mut tally = runtime.block_on(load(addr, duration, connections));
    tally.cpu = cpu::process_cpu_time();
    match serde_json::to_string(&tally) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("load client: cannot write the tally: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// `connections` connections sending requests back to back until `duration` has passed; a
/// request started before then counts whole.
async fn load(addr: SocketAddr, duration: Duration, connections: usize) -> Tally {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for connection in 0..connections {
        tasks.spawn(load_one(addr, deadline, connection as u64));
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(one) => tally.add(one),
            Err(e) => {
                tally.errors += 1;
                tally.problem(format!("a connection's task failed: {e}"));
            }
        }
    }
    tally.elapsed = start.elapsed();
    tally
}

async fn load_one(addr: SocketAddr, deadline: Instant, seed: u64) -> Tally {
    let mut tally = Tally::default();
    let mut conn = match Conn::open(addr).await {
        Ok(conn) => conn,
        Err(e) => {
            tally.errors += 1;
            tally.problem(format!("cannot connect to {addr}: {e}"));
            return tally;
        }
    };
    let mut ids = Ids::new(seed, TABLE.rows);
    let (mut path, mut expected) = (String::new(), String::new());
    while Instant::now() < deadline {
        let id = ids.next_id();
        path.clear();
        let _ = write!(path, "/rows/{id}");
        match conn.get(&path).await {
            Ok(status) if status.is_success() => {
                expected.clear();
                let _ = write!(expected, "{{\"id\":{id},\"v\":{}}}", 3 * id);
                if conn.body == expected.as_bytes() {
                    tally.ok += 1;
                } else {
                    tally.errors += 1;
                    tally.problem(format!(
                        "GET {path}: answered {:?}, expected {expected}",
                        String::from_utf8_lossy(&conn.body)
                    ));
                }
            }
            Ok(status) => {
                tally.non_2xx += 1;
                tally.problem(format!(
                    "GET {path}: {status} {:?}",
                    String::from_utf8_lossy(&conn.body)
                ));
            }
            Err(e) => {
                tally.errors += 1;
                tally.problem(format!("GET {path}: {e}"));
                break; // the connection is gone
            }
        }
    }
    tally
}
