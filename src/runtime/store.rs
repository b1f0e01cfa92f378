//! The embedded, crash-safe store (redb) in the data dir.
//!
//! One table per kind of replicated entry, each value a version byte and the
//! entry's postcard encoding; an append-only audit table. Every commit is
//! durable (fsync) before it returns, and the runtime acknowledges a write
//! only after the commit that holds it. A damaged file or an entry that does
//! not decode is reported with the path and never silently reset.

use crate::core::event::AuditRecord;
use crate::core::ids::{NodeId, TaskId};
use crate::core::state::{Delta, ReplicatedState};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};
use thiserror::Error;

const MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("members");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Version byte in front of every stored entry.
const ENTRY_FORMAT: u8 = 1;
/// The store's schema version.
const SCHEMA: u64 = 1;

/// A store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The file is damaged. Nothing was changed; the file was left as it is.
    #[error("store {path} is damaged: {reason}. It was left untouched: restore it from a backup or move it away to start this node empty (it will then re-sync from its peers)")]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the store open.
    #[error(
        "store {path} is in use by another process (is a node already running with this data dir?)"
    )]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// The store was written by a newer Shoal.
    #[error("store {path} has schema {found}; this Shoal understands up to {SCHEMA}")]
    Schema {
        /// The store file.
        path: PathBuf,
        /// The schema found.
        found: u64,
    },
    /// Reading or writing failed (for example a full disk). The commit did
    /// not happen.
    #[error("store {path}: {reason}")]
    Io {
        /// The store file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// The node's store.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![ENTRY_FORMAT];
    // Encoding an in-memory entry to a Vec cannot fail.
    out.extend(postcard::to_stdvec(value).unwrap_or_default());
    out
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_owned(),
            },
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
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
        })?;
        let store = Store {
            db,
            path: path.to_owned(),
        };
        store.init_schema()?;
        Ok(store)
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        let reason = e.to_string();
        if reason.to_lowercase().contains("corrupt") {
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
        let tx = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.io(e))?;
            let found = meta
                .get("schema")
                .map_err(|e| self.io(e))?
                .map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA => {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        found: v,
                    })
                }
                Some(_) => {}
                None => {
                    meta.insert("schema", SCHEMA).map_err(|e| self.io(e))?;
                }
            }
            tx.open_table(MEMBERS).map_err(|e| self.io(e))?;
            tx.open_table(TASKS).map_err(|e| self.io(e))?;
            tx.open_table(KV).map_err(|e| self.io(e))?;
            tx.open_table(POLICIES).map_err(|e| self.io(e))?;
            tx.open_table(AUDIT).map_err(|e| self.io(e))?;
        }
        tx.commit().map_err(|e| self.io(e))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            reason: format!("entry `{key}` in table `{table}`: {reason}"),
        };
        match bytes.split_first() {
            Some((&ENTRY_FORMAT, rest)) => {
                postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string()))
            }
            Some((v, _)) => Err(corrupt(format!("unknown entry format {v}"))),
            None => Err(corrupt("empty value".into())),
        }
    }

    /// Loads the whole replicated state.
    pub fn load(&self) -> Result<ReplicatedState, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let mut state = ReplicatedState::default();
        let t = tx.open_table(MEMBERS).map_err(|e| self.io(e))?;
        for row in t.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let entry = self.decode("members", k.value(), v.value())?;
            state.apply(Delta::Member(NodeId(k.value().to_owned()), entry));
        }
        let t = tx.open_table(TASKS).map_err(|e| self.io(e))?;
        for row in t.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let entry = self.decode("tasks", k.value(), v.value())?;
            state.apply(Delta::Task(TaskId(k.value().to_owned()), entry));
        }
        let t = tx.open_table(POLICIES).map_err(|e| self.io(e))?;
        for row in t.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let policy = self.decode("policies", k.value(), v.value())?;
            state.apply(Delta::Policy {
                ns: k.value().to_owned(),
                policy,
            });
        }
        let t = tx.open_table(KV).map_err(|e| self.io(e))?;
        for row in t.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let (ns, key) = k.value();
            let entry = self.decode("kv", &format!("{ns}/{key}"), v.value())?;
            state.apply(Delta::Kv {
                ns: ns.to_owned(),
                key: key.to_owned(),
                entry,
            });
        }
        Ok(state)
    }

    /// Makes `deltas` and `audit` records durable in one transaction.
    pub fn commit(&self, deltas: &[Delta], audit: &[AuditRecord]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut members = tx.open_table(MEMBERS).map_err(|e| self.io(e))?;
            let mut tasks = tx.open_table(TASKS).map_err(|e| self.io(e))?;
            let mut kv = tx.open_table(KV).map_err(|e| self.io(e))?;
            let mut policies = tx.open_table(POLICIES).map_err(|e| self.io(e))?;
            for d in deltas {
                let r = match d {
                    Delta::Member(id, e) => members
                        .insert(id.as_str(), encode(e).as_slice())
                        .map(|_| ()),
                    Delta::Task(id, e) => {
                        tasks.insert(id.as_str(), encode(e).as_slice()).map(|_| ())
                    }
                    Delta::Kv { ns, key, entry } => kv
                        .insert((ns.as_str(), key.as_str()), encode(entry).as_slice())
                        .map(|_| ()),
                    Delta::Policy { ns, policy } => policies
                        .insert(ns.as_str(), encode(policy).as_slice())
                        .map(|_| ()),
                };
                r.map_err(|e| self.io(e))?;
            }
            if !audit.is_empty() {
                let mut table = tx.open_table(AUDIT).map_err(|e| self.io(e))?;
                let next = table
                    .last()
                    .map_err(|e| self.io(e))?
                    .map(|(k, _)| k.value() + 1)
                    .unwrap_or(1);
                for (seq, rec) in (next..).zip(audit) {
                    let json = serde_json::to_vec(rec).unwrap_or_default();
                    table.insert(seq, json.as_slice()).map_err(|e| self.io(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.io(e))
    }

    /// The newest `limit` audit records, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = tx.open_table(AUDIT).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.io(e))?.rev().take(limit) {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let rec = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                reason: format!("audit record {}: {e}", k.value()),
            })?;
            out.push(rec);
        }
        Ok(out)
    }

    /// How many audit records there are.
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = tx.open_table(AUDIT).map_err(|e| self.io(e))?;
        table.len().map_err(|e| self.io(e))
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Millis;
    use crate::core::knowledge::{KvEntry, Policy};

    #[test]
    fn committed_deltas_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let mut entry = KvEntry::default();
        entry.put(Policy::Lww, "1".into(), &NodeId::from("n"), Millis(1), 1);
        let mut expected = ReplicatedState::default();
        let delta = Delta::Kv {
            ns: "a".into(),
            key: "b".into(),
            entry,
        };
        expected.apply(delta.clone());
        {
            let store = Store::open(&path).unwrap();
            let rec = AuditRecord {
                at: Millis(1),
                by: NodeId::from("n"),
                action: "x".into(),
                subject: "y".into(),
                detail: "z".into(),
            };
            store.commit(&[delta], &[rec.clone(), rec]).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load().unwrap().digest(), expected.digest());
        assert_eq!(store.audit(10).unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_file_is_reported_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(Store::open(&path).unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        for b in bytes.iter_mut().take(4096) {
            *b = 0xAB;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        // the file is left as it was
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn an_undecodable_entry_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        let tx = store.db.begin_write().unwrap();
        tx.open_table(TASKS)
            .unwrap()
            .insert("t1", [1u8, 0xff, 0xff].as_slice())
            .unwrap();
        tx.commit().unwrap();
        let err = store.load().unwrap_err();
        assert!(
            err.to_string().contains("entry `t1` in table `tasks`"),
            "{err}"
        );
    }
}
