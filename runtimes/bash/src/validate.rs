//! Validation of client input: turns a `StartRequest` into a checked
//! [`StartSpec`] and checks ids and durations, with errors naming the field,
//! the value and the limit. Pure functions, no I/O.
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use kruntimes_proto::runtime::v1::{StartRequest, start_request};

/// Longest execution id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Most argv entries (Command argv, or Script args).
pub const MAX_ARGS: usize = 4096;
/// Most env entries in one request.
pub const MAX_ENV_ENTRIES: usize = 4096;
/// Total bytes of argv plus env (each counted with its terminator, as execve does).
pub const MAX_ARG_ENV_BYTES: usize = 1024 * 1024;
/// Largest script source.
pub const MAX_SCRIPT_BYTES: usize = 1024 * 1024;
/// Longest working_dir.
pub const MAX_WORKING_DIR_BYTES: usize = 4096;
/// Longest script filename (a single path component).
pub const MAX_FILENAME_BYTES: usize = 255;
/// Most executions one Forget drops (`execution_id` plus `more_execution_ids`).
pub const MAX_FORGET_IDS: usize = 256;
/// Longest per-attempt timeout: 30 days.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;
/// Longest grace period between SIGTERM and SIGKILL: 1 hour.
pub const MAX_GRACE_MS: u64 = 3600 * 1000;
/// Grace period used when the request leaves it at 0.
pub const DEFAULT_GRACE_MS: u64 = 10_000;
/// Script filename used when the request leaves it empty.
pub const DEFAULT_SCRIPT_FILENAME: &str = "script";

/// A rejected input: which field, what value, what is wrong (with the limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value}: {problem}")]
pub struct InvalidArgument {
    pub field: String,
    /// Already quoted and shortened for display.
    pub value: String,
    pub problem: String,
}

impl InvalidArgument {
    fn new(field: impl Into<String>, value: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: preview(value),
            problem: problem.into(),
        }
    }
}

/// Quotes a value for an error message, shortened so a 1 MiB value does not
/// become a 1 MiB error.
fn preview(value: &str) -> String {
    const MAX_CHARS: usize = 64;
    if value.chars().count() <= MAX_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX_CHARS).collect();
        format!("{head:?}… ({} bytes)", value.len())
    }
}

/// What to execute, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// argv[0] still to be resolved through PATH.
    Command { argv: Vec<String> },
    Script {
        source: bytes::Bytes,
        args: Vec<String>,
        filename: String,
    },
}

/// A validated `StartRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartSpec {
    pub execution_id: String,
    pub program: Program,
    /// Request env, sorted by name; overlays the server's env.
    pub env: Vec<(String, String)>,
    /// Relative, without `..`; empty means the execution directory itself.
    pub working_dir: PathBuf,
    pub timeout: Option<Duration>,
    pub grace: Duration,
    /// The client takes over fast output pipes (see `Handoff`).
    pub output_handoff: bool,
}

/// `execution_id`: 1..128 bytes of `[A-Za-z0-9._-]`, not starting with '.'.
pub fn execution_id(id: &str) -> Result<(), InvalidArgument> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidArgument::new(
            "execution_id",
            id,
            format!("must be 1..{MAX_ID_BYTES} bytes of [A-Za-z0-9._-], not starting with '.'"),
        ))
    }
}

/// The ids of a Forget, each checked, repeats dropped, in request order.
pub fn forget_ids(first: String, more: Vec<String>) -> Result<Vec<String>, InvalidArgument> {
    if more.len() >= MAX_FORGET_IDS {
        return Err(InvalidArgument::new(
            "more_execution_ids",
            &format!("{} ids", more.len()),
            format!("too many: at most {} ids in one Forget", MAX_FORGET_IDS - 1),
        ));
    }
    execution_id(&first)?;
    let mut ids = Vec::with_capacity(1 + more.len());
    ids.push(first);
    for (i, id) in more.into_iter().enumerate() {
        execution_id(&id).map_err(|e| InvalidArgument {
            field: format!("more_execution_ids[{i}]"),
            ..e
        })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// A grace period in ms (0 = default) as a Duration, bounded by [`MAX_GRACE_MS`].
pub fn grace_period(field: &str, ms: u64) -> Result<Duration, InvalidArgument> {
    if ms > MAX_GRACE_MS {
        return Err(InvalidArgument::new(
            field,
            &ms.to_string(),
            format!("exceeds the limit of {MAX_GRACE_MS} ms"),
        ));
    }
    let ms = if ms == 0 { DEFAULT_GRACE_MS } else { ms };
    Ok(Duration::from_millis(ms))
}

/// Validates a whole `StartRequest`.
pub fn start_request(req: StartRequest) -> Result<StartSpec, InvalidArgument> {
    execution_id(&req.execution_id)?;
    let program = match req.program {
        None => {
            return Err(InvalidArgument::new(
                "program",
                "",
                "one of command or script is required",
            ));
        }
        Some(start_request::Program::Command(c)) => {
            if c.argv.is_empty() {
                return Err(InvalidArgument::new(
                    "command.argv",
                    "[]",
                    "must contain at least the program name",
                ));
            }
            if c.argv[0].is_empty() {
                return Err(InvalidArgument::new(
                    "command.argv[0]",
                    "",
                    "program name must not be empty",
                ));
            }
            args("command.argv", &c.argv)?;
            Program::Command { argv: c.argv }
        }
        Some(start_request::Program::Script(s)) => {
            if s.source.len() > MAX_SCRIPT_BYTES {
                return Err(InvalidArgument::new(
                    "script.source",
                    &format!("<{} bytes>", s.source.len()),
                    format!("exceeds the limit of {MAX_SCRIPT_BYTES} bytes"),
                ));
            }
            args("script.args", &s.args)?;
            let filename = if s.filename.is_empty() {
                DEFAULT_SCRIPT_FILENAME.to_string()
            } else {
                script_filename(&s.filename)?;
                s.filename
            };
            Program::Script {
                source: s.source,
                args: s.args,
                filename,
            }
        }
    };

    if req.env.len() > MAX_ENV_ENTRIES {
        return Err(InvalidArgument::new(
            "env",
            &format!("<{} entries>", req.env.len()),
            format!("exceeds the limit of {MAX_ENV_ENTRIES} entries"),
        ));
    }
    let mut env: Vec<(String, String)> = req.env.into_iter().collect();
    env.sort();
    for (name, value) in &env {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(InvalidArgument::new(
                "env name",
                name,
                "must be non-empty and contain neither '=' nor NUL",
            ));
        }
        if value.contains('\0') {
            return Err(InvalidArgument::new(
                format!("env[{name}]"),
                value,
                "value must not contain NUL",
            ));
        }
    }

    let arg_bytes: usize = match &program {
        Program::Command { argv } => argv.iter().map(|a| a.len() + 1).sum(),
        Program::Script { args, .. } => args.iter().map(|a| a.len() + 1).sum(),
    };
    let env_bytes: usize = env.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    let total = arg_bytes + env_bytes;
    if total > MAX_ARG_ENV_BYTES {
        return Err(InvalidArgument::new(
            "argv+env",
            &format!("<{total} bytes>"),
            format!("exceeds the limit of {MAX_ARG_ENV_BYTES} bytes of arguments and environment"),
        ));
    }

    let working_dir = working_dir(&req.working_dir)?;

    if req.timeout_ms > MAX_TIMEOUT_MS {
        return Err(InvalidArgument::new(
            "timeout_ms",
            &req.timeout_ms.to_string(),
            format!("exceeds the limit of {MAX_TIMEOUT_MS} ms"),
        ));
    }
    let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms));
    let grace = grace_period("grace_period_ms", req.grace_period_ms)?;

    Ok(StartSpec {
        execution_id: req.execution_id,
        program,
        env,
        working_dir,
        timeout,
        grace,
        output_handoff: req.output_handoff,
    })
}

fn args(field: &str, args: &[String]) -> Result<(), InvalidArgument> {
    if args.len() > MAX_ARGS {
        return Err(InvalidArgument::new(
            field,
            &format!("<{} entries>", args.len()),
            format!("exceeds the limit of {MAX_ARGS} entries"),
        ));
    }
    if let Some((i, a)) = args.iter().enumerate().find(|(_, a)| a.contains('\0')) {
        return Err(InvalidArgument::new(
            format!("{field}[{i}]"),
            a,
            "must not contain NUL",
        ));
    }
    Ok(())
}

/// `working_dir`: relative, no `..`, bounded; "" and "." mean the execution dir.
pub fn working_dir(dir: &str) -> Result<PathBuf, InvalidArgument> {
    if dir.len() > MAX_WORKING_DIR_BYTES {
        return Err(InvalidArgument::new(
            "working_dir",
            dir,
            format!("exceeds the limit of {MAX_WORKING_DIR_BYTES} bytes"),
        ));
    }
    if dir.contains('\0') {
        return Err(InvalidArgument::new(
            "working_dir",
            dir,
            "must not contain NUL",
        ));
    }
    let mut out = PathBuf::new();
    for c in Path::new(dir).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(InvalidArgument::new(
                    "working_dir",
                    dir,
                    "must not contain '..' (it must stay inside the execution directory)",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(InvalidArgument::new(
                    "working_dir",
                    dir,
                    "must be a relative path inside the execution directory, not absolute",
                ));
            }
        }
    }
    Ok(out)
}

/// `script.filename`: a single normal path component.
fn script_filename(name: &str) -> Result<(), InvalidArgument> {
    let single = matches!(
        Path::new(name).components().collect::<Vec<_>>().as_slice(),
        [Component::Normal(_)]
    );
    if !single || name.contains('/') || name.contains('\0') || name.len() > MAX_FILENAME_BYTES {
        return Err(InvalidArgument::new(
            "script.filename",
            name,
            format!(
                "must be a single path component (no '/', not '.' or '..', no NUL), at most {MAX_FILENAME_BYTES} bytes"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kruntimes_proto::runtime::v1::{Command, Script};

    fn command(argv: &[&str]) -> StartRequest {
        StartRequest {
            execution_id: "run-1.a_b".into(),
            program: Some(start_request::Program::Command(Command {
                argv: argv.iter().map(|s| s.to_string()).collect(),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_plain_command() {
        let spec = start_request(command(&["echo", "hi"])).unwrap();
        assert_eq!(
            spec.program,
            Program::Command {
                argv: vec!["echo".into(), "hi".into()]
            }
        );
        assert_eq!(spec.working_dir, PathBuf::new());
        assert_eq!(spec.timeout, None);
        assert_eq!(spec.grace, Duration::from_millis(DEFAULT_GRACE_MS));
    }

    #[test]
    fn execution_id_syntax_and_length() {
        for bad in ["", ".hidden", "a/b", "a b", "ä", &"x".repeat(129)] {
            let e = execution_id(bad).unwrap_err();
            assert_eq!(e.field, "execution_id", "{bad:?}");
            assert!(e.problem.contains("128"), "{e}");
        }
        for good in ["a", "A-1_b.c", &"x".repeat(128)] {
            execution_id(good).unwrap();
        }
    }

    #[test]
    fn forget_ids_are_checked_bounded_and_deduplicated() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = forget_ids("a".into(), ids(&["b", "a", "c", "b"])).unwrap();
        assert_eq!(got, ids(&["a", "b", "c"]));
        let e = forget_ids("a".into(), ids(&["b", "x/y"])).unwrap_err();
        assert_eq!(e.field, "more_execution_ids[1]");
        assert!(e.value.contains("x/y"), "{e}");
        let e = forget_ids("".into(), vec![]).unwrap_err();
        assert_eq!(e.field, "execution_id");
        let many = vec!["b".to_string(); MAX_FORGET_IDS - 1];
        assert_eq!(forget_ids("a".into(), many.clone()).unwrap().len(), 2);
        let e = forget_ids("a".into(), [many, ids(&["c"])].concat()).unwrap_err();
        assert_eq!(e.field, "more_execution_ids");
        assert!(
            e.to_string().contains("256 ids") && e.problem.contains("255"),
            "{e}"
        );
    }

    #[test]
    fn empty_argv_is_rejected() {
        let e = start_request(command(&[])).unwrap_err();
        assert_eq!(e.field, "command.argv");
        let e = start_request(command(&[""])).unwrap_err();
        assert_eq!(e.field, "command.argv[0]");
        let mut r = command(&["x"]);
        r.program = None;
        assert_eq!(start_request(r).unwrap_err().field, "program");
    }

    #[test]
    fn argv_count_and_bytes_are_bounded() {
        let many: Vec<String> = (0..=MAX_ARGS).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = start_request(command(&refs)).unwrap_err();
        assert_eq!(e.field, "command.argv");
        assert!(e.problem.contains("4096"), "{e}");

        let big = "y".repeat(MAX_ARG_ENV_BYTES);
        let e = start_request(command(&["echo", &big])).unwrap_err();
        assert_eq!(e.field, "argv+env");
        assert!(e.problem.contains("1048576"), "{e}");

        // The env counts toward the same total.
        let mut r = command(&["echo"]);
        r.env.insert("BIG".into(), "z".repeat(MAX_ARG_ENV_BYTES));
        assert_eq!(start_request(r).unwrap_err().field, "argv+env");
    }

    #[test]
    fn nul_in_args_is_rejected() {
        let e = start_request(command(&["echo", "a\0b"])).unwrap_err();
        assert_eq!(e.field, "command.argv[1]");
        assert!(e.value.contains("\\0"), "value is shown escaped: {e}");
    }

    #[test]
    fn bad_env_names_and_values() {
        for name in ["", "A=B", "A\0"] {
            let mut r = command(&["env"]);
            r.env.insert(name.into(), "v".into());
            let e = start_request(r).unwrap_err();
            assert_eq!(e.field, "env name", "{name:?}");
        }
        let mut r = command(&["env"]);
        r.env.insert("A".into(), "x\0y".into());
        assert_eq!(start_request(r).unwrap_err().field, "env[A]");
        let mut r = command(&["env"]);
        r.env.insert("OK_NAME".into(), "a=b c".into());
        assert_eq!(
            start_request(r).unwrap().env,
            vec![("OK_NAME".into(), "a=b c".into())]
        );
    }

    #[test]
    fn working_dir_must_stay_inside() {
        assert_eq!(working_dir("").unwrap(), PathBuf::new());
        assert_eq!(working_dir("./a/./b/").unwrap(), PathBuf::from("a/b"));
        for bad in ["..", "a/../..", "a/..", "/etc", "/"] {
            let e = working_dir(bad).unwrap_err();
            assert_eq!(e.field, "working_dir", "{bad:?}");
        }
        assert!(working_dir("../x").unwrap_err().problem.contains(".."));
        assert!(working_dir("/x").unwrap_err().problem.contains("absolute"));
        assert!(working_dir(&"a/".repeat(3000)).is_err());
    }

    #[test]
    fn script_limits_and_filename() {
        let script = |source: bytes::Bytes, filename: &str| StartRequest {
            execution_id: "s".into(),
            program: Some(start_request::Program::Script(Script {
                source,
                args: vec![],
                filename: filename.into(),
            })),
            ..Default::default()
        };
        let spec = start_request(script(bytes::Bytes::from_static(b"echo hi"), "")).unwrap();
        assert!(
            matches!(spec.program, Program::Script { ref filename, .. } if filename == "script")
        );
        let e = start_request(script(vec![b'#'; MAX_SCRIPT_BYTES + 1].into(), "x")).unwrap_err();
        assert_eq!(e.field, "script.source");
        assert!(e.problem.contains("1048576"));
        for bad in ["a/b", "..", ".", "/x", &"n".repeat(256)] {
            let e = start_request(script(bytes::Bytes::from_static(b"true"), bad)).unwrap_err();
            assert_eq!(e.field, "script.filename", "{bad:?}");
        }
        start_request(script(bytes::Bytes::from_static(b"true"), "build.sh")).unwrap();
    }

    #[test]
    fn durations_are_bounded() {
        let mut r = command(&["true"]);
        r.timeout_ms = MAX_TIMEOUT_MS + 1;
        assert_eq!(start_request(r).unwrap_err().field, "timeout_ms");
        let mut r = command(&["true"]);
        r.grace_period_ms = MAX_GRACE_MS + 1;
        assert_eq!(start_request(r).unwrap_err().field, "grace_period_ms");
        let mut r = command(&["true"]);
        r.timeout_ms = 1500;
        r.grace_period_ms = 20;
        let spec = start_request(r).unwrap();
        assert_eq!(spec.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(spec.grace, Duration::from_millis(20));
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let e = execution_id(&"é".repeat(1000)).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
        assert!(e.value.contains("2000 bytes"), "{}", e.value);
    }
}
