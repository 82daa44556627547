//! `ferrotun-wakeprobe`: what it costs on this machine to wake a sleeping thread, on the
//! waker's CPU and on another one.
//!
//! A userspace tunnel wakes a thread for nearly every batch it moves (its own, the peer
//! process's, the application's), and when the thread sleeps on another CPU the wake-up is
//! an inter-processor interrupt. Where that interrupt traps to a hypervisor it can cost
//! tens of microseconds, and then it, not the tunnel's code, sets much of the rate and the
//! round-trip time. `scripts/bench.sh` prints this probe's line with its table so that
//! figures from different machines can be read side by side.
//!
//! Two threads take turns: each wakes the other (`Thread::unpark`, a futex) and sleeps
//! until woken back, so a round trip is two wake-ups. Reported: the wall time per round
//! trip and the CPU time a round trip charged per thread (the mean of the two), with
//! both threads on one CPU and on two.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

const ROUNDS: u32 = 20_000;

/// The CPUs this process may run on (a container's cpuset need not start at 0).
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is an empty set, and sched_getaffinity writes at most its
    // size into it; CPU_ISSET reads inside it for every index below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Pins the calling thread to `cpu`, one of [`allowed_cpus`].
fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it for any cpu
    // below CPU_SETSIZE, which every allowed CPU is.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// CPU time the calling thread has used, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One measurement: µs of wall time per round trip, and µs of CPU per round trip charged
/// to the first and to the second thread.
struct Trip {
    wall: f64,
    cpu_a: f64,
    cpu_b: f64,
}

/// `rounds` round trips between this thread on `cpu_a` and a new one on `cpu_b`.
fn ping_pong(cpu_a: usize, cpu_b: usize, rounds: u32) -> std::io::Result<Trip> {
    pin(cpu_a)?;
    // Whose turn it is: true while the second thread should run.
    let turn = Arc::new(AtomicBool::new(false));
    let a = std::thread::current();
    // The second thread reports whether it could pin itself before the rounds begin, so a
    // failure there is an error here rather than a wait for a thread that is gone.
    let (pinned_tx, pinned) = std::sync::mpsc::channel();
    let b = {
        let turn = turn.clone();
        std::thread::spawn(move || {
            let ok = pin(cpu_b);
            let failed = ok.is_err();
            let _ = pinned_tx.send(ok);
            if failed {
                return 0.0;
            }
            let c0 = thread_cpu();
            for _ in 0..rounds {
                while !turn.load(Ordering::Acquire) {
                    std::thread::park();
                }
                turn.store(false, Ordering::Release);
                a.unpark();
            }
            thread_cpu() - c0
        })
    };
    if let Err(e) = pinned
        .recv()
        .expect("the second thread reports before it ends")
    {
        let _ = b.join();
        return Err(e);
    }
    let (w0, c0) = (Instant::now(), thread_cpu());
    for _ in 0..rounds {
        turn.store(true, Ordering::Release);
        b.thread().unpark();
        while turn.load(Ordering::Acquire) {
            std::thread::park();
        }
    }
    let (wall, cpu_a) = (w0.elapsed().as_secs_f64(), thread_cpu() - c0);
    let cpu_b = b.join().expect("the second thread does not panic");
    let per = |s: f64| s * 1e6 / f64::from(rounds);
    Ok(Trip {
        wall: per(wall),
        cpu_a: per(cpu_a),
        cpu_b: per(cpu_b),
    })
}

fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        eprintln!(
            "usage: ferrotun-wakeprobe\n\nMeasures a thread wake-up round trip on one CPU and across two CPUs."
        );
        return ExitCode::from(2);
    }
    let run = || -> std::io::Result<String> {
        let cpus = allowed_cpus()?;
        let first = *cpus
            .first()
            .ok_or_else(|| std::io::Error::other("no CPU allowed"))?;
        let one = ping_pong(first, first, ROUNDS)?;
        let mut line = format!(
            "wake-up round trip: {:.1} µs on one CPU ({:.1} µs of CPU per thread)",
            one.wall,
            (one.cpu_a + one.cpu_b) / 2.0
        );
        if let Some(&second) = cpus.get(1) {
            let two = ping_pong(first, second, ROUNDS)?;
            line += &format!(
                ", {:.1} µs across two ({:.1} µs of CPU per thread)",
                two.wall,
                (two.cpu_a + two.cpu_b) / 2.0
            );
        }
        Ok(line)
    };
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferrotun-wakeprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPUs in a kernel list such as "0-1" or "0,2-3".
    fn cpu_list(list: &str) -> Vec<usize> {
        list.trim()
            .split(',')
            .flat_map(|r| match r.split_once('-') {
                Some((a, b)) => a.parse().unwrap()..=b.parse().unwrap(),
                None => r.parse().unwrap()..=r.parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn the_allowed_cpus_are_the_kernels_list_of_this_threads_online_cpus() {
        // sched_getaffinity reports the thread's mask limited to the CPUs that are online;
        // /proc shows the mask as set.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let allowed = cpu_list(
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap(),
        );
        let online = cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap());
        let want: Vec<usize> = allowed.into_iter().filter(|c| online.contains(c)).collect();
        assert!(!want.is_empty());
        assert_eq!(allowed_cpus().unwrap(), want);
    }

    #[test]
    fn a_cpu_the_second_thread_may_not_use_is_an_error_not_a_hang() {
        let cpus = allowed_cpus().unwrap();
        let barred = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|c| !cpus.contains(c))
            .expect("a machine with fewer CPUs than CPU_SETSIZE");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(ping_pong(cpus[0], barred, 10).err()));
        // A probe that waited for the second thread forever would fail here, not hang.
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the probe returns")
            .expect("an error");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_and_the_probe_completes() {
        let cpus = allowed_cpus().unwrap();
        let last = *cpus.last().unwrap();
        std::thread::spawn(move || {
            pin(last).unwrap();
            // SAFETY: sched_getcpu takes no arguments and touches no memory.
            assert_eq!(unsafe { libc::sched_getcpu() }, last as i32);
            let t = ping_pong(last, cpus[0], 500).unwrap();
            assert!(t.wall > 0.0 && t.cpu_a > 0.0 && t.cpu_b > 0.0);
        })
        .join()
        .unwrap();
    }
}
