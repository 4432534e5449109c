//! The daemon against mosquitto configured for TLS (a CA and client certificates generated
//! here with the openssl CLI), password authentication (mosquitto_passwd) and the example ACL
//! shipped in configs/mosquitto-acl.conf. The password reaches the daemon as a systemd
//! credential ($CREDENTIALS_DIRECTORY/mqtt-password). A wrong CA or a wrong password is
//! refused with an error that says so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::{free_port, repo, wait_port, write_config, Daemon, T, TEXT_ONLY};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA named `name`: `<name>.pem`, `<name>.key`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A leaf certificate `<name>.pem`/`<name>.key` signed by `ca`.
fn make_leaf(dir: &Path, ca: &str, name: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// mosquitto with TLS (client certificates required), passwords and the example ACL.
struct SecureBroker {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl SecureBroker {
    fn start() -> SecureBroker {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_ca(d, "ca");
        make_ca(d, "other-ca");
        make_leaf(
            d,
            "ca",
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        make_leaf(d, "ca", "client", "extendedKeyUsage=clientAuth\n");
        let passwd = d.join("passwd");
        run(Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args(["test", "device-secret"]));
        run(Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwd)
            .args(["app", "app-secret"]));
        let port = free_port();
        let conf = d.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nper_listener_settings false\nallow_anonymous false\n\
                 persistence false\npassword_file {passwd}\nacl_file {acl}\n\
                 listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
                 keyfile {d}/server.key\nrequire_certificate true\n",
                passwd = passwd.display(),
                acl = repo().join("configs/mosquitto-acl.conf").display(),
                d = d.display(),
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (tests/run installs it)");
        wait_port(port, Duration::from_secs(10));
        SecureBroker { port, child, dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// mosquitto_sub/pub arguments for the `app` user with a client certificate.
    fn client_args(&self) -> Vec<String> {
        [
            "-h",
            "localhost",
            "-p",
            &self.port.to_string(),
            "-V",
            "5",
            "--cafile",
            &self.file("ca.pem"),
            "--cert",
            &self.file("client.pem"),
            "--key",
            &self.file("client.key"),
            "-u",
            "app",
            "-P",
            "app-secret",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon with its stderr (logs) collected line by line.
struct LoggedDaemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl LoggedDaemon {
    fn start(config: &Path, credentials: &Path) -> LoggedDaemon {
        let mut child = Daemon::command(config)
            .env("CREDENTIALS_DIRECTORY", credentials)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("edgefuse starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LoggedDaemon {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn expect_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no log line with {needle:?} within {T:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for LoggedDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Config for device `test` (user `test`) on `broker`, trusting `ca`; the password comes
/// from the credentials directory holding `password`.
fn setup(b: &SecureBroker, ca: &str, password: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("mqtt-password"), format!("{password}\n")).unwrap();
    let config = write_config(
        dir.path(),
        "test",
        &format!(
            "{TEXT_ONLY}[stats]\ninterval_s = 0\n[mqtt]\nbroker = \"mqtts://localhost:{port}\"\n\
             username = \"test\"\nca_file = \"{ca}\"\nclient_cert_file = \"{cert}\"\n\
             client_key_file = \"{key}\"\nkeepalive_s = 5\n",
            port = b.port,
            ca = b.file(ca),
            cert = b.file("client.pem"),
            key = b.file("client.key"),
        ),
    );
    (dir, config, creds)
}

#[test]
fn tls_with_client_certificate_and_a_credential_password_round_trips() {
    let b = SecureBroker::start();
    let (_dir, config, creds) = setup(&b, "ca.pem", "device-secret");
    let mut sub = Command::new("mosquitto_sub")
        .args(b.client_args())
        .args(["-t", "edgefuse/test/embedding/text", "-C", "1", "-W", "90"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut daemon = LoggedDaemon::start(&config, &creds);
    daemon.expect_log("connected to the MQTT broker");
    // Give the daemon's subscription time to reach the broker, then send until answered.
    let mut answered = None;
    for _ in 0..30 {
        run(Command::new("mosquitto_pub").args(b.client_args()).args([
            "-q",
            "1",
            "-t",
            "edgefuse/test/in/text",
            "-m",
            "hello over TLS",
        ]));
        if let Ok(Some(status)) = sub.try_wait() {
            answered = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(Some(status)) = sub.try_wait() {
            answered = Some(status);
            break;
        }
    }
    assert!(
        answered.is_some_and(|s| s.success()),
        "no embedding arrived"
    );
    let out = sub.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON embedding");
    assert_eq!(v["dim"], 384);
}

#[test]
fn a_broker_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let line = refusal("other-ca.pem", "device-secret");
    assert!(
        line.contains("not signed by a CA in mqtt.ca_file") && line.contains("UnknownIssuer"),
        "{line}"
    );
}

#[test]
fn a_wrong_password_is_refused_with_a_clear_error() {
    let line = refusal("ca.pem", "not-the-password");
    assert!(
        line.contains("refused the credentials: wrong user name or password"),
        "{line}"
    );
}

/// The log line saying why the daemon cannot reach a TLS broker, trusting `ca` and sending
/// `password`.
fn refusal(ca: &str, password: &str) -> String {
    let b = SecureBroker::start();
    let (_dir, config, creds) = setup(&b, ca, password);
    let mut daemon = LoggedDaemon::start(&config, &creds);
    daemon.expect_log("cannot reach the MQTT broker")
}
