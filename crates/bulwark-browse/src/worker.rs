//! The thread that serves a browser's requests. `ext4-view`'s `Ext4` shares its state through
//! `Rc` and `RefCell`, so it cannot cross threads: the filesystem is loaded on this thread and
//! every request is a closure run here, its answer sent back over a channel. A mounted
//! filesystem (see [`crate::mounted`]) is served the same way, so both readers keep one set of
//! semantics: requests one at a time, an extraction's next piece read while the last is written.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::{BrowseError, Entry, Page, Result};

/// What one batch of a directory being walked holds: entries, or a name and why its entry
/// could not be read.
pub type Batch = Vec<std::result::Result<Entry, (Vec<u8>, String)>>;

/// A filesystem reader, as the reader thread drives it. Paths are absolute and plain (checked by
/// [`crate::path::parse`]); `shown` is the path as asked, for messages.
pub trait Backend {
    /// The entry at `path` itself (a symlink, not what it points to).
    fn stat(&mut self, path: &[u8], shown: &str) -> Result<Entry>;
    /// One page of the directory at `path`, sorted by name, after `cursor`.
    fn list(&mut self, path: &[u8], shown: &str, cursor: Option<Vec<u8>>, limit: usize) -> Result<Page>;
    /// Up to `len` bytes of the regular file at `path` from `offset`.
    fn read(&mut self, path: &[u8], shown: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Opens the directory at `path` for [`Backend::next_entries`].
    fn open_dir(&mut self, path: &[u8]) -> Result<u64>;
    /// Up to `max` more entries of directory `h`, in the order the directory holds them, and
    /// whether it is done; an error once the directory itself cannot be read further.
    fn next_entries(&mut self, h: u64, max: usize) -> Result<(Batch, bool)>;
    fn close_dir(&mut self, h: u64);
    /// Opens the regular file at `path` for [`Backend::read_file`].
    fn open_file(&mut self, path: &[u8]) -> Result<u64>;
    /// The next up to `len` bytes of open file `h` (fewer only at its end).
    fn read_file(&mut self, h: u64, len: usize) -> Result<Vec<u8>>;
    fn close_file(&mut self, h: u64);
}

/// Makes the backend on the reader thread: first, and again after a request panicked.
pub type Loader = Box<dyn FnMut() -> Result<Box<dyn Backend>> + Send>;

type Job = Box<dyn FnOnce(&mut dyn Backend) + Send>;

pub struct Worker {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    what: String,
}

impl Worker {
    /// Starts the thread and loads the backend on it; an error if it does not load.
    pub fn start(load: Loader, what: String) -> Result<Worker> {
        let (jobs, rx) = crossbeam_channel::unbounded::<Job>();
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("bulwark-browse".into())
            .spawn(move || serve(load, rx, ready_tx))
            .map_err(|e| BrowseError::Reader {
                what: what.clone(),
                context: format!(" (cannot start its thread: {e})"),
            })?;
        let mut worker = Worker { jobs: Some(jobs), thread: Some(thread), what };
        match ready.recv() {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                worker.jobs = None;
                Err(worker.stopped())
            }
        }
    }

    /// Runs `f` on the reader's thread and waits for its answer.
    pub fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut dyn Backend) -> Result<R> + Send + 'static) -> Result<R> {
        self.wait(self.send(f))
    }

    /// Queues `f`; its answer comes on the receiver (so a caller can keep a request ahead).
    pub fn send<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Backend) -> Result<R> + Send + 'static,
    ) -> Receiver<Result<R>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |st| {
            let _ = tx.send(f(st));
        });
        // A thread that is gone drops the job and its sender: `wait` then reports it.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
        rx
    }

    pub fn wait<R>(&self, rx: Receiver<Result<R>>) -> Result<R> {
        rx.recv().unwrap_or_else(|_| Err(self.stopped()))
    }

    fn stopped(&self) -> BrowseError {
        BrowseError::Reader { what: self.what.clone(), context: String::new() }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut load: Loader, jobs: Receiver<Job>, ready: Sender<Result<()>>) {
    let mut st = match load() {
        Ok(st) => st,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    for job in jobs {
        // `ext4-view` means to return errors, not panic, on damaged metadata; should a reader
        // panic anyway the request fails (its answer channel drops) and the reader starts
        // afresh, since its caches may be half-updated.
        if catch_unwind(AssertUnwindSafe(|| job(st.as_mut()))).is_err() {
            match load() {
                Ok(fresh) => st = fresh,
                Err(_) => return,
            }
        }
    }
}
