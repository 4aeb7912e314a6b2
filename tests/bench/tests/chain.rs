//! The bench's bare chain (`kruntimes-bench-chain`) really runs what it is
//! asked to and reports how it ended, so the floor the bash figure prints
//! is a working path and not an empty one.

use kruntimes_proto::address::Address;
use kruntimes_proto::runtimed::v1 as pb;
use pb::runtimed_client::RuntimedClient;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use tonic::transport::Channel;

/// A role of the chain, killed when dropped.
struct Role(Child);

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `role` and returns it with the address from its `ready` line.
fn start(role: &str, socket: &std::path::Path) -> (Role, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kruntimes-bench-chain"))
        .arg(role)
        .arg(socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the chain");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("{role} said {line:?}"))
        .to_string();
    (Role(child), addr)
}

/// Executes `argv` and returns the events' kinds and the final Run.
async fn execute(
    client: &mut RuntimedClient<Channel>,
    argv: &[&str],
) -> Result<(Vec<&'static str>, Option<pb::Run>), tonic::Status> {
    let req = pb::ExecuteRequest {
        program: Some(pb::execute_request::Program::Command(pb::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
        })),
        ..Default::default()
    };
    let mut events = client.execute(req).await?.into_inner();
    let mut kinds = Vec::new();
    let mut run = None;
    while let Some(ev) = events.message().await? {
        match ev.event {
            Some(pb::run_event::Event::Started(s)) => {
                assert!(s.pid > 0);
                kinds.push("started");
            }
            Some(pb::run_event::Event::Exited(e)) => {
                kinds.push("exited");
                run = e.run;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    Ok((kinds, run))
}

#[tokio::test]
async fn the_bare_chain_runs_commands_and_reports_how_they_ended() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("spawner.sock");
    let (_spawner, at) = start("spawner", &socket);
    assert_eq!(at, format!("unix:{}", socket.display()));
    let (_proxy, addr) = start("proxy", &socket);
    let channel = Address::parse(&addr).unwrap().channel().unwrap();
    let mut client = RuntimedClient::new(channel);

    let (kinds, run) = execute(&mut client, &["bash", "-c", "exit 3"])
        .await
        .unwrap();
    assert_eq!(kinds, ["started", "exited"]);
    assert_eq!(run.unwrap().exit_code, Some(3));

    let (_, run) = execute(&mut client, &["bash", "-c", "kill -KILL $$"])
        .await
        .unwrap();
    let run = run.unwrap();
    assert_eq!((run.exit_code, run.signal), (None, Some(9)));

    let err = execute(&mut client, &["/nonexistent/program"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("/nonexistent/program"), "{err:?}");
}
