//! The node identity (an ed25519 key, as libp2p uses) and the cluster secret,
//! both kept in the data dir.

use crate::core::sign::Keys;
use libp2p::identity::Keypair;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The identity or secret could not be loaded or created.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The data dir cannot be used.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The identity file is not a valid key.
    #[error("{path} is not a valid identity key: {reason}; it was left untouched")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The secret is not 64 hexadecimal characters.
    #[error(
        "cluster secret from {origin} must be 64 hexadecimal characters (32 bytes) on one line"
    )]
    BadSecret {
        /// Where it came from.
        origin: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to a new file readable only by its owner, durably and
/// whole: written and synced under a temporary name, linked to `path`
/// (which must not exist yet), then the directory is synced. A crash at
/// any point leaves either no file or the whole one, never a truncated key
/// that would stop the next start.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("partial");
    let _ = std::fs::remove_file(&tmp); // left by a crash during an earlier start
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    let linked = std::fs::hard_link(&tmp, path).map_err(io(path));
    let _ = std::fs::remove_file(&tmp);
    linked?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Creates the data dir if needed and checks that it is a directory this
/// process can list and write in, saying which of those fails.
fn open_data_dir(dir: &Path) -> Result<(), IdentityError> {
    let fail = |reason: String| IdentityError::DataDir {
        path: dir.to_owned(),
        reason,
    };
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(fail("exists and is not a directory".into())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot be created: {e}")))?
        }
        Err(e) => return Err(fail(format!("cannot be read: {e}"))),
    }
    std::fs::read_dir(dir).map_err(|e| fail(format!("cannot be listed: {e}")))?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| fail(format!("cannot be written to: {e}")))?;
    Ok(())
}

/// Loads `DATA_DIR/identity.key`, creating it on first use. Returns the key
/// and whether it was created.
pub fn load_or_create_identity(data_dir: &Path) -> Result<(Keypair, bool), IdentityError> {
    open_data_dir(data_dir)?;
    let path = data_dir.join("identity.key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bad = |reason: String| IdentityError::BadKey {
                path: path.clone(),
                reason,
            };
            if bytes.is_empty() {
                return Err(bad("the file is empty".into()));
            }
            let key = Keypair::from_protobuf_encoding(&bytes).map_err(|_| {
                bad(format!(
                    "{} bytes that are not a protobuf-encoded ed25519 key",
                    bytes.len()
                ))
            })?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| IdentityError::BadKey {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            write_private(&path, &bytes)?;
            Ok((key, true))
        }
        Err(e) => Err(io(&path)(e)),
    }
}

/// The node's keys for signing its records (core/sign.rs): the identity's
/// ed25519 secret. An identity of another key type is refused.
pub fn signing_keys(key: &Keypair, data_dir: &Path) -> Result<Keys, IdentityError> {
    let ed = key
        .clone()
        .try_into_ed25519()
        .map_err(|_| IdentityError::BadKey {
            path: data_dir.join("identity.key"),
            reason: "not an ed25519 key".into(),
        })?;
    let mut secret = [0u8; 32];
    secret.copy_from_slice(ed.secret().as_ref());
    Ok(Keys::ed25519(secret))
}

/// A 32-byte cluster pre-shared key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(pub [u8; 32]);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// Parses 64 hex characters (surrounding whitespace is ignored).
    pub fn parse(text: &str, origin: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::BadSecret {
            origin: origin.to_owned(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
        Ok(ClusterSecret(bytes.try_into().map_err(|_| bad())?))
    }

    /// A fresh random secret.
    pub fn generate() -> Self {
        ClusterSecret(rand::random())
    }

    /// A short public fingerprint (for logs): the first 8 hex chars of its blake3.
    pub fn fingerprint(&self) -> String {
        hex::encode(&blake3::hash(&self.0).as_bytes()[..4])
    }
}

/// Where the secret comes from: `SHOAL_SECRET` (the key itself), a secret
/// file, or `DATA_DIR/secret`, created with a fresh key if missing.
pub fn load_or_create_secret(
    env_value: Option<&str>,
    file: Option<&Path>,
    data_dir: &Path,
) -> Result<ClusterSecret, IdentityError> {
    if let Some(value) = env_value {
        return ClusterSecret::parse(value, "SHOAL_SECRET");
    }
    let (path, may_create) = match file {
        Some(p) => (p.to_owned(), false),
        None => (data_dir.join("secret"), true),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => ClusterSecret::parse(&text, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
            std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
            let secret = ClusterSecret::generate();
            write_private(&path, format!("{}\n", hex::encode(secret.0)).as_bytes())?;
            Ok(secret)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_signed_with_the_identity_verify_against_its_peer_id_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = load_or_create_identity(dir.path()).unwrap();
        let keys = signing_keys(&key, dir.path()).unwrap();
        let id = crate::core::ids::NodeId::from(key.public().to_peer_id().to_string());
        let sig = keys.sign(b"a record");
        assert!(keys.verify(&id, b"a record", &sig));
        assert!(!keys.verify(&id, b"another record", &sig));
        let (other, _) = load_or_create_identity(tempfile::tempdir().unwrap().path()).unwrap();
        let other = crate::core::ids::NodeId::from(other.public().to_peer_id().to_string());
        assert!(!keys.verify(&other, b"a record", &sig), "another node's id");
        // What a libp2p peer id holds is the key that signed.
        let inner = crate::core::sign::public_key(&id).expect("an ed25519 peer id");
        let libp2p_key = key.public().try_into_ed25519().unwrap().to_bytes();
        assert_eq!(inner.to_bytes(), libp2p_key);
    }

    #[test]
    fn identity_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create_identity(dir.path()).unwrap();
        assert!(created);
        let (b, created) = load_or_create_identity(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        std::fs::write(dir.path().join("identity.key"), b"garbage").unwrap();
        assert!(matches!(
            load_or_create_identity(dir.path()),
            Err(IdentityError::BadKey { .. })
        ));
    }

    #[test]
    fn secret_is_created_once_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_secret(None, None, dir.path()).unwrap();
        let b = load_or_create_secret(None, None, dir.path()).unwrap();
        assert_eq!(a, b);
        let text = std::fs::read_to_string(dir.path().join("secret")).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(load_or_create_secret(Some("abc"), None, dir.path()).is_err());
        let missing = dir.path().join("nope");
        assert!(load_or_create_secret(None, Some(&missing), dir.path()).is_err());
    }

    #[test]
    fn a_crash_while_writing_the_key_never_stops_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        // What a crash between create and write used to leave as the key
        // itself, now only under the temporary name.
        std::fs::write(dir.path().join("identity.partial"), b"").unwrap();
        let (a, created) = load_or_create_identity(dir.path()).unwrap();
        assert!(created);
        assert!(!dir.path().join("identity.partial").exists());
        let (b, _) = load_or_create_identity(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("identity.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
