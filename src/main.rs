//! The `rq` binary: parse, run, and turn errors into one line on stderr.

use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

/// The process's own argument strings (what `ps` and /proc/PID/cmdline show), as glibc
/// hands them to the functions of `.init_array` before `main`.
static ARGC: AtomicI32 = AtomicI32::new(0);
static ARGV: AtomicPtr<*mut libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn keep_argv(
    argc: libc::c_int,
    argv: *mut *mut libc::c_char,
    _env: *mut *mut libc::c_char,
) {
    ARGC.store(argc, Ordering::Relaxed);
    ARGV.store(argv, Ordering::Relaxed);
}

#[used]
#[unsafe(link_section = ".init_array")]
static KEEP_ARGV: extern "C" fn(libc::c_int, *mut *mut libc::c_char, *mut *mut libc::c_char) =
    keep_argv;

/// A password in a queue's URL (`postgres://me:pw@host/...`) would be visible to every
/// user of the host in `ps` for as long as a feeder runs: overwrite it with `*` in the
/// process's own argument strings, once rq has its copy of them (a restart re-executes
/// from that copy).
fn mask_passwords_in_argv() {
    let argc = ARGC.load(Ordering::Relaxed);
    let argv = ARGV.load(Ordering::Relaxed);
    if argv.is_null() {
        return;
    }
    for i in 0..argc.max(0) as usize {
        // SAFETY: glibc's argv holds argc NUL-terminated strings that this process owns;
        // rewriting bytes before the NUL keeps each string's length.
        unsafe {
            let arg = *argv.add(i);
            if arg.is_null() {
                break;
            }
            let len = libc::strlen(arg);
            rq::secrets::mask_in_place(std::slice::from_raw_parts_mut(arg.cast::<u8>(), len));
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    mask_passwords_in_argv();
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
