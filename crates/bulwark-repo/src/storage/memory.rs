//! A storage in this process's memory, for tests of the repository logic that need no disk:
//! every opening of the same name sees the same objects. It behaves like an object store (no
//! directories, no extended attributes, writes durable when they return).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use super::{Entry, StagedObject, Storage};

type Objects = Arc<Mutex<BTreeMap<String, (Arc<Vec<u8>>, SystemTime)>>>;

pub struct MemoryStorage {
    name: String,
    objects: Objects,
}

impl MemoryStorage {
    /// The store called `name`, created empty on first use.
    pub fn named(name: &str) -> MemoryStorage {
        static STORES: OnceLock<Mutex<HashMap<String, Objects>>> = OnceLock::new();
        let mut stores = STORES.get_or_init(Default::default).lock().expect("no panics while held");
        let objects = stores.entry(name.to_string()).or_default().clone();
        MemoryStorage { name: name.to_string(), objects }
    }

    /// Makes every commit of a staged object under `prefix` in the store `name` fail, from now
    /// on (for tests of what a failed upload leaves).
    #[cfg(test)]
    pub(crate) fn fail_commits_under(name: &str, prefix: &str) {
        failing().lock().expect("no panics while held").push((name.to_string(), prefix.to_string()));
    }

    fn get(&self, key: &str) -> io::Result<Arc<Vec<u8>>> {
        let objects = self.objects.lock().expect("no panics while held");
        objects.get(key).map(|(b, _)| b.clone()).ok_or_else(|| not_found(key))
    }
}

/// Stores and prefixes whose commits fail (see [`MemoryStorage::fail_commits_under`]).
fn failing() -> &'static Mutex<Vec<(String, String)>> {
    static FAILING: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();
    FAILING.get_or_init(Default::default)
}

fn not_found(key: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no object {key}"))
}

struct MemStaged {
    store: String,
    key: String,
    buf: Vec<u8>,
    objects: Objects,
}

impl Write for MemStaged {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StagedObject for MemStaged {
    fn commit(self: Box<Self>, _durable: bool) -> io::Result<()> {
        let me = *self;
        let fails = failing()
            .lock()
            .expect("no panics while held")
            .iter()
            .any(|(n, p)| *n == me.store && me.key.starts_with(p));
        if fails {
            return Err(io::Error::other(format!("writing {} failed (as the test asked)", me.key)));
        }
        me.objects.lock().expect("no panics while held").insert(me.key, (Arc::new(me.buf), SystemTime::now()));
        Ok(())
    }
}

impl Storage for MemoryStorage {
    fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }

    fn read_into(&self, key: &str, buf: &mut Vec<u8>) -> io::Result<()> {
        let b = self.get(key)?;
        buf.clear();
        buf.extend_from_slice(&b);
        Ok(())
    }

    fn read_range(&self, key: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let b = self.get(key)?;
        let end = offset.checked_add(len).filter(|&e| e <= b.len() as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, format!("{key} is shorter than {offset}+{len}"))
        })?;
        buf.clear();
        buf.extend_from_slice(&b[offset as usize..end as usize]);
        Ok(())
    }

    fn open_read(&self, key: &str) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(io::Cursor::new(self.get(key)?.to_vec())))
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn StagedObject>> {
        Ok(Box::new(MemStaged {
            store: self.name.clone(),
            key: key.into(),
            buf: Vec::new(),
            objects: self.objects.clone(),
        }))
    }

    fn put_new(&self, key: &str, data: &[u8]) -> io::Result<bool> {
        let mut objects = self.objects.lock().expect("no panics while held");
        if objects.contains_key(key) {
            return Ok(false);
        }
        objects.insert(key.into(), (Arc::new(data.to_vec()), SystemTime::now()));
        Ok(true)
    }

    fn stat(&self, key: &str) -> io::Result<Option<Entry>> {
        let objects = self.objects.lock().expect("no panics while held");
        Ok(objects.get(key).map(|(b, t)| Entry { name: key.into(), size: b.len() as u64, modified: *t, tag: None }))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        let objects = self.objects.lock().expect("no panics while held");
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (b, t))| Entry { name: k[prefix.len()..].into(), size: b.len() as u64, modified: *t, tag: None })
            .collect())
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.objects.lock().expect("no panics while held").remove(key);
        Ok(())
    }

    fn now(&self) -> io::Result<SystemTime> {
        Ok(SystemTime::now())
    }
}
