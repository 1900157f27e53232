//! The physical floor for dispatch: spawn `true` N times, K at a time, and report jobs/s.
//! Usage: cargo run --release --example spawn_floor -- [N] [K]

use std::process::{Child, Command};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let k: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let start = Instant::now();
    let mut running: Vec<Child> = Vec::new();
    let mut spawned = 0;
    while spawned < n || !running.is_empty() {
        while spawned < n && running.len() < k {
            running.push(Command::new("true").spawn().expect("spawn true"));
            spawned += 1;
        }
        let mut child = running.remove(0);
        child.wait().expect("wait");
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{:.0}", n as f64 / secs);
}
