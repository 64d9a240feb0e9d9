//! A few PostgreSQL connections, opened on demand and dropped when broken,
//! with every wait bounded: for a free connection, for a connect, for a
//! statement. No lock is held across a connect, so one slow connect never
//! holds up calls that could use another connection.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busline_core::BoxError;
use futures::future::BoxFuture;
use tokio::sync::{oneshot, Semaphore};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, Socket};

/// How long a connection task may still flush after its client is gone.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type Connect = dyn Fn(
        Config,
    ) -> BoxFuture<
        'static,
        Result<(Client, BoxFuture<'static, Result<(), tokio_postgres::Error>>), tokio_postgres::Error>,
    > + Send
    + Sync;

/// A client whose connection task ends (after [`CLOSE_GRACE`]) when the
/// client is dropped, even if the socket is frozen mid-reply.
pub(crate) struct Link {
    pub(crate) client: Client,
    _closed: oneshot::Sender<()>,
}

pub(crate) struct Pool {
    config: Config,
    connect: Box<Connect>,
    idle: Mutex<Vec<Arc<Link>>>,
    /// One permit per connection that may be in use.
    permits: Semaphore,
    size: usize,
    connect_timeout: Duration,
    statement_timeout: Duration,
}

impl Pool {
    /// A pool of up to `size` connections to `config` through `tls`. The
    /// config's own connect timeout is set to `connect_timeout`, and the
    /// server is asked to cancel statements after `statement_timeout`
    /// (besides the client-side limit).
    pub(crate) fn new<T>(
        mut config: Config,
        tls: T,
        size: usize,
        connect_timeout: Duration,
        statement_timeout: Duration,
    ) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        config.connect_timeout(connect_timeout);
        let limit = format!("-c statement_timeout={}", statement_timeout.as_millis().max(1));
        let options = match config.get_options() {
            Some(own) if !own.is_empty() => format!("{own} {limit}"),
            _ => limit,
        };
        config.options(options);
        let connect = move |config: Config| -> BoxFuture<'static, _> {
            let tls = tls.clone();
            Box::pin(async move {
                let (client, connection) = config.connect(tls).await?;
                let connection: BoxFuture<'static, _> = Box::pin(connection);
                Ok((client, connection))
            })
        };
        let size = size.max(1);
        Self {
            config,
            connect: Box::new(connect),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size),
            size,
            connect_timeout,
            statement_timeout,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Link>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a connection, under the statement timeout. A connection
    /// that failed, timed out or closed is dropped, not reused.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, BoxError>
    where
        F: FnOnce(Arc<Link>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        // Waiting for a busy connection is bounded like the rest.
        let wait = self.connect_timeout + self.statement_timeout;
        let _permit = match tokio::time::timeout(wait, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err("the dedup database pool is closed".into()),
            Err(_) => {
                return Err(format!(
                    "all {} dedup database connections stayed busy for {wait:?}",
                    self.size
                )
                .into())
            }
        };
        let reused = {
            let mut idle = self.idle();
            idle.retain(|l| !l.client.is_closed());
            idle.pop()
        };
        let link = match reused {
            Some(link) => link,
            None => self.open().await?,
        };
        match tokio::time::timeout(self.statement_timeout, f(link.clone())).await {
            Ok(Ok(value)) => {
                self.idle().push(link);
                Ok(value)
            }
            Ok(Err(e)) => {
                // The server answered with an error: the connection is fine.
                if e.as_db_error().is_some() && !link.client.is_closed() {
                    self.idle().push(link);
                }
                Err(e.into())
            }
            Err(_) => Err(format!(
                "the dedup database did not answer within {:?}",
                self.statement_timeout
            )
            .into()),
        }
    }

    async fn open(&self) -> Result<Arc<Link>, BoxError> {
        let connecting = (self.connect)(self.config.clone());
        let (client, connection) = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(format!("connecting to the dedup database failed: {e}").into()),
            Err(_) => {
                return Err(format!(
                    "connecting to the dedup database took longer than {:?}",
                    self.connect_timeout
                )
                .into())
            }
        };
        let (closed_tx, closed_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let gone = async {
                let _ = closed_rx.await;
                tokio::time::sleep(CLOSE_GRACE).await;
            };
            tokio::select! {
                ended = connection => match ended {
                    Ok(()) => tracing::debug!("dedup database connection closed"),
                    Err(e) => tracing::warn!(error = %e, "dedup database connection ended"),
                },
                () = gone => tracing::debug!("dedup database connection dropped without closing"),
            }
        });
        Ok(Arc::new(Link {
            client,
            _closed: closed_tx,
        }))
    }
}
