//! Runs every conformance check against the server selected by the
//! environment (default: this workspace's bash Runtime Server; see
//! README.md). Each test starts its own server, unless
//! KRUNTIMES_CONFORMANCE_ADDR points at a running one.
use kruntimes_conformance::{Failure, ServerUnderTest, checks};

async fn server() -> ServerUnderTest {
    match ServerUnderTest::from_env().await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// Stops the server, then fails the test with the check's message (and the
/// server's log tail) if the check failed.
async fn verdict(r: Result<(), Failure>, mut s: ServerUnderTest) {
    let log = s.log();
    s.stop().await;
    if let Err(e) = r {
        if log.is_empty() {
            panic!("{e}");
        }
        panic!("{e}\n--- server log (tail) ---\n{log}");
    }
}

macro_rules! conformance {
    ($($name:ident => $check:path;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let s = server().await;
            let r = $check(&s).await;
            verdict(r, s).await;
        }
    )*};
}

conformance! {
    handshake_reports_ready => checks::handshake::handshake;
    exit_codes_0_1_255 => checks::exit::exit_codes;
    death_by_signal_reports_the_signal => checks::exit::death_by_signal;
    request_env_overrides_server_env => checks::env::env_precedence;
    working_directory_per_execution => checks::workdir::working_directory;
    stdout_and_stderr_apart_and_in_order => checks::output::streams_apart_and_ordered;
    binary_output_is_byte_exact => checks::output::binary_output;
    output_of_100_mib_is_complete => checks::output::large_output;
    chatty_output_is_coalesced => checks::output::chatty_output_coalesced;
    fast_output_is_handed_off_complete => checks::handoff::fast_writer_handed_off;
    handoff_survives_reattach => checks::handoff::handoff_survives_reattach;
    attach_resumes_from_offsets => checks::attach::attach_resume;
    attach_to_evicted_offset_is_out_of_range => checks::attach::attach_out_of_range;
    new_attach_replaces_previous => checks::attach::attach_replaces_previous;
    unread_output_back_pressures_the_child => checks::back_pressure::back_pressure;
    cancel_kills_grandchild_ignoring_sigterm => checks::cancel::cancel_kills_grandchild;
    leader_exit_kills_its_group => checks::cancel::leader_exit_kills_group;
    timeout_stops_the_group => checks::timeout::timeout;
    fifty_concurrent_runs => checks::concurrency::concurrent_runs;
    no_zombies_left => checks::reaping::no_zombies;
    lifecycle_status_list_forget => checks::lifecycle::lifecycle;
    forget_of_a_batch_is_all_or_nothing => checks::lifecycle::forget_batch;
    bad_input_is_rejected_naming_the_field => checks::bad_input::bad_input;
    scripts_run_with_the_runtime_interpreter => checks::script::script;
}

/// SIGTERM stops a launched server cleanly, taking running executions along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stops_on_sigterm() {
    let mut s = server().await;
    let r = checks::shutdown::stops_on_sigterm(&mut s).await;
    verdict(r, s).await;
}
