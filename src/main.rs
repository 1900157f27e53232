//! The `rq` binary: parse, run, and turn errors into one line on stderr.

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let code = match rq::cli::run(&argv) {
        Ok(code) => code,
        Err(rq::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => 0,
        // The exit-status rule (README): 2 for a command line rq cannot run as written,
        // 1 for everything that went wrong after that.
        // Never a password, whatever the message quotes (a connection string, say).
        Err(e @ rq::Error::Usage(_)) => {
            rq::note!("rq: {}", rq::secrets::redact(&e.to_string()));
            2
        }
        Err(e) => {
            rq::note!("rq: {}", rq::secrets::redact(&e.to_string()));
            1
        }
    };
    std::process::exit(code);
}
