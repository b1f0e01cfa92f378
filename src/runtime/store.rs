//! The embedded, crash-safe store in the data dir: fjall, an LSM tree with a
//! checksummed write-ahead journal.
//!
//! One keyspace per kind of replicated entry, each value a version byte and
//! the entry's postcard encoding; an append-only audit keyspace. Every commit
//! is one atomic batch whose journal is fsynced before it returns, and the
//! runtime acknowledges a write only after the commit that holds it. A
//! damaged store or an entry that does not decode is reported with the path
//! and never silently reset.
//!
//! A write that fails (a full disk) leaves fjall's database poisoned for
//! good; [`Store::reopen`] drops it and opens the directory again, which is
//! how a node recovers once space is freed, without a restart. (redb was measured first: its copy-on-write
//! B-tree cost ~20 µs per entry per commit, too slow for the ingest target;
//! see docs/benchmarks.md.)

use crate::core::event::AuditRecord;
use crate::core::ids::{NodeId, TaskId};
use crate::core::lease::ControlDisk;
use crate::core::state::{Delta, ReplicatedState};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use thiserror::Error;

/// A stored key and value.
type Row = (Vec<u8>, Vec<u8>);

/// Version byte in front of every stored entry.
const ENTRY_FORMAT: u8 = 1;
/// The store's schema version. 2: member records carry their writer's
/// signature (a store of schema 1 drops its member records on open: peers
/// and the node itself write them again). 3: tasks carry their writers'
/// signatures (a store of an older schema opens only if it holds no task:
/// the signatures of the tasks' writers cannot be made up afterwards).
const SCHEMA: u64 = 3;

/// A store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store is damaged. Nothing was changed; the files were left as they are.
    #[error("store {path} is damaged: {reason}. It was left untouched: restore it from a backup or move it away to start this node empty (it will then re-sync from its peers)")]
    Corrupt {
        /// The store directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the store open.
    #[error(
        "store {path} is in use by another process (is a node already running with this data dir?)"
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The store was written by an older Shoal and holds what this one
    /// cannot read. Nothing was changed.
    #[error("store {path} has schema {found} and holds {tasks} task(s) written before tasks were signed, which this Shoal cannot check or pass on. Nothing was changed: finish them with the Shoal that wrote the store, or move the store away to start this node empty")]
    Unsigned {
        /// The store directory.
        path: PathBuf,
        /// The schema found.
        found: u64,
        /// How many tasks it holds.
        tasks: usize,
    },
    /// The store was written by a newer Shoal.
    #[error("store {path} has schema {found}; this Shoal understands up to {SCHEMA}")]
    Schema {
        /// The store directory.
        path: PathBuf,
        /// The schema found.
        found: u64,
    },
    /// The disk is full. The write did not happen; reads go on.
    #[error("store {path}: the disk is full ({reason}); writes are refused until space is freed, reads go on")]
    Full {
        /// The store directory.
        path: PathBuf,
        /// The operating system's words.
        reason: String,
    },
    /// Reading or writing failed. The commit did not happen.
    #[error("store {path}: {reason}")]
    Io {
        /// The store directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// The node's store: an LSM tree (fjall) with one keyspace per kind of entry.
pub struct Store {
    path: PathBuf,
    /// The open database; `None` between a failed reopen and the next.
    open: RwLock<Option<Open>>,
}

/// An open database and its keyspaces.
struct Open {
    db: Database,
    members: Keyspace,
    tasks: Keyspace,
    kv: Keyspace,
    policies: Keyspace,
    audit: Keyspace,
    meta: Keyspace,
    path: PathBuf,
    watermark: Watermark,
}

/// The commit watermark: a small file beside the store holding how many
/// commits were acknowledged. fjall's journal recovery silently drops a
/// damaged journal from the first bad batch on; comparing the store's own
/// commit count with the watermark turns that into a reported error.
///
/// The file is written (not fsynced) after every synced commit, never after
/// an unsynced one, which a power loss may take back: it survives a process
/// crash, and after a power loss it can only be behind the store, which is
/// not an error.
#[derive(Debug)]
struct Watermark {
    file: std::sync::Mutex<std::fs::File>,
    next: std::sync::atomic::AtomicU64,
}

impl Watermark {
    fn encode(n: u64) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&n.to_be_bytes());
        out[8..].copy_from_slice(&blake3::hash(&n.to_be_bytes()).as_bytes()[..8]);
        out
    }

    /// The recorded count, or `None` when the file is missing or unreadable.
    fn read(path: &Path) -> Option<u64> {
        let bytes = std::fs::read(path).ok()?;
        let n = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        (bytes.get(..16)? == Self::encode(n).as_slice()).then_some(n)
    }

    fn write(&self, n: u64) -> std::io::Result<()> {
        use std::io::{Seek, Write};
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.seek(std::io::SeekFrom::Start(0))?;
        f.write_all(&Self::encode(n))
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Whether an I/O error means the disk (or the user's quota) is full.
fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![ENTRY_FORMAT];
    // Encoding an in-memory entry to a Vec cannot fail.
    out.extend(postcard::to_stdvec(value).unwrap_or_default());
    out
}

/// The tables that hold replicated entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// Member records, keyed by node id.
    Members,
    /// Tasks, keyed by task id.
    Tasks,
    /// Namespace policies, keyed by namespace.
    Policies,
    /// Knowledge entries, keyed by namespace, NUL, key.
    Kv,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Members => "members",
            Table::Tasks => "tasks",
            Table::Policies => "policies",
            Table::Kv => "kv",
        }
    }
}

/// A stored value: the entry-format byte, then the entry's postcard.
pub fn decode_entry<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    match value.split_first() {
        Some((&ENTRY_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown entry format {v}")),
        None => Err("empty value".into()),
    }
}

/// One stored row of `table` as the delta it holds, or why it is damaged.
/// With [`decode_entry`] this is all the decoding of what the store reads
/// back (the fuzz target `fuzz/fuzz_targets/runtime.rs` feeds both
/// arbitrary bytes).
pub fn decode_row(table: Table, key: &[u8], value: &[u8]) -> Result<Delta, String> {
    let name = table.name();
    let text =
        std::str::from_utf8(key).map_err(|_| format!("a key in table `{name}` is not UTF-8"))?;
    let at = |shown: &str, e: String| format!("entry `{shown}` in table `{name}`: {e}");
    Ok(match table {
        Table::Members => Delta::Member(
            NodeId::from(text),
            decode_entry(value).map_err(|e| at(text, e))?,
        ),
        Table::Tasks => Delta::Task(
            TaskId(text.to_owned()),
            decode_entry(value).map_err(|e| at(text, e))?,
        ),
        Table::Policies => Delta::Policy {
            ns: text.to_owned(),
            policy: decode_entry(value).map_err(|e| at(text, e))?,
        },
        Table::Kv => {
            let (ns, key) = text
                .split_once('\0')
                .ok_or_else(|| format!("knowledge key `{text}` has no namespace"))?;
            Delta::Kv {
                ns: ns.to_owned(),
                key: key.to_owned(),
                entry: decode_entry(value).map_err(|e| at(&format!("{ns}/{key}"), e))?,
            }
        }
    })
}

/// Knowledge keys: namespace and key joined by a NUL byte (names may not
/// contain control characters, so the split is unambiguous).
fn kv_key(ns: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + key.len() + 1);
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Copies the journal files aside before fjall's recovery, which truncates a
/// damaged journal; kept only when the open then finds damage.
fn save_journals(store: &Path, copy: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(store) else {
        return Ok(()); // a new store
    };
    for entry in entries {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "jnl") {
            std::fs::create_dir_all(copy)?;
            if let Some(name) = p.file_name() {
                std::fs::copy(&p, copy.join(name))?;
            }
        }
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// The journal is copied aside first (`<store>.journal-copy`) and the
    /// copy is kept, as `<store>.journal-before-recovery`, only when the
    /// store turns out damaged; a start that finds that directory refuses
    /// until an operator has looked. A copy that cannot be made (a full
    /// disk) or is left over from an interrupted start never stops a
    /// healthy store from opening.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            path: path.to_owned(),
            open: RwLock::new(Some(Open::at(path, true)?)),
        })
    }

    /// Closes the database and opens it again: after a failed write fjall
    /// refuses every later one until then. Nothing committed is lost; on
    /// failure the store stays closed (every call fails) until a later
    /// reopen succeeds. No journal copy is taken: the journal's tail holds
    /// at most the failed write, which was never acknowledged, and the
    /// watermark still guards what was.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        // The old database holds the directory's lock: drop it first.
        *open = None;
        *open = Some(Open::at(&self.path, false)?);
        Ok(())
    }

    /// Bytes free for the store on its file system.
    pub fn available_space(&self) -> std::io::Result<u64> {
        fs2::available_space(&self.path)
    }

    fn with<T>(&self, f: impl FnOnce(&Open) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        match open.as_ref() {
            Some(o) => f(o),
            None => Err(StoreError::Io {
                path: self.path.clone(),
                reason: "closed after a failed write, and not yet reopened".into(),
            }),
        }
    }

    /// Loads the whole replicated state.
    pub fn load(&self) -> Result<ReplicatedState, StoreError> {
        self.with(Open::load)
    }

    /// Writes `deltas` and `audit` records in one atomic batch. With `sync`
    /// the journal is fsynced before it returns (local changes about to be
    /// acknowledged); without, it reaches the OS (it survives a process
    /// crash) and the next synced commit makes it durable, since the journal
    /// is sequential. Unsynced commits carry only changes merged from peers,
    /// which those peers still hold. A full disk is [`StoreError::Full`].
    pub fn commit<'a>(
        &self,
        deltas: impl IntoIterator<Item = &'a Delta>,
        audit: &[AuditRecord],
        sync: bool,
    ) -> Result<(), StoreError> {
        self.with(|o| o.commit(deltas, audit, None, sync))
    }

    /// [`Store::commit`] with the control plane's state (written whole,
    /// in the same atomic batch: Raft's hard state and log never part).
    pub fn commit_with_control<'a>(
        &self,
        deltas: impl IntoIterator<Item = &'a Delta>,
        audit: &[AuditRecord],
        control: Option<&ControlDisk>,
        sync: bool,
    ) -> Result<(), StoreError> {
        self.with(|o| o.commit(deltas, audit, control, sync))
    }

    /// The control plane's stored state, if any.
    pub fn load_control(&self) -> Result<Option<ControlDisk>, StoreError> {
        self.with(|o| match o.meta.get("control").map_err(|e| o.io(e))? {
            None => Ok(None),
            Some(v) => decode_entry(&v).map(Some).map_err(|e| StoreError::Corrupt {
                path: o.path.clone(),
                reason: format!("the control plane's state: {e}"),
            }),
        })
    }

    /// The newest `limit` audit records, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.with(|o| o.audit(limit))
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Open {
    fn at(path: &Path, copy_journal: bool) -> Result<Open, StoreError> {
        let backup = path.with_extension("journal-before-recovery");
        if backup.exists() {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "an earlier start found it damaged; its journal as it was then is in {}",
                    backup.display()
                ),
            });
        }
        let copy = path.with_extension("journal-copy");
        let _ = std::fs::remove_dir_all(&copy);
        let copied = match copy_journal.then(|| save_journals(path, &copy)) {
            None => false,
            Some(Ok(())) => copy.exists(),
            Some(Err(e)) => {
                let _ = std::fs::remove_dir_all(&copy);
                tracing::warn!(error = %e, path = %copy.display(), "cannot copy the journal aside before recovery; opening without the copy");
                false
            }
        };
        let opened = Self::open_db(path);
        match opened {
            Err(StoreError::Corrupt { path, reason }) if copied => {
                let kept = std::fs::rename(&copy, &backup).is_ok();
                let reason = if kept {
                    format!(
                        "{reason} (the journal as it was before recovery is in {})",
                        backup.display()
                    )
                } else {
                    reason
                };
                Err(StoreError::Corrupt { path, reason })
            }
            other => {
                let _ = std::fs::remove_dir_all(&copy);
                other
            }
        }
    }

    fn open_db(path: &Path) -> Result<Open, StoreError> {
        let classify = |e: fjall::Error| match e {
            fjall::Error::Locked => StoreError::Locked {
                path: path.to_owned(),
            },
            fjall::Error::Io(io) if is_full(&io) => StoreError::Full {
                path: path.to_owned(),
                reason: io.to_string(),
            },
            fjall::Error::Io(io)
                if io.kind() != std::io::ErrorKind::InvalidData
                    && io.kind() != std::io::ErrorKind::UnexpectedEof =>
            {
                StoreError::Io {
                    path: path.to_owned(),
                    reason: io.to_string(),
                }
            }
            other => StoreError::Corrupt {
                path: path.to_owned(),
                reason: other.to_string(),
            },
        };
        let db = Database::builder(path).open().map_err(classify)?;
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(classify)
        };
        let wm_path = path.with_extension("watermark");
        let acknowledged = Watermark::read(&wm_path);
        let wm_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&wm_path)
            .map_err(|e| StoreError::Io {
                path: wm_path.clone(),
                reason: e.to_string(),
            })?;
        let store = Open {
            watermark: Watermark {
                file: std::sync::Mutex::new(wm_file),
                next: std::sync::atomic::AtomicU64::new(0),
            },
            members: ks("members")?,
            tasks: ks("tasks")?,
            kv: ks("kv")?,
            policies: ks("policies")?,
            audit: ks("audit")?,
            meta: ks("meta")?,
            db,
            path: path.to_owned(),
        };
        store.init_schema()?;
        let committed = store.read_u64("commits")?.unwrap_or(0);
        if let Some(acked) = acknowledged {
            if acked > committed {
                return Err(StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: format!(
                        "it holds {committed} commits but {acked} were acknowledged: its journal lost acknowledged data"
                    ),
                });
            }
        }
        store
            .watermark
            .next
            .store(committed + 1, std::sync::atomic::Ordering::SeqCst);
        Ok(store)
    }

    fn read_u64(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.meta.get(key).map_err(|e| self.io(e))? {
            None => Ok(None),
            Some(v) => v
                .as_ref()
                .try_into()
                .map(|b| Some(u64::from_be_bytes(b)))
                .map_err(|_| StoreError::Corrupt {
                    path: self.path.clone(),
                    reason: format!("bad `{key}` record"),
                }),
        }
    }

    /// A failed write: [`StoreError::Full`] for a full disk.
    fn write_error(&self, e: fjall::Error) -> StoreError {
        match &e {
            fjall::Error::Io(io) if is_full(io) => StoreError::Full {
                path: self.path.clone(),
                reason: io.to_string(),
            },
            _ => self.io(e),
        }
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        let reason = e.to_string();
        let lower = reason.to_lowercase();
        if ["corrupt", "checksum", "invalid", "decompress", "recovery"]
            .iter()
            .any(|w| lower.contains(w))
        {
            StoreError::Corrupt {
                path: self.path.clone(),
                reason,
            }
        } else {
            StoreError::Io {
                path: self.path.clone(),
                reason,
            }
        }
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        match self.read_u64("schema")? {
            Some(found) => {
                if found > SCHEMA {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        found,
                    });
                }
                if found < SCHEMA {
                    let tasks = self.rows(&self.tasks)?.len();
                    if tasks > 0 {
                        return Err(StoreError::Unsigned {
                            path: self.path.clone(),
                            found,
                            tasks,
                        });
                    }
                    let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
                    if found < 2 {
                        // Schema 1 member records are unsigned.
                        for (k, _) in self.rows(&self.members)? {
                            batch.remove(&self.members, k);
                        }
                    }
                    batch.insert(&self.meta, "schema", SCHEMA.to_be_bytes().to_vec());
                    batch.commit().map_err(|e| self.write_error(e))?;
                    tracing::info!(from = found, to = SCHEMA, "store schema upgraded");
                }
                Ok(())
            }
            None => {
                let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
                batch.insert(&self.meta, "schema", SCHEMA.to_be_bytes().to_vec());
                batch.commit().map_err(|e| self.write_error(e))
            }
        }
    }

    fn rows(&self, ks: &Keyspace) -> Result<Vec<Row>, StoreError> {
        let mut out = Vec::new();
        for guard in ks.iter() {
            let (k, v) = guard.into_inner().map_err(|e| self.io(e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn load(&self) -> Result<ReplicatedState, StoreError> {
        let mut state = ReplicatedState::default();
        for (table, ks) in [
            (Table::Members, &self.members),
            (Table::Tasks, &self.tasks),
            (Table::Policies, &self.policies),
            (Table::Kv, &self.kv),
        ] {
            for (k, v) in self.rows(ks)? {
                let delta = decode_row(table, &k, &v).map_err(|reason| StoreError::Corrupt {
                    path: self.path.clone(),
                    reason,
                })?;
                state.apply(delta);
            }
        }
        Ok(state)
    }

    fn commit<'a>(
        &self,
        deltas: impl IntoIterator<Item = &'a Delta>,
        audit: &[AuditRecord],
        control: Option<&ControlDisk>,
        sync: bool,
    ) -> Result<(), StoreError> {
        let mode = if sync {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        let mut batch = self.db.batch().durability(Some(mode));
        let seq = self
            .watermark
            .next
            .load(std::sync::atomic::Ordering::SeqCst);
        batch.insert(&self.meta, "commits", seq.to_be_bytes().to_vec());
        if let Some(c) = control {
            batch.insert(&self.meta, "control", encode(c));
        }
        for d in deltas {
            match d {
                Delta::Member(id, e) => batch.insert(&self.members, id.as_str(), encode(e)),
                Delta::Task(id, e) => batch.insert(&self.tasks, id.as_str(), encode(e)),
                Delta::Kv { ns, key, entry } => {
                    batch.insert(&self.kv, kv_key(ns, key), encode(entry))
                }
                Delta::Policy { ns, policy } => {
                    batch.insert(&self.policies, ns.as_str(), encode(policy))
                }
            }
        }
        if !audit.is_empty() {
            let next = match self.audit.last_key_value() {
                Some(g) => {
                    let k = g.key().map_err(|e| self.io(e))?;
                    let n: [u8; 8] = k.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        path: self.path.clone(),
                        reason: "bad audit key".into(),
                    })?;
                    u64::from_be_bytes(n) + 1
                }
                None => 1,
            };
            for (seq, rec) in (next..).zip(audit) {
                let json = serde_json::to_vec(rec).unwrap_or_default();
                batch.insert(&self.audit, seq.to_be_bytes().to_vec(), json);
            }
        }
        batch.commit().map_err(|e| self.write_error(e))?;
        self.watermark
            .next
            .store(seq + 1, std::sync::atomic::Ordering::SeqCst);
        if sync {
            if let Err(e) = self.watermark.write(seq) {
                tracing::warn!(error = %e, "cannot update the commit watermark");
            }
        }
        Ok(())
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out = Vec::new();
        for guard in self.audit.iter().rev().take(limit) {
            let (k, v) = guard.into_inner().map_err(|e| self.io(e))?;
            let rec = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                reason: format!("audit record {}: {e}", hex::encode(&k)),
            })?;
            out.push(rec);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Millis;
    use crate::core::knowledge::{KvEntry, Policy};

    fn rec() -> AuditRecord {
        AuditRecord {
            at: Millis(1),
            by: NodeId::from("n"),
            action: "x".into(),
            subject: "y".into(),
            detail: "z".into(),
        }
    }

    #[test]
    fn committed_deltas_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let mut entry = KvEntry::default();
        entry.put(Policy::Lww, "1".into(), &NodeId::from("n"), Millis(1), 1);
        let mut expected = ReplicatedState::default();
        let delta = Delta::Kv {
            ns: "a".into(),
            key: "b".into(),
            entry: entry.into(),
        };
        expected.apply(delta.clone());
        {
            let store = Store::open(&path).unwrap();
            store.commit(&[delta], &[rec(), rec()], true).unwrap();
            store.commit(&[], &[rec()], false).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load().unwrap().digest(), expected.digest());
        assert_eq!(store.audit(10).unwrap().len(), 3);
    }

    #[test]
    fn a_schema_1_store_drops_its_unsigned_member_records_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let n = NodeId::from("n");
        let mut member = crate::core::member::MemberEntry::default();
        let keys = crate::core::sign::Keys::sim(&n);
        member.write(&n, Default::default(), &n, &keys);
        let mut entry = KvEntry::default();
        entry.put(Policy::Lww, "1".into(), &n, Millis(1), 1);
        let deltas = [
            Delta::Member(n.clone(), Box::new(member)),
            Delta::Kv {
                ns: "a".into(),
                key: "b".into(),
                entry: entry.into(),
            },
        ];
        {
            let store = Store::open(&path).unwrap();
            store.commit(&deltas, &[], true).unwrap();
            store
                .with(|o| {
                    let mut b = o.db.batch().durability(Some(PersistMode::SyncAll));
                    b.insert(&o.meta, "schema", 1u64.to_be_bytes().to_vec());
                    b.commit().map_err(|e| o.io(e))
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let state = store.load().unwrap();
        assert!(state.members.is_empty(), "member records dropped");
        assert_eq!(state.namespaces["a"].entries.len(), 1, "knowledge kept");
        assert_eq!(store.with(|o| o.read_u64("schema")).unwrap(), Some(SCHEMA));
    }

    #[test]
    fn a_store_with_unsigned_tasks_is_refused_unchanged_and_one_without_upgrades() {
        let dir = tempfile::tempdir().unwrap();
        let set_schema = |store: &Store, v: u64| {
            store
                .with(|o| {
                    let mut b = o.db.batch().durability(Some(PersistMode::SyncAll));
                    b.insert(&o.meta, "schema", v.to_be_bytes().to_vec());
                    b.commit().map_err(|e| o.io(e))
                })
                .unwrap()
        };
        let n = NodeId::from("n");
        let mut member = crate::core::member::MemberEntry::default();
        member.write(
            &n,
            Default::default(),
            &n,
            &crate::core::sign::Keys::sim(&n),
        );
        let member = Delta::Member(n.clone(), Box::new(member));
        // A schema 2 store with a task row (its bytes do not matter: they
        // are never read).
        let with_task = dir.path().join("with-task");
        {
            let store = Store::open(&with_task).unwrap();
            store.commit([&member], &[], true).unwrap();
            store
                .with(|o| {
                    let mut b = o.db.batch().durability(Some(PersistMode::SyncAll));
                    b.insert(&o.tasks, "t1", vec![ENTRY_FORMAT, 0]);
                    b.commit().map_err(|e| o.io(e))
                })
                .unwrap();
            set_schema(&store, 2);
        }
        let err = Store::open(&with_task).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Unsigned {
                    found: 2,
                    tasks: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("Nothing was changed"), "{err}");
        // Refused again: nothing was changed by the first try.
        assert!(matches!(
            Store::open(&with_task).unwrap_err(),
            StoreError::Unsigned { .. }
        ));
        // Without tasks, schema 2 upgrades and keeps its (signed) members.
        let without = dir.path().join("without");
        {
            let store = Store::open(&without).unwrap();
            store.commit([&member], &[], true).unwrap();
            set_schema(&store, 2);
        }
        let store = Store::open(&without).unwrap();
        assert_eq!(store.load().unwrap().members.len(), 1);
        assert_eq!(store.with(|o| o.read_u64("schema")).unwrap(), Some(SCHEMA));
    }

    #[test]
    fn a_damaged_journal_is_reported_not_silently_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            for i in 0..5 {
                let mut entry = KvEntry::default();
                entry.put(
                    Policy::Lww,
                    format!("{i}"),
                    &NodeId::from("n"),
                    Millis(1),
                    1,
                );
                store
                    .commit(
                        &[Delta::Kv {
                            ns: "a".into(),
                            key: format!("k{i}"),
                            entry: entry.into(),
                        }],
                        &[],
                        true,
                    )
                    .unwrap();
            }
        }
        let journal = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "jnl"))
            .unwrap();
        let mut bytes = std::fs::read(&journal).unwrap();
        for b in bytes.iter_mut().take(400).skip(100) {
            *b ^= 0x5A;
        }
        std::fs::write(&journal, &bytes).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let kept = path.with_extension("journal-before-recovery");
        assert!(kept.join(journal.file_name().unwrap()).exists(), "{err}");
        // Until an operator has looked, the next start refuses too.
        let again = Store::open(&path).unwrap_err();
        assert!(again.to_string().contains("earlier start"), "{again}");
    }

    #[test]
    fn a_second_open_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let _first = Store::open(&path).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::Locked { .. })));
    }

    #[test]
    fn an_undecodable_entry_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = Store::open(&path).unwrap();
        store
            .with(|o| {
                o.tasks.insert("t1", vec![1u8, 0xff, 0xff]).unwrap();
                Ok(())
            })
            .unwrap();
        let err = store.load().unwrap_err();
        assert!(
            err.to_string().contains("entry `t1` in table `tasks`"),
            "{err}"
        );
    }

    #[test]
    fn a_leftover_journal_copy_never_stops_a_healthy_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        Store::open(&path)
            .unwrap()
            .commit(&[], &[rec()], true)
            .unwrap();
        // A start that stopped while copying the journal aside.
        let copy = path.with_extension("journal-copy");
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::write(copy.join("0.jnl"), b"half a copy").unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.audit(10).unwrap().len(), 1);
        assert!(!copy.exists(), "the leftover copy is removed");
        assert!(!path.with_extension("journal-before-recovery").exists());
    }

    #[test]
    fn the_watermark_counts_only_synced_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let wm = path.with_extension("watermark");
        let store = Store::open(&path).unwrap();
        store.commit(&[], &[rec()], true).unwrap();
        let synced = Watermark::read(&wm).unwrap();
        // An unsynced commit may be taken back by a power loss: the
        // watermark must not claim it.
        store.commit(&[], &[rec()], false).unwrap();
        assert_eq!(Watermark::read(&wm), Some(synced));
        store.commit(&[], &[rec()], true).unwrap();
        assert_eq!(Watermark::read(&wm), Some(synced + 2));
    }

    #[test]
    fn a_reopen_keeps_everything_and_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = Store::open(&path).unwrap();
        store.commit(&[], &[rec()], true).unwrap();
        store.reopen().unwrap();
        store.commit(&[], &[rec()], true).unwrap();
        assert_eq!(store.audit(10).unwrap().len(), 2);
        drop(store);
        assert_eq!(Store::open(&path).unwrap().audit(10).unwrap().len(), 2);
    }
}
