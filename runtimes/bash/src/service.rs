//! The gRPC service `kruntimes.runtime.v1.RuntimeServer`: thin handlers over
//! [`Executions`]; errors become statuses through `From<RuntimeError>`.
use std::sync::Arc;

use kruntimes_proto::runtime::v1::runtime_server_server::RuntimeServer;
use kruntimes_proto::runtime::v1::{
    AttachRequest, CancelRequest, CancelResponse, ExecutionStatus, ForgetRequest, ForgetResponse,
    HandshakeRequest, HandshakeResponse, ListRequest, ListResponse, StartRequest, StatusRequest,
};
use tonic::{Request, Response, Status};

use crate::attach::{self, EventStream};
use crate::execution::START_GENERATION;
use crate::executions::Executions;
use crate::handshake::handshake;

pub struct Service {
    execs: Arc<Executions>,
}

impl Service {
    pub fn new(execs: Arc<Executions>) -> Self {
        Self { execs }
    }
}

#[tonic::async_trait]
impl RuntimeServer for Service {
    async fn handshake(
        &self,
        _req: Request<HandshakeRequest>,
    ) -> Result<Response<HandshakeResponse>, Status> {
        Ok(Response::new(handshake(&self.execs).await))
    }

    type StartStream = EventStream;

    /// Errors fail the call before any event; once the process exists the
    /// stream starts with `started`. Dropping the stream leaves the
    /// execution running (it does not depend on its reader).
    async fn start(&self, req: Request<StartRequest>) -> Result<Response<EventStream>, Status> {
        let req = req.into_inner();
        let id = req.execution_id.clone();
        match self.execs.start(req) {
            Ok((exec, started)) => Ok(Response::new(attach::stream(
                exec,
                START_GENERATION,
                Some(started),
            ))),
            Err(e) => {
                tracing::info!(%id, error = %e, "start rejected");
                Err(e.into())
            }
        }
    }

    type AttachStream = EventStream;

    async fn attach(
        &self,
        req: Request<AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let req = req.into_inner();
        let exec = self.execs.get(&req.execution_id)?;
        let generation = exec.attach(req.stdout_offset, req.stderr_offset)?;
        Ok(Response::new(attach::stream(exec, generation, None)))
    }

    async fn cancel(
        &self,
        req: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let req = req.into_inner();
        self.execs.cancel(&req.execution_id, req.grace_period_ms)?;
        Ok(Response::new(CancelResponse {}))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<ExecutionStatus>, Status> {
        let exec = self.execs.get(&req.into_inner().execution_id)?;
        Ok(Response::new(exec.status()))
    }

    async fn list(&self, _req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Ok(Response::new(ListResponse {
            executions: self.execs.list(),
        }))
    }

    async fn forget(
        &self,
        req: Request<ForgetRequest>,
    ) -> Result<Response<ForgetResponse>, Status> {
        let req = req.into_inner();
        self.execs
            .forget(req.execution_id, req.more_execution_ids)?;
        Ok(Response::new(ForgetResponse {}))
    }
}
