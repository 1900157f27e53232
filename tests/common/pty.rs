//! A real pseudo-terminal for tests: run rq with its stdin, stdout and stderr on the
//! terminal side (so `isatty` is true and the window has a size), read everything it
//! writes from the other side, and read the screen it drew with a terminal emulator
//! (vt100).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Pty {
    master: std::fs::File,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    cols: u16,
    rows: u16,
}

impl Pty {
    /// Start `cmd` on a new terminal of `cols` x `rows`.
    pub fn spawn(mut cmd: Command, cols: u16, rows: u16) -> Pty {
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        let master = unsafe { std::fs::File::from_raw_fd(master) };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()))
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .env_remove("COLUMNS");
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own, with this terminal as its controlling terminal.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on a pty");
        drop(slave);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut from = master.try_clone().unwrap();
        let sink = Arc::clone(&output);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // EIO once every terminal-side descriptor is closed: the program ended.
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            child,
            output,
            reader: Some(reader),
            cols,
            rows,
        }
    }

    /// Everything written so far.
    pub fn output(&self) -> Vec<u8> {
        self.output.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output()).into_owned()
    }

    /// The screen as a terminal of this size shows it now.
    pub fn screen(&self) -> String {
        let rows = std::num::NonZero::new(self.rows).unwrap();
        let cols = std::num::NonZero::new(self.cols).unwrap();
        let mut parser = vt100::Parser::new(rows, cols, 0);
        parser.process(&self.output());
        parser.screen().contents()
    }

    /// Type `bytes` on the terminal.
    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// Wait until the screen satisfies `cond`; false after `secs`.
    pub fn wait_screen(&self, secs: u64, cond: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if cond(&self.screen()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        cond(&self.screen())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The terminal's modes now (raw or cooked), as the line discipline keeps them.
    pub fn termios(&self) -> libc::termios {
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::tcgetattr(self.master.as_raw_fd(), &mut t) };
        assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        t
    }

    /// Wait for the program to end (killing it after `secs`); its exit code (None if it
    /// had to be killed) and everything it wrote.
    pub fn finish(mut self, secs: u64) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut code = None;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                code = Some(status.code().unwrap_or(-1));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if code.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(reader) = self.reader.take() {
            // The reader ends when the terminal side is closed; a grandchild holding it
            // open would keep it reading, so it is not waited for then.
            let until = Instant::now() + Duration::from_secs(5);
            while !reader.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        (code, self.text())
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run a command on a terminal of `cols` columns until it ends; exit code and output.
pub fn run(cmd: Command, cols: u16) -> (i32, String) {
    let pty = Pty::spawn(cmd, cols, 50);
    let (code, text) = pty.finish(60);
    (code.expect("the command ended"), text)
}

/// Text without ANSI escape sequences, as a terminal shows it (line by line).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}
