//! Script programs: the source runs with the runtime's interpreter, with the
//! given args, and `$0` / `sys.argv[0]` naming the given filename.
use kruntimes_proto::runtime::v1::{Script, StartRequest, start_request};

use crate::client::{Ended, ended, run, unique_id};
use crate::{Failure, ServerUnderTest, ensure};

/// For runtimes the suite knows (bash, python): a Script prints the base name
/// of $0 / sys.argv[0] and its args and exits 3; the output and code match.
/// Other runtimes are skipped with a note (Scripts are runtime-specific).
pub async fn script(s: &ServerUnderTest) -> Result<(), Failure> {
    let source: &[u8] = match s.handshake.runtime.as_str() {
        "bash" => b"printf '%s\\n' \"${0##*/}\" \"$@\"; exit 3\n",
        "python" => b"import os, sys\nprint(os.path.basename(sys.argv[0]))\nfor a in sys.argv[1:]:\n    print(a)\nsys.exit(3)\n",
        other => {
            eprintln!("script check skipped: no sample script for runtime {other:?}");
            return Ok(());
        }
    };
    let mut c = s.client();
    let id = unique_id("script");
    let req = StartRequest {
        execution_id: id.clone(),
        program: Some(start_request::Program::Script(Script {
            source: source.to_vec().into(),
            args: vec!["one".into(), "two words".into()],
            filename: "hello.script".into(),
        })),
        ..Default::default()
    };
    let out = run(&mut c, req).await?;
    ensure!(
        ended(&out.exit)? == Ended::Code(3),
        "{id}: {:?} stderr {:?}",
        out.exit.status,
        out.stderr_text()
    );
    ensure!(
        out.stdout_text() == "hello.script\none\ntwo words\n",
        "{id}: script output {:?}",
        out.stdout_text()
    );
    Ok(())
}
