//! Running the binary: a finished run's output, or a running `tail`.

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longer than any step of the tool (its connect and step timeouts), so a
/// hang is reported as one rather than stalling the run.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The binary with a URL.
pub struct Cli {
    url: String,
    /// A `BUSLINE_CONFIG` file for the run (the URL still comes from
    /// `--url`).
    config: Option<std::path::PathBuf>,
}

/// What a finished run said.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Output {
    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{self}");
    }
}

impl Cli {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            config: None,
        }
    }

    /// Runs with `toml` as its `BUSLINE_CONFIG` file.
    pub fn with_config(mut self, toml: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "{}.toml",
            busline_testkit::support::unique("busline-e2e")
        ));
        std::fs::write(&path, toml).expect("write the config file");
        self.config = Some(path);
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_busline"));
        command
            .arg("--url")
            .arg(&self.url)
            .args(args)
            .env_remove("BUSLINE_CONFIG")
            .env_remove("BUSLINE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(config) = &self.config {
            command.env("BUSLINE_CONFIG", config);
        }
        command
    }

    /// Runs to the end and returns its output.
    pub async fn run(&self, args: &[&str]) -> Output {
        let child = self.command(args).spawn().expect("the busline binary starts");
        match tokio::time::timeout(RUN_LIMIT, child.wait_with_output()).await {
            Ok(Ok(out)) => Output {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
            Ok(Err(e)) => panic!("busline {args:?}: {e}"),
            Err(_) => panic!("busline {args:?} did not finish within {RUN_LIMIT:?}"),
        }
    }

    /// Starts `busline tail ...` and returns once it says it is tailing
    /// (subscribed).
    pub async fn tail(&self, args: &[&str]) -> Tail {
        let mut full = vec!["tail"];
        full.extend_from_slice(args);
        let mut child = self.command(&full).spawn().expect("the busline binary starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let mut said = String::new();
        let ready = tokio::time::timeout(RUN_LIMIT, async {
            while let Ok(Some(line)) = stderr.next_line().await {
                said.push_str(&line);
                said.push('\n');
                // Not the warning "... tailing from now on", which comes
                // before the subscription.
                if line.contains("tailing") && line.contains(" as group ") {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(ready, Ok(true)),
            "busline tail never said it was tailing; stderr:\n{said}"
        );
        Tail { child, said, stderr }
    }
}

/// A running `tail`.
pub struct Tail {
    child: Child,
    said: String,
    stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
}

impl Tail {
    /// Waits for it to end by itself (`--count`) and returns its output.
    pub async fn finish(mut self) -> Output {
        let mut stdout = self.child.stdout.take().expect("piped stdout");
        let mut said = self.said;
        let collected = tokio::time::timeout(RUN_LIMIT, async {
            let mut out = String::new();
            stdout.read_to_string(&mut out).await.expect("tail's stdout");
            while let Ok(Some(line)) = self.stderr.next_line().await {
                said.push_str(&line);
                said.push('\n');
            }
            let status = self.child.wait().await.expect("tail exits");
            (status, out)
        })
        .await;
        let Ok((status, stdout)) = collected else {
            panic!("busline tail did not end within {RUN_LIMIT:?}; stderr so far:\n{said}");
        };
        Output {
            code: status.code(),
            stdout,
            stderr: said,
        }
    }
}

/// A local port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}
