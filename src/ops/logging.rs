//! Log output that never makes a request wait, without a thread of its own.
//!
//! Log lines go into a bounded queue; a task on the runtime writes them out, and only as fast as
//! the output takes them: before each write it asks `poll(2)` whether the output has room, and
//! writes at most `PIPE_BUF` bytes, which a pipe with room takes whole. A stalled output (a
//! log pipe nobody reads) costs queued lines, counted and reported once it moves again, never
//! a blocked worker.
//!
//! Why not a writer thread: a process with a second thread makes glibc take its multi-threaded
//! path for every socket read and write (two atomic operations each, to support thread
//! cancellation); on one core weir keeps to one thread (BENCHMARKS.md, "Design measurements").

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use tokio::sync::Notify;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

use crate::config::LogFormat;

/// The most bytes a pipe with room is guaranteed to take in one write (`PIPE_BUF` on Linux).
const CHUNK: usize = 4096;
/// How soon a stalled output is tried again.
const RETRY: Duration = Duration::from_millis(10);
/// The target the notice of dropped lines names.
const TARGET: &str = "weir::logging";

/// The queue of log lines waiting for the output; cheap to clone.
#[derive(Clone)]
pub struct Logs(Arc<LogState>);

struct LogState {
    queue: Mutex<Queue>,
    ready: Notify,
    /// Bytes the queue holds at most; lines beyond are dropped and counted.
    capacity: usize,
    /// The format of the lines, which the notice of dropped lines follows.
    format: LogFormat,
}

#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Logs {
    /// A queue of at most `capacity` bytes of lines in `format`.
    pub fn new(capacity: usize, format: LogFormat) -> Logs {
        Logs(Arc::new(LogState {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            capacity,
            format,
        }))
    }

    /// Queues one line (the formatter hands over whole lines), or counts it as dropped.
    fn push(&self, line: &[u8]) {
        // A poisoned queue only means a panic while it was locked: the line is lost.
        let Ok(mut queue) = self.0.queue.lock() else {
            return;
        };
        if queue.bytes.len() + line.len() > self.0.capacity {
            queue.dropped += 1;
            return;
        }
        queue.bytes.extend_from_slice(line);
        drop(queue);
        self.0.ready.notify_one();
    }

    /// Swaps the queued bytes into `batch` (empty), led by a notice of any lines dropped.
    fn take(&self, batch: &mut Vec<u8>) {
        let Ok(mut queue) = self.0.queue.lock() else {
            return;
        };
        let dropped = std::mem::take(&mut queue.dropped);
        if dropped > 0 {
            // The lines before the gap were written; say so where the gap is.
            dropped_notice(batch, dropped, self.0.format);
        }
        if batch.is_empty() {
            std::mem::swap(batch, &mut queue.bytes);
        } else {
            batch.append(&mut queue.bytes);
        }
    }

    /// Writes the queued lines to `out` as it takes them, for as long as the task runs. An
    /// output that fails (its reader gone) is given up: lines are then discarded.
    pub async fn drain<F: AsFd>(&self, out: F) {
        let mut batch = Vec::new();
        let mut broken = false;
        loop {
            self.0.ready.notified().await;
            loop {
                self.take(&mut batch);
                if batch.is_empty() {
                    break;
                }
                let mut at = 0;
                while at < batch.len() && !broken {
                    match write_if_ready(&out, &batch[at..], 0) {
                        Ok(Some(n)) => at += n,
                        Ok(None) => tokio::time::sleep(RETRY).await,
                        Err(_) => broken = true,
                    }
                }
                batch.clear();
            }
        }
    }

    /// Writes what is still queued, waiting at most `limit` for `out` to take it: at exit, once
    /// the runtime (and [`Logs::drain`] with it) has stopped.
    pub fn flush<F: AsFd>(&self, out: F, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut batch = Vec::new();
        self.take(&mut batch);
        let mut at = 0;
        while at < batch.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let wait = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            match write_if_ready(&out, &batch[at..], wait) {
                Ok(Some(n)) => at += n,
                Ok(None) if wait > 0 => {}
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// A warning line that `dropped` lines are missing, in the log's own format, so that a JSON log
/// pipeline parses it like any other line.
fn dropped_notice(out: &mut Vec<u8>, dropped: u64, format: LogFormat) {
    let mut at = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut at));
    let message = "log lines dropped: the log output was not taking them";
    let _ = match format {
        LogFormat::Text => writeln!(out, "{at}  WARN {TARGET}: {message} dropped={dropped}"),
        LogFormat::Json => writeln!(
            out,
            r#"{{"timestamp":"{at}","level":"WARN","message":"{message}","dropped":{dropped},"target":"{TARGET}"}}"#
        ),
    };
}

/// Writes the start of `bytes` when `out` has room within `wait` milliseconds: `None` when it
/// has none. The write is at most [`CHUNK`] bytes, so it does not block on a pipe or socket
/// that has room, even though the descriptor is in blocking mode (stdout is shared with other
/// processes; weir does not change its flags).
fn write_if_ready<F: AsFd>(out: &F, bytes: &[u8], wait: i32) -> io::Result<Option<usize>> {
    let mut fds = [PollFd::new(out, PollFlags::OUT)];
    match rustix::event::poll(&mut fds, wait) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(rustix::io::Errno::INTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    if fds[0]
        .revents()
        .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL)
    {
        return Err(io::Error::from(io::ErrorKind::BrokenPipe));
    }
    let chunk = &bytes[..bytes.len().min(CHUNK)];
    match rustix::io::write(out, chunk) {
        Ok(n) => Ok(Some(n)),
        Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What the formatter writes one line through.
pub struct LineSink<'a>(&'a Logs);

impl Write for LineSink<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = LineSink<'a>;

    fn make_writer(&'a self) -> LineSink<'a> {
        LineSink(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    fn line(i: usize) -> String {
        format!("line {i:05} {}\n", "x".repeat(100))
    }

    /// Runs `test` on a thread of its own, failing (not hanging) if it never finishes.
    fn bounded(test: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            test();
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the test was blocked");
    }

    /// Runs `test` on a one-thread runtime of its own: were the runtime's thread blocked for
    /// good, the test fails.
    fn on_own_runtime(test: impl std::future::Future<Output = ()> + Send + 'static) {
        bounded(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(test);
        });
    }

    #[test]
    fn lines_reach_the_output_whole_and_in_order() {
        on_own_runtime(async {
            let logs = Logs::new(1 << 20, LogFormat::Text);
            let (out, mut reader) = UnixStream::pair().unwrap();
            let drain = tokio::spawn({
                let logs = logs.clone();
                async move { logs.drain(out).await }
            });
            let expected: String = (0..100).map(line).collect();
            for i in 0..100 {
                logs.make_writer().write_all(line(i).as_bytes()).unwrap();
            }
            let read = tokio::task::spawn_blocking(move || {
                let mut got = vec![0; expected.len()];
                reader.read_exact(&mut got).unwrap();
                assert_eq!(String::from_utf8(got).unwrap(), expected);
            });
            read.await.unwrap();
            drain.abort();
        });
    }

    #[test]
    fn a_stalled_output_blocks_nothing_and_costs_counted_lines() {
        on_own_runtime(async {
            let logs = Logs::new(64 * 1024, LogFormat::Text);
            let (out, mut reader) = UnixStream::pair().unwrap();
            let drain = tokio::spawn({
                let logs = logs.clone();
                async move { logs.drain(out).await }
            });
            // Far more than the socket's buffer and the queue hold together, with nobody
            // reading; the drain task gets turns in between.
            let n = 20_000;
            for i in 0..n {
                logs.make_writer().write_all(line(i).as_bytes()).unwrap();
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            // The runtime still runs other tasks (were the drain blocked in a write, this
            // runtime's only thread would be stuck and the test would fail on its timeout).
            tokio::spawn(async {}).await.unwrap();
            // Then the output is read: each line arrives whole or is counted as dropped.
            let (lines, dropped) = tokio::task::spawn_blocking(move || {
                reader
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let (mut text, mut buf) = (String::new(), [0u8; 65536]);
                loop {
                    let lines = text.lines().filter(|l| l.starts_with("line ")).count();
                    let dropped: usize = text
                        .lines()
                        .filter(|l| l.contains(" WARN weir::logging: log lines dropped"))
                        .filter_map(|l| l.rsplit("dropped=").next()?.parse::<usize>().ok())
                        .sum();
                    if lines + dropped >= n {
                        return (lines, dropped);
                    }
                    // Times out, failing the test, if lines went missing uncounted.
                    let k = reader.read(&mut buf).unwrap();
                    assert!(k > 0, "the output ended early");
                    text.push_str(std::str::from_utf8(&buf[..k]).unwrap());
                }
            })
            .await
            .unwrap();
            assert!(
                dropped > 0,
                "nothing was dropped: the test did not stall the output"
            );
            assert_eq!(lines + dropped, n);
            drain.abort();
        });
    }

    #[test]
    fn the_notice_of_dropped_lines_is_a_line_of_the_logs_format() {
        let logs = Logs::new(16, LogFormat::Json);
        let line = br#"{"message":"a line too long for the queue"}"#;
        logs.make_writer().write_all(line).unwrap();
        logs.make_writer().write_all(line).unwrap();
        let mut batch = Vec::new();
        logs.take(&mut batch);
        let notice: serde_json::Value = serde_json::from_slice(&batch).unwrap();
        assert_eq!(notice["level"], "WARN");
        assert_eq!(notice["dropped"], 2);
        assert!(notice["timestamp"].as_str().is_some_and(|t| !t.is_empty()));

        let logs = Logs::new(16, LogFormat::Text);
        logs.make_writer().write_all(line).unwrap();
        let mut batch = Vec::new();
        logs.take(&mut batch);
        let text = String::from_utf8(batch).unwrap();
        assert!(text.ends_with(" WARN weir::logging: log lines dropped: the log output was not taking them dropped=1\n"), "{text}");
    }

    #[test]
    fn flush_writes_what_is_left_and_gives_up_on_a_full_output() {
        bounded(flush_then_give_up);
    }

    fn flush_then_give_up() {
        let logs = Logs::new(1 << 20, LogFormat::Text);
        let (out, mut reader) = UnixStream::pair().unwrap();
        logs.make_writer().write_all(b"last words\n").unwrap();
        logs.flush(&out, Duration::from_secs(5));
        let mut got = [0u8; 11];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"last words\n");
        // An output that takes nothing: flush returns after its limit instead of hanging.
        for i in 0..20_000 {
            logs.make_writer().write_all(line(i).as_bytes()).unwrap();
        }
        logs.flush(&out, Duration::from_millis(50));
    }
}
