//! The gdb server: one gdb connection at a time on a TCP listener; a second client while
//! one is connected is turned away (and told so on ttvm's stderr); a dropped or garbled
//! connection ends that session only, and the next `target remote` starts a new one on
//! the same replay.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub};
use gdbstub::target::Target;

use crate::target::{DebugTarget, GdbError, Outcome, StopReason};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the gdb listener failed: {0}")]
    Listen(std::io::Error),
}

pub struct ServeOptions {
    /// Serve one gdb session, then return (for `ttvm debug`).
    pub once: bool,
    /// Set to end the server while it waits for a connection.
    pub stop: Arc<AtomicBool>,
}

/// How serving ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeEnd {
    /// gdb killed the target (`kill`, or quitting gdb).
    Killed,
    /// The one session of `once` ended.
    SessionOver,
    /// `stop` was set.
    Stopped,
}

struct EventLoop;

impl BlockingEventLoop for EventLoop {
    type Target = DebugTarget;
    type Connection = TcpStream;
    type StopReason = StopReason;

    fn wait_for_stop_reason(
        target: &mut DebugTarget,
        conn: &mut TcpStream,
    ) -> Result<Event<StopReason>, WaitForStopReasonError<GdbError, std::io::Error>> {
        match target.execute().map_err(WaitForStopReasonError::Target)? {
            Outcome::Stopped(reason) => Ok(Event::TargetStopped(reason)),
            Outcome::Incoming => {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                Ok(Event::IncomingData(byte))
            }
        }
    }

    fn on_interrupt(
        _target: &mut DebugTarget,
    ) -> Result<Option<StopReason>, <DebugTarget as Target>::Error> {
        Ok(Some(StopReason::Signal(Signal::SIGINT)))
    }
}

/// Accepts connections on a thread; hands one at a time to the server.
fn acceptor(
    listener: TcpListener,
    busy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<mpsc::Receiver<(TcpStream, SocketAddr)>, ServeError> {
    listener.set_nonblocking(true).map_err(ServeError::Listen)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if busy.load(Ordering::SeqCst) {
                    eprintln!(
                        "ttvm: gdb connection from {peer} refused: a gdb session is already \
                         connected (one at a time)"
                    );
                    drop(stream);
                    continue;
                }
                busy.store(true, Ordering::SeqCst);
                if tx.send((stream, peer)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("ttvm: gdb listener: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });
    Ok(rx)
}

/// Serves `target` to gdb clients of `listener` until gdb kills it (or as `opts` says).
pub fn serve(
    target: &mut DebugTarget,
    listener: TcpListener,
    opts: ServeOptions,
) -> Result<ServeEnd, ServeError> {
    let busy = Arc::new(AtomicBool::new(false));
    let rx = acceptor(listener, busy.clone(), opts.stop.clone())?;
    loop {
        let (stream, peer) = loop {
            if opts.stop.load(Ordering::Relaxed) {
                return Ok(ServeEnd::Stopped);
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(conn) => break conn,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(ServeEnd::Stopped),
            }
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_nodelay(true);
        eprintln!("ttvm: gdb connected from {peer}");
        target.conn_fd = Some(stream.as_raw_fd());
        let result = GdbStub::new(stream).run_blocking::<EventLoop>(target);
        target.conn_fd = None;
        busy.store(false, Ordering::SeqCst);
        match result {
            Ok(DisconnectReason::Kill) => {
                eprintln!("ttvm: gdb ended the session (kill)");
                return Ok(ServeEnd::Killed);
            }
            Ok(reason) => {
                eprintln!("ttvm: gdb disconnected ({reason:?})");
            }
            Err(e) => {
                eprintln!("ttvm: gdb session ended: {e}");
            }
        }
        if opts.once {
            return Ok(ServeEnd::SessionOver);
        }
        eprintln!("ttvm: waiting for the next gdb connection");
    }
}
