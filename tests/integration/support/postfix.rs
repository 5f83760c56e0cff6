//! A private Postfix instance for the tests: its own configuration, queue and data directories
//! in a temp dir, listeners on free loopback ports only, delivery to Maildirs of
//! `example.test`, Cyrus sasldb for AUTH; started with `postfix -c DIR start` and stopped with
//! `postfix -c DIR stop` when dropped. Needs root (the postfix command is reserved for it) and
//! the Debian packages postfix, sasl2-bin and libsasl2-modules (scripts/setup --test).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{WAIT, free_port};

/// The test account Postfix's submission listener accepts.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";
/// A client address Postfix's `check_client_access` rejects.
pub const BLOCKED_CLIENT: &str = "127.0.0.3";
/// The one client address in Postfix's `mynetworks`: it may relay anywhere.
pub const TRUSTED_CLIENT: &str = "127.0.0.2";

/// Which listeners to run.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    /// MX-style smtpd with main.cf's restrictions (`mynetworks = 127.0.0.2/32`: the proxy is
    /// not trusted), authorising XCLIENT from 127.0.0.1.
    pub xclient: bool,
    /// Submission: SASL AUTH (PLAIN, LOGIN) without TLS, relaying only for authenticated clients.
    pub submission: bool,
    /// `smtpd_proxy_filter` in front of a filter on the first port, and the after-filter
    /// listener on the second, which the filter relays to (XFORWARD allowed, restrictions
    /// relaxed).
    pub proxy_filter: Option<(u16, u16)>,
}

pub struct Postfix {
    pub dir: tempfile::TempDir,
    /// The XCLIENT listener's port (0 when not running).
    pub xclient_port: u16,
    pub submission_port: u16,
    /// Where a before-queue filter's clients connect (smtpd with `smtpd_proxy_filter`).
    pub proxy_in_port: u16,
    /// Where the filter relays to.
    pub after_filter_port: u16,
}

impl Postfix {
    pub async fn start(listeners: Listeners) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        // Postfix's daemons run as user postfix and must be able to reach every directory.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["etc", "spool", "data", "mail", "etc/sasl"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        chown(&d.join("data"), "postfix:postfix");
        chown(&d.join("mail"), "postfix:postfix");
        let uid = id("-u");
        let gid = id("-g");
        let port = |on: bool| if on { free_port() } else { 0 };
        let (xclient_port, submission_port) = (port(listeners.xclient), port(listeners.submission));
        let (proxy_in_port, after_filter_port) = match listeners.proxy_filter {
            Some((_, after)) => (free_port(), after),
            None => (0, 0),
        };
        let p = d.display();
        std::fs::write(
            d.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {p}/spool\ndata_directory = {p}/data\n\
                 mail_owner = postfix\nsetgid_group = postdrop\ninet_interfaces = 127.0.0.1\ninet_protocols = all\n\
                 myhostname = mx.example.test\nmydomain = example.test\nmydestination =\nlocal_recipient_maps =\n\
                 alias_maps =\nalias_database =\nmynetworks = {TRUSTED_CLIENT}/32\n\
                 smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination\n\
                 smtpd_client_restrictions = check_client_access texthash:{p}/etc/client_access\n\
                 maillog_file = {p}/postfix.log\nmaillog_file_prefixes = {p}\n\
                 virtual_mailbox_domains = example.test\nvirtual_mailbox_base = {p}/mail\n\
                 virtual_mailbox_maps = texthash:{p}/etc/vmailbox\nvirtual_uid_maps = static:{uid}\n\
                 virtual_gid_maps = static:{gid}\nbiff = no\nin_flow_delay = 0\nsmtpd_error_sleep_time = 0\n\
                 smtpd_soft_error_limit = 100\nsmtpd_hard_error_limit = 100\n\
                 queue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n\
                 notify_classes =\nrelayhost =\ndefault_transport = discard:outside mail discarded\n\
                 smtpd_sasl_type = cyrus\nsmtpd_sasl_path = smtpd\ncyrus_sasl_config_path = {p}/etc/sasl\n\
                 smtpd_sasl_local_domain = example.test\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("etc/sasl/smtpd.conf"),
            format!("pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {p}/etc/sasl/sasldb2\n"),
        )
        .unwrap();
        let mut saslpasswd = Command::new("saslpasswd2")
            .args(["-f", &format!("{p}/etc/sasl/sasldb2"), "-p", "-c", "-u", "example.test", USER])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("saslpasswd2 runs (Debian package sasl2-bin; scripts/setup --test installs it)");
        use std::io::Write;
        saslpasswd.stdin.take().unwrap().write_all(PASSWORD.as_bytes()).unwrap();
        assert!(saslpasswd.wait().unwrap().success());
        chown(&d.join("etc/sasl/sasldb2"), "root:postfix");
        std::fs::set_permissions(d.join("etc/sasl/sasldb2"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(
            d.join("etc/vmailbox"),
            "alice@example.test example.test/alice/\nbob@example.test example.test/bob/\n",
        )
        .unwrap();
        std::fs::write(d.join("etc/client_access"), format!("{BLOCKED_CLIENT} REJECT blocked test client\n")).unwrap();

        let mut master = String::new();
        if xclient_port != 0 {
            master.push_str(&format!(
                "127.0.0.1:{xclient_port} inet n - n - - smtpd\n  -o syslog_name=postfix/xclient\n  \
                 -o smtpd_authorized_xclient_hosts=127.0.0.1\n"
            ));
        }
        if submission_port != 0 {
            master.push_str(&format!(
                "127.0.0.1:{submission_port} inet n - n - - smtpd\n  -o syslog_name=postfix/submission\n  \
                 -o smtpd_sasl_auth_enable=yes\n  -o smtpd_tls_security_level=none\n  -o smtpd_tls_auth_only=no\n  \
                 -o smtpd_client_restrictions=\n  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n  \
                 -o smtpd_authorized_xclient_hosts=127.0.0.1\n"
            ));
        }
        if let Some((filter, _)) = listeners.proxy_filter {
            master.push_str(&format!(
                "127.0.0.1:{proxy_in_port} inet n - n - 20 smtpd\n  -o syslog_name=postfix/beforefilter\n  \
                 -o smtpd_proxy_filter=127.0.0.1:{filter}\n  -o smtpd_proxy_ehlo=beforefilter.example.test\n  \
                 -o smtpd_proxy_timeout=30s\n\
                 127.0.0.1:{after_filter_port} inet n - n - - smtpd\n  -o syslog_name=postfix/afterfilter\n  \
                 -o smtpd_authorized_xforward_hosts=127.0.0.0/8\n  -o smtpd_client_restrictions=\n  \
                 -o smtpd_helo_restrictions=\n  -o smtpd_sender_restrictions=\n  -o smtpd_relay_restrictions=\n  \
                 -o smtpd_recipient_restrictions=permit_mynetworks,reject\n  -o smtpd_data_restrictions=\n  \
                 -o mynetworks=127.0.0.0/8\n  -o receive_override_options=no_unknown_recipient_checks\n"
            ));
        }
        master.push_str(MASTER_SERVICES);
        std::fs::write(d.join("etc/master.cf"), master).unwrap();
        // Postfix will not read a file modified within the last second (it waits for it to
        // settle); backdate what was just written.
        for file in ["main.cf", "master.cf", "vmailbox", "client_access", "sasl/smtpd.conf"] {
            let _ = Command::new("touch").args(["-d", "-1 minute"]).arg(d.join("etc").join(file)).status();
        }
        let postfix = Self { dir, xclient_port, submission_port, proxy_in_port, after_filter_port };
        postfix.run("start");
        for port in [xclient_port, submission_port, proxy_in_port, after_filter_port] {
            if port != 0 {
                postfix.wait_for_banner(port).await;
            }
        }
        postfix
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// Runs `postfix -c DIR <verb>`; panics with the log's tail if it fails.
    pub fn run(&self, verb: &str) {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(self.etc())
            .arg(verb)
            .output()
            .expect("postfix runs (Debian package postfix; scripts/setup --test installs it)");
        assert!(
            out.status.success(),
            "postfix {verb} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    async fn wait_for_banner(&self, port: u16) {
        use tokio::io::AsyncReadExt;
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let mut buf = [0u8; 3];
                if tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await.is_ok_and(|r| r.is_ok())
                    && &buf == b"220"
                {
                    return;
                }
            }
            assert!(std::time::Instant::now() < deadline, "postfix did not answer on port {port}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the private instance answers again on every port (after `start`).
    pub async fn wait_ready(&self) {
        for port in [self.xclient_port, self.submission_port, self.proxy_in_port, self.after_filter_port] {
            if port != 0 {
                self.wait_for_banner(port).await;
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }

    /// The messages delivered to `user@example.test`, oldest first.
    pub fn mailbox(&self, user: &str) -> Vec<String> {
        let new = self.dir.path().join("mail/example.test").join(user).join("new");
        let mut files: Vec<_> =
            std::fs::read_dir(&new).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        files.sort();
        files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect()
    }

    /// Waits (bounded) until `user` has `n` messages; returns them.
    pub async fn wait_mailbox(&self, user: &str, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let messages = self.mailbox(user);
            if messages.len() >= n {
                return messages;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{user} has {} messages, not {n}:\n{}",
                messages.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix").arg("-c").arg(self.etc()).arg("stop").output();
    }
}

fn chown(path: &Path, owner: &str) {
    assert!(Command::new("chown").arg(owner).arg(path).status().unwrap().success());
}

fn id(flag: &str) -> String {
    let out = Command::new("id").args([flag, "postfix"]).output().expect("a postfix user exists");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The services every instance runs: Debian's master.cf without the port-25 listener and
/// without chroot.
const MASTER_SERVICES: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";
