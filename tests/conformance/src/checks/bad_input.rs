//! Bad input: each gets INVALID_ARGUMENT (or the documented code) with a
//! message naming the field, and nothing starts.
use std::collections::HashMap;

use kruntimes_proto::runtime::v1::{Script, StartRequest, start_request};
use tonic::Code;

use crate::client::{command, expect_error, sh, start_raw, unique_id};
use crate::{Failure, ServerUnderTest, ensure};

/// Bad execution ids ("", ".hidden", "a/b", "../x", 129 bytes), empty argv,
/// no program, NUL in an argument, env names with '=', NUL or empty, NUL in
/// an env value, an over-long argument list (2.5 MiB; the message must give
/// the limit as a number), a script filename with '/', and an unknown
/// program (FAILED_PRECONDITION naming it).
pub async fn bad_input(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();

    for bad in ["", ".hidden", "a/b", "../x", &"x".repeat(129)] {
        expect_error(
            &format!("Start with execution_id {bad:?}"),
            start_raw(&mut c, sh(bad, "true")).await,
            Code::InvalidArgument,
            &["execution_id"],
        )?;
    }

    let id = unique_id("bad");
    expect_error(
        "Start with empty argv",
        start_raw(&mut c, command(&id, &[])).await,
        Code::InvalidArgument,
        &["argv"],
    )?;
    let no_program = StartRequest {
        execution_id: unique_id("bad"),
        ..Default::default()
    };
    expect_error(
        "Start without a program",
        start_raw(&mut c, no_program).await,
        Code::InvalidArgument,
        &[],
    )?;
    expect_error(
        "Start with NUL in an argument",
        start_raw(&mut c, command(&unique_id("bad"), &["echo", "a\0b"])).await,
        Code::InvalidArgument,
        &["arg"],
    )?;

    for (name, value) in [
        ("A=B", "v"),
        ("A\0B", "v"),
        ("", "v"),
        ("GOOD_NAME", "x\0y"),
    ] {
        let mut req = sh(&unique_id("bad"), "true");
        req.env = HashMap::from([(name.to_string(), value.to_string())]);
        expect_error(
            &format!("Start with env {name:?}={value:?}"),
            start_raw(&mut c, req).await,
            Code::InvalidArgument,
            &["env"],
        )?;
    }

    let big = "y".repeat(64 * 1024);
    let mut argv = vec!["echo"];
    argv.extend(std::iter::repeat_n(big.as_str(), 40));
    let st = expect_error(
        "Start with a 2.5 MiB argument list",
        start_raw(&mut c, command(&unique_id("bad"), &argv)).await,
        Code::InvalidArgument,
        &["arg"],
    )?;
    ensure!(
        st.message().chars().any(|ch| ch.is_ascii_digit()),
        "the over-long argument list error must state the limit: {:?}",
        st.message()
    );

    let script = StartRequest {
        execution_id: unique_id("bad"),
        program: Some(start_request::Program::Script(Script {
            source: bytes::Bytes::from_static(b"true"),
            args: vec![],
            filename: "a/b".into(),
        })),
        ..Default::default()
    };
    expect_error(
        "Start with script filename \"a/b\"",
        start_raw(&mut c, script).await,
        Code::InvalidArgument,
        &["filename"],
    )?;

    expect_error(
        "Start of a program that does not exist",
        start_raw(
            &mut c,
            command(&unique_id("bad"), &["krt-conf-no-such-program"]),
        )
        .await,
        Code::FailedPrecondition,
        &["krt-conf-no-such-program"],
    )?;
    Ok(())
}
