//! Dropping root: a proxy started as root (to bind port 25) becomes `server.user` once its
//! sockets are bound and its first configuration generation is built (TLS keys read, plugins
//! compiled), like Postfix's daemons. The directories it keeps writing to — the compile cache,
//! the embedded Maildir, the quarantine, the session recordings — are handed to that user
//! first; a spool directory that user cannot write stops the start.
//!
//! Reloads then run as that user: plugin files, certificates and keys it cannot read make the
//! reload fail (logged; the running generation stays).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::unistd::{Gid, Group, Uid, User};

use crate::config::{Config, UpstreamUrl};
use crate::upstream::maildir::Maildir;

/// Who to become.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// The identity `server.user` / `server.group` name, if any; an unknown name is an error.
pub fn configured(config: &Config) -> anyhow::Result<Option<Identity>> {
    let Some(name) = &config.server.user else { return Ok(None) };
    let user = User::from_name(name)
        .with_context(|| format!("server.user: cannot look up `{name}`"))?
        .with_context(|| format!("server.user: there is no user `{name}`"))?;
    let gid = match &config.server.group {
        None => user.gid,
        Some(group) => {
            Group::from_name(group)
                .with_context(|| format!("server.group: cannot look up `{group}`"))?
                .with_context(|| format!("server.group: there is no group `{group}`"))?
                .gid
        }
    };
    Ok(Some(Identity { user: name.clone(), uid: user.uid, gid }))
}

/// Hands the proxy's own directories to `identity`, then becomes it for good (supplementary
/// groups, group, user — in that order, and checked).
pub fn drop_to(identity: &Identity, config: &Config) -> anyhow::Result<()> {
    if !Uid::effective().is_root() {
        if Uid::effective() == identity.uid {
            return Ok(());
        }
        bail!("server.user = \"{}\" needs the proxy to be started as root", identity.user);
    }
    for dir in owned_directories(config)? {
        hand_over(&dir, identity).with_context(|| format!("cannot hand {} to {}", dir.display(), identity.user))?;
    }
    nix::unistd::setgroups(&[identity.gid]).context("setgroups")?;
    nix::unistd::setgid(identity.gid).context("setgid")?;
    nix::unistd::setuid(identity.uid).context("setuid")?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!("still able to become root after dropping privileges");
    }
    if let Some(spool) = &config.server.spool_dir {
        check_writable(spool).with_context(|| format!("server.spool_dir {}", spool.display()))?;
    }
    tracing::info!(user = %identity.user, uid = identity.uid.as_raw(), gid = identity.gid.as_raw(), "privileges dropped");
    Ok(())
}

/// The directories the proxy writes to after the drop, created if they are missing.
fn owned_directories(config: &Config) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    if let Some(cache) = &config.sandbox.cache_dir {
        std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
        dirs.push(cache.clone());
    }
    if let Some(record) = &config.record.dir {
        std::fs::create_dir_all(record).with_context(|| format!("cannot create {}", record.display()))?;
        dirs.push(record.clone());
    }
    let hostname = config.hostname();
    let mut maildirs = vec![config.sandbox.quarantine.clone()];
    if let UpstreamUrl::Maildir(path) = config.upstream_url() {
        maildirs.push(path);
    }
    for path in maildirs {
        Maildir::create(path.clone(), hostname.clone())?;
        dirs.extend(["", "tmp", "new", "cur"].map(|sub| path.join(sub)));
    }
    Ok(dirs)
}

/// Gives a directory and the files directly in it to `identity`.
fn hand_over(dir: &Path, identity: &Identity) -> anyhow::Result<()> {
    let own = |path: &Path| nix::unistd::chown(path, Some(identity.uid), Some(identity.gid));
    own(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            own(&path)?;
        }
    }
    Ok(())
}

/// Creates and removes a file in `dir`.
pub fn check_writable(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("is not a directory");
    }
    tempfile::tempfile_in(dir).map(drop).context("is not writable")
}
