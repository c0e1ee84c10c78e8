//! A thread that belongs to a value: dropping the [`Worker`] asks the thread to stop and
//! waits until it has. Capture, encode, decode and playout threads, the cpal stream keepers
//! and the app's camera preview all live this way, so no thread outlives what owns it.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;

/// Tells a worker's body whether its owner wants it to stop. Bodies check it between units
/// of work (a frame, a 20 ms block); one that sleeps should `thread::park_timeout`, since
/// stopping unparks it.
#[derive(Clone, Debug)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Relaxed)
    }
}

/// An owned thread. Dropping it sets the stop flag, unparks the thread and joins it.
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Worker {
    /// Starts `body` on a thread called `name`.
    pub fn spawn(name: impl Into<String>, body: impl FnOnce(StopFlag) + Send + 'static) -> std::io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = StopFlag(stop.clone());
        let thread = thread::Builder::new().name(name.into()).spawn(move || body(flag))?;
        Ok(Worker { stop, thread: Some(thread) })
    }

    /// Asks the thread to stop without waiting for it (dropping the worker waits). For
    /// owners that must unblock the thread after asking, e.g. by draining its channel.
    pub fn ask_stop(&self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.ask_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    #[test]
    fn dropping_the_worker_stops_and_joins_its_thread() {
        let done = Arc::new(AtomicU32::new(0));
        let d = done.clone();
        let w = Worker::spawn("test-worker", move |stop| {
            // Parked for an hour unless stopping unparks it.
            while !stop.is_set() {
                thread::park_timeout(Duration::from_secs(3600));
            }
            d.store(1, Relaxed);
        })
        .unwrap();
        drop(w);
        assert_eq!(done.load(Relaxed), 1, "the body ran to its end before drop returned");
    }

    #[test]
    fn a_body_that_ends_by_itself_is_joined_too() {
        let w = Worker::spawn("short", |_| {}).unwrap();
        drop(w);
    }
}
