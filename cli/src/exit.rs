//! Exit codes that scripts can rely on, and the one error type that
//! carries them.

use std::process::ExitCode;

/// Why the tool stopped, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The broker refused or failed an operation; a doctor check failed.
    Failed = 1,
    /// The command line asks for something impossible (clap's own code).
    Usage = 2,
    /// No connection, or the configuration is wrong.
    Connect = 3,
    /// Nothing matched what was asked for.
    NotFound = 4,
}

/// An error to print on stderr, with its exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    exit: Exit,
    message: String,
}

impl CliError {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self::new(Exit::Failed, message)
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(Exit::NotFound, message)
    }

    /// The text printed for it.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// Prints the message and gives the exit code.
    pub(crate) fn report(self) -> ExitCode {
        eprintln!("busline: {}", self.message);
        code(self.exit)
    }
}

pub(crate) fn code(exit: Exit) -> ExitCode {
    ExitCode::from(exit as u8)
}

/// The message of an error with its sources, on one line.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Resolves on Ctrl-C, or on SIGTERM where there are signals.
pub(crate) async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
