//! Execution lifecycle: ids, Status, List, Forget (one, and a batch).
use kruntimes_proto::runtime::v1::{
    CancelRequest, ExecutionState, ForgetRequest, ListRequest, StatusRequest,
};
use tonic::Code;

use crate::client::{
    Client, Ended, attach_raw, collect, ended, expect_error, run, sh, start, start_raw, unique_id,
};
use crate::{Failure, ServerUnderTest, ensure};

/// Most ids in one Forget (`execution_id` plus `more_execution_ids`).
const MAX_FORGET_IDS: usize = 256;

/// Status of a forgotten execution fails NOT_FOUND.
async fn expect_forgotten(c: &mut Client, what: &str, id: &str) -> Result<(), Failure> {
    let status = c
        .status(StatusRequest {
            execution_id: id.to_string(),
        })
        .await;
    expect_error(what, status, Code::NotFound, &[]).map(|_| ())
}

fn forget(id: &str, more: &[&str]) -> ForgetRequest {
    ForgetRequest {
        execution_id: id.to_string(),
        more_execution_ids: more.iter().map(|m| m.to_string()).collect(),
    }
}

/// While running: Status says RUNNING with the pid Start returned, List
/// includes it, a second Start with the same id fails ALREADY_EXISTS and
/// Forget fails FAILED_PRECONDITION. After the exit: Status says EXITED with
/// the exit and final lengths, Forget succeeds, and afterwards Status,
/// Attach, Cancel and Forget of that id fail NOT_FOUND and the id can be
/// used again.
pub async fn lifecycle(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let id = unique_id("life");
    let gate = s.scratch().join(format!("{id}.gate"));
    let script = format!(
        "echo hello; while [ ! -e '{}' ]; do sleep 0.05; done",
        gate.display()
    );
    let started = start(&mut c, sh(&id, &script)).await?;

    let st = super::status(&mut c, &id).await?;
    ensure!(
        st.execution_id == id,
        "Status execution_id {:?}",
        st.execution_id
    );
    ensure!(
        st.state == ExecutionState::Running as i32,
        "{id}: Status state {} while running",
        st.state
    );
    ensure!(
        st.pid == started.pid,
        "{id}: Status pid {} but Start returned {}",
        st.pid,
        started.pid
    );
    ensure!(
        st.started_at.is_some() && st.exit.is_none(),
        "{id}: Status while running: {st:?}"
    );
    let list = c
        .list(ListRequest {})
        .await
        .map_err(Failure::rpc("List"))?
        .into_inner();
    ensure!(
        list.executions.iter().any(|e| e.execution_id == id),
        "{id}: missing from List"
    );

    expect_error(
        "second Start with a running id",
        start_raw(&mut c, sh(&id, "true")).await,
        Code::AlreadyExists,
        &[],
    )?;
    expect_error(
        "Forget of a running execution",
        c.forget(forget(&id, &[])).await,
        Code::FailedPrecondition,
        &[],
    )?;

    std::fs::write(&gate, b"").map_err(|e| Failure::Setup(format!("{}: {e}", gate.display())))?;
    let out = collect(&mut c, &id).await?;
    ensure!(ended(&out.exit)? == Ended::Code(0), "{id}: {:?}", out.exit);
    let st = super::wait_exited(&mut c, &id).await?;
    ensure!(
        st.exit.as_ref() == Some(&out.exit) && st.stdout_length == 6 && st.stderr_length == 0,
        "{id}: Status after exit {st:?} disagrees with Attach's exit {:?}",
        out.exit
    );
    expect_error(
        "second Start with a finished, not forgotten id",
        start_raw(&mut c, sh(&id, "true")).await,
        Code::AlreadyExists,
        &[],
    )?;

    c.forget(forget(&id, &[]))
        .await
        .map_err(Failure::rpc(format!("Forget {id} after exit")))?;
    expect_forgotten(&mut c, "Status after Forget", &id).await?;
    expect_error(
        "Attach after Forget",
        attach_raw(&mut c, &id, 0, 0).await,
        Code::NotFound,
        &[],
    )?;
    expect_error(
        "Cancel after Forget",
        c.cancel(CancelRequest {
            execution_id: id.clone(),
            grace_period_ms: 0,
        })
        .await,
        Code::NotFound,
        &[],
    )?;
    expect_error(
        "Forget after Forget",
        c.forget(forget(&id, &[])).await,
        Code::NotFound,
        &[],
    )?;

    let again = run(&mut c, sh(&id, "echo again")).await?;
    ensure!(
        again.stdout == b"again\n",
        "{id}: reusing a forgotten id: {:?}",
        again.stdout_text()
    );
    Ok(())
}

/// A Forget with `more_execution_ids` is all or nothing: with one unknown or
/// running id among finished ones it fails naming that id and every
/// execution is still known; more than 255 further ids fail
/// INVALID_ARGUMENT naming the field and the limit; a valid batch (an id
/// repeated) drops them all.
pub async fn forget_batch(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let ids: Vec<String> = (0..3).map(|_| unique_id("batch")).collect();
    for id in &ids {
        run(&mut c, sh(id, "echo done")).await?;
        super::wait_exited(&mut c, id).await?;
    }
    let (a, b, d) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    let unknown = unique_id("never-started");
    let st = expect_error(
        "Forget of finished executions and an unknown one",
        c.forget(forget(a, &[b, &unknown, d])).await,
        Code::NotFound,
        &[],
    )?;
    ensure!(
        st.message().contains(&unknown),
        "the NOT_FOUND does not name the unknown id {unknown:?}: {:?}",
        st.message()
    );
    let running = unique_id("batch-running");
    let gate = s.scratch().join(format!("{running}.gate"));
    let script = format!("while [ ! -e '{}' ]; do sleep 0.05; done", gate.display());
    start(&mut c, sh(&running, &script)).await?;
    let st = expect_error(
        "Forget of finished executions and a running one",
        c.forget(forget(a, &[&running, b])).await,
        Code::FailedPrecondition,
        &[],
    )?;
    ensure!(
        st.message().contains(&running),
        "the FAILED_PRECONDITION does not name the running id {running:?}: {:?}",
        st.message()
    );
    for id in &ids {
        c.status(StatusRequest {
            execution_id: id.clone(),
        })
        .await
        .map_err(Failure::rpc(format!(
            "Status of {id} after a Forget that failed"
        )))?;
    }
    let too_many: Vec<String> = (0..MAX_FORGET_IDS).map(|i| format!("{a}-{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    expect_error(
        "Forget of 257 ids",
        c.forget(forget(a, &too_many)).await,
        Code::InvalidArgument,
        &["more_execution_ids", "255"],
    )?;

    c.forget(forget(a, &[b, d, a, b]))
        .await
        .map_err(Failure::rpc("Forget of three finished executions"))?;
    for id in &ids {
        expect_forgotten(&mut c, "Status after a batch Forget", id).await?;
    }
    std::fs::write(&gate, b"").map_err(|e| Failure::Setup(format!("{}: {e}", gate.display())))?;
    super::wait_exited(&mut c, &running).await?;
    c.forget(forget(&running, &[]))
        .await
        .map_err(Failure::rpc(format!("Forget {running} after exit")))?;
    Ok(())
}
