//! A connection's running operations: the table that enforces unique ids and
//! `connections.max_operations`, and the task that executes one operation and forwards its results.
//! An operation runs while its task does, or, for a member of a shared subscription, while its
//! seat is taken: a parked member has no task but still holds its id and its slot.

use std::sync::Arc;

use async_graphql::http::WebSocketProtocols as Protocols;
use async_graphql::{Request, Value};
use futures_util::StreamExt;
use tokio::task::{AbortHandle, JoinError, JoinSet};

use super::outbox::Outbox;
use super::protocol::{self, Close, code};
use crate::graphql::{AppSchema, Ending, Seat};

/// Why an operation was not started.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// An operation with this id is still running (close 4409).
    DuplicateId,
    /// `max_operations` are already running.
    Full { limit: usize },
}

pub struct Operations {
    /// Running operations, each under its client id. A list, not a map: a connection runs a few
    /// operations at once (at most `max_operations`, 100 by default), and the smallest map table
    /// has four slots (~210 bytes) where the list grows from one.
    running: Vec<Running>,
    /// Owns the tasks: dropping the table (the connection ended) aborts them all.
    tasks: JoinSet<(String, u64)>,
    next_generation: u64,
    limit: usize,
}

impl Operations {
    pub fn new(limit: usize) -> Self {
        Self {
            running: Vec::new(),
            tasks: JoinSet::new(),
            next_generation: 0,
            limit,
        }
    }

    /// Starts executing `request` under `id`, sending its results through `outbox`.
    pub fn start(
        &mut self,
        id: String,
        request: Request,
        schema: AppSchema,
        protocol: Protocols,
        outbox: Outbox,
    ) -> Result<(), Refused> {
        if self.is_running(&id) {
            return Err(Refused::DuplicateId);
        }
        if self.running.len() >= self.limit {
            // Parked members that their group or a lost grant ended leave no task to reap.
            self.running.retain(Running::is_alive);
            if self.running.len() >= self.limit {
                return Err(Refused::Full { limit: self.limit });
            }
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let seat = Seat::new(&request, protocol, &id, &outbox);
        let request = request.data(seat.clone());
        let handle = self.tasks.spawn(run(
            schema,
            request,
            protocol,
            id.clone(),
            generation,
            outbox,
            seat.clone(),
        ));
        if self.running.len() == self.running.capacity() {
            self.running.reserve_exact(self.running.len().max(1));
        }
        self.running.push(Running {
            id,
            generation,
            handle: Some(handle),
            seat,
        });
        Ok(())
    }

    /// Whether an operation with this id is still running (a new one under it would close 4409).
    pub fn is_running(&self, id: &str) -> bool {
        self.find(id).is_some_and(Running::is_alive)
    }

    /// The seats of shared members, whose grants the connection re-checks when its
    /// identity changes (they have no task of their own to do it).
    pub fn parked(&self) -> Vec<Arc<Seat>> {
        self.running
            .iter()
            .filter(|running| running.seat.is_taken())
            .map(|running| running.seat.clone())
            .collect()
    }

    /// Stops the operation `id` (client `complete`); false when none was running. It leaves its
    /// shared subscription here rather than when the aborted task is dropped, which happens later
    /// on another thread: the id is free for reuse as soon as this returns.
    pub fn stop(&mut self, id: &str) -> bool {
        self.take(id).is_some_and(|running| {
            let alive = running.is_alive();
            running.seat.leave();
            if let Some(handle) = running.handle {
                handle.abort();
            }
            alive
        })
    }

    /// Waits for the next task to finish and frees its slot. Pending forever while nothing runs, so
    /// it can sit in a `select!`. A panicked task yields the close it calls for.
    pub async fn reap(&mut self) -> Option<Close> {
        match self.tasks.join_next().await {
            Some(finished) => self.free(finished),
            None => std::future::pending().await,
        }
    }

    fn free(&mut self, finished: Result<(String, u64), JoinError>) -> Option<Close> {
        match finished {
            Ok((id, generation)) => {
                if let Some(running) = self.running.iter_mut().find(|r| r.id == id)
                    && running.generation == generation
                {
                    if running.seat.is_taken() {
                        // Parked: the seat runs the operation now. The handle would keep the
                        // finished task's allocation, sized for its future, as long as it lives.
                        running.handle = None;
                    } else {
                        self.take(&id);
                    }
                }
                None
            }
            // Its client would otherwise wait forever for a result.
            Err(error) if error.is_panic() => Some(Close::new(code::INTERNAL, "Internal error")),
            // Aborted by a client `complete`: its slot was already freed.
            Err(_) => None,
        }
    }
}

impl Operations {
    fn find(&self, id: &str) -> Option<&Running> {
        self.running.iter().find(|running| running.id == id)
    }

    /// Removes the operation `id` from the table (its order there means nothing).
    fn take(&mut self, id: &str) -> Option<Running> {
        let at = self.running.iter().position(|running| running.id == id)?;
        Some(self.running.swap_remove(at))
    }
}

impl Drop for Operations {
    /// The connection ended: parked members leave their groups (the tasks are aborted by the
    /// `JoinSet`; a parked member has none).
    fn drop(&mut self) {
        for running in &self.running {
            running.seat.leave();
        }
    }
}

struct Running {
    /// The client's id. The generation tells a finished task from a newer one that reused it;
    /// the seat is its place in a shared subscription, if it takes one.
    id: String,
    generation: u64,
    /// The operation's task; `None` once it finished and left the operation parked in its seat.
    handle: Option<AbortHandle>,
    seat: Arc<Seat>,
}

impl Running {
    fn is_alive(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished()) || self.seat.is_taken()
    }
}

/// Runs until the operation's results are exhausted, the outbox refuses (the connection is
/// closing), or the table aborts the task. Returns its id and generation to free the right slot.
/// A subscription that ended because of an error it recorded in its [`Ending`] (its grant is
/// gone) ends with that `error` instead of `complete`; one whose seat answers for it (a shared
/// member, parked) ends with no frame.
async fn run(
    schema: AppSchema,
    request: Request,
    protocol: Protocols,
    id: String,
    generation: u64,
    outbox: Outbox,
    seat: Arc<Seat>,
) -> (String, u64) {
    let ending = Ending::default();
    let mut responses = schema.execute_stream(request.data(ending.clone()));
    let mut first = true;
    while let Some(response) = responses.next().await {
        // A first result with errors and no data means the operation never ran (parse,
        // validation or limit errors): the protocol reports that as `error`, with no `complete`.
        if first && response.data == Value::Null && response.is_err() {
            outbox.text(protocol::error(protocol, &id, &response.errors));
            return (id, generation);
        }
        first = false;
        if !outbox.text(protocol::next(protocol, &id, &response)) {
            return (id, generation);
        }
    }
    if seat.answers() {
        return (id, generation);
    }
    match ending.take() {
        Some(error) => outbox.text(protocol::error(protocol, &id, &[error])),
        None => outbox.text(protocol::complete(&id)),
    };
    (id, generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(generation: u64, handle: AbortHandle) -> Running {
        let seat = Seat::taken();
        Running {
            id: "1".into(),
            generation,
            handle: Some(handle),
            seat,
        }
    }

    #[tokio::test]
    async fn a_panicked_operation_closes_the_connection_with_4500() {
        let mut operations = Operations::new(4);
        let handle = operations.tasks.spawn(async { panic!("resolver bug") });
        operations.running.push(running(0, handle));
        assert_eq!(
            operations.reap().await,
            Some(Close::new(4500, "Internal error"))
        );
    }

    #[tokio::test]
    async fn a_finished_operation_frees_only_its_own_generation() {
        let mut operations = Operations::new(4);
        operations.tasks.spawn(async { ("1".to_string(), 0) });
        let newer = tokio::spawn(std::future::pending::<()>()).abort_handle();
        operations.running.push(running(1, newer));
        assert_eq!(operations.reap().await, None);
        assert!(
            operations.find("1").is_some(),
            "the newer operation keeps its slot"
        );
    }
}
