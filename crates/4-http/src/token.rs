//! Bearer tokens kept in files.
//!
//! A token file holds one token: 64 lowercase hex digits (32 random bytes from the kernel)
//! and an optional trailing newline. [`Token::create`] writes a new one with mode 0600 (owner
//! only) and never replaces an existing file; [`Token::load`] refuses a file that others can
//! read. A request carries it as `Authorization: Bearer <token>`; [`Token::verify`] compares
//! in constant time.

use anyhow::{Context, Result, bail};
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use subtle::ConstantTimeEq;

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Longest token file read, in bytes.
const MAX_FILE: u64 = 4096;
/// Shortest token accepted from a file (so a truncated or placeholder file is refused).
const MIN_TOKEN_LEN: usize = 32;

/// A secret bearer token. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A new random token.
    pub fn generate() -> Result<Token> {
        let mut bytes = [0u8; TOKEN_BYTES];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("reading /dev/urandom")?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// Writes a new random token to `path` with mode 0600; fails if the file exists.
    pub fn create(path: &Path) -> Result<Token> {
        let token = Token::generate()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating token file {}", path.display()))?;
        writeln!(f, "{}", token.0)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing token file {}", path.display()))?;
        Ok(token)
    }

    /// Reads the token in `path`. Refuses a file that group or others may read or write, and
    /// one whose content is not a single token of printable ASCII of at least 32 bytes.
    pub fn load(path: &Path) -> Result<Token> {
        let f = std::fs::File::open(path)
            .with_context(|| format!("opening token file {}", path.display()))?;
        let mode = f.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "token file {} has mode {:o}; it must be readable by its owner only (chmod 600)",
                path.display(),
                mode & 0o777
            );
        }
        let mut text = String::new();
        f.take(MAX_FILE)
            .read_to_string(&mut text)
            .with_context(|| format!("reading token file {}", path.display()))?;
        let token = text.trim_end_matches(['\n', '\r']);
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "token file {} does not hold a token (one line of at least {MIN_TOKEN_LEN} printable characters)",
                path.display()
            );
        }
        Ok(Token(token.to_owned()))
    }

    /// [`Token::load`]s `path`, or [`Token::create`]s it if it does not exist. True: created.
    pub fn load_or_create(path: &Path) -> Result<(Token, bool)> {
        match Token::create(path) {
            Ok(t) => Ok((t, true)),
            Err(e) => match e.downcast_ref::<std::io::Error>() {
                Some(io) if io.kind() == std::io::ErrorKind::AlreadyExists => {
                    Ok((Token::load(path)?, false))
                }
                _ => Err(e),
            },
        }
    }

    /// The `Authorization` header value for this token.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `Authorization` header value presents this token, compared in constant
    /// time (for a presented token of the same length).
    pub fn verify(&self, authorization: &[u8]) -> bool {
        let Some(presented) = authorization.strip_prefix(b"Bearer ") else {
            return false;
        };
        bool::from(presented.ct_eq(self.0.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("fs-token-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn created_tokens_are_private_random_and_load_back() {
        let d = dir("create");
        let p = d.join("api.token");
        let t = Token::create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Token::load(&p).unwrap(), t);
        assert!(Token::create(&p).is_err(), "never replaces a token");
        let (again, created) = Token::load_or_create(&p).unwrap();
        assert_eq!((again, created), (t.clone(), false));
        assert_ne!(Token::generate().unwrap(), t);
        assert!(t.verify(t.header_value().as_bytes()));
        assert!(!t.verify(b"Bearer wrong"));
        assert!(!t.verify(t.0.as_bytes()), "the scheme is required");
        assert!(!t.verify(format!("Bearer {}x", t.0).as_bytes()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn readable_or_malformed_files_are_refused() {
        let d = dir("refuse");
        let p = d.join("open.token");
        std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Token::load(&p).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::load(&p).is_ok());
        std::fs::write(&p, "short\n").unwrap();
        assert!(Token::load(&p).is_err());
        std::fs::write(&p, "0123456789abcdef 0123456789abcdef\n").unwrap();
        assert!(Token::load(&p).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
